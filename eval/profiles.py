"""Scoring profiles: named bundles of prompt, frame plan, answer extraction and aggregation per benchmark.

* ``flash-vstream`` - the published Flash-VStream-Qwen evaluation scripts: its prompt, the "Best option: ("
  assistant prefix, the first ``[A-E]`` letter of the reply, overall plus
  per-category accuracy; 1 fps frames (at least 4), at most 240 spread uniformly; Video-MME subtitles picked
  at 180 uniform frames. Where no letter is found the published code guesses at random; we guess
  deterministically from a hash of the item id (`extractors.fallback_letter`) and report the fallback rate.
* ``official`` - each benchmark's own rules: Video-MME's parser with unanswered items left out of the
  denominator; MLVU's M-Avg (mean over task types) with 16 segment-middle frames; MVBench per-task accuracy
  and their mean, 16 segment-middle frames inside the start/end windows; LVBench counting a multi-type
  question toward each type; EgoSchema scored on the labelled 500 with the full set written as a submission
  file.
* ``lmms-eval`` - lmms-eval's task prompts and extractors, so numbers compare with its leaderboards
  (all reported in percent; lmms-eval logs EgoSchema and LVBench as fractions). It leaves the frame count to
  each model adapter; we use 32 uniform frames, its Video-MME subtitle default.

Benchmarks without an official frame rule (EgoSchema, LVBench, Video-MME, VStream-QA) use the Flash-VStream
frame plan under ``official``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flash_vstream_eval import extractors as ex
from flash_vstream_eval.items import LETTERS, Item
from flash_vstream_eval.prompts import FAMILIES, PROMPTS, PromptFn

__all__ = ["PROFILES", "FramePlan", "MCVerdict", "Profile", "Rules", "get_profile"]


@dataclass(frozen=True)
class FramePlan:
    """How to sample frames; mirrors ``flash_vstream.video.FrameSampler``'s fields."""

    policy: str
    """"fps", "uniform" or "segment_middle"."""
    num_frames: int | None = None
    """Frames for "uniform"/"segment_middle"."""
    target_fps: float = 1.0
    """Rate of the "fps" policy."""
    min_frames: int = 4
    """Fewest frames of the "fps" policy."""
    max_frames: int = 240
    """Most frames of the "fps" policy."""


@dataclass(frozen=True)
class MCVerdict:
    """The outcome of one multiple-choice reply."""

    extracted: str
    """What the rule read from the reply (a letter, or the official rule's raw token); "" when nothing."""
    correct: bool
    answered: bool
    """False when the rule found no answer (Video-MME official leaves those out of the denominator)."""
    fallback: bool = False
    """True when the letter is the deterministic stand-in for a random guess."""


MCScorer = Callable[[str, Item], MCVerdict]


@dataclass(frozen=True)
class Rules:
    """What one profile does on one benchmark family."""

    prompt: PromptFn
    """``(item, subtitles) -> user text``."""
    score_mc: MCScorer
    """Reads a multiple-choice reply (unused for open-ended sets)."""
    frames: FramePlan
    assistant_prefix: str = ""
    """Text the answer is forced to start with, appended after the assistant header."""
    max_new_tokens: int = 16
    exclude: str = "none"
    """Items left out of the denominator: "none", "unanswered" (no letter found) or "empty_reply"."""
    headline: str = "accuracy"
    """Headline metric: "accuracy" (pooled) or "task_mean" (unweighted mean over ``task_type``)."""
    subtitle_frames: int | None = None
    """Uniform frames at which subtitles are selected; ``None`` for the frames given to the model."""


@dataclass(frozen=True)
class Profile:
    """A named scoring profile: `Rules` for each benchmark family."""

    name: str
    rules: dict[str, Rules]

    def for_family(self, family: str) -> Rules:
        return self.rules[family]


# --- scorers


def _letters(item: Item) -> str:
    return LETTERS[: len(item.options or ())]


def flash_first_letter(reply: str, item: Item) -> MCVerdict:
    letter = ex.first_letter(reply, "ABCDE")
    fallback = letter == ""
    if fallback:
        letter = ex.fallback_letter(item.id, len(item.options or ()))
    return MCVerdict(letter, letter == item.answer_letter, True, fallback)


def strict_first_letter(reply: str, item: Item) -> MCVerdict:
    letter = ex.first_letter(reply, _letters(item))
    return MCVerdict(letter, bool(letter) and letter == item.answer_letter, bool(letter))


