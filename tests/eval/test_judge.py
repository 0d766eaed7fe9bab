"""The open-ended judge against a scripted OpenAI-compatible server on 127.0.0.1."""

import json
import socket
import traceback

import pytest
from evalfixtures import FakeChatServer

from flash_vstream_eval.judge import (
    DEFAULT_JUDGE_MODEL,
    JudgeError,
    JudgeUnreachableError,
    OpenAIJudge,
    Verdict,
    judge_from_args,
    judge_records,
    parse_verdict,
    summarize_verdicts,
    verdict_cache_key,
)

KEY = "sk-test-SECRET-0123456789"


def chat_reply(content):
    return 200, {}, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})


class FakeOpenAI(FakeChatServer):
    """Answers POST /v1/chat/completions from a script of ``(status, headers, text)``; the last entry repeats once
    the script runs out."""

    def __init__(self, script):
        self.script = list(script)

        def respond(body, headers):
            status, reply_headers, text = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            return status, text.encode(), reply_headers

        super().__init__(respond)


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        server = FakeOpenAI(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def make_judge(server, **kwargs):
    kwargs.setdefault("backoff", 0.001)
    judge = OpenAIJudge(server.base_url, "judge-x", KEY, timeout=5, **kwargs)
    judge.delays = []
    judge._sleep = judge.delays.append  # record the waits instead of sleeping
    return judge


def test_success_sends_protocol_request(serve):
    server = serve(chat_reply("{'pred': 'yes', 'score': 4}"))
    verdict = make_judge(server)("What did I put in the drawer?", "a screwdriver", "A screwdriver.")
    assert verdict == Verdict(correct=True, score=4, raw="{'pred': 'yes', 'score': 4}")
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["json"]
    assert body["model"] == "judge-x" and body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    for text in ("What did I put in the drawer?", "a screwdriver", "A screwdriver.", "'pred'", "'score'"):
        assert text in user


def test_retries_5xx_with_exponential_backoff(serve):
    server = serve((500, {}, "oops"), (503, {}, "busy"), chat_reply("{'pred': 'no', 'score': 1}"))
    judge = make_judge(server, backoff=0.5)
    assert judge("q", "a", "p") == Verdict(False, 1, "{'pred': 'no', 'score': 1}")
    assert len(server.requests) == 3 and judge.http_calls == 3
    assert judge.delays == [0.5, 1.0]


def test_429_honours_retry_after(serve):
    server = serve((429, {"Retry-After": "7"}, "slow down"), chat_reply('{"pred": "yes", "score": 5}'))
    judge = make_judge(server)
    assert judge("q", "a", "p").score == 5
    assert judge.delays == [7.0]
    assert len(server.requests) == 2


def test_retry_after_is_capped(serve):
    server = serve((429, {"Retry-After": "3600"}, ""), chat_reply("{'pred': 'yes', 'score': 3}"))
    judge = make_judge(server, max_delay=2.0)
    judge("q", "a", "p")
    assert judge.delays == [2.0]


def test_401_fails_at_once_without_leaking_key(serve):
    server = serve((401, {}, json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}})))
    judge = make_judge(server)
    with pytest.raises(JudgeError) as info:
        judge("q", "a", "p")
    assert len(server.requests) == 1 and judge.delays == []
    text = "".join(traceback.format_exception(info.value))
    assert "401" in text and "FLASH_VSTREAM_JUDGE_API_KEY" in text
    assert KEY not in text
    assert KEY not in repr(judge) and KEY not in str(vars(judge).get("base_url"))


def test_404_is_not_retried(serve):
    server = serve((404, {}, "no such route"))
    with pytest.raises(JudgeError, match="HTTP 404"):
        make_judge(server)("q", "a", "p")
    assert len(server.requests) == 1


