"""Soak: a simulated 24-hour stream (86,400 frames at 1 fps) through a tiny model of each family on the CPU, with a
scripted question every five minutes. Resident memory and the state sizes stay flat, every question is answered
exactly once, in order, from exactly the frames before it. Slow: ``FLASH_VSTREAM_SLOW=1``; run with ``-s`` to see
the figures."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from flash_vstream.cli import main as cli_main
from flash_vstream.inference.stream_cli import Question, _scripted
from flash_vstream.inference.streaming import StreamSession
from flash_vstream.video.sources import ArraySource

DAY = 86_400  # frames: 24 h at 1 fps
EVERY = 300  # a question every 5 minutes of stream time
CHECKPOINTS = (6 * 3600, 12 * 3600, DAY - 1)  # frames at which memory is measured


def resident_mib() -> float:
    """Resident set size of this process now (Linux ``/proc``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
@pytest.mark.parametrize("variant", ["star-vicuna", "flash-qwen2vl"])
def test_a_day_long_stream_stays_flat_and_answers_every_question_once(variant, tmp_path):
    from flash_vstream import load_model

    out = tmp_path / variant
    assert cli_main(["make-tiny", "--variant", variant, "--out", str(out)]) == 0
    vs = load_model(out)
    pool = np.random.default_rng(0).integers(0, 255, (97, 16, 16, 3), dtype=np.uint8)  # small frames, fed fast
    questions = [Question(k, EVERY * (k + 1) - 0.5, f"What happened by minute {5 * (k + 1)}?")
                 for k in range(DAY // EVERY)]
    measured = {}
    with StreamSession(vs, micro_batch=32, queue_frames=128, max_new_tokens=2) as session:

        def frames():
            for i in range(DAY):
                if i in CHECKPOINTS:
                    session.drain()
                    measured[i] = (resident_mib(), session.stats())
                yield pool[i % len(pool)]

        start, rss_start = time.monotonic(), resident_mib()
        source = ArraySource(frames(), fps=1.0, name="day")
        assert _scripted(session, source, questions, tmp_path / "answers", True, io.StringIO()) == 0
        wall = time.monotonic() - start
        final = session.stats()
    answers = [json.loads(line) for line in (tmp_path / "answers" / "answers.jsonl").read_text().splitlines()]

    assert [a["index"] for a in answers] == list(range(len(questions)))  # exactly once, in order
    assert [a["frames_seen"] for a in answers] == [EVERY * (k + 1) for k in range(len(questions))]
    assert all(a["frames_dropped"] == 0 and isinstance(a["answer"], str) for a in answers)
    assert final.frames_seen == DAY and source.end.reason == "ended"

    (rss_6h, at_6h), (rss_12h, at_12h), (rss_24h, at_24h) = (measured[i] for i in CHECKPOINTS)
    capacity = vs.model.memory.bank_capacity if vs.family == "star" else vs.model.flash_memory.bank_capacity
    for stats in (at_6h, at_12h, at_24h):
        assert stats.device_nbytes == at_6h.device_nbytes  # the fixed-size state
        assert 0 < stats.bank_entries <= capacity
        assert stats.prefix_nbytes == at_6h.prefix_nbytes  # one prefix of a fixed token count
    assert at_24h.bank_nbytes <= max(at_6h.bank_nbytes, at_12h.bank_nbytes) * 1.05
    assert rss_24h - rss_6h < 64, f"resident memory grew {rss_24h - rss_6h:.0f} MiB from 6 h to 24 h"
    print(json.dumps({
        "variant": variant, "wall_seconds": round(wall, 1), "frames": DAY, "questions": len(answers),
        "rss_mib": {"start": round(rss_start, 1), "6h": round(rss_6h, 1), "12h": round(rss_12h, 1),
                    "24h": round(rss_24h, 1)},
        "device_nbytes": at_24h.device_nbytes, "bank_entries": at_24h.bank_entries, "bank_capacity": capacity,
        "bank_nbytes": {"6h": at_6h.bank_nbytes, "24h": at_24h.bank_nbytes}, "prefix_nbytes": at_24h.prefix_nbytes,
    }))
