"""``eval run --benchmark inf_streams``: real tiny videos streamed through an injected commentary function.

The commentary function is a scripted stand-in for the StreamingVLM one (same call shape: ``commentate(vs, frames,
*, previous_text, query)`` yielding ``Commentary(start, end, text)`` lazily, one per second of frames).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, replace

import pytest
import torch
from evalfixtures import fake_checkpoint, make_video, write_jsonl

from flash_vstream.cli import main
from flash_vstream.distributed import DistInfo
from flash_vstream_eval.inf_streams import InfStreamsSettings, read_commentary, window_text
from flash_vstream_eval.inf_streams_run import COMMENTARY_API, default_commentator, run_inf_streams
from flash_vstream_eval.run_folder import RunFolderError

DIST = DistInfo(0, 0, 1, torch.device("cpu"))
# Windows of 4 s from t=2, at least 2 words: (2,6] "a b" kept, (6,10] "c" dropped, (10,14] "d e f" kept.
CONTENT = [[1, 1.5, "pre"], [3, 3.5, "a"], [4, 4.5, "b"], [7, 7.5, "c"], [11, 11.5, "d"], [12, 13, "e"],
           [13, 14, "f"]]
CHUNK = InfStreamsSettings(window=4.0, min_words=2, start=2.0, mode="chunk", fps=2.0, query="Go!")
INFINITE = InfStreamsSettings(window=4.0, min_words=2, start=2.0, mode="infinite", fps=2.0, query="Go!")


@dataclass(frozen=True)
class Commentary:
    start: float
    end: float
    text: str


class Commentator:
    """Says ``s<second>`` at the first frame of each second (silent on multiples of 3); records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, vs, frames, *, previous_text="", query=""):
        call = {"vs": vs, "previous_text": previous_text, "query": query, "times": []}
        self.calls.append(call)
        second = None
        for frame, seconds in frames:
            assert frame.shape == (64, 64, 3)
            call["times"].append(seconds)
            if int(seconds) != second:
                second = int(seconds)
                yield Commentary(second, second + 1, "" if second % 3 == 0 else f"s{second}")


@pytest.fixture(scope="module")
def game_video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("games") / "g.mp4", frames=24, fps=2)  # 12 s, last frame 11.5 s


def data_root(tmp_path, video):
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    os.link(video, root / "g1.mp4")
    os.link(video, root / "videos" / "g3.mp4")  # named by an absolute path of another machine: found by file name
    write_jsonl(root / "eval_all_metadata.jsonl", [
        {"video": "g1.mp4", "title": "Final", "content": CONTENT},
        {"video": "g2.mp4", "title": "Semi", "content": CONTENT},  # not there (yet)
        {"video": "/NFS/raid0/games/g3.mp4", "content": CONTENT[:3]},  # one window: (2,6]
    ])
    return root


