"""Streaming CLIP vision encoder and torchvision-free frame preprocessing (STAR family).

The STAR model (Flash-VStream 2024) encodes every frame with CLIP ViT-L/14 at 224 px and keeps the patch
tokens of hidden layer -2 without the CLS token: 256 x 1024 features per frame (the released config's
`mm_vision_select_layer=-2`, `mm_vision_select_feature="patch"`, `image_aspect_ratio="pad"`).

Contents:
    * `CLIPFrameProcessor`: numpy + PIL preprocessing, pixel-identical to transformers' PIL backend of
      `CLIPImageProcessor` (the class that runs when torchvision is absent), plus the "pad" mode the
      released checkpoint was trained with (LLaVA's expand-to-square with the mean colour); and the same
      steps batched in torch on a GPU (`device=`, or frames already on one), within one 8-bit level of it.
    * `CLIPVisionEncoder`: a wrapper around `transformers.CLIPVisionModel` (frozen unless asked) that streams
      frames through it in fixed-size chunks.
    * `clip_vision_config`: resolves `mm_vision_tower` to a `CLIPVisionConfig` (local dir, built-in preset,
      or the hub).

Shape notation: t: frames, h/w: pixels, n: tokens per frame, d: hidden size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from flash_vstream.vision.resize import as_frame_tensor, resize_uint8_like_pil

__all__ = [
    "CLIP_VISION_PRESETS",
    "CLIPFrameProcessor",
    "CLIPVisionEncoder",
    "clip_vision_config",
]

# CLIP rescales uint8 pixels to [0, 1] by this factor (transformers' `rescale_factor` default).
_UINT8_TO_UNIT = 1 / 255
_PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC: the only resampling the CLIP checkpoints use.
_ASPECTS = ("pad", "crop")


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CLIPFrameProcessor:
    """Turns RGB frames into normalised CLIP pixel values without torchvision.

    Each frame is (optionally) padded to a square with the mean colour, resized so its shorter side is
    `image_size` (bicubic, PIL), centre-cropped to `crop_size`, rescaled by 1/255 and normalised with
    `image_mean` / `image_std`. The arithmetic follows transformers' PIL backend step by step (float64
    rescale then float32, float32 normalise), so the output is bit-identical to `CLIPImageProcessorPil`.

    With `device` set (e.g. "cuda"), or for frames that already are a torch tensor on a GPU, the same steps run
    batched in torch on that device (`flash_vstream.vision.resize`): uint8 frames go up, normalised pixels
    come back on the device, within one 8-bit level (1/255 before normalisation) of the PIL path.

    Example:
        >>> proc = CLIPFrameProcessor(aspect="pad")
        >>> proc(np.zeros((2, 120, 160, 3), dtype=np.uint8)).shape
        torch.Size([2, 3, 224, 224])
    """

    image_size: int = 224
    """Length in pixels of the shorter side after resizing (transformers' `size.shortest_edge`)."""
    crop_size: int = 224
    """Side of the square centre crop; must not exceed `image_size`."""
    image_mean: tuple[float, float, float] = tuple(OPENAI_CLIP_MEAN)
    """Per-channel RGB mean on the [0, 1] scale; also gives the fill colour of the "pad" mode."""
    image_std: tuple[float, float, float] = tuple(OPENAI_CLIP_STD)
    """Per-channel RGB standard deviation on the [0, 1] scale."""
    aspect: str = "pad"
    """ "pad": pad to a centred square with the mean colour first (released STAR checkpoint,
    `image_aspect_ratio="pad"`); "crop": plain CLIP preprocessing (resize then centre crop)."""
    device: str | None = None
    """Where to preprocess: None (Pillow on the CPU, bit-identical to transformers; frames already on a GPU are
    processed there) or a torch device such as "cuda" (torch on that device, output left there)."""

    def __post_init__(self) -> None:
        if self.aspect not in _ASPECTS:
            raise ValueError(f"CLIPFrameProcessor.aspect must be one of {_ASPECTS}, got {self.aspect!r}.")
        for name in ("image_size", "crop_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"CLIPFrameProcessor.{name} must be a positive int, got {value!r}.")
        if self.crop_size > self.image_size:
            raise ValueError(
                f"CLIPFrameProcessor.crop_size ({self.crop_size}) must not exceed image_size "
                f"({self.image_size}); lower crop_size or raise image_size."
            )
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"CLIPFrameProcessor.{name} needs 3 values (R, G, B), got {len(value)}.")
            setattr(self, name, value)
        if min(self.image_std) <= 0:
            raise ValueError(f"CLIPFrameProcessor.image_std must be positive, got {self.image_std}.")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(f"CLIPFrameProcessor.device={self.device!r} is not a torch device.") from err

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """uint8 RGB fill colour of the "pad" mode (LLaVA truncates mean * 255 towards zero)."""
        return tuple(int(m * 255) for m in self.image_mean)

    @classmethod
    def from_preprocessor_config(cls, config: dict[str, Any], aspect: str = "pad") -> CLIPFrameProcessor:
        """Builds a processor from a `preprocessor_config.json`-style dict.

        Accepts the old layout (`"size": 224, "crop_size": 224`) and the new one
        (`"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}`). Settings this
        processor cannot reproduce (another resampling, disabled steps, a non-square crop) raise.

        Args:
            config: The parsed JSON dict.
            aspect: "pad" or "crop" (not part of the CLIP config; comes from `image_aspect_ratio`).

        Returns:
            The processor.

        Raises:
            ValueError: On a setting that differs from CLIP's recipe, naming the field.
        """
        _check_supported_preprocessor_config(config)
        kwargs: dict[str, Any] = {"aspect": aspect}
        if "size" in config:
            kwargs["image_size"] = _shortest_edge(config["size"])
        if "crop_size" in config:
            kwargs["crop_size"] = _square_side(config["crop_size"], "crop_size")
        for name in ("image_mean", "image_std"):
            if name in config:
                kwargs[name] = tuple(config[name])
        return cls(**kwargs)

    @classmethod
    def from_vision_config(cls, config: CLIPVisionConfig, aspect: str = "pad") -> CLIPFrameProcessor:
        """Processor matching a CLIP vision config's input resolution (224 or 336 for CLIP-L/14)."""
        return cls(image_size=config.image_size, crop_size=config.image_size, aspect=aspect)

    def __call__(self, frames: np.ndarray | torch.Tensor | Image.Image | Sequence[Any]) -> torch.Tensor:
        """Preprocesses frames.

        Args:
            frames: uint8 RGB frames as an array (t, h, w, 3) or a single image (h, w, 3) (numpy or CPU
                torch), or a list of PIL images / (h, w, 3) uint8 arrays (sizes may differ).

        Returns:
            float32 pixel values of shape (t, 3, crop_size, crop_size), on the CPU, or on the device of the
            torch path (see the class docstring).

        Raises:
            TypeError: On an unsupported frame type or dtype.
            ValueError: On a wrong frame shape or an empty input.
        """
        on_gpu = isinstance(frames, torch.Tensor) and frames.device.type != "cpu"
        if (self.device is not None or on_gpu) and _is_frame_batch(frames):
            return self._preprocess_torch(frames)
        images = [self._preprocess_one(_to_rgb_array(frame)) for frame in _split_frames(frames)]
        if not images:
            raise ValueError("CLIPFrameProcessor got no frames; pass at least one frame.")
        pixels = np.stack(images)  # (t, crop, crop, 3) uint8
        # Same arithmetic as transformers' numpy `rescale` + `normalize`: float64 multiply, float32 cast,
        # float32 (x - mean) / std. Changing the order or precision changes the last bit.
        unit = (pixels.astype(np.float64) * _UINT8_TO_UNIT).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        normalized = (unit - mean) / std  # (t, crop, crop, 3)
        return torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)))  # (t, 3, crop, crop)

    def _preprocess_torch(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The PIL path's steps batched in torch on ``self.device`` (or the frames' device)."""
        video = as_frame_tensor(frames if frames.ndim == 4 else frames[None], self.device)  # (t, h, w, 3) uint8
        video = video.permute(0, 3, 1, 2).float()  # (t, 3, h, w), 0-255
        height, width = video.shape[-2:]
        if self.aspect == "pad" and height != width:
            side = max(height, width)
            canvas = torch.tensor(self.pad_color, dtype=video.dtype, device=video.device).view(1, 3, 1, 1)
            canvas = canvas.expand(video.shape[0], 3, side, side).clone()
            top, left = (side - height) // 2, (side - width) // 2
            canvas[:, :, top : top + height, left : left + width] = video
            video, height, width = canvas, side, side
        new_height, new_width = _shortest_edge_size(height, width, self.image_size)
        video = resize_uint8_like_pil(video, (new_height, new_width))
        top, left = (new_height - self.crop_size) // 2, (new_width - self.crop_size) // 2
        video = video[:, :, top : top + self.crop_size, left : left + self.crop_size]
        mean = torch.tensor(self.image_mean, device=video.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=video.device).view(1, 3, 1, 1)
        return ((video * _UINT8_TO_UNIT - mean) / std).contiguous()  # (t, 3, crop, crop)

    def _preprocess_one(self, image: np.ndarray) -> np.ndarray:
        """Pad (optional), resize and crop one (h, w, 3) uint8 frame; returns (crop, crop, 3) uint8."""
        if self.aspect == "pad":
            image = _expand_to_square(image, self.pad_color)
        height, width = image.shape[:2]
        new_height, new_width = _shortest_edge_size(height, width, self.image_size)
        resized = Image.fromarray(image).resize((new_width, new_height), resample=_PIL_BICUBIC)
        resized = np.asarray(resized)
        top = (new_height - self.crop_size) // 2
        left = (new_width - self.crop_size) // 2
        return resized[top : top + self.crop_size, left : left + self.crop_size]


def _shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Output (height, width) with the shorter side at `shortest_edge`, aspect kept.

    The longer side is truncated exactly as transformers' `get_resize_output_image_size` does.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def _expand_to_square(image: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """Centres a (h, w, 3) image on a square canvas of side max(h, w) filled with `fill`."""
    height, width = image.shape[:2]
    if height == width:
        return image
    side = max(height, width)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[...] = np.asarray(fill, dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = image
    return canvas


def _is_frame_batch(frames: Any) -> bool:
    """Whether ``frames`` is one uint8 array or tensor of equal-size frames (what the torch path takes)."""
    if not isinstance(frames, (np.ndarray, torch.Tensor)) or frames.ndim not in (3, 4):
        return False
    return frames.dtype in (np.uint8, torch.uint8) and frames.shape[-1] == 3


def _split_frames(frames: Any) -> list[Any]:
    """Splits the accepted input forms into a list of single frames."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, Image.Image):
        return [frames]
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            return [frames]
        if frames.ndim == 4:
            return list(frames)
        raise ValueError(
            f"frames must be (t, h, w, 3) or (h, w, 3) uint8, got an array of shape {tuple(frames.shape)}."
        )
    if isinstance(frames, Sequence) and not isinstance(frames, (str, bytes)):
        return list(frames)
    raise TypeError(
        f"frames must be a uint8 array (t, h, w, 3), one (h, w, 3) image, or a list of PIL images; "
        f"got {type(frames).__name__}."
    )


