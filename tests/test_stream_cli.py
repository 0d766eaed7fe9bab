"""``flash-vstream stream`` on CPU with make-tiny models and the sample video: scripted questions (exactly once, in
order, also after the source ends or breaks), typed questions through a pipe and a pseudo-terminal, bad input."""

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flash_vstream import cli
from flash_vstream.inference.stream_cli import add_stream_command, load_questions, parse_speed

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
# The stream command as the main parser has it (added here when cli.py does not wire it yet).
MAIN = """
import sys
from flash_vstream import cli
from flash_vstream.inference.stream_cli import add_stream_command
parser = cli.build_parser()
sub = parser._subparsers._group_actions[0]
if "stream" not in sub.choices:
    add_stream_command(sub, add_model_arguments=cli.add_model_arguments, model_options=cli.model_options)
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def run(argv: list[str]) -> int:
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0]
    if "stream" not in sub.choices:
        add_stream_command(sub, add_model_arguments=cli.add_model_arguments, model_options=cli.model_options)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module", params=["star-vicuna", "flash-qwen2vl"])
def tiny(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / request.param
    assert cli.main(["make-tiny", "--variant", request.param, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "star-vicuna"
    assert cli.main(["make-tiny", "--variant", "star-vicuna", "--out", str(out)]) == 0
    return out


def write_questions(path: Path) -> Path:
    rows = [
        {"time": 3.5, "question": "What happens in the middle?", "id": "mid"},
        {"time": 0, "question": "What is first?"},
        {"time": 100, "question": "Asked after the end?"},
        {"time": 2, "question": "Second?"},
        {"time": 2, "question": "Also at two seconds?"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


def read_answers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


# (question index, frames the answer sees) in asking order, at 1 fps over the 7-s sample: a question at t sees the
# frames up to t (STAR) or the temporal patches up to t, a lone frame waiting for its partner (Flash).
EXACT = {
    "star-vicuna": [(1, 1), (3, 3), (4, 3), (0, 4), (2, 7)],
    "flash-qwen2vl": [(1, 2), (3, 2), (4, 2), (0, 4), (2, 7)],
}


def test_scripted_questions_at_max_speed_see_exactly_the_frames_before_them(tiny, tmp_path, capsys):
    questions = write_questions(tmp_path / "q.jsonl")
    code = run(["stream", "--model", str(tiny), "--source", str(SAMPLE), "--speed", "max", "--questions",
                str(questions), "--out", str(tmp_path / "out"), "--max-new-tokens", "3"])
    assert code == 0
    answers = read_answers(tmp_path / "out")
    assert [(a["index"], a["frames_seen"]) for a in answers] == EXACT[tiny.name]
    assert [a["time"] for a in answers] == [0.0, 2.0, 2.0, 3.5, 100.0]
    assert answers[3]["id"] == "mid" and all(isinstance(a["answer"], str) for a in answers)
    assert answers[-1]["stream_time"] == 6.0 and all(a["frames_dropped"] == 0 for a in answers)
    err = capsys.readouterr().err
    assert f"{SAMPLE}: stream ended after 7 frames (6.0 s)" in err and "answered 5 questions" in err


def test_scripted_questions_at_real_speed_are_answered_once_in_order(star, tmp_path):
    questions = write_questions(tmp_path / "q.jsonl")
    start = time.monotonic()
    assert run(["stream", "--model", str(star), "--source", str(SAMPLE), "--speed", "8", "--questions",
                str(questions), "--out", str(tmp_path / "out"), "--max-new-tokens", "2"]) == 0
    assert time.monotonic() - start >= 6.0 / 8 - 0.05  # paced: 6 s of stream at 8x
    answers = read_answers(tmp_path / "out")
    assert sorted(a["index"] for a in answers) == [0, 1, 2, 3, 4]
    assert [a["index"] for a in answers] == [1, 3, 4, 0, 2]
    seen = [a["frames_seen"] for a in answers]
    assert seen == sorted(seen) and 1 <= seen[0] and seen[-1] == 7


def test_a_source_that_breaks_mid_stream_ends_cleanly_and_every_question_is_answered(star, tmp_path, capsys):
    import av

    fast = tmp_path / "fast.mp4"
    with av.open(str(SAMPLE)) as inp, av.open(str(fast), "w", format="mp4", options={"movflags": "faststart"}) as out:
        target = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = target
                out.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    questions = write_questions(tmp_path / "q.jsonl")
    assert run(["stream", "--model", str(star), "--source", str(cut), "--speed", "max", "--questions",
                str(questions), "--out", str(tmp_path / "out"), "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert f"{cut}: stream broke after 3 frames (2.0 s)" in err and "answered 5 questions" in err
    answers = read_answers(tmp_path / "out")
    assert [a["index"] for a in answers] == [1, 3, 4, 0, 2]
    assert [a["frames_seen"] for a in answers] == [1, 3, 3, 3, 3]  # after the break: the memory as it stood


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", MAIN, "stream", *args], env=env, **kwargs)


def lines_of(stream) -> queue.Queue:
    """Lines of ``stream`` as they come, read on a thread (None at the end)."""
    lines: queue.Queue = queue.Queue()

    def pump():
        try:
            for line in iter(stream.readline, ""):
                lines.put(line)
        except OSError:  # a pseudo-terminal whose other side closed
            pass
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for(lines: queue.Queue, text: str, timeout: float = 120) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = lines.get(timeout=deadline - time.monotonic())
        if line is None:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came; got {seen}")


def test_typed_questions_through_a_pipe(star):
    proc = spawn(["--model", str(star), "--source", str(SAMPLE), "--speed", "max", "--max-new-tokens", "3"],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        err = lines_of(proc.stderr)
        wait_for(err, "stream ended after 7 frames")  # the memory stays answerable after the end
        out, _ = proc.communicate("What moves?\n\nWhere is it?\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0
    heads = [line for line in out.splitlines() if line.startswith("[")]
    assert len(heads) == 2 and all(h.startswith("[6.0 s, 7 frames, 0 dropped | first token ") for h in heads)
    assert heads[0].endswith("] What moves?") and heads[1].endswith("] Where is it?")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_typed_questions_on_a_terminal_show_the_status_line(star):
    master, slave = os.openpty()
    proc = spawn(["--model", str(star), "--source", str(SAMPLE), "--speed", "4", "--max-new-tokens", "3"],
                 stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    screen = lines_of(os.fdopen(master, "r", errors="replace", newline=""))
    try:
        shown = "".join(wait_for(screen, "stream ended after 7 frames"))
        os.write(master, b"What moves?\n")
        shown += "".join(wait_for(screen, "] What moves?"))
        os.write(master, b"/quit\n")
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    # the one-line status, redrawn in place as the stream plays
    statuses = re.findall(r"\r\x1b\[Kstream +(\d+\.\d) s \| frames (\d) seen, \d+ queued, 0 dropped \| ingest", shown)
    assert len(statuses) >= 2 and [float(t) for t, _ in statuses] == sorted(float(t) for t, _ in statuses)
    assert "[6.0 s, 7 frames, 0 dropped | first token" in shown


def test_bad_input_is_one_line(star, tmp_path, capsys):
    cases = [
        (["--source", str(SAMPLE), "--speed", "fast"], "--speed must be a positive number or 'max'"),
        (["--source", str(tmp_path / "none.mp4")], "none.mp4: no such file, folder, camera or URL"),
        (["--source", str(SAMPLE), "--questions", str(write_questions(tmp_path / "q.jsonl"))], "needs --out DIR"),
    ]
    for extra, message in cases:
        assert run(["stream", "--model", str(star), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("flash-vstream stream: error: ") and message in err


def test_question_files_are_checked_line_by_line(tmp_path):
    path = tmp_path / "q.jsonl"
    for text, message in [
        ('{"time": 1, "question": "ok"}\n{"time": -1, "question": "x"}\n', r"q\.jsonl:2: 'time' must be"),
        ('{"time": 1}\n', r"q\.jsonl:1: 'question' must be a non-empty string"),
        ("[1, 2]\n", "expected an object"),
        ("{nope\n", r"q\.jsonl:1 is not valid JSON"),
        ("\n", "holds no questions"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_questions(path)
    with pytest.raises(FileNotFoundError):
        load_questions(tmp_path / "missing.jsonl")
    assert parse_speed("max") is None and parse_speed("2.5") == 2.5
