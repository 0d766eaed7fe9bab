"""Label masks of every training template, pinned as (rendered text, decoded supervised spans) snapshots.

A reader checks a snapshot by eye: the spans are exactly the assistant replies plus the end-of-turn token each
template supervises (and, for the Flash layout, the newline after the assistant header, as published).
"""

import pytest
import torch

from flash_vstream.inference.prompts import IGNORE_INDEX, VICUNA_SYSTEM, build_star_inputs
from flash_vstream.inference.qwen2vl_inputs import FlashInputBuilder
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer, write_tiny_sentencepiece_tokenizer
from flash_vstream.train.data import Turn
from flash_vstream.train.dataset import sample_encoder_for
from flash_vstream.train.templates import (
    render_chat,
    render_conversation,
    render_flash,
    supervised_spans,
    tokenize_conversation,
)
from flash_vstream.video.reader import read_video
from tests.train.batchfixtures import (
    CAPTION,
    DIALOGUE,
    TEXT_ONLY,
    random_features,
    row,
    samples,
    write_features,
    write_frame_folder,
)

CHATML_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def turns(*pairs):
    return tuple(Turn(role, text) for role, text in pairs)


TWO_EXCHANGES = turns(
    ("user", "What is it?\n<image>"), ("assistant", "A cat."), ("user", "Colour?"), ("assistant", "Blue.")
)


@pytest.fixture(scope="module")
def llama_tok():
    return build_tiny_tokenizer("llama")


@pytest.fixture(scope="module")
def chat_tok():
    return build_tiny_tokenizer("chatml")


# ---------------------------------------------------------------------------------------------- rendered text


def test_plain_snapshot():
    rendered = render_conversation("plain", turns(("user", "Describe it.\n<image>"), ("assistant", "A cat.")))
    assert rendered.text == "<image>A cat.\n"
    assert rendered.supervised_text() == ["A cat.\n"]


def test_vicuna_v1_multi_turn_snapshot():
    rendered = render_conversation("vicuna_v1", TWO_EXCHANGES)
    assert rendered.text == (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT: Blue.</s>"
    )
    assert rendered.supervised_text() == [" A cat.</s>", " Blue.</s>"]


def test_chat_template_multi_turn_snapshot(chat_tok):
    rendered = render_conversation("chat_template", TWO_EXCHANGES, chat_tok)
    assert rendered.text == (
        CHATML_SYSTEM + "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
    )
    assert rendered.supervised_text() == ["A cat.<|im_end|>", "Blue.<|im_end|>"]


def test_flash_layout_multi_turn_snapshot(chat_tok):
    """The published sequence: vision block first in the first user turn, '<image>\\n' gone, '\\n' + reply +
    <|im_end|> supervised, the final '\\n' not."""
    block = "<|vision_start|>" + "<|video_pad|>" * 2 + "<|vision_end|>"
    rendered = render_flash(TWO_EXCHANGES, chat_tok, block)
    assert rendered.text == (
        CHATML_SYSTEM + f"<|im_start|>user\n{block}What is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
    )
    assert rendered.supervised_text() == ["\nA cat.<|im_end|>", "\nBlue.<|im_end|>"]


# ---------------------------------------------------------------------------------------------- token labels


def test_vicuna_v1_token_spans(star_llama, tmp_path):
    model, tok = star_llama
    write_features(tmp_path / "clip.safetensors", random_features(3))
    data = samples(tmp_path, [row("v", DIALOGUE, video="clip.mp4"), row("t", TEXT_ONLY)])
    encoder = sample_encoder_for(model, tok, max_length=4096)
    video, text = encoder(data[0]), encoder(data[1])
    assert supervised_spans(tok, video["input_ids"].tolist(), video["labels"].tolist()) == [" A cat.</s>", " Blue.</s>"]
    assert supervised_spans(tok, text["input_ids"].tolist(), text["labels"].tolist()) == [" Hello.</s>", " Hello!</s>"]
    supervised = video["labels"] != IGNORE_INDEX
    assert torch.equal(video["labels"][supervised], video["input_ids"][supervised])
    assert int((video["input_ids"] == -200).sum()) == model.memory.num_tokens(3)
    assert video["input_ids"][0] == tok.bos_token_id and video["labels"][0] == IGNORE_INDEX


