"""VStream-QA loader (Flash-VStream's open-ended benchmark): VS-Ego, VS-Movie, RVS-Ego and RVS-Movie.

Layout of the ``IVGSZ/VStream-QA`` dataset: ``vstream/`` holds the offline sets (``test_qa_ego4d.json``,
``test_qa_movienet.json``, clip definitions ``vs_ego.json``/``vs_movie.json``) and ``vstream-realtime/`` the
real-time ones (the same two QA file names, clip definitions ``rvs_ego.json``/``rvs_movie.json``). A clip definition
is ``{"video_id", "original_video", "start_time", "end_time"}`` in seconds of the source video (MovieNet clips give
``start_shot``/``end_shot`` instead). Records use the "MSVD format" ``{"video_id", "question", "id", "answer",
"answer_type"?, "duration"?}``; real-time records add ``start_time``/``end_time`` in seconds of the source video.

``--annotations`` may name the dataset root (the folder holding ``vstream/`` and ``vstream-realtime/``), the set's
folder, or the QA file itself; the clip definitions are looked for beside the QA file.

Real-time questions are asked at ``end_time``: evaluated offline, the model sees the clip from its start up to
that moment, i.e. the window ``[0, end_time - clip start_time]`` (clip start from the clip definitions; times
that are already clip-relative, or non-numeric such as MovieNet ``shot_0012``, are handled as described in
`_window`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from flash_vstream_eval.formats import check_unique_ids, flash_item
from flash_vstream_eval.items import (
    AnnotationError,
    Item,
    RecordLog,
    read_json,
    read_records,
    resolve_dataset_dir,
    strict_log,
)

__all__ = ["VSTREAM_SETS", "VstreamSet", "load_vstream"]


@dataclass(frozen=True)
class VstreamSet:
    """Files and media folders of one VStream-QA set."""

    annotations: str
    """QA file relative to the root."""
    clips: str
    """Clip-definition file relative to the root."""
    media: tuple[str, ...]
    """Folder(s) holding ``<video_id>`` media, tried in order."""
    realtime: bool
    """Whether questions carry the time at which they are asked."""


VSTREAM_SETS: dict[str, VstreamSet] = {
    "vs_ego": VstreamSet(
        "vstream/test_qa_ego4d.json",
        "vstream/vs_ego.json",
        ("vstream/ego4d_videos", "vstream/ego4d_frames"),
        realtime=False,
    ),
    "vs_movie": VstreamSet(
        "vstream/test_qa_movienet.json",
        "vstream/vs_movie.json",
        ("vstream/movienet_frames", "vstream/movienet_videos"),
        realtime=False,
    ),
    "rvs_ego": VstreamSet(
        "vstream-realtime/test_qa_ego4d.json",
        "vstream-realtime/rvs_ego.json",
        ("vstream-realtime/ego4d_frames_online",),
        realtime=True,
    ),
    "rvs_movie": VstreamSet(
        "vstream-realtime/test_qa_movienet.json",
        "vstream-realtime/rvs_movie.json",
        ("vstream-realtime/movienet_frames_online",),
        realtime=True,
    ),
}


def _clip_starts(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    clips = read_json(path)
    if not isinstance(clips, list):
        raise AnnotationError(f"{path}: expected a list of clip definitions.")
    starts = {}
    for clip in clips:
        if isinstance(clip, dict) and isinstance(clip.get("start_time"), (int, float)):
            starts[str(clip["video_id"])] = float(clip["start_time"])
    return starts


def _window(record: dict, clip_start: float | None) -> tuple[float | None, float | None]:
    """``(0, asked_at)`` for a real-time question, in clip seconds; ``(None, None)`` when unknown.

    Absolute times are shifted by the clip start; a time smaller than the clip start is taken as already
    clip-relative. Non-numeric times (e.g. "shot_0012") give no window: the whole clip is used.
    """
    end = record.get("end_time")
    if not isinstance(end, (int, float)) or isinstance(end, bool):
        return None, None
    end = float(end)
    if clip_start is not None and end >= clip_start:
        end -= clip_start
    return 0.0, end


def _qa_file(spec: VstreamSet, root: Path, source: str | None) -> Path:
    """The set's QA file: under the root, or under ``source`` (dataset root, set folder or the file itself)."""
    if not source:
        return root / spec.annotations
    path = resolve_dataset_dir(source, root)
    if path.is_file():
        return path
    for candidate in (path / spec.annotations, path / Path(spec.annotations).name):
        if candidate.is_file():
            return candidate
    raise AnnotationError(
        f"no {spec.annotations} under {path} (looked for {path / spec.annotations} and "
        f"{path / Path(spec.annotations).name}); pass the VStream-QA folder that holds vstream/ and vstream-realtime/, "
        "or the QA file itself, as --annotations."
    )


def _clip_file(spec: VstreamSet, root: Path, qa_file: Path) -> Path:
    """The clip definitions: beside the QA file first, then where the root layout keeps them."""
    beside = qa_file.parent / Path(spec.clips).name
    return beside if beside.is_file() else root / spec.clips


def _vstream_item(record: dict, where: str, root: Path, spec: VstreamSet, clip_starts: dict[str, float]) -> Item:
    if not isinstance(record, dict) or "video_id" not in record:
        raise AnnotationError(f"{where}: expected a VStream-QA record with 'video_id', 'question', 'answer'.")
    video_id = str(record["video_id"])
    media = [f"{folder}/{video_id}{suffix}" for folder in spec.media for suffix in ("", ".mp4")]
    item = flash_item(record, where, root, ("answer_type",), [*media, f"frames/{video_id}"])
    if item.options is not None:
        raise AnnotationError(f"{where}: VStream-QA answers are text, got an option index.")
    categories = {"answer_type": str(record.get("answer_type") or "unknown")}
    start, end = _window(record, clip_starts.get(video_id)) if spec.realtime else (None, None)
    return replace(item, categories=categories, start=start, end=end)


def load_vstream(root: Path, name: str, source: str | None = None, log: RecordLog | None = None) -> list[Item]:
    """Load one VStream-QA set (``name`` in `VSTREAM_SETS`) from the root or ``source``.

    Malformed records go to ``log`` (without one, the first raises).
    """
    log = strict_log(log)
    spec = VSTREAM_SETS[name]
    root = Path(root)
    path = _qa_file(spec, root, source)
    clip_starts = _clip_starts(_clip_file(spec, root, path))
    items = []
    for where, record in read_records(path, log):
        with log.guard(where, record):
            items.append(_vstream_item(record, where, root, spec, clip_starts))
    return check_unique_ids(items, path, log)
