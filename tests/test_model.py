"""The STAR-family composite model: parity with bare HF decoders, splicing, assistant-only loss, generation."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from flash_vstream.inference.prompts import IGNORE_INDEX, build_star_inputs
from flash_vstream.model.modeling import FlashVStreamForCausalLM
from flash_vstream.model.projector import build_projector
from flash_vstream.model.splice import embed_with_visual_tokens, scatter_visual_tokens
from flash_vstream.model.tiny import tiny_star_config
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_model(request):
    torch.manual_seed(0)
    return FlashVStreamForCausalLM(tiny_star_config(request.param)).eval()


def test_text_only_logits_equal_bare_decoder(tiny_model):
    bare = AutoModelForCausalLM.from_config(tiny_model.config.text_config).eval()
    bare.load_state_dict(tiny_model.language_model.state_dict())
    ids = torch.randint(0, tiny_model.config.text_config.vocab_size, (2, 11))
    with torch.no_grad():
        ours = tiny_model(input_ids=ids).logits
        theirs = bare(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_decoder_class_follows_text_config(tiny_model):
    expected = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[tiny_model.config.text_config.model_type]
    assert type(tiny_model.language_model).__name__ == expected


def _project_by_hand(model, tokens):
    """The released ``mlp2x_gelu`` projector written out: ``Linear -> exact GELU -> Linear``."""
    first, second = model.projector[0], model.projector[2]
    hidden = torch.nn.functional.linear(tokens, first.weight, first.bias)
    return torch.nn.functional.linear(torch.nn.functional.gelu(hidden), second.weight, second.bias)


def _hf_clip_patch_features(model, pixels):
    """Layer -2 patch tokens from transformers' own ``CLIPVisionModel`` forward (CLS dropped)."""
    with torch.no_grad():
        out = model.vision_tower.clip(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:]


def _pool_by_hand(features, side):
    """Average-pool ``(t, 256, d)`` row-major 16x16 grids to ``side x side`` with ``avg_pool2d``."""
    t, _, d = features.shape
    grid = features.transpose(1, 2).reshape(t, d, 16, 16)
    return torch.nn.functional.avg_pool2d(grid, 16 // side).flatten(2).transpose(1, 2)  # (t, side*side, d)


def test_visual_tokens_land_at_placeholders(tiny_model):
    features = torch.randn(3, 256, 32)
    n = tiny_model.memory.num_tokens(3)
    ph = tiny_model.config.image_token_id
    ids = torch.tensor([[5, 6] + [ph] * n + [7]])
    embeds = tiny_model.embed_inputs(ids, features=[features])
    expected_visual = _project_by_hand(tiny_model, tiny_model.memory.compress(features).tokens)
    torch.testing.assert_close(embeds[0, 2 : 2 + n], expected_visual)
    text = tiny_model.get_input_embeddings().weight[[5, 6, 7]]
    torch.testing.assert_close(embeds[0, [0, 1, -1]], text)


def test_two_frame_visual_tokens_equal_a_hand_computation(tiny_model):
    """Pixels -> HF CLIP layer -2 -> the 2-frame STAR memory written out -> the projector written out.

    With 2 frames and one spatial frame the published memory is plain pooling: the older frame gives the
    abstract token (1x1), the temporal cluster (4x4, a 1-point k-means is the point itself) and the retrieved
    frame (8x8); the newer frame is the spatial memory (8x8). Order: abstract, temporal, retrieved, spatial.
    """
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 224, 224)
    clip = _hf_clip_patch_features(tiny_model, pixels)
    older, newer = clip[:1], clip[1:]
    memory = torch.cat(
        [_pool_by_hand(older, 1)[0], _pool_by_hand(older, 4)[0], _pool_by_hand(older, 8)[0],
         _pool_by_hand(newer, 8)[0]]
    )
    assert memory.shape[0] == 1 + 16 + 64 + 64 == tiny_model.memory.num_tokens(2)
    tokens = tiny_model.visual_tokens(pixel_values=[pixels])
    torch.testing.assert_close(tokens, _project_by_hand(tiny_model, memory))


def test_long_clip_pixels_path_equals_hf_clip_then_memory_then_projector(tiny_model):
    # 30 frames reach every memory part (k-means, semantic-attention update, retrieval); the memory itself is
    # checked against slow re-statements in test_star_memory.py, so here it only has to receive HF CLIP's
    # features and hand its tokens to the projector.
    torch.manual_seed(2)
    pixels = torch.randn(30, 3, 224, 224)
    memory = tiny_model.memory.compress(_hf_clip_patch_features(tiny_model, pixels))
    assert memory.tokens.shape[0] == 681
    tokens = tiny_model.visual_tokens(pixel_values=[pixels])
    torch.testing.assert_close(tokens, _project_by_hand(tiny_model, memory.tokens))


def test_splice_count_mismatch_names_both_counts():
    embeds = torch.zeros(1, 5, 4)
    mask = torch.tensor([[False, True, True, False, False]])
    with pytest.raises(ValueError, match="2 visual placeholder tokens but the memory produced 3"):
        scatter_visual_tokens(embeds, mask, torch.ones(3, 4))


