r"""Training records: LLaVA-style JSON / JSONL rows read into typed :class:`Sample`\ s, media resolved safely.

A data file is a JSON list of row objects, or JSONL (one object per line). A row is::

    {"id": "004539375",
     "image": "00453/004539375.jpg",          # or "video": "...", or "videos": ["...", ...]
     "conversations": [{"from": "human", "value": "<image>\nDescribe the photo."},
                       {"from": "gpt", "value": "A red car parked on a street."}]}

which is the row format of both published Flash-VStream recipes (LLaVA / LLaMA-VID rows for the STAR family,
LLaVA-Video-178K rows for the Qwen recipe). What is accepted, exactly:

- ``id``: a string or an integer (kept as a string); required.
- at most one of ``image``, ``video``, ``videos``; each is one relative path or a non-empty list of them (the
  Qwen recipe writes ``videos`` as a list). ``null`` counts as absent. No key: a text-only sample.
- ``conversations``: a non-empty list of ``{"from", "value"}`` turns; ``from`` is ``human``/``user`` or
  ``gpt``/``assistant``; turns alternate, starting with the user and ending with the assistant.
- placeholders ``<image>`` and ``<video>`` (both mean "a medium goes here", whatever its kind) appear only in user
  turns and are all written as :data:`MEDIA_MARKER` in :attr:`Turn.text`. Their count must equal the number of
  media; a row with media and no placeholder gets ``"<image>\n"`` per medium prepended to its first user turn (the
  LLaVA convention).
- any other key (``source``, ``time``, ...) is ignored.

Media resolve under a media root and never outside it: absolute paths and ``..`` components are refused, and so is
a path whose real location (symlinks followed) leaves the root. The kind comes from the filesystem, never from
words in the path. For a row path ``P`` these are tried in order, the first that exists wins:

1. ``P`` itself: a folder is a frame folder (``frames``); a file is a ``video``, an ``image`` or pre-extracted
   ``features`` (``.safetensors``) by its suffix;
2. ``P`` with its suffix replaced by ``.safetensors``: the LLaVA recipe's feature folders keep the rows' video and
   image names (``webvid/1063125.mp4`` is read as ``webvid/1063125.safetensors``);
3. for a video suffix, ``P`` without it, as a frame folder: the Qwen recipe's rows name ``.../split_2.mp4`` for
   the frames extracted into ``.../split_2/`` (its code appends ``.mp4`` to ``videos`` entries and strips it
   again; here a ``videos`` entry naming the frame folder is read as it is, by rule 1).

Features are safetensors files holding one tensor ``"feature"``: ``(T, 256, 1024)`` CLIP-L/14 patch features of a
video at 1 fps, or ``(256, 1024)`` for an image (the published layout); only the header is read here.

A row that breaks these rules is *malformed*; a row whose medium cannot be used is *skipped*. Both are counted by
reason (:data:`SKIP_REASONS`) and reported as ``file:line: message``; ``strict=True`` raises the first one instead
(:class:`DataError`, or :class:`MissingMediaError` for a missing medium).
"""

from __future__ import annotations

import gc
import json
import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flash_vstream.video.reader import IMAGE_EXTENSIONS

__all__ = [
    "FEATURE_KEY",
    "MEDIA_MARKER",
    "SKIP_REASONS",
    "DataError",
    "Issue",
    "Media",
    "MediaResolver",
    "MissingMediaError",
    "RowSyntaxError",
    "Sample",
    "SourceData",
    "Turn",
    "UnusableMediaError",
    "load_samples",
    "read_rows",
]

MEDIA_KINDS = ("video", "frames", "image", "features")
ROLES = ("user", "assistant")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
MEDIA_KEYS = ("image", "video", "videos")
MEDIA_MARKER = "<image>"
"""How every placeholder is written in :attr:`Turn.text` (the STAR prompts' marker)."""
PLACEHOLDER_RE = re.compile(r"<image>|<video>")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp", ".ts")
FEATURE_EXTENSION = ".safetensors"
FEATURE_KEY = "feature"
"""Name of the tensor in a features file (the published layout)."""
# A safetensors header is a few hundred bytes; a huge length means the file is not safetensors.
_MAX_HEADER_BYTES = 1 << 24

