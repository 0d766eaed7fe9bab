"""The synthetic video-QA generator: determinism, the held-out split rule, answers checked against the pixels, the
written data read by the training loader, and the ``make-data`` command."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from flash_vstream.data.scenes import COLOURS, render, render_frame
from flash_vstream.data.synthetic import (
    KINDS,
    MAX_INDEX,
    PHRASINGS,
    SHORT_KINDS,
    SPLITS,
    make_sample,
    make_samples,
    option_rows,
    sample_row,
    scene_seed,
    write_dataset,
)


def frames_digest(sample) -> str:
    return hashlib.sha256(render(sample.scene).tobytes()).hexdigest()


def test_same_seed_same_samples_and_pixels():
    first = make_samples("train", 5, 12, turns=3)
    again = make_samples("train", 5, 12, turns=3)
    assert [s.questions for s in first] == [s.questions for s in again]
    assert [frames_digest(s) for s in first] == [frames_digest(s) for s in again]
    other = make_samples("train", 6, 12, turns=3)
    assert len({frames_digest(s) for s in first} & {frames_digest(s) for s in other}) == 0


def test_heldout_scene_seeds_never_overlap_training_ones():
    train = {scene_seed("train", seed, i) for seed in (0, 1, 7, 2**40) for i in (0, 1, 999, MAX_INDEX - 1)}
    heldout = {scene_seed("heldout", seed, i) for seed in (0, 1, 7, 2**40) for i in (0, 1, 999, MAX_INDEX - 1)}
    assert train.isdisjoint(heldout)
    assert all(0 <= s < SPLITS["heldout"] for s in train) and all(2**31 <= s < 2**32 for s in heldout)
    # Same (seed, index) in both splits: different scenes, so a held-out set is never a copy of a training set.
    pixels = {frames_digest(s) for s in make_samples("train", 0, 30)}
    assert pixels.isdisjoint({frames_digest(s) for s in make_samples("heldout", 0, 30)})


@pytest.mark.parametrize("bad", [dict(split="test"), dict(seed=-1), dict(index=MAX_INDEX)])
def test_scene_seed_refuses_bad_input(bad):
    args = dict(split="train", seed=0, index=0) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        scene_seed(**args)


def object_pixels(frame: np.ndarray, colour: str) -> np.ndarray:
    """``(k, 2)`` (x, y) of the pixels of exactly ``colour``."""
    ys, xs = np.nonzero((frame == np.array(COLOURS[colour])).all(axis=-1))
    return np.stack([xs, ys], axis=1)


def test_answers_match_what_the_frames_show():
    """Colour, shape-by-colour, motion and count answers restated from the rendered pixels alone."""
    checked = {"colour": 0, "motion": 0, "count": 0}
    for sample in make_samples("heldout", 3, 60, ("colour", "motion", "count"), choice_rate=0.0):
        question, scene = sample.questions[0], sample.scene
        frames = render(scene)
        if question.kind == "colour":  # exactly one object of the answer's colour, of the asked shape
            shape = next(s for s in ("circle", "square", "triangle", "star") if s in question.text)
            assert len(object_pixels(frames[0], question.answer)) > 0
            assert [o.shape for o in scene.objects if o.colour == question.answer] == [shape]
        elif question.kind == "motion":  # the centre of the object's pixels moves that way
            colour = question.text.split("the ")[-1].split()[0]
            start, end = object_pixels(frames[0], colour).mean(0), object_pixels(frames[-1], colour).mean(0)
            dx, dy = end - start
            seen = "static" if max(abs(dx), abs(dy)) < 3 else (
                ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up"))
            assert seen == question.answer, (sample.id, dx, dy)
        else:  # as many distinct object colours on screen as the answer says, on every frame
            counts = {sum(len(object_pixels(f, c)) > 0 for c in COLOURS) for f in frames}
            assert counts == {int(question.answer)}
        checked[question.kind] += 1
    assert min(checked.values()) == 20


def test_order_answer_is_the_object_seen_first():
    for sample in make_samples("heldout", 4, 20, ("order",), choice_rate=0.0):
        question = sample.questions[0]
        frames = render(sample.scene)
        first_seen = {}
        for obj in sample.scene.objects:
            visible = [t for t in range(len(frames)) if len(object_pixels(frames[t], obj.colour))]
            first_seen[obj.name] = visible[0]
        a, b = (name for name in first_seen if name in question.text)
        assert question.answer == min((a, b), key=first_seen.get)
        assert first_seen[a] != first_seen[b]


def test_choice_form_lists_the_answer_under_its_letter():
    samples = make_samples("train", 2, 40, SHORT_KINDS, choice_rate=1.0)
    for sample in samples:
        question = sample.questions[0]
        assert question.form == "choice" and question.answer in "ABCD"
        lines = question.text.splitlines()
        assert len(set(question.options)) == len(question.options) >= 2
        assert lines[1 + "ABCD".index(question.answer)].startswith(f"{question.answer}. ")
        right = question.options["ABCD".index(question.answer)]
        assert question.reply == f"{right} {question.answer}"


def test_short_form_replies_with_the_answer_and_rows_train_on_replies():
    sample = make_sample("train", 5, 3, SHORT_KINDS, turns=4, choice_rate=0.5)
    row = sample_row(sample, "clips/x")
    replies = [c["value"] for c in row["conversations"] if c["from"] == "gpt"]
    assert replies == [q.reply for q in sample.questions]
    assert {q.form for q in sample.questions} == {"short", "choice"}
    assert all(q.reply == q.answer for q in sample.questions if q.form == "short")


def _objects_and_named(question: str) -> tuple[dict[str, str], str]:
    """``"purple star, white square.\nWhat colour is the star?..."`` -> ``({"star": "purple", ...}, "star")``."""
    listed, asked = question.split("\n")[:2]
    pairs = dict(reversed(p.split()) for p in listed.rstrip(".").split(", "))  # shape -> colour
    words = asked.rstrip("?.").split()
    named = next(w for w in words if w in pairs or w in pairs.values())
    return pairs, named


def test_option_rows_name_the_right_option_or_bind_it_in_words_and_train_text_only(tmp_path):
    from flash_vstream.cli import main
    from flash_vstream.train.data import load_samples

    rows = option_rows(seed=3, n=60, binding=20)
    lookups, binds = rows[:60], rows[60:]
    assert len(binds) == 20 and all(r["id"].startswith("bind-") for r in binds) and "video" not in rows[0]
    colour_rows = 0
    for row in lookups:
        question, reply = (c["value"] for c in row["conversations"])
        option, letter = reply.rsplit(" ", 1)
        *_, suffix = question.split("\n")
        assert suffix == "Answer with the option's letter." and f"{letter}. {option}" in question.split("\n")
        if question.startswith("Which option is"):
            assert question.split("\n")[0] == f"Which option is {option}?"
        else:  # a colour question under the clip's objects in words: the reply is the named shape's colour
            pairs, shape = _objects_and_named(question)
            assert option == pairs[shape]
            colour_rows += 1
    assert colour_rows > 0
    plain = option_rows(seed=3, n=60)  # the shipped recipe's rows: every question names its option
    assert len(plain) == 60 and all(r["conversations"][0]["value"].startswith("Which option is") for r in plain)
    for row in binds:  # short answers: the colour of the named shape, or the shape of the named colour
        question, reply = (c["value"] for c in row["conversations"])
        pairs, named = _objects_and_named(question)
        assert reply == (pairs[named] if named in pairs else next(s for s, c in pairs.items() if c == named))
    path = tmp_path / "options.json"
    assert main(["make-data", "options", "--out", str(path), "--n", "5", "--seed", "3", "--binding", "2"]) == 0
    loaded = load_samples(path, media_root=tmp_path, strict=True)
    assert len(loaded.samples) == 7 and all(not s.media for s in loaded.samples)
    assert main(["make-data", "options", "--out", str(path), "--n", "0"]) == 2
    assert main(["make-data", "options", "--out", str(path), "--binding", "-1"]) == 2


def test_choice_answers_are_scored_by_the_letter_said_last():
    from flash_vstream.data.accuracy import is_correct

    question = next(q for s in make_samples("heldout", 1, 10, ("colour",), choice_rate=1.0) for q in s.questions)
    right = question.options["ABCD".index(question.answer)]
    wrong = next(letter for letter in "ABCD" if letter != question.answer)
    assert is_correct(question.reply, question) and is_correct(f"{question.answer}.", question)
    assert not is_correct(f"{right} {wrong}", question) and not is_correct(right, question)


def test_needle_is_on_screen_only_for_its_frames():
    sample = make_sample("heldout", 0, 0, ("needle",), needle_frames=(200, 400))
    scene, start = sample.scene, sample.needle_frame
    needle = scene.objects[0]
    assert 200 <= scene.num_frames <= 400 and sample.meta["distance"] == scene.num_frames - start
    for t in (0, start - 1, start, start + 2, start + 3, scene.num_frames - 1):
        if not 0 <= t < scene.num_frames:
            continue
        shown = len(object_pixels(render_frame(scene, t), needle.colour)) > 0
        assert shown == (start <= t < start + 3), t
    assert sample.questions[0].answer in (needle.colour, needle.shape) or sample.questions[0].form == "choice"


def test_a_needle_question_names_the_needle_by_one_attribute_and_asks_the_other():
    seen = set()
    for index in range(40):
        sample = make_sample("heldout", 3, index, ("needle",), needle_frames=(20, 40), choice_rate=0.0)
        needle, others = sample.scene.objects[0], sample.scene.objects[1:]
        question = sample.questions[0]
        if question.answer == needle.colour:  # named by its shape, which no other object of the scene has
            key, template = needle.shape, PHRASINGS["colour"]
            assert needle.shape not in {o.shape for o in others}
        else:
            assert question.answer == needle.shape
            key, template = needle.colour, PHRASINGS["shape"]
            assert needle.colour not in {o.colour for o in others}
        assert question.text in {t.format(shape=key, colour=key) for t in template}
        seen.add(template is PHRASINGS["colour"])
    assert seen == {True, False}


def test_written_data_loads_for_training(tmp_path):
    from flash_vstream.train.data import load_samples

    path = write_dataset(tmp_path, split="train", seed=1, n=6, turns=2)
    rows = json.loads(path.read_text())
    loaded = load_samples(path, media_root=tmp_path, strict=True)
    assert len(loaded.samples) == 6
    sample = loaded.samples[0]
    assert sample.media[0].kind == "frames" and sample.media[0].num_frames == rows[0]["num_frames"]
    assert [t.role for t in sample.turns] == ["user", "assistant"] * 2
    assert sample.turns[1].text == rows[0]["conversations"][1]["value"]


def test_make_data_command(tmp_path, capsys):
    from flash_vstream.cli import main

    assert main(["make-data", "synthetic", "--out", str(tmp_path), "--n", "4", "--seed", "2",
                 "--split", "heldout", "--kinds", "count", "order"]) == 0
    rows = json.loads((tmp_path / "heldout.json").read_text())
    assert [r["kinds"] for r in rows] == [["count"], ["order"], ["count"], ["order"]]
    assert rows[0]["id"] == "heldout-2-000000" and (tmp_path / rows[0]["video"] / "000000.png").is_file()
    assert main(["make-data", "synthetic", "--out", str(tmp_path), "--n", "1", "--turns", "0"]) == 2
    assert "--turns" in capsys.readouterr().err


def test_every_kind_is_generated():
    kinds = {s.questions[0].kind for s in make_samples("train", 0, len(KINDS), KINDS,
                                                          needle_frames=(100, 120))}
    assert kinds == set(KINDS)


def test_a_mixed_set_gives_needle_clips_one_question_and_the_asked_lengths(tmp_path, capsys):
    from flash_vstream.cli import main

    assert main(["make-data", "synthetic", "--out", str(tmp_path), "--n", "4", "--turns", "3",
                 "--kinds", "colour", "needle", "--needle-frames", "20", "30"]) == 0
    rows = json.loads((tmp_path / "train.json").read_text())
    assert [(r["kinds"][0], len(r["kinds"])) for r in rows] == [("colour", 3), ("needle", 1)] * 2
    for row in rows[1::2]:
        assert 20 <= row["num_frames"] <= 30 and len(row["conversations"]) == 2
        assert len(list((tmp_path / row["video"]).glob("*.png"))) == row["num_frames"]
    assert main(["make-data", "synthetic", "--out", str(tmp_path), "--n", "1", "--needle-frames", "30", "20"]) == 2
    assert "--needle-frames" in capsys.readouterr().err
