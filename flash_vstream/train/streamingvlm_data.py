r"""StreamingVLM SFT data: per-game commentary -> overlapped-chunk samples (JSONL), and reading them back.

StreamingVLM is fine-tuned on short overlapped chunks of long games, laid out like its streaming KV cache at
inference. Its authors released the chunked file but not the code that makes it; :func:`build_chunks` is that
step, with every number a :class:`BuildSettings` field:

- windows of ``window`` = 24 s every ``stride`` = 12 s (``[0, 24), [12, 36), ...``; a window must fit in the
  game's ``duration``);
- a window is kept when at least ``min_words`` (default ``2 * window`` = 48) ASR words END inside it;
- a word belongs to the window (and later to the one-second round) its END time falls in: ``(a, a + 1]``;
- the previous text is the game's own ``title``/``previous`` text followed by every word that ended at or before
  the window's start, cut to its first ``text_sink`` (512) and last ``text_window`` (512) tokens, counted by the
  model's tokenizer (the same sink + window the inference cache keeps of past commentary).

**Game records** (input): JSONL, one game per line::

    {"video": "soccer/game_0001.mp4", "duration": 5400.0,
     "content": [[12.31, 12.52, "and"], [12.52, 12.90, "Messi"], ...],
     "title": "2018-06-16 Argentina vs Iceland", "previous": ""}

``video`` (relative to the media root), ``duration`` (seconds) and ``content`` (word-level ASR ``[start, end,
word]``, the Inf-Streams-Eval metadata layout) are required; ``id``, ``title`` and ``previous`` are optional; other
keys are ignored. A word whose start is after its end (seen in the published ASR) is kept: only the end is used.

**Chunk records** (output, and what :class:`StreamingChunks` reads): the published JSONL record shape::

    [{"role": "user", "content": [
        {"type": "video", "video": "soccer/game_0001.mp4", "video_start": 12.0, "video_end": 36.0},
        {"type": "text", "text": "", "previous": "2018-06-16 Argentina vs Iceland and Messi ..."}]},
     {"role": "assistant", "content": [{"type": "text", "text_stream": [[12.31, 12.52, "and"], ...]}]}]

plus a sidecar ``<stem>_seeks.jsonl`` (a JSON list of each line's byte offset, the published random-access
index; ``<stem>`` drops a ``_with_seeks`` suffix as the published loader does). The text element's ``text`` is the
query of the first round (empty, as published training saw none); ``previous`` may sit in either element. A
published record may also hold ``"qa_stream": [[start, time, question, answer], ...]`` beside ``text_stream``:
questions asked during the chunk, read into :attr:`ChunkRecord.questions`.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flash_vstream.train.data import DataError, MissingMediaError

__all__ = [
    "BuildSettings",
    "BuildSummary",
    "ChunkRecord",
    "GameRecord",
    "PreviousTextCutter",
    "StreamingChunks",
    "build_chunks",
    "build_file",
    "read_games",
    "seeks_path",
]


@dataclass(frozen=True)
class BuildSettings:
    """How games are cut into training chunks (the published defaults)."""

    window: float = 24.0
    """Seconds of video per chunk (whole seconds: one round per second)."""
    stride: float = 12.0
    """Seconds between chunk starts (stride < window: chunks overlap by ``window - stride``)."""
    min_words: int | None = None
    """Fewest words ending in a chunk for it to be kept; ``None``: ``2 * window`` (48), as published."""
    text_sink: int = 512
    """Tokens kept from the start of the previous text."""
    text_window: int = 512
    """Tokens kept from the end of the previous text."""
    query: str = ""
    """Text of the first round after its video (published training had none; inference asks one)."""
    margin: int = 16
    """Spare tokens of the word-by-word count before the exact cut (see :class:`PreviousTextCutter`)."""

    def __post_init__(self) -> None:
        if not (self.window >= 1 and float(self.window).is_integer()):
            raise ValueError(f"window must be a whole number of seconds >= 1, got {self.window}")
        if not 0 < self.stride:
            raise ValueError(f"stride must be > 0 seconds, got {self.stride}")
        if self.min_words is not None and self.min_words < 0:
            raise ValueError(f"min_words must be >= 0 (or None for 2 * window), got {self.min_words}")
        for name in ("text_sink", "text_window", "margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def word_threshold(self) -> int:
        """The words a chunk needs: ``min_words``, or ``2 * window``."""
        return int(2 * self.window) if self.min_words is None else self.min_words


# ----------------------------------------------------------------------------------------------------------
# Game records
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GameRecord:
    """One game: its video, length, word-level ASR and optional context."""

    video: str
    """Video path relative to the media root."""
    duration: float
    """Seconds of video."""
    words: tuple[tuple[float, float, str], ...]
    """``(start, end, word)`` sorted by end time (stable)."""
    context: str = ""
    """``title`` and ``previous`` joined: the start of every chunk's previous text."""
    id: str = ""
    """The record's ``id`` (default: its line)."""
    where: str = ""
    """``file:line`` of the record."""


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


