"""``flash-vstream data check``: what a data file or mixture holds, before training on it.

``flash-vstream data check --data FILE|MIXTURE.yaml --media-root DIR [--model M] [--max-length N] [--strict]``

For each source it reports the rows, the usable samples (rows that parse and whose media exist and are readable by
the model family), the selected ones (the mixture strategy applied), the rows skipped per reason, the estimated
token lengths (min / p50 / p90 / max / mean and a text histogram) and how many selected samples exceed the
maximum length; ``--json`` prints the same report as one JSON object. The exit code is 0, or 2 (through the
``flash-vstream`` command) when ``--strict`` meets the first unusable row.

Without ``--model`` the published defaults of ``--family`` are used and text is counted with the words estimate;
with ``--model DIR`` the visual budget comes from the checkpoint's ``config.json`` and text is counted by its
tokenizer (no weights are read). For a StreamingVLM checkpoint (its ``flash_vstream_family`` marker) ``--data`` is
a chunk file (``data build-streamingvlm``) and every chunk's length is exact: its per-second layout tokenized,
with the vision tokens of its video's frame size (read from the container, no frame decoded).

Only the standard library is imported here; the command's work imports the rest when it runs, so
``flash-vstream --help`` stays instant. :func:`add_data_commands` registers the commands on the CLI.
"""

from __future__ import annotations

import argparse
import json
import math

FAMILIES = ("star", "flash")
TEMPLATES = ("vicuna_v1", "plain", "chat_template")
HISTOGRAM_BINS = 10
"""Bins the histogram aims for (its width is rounded to 1, 2 or 5 times a power of ten)."""
BAR_WIDTH = 30
"""Characters of the longest histogram bar."""


