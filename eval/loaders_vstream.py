"""VStream-QA loader (Flash-VStream's open-ended benchmark): VS-Ego, VS-Movie, RVS-Ego and RVS-Movie.

Layout of ``IVGSZ/VStream-QA`` (``reference/benchmarks-and-ecosystem.md`` §1.6): ``vstream/`` holds the
offline sets (``test_qa_ego4d.json``, ``test_qa_movienet.json``, clip definitions
``vs_ego.json``/``vs_movie.json``) and ``vstream-realtime/`` the real-time ones (``rvs_ego.json``,
``rvs_movie.json``). Records use the "MSVD format" ``{"video_id", "question", "id", "answer", "answer_type"?,
"duration"?}``; real-time records add ``start_time``/``end_time`` in seconds of the source video.

Real-time questions are asked at ``end_time``: evaluated offline, the model sees the clip from its start up to
that moment, i.e. the window ``[0, end_time - clip start_time]`` (clip start from the clip definitions; times
that are already clip-relative, or non-numeric such as MovieNet ``shot_0012``, are handled as described in
`_window`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from flash_vstream_eval.formats import check_unique_ids, flash_item
from flash_vstream_eval.items import AnnotationError, Item, read_json, read_records, resolve_dataset_dir

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


def load_vstream(root: Path, name: str, source: str | None = None) -> list[Item]:
    """Load one VStream-QA set (``name`` in `VSTREAM_SETS`) from the root or an explicit QA file."""
    spec = VSTREAM_SETS[name]
    root = Path(root)
    path = resolve_dataset_dir(source, root) if source else root / spec.annotations
    if path.is_dir():
        path = path / Path(spec.annotations).name
    clip_starts = _clip_starts(root / spec.clips)
    items = []
    for where, record in read_records(path):
        if not isinstance(record, dict) or "video_id" not in record:
            raise AnnotationError(
                f"{where}: expected a VStream-QA record with 'video_id', 'question', 'answer'."
            )
        video_id = str(record["video_id"])
        media = [f"{folder}/{video_id}{suffix}" for folder in spec.media for suffix in ("", ".mp4")]
        item = flash_item(record, where, root, ("answer_type",), [*media, f"frames/{video_id}"])
        if item.options is not None:
            raise AnnotationError(f"{where}: VStream-QA answers are text, got an option index.")
        categories = {"answer_type": str(record.get("answer_type") or "unknown")}
        start, end = _window(record, clip_starts.get(video_id)) if spec.realtime else (None, None)
        items.append(replace(item, categories=categories, start=start, end=end))
    return check_unique_ids(items, path)
