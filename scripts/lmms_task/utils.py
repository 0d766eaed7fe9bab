"""Pure functions and the task class of the ``flash_vstream_sample`` lmms-eval task (``flash_vstream_sample.yaml``).

Only lmms-eval imports this file (through the YAML's ``!function`` tags), so it may import lmms-eval.
"""

from pathlib import Path

from lmms_eval.api.task import ConfigurableTask

ASSETS = Path(__file__).resolve().parents[2] / "assets"


class SampleTask(ConfigurableTask):
    """lmms-eval's YAML task plus the one method its ``--apply_chat_template`` path calls but 0.7.3 lacks.

    lmms-eval 0.7.3's ``ConfigurableTask.fewshot_context`` calls ``self.append_target_question`` (from
    lm-evaluation-harness, where it lives) and does not define it, so every task fails with ``AttributeError``
    under ``--apply_chat_template``. This is lm-evaluation-harness's definition, so the flag can be checked here.
    """

    def __init__(self, config=None, **kwargs):
        # lmms-eval hands a python task its whole YAML, ``class`` key included, which TaskConfig rejects.
        super().__init__(config={key: value for key, value in (config or {}).items() if key != "class"}, **kwargs)

    @staticmethod
    def append_target_question(labeled_examples, question, fewshot_as_multiturn=False):
        """Add the question as a user turn, or to the last user turn (never two user turns in a row)."""
        if fewshot_as_multiturn or not labeled_examples or labeled_examples[-1]["role"] != "user":
            labeled_examples.append({"role": "user", "content": question})
        else:
            labeled_examples[-1]["content"] += question


def doc_to_visual(doc):
    """The question's video: a file under the repository's ``assets/``."""
    return [str(ASSETS / doc["video"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """The question, asked as is."""
    return doc["question"]


def process_results(doc, results):
    """1.0 when the reply equals the answer (case and surrounding blanks ignored), else 0.0."""
    reply = results[0].strip().lower()
    return {"flash_vstream_match": float(reply == doc["answer"].strip().lower())}
