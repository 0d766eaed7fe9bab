"""flash-vstream: real-time understanding of long and live video streams with memory-based video-language models.

Public API:

- :func:`load_model` -> :class:`FlashVStream` (``answer(question, video=... | frames=... | features=...)``);
- configs :class:`FlashVStreamConfig` (STAR family) and the released-layout :class:`VStreamLegacyConfig`;
- :class:`FlashVStreamForCausalLM`, the STAR-family Hugging Face model.

Importing the package registers its configs and models with transformers' Auto classes (the documented
``AutoConfig.register`` API), so ``AutoModelForCausalLM.from_pretrained(dir)`` works for STAR checkpoints.
"""

from flash_vstream.config import FlashVStreamConfig, VStreamLegacyConfig
from flash_vstream.inference.pipeline import Answer, FlashVStream, load_model
from flash_vstream.model.auto import register_auto_classes
from flash_vstream.model.modeling import FlashVStreamForCausalLM

register_auto_classes()

__all__ = [
    "Answer",
    "FlashVStream",
    "FlashVStreamConfig",
    "FlashVStreamForCausalLM",
    "VStreamLegacyConfig",
    "load_model",
]
__version__ = "0.1.0"
