"""``flash-vstream extract-features``: exact layout, values, shards, resume after a kill, failures, mixtures."""

import json
import os
from pathlib import Path

import pytest
import torch
from extractfixtures import EXPECTED_FRAMES, GOOD_TARGETS, data_tree, extract, row, write_jsonl, write_video
from safetensors import safe_open
from safetensors.torch import load_file

from flash_vstream.families import get_family
from flash_vstream.model.checkpoints import load_star_model
from flash_vstream.model.tiny import make_tiny_star
from flash_vstream.train.data import load_samples
from flash_vstream.train.extraction import REPORT_NAME, plan_extraction, shard
from flash_vstream.train.feature_store import EXTRACTOR_KEY, partial_path
from flash_vstream.train.mixture import load_mixture
from flash_vstream.video.reader import read_video
from flash_vstream.vision.clip import CLIPFrameProcessor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_star(tmp_path_factory.mktemp("ckpt") / "star", seed=0)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return data_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def extracted(tree, checkpoint, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("out") / "features"
    code = extract(["--data", str(tree), "--media-root", str(tree.parent / "media"), "--out", str(out),
                    "--model", str(checkpoint), "--workers", "2"])  # fmt: skip
    return out, code


def args(tree: Path, out: Path, checkpoint: Path, *more: str) -> list[str]:
    return ["--data", str(tree), "--media-root", str(tree.parent / "media"), "--out", str(out),
            "--model", str(checkpoint), *more]  # fmt: skip


def report(out: Path) -> dict:
    return json.loads((out / REPORT_NAME).read_text())


def contents(path: Path) -> tuple[bytes, dict]:
    """A features file's tensor bytes and metadata (safetensors orders header keys differently from run to run)."""
    with safe_open(str(path), "pt") as handle:
        return handle.get_tensor("feature").numpy().tobytes(), handle.metadata()


def feature_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != REPORT_NAME)


# ----------------------------------------------------------------------------------------------------------
# Layout and values
# ----------------------------------------------------------------------------------------------------------


def test_layout_shapes_and_dtype(extracted):
    out, code = extracted
    assert code == 1  # the broken video failed; everything else was written
    assert feature_files(out) == sorted([*GOOD_TARGETS, "feats/old.safetensors"])
    for name, frames in EXPECTED_FRAMES.items():
        with safe_open(str(out / name), "pt") as handle:
            assert list(handle.keys()) == ["feature"]
            feature = handle.get_tensor("feature")
        assert feature.dtype == torch.float16 and tuple(feature.shape) == (frames, 256, 32), name
    image = load_file(str(out / "images/cat.safetensors"))["feature"]
    assert image.dtype == torch.float16 and tuple(image.shape) == (256, 32)


def test_values_are_the_models_own_vision_tower(extracted, tree, checkpoint):
    """Each file holds fp16(model.encode_frames(pixels)) of the frames the STAR sampler picks, bit for bit."""
    out, _ = extracted
    model = load_star_model(checkpoint)  # the whole model, loaded the ordinary way
    config = model.config
    processor = CLIPFrameProcessor.from_vision_config(config.vision_config, aspect=config.image_aspect_ratio)
    sampler = get_family("star").sampler.build()
    media = tree.parent / "media"
    sources = {"videos/a.safetensors": "videos/a.mp4", "videos/b.safetensors": "videos/b.mp4",
               "frames/split_2.safetensors": "frames/split_2", "images/cat.safetensors": "images/cat.jpg"}  # fmt: skip
    for name, source in sources.items():
        frames = read_video(media / source, sampler=sampler).frames
        with torch.no_grad():
            expected = model.encode_frames(processor(frames)).to(torch.float16)
        if name.startswith("images/"):
            expected = expected[0]
        assert torch.equal(load_file(str(out / name))["feature"], expected), name