def test_exhausted_retries_name_the_item(serve):
    server = serve((502, {}, "bad gateway"))
    judge = make_judge(server, max_retries=2)
    with pytest.raises(JudgeError, match=r"item 'vs_17'.*3 attempts.*502") as info:
        judge("q", "a", "p", item_id="vs_17")
    assert len(server.requests) == 3
    assert KEY not in str(info.value)


def test_unparseable_reply_is_retried_then_succeeds(serve):
    fenced = "```python\n{'pred': 'yes', 'score': 4}\n```"
    server = serve(chat_reply("I think it is right."), chat_reply(fenced))
    judge = make_judge(server)
    assert judge("q", "a", "p") == Verdict(True, 4, fenced)
    assert len(server.requests) == 2


def test_always_malformed_reply_raises_naming_item(serve):
    server = serve(chat_reply("{'pred': 'maybe', 'score': 9}"))
    judge = make_judge(server, max_retries=1)
    with pytest.raises(JudgeError, match=r"item 3.*unparseable.*maybe"):
        judge("q", "a", "p", item_id=3)
    assert len(server.requests) == 2


def test_non_chat_response_body_is_retried(serve):
    server = serve((200, {}, "<html>proxy</html>"), chat_reply("{'pred': 'no', 'score': 0}"))
    assert make_judge(server)("q", "a", "p") == Verdict(False, 0, "{'pred': 'no', 'score': 0}")


def test_complete_returns_any_reply_as_is_after_transport_retries(serve):
    messages = [{"role": "user", "content": "Which is better, A or B?"}]
    server = serve((503, {}, "busy"), (200, {}, "<html>proxy</html>"), chat_reply("neither, really"))
    judge = make_judge(server, backoff=0.5)
    assert judge.complete(messages, what="window 'g1:0'") == "neither, really"  # not a verdict: not retried
    assert judge.http_calls == 3 and judge.delays == [0.5, 1.0]
    assert [r["json"]["messages"] for r in server.requests] == [messages] * 3


def test_complete_names_what_and_never_shows_the_key(serve):
    server = serve((503, {}, f"overloaded for {KEY}"))
    judge = make_judge(server, max_retries=1)
    with pytest.raises(JudgeError, match=r"gave up on window 'g1:0' after 2 attempts .*HTTP 503 overloaded for \*\*\*"):
        judge.complete([{"role": "user", "content": "?"}], what="window 'g1:0'")
    refused = serve((401, {}, f"bad key {KEY}"))
    with pytest.raises(JudgeError, match="HTTP 401: API key rejected") as info:
        make_judge(refused).complete([{"role": "user", "content": "?"}], what="window 'g1:0'")
    assert KEY not in str(info.value) and len(refused.requests) == 1  # a refusal is not retried


def test_connection_error_is_retried_then_fails_naming_the_url_and_the_fix():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "judge-x", KEY, timeout=2, max_retries=2, backoff=0.25)
    judge.delays = []
    judge._sleep = judge.delays.append
    with pytest.raises(JudgeUnreachableError) as info:
        judge("q", "a", "p")
    assert judge.http_calls == 3 and judge.delays == [0.25, 0.5]
    message = str(info.value)
    assert message.startswith(f"cannot reach the judge at http://127.0.0.1:{port}/v1 (")
    assert "Connection refused" in message and "after 3 attempts" in message
    assert "--judge-base-url / FLASH_VSTREAM_JUDGE_BASE_URL" in message and "\n" not in message
    assert KEY not in message


