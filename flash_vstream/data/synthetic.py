"""Procedural synthetic video-QA: scenes drawn from a seed, questions with exact answers, held-out splits.

Every sample is a :class:`~flash_vstream.data.scenes.Scene` plus questions about it, all drawn from one *scene
seed*, so a sample is reproduced exactly from ``(split, seed, index)``. Question kinds:

===========  ==============================================================================================
kind         question (several phrasings each)                          answer
===========  ==============================================================================================
``colour``   "What colour is the circle?"                               red, green, blue, yellow, white, purple
``shape``    "What shape is the red object?"                            circle, square, triangle, star
``motion``   "Which way does the red circle move?"                      left, right, up, down, static
``count``    "How many objects are there?"                              1, 2, 3, 4
``order``    "Which appeared first, the red circle or the blue star?"   the object's name ("red circle")
``event``    "What happens to the red circle?"                          appears, leaves, changes colour, flashes
``needle``   "What colour is the star?", asked after a stream of        its colour or its shape
             100-10,000 frames in which the star was seen for 3
             frames at a random time
===========  ==============================================================================================

Each question also has a multiple-choice form (options ``A.``-``D.``, answered by the option then its letter,
:data:`CHOICE_REPLY`). Short clips (the first six kinds) have 6-10 frames, one per second; in them every object has
its own colour and its own shape, so "the circle" and "the red object" always name one object. ``count`` clips
have no appearing or leaving objects; ``order`` clips have objects appearing at distinct frames.

**Splits.** The scene seed of sample ``index`` of a set made with ``seed`` is
``offset(split) + (seed * 1_000_003 + index) mod 2**31``, where ``offset("train") = 0`` and
``offset("heldout") = 2**31``: held-out scene seeds lie in ``[2**31, 2**32)`` and training ones in
``[0, 2**31)``, so no held-out sample is ever a training sample, whatever seeds either was made with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flash_vstream.data.scenes import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    Event,
    Scene,
    SceneObject,
)
from flash_vstream.data.spec import KINDS, SHORT_KINDS, SPLITS

__all__ = ["KINDS", "SHORT_KINDS", "SPLITS", "Question", "SyntheticSample", "choice_text", "make_question",
           "make_sample", "make_samples", "option_rows", "scene_seed", "vocabulary", "write_dataset",
           "write_option_rows"]

FORMS = ("short", "choice")
LETTERS = "ABCD"
MAX_INDEX = 1_000_003
"""Samples per set are fewer than this (the multiplier of the seed in the scene-seed rule)."""
EVENT_ANSWERS = {"appears": "appears", "leaves": "leaves", "changes": "changes colour", "flashes": "flashes"}
CHOICE_SUFFIX = "Answer with the option's letter."
OPTION_QUESTION = "Which option is {option}?"
"""The question of an option look-up row (:func:`option_rows`): it names the option, so text alone answers it."""
CHOICE_REPLY = "{option} {letter}"
"""The reply the generator trains for the choice form: the option's text, then its letter ("red B"). Said in this
order a small decoder picks the letter by finding the option it has just named, one look-up; letter first, it
would have to know the answer and find its option before saying anything."""

PHRASINGS = {
    "colour": (
        "What colour is the {shape}?",
        "What color is the {shape}?",
        "Which colour does the {shape} have?",
        "What is the colour of the {shape}?",
        "Tell me the colour of the {shape}.",
    ),
    "shape": (
        "What shape is the {colour} object?",
        "Which shape is {colour}?",
        "What is the {colour} shape?",
        "What kind of shape is the {colour} one?",
    ),
    "motion": (
        "Which way does the {name} move?",
        "In which direction is the {name} moving?",
        "Where does the {name} go?",
        "How does the {name} move?",
    ),
    "count": (
        "How many objects are there?",
        "How many shapes are in the video?",
        "Count the objects.",
        "How many things can you see?",
    ),
    "order": (
        "Which appeared first, the {a} or the {b}?",
        "Which object came first: the {a} or the {b}?",
        "Did the {a} or the {b} appear earlier?",
    ),
    "event": (
        "What happens to the {name}?",
        "What does the {name} do?",
        "Which event happens to the {name}?",
    ),
}
TOKENIZER_EXTRA = (
    "What colour was the shape that appeared briefly?",
    "A shape appeared for a moment. What colour was it?",
    "Which colour had the shape that showed up for a moment?",
    "Which shape appeared for a moment?",
    "A shape appeared briefly. What shape was it?",
    "What was the shape that showed up for a moment?",
)
"""Unnamed needle questions, the generator's first form. They stay in the demo tokenizer's corpus so that its
recipe re-run writes the shipped tokenizer (its word list) again; the model answers them poorly (docs/demo.md)."""


@dataclass(frozen=True)
class Question:
    """One question about a sample's scene."""

    kind: str
    """One of :data:`KINDS`."""
    form: str
    """``"short"`` (answered by a word or a name) or ``"choice"`` (by the option, then its letter)."""
    text: str
    """The question as asked (with its options in the choice form)."""
    answer: str
    """The exact expected answer (the right option's letter in the choice form)."""
    options: tuple[str, ...] = ()
    """The choice form's options, in letter order."""

    @property
    def option(self) -> str:
        """The choice form's right option (its text; :attr:`answer` is its letter)."""
        return self.options[LETTERS.index(self.answer)]

    @property
    def reply(self) -> str:
        """The reply a model is trained on: the answer, or in the choice form :data:`CHOICE_REPLY`."""
        if self.form != "choice":
            return self.answer
        return CHOICE_REPLY.format(option=self.option, letter=self.answer)


