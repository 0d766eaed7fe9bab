"""Real-time VStream-QA (RVS-Ego, RVS-Movie): each question asked on the live stream at its annotated time.

The real-time setting defines a question by the moment it is asked (``Item.end``, seconds into the video), not by
a window evaluated offline. So `run_realtime_shard` groups a shard's questions by video, plays each video once,
as fast as it decodes, through one `flash_vstream.inference.streaming.StreamSession` (frames at the profile's
rate, 1 fps for Flash-VStream), and asks every question when the stream reaches its time: after every frame at
or before that time is pushed and ingested, before the first frame after it. The answer is computed on the
memory as it is then, so it has seen exactly the frames up to its time; the record says how many (``frames``)
and the stream time of the newest (``stream_time``). A question whose time is past the end of the video, or
that has no time, is asked at the end, on the whole stream.

Two exceptions, both visible in the records: a Flash-family memory folds frames in pairs, so after an odd number
of frames the last one is still waiting for its partner and ``frames`` is one less than the frames pushed
(``frames_pushed``); and a question due before anything reached the memory waits for the first memory step.

Predictions go through the same append-only `predictions.PredictionWriter` as offline runs, so resume is the
same: finished ids are skipped, a video whose questions are all done is not played again, and a video with some
questions left is replayed from its start (a memory is not saved) asking only those.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flash_vstream_eval.items import Item, safe_join
from flash_vstream_eval.predictions import PredictionWriter, recover_predictions
from flash_vstream_eval.profiles import Rules

__all__ = ["can_stream", "run_realtime_shard", "shard_by_video", "video_groups"]

_QUEUE_FRAMES = 64  # frames waiting for ingest; the player blocks on a full queue, so nothing is dropped
_MICRO_BATCH = 8  # frames per vision-encoder call


def can_stream(model: Any) -> bool:
    """Whether ``model`` is a loaded ``FlashVStream`` (what a `StreamSession` takes), not just a `VideoQAModel`."""
    from flash_vstream.inference.pipeline import FlashVStream

    return isinstance(model, FlashVStream)


def video_groups(items: list[Item]) -> list[list[Item]]:
    """The items grouped by video, videos in order of first appearance, each group in asking order.

    Asking order is by time (no time: last), ties in item order.
    """
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.video, []).append(item)
    return [sorted(group, key=lambda item: math.inf if item.end is None else item.end) for group in groups.values()]


def shard_by_video(items: list[Item], rank: int, world: int) -> list[Item]:
    """Rank ``rank``'s items: whole videos ``rank, rank + world, ...``, so no video is played by two ranks."""
    return [item for group in video_groups(items)[rank::world] for item in group]


def _rate(rules: Rules) -> float:
    """Frames per second of stream time: the profile's rate when it samples by rate, else 1 fps."""
    return rules.frames.target_fps if rules.frames.policy == "fps" else 1.0


def _open(path: Path, item: Item, fps: float):
    from flash_vstream.video.sources import FrameFolderSource, VideoFileSource

    if path.is_dir():
        return FrameFolderSource(path, frames_fps=item.frames_fps, speed=None, fps=fps)
    return VideoFileSource(path, speed=None, fps=fps)


class _Player:
    """One video played through ``session``; asks its questions on the way and writes one record each."""

    def __init__(self, session, group: list[Item], rules: Rules, write: Callable[[dict], None]):
        self.session, self.pending, self.rules, self.write = session, list(group), rules, write
        self.pushed = 0

    def play(self, source) -> str | None:
        """Push every frame, asking due questions first; returns why the stream broke, or ``None``."""
        for frame, seconds in source:
            self._ask_due(before=seconds)
            self.session.push_frames(frame, seconds, block=True)
            self.pushed += 1
        end = source.end
        if self.pushed == 0:
            return f"unreadable video: {self.pending[0].video} ({end.message if end else 'no frames'})"
        self.session.finish()
        while self.pending:
            self._ask(self.pending.pop(0))
        return None

    def _ask_due(self, before: float) -> None:
        """Ask the questions whose time is before the frame at ``before`` (once the memory holds something)."""
        while self.pending and self.pending[0].end is not None and self.pending[0].end < before - 1e-6:
            self.session.drain()
            if self.session.stats().memory_version == 0:
                return  # e.g. one Flash frame waiting for its partner: ask after the next memory step
            self._ask(self.pending.pop(0))

    def _ask(self, item: Item) -> None:
        answer = self.session.ask(
            self.rules.prompt(item, None),
            assistant_prefix=self.rules.assistant_prefix,
            max_new_tokens=self.rules.max_new_tokens,
        )
        self.write({
            "id": item.id,
            "prediction": answer.text,
            "frames": int(answer.num_frames),
            "frames_pushed": self.pushed,
            "asked_at": item.end,
            "stream_time": round(answer.stream_time, 3),
        })


def run_realtime_shard(
    items: list[Item],
    path: Path,
    root: Path,
    rules: Rules,
    load: Callable[[], Any],
    progress: bool,
    desc: str,
) -> None:
    """Answer the unfinished ``items`` on live streams of their videos, appending one record per item to ``path``.

    Args:
        items: This rank's questions (whole videos, see `shard_by_video`).
        path: The rank's predictions shard.
        root: The data root (``Item.video`` is relative to it).
        rules: The profile's rules for the benchmark family (prompt, prefix, budget, frame rate).
        load: Returns the loaded model (a ``FlashVStream``); called once, when some video is readable.
        progress: Show a progress bar over videos.
        desc: The progress bar's label.

    Skipped records (missing or unreadable video) are written for every question of such a video and tried
    again on a rerun, as offline. A video that breaks mid-stream keeps the answers asked so far; the questions
    still waiting are asked on the frames delivered.
    """
    from tqdm.auto import tqdm

    done = {str(r["id"]) for r in recover_predictions(path) if not r.get("skipped")}
    groups = video_groups([item for item in items if item.id not in done])
    if not groups:
        return
    sessions: list[Any] = []

    def session() -> Any:
        from flash_vstream.inference.streaming import StreamSession

        if not sessions:
            sessions.append(StreamSession(load(), queue_frames=_QUEUE_FRAMES, micro_batch=_MICRO_BATCH,
                                          max_new_tokens=rules.max_new_tokens))
        else:
            sessions[0].reset()
        return sessions[0]

    with PredictionWriter(path) as writer:
        try:
            for group in tqdm(groups, desc=desc, disable=not progress, dynamic_ncols=True):
                left, skipped = _play_video(group, root, rules, session, writer.write)
                for item in left if skipped else ():
                    writer.write({"id": item.id, "skipped": skipped, "video": item.video})
        finally:
            if sessions:
                sessions[0].close()


def _play_video(group: list[Item], root: Path, rules: Rules, session: Callable[[], Any],
                write: Callable[[dict], None]) -> tuple[list[Item], str | None]:
    """Play one video and ask its questions; returns the questions left unanswered and why (``None``: none)."""
    from flash_vstream.video import VideoError

    video = group[0].video
    path = safe_join(root, video)
    if not path.exists():
        return group, f"missing video: {video}"
    try:
        source = _open(path, group[0], _rate(rules))
    except (VideoError, OSError, ValueError) as err:
        return group, f"unreadable video: {video} ({str(err).strip() or type(err).__name__})"
    player = _Player(session(), group, rules, write)
    try:
        skipped = player.play(source)
    finally:
        source.close()
    return player.pending, skipped
