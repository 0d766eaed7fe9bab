r"""Conversation templates for training: a sample's turns -> one text, the spans the loss covers, and token labels.

A template renders a whole dialogue into one string and records the character spans of the supervised text
(:class:`RenderedConversation`). :func:`tokenize_conversation` then tokenizes the string once and labels every
token whose first character lies in a span, read from the fast tokenizer's offsets; tokens the tokenizer adds on
its own (a LLaMA BOS) are never labelled. The labels are therefore exact for any tokenizer, with no "length of
the instruction minus two" arithmetic (the published LLaVA code's way, which drifts whenever a tokenizer merges
characters across the boundary).

Templates (``u``: a user turn's text, ``a``: an assistant reply; supervised text in ``[...]``):

- ``plain`` (STAR stage 1, captions): ``<image>[a\n]``. The user's text is dropped; one exchange only (as
  published: a stage-1 row is one caption).
- ``vicuna_v1`` (STAR stage 2): ``{system} USER: u1 ASSISTANT:[ a1</s>]USER: u2 ASSISTANT:[ a2</s>]`` with the
  system prompt of :data:`~flash_vstream.inference.prompts.VICUNA_SYSTEM`: every reply, its leading space (the
  space that starts its first token) and its ``</s>``.
- ``chat_template`` (STAR on Qwen2-type decoders): the tokenizer's own chat template; each reply's content and the
  end-of-turn token the template closes it with (ChatML: ``<|im_start|>assistant\n[a<|im_end|>]\n``).
- the Flash layout (:func:`render_flash`): the tokenizer's chat template too, with
  ``<|vision_start|>`` + N x ``<|video_pad|>`` + ``<|vision_end|>`` per video at the start of the first user
  turn, and, as in the published Qwen recipe, the newline that ends the assistant header also supervised
  (ChatML: ``<|im_start|>assistant[\na<|im_end|>]\n``). For Qwen-VL tokenizers this is exactly the published
  sequence ``<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>...``.

User text, as LLaVA prepares it: in STAR templates a turn holding the ``<image>`` marker is rewritten as
``"<image>\n" + (its text without the marker, stripped)``, wherever the row had put the marker; the Flash layout
removes the markers (and strips the text), since its video blocks take their place. So a single-turn dialogue
renders, up to the assistant's reply, exactly the prompt :mod:`flash_vstream.inference` builds for the same
question.

Chat templates are rendered per prefix of the dialogue (``apply_chat_template`` on the first ``i`` turns, with and
without the generation prompt) to find where each reply starts and ends; a template whose renders are not
prefixes of each other, or that alters the reply's text, is refused with a ``ValueError``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from flash_vstream.inference.prompts import (
    IGNORE_INDEX,
    PLAIN_SEP,
    VICUNA_ROLES,
    VICUNA_SEP,
    VICUNA_SEP2,
    VICUNA_SYSTEM,
)
from flash_vstream.train.data import MEDIA_MARKER, Turn

__all__ = [
    "STAR_TEMPLATES",
    "RenderedConversation",
    "render_conversation",
    "render_flash",
    "supervised_spans",
    "tokenize_conversation",
]

STAR_TEMPLATES = ("plain", "vicuna_v1", "chat_template")
"""Templates the STAR family trains with (stage 1, stage 2, Qwen2-type decoders)."""


@dataclass(frozen=True)
class RenderedConversation:
    """A dialogue rendered as one string, with the character spans of its supervised text."""

    text: str
    """The whole sequence as text; STAR media stay as :data:`~flash_vstream.train.data.MEDIA_MARKER`."""
    spans: tuple[tuple[int, int], ...]
    """Supervised ``[start, end)`` character ranges of ``text``, in order, not overlapping."""

    def supervised_text(self) -> list[str]:
        """The text of every span (for reading and snapshot tests)."""
        return [self.text[start:end] for start, end in self.spans]


# ----------------------------------------------------------------------------------------------------------
# User text
# ----------------------------------------------------------------------------------------------------------


def star_user_text(text: str) -> str:
    """LLaVA's preparation of a user turn: its media markers moved to the front, each followed by a newline."""
    count = text.count(MEDIA_MARKER)
    if not count:
        return text
    return (MEDIA_MARKER + "\n") * count + text.replace(MEDIA_MARKER, "").strip()


