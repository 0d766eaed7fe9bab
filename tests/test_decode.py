"""Fast decode (static KV cache, compiled decode step) gives the tokens of transformers' default ``generate``.

Both families, tiny fp32 models on the CPU, greedy decoding with a forced answer length (EOS cannot end it early,
so every position is compared): the static cache without compilation, and the compiled mode with the ``eager``
TorchDynamo backend (``fullgraph=True``: the whole decode step traces as one graph, no break; the same graph
inductor turns into CUDA graphs on a GPU), each against ``mode="eager"`` (a ``DynamicCache``, no compilation).
Answers start from a full prompt and from a prefilled prompt head (a ``DynamicCache``, as the stream's memory
prefix cache holds it), which must come out of every answer unchanged. The compiled step must not recompile
for prompts of other lengths or for prefix starts (``error_on_recompile``).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import CompileConfig, DynamicCache

from flash_vstream import load_model
from flash_vstream.inference.decode import DEFAULT_MAX_CACHE_LEN, Decoder, cache_len_for, resolve_mode
from flash_vstream.model.tiny import make_tiny_star
from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

NEW_TOKENS = 12
QUESTIONS = ("What moves?", "Describe the scene in a few words, please.", "Count the objects.")


def cpu_compile_config() -> CompileConfig:
    """The compiled mode on a CPU: TorchDynamo traces the decode step whole; the eager backend runs it."""
    config = CompileConfig(backend="eager", fullgraph=True, mode=None)
    config._compile_all_devices = True  # transformers compiles only on accelerators unless told otherwise
    return config


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    return {"star": make_tiny_star(root / "star", seed=3), "flash": make_tiny_flash(root / "flash", seed=3)}


@pytest.fixture
def models(checkpoints):
    """Freshly loaded models per test (each compiled test traces its own model)."""
    return {family: load_model(path) for family, path in checkpoints.items()}


def clips(count: int = 3) -> list[np.ndarray]:
    """Distinct clips of distinct lengths (so prompts differ in length, for STAR through the memory's tokens)."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (2 + 2 * k, 48, 64, 3), dtype=np.uint8) for k in range(count)]


def built_inputs(vs, question: str, frames: np.ndarray) -> dict:
    """The answer's ``generate`` inputs, on the model's device (as ``answer`` moves them)."""
    from flash_vstream.inference.pipeline import _to_device

    return {k: _to_device(v, vs.device) for k, v in vs.input_builder(question, frames=frames).items()}


def greedy(vs, decoder: Decoder, inputs: dict, **extra) -> torch.Tensor:
    return decoder.generate(
        vs.model, **inputs, **extra, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
        pad_token_id=vs.tokenizer.pad_token_id,
    )


def make_decoder(vs, mode: str, **kwargs) -> Decoder:
    if mode == "compiled":
        torch._dynamo.reset()  # a fresh trace per test: each test builds its decoder on the shared models
        kwargs.setdefault("compile_config", cpu_compile_config())
    return Decoder.for_model(vs.model, mode, **kwargs)


# --- full prompts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["star", "flash"])
@pytest.mark.parametrize("mode", ["static", "compiled"])
def test_fast_modes_give_the_eager_tokens(models, family, mode):
    vs = models[family]
    eager, fast = make_decoder(vs, "eager"), make_decoder(vs, mode)
    lengths = set()
    for question, frames in zip(QUESTIONS, clips(), strict=True):
        inputs = built_inputs(vs, question, frames)
        lengths.add(inputs["input_ids"].shape[1])
        expected = greedy(vs, eager, inputs)
        with torch._dynamo.config.patch(error_on_recompile=fast.compiles > 0):
            got = greedy(vs, fast, inputs)
        fast.compiles = max(fast.compiles, 1)  # the first answer compiled; any later compile is an error
        assert got.shape[-1] >= NEW_TOKENS
        assert torch.equal(got, expected)
    assert len(lengths) == 3  # three prompt lengths through one static cache (and, compiled, one graph)
    assert int(fast._cache.get_seq_length()) > 0  # the answers ran on the decoder's static cache
    if mode == "compiled":  # and generate took its compiled forward
        assert any(hasattr(m, "_compiled_call") for m in (vs.model, getattr(vs.model, "language_model", None)))


# --- prompts that start from a prefilled head -----------------------------------------------------------------


def star_prompt_and_head(vs, question, frames):
    """(generate target, full-prompt kwargs, prefilled head cache) for the STAR family."""
    model = vs.model
    inputs = {k: v for k, v in built_inputs(vs, question, frames).items()}
    ids = inputs["input_ids"]
    with torch.inference_mode():
        embeds = model.embed_inputs(ids, pixel_values=inputs["pixel_values"])  # (1, L, h)
        head = int((ids[0] == model.config.image_token_id).nonzero().max()) + 1
        cache = DynamicCache(config=model.language_model.config)
        model.language_model(inputs_embeds=embeds[:, :head], cache=cache, use_cache=True, logits_to_keep=1)
    full = {"inputs_embeds": embeds, "attention_mask": torch.ones_like(ids)}
    return model.language_model, full, cache


def flash_prompt_and_head(vs, question, frames):
    """(generate target, full-prompt kwargs, prefilled head cache) for the Flash family."""
    model = vs.model
    inputs = built_inputs(vs, question, frames)
    ids, types, mask = inputs["input_ids"], inputs["mm_token_type_ids"], inputs["attention_mask"]
    with torch.inference_mode():
        video = model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        positions, _ = model.flash_position_ids(ids, types, mask, video)  # (3, 1, L)
        head = int((types[0] != 0).nonzero().max()) + 1
        cache = DynamicCache(config=model.config.text_config)
        model(
            input_ids=ids[:, :head], attention_mask=mask[:, :head], mm_token_type_ids=types[:, :head],
            position_ids=positions[..., :head], mm_encoder_outputs={"video": video}, cache=cache, use_cache=True,
            logits_to_keep=1,
        )
    full = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types, "position_ids": positions}
    return model, full, cache


