"""Open-ended answer judging over an OpenAI-compatible chat API (the Video-ChatGPT protocol).

VStream-QA (and ActivityNet-QA, MSVD-QA, ...) are open-ended: a language model compares each predicted answer
with the reference answer and replies with a verdict, ``{'pred': 'yes'|'no', 'score': 0..5}``. The published
Flash-VStream evaluation used ``gpt-3.5-turbo`` for this (its ``eval_activitynet_qa.py`` scripts, from
Video-ChatGPT); the metrics are *accuracy* (the fraction of "yes") and *score* (the mean score).

What is here:

- :class:`OpenAIJudge` posts to ``{base_url}/chat/completions`` with the standard library only, retries
  with exponential backoff on connection errors, 429 and 5xx (honouring ``Retry-After``), fails at once on
  other 4xx, parses the verdict robustly, and caches verdicts in an append-only JSONL file.
- :func:`judge_from_args` builds a judge from flags, else environment variables.
- :func:`judge_records` and :func:`summarize_verdicts` judge prediction records and aggregate them.

The API key is kept in a private attribute and never appears in logs, exception messages or ``repr``.

Example:
    >>> judge = judge_from_args(cache_path="runs/vs_ego/judge_cache.jsonl")  # doctest: +SKIP
    >>> judge("What did I put in the drawer?", "a screwdriver", "A screwdriver.")  # doctest: +SKIP
    Verdict(correct=True, score=5, raw="{'pred': 'yes', 'score': 5}")
"""

from __future__ import annotations

import ast
import email.utils
import hashlib
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Bumped whenever the prompt text or the parsing rules change, so cached verdicts are not reused across them.
PROMPT_VERSION = "vcgpt-qa-v1"

#: The judge of the published protocol's reproductions (Flash-VStream issues #23 and #35).
DEFAULT_JUDGE_MODEL = "gpt-3.5-turbo-0125"

#: Where requests go when neither a flag nor an environment variable names an endpoint.
DEFAULT_BASE_URL = "https://api.openai.com/v1"

ENV_BASE_URL = ("FLASH_VSTREAM_JUDGE_BASE_URL", "OPENAI_BASE_URL")
ENV_MODEL = ("FLASH_VSTREAM_JUDGE_MODEL",)
ENV_API_KEY = ("FLASH_VSTREAM_JUDGE_API_KEY", "OPENAI_API_KEY")

SYSTEM_PROMPT = (
    "You grade answers to questions about videos. For each item you receive a question, the reference "
    "answer and a model's predicted answer. Decide whether the prediction means the same as the reference.\n"
    "Rules:\n"
    "- Judge meaning, not wording: paraphrases and synonyms that convey the same content count as correct.\n"
    "- A prediction that contradicts the reference, or leaves out what the question asks for, is incorrect.\n"
    "- Extra detail is acceptable as long as it does not contradict the reference.\n"
    "- Also rate how well the prediction matches the reference with an integer from 0 (no match) to 5 "
    "(perfect match)."
)

USER_TEMPLATE = (
    "Grade this question-answer pair.\n"
    "Question: {question}\n"
    "Reference answer: {answer}\n"
    "Predicted answer: {prediction}\n"
    "Reply with a Python dictionary and nothing else. It has two keys: 'pred', whose value is the string "
    "'yes' if the prediction is correct or 'no' if it is not, and 'score', whose value is an integer from 0 "
    "to 5. Do not explain your grade. Example of a valid reply: {{'pred': 'no', 'score': 2}}"
)


@dataclass
class Verdict:
    """One judged prediction.

    Attributes:
        correct: The judge's yes/no decision (``'pred' == 'yes'``).
        score: The judge's 0-5 match score.
        raw: The judge's reply text, kept for auditing.
    """

    correct: bool
    score: int
    raw: str


class JudgeError(RuntimeError):
    """A judge call failed for good (after any retries); the message says why and what to do."""


class JudgeUnreachableError(JudgeError):
    """The endpoint could not be reached at all (connection refused, DNS failure, timeout) after the retries."""