def _to_rgb_array(frame: Any) -> np.ndarray:
    """One frame as an (h, w, 3) uint8 RGB array.

    PIL images with transparency are composited onto white, as transformers' `convert_to_rgb` does.
    """
    if isinstance(frame, Image.Image):
        if "A" in frame.getbands() or frame.info.get("transparency") is not None:
            rgba = frame.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            frame = Image.alpha_composite(white, rgba)
        return np.asarray(frame.convert("RGB"))
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"each frame must be a PIL image or a uint8 array, got {type(frame).__name__}.")
    if frame.dtype != np.uint8:
        raise TypeError(
            f"frames must be uint8 RGB (0-255), got dtype {frame.dtype}; convert with .astype(np.uint8) "
            "after scaling to 0-255."
        )
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"each frame must be (h, w, 3) RGB channels-last, got shape {tuple(frame.shape)}.")
    return frame


def _check_supported_preprocessor_config(config: dict[str, Any]) -> None:
    """Rejects preprocessor settings that `CLIPFrameProcessor` does not reproduce."""
    if config.get("resample", _PIL_BICUBIC) != _PIL_BICUBIC:
        raise ValueError(
            f"preprocessor config field 'resample' must be 3 (bicubic), got {config['resample']!r}."
        )
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if config.get(flag, True) is not True:
            raise ValueError(f"preprocessor config field {flag!r} must be true for CLIP preprocessing.")
    factor = config.get("rescale_factor", _UINT8_TO_UNIT)
    if not np.isclose(factor, _UINT8_TO_UNIT, rtol=0, atol=1e-12):
        raise ValueError(f"preprocessor config field 'rescale_factor' must be 1/255, got {factor!r}.")