def lmms_shared(reply: str, item: Item) -> MCVerdict:
    letter = ex.lmms_mcq_letter(reply, tuple(_letters(item)))
    return MCVerdict(letter, bool(letter) and letter == item.answer_letter, bool(letter))


def lmms_egoschema(reply: str, item: Item) -> MCVerdict:
    letter, fallback = ex.mmmu_letter(reply, item.options or (), item.id)
    return MCVerdict(letter, letter == item.answer_letter, True, fallback)


def lmms_mvbench(reply: str, item: Item) -> MCVerdict:
    letter = ex.lmms_mvbench_letter(reply)
    return MCVerdict(letter, bool(letter) and letter == item.answer_letter, bool(letter))


def videomme_official(reply: str, item: Item) -> MCVerdict:
    letter = ex.videomme_official_letter(reply)
    return MCVerdict(letter, bool(letter) and letter == item.answer_letter, bool(letter))


def mlvu_official(reply: str, item: Item) -> MCVerdict:
    token = ex.before_paren(reply)
    return MCVerdict(token, token == item.answer_letter, bool(token))


def mvbench_official(reply: str, item: Item) -> MCVerdict:
    token = reply.lower().split(" ")[0].replace(".", "")
    return MCVerdict(token, ex.mvbench_official_correct(reply, item.answer_letter or ""), True)


# --- the three profiles

FLASH_FRAMES = FramePlan("fps", target_fps=1.0, min_frames=4, max_frames=240)
SEGMENT_16 = FramePlan("segment_middle", num_frames=16)
UNIFORM_32 = FramePlan("uniform", num_frames=32)
OPEN_ENDED_TOKENS = 256


def _flash_profile() -> Profile:
    rules = {
        family: Rules(
            PROMPTS["flash-vstream"][family],
            flash_first_letter,
            FLASH_FRAMES,
            "Best option: (",
            max_new_tokens=128,
            subtitle_frames=180,
        )
        for family in FAMILIES
    }
    rules["vstream"] = Rules(
        PROMPTS["flash-vstream"]["vstream"],
        flash_first_letter,
        FLASH_FRAMES,
        max_new_tokens=OPEN_ENDED_TOKENS,
    )
    return Profile("flash-vstream", rules)


def _official_profile() -> Profile:
    prompts = PROMPTS["official"]
    return Profile(
        "official",
        {
            "egoschema": Rules(prompts["egoschema"], strict_first_letter, FLASH_FRAMES, "Best option:("),
            "mlvu": Rules(prompts["mlvu"], mlvu_official, SEGMENT_16, "Best option:(", headline="task_mean"),
            "lvbench": Rules(prompts["lvbench"], strict_first_letter, FLASH_FRAMES),
            "mvbench": Rules(
                prompts["mvbench"], mvbench_official, SEGMENT_16, "Best option:(", headline="task_mean"
            ),
            "videomme": Rules(prompts["videomme"], videomme_official, FLASH_FRAMES, exclude="unanswered"),
            "vstream": Rules(
                prompts["vstream"], strict_first_letter, FLASH_FRAMES, max_new_tokens=OPEN_ENDED_TOKENS
            ),
        },
    )


def _lmms_profile() -> Profile:
    prompts = PROMPTS["lmms-eval"]
    return Profile(
        "lmms-eval",
        {
            "egoschema": Rules(prompts["egoschema"], lmms_egoschema, UNIFORM_32),
            "mlvu": Rules(prompts["mlvu"], lmms_shared, UNIFORM_32, headline="task_mean"),
            "lvbench": Rules(prompts["lvbench"], lmms_shared, UNIFORM_32),
            "mvbench": Rules(prompts["mvbench"], lmms_mvbench, UNIFORM_32, exclude="empty_reply"),
            "videomme": Rules(prompts["videomme"], lmms_shared, UNIFORM_32),
            "vstream": Rules(
                prompts["vstream"], strict_first_letter, UNIFORM_32, max_new_tokens=OPEN_ENDED_TOKENS
            ),
        },
    )


PROFILES: dict[str, Profile] = {p.name: p for p in (_flash_profile(), _official_profile(), _lmms_profile())}


def get_profile(name: str | Profile) -> Profile:
    """Look a profile up by name (or pass one through).

    Raises:
        ValueError: For an unknown name; the message lists the known ones.
    """
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)} (--profile).")
    return PROFILES[name]
