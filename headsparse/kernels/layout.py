"""Layout: which key blocks every (batch, head, query block) visits.

A Layout is the contract between the pattern engines and the executors. For every query block it
lists *full* key blocks (every element kept, no mask needed) and *partial* key blocks (an element
mask, stored once per distinct mask as packed bits). An optional per-head token permutation is
applied to q/k/v before the block structure is read and undone on the output, so that patterns such
as temporal heads (frame-major -> token-major) become block-aligned.

Sequence lengths need not be multiples of the block sizes: keys past the end are masked inside the
last key block (which is therefore always partial when the length is ragged), and query rows past
the end are computed on padding and cropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Layout", "BLOCK_SKIP", "BLOCK_PARTIAL", "BLOCK_FULL"]

BLOCK_SKIP = 0
BLOCK_PARTIAL = 1
BLOCK_FULL = 2

_WORD = 32  # bits per packed mask word (int32)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a boolean [..., n] mask (n a multiple of 32) into int32 words [..., n // 32].

    Bit ``b`` of word ``w`` holds column ``w * 32 + b``.
    """
    *lead, n = mask.shape
    _check(n % _WORD == 0, f"pack_bits: last dimension {n} is not a multiple of {_WORD}")
    weights = torch.bitwise_left_shift(
        torch.ones((), dtype=torch.int64, device=mask.device),
        torch.arange(_WORD, device=mask.device, dtype=torch.int64),
    )
    words = (mask.reshape(*lead, n // _WORD, _WORD).to(torch.int64) * weights).sum(-1)
    # Reinterpret the low 32 bits as signed int32 (bit 31 set -> negative value).
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_bits(words: Tensor) -> Tensor:
    """Inverse of :func:`pack_bits`: int32 [..., w] -> bool [..., w * 32]."""
    shifts = torch.arange(_WORD, device=words.device, dtype=torch.int32)
    bits = torch.bitwise_and(torch.bitwise_right_shift(words.unsqueeze(-1), shifts), 1)
    return bits.reshape(*words.shape[:-1], words.shape[-1] * _WORD).bool()


def inverse_permutation(perm: Tensor) -> Tensor:
    """Inverse of a batch of permutations along the last dimension."""
    inv = torch.empty_like(perm)
    src = torch.arange(perm.shape[-1], device=perm.device, dtype=perm.dtype).expand_as(perm)
    inv.scatter_(-1, perm, src)
    return inv


def _sorted_block_indices(selected: Tensor) -> tuple[Tensor, Tensor]:
    """For a bool [..., n] selection return (count [...], ascending indices [..., max count])."""
    counts = selected.sum(-1, dtype=torch.int32)
    width = int(counts.max().item()) if counts.numel() else 0
    order = torch.sort((~selected).to(torch.int8), dim=-1, stable=True).indices
    return counts, order[..., :width].to(torch.int32).contiguous()


@dataclass(frozen=True, eq=False)
class Layout:
    """Block-sparse attention structure for all heads of one attention call.

    Shapes (``LB`` is 1 when one structure serves every batch element, else the batch size;
    ``H`` heads; ``MQ``/``NK`` query/key blocks; ``F``/``P`` the widest full/partial row; ``U``
    distinct partial masks):

    - ``full_num`` int32 [LB, H, MQ], ``full_idx`` int32 [LB, H, MQ, F]
    - ``part_num`` int32 [LB, H, MQ], ``part_idx`` int32 [LB, H, MQ, P],
      ``part_mask`` int32 [LB, H, MQ, P] (row of ``mask_bits`` for that partial block)
    - ``mask_bits`` int32 [U, block_m, block_n // 32], packed element masks
    - ``perm`` int64 [H, L] or None: position ``a`` of the permuted sequence holds token
      ``perm[h, a]``; block structure and masks are expressed in permuted positions.

    Indices past ``*_num`` in a row are padding and never read.
    """

    q_len: int
    kv_len: int
    block_m: int
    block_n: int
    full_num: Tensor
    full_idx: Tensor
    part_num: Tensor
    part_idx: Tensor
    part_mask: Tensor
    mask_bits: Tensor
    perm: Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ shape facts
    @property
    def batch(self) -> int:
        return self.full_num.shape[0]

    @property
    def num_heads(self) -> int:
        return self.full_num.shape[1]

    @property
    def num_q_blocks(self) -> int:
        return math.ceil(self.q_len / self.block_m)

    @property
    def num_kv_blocks(self) -> int:
        return math.ceil(self.kv_len / self.block_n)

    @property
    def device(self) -> torch.device:
        return self.full_num.device

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every invariant the executors rely on; raise ValueError naming the bad field."""
        _check(self.q_len > 0 and self.kv_len > 0, f"q_len/kv_len must be positive, got {self.q_len}/{self.kv_len}")
        _check(self.block_m >= 16, f"block_m must be >= 16, got {self.block_m}")
        _check(
            self.block_n >= _WORD and self.block_n % _WORD == 0,
            f"block_n must be a positive multiple of {_WORD}, got {self.block_n}",
        )
        mq, nk = self.num_q_blocks, self.num_kv_blocks
        for name in ("full_num", "full_idx", "part_num", "part_idx", "part_mask", "mask_bits"):
            t = getattr(self, name)
            _check(isinstance(t, Tensor), f"{name} must be a torch.Tensor")
            _check(t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}")
            _check(t.device == self.device, f"{name} is on {t.device}, full_num on {self.device}")
        lb, h = self.full_num.shape[:2] if self.full_num.dim() == 3 else (None, None)
        _check(self.full_num.dim() == 3 and self.full_num.shape[2] == mq,
               f"full_num must be [LB, H, {mq}], got {tuple(self.full_num.shape)}")
        _check(tuple(self.part_num.shape) == (lb, h, mq),
               f"part_num must be {(lb, h, mq)}, got {tuple(self.part_num.shape)}")
        _check(self.full_idx.dim() == 4 and tuple(self.full_idx.shape[:3]) == (lb, h, mq),
               f"full_idx must be [{lb}, {h}, {mq}, F], got {tuple(self.full_idx.shape)}")
        _check(self.part_idx.dim() == 4 and tuple(self.part_idx.shape[:3]) == (lb, h, mq),
               f"part_idx must be [{lb}, {h}, {mq}, P], got {tuple(self.part_idx.shape)}")
        _check(self.part_mask.shape == self.part_idx.shape,
               f"part_mask shape {tuple(self.part_mask.shape)} != part_idx shape {tuple(self.part_idx.shape)}")
        _check(self.mask_bits.dim() == 3 and tuple(self.mask_bits.shape[1:]) == (self.block_m, self.block_n // _WORD),
               f"mask_bits must be [U, {self.block_m}, {self.block_n // _WORD}], got {tuple(self.mask_bits.shape)}")
        _check(bool((self.full_num >= 0).all()) and bool((self.full_num <= self.full_idx.shape[3]).all()),
               "full_num out of range [0, full_idx.shape[3]]")
        _check(bool((self.part_num >= 0).all()) and bool((self.part_num <= self.part_idx.shape[3]).all()),
               "part_num out of range [0, part_idx.shape[3]]")
        full_sel = self._row_selection(self.full_num, self.full_idx)
        part_sel = self._row_selection(self.part_num, self.part_idx)
        if full_sel.any():
            fi = self.full_idx[full_sel]
            _check(bool(((fi >= 0) & (fi < nk)).all()), f"full_idx holds a key block outside [0, {nk})")
        if part_sel.any():
            pi = self.part_idx[part_sel]
            _check(bool(((pi >= 0) & (pi < nk)).all()), f"part_idx holds a key block outside [0, {nk})")
            pm = self.part_mask[part_sel]
            _check(bool(((pm >= 0) & (pm < self.mask_bits.shape[0])).all()),
                   f"part_mask holds a mask id outside [0, {self.mask_bits.shape[0]})")
        visits = self._visit_counts(full_sel, part_sel)
        _check(int(visits.max().item()) <= 1 if visits.numel() else True,
               "a key block is listed twice in one query row (as full and partial, or repeated)")
        if self.kv_len % self.block_n and full_sel.any():
            _check(not bool((self.full_idx[full_sel] == nk - 1).any()),
                   f"kv_len {self.kv_len} is not a multiple of block_n {self.block_n}: the last key block "
                   "holds padding and must be partial, not full")
        if self.perm is not None:
            _check(self.q_len == self.kv_len, "perm needs q_len == kv_len (self-attention)")
            _check(self.perm.dtype == torch.int64, f"perm must be int64, got {self.perm.dtype}")
            _check(tuple(self.perm.shape) == (h, self.q_len),
                   f"perm must be [{h}, {self.q_len}], got {tuple(self.perm.shape)}")
            _check(self.perm.device == self.device, f"perm is on {self.perm.device}, full_num on {self.device}")
            ok = torch.sort(self.perm, dim=-1).values == torch.arange(self.q_len, device=self.device)
            _check(bool(ok.all()), "perm is not a permutation of range(L) for every head")

    @staticmethod
    def _row_selection(num: Tensor, idx: Tensor) -> Tensor:
        return torch.arange(idx.shape[-1], device=idx.device) < num.unsqueeze(-1)

    def _visit_counts(self, full_sel: Tensor, part_sel: Tensor) -> Tensor:
        counts = torch.zeros(*self.full_num.shape, self.num_kv_blocks, dtype=torch.int32, device=self.device)
        counts.scatter_add_(-1, self.full_idx.long().clamp(0, self.num_kv_blocks - 1), full_sel.int())
        counts.scatter_add_(-1, self.part_idx.long().clamp(0, self.num_kv_blocks - 1), part_sel.int())
        return counts

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_block_kinds(
        cls,
        kinds: Tensor,
        partial_masks: Tensor | None,
        *,
        q_len: int,
        kv_len: int,
        block_m: int,
        block_n: int,
        perm: Tensor | None = None,
    ) -> Layout:
        """Build from a block map and the element masks of its partial blocks.

        ``kinds`` is int [LB, H, MQ, NK] (or [H, MQ, NK]) of BLOCK_SKIP / BLOCK_PARTIAL /
        BLOCK_FULL. ``partial_masks`` is bool [P, block_m, block_n], one per partial entry in the
        row-major order of ``(kinds == BLOCK_PARTIAL).nonzero()``, in permuted positions. Key
        padding of a ragged last block is masked here; a full last block becomes partial.
        """
        if kinds.dim() == 3:
            kinds = kinds.unsqueeze(0)
        mq, nk = math.ceil(q_len / block_m), math.ceil(kv_len / block_n)
        _check(kinds.dim() == 4 and tuple(kinds.shape[2:]) == (mq, nk),
               f"kinds must be [LB, H, {mq}, {nk}] for q_len={q_len}, kv_len={kv_len}, "
               f"blocks=({block_m}, {block_n}); got {tuple(kinds.shape)}")
        device = kinds.device
        kinds = kinds.to(torch.int8).clone()
        n_part = int((kinds == BLOCK_PARTIAL).sum().item())
        if partial_masks is None:
            _check(n_part == 0, f"kinds has {n_part} partial blocks but partial_masks is None")
            partial_masks = torch.zeros(0, block_m, block_n, dtype=torch.bool, device=device)
        _check(partial_masks.dtype == torch.bool, f"partial_masks must be bool, got {partial_masks.dtype}")
        _check(tuple(partial_masks.shape) == (n_part, block_m, block_n),
               f"partial_masks must be [{n_part}, {block_m}, {block_n}], got {tuple(partial_masks.shape)}")
        _check(partial_masks.device == device, f"partial_masks on {partial_masks.device}, kinds on {device}")
        tail = kv_len - (nk - 1) * block_n
        if tail < block_n:
            # The last key block holds padding: it can never be full.
            valid_cols = torch.arange(block_n, device=device) < tail
            last = kinds[..., nk - 1]
            was_full = last == BLOCK_FULL
            part_pos = (kinds == BLOCK_PARTIAL).nonzero()
            part_is_last = part_pos[:, 3] == nk - 1
            partial_masks = partial_masks.clone()
            partial_masks[part_is_last] &= valid_cols
            if was_full.any():
                last[was_full] = BLOCK_PARTIAL
                kinds[..., nk - 1] = last
                new_pos = (kinds == BLOCK_PARTIAL).nonzero()
                merged = torch.empty(new_pos.shape[0], block_m, block_n, dtype=torch.bool, device=device)
                is_new = torch.zeros(*kinds.shape, dtype=torch.bool, device=device)
                is_new[..., nk - 1] = was_full
                new_flags = is_new[tuple(new_pos.T)]
                merged[~new_flags] = partial_masks
                merged[new_flags] = valid_cols.expand(block_m, block_n)
                partial_masks = merged
        # Drop partial blocks that keep nothing; promote partial blocks that keep everything
        # (only possible away from the ragged edge).
        if partial_masks.shape[0]:
            keeps = partial_masks.flatten(1)
            empty = ~keeps.any(1)
            full = keeps.all(1)
            if empty.any() or full.any():
                pos = (kinds == BLOCK_PARTIAL).nonzero()
                kinds[tuple(pos[empty].T)] = BLOCK_SKIP
                kinds[tuple(pos[full].T)] = BLOCK_FULL
                partial_masks = partial_masks[~(empty | full)]
        packed = pack_bits(partial_masks)
        if packed.shape[0]:
            table, inverse = torch.unique(packed.flatten(1), dim=0, return_inverse=True)
            table = table.reshape(-1, block_m, block_n // _WORD)
        else:
            table = torch.zeros(0, block_m, block_n // _WORD, dtype=torch.int32, device=device)
            inverse = torch.zeros(0, dtype=torch.int64, device=device)
        full_num, full_idx = _sorted_block_indices(kinds == BLOCK_FULL)
        part_num, part_idx = _sorted_block_indices(kinds == BLOCK_PARTIAL)
        ids = torch.full(kinds.shape, -1, dtype=torch.int32, device=device)
        ids[kinds == BLOCK_PARTIAL] = inverse.to(torch.int32)
        part_mask = torch.gather(ids, -1, part_idx.long()).clamp_min(0).to(torch.int32)
        return cls(
            q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n,
            full_num=full_num, full_idx=full_idx, part_num=part_num, part_idx=part_idx,
            part_mask=part_mask.contiguous(), mask_bits=table.contiguous(), perm=perm,
        )

    @classmethod
    def from_dense_mask(
        cls, mask: Tensor, *, block_m: int = 128, block_n: int = 128, perm: Tensor | None = None
    ) -> Layout:
        """Build from an element mask [LB, H, Lq, Lk] (or [H, Lq, Lk]) in *original* token order.

        Meant for tests and small sequences: the whole mask is materialised. With ``perm`` the
        mask is first reordered into permuted positions.
        """
        _check(mask.dtype == torch.bool, f"mask must be bool, got {mask.dtype}")
        if mask.dim() == 3:
            mask = mask.unsqueeze(0)
        _check(mask.dim() == 4, f"mask must be [LB, H, Lq, Lk], got {tuple(mask.shape)}")
        lb, h, lq, lk = mask.shape
        if perm is not None:
            _check(lq == lk, "perm needs a square mask")
            _check(tuple(perm.shape) == (h, lq), f"perm must be [{h}, {lq}], got {tuple(perm.shape)}")
            p = perm.to(mask.device)
            rows = p[None, :, :, None].expand(lb, h, lq, lk)
            mask = torch.gather(mask, 2, rows)
            cols = p[None, :, None, :].expand(lb, h, lq, lk)
            mask = torch.gather(mask, 3, cols)
        mq, nk = math.ceil(lq / block_m), math.ceil(lk / block_n)
        padded = torch.zeros(lb, h, mq * block_m, nk * block_n, dtype=torch.bool, device=mask.device)
        padded[:, :, :lq, :lk] = mask
        # Padding query rows copy the last real row so they never turn a full block partial.
        padded[:, :, lq:, :] = padded[:, :, lq - 1 : lq, :]
        tiles = padded.reshape(lb, h, mq, block_m, nk, block_n).permute(0, 1, 2, 4, 3, 5)
        keep_any = tiles.any((-1, -2))
        keep_all = tiles.all((-1, -2))
        kinds = torch.where(keep_all, BLOCK_FULL, torch.where(keep_any, BLOCK_PARTIAL, BLOCK_SKIP)).to(torch.int8)
        partial = tiles[kinds == BLOCK_PARTIAL]
        return cls.from_block_kinds(
            kinds, partial, q_len=lq, kv_len=lk, block_m=block_m, block_n=block_n, perm=perm
        )

    @classmethod
    def dense(
        cls, num_heads: int, q_len: int, kv_len: int | None = None, *, block_m: int = 128,
        block_n: int = 128, device: torch.device | str = "cpu",
    ) -> Layout:
        """Every head attends to every key."""
        kv_len = q_len if kv_len is None else kv_len
        mq, nk = math.ceil(q_len / block_m), math.ceil(kv_len / block_n)
        kinds = torch.full((1, num_heads, mq, nk), BLOCK_FULL, dtype=torch.int8, device=device)
        return cls.from_block_kinds(kinds, None, q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n)

    @classmethod
    def concat_heads(cls, layouts: list[Layout]) -> Layout:
        """One Layout whose heads are those of ``layouts`` in order (one fused launch for a layer).

        All must share lengths, block sizes and batch; heads without a permutation get the
        identity when any other head has one.
        """
        if not layouts:
            raise ValueError("concat_heads needs at least one layout")
        first = layouts[0]
        for i, lay in enumerate(layouts):
            key = (lay.q_len, lay.kv_len, lay.block_m, lay.block_n, lay.batch)
            ref = (first.q_len, first.kv_len, first.block_m, first.block_n, first.batch)
            _check(key == ref, f"layouts[{i}] has (q_len, kv_len, block_m, block_n, batch)={key}, layouts[0] {ref}")
        device = first.device
        offsets = torch.tensor([0] + [lay.mask_bits.shape[0] for lay in layouts[:-1]]).cumsum(0).tolist()

        def widen(t: Tensor, width: int) -> Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[-1]))

        fw = max(lay.full_idx.shape[-1] for lay in layouts)
        pw = max(lay.part_idx.shape[-1] for lay in layouts)
        perm = None
        if any(lay.perm is not None for lay in layouts):
            ident = torch.arange(first.q_len, device=device)
            perm = torch.cat([
                lay.perm if lay.perm is not None else ident.expand(lay.num_heads, -1) for lay in layouts
            ])
        return cls(
            q_len=first.q_len, kv_len=first.kv_len, block_m=first.block_m, block_n=first.block_n,
            full_num=torch.cat([lay.full_num for lay in layouts], 1),
            full_idx=torch.cat([widen(lay.full_idx, fw) for lay in layouts], 1),
            part_num=torch.cat([lay.part_num for lay in layouts], 1),
            part_idx=torch.cat([widen(lay.part_idx, pw) for lay in layouts], 1),
            part_mask=torch.cat([widen(lay.part_mask + off, pw) for lay, off in zip(layouts, offsets, strict=True)], 1),
            mask_bits=torch.cat([lay.mask_bits for lay in layouts]),
            perm=perm,
        )

    def repeat_heads(self, num_heads: int) -> Layout:
        """This layout (of one head) for ``num_heads`` heads, sharing its mask table."""
        _check(self.num_heads == 1, f"repeat_heads needs a one-head layout, got {self.num_heads} heads")
        return Layout(
            q_len=self.q_len, kv_len=self.kv_len, block_m=self.block_m, block_n=self.block_n,
            full_num=self.full_num.expand(-1, num_heads, -1).contiguous(),
            full_idx=self.full_idx.expand(-1, num_heads, -1, -1).contiguous(),
            part_num=self.part_num.expand(-1, num_heads, -1).contiguous(),
            part_idx=self.part_idx.expand(-1, num_heads, -1, -1).contiguous(),
            part_mask=self.part_mask.expand(-1, num_heads, -1, -1).contiguous(),
            mask_bits=self.mask_bits,
            perm=None if self.perm is None else self.perm.expand(num_heads, -1).contiguous(),
        )

    def select_heads(self, heads: list[int]) -> Layout:
        """The layout of the listed heads only, in that order (sharing the mask table)."""
        _check(len(heads) > 0 and all(0 <= h < self.num_heads for h in heads),
               f"heads must be a non-empty list of indices below {self.num_heads}, got {heads}")
        idx = torch.tensor(heads, device=self.device)
        return Layout(
            q_len=self.q_len, kv_len=self.kv_len, block_m=self.block_m, block_n=self.block_n,
            full_num=self.full_num[:, idx], full_idx=self.full_idx[:, idx], part_num=self.part_num[:, idx],
            part_idx=self.part_idx[:, idx], part_mask=self.part_mask[:, idx], mask_bits=self.mask_bits,
            perm=None if self.perm is None else self.perm[idx],
        )

    # ------------------------------------------------------------------ views and statistics
    def block_kinds(self) -> Tensor:
        """int8 [LB, H, MQ, NK] map of BLOCK_SKIP / BLOCK_PARTIAL / BLOCK_FULL (permuted positions)."""
        if "kinds" not in self._cache:
            kinds = torch.zeros(*self.full_num.shape, self.num_kv_blocks, dtype=torch.int8, device=self.device)
            full_sel = self._row_selection(self.full_num, self.full_idx)
            part_sel = self._row_selection(self.part_num, self.part_idx)
            kinds = kinds.scatter_add(-1, self.full_idx.long() * full_sel, (BLOCK_FULL * full_sel).to(torch.int8))
            kinds = kinds.scatter_add(-1, self.part_idx.long() * part_sel, (BLOCK_PARTIAL * part_sel).to(torch.int8))
            self._cache["kinds"] = kinds
        return self._cache["kinds"]

    def mask_ids(self) -> Tensor:
        """int32 [LB, H, MQ, NK]: the ``mask_bits`` row of each partial block, -1 elsewhere."""
        if "mask_ids" not in self._cache:
            ids = torch.full((*self.full_num.shape, self.num_kv_blocks), -1, dtype=torch.int32, device=self.device)
            sel = self._row_selection(self.part_num, self.part_idx)
            b, h, m, j = sel.nonzero(as_tuple=True)
            ids[b, h, m, self.part_idx[b, h, m, j].long()] = self.part_mask[b, h, m, j]
            self._cache["mask_ids"] = ids
        return self._cache["mask_ids"]

    def inverse_perm(self) -> Tensor | None:
        if self.perm is None:
            return None
        if "inverse_perm" not in self._cache:
            self._cache["inverse_perm"] = inverse_permutation(self.perm)
        return self._cache["inverse_perm"]

    def block_row_mask(self, m0: int, m1: int) -> Tensor:
        """bool [LB, H, (m1 - m0) * block_m, NK * block_n]: element mask of query blocks m0..m1-1.

        In permuted positions and padded lengths; the executors' masked fallback reads it one
        chunk of query blocks at a time so the full mask is never materialised.
        """
        kinds = self.block_kinds()[:, :, m0:m1]
        tiles = (kinds == BLOCK_FULL)[..., None, None].expand(*kinds.shape, self.block_m, self.block_n).clone()
        ids = self.mask_ids()[:, :, m0:m1]
        sel = ids >= 0
        if sel.any():
            tiles[sel] = unpack_bits(self.mask_bits[ids[sel].long()])
        lb, h, rows, nk = kinds.shape
        return tiles.permute(0, 1, 2, 4, 3, 5).reshape(lb, h, rows * self.block_m, nk * self.block_n)

    def to_dense_mask(self, *, permuted: bool = False) -> Tensor:
        """bool [LB, H, Lq, Lk]: the exact element mask, in original token order by default."""
        dense = self.block_row_mask(0, self.num_q_blocks)[:, :, : self.q_len, : self.kv_len]
        if self.perm is None or permuted:
            return dense.contiguous()
        inv = self.inverse_perm()
        lb, h, lq, lk = dense.shape
        dense = torch.gather(dense, 2, inv[None, :, :, None].expand(lb, h, lq, lk))
        return torch.gather(dense, 3, inv[None, :, None, :].expand(lb, h, lq, lk))

    def kept_per_head(self) -> Tensor:
        """int64 [LB, H]: number of (query, key) pairs kept, counting real tokens only."""
        mq, nk = self.num_q_blocks, self.num_kv_blocks
        rows = torch.full((mq,), self.block_m, dtype=torch.int64, device=self.device)
        rows[-1] = self.q_len - (mq - 1) * self.block_m
        cols = torch.full((nk,), self.block_n, dtype=torch.int64, device=self.device)
        cols[-1] = self.kv_len - (nk - 1) * self.block_n
        kinds = self.block_kinds()
        full_area = rows[:, None] * cols[None, :]
        kept = ((kinds == BLOCK_FULL) * full_area).sum((-1, -2))
        ids = self.mask_ids()
        if (ids >= 0).any():
            popcount = unpack_bits(self.mask_bits)  # [U, bm, bn]
            row_valid = torch.arange(self.block_m, device=self.device)[None, :] < rows[:, None]  # [MQ, bm]
            per_row_counts = popcount.sum(-1)  # [U, bm]
            # kept elements of mask u placed in query block m
            kept_um = (per_row_counts[:, None, :] * row_valid[None]).sum(-1)  # [U, MQ]
            m_index = torch.arange(mq, device=self.device)[None, None, :, None].expand_as(ids)
            sel = ids >= 0
            contrib = torch.zeros_like(ids, dtype=torch.int64)
            contrib[sel] = kept_um[ids[sel].long(), m_index[sel]]
            kept = kept + contrib.sum((-1, -2))
        return kept

    def density(self) -> Tensor:
        """float [LB, H]: fraction of (query, key) pairs kept per head."""
        return self.kept_per_head().double() / (self.q_len * self.kv_len)

    def block_density(self) -> Tensor:
        """float [LB, H]: fraction of blocks visited per head (what the executors pay for)."""
        visited = (self.full_num + self.part_num).sum(-1).double()
        return visited / (self.num_q_blocks * self.num_kv_blocks)

    def is_dense(self) -> bool:
        """True when every (query, key) pair of every head is kept (padding aside).

        Such a layout is plain attention whatever its blocks or permutation say, so executors may
        run unmasked dense SDPA on it.
        """
        if "is_dense" not in self._cache:
            self._cache["is_dense"] = bool((self.kept_per_head() == self.q_len * self.kv_len).all())
        return self._cache["is_dense"]

    def to(self, device: torch.device | str) -> Layout:
        device = torch.device(device)
        if device == self.device:
            return self
        return Layout(
            q_len=self.q_len, kv_len=self.kv_len, block_m=self.block_m, block_n=self.block_n,
            full_num=self.full_num.to(device), full_idx=self.full_idx.to(device),
            part_num=self.part_num.to(device), part_idx=self.part_idx.to(device),
            part_mask=self.part_mask.to(device), mask_bits=self.mask_bits.to(device),
            perm=None if self.perm is None else self.perm.to(device),
        )

    def __repr__(self) -> str:
        return (
            f"Layout(batch={self.batch}, heads={self.num_heads}, q_len={self.q_len}, kv_len={self.kv_len}, "
            f"blocks=({self.block_m}, {self.block_n}), block_density={self.block_density().mean().item():.3f}, "
            f"partial_masks={self.mask_bits.shape[0]}, permuted={self.perm is not None})"
        )
