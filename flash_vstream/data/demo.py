"""The shipped demo model: its start point (word tokenizer + tiny STAR model), where it lives, and its manifest.

The demo model is a tiny STAR-family model (a 3-layer CLIP-style vision tower at 112 px, the STAR memory sized for
short clips, an MLP projector and a 4-layer LLaMA-type decoder) with a word-level tokenizer over the synthetic
data's vocabulary. It is trained from :func:`write_demo_start` by ``flash-vstream train --config
configs/train/demo.yaml`` (``docs/demo.md`` gives the whole recipe) and shipped in ``flash_vstream/demo/``
with a ``MANIFEST.json`` (command, seed, sha256 of every file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from flash_vstream.data.synthetic import vocabulary

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
"""The shipped demo model (package data)."""
MANIFEST = "MANIFEST.json"
SPECIALS = ("<unk>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} "
    "{% else %}<|assistant|> {{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
"""A two-role template; each reply ends with ``<|end|>``, the end-of-sequence token."""

# Sizes of the demo model. The vision tower keeps CLIP's patch 14; 112 px gives an 8 x 8 patch grid.
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=112,
              patch_size=14, projection_dim=32, hidden_act="quick_gelu")
TEXT = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False)
# The STAR memory for clips of up to 10 frames, on a 4 x 4 grid (2 x 2 patches per token): every past frame is its
# own temporal cluster (16 tokens) and abstract slot (1 token), one key frame is retrieved and the newest frame is
# kept (16 tokens each).
MEMORY = dict(spatial_frames=1, spatial_size=4, temporal_clusters=10, temporal_size=4, abstract_slots=10,
              abstract_size=1, retrieved_frames=1, attention_dim=16)


EMBEDDING_STD = 0.5
"""Init std of the decoder's input embeddings (LLaMA's is 0.02). At 0.02 AdamW at the recipe's learning rate
rewrites every word vector within a few dozen steps, and the projector's start in word space
(:mod:`~flash_vstream.data.readout`) is lost before the decoder can use it; the decoder's RMSNorms make the scale
otherwise immaterial."""


def demo_model_dir() -> Path:
    """The shipped demo model's folder.

    Raises:
        FileNotFoundError: when the package was installed without it, naming the fix.
    """
    if not (DEMO_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in demo model is missing from {DEMO_DIR}; reinstall flash-vstream, or pass --model "
            "with a checkpoint folder"
        )
    return DEMO_DIR


def describe_default() -> str:
    """The line a command prints when it falls back to the demo model."""
    return (f"using the built-in demo model ({DEMO_DIR}: a tiny model trained on synthetic shapes; pass --model "
            "for a real checkpoint)")


def build_demo_tokenizer():
    """A word-level tokenizer over every word the synthetic generator writes (each also capitalised)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words = sorted({piece for text in vocabulary() for piece, _ in splitter.pre_tokenize_str(text)})
    words = sorted(set(words) | {w.capitalize() for w in words} | {w.lower() for w in words})
    vocab = {token: i for i, token in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = splitter
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# A much smaller variant with the same shapes that decide token counts, for the fast retraining test.
SMALL = {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
         "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2)}


def demo_config(vocab_size: int, small: bool = False):
    """The demo model's :class:`~flash_vstream.config.FlashVStreamConfig` (random-init sizes above).

    Args:
        vocab_size: the tokenizer's size.
        small: the much smaller variant (:data:`SMALL`) the retraining test trains in seconds.
    """
    from flash_vstream.config import FlashVStreamConfig

    vision, text = dict(VISION), dict(TEXT, vocab_size=vocab_size)
    if small:
        vision.update(SMALL["vision"])
        text.update(SMALL["text"])
    return FlashVStreamConfig(
        vision_config=dict(model_type="clip_vision_model", **vision),
        text_config=text,
        memory_config=dict(MEMORY),
        projector_type="mlp2x_gelu",
        vision_feature_layer=-1,
        conv_template="chat_template",
        vision_tower_name=None,
        vision_trainable=True,
        memory_trainable=True,
        projector_trainable=True,
        decoder_trainable=True,
    )


def write_demo_start(out: str | Path, seed: int = 0, small: bool = False, pretrain_steps: int = 0,
                     readout_steps: int = 0, motion_circuit: bool = False) -> Path:
    """Write the demo model's training start point (seeded random weights) and its tokenizer.

    Args:
        out: the folder.
        seed: seed of the weights and of the vision pre-training frames.
        small: the much smaller variant (:data:`SMALL`).
        pretrain_steps: steps of vision-tower pre-training on per-patch labels first
            (:func:`~flash_vstream.data.pretrain.pretrain_vision`, also at the memory's pooled grid); 0: none.
        readout_steps: steps fitting the projector into the decoder's word space after that
            (:func:`~flash_vstream.data.readout.fit_projector`), then the decoder's first layer gets its binding
            head (:func:`~flash_vstream.data.readout.wire_binding_head`); 0: neither.
        motion_circuit: after that, also wire the decoder's motion circuit
            (:func:`~flash_vstream.data.motion_circuit.wire_motion_circuit`; the shipped recipe wires it).
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights on any machine's core count: threads reorder float sums
    try:
        _build_demo_start(out, seed, small, pretrain_steps, readout_steps, motion_circuit)
    finally:
        torch.set_num_threads(threads)
    return out


def _build_demo_start(out: Path, seed: int, small: bool, pretrain_steps: int, readout_steps: int,
                      motion_circuit: bool) -> None:
    import torch

    from flash_vstream.model.modeling import FlashVStreamForCausalLM

    tokenizer = build_demo_tokenizer()
    torch.manual_seed(seed)
    model = FlashVStreamForCausalLM(demo_config(len(tokenizer), small=small))
    _rescale_projector(model.projector)
    with torch.no_grad():  # see EMBEDDING_STD
        model.get_input_embeddings().weight.normal_(0.0, EMBEDDING_STD)
    if pretrain_steps:
        from flash_vstream.data.pretrain import pretrain_vision

        losses = pretrain_vision(model, steps=pretrain_steps, seed=seed, pool_size=model.memory.config.spatial_size)
        print(f"vision pre-training: loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f}")
    if readout_steps:
        from flash_vstream.data.readout import fit_projector, wire_binding_head

        fit = fit_projector(model, tokenizer, seed=seed, steps=readout_steps)
        print("projector in word space: relative mse {mse_end:.3f}, nearest word right on object tokens: colour "
              "{colour:.1%}, shape {shape:.1%}".format(**fit))
        wire_binding_head(model, tokenizer)
        if motion_circuit:
            from flash_vstream.data.motion_circuit import wire_motion_circuit

            wire_motion_circuit(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _rescale_projector(projector) -> None:
    """Give the projector's linears unit-gain weights (std ``1/sqrt(fan_in)``) and zero biases.

    The language model's 0.02-std init makes a new projector map every frame to almost the same token (its
    output differs across tokens by about 0.005, below its bias); from scratch the decoder then sees no visual
    signal and training sits on the answer prior for hundreds of steps.
    """
    import torch

    with torch.no_grad():
        for layer in projector.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, layer.in_features**-0.5)
                layer.bias.zero_()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ship_demo(run_dir: str | Path, out: str | Path, *, commands: list[str], seed: int, extra: dict | None = None):
    """Copy a trained run's model files into ``out`` and write ``MANIFEST.json`` (commands, seed, sha256).

    Only what ``load_model`` reads is copied (config, weights, tokenizer files), not checkpoints or metrics.

    Raises:
        FileNotFoundError: when ``run_dir`` holds no trained model.
    """
    import shutil

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir} holds no model.safetensors; train first (flash-vstream train ...)")
    out.mkdir(parents=True, exist_ok=True)
    names = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]
    files = {}
    for name in names:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)
            files[name] = sha256(out / name)
    manifest = {"commands": commands, "seed": seed, "files": files, **(extra or {})}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out / MANIFEST
