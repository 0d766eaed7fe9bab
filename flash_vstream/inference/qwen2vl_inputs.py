"""Model inputs for Flash-VStream on Qwen2-VL / Qwen2.5-VL: chat prompt with the right number of video slots, pixels.

The prompt is the tokenizer's own chat template (Qwen-VL's ChatML) with one user turn
``<|vision_start|>`` + N x ``<|video_pad|>`` + ``<|vision_end|>`` + question, then the generation prompt
and the optional assistant prefix (e.g. ``"Best option: ("``, as the published multiple-choice evaluation
does). N is exactly what Flash Memory yields after the merger, computed from shapes alone:
``min(t, N_DAM) * h*w/4 + min(t, N_CSM) * (h/2)*(w/2)/4`` for ``t`` temporal patches of an ``h x w`` patch grid,
e.g. 11,520 for 240 frames at 448x448, 10,800 at 336x560, 2,560 for 16 frames at 448x448.

Alongside ``input_ids`` come ``attention_mask``, ``mm_token_type_ids`` (0 text, 2 video, as transformers 5.x
processors return them), ``pixel_values_videos`` and ``video_grid_thw``. Both backbones share the patch layout,
the special tokens and the memory, so one builder serves both (:meth:`FlashInputBuilder.for_model`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flash_vstream.memory.flash import FlashMemory
from flash_vstream.vision.qwen2vl import FlashFrameProcessor

VIDEO_TOKEN_TYPE = 2


@dataclass
class FlashInputBuilder:
    """Builds ``generate``/``forward`` kwargs from a question and sampled frames.

    Args:
        tokenizer: the checkpoint's tokenizer (with a chat template and the Qwen-VL vision specials).
        frame_processor: resizing and patchifying.
        memory: the model's Flash Memory (for the token count).
        video_token: placeholder token of one visual token.
    """

    tokenizer: Any
    frame_processor: FlashFrameProcessor
    memory: FlashMemory
    video_token: str = "<|video_pad|>"
    vision_start: str = "<|vision_start|>"
    vision_end: str = "<|vision_end|>"

    @classmethod
    def for_model(cls, model, tokenizer, max_pixels: int = 4 * 224 * 224) -> FlashInputBuilder:
        """A builder matching ``model``'s vision config and memory.

        Raises:
            ValueError: when the tokenizer's vision special tokens differ from the config's ids, or it has no chat
                template.
        """
        vision = model.config.vision_config
        memory = model.flash_memory
        device = next(model.parameters()).device
        processor = FlashFrameProcessor(
            max_pixels=max_pixels,
            patch_size=vision.patch_size,
            merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size,
            pool_size=memory.config.temporal_poolsize,
            device=str(device) if device.type == "cuda" else None,  # resize and normalise on the model's GPU
        )
        builder = cls(tokenizer, processor, memory)
        for token, field in (
            (builder.video_token, "video_token_id"),
            (builder.vision_start, "vision_start_token_id"),
            (builder.vision_end, "vision_end_token_id"),
        ):
            token_id, expected = tokenizer.convert_tokens_to_ids(token), getattr(model.config, field)
            if token_id != expected:
                raise ValueError(
                    f"tokenizer maps {token} to {token_id} but config.{field} is {expected}; load the "
                    f"tokenizer saved with this checkpoint"
                )
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; Qwen-VL checkpoints ship one (chat_template.jinja)")
        return builder

    def num_video_tokens(self, num_frames: int, height: int, width: int) -> int:
        """``<|video_pad|>`` tokens for ``num_frames`` frames of ``height x width`` (after resizing)."""
        _, h, w = self.frame_processor.grid_thw(num_frames, height, width)
        return self.memory.num_tokens(num_frames, grid_hw=(h, w))

    def prompt(self, question: str, num_video_tokens: int, assistant_prefix: str = "") -> str:
        """The chat prompt text with ``num_video_tokens`` placeholders."""
        video = self.vision_start + self.video_token * num_video_tokens + self.vision_end
        messages = [{"role": "user", "content": video + question}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + assistant_prefix

    def __call__(
        self, question: str, *, frames: np.ndarray | None = None, features=None, assistant_prefix: str = ""
    ) -> dict[str, torch.Tensor]:
        """Inputs for one sample.

        Raises:
            ValueError: without ``frames`` (this family encodes pixels itself), or on a token-count mismatch.
        """
        if features is not None or frames is None:
            raise ValueError("the Flash family needs frames= (uint8 (T, H, W, 3)); pre-extracted features are unused")
        frames = np.asarray(frames)
        pixel_values, grid = self.frame_processor(frames)  # validates the frames array
        count = self.num_video_tokens(len(frames), frames.shape[1], frames.shape[2])
        ids = self.tokenizer(self.prompt(question, count, assistant_prefix), add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([ids])
        video_id = self.tokenizer.convert_tokens_to_ids(self.video_token)
        is_video = input_ids == video_id
        if int(is_video.sum()) != count:
            raise ValueError(
                f"the tokenized prompt holds {int(is_video.sum())} {self.video_token} tokens, expected {count}; "
                f"the tokenizer must keep {self.video_token} as one special token"
            )
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": is_video.long() * VIDEO_TOKEN_TYPE,
            "pixel_values_videos": pixel_values,
            "video_grid_thw": grid,
        }

    def max_visual_tokens(self) -> int:
        """The most visual tokens a prompt holds: a long clip at the largest frame the pixel budget allows."""
        side = math.isqrt(self.frame_processor.max_pixels)
        return self.num_video_tokens(1 << 20, side, side)

    def read_video(self, video, sampler, *, progress: bool = False) -> dict[str, np.ndarray]:
        """``{"frames": (T, H, W, 3)}``: the sampled frames, read in one go.

        At most ``sampler.max_frames`` (240 as published) frames, so RAM is bounded already.
        """
        from flash_vstream.video import read_video

        return {"frames": read_video(video, sampler=sampler, progress=progress).frames}

    def count_visual_tokens(self, inputs: dict[str, torch.Tensor]) -> int:
        """Visual tokens in built inputs (for reporting)."""
        return int((inputs["mm_token_type_ids"] == VIDEO_TOKEN_TYPE).sum())
