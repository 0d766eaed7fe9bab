"""The ``flash-vstream eval`` command: ``run`` (model + benchmark -> predictions and results) and ``score``.

Plugged into the main CLI through the ``flash_vstream.commands`` entry point (``register``)::

    flash-vstream eval run --benchmark mvbench --model M --data DATA_ROOT/MVBench --out runs/mvbench
    flash-vstream eval run --benchmark videomme --model M --option rope_mode=reference --dtype bfloat16 ...
    flash-vstream eval score --benchmark videomme --annotations DATA_ROOT/Video-MME --predictions p.jsonl
    flash-vstream eval score --benchmark inf_streams --annotations A.jsonl --predictions p.jsonl --reference r.jsonl

``run`` takes the same model flags as ``flash-vstream ask`` (``--device``, ``--dtype``, ``--option KEY=VALUE``,
``--config PRESET.yaml``) plus ``--max-new-tokens``. Both commands print one summary line (accuracy next to the
skipped and missing counts) and a warning per broken video and per malformed annotation record; bad input is one
``error:`` line on stderr and exit code 2. The judge's API key is read only from the environment
(``FLASH_VSTREAM_JUDGE_API_KEY`` or ``OPENAI_API_KEY``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flash_vstream_eval.benchmarks import BENCHMARKS, get_benchmark
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
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first malformed annotation record (default: skip it, count it and report it)",
    )
    judge = parser.add_argument_group("open-ended judge (VStream-QA; key from the environment only)")
    judge.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint")
    judge.add_argument("--judge-model", default=None, help="judge model name")
    judge.add_argument("--judge-cache", default=None, help="JSONL cache of verdicts")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` command (``run``, ``score``) to a main CLI's subparsers."""
    from flash_vstream.cli import add_model_arguments

    parser = subparsers.add_parser("eval", help="evaluate on video QA benchmarks or score predictions")
    commands = parser.add_subparsers(dest="eval_command", required=True)

    run = commands.add_parser("run", help="run a model on a benchmark (resumable, torchrun-aware)")
    _add_common(run)
    run.add_argument(
        "--model",
        default=None,
        help="model name or checkpoint path for flash_vstream.load_model (required; synth-memory: the demo model)",
    )
    add_model_arguments(run)
    run.add_argument(
        "--max-new-tokens", type=_positive_int, default=None, help="generation budget (default: the profile's)"
    )
    run.add_argument("--data", default=None, type=Path, help="benchmark data root (annotations + media; required)")
    run.add_argument("--out", required=True, type=Path, help="run folder; reuse it (same flags) to resume")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in --out: its old predictions and results move to --out/overwritten-<time>/",
    )
    run.add_argument("--limit", type=_positive_int, default=None, help="only the first N questions")
    run.add_argument(
        "--annotations",
        default=None,
        help="annotation file/folder or HF dataset id (local only) instead of auto-detection",
    )
    run.add_argument(
        "--offline",
        action="store_true",
        help="real-time sets (rvs_*): ask each question on its window [0, time] instead of on the live stream",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.set_defaults(func=_run_command)

    score = commands.add_parser("score", help="score an existing predictions file, no model needed")
    _add_common(score)
    score.add_argument("--annotations", default=None, help="annotation file or folder (required but for synth-memory)")
    score.add_argument("--predictions", required=True, type=Path, help="predictions JSONL")
    score.add_argument("--out", type=Path, default=None, help="also write results.json/results.md here")
    score.add_argument("--json", action="store_true", help="print the whole results JSON instead of the summary")
    score.set_defaults(func=_score_command)
    from flash_vstream_eval.inf_streams_run import add_arguments
    from flash_vstream_eval.synth_memory import add_arguments as add_synth_arguments

    add_arguments(run, score)
    add_synth_arguments(run, score)
    return parser


def _judge(args: argparse.Namespace, required: bool):
    """Build the judge from flags/environment; ``None`` when not required and no judge flag was given."""
    if not get_benchmark(args.benchmark).open_ended:
        return None
    if not required and not (args.judge_model or args.judge_base_url):
        return None
    from flash_vstream_eval.judge import judge_from_args

    return judge_from_args(base_url=args.judge_base_url, model=args.judge_model, cache_path=args.judge_cache)


def _report(results: dict[str, Any]) -> None:
    from flash_vstream_eval.report import summary_line, warning_lines

    for line in warning_lines(results):
        print(line, file=sys.stderr)
    print(summary_line(results))


def _guarded(command) -> Any:
    """Run ``command()``; bad input (files, flags, annotations, an unreachable judge) is one line and exit 2."""
    from flash_vstream_eval.judge import JudgeError

    try:
        return command()
    except (FileNotFoundError, ValueError, JudgeError) as err:  # AnnotationError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2


def _require(args: argparse.Namespace, *flags: str) -> None:
    """Flags a benchmark with annotation files needs (synth-memory makes its questions, so they are optional)."""
    missing = [flag for flag in flags if getattr(args, flag.removeprefix("--").replace("-", "_")) is None]
    if missing:
        raise ValueError(f"--benchmark {args.benchmark} needs {' and '.join(missing)}")


def _run_command(args: argparse.Namespace) -> int:
    if get_benchmark(args.benchmark).synthetic:
        from flash_vstream_eval.synth_memory import run_command

        return _guarded(lambda: run_command(args))
    try:
        _require(args, "--model", "--data")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if get_benchmark(args.benchmark).commentary:
        from flash_vstream_eval.inf_streams_run import run_command

        return _guarded(lambda: run_command(args))

    def run() -> int:
        from flash_vstream.cli import model_options
        from flash_vstream.distributed import cleanup_distributed, init_distributed
        from flash_vstream_eval.model_api import ModelSpec
        from flash_vstream_eval.runner import run_benchmark

        family, options = model_options(args)
        model = ModelSpec(args.model, device=args.device, dtype=args.dtype, family=family, options=options)
        judge = _judge(args, required=False)
        dist = init_distributed()
        try:
            results = run_benchmark(
                args.benchmark,
                model,
                args.data,
                args.out,
                args.profile,
                args.limit,
                annotations=args.annotations,
                judge=judge,
                progress=not args.no_progress,
                max_new_tokens=args.max_new_tokens,
                overwrite=args.overwrite,
                strict=args.strict,
                dist=dist,
                offline=args.offline,
            )
        finally:
            cleanup_distributed()
        if results is None:
            print(f"rank {dist.rank}: shard done; the last rank to finish merges and scores", file=sys.stderr)
            return 0
        _report(results)
        print(f"results: {args.out / 'results.json'}")
        return 0

    return _guarded(run)


def _score_command(args: argparse.Namespace) -> int:
    if get_benchmark(args.benchmark).synthetic:
        from flash_vstream_eval.synth_memory import score_command

        return _guarded(lambda: score_command(args))
    try:
        _require(args, "--annotations")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if get_benchmark(args.benchmark).commentary:
        from flash_vstream_eval.inf_streams_run import score_command

        return _guarded(lambda: score_command(args))

    def score() -> int:
        from flash_vstream_eval.report import write_results
        from flash_vstream_eval.scoring import score_predictions

        results = score_predictions(
            args.benchmark,
            args.annotations,
            args.predictions,
            args.profile,
            judge=_judge(args, required=True),
            strict=args.strict,
        )
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            write_results(args.out, results)
        if args.json:
            print(json.dumps(results, indent=2, ensure_ascii=False))
        else:
            _report(results)
            if args.out is not None:
                print(f"results: {args.out / 'results.json'}")
        return 0

    return _guarded(score)
