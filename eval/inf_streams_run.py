"""``eval run``/``eval score --benchmark inf_streams``: stream games through the commentary API, then judge them.

``run`` plays each game's video once, as fast as it decodes, at ``fps`` frames per second of video, and hands the
frames (``(frame, seconds)`` pairs, absolute video time) to the StreamingVLM commentary function
``commentate(vs, frames, *, previous_text, query) -> Iterator[Commentary]`` (`default_commentator`; tests inject
their own). What it says comes back as ``Commentary(start, end, text)`` per second, in the same time base.

- ``infinite`` mode: one stream per game, from ``start`` to the end of its last scored window; the previous text
  is the reference commentary before ``start``. One predictions record per game (id = the video).
- ``chunk`` mode: each scored window streamed on its own (a fresh stream per window); the previous text is the
  reference commentary before the window. One record per window (id = the window id). The video is still
  decoded once per game: windows are taken from one pass in time order.

A record is the predictions format of every other benchmark plus what scoring needs::

    {"id": "g1.mp4@1000-1100", "video": "g1.mp4", "span": [1000.0, 1100.0], "prediction": "joined text",
     "commentary": [[1000.0, 1001.0, "And here they come"], ...], "frames": 200}

``span`` is the stretch streamed; when the video ends early it stops at the last frame, so windows past it count
as missing, not as silence. A missing or unreadable video gives ``{"id", "video", "skipped"}`` records, tried
again on the next run. The run folder, resume (finished ids skipped; a game is replayed from its start for the
records it still lacks), ``run_config.json`` and the per-rank shards (whole games per rank) work as for the
other benchmarks. ``score`` judges ``predictions.jsonl`` against ``--reference`` with `inf_streams_judge`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flash_vstream_eval.inf_streams import (
    Game,
    InfStreamsSettings,
    annotation_file,
    format_time,
    load_games,
    make_windows,
    media_path,
    previous_text,
)
from flash_vstream_eval.items import AnnotationError, safe_join

if TYPE_CHECKING:
    from flash_vstream.distributed import DistInfo

__all__ = [
    "COMMENTARY_API",
    "add_arguments",
    "check_model_fps",
    "default_commentator",
    "run_inf_streams",
    "settings_from_args",
]

COMMENTARY_API = "flash_vstream.inference.streamingvlm_session"
"""The module whose ``commentate`` streams a StreamingVLM model (imported only when a game is streamed)."""

Commentator = Callable[..., Iterable[Any]]
_EPS = 1e-6


def default_commentator() -> Commentator:
    """``commentate`` from `COMMENTARY_API`.

    Raises:
        ValueError: When this installation has no such module.
    """
    try:
        module = importlib.import_module(COMMENTARY_API)
    except ModuleNotFoundError as err:
        if err.name is None or not COMMENTARY_API.startswith(err.name):
            raise
        raise ValueError(
            f"eval run --benchmark inf_streams streams through {COMMENTARY_API}.commentate, which this "
            "installation lacks; update flash-vstream (the StreamingVLM family provides it)."
        ) from None
    return module.commentate


@dataclass(frozen=True)
class _Unit:
    """One stream of a run: a window (chunk mode) or a game from ``start`` on (infinite mode)."""

    id: str
    game: Game
    start: float
    stop: float


def plan_units(games: list[Game], settings: InfStreamsSettings) -> list[_Unit]:
    """The streams a run makes, game by game in file order, each game's in time order (no scored window: none)."""
    units = []
    for game in games:
        kept, _ = make_windows(game, settings)
        if settings.mode == "chunk":
            units += [_Unit(w.id, game, w.start, w.end) for w in kept]
        elif kept:
            units.append(_Unit(game.video, game, settings.start, kept[-1].end))
    return units


