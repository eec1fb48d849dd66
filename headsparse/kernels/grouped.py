"""CPU executor: batched SDPA over groups of query blocks that share their keys.

Query blocks of one head whose rows of the block map are identical (every block inside a frame
under a spatial pattern, every block of a tile under a tiled one) form a group. When every partial
block of a group keeps the same columns in every row (a *column mask*: frame edges, ragged padding),
the group's keys are exactly a list of tokens: they are gathered once, without padding or holes,
and the group runs as one unmasked SDPA problem with the large-tile efficiency of dense attention.
A group whose rows differ in only a few ways (a query block straddling two frames) is split into
row sets, each an unmasked problem over exactly its keys. Other groups gather their key blocks
whole and pass SDPA an element mask. Groups of equal shape are batched into one call, in chunks
that bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from headsparse.kernels.layout import BLOCK_PARTIAL, Layout, unpack_bits

# Upper bound on the elements of one gathered K (or V) buffer, and of one mask, per SDPA call.
_CHUNK_ELEMENTS = 32 * 1024 * 1024

# A group whose element masks differ between rows is split into row sets with identical masks
# when there are at most this many distinct rows (e.g. a query block straddling two frames);
# otherwise it runs as one masked SDPA problem.
_MAX_ROW_PATTERNS = 4


@dataclass(frozen=True)
class _Bucket:
    """SDPA problems of one shape: ``n_q`` query tokens and ``n_keys`` key tokens each.

    Token rows index the padded q/k/v viewed as [batch, R * padded_len, D] with R = LB * H.
    """

    q_tokens: Tensor  # int64 [G * n_q]
    kv_tokens: Tensor  # int64 [G * n_keys]
    n_q: int
    n_keys: int
    mask_ids: Tensor | None  # int32 [G, n_q // bm, n_keys // bn]: < 0 full, else mask row; None: no mask


def _column_masks(layout: Layout) -> tuple[Tensor, Tensor]:
    """For each mask_bits row: whether all rows are equal, and the kept columns (bool [U, bn])."""
    bits = layout.mask_bits
    if bits.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.bool, device=bits.device)
        return empty, torch.zeros(0, layout.block_n, dtype=torch.bool, device=bits.device)
    row_constant = (bits == bits[:, :1]).all(dim=(1, 2))
    return row_constant, unpack_bits(bits[:, 0])


def plan_groups(layout: Layout) -> list[_Bucket]:
    """Group identical block-map rows per (batch, head) and bucket the SDPA problems by shape (cached)."""
    if "grouped_plan" in layout._cache:
        return layout._cache["grouped_plan"]
    lb, h, mq, nk = layout.batch, layout.num_heads, layout.num_q_blocks, layout.num_kv_blocks
    bm, bn = layout.block_m, layout.block_n
    kinds = layout.block_kinds().reshape(lb * h, mq, nk).cpu()
    ids = layout.mask_ids().reshape(lb * h, mq, nk).cpu()
    bits = layout.mask_bits.cpu()
    row_constant, columns = (t.cpu() for t in _column_masks(layout))
    head = torch.arange(lb * h).repeat_interleave(mq)
    rows = torch.cat([head[:, None], kinds.reshape(-1, nk).long()], dim=1)
    uniq, group_of = torch.unique(rows, dim=0, return_inverse=True)
    order = torch.argsort(group_of, stable=True)
    members = torch.bincount(group_of, minlength=uniq.shape[0])
    starts = torch.cumsum(members, 0) - members
    flat_ids = ids.reshape(-1, nk)
    buckets: dict[tuple[int, int, bool], tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}

    def add(q_tokens: Tensor, kv_tokens: Tensor, mask_ids: Tensor | None) -> None:
        entry = buckets.setdefault((q_tokens.numel(), kv_tokens.numel(), mask_ids is not None), ([], [], []))
        entry[0].append(q_tokens)
        entry[1].append(kv_tokens)
        if mask_ids is not None:
            entry[2].append(mask_ids)

    for g in range(uniq.shape[0]):
        row_kinds = uniq[g, 1:]
        visited = (row_kinds > 0).nonzero().squeeze(1)
        if visited.numel() == 0:
            continue  # these query blocks keep no key: their output stays zero
        r = int(uniq[g, 0])
        q_blocks = order[starts[g] : starts[g] + members[g]]  # rows (r * MQ + m)
        q_tokens = (q_blocks[:, None] * bm + torch.arange(bm)[None, :]).reshape(-1)
        kv_tokens = (r * nk * bn + visited[:, None] * bn + torch.arange(bn)[None, :]).reshape(-1)
        member_ids = flat_ids[q_blocks][:, visited]  # [nq, n_visited]
        is_partial = row_kinds[visited] == BLOCK_PARTIAL
        if not is_partial.any():
            add(q_tokens, kv_tokens, None)
            continue
        first = member_ids[0].clamp_min(0)
        same_mask = (member_ids == member_ids[:1]).all(0)
        if bool((same_mask[is_partial] & row_constant[first[is_partial]]).all()):
            # Every member keeps the same columns in every row: the keys are a plain token list.
            keep = torch.ones(visited.numel(), bn, dtype=torch.bool)
            keep[is_partial] = columns[first[is_partial]]
            add(q_tokens, kv_tokens[keep.reshape(-1)], None)
            continue
        element = _element_mask(bits, member_ids[None])[0]
        patterns, row_pattern = torch.unique(element, dim=0, return_inverse=True)
        if patterns.shape[0] <= _MAX_ROW_PATTERNS:
            # Rows sharing one mask (e.g. the two frames of a straddling block) become separate
            # unmasked problems over exactly their keys.
            for p in range(patterns.shape[0]):
                if patterns[p].any():
                    add(q_tokens[row_pattern == p], kv_tokens[patterns[p]], None)
            continue
        add(q_tokens, kv_tokens, member_ids)  # full blocks have id -1
    plan = [
        _Bucket(torch.cat(qs), torch.cat(ks), n_q, n_keys, torch.stack(ms) if general else None)
        for (n_q, n_keys, general), (qs, ks, ms) in buckets.items()
    ]
    layout._cache["grouped_plan"] = plan
    return plan


def mean_group_rows(layout: Layout) -> float:
    """Work-weighted mean number of query rows per SDPA problem: large means dense-like tiles."""
    plan = plan_groups(layout)
    work = [b.q_tokens.numel() * b.n_keys for b in plan]
    total = sum(work)
    if total == 0:
        return 0.0
    return sum(w * b.n_q for w, b in zip(work, plan, strict=True)) / total


def _element_mask(bits: Tensor, mask_ids: Tensor) -> Tensor:
    """bool [G, nq * bm, nk * bn] element mask of groups of visited blocks.

    ``mask_ids`` [G, nq, nk] holds the ``mask_bits`` row of each partial block and a negative value
    for full blocks.
    """
    g, nq, nk = mask_ids.shape
    bm, bn = bits.shape[1], bits.shape[2] * 32
    tiles = torch.ones(g, nq, nk, bm, bn, dtype=torch.bool, device=mask_ids.device)
    part = mask_ids >= 0
    if part.any():
        tiles[part] = unpack_bits(bits[mask_ids[part].long()])
    return tiles.permute(0, 1, 3, 2, 4).reshape(g, nq * bm, nk * bn)


def grouped_block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float | None = None
) -> Tensor:
    """Exact attention under ``layout`` for q/k/v [B, H, L, D] in the layout's (permuted) order."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    bm, bn = layout.block_m, layout.block_n
    mq, nk = layout.num_q_blocks, layout.num_kv_blocks
    plan = plan_groups(layout)
    qp = F.pad(q, (0, 0, 0, mq * bm - lq)) if mq * bm != lq else q
    kp = F.pad(k, (0, 0, 0, nk * bn - lk)) if nk * bn != lk else k
    vp = F.pad(v, (0, 0, 0, nk * bn - lk)) if nk * bn != lk else v
    # A layout shared by the batch keeps the batch as SDPA's batch dimension; a per-batch layout
    # folds the batch into the rows.
    bx = b if layout.batch == 1 else 1
    qs = qp.reshape(bx, -1, d)
    ks = kp.reshape(bx, -1, d)
    vs = vp.reshape(bx, -1, d)
    out = torch.zeros_like(qs)
    for bucket in plan:
        groups = bucket.q_tokens.numel() // bucket.n_q
        per_group = max(bucket.n_keys * d, bucket.n_q * bucket.n_keys if bucket.mask_ids is not None else 0)
        step = max(1, _CHUNK_ELEMENTS // (per_group * bx))
        q_all = bucket.q_tokens.to(q.device)
        kv_all = bucket.kv_tokens.to(q.device)
        for g0 in range(0, groups, step):
            g1 = min(g0 + step, groups)
            q_rows = q_all[g0 * bucket.n_q : g1 * bucket.n_q]
            kv_rows = kv_all[g0 * bucket.n_keys : g1 * bucket.n_keys]
            qg = qs.index_select(1, q_rows).view(bx, g1 - g0, bucket.n_q, d)
            kg = ks.index_select(1, kv_rows).view(bx, g1 - g0, bucket.n_keys, d)
            vg = vs.index_select(1, kv_rows).view(bx, g1 - g0, bucket.n_keys, d)
            if bucket.mask_ids is None:
                og = F.scaled_dot_product_attention(qg, kg, vg, scale=scale)
            else:
                mask = _element_mask(layout.mask_bits.to(q.device), bucket.mask_ids[g0:g1].to(q.device))
                og = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale)
                og = torch.where(mask.any(-1, keepdim=True), og, 0.0)
            out.index_copy_(1, q_rows, og.reshape(bx, -1, d))
    return out.view(b, h, mq * bm, d)[:, :, :lq]
