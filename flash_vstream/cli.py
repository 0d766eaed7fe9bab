"""The ``flash-vstream`` command.

Subcommands:

- ``ask --model M (--video V | --image I) "question" [--json] [--plot FILE.png]``: answer a question about a
  video or an image (and draw the memory timeline the answer used);
- ``make-tiny --variant VARIANT --out DIR [--force]``: write a tiny random checkpoint (variants come from the
  family registry);
- ``stream --model M --source S``: answer questions about a live stream as it plays;
- ``serve --model M [--host 127.0.0.1] [--port P]``: a local web page streaming a video or the webcam;
- ``train --config FILE [KEY=VALUE ...]``: a training run (HF Trainer; torchrun and deepspeed launchers);
- ``data check --data FILE|MIXTURE.yaml --media-root DIR``: check training data;
- ``extract-features --data FILE --media-root DIR --out DIR``: CLIP features in the published layout;
- further commands (``eval``) are contributed by installed packages through the ``flash_vstream.commands``
  entry-point group; each entry point is ``register(subparsers)``.

Only the standard library is imported until a command runs, so ``--help``, ``--version`` and argument errors answer
at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from importlib.metadata import entry_points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flash-vstream", description="Real-time understanding of long and live video streams (Flash-VStream)."
    )
    from flash_vstream import __version__

    parser.add_argument("--version", action="version", version=f"flash-vstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ask(sub)
    _add_make_tiny(sub)
    from flash_vstream.data.cli import add_make_data_command
    from flash_vstream.inference.stream_cli import add_stream_command
    from flash_vstream.serve.command import add_serve_command
    from flash_vstream.train.checkpoint_cli import add_checkpoint_command
    from flash_vstream.train.commands import add_data_commands
    from flash_vstream.train.extract_cli import add_extract_command
    from flash_vstream.train.train_cli import add_train_command

    add_stream_command(sub, add_model_arguments=add_model_arguments, model_options=model_options)
    add_serve_command(sub, add_model_arguments=add_model_arguments, model_options=model_options)
    add_train_command(sub)
    add_data_commands(sub)
    add_checkpoint_command(sub)
    add_extract_command(sub)
    add_make_data_command(sub)
    for entry in entry_points(group="flash_vstream.commands"):
        entry.load()(sub)
    return parser


def _add_ask(sub) -> None:
    ask = sub.add_parser("ask", help="answer a question about a video or an image")
    ask.add_argument("question", help="the question to ask")
    ask.add_argument(
        "--model", default=None, help="checkpoint directory or Hub id (e.g. IVGSZ/Flash-VStream-7b); default: the "
        "built-in demo model (a tiny model trained on synthetic shapes, see docs/demo.md)"
    )
    source = ask.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file or directory of frames")
    source.add_argument("--image", help="image file (a 1-frame video)")
    ask.add_argument("--json", action="store_true", help="print a JSON object with the answer and token counts")
    ask.add_argument("--max-new-tokens", type=int, default=128, help="generation budget (default 128)")
    add_model_arguments(ask)
    ask.add_argument(
        "--decode",
        choices=("eager", "auto", "compiled", "static"),
        default="eager",
        help="eager (default: one question is not worth compiling), or auto/compiled: static KV cache with the "
        "decode step compiled into CUDA graphs at load (about 30 s once, then several times faster per token)",
    )
    ask.add_argument("--no-progress", action="store_true", help="hide the progress bar of long videos")
    ask.add_argument("--plot", metavar="FILE.png", default=None,
                     help="also draw the memory timeline the answer used (clusters, retrieved frames, thumbnails) "
                     'to this image; needs pip install "flash-vstream[plot]"')
    ask.set_defaults(func=run_ask)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--option`` and ``--config``: how a command loads its model (``load_model``)."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    parser.add_argument(
        "--dtype", default=None, help="bfloat16, float16, float32 or auto (default: bfloat16 on GPU, float32 on CPU)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, repeatable: e.g. retrieval=paper (STAR memory), rope_mode=reference (Flash family)",
    )
    parser.add_argument("--config", default=None, help="YAML preset of model options (see configs/models/)")


def model_options(args: argparse.Namespace) -> tuple[str | None, dict]:
    """``(family, options)`` from ``--config`` (a preset names its family) and ``--option`` (which override it)."""
    family, options = None, {}
    if args.config:
        from flash_vstream.families import load_preset

        family, options = load_preset(args.config)
    options.update(parse_options(args.option))
    return family, options


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
    from flash_vstream.families import tiny_variants

    tiny = sub.add_parser("make-tiny", help="write a tiny random checkpoint for tests and smoke runs")
    tiny.add_argument("--variant", required=True, choices=sorted(tiny_variants()))
    tiny.add_argument("--out", required=True, help="output directory (must not exist, or be empty, unless --force)")
    tiny.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing its files")
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
        help="weights file format (default safetensors; bin writes sharded .bin files with an index)",
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(func=run_make_tiny)


def run_ask(args: argparse.Namespace) -> int:
    from flash_vstream.inference.pipeline import load_model

    start = time.perf_counter()
    if args.plot:  # before the model loads: a missing extra or folder is found at once
        from pathlib import Path

        from flash_vstream.inference.plot import MissingExtraError, require_matplotlib

        try:
            require_matplotlib()
        except MissingExtraError as err:
            print(f"flash-vstream ask: error: {err}", file=sys.stderr)
            return 2
        if not Path(args.plot).parent.is_dir():
            raise FileNotFoundError(f"--plot {args.plot}: its folder does not exist; create it or pick another path")
    family, options = model_options(args)
    if args.model is None:
        from flash_vstream.data.demo import demo_model_dir, describe_default

        args.model = str(demo_model_dir())
        print(describe_default(), file=sys.stderr)
    # stdout carries only the answer: libraries that log to stdout while loading (DeepSpeed does, once
    # transformers imports it) are sent to stderr, so `--json` output stays parseable.
    with contextlib.redirect_stdout(sys.stderr):
        model = load_model(
            args.model, device=args.device, dtype=args.dtype, family=family, decode=args.decode, **options
        )
        loaded = time.perf_counter()
        result = model.answer_with_details(
            args.question,
            video=args.video or args.image,
            max_new_tokens=args.max_new_tokens,
            progress=not args.no_progress and sys.stderr.isatty(),  # no bar in logs and pipes
            timeline=bool(args.plot),
        )
    done = time.perf_counter()
    if args.plot:
        from flash_vstream.inference.plot import plot_timeline

        plot_timeline(result.timeline, args.plot)
        print(f"wrote the memory timeline to {args.plot}", file=sys.stderr)
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
    from pathlib import Path

    from flash_vstream.families import tiny_variants

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"--out {out} already holds files; pass --force to overwrite them, or a new --out")
    family = tiny_variants()[args.variant]
    written = family.resolve("make_tiny")(
        out, variant=args.variant, layout=args.layout, weights_format=args.weights_format, seed=args.seed
    )
    print(f"wrote tiny {args.variant} checkpoint ({args.layout} layout, {args.weights_format}) to {written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        # Bad input (a missing video, a wrong checkpoint layout, a bad flag value): one clear line, no traceback.
        print(f"flash-vstream {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
