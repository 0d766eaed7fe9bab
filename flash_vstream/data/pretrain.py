"""Pre-training of the demo model's vision tower on synthetic frames: per-patch colour and shape labels.

A vision tower trained from scratch only through the language model's answers meets a chicken-and-egg problem:
the decoder cannot learn which visual token a question is about before the tower tells shapes apart, and the tower
gets no useful gradient before the decoder attends to the right token (training sits on the answer prior). The
generator knows what every pixel shows (:func:`~flash_vstream.data.scenes.object_map`), so the tower is first
taught, with two linear heads on the features that feed the memory, the colour and the shape of the object
covering each patch. The heads are thrown away; the tower keeps learning in the main training run.

Shapes: t: frames, n: patches per frame, d: vision width, g: patch-grid side.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flash_vstream.data.scenes import COLOURS, SHAPES, Scene, object_map, render_frame
from flash_vstream.data.synthetic import SHORT_KINDS, make_samples

COLOUR_IDS = {name: i + 1 for i, name in enumerate(COLOURS)}
SHAPE_IDS = {name: i + 1 for i, name in enumerate(SHAPES)}
_COVER = 0.2
"""Least share of a patch an object must cover to label it (else: background, label 0)."""


def patch_labels(scene: Scene, t: int, image_size: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(g*g,)`` colour and shape labels of frame ``t`` as the vision tower sees it.

    The object map goes through the "pad" preprocessing geometry (centred square, then resized to
    ``image_size``; nearest pixel), and each patch takes the object covering most of it.
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
    colour = np.zeros(grid * grid, dtype=np.int64)
    shape = np.zeros(grid * grid, dtype=np.int64)
    for i, obj in enumerate(scene.objects, start=1):
        flash = obj.event("flashes")
        name = "white" if flash is not None and flash.frame == t else obj.colour_at(t)  # a flash is drawn white
        colour[best == i], shape[best == i] = COLOUR_IDS[name], SHAPE_IDS[obj.shape]
    return colour, shape


def pretrain_vision(model, *, steps: int, seed: int, frames_per_step: int = 32, lr: float = 2e-3) -> list[float]:
    """Train ``model.vision_tower`` (a STAR model's) on per-patch colour and shape labels of synthetic frames.

    Args:
        model: a ``FlashVStreamForCausalLM`` whose vision tower is trainable.
        steps: optimiser steps.
        seed: seed of the frames (training split) and of the heads' init.
        frames_per_step: frames per batch.
        lr: AdamW learning rate.

    Returns:
        The loss of every step.
    """
    from flash_vstream.vision.clip import CLIPFrameProcessor

    tower = model.vision_tower
    config = tower.config
    processor = CLIPFrameProcessor.from_vision_config(config, aspect=model.config.image_aspect_ratio)
    generator = torch.Generator().manual_seed(seed)
    heads = nn.ModuleList([nn.Linear(config.hidden_size, len(COLOUR_IDS) + 1),
                           nn.Linear(config.hidden_size, len(SHAPE_IDS) + 1)])
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
        frames, colours, shapes = [], [], []
        for k in picks:
            scene = samples[k].scene
            t = int(rng.integers(scene.num_frames))
            frames.append(render_frame(scene, t))
            colour, shape = patch_labels(scene, t, config.image_size, config.patch_size)
            colours.append(colour)
            shapes.append(shape)
        features = tower(processor(np.stack(frames)))  # (t, n, d)
        loss = sum(
            nn.functional.cross_entropy(head(features).flatten(0, 1), torch.from_numpy(np.concatenate(labels)))
            for head, labels in zip(heads, (colours, shapes), strict=True)
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    tower.train(False)
    return losses
