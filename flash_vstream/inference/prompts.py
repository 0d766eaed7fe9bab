r"""Conversation templates and tokenization with visual placeholders (STAR family).

Templates, as the released model was trained with them:

- ``vicuna_v1`` (stage 2 / chat): ``"{system} USER: <image>\\n{question} ASSISTANT:"``; a supervised answer
  ends with ``</s>``.
- ``plain`` (stage-1 captioning): ``"<image>"`` followed by the caption and ``"\\n"``; no system text, no question.
- ``chat_template``: the tokenizer's own chat template (Qwen2-type decoders), the user turn holding
  ``"<image>\\n{question}"``.

``<image>`` in the rendered text is replaced, at tokenization, by as many placeholder ids as the memory yields
visual tokens, so the model can splice them one-to-one.

The separators are constants here (:data:`VICUNA_ROLES`, :data:`VICUNA_SEP`, :data:`VICUNA_SEP2`,
:data:`PLAIN_SEP`) because training renders whole multi-turn dialogues with the same strings
(:mod:`flash_vstream.train.templates`): a prompt built here is, token for token, the start of the training
sequence of the same dialogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGE_MARKER = "<image>"
IGNORE_INDEX = -100
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_ROLES = ("USER", "ASSISTANT")
"""Role names of ``vicuna_v1``; a turn is ``"{role}: {text}"``."""
VICUNA_SEP = " "
"""``vicuna_v1``: after the system prompt and after every user turn."""
VICUNA_SEP2 = "</s>"
"""``vicuna_v1``: after every assistant turn (LLaMA's end-of-sequence token)."""
PLAIN_SEP = "\n"
"""``plain``: after the caption."""


@dataclass
class PromptParts:
    """A rendered single-turn prompt: ``prompt`` (up to where the assistant speaks) and the supervised ``target``."""

    prompt: str
    target: str


def render_prompt(template: str, question: str, tokenizer, answer: str | None = None, assistant_prefix: str = ""):
    """Render one user turn with a video and, optionally, the assistant's answer.

    Args:
        template: ``"vicuna_v1"``, ``"plain"`` or ``"chat_template"``.
        question: the user's text (without the ``<image>`` marker).
        tokenizer: used for ``chat_template`` and its end-of-turn token.
        answer: the assistant's reply to supervise (training), or ``None`` (generation).
        assistant_prefix: text the assistant's reply is forced to start with (evaluation prompts).

    Returns:
        :class:`PromptParts`; ``target`` is empty when ``answer`` is None.

    Raises:
        ValueError: for an unknown template, or ``chat_template`` with a tokenizer that has none.
    """
    if template == "vicuna_v1":
        user, assistant = VICUNA_ROLES
        prompt = f"{VICUNA_SYSTEM}{VICUNA_SEP}{user}: {IMAGE_MARKER}\n{question}{VICUNA_SEP}{assistant}:"
        if assistant_prefix:
            prompt += " " + assistant_prefix
        target = "" if answer is None else f" {answer}{VICUNA_SEP2}"
        return PromptParts(prompt, target)
    if template == "plain":
        return PromptParts(IMAGE_MARKER + assistant_prefix, "" if answer is None else f"{answer}{PLAIN_SEP}")
    if template == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "conv_template='chat_template' but the tokenizer has no chat template; use 'vicuna_v1' or 'plain'"
            )
        messages = [{"role": "user", "content": f"{IMAGE_MARKER}\n{question}"}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt += assistant_prefix
        target = "" if answer is None else f"{answer}{tokenizer.eos_token}"
        return PromptParts(prompt, target)
    raise ValueError(f"unknown conversation template {template!r}; expected vicuna_v1, plain or chat_template")


def tokenize_with_placeholders(tokenizer, text: str, num_visual_tokens: int, placeholder_id: int) -> list[int]:
    """Tokenize ``text`` and expand its single ``<image>`` marker into ``num_visual_tokens`` placeholder ids.

    The text before the marker is tokenized with the tokenizer's special tokens (BOS for LLaMA), the rest without,
    as LLaVA-style training did. Text without a marker (text-only samples) is tokenized as is.

    Raises:
        ValueError: when the text holds more than one marker.
    """
    chunks = text.split(IMAGE_MARKER)
    if len(chunks) > 2:
        raise ValueError(f"a prompt may hold one {IMAGE_MARKER} marker, found {len(chunks) - 1}")
    ids = tokenizer(chunks[0]).input_ids
    if len(chunks) == 2:
        ids = ids + [placeholder_id] * num_visual_tokens + tokenizer(chunks[1], add_special_tokens=False).input_ids
    return ids


def build_star_inputs(
    tokenizer,
    template: str,
    question: str,
    num_visual_tokens: int,
    placeholder_id: int,
    answer: str | None = None,
    assistant_prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Token ids, attention mask and (with ``answer``) assistant-only labels for one sample, batch dim 1.

    Returns:
        ``{"input_ids": (1, l), "attention_mask": (1, l)}`` plus ``"labels": (1, l)`` when ``answer`` is given;
        labels are -100 everywhere except the answer tokens (and its end-of-turn token).
    """
    parts = render_prompt(template, question, tokenizer, answer=answer, assistant_prefix=assistant_prefix)
    prompt_ids = tokenize_with_placeholders(tokenizer, parts.prompt, num_visual_tokens, placeholder_id)
    target_ids = tokenizer(parts.target, add_special_tokens=False).input_ids if parts.target else []
    input_ids = torch.tensor([prompt_ids + target_ids], dtype=torch.long)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if answer is not None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[0, len(prompt_ids) :] = torch.tensor(target_ids, dtype=torch.long)
        inputs["labels"] = labels
    return inputs
