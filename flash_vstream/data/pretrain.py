"""Pre-training of the demo model's vision tower on synthetic frames: per-patch colour and shape labels.

A vision tower trained from scratch only through the language model's answers meets a chicken-and-egg problem:
the decoder cannot learn which visual token a question is about before the tower tells shapes apart, and the tower
gets no useful gradient before the decoder attends to the right token (training sits on the answer prior). The
generator knows what every pixel shows (:func:`~flash_vstream.data.scenes.object_map`), so the tower is first
taught, with linear heads on the features that feed the memory, the colour and the shape of the object covering
each patch and where that object's centre is (optionally also at the memory's pooled grid). The heads are thrown
away; the tower is frozen in the main training run.

Shapes: t: frames, n: patches per frame, d: vision width, g: patch-grid side.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flash_vstream.data.scenes import COLOURS, SHAPES, Scene, object_map, render_frame
from flash_vstream.data.synthetic import SHORT_KINDS, make_samples
from flash_vstream.memory.pooling import pool_grid

COLOUR_IDS = {name: i + 1 for i, name in enumerate(COLOURS)}
SHAPE_IDS = {name: i + 1 for i, name in enumerate(SHAPES)}
_COVER = 0.2
"""Least share of a patch an object must cover to label it (else: background, label 0)."""


def patch_owners(scene: Scene, t: int, image_size: int, patch: int) -> np.ndarray:
    """``(g*g,)``: the object covering most of each patch of frame ``t`` as the vision tower sees it.

    ``i + 1`` for ``scene.objects[i]``, 0 for the background.

    The object map goes through the "pad" preprocessing geometry (centred square, then resized to
    ``image_size``; nearest pixel); an object must cover :data:`_COVER` of a patch to own it.
    """
    owner = object_map(scene, t)
    side = max(scene.height, scene.width)
    padded = np.zeros((side, side), dtype=np.int64)
    top, left = (side - scene.height) // 2, (side - scene.width) // 2
    padded[top : top + scene.height, left : left + scene.width] = owner
    index = ((np.arange(image_size) + 0.5) * side / image_size).astype(np.int64)
    grid = image_size // patch
    resized = padded[np.ix_(index, index)][: grid * patch, : grid * patch]
    blocks = resized.reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3).reshape(grid * grid, -1)  # (g*g, p*p)
    counts = np.stack([(blocks == i).sum(1) for i in range(len(scene.objects) + 1)], axis=1)  # (g*g, objects+1)
    counts[:, 0] = 0
    best = counts.argmax(1)
    best[counts.max(1) < _COVER * patch * patch] = 0
    return best


def drawn_colour(obj, t: int) -> str:
    """The colour ``obj`` is drawn in at frame ``t`` (a flash is drawn white)."""
    flash = obj.event("flashes")
    return "white" if flash is not None and flash.frame == t else obj.colour_at(t)


def owner_centres(scene: Scene, t: int) -> np.ndarray:
    """``(objects + 1, 2)`` float32: each object's centre at frame ``t`` in the tower's padded square.

    x and y in [-1, 1]; row 0, the background, is zero.
    """
    side = max(scene.height, scene.width)
    top, left = (side - scene.height) // 2, (side - scene.width) // 2
    centres = np.zeros((len(scene.objects) + 1, 2), dtype=np.float32)
    for i, obj in enumerate(scene.objects, start=1):
        cx, cy = obj.centre(t, scene.num_frames)
        centres[i] = (2 * (left + cx * scene.width) / side - 1, 2 * (top + cy * scene.height) / side - 1)
    return centres


def patch_labels(scene: Scene, t: int, image_size: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(g*g,)`` colour and shape labels of frame ``t`` as the vision tower sees it (:func:`patch_owners`)."""
    best = patch_owners(scene, t, image_size, patch)
    colour = np.zeros(best.shape, dtype=np.int64)
    shape = np.zeros(best.shape, dtype=np.int64)
    for i, obj in enumerate(scene.objects, start=1):
        colour[best == i], shape[best == i] = COLOUR_IDS[drawn_colour(obj, t)], SHAPE_IDS[obj.shape]
    return colour, shape


