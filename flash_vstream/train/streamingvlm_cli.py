"""``flash-vstream data build-streamingvlm``: per-game commentary -> StreamingVLM overlapped-chunk training data.

``flash-vstream data build-streamingvlm --games GAMES.jsonl --out CHUNKS.jsonl --tokenizer DIR [--window 24]
[--stride 12] [--min-words N] [--text-sink 512] [--text-window 512] [--query TEXT] [--json]``

Writes ``CHUNKS.jsonl`` (the published record shape) and its seek index ``CHUNKS_seeks.jsonl``, and prints what
was kept. The tokenizer (a local checkpoint or tokenizer folder; no download) counts the previous text's tokens.
:mod:`flash_vstream.train.streamingvlm_data` describes the records and the rules. Only the standard library is
imported here, so ``flash-vstream --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_build_command(commands) -> None:
    """Add ``build-streamingvlm`` to the ``data`` subcommands."""
    build = commands.add_parser(
        "build-streamingvlm",
        help="cut per-game ASR commentary into StreamingVLM overlapped-chunk SFT samples (JSONL)",
        description="Cut per-game word-level ASR commentary into StreamingVLM's overlapped-chunk SFT samples: "
        "windows of --window seconds every --stride, kept with at least --min-words words ending inside, the "
        "previous text cut to its first --text-sink and last --text-window tokens. Writes OUT and OUT's "
        "_seeks.jsonl index.",
    )
    build.add_argument("--games", required=True, help="JSONL, one game per line: video, duration, content, [title]")
    build.add_argument("--out", required=True, help="the chunk JSONL to write (its _seeks.jsonl index beside it)")
    build.add_argument("--tokenizer", required=True, help="local checkpoint/tokenizer folder counting tokens")
    build.add_argument("--window", type=float, default=24.0, help="seconds per chunk (default 24)")
    build.add_argument("--stride", type=float, default=12.0, help="seconds between chunk starts (default 12)")
    build.add_argument("--min-words", type=int, default=None, help="fewest words per chunk (default 2 x window)")
    build.add_argument("--text-sink", type=int, default=512, help="previous-text tokens kept from its start")
    build.add_argument("--text-window", type=int, default=512, help="previous-text tokens kept from its end")
    build.add_argument("--query", default="", help="text after the first second's video (default none)")
    build.add_argument("--json", action="store_true", help="print the summary as JSON")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    """The handler: build the chunks, print the summary, return 0.

    Raises:
        FileNotFoundError: for a missing games file or tokenizer folder.
        ValueError: for a bad setting or (``DataError``) the first malformed game record, naming ``file:line``.
    """
    from flash_vstream.train.streamingvlm_data import BuildSettings, build_file, seeks_path

    settings = BuildSettings(
        window=args.window,
        stride=args.stride,
        min_words=args.min_words,
        text_sink=args.text_sink,
        text_window=args.text_window,
        query=args.query,
    )
    tokenizer = _tokenizer(args.tokenizer)
    summary = build_file(args.games, args.out, tokenizer, settings, progress=sys.stderr.isatty())
    report = {
        "games": summary.games,
        "windows": summary.windows,
        "kept": summary.kept,
        "too_few_words": summary.too_few_words,
        "words": summary.words,
        "short_games": summary.short_games,
        "out": str(args.out),
        "seeks": str(seeks_path(args.out)),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"build-streamingvlm: {summary.games} games, {summary.windows} windows of {settings.window:g} s every "
        f"{settings.stride:g} s; kept {summary.kept} ({summary.words} words), dropped {summary.too_few_words} with "
        f"fewer than {settings.word_threshold} words"
    )
    if summary.short_games:
        shown = ", ".join(summary.short_games[:5]) + (" ..." if len(summary.short_games) > 5 else "")
        print(f"  {len(summary.short_games)} games shorter than one window: {shown}")
    print(f"  wrote {args.out} and {report['seeks']}")
    return 0


def _tokenizer(folder: str):
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--tokenizer {folder} is not a folder; pass a local checkpoint or tokenizer folder")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--tokenizer {folder} holds no loadable tokenizer ({err}); pass a checkpoint folder"
        ) from None
