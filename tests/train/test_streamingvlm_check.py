"""A marked StreamingVLM checkpoint is its own family in the data tools: ``data check --model`` reports the exact
token count of each chunk (no frame decoded), and the LLaVA-row tools refuse it by name instead of treating it as
Flash."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from flash_vstream.model.streamingvlm import make_tiny_streamingvlm
from flash_vstream.train.commands import add_data_commands
from flash_vstream.train.data import DataError
from flash_vstream.train.lengths import budget_for_checkpoint, checkpoint_family
from flash_vstream.train.streamingvlm_collate import StreamingVLMSampleEncoder
from flash_vstream.train.streamingvlm_data import StreamingChunks

REPO = Path(__file__).resolve().parents[2]
CHUNKS = REPO / "configs" / "train" / "streamingvlm_debug_chunks.jsonl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_streamingvlm(tmp_path_factory.mktemp("tiny") / "streamingvlm")


def data_check(argv, capsys):
    parser = argparse.ArgumentParser(prog="flash-vstream")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "check", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def encoded_lengths(tiny) -> list[int]:
    """The slow way: encode every chunk (frames decoded and patchified) and count its ids."""
    encoder = StreamingVLMSampleEncoder.for_checkpoint(tiny)
    chunks = StreamingChunks(CHUNKS, REPO / "assets")
    return [len(encoder(chunks[i])["input_ids"]) for i in range(len(chunks))]


def test_length_is_the_encoded_length(tiny):
    encoder = StreamingVLMSampleEncoder.for_checkpoint(tiny)
    assert (encoder.fmt.min_pixels, encoder.fmt.max_pixels) == (56 * 56, 112 * 112)  # the checkpoint's settings
    chunks = StreamingChunks(CHUNKS, REPO / "assets")
    assert [encoder.length(chunks[i]) for i in range(len(chunks))] == encoded_lengths(tiny)


def test_data_check_reports_streamingvlm_lengths(tiny, tmp_path, capsys):
    expected = sorted(encoded_lengths(tiny))
    lines = CHUNKS.read_text().splitlines()
    gone = lines[0].replace('"sample.mp4"', '"gone.mp4"')
    past_the_end = lines[0].replace('"video_end": 4.0', '"video_end": 60.0')
    data = tmp_path / "chunks.jsonl"
    data.write_text("\n".join([*lines, gone, '{"not": "a chunk"}', past_the_end]) + "\n")
    code, out = data_check(["--data", str(data), "--media-root", str(REPO / "assets"), "--model", str(tiny),
                            "--json", "--max-length", str(expected[2])], capsys)
    report = json.loads(out)
    assert code == 0 and report["family"] == "streamingvlm" and report["text_counter"] == "tokenizer"
    (source,) = report["sources"]
    assert (source["rows"], source["usable"], source["selected"]) == (9, 6, 6)
    assert source["skipped"] == {"malformed": 2, "missing_media": 1} and source["issues_total"] == 3
    assert source["lengths"]["min"] == expected[0] and source["lengths"]["max"] == expected[-1]
    assert source["lengths"]["mean"] == round(sum(expected) / 6, 1)
    assert source["over_max_length"] == sum(1 for n in expected if n > expected[2])
    code, text = data_check(["--data", str(CHUNKS), "--media-root", str(REPO / "assets"), "--model", str(tiny)],
                            capsys)
    assert "family streamingvlm, template per-second chunks, text counted by the tokenizer, max length 32768" in text
    with pytest.raises(DataError, match="gone.mp4"):
        data_check(["--data", str(data), "--media-root", str(REPO / "assets"), "--model", str(tiny), "--strict"],
                   capsys)
    with pytest.raises(ValueError, match="--family flash contradicts"):
        data_check(["--data", str(CHUNKS), "--media-root", str(REPO / "assets"), "--model", str(tiny),
                    "--family", "flash"], capsys)


def test_marked_checkpoints_are_not_flash(tiny, tmp_path):
    from flash_vstream.train.dataset import sample_encoder_for
    from flash_vstream.train.features import read_star_config

    assert checkpoint_family(tiny) == "streamingvlm"
    with pytest.raises(ValueError, match="streamingvlm-family checkpoint, which trains on its own records"):
        budget_for_checkpoint(tiny)
    with pytest.raises(ValueError, match="streamingvlm-family checkpoint"):
        read_star_config(tiny)
    from flash_vstream import load_model

    loaded = load_model(tiny, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="StreamingVLM model trains on chunk records"):
        sample_encoder_for(loaded.model, loaded.tokenizer, max_length=100)
    plain = tmp_path / "plain"  # the same folder without the marker: a plain Qwen2.5-VL, the Flash family's
    shutil.copytree(tiny, plain)
    config = json.loads((plain / "config.json").read_text())
    del config["flash_vstream_family"]
    (plain / "config.json").write_text(json.dumps(config))
    assert checkpoint_family(plain) == "flash" and budget_for_checkpoint(plain).family == "flash"