@dataclass(frozen=True)
class SyntheticSample:
    """A scene and its questions."""

    id: str
    split: str
    scene_seed: int
    scene: Scene
    questions: tuple[Question, ...]
    needle_frame: int | None = None
    """``needle`` samples: the first frame of the needle (its distance from the end is ``num_frames - it``)."""
    meta: dict = field(default_factory=dict)


def scene_seed(split: str, seed: int, index: int) -> int:
    """The scene seed of sample ``index`` of a ``split`` set made with ``seed`` (the rule in the module docstring).

    Raises:
        ValueError: for an unknown split, a negative seed or an index outside ``[0, MAX_INDEX)``.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {sorted(SPLITS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not 0 <= index < MAX_INDEX:
        raise ValueError(f"index {index} must lie in [0, {MAX_INDEX}); make fewer samples per set")
    return SPLITS[split] + (seed * MAX_INDEX + index) % 2**31


# ----------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------


def _place(rng: np.random.Generator, objects: list[dict], width: int, height: int, num_frames: int) -> bool:
    """Give each object a start point along which it stays inside the frame and apart from the others."""
    for obj in objects:
        radius = obj["size"] * height
        low_x, high_x = (radius + 1) / width, 1 - (radius + 1) / width
        low_y, high_y = (radius + 1) / height, 1 - (radius + 1) / height
        dx = {"left": -1, "right": 1}.get(obj["motion"], 0) * obj["travel"]
        dy = {"up": -1, "down": 1}.get(obj["motion"], 0) * obj["travel"]
        x_lo, x_hi = max(low_x, low_x - dx), min(high_x, high_x - dx)
        y_lo, y_hi = max(low_y, low_y - dy), min(high_y, high_y - dy)
        if x_lo > x_hi or y_lo > y_hi:
            return False
        obj["x"], obj["y"] = float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))
    built = [SceneObject(**{k: v for k, v in o.items() if k != "events"}) for o in objects]
    for t in range(num_frames):
        centres = [o.centre(t, num_frames) for o in built]
        for i in range(len(built)):
            for j in range(i):
                gap = np.hypot((centres[i][0] - centres[j][0]) * width, (centres[i][1] - centres[j][1]) * height)
                if gap < 1.15 * (built[i].size + built[j].size) * height:
                    return False
    return True


def short_scene(rng: np.random.Generator, kind: str, width: int = 96, height: int = 72) -> Scene:
    """A 6-10-frame clip whose objects have distinct colours and shapes, suited to questions of ``kind``."""
    num_frames = int(rng.integers(6, 11))
    low = 2 if kind == "order" else 1
    count = int(rng.integers(low, 5))
    for attempt in range(400):
        if attempt and attempt % 100 == 0:  # a crowded draw keeps failing: one object fewer
            count = max(low, count - 1)
        colours = rng.permutation(list(COLOURS))[:count]
        shapes = rng.permutation(SHAPES)[:count]
        objects = []
        for colour, shape in zip(colours, shapes, strict=True):
            motion = str(rng.choice(MOTIONS))
            objects.append(dict(shape=str(shape), colour=str(colour), motion=motion,
                                size=float(rng.uniform(0.12, 0.16)),
                                travel=0.0 if motion == "static" else float(rng.uniform(0.3, 0.45))))
        if _place(rng, objects, width, height, num_frames):
            break
    else:
        raise RuntimeError(f"no layout of {count} objects found in {width}x{height}")  # never seen; a bug if so
    events = [[] for _ in objects]
    if kind == "order":
        frames = rng.choice(np.arange(0, num_frames - 2), size=count, replace=False)
        for i, frame in enumerate(frames):
            if frame > 0:
                events[i].append(Event("appears", int(frame)))
    elif kind == "event":
        target = int(rng.integers(count))
        event = str(rng.choice(("appears", "leaves", "changes", "flashes")))
        frame = int(rng.integers(2, num_frames - 2))
        colour = None
        if event == "changes":
            colour = str(rng.choice([c for c in COLOURS if c not in {o["colour"] for o in objects}] or ["white"]))
        if event == "flashes" and objects[target]["colour"] == "white":
            event = "leaves"
        events[target].append(Event(event, frame, colour))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    built = tuple(SceneObject(**o, events=tuple(e)) for o, e in zip(objects, events, strict=True))
    return Scene(width, height, num_frames, background, built)


def needle_scene(rng: np.random.Generator, num_frames: int, distance: int, width: int = 48, height: int = 36,
                 needle_frames: int = 3) -> Scene:
    """A long stream with a needle: a shape seen for ``needle_frames`` frames, ``distance`` frames before the end.

    One to three static shapes sit at fixed spots; the first is the needle, the others are there all along.
    """
    if not needle_frames <= distance <= num_frames:
        raise ValueError(f"distance={distance} must lie in [needle_frames={needle_frames}, num_frames={num_frames}]")
    start = num_frames - distance
    count = int(rng.integers(1, 4))
    colours = rng.permutation(list(COLOURS))[:count]
    shapes = rng.permutation(SHAPES)[:count]
    spots = rng.permutation([(0.25, 0.3), (0.75, 0.3), (0.25, 0.72), (0.75, 0.72)])[:count]
    objects = []
    for i, (colour, shape, (x, y)) in enumerate(zip(colours, shapes, spots, strict=True)):
        events = (Event("appears", start), Event("leaves", start + needle_frames)) if i == 0 else ()
        objects.append(SceneObject(str(shape), str(colour), "static", float(x), float(y), 0.18, 0.0, events))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(width, height, num_frames, background, tuple(objects))


# ----------------------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, question: str, answer: str, pool: list[str]) -> tuple[str, str, tuple]:
    """The multiple-choice form: the answer among up to three other options of ``pool``, shuffled."""
    others = [o for o in pool if o != answer]
    options = [answer, *rng.permutation(others)[: min(3, len(others))].tolist()]
    options = [str(o) for o in rng.permutation(options)]
    return choice_text(question, options), LETTERS[options.index(answer)], tuple(options)


def choice_text(question: str, options) -> str:
    """``question``, then one ``"A. option"`` line per option, then :data:`CHOICE_SUFFIX`."""
    return "\n".join([question, *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options)), CHOICE_SUFFIX])


def make_question(rng: np.random.Generator, kind: str, scene: Scene, form: str) -> Question:
    """A question of ``kind`` about ``scene`` in ``form`` (``"short"`` or ``"choice"``).

    Raises:
        ValueError: when the scene cannot answer ``kind`` (a count over appearing objects, an order question with
            fewer than two appearance times, an event question without an event).
    """
    objects = scene.objects
    pick, label = objects[int(rng.integers(len(objects)))], kind
    if kind in ("needle_colour", "needle_shape"):
        # The needle (the first object) is asked the short clips' colour or shape question, named by its shape or
        # colour as a needle-in-a-haystack test names its key: a wrong answer then means the memory lost the
        # needle, not that the model met a phrasing it was never taught.
        pick, kind, label = objects[0], kind.removeprefix("needle_"), "needle"
    if kind == "colour":
        text, answer, pool = rng.choice(PHRASINGS[kind]).format(shape=pick.shape), pick.colour, list(COLOURS)
    elif kind == "shape":
        text, answer, pool = rng.choice(PHRASINGS[kind]).format(colour=pick.colour), pick.shape, list(SHAPES)
    elif kind == "motion":
        text, answer, pool = rng.choice(PHRASINGS[kind]).format(name=pick.name), pick.motion, list(MOTIONS)
    elif kind == "count":
        if any(o.event("appears") or o.event("leaves") for o in objects):
            raise ValueError("count questions need a scene whose objects stay all along")
        text, answer, pool = str(rng.choice(PHRASINGS[kind])), str(len(objects)), ["1", "2", "3", "4"]
    elif kind == "order":
        first = {o.name: (o.event("appears").frame if o.event("appears") else 0) for o in objects}
        pairs = [(a, b) for a in first for b in first if first[a] < first[b]]
        if not pairs:
            raise ValueError("order questions need two objects that appear at different frames")
        a, b = pairs[int(rng.integers(len(pairs)))]
        answer, pool = a, [a, b]
        if rng.random() < 0.5:
            a, b = b, a
        text = rng.choice(PHRASINGS[kind]).format(a=a, b=b)
    elif kind == "event":
        with_event = [o for o in objects if o.events]
        if not with_event:
            raise ValueError("event questions need an object with an event")
        pick = with_event[0]
        text = rng.choice(PHRASINGS[kind]).format(name=pick.name)
        answer, pool = EVENT_ANSWERS[pick.events[0].kind], list(EVENT_ANSWERS.values())
    else:
        raise ValueError(f"question kind {kind!r} is not one of {KINDS}")
    if form == "short":
        return Question(label, form, str(text), answer)
    if form != "choice":
        raise ValueError(f"form {form!r} is not one of {FORMS}")
    text, letter, options = _choice(rng, str(text), answer, pool)
    return Question(label, form, text, letter, options)


def questions_for(scene_kind: str) -> tuple[str, ...]:
    """The question kinds a short clip drawn for ``scene_kind`` can answer."""
    extra = {"count": ("count",), "order": ("order",), "event": ("event",)}.get(scene_kind, ())
    return ("colour", "shape", "motion", *extra)


# ----------------------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------------------


def make_sample(split: str, seed: int, index: int, kinds: tuple[str, ...] = SHORT_KINDS, *, turns: int = 1,
                choice_rate: float = 0.3, needle_frames: tuple[int, int] = (100, 10_000)) -> SyntheticSample:
    """Sample ``index`` of the ``split`` set made with ``seed``: a scene and ``turns`` questions about it.

    The scene's kind is ``kinds[index % len(kinds)]`` (so sets are balanced); the first question is of that kind,
    further ones (``turns > 1``, for training) of any kind the scene answers. ``needle`` samples have one question
    and a stream length drawn log-uniformly from ``needle_frames``.
    """
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"question kind {kind!r} is not one of {KINDS}")
    if not 0.0 <= choice_rate <= 1.0:
        raise ValueError(f"choice_rate must lie in [0, 1], got {choice_rate}")
    seed_value = scene_seed(split, seed, index)
    rng = np.random.default_rng(seed_value)
    kind = kinds[index % len(kinds)]
    sample_id = f"{split}-{seed}-{index:06d}"

    def form() -> str:
        return "choice" if rng.random() < choice_rate else "short"

    if kind == "needle":
        low, high = needle_frames
        num_frames = int(round(np.exp(rng.uniform(np.log(low), np.log(high)))))
        distance = int(rng.integers(3, num_frames + 1))
        scene = needle_scene(rng, num_frames, distance)
        question = make_question(rng, str(rng.choice(("needle_colour", "needle_shape"))), scene, form())
        return SyntheticSample(sample_id, split, seed_value, scene, (question,), num_frames - distance,
                               {"distance": distance})
    scene = short_scene(rng, kind)
    questions = [make_question(rng, kind, scene, form())]
    allowed = questions_for(kind)
    for _ in range(turns - 1):
        questions.append(make_question(rng, str(rng.choice(allowed)), scene, form()))
    return SyntheticSample(sample_id, split, seed_value, scene, tuple(questions))


def make_samples(split: str, seed: int, n: int, kinds: tuple[str, ...] = SHORT_KINDS, **options):
    """The first ``n`` samples of the ``split`` set made with ``seed`` (see :func:`make_sample`)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_INDEX:
        raise ValueError(f"n must be an integer in [1, {MAX_INDEX}], got {n!r}")
    return [make_sample(split, seed, i, kinds, **options) for i in range(n)]


