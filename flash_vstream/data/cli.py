"""``flash-vstream make-data``: synthetic video-QA data and the demo model's start point.

- ``make-data synthetic --out DIR --n N --seed S [--split train|heldout] [--kinds ...] [--turns T]``: frame
  folders ``DIR/clips/<id>/`` and the LLaVA-style ``DIR/<split>.json`` (``flash-vstream data check`` reads it);
- ``make-data options --out FILE --n N --seed S [--binding M]``: the demo recipe's first training stage, text
  only: ``N`` rows that teach the multiple-choice look-up (the reply is the option and its letter), and with
  ``M > 0`` ``M`` short colour and shape questions answered from the clip's objects listed in words;
- ``make-data demo-start --out DIR [--seed S] [--pretrain-steps N] [--readout-steps N] [--motion-circuit]``: the
  demo model's start point (random weights, the vision tower pre-trained on per-patch labels, the projector
  fitted into the decoder's word space, a binding head, optionally a motion circuit) and its word tokenizer,
  where ``configs/train/demo_options.yaml`` starts;
- ``make-data demo-ship --run DIR --out DIR --seed S``: copy a trained demo run into a model folder with its
  ``MANIFEST.json`` (what ``flash_vstream/demo/`` holds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_make_data_command"]


def add_make_data_command(sub) -> None:
    """Register ``make-data`` and its subcommands on the ``flash-vstream`` subparsers."""
    from flash_vstream.data.spec import KINDS, SHORT_KINDS, SPLITS

    parser = sub.add_parser("make-data", help="write synthetic video-QA data or the demo model's start point")
    kinds = parser.add_subparsers(dest="make_data", required=True)
    synthetic = kinds.add_parser("synthetic", help="procedural videos (frame folders) and LLaVA-style questions")
    synthetic.add_argument("--out", required=True, help="output folder (clips/ and <split>.json)")
    synthetic.add_argument("--n", type=int, required=True, help="number of clips")
    synthetic.add_argument("--seed", type=int, default=0, help="seed of the set (default 0)")
    synthetic.add_argument("--split", choices=sorted(SPLITS), default="train",
                           help="train or heldout: held-out scene seeds never overlap training ones (default train)")
    synthetic.add_argument("--kinds", nargs="+", choices=KINDS, default=list(SHORT_KINDS),
                           help="question kinds, cycled over the clips (default: every short-clip kind)")
    synthetic.add_argument("--turns", type=int, default=1, help="questions per clip, as dialogue turns (default 1)")
    synthetic.add_argument("--choice-rate", type=float, default=0.3,
                           help="share of questions in multiple-choice form (default 0.3)")
    synthetic.add_argument("--needle-frames", type=int, nargs=2, default=[100, 10_000], metavar=("LOW", "HIGH"),
                           help="stream lengths of needle clips, drawn log-uniformly (default 100 10000)")
    synthetic.set_defaults(func=run_synthetic)
    options = kinds.add_parser("options", help="text-only rows teaching the multiple-choice look-up")
    options.add_argument("--out", required=True, help="the data file to write (a .json)")
    options.add_argument("--n", type=int, default=4000, help="number of rows (default 4000)")
    options.add_argument("--seed", type=int, default=0, help="seed of the rows (default 0)")
    options.add_argument("--binding", type=int, default=0,
                         help="binding rows added after them (colour and shape questions under the clip's objects "
                              "in words; colour look-up rows then list the objects too); default 0")
    options.set_defaults(func=run_options)
    start = kinds.add_parser("demo-start", help="the untrained demo model (training start point)")
    start.add_argument("--out", required=True, help="output folder")
    start.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    start.add_argument("--pretrain-steps", type=int, default=3000,
                       help="steps of vision-tower pre-training on per-patch colour/shape labels (default 3000)")
    start.add_argument("--readout-steps", type=int, default=600,
                       help="steps fitting the projector into the decoder's word space (default 600; 0: none)")
    start.add_argument("--motion-circuit", action="store_true",
                       help="also wire the decoder's motion circuit (docs/demo.md; the shipped recipe uses it)")
    start.set_defaults(func=run_demo_start)
    ship = kinds.add_parser("demo-ship", help="package a trained demo run with its manifest")
    ship.add_argument("--run", required=True, help="the training run folder (training.output_dir)")
    ship.add_argument("--out", required=True, help="the model folder to write (flash_vstream/demo to ship it)")
    ship.add_argument("--seed", type=int, required=True, help="the seed the run was made with (recorded)")
    ship.add_argument("--command", action="append", default=[], dest="commands",
                      help="a command of the recipe, repeatable, in order (recorded)")
    ship.add_argument("--eval-seed", type=int, default=20261201,
                      help="seed of the held-out questions whose accuracy is recorded (default 20261201)")
    ship.add_argument("--eval-n", type=int, default=600, help="held-out questions asked (default 600)")
    ship.set_defaults(func=run_demo_ship)


def run_synthetic(args: argparse.Namespace) -> int:
    from flash_vstream.data.synthetic import write_dataset

    if args.turns < 1:
        raise ValueError(f"--turns must be >= 1, got {args.turns}")
    low, high = args.needle_frames
    if not 3 <= low <= high:
        raise ValueError(f"--needle-frames LOW HIGH must satisfy 3 <= LOW <= HIGH, got {low} {high}")
    path = write_dataset(Path(args.out), split=args.split, seed=args.seed, n=args.n, kinds=tuple(args.kinds),
                         turns=args.turns, choice_rate=args.choice_rate, needle_frames=(low, high))
    print(f"wrote {args.n} clips and {path} (media root {args.out})")
    return 0


def run_options(args: argparse.Namespace) -> int:
    from flash_vstream.data.synthetic import write_option_rows

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.binding < 0:
        raise ValueError(f"--binding must be >= 0, got {args.binding}")
    path = write_option_rows(Path(args.out), seed=args.seed, n=args.n, binding=args.binding)
    print(f"wrote {args.n} option look-up rows and {args.binding} binding rows to {path}")
    return 0


def run_demo_start(args: argparse.Namespace) -> int:
    from flash_vstream.data.demo import write_demo_start

    if args.motion_circuit and not args.readout_steps:
        raise ValueError("--motion-circuit needs --readout-steps > 0: it reads the projector's word space")
    out = write_demo_start(Path(args.out), seed=args.seed, pretrain_steps=args.pretrain_steps,
                           readout_steps=args.readout_steps, motion_circuit=args.motion_circuit)
    print(f"wrote the untrained demo model to {out}")
    return 0


def run_demo_ship(args: argparse.Namespace) -> int:
    from flash_vstream.data.accuracy import EVAL_KINDS, evaluate
    from flash_vstream.data.demo import ship_demo
    from flash_vstream.inference.pipeline import load_model

    commands = args.commands or [" ".join(["flash-vstream", *sys.argv[1:]])]
    model = load_model(args.run, device="cpu", dtype="float32", decode="eager")
    accuracy = evaluate(model, seed=args.eval_seed, n=args.eval_n, kinds=EVAL_KINDS)
    extra = {"heldout": {"seed": args.eval_seed, "n": args.eval_n, "kinds": list(EVAL_KINDS),
                         "accuracy": accuracy.table(), "accuracy_by_form": accuracy.form_table()}}
    manifest = ship_demo(Path(args.run), Path(args.out), commands=commands, seed=args.seed, extra=extra)
    print(json.dumps(accuracy.table()))
    print(json.dumps(accuracy.form_table()))
    print(f"wrote {manifest}")
    return 0
