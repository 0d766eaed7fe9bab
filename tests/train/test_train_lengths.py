"""Token-length estimates equal hand computations; the Flash bound is a bound; checkpoints give their budgets."""

import shutil
from pathlib import Path

import pytest
from trainfixtures import turn, write_features, write_frames, write_image, write_jsonl

from flash_vstream.families import tiny_variants
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer
from flash_vstream.train.data import Media, Sample, Turn, UnusableMediaError, load_samples
from flash_vstream.train.lengths import (
    FlashBudget,
    LengthBudget,
    StarBudget,
    TextEstimate,
    WordCounter,
    budget_for_checkpoint,
    default_budget,
    estimate_length,
    estimate_lengths,
)
from flash_vstream.vision.qwen2vl import FlashFrameProcessor

ASSET_VIDEO = Path(__file__).resolve().parents[2] / "assets" / "sample.mp4"  # 56 frames at 8 fps, 320x240


def sample(*media, turns=(("user", "<image>\nWhat is shown?"), ("assistant", "A red car."))):
    return Sample("s", tuple(media), tuple(Turn(r, t) for r, t in turns), "f.jsonl", 1)


def features(t):
    shape = (t, 256, 1024) if t else (256, 1024)
    return Media("features", Path(f"/f{t}.safetensors"), num_frames=max(t, 1), shape=shape)


# --- text ---------------------------------------------------------------------------------------------------


def test_word_counter_counts_words_punctuation_and_special_tokens():
    counter = WordCounter()
    assert counter.count("What is shown?") == 4
    assert counter.count("The user's questions.") == 6  # The, user, ', s, questions, .
    assert counter.count("<|im_start|>user\n<|im_end|>\n") == 3
    assert counter.count(" ASSISTANT: </s>") == 3
    assert counter.count_many(["a b", "", "c."]) == [2, 0, 2]


def test_template_overheads_by_hand():
    # "A chat between a curious user and an artificial intelligence assistant." -> 11 words + "." = 12;
    # "The assistant gives helpful, detailed, and polite answers to the user's questions." -> 13 words + 2 "," +
    # "'" + "s" + "." = 17 (user's = user ' s).
    vicuna = TextEstimate.for_template("vicuna_v1")
    assert (vicuna.prompt, vicuna.user, vicuna.assistant) == (29, 2, 3)  # "USER :" / "ASSISTANT : </s>"
    chat = TextEstimate.for_template("chat_template")
    assert (chat.prompt, chat.user, chat.assistant) == (9, 3, 3)
    plain = TextEstimate.for_template("plain")
    assert (plain.prompt, plain.user, plain.assistant, plain.user_text) == (0, 0, 0, False)
    with pytest.raises(ValueError, match="unknown template 'llama_2'"):
        TextEstimate.for_template("llama_2")


def test_chat_template_with_a_tokenizer_counts_exactly_what_the_template_renders():
    tokenizer = build_tiny_tokenizer("chatml")
    text = TextEstimate.for_template("chat_template", tokenizer)
    budget = LengthBudget(StarBudget(), text)
    turns = (("user", "What is shown?"), ("assistant", "A red car."), ("user", "And now?"), ("assistant", "Blue."))
    for n in (2, 4):
        messages = [{"role": role, "content": content} for role, content in turns[:n]]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert estimate_length(sample(turns=turns[:n]), budget) == expected


# --- STAR ---------------------------------------------------------------------------------------------------


def test_star_estimate_equals_hand_computation():
    budget = default_budget("star")
    # visual: num_tokens(3) = spatial 1x64 + abstract min(2, 25)x1 + temporal 2 clusters x 16 + retrieved
    # min(3, 2) x 64 = 64 + 2 + 32 + 128 = 226; template 29 + 2 + 3; text "What is shown ?" 4 + "A red car ." 4.
    assert estimate_length(sample(features(3)), budget) == 226 + 34 + 8
    assert budget.visual.tokens(features(0)) == 64  # image features: one frame
    assert budget.visual.tokens(features(26)) == 25 + 25 * 16 + 3 * 64 + 64  # 681: the released budget
    assert budget.visual.tokens(features(500)) == 681
    two_turns = sample(
        features(3),
        turns=(
            ("user", "<image>\nWhat is shown?"),
            ("assistant", "A red car."),
            ("user", "Why?"),
            ("assistant", "No."),
        ),
    )
    assert estimate_length(two_turns, budget) == 226 + 29 + 2 * 2 + 2 * 3 + 8 + 2 + 2
    plain = default_budget("star", "plain")
    assert estimate_length(sample(features(3)), plain) == 226 + 4  # plain keeps only the caption


