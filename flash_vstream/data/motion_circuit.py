"""The demo model's decoder started with a whole motion circuit: where an object moves, from its visual tokens.

"Which way does the red circle move?" needs the circle's position late in the clip minus its position early on.
The projector already writes where each object is (:func:`~flash_vstream.data.readout.position_axes`), but learnt
from answers alone the decoder never compared two frames: every training run stayed near chance on motion, and a
pair of wired first-layer heads that did compute the displacement at the object word (two thirds right) was
overwritten within the first training steps, because nothing after it used the displacement yet. So the start
point gets the whole path, and training keeps what it finds useful:

1. **Two displacement heads** (first layer, heads 1 and 2). Each matches the question's colour or shape word to
   the visual tokens that show it (as the binding head does) and adds a rotary term that prefers recent tokens
   (head 1) or old ones (head 2); the memory lays frames out oldest first, the newest frame last. Each copies the
   object's position, with opposite signs, so the object word receives "newest minus oldest" along two motion
   directions: ``x`` along ``right - left`` and ``y`` along ``down - up`` (word embeddings), taken off every
   question word's own embedding so that reading them back out sees the displacement, not the word. They write
   at half the directions' length: at full length they drowned out the colour the binding head copies into the
   same word, and colour answers never recovered in training.
2. **A route head** (second layer, head 0): the reply's first position (``<|assistant|>``) attends to the
   question's shape words (never to visual tokens) and copies the two motion directions.
3. **Output rows**: the language model head's rows for right / left / down / up gain plus / minus the two
   directions. "static" is left to training: a row that made it win when nothing moved was tried, and colour
   answers after training were worse with it (39% against 67% of validation questions, one CPU run each).

On the untrained start this answers 45% of validation motion questions (chance 20%; it never says "static" yet);
trained on from there, motion is answered as well as shape.

Shapes: h: decoder width, hd: head width.
"""

from __future__ import annotations

import numpy as np
import torch

from flash_vstream.data.pretrain import COLOUR_IDS, SHAPE_IDS
from flash_vstream.data.readout import (
    object_basis,
    orthonormal_rows,
    position_axes,
    slow_dims,
    wire_word_match,
    word_rows,
)

MOTION_WORDS = ("left", "right", "up", "down", "static")
QUESTION_WORDS = ("move", "moves", "Which", "way", "does", "the", "?", "direction", "moving", "What", "is", "in",
                  "going", "Where", "object", "<|user|>", "<|end|>", "go", "goes", "heading", "travel", "travels")
"""Words of the motion questions (and the template) whose own embeddings the motion directions avoid."""


def motion_directions(embedding: torch.Tensor, tokenizer) -> torch.Tensor:
    """``(2, h)``: where the displacement is written, ``(right - left) / 2`` and ``(down - up) / 2``.

    Each is taken off the span of the colour and shape words, the visual marker, ``<|assistant|>`` and the
    motion questions' words (:data:`QUESTION_WORDS`), and keeps its length.
    """
    e = embedding[word_rows(tokenizer, MOTION_WORDS[:4])]
    directions = torch.stack([(e[1] - e[0]) / 2, (e[3] - e[2]) / 2])
    vocab = tokenizer.get_vocab()
    common = sorted(vocab[w] for w in QUESTION_WORDS if w in vocab)
    avoid = torch.cat([embedding[word_rows(tokenizer, (*COLOUR_IDS, *SHAPE_IDS))],
                       embedding[[tokenizer.pad_token_id, vocab["<|assistant|>"]]], embedding[common]])
    lengths = directions.norm(dim=1, keepdim=True)
    avoid = orthonormal_rows(avoid)
    directions = directions - (directions @ avoid.T) @ avoid
    return orthonormal_rows(directions) * lengths


def _clear_head(attention, head: int) -> int:
    """Zero one head's query, key, value and output weights; its first row index."""
    base = head * attention.head_dim
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        proj.weight[base:base + attention.head_dim] = 0.0
    attention.o_proj.weight[:, base:base + attention.head_dim] = 0.0
    return base


def _wire_displacement_heads(model, word_basis: torch.Tensor, marker: torch.Tensor, directions: torch.Tensor, *,
                             gain: float, marker_weight: float, time_gain: float, phase: float, time_pair: int,
                             length: float) -> None:
    """Heads 1 (recent, +) and 2 (old, -) of the first layer (module docstring, step 1)."""
    rows = torch.cat([word_basis, marker[None]])
    axes = position_axes(model.get_input_embeddings().weight)
    axes = orthonormal_rows(axes - (axes @ rows.T) @ rows)  # (2, h): where a visual token says x and y
    attention = model.language_model.model.layers[0].self_attn
    head_dim, half = attention.head_dim, attention.head_dim // 2
    match_dims = slow_dims(head_dim, len(rows))
    # the rotary time term: query and key meet in one rotating pair, so the score varies as cos(theta * distance
    # + phase); 11.3 and 5.66 are about sqrt(128) and sqrt(32), the demo's normed-input and head lengths
    amplitude = (time_gain**0.5) / 11.3
    any_word = word_basis.sum(0) / word_basis.sum(0).norm()
    for sign, head in ((1.0, 1), (-1.0, 2)):
        base = _clear_head(attention, head)
        q, k, v, o = (p.weight for p in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj))
        # the sum of the words' coordinates, not the binding head's per-word length (the weights were tuned so)
        wire_word_match(attention, base, match_dims, word_basis, marker, word_basis.sum(0), gain=gain,
                        marker_weight=marker_weight)
        q[base + time_pair] = sign * amplitude * np.cos(phase) * any_word * 5.66
        q[base + time_pair + half] = sign * amplitude * np.sin(phase) * any_word * 5.66
        k[base + time_pair] = amplitude * marker * 5.66
        if sign < 0:  # lift the old-preferring term to be non-negative over the visual block, in a still dimension
            q[base + head_dim - 1] = amplitude * any_word * 5.66
            k[base + head_dim - 1] = amplitude * marker * 5.66
        used = {*match_dims, time_pair, time_pair + half, head_dim - 1}
        for axis, dim in enumerate([d for d in range(head_dim) if d not in used][:2]):
            v[base + dim] = axes[axis]
            o[:, base + dim] = sign * directions[axis] * length


