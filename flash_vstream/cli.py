"""The ``flash-vstream`` command.

Subcommands:

- ``ask --model M (--video V | --image I) "question" [--json]``: answer a question about a video or an image;
- ``make-tiny --variant {star-vicuna,star-qwen2,flash-qwen2vl} --out DIR``: write a tiny random checkpoint;
- further commands (``eval``) are contributed by installed packages through the ``flash_vstream.commands``
  entry-point group; each entry point is ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import entry_points

TINY_VARIANTS = ("star-vicuna", "star-qwen2", "flash-qwen2vl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flash-vstream", description="Real-time understanding of long and live video streams (Flash-VStream)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ask(sub)
    _add_make_tiny(sub)
    for entry in entry_points(group="flash_vstream.commands"):
        entry.load()(sub)
    return parser


def _add_ask(sub) -> None:
    ask = sub.add_parser("ask", help="answer a question about a video or an image")
    ask.add_argument("question", help="the question to ask")
    ask.add_argument("--model", required=True, help="checkpoint directory or Hub id (e.g. IVGSZ/Flash-VStream-7b)")
    source = ask.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file or directory of frames")
    source.add_argument("--image", help="image file (a 1-frame video)")
    ask.add_argument("--json", action="store_true", help="print a JSON object with the answer and token counts")
    ask.add_argument("--max-new-tokens", type=int, default=128, help="generation budget (default 128)")
    ask.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ask.add_argument("--dtype", default=None, help="bfloat16, float16 or float32 (default: bf16 on GPU)")
    ask.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, repeatable: e.g. retrieval=paper (STAR memory), rope_mode=reference (Flash family)",
    )
    ask.add_argument("--config", default=None, help="YAML preset of model options (see configs/models/)")
    ask.set_defaults(func=run_ask)


def parse_options(pairs: list[str]) -> dict:
    """``["retrieval=paper", "bank_capacity=100"]`` -> ``{"retrieval": "paper", "bank_capacity": 100}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _add_make_tiny(sub) -> None:
    tiny = sub.add_parser("make-tiny", help="write a tiny random checkpoint for tests and smoke runs")
    tiny.add_argument("--variant", required=True, choices=TINY_VARIANTS)
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.add_argument(
        "--layout",
        choices=("own", "released"),
        default="own",
        help="own: this project's format; released: the published checkpoint layout (default own)",
    )
    tiny.add_argument(
        "--format",
        dest="weights_format",
        choices=("safetensors", "bin"),
        default="safetensors",
        help="weights file format of the released STAR layout (default safetensors)",
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(func=run_make_tiny)


def run_ask(args: argparse.Namespace) -> int:
    from flash_vstream.inference.pipeline import load_model

    start = time.perf_counter()
    options = {}
    if args.config:
        from flash_vstream.inference.options import load_options_file

        options = load_options_file(args.config)[1]
    options.update(parse_options(args.option))
    model = load_model(args.model, device=args.device, dtype=args.dtype, **options)
    loaded = time.perf_counter()
    result = model.answer_with_details(
        args.question, video=args.video or args.image, max_new_tokens=args.max_new_tokens
    )
    done = time.perf_counter()
    if args.json:
        payload = {
            "answer": result.text,
            "num_frames": result.num_frames,
            "num_visual_tokens": result.num_visual_tokens,
            "prompt_tokens": result.prompt_tokens,
            "load_seconds": round(loaded - start, 3),
            "answer_seconds": round(done - loaded, 3),
        }
        print(json.dumps(payload, ensure_ascii=False))
    else:
        print(result.text)
    return 0


def run_make_tiny(args: argparse.Namespace) -> int:
    if args.variant == "flash-qwen2vl":
        if args.layout != "own":
            raise SystemExit("make-tiny: --layout applies to the STAR variants; flash-qwen2vl has one layout")
        from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

        out = make_tiny_flash(args.out, seed=args.seed)
    else:
        from flash_vstream.model.tiny import make_tiny_star

        out = make_tiny_star(
            args.out, args.variant, layout=args.layout, weights_format=args.weights_format, seed=args.seed
        )
    print(f"wrote tiny {args.variant} checkpoint to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        # Bad input (a missing video, a wrong checkpoint layout, a bad flag value): one clear line, no traceback.
        print(f"flash-vstream {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
