"""lmms-eval plug-in: run Flash-VStream models on any lmms-eval task.

lmms-eval (``EvolvingLMMs-Lab/lmms-eval``) finds models through the ``lmms_eval.models`` entry-point group;
``pyproject.toml`` points it at :func:`manifest`, which names :class:`FlashVStreamLMM` as the "simple"
model class of ``flash_vstream``. Then (``docs/eval.md`` gives the install command that keeps your torch)::

    lmms-eval --model flash_vstream --model_args pretrained=IVGSZ/Flash-VStream-7b --tasks videomme
    accelerate launch --num_processes 8 -m lmms_eval --model flash_vstream ...   # data parallel, one GPU each

lmms-eval is an optional extra, so this module imports it lazily: importing
``flash_vstream_eval.lmms_adapter`` never needs it, and ``FlashVStreamLMM`` (a subclass of
``lmms_eval.api.model.lmms``) is built on first access through the module's ``__getattr__``.

Requests follow lmms-eval's "simple model" contract (``lmms_eval/api/task.py::construct_requests``):
``generate_until`` gets ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` per request, the visuals
come from ``doc_to_visual(self.task_dict[task][split][doc_id])``, and the answer is cut at the ``until`` stop
strings. Under several processes lmms-eval gives each rank every ``world_size``-th document, pads the ranks to
equal request counts and gathers the results itself; the adapter only places each rank's model on its device.
"""

from __future__ import annotations

import os
from typing import Any

#: The model name users pass to ``lmms-eval --model``.
MODEL_ID = "flash_vstream"
#: Where lmms-eval imports the model class from (resolved through this module's ``__getattr__``).
CLASS_PATH = f"{__name__}.FlashVStreamLMM"
#: The ``--model_args`` keys the model takes (lmms-eval adds ``batch_size``, ``max_batch_size`` and ``device``).
MODEL_ARGS = ("pretrained", "device", "dtype", "max_new_tokens", "batch_size", "max_batch_size")

_INSTALL_HINT = 'lmms-eval is not installed; run `pip install -e ".[lmms]"` with the command in docs/eval.md'


def manifest():
    """Entry point payload for lmms-eval's model registry.

    Returns:
        A ``lmms_eval.models.registry_v2.ModelManifest`` registering :class:`FlashVStreamLMM` under the
        name ``flash_vstream``.

    Raises:
        ImportError: lmms-eval is not installed.
    """
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


# --------------------------------------------------------------------------------------------- helpers


def stop_strings(until: Any, where: str) -> list[str]:
    """Normalise lmms-eval's ``until`` (None, a string or a list of strings) into a list of stop strings.

    Raises:
        TypeError: ``until`` is of another type (the message names the request).
    """
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        return list(until)
    raise TypeError(f"{where}: gen_kwargs['until'] must be a string or a list of strings, got {until!r}")


