"""The interface through which the evaluation runner drives any model.

The object returned by ``flash_vstream.load_model(name)`` implements it for both model families; tests drive
the runner with a scripted fake. Frames arrive already sampled by the runner (the benchmark/profile decide
which); a model that prefers to decode by itself may use ``video`` instead.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["VideoQAModel"]


@runtime_checkable
class VideoQAModel(Protocol):
    """Anything that answers a question about a video.

    >>> class Echo:
    ...     def answer(self, question, *, frames=None, video=None, timestamps=None, assistant_prefix="",
    ...                max_new_tokens=16):
    ...         return "A"
    >>> isinstance(Echo(), VideoQAModel)
    True
    """

    def answer(
        self,
        question: str,
        *,
        frames: np.ndarray | None = None,
        video: str | None = None,
        timestamps: np.ndarray | None = None,
        assistant_prefix: str = "",
        max_new_tokens: int = 16,
    ) -> str:
        """Answer ``question`` about a video, greedily.

        Args:
            question: The full user prompt (instructions, question, options, subtitles).
            frames: ``(T, H, W, 3)`` uint8 RGB frames, in time order.
            video: Path of the video file or frame folder, for models that decode themselves.
            timestamps: ``(T,)`` seconds of each frame from the start of the video.
            assistant_prefix: Text the reply is forced to start with (after the assistant header); not
                included in the returned string.
            max_new_tokens: Generation budget.

        Returns:
            The generated text after ``assistant_prefix``.
        """
        ...