def pretrain_vision(model, *, steps: int, seed: int, frames_per_step: int = 32, lr: float = 2e-3,
                    pool_size: int | None = None) -> list[float]:
    """Train ``model.vision_tower`` (a STAR model's) on per-patch colour and shape labels of synthetic frames.

    Args:
        model: a ``FlashVStreamForCausalLM`` whose vision tower is trainable.
        steps: optimiser steps.
        seed: seed of the frames (training split) and of the heads' init.
        frames_per_step: frames per batch.
        lr: AdamW learning rate.
        pool_size: also teach the labels at the memory's pooled grid (``pool_size`` x ``pool_size`` tokens per
            frame): the same heads on the pooled features, against each token's share of every label. The
            memory sees pooled tokens only, and one covering an object's edge must still say which shape it is.

    Returns:
        The loss of every step.
    """
    from flash_vstream.vision.clip import CLIPFrameProcessor

    tower = model.vision_tower
    config = tower.config
    processor = CLIPFrameProcessor.from_vision_config(config, aspect=model.config.image_aspect_ratio)
    generator = torch.Generator().manual_seed(seed)
    heads = nn.ModuleList([nn.Linear(config.hidden_size, len(COLOUR_IDS) + 1),
                           nn.Linear(config.hidden_size, len(SHAPE_IDS) + 1),
                           nn.Linear(config.hidden_size, 2)])  # the covering object's centre (x, y)
    for head in heads:
        nn.init.normal_(head.weight, std=config.hidden_size**-0.5, generator=generator)
        nn.init.zeros_(head.bias)
    params = [p for p in tower.parameters() if p.requires_grad] + list(heads.parameters())
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    samples = make_samples("train", seed, max(steps * frames_per_step // 8, 1), SHORT_KINDS)
    tower.train()
    losses = []
    for _ in range(steps):
        picks = rng.integers(len(samples), size=frames_per_step)
        frames, colours, shapes, centres = [], [], [], []
        for k in picks:
            scene = samples[k].scene
            t = int(rng.integers(scene.num_frames))
            frames.append(render_frame(scene, t))
            colour, shape = patch_labels(scene, t, config.image_size, config.patch_size)
            colours.append(colour)
            shapes.append(shape)
            centres.append(owner_centres(scene, t)[patch_owners(scene, t, config.image_size, config.patch_size)])
        features = tower(processor(np.stack(frames)))  # (t, n, d)
        loss = _centre_loss(heads[2], features, torch.from_numpy(np.stack(centres)),
                            torch.from_numpy(np.stack(colours) > 0), pool_size)
        for head, labels in zip(heads[:2], (colours, shapes), strict=True):
            target = torch.from_numpy(np.stack(labels))  # (t, n)
            loss = loss + nn.functional.cross_entropy(head(features).flatten(0, 1), target.flatten())
            if pool_size is not None:
                shares = pool_grid(nn.functional.one_hot(target, head.out_features).float(), pool_size)
                pooled = head(pool_grid(features, pool_size))  # (t, s*s, classes)
                loss = loss + nn.functional.cross_entropy(pooled.flatten(0, 1), shares.flatten(0, 1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    tower.train(False)
    return losses


def _centre_loss(head: nn.Module, features: torch.Tensor, centres: torch.Tensor, owned: torch.Tensor,
                 pool_size: int | None) -> torch.Tensor:
    """Mean squared error of ``head``'s centre on patches an object owns.

    With ``pool_size``, also on pooled tokens against their share-weighted centre: the memory's tokens then say
    where their object is.

    Args:
        head: ``d -> 2``.
        features: ``(t, n, d)``.
        centres: ``(t, n, 2)`` the owning object's centre (0 on the background).
        owned: ``(t, n)`` bool, an object owns the patch.
        pool_size: the memory's grid side, or ``None``.
    """
    mask = owned.float()[..., None]  # (t, n, 1)
    loss = ((head(features) - centres) ** 2 * mask).sum() / mask.sum().clamp(min=1)
    if pool_size is not None:
        share = pool_grid(mask, pool_size)  # (t, s*s, 1)
        target = pool_grid(centres * mask, pool_size) / share.clamp(min=1e-6)
        keep = (share > 0).float()
        pooled = head(pool_grid(features, pool_size))
        loss = loss + ((pooled - target) ** 2 * keep).sum() / keep.sum().clamp(min=1)
    return loss
