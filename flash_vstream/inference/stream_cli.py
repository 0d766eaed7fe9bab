"""The ``flash-vstream stream`` command: a live source into a :class:`StreamSession`, questions typed or scripted.

::

    flash-vstream stream --model M --source S [--speed 1|N|max] [--fps F] [--questions FILE.jsonl --out DIR]

- Interactive (no ``--questions``): the stream plays while a status line (on a terminal) shows its time and
  frame counters; each line typed on stdin is a question, answered with the stream time it saw and its latency.
  When the source ends, its message is printed and the memory stays answerable until end of input (Ctrl-D)
  or ``/quit``.
- Scripted (``--questions FILE.jsonl``, lines ``{"time": seconds, "question": "..."}``, other fields kept):
  each question is asked when the stream reaches its time (questions in time order, ties in file order); those
  still waiting when the source ends are asked then, on the final memory. Every question is answered exactly
  once, in that order, into ``DIR/answers.jsonl``. With ``--speed max`` the stream waits at each question, so
  an answer sees exactly the frames up to its time; at real speed an answer sees what the memory has ingested
  by then, as a live viewer would.

Only the standard library is imported until the command runs. The model flags come from the main command
(``add_stream_command`` receives its ``add_model_arguments`` and ``model_options``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["add_stream_command", "load_questions", "parse_speed", "run_stream"]

_DROP_POLICIES = ("oldest", "resample")  # StreamSession validates them too; listed here to keep --help light
_STATUS_PERIOD = 0.25  # seconds between status-line redraws
_QUIT = ("/quit", "/exit")


def add_stream_command(subparsers, *, add_model_arguments: Callable, model_options: Callable):
    """Add ``stream`` to the ``flash-vstream`` subcommands; returns its parser.

    Args:
        subparsers: the main parser's subparsers.
        add_model_arguments: the main command's ``add_model_arguments(parser)`` (``--device``, ``--dtype``,
            ``--option``, ``--config``).
        model_options: the main command's ``model_options(args) -> (family, options)``.
    """
    p = subparsers.add_parser("stream", help="answer questions about a live video stream as it plays")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the built-in demo model)")
    p.add_argument("--source", required=True,
                   help="video file, frame folder, camera:N, /dev/videoN, or a stream URL (rtsp://, http://, ...)")
    p.add_argument("--speed", default="1",
                   help="1 = real time (default), N = N x real time, max = as fast as the model ingests; files and "
                        "frame folders only (cameras and URLs play live)")
    p.add_argument("--fps", type=float, default=None,
                   help="frames per second of stream time fed to the model (default: the family's, what its released "
                        "models saw: 1 for STAR and Flash, 2 for StreamingVLM)")
    p.add_argument("--questions", help='JSONL file of {"time": seconds, "question": "..."} asked on the stream')
    p.add_argument("--out", help="folder that receives answers.jsonl (required with --questions)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation budget per answer (default 128)")
    p.add_argument("--queue-frames", type=int, default=64, help="frames waiting to be ingested at most (default 64)")
    p.add_argument("--drop-policy", choices=_DROP_POLICIES, default="oldest",
                   help="when ingest falls behind: drop the oldest queued frames, or resample the backlog "
                        "(default oldest)")
    p.add_argument("--micro-batch", type=int, default=8, help="frames per vision-encoder call at most (default 8)")
    p.add_argument("--stall-timeout", type=float, default=None,
                   help="seconds without a frame before the stream counts as stalled (default: 10 for live sources)")
    p.add_argument("--frames-fps", type=float, default=1.0, help="frame rate of a frame folder (default 1)")
    p.add_argument("--no-prefix-cache", action="store_true", help="prefill the whole prompt for every question")
    add_model_arguments(p)
    p.set_defaults(func=functools.partial(run_stream, model_options=model_options))
    return p


def parse_speed(text: str) -> float | None:
    """``"max"`` -> ``None`` (as fast as possible); ``"1"``, ``"4"``, ``"0.5"`` -> that factor.

    Raises:
        ValueError: for anything else.
    """
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    if not speed > 0 or math.isinf(speed):
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}")
    return speed


@dataclass(frozen=True)
class Question:
    """One scripted question: ``index`` (0-based line of the file among questions), ``time``, ``text``, extras."""

    index: int
    time: float
    text: str
    extra: dict = field(default_factory=dict)


def load_questions(path: str | Path) -> list[Question]:
    """The questions of a JSONL file, in asking order (time, then file order).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: for a line that is not a JSON object with a number ``time`` >= 0 and a non-empty string
            ``question``, naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--questions {path} does not exist; pass a JSONL file of {{\"time\", \"question\"}}")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f'{where}: expected an object like {{"time": 12.5, "question": "..."}}')
        at, text = record.get("time"), record.get("question")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
            raise ValueError(f"{where}: 'time' must be a number of seconds >= 0, got {at!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: 'question' must be a non-empty string")
        extra = {k: v for k, v in record.items() if k not in ("time", "question")}
        questions.append(Question(len(questions), float(at), text.strip(), extra))
    if not questions:
        raise ValueError(f"{path} holds no questions")
    return sorted(questions, key=lambda q: (q.time, q.index))