def cut_at_stops(text: str, stops: list[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any non-empty stop string."""
    cut = len(text)
    for stop in stops:
        if stop and (at := text.find(stop)) != -1:
            cut = min(cut, at)
    return text[:cut]


def _flatten(visuals: Any) -> list:
    if visuals is None:
        return []
    if isinstance(visuals, (str, os.PathLike)) or not isinstance(visuals, (list, tuple)):
        return [visuals]
    flat = []
    for item in visuals:
        flat.extend(_flatten(item))
    return flat


def visual_kwargs(visuals: Any, where: str) -> dict[str, Any]:
    """Map what ``doc_to_visual`` returned onto ``model.answer`` keywords.

    One video path becomes ``video=path``; images (anything that is not a path) become ``frames=[...]``,
    treated as a clip; no visual at all means a text-only question.

    Raises:
        ValueError: Several video paths, or paths mixed with images (the message names the request).
    """
    flat = _flatten(visuals)
    paths = [v for v in flat if isinstance(v, (str, os.PathLike))]
    if not flat:
        return {}
    if paths and len(paths) != len(flat):
        raise ValueError(f"{where}: doc_to_visual mixed file paths and images; give one video or only images")
    if len(paths) > 1:
        raise ValueError(f"{where}: flash_vstream takes one video per question, got {len(paths)} paths")
    if paths:
        return {"video": os.fspath(paths[0])}
    return {"frames": flat}


def render_chat(chat: list[dict[str, Any]]) -> str:
    """The question text of an lmms-eval chat transcript (what ``--apply_chat_template`` hands the model).

    The model formats every question with its own conversation template when it answers, so the transcript
    is flattened back into the text lmms-eval builds without the flag: the system message (task description or
    ``--system_instruction``), if any, directly followed by the one user turn.

    >>> render_chat([{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "What moves?"}])
    'Be brief. What moves?'

    Raises:
        ValueError: A transcript other than an optional system message plus one user turn (few-shot examples
            as turns, an assistant turn), or non-text content; the message lists the roles it got.
    """
    roles = [turn.get("role") for turn in chat]
    turns = chat[1:] if roles[:1] == ["system"] else chat
    if [turn.get("role") for turn in turns] != ["user"]:
        raise ValueError(
            f"--apply_chat_template gave flash_vstream a conversation with turns {roles}; it answers one question "
            "per video (an optional system message and one user turn): drop --fewshot_as_multiturn/num_fewshot"
        )
    texts = [turn.get("content") for turn in chat]
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f"--apply_chat_template: flash_vstream takes text chat turns, got {texts!r}")
    return "".join(texts)


def _check_dtype(dtype: Any) -> Any:
    """A ``--model_args`` dtype: a name ``load_model`` knows (``bfloat16``, ``auto``, ...), a torch dtype or None.

    Raises:
        ValueError: For another name, listing the accepted ones (before any weights are read).
    """
    if dtype is None or not isinstance(dtype, str):
        return dtype
    from flash_vstream.model.loading import DTYPES

    name = dtype.removeprefix("torch.")
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"model_args dtype={dtype!r} is not supported; use one of auto, {', '.join(DTYPES)}")
    return name


def _int_arg(name: str, value: Any) -> int:
    """An integer ``--model_args`` value (lmms-eval parses ``8`` to an int, ``1.5`` to a float, ``x`` to a str).

    Raises:
        ValueError: For anything but a whole number, naming the argument.
    """
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, str):
        whole = value.strip().lstrip("+-").isdigit()
    if isinstance(value, bool) or not whole:
        raise ValueError(f"model_args {name}={value!r} is not an integer")
    return int(value)


def _rank_device(device: str | None, rank_device: Any) -> Any:
    """This rank's device under several processes: ``cuda`` (or none given) means the rank's own GPU.

    ``cpu`` and an explicit ``cuda:N`` are taken as given, as ``flash-vstream eval run`` does.
    """
    if device is None or device == "cuda":
        return rank_device
    return device


# Accelerate's distributed types under which every process holds its own whole model.
_DATA_PARALLEL_TYPES = ("MULTI_CPU", "MULTI_GPU")


def _data_parallel_accelerator(world_size: int):
    """lmms-eval's ``lm.accelerator`` for a run of ``world_size`` processes (it gathers counts through it).

    Raises:
        ValueError: When accelerate does not see the processes (``torchrun`` on CPU without
            ``ACCELERATE_USE_CPU=1``), or for a sharded launch (FSDP, DeepSpeed, ...): the model is not sharded,
            each rank answers its own questions with a whole copy.
    """
    from accelerate import Accelerator

    accelerator = Accelerator()
    kind = accelerator.distributed_type.name
    if kind == "NO" or accelerator.num_processes != world_size:
        raise ValueError(
            f"WORLD_SIZE={world_size} but accelerate sees {accelerator.num_processes} process(es) ({kind}); on CPU "
            "set ACCELERATE_USE_CPU=1 for torchrun (`accelerate launch --cpu` sets it), so lmms-eval and accelerate "
            "share one gloo process group"
        )
    if kind not in _DATA_PARALLEL_TYPES:
        raise ValueError(
            f"flash_vstream evaluates data-parallel only (a whole model per process), but accelerate is set up "
            f"for {kind}; launch with `accelerate launch --multi_gpu --num_processes N -m lmms_eval ...` or "
            "`torchrun --nproc_per_node=N -m lmms_eval ...` and no FSDP/DeepSpeed config"
        )
    return accelerator


# --------------------------------------------------------------------------------------------- model class


class _FlashVStreamLMMImpl:
    """Flash-VStream as an lmms-eval "simple" model (``FlashVStreamLMM`` = this class + ``lmms``).

    One process or data-parallel over several (``accelerate launch`` / ``torchrun``): each rank loads a whole
    model onto its own device and answers its share of the requests one at a time; lmms-eval splits the
    documents and gathers the answers.

    Args:
        pretrained: Checkpoint folder or hub id, passed to ``flash_vstream.load_model``.
        device: Torch device string. One process: default whatever ``load_model`` picks. Several: default, or
            ``cuda``, the rank's GPU (``cuda:{LOCAL_RANK}``), else CPU; ``cpu`` or ``cuda:N`` as given.
        dtype: ``float32`` | ``float16`` | ``bfloat16`` or a torch dtype; ``auto``: the checkpoint's saved dtype;
            None: bf16 on GPU, fp32 on CPU.
        max_new_tokens: Used when a task's ``gen_kwargs`` has no ``max_new_tokens``.
        batch_size: Accepted for lmms-eval's ``--batch_size``; requests are answered one at a time.
        max_batch_size: Accepted for lmms-eval's ``--max_batch_size``; requests are answered one at a time.

    Raises:
        TypeError: Unknown ``--model_args`` keys (named in the message).
        ValueError: A bad dtype or integer argument, an inconsistent distributed environment, or a sharded
            (FSDP/DeepSpeed) launch.
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: Any = None, *,
                 max_new_tokens: int | str = 16, batch_size: int | str | None = 1,
                 max_batch_size: int | str | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(
                f"flash_vstream does not take --model_args {', '.join(sorted(kwargs))}; known: {', '.join(MODEL_ARGS)}"
            )
        self.pretrained = pretrained
        super().__init__()
        import flash_vstream
        from flash_vstream.distributed import init_distributed

        self.max_new_tokens = _int_arg("max_new_tokens", max_new_tokens)
        dtype = _check_dtype(dtype)
        # lmms-eval passes these (batch_size maybe "auto"); the model answers one request at a time anyway.
        self.batch_size, self.max_batch_size = batch_size, max_batch_size
        dist = init_distributed()  # joins lmms-eval's process group under accelerate launch / torchrun
        if dist.world_size > 1:
            self.accelerator = _data_parallel_accelerator(dist.world_size)
            # accelerate's device, not dist.device: it honours `accelerate launch --cpu` on a GPU machine.
            device = _rank_device(device, self.accelerator.device)
        self._rank, self._world_size = dist.rank, dist.world_size
        self.model = flash_vstream.load_model(pretrained, device=device, dtype=dtype)

    @property
    def device(self) -> Any:
        """The torch device the model runs on (lmms-eval puts its count tensors there under several ranks)."""
        return self.model.device

    @property
    def chat_template(self) -> str:
        """The conversation template answers are prompted with: the tokenizer's, or the named built-in one.

        lmms-eval records it in the results with ``--apply_chat_template``.
        """
        conv = getattr(getattr(self.model.model, "config", None), "conv_template", None)
        if conv not in (None, "chat_template"):
            return conv  # "vicuna_v1" / "plain": the released model's formats, built in
        return getattr(self.model.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """lmms-eval's ``--apply_chat_template`` hook: the question text of the transcript (see `render_chat`).

        The model's own template (:attr:`chat_template`) is applied once, when the question is answered.
        """
        return render_chat(chat_history)

    def generate_until(self, requests: list) -> list[str]:
        """Answer each request with ``model.answer`` on its video, cut at the task's ``until`` strings.

        Sampling options in ``gen_kwargs`` (temperature, top_p, num_beams) are not forwarded: the model
        decodes greedily, as in the published evaluations.
        """
        from tqdm import tqdm

        outputs = []
        for request in tqdm(requests, desc="flash_vstream", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            where = f"task {task!r} split {split!r} doc {doc_id!r}"
            gen_kwargs = dict(gen_kwargs or {})
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            text = self.model.answer(
                context,
                max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
                **visual_kwargs(visuals, where),
            )
            text = cut_at_stops(text, stop_strings(gen_kwargs.get("until"), where))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        """Not supported: Flash-VStream is evaluated generatively."""
        raise NotImplementedError(
            "flash_vstream does not score log-likelihoods; pick a task with output_type: generate_until"
        )

    def generate_until_multi_round(self, requests: list) -> list[str]:
        """Not supported: the model answers single questions, with no multi-round conversation state."""
        raise NotImplementedError(
            "flash_vstream answers one question per video and has no multi-round mode; pick a task with "
            "output_type: generate_until"
        )


# Built classes keyed by the lmms base they subclass (one in practice; tests may swap the base in).
_BUILT: dict[type, type] = {}


def __getattr__(name: str) -> Any:
    """Build ``FlashVStreamLMM`` on first access, so importing this module never needs lmms-eval."""
    if name != "FlashVStreamLMM":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from lmms_eval.api.model import lmms
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    if lmms not in _BUILT:
        namespace = {"__module__": __name__, "__qualname__": name, "__doc__": _FlashVStreamLMMImpl.__doc__}
        _BUILT[lmms] = type(name, (_FlashVStreamLMMImpl, lmms), namespace)
    return _BUILT[lmms]
