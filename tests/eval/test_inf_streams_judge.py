"""Inf-Streams-Eval pairwise judging against a fake OpenAI-compatible judge on 127.0.0.1 with scripted votes.

The fake judge reads candidates A and B out of each request and answers from a table, so every vote below is
known in advance and the win rates are computed by hand in the comments.
"""

from __future__ import annotations

import json
import re

import pytest
from evalfixtures import FakeChatServer, chat_reply, write_jsonl

from flash_vstream.cli import main
from flash_vstream_eval.inf_streams import InfStreamsSettings, load_games, read_commentary
from flash_vstream_eval.inf_streams_judge import (
    MAX_REFERENCE_CHARS,
    SILENT,
    PairwiseJudge,
    clip_reference,
    parse_vote,
    score_inf_streams,
)
from flash_vstream_eval.judge import JudgeError, OpenAIJudge

KEY = "sk-test-SECRET-0123456789"
JUDGE_ENV = ("FLASH_VSTREAM_JUDGE_BASE_URL", "OPENAI_BASE_URL", "FLASH_VSTREAM_JUDGE_MODEL",
             "FLASH_VSTREAM_JUDGE_API_KEY", "OPENAI_API_KEY")
CANDIDATES = re.compile(r"Candidate A:\n(.*)\n\nCandidate B:\n(.*)\n\nWhich", re.DOTALL)


class VotingJudge(FakeChatServer):
    """Replies with the vote scripted for (candidate A, candidate B); HTTP errors from ``fail`` first."""

    def __init__(self, votes: dict[tuple[str, str], str], fail: list[int] | None = None):
        self.votes, self.fail = votes, list(fail or [])
        super().__init__(self._respond)

    def _respond(self, body, headers):
        if self.fail:
            return self.fail.pop(0), b"busy"
        a, b = CANDIDATES.search(body["messages"][1]["content"]).groups()
        return 200, chat_reply(self.votes[a, b])


@pytest.fixture
def judge_server():
    servers = []

    def start(votes, fail=None):
        servers.append(VotingJudge(votes, fail))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def judge_env(monkeypatch):
    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLASH_VSTREAM_JUDGE_API_KEY", KEY)


# Windows of 10 s from t=20, at least 3 reference words. g1: (20,30] kept, (30,40] 1 word dropped, (40,50] kept.
GAMES = [
    {"video": "g1.mp4", "title": "Final", "content": [[18, 19, "kick off"], [21, 22, "one two three"],
                                                      [31, 32, "four"], [41, 42, "six seven"], [48, 47.5, "eight"]]},
    {"video": "g2.mp4", "title": "Semi", "content": [[22, 25, "a great pass"], [27, 30, "and a shot"]]},
    {"video": "g3.mp4", "content": [[22, 23, "x y z"]]},
    {"video": "g4.mp4", "content": [[22, 23, "p q r"]]},
]
OURS = [  # eval run records (infinite mode): g4 was never run
    {"id": "g1.mp4", "video": "g1.mp4", "span": [20, 50], "prediction": "...",
     "commentary": [[20, 21, "ours g1w1"], [29, 30, "more"], [30, 31, "next window"]]},  # silent in (40, 50]
    {"id": "g2.mp4", "video": "g2.mp4", "span": [20, 30], "commentary": [[21, 22, "ours g2"]]},
    {"id": "g3.mp4", "video": "g3.mp4", "span": [20, 30], "commentary": []},
]
REFERENCE = [  # per-second lines, plus one run record (g3, silent)
    {"video": "g1.mp4", "start": 24, "end": 25, "text": "ref g1w1"},
    {"video": "g1.mp4", "start": 45, "end": 46, "text": "ref g1w3"},
    {"video": "g2.mp4", "start": 25, "end": 26, "text": "ref g2"},
    {"video": "g4.mp4", "start": 25, "end": 26, "text": "ref g4"},
    {"id": "g3.mp4", "video": "g3.mp4", "span": [20, 30], "commentary": []},
]
VOTES = {
    ("ours g1w1 more", "ref g1w1"): "A",  # ours
    ("ref g1w1", "ours g1w1 more"): " A\n",  # the reference (outer whitespace is fine)
    (SILENT, "ref g1w3"): "B",  # the reference
    ("ref g1w3", SILENT): "A",  # the reference
    ("ours g2", "ref g2"): "B",  # the reference
    ("ref g2", "ours g2"): "I pick B",  # invalid
}
# Valid votes: ours 1, reference 4 -> 20 %. g1: 1 of 4 -> 25 %; g2: 0 of 1 -> 0 %. g3: both silent; g4: missing.


def write_inputs(tmp_path):
    return (write_jsonl(tmp_path / "eval_all_metadata.jsonl", GAMES), write_jsonl(tmp_path / "ours.jsonl", OURS),
            write_jsonl(tmp_path / "ref.jsonl", REFERENCE))


def score_argv(tmp_path, server, *extra):
    games, ours, ref = write_inputs(tmp_path)
    return ["eval", "score", "--benchmark", "inf_streams", "--annotations", str(games), "--predictions", str(ours),
            "--reference", str(ref), "--window-seconds", "10", "--min-words", "3", "--start-time", "20",
            "--judge-base-url", server.base_url, "--judge-model", "judge-x", *extra]


