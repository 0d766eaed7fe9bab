"""Data records: both published row formats load as they are; media stay in the root; skips are exact."""

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from trainfixtures import (
    QWEN_ROWS,
    STAGE1_ROWS,
    llava_tree,
    qwen_tree,
    turn,
    write_features,
    write_frames,
    write_header_only_features,
    write_image,
    write_json,
    write_jsonl,
)

from flash_vstream.train.data import (
    DataError,
    Media,
    MissingMediaError,
    Sample,
    Turn,
    UnusableMediaError,
    load_samples,
    read_feature_shape,
)

ASSET_VIDEO = Path(__file__).resolve().parents[2] / "assets" / "sample.mp4"


def qa(question="<image>\nWhat is shown?", answer="A red car.", **media):
    return {"id": "x", **media, "conversations": [turn("human", question), turn("gpt", answer)]}


def rows_file(tmp_path, rows, name="data.jsonl"):
    return write_jsonl(tmp_path / name, rows)


# --- the published row formats ------------------------------------------------------------------------------


def test_llava_stage1_json_with_feature_folders_loads_as_published(tmp_path):
    root = llava_tree(tmp_path)
    data = load_samples(
        root / "pretrain" / "llava_558k_with_webvid.json",
        root / "pretrain" / "video_features",
        image_root=root / "pretrain" / "image_features",
    )
    assert (data.rows, data.skipped, data.issues) == (2, Counter(), [])
    source = str(root / "pretrain" / "llava_558k_with_webvid.json")
    image_feature = (root / "pretrain" / "image_features" / "00453" / "004539375.safetensors").resolve()
    video_feature = (root / "pretrain" / "video_features" / "webvid" / "1026004934.safetensors").resolve()
    # json.dumps(indent=2): "[" on line 1, each row object spans 14 lines.
    assert data.samples == [
        Sample(
            "004539375",
            (Media("features", image_feature, num_frames=1, shape=(256, 1024)),),
            (
                Turn("user", "Render a clear and concise summary of the photo.\n<image>"),
                Turn("assistant", "select luxury furniture 3 - inch gel memory foam mattress topper"),
            ),
            source,
            2,
        ),
        Sample(
            "1026004934",
            (Media("features", video_feature, num_frames=3, shape=(3, 256, 1024)),),
            (
                Turn("user", "<image>\nGive a brief explanation of the video."),
                Turn("assistant", "Aerial view of a forest in autumn."),
            ),
            source,
            16,
        ),
    ]
    assert json.loads((root / "pretrain" / "llava_558k_with_webvid.json").read_text()) == STAGE1_ROWS


def test_llava_stage2_mix_multi_turn_text_only_and_video_rows(tmp_path):
    root = llava_tree(tmp_path)
    data = load_samples(
        root / "finetune" / "llava_v1_5_mix665k_with_video_chatgpt.json",
        root / "finetune" / "video_features",
        image_root=root / "finetune" / "image_features",
    )
    assert data.skipped == Counter()
    image, text_only, video = data.samples
    assert [t.role for t in image.turns] == ["user", "assistant", "user", "assistant"]
    assert image.media[0].kind == "features" and image.media[0].num_frames == 1
    assert text_only.media == () and text_only.turns[0].text.startswith("How to tell")
    assert video.media == (
        Media(
            "features",
            (root / "finetune" / "video_features" / "v_k_ZXmr8pmrs.safetensors").resolve(),
            num_frames=2,
            shape=(2, 256, 1024),
        ),
    )
    assert video.turns[0].text == "<image>\nWhat is the man doing in the video?"  # <video> written as the marker


def test_qwen_recipe_rows_video_mp4_names_and_videos_lists_of_frame_folders(tmp_path):
    root = qwen_tree(tmp_path, frames=(6, 4))
    data = load_samples(root / "trainset.json", root / "frames")
    assert data.skipped == Counter()
    first, second = data.samples
    frames = (root / "frames").resolve()
    # "academic_source/activitynet/v_-5ZX-hQJ1Xs.mp4" names the frames extracted into ".../v_-5ZX-hQJ1Xs/".
    assert first.media == (Media("frames", frames / "academic_source" / "activitynet" / "v_-5ZX-hQJ1Xs", 6),)
    assert second.media == (Media("frames", frames / "liwei_youtube_videos" / "ytb_7nRmsEw7nsE" / "split_2", 4),)
    assert [t.role for t in second.turns] == ["user", "assistant", "user", "assistant"]
    assert (first.line, second.line) == (1, 1)  # one-line JSON list
    assert first.turns[1] == Turn("assistant", "B.")
    assert json.loads((root / "trainset.json").read_text()) == QWEN_ROWS