SKIP_REASONS = {
    "malformed": "the row breaks the record format (missing keys, wrong types, roles out of order, placeholder count)",
    "missing_media": "no file or folder at the medium's path under the media root",
    "unsafe_path": "the medium's path is absolute, holds '..', or leaves the media root through a symlink",
    "unknown_media": "the path exists but is neither a video, an image, a frame folder nor a .safetensors file",
    "no_frames": "a frame folder without image files",
    "bad_features": "a .safetensors file without a readable 2-D or 3-D 'feature' tensor",
    "unsupported_media": "the model cannot read the medium (e.g. CLIP features for the Flash family)",
    "unreadable_media": "a video whose container cannot be opened (found when probing videos)",
}
"""Why a row is not used, by reason key (the keys of every skip count)."""


class DataError(ValueError):
    """A data file, row or medium that cannot be used; the message names ``file:line`` and the fix."""


class RowSyntaxError(DataError):
    """A JSONL line that is not JSON (yielded by :func:`read_rows` in place of the row)."""

    def __init__(self, path: str | Path, line: int, detail: str):
        super().__init__(f"{path}:{line}: {detail}")
        self.detail = detail


class MissingMediaError(DataError, FileNotFoundError):
    """A row's medium is not under the media root (raised with ``strict=True``)."""


class UnusableMediaError(ValueError):
    """A medium the model cannot read; raised by a ``media_check`` (see :func:`load_samples`).

    Args:
        message: what is wrong and the fix.
        reason: the skip reason it is counted under (a key of :data:`SKIP_REASONS`).
    """

    def __init__(self, message: str, reason: str = "unsupported_media"):
        super().__init__(message)
        self.reason = reason


class _Skip(Exception):
    """Internal: a row is not used, for ``reason`` (a key of ``SKIP_REASONS``)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True, slots=True)
class Media:
    """One medium of a sample, resolved inside its media root."""

    kind: str
    """"video" (a video file), "frames" (a folder of frame images), "image" or "features" (safetensors)."""
    path: Path
    """Real path (symlinks resolved), inside the media root."""
    num_frames: int | None = None
    """Frames it holds when known without decoding: 1 for an image, the image files of a frame folder, ``T`` of
    features (1 for 2-D image features); ``None`` for a video file (its container is not opened here)."""
    shape: tuple[int, ...] | None = None
    """Shape of the ``"feature"`` tensor of features; ``None`` for the other kinds."""

    def __post_init__(self) -> None:
        if self.kind not in MEDIA_KINDS:
            raise ValueError(f"Media.kind must be one of {MEDIA_KINDS}, got {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a conversation."""

    role: str
    """"user" or "assistant"."""
    text: str
    """The turn's text; every placeholder written as :data:`MEDIA_MARKER`."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Turn.role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True, slots=True)
class Sample:
    """A training sample: media plus an alternating user/assistant conversation."""

    id: str
    """The row's ``id``."""
    media: tuple[Media, ...]
    """Media in row order; placeholder ``i`` (in reading order) stands for ``media[i]``. Empty: text only."""
    turns: tuple[Turn, ...]
    """User and assistant turns, alternating, first user, last assistant."""
    source: str
    """The data file the row came from."""
    line: int
    """1-based line of the row in ``source`` (where its object starts in a JSON list)."""

    @property
    def where(self) -> str:
        """``"file:line"`` of the row, for messages."""
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Issue:
    """A row that was not used: where, why (a key of :data:`SKIP_REASONS`) and what to do."""

    source: str
    line: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass
class SourceData:
    """What :func:`load_samples` read from one data file."""

    path: Path
    """The data file."""
    rows: int
    """Rows in the file (JSON list elements or non-blank JSONL lines)."""
    samples: list[Sample]
    """The usable samples, in file order."""
    skipped: Counter = field(default_factory=Counter)
    """Rows not used, by reason (keys of :data:`SKIP_REASONS`)."""
    issues: list[Issue] = field(default_factory=list)
    """One entry per row not used, in file order."""


# ----------------------------------------------------------------------------------------------------------
# Reading rows
# ----------------------------------------------------------------------------------------------------------

_WS = re.compile(r"\s*")


