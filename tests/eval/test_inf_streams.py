"""Inf-Streams-Eval data: games, windows (against a brute-force restatement), commentary files, loader errors."""

from __future__ import annotations

import json
import math
import random

import pytest
from evalfixtures import write_jsonl

from flash_vstream_eval.benchmarks import get_benchmark
from flash_vstream_eval.inf_streams import (
    InfStreamsSettings,
    load_games,
    make_windows,
    previous_text,
    read_commentary,
    window_text,
)
from flash_vstream_eval.items import AnnotationError
from flash_vstream_eval.scoring import score_records

SETTINGS = InfStreamsSettings(window=10.0, min_words=3, start=20.0)


def words(start, *texts, step=1.0):
    """Word-level entries ``[t, t + 0.5, word]`` from ``start`` on, one per ``step`` seconds."""
    return [[start + i * step, start + i * step + 0.5, text] for i, text in enumerate(texts)]


def game_file(path):
    rows = [
        {"video": "g1.mp4", "title": "Final",
         "content": [[5, 6, "kick"], [18, 19.5, "off"], *words(21, "one", "two", "three"), [31, 32, "four"],
                     [41, 42, "six"], [43, 42.5, "seven"], [49, 50, "eight"]]},
        {"video": "clips/g2.mp4", "title": "Semi", "preasr": "earlier talk",
         "content": [[22, 25, "a great pass"], [27, 30, "and a shot"]]},
    ]
    return write_jsonl(path, rows)


def test_windows_words_and_previous_text(tmp_path):
    games = load_games(game_file(tmp_path / "eval_all_metadata.jsonl"))
    assert [g.video for g in games.games] == ["g1.mp4", "clips/g2.mp4"] and games.reversed_times == 1
    g1, g2 = games.games
    kept, dropped = make_windows(g1, SETTINGS)
    # (20, 30]: one two three; (30, 40]: four (1 word, dropped); (40, 50]: six, seven (placed by its end 42.5), eight
    assert [(w.id, w.reference, w.words) for w in kept] == [
        ("g1.mp4@20-30", "one two three", 3), ("g1.mp4@40-50", "six seven eight", 3)]
    assert [(w.id, w.words) for w in dropped] == [("g1.mp4@30-40", 1)]
    assert previous_text(g1, 20.0) == "kick off"
    assert previous_text(g1, 40.0) == "kick off one two three four"
    kept, dropped = make_windows(g2, SETTINGS)
    assert [(w.id, w.reference, w.words) for w in kept] == [("clips/g2.mp4@20-30", "a great pass and a shot", 6)]
    assert previous_text(g2, 20.0) == "earlier talk"  # preasr first, then the reference before the start
    # the folder form finds eval_all_metadata.jsonl; the registry lists the same windows (default settings: none)
    assert [g.video for g in load_games(tmp_path).games] == ["g1.mp4", "clips/g2.mp4"]
    assert get_benchmark("inf_streams").load_items(tmp_path).items == []


def brute_force_windows(content, settings):
    """Restatement: entry -> window index ceil((end - start) / W) - 1; windows up to the last end; filter by words."""
    last = max(e for _, e, _ in content)
    n = max(0, math.ceil((last - settings.start) / settings.window))
    texts = {k: [] for k in range(n)}
    for _, e, text in sorted(content, key=lambda entry: entry[1]):
        k = math.ceil((e - settings.start) / settings.window) - 1
        if 0 <= k < n:
            texts[k].append(text)
    return [(settings.start + k * settings.window, " ".join(t)) for k, t in texts.items()
            if len(" ".join(t).split()) >= settings.min_words]


def test_windows_equal_a_brute_force_restatement(tmp_path):
    rng = random.Random(0)
    rows = []
    for g in range(5):
        content = []
        for _ in range(300):
            end = rng.randrange(0, 4000) / 4  # quarter seconds: some land exactly on window boundaries
            content.append([end - rng.choice([0.25, -0.5]), end, rng.choice(["go", "a b", "shot on goal"])])
        rows.append({"video": f"v{g}.mp4", "content": content})
    games = load_games(write_jsonl(tmp_path / "m.jsonl", rows))
    settings = InfStreamsSettings(window=37.5, min_words=9, start=100.0)
    for game, row in zip(games.games, rows, strict=True):
        kept, _ = make_windows(game, settings)
        assert [(w.start, w.reference) for w in kept] == brute_force_windows(row["content"], settings)
    assert games.reversed_times == sum(s > e for row in rows for s, e, _ in row["content"])


