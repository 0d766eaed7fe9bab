"""StreamingVLM cache: retained-cache logits equal a full recomputation, delta rotation equals M-RoPE at the new
positions, the published eviction order, and positions bounded over a 10,000-chunk stream."""

import copy

import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from flash_vstream import load_model
from flash_vstream.inference.streamingvlm_cache import compact, gather_plan, mark_prefilled, pending_inputs, rotate_keys
from flash_vstream.inference.streamingvlm_session import StreamingVLMSessionBackend
from flash_vstream.model.streamingvlm import forward_embeds, make_tiny_streamingvlm, settings_of

SMALL = dict(text_sink=6, text_window=5, vision_window=2, text_rounds=3, max_new_tokens=4, do_sample=False)


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    out = make_tiny_streamingvlm(tmp_path_factory.mktemp("svlm1") / "tiny", num_hidden_layers=1, seed=3)
    return load_model(out, device="cpu")


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    out = make_tiny_streamingvlm(tmp_path_factory.mktemp("svlm2") / "tiny", num_hidden_layers=2, seed=3)
    return load_model(out, device="cpu")


def _chunks(n, seed=0, size=(60, 84)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (2, *size, 3), dtype=np.uint8) for _ in range(n)]


def _probe_logits(backend, state, probe_ids):
    """All-position logits of the pending tokens plus ``probe_ids`` on a copy of the state's cache."""
    layout = state.layout
    ids, positions = pending_inputs(layout.pending())
    probe = torch.tensor(probe_ids)
    start = layout.next_position
    ids = torch.cat([ids, probe])
    positions = torch.cat([positions, (torch.arange(len(probe)) + start).expand(3, -1)], dim=1)
    return forward_embeds(backend.model, copy.deepcopy(state.cache), ids, positions, logits="all")


def _run_pair(vs, chunks, **settings):
    s = settings_of(vs.model).replace(**settings)
    kept = StreamingVLMSessionBackend(vs, s, previous_text="Lakers at Celtics, game one")
    fresh = StreamingVLMSessionBackend(vs, s.replace(policy="recompute"), previous_text="Lakers at Celtics, game one")
    a, b = kept.init_state(), fresh.init_state()
    probe = kept._encode("<|im_start|>user\nwho scored?")
    results = []
    for i, frames in enumerate(chunks):
        times = np.array([i, i + 0.5])
        said_a, said_b = kept.step(a, frames, times), fresh.step(b, frames, times)
        results.append((said_a, said_b, a.layout.ids(), b.layout.ids(), _probe_logits(kept, a, probe),
                        _probe_logits(fresh, b, probe)))
    return results, a


def test_retained_cache_equals_a_full_recomputation_with_one_layer(one_layer):
    """With one decoder layer the K/V of a token depend only on it and its position, so the re-positioned cache
    must give the logits of a fresh prefill of the retained tokens at freshly computed positions (the
    "recompute" policy), every chunk, through evictions of vision, rounds and previous-text tokens."""
    results, state = _run_pair(one_layer, _chunks(9), **SMALL)
    for said_a, said_b, ids_a, ids_b, logits_a, logits_b in results:
        assert said_a == said_b
        assert torch.equal(ids_a, ids_b)
        torch.testing.assert_close(logits_a, logits_b, atol=2e-5, rtol=1e-5)
    layout = state.layout
    assert [r.index for r in layout.rounds] == [6, 7, 8]  # text_rounds=3 retained rounds
    assert [("vision" in r.parts) for r in layout.rounds] == [False, True, True]  # vision_window=2
    assert layout.prev_sink.length == 6 and layout.prev_window.length == 5
    assert state.max_position_seen < sum(len(ids) for *_, ids, _, _, _ in results)  # positions were reused