HEADS = {"star": star_prompt_and_head, "flash": flash_prompt_and_head}


def snapshot(cache: DynamicCache) -> list[torch.Tensor]:
    return [t.clone() for layer in cache.layers for t in (layer.keys, layer.values)]


@pytest.mark.parametrize("family", ["star", "flash"])
@pytest.mark.parametrize("mode", ["eager", "static", "compiled"])
def test_answers_from_a_prefix_equal_full_prefills(models, family, mode):
    vs = models[family]
    eager, decoder = make_decoder(vs, "eager"), make_decoder(vs, mode)
    for question, frames in zip(QUESTIONS[:2], clips(2), strict=True):
        full_inputs = built_inputs(vs, question, frames)
        expected = greedy(vs, eager, full_inputs)
        target, prompt, head = HEADS[family](vs, question, frames)
        before, length = snapshot(head), head.get_seq_length()
        got = decoder.generate(
            target, **prompt, prefix=head, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            pad_token_id=vs.tokenizer.pad_token_id,
        )
        again = decoder.generate(
            target, **prompt, prefix=head, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            pad_token_id=vs.tokenizer.pad_token_id,
        )
        new = expected[:, -NEW_TOKENS:]
        assert torch.equal(got[:, -NEW_TOKENS:], new)
        assert torch.equal(again, got)  # the same prefix serves a second answer
        assert head.get_seq_length() == length
        assert all(torch.equal(a, b) for a, b in zip(snapshot(head), before, strict=True))  # never modified


def test_compiled_step_serves_full_prompts_and_prefixes_without_recompiling(models):
    vs = models["star"]
    decoder = make_decoder(vs, "compiled")
    eager = make_decoder(vs, "eager")
    frames = clips(2)
    decoder.warmup(lambda: greedy(vs, decoder, built_inputs(vs, QUESTIONS[2], frames[1])))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for question, clip in zip(QUESTIONS[:2], frames, strict=True):
            full = greedy(vs, decoder, built_inputs(vs, question, clip))
            target, prompt, head = star_prompt_and_head(vs, question, clip)
            from_head = decoder.generate(
                target, **prompt, prefix=head, do_sample=False, max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS, pad_token_id=vs.tokenizer.pad_token_id,
            )
            assert torch.equal(full, greedy(vs, eager, built_inputs(vs, question, clip)))
            assert torch.equal(from_head, full)
    assert decoder.compiles == 1


