"""Inf-Streams-Eval data: games, their 100-second scored windows, and model commentary collected per window.

Inf-Streams-Eval (the StreamingVLM paper's benchmark) judges free-running live commentary over whole sports games.
The reference is the broadcast's own cleaned commentary. A game is one record of a JSON-lines file:

- game metadata (``eval_all_metadata.jsonl``): ``{"video", "title", "content": [[ws, we, word], ...]}``, one
  entry per word with its start and end second;
- score-clip metadata: ``{"video", "title", "content": [[s, e, text], ...], "preasr"}``, phrase-level entries
  plus ``preasr``, the commentary spoken before ``content`` begins.

Both are read the same way (an entry's text may be one word or a phrase; words are counted by whitespace). A
game is cut into windows ``(start + k * window, start + (k + 1) * window]`` up to its last reference time; an
entry belongs to the window holding its end time, and only windows with at least ``min_words`` reference words
are scored (`InfStreamsSettings`). Some published entries end before they start (``ws > we``): they are kept,
placed by their end time, and counted (`GameSet.reversed_times`), not refused.

Model outputs are per-second commentary records ``(start, end, text)`` per video; a window's candidate text is
every output whose *end* time falls in the window, joined in time order (`window_text`). Outputs are read from
the predictions file ``eval run --benchmark inf_streams`` writes, or from a plain JSON-lines file of
``{"video", "start", "end", "text"}`` records (`read_commentary`).

Shapes: times are seconds of the game video; a segment is ``(start, end, text)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flash_vstream_eval.items import AnnotationError, Item, RecordLog, find_media, read_records

__all__ = [
    "DEFAULT_ANNOTATIONS",
    "Commentaries",
    "Game",
    "GameSet",
    "InfStreamsSettings",
    "Segment",
    "Window",
    "format_time",
    "load_games",
    "load_inf_streams_items",
    "make_windows",
    "media_path",
    "previous_text",
    "read_commentary",
    "window_text",
]

DEFAULT_ANNOTATIONS = "eval_all_metadata.jsonl"
"""The game metadata file looked for when ``--annotations`` names a folder (or is not given)."""

MODES = ("chunk", "infinite")
_EPS = 1e-6  # seconds: frame and word times are floats; a time this close to a boundary counts as on it

Segment = tuple[float, float, str]


@dataclass(frozen=True)
class InfStreamsSettings:
    """How games are cut into scored windows and how ``eval run`` streams them (all recorded in the run folder)."""

    window: float = 100.0
    """Seconds per scored window."""
    min_words: int = 200
    """Windows whose reference holds fewer words are not scored (nor generated in chunk mode)."""
    start: float = 1000.0
    """Stream time (s) where generation begins and the first window opens; earlier commentary is previous text."""
    mode: str = "infinite"
    """``infinite``: one run per game from ``start``, previous text = the reference before ``start``; ``chunk``:
    each window streamed on its own, previous text = the reference before the window."""
    fps: float = 2.0
    """Frames per second of video handed to the commentary function."""
    query: str | None = None
    """The instruction given with the first second of every stream (``None``: the model's own default)."""
    seed: int | None = None
    """Sampling seed handed to the commentary function (``None``: its default)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.window, (int, float)) and math.isfinite(self.window) and self.window > 0):
            raise ValueError(f"--window-seconds must be a positive number of seconds, got {self.window!r}")
        if isinstance(self.min_words, bool) or not isinstance(self.min_words, int) or self.min_words < 0:
            raise ValueError(f"--min-words must be a whole number >= 0, got {self.min_words!r}")
        if not (isinstance(self.start, (int, float)) and math.isfinite(self.start) and self.start >= 0):
            raise ValueError(f"--start-time must be a number of seconds >= 0, got {self.start!r}")
        if self.mode not in MODES:
            raise ValueError(f"--stream-mode must be one of {MODES}, got {self.mode!r}")
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"--fps must be a positive number of frames per second, got {self.fps!r}")


@dataclass(frozen=True)
class Game:
    """One game of the benchmark."""

    video: str
    """The video as the annotations name it; also the game's id in predictions files."""
    title: str
    """The game's title (may be empty)."""
    content: tuple[Segment, ...]
    """Reference commentary entries, sorted by end time (ties in file order)."""
    preasr: str
    """Commentary spoken before ``content`` begins (score-clip metadata), else empty."""
    where: str
    """File and line of the record, for messages."""


@dataclass(frozen=True)
class GameSet:
    """The games of an annotation file, and how many reference entries end before they start."""

    games: list[Game]
    reversed_times: int
    """Entries with ``start > end`` (kept, placed by their end time)."""
    source: Path
    """The annotation file read."""


@dataclass(frozen=True)
class Window:
    """One scored window ``(start, end]`` of a game."""

    id: str
    """``"<video>@<start>-<end>"``: the window's id in results (and in chunk-mode predictions)."""
    video: str
    start: float
    end: float
    reference: str
    """The reference entries ending in the window, joined by spaces."""
    words: int
    """Words in ``reference``."""


def format_time(seconds: float) -> str:
    """Seconds as the shortest exact decimal up to milliseconds: ``1000.0 -> "1000"``, ``12.25 -> "12.25"``."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------------------------- annotations


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _segments(content: Any, where: str, what: str = "content") -> tuple[list[Segment], int]:
    """``[[s, e, text], ...]`` -> segments and the number with ``s > e``; anything else raises naming the entry."""
    if not isinstance(content, list):
        raise AnnotationError(f"{where}: '{what}' must be a list of [start, end, text], got {type(content).__name__}.")
    out, reversed_times = [], 0
    for index, entry in enumerate(content):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and _number(entry[0]) and _number(entry[1])
                and isinstance(entry[2], str)):
            raise AnnotationError(
                f"{where}: {what}[{index}] must be [start seconds, end seconds, text], got {str(entry)[:80]}."
            )
        reversed_times += entry[0] > entry[1]
        out.append((float(entry[0]), float(entry[1]), entry[2]))
    return out, reversed_times


def _game(record: Any, where: str) -> tuple[Game, int]:
    if not isinstance(record, dict):
        raise AnnotationError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    video = record.get("video")
    if not isinstance(video, str) or not video.strip():
        raise AnnotationError(f"{where}: missing 'video' (the game's video file); present: {sorted(record)}.")
    if "content" not in record:
        raise AnnotationError(f"{where}: missing 'content' ([[start, end, text], ...]); present: {sorted(record)}.")
    segments, reversed_times = _segments(record["content"], where)
    for key in ("title", "preasr"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise AnnotationError(f"{where}: '{key}' must be text, got {type(record[key]).__name__}.")
    # Stable sort by end time: entries are placed by their end, and reversed entries by theirs too.
    segments.sort(key=lambda seg: seg[1])
    game = Game(video, record.get("title") or "", tuple(segments), record.get("preasr") or "", where)
    return game, reversed_times


def annotation_file(source: str | Path) -> Path:
    """The annotation file for ``source``: the file itself, or `DEFAULT_ANNOTATIONS` inside a folder.

    Raises:
        AnnotationError: When neither exists; the message names what was looked for.
    """
    path = Path(source)
    if path.is_dir():
        candidate = path / DEFAULT_ANNOTATIONS
        if candidate.is_file():
            return candidate
        found = sorted(p.name for p in path.glob("*.jsonl"))
        raise AnnotationError(
            f"{path} holds no {DEFAULT_ANNOTATIONS}; pass the game metadata file as --annotations"
            + (f" (JSON-lines files there: {found})." if found else ".")
        )
    if not path.is_file():
        raise AnnotationError(f"annotations {path} do not exist; pass the Inf-Streams-Eval metadata file.")
    return path


def load_games(source: str | Path) -> GameSet:
    """Read every game of an Inf-Streams-Eval metadata file (or of `DEFAULT_ANNOTATIONS` in a folder).

    Args:
        source: A ``.jsonl`` (or ``.json`` list) file of game records, or the folder holding it.

    Returns:
        The games in file order, with the count of reversed reference times.

    Raises:
        AnnotationError: For a missing file, a line that is not JSON, a record without ``video``/``content``, an
            entry that is not ``[start, end, text]``, a video listed twice, or no game at all; one error, naming
            the file and line.
    """
    path = annotation_file(source)
    games, reversed_times, seen = [], 0, {}
    for where, record in read_records(path, RecordLog(strict=True)):
        game, reversed_here = _game(record, where)
        if game.video in seen:
            raise AnnotationError(f"{where}: video {game.video!r} is listed twice (first at {seen[game.video]}).")
        seen[game.video] = where
        games.append(game)
        reversed_times += reversed_here
    if not games:
        raise AnnotationError(f"{path} holds no games; expected one {{'video', 'content', ...}} record per line.")
    return GameSet(games, reversed_times, path)


def media_path(root: Path, video: str, where: str = "") -> tuple[str, bool]:
    """The game's video under ``root``: ``video`` as written, else its file name in ``root`` or ``root/videos``.

    The published metadata names videos by absolute paths of its authors' machines; those are found by file
    name. Returns ``(relative path, exists)``.
    """
    name = Path(video.replace("\\", "/")).name
    relative = [] if video.startswith(("/", "\\")) or Path(video).is_absolute() else [video]
    candidates = list(dict.fromkeys([*relative, name, f"videos/{name}"]))
    found, _ = find_media(root, candidates, where)
    return found, (root / found).is_file()


# --------------------------------------------------------------------------------------------- windows


def _in_window(time: float, start: float, end: float) -> bool:
    return start + _EPS < time <= end + _EPS


def _join(texts: Iterable[str]) -> str:
    return " ".join(text.strip() for text in texts if text.strip())


def make_windows(game: Game, settings: InfStreamsSettings) -> tuple[list[Window], list[Window]]:
    """Cut a game into windows ``(start + k * window, start + (k + 1) * window]`` up to its last reference time.

    Returns:
        ``(kept, dropped)``: windows with at least ``settings.min_words`` reference words, and the others.
    """
    last = max((seg[1] for seg in game.content), default=settings.start)
    count = max(0, math.ceil((last - settings.start) / settings.window - _EPS))
    kept, dropped = [], []
    for k in range(count):
        start = settings.start + k * settings.window
        end = start + settings.window
        reference = _join(seg[2] for seg in game.content if _in_window(seg[1], start, end))
        words = len(reference.split())
        window = Window(f"{game.video}@{format_time(start)}-{format_time(end)}", game.video, start, end,
                        reference, words)
        (kept if words >= settings.min_words else dropped).append(window)
    return kept, dropped


def previous_text(game: Game, before: float) -> str:
    """The reference commentary spoken up to ``before`` (``preasr`` first): what a stream starting there is given."""
    return _join([game.preasr, *(seg[2] for seg in game.content if seg[1] <= before + _EPS)])


def load_inf_streams_items(root: Path, source: str | None = None, log: RecordLog | None = None) -> list[Item]:
    """The registry's view: one `Item` per scored window (default settings), the reference text as its answer.

    ``eval run``/``eval score`` for this benchmark use `load_games` and `make_windows` directly (with the
    command's settings); this lists the same windows for Python callers of ``Benchmark.load_items``.
    """
    settings = InfStreamsSettings()
    games = load_games(Path(source) if source else Path(root))
    return [
        Item(window.id, game.video, "", None, window.reference, {"game": game.title or game.video},
             start=window.start, end=window.end, extra={"words": window.words})
        for game in games.games
        for window in make_windows(game, settings)[0]
    ]


# --------------------------------------------------------------------------------------------- model outputs


@dataclass
class Commentaries:
    """A model's commentary per video, and which stretches of each video it covers."""

    segments: dict[str, list[Segment]]
    """Outputs per video, in time order of their end."""
    spans: dict[str, list[tuple[float, float]] | None]
    """Stretches a run streamed (``None``: the whole video, for plain output files)."""
    skipped: dict[str, str]
    """Videos (or windows) a run skipped, with the reason."""
    source: Path

    def covers(self, video: str, start: float, end: float) -> bool:
        """Whether the outputs say anything about ``(start, end]`` of ``video`` (silence included)."""
        if video not in self.spans:
            return False
        spans = self.spans[video]
        return spans is None or any(s <= start + _EPS and end <= e + _EPS for s, e in spans)


def _span(record: dict, where: str) -> tuple[float, float]:
    span = record["span"]
    if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(_number(v) for v in span)):
        raise AnnotationError(f"{where}: 'span' must be [start seconds, end seconds], got {str(span)[:80]}.")
    return float(span[0]), float(span[1])


def _add_record(out: Commentaries, record: Any, where: str) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("video"), str):
        raise AnnotationError(f"{where}: expected an object with a 'video' (the game's video as annotated).")
    video = record["video"]
    if record.get("skipped"):
        out.skipped[str(record.get("id", video))] = str(record["skipped"])
        return
    segments = out.segments.setdefault(video, [])
    if "commentary" in record:  # a record of `eval run`: a streamed stretch and what was said in it
        found, _ = _segments(record["commentary"], where, "commentary")
        segments.extend(found)
        spans = out.spans.setdefault(video, [])
        if spans is not None:
            spans.append(_span(record, where) if "span" in record else (-math.inf, math.inf))
        return
    if not (_number(record.get("start")) and _number(record.get("end")) and isinstance(record.get("text"), str)):
        raise AnnotationError(
            f"{where}: expected {{'video', 'start', 'end', 'text'}} (one second of commentary) or an `eval run` "
            f"record with 'commentary'; got keys {sorted(record)}."
        )
    segments.append((float(record["start"]), float(record["end"]), record["text"]))
    out.spans[video] = None


def read_commentary(path: str | Path) -> Commentaries:
    """Read a model's commentary: ``eval run`` predictions, or ``{"video", "start", "end", "text"}`` lines.

    Raises:
        AnnotationError: For a missing file or a line that is neither kind (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"commentary file {path} does not exist; pass an `eval run` predictions.jsonl.")
    out = Commentaries({}, {}, {}, path)
    for where, record in read_records(path, RecordLog(strict=True)):
        _add_record(out, record, where)
    for segments in out.segments.values():
        segments.sort(key=lambda seg: seg[1])
    return out


def window_text(segments: Sequence[Segment], start: float, end: float) -> str:
    """The outputs whose end time falls in ``(start, end]``, joined in time order (empty texts left out)."""
    return _join(seg[2] for seg in segments if _in_window(seg[1], start, end))
