"""StreamingVLM samples and batches: the per-second layout and label mask (snapshots and the published index
rule), frames at 2 fps, token counts of the published resize rule, M-RoPE positions of the model's own
get_rope_index against a slow restatement, and padded batches equal to their samples alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from flash_vstream.inference.prompts import IGNORE_INDEX
from flash_vstream.model.streamingvlm import TINY_SETTINGS, tiny_streamingvlm_config
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer
from flash_vstream.train.dataset import SampleError, SampleTooLongError
from flash_vstream.train.streamingvlm_collate import (
    StreamFormat,
    StreamingVLMCollator,
    StreamingVLMSampleEncoder,
    bin_words,
    render_chunk,
)
from flash_vstream.train.streamingvlm_data import ChunkRecord, StreamingChunks
from flash_vstream.train.templates import supervised_spans
from flash_vstream.video.reader import read_video

REPO = Path(__file__).resolve().parents[2]
SAMPLE = (REPO / "assets" / "sample.mp4").resolve()  # 7 s, 8 fps, 320x240

RECORD = ChunkRecord(
    video=SAMPLE,
    start=2.0,
    end=5.0,
    previous="Title",
    query="",
    words=((1.5, 1.8, "early"), (2.2, 2.5, "kick"), (2.5, 3.0, "off"), (3.3, 3.6, "pass"), (4.9, 5.4, "late")),
    where="chunks.jsonl:1",
)
"""Three seconds: "early" ended before the chunk (second 0 takes it), "off" ends exactly at 3.0 (second 0),
second 2 is silent, "late" ends after the chunk (dropped)."""

SNAPSHOT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>previous text\nTitle<|im_end|>\n"
    "<|im_start|>user\nTime=2.0-3.0s<|vision_start|><|video_pad|><|video_pad|><|vision_end|><|im_end|>\n"
    "<|im_start|>assistant\n\n early kick off ...<|im_end|>\n"
    "<|im_start|>user\nTime=3.0-4.0s<|vision_start|><|video_pad|><|video_pad|><|vision_end|><|im_end|>\n"
    "<|im_start|>assistant\n\n pass ...<|im_end|>\n"
    "<|im_start|>user\nTime=4.0-5.0s<|vision_start|><|video_pad|><|video_pad|><|vision_end|><|im_end|>\n"
    "<|im_start|>assistant\n\n ...<|im_end|>\n"
)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tiny_tokenizer("chatml")
    config = tiny_streamingvlm_config(tokenizer)
    config.streamingvlm_settings = dict(TINY_SETTINGS)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model, tokenizer, StreamingVLMSampleEncoder.for_model(model, tokenizer)


def test_bin_words_by_end_time():
    words = [
        (0, 9.9, "before"),
        (0, 10.0, "edge0"),
        (0, 10.01, "a"),
        (0, 11.0, "edge1"),
        (0, 12.5, "c"),
        (0, 13.2, "x"),
    ]
    assert bin_words(words, 10.0, 3) == [" before edge0 a edge1", "", " c"]


def test_layout_snapshot():
    rendered = render_chunk(RECORD, StreamFormat(), vision_tokens=2, previous="Title")
    assert rendered.text == SNAPSHOT
    assert rendered.supervised_text() == [
        "\n early kick off ...<|im_end|>",
        "\n pass ...<|im_end|>",
        "\n ...<|im_end|>",
    ]
    query = render_chunk(RECORD.__class__(**{**RECORD.__dict__, "query": " Commentate"}), StreamFormat(), 1, "")
    assert "<|vision_end|> Commentate<|im_end|>" in query.text and query.text.count("Commentate") == 1


def test_questions_follow_the_time_stamp_and_answers_open_the_reply():
    record = ChunkRecord(
        SAMPLE, 2.0, 4.0, "", "", ((2.5, 3.0, "goal"),), "c:1", questions=((3.4, "Who scored?", "Him."),)
    )
    rendered = render_chunk(record, StreamFormat(), vision_tokens=1, previous="")
    assert "user\nTime=2.0-3.0s<|vision_start|>" in rendered.text
    assert "user\nTime=3.0-4.0s Who scored?<|vision_start|>" in rendered.text
    assert rendered.supervised_text() == ["\n goal ...<|im_end|>", "Him.\n ...<|im_end|>"]


def published_labels(ids: list[int], tokenizer) -> list[int]:
    """The published rule: after each ``<|im_start|>assistant\n`` header's tokens through the next <|im_end|>
    (the published code has the header as 3 Qwen tokens; the tiny vocabulary splits "assistant")."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = [IGNORE_INDEX] * len(ids)
    for s in range(len(ids)):
        if ids[s : s + len(header)] == header:
            e = ids.index(im_end, s)
            labels[s + len(header) : e + 1] = ids[s + len(header) : e + 1]
    return labels


def test_label_mask(tiny):
    model, tokenizer, encoder = tiny
    sample = encoder(RECORD)
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    assert labels == published_labels(ids, tokenizer)
    assert supervised_spans(tokenizer, ids, labels) == [
        "\n early kick off ...<|im_end|>",
        "\n pass ...<|im_end|>",
        "\n ...<|im_end|>",
    ]
    mask = "".join("1" if label != IGNORE_INDEX else "0" for label in labels)
    assert (
        mask.count("1")
        == sum(len(tokenizer(t)["input_ids"]) for t in ["\n early kick off ...", "\n pass ...", "\n ..."]) + 3
    )
    video = sample["mm_token_type_ids"] == 2
    assert torch.equal(video, sample["input_ids"] == model.config.video_token_id)
    assert not (sample["labels"][video] != IGNORE_INDEX).any()


