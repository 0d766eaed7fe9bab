"""CLIP feature extraction for the STAR family: media -> the fp16 patch features its training data can hold.

A :class:`FeatureExtractor` is the STAR model's own visual front end, cut off before the memory: the family's frame
sampler (1 fps, at most 14,400 frames), :class:`~flash_vstream.vision.clip.CLIPFrameProcessor` with the checkpoint's
``image_aspect_ratio`` and :class:`~flash_vstream.vision.clip.CLIPVisionEncoder` at the checkpoint's layer. Feeding
its output to the model as ``features=`` is therefore the same as feeding the frames, up to the fp16 rounding of the
stored features.

The tower comes from a STAR checkpoint (:meth:`FeatureExtractor.from_star_checkpoint`: only its vision weights are
read, from either the released layout or this project's own, strictly; a checkpoint without them names its CLIP
tower in ``mm_vision_tower``) or from a CLIP checkpoint (:meth:`FeatureExtractor.from_vision_tower`).

Shape notation: t frames, n patches per frame (256 for CLIP-L/14 at 224 px), d tower width (1024).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from flash_vstream.train.data import Media
from flash_vstream.train.feature_store import EXTRACTOR_KEY
from flash_vstream.video.reader import read_video
from flash_vstream.video.sampling import FrameSampler
from flash_vstream.vision.clip import CLIPFrameProcessor, CLIPVisionEncoder

__all__ = ["FeatureExtractor", "Pixels", "load_star_vision_tower", "read_star_config"]

DEFAULT_VISION_TOWER = "openai/clip-vit-large-patch14"
"""The CLIP tower of the released STAR checkpoints (``mm_vision_tower``)."""
STAR_RELEASED_MODEL_TYPE = "vstream"
"""``model_type`` of the released STAR layout (flat LLaMA config, ``model.*`` keys); ``flash_vstream`` is our own."""
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_FINGERPRINT_CHARS = 16


@dataclass(frozen=True, eq=False)
class Pixels:
    """A medium read and preprocessed, ready for the tower."""

    values: torch.Tensor
    """``(t, 3, H, W)`` normalised pixels in the tower's dtype, on the CPU."""
    frame_indices: np.ndarray
    """``(t,)`` index of each frame in the source (0 for an image)."""
    native_fps: float
    """Frame rate of the source (the frame-folder rate for folders and images)."""
    image: bool
    """An image: its features are stored 2-D, ``(n, d)``."""