def run_stream(args: argparse.Namespace, *, model_options: Callable, stdin=None, stdout=None, stderr=None) -> int:
    """Run ``flash-vstream stream`` (see the module docstring); returns the exit code."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    from flash_vstream.inference.streaming import StreamError
    from flash_vstream.video.errors import VideoError

    try:
        return _run(args, model_options, stdin, stdout, stderr)
    except (StreamError, VideoError, ValueError, FileNotFoundError) as err:
        print(f"flash-vstream stream: error: {' '.join(str(err).split())}", file=stderr)
        return 2


def _run(args, model_options, stdin, stdout, stderr) -> int:
    from flash_vstream.inference.pipeline import load_model
    from flash_vstream.inference.streaming import StreamSession
    from flash_vstream.video.sources import LiveSource, open_source

    speed = parse_speed(args.speed)
    questions = load_questions(args.questions) if args.questions else None
    if questions is not None and not args.out:
        raise ValueError("--questions needs --out DIR, the folder that receives answers.jsonl")
    family, options = model_options(args)
    if args.model is None:
        from flash_vstream.data.demo import demo_model_dir, describe_default

        args.model = str(demo_model_dir())
        print(describe_default(), file=stderr)
    fps = args.fps if args.fps is not None else _family_fps(args.model, family)
    source = open_source(args.source, speed=speed, fps=fps, stall_timeout=args.stall_timeout,
                         frames_fps=args.frames_fps)
    try:
        vs = load_model(args.model, device=args.device, dtype=args.dtype, family=family, **options)
        # A file played as fast as possible waits for the model instead of dropping frames; live input cannot.
        wait_for_model = speed is None and not isinstance(source, LiveSource)
        with StreamSession(vs, queue_frames=args.queue_frames, drop_policy=args.drop_policy,
                           micro_batch=args.micro_batch, prefix_cache=not args.no_prefix_cache,
                           max_new_tokens=args.max_new_tokens) as session:
            if hasattr(session.backend, "on_commentary"):  # a family that speaks every chunk (StreamingVLM)
                session.backend.on_commentary = functools.partial(_print_commentary, stdout)
            if questions is not None:
                return _scripted(session, source, questions, Path(args.out), wait_for_model, stderr)
            return _interactive(session, source, wait_for_model, stdin, stdout, stderr)
    finally:
        source.close()


def _family_fps(model: str, family: str | None) -> float:
    """The default frame rate of the model's family (read from its ``config.json``, before loading it)."""
    from flash_vstream.families import family_for_config
    from flash_vstream.model.loading import read_checkpoint_config, resolve_checkpoint

    path = resolve_checkpoint(model)
    return family_for_config(read_checkpoint_config(path), family, where=str(path)).sampler.target_fps


