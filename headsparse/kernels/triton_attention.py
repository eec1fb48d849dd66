"""Block-sparse flash-attention forward in Triton, executing a Layout.

One program handles one (query block, batch * head): it streams the full key blocks of its row
without masks, then the partial blocks with their packed element masks, keeping an online softmax
in base 2. Heads with different layouts share one launch. A row that keeps no key returns zeros
and a log-sum-exp of -inf.

Under TRITON_INTERPRET=1 (CPU tests) bf16 ``tl.dot`` is wrong in the interpreter, so inputs are
upcast to float32 there and the output cast back.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from headsparse.kernels.layout import Layout

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None

_LOG2E = 1.4426950408889634

if triton is not None:

    @triton.jit
    def _attend_block(
        q, acc, m_i, l_i, K, V, kb, offs_d, d_ok, kv_len,
        stride_kl, stride_kd, stride_vl, stride_vd,
        bits_ptr, qk_scale,
        BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr, WORDS: tl.constexpr, BLOCK_M: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < kv_len
        k = tl.load(K + offs_n[None, :] * stride_kl + offs_d[:, None] * stride_kd,
                    mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        if IEEE:  # float32 inputs: exact products, not TF32
            qk = tl.dot(q, k, input_precision="ieee") * qk_scale
        else:
            qk = tl.dot(q, k) * qk_scale
        if PARTIAL:
            cols = tl.arange(0, BLOCK_N)
            rows = tl.arange(0, BLOCK_M)
            words = tl.load(bits_ptr + rows[:, None] * WORDS + (cols // 32)[None, :])
            keep = ((words >> (cols % 32)[None, :]) & 1) != 0
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(qk - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + offs_n[:, None] * stride_vl + offs_d[None, :] * stride_vd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return acc, m_new, l_i

    @triton.jit
    def _block_sparse_fwd(
        Q, K, V, Out, Lse,
        FullNum, FullIdx, PartNum, PartIdx, PartMask, MaskBits,
        qk_scale,
        stride_qb, stride_qh, stride_ql, stride_qd,
        stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd,
        stride_ob, stride_oh, stride_ol, stride_od,
        stride_nb, stride_nh, stride_nm,
        stride_fb, stride_fh, stride_fm,
        stride_pb, stride_ph, stride_pm,
        H, q_len, kv_len, head_dim,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        RETURN_LSE: tl.constexpr, IEEE: tl.constexpr,
    ):
        WORDS: tl.constexpr = BLOCK_N // 32
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_ok = offs_m < q_len
        d_ok = offs_d < head_dim
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd,
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        Kbh = K + b * stride_kb + h * stride_kh
        Vbh = V + b * stride_vb + h * stride_vh
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        # Layout tensors may broadcast over the batch (stride 0).
        n_off = b * stride_nb + h * stride_nh + pid_m * stride_nm
        n_full = tl.load(FullNum + n_off)
        full_row = FullIdx + b * stride_fb + h * stride_fh + pid_m * stride_fm
        for j in range(0, n_full):
            kb = tl.load(full_row + j)
            acc, m_i, l_i = _attend_block(
                q, acc, m_i, l_i, Kbh, Vbh, kb, offs_d, d_ok, kv_len,
                stride_kl, stride_kd, stride_vl, stride_vd, MaskBits, qk_scale,
                BLOCK_N, False, WORDS, BLOCK_M, IEEE,
            )
        n_part = tl.load(PartNum + n_off)
        part_off = b * stride_pb + h * stride_ph + pid_m * stride_pm
        for j in range(0, n_part):
            kb = tl.load(PartIdx + part_off + j)
            mid = tl.load(PartMask + part_off + j)
            acc, m_i, l_i = _attend_block(
                q, acc, m_i, l_i, Kbh, Vbh, kb, offs_d, d_ok, kv_len,
                stride_kl, stride_kd, stride_vl, stride_vd,
                MaskBits + mid.to(tl.int64) * (BLOCK_M * WORDS), qk_scale,
                BLOCK_N, True, WORDS, BLOCK_M, IEEE,
            )
        has_keys = l_i > 0.0
        l_safe = tl.where(has_keys, l_i, 1.0)
        out = acc / l_safe[:, None]
        out = tl.where(has_keys[:, None], out, 0.0)
        tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od,
                 out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
        if RETURN_LSE:
            lse = tl.where(has_keys, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("-inf"))
            tl.store(Lse + pid_bh * q_len + offs_m, lse, mask=m_ok)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float | None = None,
    return_lse: bool = False, num_warps: int | None = None, num_stages: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the Triton kernel on q/k/v [B, H, L, D] already in the layout's (permuted) order.

    Inputs may be strided views (e.g. a transposed [B, L, H, D] tensor). Returns the output
    [B, H, Lq, D] (and the float32 log-sum-exp [B, H, Lq] in natural-log units).
    """
    if triton is None:
        raise RuntimeError("triton is not installed: the Triton executor is unavailable")
    out_dtype = q.dtype
    if _interpreting() and q.device.type == "cpu" and q.dtype != torch.float32:
        # The interpreter multiplies raw bf16 bit patterns in tl.dot; compute in fp32 there.
        q, k, v = q.float(), k.float(), v.float()
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device) if return_lse else out
    lay = layout.to(q.device)

    def bstride(t: Tensor) -> int:
        return t.stride(0) if lay.batch > 1 else 0

    block_d = max(16, triton.next_power_of_2(d))
    if num_warps is None:
        num_warps = 4 if layout.block_m * block_d <= 64 * 128 else 8
    if num_stages is None:
        num_stages = 2 if block_d > 64 else 3
    grid = (lay.num_q_blocks, b * h)
    _block_sparse_fwd[grid](
        q, k, v, out, lse,
        lay.full_num, lay.full_idx, lay.part_num, lay.part_idx, lay.part_mask, lay.mask_bits,
        scale * _LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        bstride(lay.full_num), lay.full_num.stride(1), lay.full_num.stride(2),
        bstride(lay.full_idx), lay.full_idx.stride(1), lay.full_idx.stride(2),
        bstride(lay.part_idx), lay.part_idx.stride(1), lay.part_idx.stride(2),
        h, lq, lk, d,
        BLOCK_M=layout.block_m, BLOCK_N=layout.block_n, BLOCK_D=block_d,
        RETURN_LSE=return_lse, IEEE=q.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    out = out.to(out_dtype)
    return (out, lse) if return_lse else out
