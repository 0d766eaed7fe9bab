r"""Encoded samples -> one model batch, per family: ``collate = collator_for(model, tokenizer)``.

``collate(list_of_samples) -> dict`` pads every batch to ITS OWN longest sample (never to ``max_length``; with
``pad_to_multiple_of`` up to the next multiple), on the right (b: batch, L: longest sample):

=====================  ========================================================================================
key                    value
=====================  ========================================================================================
``input_ids``          ``(b, L)`` int64, padded with the tokenizer's pad id (unk, then eos, when it has none:
                       LLaMA tokenizers have no pad token; the released STAR model trained with pad = unk)
``attention_mask``     ``(b, L)`` int64, 1 at real tokens
``labels``             ``(b, L)`` int64, padded with -100
STAR                   ``pixel_values`` or ``features``: a list with one tensor per sample that has a medium, in
                       batch order (the model compresses each video on its own and splices the results in order);
                       absent when no sample has one. A batch mixing the two raises ``ValueError``.
Flash                  ``mm_token_type_ids (b, L)`` padded with 0 (text); ``pixel_values_videos`` concatenated and
                       ``video_grid_thw (videos, 3)`` stacked, in batch order; absent when no sample has a video.
=====================  ========================================================================================

The Flash model computes AM-RoPE position ids per sample from ``mm_token_type_ids``, ``attention_mask`` and the
encoded videos, so batches of any size train with the right positions (the published code was limited to batch
size 1 and padded every sample to 14,000 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flash_vstream.families import family_for_config
from flash_vstream.inference.prompts import IGNORE_INDEX

__all__ = ["FlashCollator", "StarCollator", "collator_for", "pad_sequences", "pad_token_id"]


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its unk, else its eos.

    Raises:
        ValueError: when the tokenizer has none of them.
    """
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has no pad, unk or eos token to pad batches with; set tokenizer.pad_token")


def pad_sequences(sequences: Sequence[torch.Tensor], value: int, multiple: int | None = None) -> torch.Tensor:
    """Right-pad 1-D tensors to the longest (rounded up to ``multiple``) and stack them -> ``(b, L)``."""
    length = max(len(s) for s in sequences)
    if multiple:
        length = -(-length // multiple) * multiple
    out = torch.full((len(sequences), length), value, dtype=sequences[0].dtype)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = sequence
    return out


class _Collator:
    """Pads the text tensors; subclasses add the family's visual inputs."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}")
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        for i, sample in enumerate(samples):
            missing = [key for key in ("input_ids", "labels") if key not in sample]
            if missing or sample["input_ids"].shape != sample["labels"].shape or sample["input_ids"].dim() != 1:
                raise ValueError(
                    f"sample {i} of the batch needs 1-D input_ids and labels of one length (missing: {missing}); "
                    "build samples with flash_vstream.train.dataset.sample_encoder_for"
                )
        multiple = self.pad_to_multiple_of
        ids = [s["input_ids"] for s in samples]
        batch = {
            "input_ids": pad_sequences(ids, self.pad_id, multiple),
            "attention_mask": pad_sequences([torch.ones_like(t) for t in ids], 0, multiple),
            "labels": pad_sequences([s["labels"] for s in samples], IGNORE_INDEX, multiple),
        }
        batch.update(self.visual(samples))
        return batch

    def visual(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict:
        raise NotImplementedError


class StarCollator(_Collator):
    """STAR batches: padded text plus per-sample ``pixel_values`` or ``features`` lists."""

    def visual(self, samples):
        kinds = {key: [s[key] for s in samples if key in s] for key in ("pixel_values", "features")}
        given = {key: values for key, values in kinds.items() if values}
        if len(given) > 1:
            raise ValueError(
                f"the batch mixes frames ({len(given['pixel_values'])} samples) and pre-extracted features "
                f"({len(given['features'])}); the STAR model takes one kind per batch: train on one kind"
            )
        return given


class FlashCollator(_Collator):
    """Flash batches: padded text and ``mm_token_type_ids``, concatenated video patches and grids."""

    def visual(self, samples):
        for i, sample in enumerate(samples):
            if "mm_token_type_ids" not in sample:
                raise ValueError(f"sample {i} of the batch has no mm_token_type_ids; build it with sample_encoder_for")
        types = pad_sequences([s["mm_token_type_ids"] for s in samples], 0, self.pad_to_multiple_of)
        out = {"mm_token_type_ids": types}
        videos = [s for s in samples if "pixel_values_videos" in s]
        if videos:
            out["pixel_values_videos"] = torch.cat([s["pixel_values_videos"] for s in videos])
            out["video_grid_thw"] = torch.cat([s["video_grid_thw"] for s in videos])
        return out


def _streamingvlm_collator(pad_id: int, pad_to_multiple_of: int | None = None) -> _Collator:
    from flash_vstream.train.streamingvlm_collate import StreamingVLMCollator  # builds on FlashCollator

    return StreamingVLMCollator(pad_id, pad_to_multiple_of)


_COLLATORS = {"star": StarCollator, "flash": FlashCollator, "streamingvlm": _streamingvlm_collator}


def collator_for(model, tokenizer, *, pad_to_multiple_of: int | None = None) -> _Collator:
    """The batch collator of ``model``'s family (``model.config``'s ``model_type`` and family marker).

    Args:
        model: a STAR, Flash or StreamingVLM model (or a PEFT wrapper of one).
        tokenizer: its tokenizer (for the pad id, see :func:`pad_token_id`).
        pad_to_multiple_of: round the padded length up to a multiple (e.g. 8 for tensor cores); default none.

    Raises:
        ValueError: for an unsupported model type or a tokenizer without pad, unk and eos tokens.
    """
    family = family_for_config(model.config).name
    return _COLLATORS[family](pad_token_id(tokenizer), pad_to_multiple_of)
