"""Two-order pairwise judging of live commentary (Inf-Streams-Eval): win rate against a reference model.

For every scored window (see `inf_streams`), the judge reads the broadcast's own commentary for the window (the
reference transcript, at most `MAX_REFERENCE_CHARS` characters) and two candidates, and names the better one.
It is asked twice, once with our model as candidate A and the reference model as B, then with the order swapped,
so a judge that prefers a position cannot favour either model. The reply must be exactly ``A`` or ``B`` (outer
whitespace aside); anything else is an *invalid* vote: counted, listed with the judge's reply, and left out of
the total. So each window gives 0 to 2 votes to each side, and

    win rate = votes for our model / all valid votes, summed over every window of every game (percent).

A window where a model said nothing is still judged, its candidate shown as `SILENT`; a window where neither
said anything is not judged (counted as ``both_silent``). Windows a run never streamed (unfinished, or its video
skipped) are not judged either (``missing`` / ``reference_missing``).

The judge is the project's OpenAI-compatible client (`judge.OpenAIJudge`: endpoint, model, retries with
backoff, an API key that is never logged), with this module's prompt (`SYSTEM_PROMPT`, `USER_TEMPLATE`,
versioned by `PROMPT_VERSION`) and its own reply cache (one JSONL line per judge call).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flash_vstream_eval.inf_streams import (
    Commentaries,
    GameSet,
    InfStreamsSettings,
    make_windows,
    window_text,
)
from flash_vstream_eval.judge import OpenAIJudge, judge_from_args

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_REFERENCE_CHARS",
    "PROMPT_VERSION",
    "PairwiseJudge",
    "Vote",
    "pairwise_judge_from_args",
    "parse_vote",
    "score_inf_streams",
    "summary_line",
]

PROMPT_VERSION = "inf-streams-pairwise-v1"
"""Names the prompt text and the reply rule; part of every cache key."""

MAX_REFERENCE_CHARS = 8000
"""The reference transcript is cut to this many characters (at a word boundary) before it is sent."""

SILENT = "(no commentary in this window)"
"""What the judge is shown for a candidate that said nothing in the window."""

SYSTEM_PROMPT = (
    "You judge live sports commentary. You receive the transcript of the human broadcast commentary for a "
    "stretch of a game, and two candidate commentaries, A and B, written for the same stretch by two systems "
    "watching the video. Decide which candidate is the better live commentary.\n"
    "Criteria, most important first:\n"
    "1. Broadcast tone and pacing: it sounds like a live broadcaster speaking as the play unfolds, with energy "
    "where the action calls for it, without long silences, filler or repeating itself.\n"
    "2. Consistency and accuracy: it agrees with the reference transcript and with the visible action on what "
    "happens (players, teams, score, events) and does not contradict itself.\n"
    "Reply with a single letter, A or B, and nothing else."
)

USER_TEMPLATE = (
    "Reference transcript:\n{reference}\n\n"
    "Candidate A:\n{a}\n\n"
    "Candidate B:\n{b}\n\n"
    "Which candidate is the better live commentary? Answer with exactly one letter: A or B."
)


@dataclass(frozen=True)
class Vote:
    """One judge call: the letter chosen (``None`` when the reply was not exactly ``A`` or ``B``) and the reply."""

    choice: str | None
    raw: str


def parse_vote(reply: str) -> Vote:
    """``"A"``/``"B"`` (outer whitespace allowed) is a vote; any other reply is an invalid one."""
    letter = reply.strip()
    return Vote(letter if letter in ("A", "B") else None, reply)


def clip_reference(text: str, limit: int = MAX_REFERENCE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, at the last word boundary before the limit."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def vote_cache_key(model: str, reference: str, a: str, b: str) -> str:
    """SHA-256 over the judge model, `PROMPT_VERSION` and the three texts."""
    payload = json.dumps([model, PROMPT_VERSION, reference, a, b], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class _ReplyCache:
    """Append-only JSONL of judge replies (``{"key", "model", "prompt_version", "reply"}``), flushed per line."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._replies: dict[str, str] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as handle:
                for line_no, line in enumerate(handle, 1):
                    try:
                        row = json.loads(line)
                        self._replies[row["key"]] = str(row["reply"])
                    except (ValueError, KeyError, TypeError):  # a torn last line: that call is made again
                        if line.strip():
                            logger.warning("skipping unreadable judge cache line %s:%d", self.path, line_no)

    def get(self, key: str) -> str | None:
        return self._replies.get(key)

    def put(self, key: str, reply: str, model: str) -> None:
        row = {"key": key, "model": model, "prompt_version": PROMPT_VERSION, "reply": reply}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._replies[key] = reply


