"""The memory prefix cache: answers from the cached prompt head are token-identical to full prefills (greedy, fp32,
tiny models of both families), the question's logits match a full forward, and the kept cache is never mutated."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from flash_vstream.cli import main as cli_main
from flash_vstream.inference.kv import PrefixCache, prefix_length
from flash_vstream.inference.streaming import StreamSession
from flash_vstream.video import read_video

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
QUESTIONS = ("What moves?", "Describe everything you can see, in order.", "Is it day or night?")


class TokenLog(BaseStreamer):
    """Collects the ids ``generate`` streams (its first ``put`` is the prompt)."""

    def __init__(self):
        self.puts = []

    def put(self, value):
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        pass

    @property
    def new_tokens(self):
        return [token for put in self.puts[1:] for token in put]


class ScoreLog(LogitsProcessor):
    """Records the next-token scores of every step, unchanged."""

    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.detach().clone())
        return scores


@pytest.fixture(scope="module", params=["star-vicuna", "star-qwen2", "flash-qwen2vl"])
def tiny(request, tmp_path_factory):
    from flash_vstream import load_model

    out = tmp_path_factory.mktemp("tiny") / request.param
    assert cli_main(["make-tiny", "--variant", request.param, "--out", str(out)]) == 0
    return load_model(out, dtype="float32")


def stream_frames(vs, count: int):
    """``count`` frames of the sample video, looped with distinct times (beyond its 7 s when asked)."""
    clip = read_video(SAMPLE, sampler=vs.sampler)
    frames = np.concatenate([clip.frames] * -(-count // len(clip.frames)))[:count]
    return frames, np.arange(count, dtype=np.float64)


def answers(vs, frames, times, prefix_cache: bool):
    with StreamSession(vs, micro_batch=4, prefix_cache=prefix_cache) as session:
        session.push_frames(frames, times)
        session.finish()
        out = []
        for question in QUESTIONS:
            log, scores = TokenLog(), ScoreLog()
            answer = session.ask(question, max_new_tokens=12, streamer=log,
                                 logits_processor=LogitsProcessorList([scores]))
            out.append((log.new_tokens, answer.text, answer.prefix_cached, torch.cat(scores.scores)))
        kept = session._s.prefixes.latest
        assert kept is None or kept.cache.get_seq_length() == kept.length  # answers never extend the kept cache
        return out, session.stats()


@pytest.mark.parametrize("num_frames", [7, 40])
def test_cached_answers_are_token_identical_to_full_prefills(tiny, num_frames):
    # 40 frames: past the memories' exact-streaming range for STAR (k-means and retrieval at work).
    frames, times = stream_frames(tiny, num_frames)
    cached, stats = answers(tiny, frames, times, prefix_cache=True)
    full, _ = answers(tiny, frames, times, prefix_cache=False)
    assert [c[0] for c in cached] == [f[0] for f in full] and all(len(c[0]) == 12 for c in cached)
    assert [c[1] for c in cached] == [f[1] for f in full]
    for c, f in zip(cached, full, strict=True):  # every step's scores, not only their argmax
        torch.testing.assert_close(c[3], f[3], atol=1e-4, rtol=1e-4)
    assert all(c[2] for c in cached) and not any(f[2] for f in full)  # the worker built the prefix in advance
    assert stats.prefix_hits == len(QUESTIONS) and stats.prefix_misses == 0
    assert stats.prefix_version == stats.memory_version and stats.prefix_nbytes > 0


def test_question_logits_from_the_cache_match_a_full_forward(tiny):
    frames, times = stream_frames(tiny, 12)
    with StreamSession(tiny, micro_batch=4) as session, torch.inference_mode():
        session.push_frames(frames, times)
        session.finish()
        backend, entry = session.backend, session._s.prefixes.latest
        kept = [layer.keys.clone() for layer in entry.cache.layers]
        for question in QUESTIONS:
            prompt = backend.prompt(entry.snapshot, question)
            assert prompt.head_ids == entry.token_ids  # the head does not depend on the question
            from_cache = suffix_logits(tiny, entry.snapshot, prompt, entry.fork())
            full = suffix_logits(tiny, entry.snapshot, prompt, None)
            torch.testing.assert_close(from_cache, full, atol=1e-5, rtol=1e-5)
        assert entry.cache.get_seq_length() == entry.length  # forks were extended, the kept cache was not
        for layer, before in zip(entry.cache.layers, kept, strict=True):
            assert torch.equal(layer.keys, before)


def suffix_logits(vs, snapshot, prompt, cache):
    """Logits at the question's tokens: one forward over the uncached part (``cache``) or the whole prompt."""
    s = prompt.head if cache is not None else 0
    ids = prompt.input_ids
    if vs.family == "star":
        embeds = prompt.inputs["inputs_embeds"]
        out = vs.model.language_model(inputs_embeds=embeds[:, s:], cache=cache, use_cache=cache is not None,
                                      attention_mask=torch.ones(ids.shape, dtype=torch.long))
    else:
        video = None if cache is not None else {"video": snapshot.visual}
        out = vs.model(input_ids=ids[:, s:], attention_mask=torch.ones_like(ids),
                       mm_token_type_ids=prompt.inputs["mm_token_type_ids"][:, s:],
                       position_ids=prompt.inputs["position_ids"][..., s:], mm_encoder_outputs=video, cache=cache,
                       use_cache=cache is not None)
    return out.logits[0, -(ids.shape[1] - prompt.head):]


def test_prefix_cache_keeps_the_newest_entry_and_counts_exactly():
    from flash_vstream.inference.kv import MemoryPrefix

    cache = PrefixCache()
    assert cache.get(1, (1, 2)) is None and cache.misses == 1
    cache.put(MemoryPrefix(2, (1, 2), None, None))
    cache.put(MemoryPrefix(1, (1, 2), None, None))  # older than the kept one: ignored
    assert cache.latest_version == 2 and cache.builds == 2
    assert cache.get(2, (1, 2)) is cache.latest and cache.get(2, (1, 3)) is None and cache.get(1, (1, 2)) is None
    assert (cache.hits, cache.misses) == (1, 3)
    assert prefix_length(torch.tensor([False, True, True, False, False])) == 3
    assert prefix_length(torch.tensor([False, True, True])) == 2  # one token is always left to prefill
    with pytest.raises(ValueError, match="no visual token"):
        prefix_length(torch.tensor([False, False]))


def test_the_static_cache_decoder_answers_like_eager_generate(tiny):
    """The session decodes through ``FlashVStream.decoder``; its static-cache mode (what runs on CUDA, without
    the compilation) starts from the kept prefix and gives the same tokens and scores as eager generate."""
    frames, times = stream_frames(tiny, 12)
    eager, _ = answers(tiny, frames, times, prefix_cache=True)
    previous = tiny.decoder
    try:
        tiny.set_decoder("static", warmup=False)
        static, stats = answers(tiny, frames, times, prefix_cache=True)
    finally:
        tiny.decoder = previous
    assert [s[0] for s in static] == [e[0] for e in eager] and stats.prefix_hits == len(QUESTIONS)
    for s, e in zip(static, eager, strict=True):
        torch.testing.assert_close(s[3], e[3], atol=1e-4, rtol=1e-4)
