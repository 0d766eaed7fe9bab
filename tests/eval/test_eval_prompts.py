"""Prompt snapshots: the exact text every profile sends for every benchmark, written out by hand from each source."""

from __future__ import annotations

import pytest

from flash_vstream_eval.items import Item
from flash_vstream_eval.profiles import PROFILES

ITEM = Item(id="1", video="v.mp4", question="What color is the coat?", options=("Red", "Blue", "Green", "Black"),
            answer=1)
FLASH_ITEM = Item(id="1", video="v.mp4", question="What color is the coat?", options=("Red", "Blue"), answer=1,
                  question_text="What color is the coat?\nOptions:\n(A) Red\n(B) Blue\n", source="flash")
LMMS_ITEM = Item(id="1", video="v.mp4", question="What color is the coat?", options=("Red", "Blue"), answer=1,
                 question_text="What color is the coat?\n(A) Red\n(B) Blue", source="lmms")
OPEN = Item(id="2", video="v.mp4", question="What did I put in the drawer?", options=None, answer="a screwdriver")

SELECT = ("Select the best answer to the following multiple-choice question based on the video. "
          "Respond with only the letter (A, B, C, or D) of the correct option.")
SELECT_SUBS = ("Select the best answer to the following multiple-choice question based on the video and the "
               "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
PAREN = "(A) Red\n(B) Blue\n(C) Green\n(D) Black"
DOT = "A. Red\nB. Blue\nC. Green\nD. Black"
MVBENCH_SYS = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
               "movement of objects, and the action and pose of persons. Based on your observations, select the "
               "best option that accurately addresses the question.\n")
MLVU_SYS = ("Carefully watch this video and pay attention to every detail. Based on your observations, select "
            "the best option that accurately addresses the question.\n")
DIRECTLY = "Answer with the option's letter from the given choices directly."
OE = "Answer the following open-ended question based on the video. What did I put in the drawer?"

# (profile, family, item, subtitles) -> exact prompt
SNAPSHOTS = [
    ("flash-vstream", "mlvu", FLASH_ITEM, None, SELECT + FLASH_ITEM.question_text),
    ("flash-vstream", "mlvu", ITEM, None, SELECT + f"What color is the coat?\nOptions:\n{PAREN}\n"),
    ("flash-vstream", "videomme", ITEM, None, SELECT + f"What color is the coat?\n{DOT}"),
    ("flash-vstream", "videomme", ITEM, "Hi", "This video's subtitles are listed below: \nHi\n" + SELECT_SUBS
     + f"What color is the coat?\n{DOT}"),
    ("flash-vstream", "lvbench", ITEM, None, SELECT + f"What color is the coat?\n{PAREN}"),
    ("flash-vstream", "mvbench", ITEM, None, SELECT + f"Question: What color is the coat?\nOptions:\n{PAREN}"),
    ("flash-vstream", "egoschema", ITEM, None, SELECT + "Select the best answer to the following question based "
     f"on the egocentric video.\nQuestion: What color is the coat?\n{PAREN}\nOnly give the best option."),
    ("flash-vstream", "vstream", OPEN, None, OE),
    ("official", "mvbench", ITEM, None, MVBENCH_SYS
     + f"Question: What color is the coat?\nOptions:\n{PAREN}\nOnly give the best option."),
    ("official", "mlvu", ITEM, None, MLVU_SYS
     + f"Question: What color is the coat?\nOptions:\n{PAREN}\nOnly give the best option."),
    ("official", "egoschema", ITEM, None,
     f"Question: What color is the coat?\nOptions:\n{PAREN}\nOnly give the best option."),
    ("official", "videomme", ITEM, None, f"{SELECT}\nWhat color is the coat?\n{DOT}\nThe best answer is:"),
    ("official", "videomme", ITEM, "Hi", f"This video's subtitles are listed below:\nHi\n{SELECT_SUBS}\n"
     f"What color is the coat?\n{DOT}\nThe best answer is:"),
    ("official", "lvbench", ITEM, None, f"What color is the coat?\n{PAREN}\n{DIRECTLY}"),
    ("official", "vstream", OPEN, None, OE),
    ("lmms-eval", "egoschema", ITEM, None, f"What color is the coat?\n{DOT}\n{DIRECTLY}"),
    ("lmms-eval", "mlvu", LMMS_ITEM, None,
     "What color is the coat?\n(A) Red\n(B) Blue\nOnly give the best option.\nBest option: ("),
    ("lmms-eval", "lvbench", ITEM, None,
     f"What color is the coat?\n{PAREN}\nAnswer the question with the option letter"),
    ("lmms-eval", "mvbench", ITEM, None,
     f"Question:What color is the coat?\nOption:\n{PAREN}\nOnly give the best option.\n"),
    ("lmms-eval", "videomme", ITEM, None, f"{SELECT_SUBS}\nWhat color is the coat?\n{DOT}\n\n{DIRECTLY}"),
    ("lmms-eval", "videomme", ITEM, "Hi", f"This video's subtitles are listed below: \nHi\n{SELECT_SUBS}\n"
     f"What color is the coat?\n{DOT}\nThe best answer is:"),
    ("lmms-eval", "vstream", OPEN, None, OE),
]


@pytest.mark.parametrize(("profile", "family", "item", "subtitles", "expected"), SNAPSHOTS,
                         ids=[f"{p}-{f}-{i}" for i, (p, f, *_) in enumerate(SNAPSHOTS)])
def test_prompt_snapshot(profile, family, item, subtitles, expected):
    assert PROFILES[profile].for_family(family).prompt(item, subtitles) == expected


def test_every_profile_and_family_has_a_snapshot():
    covered = {(p, f) for p, f, *_ in SNAPSHOTS}
    assert covered == {(p, f) for p in PROFILES for f in PROFILES[p].rules}


@pytest.mark.parametrize(("profile", "family", "prefix", "frames"), [
    ("flash-vstream", "mvbench", "Best option: (", ("fps", None, 240)),
    ("official", "mvbench", "Best option:(", ("segment_middle", 16, 240)),
    ("official", "mlvu", "Best option:(", ("segment_middle", 16, 240)),
    ("official", "videomme", "", ("fps", None, 240)),
    ("lmms-eval", "mlvu", "", ("uniform", 32, 240)),
])
def test_assistant_prefix_and_frame_plan(profile, family, prefix, frames):
    rules = PROFILES[profile].for_family(family)
    assert rules.assistant_prefix == prefix
    assert (rules.frames.policy, rules.frames.num_frames, rules.frames.max_frames) == frames