def vocabulary() -> list[str]:
    """Every question and answer text the generator can write (a corpus for the demo tokenizer)."""
    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    texts = [CHOICE_SUFFIX, *LETTERS, *(f"{letter}." for letter in LETTERS), "1 2 3 4", *EVENT_ANSWERS.values()]
    for phrasings in PHRASINGS.values():
        for phrasing in phrasings:
            texts.append(phrasing.format(shape=" ".join(SHAPES), colour=" ".join(COLOURS), name=" ".join(names),
                                         a=" ".join(names), b="x"))
    texts += [*TOKENIZER_EXTRA, *COLOURS, *SHAPES, *MOTIONS, *names]
    return texts


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def sample_row(sample: SyntheticSample, media: str) -> dict:
    """The LLaVA-style row of ``sample`` (its questions as turns), with the generator's facts as extra keys."""
    conversations = []
    for i, question in enumerate(sample.questions):
        text = f"<image>\n{question.text}" if i == 0 else question.text
        conversations += [{"from": "human", "value": text}, {"from": "gpt", "value": question.reply}]
    return {
        "id": sample.id,
        "video": media,
        "conversations": conversations,
        "kinds": [q.kind for q in sample.questions],
        "forms": [q.form for q in sample.questions],
        "scene_seed": sample.scene_seed,
        "num_frames": sample.scene.num_frames,
        **({"needle_frame": sample.needle_frame, **sample.meta} if sample.needle_frame is not None else {}),
    }