def read_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield ``(line, row)`` for every row of a JSON list or JSONL file.

    The format is told by the first non-blank character: ``[`` is a JSON list, anything else JSONL. A JSONL
    line that is not JSON is yielded as a :class:`RowSyntaxError` instead of a row (the caller decides whether that is
    fatal); a JSON list that does not parse raises, since nothing after the error can be trusted.

    Raises:
        FileNotFoundError: when the file does not exist.
        DataError: for a JSON list that does not parse, naming ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist; pass a .json or .jsonl file (or a mixture .yaml)")
    text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    start = _WS.match(text).end()
    if text.startswith("[", start):
        yield from _json_array(text, start, path)
        return
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as err:
            yield number, RowSyntaxError(path, number, f"not valid JSON ({err.msg} at column {err.colno})")


def _json_array(text: str, start: int, path: Path) -> Iterator[tuple[int, object]]:
    """The elements of the JSON list at ``text[start]``, each with the line its value starts on."""
    decoder = json.JSONDecoder()
    pos, line, counted = start + 1, 1 + text.count("\n", 0, start), start
    while True:
        pos = _WS.match(text, pos).end()
        if text.startswith("]", pos):
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno}); fix the file "
                "(a JSON list must parse as a whole)"
            ) from None
        yield line, row
        pos = _WS.match(text, pos).end()
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            lineno = 1 + text.count("\n", 0, pos)
            raise DataError(f"{path}:{lineno}: expected ',' or ']' after a row of the JSON list; fix the file")


# ----------------------------------------------------------------------------------------------------------
# Rows -> samples
# ----------------------------------------------------------------------------------------------------------


def _parse_turns(row: dict) -> list[Turn]:
    conversations = row.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise _Skip("malformed", "'conversations' must be a non-empty list of {'from', 'value'} turns")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise _Skip("malformed", f"turn {i} must be an object with a string 'value'")
        who = turn.get("from")
        role = ROLE_ALIASES.get(who) if isinstance(who, str) else None
        if role is None:
            raise _Skip("malformed", f"turn {i} has 'from': {who!r}; use human/user or gpt/assistant")
        expected = ROLES[i % 2]
        if role != expected:
            raise _Skip(
                "malformed",
                f"turn {i} is from {who!r} but should be the {expected}: turns alternate, starting with the user",
            )
        turns.append(Turn(role, PLACEHOLDER_RE.sub(MEDIA_MARKER, turn["value"])))
    if turns[-1].role != "assistant":
        raise _Skip("malformed", "the conversation ends with a user turn; the last turn must be the assistant's")
    return turns


def _media_values(row: dict) -> tuple[str | None, list[str]]:
    """``(key, paths)`` of the row's media; ``(None, [])`` for a text-only row."""
    keys = [key for key in MEDIA_KEYS if row.get(key) is not None]
    if len(keys) > 1:
        raise _Skip("malformed", f"the row has {' and '.join(map(repr, keys))}; keep one of them")
    if not keys:
        return None, []
    key = keys[0]
    value = row[key]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise _Skip("malformed", f"{key!r} must be a path or a non-empty list of paths")
    return key, values


def _place_markers(turns: list[Turn], num_media: int) -> list[Turn]:
    """Check the placeholder count against the media; add the markers to the first user turn when absent."""
    counts = [turn.text.count(MEDIA_MARKER) for turn in turns]
    in_assistant = [i for i, (turn, n) in enumerate(zip(turns, counts, strict=True)) if n and turn.role != "user"]
    if in_assistant:
        raise _Skip("malformed", f"turn {in_assistant[0]} (assistant) holds an <image>/<video> placeholder")
    total = sum(counts)
    if total == 0 and num_media:
        turns[0] = Turn("user", (MEDIA_MARKER + "\n") * num_media + turns[0].text)
    elif total != num_media:
        has = f"{num_media} medium" if num_media == 1 else f"{num_media} media"
        raise _Skip("malformed", f"{total} <image>/<video> placeholder(s) for {has}; make the counts equal")
    return turns


def _row_id(row: dict) -> str:
    sample_id = row.get("id")
    if isinstance(sample_id, bool) or not isinstance(sample_id, (str, int)) or sample_id == "":
        raise _Skip("malformed", f"'id' must be a non-empty string or an integer, got {sample_id!r}")
    return str(sample_id)


# ----------------------------------------------------------------------------------------------------------
# Media
# ----------------------------------------------------------------------------------------------------------


