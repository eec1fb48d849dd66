"""dense and skip: the two ends of every per-head choice."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from headsparse.patterns.base import BlockCoords, BlockStats, Pattern
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.registry import register


@register
@dataclass(frozen=True)
class Dense(Pattern):
    """Every query keeps every key."""

    name = "dense"

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        return torch.ones(torch.broadcast_shapes(tq.shape, tk.shape), dtype=torch.bool)

    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        shape = (q.t_lo.numel(), k.t_lo.numel())
        return torch.ones(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool)

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list:
        return []  # every real pair: only which keys are padding matters


@register
@dataclass(frozen=True)
class Skip(Pattern):
    """The head computes nothing: its output is zero (Sparse-vDiT's skipped heads)."""

    name = "skip"

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        return torch.zeros(torch.broadcast_shapes(tq.shape, tk.shape), dtype=torch.bool)

    def mask(self, geometry: Geometry, q_idx: Tensor, k_idx: Tensor) -> Tensor:
        return torch.zeros(torch.broadcast_shapes(q_idx.shape, k_idx.shape), dtype=torch.bool)

    def block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        shape = (q.t_lo.numel(), k.t_lo.numel())
        return torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