def parse_game(row, where: str) -> GameRecord:
    """A :class:`GameRecord` from one parsed JSON row.

    Raises:
        DataError: naming ``where`` and the field, for any malformed part.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: a game record is a JSON object with video, duration and content")
    for key in ("video", "duration", "content"):
        if key not in row:
            raise DataError(f"{where}: the game record has no {key!r} (needs video, duration and content)")
    video = row["video"]
    if not isinstance(video, str) or not video.strip():
        raise DataError(f"{where}: 'video' must be a non-empty path relative to the media root, got {video!r}")
    duration = _number(row["duration"], "'duration'", where)
    if duration <= 0:
        raise DataError(f"{where}: 'duration' must be > 0 seconds, got {duration}")
    content = row["content"]
    if not isinstance(content, list):
        raise DataError(f"{where}: 'content' must be a list of [start, end, word], got {type(content).__name__}")
    words = []
    for k, item in enumerate(content):
        if not (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[2], str)):
            raise DataError(
                f"{where}: content[{k}] must be [start, end, word] (two numbers and a string), got {item!r}"
            )
        start, end = (_number(v, f"content[{k}] time", where) for v in item[:2])
        if end < 0:
            raise DataError(f"{where}: content[{k}] ends at {end} s, before the video starts")
        if item[2].strip():
            words.append((start, end, item[2].strip()))
    context = []
    for key in ("title", "previous"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        if value and value.strip():
            context.append(value.strip())
    words.sort(key=lambda w: w[1])
    return GameRecord(video, duration, tuple(words), " ".join(context), str(row.get("id", where)), where)


def read_games(path: str | Path) -> Iterator[GameRecord]:
    """The games of a JSONL file, in order (blank lines skipped).

    Raises:
        FileNotFoundError: when the file is missing.
        DataError: for the first line that is not JSON or not a game record, naming ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"games file {path} does not exist; pass a JSONL file with one game per line")
    with path.open(encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            yield parse_game(row, where)


# ----------------------------------------------------------------------------------------------------------
# The previous text
# ----------------------------------------------------------------------------------------------------------


class PreviousTextCutter:
    """The previous text before each chunk of one game, cut to its first ``sink`` and last ``window`` tokens.

    Tokenizing the whole commentary again for every chunk costs O(words^2) per game (hours for a real data set),
    so each piece (the context, then ``" " + word``) is tokenized once, and only a head and a tail of whole pieces
    a little longer than ``sink``/``window`` (``margin`` spare tokens) are tokenized together and cut exactly. For
    tokenizers whose pre-tokenizer splits words at the spaces before them (byte-level BPE: Qwen's, GPT-2's), this
    is exactly the whole text tokenized and cut; a test checks that against the slow way. (A SentencePiece
    tokenizer that prefixes every text with a space would count a tail one token differently.)

    Args:
        tokenizer: the model's tokenizer (``__call__`` and ``decode``).
        context: the game's title/previous text (may be empty).
        words: the game's words in end-time order.
        sink, window, margin: see :class:`BuildSettings`.
    """

    def __init__(self, tokenizer, context: str, words: Sequence[str], sink: int, window: int, margin: int = 16):
        self.tokenizer, self.sink, self.window, self.margin = tokenizer, sink, window, margin
        self.pieces = ([context] if context else []) + [(" " if context or k else "") + w for k, w in enumerate(words)]
        self.offset = 1 if context else 0  # pieces before the first word
        counts = [len(ids) for ids in self._ids(self.pieces)] if self.pieces else []
        self.cumulative = [0]
        for count in counts:
            self.cumulative.append(self.cumulative[-1] + count)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def before(self, num_words: int) -> str:
        """The previous text made of the context and the first ``num_words`` words, cut to sink + window."""
        end = self.offset + num_words
        text = "".join(self.pieces[:end])
        keep = self.sink + self.window
        if self.cumulative[end] <= keep + self.margin:  # short: tokenize it whole and decide exactly
            ids = self._ids([text])[0] if text else []
            return text if len(ids) <= keep else self._decode(ids[: self.sink] + ids[len(ids) - self.window :])
        head_end = bisect.bisect_left(self.cumulative, self.sink + self.margin)  # whole pieces: sink + margin
        tail_start = bisect.bisect_right(self.cumulative, self.cumulative[end] - self.window - self.margin) - 1
        head = self._ids(["".join(self.pieces[:head_end])])[0][: self.sink] if self.sink else []
        tail = self._ids(["".join(self.pieces[tail_start:end])])[0] if self.window else []
        return self._decode(head + tail[len(tail) - self.window :])


# ----------------------------------------------------------------------------------------------------------
# Chunking
# ----------------------------------------------------------------------------------------------------------


@dataclass
class BuildSummary:
    """Counts of one build."""

    games: int = 0
    """Game records read."""
    windows: int = 0
    """Windows that fit in the games."""
    kept: int = 0
    """Chunks written."""
    too_few_words: int = 0
    """Windows dropped by ``min_words``."""
    words: int = 0
    """Words in the kept chunks."""
    short_games: list[str] = field(default_factory=list)
    """Games shorter than one window (no chunk), by ``file:line``."""


def window_starts(duration: float, settings: BuildSettings) -> list[float]:
    """Start times of the windows that fit in ``duration`` seconds: ``0, stride, 2*stride, ...``."""
    count = int(math.floor((duration - settings.window) / settings.stride + 1e-9)) + 1
    return [float(k * settings.stride) for k in range(max(count, 0))]


def chunk_record(game: GameRecord, start: float, words, previous: str, settings: BuildSettings) -> list:
    """The published record of one chunk (see the module docstring)."""
    return [
        {
            "role": "user",
            "content": [
                {
                    "type": "video",
                    "video": game.video,
                    "video_start": start,
                    "video_end": float(start + settings.window),
                },
                {"type": "text", "text": settings.query, "previous": previous},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text_stream": [list(w) for w in words]}]},
    ]


def build_chunks(game: GameRecord, settings: BuildSettings, tokenizer, summary: BuildSummary | None = None) -> list:
    """The kept chunk records of one game, in time order.

    Args:
        game: the game.
        settings: windows, the word threshold, the previous-text cut.
        tokenizer: the model's tokenizer (counts the previous text's tokens).
        summary: counts are added to it when given.
    """
    summary = summary if summary is not None else BuildSummary()
    summary.games += 1
    starts = window_starts(game.duration, settings)
    if not starts:
        summary.short_games.append(game.where)
    ends = [w[1] for w in game.words]
    cutter = None
    records = []
    for start in starts:
        summary.windows += 1
        first = bisect.bisect_right(ends, start)  # words ending at or before the start are previous text
        last = bisect.bisect_right(ends, start + settings.window)
        if last - first < settings.word_threshold:
            summary.too_few_words += 1
            continue
        if cutter is None:  # tokenize a game's words only when one of its chunks is kept
            cutter = PreviousTextCutter(
                tokenizer,
                game.context,
                [w[2] for w in game.words],
                settings.text_sink,
                settings.text_window,
                settings.margin,
            )
        records.append(chunk_record(game, start, game.words[first:last], cutter.before(first), settings))
        summary.kept += 1
        summary.words += last - first
    return records


def seeks_path(out: str | Path) -> Path:
    """The sidecar index of a chunk file: ``x.jsonl`` or ``x_with_seeks.jsonl`` -> ``x_seeks.jsonl``."""
    out = Path(out)
    stem = out.name.removesuffix(".jsonl").removesuffix("_with_seeks")
    return out.with_name(f"{stem}_seeks.jsonl")


def build_file(
    games: str | Path, out: str | Path, tokenizer, settings: BuildSettings | None = None, *, progress: bool = False
) -> BuildSummary:
    """Chunk every game of ``games`` into ``out`` (JSONL) and write its seek index beside it.

    The file is written to ``out.partial`` and renamed when complete, so a failed build leaves no half file.

    Raises:
        FileNotFoundError: for a missing games file.
        DataError: for the first malformed game record (naming ``file:line``).
    """
    from tqdm import tqdm

    settings = settings or BuildSettings()
    out = Path(out)
    if Path(games).resolve() == out.resolve():
        raise ValueError(f"--out {out} is the games file itself; write the chunks to another file")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary, seeks = BuildSummary(), []
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("wb") as handle:
            for game in tqdm(read_games(games), desc="games", unit="game", disable=not progress):
                for record in build_chunks(game, settings, tokenizer, summary):
                    seeks.append(handle.tell())
                    handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    seeks_path(out).write_text(json.dumps(seeks) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------------------
# Reading chunks back
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkRecord:
    """One training chunk, as read from a chunk file."""

    video: Path
    """The video file (resolved inside the media root)."""
    start: float
    """``video_start`` (seconds)."""
    end: float
    """``video_end`` (seconds)."""
    previous: str
    """The previous text (already cut by the builder)."""
    query: str
    """Text after the first round's video (usually empty)."""
    words: tuple[tuple[float, float, str], ...]
    """The chunk's ``text_stream``."""
    where: str
    """``file:line``."""
    questions: tuple[tuple[float, str, str], ...] = ()
    """The ``qa_stream``: ``(time, question, answer)`` asked at ``time`` (seconds)."""

    @property
    def media(self) -> tuple[Path, ...]:
        """The chunk's one medium (every chunk has a video)."""
        return (self.video,)


def _resolve_video(root: str, value: str, where: str) -> Path:
    parts = value.replace("\\", "/").split("/")
    if os.path.isabs(value) or ".." in parts:
        raise DataError(f"{where}: video path {value!r} must be relative to the media root, without '..'")
    real = os.path.realpath(os.path.join(root, value))
    if not real.startswith(os.path.join(root, "")):
        raise DataError(f"{where}: video path {value!r} leaves the media root {root} through a symlink")
    if not os.path.isfile(real):
        raise MissingMediaError(f"{where}: video {value!r} not found under {root}; fix the path or the media root")
    return Path(real)


def parse_chunk(row, where: str, media_root: str) -> ChunkRecord:
    """A :class:`ChunkRecord` from one parsed published-shape record.

    Raises:
        DataError: naming ``where`` for a record that is not the published shape.
        MissingMediaError: for a video not under ``media_root``.
    """
    shape = "[{role: user, content: [video, text]}, {role: assistant, content: [{text_stream}]}]"
    try:
        user, assistant = row
        assert user["role"] == "user" and assistant["role"] == "assistant"
        video, text = user["content"]
        stream = assistant["content"][0]
        assert video["type"] == "video" and text["type"] == "text" and isinstance(stream["text_stream"], list)
    except (AssertionError, KeyError, TypeError, ValueError, IndexError):
        raise DataError(f"{where}: not a StreamingVLM chunk record {shape}") from None
    questions = []
    for k, item in enumerate(stream.get("qa_stream") or []):
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[2], str) and isinstance(item[3], str)):
            raise DataError(f"{where}: qa_stream[{k}] must be [start, time, question, answer], got {item!r}")
        questions.append((_number(item[1], "question time", where), item[2], item[3]))
    start, end = (_number(video.get(k), k, where) for k in ("video_start", "video_end"))
    if not (0 <= start < end and float(end - start).is_integer()):
        raise DataError(f"{where}: video_start {start} / video_end {end} must span a whole number (>= 1) of seconds")
    previous = video.get("previous") or text.get("previous") or ""
    query = text.get("text") or ""
    if not isinstance(previous, str) or not isinstance(query, str) or not isinstance(video.get("video"), str):
        raise DataError(f"{where}: 'video', 'text' and 'previous' must be strings")
    words = []
    for k, item in enumerate(stream["text_stream"]):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], str)):
            raise DataError(f"{where}: text_stream[{k}] must be [start, end, word], got {item!r}")
        words.append((_number(item[0], "word start", where), _number(item[1], "word end", where), item[2]))
    video_path = _resolve_video(media_root, video["video"], where)
    return ChunkRecord(video_path, start, end, previous, query, tuple(words), where, tuple(questions))