def merging_tokenizer():
    """A tiny byte-level BPE (GPT-2 pre-tokenizer, Qwen-VL specials) that, like Qwen's, has one token for "\n\n"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from flash_vstream.model.tiny_tokenizer import CHATML_SPECIALS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["system user assistant previous text Time early kick off pass\n\n goal ...\n\n"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=CHATML_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def test_each_reply_is_tokenized_as_the_session_feeds_it(tiny):
    tokenizer = merging_tokenizer()
    newline, double = (tokenizer.convert_tokens_to_ids(t) for t in ("\u010a", "\u010a\u010a"))  # "\n", "\n\n"
    assert double in tokenizer("<|im_start|>assistant\n\n early")["input_ids"]  # whole text: merged
    encoder = StreamingVLMSampleEncoder(
        tokenizer, tiny[0].config.vision_config, StreamFormat.for_config(tiny[0].config)
    )
    sample = encoder(RECORD)
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    assert double not in ids
    firsts = [k for k in range(len(ids)) if labels[k] != IGNORE_INDEX and (k == 0 or labels[k - 1] == IGNORE_INDEX)]
    assert len(firsts) == 3 and all(ids[k] == newline and ids[k - 1] == newline for k in firsts)
    assert labels == published_labels(ids, tokenizer)


def test_frames_at_two_fps(tiny):
    _, _, encoder = tiny
    frames = encoder.frames(RECORD)
    every = read_video(SAMPLE)
    expected = [every.frames[np.argmax(every.timestamps >= 2.0 + j / 2 - 1e-9)] for j in range(6)]
    assert frames.shape[0] == 6 and np.array_equal(frames, np.stack(expected))
    sample = encoder(RECORD)
    grid = sample["video_grid_thw"]
    assert grid.tolist() == [[1, 6, 8]] * 3  # 240x320 under 112x112 px: 84x112, one temporal patch per second
    assert sample["pixel_values_videos"].shape == (3 * 6 * 8, 3 * 2 * 14 * 14)
    assert sample["second_per_grid_ts"].tolist() == [1.0, 1.0, 1.0]
    assert int((sample["input_ids"] == encoder.video_id).sum()) == 3 * 12


def test_published_resize_gives_108_tokens_per_second():
    tokenizer = build_tiny_tokenizer("chatml")
    encoder = StreamingVLMSampleEncoder(tokenizer, tiny_streamingvlm_config(tokenizer).vision_config, StreamFormat())
    sample = encoder(RECORD)
    # 240x320 with factor 28, min 78,400 px: 252x336 -> 18x24 patches -> 9x12 merged tokens
    assert sample["video_grid_thw"].tolist() == [[1, 18, 24]] * 3
    assert int((sample["input_ids"] == encoder.video_id).sum()) == 3 * 108


def test_errors_name_the_record(tiny):
    _, tokenizer, encoder = tiny
    late = ChunkRecord(SAMPLE, 4.0, 8.0, "", "", (), "c.jsonl:7")
    with pytest.raises(SampleError, match=r"c.jsonl:7: the chunk ends at 8.0 s .* holds 7.00 s"):
        encoder(late)
    short = StreamingVLMSampleEncoder.for_model(tiny[0], tokenizer, max_length=50)
    with pytest.raises(SampleTooLongError, match=r"chunks.jsonl:1: the chunk is \d+ tokens, over data.max_length 50"):
        short(RECORD)
    with pytest.raises(ValueError, match="fps must be 2"):
        StreamingVLMSampleEncoder(tokenizer, tiny[0].config.vision_config, StreamFormat(fps=4.0))


def slow_positions(ids: list[int], grids: list[list[int]], video_id: int, merge: int) -> list[tuple[int, int, int]]:
    """The published M-RoPE rule: text 1-D at max + 1; a vision block (t0, t0 + row, t0 + column); next text at
    t0 + max(rows, columns)."""
    out, position, blocks, i = [], 0, iter(grids), 0
    while i < len(ids):
        if ids[i] != video_id:
            out.append((position,) * 3)
            position, i = position + 1, i + 1
            continue
        _, h, w = next(blocks)
        rows, cols = h // merge, w // merge
        out += [(position, position + r, position + c) for r in range(rows) for c in range(cols)]
        position, i = position + max(rows, cols), i + rows * cols
    return out


@pytest.fixture(scope="module")
def samples(tiny):
    _, _, encoder = tiny
    chunks = StreamingChunks(REPO / "configs" / "train" / "streamingvlm_debug_chunks.jsonl", REPO / "assets")
    return [encoder(RECORD), encoder(chunks[0]), encoder(chunks[3])]


def test_positions_are_the_models_over_each_full_sample(tiny, samples):
    model, tokenizer, encoder = tiny
    batch = StreamingVLMCollator(tokenizer.pad_token_id)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == (3, max(lengths)) and len(set(lengths)) == 3  # padded to its own longest
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor(lengths))
    positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        batch["mm_token_type_ids"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"],
        attention_mask=batch["attention_mask"],
    )
    for row, sample in enumerate(samples):
        want = slow_positions(sample["input_ids"].tolist(), sample["video_grid_thw"].tolist(), encoder.video_id, 2)
        got = positions[:, row, : lengths[row]].T.tolist()
        assert [tuple(p) for p in got] == want


def test_padded_batch_equals_each_sample_alone(tiny, samples):
    model, tokenizer, _ = tiny
    collate = StreamingVLMCollator(tokenizer.pad_token_id)
    with torch.no_grad():
        together = model(**collate(samples)).logits
        for row, sample in enumerate(samples):
            alone = model(**collate([sample])).logits[0]
            torch.testing.assert_close(together[row, : len(alone)], alone, atol=1e-5, rtol=1e-4)
