"""Put visual tokens into a prompt's embeddings at its placeholder positions.

One helper serves every family, modality and streaming step. The prompt already holds exactly one placeholder id per
visual token (the prompt builders expand the placeholder); a count mismatch is a bug upstream and raises with both
counts rather than silently truncating.
"""

from __future__ import annotations

import torch
from torch import nn


def scatter_visual_tokens(
    inputs_embeds: torch.Tensor, placeholder_mask: torch.Tensor, visual_tokens: torch.Tensor
) -> torch.Tensor:
    """Replace the embeddings at ``placeholder_mask`` by ``visual_tokens``, in order.

    Args:
        inputs_embeds: ``(B, L, H)`` text embeddings.
        placeholder_mask: ``(B, L)`` bool, True where a visual token goes.
        visual_tokens: ``(N, H)`` visual tokens of all samples concatenated in batch order.

    Returns:
        ``(B, L, H)`` embeddings (a new tensor; gradients flow into ``visual_tokens``).

    Raises:
        ValueError: when the number of placeholders differs from the number of visual tokens.
    """
    num_slots = int(placeholder_mask.sum())
    if num_slots != visual_tokens.shape[0]:
        raise ValueError(
            f"the prompt holds {num_slots} visual placeholder tokens but the memory produced "
            f"{visual_tokens.shape[0]} visual tokens; build the prompt with the memory's token count"
        )
    mask = placeholder_mask.unsqueeze(-1).expand_as(inputs_embeds)
    return inputs_embeds.masked_scatter(mask, visual_tokens.to(inputs_embeds.dtype))


def embed_with_visual_tokens(
    embedding: nn.Embedding, input_ids: torch.Tensor, placeholder_id: int, visual_tokens: torch.Tensor
) -> torch.Tensor:
    """Embed ``input_ids`` whose placeholder id may lie outside the vocabulary, then scatter the visual tokens.

    The released STAR checkpoint marks the visual slot with id -200 (never a vocabulary entry), so placeholders are
    swapped for id 0 before the lookup; their embeddings are overwritten anyway.
    """
    mask = input_ids == placeholder_id
    embeds = embedding(input_ids.masked_fill(mask, 0))
    return scatter_visual_tokens(embeds, mask, visual_tokens)
