"""The ``flash-vstream`` command end to end: make-tiny, then ask about the shipped sample video on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flash_vstream.cli import build_parser, main

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"


@pytest.fixture(scope="module")
def tiny_vicuna(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "star-vicuna"
    assert main(["make-tiny", "--variant", "star-vicuna", "--out", str(out)]) == 0
    return out


def test_sample_video_is_shipped_and_small():
    assert SAMPLE.is_file()
    assert SAMPLE.stat().st_size < 400_000


def test_ask_json_on_sample_video(tiny_vicuna, capsys):
    code = main(
        ["ask", "--model", str(tiny_vicuna), "--video", str(SAMPLE), "What moves?", "--json", "--max-new-tokens", "4"]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from flash_vstream.video import probe_video

    info = probe_video(SAMPLE)
    # 1-fps sampling of the sample clip, and the STAR memory's exact token count for that many frames.
    expected_frames = max(1, round(info.num_frames / info.fps))
    assert payload["num_frames"] == expected_frames
    from flash_vstream.memory import StarMemory, StarMemoryConfig

    memory = StarMemory(StarMemoryConfig(feature_dim=32))
    assert payload["num_visual_tokens"] == memory.num_tokens(expected_frames)
    assert isinstance(payload["answer"], str)


def test_ask_image_gives_64_visual_tokens(tiny_vicuna, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "frame.png"
    Image.new("RGB", (50, 30), (200, 10, 10)).save(image)
    assert (
        main(["ask", "--model", str(tiny_vicuna), "--image", str(image), "Colour?", "--json", "--max-new-tokens", "2"])
        == 0
    )
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["num_frames"] == 1 and payload["num_visual_tokens"] == 64


def test_answer_counts_one_image_array_as_one_frame(tiny_vicuna):
    import numpy as np

    from flash_vstream import load_model

    details = load_model(tiny_vicuna).answer_with_details(
        "Colour?", frames=np.zeros((30, 50, 3), dtype=np.uint8), max_new_tokens=1
    )
    assert details.num_frames == 1 and details.num_visual_tokens == 64


def test_ask_missing_video_is_one_clear_line(tiny_vicuna, tmp_path, capsys):
    missing = tmp_path / "nope.mp4"
    assert main(["ask", "--model", str(tiny_vicuna), "--video", str(missing), "q"]) == 2
    err = capsys.readouterr().err
    assert "nope.mp4" in err and "Traceback" not in err


def test_ask_bad_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["ask", "--model", str(tmp_path), "--video", str(SAMPLE), "q"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_make_tiny_released_layout_and_qwen2(tmp_path):
    assert (
        main(
            [
                "make-tiny",
                "--variant",
                "star-vicuna",
                "--layout",
                "released",
                "--format",
                "bin",
                "--out",
                str(tmp_path / "rel"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "rel" / "config.json").read_text())["model_type"] == "vstream"
    assert main(["make-tiny", "--variant", "star-qwen2", "--out", str(tmp_path / "q")]) == 0
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["text_config"]["model_type"] == "qwen2" and config["conv_template"] == "chat_template"


def test_console_script_runs(tiny_vicuna):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flash_vstream.cli",
            "ask",
            "--model",
            str(tiny_vicuna),
            "--video",
            str(SAMPLE),
            "Describe.",
            "--max-new-tokens",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_parser_lists_subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"ask", "make-tiny"} <= set(sub.choices)


def test_ask_with_memory_option_and_bad_option(tiny_vicuna, capsys):
    assert (
        main(
            [
                "ask",
                "--model",
                str(tiny_vicuna),
                "--video",
                str(SAMPLE),
                "q",
                "--option",
                "retrieval=paper",
                "--option",
                "bank_capacity=100",
                "--max-new-tokens",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["ask", "--model", str(tiny_vicuna), "--video", str(SAMPLE), "q", "--option", "retreival=paper"]) == 2
    assert "retreival" in capsys.readouterr().err
    assert main(["ask", "--model", str(tiny_vicuna), "--video", str(SAMPLE), "q", "--option", "noequals"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_load_model_passes_memory_options(tiny_vicuna):
    from flash_vstream import load_model

    vs = load_model(tiny_vicuna, retrieval="paper", temporal_clusters=10)
    assert vs.model.memory.config.retrieval == "paper"
    assert vs.model.memory.num_tokens(100) == 25 + 10 * 16 + 3 * 64 + 64


def test_ask_flash_family_on_sample_video(tmp_path, capsys):
    out = tmp_path / "flash"
    assert main(["make-tiny", "--variant", "flash-qwen2vl", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "flash_vstream_qwen2_vl"
    assert (
        main(
            [
                "ask",
                "--model",
                str(out),
                "--video",
                str(SAMPLE),
                "What moves?",
                "--json",
                "--max-new-tokens",
                "3",
                "--option",
                "rope_mode=reference",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 7 s at 1 fps = 7 frames (padded to 8: 4 temporal patches, all kept); 320x240 resizes to 336x224 (factor 56):
    # full-res 16x24 patches -> 96 tokens, half-res 8x12 -> 24 tokens per temporal patch after the 2x2 merger.
    assert payload["num_frames"] == 7
    assert payload["num_visual_tokens"] == 4 * 96 + 4 * 24
    assert main(["ask", "--model", str(out), "--video", str(SAMPLE), "q", "--option", "retrieval=paper"]) == 2
    assert "rope_mode" in capsys.readouterr().err
