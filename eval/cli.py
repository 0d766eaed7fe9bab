"""The ``flash-vstream eval`` command: ``run`` (model + benchmark -> predictions and results) and ``score``.

Plugged into the main CLI through the ``flash_vstream.commands`` entry point (``register``)::

    flash-vstream eval run --benchmark mvbench --model M --data DATA_ROOT/MVBench --out runs/mvbench
    flash-vstream eval score --benchmark videomme --annotations DATA_ROOT/Video-MME --predictions p.jsonl

The judge's API key is read only from the environment (``FLASH_VSTREAM_JUDGE_API_KEY`` or ``OPENAI_API_KEY``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flash_vstream_eval.benchmarks import BENCHMARKS, get_benchmark
from flash_vstream_eval.items import AnnotationError
from flash_vstream_eval.profiles import PROFILES

__all__ = ["register"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--benchmark", required=True, choices=sorted(BENCHMARKS), help="benchmark to evaluate"
    )
    parser.add_argument(
        "--profile",
        default="flash-vstream",
        choices=sorted(PROFILES),
        help="prompt and scoring rules (default: flash-vstream)",
    )
    judge = parser.add_argument_group("open-ended judge (VStream-QA; key from the environment only)")
    judge.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint")
    judge.add_argument("--judge-model", default=None, help="judge model name")
    judge.add_argument("--judge-cache", default=None, help="JSONL cache of verdicts")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` command (``run``, ``score``) to a main CLI's subparsers."""
    parser = subparsers.add_parser("eval", help="evaluate on video QA benchmarks or score predictions")
    commands = parser.add_subparsers(dest="eval_command", required=True)

    run = commands.add_parser("run", help="run a model on a benchmark (resumable, torchrun-aware)")
    _add_common(run)
    run.add_argument(
        "--model", required=True, help="model name or checkpoint path for flash_vstream.load_model"
    )
    run.add_argument("--data", required=True, type=Path, help="benchmark data root (annotations + media)")
    run.add_argument("--out", required=True, type=Path, help="run folder; reuse it to resume")
    run.add_argument("--limit", type=_positive_int, default=None, help="only the first N questions")
    run.add_argument(
        "--annotations",
        default=None,
        help="annotation file/folder or HF dataset id (local only) instead of auto-detection",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.set_defaults(func=_run_command)

    score = commands.add_parser("score", help="score an existing predictions file, no model needed")
    _add_common(score)
    score.add_argument("--annotations", required=True, help="annotation file or folder")
    score.add_argument("--predictions", required=True, type=Path, help="predictions JSONL")
    score.add_argument("--out", type=Path, default=None, help="also write results.json/results.md here")
    score.set_defaults(func=_score_command)
    return parser


def _judge(args: argparse.Namespace, required: bool):
    """Build the judge from flags/environment; ``None`` when not required and no judge flag was given."""
    if not get_benchmark(args.benchmark).open_ended:
        return None
    if not required and not (args.judge_model or args.judge_base_url):
        return None
    from flash_vstream_eval.judge import judge_from_args

    return judge_from_args(base_url=args.judge_base_url, model=args.judge_model, cache_path=args.judge_cache)


def _summary(results: dict[str, Any]) -> str:
    metrics = ", ".join(f"{k} {v}" for k, v in (results.get("metrics") or {}).items())
    return f"{results['benchmark']} [{results['profile']}]: {metrics or results.get('note', '')}"


def _run_command(args: argparse.Namespace) -> int:
    from flash_vstream_eval.runner import run_benchmark

    try:
        results = run_benchmark(
            args.benchmark,
            args.model,
            args.data,
            args.out,
            args.profile,
            args.limit,
            annotations=args.annotations,
            judge=_judge(args, required=False),
            progress=not args.no_progress,
        )
    except (AnnotationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if results is not None:
        print(_summary(results))
        print(f"results: {args.out / 'results.json'}")
    return 0


def _score_command(args: argparse.Namespace) -> int:
    from flash_vstream_eval.report import write_results
    from flash_vstream_eval.scoring import score_predictions

    try:
        results = score_predictions(
            args.benchmark,
            args.annotations,
            args.predictions,
            args.profile,
            judge=_judge(args, required=True),
        )
    except (AnnotationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_results(args.out, results)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0
