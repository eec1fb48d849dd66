"""Eager masked executor: dense attention over a Layout's element mask, one query chunk at a time.

Used for gradients, the log-sum-exp on CPU, and where compiled FlexAttention is unavailable. Memory
stays bounded by the chunk: the whole mask is never built, and heads sharing a structure share one
chunk of it.
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
    """Exact attention under ``layout`` for q/k/v [B, H, P, D] in the layout's order positions."""
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    lay = layout.to(q.device)
    step = max(1, _CHUNK_ROWS // lay.block_m)
    out = q.new_empty((b, h, lq, v.shape[-1]))
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device) if return_lse else None
    for m0 in range(0, lay.num_q_blocks, step):
        m1 = min(m0 + step, lay.num_q_blocks)
        r0, r1 = m0 * lay.block_m, min(m1 * lay.block_m, lq)
        masks = lay.structure_row_masks(m0, m1)[:, : r1 - r0, :lk]  # [S, rows, keys]
        for item in range(lay.batch):
            items = slice(None) if lay.batch == 1 else slice(item, item + 1)
            structures = lay.heads[item].long()
            for s in structures.unique().tolist():
                heads = (structures == s).nonzero().flatten()
                mask = masks[s][None, None]
                qc = q[items, heads, r0:r1]
                kc, vc = k[items, heads], v[items, heads]
                if return_lse:
                    o, l_ = masked_attention(qc, kc, vc, mask, scale=scale, return_lse=True)
                    lse[items, heads, r0:r1] = l_
                else:
                    o = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=scale)
                    o = torch.where(mask.any(-1, keepdim=True), o, 0.0)
                out[items, heads, r0:r1] = o.to(out.dtype)
    return (out, lse) if return_lse else out
