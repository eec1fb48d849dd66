"""CPU executor: batched SDPA over groups of query blocks that share their keys.

Query blocks of one structure whose rows are identical (every block inside a frame under a spatial
pattern, every block of a tile under a tiled one) form a group. When every partial block of a group
keeps the same columns in every row (a *column mask*: frame edges, padding positions), the group's
keys are exactly a list of positions: they are gathered once, without holes, and the group runs as
one unmasked SDPA problem with the large-tile efficiency of dense attention. A group whose rows
differ in only a few ways (a query block straddling two frames) is split into row sets, each an
unmasked problem over exactly its keys. Other groups gather their key blocks whole and pass SDPA an
element mask. Every head of a structure runs the same problems; problems of equal shape are batched
into one call, in chunks that bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from headsparse.kernels.layout import Layout, unpack_bits

# Upper bound on the elements of one gathered K (or V) buffer, and of one mask, per SDPA call.
_CHUNK_ELEMENTS = 32 * 1024 * 1024

# A group whose element masks differ between rows is split into row sets with identical masks
# when there are at most this many distinct rows (e.g. a query block straddling two frames);
# otherwise it runs as one masked SDPA problem.
_MAX_ROW_PATTERNS = 4


@dataclass(frozen=True)
class _Bucket:
    """SDPA problems of one shape: ``n_q`` query positions and ``n_keys`` key positions each.

    Rows index the padded q/k/v viewed as [batch, R * positions, D] with R = LB * H (structure
    problems repeated for each of the structure's heads).
    """

    q_tokens: Tensor  # int64 [G * n_q]
    kv_tokens: Tensor  # int64 [G * n_keys]
    n_q: int
    n_keys: int
    mask_ids: Tensor | None  # int32 [G, n_q // bm, n_keys // bn]: -2 keeps all, >= 0 mask row; None: no mask

    def nbytes(self) -> int:
        tensors = [self.q_tokens, self.kv_tokens] + ([self.mask_ids] if self.mask_ids is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def _row_signatures(layout: Layout) -> list[tuple]:
    """Per row of every structure: (dense, full key blocks, partial (key block, mask id) pairs)."""
    fp, fi = layout.full_ptr.tolist(), layout.full_idx.tolist()
    pp, pi, pm = layout.part_ptr.tolist(), layout.part_idx.tolist(), layout.part_mask.tolist()
    dense = layout.dense_rows.tolist()
    return [(dense[r], tuple(fi[fp[r] : fp[r + 1]]), tuple(zip(pi[pp[r] : pp[r + 1]], pm[pp[r] : pp[r + 1]],
                                                              strict=True)))
            for r in range(len(dense))]


def plan_groups(layout: Layout) -> list[_Bucket]:
    """Group identical rows per structure and bucket the SDPA problems by shape (cached on the layout)."""
    if "grouped_plan" in layout._cache:
        return layout._cache["grouped_plan"]
    mq, nk = layout.num_q_blocks, layout.num_kv_blocks
    bm, bn = layout.block_m, layout.block_n
    pq, pk = mq * bm, nk * bn
    bits = layout.mask_bits.cpu()
    row_constant = (bits == bits[:, :1]).all(dim=(1, 2)) if bits.shape[0] else torch.zeros(0, dtype=torch.bool)
    columns = unpack_bits(bits[:, 0]) if bits.shape[0] else torch.zeros(0, bn, dtype=torch.bool)
    key_ok = layout.key_valid().cpu()  # [S, PK]
    signatures = _row_signatures(layout.to("cpu"))
    heads_of = [[] for _ in range(layout.num_structures)]  # structure -> flat (batch item, head) rows R
    for r, s in enumerate(layout.heads.flatten().tolist()):
        heads_of[s].append(r)
    buckets: dict[tuple[int, int, bool], tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}

    def add(s: int, q_pos: Tensor, kv_pos: Tensor, mask_ids: Tensor | None) -> None:
        entry = buckets.setdefault((q_pos.numel(), kv_pos.numel(), mask_ids is not None), ([], [], []))
        for r in heads_of[s]:
            entry[0].append(r * pq + q_pos)
            entry[1].append(r * pk + kv_pos)
            if mask_ids is not None:
                entry[2].append(mask_ids)

    block_cols = torch.arange(bn)
    for s in range(layout.num_structures):
        if not heads_of[s]:
            continue
        groups: dict[tuple, list[int]] = {}
        for m in range(mq):
            groups.setdefault(signatures[s * mq + m], []).append(m)
        for (dense, full, part), members in groups.items():
            q_blocks = torch.tensor(members)
            q_pos = (q_blocks[:, None] * bm + torch.arange(bm)[None, :]).reshape(-1)
            if dense:
                add(s, q_pos, key_ok[s].nonzero().flatten(), None)
                continue
            if not full and not part:
                continue  # these query blocks keep no key: their output stays zero
            visited = sorted([(c, -2) for c in full] + list(part))
            cols = torch.tensor([c for c, _ in visited])
            ids = torch.tensor([i for _, i in visited], dtype=torch.int32)
            kv_pos = (cols[:, None] * bn + block_cols[None, :]).reshape(-1)
            is_partial = ids >= 0
            if not is_partial.any():
                add(s, q_pos, kv_pos, None)
                continue
            if bool(row_constant[ids[is_partial].long()].all()):
                # Every partial block keeps the same columns in every row: the keys are a plain position list.
                keep = torch.ones(cols.numel(), bn, dtype=torch.bool)
                keep[is_partial] = columns[ids[is_partial].long()]
                add(s, q_pos, kv_pos[keep.reshape(-1)], None)
                continue
            element = _element_mask(bits, ids[None, None].expand(1, 1, -1))[0]  # [bm, n_keys]
            patterns, row_pattern = torch.unique(element, dim=0, return_inverse=True)
            if patterns.shape[0] <= _MAX_ROW_PATTERNS:
                # Rows sharing one mask (e.g. the two frames of a straddling block) become separate
                # unmasked problems over exactly their keys.
                rows_of = row_pattern.repeat(len(members))
                for p in range(patterns.shape[0]):
                    if patterns[p].any():
                        add(s, q_pos[rows_of == p], kv_pos[patterns[p]], None)
                continue
            add(s, q_pos, kv_pos, ids[None, :].expand(len(members), -1).contiguous())  # [nq blocks, visited]
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
    for blocks that keep every pair.
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
    """Exact attention under ``layout`` for q/k/v [B, H, P, D] in the layout's order positions."""
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
