"""Pattern: a named, parameterised rule that turns a Geometry into a Layout.

Every pattern defines its exact token-level mask (``video_mask`` over token coordinates; text
tokens follow the joint-attention rule: text queries see everything and every query sees all text
keys, unless ``text_dense=False``, where text only sees text), and the token orders it runs in
(``token_orders``: e.g. frames or 3-D bricks padded to whole blocks, so that its blocks are whole).
Building a Layout never evaluates the whole L x L mask: a pattern first bounds each block from
per-block coordinate ranges (``block_bounds``: which blocks may keep a pair, which surely keep all),
rows that surely keep everything become dense rows, and the exact mask is evaluated only on the
uncertain blocks, a bounded chunk at a time, packed to bits and deduplicated as it goes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from headsparse.kernels.layout import Layout, layout_from_rows, pack_bits
from headsparse.kernels.layout_cache import CACHE
from headsparse.patterns.geometry import Geometry


@dataclass(frozen=True)
class BlockStats:
    """Coordinate ranges of the tokens in each block of an (optionally permuted) sequence.

    ``t_lo/t_hi`` etc. cover the block's video tokens (``has_video`` False: meaningless), ``v_lo/v_hi``
    their video-relative index (t * H * W + y * W + x); ``has_text``/``all_text`` flag text tokens;
    ``tokens`` [n, block] lists each block's tokens (-1 for a padding position, which counts as
    nothing), for patterns whose rule for a key depends on the key alone; ``real`` counts the real ones.
    """

    tokens: Tensor
    real: Tensor
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
        return BlockStats(idx, valid.sum(1), lo(v), hi(v), lo(t), hi(t), lo(y), hi(y), lo(x), hi(x), video.any(1),
                          text.any(1), text.any(1) & (text.sum(1) == valid.sum(1)))

    def key_rule(self, geometry: Geometry, rule) -> tuple[Tensor, Tensor]:
        """(any, all) [n] of ``rule(t, y, x, v)`` over each block's video tokens."""
        valid = self.tokens >= 0
        t, y, x, is_text = geometry.coords(self.tokens.clamp_min(0))
        video = valid & ~is_text
        kept = rule(t, y, x, self.tokens - geometry.video_start) & video
        return kept.any(1), (kept | ~video).all(1) & video.any(1)


@dataclass(frozen=True)
class BlockCoords:
    """Every token's coordinates, block by block ([n, block] each; text and padding tokens read 0), for
    describing what a block pair's exact mask depends on (:meth:`Pattern.block_relations`)."""

    t: Tensor
    y: Tensor
    x: Tensor
    v: Tensor  # video-relative index t * H * W + y * W + x
    is_text: Tensor
    valid: Tensor

    @staticmethod
    def of(geometry: Geometry, tokens: Tensor) -> BlockCoords:
        valid = tokens >= 0
        t, y, x, is_text = geometry.coords(tokens.clamp_min(0))
        video = valid & ~is_text
        zero = torch.zeros((), dtype=t.dtype)
        t, y, x = (torch.where(video, c, zero) for c in (t, y, x))
        v = (t * geometry.height + y) * geometry.width + x
        return BlockCoords(t, y, x, v, is_text & valid, valid)


Relation = tuple[Tensor, Tensor | None, Tensor, Tensor | None]
_PADDING = -(1 << 40)  # a padding key's value in every relation: it never matches a real one


def relative(q_values: Tensor, q_base: Tensor, k_values: Tensor, k: BlockCoords) -> Relation:
    """A relation in which only differences matter: query values (e.g. a window's ends [MQ, a]) measured
    from ``q_base`` [MQ] and key values [NK, b] from their block's smallest real value, in one unit."""
    k_base = torch.where(k.valid, k_values, torch.iinfo(torch.int64).max).min(1).values
    k_base = torch.where(k.valid.any(1), k_base, 0)
    return q_values, q_base, k_values, k_base


def absolute(q_values: Tensor, k_values: Tensor) -> Relation:
    """A relation in which these values matter as they are."""
    return q_values, None, k_values, None


