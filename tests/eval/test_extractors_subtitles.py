"""Answer extractors (one published rule each) and Video-MME subtitle parsing/selection."""

from __future__ import annotations

import hashlib

import pytest

from flash_vstream_eval import extractors as ex
from flash_vstream_eval.subtitles import NO_SUBTITLES, parse_srt, select_subtitles, uniform_timestamps


@pytest.mark.parametrize(("reply", "letter"), [
    ("B) the cat", "B"), ("the answer is C", "C"), ("a person", ""), ("xyz E", "E"), ("F G", ""),
])
def test_first_letter(reply, letter):
    assert ex.first_letter(reply) == letter


def test_fallback_letter_is_the_hash_of_the_id():
    # Restated: the first 8 bytes of sha256(id), big-endian, modulo the option count, as a letter.
    def by_hand(item_id, n):
        return "ABCDEFGH"[int(hashlib.sha256(item_id.encode()).hexdigest()[:16], 16) % n]

    for n in (1, 2, 4, 5, 8):
        letters = [ex.fallback_letter(f"uid{i}", n) for i in range(200)]
        assert letters == [by_hand(f"uid{i}", n) for i in range(200)]
        assert set(letters) == set("ABCDEFGH"[:n])  # every option is reachable
    assert ex.fallback_letter("2", 4) == "C"  # sha256(b"2") starts d4735e3a265e16ee, which is 2 mod 4


@pytest.mark.parametrize(("reply", "letter"), [
    ("B", "B"),  # starts with it
    ("I think the answer is C.", "C"),  # trailing "." stripped first, then it ends with C (9)
    ("Options (A) and (B) were considered; the answer is D", "D"),  # ends with D (9) beats "(B)" (6)
    ("(A) first, but (C) fits", "C"),  # "(" is no letter, so no start (10); "(C)" is the later "(X)" (6)
    ("Between A. and C: it is", "A"),  # "A." (5) beats "C:" (4)
    ("Maybe B) or C)", "C"),  # no ends-with (the last char is ")"); "C)" is the later "X)" (3)
    ("The answer is B. Definitely", "D"),  # phrase (7): the first B and the first D after it; D is later
    ("Based on the video", "B"),  # nothing else matched: a choice letter anywhere, even inside a word (0)
    ("nothing here", ""),
    ("", ""),
])
def test_lmms_mcq_letter_priorities(reply, letter):
    assert ex.lmms_mcq_letter(reply) == letter


def test_mmmu_letter_rules():
    options = ["cooks", "washes laundry", "cleans", "washes dishes", "repairs a bike"]
    assert ex.mmmu_letter("(B) washes", options, "q") == ("B", False)
    assert ex.mmmu_letter("I pick C. because", options, "q") == ("C", False)
    assert ex.mmmu_letter("In the video c repairs a bike outside", options, "q") == ("E", False)
    assert ex.mmmu_letter("(A) then (D)", options, "q") == ("D", False)  # the last one wins
    letter, fallback = ex.mmmu_letter("???", options, "q")
    assert fallback and letter == ex.fallback_letter("q", 5)


@pytest.mark.parametrize(("reply", "letter"), [
    ("C. something", "C"), ("the man is (d)", "D"), ("a person walks", "A"), ("", ""), ("none", ""),
])
def test_lmms_mvbench_letter(reply, letter):
    assert ex.lmms_mvbench_letter(reply) == letter


@pytest.mark.parametrize(("reply", "letter"), [
    ("The best answer is B", "B"),
    ("Answer: B", "A"),  # as published: the "A" of "Answer"
    ("Best answer: C", "B"),  # "Best answer:" is glued to "Best option:" in the list, so never removed
    ("Best answer:Best option: C", "C"),  # ... only the glued string is
    ("one two three four five six seven eight nine ten eleven", ""),
    ("one two three four five six seven eight nine ten C", "C"),
    ("", ""),
])
def test_videomme_official_letter(reply, letter):
    assert ex.videomme_official_letter(reply) == letter


def test_mlvu_and_mvbench_official_rules():
    assert ex.before_paren("B) Red") == "B" and ex.before_paren("(B) Red") == "(B"
    assert ex.mvbench_official_correct("A) Ate the medicine.", "A")
    assert ex.mvbench_official_correct("(a)", "A")
    assert not ex.mvbench_official_correct("B) x", "A")
    assert ex.mvbench_official_correct("", "C")  # the published quirk, kept for parity


SRT = (
    "1\n00:00:01,000 --> 00:00:03,500\n<font color=\"white\" size=\".72c\">Hello there</font>\n\n"
    "2\r\n00:00:04,000 --> 00:00:05,000\r\nplain <i>line</i>\r\ntwo\r\n\r\n"
    "3\n00:01:00,250 --> 00:01:02,000\n<font color=\"white\" size=\".72c\">Late</font>\n"
)


def test_parse_srt():
    lines = parse_srt(SRT)
    assert [(line.start, line.end, line.text) for line in lines] == [
        (1.0, 3.5, "Hello there"), (4.0, 5.0, "plain line two"), (60.25, 62.0, "Late")
    ]


def test_select_subtitles_by_timestamps():
    lines = parse_srt(SRT)
    assert select_subtitles(lines, [0.5, 3.5, 61.0]) == "Late"  # 3.5 is the (exclusive) end of line 1
    assert select_subtitles(lines, [1.0, 4.5]) == "Hello there\nplain line two"
    assert select_subtitles(lines, [10.0]) == ""
    assert select_subtitles([], [1.0]) == NO_SUBTITLES


def test_uniform_timestamps_like_lmms_eval():
    assert uniform_timestamps(100, 10.0, 4).tolist() == [0.0, 3.3, 6.6, 9.9]
