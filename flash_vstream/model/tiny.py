"""Tiny random STAR-family checkpoints for tests and GPU-less smoke runs (``flash-vstream make-tiny``).

Widths are tiny but the shapes that decide token counts are real: CLIP patch 14 at 224 px (16×16 = 256 patches per
frame) and the released memory sizes, so a tiny model yields exactly 681 visual tokens on a long video.

Two layouts can be written:

- ``"own"``: this project's format (``save_pretrained``; ``model_type: "flash_vstream"``);
- ``"released"``: the published ``IVGSZ/Flash-VStream-7b`` layout (flat LLaMA config with ``mm_*``/``compress_*``
  fields, keys ``model.layers.*``, ``model.mm_projector.*``, ``model.attention_model.*``,
  ``model.vision_tower.vision_tower.vision_model.*``), as sharded ``.bin`` or sharded safetensors. Its CLIP config
  sits in a ``clip/`` sub-folder named by ``mm_vision_tower``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPVisionConfig

from flash_vstream.config import FlashVStreamConfig
from flash_vstream.model.checkpoints import to_released_key
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer, write_tiny_sentencepiece_tokenizer

VARIANTS = ("star-vicuna", "star-qwen2")


def prepare_tiny_dir(out_dir: str | Path, layout: str, weights_format: str) -> Path:
    """Check a tiny checkpoint's layout and weights format, create ``out_dir`` and clear earlier weights from it.

    Weights of an earlier run left in the directory would otherwise be loaded with the new ones.

    Raises:
        ValueError: for an unknown layout or weights format.
    """
    if layout not in ("own", "released"):
        raise ValueError(f"layout must be 'own' or 'released', got {layout!r}")
    if weights_format not in ("safetensors", "bin"):
        raise ValueError(f"weights_format must be 'safetensors' or 'bin', got {weights_format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.safetensors"), *out.glob("*.bin"), *out.glob("*.index.json")]:
        stale.unlink()
    return out


def tiny_clip_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=224,
        patch_size=14,
        projection_dim=16,
        hidden_act="quick_gelu",
    )


def tiny_text_config(decoder: str, vocab_size: int) -> dict:
    """A 2-layer decoder config of type ``llama`` (Vicuna) or ``qwen2``."""
    if decoder not in ("llama", "qwen2"):
        raise ValueError(f"decoder must be 'llama' or 'qwen2', got {decoder!r}")
    config = {
        "model_type": decoder,
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }
    if decoder == "qwen2":
        config["use_sliding_window"] = False
    return config


def tiny_star_config(decoder: str = "llama", vocab_size: int = 320) -> FlashVStreamConfig:
    """The tiny STAR config of ``make-tiny`` (``decoder="llama"`` → vicuna_v1 prompts, ``"qwen2"`` → chat template)."""
    return FlashVStreamConfig(
        vision_config=tiny_clip_config().to_dict(),
        text_config=tiny_text_config(decoder, vocab_size),
        memory_config={},
        projector_type="mlp2x_gelu",
        conv_template="vicuna_v1" if decoder == "llama" else "chat_template",
        vision_tower_name=None,
    )


def make_tiny_star(
    out_dir: str | Path,
    variant: str = "star-vicuna",
    *,
    layout: str = "own",
    weights_format: str = "safetensors",
    include_vision: bool = True,
    max_shard_bytes: int = 200_000,
    seed: int = 0,
) -> Path:
    """Write a tiny random STAR checkpoint with its tokenizer.

    Args:
        out_dir: target directory (created).
        variant: ``"star-vicuna"`` (LLaMA decoder) or ``"star-qwen2"`` (Qwen2 decoder).
        layout: ``"own"`` or ``"released"`` (see the module docstring).
        weights_format: ``"safetensors"`` or ``"bin"`` (sharded ``.bin`` files with an index), for both layouts.
        include_vision: released layout only: whether the CLIP weights are in the checkpoint (else they load from
            the ``clip/`` folder named by ``mm_vision_tower``).
        max_shard_bytes: shard size for the released layout (small, so tests see several shards).
        seed: RNG seed of the random weights.

    Returns:
        The checkpoint directory.
    """
    from flash_vstream.model.modeling import FlashVStreamForCausalLM

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {VARIANTS}")
    out = prepare_tiny_dir(out_dir, layout, weights_format)
    decoder = "llama" if variant == "star-vicuna" else "qwen2"
    if layout == "released":  # the released repository's LLaMA SentencePiece tokenizer.model
        write_tiny_sentencepiece_tokenizer(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
    else:
        tokenizer = build_tiny_tokenizer("llama" if decoder == "llama" else "chatml")
        tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    model = FlashVStreamForCausalLM(tiny_star_config(decoder, vocab_size=len(tokenizer)))
    if layout == "own":
        model.save_pretrained(out)
        if weights_format == "bin":  # transformers 5.x saves only safetensors; rewrite the weights as .bin shards
            for saved in out.glob("model*.safetensors*"):
                saved.unlink()
            write_weight_shards(model.state_dict(), out, "bin", max_shard_bytes)
    else:
        write_released_layout(model, out, weights_format, include_vision, max_shard_bytes)
    return out


def released_config_dict(config: FlashVStreamConfig, vision_tower: str) -> dict:
    """The flat ``vstream`` config.json of the released layout for ``config`` (LLaMA decoders only)."""
    text = config.text_config
    if text.model_type != "llama":
        raise ValueError("the released Flash-VStream-7b layout holds a LLaMA decoder; use variant 'star-vicuna'")
    memory = config.star_memory_config()
    flat = {k: v for k, v in text.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
    flat.update(
        architectures=["VStreamLlamaForCausalLM"],
        model_type="vstream",
        mm_hidden_size=config.vision_config.hidden_size,
        mm_projector_type=config.projector_type,
        mm_vision_tower=vision_tower,
        mm_vision_select_layer=config.vision_feature_layer,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
        compress_type="mean",
        compress_size=memory.spatial_size,
        compress_long_memory_size=memory.temporal_size,
        compress_Turing_memory_size=memory.abstract_size,
        compress_Turing_update_ratio=memory.update_ratio,
        video_current_memory_length=memory.spatial_frames,
        video_long_memory_length=memory.temporal_clusters,
        video_Turing_memory_length=memory.abstract_slots,
        tokenizer_model_max_length=2048,
    )
    return flat


def write_released_layout(model, out: Path, weights_format: str, include_vision: bool, max_shard_bytes: int) -> None:
    """Save ``model`` in the released layout: flat config, renamed keys, sharded weights, CLIP in ``clip/``."""
    clip_dir = out / "clip"
    model.vision_tower.clip.config.save_pretrained(clip_dir)
    if not include_vision:
        model.vision_tower.clip.save_pretrained(clip_dir)
    (out / "config.json").write_text(json.dumps(released_config_dict(model.config, "clip"), indent=2))
    state = {
        _released_name(k): v.contiguous()
        for k, v in model.state_dict().items()
        if include_vision or not k.startswith("vision_tower.")
    }
    write_weight_shards(state, out, weights_format, max_shard_bytes)


def _released_name(key: str) -> str:
    name = to_released_key(key)
    if name == key:
        raise ValueError(f"parameter {key!r} has no place in the released Flash-VStream-7b layout")
    return name


def write_weight_shards(state: dict[str, torch.Tensor], out: Path, weights_format: str, max_shard_bytes: int) -> None:
    """Write ``state`` as ``model-0000i-of-0000n.safetensors`` or ``pytorch_model-...bin`` shards plus the index."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    stem, ext = ("model", "safetensors") if weights_format == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}"
        if weights_format == "safetensors":
            save_file(shard, str(out / name), metadata={"format": "pt"})
        else:
            torch.save(shard, out / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": weight_map,
    }
    (out / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))
