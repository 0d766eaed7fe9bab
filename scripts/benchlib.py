"""Timing helpers shared by the ``scripts/bench_*.py`` scripts (imported as ``benchlib`` from the scripts folder).

Every figure is a list of wall-clock seconds, one per repeat, each bracketed by a device synchronisation, and is
reported as a spread (median, p10, p90, min, max and the repeat count), never as a single number. Inputs that a
call consumes (frames, patches) are made before the timed region by the caller and handed in one per repeat, so
no timed call sees an input an earlier call already saw.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[Any], Any], inputs: Iterable[Any], device: torch.device) -> list[float]:
    """Seconds of ``fn(x)`` for each ``x`` of ``inputs``, each call synchronised on both sides."""
    times = []
    for item in inputs:
        sync(device)
        start = time.perf_counter()
        fn(item)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_repeats(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 2) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls (for calls that consume nothing)."""
    for _ in range(warmup):
        fn()
    return time_calls(lambda _: fn(), range(repeats), device)


def spread(seconds: list[float], scale: float = 1000.0, digits: int = 3) -> dict[str, float | int]:
    """Median, p10, p90, min and max of ``seconds`` times ``scale`` (default: milliseconds), and the count.

    Raises:
        ValueError: on an empty list.
    """
    if not seconds:
        raise ValueError("spread() needs at least one timing")
    values = np.asarray(seconds, dtype=np.float64) * scale
    p10, p90 = np.percentile(values, [10, 90])
    return {
        "median": round(float(statistics.median(values)), digits),
        "p10": round(float(p10), digits),
        "p90": round(float(p90), digits),
        "min": round(float(values.min()), digits),
        "max": round(float(values.max()), digits),
        "repeats": len(seconds),
    }


def environment(device: torch.device) -> dict[str, str]:
    """Where and when the numbers were taken: device, library versions, UTC time, the command line."""
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or '?'})"
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
    }


def launch_overhead_us(device: torch.device, launches: int = 2000, repeats: int = 5) -> dict[str, float | int]:
    """Microseconds per tiny in-place kernel (``x.add_(1)`` on one element), the host-side cost of a launch.

    Small-kernel paths (a memory update, decoding one token) are bound by this rather than by the GPU, so it
    tells whether two runs on different hosts can be compared.
    """
    x = torch.zeros(1, device=device)
    times = time_repeats(lambda: [x.add_(1) for _ in range(launches)], repeats, device, warmup=1)
    return spread([t / launches for t in times], scale=1e6)


def peak_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated by this process so far, in GiB (``None`` on the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def report(results: dict, out: str | None) -> None:
    """Print ``results`` as JSON and write them to ``out`` when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