def _shortest_edge(size: Any) -> int:
    """Reads the `size` field: an int or {"shortest_edge": int}."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        return size["shortest_edge"]
    raise ValueError(
        f"preprocessor config field 'size' must be an int or {{'shortest_edge': int}}, got {size!r}; "
        "CLIPFrameProcessor only resizes the shorter side."
    )


def _square_side(size: Any, field: str) -> int:
    """Reads a square size field: an int or {"height": s, "width": s}."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict) and set(size) == {"height", "width"} and size["height"] == size["width"]:
        return size["height"]
    raise ValueError(
        f"preprocessor config field {field!r} must be an int or a square {{height, width}}, got {size!r}."
    )


# ----------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------


def _clip_large_patch14(image_size: int) -> dict[str, Any]:
    """Published vision-tower values of OpenAI CLIP ViT-L/14."""
    return {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_channels": 3,
        "patch_size": 14,
        "image_size": image_size,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
    }


CLIP_VISION_PRESETS: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14": _clip_large_patch14(224),
    "openai/clip-vit-large-patch14-336": _clip_large_patch14(336),
}
"""Hub ids of the CLIP towers the released checkpoints name in `mm_vision_tower`, with their config values, so
a checkpoint that already holds the CLIP weights is built without fetching CLIP's own config."""


