"""Timing a function the way every measurement in headsparse does: warm up, then best of N."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def device_name(device: torch.device | str = "cpu") -> str:
    """What a measurement ran on: the CUDA device's name, or the CPU model from /proc/cpuinfo."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_time(fn: Callable[[], Any], repeats: int, device: torch.device | str = "cpu") -> float:
    """Seconds of the fastest of ``repeats`` calls after one warm-up call (which also compiles).

    CUDA work is synchronised around each call so the time covers the kernels, not their launch.
    """
    cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best
