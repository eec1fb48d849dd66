"""temporal (Sparse VideoGen): keys at the query's spatial location (or a small window around it)
in every frame (or a window of frames). Runs in token-major order (all frames of one location
adjacent).

With ``spatial_window`` the rule is exact per location and its blocks are partial (a block holds
several locations). ``location_band=r`` instead keeps every location within ``r`` of the query's in
row-major location order (Sparse VideoGen's banded temporal mask): in token-major order that is a
band around the diagonal, so its blocks are full except at the band's edges."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from headsparse.kernels.permute import frame_major_to_token_major
from headsparse.patterns.base import BlockStats, Pattern, interval_gap, interval_span
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

    def permutation(self, geometry: Geometry) -> Tensor:
        return frame_major_to_token_major(geometry.frames, geometry.height, geometry.width,
                                          prefix=geometry.prefix_len, suffix=geometry.suffix_len)

    def _frames(self, g: Geometry) -> int:
        return g.frames if self.frame_window is None else self.frame_window

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