class StreamingChunks:
    """Random access to the records of chunk files, by byte offset (nothing but the index stays in memory).

    The offsets come from one streaming scan of each file (so ``file:line`` in messages is exact); the
    ``<stem>_seeks.jsonl`` sidecar the builder writes is for the published loader.

    Args:
        paths: chunk JSONL files (one or several, concatenated in order).
        media_root: the folder video paths start in.

    Raises:
        FileNotFoundError: for a missing file or media root.
        DataError: for a file without records.
    """

    def __init__(self, paths: str | Path | Iterable[str | Path], media_root: str | Path):
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        self.media_root = os.path.realpath(media_root)
        if not os.path.isdir(self.media_root):
            raise FileNotFoundError(f"media root {media_root} is not a folder; pass the folder video paths start in")
        self.index: list[tuple[Path, int, int]] = []  # (file, byte offset, line)
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(
                    f"chunk file {path} does not exist; build it with flash-vstream data build-streamingvlm"
                )
            found = _offsets(path)
            if not found:
                raise DataError(f"{path} holds no chunk records")
            self.index.extend((path, offset, line) for offset, line in found)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> ChunkRecord:
        path, offset, line = self.index[i]
        where = f"{path}:{line}"
        with path.open("rb") as handle:
            handle.seek(offset)
            raw = handle.readline()
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        return parse_chunk(row, where, self.media_root)

    def check_all(self) -> None:
        """Parse every record once (media resolved), so a bad file fails before training.

        Raises:
            DataError: for the first bad record, naming ``file:line``.
        """
        for i in range(len(self)):
            self[i]


def _offsets(path: Path) -> list[tuple[int, int]]:
    """``(byte offset, line)`` of every non-blank line, from one streaming scan (lines stay exact for ``where``)."""
    starts, position = [], 0
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if raw.strip():
                starts.append((position, line))
            position += len(raw)
    return starts