def test_dns_failure_is_unreachable_too():
    judge = OpenAIJudge("http://judge.invalid/v1", "judge-x", KEY, timeout=5, max_retries=1, backoff=0.1)
    judge._sleep = lambda seconds: None
    with pytest.raises(JudgeUnreachableError, match=r"cannot reach the judge at http://judge.invalid/v1 \(.*\) after "
                       r"2 attempts; check --judge-base-url / FLASH_VSTREAM_JUDGE_BASE_URL"):
        judge("q", "a", "p")
    assert judge.http_calls == 2


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("{'pred': 'yes', 'score': 4}", (True, 4)),
        ('{"pred": "no", "score": 2}', (False, 2)),
        ("Sure! Here is my grade:\n{'pred': 'Yes', 'score': '5'} Hope this helps.", (True, 5)),
        ("```json\n{\"pred\": \"no\", \"score\": 0}\n```", (False, 0)),
        ("{'score': 3.0, 'pred': ' yes '}", (True, 3)),
        ("{pred: no, score: 1}", (False, 1)),
    ],
)
def test_parse_verdict_accepts_wrapped_dicts(reply, expected):
    verdict = parse_verdict(reply)
    assert (verdict.correct, verdict.score) == expected and verdict.raw == reply


@pytest.mark.parametrize(
    "reply",
    ["", "yes", "{'pred': 'yes'}", "{'pred': 'yes', 'score': 6}", "{'pred': 'yes', 'score': 2.5}",
     "{'pred': 'perhaps', 'score': 3}", "{'pred': 'no', 'score': True}", "{'pred': 'no', 'score': -1}"],
)
def test_parse_verdict_rejects_bad_replies(reply):
    with pytest.raises(ValueError):
        parse_verdict(reply)


def test_cache_hits_make_no_call_and_survive_restart(serve, tmp_path):
    cache = tmp_path / "sub" / "verdicts.jsonl"
    server = serve(chat_reply("{'pred': 'yes', 'score': 4}"))
    judge = make_judge(server, cache_path=cache)
    first = judge("q", "a", "p")
    again = judge("q", "a", "p")
    assert first == again and len(server.requests) == 1
    lines = cache.read_text().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["key"] == verdict_cache_key("judge-x", "q", "a", "p") and KEY not in lines[0]

    reopened = make_judge(server, cache_path=cache)
    assert reopened("q", "a", "p") == first
    assert reopened.http_calls == 0 and len(server.requests) == 1
    reopened("q", "a", "other prediction")  # a different item is a miss and is appended
    assert len(server.requests) == 2 and len(cache.read_text().splitlines()) == 2