_PRINT_LOCK = threading.Lock()


def _print_commentary(stdout, line) -> None:
    """Live commentary, one line per spoken chunk (silent chunks print nothing)."""
    if line.text:
        with _PRINT_LOCK:
            print(f"[{line.start:.1f}-{line.end:.1f} s] {line.text}", file=stdout, flush=True)


# --- scripted ---------------------------------------------------------------------------------------------------


class _Asker:
    """Asks scripted questions on its own thread as the stream reaches their times; writes each answer once.

    ``exact`` (a file played as fast as possible): a question is due once every frame before its time is pushed,
    i.e. when the first frame after its time arrives, and the stream waits meanwhile. Otherwise the stream runs on
    and a question is due when the stream clock (wall time since the first frame x ``speed``) reaches its time.
    """

    def __init__(self, session, questions: list[Question], sink, *, exact: bool, speed: float):
        self.session, self.pending, self.sink = session, list(questions), sink
        self.exact, self.speed = exact, speed
        self.next_time = -math.inf  # stream time of the frame about to be pushed
        self.origin: tuple[float, float] | None = None  # (wall time, stream time) of the first frame
        self.ended = False
        self.starved = False  # exact: the memory was empty at a due question; wait for the next frame
        self.answered = 0
        self.error: BaseException | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="stream-questions", daemon=True)
        self._thread.start()

    def before_frame(self, seconds: float) -> None:
        """A frame at ``seconds`` is about to be pushed; with ``exact``, first answer what is due before it."""
        with self._cv:
            self.origin = self.origin or (time.monotonic(), seconds)
            self.next_time, self.starved = seconds, False
            self._cv.notify_all()
            while (self.exact and self.error is None and not self.starved and self.pending
                   and self.pending[0].time < seconds):
                self._cv.wait()

    def end(self) -> None:
        """The stream ended: ask what is left, then return."""
        with self._cv:
            self.ended = True
            self._cv.notify_all()
        self._thread.join()

    def _due(self) -> Question | None:
        with self._cv:
            while self.pending and not self.ended:
                due_at = self.pending[0].time
                if self.exact or self.origin is None:
                    if self.exact and due_at < self.next_time:
                        break
                    self._cv.wait()
                    continue
                wall, stream = self.origin
                left = (due_at - stream) / self.speed - (time.monotonic() - wall)
                if left <= 0:
                    break
                self._cv.wait(left)
            return self.pending[0] if self.pending else None

    def _run(self) -> None:
        try:
            while (question := self._due()) is not None:
                if self.exact or self.ended:
                    self.session.drain()  # exact: the frames before its time; ended: everything (after finish)
                if self.session.stats().memory_version == 0 and not self.ended:
                    self._starve()
                    continue
                record = self._answer(question)
                self.sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.sink.flush()
                with self._cv:
                    self.pending.pop(0)
                    self.answered += 1
                    self._cv.notify_all()
        except BaseException as err:  # re-raised by the main thread
            with self._cv:
                self.error = err
                self._cv.notify_all()

    def _starve(self) -> None:
        """The memory holds nothing yet (e.g. a lone frame waiting for its partner): wait for more frames."""
        with self._cv:
            if not self.exact:
                self._cv.wait(0.01)
                return
            self.starved = True
            self._cv.notify_all()
            seen = self.next_time
            while self.next_time == seen and not self.ended:
                self._cv.wait()

    def _answer(self, question: Question) -> dict:
        record = {**question.extra, "index": question.index, "time": question.time, "question": question.text}
        try:
            answer = self.session.ask(question.text)
        except ValueError as err:  # the stream ended before anything reached the memory
            return {**record, "answer": None, "error": str(err)}
        return {**record, "answer": answer.text, **_answer_facts(answer)}