def records(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_chunk_mode_streams_each_window_from_one_pass(tmp_path, game_video):
    root, out, fake = data_root(tmp_path, game_video), tmp_path / "run", Commentator()
    results = run_inf_streams("model-object", root, out, CHUNK, commentate=fake, progress=False, dist=DIST)
    halves = [t / 2 for t in range(4, 12)]
    assert [(c["previous_text"], c["query"], c["times"]) for c in fake.calls] == [
        ("pre", "Go!", halves),  # (2, 6]: frames 2.0 .. 5.5, reference before 2 s as previous text
        ("pre a b c", "Go!", [10.0, 10.5, 11.0, 11.5]),  # (10, 14]: the video ends at 12 s
        ("pre", "Go!", halves),  # g3
    ]
    assert {c["vs"] for c in fake.calls} == {"model-object"}
    assert records(out) == [
        {"id": "g1.mp4@2-6", "video": "g1.mp4", "span": [2.0, 6.0], "prediction": "s2 s4 s5",
         "commentary": [[2.0, 3.0, "s2"], [3.0, 4.0, ""], [4.0, 5.0, "s4"], [5.0, 6.0, "s5"]], "frames": 8},
        {"id": "g1.mp4@10-14", "video": "g1.mp4", "span": [10.0, 12.0], "prediction": "s10 s11",
         "commentary": [[10.0, 11.0, "s10"], [11.0, 12.0, "s11"]], "frames": 4},
        {"id": "g2.mp4@2-6", "video": "g2.mp4", "skipped": "missing video: g2.mp4"},
        {"id": "g2.mp4@10-14", "video": "g2.mp4", "skipped": "missing video: g2.mp4"},
        {"id": "/NFS/raid0/games/g3.mp4@2-6", "video": "/NFS/raid0/games/g3.mp4", "span": [2.0, 6.0],
         "prediction": "s2 s4 s5", "commentary": [[2.0, 3.0, "s2"], [3.0, 4.0, ""], [4.0, 5.0, "s4"],
                                                  [5.0, 6.0, "s5"]], "frames": 8},
    ]
    assert results["counts"] == {"items": 5, "predicted": 3, "skipped": 2}
    # Resume: nothing streamed again; a video added since is streamed, and only its game.
    again = Commentator()
    run_inf_streams("model-object", root, out, CHUNK, commentate=again, progress=False, dist=DIST)
    assert again.calls == []
    os.link(game_video, root / "g2.mp4")
    results = run_inf_streams("model-object", root, out, CHUNK, commentate=again, progress=False, dist=DIST)
    assert len(again.calls) == 2 and results["counts"] == {"items": 5, "predicted": 5, "skipped": 0}
    with pytest.raises(RunFolderError, match="settings.mode: 'chunk' -> 'infinite'"):
        run_inf_streams("model-object", root, out, INFINITE, commentate=again, progress=False, dist=DIST)


def test_infinite_mode_is_one_stream_per_game_and_scores_by_window(tmp_path, game_video):
    root, out, fake = data_root(tmp_path, game_video), tmp_path / "run", Commentator()
    run_inf_streams("model-object", root, out, INFINITE, commentate=fake, limit=1, progress=False, dist=DIST)
    (call,) = fake.calls
    assert call["previous_text"] == "pre" and call["times"] == [t / 2 for t in range(4, 24)]  # 2.0 .. 11.5
    (record,) = records(out)
    assert (record["id"], record["span"], record["frames"]) == ("g1.mp4", [2.0, 12.0], 20)
    assert record["prediction"] == "s2 s4 s5 s7 s8 s10 s11"
    found = read_commentary(out / "predictions.jsonl")
    assert window_text(found.segments["g1.mp4"], 2, 6) == "s2 s4 s5"
    assert found.covers("g1.mp4", 2, 6) and not found.covers("g1.mp4", 10, 14)  # past the video's end: missing


def test_default_commentator():
    if importlib.util.find_spec(COMMENTARY_API) is None:
        with pytest.raises(ValueError, match="streamingvlm_session.commentate, which this installation lacks"):
            default_commentator()
    else:
        assert callable(default_commentator())


def test_cli_run_with_every_video_missing_needs_no_model(tmp_path, capsys):
    root = tmp_path / "data"
    write_jsonl(root / "eval_all_metadata.jsonl", [{"video": "g9.mp4", "content": CONTENT}])
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    argv = ["eval", "run", "--benchmark", "inf_streams", "--model", str(ckpt), "--data", str(root),
            "--out", str(tmp_path / "o"), "--stream-mode", "chunk", "--window-seconds", "4", "--min-words", "2",
            "--start-time", "2", "--annotations", "eval_all_metadata.jsonl", "--no-progress"]  # under --data
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == "warning: missing video: g9.mp4; 2 questions skipped\n"
    assert out.splitlines()[0].endswith("(n=0, skipped 2: missing video)")
    config = json.loads((tmp_path / "o" / "run_config.json").read_text())
    assert config["settings"]["mode"] == "chunk" and config["settings"]["window"] == 4.0
    assert config["annotations"] == str((root / "eval_all_metadata.jsonl").resolve())
    assert main([*argv, "--max-new-tokens", "5"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-new-tokens does not apply to inf_streams")
    code = main([*argv[:-1], "--fps", "0"])
    assert code == 2 and capsys.readouterr().err == "error: --fps must be a positive number of frames per second, " \
        "got 0.0\n"


def test_a_tiny_streamingvlm_model_streams_every_window(tmp_path):
    """The real commentary function on a tiny random StreamingVLM checkpoint, greedy (sampling is not tested here)."""
    session = pytest.importorskip(COMMENTARY_API)
    from functools import partial

    from flash_vstream import load_model
    from flash_vstream.model.streamingvlm import make_tiny_streamingvlm

    vs = load_model(make_tiny_streamingvlm(tmp_path / "tiny"), device="cpu")
    root = tmp_path / "data"
    make_video(root / "g1.mp4", frames=24, fps=2, size=112)
    write_jsonl(root / "eval_all_metadata.jsonl", [{"video": "g1.mp4", "content": CONTENT}])
    greedy = partial(session.commentate, do_sample=False)
    results = run_inf_streams(vs, root, tmp_path / "run", CHUNK, commentate=greedy, progress=False, dist=DIST)
    assert results["counts"] == {"items": 2, "predicted": 2, "skipped": 0}
    first, second = records(tmp_path / "run")
    # One Commentary per 1-s chunk (2 frames), in absolute video time.
    assert [c[:2] for c in first["commentary"]] == [[2.0, 3.0], [3.0, 4.0], [4.0, 5.0], [5.0, 6.0]]
    assert [c[:2] for c in second["commentary"]] == [[10.0, 11.0], [11.0, 12.0]]
    assert (first["frames"], second["frames"], second["span"]) == (8, 4, [10.0, 12.0])
    assert first["prediction"] == " ".join(c[2].strip() for c in first["commentary"] if c[2].strip())
    with pytest.raises(ValueError, match="--fps 1 differs from the model's streaming rate of 2 frames per second"):
        run_inf_streams(vs, root, tmp_path / "run1", replace(CHUNK, fps=1.0), commentate=greedy, progress=False,
                        dist=DIST)


def test_run_benchmark_hands_inf_streams_to_its_runner(tmp_path):
    from flash_vstream_eval.model_api import ModelSpec
    from flash_vstream_eval.runner import run_benchmark

    root = tmp_path / "data"
    # The default settings: windows of 100 s from 1000 s with at least 200 words; here one, (1000, 1100].
    content = [[1000 + 0.4 * i, 1000.2 + 0.4 * i, "w"] for i in range(250)]
    write_jsonl(root / "eval_all_metadata.jsonl", [{"video": "g8.mp4", "content": content},
                                                   {"video": "g9.mp4", "content": content}])
    ckpt = fake_checkpoint(tmp_path / "ckpt")  # every video missing: no model is loaded
    results = run_benchmark("inf_streams", str(ckpt), root, tmp_path / "a", progress=False, dist=DIST)
    assert results["counts"] == {"items": 2, "predicted": 0, "skipped": 2}  # infinite mode: one stream a game
    direct = run_inf_streams(ModelSpec(str(ckpt)), root, tmp_path / "b", InfStreamsSettings(), progress=False,
                             dist=DIST)
    assert results == direct
    for name in ("run_config.json", "predictions.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert json.loads((tmp_path / "a" / "run_config.json").read_text())["model"]["family"] == "flash"
    for flags, named in (({"max_new_tokens": 5}, "max_new_tokens"), ({"judge": print, "strict": True},
                                                                      "judge, strict"),
                         ({"profile": "lmms-eval"}, "profile")):
        with pytest.raises(ValueError, match=f"^{named} of run_benchmark do not apply to inf_streams: .*"
                                             "Run `flash-vstream eval run --benchmark inf_streams`"):
            run_benchmark("inf_streams", str(ckpt), root, tmp_path / "c", dist=DIST, **flags)
    assert not (tmp_path / "c").exists()
