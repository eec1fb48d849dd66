"""Layout: which key blocks every (batch, head, query block) visits, stored in proportion to what it keeps.

A Layout is the contract between the pattern engines and the executors. Its storage grows with the
blocks it keeps, never with L^2:

- **Structures.** Heads that run the same pattern share one *structure*; ``heads`` [LB, H] maps each
  (batch item, head) to its structure, so a layer of 40 spatial heads stores one.
- **Compressed rows.** For every query block of every structure (row ``s * MQ + m``) the *full* key
  blocks (every element kept, no mask) and the *partial* key blocks (an element mask) are listed in
  compressed-row form: ``full_ptr[r] .. full_ptr[r + 1]`` index ``full_idx``, likewise ``part_*``.
- **Dense rows.** A row that keeps every key (a text query in joint attention, every row of a dense
  head) is a flag in ``dense_rows``, not a list of blocks.
- **Masks.** Partial blocks point into ``mask_bits``: each distinct element mask stored once as packed
  bits (bit ``b`` of word ``w`` of row ``i`` is column ``32 w + b``); the same band at another block
  offset is the same mask.
- **Token orders.** A structure may run in its own token order, separately for queries and keys
  (``q_order`` / ``kv_order``: position -> original token, -1 for a padding position). Orders
  make patterns line up with blocks: frame-major -> token-major for temporal heads, 3-D tiles padded
  to whole blocks for windows, key tiles shifted to where strided windows start. Padding positions
  are never kept as keys and their query rows are cropped, so they never change results.

Without an order a structure runs in natural token order; lengths need not be multiples of the
blocks (keys past the end are masked inside the last key block, which is therefore partial when the
length is ragged, and padded query rows are cropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["BLOCK_FULL", "BLOCK_PARTIAL", "BLOCK_SKIP", "Layout", "pack_bits", "popcount", "unpack_bits"]

BLOCK_SKIP = 0
BLOCK_PARTIAL = 1
BLOCK_FULL = 2

_WORD = 32  # bits per packed mask word (int32)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a boolean [..., n] mask (n a multiple of 32) into int32 words [..., n // 32].

    Bit ``b`` of word ``w`` holds column ``w * 32 + b``. Packs eight columns per byte (one small-int
    pass), then reads every four bytes as a little-endian word.
    """
    *lead, n = mask.shape
    _check(n % _WORD == 0, f"pack_bits: last dimension {n} is not a multiple of {_WORD}")
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    octets = (mask.reshape(*lead, n // 8, 8).to(torch.uint8) << shifts).sum(-1, dtype=torch.uint8)
    words = octets.reshape(*lead, n // _WORD, 4).to(torch.int64)
    value = words[..., 0] | (words[..., 1] << 8) | (words[..., 2] << 16) | (words[..., 3] << 24)
    # Reinterpret the low 32 bits as signed int32 (bit 31 set -> negative value).
    return torch.where(value >= 2**31, value - 2**32, value).to(torch.int32)


def unpack_bits(words: Tensor) -> Tensor:
    """Inverse of :func:`pack_bits`: int32 [..., w] -> bool [..., w * 32]."""
    shifts = torch.arange(_WORD, device=words.device, dtype=torch.int32)
    bits = torch.bitwise_and(torch.bitwise_right_shift(words.unsqueeze(-1), shifts), 1)
    return bits.reshape(*words.shape[:-1], words.shape[-1] * _WORD).bool()


def popcount(words: Tensor) -> Tensor:
    """Set bits of each int32 word, as int64 (without unpacking: the SWAR bit count)."""
    x = words.to(torch.int64) & 0xFFFFFFFF
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


def inverse_permutation(perm: Tensor) -> Tensor:
    """Inverse of a batch of permutations along the last dimension."""
    inv = torch.empty_like(perm)
    src = torch.arange(perm.shape[-1], device=perm.device, dtype=perm.dtype).expand_as(perm)
    inv.scatter_(-1, perm, src)
    return inv


def _csr(rows: Tensor, count: int) -> Tensor:
    """int32 [count + 1] row pointers for ``rows`` (int64, sorted ascending)."""
    ptr = torch.zeros(count + 1, dtype=torch.int64, device=rows.device)
    if rows.numel():
        ptr[1:] = torch.bincount(rows, minlength=count).cumsum(0)
    return ptr.to(torch.int32)


def _row_of(ptr: Tensor) -> Tensor:
    """int64 [nnz]: the row of every entry of a compressed-row index."""
    counts = (ptr[1:] - ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts)


def _order_valid(order: Tensor | None, count: int, length: int, device: torch.device) -> Tensor:
    """bool [S|1, count]: which positions hold a real token (natural order: the first ``length``)."""
    if order is None:
        return (torch.arange(count, device=device) < length)[None]
    return order >= 0


@dataclass(frozen=True, eq=False)
class Layout:
    """Block-sparse attention structure for all heads of one attention call (see the module docstring).

    Shapes (``LB`` 1 when one structure map serves every batch item, else the batch size; ``H`` heads;
    ``S`` structures; ``MQ``/``NK`` query/key blocks; ``Nf``/``Np`` listed full/partial blocks; ``U``
    distinct partial masks; ``PQ = MQ * block_m`` / ``PK = NK * block_n`` positions of an order):

    - ``heads`` int32 [LB, H]: the structure of each (batch item, head)
    - ``full_ptr``/``part_ptr`` int32 [S * MQ + 1], ``full_idx`` int32 [Nf], ``part_idx``/``part_mask``
      int32 [Np] (key block, and row of ``mask_bits``)
    - ``dense_rows`` bool [S * MQ]: rows keeping every real key (they list no blocks)
    - ``mask_bits`` int32 [U, block_m, block_n // 32]
    - ``q_order`` int32 [S, PQ] / ``kv_order`` int32 [S, PK] or None: position -> token, -1 padding
    """

    q_len: int
    kv_len: int
    block_m: int
    block_n: int
    heads: Tensor
    full_ptr: Tensor
    full_idx: Tensor
    part_ptr: Tensor
    part_idx: Tensor
    part_mask: Tensor
    dense_rows: Tensor
    mask_bits: Tensor
    q_order: Tensor | None = None
    kv_order: Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    # False for layouts built per call on the device from already-valid pieces (dynamic block maps and
    # their layers): validating reads values back to the host, a synchronisation per call.
    checked: bool = field(default=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.checked:
            self.validate()

    # ------------------------------------------------------------------ shape facts
    @property
    def batch(self) -> int:
        return self.heads.shape[0]

    @property
    def num_heads(self) -> int:
        return self.heads.shape[1]

    @property
    def num_structures(self) -> int:
        return self.dense_rows.numel() // self.num_q_blocks

    @property
    def num_q_blocks(self) -> int:
        if self.q_order is not None:
            return self.q_order.shape[1] // self.block_m
        return math.ceil(self.q_len / self.block_m)

    @property
    def num_kv_blocks(self) -> int:
        if self.kv_order is not None:
            return self.kv_order.shape[1] // self.block_n
        return math.ceil(self.kv_len / self.block_n)

    @property
    def q_positions(self) -> int:
        """Query positions the executors run: the order's length, or ``q_len`` in natural order."""
        return self.q_order.shape[1] if self.q_order is not None else self.q_len

    @property
    def kv_positions(self) -> int:
        return self.kv_order.shape[1] if self.kv_order is not None else self.kv_len

    @property
    def ordered(self) -> bool:
        return self.q_order is not None or self.kv_order is not None

    @property
    def device(self) -> torch.device:
        return self.heads.device

    def nbytes(self) -> int:
        """Bytes held by the layout's tensors and the executors' caches on it (shared storage counted once)."""
        own = [self.heads, self.full_ptr, self.full_idx, self.part_ptr, self.part_idx, self.part_mask,
               self.dense_rows, self.mask_bits, self.q_order, self.kv_order]
        seen: set[int] = {id(self)}
        return _storage_bytes([t for t in own if t is not None] + _tensors_in(self._cache, seen))

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every invariant the executors rely on; raise ValueError naming the bad field."""
        _check(self.q_len > 0 and self.kv_len > 0, f"q_len/kv_len must be positive, got {self.q_len}/{self.kv_len}")
        _check(self.block_m >= 16, f"block_m must be >= 16, got {self.block_m}")
        _check(self.block_n >= _WORD and self.block_n % _WORD == 0,
               f"block_n must be a positive multiple of {_WORD}, got {self.block_n}")
        for name in ("heads", "full_ptr", "full_idx", "part_ptr", "part_idx", "part_mask", "mask_bits"):
            t = getattr(self, name)
            _check(isinstance(t, Tensor), f"{name} must be a torch.Tensor")
            _check(t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}")
            _check(t.device == self.device, f"{name} is on {t.device}, heads on {self.device}")
        _check(isinstance(self.dense_rows, Tensor) and self.dense_rows.dtype == torch.bool,
               "dense_rows must be a bool tensor")
        _check(self.heads.dim() == 2, f"heads must be [LB, H], got {tuple(self.heads.shape)}")
        for name, order, count in (("q_order", self.q_order, self.q_len), ("kv_order", self.kv_order, self.kv_len)):
            if order is None:
                continue
            block = self.block_m if name == "q_order" else self.block_n
            _check(order.dtype == torch.int32 and order.dim() == 2 and order.device == self.device,
                   f"{name} must be int32 [S, positions] on {self.device}")
            _check(order.shape[1] % block == 0 and order.shape[1] >= count,
                   f"{name} has {order.shape[1]} positions: a multiple of the block ({block}) holding {count} tokens")
            real = torch.sort(order, dim=1).values[:, order.shape[1] - count :]
            _check(bool((order >= -1).all()) and bool((real == torch.arange(count, device=self.device)).all()),
                   f"{name} must hold every token 0..{count - 1} once, and -1 for padding positions")
        mq, nk = self.num_q_blocks, self.num_kv_blocks
        rows = self.dense_rows.numel()
        _check(rows > 0 and rows % mq == 0, f"dense_rows must have S * {mq} entries, got {rows}")
        s = rows // mq
        for name in ("q_order", "kv_order"):
            order = getattr(self, name)
            _check(order is None or order.shape[0] == s, f"{name} must have one row per structure ({s})")
        _check(bool(((self.heads >= 0) & (self.heads < s)).all()), f"heads holds a structure outside [0, {s})")
        for kind in ("full", "part"):
            ptr, idx = getattr(self, f"{kind}_ptr"), getattr(self, f"{kind}_idx")
            _check(ptr.dim() == 1 and ptr.numel() == rows + 1, f"{kind}_ptr must be [{rows + 1}]")
            _check(int(ptr[0]) == 0 and int(ptr[-1]) == idx.numel() and bool((ptr[1:] >= ptr[:-1]).all()),
                   f"{kind}_ptr must rise from 0 to the number of {kind}_idx entries")
            _check(bool(((idx >= 0) & (idx < nk)).all()), f"{kind}_idx holds a key block outside [0, {nk})")
            listed = ptr[1:] - ptr[:-1]
            _check(not bool((listed[self.dense_rows] > 0).any()), f"a dense row lists {kind} blocks")
        _check(self.part_mask.shape == self.part_idx.shape, "part_mask must have one entry per part_idx entry")
        _check(self.mask_bits.dim() == 3 and tuple(self.mask_bits.shape[1:]) == (self.block_m, self.block_n // _WORD),
               f"mask_bits must be [U, {self.block_m}, {self.block_n // _WORD}], got {tuple(self.mask_bits.shape)}")
        _check(bool(((self.part_mask >= 0) & (self.part_mask < self.mask_bits.shape[0])).all()),
               f"part_mask holds a mask id outside [0, {self.mask_bits.shape[0]})")
        keys = torch.cat([_row_of(self.full_ptr) * nk + self.full_idx.long(),
                          _row_of(self.part_ptr) * nk + self.part_idx.long()])
        _check(torch.unique(keys).numel() == keys.numel(),
               "a key block is listed twice in one query row (as full and partial, or repeated)")
        if self.full_idx.numel():
            real_keys = self.real_per_kv_block()  # [S, NK]
            full_rows = _row_of(self.full_ptr)
            complete = real_keys[full_rows // mq, self.full_idx.long()] == self.block_n
            _check(bool(complete.all()), "a full block holds key padding (a ragged last block or padding "
                   "positions of an order): it must be partial, not full")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_block_kinds(
        cls, kinds: Tensor, partial_masks: Tensor | None, *, q_len: int, kv_len: int, block_m: int, block_n: int,
        perm: Tensor | None = None, q_order: Tensor | None = None, kv_order: Tensor | None = None,
    ) -> Layout:
        """Build from a block map and the element masks of its partial blocks (small problems, tests).

        ``kinds`` is int [LB, H, MQ, NK] (or [H, MQ, NK]) of BLOCK_SKIP / BLOCK_PARTIAL / BLOCK_FULL.
        ``partial_masks`` is bool [P, block_m, block_n], one per partial entry in the row-major order of
        ``(kinds == BLOCK_PARTIAL).nonzero()``, in the order's positions. Orders are per head, [H, positions]
        (``perm``: one permutation for queries and keys). Key padding (a ragged last block, an order's
        padding positions) is masked here, so such blocks become partial. Identical heads share a structure.
        """
        if kinds.dim() == 3:
            kinds = kinds.unsqueeze(0)
        if perm is not None:
            _check(q_order is None and kv_order is None, "pass perm= or q_order=/kv_order=, not both")
            q_order = kv_order = perm
        device = kinds.device
        lb, h = kinds.shape[:2]
        qo = None if q_order is None else _as_order(q_order, h, block_m, "q_order", device)
        ko = None if kv_order is None else _as_order(kv_order, h, block_n, "kv_order", device)
        mq = qo.shape[1] // block_m if qo is not None else math.ceil(q_len / block_m)
        nk = ko.shape[1] // block_n if ko is not None else math.ceil(kv_len / block_n)
        _check(kinds.dim() == 4 and tuple(kinds.shape[2:]) == (mq, nk),
               f"kinds must be [LB, H, {mq}, {nk}] for q_len={q_len}, kv_len={kv_len}, "
               f"blocks=({block_m}, {block_n}); got {tuple(kinds.shape)}")
        kinds = kinds.to(torch.int8).clone()
        n_part = int((kinds == BLOCK_PARTIAL).sum().item())
        if partial_masks is None:
            _check(n_part == 0, f"kinds has {n_part} partial blocks but partial_masks is None")
            partial_masks = torch.zeros(0, block_m, block_n, dtype=torch.bool, device=device)
        _check(partial_masks.dtype == torch.bool, f"partial_masks must be bool, got {partial_masks.dtype}")
        _check(tuple(partial_masks.shape) == (n_part, block_m, block_n),
               f"partial_masks must be [{n_part}, {block_m}, {block_n}], got {tuple(partial_masks.shape)}")
        _check(partial_masks.device == device, f"partial_masks on {partial_masks.device}, kinds on {device}")
        # Element masks of every visited block, with key padding removed: [LB, H, MQ, NK] -> masks.
        key_ok = _order_valid(ko, nk * block_n, kv_len, device).expand(h, -1).view(h, nk, block_n)
        pos = (kinds > 0).nonzero()
        masks = torch.ones(pos.shape[0], block_m, block_n, dtype=torch.bool, device=device)
        is_part = kinds[tuple(pos.T)] == BLOCK_PARTIAL
        masks[is_part] = partial_masks
        masks &= key_ok[pos[:, 1], pos[:, 3]][:, None, :]
        # Padded query rows copy a real row of the block, so they never make a full block partial.
        q_ok = _order_valid(qo, mq * block_m, q_len, device).expand(h, -1).view(h, mq, block_m)
        rows_ok = q_ok[pos[:, 1], pos[:, 2]]  # [n, bm]
        first_real = rows_ok.float().argmax(1)
        fill = masks[torch.arange(masks.shape[0], device=device), first_real]  # [n, bn]
        masks = torch.where(rows_ok[:, :, None], masks, fill[:, None, :])
        # Each (batch item, head) is one candidate structure; identical ones are merged below.
        flat = kinds.view(lb * h, mq, nk)
        per = []
        for bh in range(lb * h):
            b, hh = divmod(bh, h)
            sel = (pos[:, 0] == b) & (pos[:, 1] == hh)
            per.append(_Structure.from_entries(pos[sel, 2], pos[sel, 3], masks[sel], flat[bh] > 0, key_ok[hh], mq,
                                               None if qo is None else qo[hh], None if ko is None else ko[hh]))
        return _assemble(per, lb, h, q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n, mq=mq, nk=nk)

    @classmethod
    def from_block_map(cls, keep: Tensor, *, q_len: int, kv_len: int, block_m: int, block_n: int,
                       on_device: bool = False) -> Layout:
        """Build from whole kept blocks, bool [H, MQ, NK] (a dynamic selection such as ``pooled``): one
        structure per head, full blocks only but the ragged last key block (partial under its column mask).

        ``on_device=True``: nothing is read back from the device, so a selection made on a GPU becomes a
        Layout there without a synchronisation; its entry buffers have room for every block (the selection
        itself is that big; rows list exactly the blocks they keep, then the room), it is not validated, and
        it cannot be concatenated with other layouts. Otherwise the buffers are cut to the listed entries and
        the layout is validated like any other.
        """
        _check(keep.dtype == torch.bool and keep.dim() == 3, f"keep must be bool [H, MQ, NK], got {keep.dtype} "
               f"{tuple(keep.shape)}")
        h, mq, nk = keep.shape
        _check((mq, nk) == (math.ceil(q_len / block_m), math.ceil(kv_len / block_n)),
               f"keep must be [H, {math.ceil(q_len / block_m)}, {math.ceil(kv_len / block_n)}] for these lengths")
        fields = block_map_rows(keep, kv_len, block_m, block_n)
        device = keep.device
        if not on_device:  # cut the buffers to what is listed (reads the counts back)
            for name in ("full", "part"):
                fields[f"{name}_idx"] = fields[f"{name}_idx"][: int(fields[f"{name}_ptr"][-1])].contiguous()
        if not on_device:
            fields["part_mask"] = fields["part_mask"][: fields["part_idx"].numel()]
        layout = cls(q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n,
                     heads=torch.arange(h, dtype=torch.int32, device=device)[None], **fields,
                     dense_rows=torch.zeros(h * mq, dtype=torch.bool, device=device), checked=not on_device)
        layout._cache["has_dense_rows"] = False
        return layout

    @classmethod
    def from_dense_mask(
        cls, mask: Tensor, *, block_m: int = 128, block_n: int = 128, perm: Tensor | None = None
    ) -> Layout:
        """Build from an element mask [LB, H, Lq, Lk] (or [H, Lq, Lk]) in *original* token order.

        Meant for tests and small sequences: the whole mask is materialised. With ``perm`` ([H, L], a
        permutation per head) the mask is first reordered into permuted positions.
        """
        _check(mask.dtype == torch.bool, f"mask must be bool, got {mask.dtype}")
        if mask.dim() == 3:
            mask = mask.unsqueeze(0)
        _check(mask.dim() == 4, f"mask must be [LB, H, Lq, Lk], got {tuple(mask.shape)}")
        lb, h, lq, lk = mask.shape
        if perm is not None:
            _check(lq == lk, "perm needs a square mask")
            _check(tuple(perm.shape) == (h, lq), f"perm must be [{h}, {lq}], got {tuple(perm.shape)}")
            p = perm.to(mask.device).long()
            mask = torch.gather(mask, 2, p[None, :, :, None].expand(lb, h, lq, lk))
            mask = torch.gather(mask, 3, p[None, :, None, :].expand(lb, h, lq, lk))
        mq, nk = math.ceil(lq / block_m), math.ceil(lk / block_n)
        padded = torch.zeros(lb, h, mq * block_m, nk * block_n, dtype=torch.bool, device=mask.device)
        padded[:, :, :lq, :lk] = mask
        padded[:, :, lq:, :] = padded[:, :, lq - 1 : lq, :]
        tiles = padded.reshape(lb, h, mq, block_m, nk, block_n).permute(0, 1, 2, 4, 3, 5)
        keep_any = tiles.any((-1, -2))
        keep_all = tiles.all((-1, -2))
        kinds = torch.where(keep_all, BLOCK_FULL, torch.where(keep_any, BLOCK_PARTIAL, BLOCK_SKIP)).to(torch.int8)
        partial = tiles[kinds == BLOCK_PARTIAL]
        return cls.from_block_kinds(kinds, partial, q_len=lq, kv_len=lk, block_m=block_m, block_n=block_n, perm=perm)

    @classmethod
    def dense(
        cls, num_heads: int, q_len: int, kv_len: int | None = None, *, block_m: int = 128,
        block_n: int = 128, device: torch.device | str = "cpu",
    ) -> Layout:
        """Every head attends to every key: one structure whose rows are all dense."""
        kv_len = q_len if kv_len is None else kv_len
        mq = math.ceil(q_len / block_m)
        device = torch.device(device)
        empty = torch.zeros(0, dtype=torch.int32, device=device)
        return cls(q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n,
                   heads=torch.zeros(1, num_heads, dtype=torch.int32, device=device),
                   full_ptr=torch.zeros(mq + 1, dtype=torch.int32, device=device), full_idx=empty,
                   part_ptr=torch.zeros(mq + 1, dtype=torch.int32, device=device), part_idx=empty, part_mask=empty,
                   dense_rows=torch.ones(mq, dtype=torch.bool, device=device),
                   mask_bits=torch.zeros(0, block_m, block_n // _WORD, dtype=torch.int32, device=device))

    @classmethod
    def concat_heads(cls, layouts: list[Layout]) -> Layout:
        """One Layout whose heads are those of ``layouts`` in order (one executor call for a layer).

        All must share lengths, block sizes, batch and block counts. Structures and mask tables are
        concatenated (nothing is copied per head); a structure without an order gets the natural one
        (with end padding) when another has one.
        """
        if not layouts:
            raise ValueError("concat_heads needs at least one layout")
        first = layouts[0]
        for i, lay in enumerate(layouts):
            key = (lay.q_len, lay.kv_len, lay.block_m, lay.block_n, lay.batch)
            ref = (first.q_len, first.kv_len, first.block_m, first.block_n, first.batch)
            _check(key == ref, f"layouts[{i}] has (q_len, kv_len, block_m, block_n, batch)={key}, layouts[0] {ref}")
        if len(layouts) == 1:
            return first
        _check(all(lay.checked for lay in layouts), "concat_heads: a layout built on the device (on_device=True) "
               "cannot be concatenated: its entry buffers hold room past its entries; run it as its own head group")
        # Structures of different orders may span different block counts: pad all to the largest. A
        # layout given twice (a layer's runs of one pattern) contributes its structures once.
        mq = max(lay.num_q_blocks for lay in layouts)
        nk = max(lay.num_kv_blocks for lay in layouts)
        def shared(lay: Layout) -> tuple:  # layouts that differ only in their heads map share structures
            return tuple(id(t) for t in (lay.full_ptr, lay.part_ptr, lay.mask_bits, lay.dense_rows, lay.q_order,
                                         lay.kv_order))

        distinct: dict[tuple, int] = {}
        originals: dict[tuple, Layout] = {}
        for lay in layouts:
            distinct.setdefault(shared(lay), len(distinct))
            originals.setdefault(shared(lay), lay)
        unique = [originals[key].pad_blocks(mq, nk) for key in distinct]
        first = unique[0]
        device = first.device
        s_off, m_off, f_off, p_off = 0, 0, 0, 0
        fptr, fidx, pptr, pidx, pmask, dense, bits, qo, ko = [], [], [], [], [], [], [], [], []
        offsets = []
        any_q = any(lay.q_order is not None for lay in unique)
        any_k = any(lay.kv_order is not None for lay in unique)
        for lay in unique:
            offsets.append(s_off)
            fptr.append(lay.full_ptr[:-1] + f_off)
            pptr.append(lay.part_ptr[:-1] + p_off)
            fidx.append(lay.full_idx)
            pidx.append(lay.part_idx)
            pmask.append(lay.part_mask + m_off)
            dense.append(lay.dense_rows)
            bits.append(lay.mask_bits)
            if any_q:
                qo.append(lay.q_order if lay.q_order is not None else lay.natural_order("q"))
            if any_k:
                ko.append(lay.kv_order if lay.kv_order is not None else lay.natural_order("kv"))
            s_off += lay.num_structures
            m_off += lay.mask_bits.shape[0]
            f_off += lay.full_idx.numel()
            p_off += lay.part_idx.numel()
        heads = [lay.heads.to(device) + offsets[distinct[shared(lay)]] for lay in layouts]

        f_end = torch.tensor([f_off], dtype=torch.int32, device=device)
        p_end = torch.tensor([p_off], dtype=torch.int32, device=device)
        return cls(
            q_len=first.q_len, kv_len=first.kv_len, block_m=first.block_m, block_n=first.block_n,
            heads=torch.cat(heads, 1), full_ptr=torch.cat([*fptr, f_end]), full_idx=torch.cat(fidx),
            part_ptr=torch.cat([*pptr, p_end]), part_idx=torch.cat(pidx), part_mask=torch.cat(pmask),
            dense_rows=torch.cat(dense), mask_bits=torch.cat(bits),
            q_order=torch.cat(qo) if any_q else None, kv_order=torch.cat(ko) if any_k else None,
        )

    def pad_blocks(self, num_q_blocks: int, num_kv_blocks: int) -> Layout:
        """This layout over more query/key blocks: trailing padding positions that keep nothing (so it
        can share a launch with structures whose orders are longer)."""
        mq, nk = self.num_q_blocks, self.num_kv_blocks
        _check(num_q_blocks >= mq and num_kv_blocks >= nk, f"pad_blocks cannot shrink ({mq}, {nk}) to "
               f"({num_q_blocks}, {num_kv_blocks})")
        if (num_q_blocks, num_kv_blocks) == (mq, nk):
            return self
        s = self.num_structures
        extra_q, extra_k = num_q_blocks - mq, num_kv_blocks - nk

        def widen(ptr: Tensor) -> Tensor:
            counts = (ptr[1:] - ptr[:-1]).view(s, mq)
            counts = torch.cat([counts, counts.new_zeros(s, extra_q)], 1).flatten()
            return torch.cat([ptr[:1], counts.cumsum(0).to(torch.int32)])

        def longer(order: Tensor, extra: int, block: int) -> Tensor:
            return torch.cat([order, order.new_full((s, extra * block), -1)], 1)

        q_order = self.q_order if self.q_order is not None else self.natural_order("q")
        kv_order = self.kv_order if self.kv_order is not None else self.natural_order("kv")
        dense = torch.cat([self.dense_rows.view(s, mq), self.dense_rows.new_zeros(s, extra_q)], 1).flatten()
        return Layout(q_len=self.q_len, kv_len=self.kv_len, block_m=self.block_m, block_n=self.block_n,
                      heads=self.heads, full_ptr=widen(self.full_ptr), full_idx=self.full_idx,
                      part_ptr=widen(self.part_ptr), part_idx=self.part_idx, part_mask=self.part_mask,
                      dense_rows=dense, mask_bits=self.mask_bits, checked=self.checked,
                      q_order=longer(q_order, extra_q, self.block_m), kv_order=longer(kv_order, extra_k, self.block_n))

    def natural_order(self, side: str) -> Tensor:
        """int32 [S, positions]: the natural token order with end padding ("q" or "kv")."""
        count, block, blocks = ((self.q_len, self.block_m, self.num_q_blocks) if side == "q"
                                else (self.kv_len, self.block_n, self.num_kv_blocks))
        pos = torch.arange(blocks * block, device=self.device, dtype=torch.int32)
        order = torch.where(pos < count, pos, -1)
        return order.expand(self.num_structures, -1).contiguous()

    def _with_heads(self, heads: Tensor) -> Layout:
        return Layout(q_len=self.q_len, kv_len=self.kv_len, block_m=self.block_m, block_n=self.block_n, heads=heads,
                      full_ptr=self.full_ptr, full_idx=self.full_idx, part_ptr=self.part_ptr,
                      part_idx=self.part_idx, part_mask=self.part_mask, dense_rows=self.dense_rows,
                      mask_bits=self.mask_bits, q_order=self.q_order, kv_order=self.kv_order, checked=self.checked)

    def repeat_heads(self, num_heads: int) -> Layout:
        """This layout (of one head) for ``num_heads`` heads: they share its structure, nothing is copied."""
        _check(self.num_heads == 1, f"repeat_heads needs a one-head layout, got {self.num_heads} heads")
        return self._with_heads(self.heads.expand(-1, num_heads).contiguous())

    def select_heads(self, heads: list[int]) -> Layout:
        """The layout of the listed heads only, in that order (structures and masks shared, not copied)."""
        _check(len(heads) > 0 and all(0 <= h < self.num_heads for h in heads),
               f"heads must be a non-empty list of indices below {self.num_heads}, got {heads}")
        return self._with_heads(self.heads[:, torch.tensor(heads, device=self.device)].contiguous())

    def batch_item(self, item: int) -> Layout:
        """The layout of one batch item (LB = 1) of a per-batch layout."""
        _check(0 <= item < self.batch, f"item must be below the layout's batch {self.batch}, got {item}")
        return self._with_heads(self.heads[item : item + 1].contiguous())

    def to(self, device: torch.device | str) -> Layout:
        device = torch.device(device)
        if device == self.device:
            return self

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Layout(q_len=self.q_len, kv_len=self.kv_len, block_m=self.block_m, block_n=self.block_n,
                      heads=self.heads.to(device), full_ptr=self.full_ptr.to(device),
                      full_idx=self.full_idx.to(device), part_ptr=self.part_ptr.to(device),
                      part_idx=self.part_idx.to(device), part_mask=self.part_mask.to(device),
                      dense_rows=self.dense_rows.to(device), mask_bits=self.mask_bits.to(device),
                      q_order=move(self.q_order), kv_order=move(self.kv_order), checked=self.checked)

    # ------------------------------------------------------------------ per-head views for executors
    def head_structures(self, batch_item: int = 0) -> Tensor:
        """int64 [H]: the structure of every head of one batch item."""
        return self.heads[batch_item if self.batch > 1 else 0].long()

    def order_index(self, side: str) -> Tensor | None:
        """int64 [H, positions] for one-structure-map layouts: the token at each position (-1 padding), per head.

        ``side`` "q", "kv", or "q_inverse" (int64 [H, q_len]: the position of every query token).
        """
        if (self.q_order if side in ("q", "q_inverse") else self.kv_order) is None:
            return None
        _check(self.batch == 1, "per-head token orders need a layout shared by the batch (LB = 1)")
        key = f"order_{side}"
        if key not in self._cache:
            order = self.q_order if side in ("q", "q_inverse") else self.kv_order
            if order is None:
                self._cache[key] = None
            elif side == "q_inverse":
                per_head = self.order_index("q")
                inv = torch.empty(per_head.shape[0], self.q_len, dtype=torch.int64, device=self.device)
                real = per_head >= 0
                h_idx, pos = real.nonzero(as_tuple=True)
                inv[h_idx, per_head[h_idx, pos]] = pos
                self._cache[key] = inv
            else:
                self._cache[key] = order.long()[self.head_structures()]
        return self._cache[key]

    def real_per_kv_block(self) -> Tensor:
        """int64 [S|1, NK]: real (non-padding) keys in each key block of each structure."""
        valid = _order_valid(self.kv_order, self.num_kv_blocks * self.block_n, self.kv_len, self.device)
        return valid.view(valid.shape[0], self.num_kv_blocks, self.block_n).sum(-1).expand(self.num_structures, -1)

    def real_per_q_block(self) -> Tensor:
        """int64 [S, MQ]: real (non-padding) queries in each query block of each structure."""
        valid = _order_valid(self.q_order, self.num_q_blocks * self.block_m, self.q_len, self.device)
        return valid.view(valid.shape[0], self.num_q_blocks, self.block_m).sum(-1).expand(self.num_structures, -1)

    def key_valid(self) -> Tensor:
        """bool [S, PK]: which key positions hold a real token."""
        valid = _order_valid(self.kv_order, self.num_kv_blocks * self.block_n, self.kv_len, self.device)
        return valid.expand(self.num_structures, -1)

    def entries(self, kind: str) -> tuple[Tensor, Tensor, Tensor | None]:
        """(row, key block, mask id or None) of every listed ``kind`` ("full" or "part") entry, int64.

        The entry buffers of a layout built on the device may hold room beyond the listed entries; this
        reads how many there are (host-side statistics and views only).
        """
        ptr, idx = getattr(self, f"{kind}_ptr"), getattr(self, f"{kind}_idx")
        rows = _row_of(ptr)
        n = rows.numel()
        mask = self.part_mask[:n].long() if kind == "part" else None
        return rows, idx[:n].long(), mask

    def has_dense_rows(self) -> bool:
        if "has_dense_rows" not in self._cache:
            self._cache["has_dense_rows"] = bool(self.dense_rows.any())
        return self._cache["has_dense_rows"]

    # ------------------------------------------------------------------ views and statistics
    def structure_kinds(self) -> Tensor:
        """int8 [S, MQ, NK] block map of each structure (dense rows as full blocks; materialised: small layouts)."""
        if "structure_kinds" not in self._cache:
            s, mq, nk = self.num_structures, self.num_q_blocks, self.num_kv_blocks
            kinds = torch.zeros(s * mq, nk, dtype=torch.int8, device=self.device)
            fr, fc, _ = self.entries("full")
            pr, pc, _ = self.entries("part")
            kinds[fr, fc] = BLOCK_FULL
            kinds[pr, pc] = BLOCK_PARTIAL
            if self.dense_rows.any():
                complete = self.real_per_kv_block() == self.block_n  # [S, NK]
                row_s = torch.arange(s * mq, device=self.device) // mq
                dense_kinds = torch.where(complete[row_s], BLOCK_FULL, BLOCK_PARTIAL).to(torch.int8)
                kinds = torch.where(self.dense_rows[:, None], dense_kinds, kinds)
            self._cache["structure_kinds"] = kinds.view(s, mq, nk)
        return self._cache["structure_kinds"]

    def structure_mask_ids(self) -> Tensor:
        """int32 [S, MQ, NK]: the ``mask_bits`` row of each partial block, -2 where every pair of the block's
        real keys is kept (full blocks, dense rows), -1 where nothing is (materialised: small layouts)."""
        if "structure_mask_ids" not in self._cache:
            s, mq, nk = self.num_structures, self.num_q_blocks, self.num_kv_blocks
            ids = torch.full((s * mq, nk), -1, dtype=torch.int32, device=self.device)
            fr, fc, _ = self.entries("full")
            pr, pc, pm = self.entries("part")
            ids[fr, fc] = -2
            ids[pr, pc] = pm.to(torch.int32)
            ids[self.dense_rows] = -2
            self._cache["structure_mask_ids"] = ids.view(s, mq, nk)
        return self._cache["structure_mask_ids"]

    def block_kinds(self) -> Tensor:
        """int8 [LB, H, MQ, NK] map of BLOCK_SKIP / BLOCK_PARTIAL / BLOCK_FULL (order positions; small layouts)."""
        return self.structure_kinds()[self.heads.long()]

    def structure_row_masks(self, m0: int, m1: int) -> Tensor:
        """bool [S, (m1 - m0) * block_m, PK]: element masks of query blocks m0..m1-1 of every structure.

        In order positions; padding keys are never kept (padding query rows may be). The masked executor
        reads it a chunk of query blocks at a time, so the whole mask is never materialised.
        """
        s, mq, nk, bm, bn = self.num_structures, self.num_q_blocks, self.num_kv_blocks, self.block_m, self.block_n
        rows = (torch.arange(s, device=self.device)[:, None] * mq + torch.arange(m0, m1, device=self.device)).flatten()
        out = torch.zeros(s, m1 - m0, nk, bm, bn, dtype=torch.bool, device=self.device)
        flat = out.view(s * (m1 - m0), nk, bm, bn)
        local = torch.full((s * mq,), -1, dtype=torch.int64, device=self.device)
        local[rows] = torch.arange(rows.numel(), device=self.device)
        for kind in ("full", "part"):
            entry_rows, cols, ids = self.entries(kind)
            keep = local[entry_rows] >= 0
            if not keep.any():
                continue
            r, c = local[entry_rows[keep]], cols[keep]
            if ids is None:
                flat[r, c] = True
            else:
                flat[r, c] = unpack_bits(self.mask_bits[ids[keep]])
        dense = self.dense_rows[rows]
        if dense.any():
            keys = self.key_valid()[torch.arange(s, device=self.device).repeat_interleave(m1 - m0)]  # [R, PK]
            flat[dense] = keys[dense].view(-1, nk, 1, bn).expand(-1, nk, bm, bn)
        return out.permute(0, 1, 3, 2, 4).reshape(s, (m1 - m0) * bm, nk * bn)

    def block_row_mask(self, m0: int, m1: int) -> Tensor:
        """bool [LB, H, (m1 - m0) * block_m, PK]: :meth:`structure_row_masks` for every (batch item, head)."""
        return self.structure_row_masks(m0, m1)[self.heads.long()]

    def to_dense_mask(self, *, permuted: bool = False) -> Tensor:
        """bool [LB, H, Lq, Lk]: the exact element mask, in original token order by default (small layouts).

        ``permuted=True``: in order positions, [LB, H, PQ, PK] (padding positions included).
        """
        per_structure = self.structure_row_masks(0, self.num_q_blocks)  # [S, PQ, PK]
        if permuted:
            if self.ordered:
                return per_structure[self.heads.long()]
            return per_structure[:, : self.q_len, : self.kv_len][self.heads.long()]
        s = self.num_structures
        dense = torch.zeros(s, self.q_len, self.kv_len, dtype=torch.bool, device=self.device)
        q_tok = self.q_order if self.q_order is not None else self.natural_order("q")
        k_tok = self.kv_order if self.kv_order is not None else self.natural_order("kv")
        for i in range(s):
            qi, ki = q_tok[i].long(), k_tok[i].long()
            rows, cols = (qi >= 0).nonzero().flatten(), (ki >= 0).nonzero().flatten()
            dense[i][qi[rows][:, None], ki[cols][None, :]] = per_structure[i][rows][:, cols]
        return dense[self.heads.long()]

    def kept_per_structure(self) -> Tensor:
        """int64 [S]: (query, key) pairs kept, real tokens only."""
        if "kept" not in self._cache:
            s, mq = self.num_structures, self.num_q_blocks
            q_real, k_real = self.real_per_q_block(), self.real_per_kv_block()  # [S, MQ], [S, NK]
            rows_s = torch.arange(s * mq, device=self.device) // mq
            rows_m = torch.arange(s * mq, device=self.device) % mq
            kept = torch.zeros(s, dtype=torch.int64, device=self.device)
            fr, fc, _ = self.entries("full")
            kept.index_add_(0, fr // mq, q_real[fr // mq, fr % mq] * k_real[fr // mq, fc])
            dense = self.dense_rows.nonzero().flatten()
            kept.index_add_(0, rows_s[dense], q_real[rows_s[dense], rows_m[dense]] * self.kv_len)
            pr, _, pm = self.entries("part")
            if pr.numel():
                per_row = popcount(self.mask_bits).sum(-1)  # [U, bm]: kept keys per mask row
                q_valid = _order_valid(self.q_order, mq * self.block_m, self.q_len, self.device)
                q_valid = q_valid.expand(s, -1).view(s, mq, self.block_m)
                step = 1 << 16
                for a in range(0, pr.numel(), step):
                    r, u = pr[a : a + step], pm[a : a + step]
                    contrib = (per_row[u] * q_valid[r // mq, r % mq]).sum(-1)
                    kept.index_add_(0, r // mq, contrib)
            self._cache["kept"] = kept
        return self._cache["kept"]

    def kept_per_head(self) -> Tensor:
        """int64 [LB, H]: number of (query, key) pairs kept, counting real tokens only."""
        return self.kept_per_structure()[self.heads.long()]

    def density(self) -> Tensor:
        """float [LB, H]: fraction of (query, key) pairs kept per head."""
        return self.kept_per_head().double() / (self.q_len * self.kv_len)

    def visited_per_structure(self) -> Tensor:
        """int64 [S]: key blocks visited (full, partial, and every block of a dense row)."""
        s, mq = self.num_structures, self.num_q_blocks
        listed = (self.full_ptr[1:] - self.full_ptr[:-1] + self.part_ptr[1:] - self.part_ptr[:-1]).long()
        listed = listed + self.dense_rows.long() * self.num_kv_blocks
        return listed.view(s, mq).sum(-1)

    def block_density(self) -> Tensor:
        """float [LB, H]: the executors' work relative to dense attention's: visited block pairs of
        block_m x block_n positions, over q_len x kv_len (padding positions count as work)."""
        work = self.visited_per_structure()[self.heads.long()].double() * self.block_m * self.block_n
        return work / (self.q_len * self.kv_len)

    def is_dense(self) -> bool:
        """True when every (query, key) pair of every head is kept (padding aside).

        Such a layout is plain attention whatever its blocks or orders say, so executors may run
        unmasked dense SDPA on it.
        """
        if "is_dense" not in self._cache:
            self._cache["is_dense"] = bool((self.kept_per_head() == self.q_len * self.kv_len).all())
        return self._cache["is_dense"]

    def __repr__(self) -> str:
        return (
            f"Layout(batch={self.batch}, heads={self.num_heads}, structures={self.num_structures}, "
            f"q_len={self.q_len}, kv_len={self.kv_len}, blocks=({self.block_m}, {self.block_n}), "
            f"block_density={self.block_density().mean().item():.3f}, partial_masks={self.mask_bits.shape[0]}, "
            f"ordered={self.ordered})"
        )


def _tensors_in(value: object, seen: set[int], depth: int = 0) -> list[Tensor]:
    """Every tensor reachable from a cached value (layouts, block masks, plans, lists), each object once."""
    if id(value) in seen or depth > 6:
        return []
    seen.add(id(value))
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v, seen, depth + 1)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v, seen, depth + 1)]
    if hasattr(value, "__dict__"):
        return [t for v in vars(value).values() for t in _tensors_in(v, seen, depth + 1)]
    return []


def _storage_bytes(tensors: list[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared tables counted once)."""
    storages: dict[tuple[int, str], int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), str(t.device))] = storage.nbytes()
    return sum(storages.values())


def _as_order(order: Tensor, heads: int, block: int, name: str, device: torch.device) -> Tensor:
    """A per-head order [H, positions] (a [positions] one is shared), padded with -1 to whole blocks."""
    order = order.to(device)
    if order.dim() == 1:
        order = order.expand(heads, -1)
    _check(order.dim() == 2 and order.shape[0] == heads, f"{name} must be [{heads}, positions]")
    pad = (-order.shape[1]) % block
    order = order.to(torch.int32)
    if pad:
        order = torch.cat([order, torch.full((heads, pad), -1, dtype=torch.int32, device=device)], 1)
    return order.contiguous()


@dataclass
class _Structure:
    """One structure before assembly: its rows' entries, its masks (packed), its orders."""

    full_rows: Tensor
    full_cols: Tensor
    part_rows: Tensor
    part_cols: Tensor
    part_masks: Tensor  # int32 [n, bm, bn // 32] packed, one per partial entry
    dense_rows: Tensor
    q_order: Tensor | None
    kv_order: Tensor | None

    @staticmethod
    def from_entries(rows: Tensor, cols: Tensor, masks: Tensor, visited: Tensor, key_ok: Tensor, mq: int,
                     q_order: Tensor | None, kv_order: Tensor | None) -> _Structure:
        """Entries (sorted row-major), their element masks (key padding already removed) and the key
        validity [NK, bn] -> full / partial entries and dense rows."""
        flat = masks.flatten(1)
        keep = flat.any(1)
        rows, cols, masks = rows[keep], cols[keep], masks[keep]
        full = masks.flatten(1).all(1)
        # Complete: keeps every real key of its block. A row whose every block is complete is dense.
        complete = (masks == key_ok[cols.long()][:, None, :]).flatten(1).all(1)
        count = torch.bincount(rows[complete].long(), minlength=mq)
        dense = visited.all(1) & (count == key_ok.shape[0])
        listed = ~dense[rows.long()]
        f_sel, p_sel = full & listed, ~full & listed
        return _Structure(rows[f_sel], cols[f_sel], rows[p_sel], cols[p_sel], pack_bits(masks[p_sel]),
                          dense, q_order, kv_order)

    def signature(self) -> tuple:
        def key(t: Tensor | None) -> tuple:
            return () if t is None else (tuple(t.shape), t.cpu().numpy().tobytes())

        return (key(self.full_rows), key(self.full_cols), key(self.part_rows), key(self.part_cols),
                key(self.part_masks), key(self.dense_rows), key(self.q_order), key(self.kv_order))


def _assemble(per: list[_Structure], lb: int, h: int, *, q_len: int, kv_len: int, block_m: int, block_n: int,
              mq: int, nk: int) -> Layout:
    """Merge identical structures, deduplicate masks, and lay the rows out in compressed-row form."""
    unique: dict[tuple, int] = {}
    chosen: list[_Structure] = []
    heads = []
    for st in per:
        sig = st.signature()
        if sig not in unique:
            unique[sig] = len(chosen)
            chosen.append(st)
        heads.append(unique[sig])
    device = per[0].dense_rows.device
    packed = torch.cat([st.part_masks for st in chosen]) if chosen else torch.zeros(0, block_m, block_n // _WORD)
    if packed.shape[0]:
        table, inverse = torch.unique(packed.flatten(1), dim=0, return_inverse=True)
        table = table.view(-1, block_m, block_n // _WORD).to(torch.int32)
    else:
        table = torch.zeros(0, block_m, block_n // _WORD, dtype=torch.int32, device=device)
        inverse = torch.zeros(0, dtype=torch.int64, device=device)
    full_rows = torch.cat([st.full_rows + i * mq for i, st in enumerate(chosen)])
    part_rows = torch.cat([st.part_rows + i * mq for i, st in enumerate(chosen)])
    full_cols = torch.cat([st.full_cols for st in chosen])
    part_cols = torch.cat([st.part_cols for st in chosen])
    orders = {}
    for side, block, count, blocks in (("q_order", block_m, q_len, mq), ("kv_order", block_n, kv_len, nk)):
        given = [getattr(st, side) for st in chosen]
        if all(o is None for o in given):
            orders[side] = None
            continue
        pos = torch.arange(blocks * block, dtype=torch.int32, device=device)
        natural = torch.where(pos < count, pos, -1)
        orders[side] = torch.stack([natural if o is None else o for o in given])
    s = len(chosen)
    return Layout(
        q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n,
        heads=torch.tensor(heads, dtype=torch.int32, device=device).view(lb, h),
        full_ptr=_csr(full_rows.long(), s * mq), full_idx=full_cols.to(torch.int32),
        part_ptr=_csr(part_rows.long(), s * mq), part_idx=part_cols.to(torch.int32),
        part_mask=inverse.to(torch.int32), dense_rows=torch.cat([st.dense_rows for st in chosen]),
        mask_bits=table.contiguous(), **orders,
    )


def block_map_rows(keep: Tensor, kv_len: int, block_m: int, block_n: int) -> dict[str, Tensor]:
    """The compressed rows of a whole-block selection bool [H, MQ, NK], computed on its device with no value
    read back (sizes follow from the shapes alone; ``torch.compile(fullgraph=True)`` traces it whole):
    ``full_*``/``part_*`` (the ragged last key block is partial) with room for every block, ``part_mask``
    and ``mask_bits`` (the ragged block's column mask, or none)."""
    h, mq, nk = keep.shape
    device = keep.device
    flat = keep.reshape(h * mq, nk)
    tail = kv_len - (nk - 1) * block_n
    ragged = tail < block_n
    full = flat.clone()
    if ragged:
        full[:, -1] = False
    part = flat & ~full  # the ragged last key block, where kept
    column = pack_bits((torch.arange(block_n, device=device) < tail).expand(block_m, block_n))[None]
    fields: dict[str, Tensor] = {}
    dump = h * mq * nk  # one slot past the listed room for the blocks not kept
    cols = torch.arange(nk, dtype=torch.int32, device=device).expand(h * mq, nk).flatten()
    for name, sel in (("full", full), ("part", part)):
        counts = sel.sum(-1, dtype=torch.int64)
        ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        slot = torch.where(sel, ptr[:-1, None] + sel.long().cumsum(-1) - 1, dump)
        idx = torch.zeros(dump + 1, dtype=torch.int32, device=device).scatter_(0, slot.flatten(), cols)
        fields[f"{name}_ptr"], fields[f"{name}_idx"] = ptr.to(torch.int32), idx
    fields["part_mask"] = torch.zeros_like(fields["part_idx"])
    fields["mask_bits"] = column if ragged else column[:0]
    return fields


def layout_from_rows(*, q_len: int, kv_len: int, block_m: int, block_n: int, mq: int, nk: int,
                     full_rows: Tensor, full_cols: Tensor, part_rows: Tensor, part_cols: Tensor, part_ids: Tensor,
                     mask_table: Tensor, dense_rows: Tensor, q_order: Tensor | None = None,
                     kv_order: Tensor | None = None, num_heads: int = 1) -> Layout:
    """One structure for ``num_heads`` heads from entries already classified (the bounded pattern builder).

    Entries must be sorted row-major and distinct; ``part_ids`` index ``mask_table`` (packed int32
    [U, block_m, block_n // 32], deduplicated); orders are [positions] int32 with -1 padding.
    """
    device = dense_rows.device
    return Layout(
        q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n,
        heads=torch.zeros(1, num_heads, dtype=torch.int32, device=device),
        full_ptr=_csr(full_rows.long(), mq), full_idx=full_cols.to(torch.int32).contiguous(),
        part_ptr=_csr(part_rows.long(), mq), part_idx=part_cols.to(torch.int32).contiguous(),
        part_mask=part_ids.to(torch.int32).contiguous(), dense_rows=dense_rows.contiguous(),
        mask_bits=mask_table.to(torch.int32).contiguous(),
        q_order=None if q_order is None else q_order.to(torch.int32).view(1, -1).contiguous(),
        kv_order=None if kv_order is None else kv_order.to(torch.int32).view(1, -1).contiguous(),
    )