def test_two_layers_differ_from_recomputation_after_an_eviction(two_layers):
    """The comparison is sensitive: with two layers, retained K/V remember evicted context, so they differ."""
    results, _ = _run_pair(two_layers, _chunks(5), **{**SMALL, "max_new_tokens": 1})
    assert torch.allclose(results[0][4], results[0][5], atol=2e-5)  # nothing evicted yet: identical
    assert not torch.allclose(results[-1][4], results[-1][5], atol=1e-3)


def test_delta_rotation_is_m_rope_at_the_shifted_positions(two_layers):
    """R(d) applied to keys rotated at 3-D positions p equals M-RoPE at p + d on every axis."""
    rope = two_layers.model.model.language_model.rotary_emb
    torch.manual_seed(0)
    keys = torch.randn(1, 2, 7, 8, dtype=torch.float64).float()
    p = torch.tensor([[5, 5, 5, 9, 9, 9, 12], [5, 6, 7, 9, 10, 11, 12], [5, 7, 6, 9, 9, 10, 12]])  # (3, L)
    d = torch.tensor([-3, -3, -3, 7, 7, 7, -12])

    def m_rope(k, positions):
        cos, sin = rope(k, positions[:, None])
        return apply_rotary_pos_emb(k, k, cos, sin)[1]

    torch.testing.assert_close(rotate_keys(m_rope(keys, p), d, rope.inv_freq), m_rope(keys, p + d),
                               atol=1e-5, rtol=1e-5)


def test_gather_plan_moves_commentary_into_the_previous_text(one_layer):
    backend = StreamingVLMSessionBackend(one_layer, settings_of(one_layer.model).replace(**SMALL))
    state = backend.init_state()
    for i, frames in enumerate(_chunks(4)):
        backend.step(state, frames, np.array([i, i + 0.5]))
    layout = state.layout
    oldest_body = layout.rounds[0].parts["assistant_body"].ids.clone()
    layout.evict(4)
    index, delta = gather_plan(layout)
    assert len(index) == len(set(index.tolist())) and int(index.max()) < layout.cached_length() + 100
    moved = torch.cat([layout.prev_sink.ids, layout.prev_window.ids])
    assert torch.equal(moved[-len(oldest_body):], oldest_body) or len(oldest_body) == 0
    assert [r.index for r in layout.rounds] == [2, 3]


def test_positions_stay_bounded_over_10000_chunks(one_layer):
    """The position bookkeeping alone (no model): published windows, 720 vision tokens (20x36) per chunk, eight
    words a second. The largest position stops growing once the windows fill."""
    backend = StreamingVLMSessionBackend(one_layer, settings_of(one_layer.model).replace(
        text_sink=512, text_window=512, vision_window=16, text_rounds=16))
    state = backend.init_state()
    layout = state.layout
    words = backend._encode("\n" + "a b c d e f g h" + " ...")
    maxima = []
    for i in range(10_000):
        layout.evict(i)
        if i % 500 == 0:  # the plan stays a permutation of what is cached
            index, _ = gather_plan(layout)
            assert len(index) == layout.cached_length() == len(set(index.tolist()))
        compact(layout)
        round_ = backend.new_round(i, float(i), i + 1.0, (1, 20, 36), first=i == 0)
        round_.parts["assistant_body"].ids = torch.tensor(words)
        layout.rounds.append(round_)
        layout.place()
        mark_prefilled(layout.pending(), layout.cached_length())
        backend._close_round(layout, round_)
        maxima.append(layout.max_position())
    assert max(maxima[200:]) == max(maxima[5000:]) == maxima[-1]  # flat once the windows filled
    # ~1,045 sink/window text + 16 rounds of ~90 positions (the tiny tokenizer spells time stamps by character)
    assert 1500 < maxima[-1] < 3000, maxima[-1]
    assert layout.prev_sink.length == 512 and layout.prev_window.length == 512 and len(layout.rounds) == 16
    assert sum(r.parts["vision"].length - 2 for r in layout.rounds if "vision" in r.parts) == 16 * 720