def _wire_route_head(model, tokenizer, word_basis: torch.Tensor, marker: torch.Tensor, unit: torch.Tensor, *,
                     gain: float, marker_penalty: float) -> None:
    """Head 0 of the second layer (module docstring, step 2)."""
    embedding = model.get_input_embeddings().weight
    reply = _reply_direction(embedding, tokenizer, torch.cat([word_basis, marker[None]]))
    shapes = word_basis[len(COLOUR_IDS):].sum(0)
    attention = model.language_model.model.layers[1].self_attn
    head_dim = attention.head_dim
    base = _clear_head(attention, 0)
    dim = slow_dims(head_dim, 1)[0]
    attention.q_proj.weight[base + dim] = gain * reply
    attention.k_proj.weight[base + dim] = gain * (shapes / shapes.norm() - marker_penalty * marker)
    out_length = embedding.norm(dim=1).mean() / head_dim**0.5  # a value is about as long as the normed input
    for axis in range(2):
        attention.v_proj.weight[base + axis] = unit[axis]
        attention.o_proj.weight[:, base + axis] = unit[axis] * out_length


def _reply_direction(embedding: torch.Tensor, tokenizer, basis: torch.Tensor) -> torch.Tensor:
    """``<|assistant|>``'s embedding off the object words and the marker, at unit length."""
    reply = embedding[tokenizer.convert_tokens_to_ids("<|assistant|>")]
    reply = reply - (reply @ basis.T) @ basis
    return reply / reply.norm()


@torch.no_grad()
def wire_motion_circuit(model, tokenizer, *, gain: float = 2.0, marker_weight: float = 2.0, time_gain: float = 20.0,
                        phase: float = 0.3, time_pair: int = 9, route_gain: float = 1.0,
                        route_marker_penalty: float = 2.0, displacement_length: float = 0.5,
                        readout: float = 8.0) -> None:
    """Wire the motion circuit (module docstring) into a demo start point; nothing is frozen.

    Args:
        model: a ``FlashVStreamForCausalLM`` with the demo decoder, its projector fitted in word space
            (:func:`~flash_vstream.data.readout.fit_projector`).
        tokenizer: the demo tokenizer.
        gain: scale of the displacement heads' word match (queries and keys).
        marker_weight: the visual marker's share of their queries (a visual token outscores the word itself).
        time_gain: size of their rotary time term.
        phase: its phase (radians).
        time_pair: the rotary pair that carries it (turning fast enough to tell frames apart).
        route_gain: scale of the route head's query and key.
        route_marker_penalty: how far the route head's keys avoid visual tokens.
        displacement_length: length of what each displacement head writes, as a share of the motion directions'
            length. At 1 the two heads write more into the object word than the binding head does (norms about
            4.2 each, and 2.3 summed, against 1.4), and colour answers after training fell to 62-68% (from
            97-100% without the circuit; H200 runs); at 0.5 they were 93% there and 99% in the shipped model.
        readout: weight of the motion directions in the output rows of the four moving words.

    Raises:
        ValueError: when the decoder's heads are too narrow (the small test variant).
    """
    attention = model.language_model.model.layers[0].self_attn
    if attention.head_dim < 16 or len(model.language_model.model.layers) < 2:
        raise ValueError(f"the motion circuit needs head_dim >= 16 and two layers (the decoder has "
                         f"{attention.head_dim} and {len(model.language_model.model.layers)}); use the full demo "
                         "decoder, not the small one")
    embedding = model.get_input_embeddings().weight
    word_basis, marker = object_basis(embedding, tokenizer)
    directions = motion_directions(embedding, tokenizer)
    _wire_displacement_heads(model, word_basis, marker, directions, gain=gain, marker_weight=marker_weight,
                             time_gain=time_gain, phase=phase, time_pair=time_pair, length=displacement_length)
    unit = directions / directions.norm(dim=1, keepdim=True)
    _wire_route_head(model, tokenizer, word_basis, marker, unit, gain=route_gain, marker_penalty=route_marker_penalty)
    head = model.language_model.lm_head.weight
    left, right, up, down = word_rows(tokenizer, MOTION_WORDS[:4])
    head[right] += readout * unit[0]
    head[left] -= readout * unit[0]
    head[down] += readout * unit[1]
    head[up] -= readout * unit[1]