class _Stream:
    """One decoding pass over a game's frames, handed out stretch by stretch in time order."""

    def __init__(self, source: Iterable[tuple[Any, float]]) -> None:
        self._frames = iter(source)
        self._next: tuple[Any, float] | None = None
        self.exhausted = False
        self.last_time: float | None = None

    def between(self, start: float, stop: float) -> Iterator[tuple[Any, float]]:
        """The frames with ``start <= seconds < stop``; earlier ones are dropped, later ones kept for later."""
        while True:
            if self._next is None:
                try:
                    self._next = next(self._frames)
                except StopIteration:
                    self.exhausted = True
                    return
            frame, seconds = self._next
            if seconds >= stop - _EPS:
                return
            self._next, self.last_time = None, float(seconds)
            if seconds >= start - _EPS:
                yield frame, seconds


def _segment(output: Any) -> list:
    """A ``Commentary`` (or ``(start, end, text)``) as ``[start, end, text]``."""
    if all(hasattr(output, name) for name in ("start", "end", "text")):
        start, end, text = output.start, output.end, output.text
    elif isinstance(output, (tuple, list)) and len(output) == 3:
        start, end, text = output
    else:
        raise ValueError(f"the commentary function yielded {output!r}; expected Commentary(start, end, text).")
    return [float(start), float(end), "" if text is None else str(text)]


def _stream_unit(unit: _Unit, stream: _Stream, vs: Any, commentate: Commentator, settings: InfStreamsSettings,
                 source_end: Callable[[], Any]) -> dict:
    """Stream one unit; its predictions record (``skipped`` when no frame of it exists)."""
    count = [0]

    def frames() -> Iterator[tuple[Any, float]]:
        for pair in stream.between(unit.start, unit.stop):
            count[0] += 1
            yield pair

    feed = frames()
    extra = {} if settings.seed is None else {"seed": settings.seed}
    said = commentate(vs, feed, previous_text=previous_text(unit.game, unit.start), query=settings.query, **extra)
    outputs = [_segment(c) for c in said]
    for _ in feed:  # the function may stop early; the stream still has to reach the next unit
        pass
    video = unit.game.video
    if count[0] == 0:
        end = source_end()
        if end is not None and end.reason != "ended":
            return {"id": unit.id, "video": video, "skipped": f"unreadable video: {video} ({end.message})"}
        reached = "no frames" if stream.last_time is None else f"its last frame is at {stream.last_time:.1f} s"
        return {"id": unit.id, "video": video,
                "skipped": f"video too short: {video} ({reached}, before {format_time(unit.start)} s)"}
    stop = unit.stop
    if stream.exhausted and stream.last_time is not None:  # the video ended inside this unit
        stop = min(stop, stream.last_time + 1.0 / settings.fps)
    outputs.sort(key=lambda seg: seg[1])
    return {
        "id": unit.id,
        "video": video,
        "span": [float(unit.start), round(float(stop), 6)],
        "prediction": " ".join(text.strip() for _, _, text in outputs if text.strip()),
        "commentary": outputs,
        "frames": count[0],
    }


def _open(path: Path, fps: float):
    from flash_vstream.video.sources import VideoFileSource

    return VideoFileSource(path, speed=None, fps=fps)


def _play_game(units: list[_Unit], root: Path, settings: InfStreamsSettings, get_vs: Callable[[], Any],
               get_commentate: Callable[[], Commentator], write: Callable[[dict], None]) -> None:
    """Stream one game's pending units from a single decoding pass, writing a record per unit."""
    from flash_vstream.video import VideoError

    game = units[0].game
    relative, exists = media_path(root, game.video, game.where)
    if not exists:
        for unit in units:
            write({"id": unit.id, "video": game.video, "skipped": f"missing video: {relative}"})
        return
    try:
        source = _open(safe_join(root, relative), settings.fps)
    except (VideoError, OSError, ValueError) as err:
        for unit in units:
            reason = f"unreadable video: {relative} ({str(err).strip() or type(err).__name__})"
            write({"id": unit.id, "video": game.video, "skipped": reason})
        return
    try:
        stream, vs, commentate = _Stream(source), get_vs(), get_commentate()
        for unit in units:
            write(_stream_unit(unit, stream, vs, commentate, settings, lambda: source.end))
    finally:
        source.close()


