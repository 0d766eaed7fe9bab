"""``extract-features`` under torchrun: 2 gloo processes share the media, each extracted exactly once, one summary."""

import json
import os
import socket
import subprocess
import sys

from extractfixtures import extract, row, write_image, write_jsonl, write_video
from safetensors import safe_open

from flash_vstream.model.tiny import make_tiny_star
from flash_vstream.train.extraction import REPORT_NAME


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_share_the_media_and_resume_a_one_process_run(tmp_path):
    checkpoint = make_tiny_star(tmp_path / "ckpt", seed=0)
    media = tmp_path / "media"
    rows = []
    for i in range(5):
        write_video(media / "v" / f"{i}.mp4", frames=4 + 4 * i, seed=i)
        rows.append(row(f"v{i}", "video", f"v/{i}.mp4"))
    write_image(media / "i" / "0.png", seed=9)
    rows.append(row("i0", "image", "i/0.png"))
    data = write_jsonl(tmp_path / "all.jsonl", rows)
    out = tmp_path / "out"
    # One process did the first two media, then the job was moved to two processes.
    first = write_jsonl(tmp_path / "first.jsonl", rows[:2])
    assert extract(["--data", str(first), "--media-root", str(media), "--out", str(out),
                    "--model", str(checkpoint)]) == 0  # fmt: skip

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "flash_vstream.train.extract_cli",
        "--data", str(data), "--media-root", str(media), "--out", str(out), "--model", str(checkpoint),
        "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("extract-features: 6 media") == 1  # the merged summary, printed by rank 0 only
    assert "2 processes" in result.stdout

    record = json.loads((out / REPORT_NAME).read_text())
    # Sums over both ranks: 4 files written and 2 skipped means no medium was done twice (all 6 exist).
    assert (record["processes"], record["extracted"], record["skipped_existing"], record["failed"]) == (2, 4, 2, [])
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.safetensors"))
    assert names == ["i/0.safetensors", *[f"v/{i}.safetensors" for i in range(5)]]
    fingerprints = set()
    for name in names:
        with safe_open(str(out / name), "pt") as handle:
            fingerprints.add(handle.metadata()["extractor"])
            frames = handle.get_slice("feature").get_shape()
        if name.startswith("v/"):
            assert frames == [1 + int(name[2]), 256, 32]  # (4 + 4i) frames at 4 fps -> 1 + i at 1 fps
    assert len(fingerprints) == 1  # both ranks and the earlier run are one extractor