def add_data_commands(subparsers) -> None:
    """Add ``data`` with its ``check`` and ``build-streamingvlm`` subcommands to the ``flash-vstream`` subparsers.

    The handler is ``args.func(args) -> int``; bad input raises ``ValueError``/``FileNotFoundError`` (the CLI prints
    them as one line).
    """
    data = subparsers.add_parser("data", help="inspect training data (data files and mixtures)")
    commands = data.add_subparsers(dest="data_command", required=True)
    check = commands.add_parser(
        "check",
        help="report rows, usable samples, skips per reason and token lengths of a data file or mixture",
        description=__doc__.split("\n\n")[1],
    )
    check.add_argument("--data", required=True, help="a .json/.jsonl data file or a mixture .yaml")
    check.add_argument(
        "--media-root", required=True, help="folder media paths (and a mixture's relative paths) start in"
    )
    check.add_argument("--model", default=None, help="local checkpoint folder: its visual budget and tokenizer")
    check.add_argument("--family", choices=FAMILIES, default=None, help="without --model: whose defaults (star)")
    check.add_argument("--template", choices=TEMPLATES, default=None, help="conversation template to count")
    check.add_argument("--max-length", type=int, default=None, help="token limit (default: the family's recipe)")
    check.add_argument("--strict", action="store_true", help="fail on the first unusable row instead of counting")
    check.add_argument("--probe-videos", action="store_true", help="open video containers for exact frame counts")
    check.add_argument("--no-tokenizer", action="store_true", help="with --model: count text by the words estimate")
    check.add_argument("--issues", type=int, default=10, help="issues listed per source (default 10)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=run_data_check)
    from flash_vstream.train.streamingvlm_cli import add_build_command  # standard library only

    add_build_command(commands)


def run_data_check(args: argparse.Namespace) -> int:
    """The ``data check`` handler: print the report, return 0.

    Raises:
        ValueError: for a bad flag value or (``--strict``) the first unusable row.
        FileNotFoundError: for a missing data file, media root or checkpoint.
    """
    if args.issues < 0:
        raise ValueError(f"--issues must be >= 0, got {args.issues}")
    if args.max_length is not None and args.max_length < 1:
        raise ValueError(f"--max-length must be >= 1, got {args.max_length}")
    if args.model is not None and _model_family(args.model) == "streamingvlm":
        report = _check_streamingvlm(args)
    else:
        budget = _budget(args)
        max_length = args.max_length if args.max_length is not None else _default_max_length(budget.family)
        report = check_data(
            args.data, args.media_root, budget, max_length=max_length, strict=args.strict, max_issues=args.issues
        )
    print(json.dumps(report, ensure_ascii=False) if args.json else render_report(report))
    return 0


def _model_family(model: str) -> str:
    from flash_vstream.train.lengths import checkpoint_family

    return checkpoint_family(model)


def _check_streamingvlm(args: argparse.Namespace) -> dict:
    """The report of a StreamingVLM chunk file for ``--model`` (exact lengths: its tokenizer and frame sizes)."""
    from flash_vstream.train.start import FAMILY_TRAINING
    from flash_vstream.train.streamingvlm_collate import StreamingVLMSampleEncoder

    for flag, value, allowed in (("--family", args.family, None), ("--template", args.template, "chat_template")):
        if value is not None and value != allowed:
            raise ValueError(f"{flag} {value} contradicts --model {args.model}, a streamingvlm checkpoint")
    if args.no_tokenizer:
        raise ValueError("--no-tokenizer does not apply to a StreamingVLM checkpoint: its chunks are counted exactly")
    max_length = args.max_length or FAMILY_TRAINING["streamingvlm"].max_length
    encoder = StreamingVLMSampleEncoder.for_checkpoint(args.model, max_length=max_length)
    return check_chunks(args.data, args.media_root, encoder, strict=args.strict, max_issues=args.issues)


def check_chunks(data, media_root, encoder, *, strict: bool = False, max_issues: int = 10) -> dict:
    """The ``data check`` report (the :func:`check_data` shape) of a StreamingVLM chunk file.

    Every record is parsed and its exact token count taken (``encoder.length``: the tokenizer and each video's
    frame size from its container; no frame is decoded). Records that cannot be trained on are skipped by reason:
    ``malformed`` (not a chunk record, or a chunk past its video's end), ``missing_media``, ``unreadable_media``.

    Args:
        data: a chunk JSONL file (``flash-vstream data build-streamingvlm``).
        media_root: the folder its video paths start in.
        encoder: a :class:`~flash_vstream.train.streamingvlm_collate.StreamingVLMSampleEncoder`.
        strict: raise on the first unusable record.
        max_issues: issue lines kept.

    Raises:
        FileNotFoundError: for a missing file or media root.
        ValueError: (``DataError``) with ``strict``, the first unusable record.
    """
    from pathlib import Path

    from flash_vstream.train.data import DataError, MissingMediaError
    from flash_vstream.train.dataset import SampleError
    from flash_vstream.train.streamingvlm_data import StreamingChunks
    from flash_vstream.video.errors import VideoError

    if str(data).endswith((".yaml", ".yml")):
        raise ValueError(f"--data {data}: a StreamingVLM checkpoint trains on one chunk JSONL file, not a mixture")
    chunks = StreamingChunks(data, media_root)
    lengths, skipped, issues = [], {}, []
    for i in range(len(chunks)):
        try:
            lengths.append(encoder.length(chunks[i]))
            continue
        except MissingMediaError as err:
            reason, message = "missing_media", str(err)
        except (DataError, SampleError) as err:
            reason, message = "malformed", str(err)
        except VideoError as err:
            reason, message = "unreadable_media", f"{chunks.index[i][0]}:{chunks.index[i][2]}: {err}"
        if strict:
            raise DataError(message)
        skipped[reason] = skipped.get(reason, 0) + 1
        issues.append(message)
    rows, usable = len(chunks), len(lengths)
    source = {
        "name": Path(data).name,
        "path": str(data),
        "strategy": "all",
        "rows": rows,
        "usable": usable,
        "selected": usable,
        "shortfall": 0,
        "skipped": dict(sorted(skipped.items())),
        **_length_report(lengths, encoder.max_length),
        "issues": issues[:max_issues],
        "issues_total": len(issues),
    }
    total = {key: source[key] for key in ("rows", "usable", "selected", "shortfall", "skipped")}
    total.update(_length_report(lengths, encoder.max_length))
    return {
        "data": str(data),
        "media_root": str(media_root),
        "family": "streamingvlm",
        "template": "per-second chunks",
        "text_counter": "tokenizer",
        "max_length": encoder.max_length,
        "sources": [source],
        "total": total,
    }


def _default_max_length(family: str) -> int:
    from flash_vstream.train.lengths import DEFAULT_MAX_LENGTH

    return DEFAULT_MAX_LENGTH[family]


def _budget(args: argparse.Namespace):
    from flash_vstream.train.lengths import budget_for_checkpoint, default_budget

    if args.model is None:
        if args.no_tokenizer:
            raise ValueError("--no-tokenizer only applies with --model (without it text is counted by words)")
        return default_budget(args.family or "star", args.template, probe_videos=args.probe_videos)
    budget = budget_for_checkpoint(
        args.model, args.template, use_tokenizer=not args.no_tokenizer, probe_videos=args.probe_videos
    )
    if args.family is not None and args.family != budget.family:
        raise ValueError(f"--family {args.family} contradicts --model {args.model}, a {budget.family} checkpoint")
    return budget


# ----------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------


def check_data(data, media_root, budget, *, max_length: int, strict: bool = False, max_issues: int = 10) -> dict:
    """The ``data check`` report as a JSON-ready dict.

    Args:
        data: a data file or a mixture YAML (see :func:`flash_vstream.train.mixture.load_mixture`).
        media_root: the data root.
        budget: a :class:`~flash_vstream.train.lengths.LengthBudget`.
        max_length: samples longer than this are counted as over the limit.
        strict: raise on the first unusable row or shortfall.
        max_issues: issue lines kept per source.

    Returns:
        ``{"data", "media_root", "family", "template", "text_counter", "max_length", "sources": [...],
        "total": {...}}``; each source has ``name``, ``path``, ``strategy``, ``rows``, ``usable``, ``selected``,
        ``shortfall``, ``skipped`` (reason -> count), ``over_max_length``, ``lengths`` (``min``, ``p50``, ``p90``,
        ``max``, ``mean``; ``None`` when nothing is selected), ``histogram`` (``bin_width`` and ``bins`` of
        ``[low, high, count]``, inclusive), ``issues`` (the first ``max_issues``) and ``issues_total``.
    """
    from flash_vstream.train.lengths import estimate_lengths
    from flash_vstream.train.mixture import load_mixture

    loaded = load_mixture(data, media_root, strict=strict, media_check=budget.check_media)
    sources, every_length = [], []
    for source in loaded.sources:
        lengths = estimate_lengths(source.selected, budget)
        every_length.extend(lengths)
        skipped = dict(sorted(source.data.skipped.items()))
        sources.append(
            {
                "name": source.spec.label,
                "path": str(source.data.path),
                "strategy": source.spec.describe(),
                "rows": source.data.rows,
                "usable": len(source.data.samples),
                "selected": len(source.selected),
                "shortfall": source.shortfall,
                "skipped": skipped,
                **_length_report(lengths, max_length),
                "issues": [str(issue) for issue in source.data.issues[:max_issues]],
                "issues_total": len(source.data.issues),
            }
        )
    skipped_total: dict[str, int] = {}
    for source in sources:
        for reason, count in source["skipped"].items():
            skipped_total[reason] = skipped_total.get(reason, 0) + count
    total = {key: sum(s[key] for s in sources) for key in ("rows", "usable", "selected", "shortfall")}
    total["skipped"] = dict(sorted(skipped_total.items()))
    total.update(_length_report(every_length, max_length))
    return {
        "data": str(data),
        "media_root": str(media_root),
        "family": budget.family,
        "template": budget.text.template,
        "text_counter": budget.text.counter.name,
        "max_length": max_length,
        "sources": sources,
        "total": total,
    }


def _length_report(lengths: list[int], max_length: int) -> dict:
    """``over_max_length``, ``lengths`` (summary) and ``histogram`` of some token lengths."""
    if not lengths:
        return {"over_max_length": 0, "lengths": None, "histogram": {"bin_width": 0, "bins": []}}
    ordered = sorted(lengths)
    n = len(ordered)
    summary = {
        "min": ordered[0],
        "p50": _nearest_rank(ordered, 50),
        "p90": _nearest_rank(ordered, 90),
        "max": ordered[-1],
        "mean": round(sum(ordered) / n, 1),
    }
    return {
        "over_max_length": sum(1 for length in ordered if length > max_length),
        "lengths": summary,
        "histogram": histogram(ordered),
    }


def _nearest_rank(ordered: list[int], percent: int) -> int:
    """The ``percent``-th percentile by the nearest-rank rule: the ``ceil(percent/100 * n)``-th smallest value."""
    return ordered[max(math.ceil(percent * len(ordered) / 100), 1) - 1]


def histogram(lengths: list[int], bins: int = HISTOGRAM_BINS) -> dict:
    """Integer bins of equal width over ``lengths`` (non-empty).

    The width is the smallest of 1, 2, 5, 10, 20, 50, ... that covers ``max - min + 1`` in at most ``bins`` bins; the
    first bin starts at ``min`` rounded down to a multiple of the width. Bins are inclusive ``[low, high]``; empty
    bins between others are kept.

    >>> histogram([3, 7, 12, 14])["bins"]
    [[2, 3, 1], [4, 5, 0], [6, 7, 1], [8, 9, 0], [10, 11, 0], [12, 13, 1], [14, 15, 1]]
    """
    low, high = min(lengths), max(lengths)
    span = high - low + 1
    width, scale = 1, 1
    while width * bins < span:
        for step in (1, 2, 5):
            width = step * scale
            if width * bins >= span:
                break
        else:
            scale *= 10
    start = low // width * width
    counts = [0] * (high // width - start // width + 1)
    for length in lengths:
        counts[(length - start) // width] += 1
    rows = [[start + i * width, start + (i + 1) * width - 1, count] for i, count in enumerate(counts)]
    return {"bin_width": width, "bins": rows}


def render_report(report: dict) -> str:
    """The report as terminal text."""
    lines = [
        f"data check of {report['data']} (media root {report['media_root']})",
        f"family {report['family']}, template {report['template']}, text counted by "
        f"{'the tokenizer' if report['text_counter'] == 'tokenizer' else 'the words estimate'}, "
        f"max length {report['max_length']}",
    ]
    many = len(report["sources"]) > 1
    for i, source in enumerate(report["sources"], start=1):
        lines.append("")
        lines.append(f"source {i}/{len(report['sources'])}: {source['name']} ({source['path']})")
        counts = f"strategy {source['strategy']}: rows {source['rows']}, usable {source['usable']}, selected "
        counts += f"{source['selected']}"
        if source["shortfall"]:
            counts += f" ({source['shortfall']} short of the strategy's count)"
        lines.append("  " + counts)
        lines.extend("  " + line for line in _body(source, report["max_length"]))
        if source["issues"]:
            lines.append(f"  issues (first {len(source['issues'])} of {source['issues_total']}):")
            lines.extend(f"    {issue}" for issue in source["issues"])
    if many:
        total = report["total"]
        lines.append("")
        lines.append(f"total: rows {total['rows']}, usable {total['usable']}, selected {total['selected']}")
        lines.extend("  " + line for line in _body(total, report["max_length"]))
    return "\n".join(lines)


def _body(part: dict, max_length: int) -> list[str]:
    """Skips, length summary and histogram lines of a source (or the total)."""
    skipped = part["skipped"]
    if skipped:
        detail = ", ".join(f"{reason} {count}" for reason, count in skipped.items())
        lines = [f"skipped {sum(skipped.values())}: {detail}"]
    else:
        lines = ["skipped 0"]
    summary = part["lengths"]
    if summary is None:
        return [*lines, "tokens: no selected samples"]
    lines.append(
        f"tokens: min {summary['min']}, p50 {summary['p50']}, p90 {summary['p90']}, max {summary['max']}, "
        f"mean {summary['mean']}; over {max_length}: {part['over_max_length']}"
    )
    bins = part["histogram"]["bins"]
    top = max(count for _, _, count in bins)
    digits = len(str(bins[-1][1]))
    for low, high, count in bins:
        bar = "#" * (max(1, round(BAR_WIDTH * count / top)) if count else 0)
        lines.append(f"  {low:>{digits}}-{high:<{digits}} |{bar:<{BAR_WIDTH}}| {count}")
    return lines
