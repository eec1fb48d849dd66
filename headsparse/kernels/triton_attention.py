"""Block-sparse flash-attention forward in Triton, executing a Layout.

One program handles one query tile of one (batch item, head): it finds the head's structure, then
streams the row's full key blocks with no mask code and its partial blocks with their packed element
masks (each query row's words expanded to bits in registers, never a gathered full tile); an online
softmax in base 2 accumulates. Dense rows reach the kernel listed block by block (:func:`kernel_rows`).
Heads with different structures share one launch. The kernel's tiles may be smaller than the
layout's blocks (``SPLIT_M`` query tiles per query block, ``SPLIT_N`` key tiles per key block), so
one layout runs within each GPU's shared memory and registers (launch configs:
:mod:`headsparse.kernels.triton_configs`). Offsets are int64: B * H * L * D passes 2**31 at video sizes.
A row that keeps no key returns zeros and a log-sum-exp of -inf.

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
    def _attend(
        q, acc, m_i, l_i, k_ptrs, v_ptrs, n_ok, d_ok, keep, qk_scale,
        MASKED: tl.constexpr, IEEE: tl.constexpr,
    ):
        k = tl.load(k_ptrs, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        if IEEE:  # float32 inputs: exact products, not TF32
            qk = tl.dot(q, k, input_precision="ieee") * qk_scale
        else:
            qk = tl.dot(q, k) * qk_scale
        if MASKED:
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(qk - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return acc, m_new, l_i

    @triton.jit
    def _block_sparse_fwd(
        Q, K, V, Out, Lse,
        Heads, FullPtr, FullIdx, PartPtr, PartIdx, PartMask, MaskBits,
        qk_scale,
        stride_qb, stride_qh, stride_ql, stride_qd,
        stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd,
        stride_ob, stride_oh, stride_ol, stride_od,
        stride_hb,
        H, q_positions, kv_positions, head_dim, num_q_blocks,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        SPLIT_M: tl.constexpr, SPLIT_N: tl.constexpr,
        RETURN_LSE: tl.constexpr, IEEE: tl.constexpr,
    ):
        LAYOUT_N: tl.constexpr = BLOCK_N * SPLIT_N  # the layout's key block
        WORDS: tl.constexpr = LAYOUT_N // 32  # mask words per query row of a layout block
        TILE_WORDS: tl.constexpr = BLOCK_N // 32  # mask words per row of one key tile
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        m_block = pid_m // SPLIT_M
        row0 = (pid_m % SPLIT_M) * BLOCK_M  # first row of this tile inside its layout query block
        s = tl.load(Heads + b * stride_hb + h)
        row = s * num_q_blocks + m_block
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_t = tl.arange(0, BLOCK_N)
        m_ok = offs_m < q_positions
        d_ok = offs_d < head_dim
        b64, h64 = b.to(tl.int64), h.to(tl.int64)
        q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + offs_m.to(tl.int64)[:, None] * stride_ql
                    + offs_d[None, :] * stride_qd, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        Kbh = K + b64 * stride_kb + h64 * stride_kh
        Vbh = V + b64 * stride_vb + h64 * stride_vh
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        bits_rows = row0 + tl.arange(0, BLOCK_M)
        k_base = Kbh + offs_d[:, None] * stride_kd  # [D, 1]: loop-invariant parts of the tile pointers
        v_base = Vbh + offs_d[None, :] * stride_vd
        start = tl.load(FullPtr + row)
        end = tl.load(FullPtr + row + 1)
        for j in range(start, end):
            kb = tl.load(FullIdx + j)
            for t in range(SPLIT_N):
                offs_n = kb * LAYOUT_N + t * BLOCK_N + offs_t
                n64 = offs_n.to(tl.int64)
                n_ok = offs_n < kv_positions  # always true for a full block; bounds the loads
                acc, m_i, l_i = _attend(q, acc, m_i, l_i, k_base + n64[None, :] * stride_kl,
                                        v_base + n64[:, None] * stride_vl, n_ok, d_ok, n_ok[None, :], qk_scale,
                                        False, IEEE)
        start = tl.load(PartPtr + row)
        end = tl.load(PartPtr + row + 1)
        for j in range(start, end):
            kb = tl.load(PartIdx + j)
            mid = tl.load(PartMask + j).to(tl.int64)
            for t in range(SPLIT_N):
                offs_n = kb * LAYOUT_N + t * BLOCK_N + offs_t
                n64 = offs_n.to(tl.int64)
                n_ok = offs_n < kv_positions
                # Each query row's mask words for this key tile, expanded to bits in registers.
                words = tl.load(MaskBits + mid * (BLOCK_M * SPLIT_M * WORDS) + bits_rows[:, None] * WORDS
                                + t * TILE_WORDS + tl.arange(0, TILE_WORDS)[None, :])
                bits = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
                keep = tl.reshape(bits, [BLOCK_M, BLOCK_N]) != 0
                acc, m_i, l_i = _attend(q, acc, m_i, l_i, k_base + n64[None, :] * stride_kl,
                                        v_base + n64[:, None] * stride_vl, n_ok, d_ok, keep, qk_scale, True, IEEE)
        has_keys = l_i > 0.0
        l_safe = tl.where(has_keys, l_i, 1.0)
        out = acc / l_safe[:, None]
        out = tl.where(has_keys[:, None], out, 0.0)
        tl.store(Out + b64 * stride_ob + h64 * stride_oh + offs_m.to(tl.int64)[:, None] * stride_ol
                 + offs_d[None, :] * stride_od, out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
        if RETURN_LSE:
            lse = tl.where(has_keys, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("-inf"))
            tl.store(Lse + pid_bh.to(tl.int64) * q_positions + offs_m, lse, mask=m_ok)


def kernel_rows(layout: Layout) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(full_ptr, full_idx, part_ptr, part_idx, part_mask, mask_bits) with dense rows listed block by block.

    The kernel reads only listed blocks: a dense row (a text query of joint attention) becomes every key
    block, full where the block holds no key padding, else partial under its key-validity mask. Dense
    *heads* never get here on CUDA (they run SDPA), so this adds a few rows' worth of entries. Cached on
    the layout.
    """
    if "kernel_rows" in layout._cache:
        return layout._cache["kernel_rows"]
    lay, device = layout, layout.device
    if not lay.has_dense_rows():
        rows = (lay.full_ptr, lay.full_idx, lay.part_ptr, lay.part_idx, lay.part_mask, lay.mask_bits)
        layout._cache["kernel_rows"] = rows
        return rows
    from headsparse.kernels.layout import _csr, pack_bits

    mq, nk, bn = lay.num_q_blocks, lay.num_kv_blocks, lay.block_n
    key_ok = lay.key_valid().view(lay.num_structures, nk, bn)  # [S, NK, bn]
    complete = key_ok.all(-1)  # [S, NK]
    dense = lay.dense_rows.nonzero().flatten()  # rows s * MQ + m
    d_rows = dense.repeat_interleave(nk)
    d_cols = torch.arange(nk, device=device).repeat(dense.numel())
    d_struct = d_rows // mq
    d_full = complete[d_struct, d_cols]
    # Distinct key-validity patterns of incomplete blocks, appended to the mask table.
    patterns = key_ok[d_struct[~d_full], d_cols[~d_full]]  # [n, bn]
    uniq, inverse = torch.unique(patterns, dim=0, return_inverse=True)
    extra = pack_bits(uniq[:, None, :].expand(-1, lay.block_m, bn))
    fr, fc, _ = lay.entries("full")
    pr, pc, pm = lay.entries("part")
    f_rows, f_cols = torch.cat([fr, d_rows[d_full]]), torch.cat([fc, d_cols[d_full]])
    p_rows, p_cols = torch.cat([pr, d_rows[~d_full]]), torch.cat([pc, d_cols[~d_full]])
    p_ids = torch.cat([pm, inverse + lay.mask_bits.shape[0]])
    f_order = torch.argsort(f_rows * nk + f_cols)
    p_order = torch.argsort(p_rows * nk + p_cols)
    rows = (_csr(f_rows[f_order], lay.num_structures * mq), f_cols[f_order].to(torch.int32).contiguous(),
            _csr(p_rows[p_order], lay.num_structures * mq), p_cols[p_order].to(torch.int32).contiguous(),
            p_ids[p_order].to(torch.int32).contiguous(), torch.cat([lay.mask_bits, extra]).contiguous())
    layout._cache["kernel_rows"] = rows
    return rows


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float | None = None,
    return_lse: bool = False, config: tuple[int, int, int, int] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the Triton kernel on q/k/v [B, H, P, D] already in the layout's order positions.

    Inputs may be strided views (e.g. a transposed [B, L, H, D] tensor). Returns the output
    [B, H, Pq, D] (and the float32 log-sum-exp [B, H, Pq] in natural-log units). ``config``:
    (tile_m, tile_n, num_warps, num_stages); default: this device's entry of the launch-config table.
    """
    if triton is None:
        raise RuntimeError("triton is not installed: the Triton executor is unavailable")
    from headsparse.kernels.triton_configs import launch_config

    out_dtype = q.dtype
    if _interpreting() and q.device.type == "cpu" and q.dtype != torch.float32:
        # The interpreter multiplies raw bf16 bit patterns in tl.dot; compute in fp32 there.
        q, k, v = q.float(), k.float(), v.float()
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    lay = layout.to(q.device)
    tile_m, tile_n, num_warps, num_stages = config or launch_config(q.device, d, q.dtype, lay.block_m, lay.block_n,
                                                                    return_lse)
    if lay.block_m % tile_m or lay.block_n % tile_n:
        raise ValueError(f"the kernel tile ({tile_m}, {tile_n}) must divide the layout's blocks "
                         f"({lay.block_m}, {lay.block_n})")
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device) if return_lse else out
    full_ptr, full_idx, part_ptr, part_idx, part_mask, mask_bits = kernel_rows(lay)
    block_d = max(16, triton.next_power_of_2(d))
    grid = (lay.num_q_blocks * (lay.block_m // tile_m), b * h)
    _block_sparse_fwd[grid](
        q, k, v, out, lse,
        lay.heads, full_ptr, full_idx, part_ptr, part_idx, part_mask, mask_bits,
        scale * _LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        lay.heads.stride(0) if lay.batch > 1 else 0,
        h, lq, lk, d, lay.num_q_blocks,
        BLOCK_M=tile_m, BLOCK_N=tile_n, BLOCK_D=block_d, SPLIT_M=lay.block_m // tile_m, SPLIT_N=lay.block_n // tile_n,
        RETURN_LSE=return_lse, IEEE=q.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    out = out.to(out_dtype)
    return (out, lse) if return_lse else out
