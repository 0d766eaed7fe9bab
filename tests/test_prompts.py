"""Conversation templates and placeholder expansion, as the released model was trained."""

import pytest

from flash_vstream.inference.prompts import (
    IGNORE_INDEX,
    VICUNA_SYSTEM,
    build_star_inputs,
    render_prompt,
    tokenize_with_placeholders,
)
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def llama_tok():
    return build_tiny_tokenizer("llama")


@pytest.fixture(scope="module")
def chat_tok():
    return build_tiny_tokenizer("chatml")


def test_vicuna_v1_snapshot(llama_tok):
    parts = render_prompt("vicuna_v1", "What is shown?", llama_tok, answer="A cat.")
    assert parts.prompt == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is shown? ASSISTANT:"
    )
    assert parts.prompt.startswith(VICUNA_SYSTEM)
    assert parts.target == " A cat.</s>"


def test_plain_snapshot(llama_tok):
    parts = render_prompt("plain", "ignored question", llama_tok, answer="a caption")
    assert parts.prompt == "<image>" and parts.target == "a caption\n"


def test_chat_template_snapshot(chat_tok):
    parts = render_prompt("chat_template", "Why?", chat_tok, assistant_prefix="Best option: (")
    assert parts.prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhy?<|im_end|>\n"
        "<|im_start|>assistant\nBest option: ("
    )


def test_assistant_prefix_vicuna(llama_tok):
    parts = render_prompt("vicuna_v1", "Q", llama_tok, assistant_prefix="Best option: (")
    assert parts.prompt.endswith("ASSISTANT: Best option: (")


def test_unknown_template_and_missing_chat_template(llama_tok):
    with pytest.raises(ValueError, match="unknown conversation template"):
        render_prompt("llava_v9", "q", llama_tok)
    with pytest.raises(ValueError, match="has no chat template"):
        render_prompt("chat_template", "q", llama_tok)


def test_placeholder_expansion_counts(llama_tok):
    ids = tokenize_with_placeholders(llama_tok, "hi <image>\nthere", 681, -200)
    assert ids.count(-200) == 681
    assert ids[0] == llama_tok.bos_token_id
    first = ids.index(-200)
    assert ids[first : first + 681] == [-200] * 681
    assert llama_tok.decode(ids[first + 681 :]) == "\nthere"
    with pytest.raises(ValueError, match="one <image> marker"):
        tokenize_with_placeholders(llama_tok, "<image><image>", 1, -200)


def test_labels_supervise_answer_only(chat_tok):
    inputs = build_star_inputs(chat_tok, "chat_template", "Q?", 7, -200, answer="B")
    labels, ids = inputs["labels"][0], inputs["input_ids"][0]
    supervised = labels != IGNORE_INDEX
    assert chat_tok.decode(labels[supervised]) == "B<|im_end|>"
    assert (ids == -200).sum() == 7
    assert (labels[ids == -200] == IGNORE_INDEX).all()
    assert inputs["attention_mask"].sum() == ids.numel()


def test_generation_inputs_have_no_labels(llama_tok):
    inputs = build_star_inputs(llama_tok, "vicuna_v1", "Q?", 3, -200)
    assert "labels" not in inputs
    assert llama_tok.decode(inputs["input_ids"][0][-12:]).endswith("Q? ASSISTANT:")