def test_star_media_kinds(tmp_path):
    write_frames(tmp_path / "clip", 5)
    write_image(tmp_path / "a.jpg")
    shutil.copy(ASSET_VIDEO, tmp_path / "v.mp4")
    rows = [
        {"id": i, "video": v, "conversations": [turn("human", "Hi"), turn("gpt", "Yo")]}
        for i, v in enumerate(["clip", "a.jpg", "v.mp4"])
    ]
    samples = load_samples(write_jsonl(tmp_path / "d.jsonl", rows), tmp_path).samples
    media = [s.media[0] for s in samples]
    budget = StarBudget()
    # 5 frames: 64 + 4 + 4x16 + 3x64 = 324; image 64; an unprobed video is bounded by 14400 frames: 681.
    assert [budget.tokens(m) for m in media] == [324, 64, 681]
    # Probed: 56 frames at 8 fps = 7 s -> 7 frames at 1 fps: 64 + 6 + 6x16 + 3x64 = 358.
    assert StarBudget(probe_videos=True).tokens(media[2]) == 358


def test_star_refuses_features_of_another_tower():
    with pytest.raises(UnusableMediaError, match=r"shape \(4, 576, 1024\); this model's memory takes \(T, 256, 1024\)"):
        StarBudget().tokens(Media("features", Path("/x.safetensors"), 4, (4, 576, 1024)))