def test_window_text_collects_by_end_time():
    segments = [(9.0, 10.0, "at start"), (10.0, 11.0, " first "), (12.0, 13.0, ""), (19.0, 20.0, "last"),
                (20.0, 21.0, "next window")]
    assert window_text(segments, 10.0, 20.0) == "first last"
    assert window_text(segments, 30.0, 40.0) == ""


def test_read_commentary_both_kinds(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "g1.mp4@20-30", "video": "g1.mp4", "span": [20, 30], "prediction": "x",
         "commentary": [[21, 22, "b"], [20, 21, "a"]]},
        {"id": "g1.mp4@40-50", "video": "g1.mp4", "skipped": "missing video: g1.mp4"},
        {"video": "g2.mp4", "start": 3, "end": 4, "text": "flat"},
    ])
    found = read_commentary(path)
    assert found.segments == {"g1.mp4": [(20.0, 21.0, "a"), (21.0, 22.0, "b")], "g2.mp4": [(3.0, 4.0, "flat")]}
    assert found.covers("g1.mp4", 20, 30) and not found.covers("g1.mp4", 40, 50)
    assert found.covers("g2.mp4", 1000, 1100) and not found.covers("g3.mp4", 0, 10)
    assert found.skipped == {"g1.mp4@40-50": "missing video: g1.mp4"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: invalid JSON"),
        (json.dumps({"title": "x", "content": []}), "line 2: missing 'video'"),
        (json.dumps({"video": "b.mp4"}), "line 2: missing 'content'"),
        (json.dumps({"video": "b.mp4", "content": [[1, 2, "ok"], [1, "x", "bad"]]}),
         "line 2: content[1] must be [start seconds, end seconds, text]"),
        (json.dumps({"video": "b.mp4", "content": [[1, 2]]}), "line 2: content[0] must be"),
        (json.dumps({"video": "b.mp4", "content": "words"}), "line 2: 'content' must be a list"),
        (json.dumps({"video": "b.mp4", "content": [], "preasr": 3}), "line 2: 'preasr' must be text"),
        (json.dumps({"video": "a.mp4", "content": []}), "line 2: video 'a.mp4' is listed twice (first at"),
    ],
)
def test_malformed_rows_are_one_error_with_file_and_line(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"video": "a.mp4", "content": [[1, 2, "hi"]]}) + "\n" + line + "\n")
    with pytest.raises(AnnotationError) as info:
        load_games(path)
    assert str(info.value).startswith(f"{path} ") and message in str(info.value)


def test_missing_or_empty_annotations(tmp_path):
    with pytest.raises(AnnotationError, match="holds no eval_all_metadata.jsonl; pass the game metadata file"):
        load_games(tmp_path)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(AnnotationError, match="holds no games"):
        load_games(tmp_path / "e.jsonl")
    with pytest.raises(AnnotationError, match="do not exist"):
        load_games(tmp_path / "nope.jsonl")
    write_jsonl(tmp_path / "c.jsonl", [{"video": "g.mp4", "start": 1, "end": 2}])
    with pytest.raises(AnnotationError, match=r"c.jsonl line 1: expected \{'video', 'start', 'end', 'text'\}"):
        read_commentary(tmp_path / "c.jsonl")


def test_settings_are_checked_and_generic_scoring_refuses():
    with pytest.raises(ValueError, match="--window-seconds must be a positive"):
        InfStreamsSettings(window=0)
    with pytest.raises(ValueError, match="--stream-mode must be one of"):
        InfStreamsSettings(mode="forever")
    with pytest.raises(ValueError, match="--min-words must be a whole number"):
        InfStreamsSettings(min_words=-1)
    with pytest.raises(ValueError, match="scored pairwise against a reference model"):
        score_records("inf_streams", [], [])
