"""CPU executor: compiled FlexAttention with a BlockMask made from a Layout.

Full blocks become FlexAttention's "full" blocks (no mask_mod call); partial blocks evaluate a
mask_mod that reads the layout's packed bits. The compiled function is built once per process and
reused: changing only the mask contents does not recompile (the mask table is padded to a
power-of-two row count so its shape rarely changes).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from headsparse.kernels.layout import BLOCK_FULL, Layout

try:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - torch < 2.5 is not supported
    BlockMask = None
    flex_attention = None


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


FLEX_RECOMPILE_LIMIT = 256
# torch < 2.7 calls it cache_size_limit.
_LIMIT_NAME = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"

# Mask tables are padded to at least this many rows (then powers of two): the table's shape is
# part of the compiled graph's guards, so a varying row count would recompile.
_MIN_TABLE_ROWS = 1024


def _padded_table(bits: Tensor) -> Tensor:
    rows = max(_MIN_TABLE_ROWS, bits.shape[0])
    target = 1 << math.ceil(math.log2(rows))
    if target == bits.shape[0]:
        return bits
    pad = torch.zeros(target - bits.shape[0], *bits.shape[1:], dtype=bits.dtype, device=bits.device)
    return torch.cat([bits, pad])


def layout_block_mask(layout: Layout, batch: int, device: torch.device) -> BlockMask:
    """FlexAttention BlockMask for ``layout`` over its padded positions (multiples of the blocks).

    FlexAttention takes per-head block tables as wide as the key blocks, so they are built here per
    (batch item, head) from the layout's structures, and cached on the layout.
    """
    key = ("block_mask", batch, str(device))
    if key in layout._cache:
        return layout._cache[key]
    lay = layout.to(device)
    bm, bn = lay.block_m, lay.block_n
    ids = lay.structure_mask_ids()  # [S, MQ, NK]
    kinds = lay.structure_kinds()  # dense-row blocks holding key padding are partial here
    full = (kinds == BLOCK_FULL) & (ids == -2)
    partial = (ids >= 0) | ((ids == -2) & ~full)
    # mask_mod must be right on every block, not only the partial ones compiled FlexAttention calls it
    # on: eager FlexAttention (which torch.compile falls back to past its recompile limit) evaluates it
    # everywhere. Blocks that keep every real key point at an all-ones row appended to the mask table.
    ones = torch.full((1, *lay.mask_bits.shape[1:]), -1, dtype=lay.mask_bits.dtype, device=device)
    mids = torch.where(ids == -2, lay.mask_bits.shape[0], ids).to(torch.int32)
    table = _padded_table(torch.cat([lay.mask_bits, ones]))
    key_ok = lay.key_valid()  # [S, PK]
    heads = lay.heads.long()  # [LB, H]
    per_batch = lay.batch > 1

    def mask_mod(b, h, q_idx, kv_idx):
        s = heads[b if per_batch else 0, h]
        mid = mids[s, q_idx // bm, kv_idx // bn]
        word = table[mid.clamp(min=0), q_idx % bm, (kv_idx % bn) // 32]
        return (mid >= 0) & (((word >> ((kv_idx % bn) % 32)) & 1) != 0) & key_ok[s, kv_idx]

    def tables(sel: Tensor) -> tuple[Tensor, Tensor]:
        per_head = sel[heads]  # [LB, H, MQ, NK]
        num = per_head.sum(-1, dtype=torch.int32)
        idx = torch.sort((~per_head).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
        if per_head.shape[0] != batch:
            num, idx = num.expand(batch, *num.shape[1:]), idx.expand(batch, *idx.shape[1:])
        return num.contiguous(), idx.contiguous()

    part_num, part_idx = tables(partial)
    full_num, full_idx = tables(full)
    block_mask = BlockMask.from_kv_blocks(
        part_num, part_idx, full_num, full_idx, BLOCK_SIZE=(bm, bn), mask_mod=mask_mod,
        seq_lengths=(lay.num_q_blocks * bm, lay.num_kv_blocks * bn),
        # The transposed (query-side) tables only serve a backward pass, which this inference executor never
        # runs; building them takes torch.vmap, which fails inside a compiled graph's run (a torch.compile'd
        # block calling the routed op: "Cannot access storage of BatchedTensorImpl").
        compute_q_blocks=False,
    )
    layout._cache[key] = block_mask
    return block_mask


def cpu_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype compiled FlexAttention computes in on this CPU for inputs of ``dtype``.

    This machine's :func:`~headsparse.kernels.cpu_profile.cpu_profile`: measured once and cached, or
    from the CPU's features (without AMX tiles FlexAttention's reduced-precision path can be slower
    than float32 compute, which is also more exact).
    """
    from headsparse.kernels.cpu_profile import cpu_profile

    return cpu_profile().compute_dtype(dtype)


def _pad_len(x: Tensor, length: int) -> Tensor:
    if x.shape[2] == length:
        return x
    return F.pad(x, (0, 0, 0, length - x.shape[2]))


def flex_block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float | None = None,
    return_lse: bool = False, compiled: bool = True, compute_dtype: torch.dtype | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run compiled FlexAttention on q/k/v [B, H, L, D] in the layout's (permuted) order.

    ``compute_dtype``: what it computes in (default: q's dtype on CUDA, this CPU's profile on CPU).
    """
    if flex_attention is None:  # pragma: no cover
        raise RuntimeError("this torch has no FlexAttention (torch >= 2.5 is required)")
    if return_lse and compiled and q.device.type == "cpu":
        raise ValueError("compiled FlexAttention on CPU cannot return the log-sum-exp; use backend='masked'")
    lq, out_dtype = q.shape[2], q.dtype
    if compute_dtype is not None:
        compute = compute_dtype
    else:
        compute = cpu_compute_dtype(q.dtype) if q.device.type == "cpu" else q.dtype
    block_mask = layout_block_mask(layout, q.shape[0], q.device)
    qp = _pad_len(q.to(compute), layout.num_q_blocks * layout.block_m)
    kp = _pad_len(k.to(compute), layout.num_kv_blocks * layout.block_n)
    vp = _pad_len(v.to(compute), layout.num_kv_blocks * layout.block_n)
    if compiled:
        # Every new length, batch or grad mode is a recompile of the one flex_attention frame; a
        # long-lived process (many resolutions, CFG on and off) would pass torch's default limit
        # of 8 and silently drop to eager FlexAttention, which is slow and memory-hungry.
        with torch._dynamo.config.patch(**{_LIMIT_NAME: FLEX_RECOMPILE_LIMIT}):
            result = _compiled_flex()(qp, kp, vp, block_mask=block_mask, scale=scale, return_lse=return_lse)
    else:
        result = flex_attention(qp, kp, vp, block_mask=block_mask, scale=scale, return_lse=return_lse)
    if return_lse:
        out, lse = result
        return out[:, :, :lq].to(out_dtype), lse[:, :, :lq].float()
    return result[:, :, :lq].to(out_dtype)
