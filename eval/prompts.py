"""Prompt text per scoring profile and benchmark family; every string here is pinned by a snapshot test.

A prompt function takes an `Item` and the selected subtitle text (Video-MME with subtitles; ``None`` otherwise)
and returns the user text handed to the model; the assistant prefix (e.g. "Best option: (") is separate (see
`flash_vstream_eval.profiles`). The models' interface has a single text input, so where an official protocol
uses a system message (MLVU, MVBench) it is prepended to the user text. Each wording is the one its source
uses: the Flash-VStream-Qwen evaluation scripts, each benchmark's official evaluation code, and lmms-eval's
task definitions.
"""

from __future__ import annotations

from collections.abc import Callable

from flash_vstream_eval.items import LETTERS, Item

__all__ = ["PromptFn", "PROMPTS"]

PromptFn = Callable[[Item, "str | None"], str]

# --- wordings

SELECT_VIDEO = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
SELECT_VIDEO_SUBS = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
SUBS_HEADER = "This video's subtitles are listed below: \n"
OPEN_ENDED = "Answer the following open-ended question based on the video. "
ONLY_BEST = "Only give the best option."
LETTER_DIRECTLY = "Answer with the option's letter from the given choices directly."
MLVU_SYSTEM = (
    "Carefully watch this video and pay attention to every detail. "
    "Based on your observations, select the best option that accurately addresses the question.\n"
)
MVBENCH_SYSTEM = (
    "Carefully watch the video and pay attention to the cause and sequence of events, "
    "the detail and movement of objects, and the action and pose of persons. "
    "Based on your observations, select the best option that accurately addresses the question.\n"
)


def paren_options(item: Item) -> str:
    r"""``(A) first\n(B) second`` ..."""
    return "\n".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(item.options or ()))


def dot_options(item: Item) -> str:
    r"""``A. first\nB. second`` ..."""
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(item.options or ()))


# --- flash-vstream: the published Flash-VStream-Qwen evaluation


def _flash_question(item: Item, family: str) -> str:
    """The question as Flash-VStream's ``test_qa.json`` writes it: verbatim from it, else re-rendered."""
    if item.source == "flash" and item.question_text is not None:
        return item.question_text
    if family == "egoschema":
        return (
            "Select the best answer to the following question based on the egocentric video.\n"
            f"Question: {item.question}\n{paren_options(item)}\n{ONLY_BEST}"
        )
    if family == "videomme":
        return f"{item.question}\n{dot_options(item)}"
    if family == "mlvu":
        return f"{item.question}\nOptions:\n{paren_options(item)}\n"
    if family == "mvbench":
        return f"Question: {item.question}\nOptions:\n{paren_options(item)}"
    return f"{item.question}\n{paren_options(item)}"


def flash_prompt(family: str) -> PromptFn:
    def prompt(item: Item, subtitles: str | None) -> str:
        if not item.is_multiple_choice:
            return OPEN_ENDED + item.question
        # As published: the instruction and the question are joined with no separator.
        if subtitles is not None:
            return SUBS_HEADER + subtitles + "\n" + SELECT_VIDEO_SUBS + _flash_question(item, family)
        return SELECT_VIDEO + _flash_question(item, family)

    return prompt


# --- official: each benchmark's own protocol


def _official_choice(system: str, option_header: str) -> PromptFn:
    def prompt(item: Item, subtitles: str | None) -> str:
        body = f"Question: {item.question}\n{option_header}\n{paren_options(item)}".rstrip()
        return f"{system}{body}\n{ONLY_BEST}"

    return prompt


def _official_videomme(item: Item, subtitles: str | None) -> str:
    if subtitles is not None:
        return (
            f"This video's subtitles are listed below:\n{subtitles}\n{SELECT_VIDEO_SUBS}\n"
            f"{item.question}\n{dot_options(item)}\nThe best answer is:"
        )
    return f"{SELECT_VIDEO}\n{item.question}\n{dot_options(item)}\nThe best answer is:"


def _official_lvbench(item: Item, subtitles: str | None) -> str:
    return f"{item.question}\n{paren_options(item)}\n{LETTER_DIRECTLY}"


def _open_ended(item: Item, subtitles: str | None) -> str:
    return OPEN_ENDED + item.question


# --- lmms-eval: its task prompts


def _embedded(item: Item) -> str:
    """Question with inline options: lmms-eval sends the dataset's text unchanged when it has one."""
    if item.source in ("lmms", "official") and item.question_text is not None:
        return item.question_text
    return f"{item.question}\n{paren_options(item)}"


def _lmms_egoschema(item: Item, subtitles: str | None) -> str:
    options = "".join(f"\n{LETTERS[i]}. {option}" for i, option in enumerate(item.options or ()))
    return f"{item.question}{options}\n{LETTER_DIRECTLY}"


def _lmms_mlvu(item: Item, subtitles: str | None) -> str:
    return f"{_embedded(item)}\n{ONLY_BEST}\nBest option: ("


def _lmms_lvbench(item: Item, subtitles: str | None) -> str:
    return f"{_embedded(item)}\nAnswer the question with the option letter"


def _lmms_mvbench(item: Item, subtitles: str | None) -> str:
    options = "".join(f"({LETTERS[i]}) {option}\n" for i, option in enumerate(item.options or ()))
    return f"Question:{item.question}\nOption:\n{options}{ONLY_BEST}\n"


def _lmms_videomme(item: Item, subtitles: str | None) -> str:
    if subtitles is not None:
        return (
            f"{SUBS_HEADER}{subtitles}\n{SELECT_VIDEO_SUBS}\n{item.question}\n{dot_options(item)}\n"
            "The best answer is:"
        )
    # lmms-eval says "and the subtitles" even without them, and its post-prompt starts with a newline.
    return f"{SELECT_VIDEO_SUBS}\n{item.question}\n{dot_options(item)}\n\n{LETTER_DIRECTLY}"


FAMILIES = ("egoschema", "mlvu", "lvbench", "mvbench", "videomme", "vstream")

PROMPTS: dict[str, dict[str, PromptFn]] = {
    "flash-vstream": {family: flash_prompt(family) for family in FAMILIES},
    "official": {
        "egoschema": _official_choice("", "Options:"),
        "mlvu": _official_choice(MLVU_SYSTEM, "Options:"),
        "lvbench": _official_lvbench,
        "mvbench": _official_choice(MVBENCH_SYSTEM, "Options:"),
        "videomme": _official_videomme,
        "vstream": _open_ended,
    },
    "lmms-eval": {
        "egoschema": _lmms_egoschema,
        "mlvu": _lmms_mlvu,
        "lvbench": _lmms_lvbench,
        "mvbench": _lmms_mvbench,
        "videomme": _lmms_videomme,
        "vstream": _open_ended,
    },
}
"""``PROMPTS[profile][family](item, subtitles) -> str``."""
