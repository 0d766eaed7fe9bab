"""Accuracy of a model on held-out synthetic questions, by question kind (the demo model's tests and docs).

The held-out set is made by seed at call time (:func:`~flash_vstream.data.synthetic.make_samples` with
``split="heldout"``), rendered in memory and asked one question per clip, so nothing large is stored. An answer
is right when, lower-cased and stripped of punctuation and a leading "the", it equals the expected answer (a
letter, said last, for the multiple-choice form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from flash_vstream.data.scenes import render
from flash_vstream.data.synthetic import SHORT_KINDS, Question, make_samples

ATTRIBUTE_KINDS = ("colour", "shape", "motion")
EVAL_KINDS = (*ATTRIBUTE_KINDS, "count", "order", "event")
"""The kinds the demo model's accuracy is measured on (every short-clip kind)."""


def normalise(text: str) -> str:
    """``"The red circle."`` -> ``"red circle"``."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    if words and words[0] == "the":
        words = words[1:]
    return " ".join(words)


def is_correct(prediction: str, question: Question) -> bool:
    """Whether ``prediction`` answers ``question``.

    The choice form is right when the reply's last word is the right letter (``"red B"``, or a bare ``"B"``).
    """
    said = normalise(prediction)
    if question.form == "choice":
        return said.split()[-1:] == [question.answer.lower()]
    return said == normalise(question.answer)


@dataclass
class Accuracy:
    """Right and asked counts by question kind, and by kind and form (``"colour/short"``, ``"colour/choice"``)."""

    right: dict[str, int] = field(default_factory=dict)
    asked: dict[str, int] = field(default_factory=dict)
    form_right: dict[str, int] = field(default_factory=dict)
    form_asked: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, ok: bool, form: str | None = None) -> None:
        keyed = [(kind, self.right, self.asked)]
        if form is not None:
            keyed.append((f"{kind}/{form}", self.form_right, self.form_asked))
        for key, right, asked in keyed:
            asked[key] = asked.get(key, 0) + 1
            right[key] = right.get(key, 0) + int(ok)

    def of(self, *kinds: str) -> float:
        """Accuracy over ``kinds`` pooled, in [0, 1]."""
        asked = sum(self.asked.get(k, 0) for k in kinds)
        if not asked:
            raise ValueError(f"no question of kinds {kinds} was asked")
        return sum(self.right.get(k, 0) for k in kinds) / asked

    def table(self) -> dict[str, dict]:
        return _rows(self.right, self.asked)

    def form_table(self) -> dict[str, dict]:
        """Like :meth:`table`, by ``"kind/form"``: a model can know an answer and still miss the letter."""
        return _rows(self.form_right, self.form_asked)


def _rows(right: dict[str, int], asked: dict[str, int]) -> dict[str, dict]:
    return {k: {"right": right[k], "asked": n, "accuracy": round(right[k] / n, 4)} for k, n in sorted(asked.items())}


def evaluate(model, *, seed: int = 0, n: int = 600, kinds: tuple[str, ...] = SHORT_KINDS,
             choice_rate: float = 0.3, max_new_tokens: int = 6) -> Accuracy:
    """Ask ``model`` the first question of each of ``n`` held-out clips made with ``seed``.

    Args:
        model: a :class:`~flash_vstream.inference.pipeline.FlashVStream`.
        seed: seed of the held-out set.
        n: clips; kinds are cycled, so each kind gets ``n / len(kinds)`` questions.
        kinds: question kinds.
        choice_rate: share of multiple-choice questions.
        max_new_tokens: generation budget of each answer.

    Returns:
        The counts by kind.
    """
    result = Accuracy()
    for sample in make_samples("heldout", seed, n, tuple(kinds), choice_rate=choice_rate):
        question = sample.questions[0]
        answer = model.answer(question.text, frames=render(sample.scene), max_new_tokens=max_new_tokens)
        result.add(question.kind, is_correct(answer, question), question.form)
    return result
