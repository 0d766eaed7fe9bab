"""Check lmms-eval's output folders from scripts/check_lmms_eval.sh (lmms-eval's CLI exits 0 even when it fails).

    python scripts/lmms_task/check_results.py OUT_PLAIN OUT_CHAT OUT_2PROC

Each folder must hold exactly one ``*_results.json`` and one samples file of the ``flash_vstream_sample`` task with
every question answered once; the prompts must be the task's plain questions (``--apply_chat_template`` hands the
model the question, which it formats with its own template), and every run must give the same greedy answer to
each question as the first one (data parallelism and the flag change who answers, not what).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASK = "flash_vstream_sample"
QUESTIONS = Path(__file__).with_name("sample_qa.json")


def fail(message: str) -> None:
    print(f"check_results: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    if len(found) != 1:
        fail(f"{folder}: expected one {pattern}, found {[str(p) for p in found]} (see the run's log)")
    return found[0]


def read_run(folder: Path, questions: list[str], chat: bool) -> dict[int, str]:
    """The run's answers by doc id, after checking its results and samples files."""
    results = json.loads(one(folder, "*_results.json").read_text())
    counts = results.get("n-samples", {}).get(TASK, {})
    if counts != {"original": len(questions), "effective": len(questions)}:
        fail(f"{folder}: n-samples {counts}, expected {len(questions)} questions")
    if "flash_vstream_match,none" not in results.get("results", {}).get(TASK, {}):
        fail(f"{folder}: no flash_vstream_match metric in {results.get('results')}")
    if chat and not results.get("chat_template"):
        fail(f"{folder}: --apply_chat_template run recorded no chat_template")
    samples = [json.loads(line) for line in one(folder, f"*_samples_{TASK}.jsonl").read_text().splitlines()]
    answers = {}
    for sample in samples:
        doc_id = sample["doc_id"]
        if doc_id in answers:
            fail(f"{folder}: doc {doc_id} answered twice")
        if sample["input"] != questions[doc_id]:
            fail(f"{folder}: doc {doc_id} prompt {sample['input']!r}, expected {questions[doc_id]!r}")
        if not isinstance(sample["filtered_resps"], str):
            fail(f"{folder}: doc {doc_id} reply {sample['filtered_resps']!r} is not a string")
        answers[doc_id] = sample["filtered_resps"]
    if sorted(answers) != list(range(len(questions))):
        fail(f"{folder}: answered docs {sorted(answers)}, expected 0..{len(questions) - 1}")
    return answers


def main(folders: list[str]) -> None:
    if len(folders) < 2:
        fail("usage: check_results.py OUT_PLAIN OUT_CHAT [OUT_2PROC ...]")
    questions = [record["question"] for record in json.loads(QUESTIONS.read_text())]
    first = read_run(Path(folders[0]), questions, chat=False)
    for folder in folders[1:]:
        answers = read_run(Path(folder), questions, chat=True)
        if answers != first:
            fail(f"{folder}: answers {answers} differ from {folders[0]}'s {first}")
    print(f"check_results: ok: {len(folders)} runs, {len(questions)} questions each, same answers")


if __name__ == "__main__":
    main(sys.argv[1:])
