"""Regenerate the released Qwen-VL key lists of the Flash family at the make-tiny sizes.

- ``flash_vstream_qwen_tiny_keys.txt``: the published Flash-VStream-Qwen layout (``model_type
  "flash_vstream_qwen2_vl"``), i.e. transformers 4.45 ``Qwen2VLForConditionalGeneration`` names: the model is
  ``visual`` (``patch_embed.proj``, ``blocks.{i}`` with LayerNorm ``norm1``/``norm2``, ``attn.qkv``/``attn.proj``,
  ``mlp.fc1``/``mlp.fc2``; ``merger.ln_q`` (LayerNorm) and ``merger.mlp.{0,2}``), ``model`` (a ``Qwen2Model``:
  ``embed_tokens``, ``layers.{i}``, ``norm``) and ``lm_head``. Flash Memory has no parameters, so nothing else.
- ``qwen2_5_vl_tiny_keys.txt``: the plain Qwen2.5-VL-Instruct layout (``model_type "qwen2_5_vl"``, transformers
  4.49 names), which ``make_tiny_flash(variant="flash-qwen2_5vl", layout="released")`` writes because no Flash
  checkpoint on Qwen2.5-VL was published: ``blocks.{i}`` with RMSNorm ``norm1``/``norm2`` (weight only) and a
  SwiGLU ``mlp.{gate,up,down}_proj`` with biases, ``merger.ln_q`` an RMSNorm.

The lists are written from those published module trees, NOT from this project's key map or models, so the tests
comparing them with what ``make_tiny_flash(..., layout="released")`` writes are an independent check. Run from the
repository root (it imports nothing from flash_vstream):

    python tests/golden/released_flash_keys.py

then review the diff of the .txt files; a change there is a change of the released layout, not a refactor. If the
tiny sizes change (``flash_vstream/model/tiny_qwen2vl.py``), change the constants below and regenerate.
"""

from __future__ import annotations

from pathlib import Path

# Sizes of `flash-vstream make-tiny --variant flash-qwen2vl / flash-qwen2_5vl` and of the tiny ChatML tokenizer.
# The released 7B models: 28 LM layers, hidden 3584, 32 ViT blocks of width 1280, vocab 152064.
LM_LAYERS, HIDDEN, INTERMEDIATE, KV_DIM, VOCAB = 2, 32, 37, 16, 320
VIT_BLOCKS, VIT_WIDTH, QWEN2_MLP_RATIO, QWEN2_5_VIT_INTERMEDIATE = 2, 32, 4, 40
PATCH, TEMPORAL_PATCH, CHANNELS, MERGE = 14, 2, 3, 2


def language_model() -> dict[str, tuple[int, ...]]:
    """Qwen2 decoder (biased q/k/v, SwiGLU MLP, RMSNorm) plus an untied ``lm_head``."""
    keys = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    layer = {
        "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.q_proj.bias": (HIDDEN,),
        "self_attn.k_proj.weight": (KV_DIM, HIDDEN),
        "self_attn.k_proj.bias": (KV_DIM,),
        "self_attn.v_proj.weight": (KV_DIM, HIDDEN),
        "self_attn.v_proj.bias": (KV_DIM,),
        "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
        "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
        "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        "input_layernorm.weight": (HIDDEN,),
        "post_attention_layernorm.weight": (HIDDEN,),
    }
    for i in range(LM_LAYERS):
        keys.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    keys["lm_head.weight"] = (VOCAB, HIDDEN)
    return keys


