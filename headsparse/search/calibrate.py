"""Calibration: score every candidate pattern on every head while the dense model runs.

The plugin runs the model dense and hands each self-attention call's q/k/v to :class:`Calibration`,
which samples query rows per head (:class:`~headsparse.patterns.recognize.SampledAttention`) and
accumulates, per (step bucket, layer, head, candidate), the relative L2 error the candidate would
cause on those rows. Memory stays bounded: only the sampled rows' attention ([heads, rows, keys])
exists at a time, never a full attention matrix. The accumulated sums can be saved and loaded, so an
interrupted search resumes from its cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from headsparse.patterns import Dense, Geometry, Pattern, candidates
from headsparse.patterns.recognize import SampledAttention, default_candidates
from headsparse.plan import pattern_from_dict, pattern_to_dict

logger = logging.getLogger(__name__)


def search_candidates(geometry: Geometry, names: Sequence[str] | None = None) -> tuple[Pattern, ...]:
    """Dense first, then every static registered pattern on its parameter grid that fits the geometry
    and drops some pair there (a window as large as the grid is dense, whatever its name)."""
    found: list[Pattern] = [Dense()]
    pool = list(candidates(list(names) if names is not None else None)) + list(default_candidates(geometry))
    probe = torch.tensor([geometry.video_start])
    for p in pool:
        if getattr(p, "dynamic", False) or p in found or isinstance(p, Dense):
            continue
        try:
            p.mask(geometry, probe[:, None], probe[None, :])
            layout = p.layout(geometry, block_m=128, block_n=128)
        except (ValueError, TypeError) as exc:
            logger.debug("candidate %s does not fit %s: %s", p, geometry, exc)
            continue
        if layout.is_dense():
            continue  # keeps every pair at this grid: it is dense, and must not pass for a sparse choice
        found.append(p)
    return tuple(found)


def bucket_of(step: int, buckets: Sequence[int]) -> int:
    """Index of the step bucket (buckets are sorted start steps, the first one 0)."""
    index = 0
    for i, start in enumerate(buckets):
        if step >= start:
            index = i
    return index


@dataclass
class Calibration:
    """Accumulated candidate errors of one transformer."""

    candidates: tuple[Pattern, ...]
    num_layers: int
    num_heads: int
    buckets: tuple[int, ...] = (0,)
    samples: int = 32
    sums: Tensor = field(init=False)
    counts: Tensor = field(init=False)
    geometry: Geometry | None = None
    peak_bytes: int = 0
    head_dim: int = 0

    def __post_init__(self) -> None:
        if not self.buckets or self.buckets[0] != 0 or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"buckets must be increasing start steps beginning with 0, got {self.buckets}")
        shape = (len(self.buckets), self.num_layers, self.num_heads, len(self.candidates))
        self.sums = torch.zeros(shape, dtype=torch.float64)
        self.counts = torch.zeros(shape[:2], dtype=torch.int64)

    def observe(self, layer: int, step: int, q: Tensor, k: Tensor, v: Tensor, geometry: Geometry) -> None:
        self.head_dim = q.shape[-1]
        if self.geometry is None:
            self.geometry = geometry
        elif geometry.video_len != self.geometry.video_len or (geometry.frames, geometry.height, geometry.width) != (
            self.geometry.frames, self.geometry.height, self.geometry.width
        ):
            raise ValueError(f"calibration runs must share one token grid: {self.geometry} vs {geometry}")
        sampled = SampledAttention(q, k, v, geometry, samples=self.samples, seed=layer * 1009 + step)
        self.peak_bytes = max(self.peak_bytes, sampled.probs.numel() * sampled.probs.element_size())
        errors = torch.stack([sampled.errors(sampled.pattern_mask(p)) for p in self.candidates], dim=-1)  # [H, C]
        b = bucket_of(step, self.buckets)
        self.sums[b, layer] += errors.double().cpu()
        self.counts[b, layer] += 1

    def mean_errors(self) -> Tensor:
        """float64 [buckets, layers, heads, candidates]; NaN where a (bucket, layer) was never seen."""
        counts = self.counts.double()[..., None, None]
        return torch.where(counts > 0, self.sums / counts.clamp_min(1), torch.full_like(self.sums, float("nan")))

    # ------------------------------------------------------------------ resumable cache
    def state_dict(self) -> dict[str, Any]:
        g = self.geometry
        return {
            "candidates": [pattern_to_dict(p) for p in self.candidates], "num_layers": self.num_layers,
            "num_heads": self.num_heads, "buckets": list(self.buckets), "samples": self.samples,
            "sums": self.sums, "counts": self.counts, "peak_bytes": self.peak_bytes, "head_dim": self.head_dim,
            "geometry": None if g is None else [g.frames, g.height, g.width, g.text_len, g.text_position],
        }

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def from_state_dict(cls, data: dict[str, Any]) -> Calibration:
        cal = cls(tuple(pattern_from_dict(p) for p in data["candidates"]), data["num_layers"], data["num_heads"],
                  tuple(data["buckets"]), data["samples"])
        cal.sums, cal.counts, cal.peak_bytes = data["sums"], data["counts"], data["peak_bytes"]
        cal.head_dim = data["head_dim"]
        if data["geometry"] is not None:
            cal.geometry = Geometry(*data["geometry"])
        return cal

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls.from_state_dict(torch.load(Path(path), weights_only=False))