def _barrier() -> None:
    """Wait for every rank when a process group is initialised (a no-op for a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_model_fps(vs: Any, fps: float) -> Any:
    """``vs`` itself, once a StreamingVLM model's own streaming frame rate is known to equal ``fps``.

    The commentary function groups consecutive frames into the model's chunks, so frames at another rate would
    put the wrong seconds in every chunk.

    Raises:
        ValueError: When the rates differ; the message gives both fixes.
    """
    if getattr(vs, "family", None) == "streamingvlm":
        from flash_vstream.model.streamingvlm import settings_of

        own = settings_of(vs.model).fps
        if abs(own - fps) > _EPS:
            raise ValueError(f"--fps {fps:g} differs from the model's streaming rate of {own:g} frames per second; "
                             f"pass --fps {own:g} or --option fps={fps:g}")
    return vs


def _shard_path(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / f"predictions.rank{rank}-of-{world}.jsonl"


def _run_config(settings: InfStreamsSettings, root: Path, annotations: Path, limit: int | None, model: Any,
                device: Any, world_size: int) -> dict[str, Any]:
    from flash_vstream_eval.model_api import ModelSpec, model_identity

    return {
        "benchmark": "inf_streams",
        "settings": asdict(settings),
        "limit": limit,
        "annotations": str(annotations.resolve()),
        "data_root": str(root.resolve()),
        "model": model_identity(model, device),
        "model_given": model.name_or_path if isinstance(model, ModelSpec) else None,
        "device": str(device),
        "world_size": world_size,
    }


def _finish(out_dir: Path, units: list[_Unit], world: int) -> dict[str, Any] | None:
    """Merge the shards into ``predictions.jsonl`` and write the results stub; ``None`` while a shard is unfinished."""
    from flash_vstream_eval.predictions import recover_predictions
    from flash_vstream_eval.report import atomic_write, write_results
    from flash_vstream_eval.scoring import skipped_rows

    by_id: dict[str, dict] = {}
    for rank in range(world):
        for record in recover_predictions(_shard_path(out_dir, rank, world), truncate=False):
            by_id[str(record["id"])] = record
    if any(unit.id not in by_id for unit in units):
        return None
    records = [by_id[unit.id] for unit in units]
    atomic_write(out_dir / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    skipped = skipped_rows(records)
    results = {
        "benchmark": "inf_streams",
        "profile": "pairwise",
        "metrics": {},
        "counts": {"items": len(units), "predicted": len(units) - len(skipped), "skipped": len(skipped)},
        "breakdowns": {},
        "skipped": skipped,
        "malformed": [],
        "note": "Commentary is scored against a reference model: run `flash-vstream eval score --benchmark "
        "inf_streams --reference REF.jsonl --judge-model M` on predictions.jsonl.",
    }
    write_results(out_dir, results)
    return results


def run_inf_streams(
    model: Any,
    data_root: str | Path,
    out_dir: str | Path,
    settings: InfStreamsSettings | None = None,
    *,
    annotations: str | Path | None = None,
    commentate: Commentator | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dist: DistInfo | None = None,
) -> dict[str, Any] | None:
    """Stream every game (or window) through ``commentate`` and write the run folder; see the module docstring.

    Args:
        model: A `model_api.ModelSpec` (loaded on this rank's device at the first readable video) or a ready
            model object, passed as ``vs`` to ``commentate``.
        data_root: Folder holding the videos (and `inf_streams.DEFAULT_ANNOTATIONS` unless ``annotations``).
        out_dir: Run folder; reuse it to resume.
        settings: Windows, mode, frame rate and query.
        annotations: The game metadata file (or its folder) instead of ``data_root``.
        commentate: ``commentate(vs, frames, *, previous_text, query) -> Iterable[Commentary]``; default
            `default_commentator` (resolved only when a game is streamed).
        limit: Only the first ``limit`` streams (windows in chunk mode, games in infinite mode).
        overwrite: Set an old run's files aside and start over instead of refusing a different run.
        progress: Show a progress bar over games.
        dist: This process's `flash_vstream.distributed.DistInfo`; default `init_distributed()`.

    Returns:
        The results stub (counts, skipped streams), or ``None`` on a rank that does not merge.

    Raises:
        AnnotationError: For unusable annotations (file and line named) or a data root that is no folder.
        ValueError: For a bad limit, an ``out_dir`` holding another run, or no commentary API.
    """
    from tqdm.auto import tqdm

    from flash_vstream_eval.model_api import ModelSpec, rank_device
    from flash_vstream_eval.predictions import PredictionWriter, recover_predictions
    from flash_vstream_eval.run_folder import prepare_run_folder

    settings = settings or InfStreamsSettings()
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of streams, got {limit}.")
    root, out_dir = Path(data_root), Path(out_dir)
    if not root.is_dir():
        raise AnnotationError(f"data root {root} is not a directory; pass --data pointing at the game videos.")
    if annotations is not None and not Path(annotations).exists() and (root / annotations).exists():
        annotations = root / annotations  # named relative to the data root, as for the other benchmarks
    source = annotation_file(annotations if annotations is not None else root)
    units = plan_units(load_games(source).games, settings)[:limit]
    if dist is None:
        from flash_vstream.distributed import init_distributed

        dist = init_distributed()
    device = rank_device(model.device if isinstance(model, ModelSpec) else None, dist)
    config = _run_config(settings, root, source, limit, model, device, dist.world_size)
    prepare_run_folder(out_dir, config, rank=dist.rank, overwrite=overwrite, barrier=_barrier)
    shard = _shard_path(out_dir, dist.rank, dist.world_size)
    done = {str(r["id"]) for r in recover_predictions(shard) if not r.get("skipped")}
    games = list(dict.fromkeys(unit.game.video for unit in units))[dist.rank :: dist.world_size]
    pending = {video: [u for u in units if u.game.video == video and u.id not in done] for video in games}
    loaded: dict[str, Any] = {}

    def get(name: str, make: Callable[[], Any]) -> Any:
        if name not in loaded:
            loaded[name] = make()
        return loaded[name]

    ready = (lambda: model.load(device)) if isinstance(model, ModelSpec) else (lambda: model)

    def load() -> Any:
        return check_model_fps(ready(), settings.fps)

    resolve = default_commentator if commentate is None else (lambda: commentate)
    with PredictionWriter(shard) as writer:
        for video in tqdm(games, desc=f"inf_streams [rank {dist.rank}]", disable=not progress, dynamic_ncols=True):
            if pending[video]:
                _play_game(pending[video], root, settings, lambda: get("vs", load),
                           lambda: get("commentate", resolve), writer.write)
    return _finish(out_dir, units, dist.world_size)


# --------------------------------------------------------------------------------------------- command line


def add_arguments(run: argparse.ArgumentParser, score: argparse.ArgumentParser) -> None:
    """The Inf-Streams-Eval flags of ``eval run`` and ``eval score`` (defaults: `InfStreamsSettings`)."""
    defaults = InfStreamsSettings()
    for parser in (run, score):
        group = parser.add_argument_group("Inf-Streams-Eval (--benchmark inf_streams)")
        group.add_argument("--window-seconds", type=float, default=defaults.window,
                           help=f"seconds per scored window (default {defaults.window:g})")
        group.add_argument("--min-words", type=int, default=defaults.min_words,
                           help=f"score only windows with this many reference words (default {defaults.min_words})")
        group.add_argument("--start-time", type=float, default=defaults.start,
                           help=f"stream time where generation and the first window start (default {defaults.start:g})")
        if parser is run:
            group.add_argument("--stream-mode", choices=("chunk", "infinite"), default=defaults.mode,
                               help="one stream per game from --start-time (infinite, default) or per window (chunk)")
            group.add_argument("--fps", type=float, default=defaults.fps,
                               help=f"frames per second of video streamed (default {defaults.fps:g})")
            group.add_argument("--query", default=defaults.query,
                               help="instruction given with the first second (default: the model's own)")
            group.add_argument("--seed", type=int, default=defaults.seed,
                               help="commentary sampling seed (inf_streams) or question-set seed (synth-memory)")
        else:
            group.add_argument("--reference", type=Path, default=None,
                               help="the reference model's commentary (its predictions.jsonl, or "
                               "{video, start, end, text} lines) to compute the win rate against")


def settings_from_args(args: argparse.Namespace) -> InfStreamsSettings:
    """`InfStreamsSettings` from the flags of `add_arguments` (``score`` has no mode/fps/query flags)."""
    defaults = InfStreamsSettings()
    return InfStreamsSettings(
        window=args.window_seconds, min_words=args.min_words, start=args.start_time,
        mode=getattr(args, "stream_mode", defaults.mode), fps=getattr(args, "fps", defaults.fps),
        query=getattr(args, "query", defaults.query), seed=getattr(args, "seed", defaults.seed),
    )


def run_command(args: argparse.Namespace) -> int:
    """``eval run --benchmark inf_streams``: the run folder's predictions, then one summary line."""
    from flash_vstream.cli import model_options
    from flash_vstream.distributed import cleanup_distributed, init_distributed
    from flash_vstream_eval.model_api import ModelSpec
    from flash_vstream_eval.report import summary_line, warning_lines

    for flag, given in (("--max-new-tokens", args.max_new_tokens is not None), ("--offline", args.offline)):
        if given:
            raise ValueError(f"{flag} does not apply to inf_streams: the commentary is streamed, with the model's own "
                             "per-second budget (--option max_new_tokens=N)")
    settings = settings_from_args(args)
    family, options = model_options(args)
    model = ModelSpec(args.model, device=args.device, dtype=args.dtype, family=family, options=options)
    dist = init_distributed()
    try:
        results = run_inf_streams(model, args.data, args.out, settings, annotations=args.annotations,
                                  limit=args.limit, overwrite=args.overwrite, progress=not args.no_progress, dist=dist)
    finally:
        cleanup_distributed()
    if results is None:
        print(f"rank {dist.rank}: shard done; the last rank to finish merges", file=sys.stderr)
        return 0
    for line in warning_lines(results):
        print(line, file=sys.stderr)
    print(summary_line(results))
    print(f"results: {args.out / 'results.json'}")
    return 0


def score_command(args: argparse.Namespace) -> int:
    """``eval score --benchmark inf_streams --reference FILE``: the win rate, judged pairwise."""
    from flash_vstream_eval.inf_streams import read_commentary
    from flash_vstream_eval.inf_streams_judge import pairwise_judge_from_args, score_inf_streams, summary_line
    from flash_vstream_eval.report import write_results

    if args.reference is None:
        raise ValueError("inf_streams is scored against a reference model: pass --reference REF.jsonl "
                         "(its eval run predictions.jsonl, or {video, start, end, text} lines).")
    settings = settings_from_args(args)
    games = load_games(args.annotations)
    ours, reference = read_commentary(args.predictions), read_commentary(args.reference)
    judge = pairwise_judge_from_args(base_url=args.judge_base_url, model=args.judge_model, cache_path=args.judge_cache)
    results = score_inf_streams(games, ours, reference, judge, settings)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_results(args.out, results)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    if results["counts"]["invalid"]:
        print(f"warning: {results['counts']['invalid']} judge replies were not exactly 'A' or 'B' (listed in "
              "results.json under 'invalid'); they count toward neither side", file=sys.stderr)
    print(summary_line(results))
    if args.out is not None:
        print(f"results: {args.out / 'results.json'}")
    return 0