def option_rows(seed: int, n: int, binding: int = 0) -> list[dict]:
    """Text-only rows of the demo recipe's first stage: ``n`` look-up rows, then ``binding`` binding rows.

    **Look-up rows** teach the choice form's look-up (:data:`OPTION_QUESTION`, :data:`CHOICE_REPLY`). A video
    question's choice reply names the option the clip shows, then its letter; the letter comes from finding that
    option among the listed ones. Learnt from video questions alone, the look-up waits on knowing the answer, and
    in the demo recipe's 2,000 steps it was never learnt (the letter stayed one constant). So each row lists a
    training clip's choice-form options under a question that names the right one, replied to with that option and
    its letter.

    **Binding rows** (``binding > 0``; not in the shipped recipe) keep colour bound to shape. Answered by copying a
    word of the asked kind from the question, look-up rows alone taught the decoder to name *any* colour the clip
    shows (every wrong colour answer named another object's). So colour look-up rows then open with the clip's
    objects in words ("purple star, white square.") and ask the clip's own question ("What colour is the
    star?"), and ``binding`` short-answer colour and shape questions about other training clips (seed
    ``seed + 5``) do the same: text answers them only through the binding.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for sample in make_samples("train", seed, n, SHORT_KINDS, choice_rate=1.0):
        question = sample.questions[0]
        if binding and question.kind == "colour":
            text = _objects_in_words(rng, sample.scene) + question.text
        else:
            text = choice_text(OPTION_QUESTION.format(option=question.option), question.options)
        rows.append(_text_row(f"options-{sample.id}", text, question.reply))
    if binding:
        for sample in make_samples("train", seed + 5, binding, ("colour", "shape"), choice_rate=0.0):
            question = sample.questions[0]
            rows.append(_text_row(f"bind-{sample.id}", _objects_in_words(rng, sample.scene) + question.text,
                                  question.reply))
    return rows


def _objects_in_words(rng: np.random.Generator, scene: Scene) -> str:
    """The scene's objects in words, in a random order, on a line of their own (``purple star, white square.``)."""
    return ", ".join(f"{o.colour} {o.shape}" for o in rng.permutation(list(scene.objects))) + ".\n"


