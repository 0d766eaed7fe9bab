"""Answer extraction: from a model's reply to an option letter, one function per published rule.

Each function restates one benchmark's or toolkit's published answer-reading rule in our own code (nothing is
copied):

* `first_letter` - Flash-VStream-Qwen ``extract_answer``: the first capital ``[A-E]`` anywhere in the reply.
  Where the published code picks a *random* letter when none is found, we use `fallback_letter`, a
  deterministic choice from a hash of the item id (same chance level, reproducible), and report how often.
* `lmms_mcq_letter` - lmms-eval ``extract_mcq_answer`` (MLVU, LVBench, Video-MME) as of lmms-eval 0.7.2: the
  highest-priority letter pattern wins, the last one among equals.
* `mmmu_letter` - lmms-eval EgoSchema (MMMU-style ``parse_multi_choice_response``), with the deterministic
  fallback instead of ``random.choice``.
* `lmms_mvbench_letter` - lmms-eval MVBench ``mcq_acc``.
* `videomme_official_letter` - Video-MME ``extract_characters_regex``; ``""`` means unanswered.
* `before_paren` - MLVU official: the reply cut before its first ``)``.
* `mvbench_official_correct` - MVBench official ``check_ans`` (first token containment).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Sequence

__all__ = [
    "before_paren",
    "fallback_letter",
    "first_letter",
    "lmms_mcq_letter",
    "lmms_mvbench_letter",
    "mmmu_letter",
    "mvbench_official_correct",
    "videomme_official_letter",
]


def fallback_letter(item_id: str, num_options: int) -> str:
    """Deterministic stand-in for a random guess: option ``sha256(id) mod num_options``.

    The published pipelines guess uniformly at random when no letter is found; hashing the id keeps the same
    expected accuracy (chance level) while making runs reproducible.
    """
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return "ABCDEFGH"[int.from_bytes(digest[:8], "big") % num_options]


def first_letter(reply: str, letters: str = "ABCDE") -> str:
    """The first capital letter from ``letters`` anywhere in ``reply``, or ``""`` (Flash-VStream rule)."""
    match = re.search(f"[{letters}]", reply)
    return match.group(0) if match else ""


# lmms-eval extract_mcq_answer: answer phrases (matched case-insensitively, first occurrence of each) ...
_LMMS_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
# ... and the substring formats with their priorities (higher wins; among equals the last occurrence wins).
_LMMS_FORMATS = ((6, "({})"), (5, "{}."), (4, "{}:"), (3, "{})"), (2, "{} "))


def lmms_mcq_letter(reply: str, choices: Sequence[str] = ("A", "B", "C", "D")) -> str:
    """lmms-eval's shared letter extractor (priority rules of 0.7.2), or ``""`` when nothing matches.

    The reply is stripped of whitespace and of ``,.!?;:'"`` at both ends, then padded with a space. Candidates,
    by priority: it starts with a letter not followed by another letter (10); it ends with a letter not
    preceded by one (9); the first capital of each choice after the first occurrence of an answer phrase such
    as "the answer is" (7); ``(X)`` (6), ``X.`` (5), ``X:`` (4), ``X)`` (3), ``X `` (2), each its last
    occurrence and matched as a plain substring (so inside words too); only when none of these matched, the
    last occurrence of a choice letter anywhere (0). The highest priority wins, then the latest position.
    """
    text = reply.strip()
    for char in ",.!?;:'\"":
        text = text.strip(char)
    if not text:
        return ""
    text = f" {text} "
    candidates: list[tuple[int, int, str]] = []  # (priority, position, letter)
    for priority, template in _LMMS_FORMATS:
        for choice in choices:
            position = text.rfind(template.format(choice))
            if position >= 0:
                candidates.append((priority, position, choice))
    lowered = text.lower()
    for phrase in _LMMS_PHRASES:
        at = lowered.find(phrase)
        if at >= 0:
            for choice in choices:
                position = text.find(choice, at + len(phrase))
                if position >= 0:
                    candidates.append((7, position, choice))
    core = text.strip()
    for choice in choices:
        if core.startswith(choice) and (len(core) == 1 or not core[1].isalpha()):
            candidates.append((10, 0, choice))
        if core.endswith(choice) and (len(core) == 1 or not core[-2].isalpha()):
            candidates.append((9, len(text) - 1, choice))
    if not candidates:
        candidates = [(0, text.rfind(choice), choice) for choice in choices if choice in text]
    return max(candidates)[2] if candidates else ""


def mmmu_letter(reply: str, options: Sequence[str], item_id: str) -> tuple[str, bool]:
    """lmms-eval EgoSchema extraction (MMMU ``parse_multi_choice_response``), deterministic fallback.

    Looks for ``(X)``, then ``X `` / ``X.`` tokens; for replies longer than 5 words also for an option's text.
    Several candidates: the one occurring last wins.

    Returns:
        ``(letter, used_fallback)``.
    """
    letters = "ABCDEFGH"[: len(options)]
    text = " " + reply.strip().strip(",.!?;:'") + " "
    found: dict[str, int] = {}
    for letter in letters:
        position = text.rfind(f"({letter})")
        if position >= 0:
            found[letter] = position
    if not found:
        for letter in letters:
            position = max(text.rfind(f" {letter} "), text.rfind(f" {letter}."))
            if position >= 0:
                found[letter] = position
    if not found and len(text.split()) > 5:
        lowered = text.lower()
        for letter, option in zip(letters, options, strict=True):
            position = lowered.rfind(option.lower())
            if option and position >= 0:
                found[letter] = position
    if not found:
        return fallback_letter(item_id, len(options)), True
    return max(found, key=lambda letter: found[letter]), False


def lmms_mvbench_letter(reply: str) -> str:
    r"""lmms-eval MVBench: ``^([A-E])\.``, else the first stand-alone ``[A-E]`` after dropping punctuation.

    Case-insensitive, as published: a reply starting "a person ..." reads as "A".
    """
    text = reply.strip()
    match = re.match(r"([A-E])\.", text, re.IGNORECASE)
    if match:
        return match.group(1).upper()
    cleaned = text.translate(str.maketrans("", "", string.punctuation))
    match = re.search(r"\b([A-E])\b", cleaned, re.IGNORECASE)
    return match.group(1).upper() if match else ""


# The official list as written: two missing commas glue the last four prefixes into two strings.
_VIDEOMME_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)


def videomme_official_letter(reply: str) -> str:
    """Video-MME ``extract_characters_regex``: first ``[ABCD]`` after prefix removal; ``""`` = unanswered."""
    text = reply.strip()
    for prefix in _VIDEOMME_PREFIXES:
        text = text.replace(prefix, "")
    if len(text.split()) > 10 and not re.search("[ABCD]", text):
        return ""
    match = re.search("[ABCD]", text)
    return match.group(0) if match else ""


def before_paren(reply: str) -> str:
    """MLVU official: the reply up to its first ``)``, stripped.

    After the "Best option:(" prefix this is the letter.
    """
    return reply.split(")")[0].strip()


def mvbench_official_correct(reply: str, answer_letter: str) -> bool:
    """MVBench official ``check_ans``: the reply's first token (lower-cased, dots dropped) vs ``"(x)"``.

    Correct when that token is contained in the ground-truth option tag or contains it. As published, an
    empty reply counts as correct (the empty string is contained in every tag); we keep that for parity.
    """
    token = reply.lower().split(" ")[0].replace(".", "")
    tag = f"({answer_letter.lower()})"
    return token in tag or tag in token