def test_probing_an_unreadable_video_is_a_skip_reason(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    rows = [{"id": 1, "video": "bad.mp4", "conversations": [turn("human", "Hi"), turn("gpt", "Yo")]}]
    budget = default_budget("star", probe_videos=True)
    data = load_samples(write_jsonl(tmp_path / "d.jsonl", rows), tmp_path, media_check=budget.check_media)
    assert data.samples == [] and dict(data.skipped) == {"unreadable_media": 1}


# --- Flash --------------------------------------------------------------------------------------------------


def test_flash_estimate_equals_hand_computation(tmp_path):
    write_frames(tmp_path / "square", 6, 448, 448)
    write_frames(tmp_path / "wide", 4, 720, 1280)
    write_frames(tmp_path / "long", 100, 448, 448)
    write_image(tmp_path / "a.jpg", 448, 448)
    shutil.copy(ASSET_VIDEO, tmp_path / "v.mp4")
    names = ["square", "wide", "long", "a.jpg", "v.mp4"]
    rows = [{"id": n, "video": n, "conversations": [turn("human", "Hi"), turn("gpt", "Yo")]} for n in names]
    media = [s.media[0] for s in load_samples(write_jsonl(tmp_path / "d.jsonl", rows), tmp_path).samples]
    budget = FlashBudget()
    # Tokens = min(t, 30) * h*w/4 + min(t, 60) * (h/2)*(w/2)/4 + 2 markers, t = ceil(frames / 2), grid h x w.
    assert [budget.tokens(m) for m in media] == [
        3 * 1024 // 4 + 3 * 256 // 4 + 2,  # 6 frames at 448x448 (grid 32x32): 962
        2 * 960 // 4 + 2 * 240 // 4 + 2,  # 4 frames, 720x1280 -> 336x560 (grid 24x40): 602
        30 * 256 + 50 * 64 + 2,  # 100 frames: t = 50 > N_DAM = 30
        256 + 64 + 2,  # an image: one frame, padded to one temporal patch
        30 * 256 + 60 * 64 + 2,  # an unprobed video: 240 frames at the 448x448 cap = 11,520 (+2)
    ]
    # Probed: 7 frames (t = 4) of 240x320 -> 252x308 -> 224x336 (grid 16x24): 4*96 + 4*24 + 2.
    assert FlashBudget(probe_videos=True).tokens(media[4]) == 4 * 96 + 4 * 24 + 2
    text = 9 + 3 + 3 + 1 + 1  # ChatML words estimate + "Hi" + "Yo"
    assert (
        estimate_length(sample(media[0], turns=(("user", "<image>Hi"), ("assistant", "Yo"))), default_budget("flash"))
        == 962 + text
    )


def test_flash_refuses_clip_features():
    with pytest.raises(UnusableMediaError, match="only the STAR family reads"):
        FlashBudget().tokens(features(3))
    with pytest.raises(ValueError, match=r"trains with template\(s\) \('chat_template',\), not 'vicuna_v1'"):
        default_budget("flash", "vicuna_v1")


@pytest.mark.parametrize("max_pixels", [4 * 224 * 224, 300_000, 56 * 56 * 7])
def test_the_flash_video_bound_is_never_exceeded(max_pixels):
    processor = FlashFrameProcessor(max_pixels=max_pixels)
    budget = FlashBudget(processor=processor)
    bound = budget.tokens(Media("video", Path("/v.mp4")))
    sizes = [(h, w) for h in range(30, 2200, 97) for w in range(30, 2200, 89)] + [(448, 448), (56, 3000)]
    worst = 0
    for height, width in sizes:
        if max(height, width) > 150 * min(height, width):
            continue
        _, gh, gw = processor.grid_thw(240, height, width)
        worst = max(worst, budget._memory.num_tokens(240, grid_hw=(gh, gw)) + 2)
    assert worst <= bound
    if max_pixels == 4 * 224 * 224:
        assert worst == bound == 11522  # reached by square frames


# --- batches and checkpoints --------------------------------------------------------------------------------


def test_batched_estimates_equal_one_by_one():
    tokenizer = build_tiny_tokenizer("llama")
    samples = [
        sample(features(3)),
        sample(turns=(("user", "Tell me a story."), ("assistant", "Once upon a time."))),
        sample(features(0), features(9), turns=(("user", "<image><image>Compare."), ("assistant", "Same."))),
    ]
    for budget in (default_budget("star"), default_budget("star", tokenizer=tokenizer)):
        assert estimate_lengths(samples, budget) == [estimate_length(s, budget) for s in samples]


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    for variant in ("star-vicuna", "flash-qwen2vl"):
        tiny_variants()[variant].resolve("make_tiny")(
            out / variant, variant=variant, layout="own", weights_format="safetensors", seed=0
        )
    return out


def test_budget_for_checkpoint_reads_config_and_tokenizer(tiny_checkpoints, tmp_path):
    star = budget_for_checkpoint(tiny_checkpoints / "star-vicuna")
    assert (star.family, star.text.template, star.text.counter.name) == ("star", "vicuna_v1", "tokenizer")
    assert star.visual.memory.feature_dim == 32  # the tiny CLIP's width
    assert star.visual.tokens(Media("features", Path("/x"), 3, (3, 256, 32))) == 226
    with pytest.raises(UnusableMediaError, match=r"takes \(T, 256, 32\)"):
        star.visual.tokens(features(3))
    words = budget_for_checkpoint(tiny_checkpoints / "star-vicuna", "plain", use_tokenizer=False)
    assert (words.text.template, words.text.counter.name) == ("plain", "words")
    flash = budget_for_checkpoint(tiny_checkpoints / "flash-qwen2vl")
    assert (flash.family, flash.text.template) == ("flash", "chat_template")
    assert flash.visual.tokens(Media("video", Path("/v.mp4"))) == 11522
    no_weights = tmp_path / "config_and_tokenizer_only"
    shutil.copytree(tiny_checkpoints / "flash-qwen2vl", no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    assert budget_for_checkpoint(no_weights).visual.tokens(Media("video", Path("/v.mp4"))) == 11522  # no weights read
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        budget_for_checkpoint(tmp_path / "nothing")
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(ValueError, match="model_type 'llava'"):
        budget_for_checkpoint(tmp_path)


def test_star_budget_checks_feature_shapes_at_load(tmp_path, tiny_checkpoints):
    write_features(tmp_path / "a.safetensors", (2, 256, 32))
    write_features(tmp_path / "b.safetensors", (2, 256, 1024))
    rows = [{"id": n, "video": f"{n}.mp4", "conversations": [turn("human", "Hi"), turn("gpt", "Yo")]} for n in "ab"]
    budget = budget_for_checkpoint(tiny_checkpoints / "star-vicuna")
    data = load_samples(write_jsonl(tmp_path / "d.jsonl", rows), tmp_path, media_check=budget.check_media)
    assert [s.id for s in data.samples] == ["a"] and dict(data.skipped) == {"unsupported_media": 1}