def test_cache_key_depends_on_judge_model(serve, tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    server = serve(chat_reply("{'pred': 'yes', 'score': 4}"))
    make_judge(server, cache_path=cache)("q", "a", "p")
    other = OpenAIJudge(server.base_url, "another-judge", KEY, cache_path=cache, backoff=0.0)
    other("q", "a", "p")
    assert len(server.requests) == 2


def test_torn_cache_line_is_skipped(serve, tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    good = {"key": verdict_cache_key("judge-x", "q", "a", "p"), "correct": False, "score": 2, "raw": "r"}
    cache.write_text(json.dumps(good) + "\n" + '{"key": "abc", "corr')
    server = serve(chat_reply("{'pred': 'yes', 'score': 4}"))
    judge = make_judge(server, cache_path=cache)
    assert judge("q", "a", "p") == Verdict(False, 2, "r")
    assert server.requests == []


def test_judge_from_args_flags_then_env(monkeypatch, tmp_path):
    for name in ("FLASH_VSTREAM_JUDGE_BASE_URL", "OPENAI_BASE_URL", "FLASH_VSTREAM_JUDGE_MODEL",
                 "FLASH_VSTREAM_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="set FLASH_VSTREAM_JUDGE_API_KEY") as err:
        judge_from_args()
    assert "--judge-api-key" not in str(err.value)  # the CLI has no such flag
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1/")
    judge = judge_from_args(cache_path=tmp_path / "c.jsonl")
    assert judge.model == DEFAULT_JUDGE_MODEL and judge.base_url == "http://127.0.0.1:1/v1"
    assert judge.cache_path == tmp_path / "c.jsonl"
    monkeypatch.setenv("FLASH_VSTREAM_JUDGE_BASE_URL", "http://127.0.0.1:2/v1")
    monkeypatch.setenv("FLASH_VSTREAM_JUDGE_MODEL", "env-model")
    judge = judge_from_args()
    assert (judge.base_url, judge.model) == ("http://127.0.0.1:2/v1", "env-model")
    judge = judge_from_args(base_url="http://127.0.0.1:3/v1", model="flag-model", api_key="sk-other")
    assert (judge.base_url, judge.model) == ("http://127.0.0.1:3/v1", "flag-model")
    assert "sk-other" not in repr(judge) and KEY not in repr(judge)


def test_key_with_a_line_break_is_rejected_without_showing_it():
    # http.client's own error for an illegal header value would quote the whole "Bearer <key>" header.
    assert OpenAIJudge("http://127.0.0.1:1/v1", "m", KEY + "\n")._api_key == KEY  # a trailing newline is trimmed
    with pytest.raises(ValueError, match="control or non-ASCII") as err:
        OpenAIJudge("http://127.0.0.1:1/v1", "m", KEY[:6] + "\r\n" + KEY[6:])
    assert KEY[6:] not in str(err.value)


def test_bad_base_url_is_rejected():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIJudge("127.0.0.1:8000", "m", KEY)


def scripted_judge(table):
    def judge(question, answer, prediction, *, item_id=None):
        correct, score = table[prediction]
        return Verdict(correct, score, "scripted")

    return judge


def test_judge_records_and_summary_by_hand(serve):
    records = [
        {"id": "a", "question": "q1", "answer": "x", "pred": "p1", "answer_type": "summary"},
        {"id": "b", "question": "q2", "answer": "x", "pred": "p2", "answer_type": "summary"},
        {"id": "c", "question": "q3", "answer": "x", "pred": "p3", "answer_type": "yes/no"},
        {"id": "d", "question": "q4", "answer": "x", "pred": "p4"},
    ]
    table = {"p1": (True, 5), "p2": (False, 1), "p3": (True, 4), "p4": (False, 2)}
    judged = judge_records(records, scripted_judge(table), progress=False)
    assert [(r["judge_correct"], r["judge_score"]) for r in judged] == list(table.values())
    assert "judge_correct" not in records[0]  # inputs are not mutated
    summary = summarize_verdicts(judged, group_by="answer_type")
    assert summary["count"] == 4
    assert summary["accuracy"] == pytest.approx(2 / 4)
    assert summary["score"] == pytest.approx((5 + 1 + 4 + 2) / 4)
    assert summary["groups"] == {
        "summary": {"count": 2, "accuracy": pytest.approx(0.5), "score": pytest.approx(3.0)},
        "unknown": {"count": 1, "accuracy": 0.0, "score": 2.0},
        "yes/no": {"count": 1, "accuracy": 1.0, "score": 4.0},
    }
    by_first = summarize_verdicts(judged, group_by=lambda r: r["id"] < "c")
    assert by_first["groups"]["True"]["score"] == pytest.approx(3.0)


def test_judge_records_over_http(serve):
    server = serve(chat_reply("{'pred': 'yes', 'score': 3}"))
    records = [{"id": i, "question": f"q{i}", "answer": "a", "pred": "p"} for i in range(3)]
    judged = judge_records(records, make_judge(server), progress=False)
    assert [r["judge_score"] for r in judged] == [3, 3, 3] and len(server.requests) == 3


def test_judge_records_names_bad_record():
    with pytest.raises(ValueError, match=r"'vs_9' lacks pred"):
        judge_records([{"id": "vs_9", "question": "q", "answer": "a"}], scripted_judge({}), progress=False)


def test_summarize_rejects_empty_and_unjudged():
    with pytest.raises(ValueError, match="no judged records"):
        summarize_verdicts([])
    with pytest.raises(ValueError, match="'x' has no verdict"):
        summarize_verdicts([{"id": "x", "question": "q"}])