def read_feature_shape(path: str | Path) -> tuple[int, ...]:
    """Shape of the ``"feature"`` tensor of a safetensors file, from its header alone.

    Raises:
        UnusableMediaError: (reason ``bad_features``) when the header cannot be read or has no 2-D/3-D
            ``"feature"`` tensor.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < size <= _MAX_HEADER_BYTES:
                raise ValueError("not a safetensors file")
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as err:
        reason = f"{path}: unreadable safetensors header ({err}); re-extract it"
        raise UnusableMediaError(reason, "bad_features") from None
    entry = header.get(FEATURE_KEY) if isinstance(header, dict) else None
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or len(shape) not in (2, 3) or not all(isinstance(n, int) and n > 0 for n in shape):
        names = sorted(k for k in header if k != "__metadata__") if isinstance(header, dict) else []
        raise UnusableMediaError(
            f"{path}: expected a 2-D or 3-D non-empty tensor {FEATURE_KEY!r} (tensors: {names}, shape: {shape}); "
            "write features as {'feature': (T, 256, 1024)}",
            "bad_features",
        )
    return tuple(shape)


def _count_frames(folder: str) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


class MediaResolver:
    """Resolves row paths inside a media root, caching each path's outcome (rows often share media).

    Args:
        root: media root of ``video``/``videos`` rows (and of ``image`` rows unless ``image_root`` is given).
        image_root: media root of ``image`` rows; default ``root``.

    Raises:
        FileNotFoundError: when a root is not an existing folder.
    """

    def __init__(self, root: str | Path, image_root: str | Path | None = None):
        self.roots = {}
        for key, value in (("video", root), ("image", image_root if image_root is not None else root)):
            real = os.path.realpath(value)
            if not os.path.isdir(real):
                raise FileNotFoundError(f"media root {value} is not a folder; pass the folder the rows' paths start in")
            self.roots[key] = real
        self._prefixes = {real: os.path.join(real, "") for real in self.roots.values()}  # "root/" ("/" for "/")
        self._cache: dict[tuple[str, str], Media | _Skip] = {}

    def resolve(self, value: str, key: str = "video") -> Media:
        """The :class:`Media` at row path ``value`` of row key ``key`` (``image``, ``video`` or ``videos``).

        Raises:
            _Skip: (internal) with the skip reason and a message naming the path.
        """
        root = self.roots["image" if key == "image" else "video"]
        cached = self._cache.get((root, value))
        if cached is None:
            try:
                cached = self._resolve(root, value)
            except _Skip as skip:
                cached = skip
            self._cache[(root, value)] = cached
        if isinstance(cached, _Skip):
            raise cached
        return cached

    def _resolve(self, root: str, value: str) -> Media:
        parts = re.split(r"[\\/]", value)
        if os.path.isabs(value) or value.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", value):
            raise _Skip("unsafe_path", f"media path {value!r} is absolute; write it relative to the media root")
        if ".." in parts:
            raise _Skip("unsafe_path", f"media path {value!r} holds '..'; media must stay inside the media root")
        stem, suffix = os.path.splitext(value)
        candidates = [(value, None)]
        if suffix.lower() != FEATURE_EXTENSION:
            candidates.append((stem + FEATURE_EXTENSION, "file"))
        if suffix.lower() in VIDEO_EXTENSIONS:
            candidates.append((stem, "dir"))
        for candidate, need in candidates:
            real = os.path.realpath(os.path.join(root, candidate))
            if real != root and not real.startswith(self._prefixes[root]):
                raise _Skip("unsafe_path", f"media path {value!r} leaves the media root {root} through a symlink")
            is_dir = os.path.isdir(real)
            if (need == "dir" and not is_dir) or (need == "file" and not os.path.isfile(real)):
                continue
            if is_dir:
                return self._frames(real, value)
            if os.path.isfile(real):
                # The kind comes from the name in the row's folder, not from a symlink's target: content-addressed
                # stores (the Hugging Face cache) link "clip.mp4" to a blob without a suffix.
                return self._file(real, os.path.splitext(candidate)[1].lower(), value)
        tried = ", ".join(repr(c) for c, _ in candidates)
        raise _Skip("missing_media", f"medium {value!r} not found under {root} (tried {tried})")

    @staticmethod
    def _frames(real: str, value: str) -> Media:
        count = _count_frames(real)
        if count == 0:
            raise _Skip("no_frames", f"frame folder {value!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        return Media("frames", Path(real), num_frames=count)

    @staticmethod
    def _file(real: str, suffix: str, value: str) -> Media:
        if suffix in VIDEO_EXTENSIONS:
            return Media("video", Path(real))
        if suffix in IMAGE_EXTENSIONS:
            return Media("image", Path(real), num_frames=1)
        if suffix == FEATURE_EXTENSION:
            try:
                shape = read_feature_shape(real)
            except UnusableMediaError as err:
                raise _Skip(err.reason, f"medium {value!r}: {err}") from None
            return Media("features", Path(real), num_frames=shape[0] if len(shape) == 3 else 1, shape=shape)
        raise _Skip("unknown_media", f"medium {value!r} has suffix {suffix!r}, not a video, image or .safetensors")


# ----------------------------------------------------------------------------------------------------------
# Loading a file
# ----------------------------------------------------------------------------------------------------------

_FIXES = {
    "malformed": "fix or drop the row",
    "missing_media": "check the media root (--media-root, or media_root/image_root/video_root in the mixture) "
    "or drop the row",
    "unsafe_path": "write media paths relative to the media root, without '..' or symlinks leaving it",
}


def load_samples(
    path: str | Path,
    media_root: str | Path | None = None,
    *,
    image_root: str | Path | None = None,
    strict: bool = False,
    media_check: Callable[[Media], None] | None = None,
) -> SourceData:
    """Read a JSON/JSONL data file into samples, resolving media under ``media_root``.

    Args:
        path: the data file.
        media_root: folder the rows' ``video``/``videos`` paths (and ``image`` paths, without ``image_root``)
            are relative to; default: the data file's folder.
        image_root: folder of ``image`` paths (the LLaVA recipes keep images and videos in separate folders).
        strict: raise on the first malformed row or unusable medium instead of counting it.
        media_check: called on every resolved medium; raising :class:`UnusableMediaError` skips the row under
            the error's reason (e.g. a model family that cannot read features).

    Returns:
        The :class:`SourceData` (samples, row count, skips by reason, issues).

    Raises:
        FileNotFoundError: for a missing data file or media root.
        DataError: for a JSON list that does not parse; with ``strict``, for the first row not used
            (:class:`MissingMediaError` when its medium is missing), naming ``file:line`` and the fix.
    """
    path = Path(path)
    if not path.is_file():  # before the media roots: the data file is the likelier mistake
        raise FileNotFoundError(f"data file {path} does not exist; pass a .json or .jsonl file (or a mixture .yaml)")
    resolver = MediaResolver(media_root if media_root is not None else path.parent, image_root)
    out = SourceData(path=path, rows=0, samples=[])
    source = str(path)
    with _collector_paused():
        for line, row in read_rows(path):
            out.rows += 1
            try:
                out.samples.append(_sample(row, source, line, resolver, media_check))
            except _Skip as skip:
                if strict:
                    error = MissingMediaError if skip.reason == "missing_media" else DataError
                    fix = _FIXES.get(skip.reason, "fix the medium or drop the row")
                    raise error(f"{source}:{line}: {skip.message}; {fix} (or run without strict)") from None
                out.skipped[skip.reason] += 1
                out.issues.append(Issue(source, line, skip.reason, skip.message))
    return out


@contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector while rows are parsed, restoring its previous state.

    Parsing allocates millions of small, acyclic objects; each allocation burst triggers collections that rescan the
    growing heap, which more than doubles the loading time of a 100k-row file. Nothing built here forms a cycle,
    so reference counting frees everything the collector would.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _sample(row, source: str, line: int, resolver: MediaResolver, media_check) -> Sample:
    if isinstance(row, RowSyntaxError):
        raise _Skip("malformed", row.detail)
    if not isinstance(row, dict):
        raise _Skip("malformed", f"the row is a JSON {type(row).__name__}, expected an object")
    sample_id = _row_id(row)
    turns = _parse_turns(row)
    key, values = _media_values(row)
    turns = _place_markers(turns, len(values))
    media = tuple(resolver.resolve(value, key) for value in values)
    if media_check is not None:
        for medium in media:
            try:
                media_check(medium)
            except UnusableMediaError as err:
                raise _Skip(err.reason, str(err)) from None
    return Sample(sample_id, media, tuple(turns), source, line)
