"""spatial (Sparse VideoGen): keys in the query's frame (or a band of +-k frames), plus the first
frame as an attention sink and all text."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from headsparse.kernels.permute import brick_order
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


@register
@dataclass(frozen=True)
class Spatial(Pattern):
    frame_band: int = 0
    first_frame_sink: bool = True

    name = "spatial"
    grid = ({"frame_band": 0}, {"frame_band": 1}, {"frame_band": 2}, {"frame_band": 0, "first_frame_sink": False})

    def check(self) -> None:
        super().check()
        if not isinstance(self.frame_band, int) or self.frame_band < 0:
            raise ValueError(f"spatial.frame_band must be an integer >= 0, got {self.frame_band!r}")

    def order_candidates(self, g: Geometry, block_m: int, block_n: int) -> list:
        """Natural order, or every frame (and the text) starting on a block boundary: then a block
        never straddles two frames, and a head visits exactly its frames' blocks."""
        def frames(block: int) -> Tensor:
            return brick_order(g.frames, g.height, g.width, (1, g.height, g.width), block, prefix=g.prefix_len,
                               suffix=g.suffix_len)

        return [(None, None), (frames(block_m), frames(block_n))]

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation]:
        out = [relative(q.t, q.t[:, 0], k.t, k)]
        if self.first_frame_sink:
            out.append(absolute(q.t[:, :1] * 0, (k.t == 0).long()))
        return out

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        keep = (tq - tk).abs() <= self.frame_band
        if self.first_frame_sink:
            keep = keep | (tk == 0)
        return keep

    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        maybe = interval_gap(q.t_lo, q.t_hi, k.t_lo, k.t_hi) <= self.frame_band
        surely = interval_span(q.t_lo, q.t_hi, k.t_lo, k.t_hi) <= self.frame_band
        if self.first_frame_sink:
            maybe = maybe | (k.t_lo == 0)[None, :]
            surely = surely | (k.t_hi == 0)[None, :]
        return maybe, surely
