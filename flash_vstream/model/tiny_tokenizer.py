"""Tiny byte-level BPE tokenizers trained locally, for tests and ``make-tiny`` checkpoints.

Nothing is downloaded: a small BPE is trained in well under a second on a built-in corpus. Two styles mirror the
tokenizers of the released models closely enough for prompt building to exercise the real code paths:

- ``"llama"``: ``<s>``/``</s>``/``<unk>`` specials, a BOS token prepended, no chat template (Vicuna uses the
  ``vicuna_v1`` conversation template of :mod:`flash_vstream.inference.prompts`).
- ``"chatml"``: Qwen-style ``<|im_start|>``/``<|im_end|>``/``<|endoftext|>`` plus the Qwen2-VL vision specials and a
  ChatML chat template (Qwen2 and Qwen2-VL use the tokenizer's own template).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "USER: ASSISTANT: What is happening in the video? Describe the scene. "
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option. Best option: ( "
    "A person walks across the room, a red square moves to the left, the camera pans. "
    "system user assistant You are a helpful assistant. yes no 0 1 2 3 4 5 6 7 8 9 "
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?()[]{}'\"-_\n"
)

LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]
CHATML_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(style: str = "llama", vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Train a tiny byte-level BPE tokenizer.

    Args:
        style: ``"llama"`` or ``"chatml"`` (see the module docstring).
        vocab_size: target vocabulary size, specials included.

    Returns:
        A ``PreTrainedTokenizerFast`` that round-trips through ``save_pretrained``/``AutoTokenizer``.

    Raises:
        ValueError: for an unknown ``style``.
    """
    if style not in ("llama", "chatml"):
        raise ValueError(f"tokenizer style must be 'llama' or 'chatml', got {style!r}")
    specials = LLAMA_SPECIALS if style == "llama" else CHATML_SPECIALS
    tok = Tokenizer(models.BPE(unk_token="<unk>" if style == "llama" else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if style == "llama":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
        )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def write_tiny_sentencepiece_tokenizer(out_dir: str | Path, vocab_size: int = 400) -> Path:
    """Write a LLaMA-style SentencePiece tokenizer (``tokenizer.model`` + ``tokenizer_config.json``) to ``out_dir``.

    This is the tokenizer layout of the released Flash-VStream-7b repository (LLaVA-era LLaMA tokenizers ship no
    ``tokenizer.json``), so loading tests exercise transformers' SentencePiece conversion.
    """
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch) / "corpus.txt"
        corpus.write_text(_CORPUS * 8)
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(scratch) / "tokenizer"),
            vocab_size=vocab_size,
            model_type="bpe",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            byte_fallback=True,
            character_coverage=1.0,
            minloglevel=2,
        )
        (out / "tokenizer.model").write_bytes((Path(scratch) / "tokenizer.model").read_bytes())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 2048,
        "padding_side": "right",
        "legacy": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out
