"""frame_masked: a pattern restricted to the key frames a frame-granular attention mask allows.

Some models mask their own self-attention by frame, e.g. SkyReels-V2's diffusion forcing with
``causal_block_size > 1``: a query in frame block ``i`` sees keys in blocks ``<= i`` only. The
plugin reads such a mask as a frames x frames table and runs every head's pattern intersected
with it, so the sparse layout keeps exactly what both the pattern and the model's mask keep.

It is a runtime composition, not a pattern users name in plans: ``allowed[i][j]`` says whether
video queries of frame ``i`` may see video keys of frame ``j``; pairs involving text follow the
inner pattern alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from headsparse.patterns.base import BlockCoords, BlockStats, Pattern, Relation, absolute
from headsparse.patterns.dense import Dense
from headsparse.patterns.geometry import Geometry


@dataclass(frozen=True)
class FrameMasked(Pattern):
    inner: Pattern = field(default_factory=Dense)
    allowed: tuple[tuple[bool, ...], ...] = ((True,),)

    name = "frame_masked"

    def check(self) -> None:
        super().check()
        if not isinstance(self.inner, Pattern) or getattr(self.inner, "dynamic", False):
            raise ValueError(f"frame_masked.inner must be a static Pattern, got {self.inner!r}")
        n = len(self.allowed)
        if n < 1 or any(len(row) != n for row in self.allowed):
            raise ValueError(f"frame_masked.allowed must be a square frames x frames table, got {n} rows")
        if not all(any(row) for row in self.allowed):
            raise ValueError("frame_masked.allowed leaves a frame without any key frame")

    def label(self) -> str:
        return self.inner.label()

    @functools.cached_property
    def _table(self) -> Tensor:
        return torch.tensor(self.allowed, dtype=torch.bool)

    @functools.cached_property
    def _prefix(self) -> Tensor:
        """(F + 1, F + 1) 2-D prefix sums of the table: allowed pairs in any frame rectangle in O(1)."""
        n = len(self.allowed)
        out = torch.zeros(n + 1, n + 1, dtype=torch.int64)
        out[1:, 1:] = self._table.long().cumsum(0).cumsum(1)
        return out

    def _check_frames(self, g: Geometry) -> None:
        if g.frames != len(self.allowed):
            raise ValueError(f"frame_masked: the table has {len(self.allowed)} frames, the geometry {g.frames}")

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        self._check_frames(g)
        return self.inner.video_mask(g, tq, yq, xq, tk, yk, xk) & self._table[tq, tk]

    def mask(self, geometry: Geometry, q_idx: Tensor, k_idx: Tensor) -> Tensor:
        self._check_frames(geometry)
        tq, _, _, text_q = geometry.coords(q_idx)
        tk, _, _, text_k = geometry.coords(k_idx)
        frame_ok = self._table[tq.clamp_min(0), tk.clamp_min(0)]
        return self.inner.mask(geometry, q_idx, k_idx) & (text_q | text_k | frame_ok)

    def order_candidates(self, g: Geometry, block_m: int, block_n: int) -> list:
        return self.inner.order_candidates(g, block_m, block_n)

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation] | None:
        inner = self.inner.block_relations(g, q, k)
        return None if inner is None else [*inner, absolute(q.t, k.t)]  # the frame table reads absolute frames

    def block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        self._check_frames(g)
        maybe, surely = self.inner.block_bounds(g, q, k)
        last = g.frames - 1
        a, b = q.t_lo.clamp(0, last)[:, None], q.t_hi.clamp(0, last)[:, None]
        c, d = k.t_lo.clamp(0, last)[None, :], k.t_hi.clamp(0, last)[None, :]
        p = self._prefix
        kept = p[b + 1, d + 1] - p[a, d + 1] - p[b + 1, c] + p[a, c]
        both_video = q.has_video[:, None] & k.has_video[None, :]
        any_text = q.has_text[:, None] | k.has_text[None, :]
        maybe = maybe & (~both_video | any_text | (kept > 0))
        surely = surely & (~both_video | (kept == (b - a + 1) * (d - c + 1)))
        return maybe, surely & maybe
