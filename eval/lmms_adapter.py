"""lmms-eval plug-in: run Flash-VStream models on any lmms-eval task.

lmms-eval (``EvolvingLMMs-Lab/lmms-eval``) finds models through the ``lmms_eval.models`` entry-point group;
``pyproject.toml`` points it at :func:`manifest`, which names :class:`FlashVStreamLMM` as the "simple"
model class of ``flash_vstream``. Then::

    pip install ".[lmms]"        # on a GPU machine: lmms-eval pulls a CUDA torch and torchvision
    lmms-eval --model flash_vstream --model_args pretrained=IVGSZ/Flash-VStream-7b --tasks videomme

lmms-eval is an optional extra, so this module imports it lazily: importing
``flash_vstream_eval.lmms_adapter`` never needs it, and ``FlashVStreamLMM`` (a subclass of
``lmms_eval.api.model.lmms``) is built on first access through the module's ``__getattr__``.

Requests follow lmms-eval's "simple model" contract (``lmms_eval/api/task.py::construct_requests``):
``generate_until`` gets ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` per request, the visuals
come from ``doc_to_visual(self.task_dict[task][split][doc_id])``, and the answer is cut at the ``until`` stop
strings.
"""

from __future__ import annotations

import os
from typing import Any

#: The model name users pass to ``lmms-eval --model``.
MODEL_ID = "flash_vstream"
#: Where lmms-eval imports the model class from (resolved through this module's ``__getattr__``).
CLASS_PATH = f"{__name__}.FlashVStreamLMM"

_INSTALL_HINT = 'lmms-eval is not installed; on a GPU machine run `pip install "flash-vstream[lmms]"`'


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


# --------------------------------------------------------------------------------------------- model class


class _FlashVStreamLMMImpl:
    """Flash-VStream as an lmms-eval "simple" model (``FlashVStreamLMM`` = this class + ``lmms``).

    Runs in one process: answers requests one at a time on one device (no data parallelism across ranks).

    Args:
        pretrained: Checkpoint folder or hub id, passed to ``flash_vstream.load_model``.
        device: Torch device string (default: whatever ``load_model`` picks).
        dtype: ``float32`` | ``float16`` | ``bfloat16`` or a torch dtype; ``auto``: the checkpoint's saved dtype;
            None: bf16 on GPU, fp32 on CPU.
        max_new_tokens: Used when a task's ``gen_kwargs`` has no ``max_new_tokens``.
        batch_size: Accepted for lmms-eval's CLI; requests are answered one at a time.

    Raises:
        TypeError: Unknown ``--model_args`` keys (named in the message).
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: Any = None, *,
                 max_new_tokens: int | str = 16, batch_size: int | str | None = 1, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(
                f"flash_vstream does not take --model_args {', '.join(sorted(kwargs))}; known: pretrained, "
                "device, dtype, max_new_tokens, batch_size"
            )
        self.pretrained = pretrained
        super().__init__()
        import flash_vstream

        try:
            self.max_new_tokens = int(max_new_tokens)
        except ValueError:
            raise ValueError(f"model_args max_new_tokens={max_new_tokens!r} is not an integer") from None
        self.batch_size = batch_size  # lmms-eval passes it (maybe "auto"); requests go one at a time anyway
        self.model = flash_vstream.load_model(pretrained, device=device, dtype=_check_dtype(dtype))

    def generate_until(self, requests: list) -> list[str]:
        """Answer each request with ``model.answer`` on its video, cut at the task's ``until`` strings.

        Sampling options in ``gen_kwargs`` (temperature, top_p, num_beams) are not forwarded: the model
        decodes greedily, as in the published evaluations.
        """
        from tqdm import tqdm

        outputs = []
        for request in tqdm(requests, desc="flash_vstream", disable=getattr(self, "rank", 0) != 0):
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
            hook = getattr(self, "cache_hook", None)
            if hook is not None:
                hook.add_partial("generate_until", (context, gen_kwargs), text)
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
