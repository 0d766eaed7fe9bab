"""The demo model's projector started in the decoder's word space, and a decoder head started to bind words.

A memory token showing a red circle is projected near ``embedding("red") + embedding("circle")`` of the
decoder's own input embeddings, plus a marker every visual token carries and where the object is.

From a random projector the decoder must discover, answer by answer, which visual tokens a question's words are
about; on 2 CPU cores that is more steps than the recipe has. Started here, the words of the question ("the
circle", "the red object") already share directions with the tokens that show them, so binding them is one
attention step. The generator knows what every pixel shows, so the targets are exact: each memory token (the
tower's patches pooled to the memory's grid) gets the share-weighted sum of the colour and shape word embeddings of
the objects covering its patches (background: zero). The projector is fitted to them by mean squared error on
features of the frozen, pre-trained tower, and keeps training in the main run.

Shapes: t: frames, n: patches per frame, g: patch-grid side, s: memory grid side, d: vision width, h: text width.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flash_vstream.data.pretrain import COLOUR_IDS, SHAPE_IDS, drawn_colour, owner_centres, patch_labels, patch_owners
from flash_vstream.data.scenes import render_frame
from flash_vstream.data.synthetic import SHORT_KINDS, make_samples
from flash_vstream.memory.pooling import pool_grid


def word_rows(tokenizer, words) -> list[int]:
    """The token id of each of ``words`` (one word each).

    Raises:
        ValueError: when a word is not one token of ``tokenizer``.
    """
    ids = []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1 or pieces[0] == tokenizer.unk_token_id:
            raise ValueError(f"{word!r} is not one token of the demo tokenizer; rebuild it (build_demo_tokenizer)")
        ids.append(pieces[0])
    return ids


def label_shares(labels: np.ndarray, classes: int, grid: int, size: int) -> torch.Tensor:
    """``(g*g,)`` patch labels -> ``(s*s, classes)``: each memory token's share of patches with each label.

    Label 0 (the background) is dropped.
    """
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), classes + 1).float()[None]  # (1, g*g, c+1)
    return pool_grid(onehot, size)[0, :, 1:] if grid != size else onehot[0, :, 1:]


def position_axes(embedding: torch.Tensor) -> torch.Tensor:
    """``(2, h)``: the directions along which a visual token says where its object is (x, then y).

    Fixed seeded random vectors, as long as an average word embedding.
    """
    generator = torch.Generator().manual_seed(0)
    axes = torch.randn(2, embedding.shape[1], generator=generator)
    return axes / axes.norm(dim=1, keepdim=True) * embedding.norm(dim=1).mean()


def _frames(seed: int, count: int):
    """``count`` (scene, frame index) pairs from training-split short clips of ``seed``."""
    rng = np.random.default_rng(seed + 1)
    samples = make_samples("train", seed + 1, max(count // 4, 1), SHORT_KINDS)
    return [(s.scene, int(rng.integers(s.scene.num_frames))) for s in (samples[int(k)] for k in
                                                                       rng.integers(len(samples), size=count))]


@torch.no_grad()
def token_data(model, tokenizer, *, seed: int, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled tower features, their word-space targets and their majority labels for ``frames`` frames.

    Returns:
        ``(frames * s*s, d)`` features, ``(frames * s*s, h)`` targets, ``(frames * s*s, 2)`` labels (the
        colour and shape covering most of each token's patches, 0 where the background does).
    """
    from flash_vstream.vision.clip import CLIPFrameProcessor

    tower, cfg = model.vision_tower, model.vision_tower.config
    size = model.memory.config.spatial_size
    grid = cfg.image_size // cfg.patch_size
    processor = CLIPFrameProcessor.from_vision_config(cfg, aspect=model.config.image_aspect_ratio)
    embedding = model.get_input_embeddings().weight
    colour_rows = dict(zip(COLOUR_IDS, embedding[word_rows(tokenizer, COLOUR_IDS)], strict=True))  # name -> (h,)
    shape_rows = dict(zip(SHAPE_IDS, embedding[word_rows(tokenizer, SHAPE_IDS)], strict=True))
    marker = embedding[tokenizer.pad_token_id]  # (h,): in every visual token, in no text token
    axes = position_axes(embedding)  # (2, h)
    features, targets, labels = [], [], []
    pairs = _frames(seed, frames)
    for start in range(0, len(pairs), 64):
        chunk = pairs[start:start + 64]
        feats = tower(processor(np.stack([render_frame(scene, t) for scene, t in chunk])))  # (t, n, d)
        features.append(pool_grid(feats, size))
        for scene, t in chunk:
            owners = patch_owners(scene, t, cfg.image_size, cfg.patch_size)
            share = label_shares(owners, len(scene.objects), grid, size)  # (s*s, objects)
            rows = torch.stack([colour_rows[drawn_colour(o, t)] + shape_rows[o.shape] for o in scene.objects])
            where = torch.from_numpy(owner_centres(scene, t)[1:]) @ axes  # (objects, h)
            targets.append(share @ (rows + where) + marker)
            colour, shape = patch_labels(scene, t, cfg.image_size, cfg.patch_size)
            c_share = label_shares(colour, len(COLOUR_IDS), grid, size)  # (s*s, 6)
            s_share = label_shares(shape, len(SHAPE_IDS), grid, size)  # (s*s, 4)
            major = torch.stack([part.argmax(1) + 1 for part in (c_share, s_share)], dim=1)  # (s*s, 2)
            labels.append(torch.where(c_share.sum(1, keepdim=True) >= 0.5, major, 0))
    return torch.cat(features).flatten(0, 1), torch.cat(targets), torch.cat(labels)