def vision(block: dict[str, tuple[int, ...]], merger_norm: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """A Qwen-VL ViT: Conv3d patch embedding (no bias), ``VIT_BLOCKS`` blocks, the 2x2 patch merger."""
    merged = VIT_WIDTH * MERGE * MERGE
    keys = {"visual.patch_embed.proj.weight": (VIT_WIDTH, CHANNELS, TEMPORAL_PATCH, PATCH, PATCH)}
    for i in range(VIT_BLOCKS):
        keys.update({f"visual.blocks.{i}.{name}": shape for name, shape in block.items()})
    keys.update({f"visual.merger.ln_q.{p}": (VIT_WIDTH,) for p in merger_norm})
    keys.update(
        {
            "visual.merger.mlp.0.weight": (merged, merged),
            "visual.merger.mlp.0.bias": (merged,),
            "visual.merger.mlp.2.weight": (HIDDEN, merged),
            "visual.merger.mlp.2.bias": (HIDDEN,),
        }
    )
    return keys


def attention_block() -> dict[str, tuple[int, ...]]:
    return {
        "attn.qkv.weight": (3 * VIT_WIDTH, VIT_WIDTH),
        "attn.qkv.bias": (3 * VIT_WIDTH,),
        "attn.proj.weight": (VIT_WIDTH, VIT_WIDTH),
        "attn.proj.bias": (VIT_WIDTH,),
    }


def flash_vstream_qwen_keys() -> dict[str, tuple[int, ...]]:
    ffn = VIT_WIDTH * QWEN2_MLP_RATIO
    block = {
        **{f"{norm}.{p}": (VIT_WIDTH,) for norm in ("norm1", "norm2") for p in ("weight", "bias")},
        **attention_block(),
        "mlp.fc1.weight": (ffn, VIT_WIDTH),
        "mlp.fc1.bias": (ffn,),
        "mlp.fc2.weight": (VIT_WIDTH, ffn),
        "mlp.fc2.bias": (VIT_WIDTH,),
    }
    return {**vision(block, ("weight", "bias")), **language_model()}


def qwen2_5_vl_keys() -> dict[str, tuple[int, ...]]:
    ffn = QWEN2_5_VIT_INTERMEDIATE
    block = {
        "norm1.weight": (VIT_WIDTH,),
        "norm2.weight": (VIT_WIDTH,),
        **attention_block(),
        **{f"mlp.{p}_proj.weight": (ffn, VIT_WIDTH) for p in ("gate", "up")},
        **{f"mlp.{p}_proj.bias": (ffn,) for p in ("gate", "up")},
        "mlp.down_proj.weight": (VIT_WIDTH, ffn),
        "mlp.down_proj.bias": (VIT_WIDTH,),
    }
    return {**vision(block, ("weight",)), **language_model()}


TARGETS = {
    "flash_vstream_qwen_tiny_keys.txt": (
        flash_vstream_qwen_keys,
        'Published Flash-VStream-Qwen (model_type "flash_vstream_qwen2_vl", transformers 4.45 names)',
    ),
    "qwen2_5_vl_tiny_keys.txt": (
        qwen2_5_vl_keys,
        'Plain Qwen2.5-VL-Instruct (model_type "qwen2_5_vl", transformers 4.49 names)',
    ),
}


def render(keys: dict[str, tuple[int, ...]], title: str) -> str:
    header = (
        f"# {title} tensor names and shapes at the make-tiny sizes\n"
        f"# ({LM_LAYERS} LM layers, hidden {HIDDEN}, {VIT_BLOCKS} ViT blocks of width {VIT_WIDTH}, vocab {VOCAB}), "
        f'one "name shape" per line, sorted.\n'
        "# Written from the published module tree by tests/golden/released_flash_keys.py (see its docstring to\n"
        "# regenerate); checked by tests/test_flash_loading.py and tests/test_flash_qwen2_5vl.py.\n"
    )
    lines = [f"{name} {'x'.join(map(str, shape))}" for name, shape in sorted(keys.items())]
    return header + "\n".join(lines) + "\n"


def main() -> None:
    for name, (build, title) in TARGETS.items():
        target = Path(__file__).with_name(name)
        target.write_text(render(build(), title))
        print(f"wrote {len(build())} keys to {target}")


if __name__ == "__main__":
    main()