def flash_user_text(text: str) -> str:
    """A user turn for the Flash layout: media markers removed (video blocks take their place), text stripped."""
    if MEDIA_MARKER not in text:
        return text
    return text.replace(MEDIA_MARKER, "").strip()


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def _check_turns(turns: Sequence[Turn]) -> None:
    roles = [turn.role for turn in turns]
    expected = ["user", "assistant"] * (len(roles) // 2)
    if not roles or roles != expected:
        raise ValueError(f"a dialogue alternates user and assistant turns, first user, last assistant; got {roles}")


def render_plain(turns: Sequence[Turn]) -> RenderedConversation:
    """``plain``: the media markers, then the caption and a newline (both supervised).

    Raises:
        ValueError: for more than one user/assistant exchange.
    """
    _check_turns(turns)
    if len(turns) != 2:
        raise ValueError(
            f"template 'plain' (stage-1 captions) takes one user/assistant exchange, got {len(turns) // 2}; "
            "use template 'vicuna_v1' or 'chat_template' for dialogues"
        )
    prefix = MEDIA_MARKER * turns[0].text.count(MEDIA_MARKER)
    text = prefix + turns[1].text + PLAIN_SEP
    return RenderedConversation(text, ((len(prefix), len(text)),))


def render_vicuna_v1(turns: Sequence[Turn]) -> RenderedConversation:
    """``vicuna_v1``: ``{system} USER: u ASSISTANT: a</s>USER: ...``; each `` a</s>`` supervised."""
    _check_turns(turns)
    user, assistant = VICUNA_ROLES
    parts, spans, length = [VICUNA_SYSTEM + VICUNA_SEP], [], len(VICUNA_SYSTEM) + len(VICUNA_SEP)
    for turn in turns:
        if turn.role == "user":
            piece = f"{user}: {star_user_text(turn.text)}{VICUNA_SEP}"
        else:
            head = f"{assistant}:"
            piece = f"{head} {turn.text}{VICUNA_SEP2}"
            spans.append((length + len(head), length + len(piece)))
        parts.append(piece)
        length += len(piece)
    return RenderedConversation("".join(parts), tuple(spans))


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _end_of_turn(tokenizer, tail: str) -> int:
    """Length of the start of ``tail`` up to and including the special token that closes a reply."""
    specials = set(tokenizer.all_special_tokens)
    specials.update(str(t) for t in tokenizer.added_tokens_decoder.values() if getattr(t, "special", False))
    found = [(tail.find(tok), -len(tok), tok) for tok in specials if tok and tail.find(tok) >= 0]
    if found:
        index, _, token = min(found)
        if not tail[:index].strip():
            return index + len(token)
    raise ValueError(
        f"the chat template closes an assistant reply with {tail[:40]!r}, which starts with no special "
        "token; training needs an end-of-turn token to supervise (ChatML's <|im_end|>)"
    )


def render_chat(tokenizer, messages: list[dict], *, supervise_header_tail: bool = False) -> RenderedConversation:
    """A dialogue through the tokenizer's chat template; each reply's content and end-of-turn token supervised.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: ``[{"role", "content"}, ...]``, alternating, first user, last assistant.
        supervise_header_tail: also supervise the whitespace that ends the assistant header (the published Flash
            recipe supervises the newline after ``<|im_start|>assistant``).

    Raises:
        ValueError: without a chat template, or for a template whose renders of the dialogue's prefixes are not
            prefixes of each other, that alters a reply, or that closes a reply with no special token.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat_template' needs a tokenizer with a chat template; this one has none")
    text = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = _render(tokenizer, messages[:i], generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        content = message["content"]
        if not (text.startswith(upto) and upto.startswith(header + content)):
            raise ValueError(
                "the tokenizer's chat template does not render a dialogue as a growing prefix with each reply "
                f"verbatim (reply {i // 2 + 1}: {content[:40]!r}); training cannot locate the replies"
            )
        end = len(header) + len(content)
        end += _end_of_turn(tokenizer, upto[end:])
        start = len(header.rstrip()) if supervise_header_tail else len(header)
        spans.append((start, end))
    return RenderedConversation(text, tuple(spans))


def render_conversation(template: str, turns: Sequence[Turn], tokenizer=None) -> RenderedConversation:
    """Render a STAR-family dialogue with ``template`` (``plain``, ``vicuna_v1`` or ``chat_template``).

    Raises:
        ValueError: for an unknown template, or a dialogue the template cannot take (see each renderer).
    """
    if template == "plain":
        return render_plain(turns)
    if template == "vicuna_v1":
        return render_vicuna_v1(turns)
    if template == "chat_template":
        _check_turns(turns)
        messages = [{"role": t.role, "content": star_user_text(t.text) if t.role == "user" else t.text} for t in turns]
        return render_chat(tokenizer, messages)
    raise ValueError(f"unknown conversation template {template!r}; the STAR family trains with {STAR_TEMPLATES}")


def render_flash(turns: Sequence[Turn], tokenizer, video_blocks: str) -> RenderedConversation:
    """The Flash layout: ``video_blocks`` at the start of the first user turn, media markers removed.

    Args:
        turns: the dialogue.
        tokenizer: the checkpoint's tokenizer (its chat template).
        video_blocks: ``<|vision_start|>`` + N x ``<|video_pad|>`` + ``<|vision_end|>`` per video ("" for text).
    """
    _check_turns(turns)
    messages = []
    for i, turn in enumerate(turns):
        content = flash_user_text(turn.text) if turn.role == "user" else turn.text
        messages.append({"role": turn.role, "content": video_blocks + content if i == 0 else content})
    return render_chat(tokenizer, messages, supervise_header_tail=True)


# ----------------------------------------------------------------------------------------------------------
# Tokenization
# ----------------------------------------------------------------------------------------------------------


def tokenize_conversation(
    tokenizer,
    conversation: RenderedConversation,
    *,
    placeholder_id: int | None = None,
    visual_counts: Sequence[int] = (),
    add_special_tokens: bool = True,
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a rendered dialogue (labels are -100 outside the supervised spans).

    With ``placeholder_id``, the text is cut at every media marker and marker ``k`` becomes ``visual_counts[k]``
    placeholder ids (the STAR family, as at inference: the first piece tokenized with the tokenizer's special
    tokens, the others without). Without it, the text is tokenized whole (the Flash family, whose video tokens
    are text).

    Args:
        tokenizer: a fast tokenizer (offsets are needed).
        conversation: the rendered dialogue.
        placeholder_id: id of one visual token, or ``None`` (markers are not expanded).
        visual_counts: visual tokens of each marker, in order.
        add_special_tokens: whether the first piece gets the tokenizer's special tokens (a LLaMA BOS).

    Returns:
        ``(input_ids, labels)``, equally long.

    Raises:
        ValueError: for a slow tokenizer, or a marker count that differs from ``visual_counts``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"training needs a fast tokenizer (token offsets locate the labels); {type(tokenizer).__name__} is "
            "slow: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    pieces = conversation.text.split(MEDIA_MARKER) if placeholder_id is not None else [conversation.text]
    if len(pieces) - 1 != len(visual_counts):
        raise ValueError(f"the text holds {len(pieces) - 1} media markers for {len(visual_counts)} media")
    starts = [start for start, _ in conversation.spans]
    ids: list[int] = []
    labels: list[int] = []
    offset = 0
    for k, piece in enumerate(pieces):
        encoded = tokenizer(piece, add_special_tokens=add_special_tokens and k == 0, return_offsets_mapping=True)
        for token, (begin, _), sequence in zip(
            encoded["input_ids"], encoded["offset_mapping"], encoded.sequence_ids(0), strict=True
        ):
            ids.append(token)
            inside = sequence is not None and _in_spans(offset + begin, starts, conversation.spans)
            labels.append(token if inside else IGNORE_INDEX)
        offset += len(piece)
        if k < len(visual_counts):
            ids.extend([placeholder_id] * visual_counts[k])
            labels.extend([IGNORE_INDEX] * visual_counts[k])
            offset += len(MEDIA_MARKER)
    return ids, labels


def _in_spans(position: int, starts: list[int], spans: Sequence[tuple[int, int]]) -> bool:
    index = bisect.bisect_right(starts, position) - 1
    return index >= 0 and position < spans[index][1]


def supervised_spans(tokenizer, input_ids: Sequence[int], labels: Sequence[int]) -> list[str]:
    """The decoded runs of consecutive supervised tokens (labels != -100), for reading and snapshot tests."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels, strict=True):
        supervised = label != IGNORE_INDEX
        if supervised and not previous:
            runs.append([])
        if supervised:
            runs[-1].append(int(token))
        previous = supervised
    return [tokenizer.decode(run) for run in runs]
