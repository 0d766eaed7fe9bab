"""Feature files on disk: where a medium's features go, how they are written, and when a file counts as done.

Layout (the published one, read by :class:`~flash_vstream.train.data.MediaResolver`): one safetensors file per
medium holding one fp16 tensor ``"feature"`` of shape ``(T, n, d)`` for a video or frame folder, ``(n, d)`` for an
image (``n`` patches, ``d`` width; 256 x 1024 for CLIP ViT-L/14 at 224 px). The file for a row path ``P`` is ``P``
with its suffix replaced by ``.safetensors``, so the resolver's second rule finds it when the features folder is the
media root.

Writes are atomic: the tensor goes to ``<target>.partial`` in the target's folder, is fsynced, and is renamed onto
the target (then the folder is fsynced). A killed run therefore leaves at most ``.partial`` files, which the next
run removes, never a target that looks finished but is not. A target counts as done only when safetensors opens it
(header readable and the data section covering the file exactly), its tensor is fp16, 2-D or 3-D, and its
``extractor`` metadata matches the running extractor (see
:attr:`~flash_vstream.train.features.FeatureExtractor.fingerprint`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flash_vstream.train.data import FEATURE_KEY

__all__ = [
    "EXTRACTOR_KEY",
    "PARTIAL_SUFFIX",
    "FileStatus",
    "copy_features",
    "feature_status",
    "orphan_partials",
    "partial_path",
    "remove_partials",
    "target_name",
    "write_features",
]

FEATURE_SUFFIX = ".safetensors"
PARTIAL_SUFFIX = ".partial"
"""Suffix added to a target's name while it is being written."""
EXTRACTOR_KEY = "extractor"
"""Metadata key holding the fingerprint of the extractor that wrote a file."""
FEATURE_DTYPE = "F16"


def target_name(row_path: str) -> str:
    """The features file name of a row path: its suffix replaced by ``.safetensors``.

    The same string operation as the resolver's second rule, so ``x/clip.mp4`` -> ``x/clip.safetensors``, a frame
    folder ``x/split_2`` -> ``x/split_2.safetensors``, an image ``a/b.jpg`` -> ``a/b.safetensors``.

    >>> target_name("webvid/1026004934.mp4")
    'webvid/1026004934.safetensors'
    """
    return os.path.splitext(row_path)[0] + FEATURE_SUFFIX


def partial_path(target: Path) -> Path:
    """Where ``target`` is written before its atomic rename."""
    return target.with_name(target.name + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class FileStatus:
    """What is at a target path."""

    state: str
    """"missing", "done" (complete, written by this extractor), "incomplete" (truncated, unreadable or not the
    layout: to be written again) or "foreign" (complete but written by another extractor, or by another tool)."""
    detail: str = ""
    """Why it is incomplete or foreign."""


def feature_status(target: Path, fingerprint: str) -> FileStatus:
    """Inspect ``target`` without reading its tensor data.

    Args:
        target: the features file.
        fingerprint: the running extractor's fingerprint.
    """
    if not target.exists():
        return FileStatus("missing")
    try:
        with safe_open(str(target), framework="pt") as handle:
            keys = list(handle.keys())
            metadata = handle.metadata() or {}
            if keys != [FEATURE_KEY]:
                return FileStatus("incomplete", f"holds tensors {keys}, not one {FEATURE_KEY!r}")
            tensor = handle.get_slice(FEATURE_KEY)
            shape, dtype = tensor.get_shape(), tensor.get_dtype()
    except (SafetensorError, OSError, ValueError) as err:  # truncated, empty, not safetensors
        return FileStatus("incomplete", f"unreadable ({str(err).splitlines()[0]})")
    if dtype != FEATURE_DTYPE or len(shape) not in (2, 3) or 0 in shape:
        return FileStatus("incomplete", f"{FEATURE_KEY!r} is {dtype} of shape {shape}, not fp16 (T, n, d) or (n, d)")
    written_by = metadata.get(EXTRACTOR_KEY)
    if written_by != fingerprint:
        who = f"extractor {written_by}" if written_by else "another tool (no extractor fingerprint)"
        return FileStatus("foreign", f"written by {who}, not by this extractor ({fingerprint})")
    return FileStatus("done")


def write_features(target: Path, feature: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write ``{"feature": feature}`` to ``target`` atomically (temp file, fsync, rename, fsync of the folder).

    Args:
        target: the final path; its folder is created.
        feature: the fp16 tensor (moved to the CPU and made contiguous).
        metadata: string metadata stored in the header (must include :data:`EXTRACTOR_KEY`).

    Raises:
        ValueError: when ``feature`` is not fp16 or ``metadata`` has no extractor fingerprint.
    """
    if feature.dtype != torch.float16:
        raise ValueError(f"features are stored as float16, got {feature.dtype}")
    if EXTRACTOR_KEY not in metadata:
        raise ValueError(f"metadata must name the extractor ({EXTRACTOR_KEY!r}) so a resumed run can check it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    save_file({FEATURE_KEY: feature.detach().cpu().contiguous()}, str(partial), metadata=metadata)
    _fsync(partial, os.O_RDONLY)
    os.replace(partial, target)
    _fsync(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # make the rename itself durable


def copy_features(source: Path, target: Path) -> None:
    """Put an existing features file at ``target`` atomically: a hard link where the filesystem allows, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:  # another filesystem, or links not supported
        shutil.copyfile(source, partial)
        _fsync(partial, os.O_RDONLY)
    os.replace(partial, target)
    _fsync(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partials(paths: Iterable[Path]) -> int:
    """Remove the given ``.partial`` files where they exist (left by a killed run); returns how many."""
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def orphan_partials(out: Path, targets: set[Path]) -> list[Path]:
    """``.partial`` files under ``out`` whose target is not in ``targets`` (no process of this run writes them)."""
    found = []
    for folder, _, files in os.walk(out):
        for name in files:
            if name.endswith(FEATURE_SUFFIX + PARTIAL_SUFFIX):
                path = Path(folder) / name
                if path.with_name(name[: -len(PARTIAL_SUFFIX)]) not in targets:
                    found.append(path)
    return sorted(found)