def _answer_facts(answer) -> dict:
    return {
        "stream_time": round(answer.stream_time, 3),
        "frames_seen": answer.num_frames,
        "frames_dropped": answer.frames_dropped,
        "frames_skipped": answer.frames_skipped,
        "num_visual_tokens": answer.num_visual_tokens,
        "queue_seconds": round(answer.queue_seconds, 4),
        "first_token_seconds": round(answer.first_token_seconds, 4),
        "total_seconds": round(answer.total_seconds, 4),
        "prefix_cached": answer.prefix_cached,
    }


def _scripted(session, source, questions: list[Question], out: Path, exact: bool, stderr) -> int:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "answers.jsonl"
    with path.open("w", encoding="utf-8") as sink:
        asker = _Asker(session, questions, sink, exact=exact, speed=source.speed or 1.0)
        for frame, seconds in source:
            asker.before_frame(seconds)
            if asker.error is not None:
                break
            session.push_frames(frame, seconds, block=exact)
        source.close()
        if asker.error is None:
            session.finish()
        asker.end()
    if asker.error is not None:
        raise asker.error
    print(str(source.end), file=stderr)
    print(f"answered {asker.answered} question{'s' if asker.answered != 1 else ''} into {path}", file=stderr)
    return 0


# --- interactive ------------------------------------------------------------------------------------------------


def _interactive(session, source, wait_for_model: bool, stdin, stdout, stderr) -> int:
    terminal = stderr.isatty()
    ended = threading.Event()
    lock = threading.Lock()  # one writer at a time on the terminal

    def say(text: str, stream=stderr) -> None:
        with lock:
            if terminal:
                stderr.write("\r\033[K")
            print(text, file=stream, flush=True)

    def feed() -> None:
        try:
            for frame, seconds in source:
                session.push_frames(frame, seconds, block=wait_for_model)
            session.finish()
        except Exception as err:  # noqa: BLE001 - the main thread reports it at the next question
            say(f"flash-vstream stream: ingest stopped: {' '.join(str(err).split())}")
        finally:
            ended.set()
        if source.end is not None and source.end.reason != "stopped":
            say(f"{source.end}. The memory stays answerable: keep asking ({_QUIT[0]} or Ctrl-D to quit).")

    def status() -> None:
        while not stop.wait(_STATUS_PERIOD):
            with lock:
                stderr.write("\r\033[K" + _status_line(session.stats()))
                stderr.flush()

    stop = threading.Event()
    feeder = threading.Thread(target=feed, name="stream-feed", daemon=True)
    feeder.start()
    status_line = threading.Thread(target=status, name="stream-status", daemon=True)
    if terminal:
        status_line.start()
    say(f"streaming {source.name}; type a question and press Enter ({_QUIT[0]} or Ctrl-D to quit)")
    try:
        for line in stdin:
            question = line.strip()
            if not question:
                continue
            if question in _QUIT:
                break
            while session.stats().memory_version == 0 and not ended.is_set():
                time.sleep(0.01)  # nothing in the memory yet: the first frames are on their way
            try:
                answer = session.ask(question)
            except ValueError as err:
                say(f"not yet: {err}")
                continue
            say(_answer_line(answer), stream=stdout)
    finally:
        stop.set()
        source.close()
        feeder.join()
        if status_line.is_alive():
            status_line.join()  # no thread left touching the session or the terminal when the command returns
    return 0


def _status_line(stats) -> str:
    return (f"stream {stats.stream_time:7.1f} s | frames {stats.frames_seen} seen, {stats.frames_queued} queued, "
            f"{stats.frames_dropped} dropped | ingest {stats.ingest_fps:5.1f} fps")


def _answer_line(answer) -> str:
    frames = f"{answer.num_frames} frame{'s' if answer.num_frames != 1 else ''}"
    return (f"[{answer.stream_time:.1f} s, {frames}, {answer.frames_dropped} dropped | first token "
            f"{answer.first_token_seconds * 1000:.0f} ms, answer {answer.total_seconds * 1000:.0f} ms] "
            f"{answer.question}\n{answer.text}")