def test_media_kinds_come_from_the_filesystem_not_from_words_in_the_path(tmp_path):
    media = tmp_path / "media"
    (media / "features").mkdir(parents=True)
    os.link(ASSET_VIDEO, media / "features" / "clip.mp4")  # a video inside a folder named "features"
    write_frames(media / "video_features.mp4", 3)  # a frame folder whose name ends in .mp4
    write_image(media / "frames.jpg")
    write_features(media / "x" / "clip.safetensors", (5, 256, 1024))
    rows = [
        qa(video="features/clip.mp4"),
        qa(video="video_features.mp4"),
        qa(image="frames.jpg"),
        qa(video="x/clip.safetensors"),
        qa(videos=["x/clip.mp4"]),  # no clip.mp4 there: the .safetensors sibling (LLaVA feature folders)
    ]
    data = load_samples(rows_file(tmp_path, rows), media)
    assert [(m.kind, m.num_frames) for s in data.samples for m in s.media] == [
        ("video", None),
        ("frames", 3),
        ("image", 1),
        ("features", 5),
        ("features", 5),
    ]


# --- placeholders -------------------------------------------------------------------------------------------


def test_placeholders_added_when_absent_counted_otherwise(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_frames(tmp_path / "f1", 2)
    write_frames(tmp_path / "f2", 2)
    rows = [
        qa(question="What is shown?", image="a.jpg"),
        qa(question="Compare them.", videos=["f1", "f2"]),
        qa(question="<video> and <image>: compare.", videos=["f1", "f2"]),
        qa(question="<image>\n<image>\nWhat?", image="a.jpg"),
        qa(question="<image> what?"),
        {"id": 7, "image": "a.jpg", "conversations": [turn("human", "Hi"), turn("gpt", "See <image>.")]},
    ]
    data = load_samples(rows_file(tmp_path, rows), tmp_path)
    assert [s.turns[0].text for s in data.samples] == [
        "<image>\nWhat is shown?",
        "<image>\n<image>\nCompare them.",
        "<image> and <image>: compare.",
    ]
    assert data.skipped == Counter(malformed=3)
    assert [(i.line, i.message) for i in data.issues] == [
        (4, "2 <image>/<video> placeholder(s) for 1 medium; make the counts equal"),
        (5, "1 <image>/<video> placeholder(s) for 0 media; make the counts equal"),
        (6, "turn 1 (assistant) holds an <image>/<video> placeholder"),
    ]


# --- malformed rows -----------------------------------------------------------------------------------------


def test_malformed_rows_are_counted_and_named_with_file_and_line(tmp_path):
    write_image(tmp_path / "a.jpg")
    good = qa(image="a.jpg")
    rows = [
        good,
        '{"id": "broken", "conversations": [',
        "",
        ["not", "an", "object"],
        {"conversations": good["conversations"]},
        {"id": "a", "conversations": []},
        {"id": "b", "conversations": [turn("system", "hi"), turn("gpt", "x")]},
        {"id": "c", "conversations": [turn("gpt", "x"), turn("human", "y")]},
        {"id": "d", "conversations": [turn("human", "x"), turn("gpt", "y"), turn("human", "z")]},
        {"id": "e", "image": "a.jpg", "video": "a.jpg", "conversations": good["conversations"]},
        {"id": "f", "videos": [], "conversations": good["conversations"]},
        {"id": "g", "conversations": [{"from": "human", "value": 3}, turn("gpt", "y")]},
        good,
    ]
    path = rows_file(tmp_path, rows)
    data = load_samples(path, tmp_path)
    assert data.rows == 12  # the blank line is not a row
    assert len(data.samples) == 2 and [s.line for s in data.samples] == [1, 13]
    assert data.skipped == Counter(malformed=10)
    assert [str(i) for i in data.issues] == [
        f"{path}:2: not valid JSON (Expecting value at column 36)",
        f"{path}:4: the row is a JSON list, expected an object",
        f"{path}:5: 'id' must be a non-empty string or an integer, got None",
        f"{path}:6: 'conversations' must be a non-empty list of {{'from', 'value'}} turns",
        f"{path}:7: turn 0 has 'from': 'system'; use human/user or gpt/assistant",
        f"{path}:8: turn 0 is from 'gpt' but should be the user: turns alternate, starting with the user",
        f"{path}:9: the conversation ends with a user turn; the last turn must be the assistant's",
        f"{path}:10: the row has 'image' and 'video'; keep one of them",
        f"{path}:11: 'videos' must be a path or a non-empty list of paths",
        f"{path}:12: turn 0 must be an object with a string 'value'",
    ]
    with pytest.raises(DataError, match=rf"^{path}:2: not valid JSON .*; fix or drop the row"):
        load_samples(path, tmp_path, strict=True)


def test_a_broken_json_list_names_its_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"id": "a", "conversations": []},\n  {"id": "b",, }\n]\n')
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
        load_samples(path, tmp_path)
    path.write_text('[\n  {"id": "a"}\n  {"id": "b"}\n]\n')
    with pytest.raises(DataError, match=rf"{path}:3: expected ',' or ']'"):
        load_samples(path, tmp_path)