def test_eval_score_reproduces_hand_computed_win_rates(tmp_path, judge_server, judge_env, capsys):
    server = judge_server(VOTES)
    code = main(score_argv(tmp_path, server, "--out", str(tmp_path / "r")))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines() == [
        "inf_streams: win rate 20.0 vs ref.jsonl (1 of 5 votes, 3 windows judged, invalid votes 1, both silent 1, "
        "missing 1, reversed word times 1)",
        f"results: {tmp_path / 'r' / 'results.json'}",
    ]
    assert "1 judge replies were not exactly 'A' or 'B'" in err and KEY not in out + err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["metrics"] == {"win_rate": 20.0}
    counts = results["counts"]
    assert (counts["votes_ours"], counts["votes_reference"], counts["invalid"]) == (1, 4, 1)
    assert counts["dropped_windows"] == 1
    assert (counts["silent_ours"], counts["silent_reference"], counts["both_silent"]) == (2, 1, 1)
    assert results["games"]["g1.mp4"] == {"win_rate": 25.0, "windows": 2, "votes": 4, "votes_ours": 1, "invalid": 0}
    assert results["games"]["g2.mp4"]["win_rate"] == 0.0
    assert results["invalid"] == [{"id": "g2.mp4@20-30", "order": "B/A", "reply": "I pick B"}]
    assert [w["silent"] for w in results["windows"]] == [[], ["ours"], []]
    # Two calls per judged window, each with the rubric, the window's reference and the two candidates.
    assert len(server.requests) == 6
    first = server.requests[0]
    assert first["headers"]["Authorization"] == f"Bearer {KEY}"
    assert first["json"]["model"] == "judge-x" and first["json"]["temperature"] == 0.0
    system, user = (m["content"] for m in first["json"]["messages"])
    assert system.index("tone and pacing") < system.index("accuracy")
    assert user.startswith("Reference transcript:\none two three\n\nCandidate A:\nours g1w1 more\n")


def test_cached_replies_make_no_calls(tmp_path, judge_server, judge_env, capsys):
    server = judge_server(VOTES)
    argv = score_argv(tmp_path, server, "--judge-cache", str(tmp_path / "votes.jsonl"), "--json")
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(server.requests) == 6 and len((tmp_path / "votes.jsonl").read_text().splitlines()) == 6
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == first and len(server.requests) == 6


def test_retries_then_votes_and_clips_the_reference(judge_server):
    long_reference = " ".join(["word"] * 3000)  # 14999 characters
    server = judge_server({("ours", "theirs"): "B"}, fail=[503, 429])
    client = OpenAIJudge(server.base_url, "judge-x", KEY, backoff=0.25, timeout=5)
    client._sleep = (delays := []).append
    vote = PairwiseJudge(client)(long_reference, "ours", "theirs")
    assert vote.choice == "B" and delays == [0.25, 0.5] and len(server.requests) == 3
    sent = server.requests[-1]["json"]["messages"][1]["content"]
    reference = sent.split("Reference transcript:\n", 1)[1].split("\n\nCandidate A:", 1)[0]
    assert reference == clip_reference(long_reference) and len(reference) == MAX_REFERENCE_CHARS - 1
    assert reference.split() == ["word"] * 1600  # cut at the last space before 8000 characters


def test_judge_errors_never_show_the_key(judge_server):
    server = judge_server({}, fail=[503] * 3)
    client = OpenAIJudge(server.base_url, "judge-x", KEY, max_retries=2, backoff=0.0, timeout=5)
    client._sleep = lambda seconds: None
    with pytest.raises(JudgeError, match="gave up on window 'w1' after 3 attempts") as info:
        PairwiseJudge(client)("ref", "a", "b", item_id="w1")
    assert KEY not in str(info.value) and KEY not in repr(PairwiseJudge(client))


def test_parse_vote_is_exact():
    assert [parse_vote(r).choice for r in ("A", " B\n", "a", "A.", "**A**", "A or B", "")] == \
        ["A", "B", None, None, None, None, None]


def test_python_api_with_a_scripted_callable(tmp_path):
    games, ours, ref = write_inputs(tmp_path)
    asked = []

    def judge(reference, a, b, *, item_id):
        asked.append((item_id, a, b))
        return parse_vote("A")  # always the first position: each judged window gives one vote to each side

    results = score_inf_streams(load_games(games), read_commentary(ours), read_commentary(ref), judge,
                                InfStreamsSettings(window=10, min_words=3, start=20))
    assert results["metrics"]["win_rate"] == 50.0 and results["counts"]["votes"] == 6
    assert [item for item, _, _ in asked] == ["g1.mp4@20-30 A/B", "g1.mp4@20-30 B/A", "g1.mp4@40-50 A/B",
                                              "g1.mp4@40-50 B/A", "g2.mp4@20-30 A/B", "g2.mp4@20-30 B/A"]


def test_score_without_reference_is_one_error(tmp_path, judge_env, capsys):
    games, ours, _ = write_inputs(tmp_path)
    code = main(["eval", "score", "--benchmark", "inf_streams", "--annotations", str(games),
                 "--predictions", str(ours)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: inf_streams is scored against a reference model: pass --reference") and \
        err.count("\n") == 1
