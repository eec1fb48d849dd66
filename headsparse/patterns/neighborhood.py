"""neighborhood (NATTEN, Generalized Neighborhood Attention): keys within a window around the query
in (t, y, x), with NATTEN's per-axis kernel size, stride (GNA group leaders), dilation and causal
masking; the same mask as ``natten.functional.na1d/na2d/na3d``.

Per axis of length ``L`` (NATTEN's rule): with dilation ``d`` the axis splits into ``d`` interleaved
groups (positions with equal ``i % d``); inside a group of length ``Lg`` the query sits at ``j = i // d``.
Queries are grouped by the stride ``s`` and every query of a group uses the window of its leader:

- non-causal: leader = ``min(j // s * s + s // 2, Lg - 1)``; the window of ``w`` positions starts at
  ``leader - w // 2`` (so it reaches ``w // 2 + w % 2 - 1`` past the leader), shifted back inside the
  group at the edges, so it always holds ``min(w, Lg)`` positions;
- causal: leader = ``min(j // s * s + s - 1, Lg - 1)``; keys at or before the query itself that lie
  within ``w`` of the leader: ``leader - w < j' <= j``.

A key is kept iff it is in the query's dilation group and inside the window, on every axis. NATTEN
requires ``kernel_size * dilation <= L``; here a larger kernel simply covers the whole group, so one
pattern serves every geometry (an image is a video with ``frames=1``).

Every pattern whose mask is such a product of per-axis windows (this one, sliding_tile) derives from
:class:`AxisWindowPattern`, which evaluates the mask from per-axis ``[lo, hi]`` tables and bounds
blocks exactly per axis with summed-area tables of the per-axis masks.
"""

from __future__ import annotations

import functools
import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from headsparse.kernels.permute import brick_order
from headsparse.patterns.base import BlockCoords, BlockStats, Pattern, Relation, absolute, relative
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.registry import register


# ---------------------------------------------------------------------- per-axis windows
@dataclass(frozen=True, eq=False)
class AxisWindow:
    """The keys each position of one axis keeps: ``k`` with ``lo[i] <= k <= hi[i]`` and
    ``k % dilation == i % dilation``. ``counts`` is the summed-area table of that [L, L] mask;
    ``keeps_all`` says every position keeps every key (the axis can be left out)."""

    lo: Tensor
    hi: Tensor
    dilation: int
    counts: Tensor
    keeps_all: bool

    @property
    def length(self) -> int:
        return self.lo.numel()

    @staticmethod
    def of(lo: Tensor, hi: Tensor, dilation: int = 1) -> AxisWindow:
        pos = torch.arange(lo.numel())
        kept = (pos[None, :] >= lo[:, None]) & (pos[None, :] <= hi[:, None])
        if dilation > 1:
            kept &= (pos[None, :] % dilation) == (pos[:, None] % dilation)
        counts = torch.zeros(lo.numel() + 1, lo.numel() + 1, dtype=torch.int32)
        counts[1:, 1:] = kept.to(torch.int32).cumsum(0).cumsum(1)
        return AxisWindow(lo, hi, dilation, counts, bool(kept.all()))

    def keep(self, cq: Tensor, ck: Tensor) -> Tensor:
        """Exact axis mask for broadcastable query / key coordinates (text coordinates -1 give junk)."""
        ok = (ck >= self.lo[cq]) & (ck <= self.hi[cq])
        if self.dilation > 1:
            ok &= (ck % self.dilation) == (cq % self.dilation)
        return ok

    def bounds(self, q_lo: Tensor, q_hi: Tensor, k_lo: Tensor, k_hi: Tensor) -> tuple[Tensor, Tensor]:
        """(any, all) [MQ, NK]: whether some / every (query, key) coordinate pair of the boxes
        ``[q_lo, q_hi] x [k_lo, k_hi]`` is kept on this axis (exact for the boxes)."""
        top = self.length - 1
        a0, a1 = q_lo.clamp(0, top)[:, None], q_hi.clamp(0, top)[:, None] + 1
        b0, b1 = k_lo.clamp(0, top)[None, :], k_hi.clamp(0, top)[None, :] + 1
        c = self.counts
        count = c[a1, b1] - c[a0, b1] - c[a1, b0] + c[a0, b0]
        area = (a1 - a0).clamp_min(0) * (b1 - b0).clamp_min(0)
        return count > 0, count == area