def test_missing_data_file_and_media_root_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file .*nope.json does not exist"):
        load_samples(tmp_path / "nope.json", tmp_path)
    path = rows_file(tmp_path, [qa()])
    with pytest.raises(FileNotFoundError, match="media root .*absent is not a folder"):
        load_samples(path, tmp_path / "absent")


# --- media: safety and skips --------------------------------------------------------------------------------


def make_skip_tree(tmp_path):
    """A media root with usable media plus one case of every skip reason (and an outside folder)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_image(root / "ok.jpg")
    write_frames(root / "clip", 3)
    write_image(outside / "secret.jpg")
    write_frames(outside / "frames", 2)
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "escape_dir").symlink_to(outside / "frames", target_is_directory=True)
    (root / "inside.jpg").symlink_to(root / "ok.jpg")  # a symlink that stays inside: fine
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not media")
    (root / "garbage.safetensors").write_bytes(b"\x00" * 3)
    save_file({"pixels": np.zeros((2, 4), np.float16)}, str(root / "other.safetensors"))
    return root, outside


def skip_rows(outside):
    return [
        qa(image="ok.jpg"),  # 1 usable
        qa(video="clip"),  # 2 usable
        qa(image="inside.jpg"),  # 3 usable
        qa(image="gone.jpg"),  # 4 missing_media
        qa(question="Compare.", videos=["clip", "gone/clip.mp4"]),  # 5 missing_media (second medium)
        qa(image=str(outside / "secret.jpg")),  # 6 unsafe_path (absolute)
        qa(image="../outside/secret.jpg"),  # 7 unsafe_path (..)
        qa(image="escape.jpg"),  # 8 unsafe_path (symlinked file)
        qa(video="escape_dir"),  # 9 unsafe_path (symlinked folder)
        qa(video="empty"),  # 10 no_frames
        qa(video="notes.txt"),  # 11 unknown_media
        qa(video="garbage.safetensors"),  # 12 bad_features
        qa(video="clip/../ok.jpg"),  # 13 unsafe_path (.. even when it would stay inside)
        qa(video="other.safetensors"),  # 14 bad_features (no "feature" tensor)
    ]


def test_skip_counts_per_reason_are_exact(tmp_path):
    root, outside = make_skip_tree(tmp_path)
    path = rows_file(tmp_path, skip_rows(outside))
    data = load_samples(path, root)
    assert [s.line for s in data.samples] == [1, 2, 3]
    assert data.samples[2].media[0].path == (root / "ok.jpg").resolve()
    assert data.skipped == Counter(missing_media=2, unsafe_path=5, no_frames=1, unknown_media=1, bad_features=2)
    assert [(i.line, i.reason) for i in data.issues] == [
        (4, "missing_media"),
        (5, "missing_media"),
        (6, "unsafe_path"),
        (7, "unsafe_path"),
        (8, "unsafe_path"),
        (9, "unsafe_path"),
        (10, "no_frames"),
        (11, "unknown_media"),
        (12, "bad_features"),
        (13, "unsafe_path"),
        (14, "bad_features"),
    ]
    messages = {i.line: i.message for i in data.issues}
    assert messages[6].endswith("is absolute; write it relative to the media root")
    assert messages[8] == f"media path 'escape.jpg' leaves the media root {root.resolve()} through a symlink"
    assert messages[4] == f"medium 'gone.jpg' not found under {root.resolve()} (tried 'gone.jpg', 'gone.safetensors')"
    assert messages[14] == (
        f"medium 'other.safetensors': {root.resolve()}/other.safetensors: expected a 2-D or 3-D non-empty tensor "
        "'feature' (tensors: ['pixels'], shape: None); write features as {'feature': (T, 256, 1024)}"
    )


def test_escaping_paths_never_resolve_outside_even_when_the_target_exists(tmp_path):
    root, outside = make_skip_tree(tmp_path)
    data = load_samples(rows_file(tmp_path, skip_rows(outside)), root)
    real_root = str(root.resolve())
    for sample in data.samples:
        for medium in sample.media:
            assert str(medium.path).startswith(real_root + os.sep)


def test_strict_raises_the_first_problem_with_file_line_and_fix(tmp_path):
    root, outside = make_skip_tree(tmp_path)
    path = rows_file(tmp_path, skip_rows(outside))
    with pytest.raises(MissingMediaError, match=rf"^{path}:4: medium 'gone.jpg' not found .*check the media root"):
        load_samples(path, root, strict=True)
    assert issubclass(MissingMediaError, FileNotFoundError) and issubclass(MissingMediaError, ValueError)
    path = rows_file(tmp_path, skip_rows(outside)[5:], name="unsafe.jsonl")
    with pytest.raises(DataError, match=rf"^{path}:1: media path .* is absolute.*without '\.\.' or symlinks"):
        load_samples(path, root, strict=True)


def test_media_check_skips_under_its_reason(tmp_path):
    write_features(tmp_path / "f.safetensors", (2, 256, 1024))
    write_image(tmp_path / "a.jpg")

    def no_features(medium):
        if medium.kind == "features":
            raise UnusableMediaError("features are not for this model")

    data = load_samples(rows_file(tmp_path, [qa(video="f.mp4"), qa(image="a.jpg")]), tmp_path, media_check=no_features)
    assert [s.line for s in data.samples] == [2]
    assert data.skipped == Counter(unsupported_media=1)
    assert data.issues[0].message == "features are not for this model"


def test_feature_shape_comes_from_the_header_alone(tmp_path):
    # The file announces (1800, 256, 1024) but holds no tensor bytes: only a header-only reader succeeds.
    path = write_header_only_features(tmp_path / "long.safetensors", (1800, 256, 1024))
    assert path.stat().st_size < 200
    assert read_feature_shape(path) == (1800, 256, 1024)
    data = load_samples(rows_file(tmp_path, [qa(video="long.mp4")]), tmp_path)
    assert data.samples[0].media[0].num_frames == 1800
    with pytest.raises(UnusableMediaError, match="expected a 2-D or 3-D non-empty tensor 'feature'"):
        read_feature_shape(write_features(tmp_path / "flat.safetensors", (7,)))


def test_a_symlink_to_a_suffixless_blob_keeps_the_kind_of_its_name(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    shutil.copy(ASSET_VIDEO, blobs / "3f9a0c")
    (tmp_path / "clip.mp4").symlink_to(blobs / "3f9a0c")
    data = load_samples(rows_file(tmp_path, [qa(video="clip.mp4")]), tmp_path)
    assert data.samples[0].media == (Media("video", (blobs / "3f9a0c").resolve()),)


def test_the_same_medium_is_resolved_once(tmp_path):
    write_json(tmp_path / "d.json", [qa(image="a.jpg")] * 3)
    write_image(tmp_path / "a.jpg")
    data = load_samples(tmp_path / "d.json", tmp_path)
    assert len({id(s.media[0]) for s in data.samples}) == 1  # one cached Media object


def test_samples_survive_pickling_for_data_loader_workers(tmp_path):
    import pickle

    root = qwen_tree(tmp_path)
    samples = load_samples(root / "trainset.json", root / "frames").samples
    assert pickle.loads(pickle.dumps(samples)) == samples


def test_a_byte_order_mark_and_windows_line_ends_are_tolerated(tmp_path):
    write_image(tmp_path / "a.jpg")
    path = tmp_path / "bom.jsonl"
    path.write_bytes(("\ufeff" + json.dumps(qa(image="a.jpg")) + "\r\n" + json.dumps(qa()) + "\r\n").encode())
    data = load_samples(path, tmp_path)
    assert [s.line for s in data.samples] == [1] and dict(data.skipped) == {"malformed": 1}
    assert data.issues[0].line == 2  # text-only row with a placeholder
