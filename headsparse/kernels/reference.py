"""Dense masked attention: the correctness oracle for every executor and pattern."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from headsparse.kernels.layout import Layout


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v in float32, with q/k/v as [B, H, L, D].

    ``mask`` is bool, broadcastable to [B, H, Lq, Lk]. A query row with no kept key gives a zero
    output and a log-sum-exp of -inf (never NaN). Returns the output in q's dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    finite = torch.isfinite(lse)
    p = torch.exp(s - torch.where(finite, lse, 0.0).unsqueeze(-1))
    out = torch.einsum("bhqk,bhkd->bhqd", p, v.float())
    out = torch.where(finite.unsqueeze(-1), out, 0.0).to(q.dtype)
    return (out, lse) if return_lse else out


def layout_reference(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Dense attention under ``layout.to_dense_mask()``: what every executor must reproduce."""
    return masked_attention(q, k, v, layout.to_dense_mask().to(q.device), scale=scale, return_lse=return_lse)
