"""Trainer callbacks of a run: metrics to ``metrics.jsonl`` and the resolved config into every checkpoint.

Both write on the main process only (global rank 0), so a run on N processes writes each line once.

``metrics.jsonl`` holds one JSON object per Trainer log call, with the step and epoch it belongs to::

    {"step": 3, "epoch": 0.5, "loss": 5.71, "grad_norm": 1.9, "learning_rate": 0.0009, "time": 1767251531.2}

A resumed run first drops the lines logged after the checkpoint it resumes from (they are logged again), so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from flash_vstream.train.config import TrainConfig, dump_config

METRICS_FILE = "metrics.jsonl"


class MetricsJsonl(TrainerCallback):
    """Append every Trainer log (loss, learning rate, grad norm, throughput) to ``run_dir/metrics.jsonl``.

    Args:
        run_dir: the run folder.
        resume_step: the global step of the checkpoint the run resumes from (lines after it are dropped), or
            ``None`` for a fresh run (an existing file is started afresh).
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.resume_step = resume_step

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the interruption
                    continue
                if record.get("step", math.inf) <= self.resume_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **_finite(logs), "time": round(time.time(), 3)}
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def _finite(logs: dict) -> dict:
    """JSON has no NaN/inf: write them as strings so the file stays valid JSON."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in logs.items()}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``, in order."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ConfigIntoCheckpoints(TrainerCallback):
    """Write the resolved config (``train_config.yaml``) into each ``checkpoint-N`` folder the Trainer saves."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                dump_config(self.config, folder)