def test_metadata_names_the_extractor_and_the_frames(extracted):
    out, _ = extracted
    with safe_open(str(out / "videos/a.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert len(meta[EXTRACTOR_KEY]) == 16
    assert json.loads(meta["frame_indices"]) == [0, 6, 11]  # 12 frames at 4 fps -> 3 s at 1 fps
    assert (meta["source"], meta["fps"], meta["select_layer"], meta["image_aspect_ratio"]) == (
        "videos/a.mp4", "1.0", "-2", "pad")  # fmt: skip


def test_training_reads_the_output_directly(extracted, tree):
    """The same data file with --media-root OUT resolves every usable row to its features."""
    out, _ = extracted
    before = load_samples(tree, tree.parent / "media")
    after = load_samples(tree, out)
    usable_before = {s.id for s in before.samples} - {"bad1", "bad2"}
    assert {s.id for s in after.samples} == usable_before
    frames = {s.id: [(m.kind, m.num_frames) for m in s.media] for s in after.samples}
    assert frames == {"a": [("features", 3)], "b1": [("features", 2)], "b2": [("features", 2)],
                      "split": [("features", 4)], "cat": [("features", 1)], "old": [("features", 2)],
                      "text": []}  # fmt: skip
    assert dict(after.skipped) == {"missing_media": 3}  # the missing video, and the broken one in its two rows


def test_summary_report(extracted):
    out, _ = extracted
    record = report(out)
    assert (record["media"], record["extracted"], record["copied_features"], record["skipped_existing"]) == (6, 4, 1, 0)
    assert (record["rows"], record["samples"], record["frames"]) == (10, 9, 3 + 2 + 4 + 1)
    assert record["rows_not_used"] == {"missing_media": 1}
    # The broken video is used by two rows and reported once, naming the file.
    assert [f["file"] for f in record["failed"]] == ["videos/bad.safetensors"]
    assert "bad.mp4" in record["failed"][0]["reason"]


# ----------------------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------------------


def test_a_killed_run_resumes_and_finishes(tmp_path, tree, checkpoint, capsys):
    out = tmp_path / "out"
    assert extract(args(tree, out, checkpoint)) == 1
    reference = {name: contents(out / name) for name in GOOD_TARGETS}
    # The kill: one file was being written (only its temp file exists), one is truncated (written by another
    # tool without an atomic rename), and an old run left a temp file of a medium no longer in the data.
    (out / "videos/a.safetensors").unlink()
    partial_path(out / "videos/a.safetensors").write_bytes(b"half a tensor")
    truncated = out / "frames/split_2.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    orphan = partial_path(out / "gone/old.safetensors")
    orphan.parent.mkdir()
    orphan.write_bytes(b"x")
    untouched = {name: os.stat(out / name) for name in ("videos/b.safetensors", "images/cat.safetensors")}
    capsys.readouterr()

    assert extract(args(tree, out, checkpoint)) == 1  # the broken video still fails
    record = report(out)
    assert (record["extracted"], record["replaced_incomplete"], record["skipped_existing"]) == (2, 1, 3)
    assert record["removed_partials"] == 1  # this shard's own; the orphan is removed by rank 0 on its own
    assert not list(out.rglob("*.partial"))
    assert {name: contents(out / name) for name in GOOD_TARGETS} == reference
    for name, stat in untouched.items():  # finished files are not written again
        assert (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert "replacing incomplete files" in capsys.readouterr().out


def fingerprint(path: Path) -> str:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()[EXTRACTOR_KEY]


def test_files_of_another_extractor_are_refused_then_overwritten(tmp_path, tree, checkpoint):
    out = tmp_path / "out"
    assert extract(args(tree, out, checkpoint)) == 1
    first = fingerprint(out / "videos/a.safetensors")
    other = make_tiny_star(tmp_path / "other", seed=1)  # other weights: another fingerprint
    assert extract(args(tree, out, other)) == 1
    record = report(out)
    assert record["extracted"] == 0 and record["skipped_existing"] == 1  # only the linked features count as done
    refused = sorted(f["file"] for f in record["failed"] if "not by this extractor" in f["reason"])
    assert refused == sorted(GOOD_TARGETS)
    assert all("--overwrite" in f["reason"] for f in record["failed"] if f["file"] in refused)
    assert fingerprint(out / "videos/a.safetensors") == first  # refused files are left as they are
    assert extract(args(tree, out, other, "--overwrite")) == 1
    assert report(out)["extracted"] == 4
    assert fingerprint(out / "videos/a.safetensors") != first
    assert extract(args(tree, out, other)) == 1 and report(out)["skipped_existing"] == 5


# ----------------------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------------------


def test_shards_cover_every_medium_exactly_once(tree, tmp_path):
    plan = plan_extraction(tree, tree.parent / "media", tmp_path / "out")
    names = [job.name for job in plan.jobs]
    assert names == ["videos/a.safetensors", "videos/b.safetensors", "frames/split_2.safetensors",
                     "images/cat.safetensors", "videos/bad.safetensors", "feats/old.safetensors"]  # fmt: skip
    assert [job.name for job in plan_extraction(tree, tree.parent / "media", tmp_path / "out").jobs] == names
    for world in (1, 2, 3, 4, 7):
        shards = [[job.name for job in shard(plan.jobs, rank, world)] for rank in range(world)]
        assert sorted(n for s in shards for n in s) == sorted(names)  # every medium once, none twice
        for rank, mine in enumerate(shards):
            assert mine == names[rank::world]
    with pytest.raises(ValueError, match="rank"):
        shard(plan.jobs, 2, 2)


# ----------------------------------------------------------------------------------------------------------
# Collisions, mixtures, bad input
# ----------------------------------------------------------------------------------------------------------


def test_two_media_for_one_file_both_fail(tmp_path, checkpoint):
    media = tmp_path / "media"
    write_video(media / "clip.mp4", frames=4)
    write_video(media / "clip.mkv", frames=8, seed=3)
    data = write_jsonl(tmp_path / "d.jsonl", [row("1", "video", "clip.mp4"), row("2", "video", "clip.mkv")])
    assert extract(["--data", str(data), "--media-root", str(media), "--out", str(tmp_path / "out"),
                    "--model", str(checkpoint)]) == 1  # fmt: skip
    record = report(tmp_path / "out")
    assert record["extracted"] == 0 and len(record["failed"]) == 1
    assert "'clip.mp4' and 'clip.mkv'" in record["failed"][0]["reason"]
    assert not (tmp_path / "out" / "clip.safetensors").exists()


def test_mixture_output_mirrors_the_data_root(tmp_path, checkpoint):
    root = tmp_path / "data"
    write_video(root / "raw" / "videos" / "v.mp4", frames=8)
    write_video(root / "other" / "w.mp4", frames=12, seed=5)
    from extractfixtures import write_image

    write_image(root / "raw" / "images" / "i.jpg", seed=1)
    write_jsonl(root / "one.jsonl", [row("v", "video", "v.mp4"), row("i", "image", "i.jpg")])
    write_jsonl(root / "sub" / "two.jsonl", [row("w", "video", "w.mp4"), row("t")])
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(
        "seed: 3\nsources:\n"
        "  - {path: one.jsonl, video_root: raw/videos, image_root: raw/images}\n"
        "  - {path: sub/two.jsonl, media_root: other, strategy: first, count: 2}\n"
    )
    out = tmp_path / "features"
    assert extract(["--data", str(mixture), "--media-root", str(root), "--out", str(out),
                    "--model", str(checkpoint)]) == 0  # fmt: skip
    assert feature_files(out) == ["mix.yaml", "other/w.safetensors", "raw/images/i.safetensors",
                                  "raw/videos/v.safetensors"]  # fmt: skip
    original = load_mixture(mixture, root)
    rewritten = load_mixture(out / "mix.yaml")  # its data root defaults to its own folder: the features
    assert [s.id for s in rewritten.samples] == [s.id for s in original.samples] == ["v", "i", "w", "t"]
    kinds = [(s.id, m.kind, m.num_frames) for s in rewritten.samples for m in s.media]
    assert kinds == [("v", "features", 2), ("i", "features", 1), ("w", "features", 3)]
    assert (out / "mix.yaml").read_text().startswith(f"# flash-vstream data check --data {out / 'mix.yaml'}")


def test_out_must_not_be_the_data_root(tree, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="beside the media of"):
        extract(["--data", str(tree), "--media-root", str(tree.parent / "media"),
                 "--out", str(tree.parent / "media"), "--model", str(checkpoint)])  # fmt: skip
    # A mixture reading media from a sub-folder of the data root: --out at the data root mirrors it onto itself.
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(f"sources:\n  - {{path: {tree}, media_root: media}}\n")
    with pytest.raises(ValueError, match="beside the media of"):
        extract(["--data", str(mixture), "--media-root", str(tree.parent), "--out", str(tree.parent),
                 "--model", str(checkpoint)])  # fmt: skip
    # A media root outside the data root has no place under --out.
    outside = tmp_path / "outside.yaml"
    outside.write_text(f"sources:\n  - {{path: {tree}, media_root: ..}}\n")
    with pytest.raises(ValueError, match="outside the data root"):
        extract(["--data", str(outside), "--media-root", str(tree.parent / "media" / "videos"),
                 "--out", str(tmp_path / "out"), "--model", str(checkpoint)])  # fmt: skip


def test_a_symlinked_media_root_is_mirrored_by_its_name(tree, checkpoint, tmp_path):
    """``data/media -> /elsewhere``: the features go to OUT/media/..., where the same mixture finds them."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "media").symlink_to(tree.parent / "media")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(f"sources:\n  - {{path: {tree}, media_root: media}}\n")
    out = tmp_path / "out"
    assert extract(["--data", str(mixture), "--media-root", str(tmp_path / "data"), "--out", str(out),
                    "--model", str(checkpoint)]) == 1  # fmt: skip
    assert (out / "media" / "videos" / "a.safetensors").is_file()
    kinds = {m.kind for s in load_mixture(out / "mix.yaml").samples for m in s.media}
    assert kinds == {"features"}


def test_aspect_ratio_comes_from_the_model(tree, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        extract(args(tree, tmp_path / "o", checkpoint, "--image-aspect-ratio", "crop"))
    with pytest.raises(SystemExit):  # argparse: --model and --vision-tower exclude each other
        extract(args(tree, tmp_path / "o", checkpoint, "--vision-tower", str(checkpoint)))


def test_strict_stops_at_the_first_unusable_row(tree, checkpoint, tmp_path):
    from flash_vstream.train.data import MissingMediaError

    with pytest.raises(MissingMediaError, match="gone.mp4"):
        extract(args(tree, tmp_path / "o", checkpoint, "--strict"))
    assert not (tmp_path / "o").exists()  # nothing was written before the data was known to be good
