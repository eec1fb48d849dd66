"""temporal (Sparse VideoGen): keys at the query's spatial location (or a small window around it)
in every frame (or a window of frames). Runs in token-major order (all frames of one location
adjacent).

With ``spatial_window`` the rule is exact per location and its blocks are partial (a block holds
several locations). ``location_band=r`` instead keeps every location within ``r`` of the query's in
row-major location order (Sparse VideoGen's banded temporal mask): in token-major order that is a
band around the diagonal, so its blocks are full except at the band's edges."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from headsparse.kernels.permute import brick_order, frame_major_to_token_major
from headsparse.patterns.base import BlockCoords, BlockStats, Pattern, Relation, interval_gap, interval_span, relative
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.registry import register


@register
@dataclass(frozen=True)
class Temporal(Pattern):
    spatial_window: int = 1
    frame_window: int | None = None
    location_band: int | None = None

    name = "temporal"
    grid = ({}, {"spatial_window": 3}, {"frame_window": 8}, {"location_band": 64}, {"location_band": 256})

    def check(self) -> None:
        super().check()
        w = self.spatial_window
        if not isinstance(w, int) or w < 1 or w % 2 == 0:
            raise ValueError(f"temporal.spatial_window must be an odd integer >= 1, got {w!r}")
        f = self.frame_window
        if f is not None and (not isinstance(f, int) or f < 0):
            raise ValueError(f"temporal.frame_window must be None or an integer >= 0, got {f!r}")
        b = self.location_band
        if b is not None:
            if not isinstance(b, int) or b < 0:
                raise ValueError(f"temporal.location_band must be None or an integer >= 0, got {b!r}")
            if w != 1:
                raise ValueError("temporal.location_band replaces spatial_window: leave spatial_window=1")

    def order_candidates(self, g: Geometry, block_m: int, block_n: int) -> list:
        """Token-major order (all frames of a location adjacent), plain or with locations grouped so that
        a block holds whole locations: ``block // frames`` of them (a rectangle of locations when the
        window spans rows), padded to the block. The frame-major order is no candidate: it scatters a
        location's frames over every block."""
        plain = frame_major_to_token_major(g.frames, g.height, g.width, prefix=g.prefix_len, suffix=g.suffix_len)
        out = [(plain, plain)]

        def grouped(block: int) -> Tensor:
            per_block = max(1, block // g.frames)
            if self.spatial_window > 1 and self.location_band is None:
                rows = max(1, min(g.height, math.isqrt(per_block)))
                cols = max(1, min(g.width, per_block // rows))
            else:
                rows, cols = 1, min(g.width, per_block)
            return brick_order(g.frames, g.height, g.width, (g.frames, rows, cols), block, within="hwt",
                               prefix=g.prefix_len, suffix=g.suffix_len)

        out.append((grouped(block_m), grouped(block_n)))
        return out

    def _frames(self, g: Geometry) -> int:
        return g.frames if self.frame_window is None else self.frame_window

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation]:
        out = [relative(q.t, q.t[:, 0], k.t, k)]
        if self.location_band is not None:
            sq, sk = q.y * g.width + q.x, k.y * g.width + k.x
            return [*out, relative(sq, sq[:, 0], sk, k)]
        return [*out, relative(q.y, q.y[:, 0], k.y, k), relative(q.x, q.x[:, 0], k.x, k)]

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        in_time = (tq - tk).abs() <= self._frames(g)
        if self.location_band is not None:
            return in_time & (((yq * g.width + xq) - (yk * g.width + xk)).abs() <= self.location_band)
        r = self.spatial_window // 2
        return ((yq - yk).abs() <= r) & ((xq - xk).abs() <= r) & in_time

    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        if self.location_band is not None:
            # Location s = y * W + x lies in [y_lo * W + x_lo, y_hi * W + x_hi] for every token of a block.
            def loc(b: BlockStats) -> tuple[Tensor, Tensor]:
                return b.y_lo * g.width + b.x_lo, b.y_hi * g.width + b.x_hi

            (qa, qb), (ka, kb), f = loc(q), loc(k), self._frames(g)
            maybe = (interval_gap(qa, qb, ka, kb) <= self.location_band) & (
                interval_gap(q.t_lo, q.t_hi, k.t_lo, k.t_hi) <= f)
            surely = (interval_span(qa, qb, ka, kb) <= self.location_band) & (
                interval_span(q.t_lo, q.t_hi, k.t_lo, k.t_hi) <= f)
            return maybe, surely
        r, f = self.spatial_window // 2, self._frames(g)
        maybe = ((interval_gap(q.y_lo, q.y_hi, k.y_lo, k.y_hi) <= r)
                 & (interval_gap(q.x_lo, q.x_hi, k.x_lo, k.x_hi) <= r)
                 & (interval_gap(q.t_lo, q.t_hi, k.t_lo, k.t_hi) <= f))
        surely = ((interval_span(q.y_lo, q.y_hi, k.y_lo, k.y_hi) <= r)
                  & (interval_span(q.x_lo, q.x_hi, k.x_lo, k.x_hi) <= r)
                  & (interval_span(q.t_lo, q.t_hi, k.t_lo, k.t_hi) <= f))
        return maybe, surely
