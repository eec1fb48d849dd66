"""pooled: dynamic block selection from mean-pooled q and k (RainFusion 2.0 / SpargeAttn style).

Each block of queries and of keys is averaged into one vector; the pooled scores say which key
blocks matter to which query block. Per query block the top ``keep`` fraction of key blocks is
kept (or, with ``cdf``, the fewest whose pooled softmax mass reaches it), plus its own block, every
block holding text (``text_dense``) and every block holding first-frame tokens (``first_frame``).
Kept blocks are kept whole, so the Layout has no partial blocks (apart from a ragged edge). The
selection depends on q and k, so this pattern has no static mask: it is built per call (or per
recognition interval) from the attention's own inputs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from headsparse.kernels.layout import BLOCK_FULL, BLOCK_SKIP, Layout
from headsparse.patterns.base import Pattern
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.registry import register


def _block_flags(flags: Tensor, block: int) -> Tensor:
    """bool [n_blocks]: blocks containing any flagged token."""
    n = math.ceil(flags.numel() / block)
    return F.pad(flags, (0, n * block - flags.numel())).view(n, block).any(1)


def mean_pool(x: Tensor, block: int) -> Tensor:
    """[..., L, D] -> [..., ceil(L / block), D]: the mean of each block's real tokens."""
    length = x.shape[-2]
    n = math.ceil(length / block)
    padded = F.pad(x.float(), (0, 0, 0, n * block - length)).unflatten(-2, (n, block)).sum(-2)
    counts = torch.full((n,), float(block), device=x.device)
    counts[-1] = length - (n - 1) * block
    return padded / counts[:, None]


@register
@dataclass(frozen=True)
class PooledBlocks(Pattern):
    keep: float = 0.1
    cdf: float | None = None
    first_frame: bool = True

    name = "pooled"
    dynamic: ClassVar[bool] = True
    grid = ({"keep": 0.05}, {"keep": 0.1}, {"keep": 0.2}, {"cdf": 0.9})

    def check(self) -> None:
        super().check()
        if not isinstance(self.keep, (int, float)) or not 0 < self.keep <= 1:
            raise ValueError(f"pooled.keep must be a fraction in (0, 1], got {self.keep!r}")
        if self.cdf is not None and not (isinstance(self.cdf, float) and 0 < self.cdf <= 1):
            raise ValueError(f"pooled.cdf must be None or a float in (0, 1], got {self.cdf!r}")

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        raise TypeError("the pooled pattern is dynamic: its mask depends on q and k (use block_kinds_from_qk)")

    def layout(self, geometry: Geometry, *, num_heads: int = 1, block_m: int = 128, block_n: int = 128) -> Layout:
        raise TypeError("the pooled pattern is dynamic: build its layout with layout_from_qk(q, k, geometry, block)")

    def block_kinds_from_qk(self, q: Tensor, k: Tensor, geometry: Geometry, block: int) -> Tensor:
        """int8 [H, MQ, NK] block map from q, k [H, L, D] (one batch item) in original token order.

        Everything runs on q's device and nothing is read back: the forced blocks (text, first frame,
        diagonal) come from a per-geometry cache on that device.
        """
        return torch.where(self.keep_blocks(q, k, geometry, block), BLOCK_FULL, BLOCK_SKIP).to(torch.int8)

    def keep_blocks(self, q: Tensor, k: Tensor, geometry: Geometry, block: int) -> Tensor:
        """bool [H, MQ, NK]: the blocks this pattern keeps for q, k [H, L, D] (see :meth:`block_kinds_from_qk`)."""
        if q.shape[-2] != geometry.seq_len or k.shape[-2] != geometry.seq_len:
            raise ValueError(f"q/k have {q.shape[-2]}/{k.shape[-2]} tokens, the geometry {geometry.seq_len}")
        qb, kb = mean_pool(q, block), mean_pool(k, block)
        probs = torch.softmax(qb @ kb.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [H, MQ, NK]
        _, mq, nk = probs.shape
        if self.cdf is None:
            count = max(1, math.ceil(self.keep * nk))
            keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, probs.topk(count, -1).indices, True)
        else:
            ordered, order = probs.sort(-1, descending=True)
            before = ordered.cumsum(-1) - ordered  # mass of the blocks ranked above
            keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, before < self.cdf)
        rows, cols = _forced_blocks(geometry, block, self.text_dense, self.first_frame, str(q.device))
        return keep | rows[:, None] | cols[None, :] | torch.eye(mq, nk, dtype=torch.bool, device=q.device)

    def layout_from_qk(self, q: Tensor, k: Tensor, geometry: Geometry, block: int, *,
                       on_device: bool = False) -> Layout:
        """The Layout of ``H`` heads from q, k [H, L, D] (``on_device``: no synchronisation, see
        :meth:`Layout.from_block_map`)."""
        return Layout.from_block_map(self.keep_blocks(q, k, geometry, block), q_len=geometry.seq_len,
                                     kv_len=geometry.seq_len, block_m=block, block_n=block, on_device=on_device)


@functools.lru_cache(maxsize=64)
def _forced_blocks(geometry: Geometry, block: int, text_dense: bool, first_frame: bool,
                   device: str) -> tuple[Tensor, Tensor]:
    """(query blocks kept whole, key blocks every query keeps) as bool [MQ], [NK] on ``device``: text blocks both
    ways (``text_dense``), first-frame key blocks (``first_frame``)."""
    is_text = geometry.coords(torch.arange(geometry.seq_len))[3]
    text = _block_flags(is_text, block)
    rows = text if text_dense else torch.zeros_like(text)
    cols = rows.clone()
    if first_frame:
        cols |= _block_flags(geometry.frame_of_token() == 0, block)
    return rows.to(device), cols.to(device)
