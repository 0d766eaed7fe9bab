"""``flash-vstream data check``: exact text and JSON reports, mixtures, --model, --strict, and 100k rows."""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainfixtures import turn, write_features, write_frames, write_image, write_jsonl

from flash_vstream.families import tiny_variants
from flash_vstream.train.commands import add_data_commands
from flash_vstream.train.data import DataError

ASSET_VIDEO = Path(__file__).resolve().parents[2] / "assets" / "sample.mp4"


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="flash-vstream")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "check", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def small_fixture(tmp_path):
    """5 rows: features T=3 (268 tokens), image features (106), a missing video, a malformed row, text (44)."""
    root = tmp_path / "media"
    write_features(root / "clip.safetensors", (3, 256, 1024))
    write_features(root / "photo.safetensors", (256, 1024))
    qa = [turn("human", "<image>\nWhat is shown?"), turn("gpt", "A red car.")]
    rows = [
        {"id": "v", "video": "clip.mp4", "conversations": qa},
        {"id": "i", "image": "photo.jpg", "conversations": qa},
        {"id": "m", "video": "gone.mp4", "conversations": qa},
        {"id": "u", "conversations": [turn("human", "Hi")]},
        {"id": "t", "conversations": [turn("human", "Tell me a story."), turn("gpt", "Once upon a time.")]},
    ]
    return write_jsonl(tmp_path / "data.jsonl", rows), root


def test_text_report_is_exact(tmp_path, capsys):
    data, root = small_fixture(tmp_path)
    code, out = run(["--data", str(data), "--media-root", str(root), "--max-length", "200"], capsys)
    assert code == 0
    # Lengths (words estimate, vicuna_v1 template 29 + 2 + 3): 226 + 34 + 8 = 268; 64 + 34 + 8 = 106; 34 + 5 + 5.
    assert (
        out
        == f"""\
data check of {data} (media root {root})
family star, template vicuna_v1, text counted by the words estimate, max length 200

source 1/1: data.jsonl ({data})
  strategy all: rows 5, usable 3, selected 3
  skipped 2: malformed 1, missing_media 1
  tokens: min 44, p50 106, p90 268, max 268, mean 139.3; over 200: 1
      0-49  |##############################| 1
     50-99  |                              | 0
    100-149 |##############################| 1
    150-199 |                              | 0
    200-249 |                              | 0
    250-299 |##############################| 1
  issues (first 2 of 2):
    {data}:3: medium 'gone.mp4' not found under {root.resolve()} (tried 'gone.mp4', 'gone.safetensors', 'gone')
    {data}:4: the conversation ends with a user turn; the last turn must be the assistant's
"""
    )


def test_json_report_is_exact(tmp_path, capsys):
    data, root = small_fixture(tmp_path)
    code, out = run(["--data", str(data), "--media-root", str(root), "--json", "--issues", "1"], capsys)
    assert code == 0
    lengths = {"min": 44, "p50": 106, "p90": 268, "max": 268, "mean": 139.3}
    histogram = {
        "bin_width": 50,
        "bins": [[0, 49, 1], [50, 99, 0], [100, 149, 1], [150, 199, 0], [200, 249, 0], [250, 299, 1]],
    }
    skipped = {"malformed": 1, "missing_media": 1}
    assert json.loads(out) == {
        "data": str(data),
        "media_root": str(root),
        "family": "star",
        "template": "vicuna_v1",
        "text_counter": "words",
        "max_length": 2048,
        "sources": [
            {
                "name": "data.jsonl",
                "path": str(data),
                "strategy": "all",
                "rows": 5,
                "usable": 3,
                "selected": 3,
                "shortfall": 0,
                "skipped": skipped,
                "over_max_length": 0,
                "lengths": lengths,
                "histogram": histogram,
                "issues": [
                    f"{data}:3: medium 'gone.mp4' not found under {root.resolve()} (tried 'gone.mp4', "
                    "'gone.safetensors', 'gone')"
                ],
                "issues_total": 2,
            }
        ],
        "total": {
            "rows": 5,
            "usable": 3,
            "selected": 3,
            "shortfall": 0,
            "skipped": skipped,
            "over_max_length": 0,
            "lengths": lengths,
            "histogram": histogram,
        },
    }


def test_a_mixture_reports_each_source_and_the_total(tmp_path, capsys):
    data, root = small_fixture(tmp_path)
    shutil.copy(data, root / "again.jsonl")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(
        f"sources:\n  - path: {data}\n    strategy: first\n    count: 5\n"
        "  - path: again.jsonl\n    strategy: percent\n    percent: 50\n    name: half\n"
    )
    code, out = run(["--data", str(mixture), "--media-root", str(root), "--json"], capsys)
    report = json.loads(out)
    first, half = report["sources"]
    assert (first["strategy"], first["selected"], first["shortfall"]) == ("first 5", 3, 2)
    assert (half["name"], half["strategy"], half["selected"]) == ("half", "50%", 1)  # floor(3 * 50%)
    assert report["total"]["rows"] == 10 and report["total"]["selected"] == 4
    assert report["total"]["skipped"] == {"malformed": 2, "missing_media": 2}
    _, text = run(["--data", str(mixture), "--media-root", str(root), "--issues", "0"], capsys)
    assert "  strategy first 5: rows 5, usable 3, selected 3 (2 short of the strategy's count)\n" in text
    assert "\ntotal: rows 10, usable 6, selected 4\n  skipped 4: malformed 2, missing_media 2\n" in text
    assert "issues" not in text


