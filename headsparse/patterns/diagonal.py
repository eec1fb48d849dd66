"""diagonal and multi_diagonal (Sparse-vDiT): bands in the frame-major token order.

``diagonal`` keeps keys within ``half_width`` tokens of the query (video-relative index);
``multi_diagonal`` keeps the same band shifted by whole frames (keys near the query's position in
other frames), for the frame offsets given (all frames by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from headsparse.patterns.base import BlockCoords, BlockStats, Pattern, Relation, interval_gap, interval_span, relative
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.registry import register


def _check_width(pattern: Pattern, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{pattern.name}.half_width must be an integer >= 0, got {value!r}")


@register
@dataclass(frozen=True)
class Diagonal(Pattern):
    half_width: int = 512

    name = "diagonal"
    grid = ({"half_width": 256}, {"half_width": 1024}, {"half_width": 4096})

    def check(self) -> None:
        super().check()
        _check_width(self, self.half_width)

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation]:
        return [relative(q.v, q.v[:, 0], k.v, k)]  # a band: only the offset between tokens matters

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        vq = (tq * g.height + yq) * g.width + xq
        vk = (tk * g.height + yk) * g.width + xk
        return (vq - vk).abs() <= self.half_width

    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        return (interval_gap(q.v_lo, q.v_hi, k.v_lo, k.v_hi) <= self.half_width,
                interval_span(q.v_lo, q.v_hi, k.v_lo, k.v_hi) <= self.half_width)


@register
@dataclass(frozen=True)
class MultiDiagonal(Pattern):
    half_width: int = 256
    frame_offsets: tuple[int, ...] | None = None

    name = "multi_diagonal"
    grid = ({"half_width": 128}, {"half_width": 512}, {"half_width": 256, "frame_offsets": (-2, -1, 0, 1, 2)})

    def check(self) -> None:
        super().check()
        _check_width(self, self.half_width)
        offs = self.frame_offsets
        if offs is not None and (not isinstance(offs, tuple) or not offs or not all(isinstance(o, int) for o in offs)):
            raise ValueError(f"multi_diagonal.frame_offsets must be None or a non-empty tuple of ints, got {offs!r}")

    def _offsets(self, g: Geometry) -> list[int]:
        if self.frame_offsets is None:
            return list(range(-(g.frames - 1), g.frames))
        return sorted(set(self.frame_offsets))

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation]:
        return [relative(q.v, q.v[:, 0], k.v, k)]  # bands at frame offsets: only the token offset matters

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        d = ((tq * g.height + yq) * g.width + xq) - ((tk * g.height + yk) * g.width + xk)
        hw = g.tokens_per_frame
        if self.frame_offsets is None:
            # |d - o * hw| is convex in o: over all offsets the nearest is round(d / hw), clamped.
            o = torch.clamp(torch.div(d + hw // 2, hw, rounding_mode="floor"), -(g.frames - 1), g.frames - 1)
            return (d - o * hw).abs() <= self.half_width
        keep = torch.zeros(d.shape, dtype=torch.bool)
        for o in self._offsets(g):
            keep = keep | ((d - o * hw).abs() <= self.half_width)
        return keep

    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        maybe = torch.zeros(q.v_lo.numel(), k.v_lo.numel(), dtype=torch.bool)
        surely = torch.zeros_like(maybe)
        hw = g.tokens_per_frame
        for o in self._offsets(g):
            # query - key = o * hw  <=>  query matches key shifted by o frames
            maybe |= interval_gap(q.v_lo, q.v_hi, k.v_lo + o * hw, k.v_hi + o * hw) <= self.half_width
            surely |= interval_span(q.v_lo, q.v_hi, k.v_lo + o * hw, k.v_hi + o * hw) <= self.half_width
        return maybe, surely