def clip_vision_config(name_or_path: str | os.PathLike) -> CLIPVisionConfig:
    """Resolves the `mm_vision_tower` value of a checkpoint config to a `CLIPVisionConfig`.

    Order: a local directory (a `CLIPVisionConfig` or full `CLIPConfig` `config.json`), then the built-in
    presets in `CLIP_VISION_PRESETS`, then the Hugging Face hub.

    Args:
        name_or_path: Local directory or hub id.

    Returns:
        The vision config.

    Raises:
        ValueError: When the config cannot be found or read; the message names `mm_vision_tower`.
    """
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return _load_vision_config(name)
    if name in CLIP_VISION_PRESETS:
        return CLIPVisionConfig(**CLIP_VISION_PRESETS[name])
    return _load_vision_config(name)


def _load_vision_config(name: str) -> CLIPVisionConfig:
    """`CLIPVisionConfig.from_pretrained` (which takes the vision part of a CLIPConfig) with a clear error."""
    try:
        return CLIPVisionConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"Could not load a CLIP vision config for mm_vision_tower={name!r} ({err}). Set the config "
            f"field `mm_vision_tower` to a local directory holding CLIP's config.json, to one of the "
            f"built-in ids {sorted(CLIP_VISION_PRESETS)}, or to a hub id reachable from this machine."
        ) from err


# ----------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------

_SELECT_FEATURES = ("patch", "cls_patch")


