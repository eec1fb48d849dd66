"""vertical_stripe (Sparse-vDiT) and textural (RainFusion): patterns built from global key columns.

``vertical_stripe`` keeps, for every query, the same set of keys: the first ``sink_frames`` frames
and every ``stride``-th video token (from ``phase``). ``textural`` keeps strided key granules
(every ``stride``-th run of ``granule`` tokens: texture is gathered from the whole frame sequence)
plus a local band of ``half_width`` tokens around the query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from headsparse.patterns.base import (
    BlockCoords,
    BlockStats,
    Pattern,
    Relation,
    absolute,
    interval_gap,
    interval_span,
    relative,
)
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.registry import register


def _positive(pattern: Pattern, field: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{pattern.name}.{field} must be an integer >= {minimum}, got {value!r}")


def _video_index(g: Geometry, t: Tensor, y: Tensor, x: Tensor) -> Tensor:
    return (t * g.height + y) * g.width + x


@register
@dataclass(frozen=True)
class VerticalStripe(Pattern):
    sink_frames: int = 1
    stride: int | None = None
    phase: int = 0

    name = "vertical_stripe"
    # Strided columns are partial in every key block, so the search grid keeps frame sinks only.
    grid = ({"sink_frames": 1}, {"sink_frames": 2})

    def check(self) -> None:
        super().check()
        _positive(self, "sink_frames", self.sink_frames, 0)
        if self.stride is not None:
            _positive(self, "stride", self.stride, 1)
            if not isinstance(self.phase, int) or not 0 <= self.phase < self.stride:
                raise ValueError(f"vertical_stripe.phase must be in [0, stride), got {self.phase!r}")
        if self.sink_frames == 0 and self.stride is None:
            raise ValueError("vertical_stripe keeps nothing: set sink_frames >= 1 or a stride")

    def _key_kept(self, g: Geometry, tk: Tensor, v: Tensor) -> Tensor:
        keep = tk < self.sink_frames
        if self.stride is not None:
            keep = keep | (v % self.stride == self.phase)
        return keep

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation]:
        return [absolute(q.v[:, :1] * 0, self._key_kept(g, k.t, k.v).long())]  # the same keys for every query

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        keep = self._key_kept(g, tk, _video_index(g, tk, yk, xk))
        return keep & torch.ones_like(tq, dtype=torch.bool)

    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        any_k, all_k = k.key_rule(g, lambda t, y, x, v: self._key_kept(g, t, v))
        n = q.v_lo.numel()
        return any_k.expand(n, -1), all_k.expand(n, -1)


@register
@dataclass(frozen=True)
class Textural(Pattern):
    stride: int = 8
    granule: int = 128
    half_width: int = 256

    name = "textural"
    grid = ({"stride": 4}, {"stride": 8}, {"stride": 16})

    def check(self) -> None:
        super().check()
        _positive(self, "stride", self.stride, 1)
        _positive(self, "granule", self.granule, 1)
        _positive(self, "half_width", self.half_width, 0)

    def _key_kept(self, v: Tensor) -> Tensor:
        return (v // self.granule) % self.stride == 0

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation]:
        return [relative(q.v, q.v[:, 0], k.v, k), absolute(q.v[:, :1] * 0, self._key_kept(k.v).long())]

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        vq, vk = _video_index(g, tq, yq, xq), _video_index(g, tk, yk, xk)
        return self._key_kept(vk) | ((vq - vk).abs() <= self.half_width)

    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        any_k, all_k = k.key_rule(g, lambda t, y, x, v: self._key_kept(v))
        maybe = any_k[None, :] | (interval_gap(q.v_lo, q.v_hi, k.v_lo, k.v_hi) <= self.half_width)
        surely = all_k[None, :] | (interval_span(q.v_lo, q.v_hi, k.v_lo, k.v_hi) <= self.half_width)
        return maybe, surely
