"""StreamSession: the queue and its drop policies, pairing, errors, close/reset and thread safety (with a
controllable fake backend), then the real families against the offline ``FlashVStream.answer`` path."""

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

from flash_vstream.cli import main as cli_main
from flash_vstream.inference.session_backends import Prompt, Snapshot
from flash_vstream.inference.streaming import StreamError, StreamSession
from flash_vstream.memory.base import MemoryState

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"


@dataclass
class FakeState(MemoryState):
    frames: list = field(default_factory=list)
    frames_seen: int = 0

    def device_tensors(self):
        return [torch.zeros(4)]


class FakeBackend:
    """Frame ``i`` is a 2x2 image of value ``i``; the "answer" lists the frame values its snapshot holds."""

    def __init__(self, step: int = 1, gate: threading.Event | None = None, fail_on: int | None = None):
        self.frames_per_step, self.gate, self.fail_on = step, gate, fail_on
        self.started = threading.Event()
        self.batches: list[list[int]] = []

    def init_state(self):
        return FakeState()

    def ingest(self, state, frames, times):
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        values = [int(frame[0, 0, 0]) for frame in frames]
        if self.fail_on in values:
            raise RuntimeError(f"boom on frame {self.fail_on}")
        self.batches.append(values)
        state.frames = state.frames + values

    def snapshot(self, state):
        return Snapshot(tuple(state.frames), len(state.frames))

    def prompt(self, snapshot, question, assistant_prefix=""):
        ids = torch.tensor([[7] * snapshot.num_visual_tokens + [3] * (1 + len(question))])
        return Prompt(ids, snapshot.num_visual_tokens, {})

    def prefill(self, snapshot, prompt):
        return DynamicCache()

    def generate(self, snapshot, prompt, cache, streamer=None, **generation):
        streamer.put(prompt.input_ids)
        streamer.put(torch.tensor([0]))
        return torch.tensor([list(snapshot.visual)])


FAKE_TOKENIZER = SimpleNamespace(pad_token_id=0, decode=lambda ids, **_: ",".join(map(str, ids.tolist())))
FAKE_VS = SimpleNamespace(tokenizer=FAKE_TOKENIZER)