class CLIPVisionEncoder(nn.Module):
    """Frozen CLIP vision tower that turns frames into the patch features of one hidden layer.

    Frames are encoded in chunks of `batch_size`, so any number of frames fits in bounded memory. Only the
    layers up to `select_layer` run: the remaining layers and the post-layernorm do not affect the output.

    Example:
        >>> cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=3,
        ...                        num_attention_heads=4, image_size=224, patch_size=14)
        >>> CLIPVisionEncoder(cfg)(torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 256, 32])
    """

    def __init__(
        self,
        config: CLIPVisionConfig,
        select_layer: int = -2,
        select_feature: str = "patch",
        batch_size: int = 64,
        *,
        clip_model: CLIPVisionModel | None = None,
        trainable: bool = False,
    ) -> None:
        """Builds the encoder from a config (random init, no download; works under `torch.device("meta")`).

        Args:
            config: Vision config of the CLIP tower.
            select_layer: Index into the hidden states (0 = embeddings, -1 = last layer); the released
                STAR checkpoint uses -2 (`mm_vision_select_layer`).
            select_feature: "patch" drops the CLS token, "cls_patch" keeps it (`mm_vision_select_feature`).
            batch_size: Frames per forward chunk.
            clip_model: An already built `CLIPVisionModel` to wrap instead of building one (see
                `from_model`); its config must be `config`.
            trainable: Train the layers that produce the selected features (frozen by default, as in both
                published recipes); see `set_trainable`.

        Raises:
            ValueError: On an out-of-range `select_layer`, an unknown `select_feature`, a non-positive
                `batch_size`, or a `clip_model` whose config is not `config`.
        """
        super().__init__()
        num_layers = config.num_hidden_layers
        if not -(num_layers + 1) <= select_layer <= num_layers:
            raise ValueError(
                f"select_layer (mm_vision_select_layer) must be in [{-(num_layers + 1)}, {num_layers}] for a "
                f"{num_layers}-layer CLIP tower, got {select_layer}."
            )
        if select_feature not in _SELECT_FEATURES:
            raise ValueError(
                f"select_feature (mm_vision_select_feature) must be one of {_SELECT_FEATURES}, "
                f"got {select_feature!r}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if clip_model is not None and clip_model.config is not config:
            raise ValueError(
                "clip_model.config must be the `config` passed; use CLIPVisionEncoder.from_model()."
            )
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.batch_size = batch_size
        # Hidden state i is the output of the first i encoder layers (0: embeddings after pre-layernorm).
        self._layers_to_run = select_layer % (num_layers + 1)
        self.clip = clip_model if clip_model is not None else CLIPVisionModel(config)
        self.set_trainable(trainable)

    def set_trainable(self, trainable: bool) -> None:
        """Freeze the tower, or make trainable exactly the parameters that produce the selected features.

        Layers after `select_layer` and the post-layernorm never receive a gradient, so they stay frozen either
        way (DDP without ``find_unused_parameters`` requires that). A frozen tower also stays in eval mode.
        """
        self.trainable = trainable
        self.clip.requires_grad_(False)
        if trainable:  # transformers 5.x CLIPVisionModel: embeddings, pre_layrnorm, encoder, post_layernorm
            self.clip.embeddings.requires_grad_(True)
            self.clip.pre_layrnorm.requires_grad_(True)
            for layer in self.clip.encoder.layers[: self._layers_to_run]:
                layer.requires_grad_(True)
        self.train(self.training and trainable)

    @classmethod
    def from_model(
        cls,
        clip_model: CLIPVisionModel,
        select_layer: int = -2,
        select_feature: str = "patch",
        batch_size: int = 64,
    ) -> CLIPVisionEncoder:
        """Wraps an existing `CLIPVisionModel` (e.g. one loaded with `from_pretrained`); it gets frozen."""
        return cls(clip_model.config, select_layer, select_feature, batch_size, clip_model=clip_model)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        select_layer: int = -2,
        select_feature: str = "patch",
        batch_size: int = 64,
        dtype: torch.dtype | None = None,
    ) -> CLIPVisionEncoder:
        """Loads CLIP vision weights (a CLIPVisionModel or full CLIPModel checkpoint) and wraps them.

        Raises:
            ValueError: When the checkpoint lacks any vision-tower weight (listed), instead of silently
                leaving them randomly initialised.
        """
        clip_model, info = CLIPVisionModel.from_pretrained(
            os.fspath(name_or_path), dtype=dtype, output_loading_info=True
        )
        if info["missing_keys"] or info["mismatched_keys"]:
            raise ValueError(
                f"CLIP checkpoint {os.fspath(name_or_path)!r} does not hold a complete vision tower: missing "
                f"{sorted(info['missing_keys'])}, mismatched {sorted(info['mismatched_keys'])}. Point "
                "`mm_vision_tower` at a CLIP (vision) checkpoint."
            )
        return cls.from_model(clip_model, select_layer, select_feature, batch_size)

    def train(self, mode: bool = True) -> CLIPVisionEncoder:
        """A frozen tower stays in eval mode whatever `mode` is (its dropout must never be on)."""
        return super().train(mode and getattr(self, "trainable", False))

    @property
    def config(self) -> CLIPVisionConfig:
        """Config of the wrapped CLIP tower."""
        return self.clip.config

    @property
    def image_size(self) -> int:
        """Input resolution in pixels (224 for CLIP-L/14, 336 for the -336 variant)."""
        return self.config.image_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per frame: (image_size // patch_size) ** 2, 256 for CLIP-L/14 @224."""
        return (self.config.image_size // self.config.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Tokens per frame in the output: `num_patches`, plus 1 with `select_feature="cls_patch"`."""
        return self.num_patches + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def hidden_size(self) -> int:
        """Feature dimension d of the output (1024 for CLIP-L/14)."""
        return self.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encodes frames.

        Args:
            pixel_values: (t, 3, image_size, image_size) normalised pixels, any float dtype or device;
                cast to the tower's dtype and device.

        Returns:
            (t, n, d) features of hidden layer `select_layer` in the tower's dtype, with n = `num_tokens`.

        Raises:
            ValueError: When `pixel_values` is not 4-D with 3 channels at the tower's resolution.
        """
        expected = (self.config.num_channels, self.image_size, self.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be (t, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(pixel_values.shape)}; preprocess frames with CLIPFrameProcessor."
            )
        weight = self.clip.embeddings.patch_embedding.weight
        pixel_values = pixel_values.to(device=weight.device, dtype=weight.dtype)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):  # a frozen tower keeps no graph
            chunks = [self._encode_chunk(chunk) for chunk in pixel_values.split(self.batch_size)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _encode_chunk(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) -> (b, n, d) hidden state `select_layer`, computed with only the layers it needs."""
        hidden = self.clip.embeddings(pixel_values)  # (b, 1 + num_patches, d), CLS first
        hidden = self.clip.pre_layrnorm(hidden)
        for layer in self.clip.encoder.layers[: self._layers_to_run]:
            hidden = layer(hidden, None)  # vision attention is unmasked
        return hidden[:, 1:] if self.select_feature == "patch" else hidden