class _Retryable(Exception):
    """Internal: a failure worth another attempt, with an optional server-requested delay in seconds."""

    def __init__(self, reason: str, delay: float | None = None, *, connection: bool = False) -> None:
        super().__init__(reason)
        self.delay = delay
        self.connection = connection
        """True when no HTTP exchange happened at all (the server is unreachable)."""


# --------------------------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```[a-zA-Z]*")
_DICT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_PRED = re.compile(r"""['"]?pred['"]?\s*:\s*['"]?\s*(yes|no)\b""", re.IGNORECASE)
_SCORE = re.compile(r"""['"]?score['"]?\s*:\s*['"]?\s*(-?\d+(?:\.\d+)?)""", re.IGNORECASE)


def _coerce_verdict(pred: Any, score: Any, raw: str) -> Verdict:
    if not isinstance(pred, str) or pred.strip().lower() not in ("yes", "no"):
        raise ValueError(f"'pred' must be 'yes' or 'no', got {pred!r}")
    if isinstance(score, bool):
        raise ValueError(f"'score' must be an integer 0-5, got {score!r}")
    if isinstance(score, str):
        score = score.strip()
    try:
        number = float(score)
    except (TypeError, ValueError):
        raise ValueError(f"'score' must be an integer 0-5, got {score!r}") from None
    if number != int(number) or not 0 <= number <= 5:
        raise ValueError(f"'score' must be an integer 0-5, got {score!r}")
    return Verdict(correct=pred.strip().lower() == "yes", score=int(number), raw=raw)


def parse_verdict(text: str) -> Verdict:
    """Parse a judge reply into a :class:`Verdict`.

    Accepts a Python or JSON dict ``{'pred': 'yes'|'no', 'score': int}``, possibly inside code fences or
    prose; as a last resort, ``pred: yes ... score: 4`` pairs written without a well-formed dict.

    Args:
        text: The judge's reply.

    Returns:
        The verdict.

    Raises:
        ValueError: The reply holds no valid verdict (the message says what was wrong).
    """
    cleaned = _FENCE.sub("", text)
    for candidate in _DICT.findall(cleaned):
        for loader in (json.loads, ast.literal_eval):
            try:
                value = loader(candidate)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(value, dict) and "pred" in value and "score" in value:
                return _coerce_verdict(value["pred"], value["score"], text)
    pred, score = _PRED.search(cleaned), _SCORE.search(cleaned)
    if pred and score:
        return _coerce_verdict(pred.group(1), score.group(1), text)
    raise ValueError(f"no {{'pred': 'yes'|'no', 'score': 0-5}} verdict found in reply {text[:200]!r}")


# --------------------------------------------------------------------------------------------- cache


