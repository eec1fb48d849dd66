"""Eager masked executor: dense attention over a Layout's element mask, one query chunk at a time.

Used where compiled FlexAttention is unavailable and where the layout is dense enough that dense
SDPA beats a sparse executor. Memory stays bounded by the chunk: the full L x L mask is never
built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from headsparse.kernels.layout import Layout
from headsparse.kernels.reference import masked_attention

# Query rows per chunk, rounded to whole query blocks.
_CHUNK_ROWS = 1024


def masked_block_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention under ``layout`` for q/k/v [B, H, L, D] in the layout's (permuted) order."""
    _b, _h, lq, _d = q.shape
    lk = k.shape[2]
    lay = layout.to(q.device)
    step = max(1, _CHUNK_ROWS // lay.block_m)
    outs, lses = [], []
    for m0 in range(0, lay.num_q_blocks, step):
        m1 = min(m0 + step, lay.num_q_blocks)
        r0, r1 = m0 * lay.block_m, min(m1 * lay.block_m, lq)
        mask = lay.block_row_mask(m0, m1)[:, :, : r1 - r0, :lk]
        qc = q[:, :, r0:r1]
        if return_lse:
            out, lse = masked_attention(qc, k, v, mask, scale=scale, return_lse=True)
            lses.append(lse)
        else:
            out = F.scaled_dot_product_attention(qc, k, v, attn_mask=mask, scale=scale)
            out = torch.where(mask.any(-1, keepdim=True), out, 0.0)
        outs.append(out)
    out = torch.cat(outs, dim=2)
    return (out, torch.cat(lses, dim=2)) if return_lse else out
