"""MVBench loader: 20 tasks, their video folders, start/end windows and the frame-folder task.

The official release (``OpenGVLab/MVBench``, also what lmms-eval reads) has ``json/<task>.json`` files with
``{"video", "question", "candidates", "answer" (text), "start"?, "end"?}`` records and videos under ``video/``
in one folder per source dataset (`MVBENCH_TASKS`). ``episodic_reasoning`` is stored as folders of frames
extracted at 3 fps (files numbered from 1). Flash-VStream's ``test_qa.json`` (``video_id`` = path under the
video folder) is read too. A malformed record goes to the `RecordLog`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from flash_vstream_eval.formats import annotation_files, check_unique_ids, flash_item
from flash_vstream_eval.items import AnnotationError, Item, RecordLog, find_media, read_records, require, strict_log

__all__ = ["MVBENCH_TASKS", "MvbenchTask", "load_mvbench"]


@dataclass(frozen=True)
class MvbenchTask:
    """Where one MVBench task keeps its media and how it is sampled."""

    folder: str
    """Folder under ``video/`` holding the task's files."""
    bounded: bool = False
    """Whether records carry a start/end window that sampling must respect."""
    frames_fps: float | None = None
    """Frame rate of a frame-folder task (files numbered from 1); ``None`` for video files."""


MVBENCH_TASKS: dict[str, MvbenchTask] = {
    "action_sequence": MvbenchTask("star/Charades_segment", bounded=True),
    "action_prediction": MvbenchTask("star/Charades_segment", bounded=True),
    "action_antonym": MvbenchTask("ssv2_video_mp4"),
    "fine_grained_action": MvbenchTask("Moments_in_Time_Raw/videos"),
    "unexpected_action": MvbenchTask("FunQA_test/test"),
    "object_existence": MvbenchTask("clevrer/video_validation"),
    "object_interaction": MvbenchTask("star/Charades_segment", bounded=True),
    "object_shuffle": MvbenchTask("perception/videos"),
    "moving_direction": MvbenchTask("clevrer/video_validation"),
    "action_localization": MvbenchTask("sta/sta_video_segment", bounded=True),
    "scene_transition": MvbenchTask("scene_qa/video"),
    "action_count": MvbenchTask("perception/videos"),
    "moving_count": MvbenchTask("clevrer/video_validation"),
    "moving_attribute": MvbenchTask("clevrer/video_validation"),
    "state_change": MvbenchTask("perception/videos"),
    "fine_grained_pose": MvbenchTask("nturgbd_convert"),
    "character_order": MvbenchTask("perception/videos"),
    "egocentric_navigation": MvbenchTask("vlnqa"),
    "episodic_reasoning": MvbenchTask("tvqa/frames_fps3_hq", bounded=True, frames_fps=3.0),
    "counterfactual_inference": MvbenchTask("clevrer/video_validation"),
}

MVBENCH_PATTERNS = ("test_qa.json", "json/*.json", "*.json")


def _media_candidates(task: MvbenchTask, name: str) -> list[str]:
    # Some clevrer/star files ship under data0613/ instead of video/.
    candidates = [
        f"video/{task.folder}/{name}",
        f"{task.folder}/{name}",
        f"video/data0613/{task.folder}/{name}",
    ]
    if task.frames_fps is not None:
        candidates.append(f"video/tvqa/video_fps3_hq_segment/{name}.mp4")
    return candidates


def _seconds(record: dict, key: str, where: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: {key!r} must be a number of seconds, got {value!r}.") from None


def _official_item(record: dict, where: str, root: Path, task_name: str, index: int) -> Item:
    require(record, ["video", "question", "candidates", "answer"], where)
    task = MVBENCH_TASKS[task_name]
    if not isinstance(record["candidates"], list):
        raise AnnotationError(f"{where}: 'candidates' must be a list of option texts.")
    options = tuple(str(c) for c in record["candidates"])
    if record["answer"] not in options:
        raise AnnotationError(f"{where}: answer {record['answer']!r} is not one of the candidates {options}.")
    video, is_dir = find_media(root, _media_candidates(task, str(record["video"])), where)
    start, end = (
        (_seconds(record, "start", where), _seconds(record, "end", where)) if task.bounded else (None, None)
    )
    return Item(
        id=f"{task_name}_{index}",
        video=video,
        question=str(record["question"]),
        options=options,
        answer=options.index(record["answer"]),
        categories={"task_type": task_name},
        start=start,
        end=end,
        frames_dir=is_dir,
        frames_fps=task.frames_fps or 1.0,
        source="official",
    )


def load_mvbench(root: Path, source: str | None = None, log: RecordLog | None = None) -> list[Item]:
    """Load MVBench (official/lmms-eval ``json/<task>.json`` files, or Flash-VStream ``test_qa.json``).

    Malformed records go to ``log`` (without one, the first raises); a file named after no task is an error.
    """
    log = strict_log(log)
    files = annotation_files(root, source, MVBENCH_PATTERNS, "MVBench")
    root = Path(root)
    items: list[Item] = []
    for path in files:
        records = list(read_records(path, log))
        if path.stem not in MVBENCH_TASKS and any(isinstance(r, dict) and "video_id" in r for _, r in records):
            for where, record in records:
                with log.guard(where, record):
                    item = flash_item(record, where, root, ("task_type",))
                    items.append(replace(item, categories={"task_type": str(record.get("task_type", "unknown"))}))
            continue
        if path.stem not in MVBENCH_TASKS:
            raise AnnotationError(
                f"{path}: {path.stem!r} is not an MVBench task; expected one of {sorted(MVBENCH_TASKS)}."
            )
        for index, (where, record) in enumerate(records):
            with log.guard(where, record, f"{path.stem}_{index}"):
                items.append(_official_item(record, where, root, path.stem, index))
    return check_unique_ids(items, files[0], log)