class PairwiseJudge:
    """Asks an OpenAI-compatible judge which of two commentaries is better; replies cached.

    Args:
        client: The endpoint, model, key and retry settings (`judge.OpenAIJudge`); its own verdict cache is not
            used (pass it none).
        cache_path: Optional JSONL reply cache; a hit makes no HTTP call.

    Example:
        >>> judge = pairwise_judge_from_args(model="gpt-5", cache_path="runs/inf/votes.jsonl")  # doctest: +SKIP
        >>> judge("reference ...", "candidate A ...", "candidate B ...").choice  # doctest: +SKIP
        'A'
    """

    def __init__(self, client: OpenAIJudge, cache_path: str | os.PathLike | None = None) -> None:
        self.client = client
        self._cache = _ReplyCache(cache_path) if cache_path is not None else None

    def __repr__(self) -> str:
        cache = None if self._cache is None else str(self._cache.path)
        return f"PairwiseJudge(client={self.client!r}, cache_path={cache!r})"

    @staticmethod
    def messages(reference: str, a: str, b: str) -> list[dict[str, str]]:
        """The chat messages of one call (the reference already clipped)."""
        user = USER_TEMPLATE.format(reference=reference, a=a or SILENT, b=b or SILENT)
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def __call__(self, reference: str, a: str, b: str, *, item_id: Any = None) -> Vote:
        """Judge candidate ``a`` against ``b`` for a window whose broadcast commentary is ``reference``.

        Raises:
            JudgeError: The endpoint refused the request or kept failing (`JudgeUnreachableError` when it
                could not be reached at all); the message names the window.
        """
        reference = clip_reference(reference)
        key = vote_cache_key(self.client.model, reference, a, b)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            return parse_vote(hit)
        # An off-rule reply is a vote for neither, not a failure: only transport failures are retried.
        reply = self.client.complete(self.messages(reference, a, b), what=f"window {item_id!r}")
        if self._cache is not None:
            self._cache.put(key, reply, self.client.model)
        return parse_vote(reply)


def pairwise_judge_from_args(
    base_url: str | None = None, model: str | None = None, cache_path: str | os.PathLike | None = None, **kwargs: Any
) -> PairwiseJudge:
    """A `PairwiseJudge` whose endpoint, model and key resolve as `judge.judge_from_args` does (flags, env)."""
    return PairwiseJudge(judge_from_args(base_url=base_url, model=model, cache_path=None, **kwargs), cache_path)


# --------------------------------------------------------------------------------------------- scoring

Judge = Callable[..., Vote]


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 4) if whole else None


def _judge_window(judge: Judge, window, ours: str, theirs: str) -> tuple[dict, list[dict]]:
    """Both orders for one window: its row (votes per side) and its invalid votes."""
    row = {"id": window.id, "ours": 0, "reference": 0, "invalid": 0, "silent": []}
    invalid = []
    # Order 1 shows our model as A; order 2 as B. The letter chosen maps back to a model.
    for order, (a, b), ours_letter in (("A/B", (ours, theirs), "A"), ("B/A", (theirs, ours), "B")):
        vote = judge(window.reference, a, b, item_id=f"{window.id} {order}")
        if vote.choice is None:
            row["invalid"] += 1
            invalid.append({"id": window.id, "order": order, "reply": vote.raw[:200]})
        else:
            row["ours" if vote.choice == ours_letter else "reference"] += 1
    return row, invalid


def _game_summary(rows: list[dict]) -> dict[str, Any]:
    ours, theirs = sum(r["ours"] for r in rows), sum(r["reference"] for r in rows)
    return {"win_rate": _percent(ours, ours + theirs), "windows": len(rows), "votes": ours + theirs,
            "votes_ours": ours, "invalid": sum(r["invalid"] for r in rows)}


