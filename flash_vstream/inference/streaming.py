"""``StreamSession``: ingest a live video on a background worker while questions arrive from any thread.

A session owns one stream: a memory state (the family's typed state, fixed size on the device, capped bank),
a bounded queue of frames waiting to be ingested, and the memory prefix cache (:mod:`flash_vstream.inference.kv`).

- :meth:`StreamSession.push_frames` validates frames, copies them into the queue and returns at once. When
  the queue is full (ingest fell behind) the ``drop_policy`` decides: ``"oldest"`` drops the oldest queued
  frames (the memory stays current, a stretch of the backlog is lost); ``"resample"`` drops every other queued
  frame (the backlog keeps its time span at half the rate, again as often as needed). ``target_fps`` thins the
  stream to at most that many frames per second of stream time before anything is queued. Every drop and
  every thinned-out frame is counted. ``block=True`` waits for room instead (for sources that can wait, such
  as a file played as fast as possible).
- The worker takes up to ``micro_batch`` frames at a time, runs the vision encoder on them and folds them into
  the memory (``memory.update``); each update is a new memory *version*. Flash-family frames go in pairs
  (temporal patches): an odd last frame waits in the queue for its partner (:meth:`StreamSession.finish`
  pairs it with a copy of itself, as the offline path pads an odd clip). When there is nothing to ingest the
  worker prefills the prompt head of the newest version (coalesced: only the latest), so a question rarely
  waits for it.
- :meth:`StreamSession.ask` may be called from any thread at any time. Questions go before the next micro-batch;
  each answer is computed on the memory as it is at one version (a consistent snapshot) and reports the stream
  time and frame counts it saw and its latencies. While an answer is generated, frames keep queueing.

Errors in the worker (say, a frame the model cannot take) end it; the next ``push_frames``/``ask`` raises one
:class:`StreamError` naming the cause, until :meth:`StreamSession.reset`. :meth:`StreamSession.close` always
joins the worker.

>>> from flash_vstream import load_model                                  # doctest: +SKIP
>>> from flash_vstream.video.sources import VideoFileSource              # doctest: +SKIP
>>> with StreamSession(load_model("IVGSZ/Flash-VStream-7b")) as session:  # doctest: +SKIP
...     for frame, seconds in VideoFileSource("match.mp4", fps=1.0):
...         session.push_frames(frame, seconds)
...     print(session.ask("Who scored?").text)
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from flash_vstream.inference.kv import MemoryPrefix, PrefixCache
from flash_vstream.inference.pipeline import Answer
from flash_vstream.inference.session_backends import session_backend
from flash_vstream.inference.timeline import Timeline, TimelineRecorder, read_timeline

__all__ = ["DROP_POLICIES", "StreamAnswer", "StreamError", "StreamSession", "StreamStats"]

DROP_POLICIES = ("oldest", "resample")


class StreamError(RuntimeError):
    """A session that cannot go on: it was closed, or its ingest worker failed (the cause is chained)."""


@dataclass(kw_only=True)
class StreamAnswer(Answer):
    """An :class:`~flash_vstream.inference.pipeline.Answer` plus what the stream looked like when it was computed.

    ``num_frames`` counts the frames folded into the memory snapshot the answer saw.

    Attributes:
        question: the question asked.
        stream_time: stream time (seconds) of the newest frame in that snapshot.
        memory_version: the snapshot's memory version (number of updates).
        frames_dropped: frames dropped by the drop policy so far.
        frames_skipped: frames thinned out by ``target_fps`` so far.
        frames_queued: frames waiting to be ingested when the answer started.
        queue_seconds: from the ``ask`` call until the model was free (an in-flight micro-batch finishing).
        first_token_seconds: from the ``ask`` call until the first new token.
        total_seconds: from the ``ask`` call until the answer was decoded.
        prefix_cached: whether the memory prefix came from the cache (False: this question prefilled it).
    """

    question: str
    stream_time: float
    memory_version: int
    frames_dropped: int
    frames_skipped: int
    frames_queued: int
    queue_seconds: float
    first_token_seconds: float
    total_seconds: float
    prefix_cached: bool


@dataclass(frozen=True)
class StreamStats:
    """Counters of a session at one moment (for status lines and tests).

    Attributes:
        frames_pushed: frames given to ``push_frames``.
        frames_seen: frames folded into the memory (padding excluded).
        frames_dropped: frames dropped by the drop policy.
        frames_skipped: frames thinned out by ``target_fps``.
        frames_queued: frames waiting to be ingested.
        stream_time: stream time of the newest frame in the memory (seconds).
        memory_version: memory updates so far.
        ingest_fps: frames per second of wall time over the last micro-batch (0 before the first).
        prefix_version: memory version of the kept prefix (``None``: none yet).
        prefix_hits, prefix_misses: questions that found / did not find their prefix cached.
        device_nbytes: bytes of the memory's fixed-size state.
        bank_nbytes, bank_entries: the retrieval bank's bytes and entries.
        prefix_nbytes: bytes of the kept prefix KV cache.
    """

    frames_pushed: int
    frames_seen: int
    frames_dropped: int
    frames_skipped: int
    frames_queued: int
    stream_time: float
    memory_version: int
    ingest_fps: float
    prefix_version: int | None
    prefix_hits: int
    prefix_misses: int
    device_nbytes: int
    bank_nbytes: int
    bank_entries: int
    prefix_nbytes: int


@dataclass
class _Stream:
    """Everything that belongs to one stream (replaced as a whole by ``reset``)."""

    state: object
    queue: deque = field(default_factory=deque)  # (frame (H, W, 3) uint8, seconds, is_padding)
    recorder: TimelineRecorder = field(default_factory=TimelineRecorder)  # thumbnails and times (model lock)
    prefixes: PrefixCache = field(default_factory=PrefixCache)
    version: int = 0
    pushed: int = 0
    seen: int = 0
    dropped: int = 0
    skipped: int = 0
    stream_time: float = 0.0
    last_pushed: float | None = None
    next_due: float = -math.inf  # target_fps grid
    first_push_wall: float | None = None
    frame_shape: tuple | None = None
    ingest_fps: float = 0.0
    busy: bool = False
    asks_waiting: int = 0
    stopping: bool = False
    error: BaseException | None = None


class StreamSession:
    """A live stream into one model's memory, answering questions at any time. See the module docstring.

    Args:
        vs: a loaded model (:func:`~flash_vstream.load_model`); its family picks the session backend.
        queue_frames: most frames waiting to be ingested (the frame queue's bound).
        drop_policy: what a full queue does: ``"oldest"`` or ``"resample"``.
        target_fps: thin the stream to at most this many frames per second of stream time (``None``: keep all).
        micro_batch: most frames per vision-encoder call (rounded down to whole temporal patches, at least one).
        prefix_cache: keep the prompt head's KV cache per memory version (off: every question prefills it all).
        max_new_tokens: default generation budget of :meth:`ask`.
        backend: the session backend (default: the model family's, :func:`session_backend`); see
            :mod:`flash_vstream.inference.session_backends` for what it provides.

    Raises:
        ValueError: for a bad setting, or a model family without a session backend.

    >>> session = StreamSession(load_model("IVGSZ/Flash-VStream-7b"), target_fps=1.0)  # doctest: +SKIP
    >>> session.push_frames(frames, timestamps)                                        # doctest: +SKIP
    >>> session.ask("What just happened?").first_token_seconds                          # doctest: +SKIP
    """

    def __init__(self, vs, *, queue_frames: int = 64, drop_policy: str = "oldest", target_fps: float | None = None,
                 micro_batch: int = 8, prefix_cache: bool = True, max_new_tokens: int = 16, backend=None):
        for name, value in (("queue_frames", queue_frames), ("micro_batch", micro_batch),
                            ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if drop_policy not in DROP_POLICIES:
            raise ValueError(f"drop_policy must be one of {DROP_POLICIES}, got {drop_policy!r}")
        if target_fps is not None and (isinstance(target_fps, bool) or not isinstance(target_fps, int | float)
                                       or not target_fps > 0):
            raise ValueError(f"target_fps must be a positive number or None, got {target_fps!r}")
        self.vs = vs
        self.backend = backend if backend is not None else session_backend(vs)
        step = self.backend.frames_per_step
        if queue_frames < step:
            raise ValueError(f"queue_frames={queue_frames} must hold at least one memory step ({step} frames)")
        self.queue_frames, self.drop_policy, self.target_fps = queue_frames, drop_policy, target_fps
        self.micro_batch = max(step, micro_batch - micro_batch % step)
        self.prefix_cache, self.max_new_tokens = prefix_cache, max_new_tokens
        self._cv = threading.Condition()  # guards self._s (queue and counters); short holds only
        self._model_lock = threading.Lock()  # the model and the memory state: one user at a time
        self._closed = False
        self._live: dict = {}  # the current stream and worker, for the exit-time finalizer
        self._open_stream()
        # A session still open when the interpreter exits is stopped first: a worker thread killed inside torch
        # aborts the process.
        weakref.finalize(self, _stop_worker, self._cv, self._live)

    # --- lifecycle --------------------------------------------------------------------------------------------
    def _open_stream(self) -> None:
        self._s = _Stream(state=self.backend.init_state())
        self._worker = threading.Thread(target=self._run, args=(self._s,), name="stream-ingest", daemon=True)
        self._live.update(stream=self._s, worker=self._worker)
        self._worker.start()

    def _stop_worker(self) -> None:
        _stop_worker(self._cv, self._live)

    def reset(self) -> None:
        """Start a new stream: empty memory, queue, prefix cache and counters (also after a worker error).

        Raises:
            StreamError: on a closed session.
        """
        if self._closed:
            raise StreamError("the stream session is closed; create a new StreamSession")
        self._stop_worker()
        self._open_stream()

    def close(self) -> None:
        """Stop and join the worker and free the stream (frames still queued are discarded). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_worker()
        with self._cv:
            self._s.queue.clear()
            self._s.prefixes.clear()

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_usable(self, s: _Stream) -> None:
        if self._closed:
            raise StreamError("the stream session is closed; create a new StreamSession")
        if s.error is not None:
            cause = " ".join(str(s.error).split()) or type(s.error).__name__
            raise StreamError(
                f"the ingest worker failed ({type(s.error).__name__}: {cause}); call reset() to start a new stream"
            ) from s.error

    # --- frames in ----------------------------------------------------------------------------------------
    def push_frames(self, frames, timestamps=None, *, block: bool = False, timeout: float | None = None) -> int:
        """Queue frames for ingest; returns how many were queued (the rest thinned out by ``target_fps``).

        Args:
            frames: one uint8 RGB frame ``(H, W, 3)``, or ``(n, H, W, 3)``, or a list of ``(H, W, 3)`` frames.
                They are copied: the caller may reuse its buffers at once.
            timestamps: stream time of each frame in seconds (a number for one frame), non-decreasing across
                calls; ``None`` stamps them with the wall-clock time since the first push (a live feed).
            block: when the queue is full, wait for room instead of applying the drop policy.
            timeout: with ``block``, most seconds to wait before the drop policy applies after all.

        Raises:
            ValueError: for frames that are not uint8 ``(H, W, 3)`` of the stream's size, or timestamps of the
                wrong count, not finite or going backwards.
            StreamError: when the session is closed or its worker failed.
        """
        s = self._s
        self._check_usable(s)
        batch = _as_frames(frames)
        times = self._stamps(s, timestamps, len(batch))
        shape = batch[0].shape
        if s.frame_shape is not None and shape != s.frame_shape:
            raise ValueError(f"frames are {shape[1]}x{shape[0]} but this stream's frames are "
                             f"{s.frame_shape[1]}x{s.frame_shape[0]}; resize them, or reset() for a new stream")
        queued = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            s.frame_shape = shape
            for frame, seconds in zip(batch, times, strict=True):
                s.pushed += 1
                s.last_pushed = seconds
                if self.target_fps is not None:
                    if seconds + 1e-9 < s.next_due:
                        s.skipped += 1
                        continue
                    s.next_due = (math.floor(seconds * self.target_fps + 1e-6) + 1) / self.target_fps
                self._make_room(s, block, deadline)
                s.queue.append((np.array(frame, copy=True), seconds, False))
                queued += 1
            self._cv.notify_all()
        return queued

    def _stamps(self, s: _Stream, timestamps, n: int) -> np.ndarray:
        if timestamps is None:
            now = time.monotonic()
            s.first_push_wall = now if s.first_push_wall is None else s.first_push_wall
            times = np.full(n, now - s.first_push_wall)
        else:
            times = np.atleast_1d(np.asarray(timestamps, dtype=np.float64))
        if times.shape != (n,):
            raise ValueError(f"timestamps must hold one time per frame ({n}), got shape {times.shape}")
        if not np.isfinite(times).all():
            raise ValueError("timestamps must be finite seconds")
        previous = -math.inf if s.last_pushed is None else s.last_pushed
        if (np.diff(np.concatenate([[previous], times])) < 0).any():
            raise ValueError(f"timestamps must not go backwards (last pushed {previous:.3f} s, got {times.tolist()})")
        return times

    def _make_room(self, s: _Stream, block: bool, deadline: float | None) -> None:
        """Free one queue slot (called with ``self._cv`` held): wait for it, or drop by policy."""
        while block and len(s.queue) >= self.queue_frames and not (s.stopping or s.error):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._cv.notify_all()  # the frames this push queued so far: the worker may be waiting for them
            self._cv.wait(left)
        self._check_usable(s)
        while len(s.queue) >= self.queue_frames:
            before = len(s.queue)
            if self.drop_policy == "oldest":
                s.queue.popleft()
            else:  # keep the newest frame and every other one before it
                kept = list(s.queue)[::-1][::2][::-1]
                s.queue.clear()
                s.queue.extend(kept)
            s.dropped += before - len(s.queue)

    def finish(self, timeout: float | None = None) -> bool:
        """The stream has ended: pad a frame still waiting for its temporal partner, then :meth:`drain`.

        The pad is a copy of the last frame at the same time (the offline path pads an odd clip the same way);
        it is not counted as a frame seen.
        """
        s = self._s
        self._check_usable(s)
        step = self.backend.frames_per_step
        with self._cv:
            missing = (-len(s.queue)) % step
            if missing and s.queue:
                frame, seconds, _ = s.queue[-1]
                s.queue.extend((frame, seconds, True) for _ in range(missing))
                self._cv.notify_all()
        return self.drain(timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the worker is idle; returns False on timeout.

        Idle: every whole memory step queued is ingested and, with the prefix cache on, the newest version's
        prefix is built.

        Raises:
            StreamError: when the session is closed or its worker failed (also while waiting).
        """
        s = self._s
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                self._check_usable(s)
                if not s.busy and self._job(s) is None:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)

    # --- the worker ---------------------------------------------------------------------------------------
    def _job(self, s: _Stream) -> str | None:
        """What the worker would do next ("ingest", "prefix") or ``None`` (called with ``self._cv`` held)."""
        if len(s.queue) >= self.backend.frames_per_step:
            return "ingest"
        if self.prefix_cache and s.version > 0 and s.prefixes.latest_version != s.version:
            return "prefix"
        return None

    def _run(self, s: _Stream) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not s.stopping and (s.asks_waiting or self._job(s) is None):
                            self._cv.wait()
                        if s.stopping:
                            return
                        job = self._job(s)
                        batch = self._take_batch(s) if job == "ingest" else None
                        s.busy = True
                    with self._model_lock:
                        if batch is not None:
                            self._ingest(s, batch)
                        else:
                            self._build_prefix(s)
                    batch = None  # no frame array outlives its ingest
                    with self._cv:
                        s.busy = False
                        self._cv.notify_all()
        except BaseException as err:  # surfaces on the next push/ask; the thread always ends
            with self._cv:
                s.error, s.busy = err, False
                self._cv.notify_all()

    def _take_batch(self, s: _Stream) -> list:
        step = self.backend.frames_per_step
        count = min(self.micro_batch, len(s.queue))
        count -= count % step
        return [s.queue.popleft() for _ in range(count)]

    def _ingest(self, s: _Stream, batch: list) -> None:
        """Encode and fold one micro-batch in (model lock held)."""
        started = time.perf_counter()
        frames = np.stack([frame for frame, _, _ in batch])  # (t, H, W, 3)
        times = np.array([seconds for _, seconds, _ in batch])
        self.backend.ingest(s.state, frames, times)
        s.recorder.add(frames, times, [not pad for _, _, pad in batch])
        real = sum(not pad for _, _, pad in batch)
        elapsed = time.perf_counter() - started
        with self._cv:
            s.version += 1
            s.seen += real
            s.stream_time = float(times[-1])
            s.ingest_fps = len(batch) / elapsed if elapsed > 0 else 0.0

    def _build_prefix(self, s: _Stream) -> MemoryPrefix:
        """Read the memory and prefill the prompt head for its current version (model lock held)."""
        snapshot = self.backend.snapshot(s.state)
        prompt = self.backend.prompt(snapshot, "")
        entry = MemoryPrefix(s.version, prompt.head_ids, snapshot, self.backend.prefill(snapshot, prompt))
        s.prefixes.put(entry)
        return entry

    # --- questions ----------------------------------------------------------------------------------------
    def ask(self, question: str, *, assistant_prefix: str = "", max_new_tokens: int | None = None,
            **generation) -> StreamAnswer:
        """Answer ``question`` from the memory as it is now; thread-safe, questions go before ingest.

        Args:
            question: the user's question.
            assistant_prefix: text the reply is forced to start with (e.g. ``"Best option: ("``).
            max_new_tokens: generation budget (default: the session's).
            **generation: further ``generate`` arguments (greedy decoding by default); a ``streamer`` receives
                the tokens as they come.

        Raises:
            ValueError: when no frame has been folded into the memory yet.
            StreamError: when the session is closed or its worker failed.
        """
        start = time.perf_counter()
        s = self._s
        self._check_usable(s)
        with self._cv:
            s.asks_waiting += 1
        waiting = True
        try:
            with self._model_lock:
                with self._cv:
                    s.asks_waiting -= 1
                    waiting = False
                    self._cv.notify_all()
                    self._check_usable(s)
                    counts = (s.version, s.seen, s.stream_time, s.dropped, s.skipped, len(s.queue))
                queued = time.perf_counter() - start
                with torch.inference_mode():
                    return self._answer(s, question, assistant_prefix, max_new_tokens, generation, counts,
                                        start, queued)
        finally:
            if waiting:
                with self._cv:
                    s.asks_waiting -= 1
                    self._cv.notify_all()

    def _answer(self, s, question, assistant_prefix, max_new_tokens, generation, counts, start, queued):
        version, seen, stream_time, dropped, skipped, queued_frames = counts
        if version == 0:
            step = self.backend.frames_per_step
            raise ValueError(f"nothing to answer from yet: no frame is in the memory (push frames first; this "
                             f"model folds {step} frame{'s' if step > 1 else ''} per memory step)")
        latest = s.prefixes.latest
        snapshot = latest.snapshot if latest is not None and latest.version == version else self.backend.snapshot(
            s.state)
        prompt = self.backend.prompt(snapshot, question, assistant_prefix)
        prefix, cached = None, False
        if self.prefix_cache:
            entry = s.prefixes.get(version, prompt.head_ids)
            cached = entry is not None
            if entry is None:
                entry = MemoryPrefix(version, prompt.head_ids, snapshot, self.backend.prefill(snapshot, prompt))
                s.prefixes.put(entry)
            prefix = entry.cache  # the decoder copies it; the kept cache is never modified
        generation.setdefault("do_sample", False)
        generation.setdefault("pad_token_id", self.vs.tokenizer.pad_token_id)
        first = _FirstToken(generation.pop("streamer", None))
        new = self.backend.generate(snapshot, prompt, prefix, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                    streamer=first, **generation)
        text = self.vs.tokenizer.decode(new[0], skip_special_tokens=True).strip()
        done = time.perf_counter()
        return StreamAnswer(
            text=text, num_frames=seen, num_visual_tokens=snapshot.num_visual_tokens,
            prompt_tokens=int(prompt.input_ids.shape[1]), question=question, stream_time=stream_time,
            memory_version=version, frames_dropped=dropped, frames_skipped=skipped, frames_queued=queued_frames,
            queue_seconds=queued, first_token_seconds=(first.at or done) - start, total_seconds=done - start,
            prefix_cached=cached, timeline=read_timeline(self.vs, s.state, s.recorder),
        )

    # --- inspection ---------------------------------------------------------------------------------------
    def timeline(self) -> Timeline | None:
        """The memory's timeline now (waits for an in-flight micro-batch); ``None`` before the first frame.

        Raises:
            StreamError: when the session is closed or its worker failed.
        """
        s = self._s
        self._check_usable(s)
        with self._model_lock, torch.inference_mode():
            if s.version == 0:
                return None
            return read_timeline(self.vs, s.state, s.recorder)

    @property
    def state(self):
        """The memory state of the current stream (read-only use: the worker updates it)."""
        return self._s.state

    def stats(self) -> StreamStats:
        """A snapshot of the counters (never waits for the model)."""
        s = self._s
        with self._cv:
            latest = s.prefixes.latest
            counters = dict(
                frames_pushed=s.pushed, frames_seen=s.seen, frames_dropped=s.dropped, frames_skipped=s.skipped,
                frames_queued=len(s.queue), stream_time=s.stream_time, memory_version=s.version,
                ingest_fps=s.ingest_fps, prefix_version=None if latest is None else latest.version,
                prefix_hits=s.prefixes.hits, prefix_misses=s.prefixes.misses,
            )
        state = s.state
        return StreamStats(**counters, device_nbytes=state.device_nbytes(), bank_nbytes=state.bank_nbytes(),
                           bank_entries=state.bank_entries, prefix_nbytes=0 if latest is None else latest.nbytes())


def _stop_worker(cv: threading.Condition, live: dict) -> None:
    """Ask the worker of ``live["stream"]`` to stop and join it."""
    with cv:
        live["stream"].stopping = True
        cv.notify_all()
    live["worker"].join()


class _FirstToken(BaseStreamer):
    """Notes when ``generate`` emits its first new token (its first ``put`` is the prompt); forwards to ``inner``."""

    def __init__(self, inner: BaseStreamer | None = None):
        self.inner, self.calls, self.at = inner, 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()


def _as_frames(frames) -> list[np.ndarray]:
    """``(H, W, 3)`` uint8 frames of a push, as a list (views; copied when queued)."""
    if isinstance(frames, list | tuple):
        batch = [np.asarray(frame) for frame in frames]
    else:
        array = np.asarray(frames)
        batch = [array] if array.ndim == 3 else list(array) if array.ndim == 4 else [array]
    if not batch:
        raise ValueError("push_frames got no frames; pass at least one (H, W, 3) uint8 frame")
    for frame in batch:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise ValueError(f"frames must be uint8 RGB arrays (H, W, 3) or (n, H, W, 3); got {frame.dtype} "
                             f"{frame.shape}")
    if any(frame.shape != batch[0].shape for frame in batch):
        raise ValueError("the frames of one push differ in size; a stream's frames share one size")
    return batch