@functools.lru_cache(maxsize=1024)
def neighborhood_window(length: int, kernel: int, stride: int, dilation: int, causal: bool) -> AxisWindow:
    """NATTEN's window along one axis of ``length`` positions (see the module docstring)."""
    i = torch.arange(length)
    r, j = i % dilation, i // dilation
    group_len = (length - r + dilation - 1) // dilation
    if causal:
        leader = torch.minimum(j // stride * stride + stride - 1, group_len - 1)
        start, end = (leader - kernel + 1).clamp_min(0), j
    else:
        leader = torch.minimum(j // stride * stride + stride // 2, group_len - 1)
        start = torch.minimum((leader - kernel // 2).clamp_min(0), (group_len - kernel).clamp_min(0))
        end = start + group_len.clamp_max(kernel) - 1
    return AxisWindow.of(r + dilation * start, r + dilation * end, dilation)


# ---------------------------------------------------------------------- shared base
@dataclass(frozen=True)
class AxisWindowPattern(Pattern):
    """A pattern whose video mask is the AND of one window per axis (t, y, x)."""

    @abstractmethod
    def windows(self, g: Geometry) -> tuple[AxisWindow, AxisWindow, AxisWindow]:
        """The (t, y, x) windows for a geometry (cache them: they are asked for on every call)."""

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        keep = None
        for win, cq, ck in zip(self.windows(g), (tq, yq, xq), (tk, yk, xk), strict=True):
            if win.keeps_all:
                continue
            ok = win.keep(cq, ck)
            keep = ok if keep is None else keep & ok
        if keep is None:
            return torch.ones(torch.broadcast_shapes(tq.shape, tk.shape), dtype=torch.bool)
        return keep

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation]:
        """Per windowed axis: the query rows' window ends and the keys' coordinates, relative (a window is
        the same wherever it lies inside the grid; near an edge its ends differ, and so does the relation);
        with dilation, each coordinate's dilation group too."""
        out = []
        for win, cq, ck in zip(self.windows(g), (q.t, q.y, q.x), (k.t, k.y, k.x), strict=True):
            if win.keeps_all:
                continue
            out.append(relative(torch.cat([win.lo[cq], win.hi[cq]], 1), cq[:, 0], ck, k))
            if win.dilation > 1:
                out.append(absolute(cq % win.dilation, ck % win.dilation))
        return out

    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        # Per axis the bounds are exact for the blocks' coordinate boxes; a block's tokens lie inside
        # its box, so ANDing the axes gives a conservative "maybe" and a sound "surely".
        shape = (q.t_lo.numel(), k.t_lo.numel())
        maybe, surely = torch.ones(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool)
        ranges = ((q.t_lo, q.t_hi, k.t_lo, k.t_hi), (q.y_lo, q.y_hi, k.y_lo, k.y_hi),
                  (q.x_lo, q.x_hi, k.x_lo, k.x_hi))
        for win, (a0, a1, b0, b1) in zip(self.windows(g), ranges, strict=True):
            if win.keeps_all:
                continue
            some, every = win.bounds(a0, a1, b0, b1)
            maybe &= some
            surely &= every
        return maybe, surely


def triple(value: Any, kind: type) -> Any:
    """Broadcast a scalar to a (t, y, x) triple; tuples and lists become tuples; others pass through."""
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return (value, value, value)
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return value


def check_triple(owner: str, name: str, value: Any, kind: type) -> None:
    """Raise ValueError unless ``value`` is a triple of ``kind`` (bools are not ints)."""
    one, many = ("a bool", "bools") if kind is bool else ("an integer", "integers")
    if not isinstance(value, tuple) or len(value) != 3:
        raise ValueError(f"{owner}.{name} must be {one} or a (t, y, x) triple of {many}, got {value!r}")
    for axis, v in enumerate(value):
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ValueError(f"{owner}.{name}[{axis}] must be {one}, got {v!r}")


# ---------------------------------------------------------------------- the pattern
@register
@dataclass(frozen=True, kw_only=True)
class Neighborhood(AxisWindowPattern):
    """NATTEN's neighborhood attention over (t, y, x); ints broadcast to all three axes.

    ``kernel_size`` is the window per axis, ``stride`` groups queries that share one window (GNA;
    ``stride == kernel_size`` is blocked, Swin-like attention), ``dilation`` attends to every d-th
    position, ``is_causal`` restricts an axis (usually time) to keys at or before the query.
    """

    kernel_size: tuple[int, int, int]
    stride: tuple[int, int, int] = (1, 1, 1)
    dilation: tuple[int, int, int] = (1, 1, 1)
    is_causal: tuple[bool, bool, bool] = (False, False, False)

    name = "neighborhood"
    grid = (
        {"kernel_size": (3, 9, 9)},
        {"kernel_size": (5, 15, 15)},
        {"kernel_size": (3, 15, 15)},
        {"kernel_size": (4, 16, 16), "stride": (2, 8, 8)},
        {"kernel_size": (6, 24, 24), "stride": (2, 8, 8)},
        {"kernel_size": (4, 16, 16), "stride": (4, 16, 16)},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", triple(self.kernel_size, int))
        object.__setattr__(self, "stride", triple(self.stride, int))
        object.__setattr__(self, "dilation", triple(self.dilation, int))
        object.__setattr__(self, "is_causal", triple(self.is_causal, bool))
        super().__post_init__()

    def check(self) -> None:
        super().check()
        for name in ("kernel_size", "stride", "dilation"):
            check_triple("neighborhood", name, getattr(self, name), int)
        check_triple("neighborhood", "is_causal", self.is_causal, bool)
        for a in range(3):
            w, s, d = self.kernel_size[a], self.stride[a], self.dilation[a]
            if w < 1:
                raise ValueError(f"neighborhood.kernel_size[{a}] must be >= 1, got {w}")
            if not 1 <= s <= w:
                raise ValueError(f"neighborhood.stride[{a}] must satisfy 1 <= stride <= kernel_size[{a}] = {w}, "
                                 f"got {s}")
            if d < 1:
                raise ValueError(f"neighborhood.dilation[{a}] must be >= 1, got {d}")

    def windows(self, g: Geometry) -> tuple[AxisWindow, AxisWindow, AxisWindow]:
        dims = (g.frames, g.height, g.width)
        params = zip(dims, self.kernel_size, self.stride, self.dilation, self.is_causal, strict=True)
        return tuple(neighborhood_window(*p) for p in params)  # type: ignore[return-value]

    def order_candidates(self, g: Geometry, block_m: int, block_n: int) -> list:
        """Orders that make this window's blocks whole; :meth:`token_orders` keeps the cheapest.

        - Strided (GNA): every query of a stride tile shares its leader's window, so queries run in
          stride tiles (grown to a block when a tile is smaller), and keys in stride tiles shifted to
          where the interior windows start (``s // 2 - w // 2`` mod ``s``; causal: ``s - w`` mod ``s``):
          then an interior window is a union of whole key tiles. With dilation, tiles of
          ``stride * dilation`` for both, unshifted.
        - Stride 1: every query has its own window, so no order makes the blocks whole; 3-D bricks
          of a block (e.g. 2x8x8) keep a block's windows close together.
        The natural (frame-major) order is always a candidate. Each order is exact.
        """
        dims = (g.frames, g.height, g.width)
        text = {"prefix": g.prefix_len, "suffix": g.suffix_len}

        def order(brick: tuple[int, ...], block: int, offset: tuple[int, ...] = (0, 0, 0)) -> Tensor:
            return brick_order(*dims, brick, block, offset=offset, **text)  # type: ignore[arg-type]

        out: list = [(None, None)]
        if any(s > 1 for s in self.stride):
            tile = tuple(min(s * d, n) for s, d, n in zip(self.stride, self.dilation, dims, strict=True))
            if any(d > 1 for d in self.dilation):
                return [*out, (order(tile, block_m), order(tile, block_n))]
            offset = []
            for s, w, causal, n in zip(self.stride, self.kernel_size, self.is_causal, dims, strict=True):
                o = ((s - w) if causal else (s // 2 - w // 2)) % s if s < n else 0
                offset.append(o)
            q_tile = _grow(tile, block_m, dims)
            shifted = tuple(offset)
            out += [(order(q_tile, block_m), order(tile, block_n, shifted)),
                    (order(q_tile, block_m), order(_grow(tile, block_n, dims), block_n, shifted)),
                    (order(q_tile, block_m), order(q_tile, block_n))]
            return out
        for brick in _bricks(block_m, dims):
            if block_n == block_m:
                out.append((order(brick, block_m), order(brick, block_n)))
        return out

    def order_shortlist(self, g: Geometry, block_m: int, block_n: int) -> list:
        """Stride 1: the estimated best order and the natural one, both built exactly. The estimate works on
        block coordinate boxes, which are loose for a frame-major block that wraps a frame, and at Wan 480p
        it ranked a 2x8x8 brick order first for a 3x9x9 window that visits 20% more blocks than the natural
        order (0.073 vs 0.061 of dense's work)."""
        best = self.token_orders(g, block_m, block_n)
        if any(s > 1 for s in self.stride) or best[0] is None:
            return [best]
        return [best, (None, None)]


def _grow(tile: tuple[int, ...], block: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    """``tile`` doubled along x, then y, then t (within the grid) until it holds at least a block."""
    tile = list(tile)
    while math.prod(tile) < block:
        for axis in (2, 1, 0):
            if tile[axis] * 2 <= dims[axis]:
                tile[axis] *= 2
                break
        else:
            break
    return tuple(tile)


def _bricks(block: int, dims: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """3-D bricks of ``block`` tokens with power-of-two sides that fit the grid: (1, 8, 16), (2, 8, 8)..."""
    out = []
    for bt in (1, 2, 4):
        area = block // bt
        if bt > dims[0] or area < 4:
            continue
        by = 2
        while by <= area // 2:
            bx = area // by
            if by <= dims[1] and bx <= dims[2] and 1 / 4 <= by / bx <= 4:
                out.append((bt, by, bx))
            by *= 2
    return out