class FeatureExtractor:
    """Reads media, runs the CLIP tower and returns fp16 features in the published layout.

    Args:
        encoder: the CLIP tower (on any device; it is moved to ``device``).
        processor: the frame preprocessing the model uses with this tower.
        source: what the tower was loaded from (recorded in each file's metadata).
        sampler: frame sampling of videos and frame folders; default the STAR family's (1 fps, at most 14,400).
        frames_fps: frame rate of frame folders (they carry none); 1.0 for 1-fps extractions.
        device: where the tower runs; default where it is.
        preprocess_chunk: frames preprocessed at once (bounds the float copy of a long video's frames).

    >>> from flash_vstream.model.tiny import tiny_clip_config
    >>> extractor = FeatureExtractor(CLIPVisionEncoder(tiny_clip_config()), CLIPFrameProcessor(), source="tiny")
    >>> extractor.encode(extractor.preprocess(np.zeros((3, 40, 60, 3), np.uint8))).shape
    torch.Size([3, 256, 32])
    """

    def __init__(
        self,
        encoder: CLIPVisionEncoder,
        processor: CLIPFrameProcessor,
        *,
        source: str,
        sampler: FrameSampler | None = None,
        frames_fps: float = 1.0,
        device: torch.device | str | None = None,
        preprocess_chunk: int = 64,
    ):
        if isinstance(preprocess_chunk, bool) or not isinstance(preprocess_chunk, int) or preprocess_chunk < 1:
            raise ValueError(f"preprocess_chunk must be a positive int, got {preprocess_chunk!r}")
        if isinstance(frames_fps, bool) or not isinstance(frames_fps, (int, float)) or not frames_fps > 0:
            raise ValueError(f"frames_fps (--frames-fps) must be a positive number, got {frames_fps!r}")
        if sampler is None:
            from flash_vstream.families import get_family

            sampler = get_family("star").sampler.build()
        self.processor, self.sampler, self.frames_fps, self.source = processor, sampler, float(frames_fps), source
        self.preprocess_chunk = preprocess_chunk
        encoder.eval()
        self.dtype = encoder.clip.embeddings.patch_embedding.weight.dtype
        self.fingerprint = self._fingerprint(encoder)  # before the move: hashed from the CPU copy once
        self.encoder = encoder if device is None else encoder.to(device)

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_star_checkpoint(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 64,
        frames_fps: float = 1.0,
    ) -> FeatureExtractor:
        """The extractor of a STAR checkpoint: its tower, layer and ``image_aspect_ratio``; no other weight is read.

        Args:
            name_or_path: checkpoint folder (released layout or this project's), or a Hub id.
            device: where the tower runs (``None``/``"auto"``: CUDA when available).
            dtype: compute dtype (``None``: fp16 on CUDA, fp32 elsewhere; ``"auto"``: the checkpoint's).
            batch_size: frames per forward pass of the tower.
            frames_fps: frame rate of frame folders.

        Raises:
            FileNotFoundError: for a missing checkpoint or weights.
            ValueError: for a checkpoint of another family, or vision weights that do not match its config.
        """
        from flash_vstream.model.loading import resolve_checkpoint

        path = resolve_checkpoint(name_or_path)
        config = read_star_config(path)
        device = _device(device)
        encoder = load_star_vision_tower(path, config, dtype=_dtype(dtype, device, path), batch_size=batch_size)
        processor = CLIPFrameProcessor.from_vision_config(config.vision_config, aspect=config.image_aspect_ratio)
        return cls(encoder, processor, source=str(name_or_path), frames_fps=frames_fps, device=device)

    @classmethod
    def from_vision_tower(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_VISION_TOWER,
        *,
        aspect: str = "pad",
        select_layer: int = -2,
        device: torch.device | str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 64,
        frames_fps: float = 1.0,
    ) -> FeatureExtractor:
        """The extractor of a CLIP checkpoint (a local folder, or a Hub id from the cache or the Hub).

        Args:
            name_or_path: CLIP (vision) checkpoint.
            aspect: ``"pad"`` (the released STAR model's ``image_aspect_ratio``) or ``"crop"``.
            select_layer: hidden layer whose patch tokens are kept (-2 as released).
            device: where the tower runs (``None``/``"auto"``: CUDA when available).
            dtype: compute dtype (``None``: fp16 on CUDA, fp32 elsewhere).
            batch_size: frames per forward pass of the tower.
            frames_fps: frame rate of frame folders.

        Raises:
            FileNotFoundError: when the checkpoint cannot be found.
            ValueError: when the checkpoint is not a complete CLIP vision tower.
        """
        device = _device(device)
        try:
            encoder = CLIPVisionEncoder.from_pretrained(
                name_or_path, select_layer, "patch", batch_size, dtype=_dtype(dtype, device, None)
            )
        except OSError as err:
            raise FileNotFoundError(
                f"--vision-tower {os.fspath(name_or_path)!r} cannot be loaded ({str(err).splitlines()[0]}); pass a "
                "local CLIP checkpoint folder or a Hub id that is cached or reachable"
            ) from None
        processor = CLIPFrameProcessor.from_vision_config(encoder.config, aspect=aspect)
        return cls(encoder, processor, source=os.fspath(name_or_path), frames_fps=frames_fps, device=device)

    # --- work -------------------------------------------------------------------------------------------------
    def read(self, medium: Media) -> Pixels:
        """Decode and preprocess a medium (CPU only, so it can run on a worker thread).

        Raises:
            VideoError: for a medium that cannot be read (missing, corrupt, truncated).
            ValueError: for a medium that is already features.
        """
        if medium.kind == "features":
            raise ValueError(f"{medium.path} already holds features; there is nothing to extract")
        if medium.kind == "image":
            clip = read_video(medium.path)
        else:
            clip = read_video(medium.path, sampler=self.sampler, frames_fps=self.frames_fps)
        return Pixels(self.preprocess(clip.frames), clip.indices, clip.native_fps, medium.kind == "image")

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """``(t, h, w, 3)`` uint8 frames -> ``(t, 3, H, W)`` pixels in the tower's dtype, a chunk at a time.

        Casting to the tower's dtype here is what the tower does to its input anyway.
        """
        chunks = [
            self.processor(frames[i : i + self.preprocess_chunk]).to(self.dtype)
            for i in range(0, len(frames), self.preprocess_chunk)
        ]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def encode(self, pixels: Pixels | torch.Tensor) -> torch.Tensor:
        """Features of preprocessed frames: fp16 on the CPU, ``(t, n, d)``, or ``(n, d)`` for an image.

        Frames go to the tower's device ``encoder.batch_size`` at a time, so a long video never sits there whole.
        """
        values = pixels.values if isinstance(pixels, Pixels) else pixels
        out = torch.empty((len(values), self.encoder.num_tokens, self.encoder.hidden_size), dtype=torch.float16)
        with torch.inference_mode():
            for start in range(0, len(values), self.encoder.batch_size):
                chunk = values[start : start + self.encoder.batch_size]
                out[start : start + len(chunk)] = self.encoder(chunk).to("cpu", torch.float16)  # (b, n, d)
        return out[0] if isinstance(pixels, Pixels) and pixels.image else out

    def metadata(self, pixels: Pixels, row_path: str) -> dict[str, str]:
        """The header metadata of one features file: who wrote it and which frames it holds."""
        return {
            "format": "pt",
            EXTRACTOR_KEY: self.fingerprint,
            "vision_tower": self.source,
            "select_layer": str(self.encoder.select_layer),
            "image_aspect_ratio": self.processor.aspect,
            "fps": str(self.sampler.target_fps),
            "source": row_path,
            "native_fps": str(pixels.native_fps),
            "frame_indices": json.dumps(pixels.frame_indices.tolist()),
        }

    def _fingerprint(self, encoder: CLIPVisionEncoder) -> str:
        """sha256 of the settings and the tower's weights: equal only for extractors that write the same features.

        Settings are everything besides the weights that decides the features: preprocessing, layer, frame sampling
        and the compute dtype.
        """
        settings = {
            "processor": asdict(self.processor),
            "select_layer": encoder.select_layer,
            "select_feature": encoder.select_feature,
            "sampler": asdict(self.sampler),
            "frames_fps": self.frames_fps,
            "dtype": str(self.dtype),
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        for key, tensor in sorted(encoder.clip.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()[:_FINGERPRINT_CHARS]


def _device(device: torch.device | str | None) -> torch.device:
    from flash_vstream.model.loading import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)


def _dtype(dtype: str | torch.dtype | None, device: torch.device, checkpoint: Path | None) -> torch.dtype:
    """``None``: fp16 on CUDA (the features are stored fp16; bf16 would round them twice), fp32 elsewhere."""
    from flash_vstream.model.loading import resolve_dtype

    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    return resolve_dtype(dtype, device, checkpoint)


# ----------------------------------------------------------------------------------------------------------
# The vision tower of a STAR checkpoint
# ----------------------------------------------------------------------------------------------------------


def read_star_config(path: Path):
    """The :class:`~flash_vstream.config.FlashVStreamConfig` of a STAR checkpoint folder (released or own layout).

    Raises:
        FileNotFoundError: without a ``config.json``.
        ValueError: for a checkpoint of another family, naming it.
    """
    from flash_vstream.families import family_for_config
    from flash_vstream.model.checkpoints import read_star_config as read_config
    from flash_vstream.model.loading import read_checkpoint_config

    raw = read_checkpoint_config(path)
    model_type, family = raw["model_type"], family_for_config(raw, where=str(path))
    if family.name != "star":
        raise ValueError(
            f"--model {path} is a {family.name}-family checkpoint (model_type {model_type!r}); extract-features "
            "writes the CLIP features of the STAR family: pass a STAR checkpoint, or a CLIP tower with --vision-tower"
        )
    return read_config(path)


def load_star_vision_tower(path: Path, config, *, dtype: torch.dtype = torch.float32, batch_size: int = 64):
    """The :class:`CLIPVisionEncoder` of a STAR checkpoint, reading only its vision weights, strictly.

    A checkpoint that holds no vision weight at all takes its tower from ``vision_tower_name`` (``mm_vision_tower``),
    as loading the whole model does.

    Args:
        path: the checkpoint folder.
        config: its :class:`~flash_vstream.config.FlashVStreamConfig` (:func:`read_star_config`).
        dtype: weights dtype.
        batch_size: frames per forward chunk.

    Raises:
        FileNotFoundError: when the folder has no weights files.
        ValueError: for missing, unexpected or mis-shaped vision weights, naming them.
    """
    from flash_vstream.model.checkpoints import VISION_PREFIX, map_released_key

    released = json.loads((path / "config.json").read_text())["model_type"] == STAR_RELEASED_MODEL_TYPE
    rename = map_released_key if released else (lambda key: key)
    state = {
        rename(key)[len(VISION_PREFIX) :]: tensor
        for key, tensor in _read_tensors(path, lambda key: rename(key).startswith(VISION_PREFIX)).items()
    }
    layer, select = config.vision_feature_layer, config.vision_feature_select
    if not state:
        return _tower_from_name(config, dtype, batch_size)
    encoder = CLIPVisionEncoder(config.vision_config, layer, select, batch_size)
    try:
        result = encoder.clip.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"checkpoint {path}: vision weights do not fit its vision_config: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        missing = sorted(VISION_PREFIX + key for key in result.missing_keys)
        unexpected = sorted(VISION_PREFIX + key for key in result.unexpected_keys)
        raise ValueError(
            f"checkpoint {path} holds an incomplete vision tower: missing {missing[:20]}, unexpected {unexpected[:20]}"
            "; use a checkpoint saved by flash-vstream or one in the released Flash-VStream-7b layout"
        )
    return encoder.to(dtype)


def _tower_from_name(config, dtype: torch.dtype, batch_size: int) -> CLIPVisionEncoder:
    name = config.vision_tower_name
    if not name:
        raise ValueError("checkpoint holds no vision-tower weights and its config names no vision tower")
    try:
        encoder = CLIPVisionEncoder.from_pretrained(
            name, config.vision_feature_layer, config.vision_feature_select, batch_size, dtype=dtype
        )
    except OSError as err:
        raise FileNotFoundError(
            f"checkpoint holds no vision-tower weights and its vision tower {name!r} (mm_vision_tower) cannot be "
            f"loaded ({str(err).splitlines()[0]}); point mm_vision_tower at a CLIP checkpoint folder"
        ) from None
    expected = config.vision_config
    for field in ("hidden_size", "num_hidden_layers", "patch_size", "image_size"):
        if getattr(encoder.config, field) != getattr(expected, field):
            raise ValueError(
                f"vision tower {name!r} has {field}={getattr(encoder.config, field)} but the checkpoint's "
                f"vision_config says {getattr(expected, field)}; point mm_vision_tower at the tower it was trained with"
            )
    return encoder


def _read_tensors(path: Path, wanted) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder whose stored names satisfy ``wanted``, opening only the shards holding them.

    Raises:
        FileNotFoundError: when the folder holds no weights file.
    """
    from safetensors import safe_open

    files: dict[str, list[str] | None] = {}
    for index in _INDEX_FILES:
        if (path / index).is_file():
            weight_map = json.loads((path / index).read_text())["weight_map"]
            for key, name in weight_map.items():
                if wanted(key):
                    files.setdefault(name, []).append(key)
            break
    else:
        single = [name for name in _SINGLE_FILES if (path / name).is_file()]
        if not single:
            raise FileNotFoundError(
                f"checkpoint {path} holds no weights (none of {', '.join(_INDEX_FILES + _SINGLE_FILES)})"
            )
        files[single[0]] = None
    tensors = {}
    for name, keys in files.items():
        if name.endswith(".safetensors"):
            with safe_open(str(path / name), framework="pt") as handle:
                for key in keys if keys is not None else [k for k in handle.keys() if wanted(k)]:
                    tensors[key] = handle.get_tensor(key)
        else:  # mmap: a 10 GB shard is not read to pick out the tower
            shard = torch.load(path / name, map_location="cpu", weights_only=True, mmap=True)
            tensors.update({key: shard[key] for key in (keys if keys is not None else filter(wanted, shard))})
    return tensors
