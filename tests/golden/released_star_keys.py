"""Regenerate ``flash_vstream_7b_tiny_keys.txt``: the released Flash-VStream-7b key list at the make-tiny sizes.

The list is written from the published module tree, NOT from this project's key map, so that the test comparing
it with what ``make_tiny_star(..., layout="released")`` writes is an independent check. The published model is
LLaVA-style: ``VStreamLlamaForCausalLM`` holds ``model`` (a ``LlamaModel`` plus ``mm_projector``,
``attention_model`` and ``vision_tower``) and ``lm_head``. Its ``vision_tower`` is a wrapper whose own
``vision_tower`` attribute is a ``CLIPVisionModel`` (hence ``vision_tower.vision_tower.vision_model``).

Run from the repository root (it imports nothing from flash_vstream):

    python tests/golden/released_star_keys.py

then review the diff of the .txt file; a change there is a change of the released layout, not a refactor.
"""

from __future__ import annotations

from pathlib import Path

# Sizes of `flash-vstream make-tiny --variant star-vicuna` (flash_vstream/model/tiny.py) and of its tiny LLaMA
# SentencePiece tokenizer. The released model has 32 LLaMA layers, 24 CLIP layers, hidden 4096, CLIP 1024.
LLAMA_LAYERS, HIDDEN, INTERMEDIATE, KV_DIM, VOCAB = 2, 32, 37, 16, 400
CLIP_LAYERS, CLIP_HIDDEN, CLIP_INTERMEDIATE, PATCH, POSITIONS = 3, 32, 37, 14, 257
NTM_DIM = 32  # attention_model q/k/v width (compress_Turing_hidden_dim)

LLAMA_LAYER = {
    "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "self_attn.k_proj.weight": (KV_DIM, HIDDEN),
    "self_attn.v_proj.weight": (KV_DIM, HIDDEN),
    "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
    "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
    "input_layernorm.weight": (HIDDEN,),
    "post_attention_layernorm.weight": (HIDDEN,),
}
CLIP_LAYER = {
    **{f"self_attn.{p}_proj.weight": (CLIP_HIDDEN, CLIP_HIDDEN) for p in ("q", "k", "v", "out")},
    **{f"self_attn.{p}_proj.bias": (CLIP_HIDDEN,) for p in ("q", "k", "v", "out")},
    "layer_norm1.weight": (CLIP_HIDDEN,),
    "layer_norm1.bias": (CLIP_HIDDEN,),
    "mlp.fc1.weight": (CLIP_INTERMEDIATE, CLIP_HIDDEN),
    "mlp.fc1.bias": (CLIP_INTERMEDIATE,),
    "mlp.fc2.weight": (CLIP_HIDDEN, CLIP_INTERMEDIATE),
    "mlp.fc2.bias": (CLIP_HIDDEN,),
    "layer_norm2.weight": (CLIP_HIDDEN,),
    "layer_norm2.bias": (CLIP_HIDDEN,),
}
CLIP = "model.vision_tower.vision_tower.vision_model."


def released_keys() -> dict[str, tuple[int, ...]]:
    """Every tensor name of the tiny released-layout checkpoint and its shape."""
    keys: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LLAMA_LAYERS):
        keys.update({f"model.layers.{i}.{name}": shape for name, shape in LLAMA_LAYER.items()})
    keys["model.norm.weight"] = (HIDDEN,)
    keys["lm_head.weight"] = (VOCAB, HIDDEN)
    # mlp2x_gelu: nn.Sequential(Linear, GELU, Linear), so indices 0 and 2.
    keys.update({
        "model.mm_projector.0.weight": (HIDDEN, CLIP_HIDDEN),
        "model.mm_projector.0.bias": (HIDDEN,),
        "model.mm_projector.2.weight": (HIDDEN, HIDDEN),
        "model.mm_projector.2.bias": (HIDDEN,),
    })
    # The abstract memory's NeuralTuringMachine(input_dim=CLIP width, output_dim=32).
    for name in ("q_proj", "k_proj", "v_proj"):
        keys[f"model.attention_model.{name}.weight"] = (NTM_DIM, CLIP_HIDDEN)
        keys[f"model.attention_model.{name}.bias"] = (NTM_DIM,)
    keys["model.attention_model.out_proj.weight"] = (CLIP_HIDDEN, NTM_DIM)
    keys["model.attention_model.out_proj.bias"] = (CLIP_HIDDEN,)
    keys["model.attention_model.out_ln.weight"] = (CLIP_HIDDEN,)
    keys["model.attention_model.out_ln.bias"] = (CLIP_HIDDEN,)
    keys.update({
        CLIP + "embeddings.class_embedding": (CLIP_HIDDEN,),
        CLIP + "embeddings.patch_embedding.weight": (CLIP_HIDDEN, 3, PATCH, PATCH),
        CLIP + "embeddings.position_embedding.weight": (POSITIONS, CLIP_HIDDEN),
        CLIP + "pre_layrnorm.weight": (CLIP_HIDDEN,),  # sic: the CLIP module's own spelling
        CLIP + "pre_layrnorm.bias": (CLIP_HIDDEN,),
    })
    for i in range(CLIP_LAYERS):
        keys.update({f"{CLIP}encoder.layers.{i}.{name}": shape for name, shape in CLIP_LAYER.items()})
    keys[CLIP + "post_layernorm.weight"] = (CLIP_HIDDEN,)
    keys[CLIP + "post_layernorm.bias"] = (CLIP_HIDDEN,)
    return keys


HEADER = """\
# Released Flash-VStream-7b (model_type "vstream") tensor names and shapes at the make-tiny sizes
# (2 LLaMA layers, 3 CLIP layers, hidden 32, vocab 400), one "name shape" per line, sorted.
# Written from the published module tree by tests/golden/released_star_keys.py (see its docstring to
# regenerate); checked by tests/test_checkpoints.py. Not listed on purpose: buffers that transformers
# recomputes from the config (LLaMA rotary_emb.inv_freq, CLIP embeddings.position_ids).
"""


def render() -> str:
    lines = [f"{name} {'x'.join(map(str, shape))}" for name, shape in sorted(released_keys().items())]
    return HEADER + "\n".join(lines) + "\n"


def main() -> None:
    target = Path(__file__).with_name("flash_vstream_7b_tiny_keys.txt")
    target.write_text(render())
    print(f"wrote {len(released_keys())} keys to {target}")


if __name__ == "__main__":
    main()