def verdict_cache_key(model: str, question: str, answer: str, prediction: str) -> str:
    """The cache key of one judgement: a SHA-256 over the judge model, prompt version and the three texts."""
    payload = json.dumps([model, PROMPT_VERSION, question, answer, prediction], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class _VerdictCache:
    """Append-only JSONL verdict cache, one line per verdict, flushed as soon as it is written."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._entries: dict[str, Verdict] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self._entries[row["key"]] = Verdict(bool(row["correct"]), int(row["score"]), row["raw"])
                except (ValueError, KeyError, TypeError):
                    # A run killed mid-write leaves at most one torn line: skip it, the item is judged again.
                    logger.warning("skipping unreadable judge cache line %s:%d", self.path, line_no)

    def get(self, key: str) -> Verdict | None:
        return self._entries.get(key)

    def put(self, key: str, verdict: Verdict, model: str) -> None:
        row = {"key": key, "model": model, "prompt_version": PROMPT_VERSION, "correct": verdict.correct,
               "score": verdict.score, "raw": verdict.raw}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
            self._entries[key] = verdict

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------------------------- judge


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIJudge:
    """A judge that asks an OpenAI-compatible ``/chat/completions`` endpoint for a Video-ChatGPT verdict.

    Args:
        base_url: Endpoint root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: Judge model name sent in the request.
        api_key: Bearer token; kept private, never logged or shown.
        temperature: Sampling temperature of the judge.
        timeout: Seconds to wait for one HTTP response.
        max_retries: Extra attempts after the first on retryable failures (connection errors, 429, 5xx,
            unparseable replies).
        backoff: Base delay in seconds; attempt ``k`` waits ``backoff * 2**k`` unless the server sends
            ``Retry-After``.
        max_delay: Upper bound in seconds on any single wait, ``Retry-After`` included.
        cache_path: Optional JSONL verdict cache; hits make no HTTP call.

    Example:
        >>> judge = OpenAIJudge("http://127.0.0.1:8000/v1", "gpt-3.5-turbo-0125", "sk-...")  # doctest: +SKIP
        >>> judge("Where am I?", "in a kitchen", "I am in the kitchen.").correct  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        *,
        temperature: float = 0.0,
        timeout: float = 60,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_delay: float = 60.0,
        cache_path: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("judge model is empty; pass --judge-model or set FLASH_VSTREAM_JUDGE_MODEL")
        if max_retries < 0 or backoff < 0 or timeout <= 0 or max_delay < 0:
            raise ValueError("judge max_retries, backoff and max_delay must be >= 0 and timeout > 0")
        api_key = api_key.strip()
        if not (api_key.isascii() and api_key.isprintable()):
            # http.client would reject the header with a ValueError that quotes the key.
            raise ValueError(
                "judge API key holds a control or non-ASCII character; check FLASH_VSTREAM_JUDGE_API_KEY "
                "(or OPENAI_API_KEY)"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.temperature = temperature
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_delay = max_delay
        self._api_key = api_key
        self._cache = _VerdictCache(cache_path) if cache_path is not None else None
        self._sleep: Callable[[float], None] = time.sleep
        self.http_calls = 0

    def __repr__(self) -> str:
        cache = self._cache.path if self._cache is not None else None
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, cache_path={str(cache)!r})"

    @property
    def cache_path(self) -> Path | None:
        """The verdict cache file, or None when caching is off."""
        return self._cache.path if self._cache is not None else None

    def messages(self, question: str, answer: str, prediction: str) -> list[dict[str, str]]:
        """The chat messages sent for one item (system rules + the filled user template)."""
        user = USER_TEMPLATE.format(question=question, answer=answer, prediction=prediction)
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def __call__(self, question: str, answer: str, prediction: str, *, item_id: Any = None) -> Verdict:
        """Judge one prediction.

        Args:
            question: The benchmark question.
            answer: The reference answer.
            prediction: The model's answer.
            item_id: Optional item id, used only in error messages.

        Returns:
            The verdict (from the cache when this exact judgement was made before).

        Raises:
            JudgeError: A non-retryable HTTP error, or retries exhausted; the message names the item.
        """
        question, answer, prediction = str(question), str(answer), str(prediction)
        key = verdict_cache_key(self.model, question, answer, prediction)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            return hit
        verdict = self._judge_with_retries(self.messages(question, answer, prediction), item_id, question)
        if self._cache is not None:
            self._cache.put(key, verdict, self.model)
        return verdict

    def complete(self, messages: list[dict], *, what: str) -> str:
        """One chat call: the reply text of ``messages``, retrying transport failures with this judge's backoff.

        Connection errors, HTTP 429/5xx (honouring ``Retry-After``) and payloads that are not a chat-completions
        response are retried; the reply itself is returned as it is, for the caller to read. Error messages
        never show the API key.

        Args:
            messages: OpenAI chat messages (``[{"role": ..., "content": ...}, ...]``).
            what: What is being judged, for logs and errors (``"window 'g1:0'"``).

        Returns:
            The reply's message content.

        Raises:
            JudgeUnreachableError: The endpoint could not be reached at all after the retries.
            JudgeError: A non-retryable HTTP error, or retries exhausted; the message names ``what``.
        """
        return self._with_retries(lambda: self._post(messages), what)

    def _judge_with_retries(self, messages: list[dict], item_id: Any, question: str) -> Verdict:
        item = f"item {item_id!r}" if item_id is not None else f"question {question[:80]!r}"
        # An unparseable verdict is asked again, like a transport failure.
        return self._with_retries(lambda: parse_verdict(self._post(messages)), item)

    def _with_retries(self, attempt_once: Callable[[], _T], what: str) -> _T:
        """``attempt_once()`` until it returns; `_Retryable` and ``ValueError`` (an unreadable reply) retry."""
        last, unreachable = "no attempt made", False
        for attempt in range(self.max_retries + 1):
            try:
                return attempt_once()
            except _Retryable as err:
                last, delay, unreachable = str(err), err.delay, err.connection
            except ValueError as err:  # unparseable reply: ask again
                last, delay, unreachable = f"unparseable judge reply: {err}", None, False
            if attempt == self.max_retries:
                break
            wait = min(self.max_delay, delay if delay is not None else self.backoff * 2**attempt)
            # An unreachable server either comes back or ends in one clear error: keep the console quiet meanwhile;
            # throttling and server errors are worth seeing while the run waits.
            level = logging.INFO if unreachable else logging.WARNING
            logger.log(level, "judge %s: %s; retry %d/%d in %.2fs", what, last, attempt + 1, self.max_retries, wait)
            self._sleep(wait)
        attempts = self.max_retries + 1
        if unreachable:
            raise JudgeUnreachableError(
                f"cannot reach the judge at {self.base_url} ({last.removeprefix('connection error: ')}) after "
                f"{attempts} attempts; check --judge-base-url / FLASH_VSTREAM_JUDGE_BASE_URL and that the server is up"
            )
        raise JudgeError(
            f"judge gave up on {what} after {attempts} attempts at {self.base_url}: {last}. "
            "Check the endpoint and model, or raise max_retries/backoff."
        )

    def _post(self, messages: list[dict]) -> str:
        """One HTTP call; returns the reply text, raises _Retryable or JudgeError."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature})
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=body.encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"},
            method="POST",
        )
        self.http_calls += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            self._raise_for_status(err)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise _Retryable(f"connection error: {self._redact(str(reason))}", connection=True) from None
        return self._reply_text(payload)

    def _raise_for_status(self, err: urllib.error.HTTPError) -> None:
        try:
            detail = self._redact(err.read().decode("utf-8", "replace")[:300])
        except (OSError, http.client.HTTPException):  # the body is only a hint for the message
            detail = ""
        finally:
            err.close()
        if err.code == 429 or err.code >= 500:
            delay = _retry_after(err.headers.get("Retry-After"))
            raise _Retryable(f"HTTP {err.code} {detail}".strip(), delay)
        hint = {
            401: "API key rejected: set FLASH_VSTREAM_JUDGE_API_KEY (or OPENAI_API_KEY) to a valid key",
            403: "the API key may not use this model or endpoint",
            404: "check the base URL (it should end in /v1 for most servers) and the judge model name",
        }.get(err.code, "the request was rejected; check the judge model and endpoint")
        message = f"judge request to {self.base_url} failed with HTTP {err.code}: {hint}. {detail}"
        raise JudgeError(message.strip()) from None

    def _reply_text(self, payload: bytes) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = self._redact(payload[:200].decode("utf-8", "replace"))
            raise ValueError(f"not a chat-completions response: {snippet!r}") from None
        if not isinstance(content, str):
            raise ValueError(f"chat-completions message content is {type(content).__name__}, not text")
        return content

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _first_env(names: Iterable[str]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def judge_from_args(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    cache_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> OpenAIJudge:
    """Build an :class:`OpenAIJudge` from flags, falling back to environment variables.

    Resolution order: the argument, then ``FLASH_VSTREAM_JUDGE_BASE_URL`` / ``OPENAI_BASE_URL`` (default
    ``https://api.openai.com/v1``), ``FLASH_VSTREAM_JUDGE_MODEL`` (default ``gpt-3.5-turbo-0125``),
    ``FLASH_VSTREAM_JUDGE_API_KEY`` / ``OPENAI_API_KEY`` (required).

    Args:
        base_url: ``--judge-base-url``.
        model: ``--judge-model``.
        api_key: The key, for Python callers; the CLI has no flag for it and reads only the environment.
        cache_path: ``--judge-cache``, a JSONL verdict cache.
        **kwargs: Passed to :class:`OpenAIJudge` (``timeout``, ``max_retries``, ...).

    Returns:
        The judge.

    Raises:
        ValueError: No API key was given anywhere.
    """
    key = api_key or _first_env(ENV_API_KEY)
    if not key:
        raise ValueError(
            "no judge API key: set FLASH_VSTREAM_JUDGE_API_KEY (or OPENAI_API_KEY); "
            "for a local server that needs none, set it to any placeholder such as 'none'"
        )
    return OpenAIJudge(
        base_url or _first_env(ENV_BASE_URL) or DEFAULT_BASE_URL,
        model or _first_env(ENV_MODEL) or DEFAULT_JUDGE_MODEL,
        key,
        cache_path=cache_path,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------- records

_REQUIRED = ("question", "answer", "pred")


def judge_records(
    records: Iterable[dict], judge: Callable[..., Verdict], progress: bool = True
) -> list[dict]:
    """Judge prediction records.

    Args:
        records: Dicts with ``question``, ``answer`` and ``pred`` (and ideally ``id``).
        judge: Any callable ``(question, answer, prediction, *, item_id) -> Verdict``, e.g. an OpenAIJudge.
        progress: Show a tqdm progress bar.

    Returns:
        New dicts: each input record plus ``judge_correct`` (bool) and ``judge_score`` (int).

    Raises:
        ValueError: A record lacks a required field (the message names the record).
    """
    records = list(records)
    out = []
    for index, record in enumerate(tqdm(records, desc="judging", unit="item", disable=not progress)):
        missing = [name for name in _REQUIRED if record.get(name) is None]
        if missing:
            raise ValueError(
                f"record {record.get('id', f'#{index}')!r} lacks {', '.join(missing)}; "
                "every judged record needs 'question', 'answer' and 'pred'"
            )
        verdict = judge(record["question"], record["answer"], record["pred"], item_id=record.get("id", index))
        out.append({**record, "judge_correct": verdict.correct, "judge_score": verdict.score})
    return out


def _stats(rows: list[dict]) -> dict[str, float | int]:
    return {
        "count": len(rows),
        "accuracy": sum(bool(r["judge_correct"]) for r in rows) / len(rows),
        "score": sum(float(r["judge_score"]) for r in rows) / len(rows),
    }


def summarize_verdicts(
    records: Iterable[dict], group_by: str | Callable[[dict], Any] | None = None
) -> dict[str, Any]:
    """Aggregate judged records: accuracy = fraction judged correct, score = mean judge score.

    Args:
        records: Output of :func:`judge_records`.
        group_by: A record field (e.g. ``"answer_type"``) or a function of the record; records without the
            field fall in group ``"unknown"``.

    Returns:
        ``{"count", "accuracy", "score"}`` and, with ``group_by``, ``"groups": {name: {"count", "accuracy",
        "score"}}`` sorted by group name.

    Raises:
        ValueError: No records, or a record was never judged.
    """
    rows = list(records)
    if not rows:
        raise ValueError("no judged records to summarize; run judge_records first")
    for index, row in enumerate(rows):
        if "judge_correct" not in row or "judge_score" not in row:
            raise ValueError(f"record {row.get('id', f'#{index}')!r} has no verdict; run judge_records first")
    summary: dict[str, Any] = _stats(rows)
    if group_by is not None:
        key = group_by if callable(group_by) else (lambda r: r.get(group_by))
        groups: dict[str, list[dict]] = {}
        for row in rows:
            name = key(row)
            groups.setdefault("unknown" if name is None else str(name), []).append(row)
        summary["groups"] = {name: _stats(groups[name]) for name in sorted(groups)}
    return summary
