"""StreamingVLM streaming on CPU with a tiny model and the sample video: commentary through ``StreamSession`` and
``commentate``, questions that leave the cache as it was, the baseline policies, and ``flash-vstream stream``."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flash_vstream import StreamSession, cli, load_model
from flash_vstream.inference.stream_cli import add_stream_command
from flash_vstream.inference.streamingvlm_session import Commentary, StreamingVLMSessionBackend, commentate
from flash_vstream.model.streamingvlm import make_tiny_streamingvlm, settings_of
from flash_vstream.video.sources import VideoFileSource

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
GREEDY = dict(do_sample=False, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_streamingvlm(tmp_path_factory.mktemp("svlm") / "tiny")


@pytest.fixture(scope="module")
def vs(tiny):
    return load_model(tiny, device="cpu", **GREEDY)


def sample_frames():
    return list(VideoFileSource(SAMPLE, speed=None, fps=2.0))


def test_commentate_speaks_once_per_second_of_the_sample(vs):
    frames = sample_frames()
    said = list(commentate(vs, frames, previous_text="A test clip."))
    assert len(frames) == 14 and [(c.start, c.end) for c in said] == [(float(i), i + 1.0) for i in range(7)]
    assert all(isinstance(c, Commentary) and " ..." not in c.text for c in said)
    assert said == list(commentate(vs, frames, previous_text="A test clip."))  # greedy: reproducible


def test_session_commentary_with_a_question_in_the_middle(vs):
    """Commentary and question modes together: the question is answered from the cache as it is, and the
    commentary after it is exactly the commentary of a stream nobody asked anything."""
    frames = sample_frames()
    heard = []
    backend = StreamingVLMSessionBackend(vs, previous_text="A test clip.", on_commentary=heard.append)
    with StreamSession(vs, backend=backend, max_new_tokens=5) as session:
        for frame, seconds in frames[:6]:
            session.push_frames(frame, seconds, block=True)
        session.drain()
        answer = session.ask("What is on screen?")
        for frame, seconds in frames[6:]:
            session.push_frames(frame, seconds, block=True)
        session.finish()
        stats = session.stats()
        state = session.state
    _, h, w = backend.processor.grid_thw(2, *frames[0][0].shape[:2])
    assert answer.stream_time == 2.5 and answer.num_frames == 6 and answer.num_visual_tokens == 3 * h * w // 4
    assert isinstance(answer.text, str) and answer.prompt_tokens > 5
    assert heard == state.commentary == list(commentate(vs, frames, previous_text="A test clip."))
    assert stats.frames_seen == 14 and stats.device_nbytes > 0


def test_a_question_leaves_the_cache_bit_identical(vs):
    backend = StreamingVLMSessionBackend(vs)
    state = backend.init_state()
    for i, (frame, _) in enumerate(sample_frames()[:6:2]):
        backend.step(state, np.stack([frame, frame]), np.array([i, i + 0.5]))
    keys = [layer.keys.clone() for layer in state.cache.layers]
    ids, pending = state.layout.ids().clone(), [b.kind for b in state.layout.pending()]
    snapshot = backend.snapshot(state)
    new = backend.generate(snapshot, backend.prompt(snapshot, "Who scored?"), None, max_new_tokens=4)
    assert new.shape == (1, 4) or int(new[0, -1]) == backend.ids["im_end"]
    assert all(torch.equal(a, layer.keys) for a, layer in zip(keys, state.cache.layers, strict=True))
    assert torch.equal(ids, state.layout.ids()) and pending == [b.kind for b in state.layout.pending()]


@pytest.mark.parametrize("policy", ["full", "sliding", "streamingvlm"])
def test_baseline_policies_in_the_same_loop(vs, policy):
    """full: nothing is ever evicted; sliding: the cache restarts every restart_seconds (with the query again);
    streamingvlm: at most text_rounds rounds and vision_window vision blocks stay."""
    settings = settings_of(vs.model).replace(policy=policy, restart_seconds=3.0, text_rounds=2, vision_window=1,
                                             text_sink=4, text_window=4)
    backend = StreamingVLMSessionBackend(vs, settings, previous_text="A long title of the game")
    state = backend.init_state()
    lengths = []
    for i, (frame, _) in enumerate(sample_frames()[::2]):
        backend.step(state, np.stack([frame, frame]), np.array([i, i + 0.5]))
        lengths.append(state.layout.cached_length())
        assert state.layout.cached_length() == state.cache.layers[0].keys.shape[2]
    rounds = [r.index for r in state.layout.rounds]
    with_vision = [r.index for r in state.layout.rounds if "vision" in r.parts]
    if policy == "full":
        assert rounds == with_vision == list(range(7)) and lengths == sorted(lengths)
    elif policy == "sliding":
        assert rounds == with_vision == [6] and lengths[3] < lengths[2]  # restarts at 3 s and 6 s
        assert settings.query.split()[0] in backend.tokenizer.decode(state.layout.rounds[0].parts["user_tail"].ids)
    else:
        assert rounds == [5, 6] and with_vision == [6]
        assert state.layout.prev_sink.length == 4 and state.layout.prev_window.length <= 4


def test_stream_command_prints_commentary_and_answers_questions(tiny, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"time": 3, "question": "What happens?"}) + "\n")
    argv = ["stream", "--model", str(tiny), "--source", str(SAMPLE), "--speed", "max", "--questions",
            str(questions), "--out", str(tmp_path / "out"), "--option", "do_sample=false", "--max-new-tokens", "4"]
    parser = argparse.ArgumentParser()
    add_stream_command(parser.add_subparsers(), add_model_arguments=cli.add_model_arguments,
                       model_options=cli.model_options)
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    vs = load_model(tiny, device="cpu", do_sample=False)
    spoken = [c for c in commentate(vs, sample_frames()) if c.text]
    assert out.split("\n")[:-1] == [f"[{c.start:.1f}-{c.end:.1f} s] {c.text}" for c in spoken]
    answers = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 1 and answers[0]["frames_seen"] == 6 and isinstance(answers[0]["answer"], str)


@pytest.mark.parametrize("policy", ["streamingvlm", "full"])
def test_static_cache_decoding_gives_the_eager_tokens_and_cache(vs, policy):
    """Commentary and a question decoded through the static cache equal eager decoding (fp32, greedy).

    Small windows make the stream evict while it speaks, so the static copy is refilled from a gathered cache.
    """
    settings = settings_of(vs.model).replace(policy=policy, do_sample=False, text_sink=6, text_window=6,
                                             vision_window=2, text_rounds=2, max_new_tokens=5)
    frames = np.stack([frame for frame, _ in sample_frames()[:10]])
    times = np.arange(len(frames)) / settings.fps
    results = []
    for mode in ("eager", "static"):
        backend = StreamingVLMSessionBackend(vs, settings, decode=mode)
        state = backend.init_state()
        said = [backend.step(state, frames[i: i + 2], times[i: i + 2]).text for i in range(0, len(frames), 2)]
        snapshot = backend.snapshot(state)
        answer = backend.generate(snapshot, backend.prompt(snapshot, "What colour is the circle?"), None,
                                  max_new_tokens=6)
        keys = torch.cat([layer.keys for layer in state.cache.layers])
        results.append((said, answer.tolist(), state.layout.cached_length(), keys))
    (eager_said, eager_answer, eager_len, eager_keys), (static_said, static_answer, static_len, static_keys) = results
    assert static_said == eager_said
    assert static_answer == eager_answer
    assert static_len == eager_len == eager_keys.shape[-2]
    torch.testing.assert_close(static_keys, eager_keys, rtol=1e-4, atol=1e-5)
    assert any(eager_said), "the tiny model should say something, or the test compares only silence"


def test_the_settled_cache_estimate_bounds_a_stream_that_speaks_every_second(vs):
    """The static cache is sized once from the settings: the cache plus one turn must never exceed it."""
    settings = settings_of(vs.model).replace(do_sample=False, text_sink=6, text_window=6, vision_window=2,
                                             text_rounds=3, max_new_tokens=5)
    backend = StreamingVLMSessionBackend(vs, settings, decode="static")
    state = backend.init_state()
    frames = np.stack([frame for frame, _ in sample_frames()[:16]])
    longest = 0
    for i in range(0, len(frames), 2):
        backend.step(state, frames[i: i + 2], np.arange(i, i + 2) / settings.fps)
        longest = max(longest, state.layout.cached_length())
    assert longest + settings.max_new_tokens <= backend.settled_cache_len() <= 2 * longest + 200
    assert backend.decoder.max_cache_len == 4096  # one size for the whole stream
