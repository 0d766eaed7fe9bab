"""The StreamingVLM chunk builder: windows, the word filter, end-time binning, the previous-text cut (against
tokenizing the whole text), the published record shape read back, the CLI, and one clear error per bad record."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer
from flash_vstream.train.commands import add_data_commands
from flash_vstream.train.data import DataError, MissingMediaError
from flash_vstream.train.streamingvlm_data import (
    BuildSettings,
    BuildSummary,
    PreviousTextCutter,
    StreamingChunks,
    build_chunks,
    build_file,
    parse_game,
    read_games,
    seeks_path,
    window_starts,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "train"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer("chatml")


def game_row(ends, duration=60.0, **extra):
    """A game whose k-th word ``w{k}`` ends at ``ends[k]`` (and starts 0.1 s before)."""
    return {
        "video": "g.mp4",
        "duration": duration,
        "content": [[e - 0.1, e, f"w{k}"] for k, e in enumerate(ends)],
    } | extra


def test_window_starts():
    s = BuildSettings()
    assert window_starts(60.0, s) == [0.0, 12.0, 24.0, 36.0]
    assert window_starts(24.0, s) == [0.0]
    assert window_starts(23.9, s) == []
    assert window_starts(10.0, BuildSettings(window=4, stride=3)) == [0.0, 3.0, 6.0]


def test_chunks_match_a_slow_restatement(tokenizer):
    """Words ending in (s, s + W] belong to the chunk; >= 48 of them keep it; earlier words are previous text."""
    rng = random.Random(0)
    # dense commentary except a quiet stretch 30-50 s, so some windows fall under 48 words
    ends = sorted(
        {round(rng.uniform(0, 30), 2) for _ in range(150)} | {round(rng.uniform(50, 84), 2) for _ in range(170)}
    )
    ends += [12.0, 36.0]  # words ending exactly on window edges
    ends.sort()
    game = parse_game(game_row(ends, duration=84.0, title="Final"), "games.jsonl:1")
    summary = BuildSummary()
    records = build_chunks(game, BuildSettings(), tokenizer, summary)

    expected = []
    for start in [12.0 * k for k in range(6)]:  # windows [0,24) ... [60,84)
        inside = [w for w in game.words if start < w[1] <= start + 24]
        if len(inside) >= 48:
            previous = " ".join(["Final"] + [w[2] for w in game.words if w[1] <= start])
            expected.append((start, [list(w) for w in inside], previous))
    got = [
        (r[0]["content"][0]["video_start"], r[1]["content"][0]["text_stream"], r[0]["content"][1]["previous"])
        for r in records
    ]
    assert got == expected
    assert 0 < len(expected) < 6  # the quiet stretch really drops windows
    assert (summary.games, summary.windows, summary.kept) == (1, 6, len(expected))
    assert summary.too_few_words == 6 - len(expected)
    assert summary.words == sum(len(e[1]) for e in expected)
    assert records[0][0]["content"][0] == {"type": "video", "video": "g.mp4", "video_start": 0.0, "video_end": 24.0}


def test_min_words_threshold_is_inclusive(tokenizer):
    ends = [0.5 + 0.5 * k for k in range(48)]  # 48 words in (0, 24]
    game = parse_game(game_row(ends, duration=24.0), "g:1")
    assert len(build_chunks(game, BuildSettings(), tokenizer)) == 1
    game = parse_game(game_row(ends[:-1], duration=24.0), "g:1")
    assert build_chunks(game, BuildSettings(), tokenizer) == []
    assert len(build_chunks(game, BuildSettings(min_words=47), tokenizer)) == 1


@pytest.mark.parametrize("sink, window", [(20, 30), (0, 25), (25, 0), (64, 64), (512, 512)])
@pytest.mark.parametrize("context", ["", "2018-06-16 Argentina vs Iceland"])
def test_previous_text_cut_equals_tokenizing_the_whole_text(tokenizer, sink, window, context):
    rng = random.Random(sink * 7 + window)
    vocab = "the ball goes to Messi, and he scores! 12 3-0 what a goal... don't (header) Iceland's keeper".split()
    words = [rng.choice(vocab) for _ in range(900)]
    cutter = PreviousTextCutter(tokenizer, context, words, sink, window, margin=4)
    for n in [0, 1, 7, 40, 150, 400, 899, 900]:
        text = " ".join(([context] if context else []) + words[:n])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > sink + window:
            text = tokenizer.decode(ids[:sink] + ids[len(ids) - window :], clean_up_tokenization_spaces=False)
        assert cutter.before(n) == text, n


def test_build_file_round_trip(tmp_path, tokenizer):
    (tmp_path / "g.mp4").write_bytes(b"")  # the reader resolves media; it does not decode them
    ends = [0.4 * k + 0.3 for k in range(150)]
    games = tmp_path / "games.jsonl"
    games.write_text(json.dumps(game_row(ends, duration=60.0)) + "\n\n" + json.dumps(game_row(ends[:10])) + "\n")
    out = tmp_path / "out" / "train_with_seeks.jsonl"
    summary = build_file(games, out, tokenizer, BuildSettings())
    assert (summary.games, summary.windows, summary.kept) == (2, 8, 4)
    lines = out.read_bytes().split(b"\n")[:-1]
    seeks = json.loads(seeks_path(out).read_text())
    assert seeks_path(out).name == "train_seeks.jsonl"  # the published sidecar name
    assert seeks == [sum(len(line) + 1 for line in lines[:k]) for k in range(len(lines))]
    chunks = StreamingChunks(out, tmp_path)
    assert len(chunks) == 4
    record = chunks[2]
    assert (record.start, record.end, record.video) == (24.0, 48.0, (tmp_path / "g.mp4").resolve())
    assert [w[1] for w in record.words] == [e for e in ends if 24 < e <= 48]
    assert record.where == f"{out}:3" and record.query == ""


def test_debug_chunks_rebuild_identically(tmp_path, tokenizer):
    """configs/train/streamingvlm_debug_chunks.jsonl is what its header's command builds (golden file)."""
    out = tmp_path / "chunks.jsonl"
    build_file(CONFIGS / "streamingvlm_debug_games.jsonl", out, tokenizer, BuildSettings(window=4, stride=2))
    assert out.read_bytes() == (CONFIGS / "streamingvlm_debug_chunks.jsonl").read_bytes()
    assert len(StreamingChunks(out, REPO / "assets")) == 6


