"""Pattern: a named, parameterised rule that turns a Geometry into a Layout.

Every pattern defines its exact token-level mask (``video_mask`` over token coordinates; text
tokens follow the joint-attention rule: text queries see everything and every query sees all text
keys, unless ``text_dense=False``, where text only sees text). Building a Layout never evaluates
the whole L x L mask: a pattern first bounds each block from per-block coordinate ranges
(``block_bounds``: which blocks may keep a pair, which surely keep all), and the exact mask is
evaluated only on the uncertain blocks.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from headsparse.kernels.layout import BLOCK_FULL, BLOCK_PARTIAL, BLOCK_SKIP, Layout
from headsparse.patterns.geometry import Geometry


@dataclass(frozen=True)
class BlockStats:
    """Coordinate ranges of the tokens in each block of an (optionally permuted) sequence.

    ``t_lo/t_hi`` etc. cover the block's video tokens (``has_video`` False: meaningless), ``v_lo/v_hi``
    their video-relative index (t * H * W + y * W + x); ``has_text``/``all_text`` flag text tokens;
    ``tokens`` [n, block] lists each block's tokens (-1 for padding past the sequence end, which
    counts as nothing), for patterns whose rule for a key depends on the key alone.
    """

    tokens: Tensor
    v_lo: Tensor
    v_hi: Tensor
    t_lo: Tensor
    t_hi: Tensor
    y_lo: Tensor
    y_hi: Tensor
    x_lo: Tensor
    x_hi: Tensor
    has_video: Tensor
    has_text: Tensor
    all_text: Tensor

    @staticmethod
    def of(geometry: Geometry, order: Tensor, block: int) -> BlockStats:
        n = math.ceil(order.numel() / block)
        pad = n * block - order.numel()
        idx = torch.cat([order, torch.full((pad,), -1, dtype=order.dtype)]).view(n, block)
        valid = idx >= 0
        t, y, x, is_text = geometry.coords(idx.clamp_min(0))
        video = valid & ~is_text
        big = torch.iinfo(torch.int64).max

        def lo(c: Tensor) -> Tensor:
            return torch.where(video, c, big).min(1).values

        def hi(c: Tensor) -> Tensor:
            return torch.where(video, c, -1).max(1).values

        text = valid & is_text
        v = idx - geometry.video_start
        return BlockStats(idx, lo(v), hi(v), lo(t), hi(t), lo(y), hi(y), lo(x), hi(x), video.any(1), text.any(1),
                          text.sum(1) == valid.sum(1))

    def key_rule(self, geometry: Geometry, rule) -> tuple[Tensor, Tensor]:
        """(any, all) [n] of ``rule(t, y, x, v)`` over each block's video tokens."""
        valid = self.tokens >= 0
        t, y, x, is_text = geometry.coords(self.tokens.clamp_min(0))
        video = valid & ~is_text
        kept = rule(t, y, x, self.tokens - geometry.video_start) & video
        return kept.any(1), (kept | ~video).all(1) & video.any(1)


def interval_gap(a_lo: Tensor, a_hi: Tensor, b_lo: Tensor, b_hi: Tensor) -> Tensor:
    """[MQ, NK] smallest |a - b| between a query block's range and a key block's range."""
    return torch.clamp(torch.maximum(b_lo[None, :] - a_hi[:, None], a_lo[:, None] - b_hi[None, :]), min=0)


def interval_span(a_lo: Tensor, a_hi: Tensor, b_lo: Tensor, b_hi: Tensor) -> Tensor:
    """[MQ, NK] largest |a - b| between a query block's range and a key block's range."""
    return torch.maximum(a_hi[:, None] - b_lo[None, :], b_hi[None, :] - a_lo[:, None])


