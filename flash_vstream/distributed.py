"""Process setup for single-process and ``torchrun`` runs: one function that returns values, no module state.

``torchrun --nproc_per_node=N`` starts N processes and tells each who it is through environment variables:
``RANK`` (0..N-1 across all machines), ``LOCAL_RANK`` (0..N-1 on this machine, i.e. which GPU) and
``WORLD_SIZE`` (N), plus ``MASTER_ADDR``/``MASTER_PORT`` for the rendezvous. `init_distributed` reads them,
joins the process group once (NCCL when CUDA is available, gloo otherwise) and picks this process's device::

    rank, local_rank, world_size, device = init_distributed()
    model = load_model(path, device=device)       # cuda:{local_rank} under torchrun, never everyone on GPU 0
    print0(f"evaluating on {world_size} processes")

Without torchrun's variables it is a single process: ``(0, 0, 1, cuda or cpu)`` and no process group.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = ["DistInfo", "cleanup_distributed", "init_distributed", "is_main_process", "print0"]

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
"""The variables torchrun sets for every process it starts; all three or none must be present."""
RENDEZVOUS_KEYS = ("MASTER_ADDR", "MASTER_PORT")
"""Where the processes meet; torchrun sets them too."""


class DistInfo(NamedTuple):
    """Who this process is. Unpacks as ``rank, local_rank, world_size, device``.

    >>> import torch
    >>> rank, local_rank, world_size, device = DistInfo(0, 0, 1, torch.device("cpu"))
    >>> (rank, world_size, str(device))
    (0, 1, 'cpu')
    """

    rank: int
    """Global index of this process, 0 .. world_size - 1."""
    local_rank: int
    """Index of this process on its machine; the CUDA device it uses."""
    world_size: int
    """Number of processes in the run."""
    device: torch.device
    """``cuda:{local_rank}`` when CUDA is available (``cuda`` for a single process), else ``cpu``."""


def _env_int(name: str, env: dict[str, str]) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def _read_env(env: dict[str, str]) -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` from torchrun's variables, ``None`` when none is set."""
    present = [key for key in ENV_KEYS if env.get(key, "") != ""]
    if not present:
        return None
    missing = [key for key in ENV_KEYS if key not in present]
    if missing:
        shown = ", ".join(f"{key}={env[key]}" for key in present)
        raise ValueError(
            f"incomplete distributed environment: {shown} set but {', '.join(missing)} missing; launch with "
            f"`torchrun --nproc_per_node=N ...` (which sets all of {', '.join(ENV_KEYS)}) or unset {', '.join(present)}"
        )
    rank, local_rank, world_size = (_env_int(key, env) for key in ENV_KEYS)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"inconsistent distributed environment RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world_size}: "
            "need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0; launch with torchrun"
        )
    return rank, local_rank, world_size


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the ``torchrun`` process group (once) and pick this process's device.

    Under torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` set) the default process group is initialised
    from the environment unless it already is; a second call returns the same values and initialises nothing.
    With CUDA available the process uses ``cuda:{local_rank}`` (made current with ``torch.cuda.set_device``).

    Args:
        backend: ``"nccl"``, ``"gloo"``, ...; default NCCL when CUDA is available, gloo otherwise.

    Returns:
        The process's `DistInfo`.

    Raises:
        ValueError: For an incomplete or inconsistent environment (e.g. ``WORLD_SIZE`` without ``RANK``, a
            missing ``MASTER_ADDR``, or a ``LOCAL_RANK`` with no matching GPU); the message says how to launch.
    """
    import torch

    env = dict(os.environ)
    ranks = _read_env(env)
    has_cuda = torch.cuda.is_available()
    if ranks is None:
        return DistInfo(0, 0, 1, torch.device("cuda" if has_cuda else "cpu"))
    rank, local_rank, world_size = ranks
    device = torch.device("cpu")
    if has_cuda:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this machine has {count} visible CUDA device(s); "
                f"use --nproc_per_node={count} at most (or check CUDA_VISIBLE_DEVICES)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run a single process (without torchrun)")
    if not dist.is_initialized():
        missing = [key for key in RENDEZVOUS_KEYS if not env.get(key)]
        if missing:
            raise ValueError(
                f"RANK/WORLD_SIZE are set but {', '.join(missing)} missing; launch with torchrun, which sets them"
            )
        dist.init_process_group(backend=backend or ("nccl" if has_cuda else "gloo"), init_method="env://")
    elif (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise ValueError(
            f"the process group is rank {dist.get_rank()} of {dist.get_world_size()} but the environment says "
            f"RANK={rank}, WORLD_SIZE={world_size}"
        )
    return DistInfo(rank, local_rank, world_size, device)


def cleanup_distributed(*, wait: bool = False) -> None:
    """Leave the default process group if one is initialised (call once at the end of a run).

    Args:
        wait: meet every rank at a barrier first. A gloo rank that tears its group down while a peer is still
            connected can abort at exit ("terminate called without an active exception"), so jobs whose ranks
            finish together pass ``wait=True`` on success. Not after a failure (the peers may be gone), and not
            where ranks finish hours apart (a barrier would time out).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on global rank 0: from the process group when initialised, else from ``RANK`` (default 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") in ("", "0")


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only, so a message appears once however many processes run."""
    if is_main_process():
        print(*args, **kwargs)