def test_vicuna_v1_with_the_released_sentencepiece_tokenizer(tmp_path):
    """The released checkpoint's tokenizer kind (LLaMA SentencePiece): labels are exactly the reply tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(write_tiny_sentencepiece_tokenizer(tmp_path / "tok"))
    rendered = render_conversation("vicuna_v1", TWO_EXCHANGES)
    ids, labels = tokenize_conversation(tok, rendered, placeholder_id=-200, visual_counts=[5])
    before, after = rendered.text.split("<image>")
    head = tok(before).input_ids
    reply = [tok.convert_ids_to_tokens(i) for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert "".join(reply).replace("\u2581", " ") == " A cat.</s> Blue.</s>"
    assert head[0] == tok.bos_token_id
    assert ids == head + [-200] * 5 + tok(after, add_special_tokens=False).input_ids


def test_plain_token_spans(star_llama, tmp_path):
    model, tok = star_llama
    write_features(tmp_path / "clip.safetensors", random_features(2))
    [sample] = samples(tmp_path, [row("c", CAPTION, video="clip.mp4")])
    out = sample_encoder_for(model, tok, template="plain", max_length=4096)(sample)
    count = model.memory.num_tokens(2)
    assert out["input_ids"][: count + 1].tolist() == [tok.bos_token_id] + [-200] * count
    assert supervised_spans(tok, out["input_ids"].tolist(), out["labels"].tolist()) == ["A red square moves left.\n"]
    assert (out["labels"][: count + 1] == IGNORE_INDEX).all()


def test_chat_template_token_spans(star_qwen, tmp_path):
    model, tok = star_qwen
    write_features(tmp_path / "clip.safetensors", random_features(2))
    [sample] = samples(tmp_path, [row("v", DIALOGUE, video="clip.mp4")])
    out = sample_encoder_for(model, tok, max_length=4096)(sample)
    assert supervised_spans(tok, out["input_ids"].tolist(), out["labels"].tolist()) == [
        "A cat.<|im_end|>",
        "Blue.<|im_end|>",
    ]


def test_flash_token_spans_and_video_tokens(flash, tmp_path):
    model, tok = flash
    write_frame_folder(tmp_path / "clip", 6)
    [sample] = samples(tmp_path, [row("v", DIALOGUE, videos=["clip"])])
    out = sample_encoder_for(model, tok, max_length=4096)(sample)
    assert supervised_spans(tok, out["input_ids"].tolist(), out["labels"].tolist()) == [
        "\nA cat.<|im_end|>",
        "\nBlue.<|im_end|>",
    ]
    video_id = tok.convert_tokens_to_ids("<|video_pad|>")
    count = FlashInputBuilder.for_model(model, tok).num_video_tokens(6, 112, 112)
    assert int((out["input_ids"] == video_id).sum()) == count
    assert torch.equal(out["mm_token_type_ids"], (out["input_ids"] == video_id).long() * 2)
    assert (out["labels"][out["input_ids"] == video_id] == IGNORE_INDEX).all()


# ---------------------------------------------------------------------------------------------- = inference


@pytest.mark.parametrize("template", ["vicuna_v1", "plain"])
def test_star_training_sequence_starts_with_the_inference_prompt(star_llama, tmp_path, template):
    model, tok = star_llama
    write_features(tmp_path / "clip.safetensors", random_features(4))
    [sample] = samples(tmp_path, [row("v", DIALOGUE[:2], video="clip.mp4")])
    out = sample_encoder_for(model, tok, template=template, max_length=4096)(sample)
    prompt = build_star_inputs(tok, template, "What is it?", model.memory.num_tokens(4), -200)["input_ids"][0]
    assert torch.equal(out["input_ids"][: len(prompt)], prompt)
    first = int((out["labels"] != IGNORE_INDEX).nonzero()[0])
    assert first == len(prompt)  # the reply starts right after the prompt


def test_star_chat_template_sequence_starts_with_the_inference_prompt(star_qwen, tmp_path):
    model, tok = star_qwen
    write_features(tmp_path / "clip.safetensors", random_features(4))
    [sample] = samples(tmp_path, [row("v", DIALOGUE[:2], video="clip.mp4")])
    out = sample_encoder_for(model, tok, max_length=4096)(sample)
    count = model.memory.num_tokens(4)
    inference = build_star_inputs(tok, "chat_template", "What is it?", count, -200, answer="A cat.")
    assert torch.equal(out["input_ids"][: inference["input_ids"].shape[1]], inference["input_ids"][0])
    assert torch.equal(out["labels"][: inference["labels"].shape[1]], inference["labels"][0])


def test_flash_training_sequence_starts_with_the_inference_prompt(flash, tmp_path):
    """Same tokens and pixels up to the reply; the prompt's last token (the header's '\\n') is supervised."""
    model, tok = flash
    write_frame_folder(tmp_path / "clip", 5, seed=3)
    [sample] = samples(tmp_path, [row("v", DIALOGUE, videos=["clip"])])
    encoder = sample_encoder_for(model, tok, max_length=4096)
    out = encoder(sample)
    frames = read_video(tmp_path / "clip", sampler=encoder.sampler.build()).frames
    inference = FlashInputBuilder.for_model(model, tok)("What is it?", frames=frames)
    prompt = inference["input_ids"][0]
    assert torch.equal(out["input_ids"][: len(prompt)], prompt)
    assert torch.equal(out["mm_token_type_ids"][: len(prompt)], inference["mm_token_type_ids"][0])
    assert torch.equal(out["pixel_values_videos"], inference["pixel_values_videos"])
    assert torch.equal(out["video_grid_thw"], inference["video_grid_thw"])
    first = int((out["labels"] != IGNORE_INDEX).nonzero()[0])
    assert first == len(prompt) - 1 and tok.decode(prompt[-1:]) == "\n"
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------- refusals


def test_plain_refuses_dialogues():
    with pytest.raises(ValueError, match="one user/assistant exchange"):
        render_conversation("plain", TWO_EXCHANGES)


def test_unknown_template_and_missing_chat_template(llama_tok):
    with pytest.raises(ValueError, match="unknown conversation template"):
        render_conversation("llava_v9", TWO_EXCHANGES)
    with pytest.raises(ValueError, match="has none"):
        render_conversation("chat_template", TWO_EXCHANGES, llama_tok)


def test_chat_templates_that_hide_the_replies_are_refused(chat_tok):
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    no_end = chat_tok.__class__(tokenizer_object=chat_tok.backend_tokenizer)
    no_end.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(ValueError, match="no special token"):
        render_chat(no_end, messages)
    trimmed = chat_tok.__class__(tokenizer_object=chat_tok.backend_tokenizer, eos_token="<|im_end|>")
    trimmed.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['content'] | upper }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>{% endif %}"
    )
    with pytest.raises(ValueError, match="verbatim"):
        render_chat(trimmed, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def test_slow_tokenizers_are_refused():
    """Offsets locate the labels; a tokenizer without them (a Python "slow" one) gets one clear error."""

    class SlowTokenizer:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        tokenize_conversation(SlowTokenizer(), render_conversation("vicuna_v1", TWO_EXCHANGES))