def word_decode_accuracy(projected: torch.Tensor, labels: torch.Tensor, model, tokenizer) -> tuple[float, float]:
    """Share of object tokens whose projection is nearest (dot product) to their colour's and shape's word."""
    embedding = model.get_input_embeddings().weight.detach()
    keep = labels[:, 0] > 0
    result = []
    for column, words in enumerate((COLOUR_IDS, SHAPE_IDS)):
        scores = projected[keep] @ embedding[word_rows(tokenizer, words)].T
        result.append(float((scores.argmax(1) + 1 == labels[keep, column]).float().mean()))
    return result[0], result[1]


def fit_projector(model, tokenizer, *, seed: int, steps: int = 400, frames: int = 3000, lr: float = 3e-3,
                  batch: int = 1024) -> dict[str, float]:
    """Fit ``model.projector`` so each memory token lands on its word-space target (module docstring).

    Args:
        model: a ``FlashVStreamForCausalLM`` (its tower pre-trained; it is only read here).
        tokenizer: the demo tokenizer (colour and shape words are single tokens).
        seed: seed of the frames (training split) and of the batches.
        steps: AdamW steps.
        frames: frames rendered for the fit.
        lr: learning rate.
        batch: tokens per step.

    Returns:
        ``{"mse_start", "mse_end", "colour", "shape"}``: the fit's loss and the word-decoding accuracy of the
        fitted projector on object tokens (how well the pooled tokens still tell colours and shapes apart).
    """
    features, targets, labels = token_data(model, tokenizer, seed=seed, frames=frames)
    scale = targets.pow(2).mean().sqrt()  # fit at unit scale; the projector's last linear takes the scale back
    projector = model.projector
    optimiser = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(features), (batch,), generator=generator)
        loss = nn.functional.mse_loss(projector(features[pick]), targets[pick] / scale)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        last = [m for m in projector.modules() if isinstance(m, nn.Linear)][-1]
        last.weight.mul_(scale)
        last.bias.mul_(scale)
        projected = projector(features)
        mse = nn.functional.mse_loss(projected, targets).item() / float(targets.pow(2).mean())
    colour, shape = word_decode_accuracy(projected, labels, model, tokenizer)
    return {"mse_start": losses[0], "mse_end": mse, "colour": colour, "shape": shape}


def orthonormal_rows(rows: torch.Tensor) -> torch.Tensor:
    """``(k, h)`` -> ``(k, h)``: an orthonormal basis, row ``i`` within the span of ``rows[: i + 1]`` and along it."""
    basis = torch.linalg.qr(rows.T).Q.T
    return basis * torch.sign((basis * rows).sum(1, keepdim=True))