@dataclass(frozen=True)
class Pattern(ABC):
    """Base of all patterns. Subclasses are frozen dataclasses whose fields are the parameters."""

    text_dense: bool = True

    name: ClassVar[str] = ""
    # Parameter settings the search enumerates (each a dict of field values).
    grid: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the bad parameter; subclasses extend it."""
        if not isinstance(self.text_dense, bool):
            raise ValueError(f"{type(self).__name__}.text_dense must be a bool, got {self.text_dense!r}")

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def label(self) -> str:
        """The name with the parameters that differ from the class defaults, e.g. 'spatial(frame_band=1)'."""
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        changed = [f"{k}={v}" for k, v in self.params().items() if k not in defaults or defaults[k] != v]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    # ------------------------------------------------------------------ the exact mask
    @abstractmethod
    def video_mask(self, g: Geometry, tq: Tensor, yq: Tensor, xq: Tensor, tk: Tensor, yk: Tensor,
                   xk: Tensor) -> Tensor:
        """Which video keys a video query keeps, from broadcastable coordinate tensors."""

    def mask(self, geometry: Geometry, q_idx: Tensor, k_idx: Tensor) -> Tensor:
        """Exact mask for broadcastable token-index tensors (original token order)."""
        tq, yq, xq, text_q = geometry.coords(q_idx)
        tk, yk, xk, text_k = geometry.coords(k_idx)
        video = self.video_mask(geometry, tq, yq, xq, tk, yk, xk)
        if self.text_dense:
            return text_q | text_k | video
        return (text_q & text_k) | (~text_q & ~text_k & video)

    def dense_mask(self, geometry: Geometry) -> Tensor:
        """bool [L, L]: the reference mask. For tests and pictures of small geometries."""
        idx = torch.arange(geometry.seq_len)
        return self.mask(geometry, idx[:, None], idx[None, :])

    # ------------------------------------------------------------------ execution order
    def permutation(self, geometry: Geometry) -> Tensor | None:
        """Token order the pattern runs in (position -> token), or None for the natural order."""
        return None

    # ------------------------------------------------------------------ block bounds
    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        """(maybe, surely) [MQ, NK] for the video parts of blocks; default: nothing is known."""
        shape = (q.t_lo.numel(), k.t_lo.numel())
        return torch.ones(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)

    def block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        """(maybe, surely) [MQ, NK]: blocks that may keep a pair, blocks that keep every pair."""
        maybe_v, surely_v = self.video_block_bounds(g, q, k)
        both_video = q.has_video[:, None] & k.has_video[None, :]
        maybe = both_video & maybe_v
        pure_video = (~q.has_text)[:, None] & (~k.has_text)[None, :]
        surely = surely_v & pure_video
        if self.text_dense:
            any_text = q.has_text[:, None] | k.has_text[None, :]
            maybe = maybe | any_text
            surely = surely | q.all_text[:, None] | k.all_text[None, :]
        else:
            maybe = maybe | (q.has_text[:, None] & k.has_text[None, :])
            surely = surely | (q.all_text[:, None] & k.all_text[None, :])
        return maybe, surely & maybe

    # ------------------------------------------------------------------ layout
    def layout(self, geometry: Geometry, *, num_heads: int = 1, block_m: int = 128, block_n: int = 128) -> Layout:
        """The Layout of this pattern for ``num_heads`` heads (cached per pattern and geometry)."""
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a headsparse Geometry, got {type(geometry).__name__}")
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        return _layout(self, geometry, num_heads, block_m, block_n)


def clear_layout_cache() -> None:
    """Forget every cached pattern layout (for cold build-time measurements)."""
    _layout.cache_clear()
    _single_head_layout.cache_clear()


@functools.lru_cache(maxsize=256)
def _layout(pattern: Pattern, geometry: Geometry, num_heads: int, block_m: int, block_n: int) -> Layout:
    # Cached as a whole so the executors' per-layout caches (BlockMask, grouped plan) are reused.
    single = _single_head_layout(pattern, geometry, block_m, block_n)
    return single if num_heads == 1 else single.repeat_heads(num_heads)


@functools.lru_cache(maxsize=256)
def _single_head_layout(pattern: Pattern, geometry: Geometry, block_m: int, block_n: int) -> Layout:
    length = geometry.seq_len
    perm = pattern.permutation(geometry)
    order = torch.arange(length) if perm is None else perm
    q_stats = BlockStats.of(geometry, order, block_m)
    k_stats = q_stats if block_m == block_n else BlockStats.of(geometry, order, block_n)
    maybe, surely = pattern.block_bounds(geometry, q_stats, k_stats)
    uncertain = maybe & ~surely
    kinds = torch.where(surely, BLOCK_FULL, torch.where(uncertain, BLOCK_PARTIAL, BLOCK_SKIP)).to(torch.int8)
    pos = uncertain.nonzero()
    mq, nk = kinds.shape
    padded = torch.cat([order, torch.full((max(mq * block_m, nk * block_n) - length,), -1, dtype=order.dtype)])
    masks = torch.zeros(pos.shape[0], block_m, block_n, dtype=torch.bool)
    step = max(1, (1 << 24) // (block_m * block_n))
    for s in range(0, pos.shape[0], step):
        p = pos[s : s + step]
        qi = padded[p[:, 0:1] * block_m + torch.arange(block_m)]  # [P, bm]
        ki = padded[p[:, 1:2] * block_n + torch.arange(block_n)]  # [P, bn]
        # Padding query rows repeat the last token's row (they are cropped; this keeps column masks
        # row-constant); padding keys are never kept.
        qi = torch.where(qi >= 0, qi, order[-1])
        kept = pattern.mask(geometry, qi[:, :, None], ki.clamp_min(0)[:, None, :])
        masks[s : s + step] = kept & (ki >= 0)[:, None, :]
    return Layout.from_block_kinds(
        kinds[None, None], masks, q_len=length, kv_len=length, block_m=block_m, block_n=block_n,
        perm=None if perm is None else perm[None, :],
    )
