"""Model inputs of the STAR family: frames or features plus a question -> kwargs for ``generate``/``forward``."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from flash_vstream.inference.prompts import build_star_inputs


class StarInputBuilder:
    """Build STAR-family inputs: CLIP preprocessing, the conversation template and placeholder expansion.

    Args:
        model: a ``FlashVStreamForCausalLM`` (its memory gives the visual-token count).
        tokenizer: the model's tokenizer.
        processor: a ``CLIPFrameProcessor`` matching the vision tower.
    """

    def __init__(self, model, tokenizer, processor):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor

    @classmethod
    def for_model(cls, model, tokenizer) -> StarInputBuilder:
        """A builder matching ``model``'s vision tower; gives a LLaMA tokenizer without a pad token one.

        The released model was trained with pad = unk (LLaMA tokenizers have no pad token). Frames are resized and
        normalised on the model's GPU when it is on one.
        """
        from flash_vstream.vision.clip import CLIPFrameProcessor

        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        config = model.config
        processor = CLIPFrameProcessor.from_vision_config(config.vision_config, aspect=config.image_aspect_ratio)
        device = next(model.parameters()).device
        if device.type == "cuda":
            processor = dataclasses.replace(processor, device=str(device))
        return cls(model, tokenizer, processor)

    def __call__(
        self,
        question: str,
        *,
        frames: np.ndarray | None = None,
        features: torch.Tensor | None = None,
        assistant_prefix: str = "",
        answer: str | None = None,
    ) -> dict[str, Any]:
        """Inputs for one sample (batch dim 1).

        Args:
            question: the user's question.
            frames: uint8 ``(t, H, W, 3)`` frames (or one ``(H, W, 3)`` image).
            features: ``(t, n, d)`` pre-extracted CLIP features instead of frames.
            assistant_prefix: forced start of the reply.
            answer: supervised answer (adds ``labels``).
        """
        if (frames is None) == (features is None):
            raise ValueError("pass exactly one of frames= or features=")
        config = self.model.config
        if frames is not None:
            visual = {"pixel_values": [self.processor(frames)]}
            num_frames = visual["pixel_values"][0].shape[0]
        else:
            visual = {"features": [features]}
            num_frames = features.shape[0]
        inputs = build_star_inputs(
            self.tokenizer,
            config.conv_template,
            question,
            self.model.memory.num_tokens(num_frames),
            config.image_token_id,
            answer=answer,
            assistant_prefix=assistant_prefix,
        )
        return {**inputs, **visual}

    def max_visual_tokens(self) -> int:
        """The most visual tokens a prompt holds: the memory's fixed size on a long clip (681 as released)."""
        return self.model.memory.num_tokens(1 << 20)

    def read_video(self, video, sampler, *, progress: bool = False) -> dict[str, torch.Tensor]:
        """``{"features": (t, S*S, d)}``: a video's features pooled to the memory's spatial grid, a chunk at a time.

        The STAR memory needs only each frame's features pooled to its spatial grid, so each chunk (as many frames
        as the vision tower encodes per forward, so the tower sees the same batches as the all-frames path) is
        preprocessed (on the GPU when the model is on one), encoded and pooled, and its frames are dropped before
        the next chunk is decoded: peak RAM is one chunk of frames plus the pooled features, and the memory
        compresses the pooled clip to exactly the tokens of the all-frames path.
        """
        from flash_vstream.video.reader import iter_video

        model = self.model
        processor = self.processor
        weight = next(model.memory.parameters())  # pooled as the model's compress path pools: memory device, dtype
        pooled = []
        with torch.inference_mode():
            chunks = iter_video(video, sampler=sampler, chunk_size=model.vision_tower.batch_size, progress=progress)
            for clip in chunks:
                features = model.encode_frames(processor(clip.frames))  # (c, p*p, d)
                pooled.append(model.memory.pool_frames(features.to(device=weight.device, dtype=weight.dtype)))
                del clip, features  # hold no frames while the next chunk decodes
        return {"features": torch.cat(pooled)}

    def count_visual_tokens(self, inputs: dict[str, Any]) -> int:
        return int((inputs["input_ids"] == self.model.config.image_token_id).sum())