def block_signatures(relations: list[Relation], pos: Tensor, k_valid: Tensor) -> Tensor:
    """int64 [P, c]: block pairs ``pos`` [P, 2] with equal rows have identical exact masks."""
    cols = []
    for qv, q_base, kv, k_base in relations:
        if k_base is not None:
            qv = qv - q_base[:, None]
            kv = kv - k_base[:, None]
        if kv.shape == k_valid.shape:
            kv = torch.where(k_valid, kv, _PADDING)
        q_id = torch.unique(qv, dim=0, return_inverse=True)[1]
        k_id = torch.unique(kv, dim=0, return_inverse=True)[1]
        cols += [q_id[pos[:, 0]], k_id[pos[:, 1]]]
        if k_base is not None:
            cols.append(k_base[pos[:, 1]] - q_base[pos[:, 0]])
    return torch.stack(cols, 1)


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

    def to_dict(self) -> dict[str, Any]:
        """{"pattern": name, **parameters} with tuples written as lists: how plans and caches record it."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params().items()}
        return {"pattern": self.name, **params}

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

    def block_relations(self, g: Geometry, q: BlockCoords, k: BlockCoords) -> list[Relation] | None:
        """What a (query block, key block) pair's exact mask depends on besides which tokens are text or
        padding: :func:`relative` / :func:`absolute` relations over the blocks' coordinates, or None.

        Pairs equal in all of them have equal masks, so the layout builder evaluates one pair per
        distinct description instead of every pair (a window is the same everywhere inside the grid).
        Default: None (every pair is evaluated).
        """
        return None

    # ------------------------------------------------------------------ execution order
    def order_candidates(self, geometry: Geometry, block_m: int,
                         block_n: int) -> list[tuple[Tensor | None, Tensor | None]]:
        """Token orders the pattern could run in, as (query order, key order): int64 position -> token,
        -1 for a padding position, None for the natural order. Default: the natural order only."""
        return [(None, None)]

    def token_orders(self, geometry: Geometry, block_m: int, block_n: int) -> tuple[Tensor | None, Tensor | None]:
        """The candidate order with the least executor work: fewest visited blocks (a partial block
        counts a quarter more: it also loads and applies its mask), from the block bounds alone."""
        candidates = self.order_candidates(geometry, block_m, block_n)
        if len(candidates) == 1:
            return candidates[0]
        length = geometry.seq_len

        def work(orders: tuple[Tensor | None, Tensor | None]) -> float:
            q_tok = torch.arange(length) if orders[0] is None else orders[0]
            k_tok = torch.arange(length) if orders[1] is None else orders[1]
            qs, ks = BlockStats.of(geometry, q_tok, block_m), BlockStats.of(geometry, k_tok, block_n)
            maybe, surely = self.block_bounds(geometry, qs, ks)
            maybe = maybe & (ks.real > 0)[None, :]
            full = surely & (ks.real == block_n)[None, :]
            return float(maybe.sum()) + 0.25 * float((maybe & ~full).sum())

        return min(candidates, key=work)

    def order_shortlist(self, geometry: Geometry, block_m: int,
                        block_n: int) -> list[tuple[Tensor | None, Tensor | None]]:
        """The orders worth building exactly, the layout with the fewest visited blocks kept (the first on
        ties). Default: the one :meth:`token_orders` estimates cheapest."""
        return [self.token_orders(geometry, block_m, block_n)]

    # ------------------------------------------------------------------ block bounds
    def video_block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        """(maybe, surely) [MQ, NK] for the video parts of blocks; default: nothing is known."""
        shape = (q.t_lo.numel(), k.t_lo.numel())
        return torch.ones(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)

    def block_bounds(self, g: Geometry, q: BlockStats, k: BlockStats) -> tuple[Tensor, Tensor]:
        """(maybe, surely) [MQ, NK]: blocks that may keep a pair, blocks that keep every real pair."""
        maybe_v, surely_v = self.video_block_bounds(g, q, k)
        both_video = q.has_video[:, None] & k.has_video[None, :]
        maybe = both_video & maybe_v
        if self.text_dense:
            maybe = maybe | q.has_text[:, None] | k.has_text[None, :]
            # Every pair with a text token is kept; video pairs where the video bound says so (a side
            # without video tokens has only text pairs).
            surely = torch.where(both_video, surely_v, True)
        else:
            maybe = maybe | (q.has_text[:, None] & k.has_text[None, :])
            pure_video = (~q.has_text)[:, None] & (~k.has_text)[None, :]
            surely = (surely_v & both_video & pure_video) | (q.all_text[:, None] & k.all_text[None, :])
        return maybe, surely & maybe

    # ------------------------------------------------------------------ layout
    def layout(self, geometry: Geometry, *, num_heads: int = 1, block_m: int = 128, block_n: int = 128) -> Layout:
        """The Layout of this pattern for ``num_heads`` heads (cached, within the layout cache's byte bound)."""
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a headsparse Geometry, got {type(geometry).__name__}")
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        single = CACHE.get(("pattern", self, geometry, block_m, block_n),
                           lambda: build_layout(self, geometry, block_m, block_n))
        if num_heads == 1:
            return single
        # Cached as a whole so the executors' per-layout caches (BlockMask, grouped plan) are reused.
        return CACHE.get(("pattern", self, geometry, block_m, block_n, num_heads),
                         lambda: single.repeat_heads(num_heads))


def clear_layout_cache() -> None:
    """Forget every cached pattern layout (for cold build-time measurements)."""
    CACHE.clear("pattern")


# Elements of the element-mask chunk evaluated at once: bounds the build's temporaries at any size.
MASK_CHUNK_ELEMENTS = 1 << 22


class _MaskTable:
    """Distinct packed masks, deduplicated across chunks by a 64-bit hash checked for equality."""

    def __init__(self, words: int, block_m: int) -> None:
        self.rows: list[Tensor] = []
        self.by_hash: dict[int, list[int]] = {}
        gen = torch.Generator().manual_seed(1234)
        self.weights = torch.randint(1, 2**62, (block_m * words,), generator=gen, dtype=torch.int64)

    def ids(self, packed: Tensor) -> Tensor:
        """int64 [n]: the table row of each packed mask [n, bm, words] (new ones are added)."""
        flat = packed.flatten(1)
        uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
        hashes = (uniq.to(torch.int64) * self.weights).sum(1).tolist()
        rows = []
        for i, h in enumerate(hashes):
            found = None
            for r in self.by_hash.get(h, []):
                if torch.equal(self.rows[r], uniq[i]):
                    found = r
                    break
            if found is None:
                found = len(self.rows)
                self.rows.append(uniq[i])
                self.by_hash.setdefault(h, []).append(found)
            rows.append(found)
        return torch.tensor(rows, dtype=torch.int64)[inverse]

    def tensor(self, block_m: int, words: int) -> Tensor:
        if not self.rows:
            return torch.zeros(0, block_m, words, dtype=torch.int32)
        return torch.stack(self.rows).view(-1, block_m, words).to(torch.int32)


def _whole_blocks(order: Tensor | None, block: int) -> Tensor | None:
    """An order padded with -1 to a multiple of the block (None stays None)."""
    if order is None or order.numel() % block == 0:
        return order
    return torch.cat([order, torch.full(((-order.numel()) % block,), -1, dtype=order.dtype)])


def build_layout(pattern: Pattern, geometry: Geometry, block_m: int, block_n: int) -> Layout:
    """One head's Layout, in bounded time and memory (see the module docstring), in the order of the
    pattern's shortlist that visits the fewest blocks."""
    built = [_build_in_order(pattern, geometry, block_m, block_n, *orders)
             for orders in pattern.order_shortlist(geometry, block_m, block_n)]
    return min(built, key=lambda layout: int(layout.visited_per_structure().sum()))


def _build_in_order(pattern: Pattern, geometry: Geometry, block_m: int, block_n: int,
                    q_order: Tensor | None, kv_order: Tensor | None) -> Layout:
    length = geometry.seq_len
    q_order, kv_order = _whole_blocks(q_order, block_m), _whole_blocks(kv_order, block_n)
    q_tok = torch.arange(length) if q_order is None else q_order
    k_tok = torch.arange(length) if kv_order is None else kv_order
    q_stats = BlockStats.of(geometry, q_tok, block_m)
    same = ((q_order is None and kv_order is None) or (q_order is not None and kv_order is not None
            and torch.equal(q_order, kv_order))) and block_m == block_n
    k_stats = q_stats if same else BlockStats.of(geometry, k_tok, block_n)
    maybe, surely = pattern.block_bounds(geometry, q_stats, k_stats)
    has_keys = k_stats.real > 0
    complete = k_stats.real == block_n
    # A row that surely keeps every real key is dense: a flag, no block list.
    dense = (surely | ~has_keys[None, :]).all(1) & (q_stats.real > 0)
    full = surely & complete[None, :] & ~dense[:, None]
    uncertain = maybe & has_keys[None, :] & ~full & ~dense[:, None]
    pos = uncertain.nonzero()
    words = block_n // 32
    table = _MaskTable(words, block_m)
    kept_rows, kept_cols, kept_ids, promoted = [], [], [], []
    if pos.numel():
        # Padding query rows repeat the block's first real token (they are cropped; this keeps column
        # masks row-constant); padding keys are never kept.
        q_blocks = q_stats.tokens
        first = q_blocks.gather(1, (q_blocks >= 0).to(torch.int8).argmax(1, keepdim=True))
        q_rows = torch.where(q_blocks >= 0, q_blocks, first)
        k_blocks = k_stats.tokens
        # Evaluate one pair per distinct description of what the mask depends on, when the pattern
        # gives one (text and padding always among it), and copy the outcome to the others.
        q_coords, k_coords = BlockCoords.of(geometry, q_rows), BlockCoords.of(geometry, k_blocks)
        relations = pattern.block_relations(geometry, q_coords, k_coords)
        if relations is not None:
            kinds = absolute(q_coords.is_text.long(), k_coords.is_text.long() + 2 * (~k_coords.valid).long())
            sig = block_signatures([kinds, *relations], pos, k_coords.valid)
            _, inverse = torch.unique(sig, dim=0, return_inverse=True)
            reps = torch.full((int(inverse.max()) + 1,), pos.shape[0], dtype=torch.int64)
            reps.scatter_reduce_(0, inverse, torch.arange(pos.shape[0]), "amin")
        else:
            inverse, reps = torch.arange(pos.shape[0]), torch.arange(pos.shape[0])
        outcome = torch.zeros(reps.numel(), dtype=torch.int8)  # 0 keeps nothing, 1 partial, 2 keeps all
        mask_id = torch.zeros(reps.numel(), dtype=torch.int64)
        step = max(1, MASK_CHUNK_ELEMENTS // (block_m * block_n))
        for a in range(0, reps.numel(), step):
            p = pos[reps[a : a + step]]
            qi, ki = q_rows[p[:, 0]], k_blocks[p[:, 1]]  # [P, bm], [P, bn]
            kept = pattern.mask(geometry, qi[:, :, None], ki.clamp_min(0)[:, None, :]) & (ki >= 0)[:, None, :]
            any_kept = kept.flatten(1).any(1)
            all_kept = kept.flatten(1).all(1)  # only possible for a complete key block
            part = any_kept & ~all_kept
            outcome[a : a + step] = torch.where(all_kept, 2, part.to(torch.int8))
            if part.any():
                ids = torch.zeros(p.shape[0], dtype=torch.int64)
                ids[part] = table.ids(pack_bits(kept[part]))
                mask_id[a : a + step] = ids
        outcome, mask_id = outcome[inverse], mask_id[inverse]
        promoted.append(pos[outcome == 2])
        part = outcome == 1
        kept_rows.append(pos[part, 0])
        kept_cols.append(pos[part, 1])
        kept_ids.append(mask_id[part])
    full_pos = torch.cat([full.nonzero(), *promoted]) if promoted else full.nonzero()
    nk = maybe.shape[1]
    full_pos = full_pos[torch.argsort(full_pos[:, 0] * nk + full_pos[:, 1])]
    if kept_rows:
        part_rows, part_cols, part_ids = torch.cat(kept_rows), torch.cat(kept_cols), torch.cat(kept_ids)
    else:
        part_rows = part_cols = part_ids = torch.zeros(0, dtype=torch.int64)
    return layout_from_rows(
        q_len=length, kv_len=length, block_m=block_m, block_n=block_n, mq=maybe.shape[0], nk=nk,
        full_rows=full_pos[:, 0], full_cols=full_pos[:, 1], part_rows=part_rows, part_cols=part_cols,
        part_ids=part_ids, mask_table=table.tensor(block_m, words), dense_rows=dense,
        q_order=q_order, kv_order=kv_order,
    )