def test_embed_with_out_of_vocab_placeholder():
    emb = torch.nn.Embedding(10, 4)
    ids = torch.tensor([[1, -200, -200, 2]])
    visual = torch.arange(8.0).view(2, 4)
    out = embed_with_visual_tokens(emb, ids, -200, visual)
    torch.testing.assert_close(out[0, 1:3], visual)
    torch.testing.assert_close(out[0, 0], emb.weight[1])


@pytest.mark.parametrize(
    "kind,count",
    [("linear", 1), ("identity", 0), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)],
)
def test_projector_types(kind, count):
    dim = 16 if kind == "identity" else 24
    torch.manual_seed(0)
    proj = build_projector(kind, 16, dim)
    linears = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == count
    x = torch.randn(5, 16)
    # LLaVA's projectors: the Linears in order with an exact GELU between consecutive ones.
    expected = x
    for i, linear in enumerate(linears):
        expected = torch.nn.functional.linear(expected, linear.weight, linear.bias)
        if i < count - 1:
            expected = torch.nn.functional.gelu(expected)
    with torch.no_grad():
        torch.testing.assert_close(proj(x), expected)
    assert expected.shape == (5, dim)


def test_projector_rejects_bad_type():
    with pytest.raises(ValueError, match="unknown projector_type 'mlp_gelu'"):
        build_projector("mlp_gelu", 4, 4)
    with pytest.raises(ValueError, match="identity"):
        build_projector("identity", 4, 8)


def test_mlp2x_gelu_module_indices_match_released_keys():
    proj = build_projector("mlp2x_gelu", 8, 16)
    assert sorted(proj.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_loss_covers_assistant_tokens_only_and_goes_down():
    torch.manual_seed(0)
    model = FlashVStreamForCausalLM(tiny_star_config("llama"))
    tok = build_tiny_tokenizer("llama")
    features = torch.randn(4, 256, 32)
    n = model.memory.num_tokens(4)
    inputs = build_star_inputs(tok, "vicuna_v1", "What moves?", n, -200, answer="a red square")
    labels = inputs["labels"]
    supervised = labels != IGNORE_INDEX
    assert not supervised[inputs["input_ids"] == -200].any()
    assert tok.decode(labels[supervised]).strip() == "a red square</s>"
    # A loss over the supervised tokens only equals the model's loss.
    out = model(**inputs, features=[features])
    logits = out.logits[0, :-1]
    target = labels[0, 1:]
    manual = torch.nn.functional.cross_entropy(logits[target != -100], target[target != -100])
    torch.testing.assert_close(out.loss, manual)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    opt = torch.optim.AdamW(trainable, lr=3e-2)
    losses = []
    for _ in range(15):
        loss = model(**inputs, features=[features]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_abstract_memory_gets_gradients_on_long_clips():
    torch.manual_seed(0)
    model = FlashVStreamForCausalLM(tiny_star_config("llama"))
    tok = build_tiny_tokenizer("llama")
    features = torch.randn(60, 256, 32)
    inputs = build_star_inputs(tok, "vicuna_v1", "q", model.memory.num_tokens(60), -200, answer="yes")
    model(**inputs, features=[features]).loss.backward()
    assert model.memory.attention.q_proj.weight.grad is not None
    assert model.memory.attention.q_proj.weight.grad.abs().sum() > 0


def test_generate_returns_new_tokens_and_is_greedy_deterministic(tiny_model):
    tok = build_tiny_tokenizer("llama" if tiny_model.config.conv_template == "vicuna_v1" else "chatml")
    features = torch.randn(3, 256, 32)
    n = tiny_model.memory.num_tokens(3)
    inputs = build_star_inputs(tok, tiny_model.config.conv_template, "hi", n, -200)
    a = tiny_model.generate(**inputs, features=[features], max_new_tokens=4, do_sample=False)
    b = tiny_model.generate(**inputs, features=[features], max_new_tokens=4, do_sample=False)
    assert a.shape == (1, 4)
    assert torch.equal(a, b)
    # Greedy generation's first token is the argmax of the forward pass's last logits.
    logits = tiny_model(**inputs, features=[features]).logits
    assert a[0, 0] == logits[0, -1].argmax()


def test_batch_of_two_videos_matches_single_runs(tiny_model):
    ph = tiny_model.config.image_token_id
    f1, f2 = torch.randn(2, 256, 32), torch.randn(5, 256, 32)
    n1, n2 = tiny_model.memory.num_tokens(2), tiny_model.memory.num_tokens(5)
    length = max(n1, n2) + 3
    ids1 = torch.tensor([[3] + [ph] * n1 + [4] * (length - n1 - 1)])
    ids2 = torch.tensor([[3] + [ph] * n2 + [4] * (length - n2 - 1)])
    batch = tiny_model.embed_inputs(torch.cat([ids1, ids2]), features=[f1, f2])
    torch.testing.assert_close(batch[0], tiny_model.embed_inputs(ids1, features=[f1])[0])
    torch.testing.assert_close(batch[1], tiny_model.embed_inputs(ids2, features=[f2])[0])


def test_pipeline_moves_per_sample_visual_lists_to_the_model_device():
    from flash_vstream.inference.pipeline import _to_device

    moved = _to_device([torch.zeros(2), (torch.ones(1),)], torch.device("meta"))
    assert moved[0].device.type == "meta" and moved[1][0].device.type == "meta"
    assert _to_device("text", torch.device("meta")) == "text"