def score_inf_streams(
    games: GameSet,
    ours: Commentaries,
    reference: Commentaries,
    judge: Judge,
    settings: InfStreamsSettings | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Judge our model's commentary against a reference model's over every scored window; see the module docstring.

    Args:
        games: The benchmark's games (`inf_streams.load_games`).
        ours: Our model's outputs (`inf_streams.read_commentary`).
        reference: The reference model's outputs.
        judge: ``judge(reference_text, a, b, *, item_id) -> Vote``, e.g. a `PairwiseJudge`.
        settings: Window length, minimum words and start time (the others are not used here).
        progress: Show a progress bar over windows.

    Returns:
        The results dict: ``metrics.win_rate`` (percent, ``None`` without any valid vote), ``counts``, per-game
        summaries (``games``), per-window votes (``windows``) and the invalid votes with the judge's replies.
    """
    settings = settings or InfStreamsSettings()
    counts = dict.fromkeys(("scored", "votes", "votes_ours", "votes_reference", "invalid", "both_silent",
                            "silent_ours", "silent_reference", "missing", "reference_missing", "dropped_windows"), 0)
    plan = []
    for game in games.games:
        kept, dropped = make_windows(game, settings)
        counts["dropped_windows"] += len(dropped)
        plan += [(game, window) for window in kept]
    rows: dict[str, list[dict]] = {}
    windows, invalid = [], []
    for game, window in tqdm(plan, desc="judging windows", disable=not progress, dynamic_ncols=True):
        if not ours.covers(game.video, window.start, window.end):
            counts["missing"] += 1
            continue
        if not reference.covers(game.video, window.start, window.end):
            counts["reference_missing"] += 1
            continue
        a = window_text(ours.segments.get(game.video, []), window.start, window.end)
        b = window_text(reference.segments.get(game.video, []), window.start, window.end)
        counts["silent_ours"] += not a
        counts["silent_reference"] += not b
        if not a and not b:
            counts["both_silent"] += 1
            continue
        row, bad = _judge_window(judge, window, a, b)
        row["silent"] = [side for side, text in (("ours", a), ("reference", b)) if not text]
        windows.append(row)
        invalid += bad
        rows.setdefault(game.video, []).append(row)
    counts["scored"] = len(windows)
    counts["votes_ours"] = sum(r["ours"] for r in windows)
    counts["votes_reference"] = sum(r["reference"] for r in windows)
    counts["votes"] = counts["votes_ours"] + counts["votes_reference"]
    counts["invalid"] = len(invalid)
    counts["games"] = len(games.games)
    counts["reversed_word_times"] = games.reversed_times
    client = getattr(judge, "client", None)
    return {
        "benchmark": "inf_streams",
        "profile": "pairwise",
        "metrics": {"win_rate": _percent(counts["votes_ours"], counts["votes"])},
        "counts": counts,
        "predictions": str(ours.source),
        "reference": str(reference.source),
        "judge": {"model": getattr(client, "model", None), "base_url": getattr(client, "base_url", None),
                  "prompt_version": PROMPT_VERSION},
        "settings": {"window": settings.window, "min_words": settings.min_words, "start": settings.start},
        "games": {video: _game_summary(game_rows) for video, game_rows in rows.items()},
        "windows": windows,
        "invalid": invalid,
        "skipped": [{"id": key, "reason": reason} for key, reason in ours.skipped.items()],
        "malformed": [],
        "breakdowns": {},
    }


def summary_line(results: dict[str, Any]) -> str:
    """One line: the win rate, the votes behind it, and everything left out.

    >>> summary_line({"metrics": {"win_rate": 62.5}, "reference": "ref.jsonl", "counts": {"votes": 8,
    ...               "votes_ours": 5, "invalid": 2, "scored": 5, "missing": 0, "both_silent": 1}})
    'inf_streams: win rate 62.5 vs ref.jsonl (5 of 8 votes, 5 windows judged, invalid votes 2, both silent 1)'
    """
    counts = results["counts"]
    rate = results["metrics"]["win_rate"]
    head = f"inf_streams: win rate {'-' if rate is None else f'{rate:.1f}'} vs {Path(results['reference']).name}"
    parts = [f"{counts['votes_ours']} of {counts['votes']} votes", f"{counts['scored']} windows judged"]
    for key, label in (("invalid", "invalid votes"), ("both_silent", "both silent"), ("missing", "missing"),
                       ("reference_missing", "missing in reference"), ("reversed_word_times", "reversed word times")):
        if counts.get(key):
            parts.append(f"{label} {counts[key]}")
    return f"{head} ({', '.join(parts)})"