def frame(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


def fake_session(**kwargs) -> StreamSession:
    backend = FakeBackend(**{k: kwargs.pop(k) for k in ("step", "gate", "fail_on") if k in kwargs})
    return StreamSession(FAKE_VS, backend=backend, **kwargs)


def stall_worker_on_frame_0(session, backend):
    """Push frame 0 and wait until the worker is inside its ingest (held there by the backend's gate)."""
    session.push_frames(frame(0), 0.0)
    assert backend.started.wait(5)


@pytest.mark.parametrize(
    ("policy", "seen", "dropped"),
    [("oldest", [0, 6, 7, 8, 9], 5), ("resample", [0, 6, 8, 9], 6)],
)
def test_drop_policies_when_ingest_falls_behind(policy, seen, dropped):
    gate = threading.Event()
    with fake_session(gate=gate, queue_frames=4, micro_batch=1, drop_policy=policy) as session:
        stall_worker_on_frame_0(session, session.backend)
        for i in range(1, 10):  # the worker is stuck on frame 0: frames 1..9 meet a queue of 4
            session.push_frames(frame(i), float(i))
        assert session.stats().frames_queued == len(seen) - 1
        gate.set()
        session.drain()
        stats = session.stats()
        assert [v for batch in session.backend.batches for v in batch] == seen
        assert (stats.frames_pushed, stats.frames_seen, stats.frames_dropped) == (10, len(seen), dropped)
        answer = session.ask("which frames?")
        assert answer.text == ",".join(map(str, seen)) and answer.frames_dropped == dropped
        assert answer.num_frames == len(seen) and answer.stream_time == 9.0


def test_block_waits_for_room_instead_of_dropping():
    gate = threading.Event()
    with fake_session(gate=gate, queue_frames=2, micro_batch=1) as session:
        stall_worker_on_frame_0(session, session.backend)
        pusher = threading.Thread(target=session.push_frames, args=(np.stack([frame(i) for i in range(1, 6)]),
                                                                    np.arange(1.0, 6.0)), kwargs={"block": True})
        pusher.start()
        time.sleep(0.2)
        assert pusher.is_alive() and session.stats().frames_queued == 2  # waiting for room, nothing dropped
        gate.set()
        pusher.join(5)
        session.drain()
        assert session.stats().frames_seen == 6 and session.stats().frames_dropped == 0


def test_target_fps_thins_the_stream_and_counts_it():
    with fake_session(target_fps=2.0, micro_batch=64) as session:
        queued = session.push_frames(np.stack([frame(i) for i in range(30)]), np.arange(30) / 10.0)
        session.drain()
        stats = session.stats()
    assert queued == 6 and (stats.frames_seen, stats.frames_skipped, stats.frames_dropped) == (6, 24, 0)
    assert session.backend.batches == [[0, 5, 10, 15, 20, 25]]  # 0.0, 0.5, ..., 2.5 s


def test_pairs_wait_for_their_partner_and_finish_pads_the_last():
    with fake_session(step=2, micro_batch=5) as session:  # micro_batch rounds down to 4 frames (2 patches)
        assert session.micro_batch == 4
        with pytest.raises(ValueError, match="folds 2 frames per memory step"):
            session.ask("anything yet?")
        session.push_frames(np.stack([frame(i) for i in range(3)]), [0.0, 1.0, 2.0])
        session.drain()
        assert session.stats().frames_queued == 1 and session.ask("so far?").text == "0,1"
        session.finish()
        stats = session.stats()
        assert session.backend.batches[-1] == [2, 2] and stats.frames_seen == 3 and stats.frames_queued == 0


def test_worker_error_surfaces_on_push_and_ask_until_reset():
    with fake_session(fail_on=3, micro_batch=1) as session:
        session.push_frames(np.stack([frame(i) for i in range(5)]), np.arange(5.0))
        worker = session._worker
        worker.join(5)
        assert not worker.is_alive()  # the failure ended the thread; nothing hangs
        for call in (lambda: session.push_frames(frame(9), 9.0), lambda: session.ask("still there?"),
                     session.drain):
            with pytest.raises(StreamError, match=r"ingest worker failed \(RuntimeError: boom on frame 3\)"):
                call()
        session.reset()
        session.push_frames(frame(1), 0.0)
        session.drain()
        assert session.ask("after reset?").text == "1" and session.stats().frames_pushed == 1


def test_close_joins_the_worker_and_refuses_later_use():
    gate = threading.Event()
    session = fake_session(gate=gate, micro_batch=1)
    stall_worker_on_frame_0(session, session.backend)
    threading.Timer(0.2, gate.set).start()
    session.close()  # waits for the in-flight micro-batch, then the thread is gone
    assert not session._worker.is_alive()
    session.close()
    with pytest.raises(StreamError, match="closed"):
        session.push_frames(frame(1), 1.0)
    with pytest.raises(StreamError, match="closed"):
        session.ask("hello?")


def test_push_validation_names_the_problem():
    with fake_session() as session:
        bad = [
            (np.zeros((2, 2, 3), np.float32), 0.0, "uint8 RGB arrays"),
            (np.zeros((2, 2), np.uint8), 0.0, "uint8 RGB arrays"),
            (np.zeros((3, 2, 2, 3), np.uint8), [0.0, 1.0], r"one time per frame \(3\)"),
            (frame(0), float("nan"), "finite"),
            ([], None, "no frames"),
        ]
        for frames, times, message in bad:
            with pytest.raises(ValueError, match=message):
                session.push_frames(frames, times)
        session.push_frames(frame(0), 5.0)
        with pytest.raises(ValueError, match="must not go backwards"):
            session.push_frames(frame(1), 4.0)
        with pytest.raises(ValueError, match="frames are 3x2 but this stream's frames are 2x2"):
            session.push_frames(np.zeros((2, 3, 3), np.uint8), 6.0)
    with pytest.raises(ValueError, match="drop_policy"):
        StreamSession(FAKE_VS, backend=FakeBackend(), drop_policy="newest")
    with pytest.raises(ValueError, match="queue_frames=1 must hold at least one memory step"):
        StreamSession(FAKE_VS, backend=FakeBackend(step=2), queue_frames=1)


def test_questions_from_many_threads_each_get_one_consistent_answer():
    with fake_session(micro_batch=2, queue_frames=1000) as session:
        session.push_frames(frame(0), 0.0)
        session.drain()
        answers, errors = [], []

        def asker():
            for _ in range(10):
                try:
                    answers.append(session.ask("now?"))
                except Exception as err:  # noqa: BLE001 - collected for the assertion
                    errors.append(err)

        threads = [threading.Thread(target=asker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for i in range(1, 200):
            session.push_frames(frame(i % 256), float(i))
        for thread in threads:
            thread.join(30)
    assert errors == [] and len(answers) == 40
    for answer in answers:
        seen = [int(v) for v in answer.text.split(",")]
        assert seen == list(range(len(seen))) and len(seen) == answer.num_frames  # a whole prefix of the stream
        assert answer.stream_time == seen[-1] and answer.total_seconds >= answer.first_token_seconds > 0


# --- real families -------------------------------------------------------------------------------------------


class ScoreLog(LogitsProcessor):
    """Records the next-token scores of every generation step, unchanged."""

    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.detach().clone())
        return scores


@pytest.fixture(scope="module", params=["star-vicuna", "flash-qwen2vl"])
def tiny(request, tmp_path_factory):
    from flash_vstream import load_model

    out = tmp_path_factory.mktemp("tiny") / request.param
    assert cli_main(["make-tiny", "--variant", request.param, "--out", str(out)]) == 0
    return load_model(out)


def test_stream_answers_like_the_offline_path(tiny):
    from flash_vstream.video import read_video

    clip = read_video(SAMPLE, sampler=tiny.sampler)  # 7 frames: Flash pads the odd one, offline and live alike
    with StreamSession(tiny, micro_batch=3) as session:
        for frame_, seconds in zip(clip.frames, clip.timestamps, strict=True):
            session.push_frames(frame_, seconds)
        session.finish()
        for question in ("What moves?", "Describe the scene in detail, please."):
            offline_scores, live_scores = ScoreLog(), ScoreLog()
            offline = tiny.answer_with_details(question, frames=clip.frames, max_new_tokens=8,
                                               logits_processor=LogitsProcessorList([offline_scores]))
            live = session.ask(question, max_new_tokens=8, logits_processor=LogitsProcessorList([live_scores]))
            assert (live.text, live.num_visual_tokens, live.prompt_tokens) == (
                offline.text, offline.num_visual_tokens, offline.prompt_tokens)
            torch.testing.assert_close(torch.cat(live_scores.scores), torch.cat(offline_scores.scores),
                                       atol=1e-4, rtol=1e-4)
            assert live.num_frames == 7 and live.stream_time == pytest.approx(clip.timestamps[-1])
        stats = session.stats()
        assert stats.prefix_version == stats.memory_version and stats.prefix_hits == 2 and stats.prefix_misses == 0


def test_concurrent_questions_see_whole_memory_versions(tmp_path):
    from flash_vstream import load_model

    # STAR's token count is a function of the frames seen, so it tells whether a snapshot was torn.
    out = tmp_path / "star"
    assert cli_main(["make-tiny", "--variant", "star-vicuna", "--out", str(out)]) == 0
    vs = load_model(out)
    answers = []
    with StreamSession(vs, micro_batch=2, queue_frames=256) as session:
        session.push_frames(np.zeros((32, 32, 3), np.uint8), 0.0)
        session.drain()

        def asker():
            for _ in range(4):
                answers.append(session.ask("now?", max_new_tokens=2))

        threads = [threading.Thread(target=asker) for _ in range(3)]
        for thread in threads:
            thread.start()
        rng = np.random.default_rng(0)
        for i in range(1, 40):
            session.push_frames(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), float(i))
        for thread in threads:
            thread.join(60)
    assert len(answers) == 12
    for answer in answers:
        assert answer.num_visual_tokens == vs.model.memory.num_tokens(answer.num_frames)
