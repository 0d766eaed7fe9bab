"""``StreamDecoder``: the static-cache path leaves the stream's cache exactly as eager decoding does, however the
stop token falls against the host reads (``check_every``)."""

import pytest
import torch
from transformers import DynamicCache

from flash_vstream import load_model
from flash_vstream.inference.streamingvlm_decode import StreamDecoder
from flash_vstream.model.streamingvlm import forward_embeds, make_tiny_streamingvlm

STOP = 7


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_tiny_streamingvlm(tmp_path_factory.mktemp("svlm") / "tiny"), device="cpu").model


def prefilled(model, length=9):
    cache = DynamicCache(config=model.config.text_config)
    ids = torch.arange(20, 20 + length)
    logits = forward_embeds(model, cache, ids, torch.arange(length).expand(3, -1))
    return cache, logits


def scripted(script):
    """A ``choose`` that ignores the logits and returns ``script`` in turn (recording the logits it saw)."""
    seen = []

    def choose(logits):
        seen.append(logits.clone())
        return torch.tensor([script[len(seen) - 1]])

    return choose, seen


@pytest.mark.parametrize("check_every", [1, 2, 4])
@pytest.mark.parametrize("keep", [True, False])
def test_static_decode_equals_eager_and_keeps_only_the_tokens_before_the_stop(model, check_every, keep):
    script = [31, 32, STOP, 33, 34, 35]  # the stop third: with check_every 4, one token is decoded past it
    results = {}
    for mode in ("eager", "static"):
        cache, logits = prefilled(model)
        choose, seen = scripted(script)
        tokens = StreamDecoder(model, mode).decode(cache, logits, 9, 6, choose, STOP, keep=keep,
                                                   check_every=check_every)
        results[mode] = (tokens, cache, seen)
    (tokens, cache, seen), (static_tokens, static_cache, static_seen) = results["eager"], results["static"]
    assert tokens == static_tokens == [31, 32, STOP]
    assert cache.get_seq_length() == static_cache.get_seq_length() == 9 + (2 if keep else 0)
    for a, b in zip(cache.layers, static_cache.layers, strict=True):
        torch.testing.assert_close(b.keys, a.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.values, a.values, rtol=1e-5, atol=1e-6)
    for a, b in zip(seen[:3], static_seen[:3], strict=True):  # the logits each choice saw
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_kept_tokens_equal_a_prefill_of_the_same_tokens(model):
    """The decoded tokens' keys are those a prefill of the same ids at the same positions writes."""
    cache, logits = prefilled(model)
    choose, _ = scripted([31, 32, 33, STOP])
    StreamDecoder(model, "static").decode(cache, logits, 9, 5, choose, STOP, keep=True, check_every=4)
    reference = DynamicCache(config=model.config.text_config)
    ids = torch.cat([torch.arange(20, 29), torch.tensor([31, 32, 33])])
    forward_embeds(model, reference, ids, torch.arange(12).expand(3, -1))
    for a, b in zip(reference.layers, cache.layers, strict=True):
        torch.testing.assert_close(b.keys, a.keys, rtol=1e-4, atol=1e-5)


def test_a_full_answer_of_max_tokens_and_a_longer_cache_grows_the_static_buffer(model):
    decoder = StreamDecoder(model, "static")
    cache, logits = prefilled(model, length=5)
    choose, _ = scripted([40] * 3)
    assert decoder.decode(cache, logits, 5, 3, choose, STOP, keep=True) == [40, 40, 40]
    first = decoder.max_cache_len
    big = DynamicCache(config=model.config.text_config)
    for layer, source in zip(big.layers, cache.layers, strict=True):
        layer.update(source.keys.repeat(1, 1, first, 1), source.values.repeat(1, 1, first, 1))
    choose, _ = scripted([40])
    decoder.decode(big, logits, 9, 1, choose, STOP, keep=False)
    assert decoder.max_cache_len >= 2 * first and big.get_seq_length() == 8 * first
    with pytest.raises(ValueError, match="check_every"):
        decoder.decode(cache, logits, 5, 2, choose, STOP, keep=True, check_every=0)


def test_a_much_shorter_cache_gets_a_fitted_static_buffer(model):
    decoder = StreamDecoder(model, "static")
    cache, logits = prefilled(model, length=5)
    big = DynamicCache(config=model.config.text_config)
    for layer, source in zip(big.layers, cache.layers, strict=True):
        layer.update(source.keys.repeat(1, 1, 4000, 1), source.values.repeat(1, 1, 4000, 1))  # 20,000 tokens
    choose, _ = scripted([40, 40])
    decoder.decode(big, logits, 9, 1, choose, STOP, keep=False)
    assert decoder.max_cache_len == 20480
    decoder.decode(cache, logits, 5, 1, choose, STOP, keep=False)  # a restart: 5 tokens
    assert decoder.max_cache_len == 4096