def run_cli(argv):
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, tokenizer, capsys):
    tokenizer.save_pretrained(tmp_path / "tok")
    games = tmp_path / "games.jsonl"
    games.write_text(json.dumps(game_row([0.3 * k + 0.2 for k in range(40)], duration=7.0)) + "\n")
    out = tmp_path / "c.jsonl"
    argv = [
        "data",
        "build-streamingvlm",
        "--games",
        str(games),
        "--out",
        str(out),
        "--tokenizer",
        str(tmp_path / "tok"),
    ]
    assert run_cli([*argv, "--window", "4", "--stride", "2", "--min-words", "12", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["games"], report["windows"], report["kept"], report["too_few_words"]) == (1, 2, 2, 0)
    assert len(out.read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="stride must be > 0"):
        run_cli([*argv, "--stride", "0"])
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        run_cli([*argv[:-1], str(tmp_path / "nowhere")])


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "not valid JSON"),
        ('["a list"]', "a game record is a JSON object"),
        ('{"video": "g.mp4", "duration": 10}', "no 'content'"),
        ('{"video": "", "duration": 10, "content": []}', "'video' must be a non-empty path"),
        ('{"video": "g.mp4", "duration": -1, "content": []}', "'duration' must be > 0"),
        ('{"video": "g.mp4", "duration": 10, "content": [[1, 2]]}', r"content\[0\] must be \[start, end, word\]"),
        ('{"video": "g.mp4", "duration": 10, "content": [[1, "x", "w"]]}', r"content\[0\] time must be a finite"),
        ('{"video": "g.mp4", "duration": 10, "content": [], "title": 3}', "'title' must be a string"),
    ],
)
def test_malformed_game_names_file_and_line(tmp_path, line, message):
    games = tmp_path / "games.jsonl"
    games.write_text(json.dumps(game_row([1.0])) + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"games.jsonl:2: .*{message}"):
        list(read_games(games))


def test_word_starting_after_its_end_is_kept():
    game = parse_game({"video": "g.mp4", "duration": 5, "content": [[3.0, 2.5, "late"], [1, 1.2, " early "]]}, "g:1")
    assert game.words == ((1.0, 1.2, "early"), (3.0, 2.5, "late"))  # sorted by end time, stripped


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda r: r[:1], DataError, "not a StreamingVLM chunk record"),
        (lambda r: r[0]["content"][0].update(video="../g.mp4"), DataError, "without '..'"),
        (lambda r: r[0]["content"][0].update(video="gone.mp4"), MissingMediaError, "'gone.mp4' not found"),
        (lambda r: r[0]["content"][0].update(video_end=2.5), DataError, "whole number"),
        (lambda r: r[1]["content"][0].update(qa_stream=[[0, 1, "q"]]), DataError, r"qa_stream\[0\] must be"),
        (lambda r: r[1]["content"][0]["text_stream"].append([1, 2]), DataError, r"text_stream\[1\]"),
    ],
)
def test_bad_chunk_record_names_file_and_line(tmp_path, edit, error, message):
    (tmp_path / "g.mp4").write_bytes(b"")
    record = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": "g.mp4", "video_start": 0, "video_end": 4},
                {"type": "text", "text": "", "previous": ""},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text_stream": [[0.1, 0.2, "a"]]}]},
    ]
    good = json.dumps(record)
    changed = edit(record)
    bad = json.dumps(changed if changed is not None else record)
    path = tmp_path / "c.jsonl"
    path.write_text(good + "\n" + bad + "\n")
    chunks = StreamingChunks(path, tmp_path)
    assert chunks[0].words == ((0.1, 0.2, "a"),) and chunks[0].questions == ()
    with pytest.raises(error, match=rf"c.jsonl:2: .*{message}"):
        chunks.check_all()


def test_qa_stream_is_read(tmp_path):
    (tmp_path / "g.mp4").write_bytes(b"")
    record = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": "g.mp4", "video_start": 0, "video_end": 2},
                {"type": "text", "text": "", "previous": "p"},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text_stream": [], "qa_stream": [[0, 1.5, "Who?", "Him."]]}],
        },
    ]
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert StreamingChunks(path, tmp_path)[0].questions == ((1.5, "Who?", "Him."),)
