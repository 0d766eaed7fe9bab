"""``eval run --benchmark synth-memory``: how far back a memory remembers, on synthetic needle streams.

Each question is made by seed at run time from the HELD-OUT split of the synthetic generator
(:mod:`flash_vstream.data.synthetic`; nothing is stored): a stream of static shapes in which a *needle* shape is on
screen for 3 frames, ``distance`` frames before the end, then a question about the needle's colour or shape, in
the generator's short-answer or multiple-choice form. Question ``i`` has the same scene (background, shapes, the
needle's colour and shape) and the same question at every distance: scene seed ``scene_seed("heldout", seed, i)``;
only the needle's time differs, so accuracies at two distances compare the same questions. The stream has
``lead + distance`` frames: ``lead`` (2 to 10, drawn per question and distance) frames before the needle appears.

Every frame is rendered on the fly (``scenes.render_frame``; a 10,000-frame stream is never held in memory),
encoded by the model's vision tower and pushed, one frame per ``update``, into each compared memory side by side
(:func:`flash_vstream.memory.baselines.budget_memory`: ``star`` the model's own, ``uniform``, ``spatial``,
``fifo``), all at the STAR memory's visual-token budget. At the end each memory is read, projected and spliced into
the question's prompt exactly as a ``StreamSession`` answer is (its ``StarSessionBackend``), and the model answers
greedily. The streams are static apart from the needle, so the features of a frame identical to an earlier one of
the same stream are reused instead of recomputed (the same pixels give the same features; this is what makes
10,000-frame streams affordable on a CPU).

A run folder holds ``run_config.json`` (the settings and the model's identity: a rerun with the same flags resumes,
other flags are refused, ``--overwrite`` starts over), ``predictions.jsonl`` (one record per memory, distance and
question), ``results.json`` and ``results.md`` (accuracy per memory and distance, with counts:
:mod:`flash_vstream_eval.synth_memory_report`), and the plot when asked (``--plot FILE``).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and the generator load when questions are made, not when `eval --help` is parsed
    import numpy as np

    from flash_vstream.data.synthetic import Question

__all__ = ["SynthMemorySettings", "SynthQuestion", "add_arguments", "make_questions", "run_synth_memory"]

BENCHMARK = "synth-memory"
MEMORIES = ("star", "uniform", "spatial", "fifo")
DISTANCES = (10, 100, 1000, 10000)
NEEDLE_FRAMES = 3
"""Frames the needle is on screen (the generator's default)."""
LEAD_FRAMES = (2, 10)
"""Frames before the needle appears: drawn per question and distance in this closed range."""
FEATURE_CACHE = 64
"""Distinct frames of one stream whose features are kept for reuse (the needle streams have two or three)."""


@dataclass(frozen=True)
class SynthMemorySettings:
    """What a synth-memory run asks; recorded in ``run_config.json`` and needed to score its predictions."""

    n: int = 100
    """Questions per distance."""
    seed: int = 0
    """Seed of the held-out question set (question ``i``'s scene seed is ``scene_seed("heldout", seed, i)``)."""
    distances: tuple[int, ...] = DISTANCES
    """Frames from the needle's first frame to the end of the stream (each >= 3)."""
    memories: tuple[str, ...] = MEMORIES
    """Memories compared: ``star`` (the model's own) and the baselines of ``flash_vstream.memory.baselines``."""
    choice_rate: float = 0.3
    """Share of multiple-choice questions (the rest are short answers), as the generator's default."""
    max_new_tokens: int = 6
    """Generation budget of each answer (a word or a letter)."""

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"--n must be an integer >= 1, got {self.n!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if not self.distances or any(d < NEEDLE_FRAMES for d in self.distances):
            raise ValueError(f"--distances must be frame counts >= {NEEDLE_FRAMES}, got {list(self.distances)}")
        if len(set(self.distances)) != len(self.distances):
            raise ValueError(f"--distances repeats a value: {list(self.distances)}")
        unknown = [m for m in self.memories if m not in MEMORIES]
        if unknown or not self.memories or len(set(self.memories)) != len(self.memories):
            raise ValueError(f"--memories must be distinct names among {list(MEMORIES)}, got {list(self.memories)}")
        if not 0.0 <= self.choice_rate <= 1.0:
            raise ValueError(f"--choice-rate must lie in [0, 1], got {self.choice_rate}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {**values, "distances": list(self.distances), "memories": list(self.memories)}


@dataclass(frozen=True)
class SynthQuestion:
    """One needle question: its stream (a scene of ``lead + distance`` frames) and the question asked at the end."""

    index: int
    distance: int
    lead: int
    scene: Any
    """The :class:`~flash_vstream.data.scenes.Scene` (frames are rendered from it by index)."""
    question: Question
    scene_seed: int

    @property
    def num_frames(self) -> int:
        return self.scene.num_frames

    def record_id(self, memory: str) -> str:
        return f"{memory}/d{self.distance}/{self.index:05d}"


def make_question_at(seed: int, index: int, distance: int, choice_rate: float = 0.3) -> SynthQuestion:
    """Question ``index`` of the held-out set made with ``seed``, its needle ``distance`` frames from the end.

    The scene and the question come from the scene seed alone (the same at every distance); the lead frames
    from the scene seed and the distance.
    """
    import numpy as np

    from flash_vstream.data.synthetic import make_question, needle_scene, scene_seed

    value = scene_seed("heldout", seed, index)
    lead = int(np.random.default_rng((value, distance)).integers(LEAD_FRAMES[0], LEAD_FRAMES[1] + 1))
    rng = np.random.default_rng(value)
    scene = needle_scene(rng, lead + distance, distance, needle_frames=NEEDLE_FRAMES)
    kind = str(rng.choice(("needle_colour", "needle_shape")))
    form = "choice" if rng.random() < choice_rate else "short"
    return SynthQuestion(index, distance, lead, scene, make_question(rng, kind, scene, form), value)


def make_questions(settings: SynthMemorySettings) -> list[SynthQuestion]:
    """Every question of a run, question-major (``i = 0`` at each distance, then ``i = 1``, ...)."""
    return [make_question_at(settings.seed, i, d, settings.choice_rate)
            for i in range(settings.n) for d in settings.distances]


# ----------------------------------------------------------------------------------------------------------
# One stream through every memory
# ----------------------------------------------------------------------------------------------------------


class _FeatureCache:
    """Vision features of the distinct frames of one stream, keyed by a hash of their pixels (bounded)."""

    def __init__(self, encode: Callable[[np.ndarray], Any], capacity: int = FEATURE_CACHE):
        self.encode, self.capacity, self.store = encode, capacity, {}
        self.encoded = 0

    def __call__(self, frame: np.ndarray):
        key = hashlib.blake2b(frame.tobytes(), digest_size=16).digest()
        features = self.store.get(key)
        if features is None:
            if len(self.store) >= self.capacity:
                self.store.clear()
            features = self.store[key] = self.encode(frame)
            self.encoded += 1
        return features


def stream_memories(vs, item: SynthQuestion, memories: tuple[str, ...], *, tick: Callable[[int], Any] = lambda n: None):
    """Stream ``item``'s frames one by one through each memory; return ``{name: (memory, state)}`` at the end.

    Args:
        vs: a loaded STAR-family ``FlashVStream``.
        item: the question (its scene gives the frames).
        memories: names for :func:`~flash_vstream.memory.baselines.budget_memory`.
        tick: called with the frames pushed since the last call (the progress bar).
    """
    import torch

    from flash_vstream.data.scenes import render_frame
    from flash_vstream.memory.baselines import budget_memory

    model, processor = vs.model, vs.input_builder.processor
    built = {name: budget_memory(name, model.memory, stream_length=item.num_frames) for name in memories}
    states = {name: memory.init_state() for name, memory in built.items()}

    def encode(frame: np.ndarray):
        return model.encode_frames(processor(frame[None]))  # (1, n, d)

    cache = _FeatureCache(encode)
    with torch.inference_mode():
        for t in range(item.num_frames):
            features = cache(render_frame(item.scene, t))
            times = torch.tensor([float(t)])
            for name, memory in built.items():
                memory.update(states[name], features, times)
            if t % 256 == 255 or t == item.num_frames - 1:
                tick(t % 256 + 1)
    return {name: (built[name], states[name]) for name in memories}


WHOLE_FRAMES = ("kept_frames", "spatial_frames", "retrieved_frames")
"""``MemoryOutput.extras`` naming the stream frames a read-out holds whole (one token group each): the frames a
baseline kept, STAR's spatial window and retrieved frames. STAR's temporal clusters are averages, not counted."""


def frames_held_whole(out) -> set[int]:
    """Stream indices of the frames a memory read-out holds whole (:data:`WHOLE_FRAMES`)."""
    return {int(i) for key in WHOLE_FRAMES if key in out.extras for i in out.extras[key].flatten().tolist()}


def answer_from(vs, backend, memory, state, question: str, max_new_tokens: int) -> tuple[str, Any]:
    """Read ``memory``, splice its tokens into ``question``'s prompt and answer greedily; (text, read-out)."""
    import torch

    from flash_vstream.inference.session_backends import Snapshot

    with torch.inference_mode():
        out = memory.read(state)
        snapshot = Snapshot(vs.model.project_memory(out), out.num_tokens)
        prompt = backend.prompt(snapshot, question)
        new = backend.generate(snapshot, prompt, None, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=vs.tokenizer.pad_token_id)
    return vs.tokenizer.decode(new[0], skip_special_tokens=True).strip(), out


def _record(item: SynthQuestion, memory: str, prediction: str, out, settings: SynthMemorySettings) -> dict:
    q = item.question
    needle = set(range(item.lead, item.lead + NEEDLE_FRAMES))
    return {"id": item.record_id(memory), "memory": memory, "distance": item.distance, "index": item.index,
            "seed": settings.seed, "lead": item.lead, "frames": item.num_frames, "form": q.form,
            "question": q.text, "answer": q.answer, "prediction": prediction, "visual_tokens": out.num_tokens,
            "needle_held": bool(needle & frames_held_whole(out))}


def answer_question(vs, backend, item: SynthQuestion, settings: SynthMemorySettings, *, tick=lambda n: None):
    """The predictions records of one question, one per memory (in ``settings.memories`` order)."""
    streamed = stream_memories(vs, item, settings.memories, tick=tick)
    records = []
    for name in settings.memories:
        memory, state = streamed[name]
        text, out = answer_from(vs, backend, memory, state, item.question.text, settings.max_new_tokens)
        records.append(_record(item, name, text, out, settings))
    return records


def _pending(questions: list[SynthQuestion], done: set[str], memories: tuple[str, ...]) -> Iterator[SynthQuestion]:
    for item in questions:
        if any(item.record_id(m) not in done for m in memories):
            yield item


def load_star_model(model_spec, device) -> Any:
    """The ``FlashVStream`` to evaluate; STAR family only (the memories compared are STAR's and its baselines).

    Raises:
        ValueError: for a model of another family.
    """
    vs = model_spec.load(device)
    if getattr(vs, "family", None) != "star":
        raise ValueError(f"synth-memory compares STAR memories; {model_spec.name_or_path} is a "
                         f"{getattr(vs, 'family', type(vs).__name__)} model. Pass a STAR-family --model.")
    return vs


def _device(model_spec):
    from flash_vstream.model.loading import resolve_device

    return resolve_device(model_spec.device)


_WORKER: dict[str, Any] = {}
"""A worker process's loaded model (set once by `_init_worker`; each worker process has its own)."""


def _init_worker(model_spec, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    vs = load_star_model(model_spec, _device(model_spec))
    from flash_vstream.inference.session_backends import StarSessionBackend

    _WORKER.update(vs=vs, backend=StarSessionBackend(vs))


def _work(job: tuple[int, int, SynthMemorySettings]) -> tuple[int, list[dict]]:
    index, distance, settings = job
    item = make_question_at(settings.seed, index, distance, settings.choice_rate)
    return item.num_frames, answer_question(_WORKER["vs"], _WORKER["backend"], item, settings)


def _answers(model_spec, todo: list[SynthQuestion], settings: SynthMemorySettings, workers: int, vs,
             tick: Callable[[int], Any]) -> Iterator[list[dict]]:
    """Each pending question's records: in this process, or spread over ``workers`` processes (longest first)."""
    if workers == 1:
        from flash_vstream.inference.session_backends import StarSessionBackend

        vs = load_star_model(model_spec, _device(model_spec)) if vs is None else vs
        backend = StarSessionBackend(vs)
        for item in todo:
            yield answer_question(vs, backend, item, settings, tick=tick)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    jobs = [(q.index, q.distance, settings) for q in sorted(todo, key=lambda q: -q.num_frames)]
    context = multiprocessing.get_context("spawn")  # no fork of a process holding OpenMP/torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(model_spec, 1)) as pool:
        for future in as_completed([pool.submit(_work, job) for job in jobs]):  # written as each finishes
            frames, records = future.result()
            tick(frames)
            yield records


def run_synth_memory(model_spec, out_dir: Path, settings: SynthMemorySettings, *, overwrite: bool = False,
                     progress: bool = True, plot: Path | None = None, workers: int = 1, vs=None) -> dict[str, Any]:
    """Run the benchmark into ``out_dir`` (resuming a run with the same settings) and score it.

    Args:
        model_spec: a :class:`~flash_vstream_eval.model_api.ModelSpec` (recorded, and loaded unless ``vs``).
        out_dir: the run folder.
        settings: questions, distances, memories.
        overwrite: start over in ``out_dir`` (old files set aside).
        progress: show a progress bar over the frames streamed.
        plot: also write the accuracy-against-distance plot there (needs matplotlib).
        workers: processes streaming questions in parallel (each loads the model and uses one thread); the
            predictions are the same whatever their number.
        vs: an already loaded model (tests, ``workers=1``); ``model_spec`` still names it in ``run_config.json``.

    Returns:
        The results (also in ``out_dir/results.json``).
    """
    from tqdm.auto import tqdm

    from flash_vstream_eval.predictions import PredictionWriter, recover_predictions
    from flash_vstream_eval.run_folder import prepare_run_folder
    from flash_vstream_eval.synth_memory_report import score_synth_memory, write_synth_results

    out_dir = Path(out_dir)
    device = _device(model_spec)
    config = {"benchmark": BENCHMARK, "settings": settings.to_dict(), "model": model_spec.identity(device),
              "model_given": model_spec.name_or_path}
    if plot is not None:
        from flash_vstream_eval.synth_memory_report import require_matplotlib

        require_matplotlib()  # before hours of streaming, not after
    prepare_run_folder(out_dir, config, rank=0, overwrite=overwrite, barrier=lambda: None)
    path = out_dir / "predictions.jsonl"
    done = {r["id"] for r in recover_predictions(path)}
    questions = make_questions(settings)
    todo = list(_pending(questions, done, settings.memories))
    if todo:
        bar = tqdm(total=sum(q.num_frames for q in todo), unit="frame", disable=not progress,
                   desc=f"{BENCHMARK} ({len(todo)} streams)")
        with PredictionWriter(path) as writer:
            for records in _answers(model_spec, todo, settings, workers, vs, bar.update):
                for record in records:
                    if record["id"] not in done:
                        writer.write(record)
        bar.close()
    results = score_synth_memory(recover_predictions(path), settings)
    write_synth_results(out_dir, results, plot=plot)
    return results


# ----------------------------------------------------------------------------------------------------------
# Command-line glue (eval run / eval score --benchmark synth-memory)
# ----------------------------------------------------------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_arguments(run: argparse.ArgumentParser, score: argparse.ArgumentParser) -> None:
    """The synth-memory flags of ``eval run`` and ``eval score`` (``--seed`` is shared with inf_streams)."""
    defaults = SynthMemorySettings()
    group = run.add_argument_group(f"synthetic memory benchmark (--benchmark {BENCHMARK}; --seed S seeds it)")
    group.add_argument("--n", type=int, default=defaults.n, help=f"questions per distance (default {defaults.n})")
    group.add_argument("--distances", type=_int_list, default=defaults.distances,
                       help="needle distances in frames from the end (default 10,100,1000,10000)")
    group.add_argument("--memories", type=_name_list, default=defaults.memories,
                       help="memories compared at an equal token budget (default star,uniform,spatial,fifo)")
    group.add_argument("--choice-rate", type=float, default=defaults.choice_rate,
                       help=f"share of multiple-choice questions (default {defaults.choice_rate})")
    group.add_argument("--workers", type=int, default=1,
                       help="processes streaming questions in parallel, one thread each (default 1)")
    for parser in (run, score):
        parser.add_argument("--plot", type=Path, default=None,
                            help=f"{BENCHMARK}: also write the accuracy-against-distance plot (PNG; needs matplotlib)")


def settings_from_args(args: argparse.Namespace) -> SynthMemorySettings:
    defaults = SynthMemorySettings()
    return SynthMemorySettings(
        n=args.n, seed=defaults.seed if args.seed is None else args.seed, distances=tuple(args.distances),
        memories=tuple(args.memories), choice_rate=args.choice_rate,
        max_new_tokens=defaults.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens,
    )


def run_command(args: argparse.Namespace) -> int:
    """``eval run --benchmark synth-memory [--model M] --out DIR ...``: stream, answer, score, print a summary."""
    from flash_vstream.cli import model_options
    from flash_vstream.data.demo import demo_model_dir, describe_default
    from flash_vstream_eval.model_api import ModelSpec
    from flash_vstream_eval.synth_memory_report import summary_lines

    for flag, given in (("--data", args.data is not None), ("--annotations", args.annotations is not None),
                        ("--limit", args.limit is not None), ("--offline", args.offline)):
        if given:
            raise ValueError(f"{flag} does not apply to {BENCHMARK}: its questions are made at run time "
                             "(--n, --seed, --distances)")
    settings = settings_from_args(args)
    name = args.model
    if name is None:
        import sys

        name = str(demo_model_dir())
        print(describe_default(), file=sys.stderr)
    family, options = model_options(args)
    spec = ModelSpec(name, device=args.device, dtype=args.dtype, family=family, options=options)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    results = run_synth_memory(spec, args.out, settings, overwrite=args.overwrite, progress=not args.no_progress,
                               plot=args.plot, workers=args.workers)
    for line in summary_lines(results):
        print(line)
    print(f"results: {args.out / 'results.json'}")
    return 0


def score_command(args: argparse.Namespace) -> int:
    """``eval score --benchmark synth-memory --predictions P [--out DIR] [--plot FILE]``: rescore predictions.

    The settings come from the ``run_config.json`` beside the predictions (the expected answers are made again
    from them, not read from the predictions).
    """
    import json

    from flash_vstream_eval.predictions import recover_predictions
    from flash_vstream_eval.synth_memory_report import score_synth_memory, summary_lines, write_synth_results

    path = Path(args.predictions)
    if not path.is_file():
        raise FileNotFoundError(f"--predictions {path} does not exist; pass the predictions.jsonl of an eval run")
    config_path = path.parent / "run_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {BENCHMARK} scores a run folder's predictions.jsonl "
                                "with the settings its run_config.json records")
    settings = SynthMemorySettings(**_settings_values(json.loads(config_path.read_text())))
    results = score_synth_memory(recover_predictions(path, truncate=False), settings)
    if args.out is not None or args.plot is not None:
        write_synth_results(args.out, results, plot=args.plot)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for line in summary_lines(results):
            print(line)
    return 0


def _settings_values(config: dict) -> dict:
    values = dict(config.get("settings") or {})
    if config.get("benchmark") != BENCHMARK or not values:
        raise ValueError(f"run_config.json is not a {BENCHMARK} run's (benchmark {config.get('benchmark')!r})")
    return {**values, "distances": tuple(values["distances"]), "memories": tuple(values["memories"])}
