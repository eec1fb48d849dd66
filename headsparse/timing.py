"""Timing the way every headsparse report does: warm up every path, interleave, repeat, take medians.

Timings on a shared machine drift (other jobs, frequency, caches) by 20% or more from run to run.
So paths are never timed one after the other: each is called once untimed (compilation, layout
building, allocator warm-up), then the paths take turns (dense, sparse, dense, sparse, ...) for
``repeats`` rounds. A report gives each path's median with its min-max spread, the ratio of the
medians, and the spread of the per-round ratios (each round's paths ran back to back, so their
ratio is the least disturbed measurement there is).

What the numbers were measured on is :mod:`headsparse.machine`'s business.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


def _synchroniser(device: torch.device | str) -> Callable[[], None]:
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def best_time(fn: Callable[[], Any], repeats: int, device: torch.device | str = "cpu") -> float:
    """Seconds of the fastest of ``repeats`` calls after one warm-up call (which also compiles).

    For decisions (the cost model): a minimum is the least noisy estimate of what a path *can* do.
    Reports compare paths with :func:`interleaved` instead. CUDA work is synchronised around each
    call so the time covers the kernels, not their launch.
    """
    sync = _synchroniser(device)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


@dataclass(frozen=True)
class Spread:
    """A median with the smallest and largest value it summarises."""

    median: float
    low: float
    high: float
    count: int

    @staticmethod
    def of(values: list[float]) -> Spread:
        if not values:
            raise ValueError("Spread.of needs at least one value")
        return Spread(statistics.median(values), min(values), max(values), len(values))

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        if self.count == 1:
            return f"{self.median:{spec}} (1 run)"
        return f"{self.median:{spec}} ({self.low:{spec}}-{self.high:{spec}}, {self.count} runs)"


def interleaved(paths: Mapping[str, Callable[[], Any]], repeats: int, device: torch.device | str = "cpu", *,
                warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each path's call, ``repeats`` rounds of every path in turn, after one untimed call each.

    Returns {label: [seconds per round]} in the paths' order; round ``i`` of every path ran in the
    same stretch of time, so per-round ratios (:func:`ratio_spread`) cancel slow drift.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = _synchroniser(device)
    if warmup:
        for fn in paths.values():
            fn()
            sync()
    times: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(repeats):
        for label, fn in paths.items():
            start = time.perf_counter()
            fn()
            sync()
            times[label].append(time.perf_counter() - start)
    return times


def ratio_spread(numerator: list[float], denominator: list[float]) -> tuple[float, Spread]:
    """(ratio of the medians, spread of the per-round ratios) of two interleaved series."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"ratio_spread needs two series of one non-zero length, got {len(numerator)} and "
                         f"{len(denominator)}")
    rounds = [n / d for n, d in zip(numerator, denominator, strict=True)]
    return statistics.median(numerator) / statistics.median(denominator), Spread.of(rounds)


def spread_cell(values: list[float] | Spread, spec: str = ".3f") -> str:
    """A report's cell for one path's times: the median with the min-max, e.g. ``'0.412 (0.398-0.430)'``."""
    s = values if isinstance(values, Spread) else Spread.of(list(values))
    return f"{s.median:{spec}} ({s.low:{spec}}-{s.high:{spec}})"


def ratio_cell(ratio: float, rounds: Spread, spec: str = ".3f", *, identical: bool = False) -> str:
    """A report's cell for a path against dense (:func:`ratio_spread`'s two values): the ratio of the medians
    with the min-max of the per-round ratios, e.g. ``'0.412 (0.398-0.430)'``.

    ``identical``: the path's output equals dense's (every head dense, say), so its time is no speed-up
    whatever it measured: the cell says ``'identical to dense'`` instead.
    """
    if identical:
        return "identical to dense"
    return f"{ratio:{spec}} ({rounds.low:{spec}}-{rounds.high:{spec}})"