def test_strict_fails_on_the_first_unusable_row(tmp_path, capsys):
    data, root = small_fixture(tmp_path)
    with pytest.raises(DataError, match=rf"^{data}:3: medium 'gone.mp4' not found"):
        run(["--data", str(data), "--media-root", str(root), "--strict"], capsys)


def test_flash_family_counts_clip_features_as_unsupported(tmp_path, capsys):
    data, root = small_fixture(tmp_path)
    _, out = run(["--data", str(data), "--media-root", str(root), "--family", "flash", "--json"], capsys)
    report = json.loads(out)
    assert report["total"]["skipped"] == {"malformed": 1, "missing_media": 1, "unsupported_media": 2}
    assert report["max_length"] == 14000 and report["template"] == "chat_template"


def test_model_gives_budget_and_tokenizer(tmp_path, capsys):
    checkpoint = tmp_path / "tiny"
    tiny_variants()["star-vicuna"].resolve("make_tiny")(
        checkpoint, variant="star-vicuna", layout="own", weights_format="safetensors", seed=0
    )
    root = tmp_path / "media"
    write_features(root / "small.safetensors", (3, 256, 32))  # the tiny CLIP's width
    write_features(root / "big.safetensors", (3, 256, 1024))
    qa = [turn("human", "<image>\nWhat is shown?"), turn("gpt", "A red car.")]
    data = write_jsonl(
        tmp_path / "d.jsonl", [{"id": n, "video": f"{n}.mp4", "conversations": qa} for n in ("small", "big")]
    )
    _, out = run(["--data", str(data), "--media-root", str(root), "--model", str(checkpoint), "--json"], capsys)
    report = json.loads(out.strip().splitlines()[-1])  # make_tiny above may log (DeepSpeed, if installed)
    assert (report["family"], report["text_counter"], report["template"]) == ("star", "tokenizer", "vicuna_v1")
    assert report["total"]["usable"] == 1 and report["total"]["skipped"] == {"unsupported_media": 1}
    with pytest.raises(ValueError, match="--family flash contradicts --model"):
        run(["--data", str(data), "--media-root", str(root), "--model", str(checkpoint), "--family", "flash"], capsys)
    with pytest.raises(ValueError, match="--no-tokenizer only applies with --model"):
        run(["--data", str(data), "--media-root", str(root), "--no-tokenizer"], capsys)


def test_the_command_module_imports_only_the_standard_library():
    code = (
        "import sys, argparse; import flash_vstream.train.commands as c; "
        "c.add_data_commands(argparse.ArgumentParser().add_subparsers()); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy', 'yaml')); "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_100k_rows(tmp_path, capsys):
    """A 100k-row JSONL over a handful of real media (six kinds of outcome), checked end to end."""
    root = tmp_path / "media"
    write_features(root / "a.safetensors", (3, 256, 1024))
    write_features(root / "b.safetensors", (256, 1024))
    write_frames(root / "clip", 5)
    write_image(root / "c.jpg")
    shutil.copy(ASSET_VIDEO, root / "v.mp4")
    names = ["a.mp4", "b.jpg", "clip", "c.jpg", "v.mp4", "missing.mp4"]
    template = (
        '{{"id": "{i}", "video": "{name}", "conversations": [{{"from": "human", "value": "<image>\\nWhat happens '
        'in this video?"}}, {{"from": "gpt", "value": "{answer}"}}]}}\n'
    )
    data = tmp_path / "big.jsonl"
    with data.open("w") as handle:
        for i in range(100_000):
            handle.write(template.format(i=i, name=names[i % 6], answer="A person walks. " * (1 + i % 5)))
    start = time.perf_counter()
    code, out = run(["--data", str(data), "--media-root", str(root), "--json"], capsys)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\ndata check of 100,000 rows: {seconds:.2f} s")
    total = json.loads(out)["total"]
    assert code == 0
    assert (total["rows"], total["usable"], total["skipped"]) == (100_000, 83_334, {"missing_media": 16_666})
    # Visual tokens 226 / 64 / 324 / 64 / 681 plus 34 template + 6 question + 4k answer words (k = 1..5).
    assert total["lengths"]["min"] == 64 + 34 + 6 + 4 and total["lengths"]["max"] == 681 + 34 + 6 + 20