# --- the session API ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["star", "flash"])
def test_set_decoder_switches_modes_with_the_same_answers(models, family):
    vs = models[family]
    frames = clips(1)[0]
    assert vs.decoder.mode == "eager"  # "auto" on a CPU
    reference = vs.answer_with_details(QUESTIONS[0], frames=frames, max_new_tokens=NEW_TOKENS)
    try:
        torch._dynamo.reset()
        decoder = vs.set_decoder("compiled", compile_config=cpu_compile_config(), max_cache_len=1024)
        assert decoder is vs.decoder and decoder.max_cache_len == 1024
        assert decoder.compile_seconds is not None and decoder.compile_seconds > 0 and decoder.compiles == 1
        fast = vs.answer_with_details(QUESTIONS[0], frames=frames, max_new_tokens=NEW_TOKENS)
        assert fast == reference
    finally:
        vs.set_decoder("eager")
    assert vs.decoder.compile_seconds is None


def test_a_prompt_longer_than_the_cache_grows_it(models, caplog):
    vs = models["star"]
    eager, small = make_decoder(vs, "eager"), make_decoder(vs, "static", max_cache_len=64)
    inputs = built_inputs(vs, QUESTIONS[0], clips(1)[0])
    needed = inputs["input_ids"].shape[1] + NEW_TOKENS
    assert needed > 64
    with caplog.at_level(logging.WARNING, logger="flash_vstream.inference.decode"):
        got = greedy(vs, small, inputs)
    assert torch.equal(got, greedy(vs, eager, inputs))
    assert small.max_cache_len >= needed and small.max_cache_len % 256 == 0
    assert "exceeds the static cache" in caplog.text


def test_default_cache_lengths_fit_each_familys_memory(models):
    assert cache_len_for(681) == 1792 and cache_len_for(11520) == 12544
    for vs in models.values():
        vs.set_decoder("static", warmup=False)
    assert models["star"].decoder.max_cache_len == cache_len_for(models["star"].model.memory.num_tokens(10**6))
    assert models["flash"].decoder.max_cache_len == 12544  # 11,520 visual tokens at 448x448


def test_defaults_and_refusals(models):
    vs = models["star"]
    assert resolve_mode("auto", "cpu") == "eager"
    assert resolve_mode("auto", "cuda") == "compiled"
    text = vs.model.config.get_text_config(decoder=True)
    assert Decoder(text, "cpu").max_cache_len == min(text.max_position_embeddings, DEFAULT_MAX_CACHE_LEN)
    with pytest.raises(ValueError, match="decode mode must be one of"):
        Decoder(text, "cpu", "fast")
    with pytest.raises(ValueError, match="max_cache_len"):
        Decoder(text, "cpu", "static", max_cache_len=0)
    with pytest.raises(ValueError, match="prefix="):
        Decoder(text, "cpu", "static").generate(vs.model, input_ids=torch.ones(1, 3, dtype=torch.long), cache=1)
    with pytest.raises(ValueError, match="decode mode"):
        vs.set_decoder("graphs")


# --- on a GPU: the default compiled mode (inductor, CUDA graphs) ------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["star", "flash"])
def test_cuda_graphs_decode_gives_the_eager_tokens(tmp_path, family):
    """fp32 with TF32 off: the CUDA-graph replay computes what eager decoding computes, up to rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        make = make_tiny_star if family == "star" else make_tiny_flash
        vs = load_model(make(tmp_path / family, seed=3), device="cuda", dtype="float32")
        assert vs.decoder.mode == "compiled" and vs.decoder.compile_seconds > 0  # compiled at load ("auto")
        fast = [greedy(vs, vs.decoder, built_inputs(vs, q, c)) for q, c in zip(QUESTIONS, clips(), strict=True)]
        eager = make_decoder(vs, "eager")
        slow = [greedy(vs, eager, built_inputs(vs, q, c)) for q, c in zip(QUESTIONS, clips(), strict=True)]
        assert all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