def _text_row(row_id: str, question: str, reply: str) -> dict:
    return {"id": row_id, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]}


def write_option_rows(path, *, seed: int = 0, n: int = 4000, binding: int = 0):
    """Write :func:`option_rows` as a LLaVA-style data file at ``path`` (text only: no media root is read)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_rows(path, option_rows(seed, n, binding))


def _write_rows(path, rows: list[dict]):
    """``rows`` as a JSON list at ``path``, one row per line (diffs and ``head`` stay readable)."""
    import json

    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    return path


def write_frames(sample: SyntheticSample, folder) -> None:
    """Write ``sample``'s frames as ``000000.png``, ... into ``folder`` (one frame per second of the clip)."""
    from pathlib import Path

    from PIL import Image

    from flash_vstream.data.scenes import render_frame

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(sample.scene.num_frames):
        Image.fromarray(render_frame(sample.scene, t)).save(folder / f"{t:06d}.png", compress_level=1)


def write_dataset(out, *, split: str = "train", seed: int = 0, n: int = 1000, kinds=SHORT_KINDS, turns: int = 1,
                  choice_rate: float = 0.3, needle_frames: tuple[int, int] = (100, 10_000)):
    """Write ``n`` samples as frame folders ``out/clips/<id>/`` and the rows as ``out/<split>.json``.

    The data file reads with ``flash-vstream data check --data out/<split>.json --media-root out`` and trains with
    ``data.data: out/<split>.json``, ``data.media_root: out``. Frame folders are read at 1 fps, one frame per
    second of the clip, which is what the STAR family samples. ``needle`` clips get one question whatever
    ``turns`` is, and a stream length drawn from ``needle_frames``.

    Returns:
        The data file's path.
    """
    from pathlib import Path

    out = Path(out)
    rows = []
    for sample in make_samples(split, seed, n, tuple(kinds), turns=turns, choice_rate=choice_rate,
                               needle_frames=needle_frames):
        media = f"clips/{sample.id}"
        write_frames(sample, out / media)
        rows.append(sample_row(sample, media))
    return _write_rows(out / f"{split}.json", rows)