def object_basis(embedding: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The ten colour and shape words and the visual marker, orthonormalised: ``(10, h)`` words, ``(h,)`` marker."""
    words = word_rows(tokenizer, (*COLOUR_IDS, *SHAPE_IDS))
    basis = orthonormal_rows(torch.cat([embedding[words], embedding[tokenizer.pad_token_id][None]]))
    return basis[:-1], basis[-1]


# Dimensions of a decoder head where rotary position embedding turns slowest (HF's rotate-half layout pairs
# dimension i with i + head_dim / 2 at frequency base**(-2i / head_dim)): a match there survives the hundreds of
# positions between a question's words and the visual tokens.
def slow_dims(head_dim: int, count: int) -> list[int]:
    half = head_dim // 2
    pairs = list(range(half - (count + 1) // 2, half))
    return (pairs + [i + half for i in pairs])[:count]


def _word_length_functional(words: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``(h,)`` within the span of ``basis`` whose dot product with each of ``words`` (``(k, h)``) is its length."""
    coordinates = words @ basis.T  # (k, k): the words in the basis
    return torch.linalg.solve(coordinates, words.norm(dim=1)) @ basis


def wire_word_match(attention, base: int, dims: list[int], word_basis: torch.Tensor, marker: torch.Tensor,
                    marker_query: torch.Tensor, *, gain: float, marker_weight: float) -> None:
    """A head's queries and keys that send a colour or shape word to the visual tokens containing it.

    Dimension ``dims[i]`` of the head starting at row ``base`` matches word ``i`` of ``word_basis`` with itself;
    ``dims[-1]`` gives a word's query ``marker_weight * marker_query`` against every key's marker, so a visual
    token outscores the word itself. The binding head (:func:`wire_binding_head`) and the motion circuit's
    displacement heads use it.
    """
    q, k = attention.q_proj.weight, attention.k_proj.weight
    for dim, vector in zip(dims[:-1], word_basis, strict=True):
        q[base + dim] = gain * vector
        k[base + dim] = gain * vector
    q[base + dims[-1]] = gain * marker_weight * marker_query
    k[base + dims[-1]] = gain * marker


@torch.no_grad()
def wire_binding_head(model, tokenizer, *, gain: float = 2.0, marker_weight: float = 1.0,
                      out_scale: float = 0.5) -> None:
    """Start head 0 of the decoder's first layer as a binding head.

    Each word attends to the visual tokens that contain it and copies their colour and shape words into its own
    position.

    Visual tokens are ``embedding(colour) + embedding(shape) + marker`` (:func:`fit_projector`; the marker is
    the pad token's embedding, never in a text position). Queries and keys live on an orthonormal basis of the
    ten word embeddings and the marker, in the head's slowest-rotating dimensions; every word's query also
    carries ``marker_weight`` along the marker, so a visual token that contains the word outscores both the word
    itself and the background. Values copy the ten word directions back out (``out_scale``). Training goes on
    from there; nothing is frozen.

    The marker term is the same for all ten words (:func:`_word_length_functional`). Taken as the sum of the
    basis coordinates instead, it is a word's own length plus its chance overlaps with the words before it in
    the basis: about half a word for some shape words, which then attend to themselves. On the start point's own
    memory tokens (150 validation questions per kind, scored by the copy's strongest word) a head wired with that
    sum copied the right colour to the shape word for 54% of colour questions, this one for 95%; the right
    shape to the colour word for 89% and 93%.

    Args:
        model: a ``FlashVStreamForCausalLM`` with a LLaMA-type decoder.
        tokenizer: the demo tokenizer.
        gain: scale of the queries and keys (both), hence of the attention logits (``gain**2``).
        marker_weight: the marker's share of a word's query.
        out_scale: length of the copied words in the residual stream, as a share of a word embedding's.
    """
    embedding = model.get_input_embeddings().weight
    words = word_rows(tokenizer, (*COLOUR_IDS, *SHAPE_IDS))
    word_basis, marker = object_basis(embedding, tokenizer)
    basis = torch.cat([word_basis, marker[None]])  # (11, h)
    attention = model.language_model.model.layers[0].self_attn
    head_dim = attention.head_dim
    # a value is about as long as the normed input (sqrt(hidden)); the copy should be out_scale of a word's length
    out_scale = out_scale * float(embedding[words].norm(dim=1).mean()) / embedding.shape[1] ** 0.5
    if head_dim < len(basis) or len(basis) > model.config.text_config.hidden_size:
        raise ValueError(f"the binding head needs head_dim >= {len(basis)} (the decoder's is {head_dim}); "
                         "use the full demo decoder, not the small one")
    dims = slow_dims(head_dim, len(basis))
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        proj.weight[:head_dim] = 0.0
    attention.o_proj.weight[:, :head_dim] = 0.0
    marker_query = _word_length_functional(embedding[words], word_basis)
    wire_word_match(attention, 0, dims, word_basis, marker, marker_query, gain=gain, marker_weight=marker_weight)
    for dim, vector in zip(dims[:-1], word_basis, strict=True):
        attention.v_proj.weight[dim] = vector
        attention.o_proj.weight[:, dim] = out_scale * vector

