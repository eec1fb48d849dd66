"""Layout construction, exact masks, statistics, storage in proportion to what is kept, and validation."""

import math

import pytest
import torch

from headsparse.kernels import BLOCK_FULL, BLOCK_PARTIAL, BLOCK_SKIP, Layout
from headsparse.kernels.layout import inverse_permutation, layout_from_rows, pack_bits, popcount, unpack_bits


def random_mask(lb, h, lq, lk, p=0.3):
    return torch.rand(lb, h, lq, lk) < p


def test_pack_unpack_roundtrip_and_popcount():
    mask = torch.rand(5, 7, 96) < 0.5
    mask[0, 0, 31] = True  # bit 31 -> sign bit of an int32 word
    words = pack_bits(mask)
    assert words.dtype == torch.int32 and words.shape == (5, 7, 3)
    assert torch.equal(unpack_bits(words), mask)
    assert torch.equal(popcount(words).sum(-1), mask.sum(-1))
    assert popcount(torch.tensor([-1, 0, 1, -(2**31)], dtype=torch.int32)).tolist() == [32, 0, 1, 1]


@pytest.mark.parametrize("lq,lk", [(128, 128), (100, 100), (300, 257), (33, 500)])
@pytest.mark.parametrize("blocks", [(32, 32), (64, 32), (32, 128)])
def test_dense_mask_roundtrip(lq, lk, blocks):
    mask = random_mask(1, 3, lq, lk)
    mask[:, 1] = True  # a fully dense head
    mask[:, 2, : lq // 2] = False  # query rows with no keys
    lay = Layout.from_dense_mask(mask, block_m=blocks[0], block_n=blocks[1])
    assert torch.equal(lay.to_dense_mask(), mask)
    assert torch.allclose(lay.density(), mask.double().mean((-1, -2)))


def test_dense_mask_roundtrip_with_permutation_and_batch():
    lb, h, length = 2, 3, 200
    mask = random_mask(lb, h, length, length)
    perm = torch.stack([torch.randperm(length) for _ in range(h)])
    lay = Layout.from_dense_mask(mask, block_m=64, block_n=64, perm=perm)
    assert lay.batch == 2 and lay.ordered
    assert torch.equal(lay.to_dense_mask(), mask)
    permuted = lay.to_dense_mask(permuted=True)
    assert torch.equal(permuted[0, 1][:length, :length], mask[0, 1][perm[1]][:, perm[1]])


def test_block_classification_and_dedup():
    # Block-diagonal mask on 128 tokens with 32-token blocks: 4 full diagonal blocks, rest skipped.
    length, bs = 128, 32
    ids = torch.arange(length) // bs
    mask = (ids[:, None] == ids[None, :]).expand(1, 2, length, length)
    lay = Layout.from_dense_mask(mask, block_m=bs, block_n=bs)
    assert lay.num_structures == 1  # the two identical heads share one structure
    assert lay.full_ptr.tolist() == [0, 1, 2, 3, 4] and lay.full_idx.tolist() == [0, 1, 2, 3]
    assert lay.part_idx.numel() == 0 and lay.mask_bits.shape[0] == 0
    # A causal mask has identical lower-triangular diagonal tiles: one distinct partial mask.
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool)).expand(1, 2, length, length)
    lay = Layout.from_dense_mask(causal, block_m=bs, block_n=bs)
    assert lay.mask_bits.shape[0] == 1
    assert lay.part_idx.tolist() == [0, 1, 2, 3] and lay.full_idx.tolist() == [0, 0, 1, 0, 1, 2]
    assert torch.equal(lay.to_dense_mask(), causal)


def test_rows_that_keep_every_key_are_dense_rows_not_lists():
    # Text queries of joint attention keep every key: flagged, not listed block by block.
    length, bs = 300, 32
    mask = random_mask(1, 1, length, length, p=0.05)
    mask[0, 0, :40] = True  # 40 "text" queries (blocks 0 and part of 1)
    lay = Layout.from_dense_mask(mask, block_m=bs, block_n=bs)
    assert lay.dense_rows.tolist()[:2] == [True, False]
    assert int(lay.full_ptr[1] - lay.full_ptr[0]) == 0 and int(lay.part_ptr[1] - lay.part_ptr[0]) == 0
    assert torch.equal(lay.to_dense_mask(), mask)
    dense = Layout.dense(40, 119_056, block_m=128, block_n=128)
    assert dense.is_dense() and dense.nbytes() < 16 * 1024  # 40 heads, 120k tokens: kilobytes


def test_ragged_last_block_is_partial():
    lay = Layout.dense(2, 100, block_m=32, block_n=32)
    kinds = lay.block_kinds()
    assert (kinds[..., :3] == BLOCK_FULL).all() and (kinds[..., 3] == BLOCK_PARTIAL).all()
    assert torch.equal(lay.to_dense_mask(), torch.ones(1, 2, 100, 100, dtype=torch.bool))
    assert torch.allclose(lay.density(), torch.ones(1, 2, dtype=torch.float64))
    assert lay.is_dense()  # the padded key block is partial, yet every real pair is kept
    assert Layout.dense(2, 128, block_m=32, block_n=32).is_dense()
    almost = torch.ones(1, 2, 100, 100, dtype=torch.bool)
    almost[0, 1, 7, 9] = False
    assert not Layout.from_dense_mask(almost, block_m=32, block_n=32).is_dense()


def test_from_block_kinds_promotes_and_drops():
    kinds = torch.full((1, 1, 2, 2), BLOCK_PARTIAL, dtype=torch.int8)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[0] = True  # keeps everything -> full
    masks[2, 3, 5] = True  # a genuine partial block
    lay = Layout.from_block_kinds(kinds, masks, q_len=64, kv_len=64, block_m=32, block_n=32)
    assert lay.block_kinds()[0, 0].tolist() == [[BLOCK_FULL, BLOCK_SKIP], [BLOCK_PARTIAL, BLOCK_SKIP]]
    dense = lay.to_dense_mask()[0, 0]
    assert dense[:32, :32].all() and dense.sum() == 32 * 32 + 1 and dense[32 + 3, 5]


def test_block_map_of_whole_blocks():
    keep = torch.rand(3, 4, 4) < 0.5
    keep[1, 2] = True  # a row keeping every block: listed like any other (no host read of the selection)
    ref = keep.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :100, :100]
    for on_device in (False, True):
        lay = Layout.from_block_map(keep, q_len=100, kv_len=100, block_m=32, block_n=32, on_device=on_device)
        assert lay.num_structures == 3 and lay.checked != on_device and not lay.dense_rows.any()
        assert torch.equal(lay.to_dense_mask()[0], ref)
        assert lay.mask_bits.shape[0] <= 1  # only the ragged-edge column mask
    with pytest.raises(ValueError, match="cannot be concatenated"):
        Layout.concat_heads([lay, Layout.dense(1, 100, block_m=32, block_n=32)])


def test_block_density_is_the_executors_work():
    kinds = torch.zeros(1, 2, 4, 4, dtype=torch.int8)
    kinds[0, 0, :, 0] = BLOCK_FULL
    kinds[0, 1] = BLOCK_FULL
    lay = Layout.from_block_kinds(kinds, None, q_len=128, kv_len=128, block_m=32, block_n=32)
    assert lay.block_density().tolist() == [[0.25, 1.0]]
    assert lay.density().tolist() == [[0.25, 1.0]]
    # Ragged lengths: the padded blocks are work too (blocks x area over q_len x kv_len).
    ragged = Layout.dense(1, 100, block_m=32, block_n=32)
    assert ragged.block_density().item() == pytest.approx(128 * 128 / 100**2)


def test_orders_with_padding_positions():
    """A structure in its own padded order: padding keys are never kept, padding queries cropped."""
    length = 50
    order = torch.full((64,), -1, dtype=torch.int64)
    order[torch.randperm(64)[:length]] = torch.randperm(length)  # 14 padding positions, scattered
    mask = random_mask(1, 1, length, length, p=0.4)
    kinds = torch.full((1, 1, 2, 2), BLOCK_PARTIAL, dtype=torch.int8)
    # The element masks in order positions, taken from the token-order mask.
    tok = order.clamp_min(0)
    in_order = mask[0, 0][tok][:, tok] & (order >= 0)[:, None] & (order >= 0)[None, :]
    tiles = in_order.view(2, 32, 2, 32).permute(0, 2, 1, 3).reshape(4, 32, 32)
    lay = Layout.from_block_kinds(kinds, tiles, q_len=length, kv_len=length, block_m=32, block_n=32,
                                  q_order=order[None], kv_order=order[None])
    assert lay.ordered and lay.q_positions == 64
    assert torch.equal(lay.to_dense_mask(), mask)
    assert lay.density().item() == pytest.approx(mask.double().mean().item())


def test_repeat_select_and_concat_share_structures():
    base = Layout.from_dense_mask(random_mask(1, 1, 200, 200), block_m=64, block_n=64)
    many = base.repeat_heads(40)
    assert many.num_heads == 40 and many.num_structures == 1 and many.full_idx is base.full_idx
    assert many.nbytes() - base.nbytes() == 39 * 4  # 39 more heads cost 39 int32 entries of the heads map
    other = Layout.from_dense_mask(random_mask(1, 2, 200, 200), block_m=64, block_n=64)
    both = Layout.concat_heads([many.select_heads([0, 1]), other, base])
    assert both.num_heads == 5 and both.num_structures == 3  # base is given twice: its structure once
    ref = torch.cat([base.to_dense_mask(), base.to_dense_mask(), other.to_dense_mask(), base.to_dense_mask()], 1)
    assert torch.equal(both.to_dense_mask(), ref)
    assert torch.equal(both.select_heads([2, 4]).to_dense_mask(), ref[:, [2, 4]])


def test_concat_pads_structures_of_different_orders():
    length = 70
    plain = Layout.from_dense_mask(random_mask(1, 1, length, length), block_m=32, block_n=32)
    perm = torch.randperm(length)[None]
    permuted = Layout.from_dense_mask(random_mask(1, 1, length, length), block_m=32, block_n=32, perm=perm)
    order = torch.cat([torch.arange(40), torch.full((58,), -1), torch.arange(40, length)])  # 4 blocks, not 3
    mask = random_mask(1, 1, length, length)
    tok = order.clamp_min(0)
    valid = (order >= 0)[:, None] & (order >= 0)[None, :]
    in_order = mask[0, 0][tok][:, tok] & valid
    nb = order.numel() // 32
    tiles = in_order.view(nb, 32, nb, 32).permute(0, 2, 1, 3)
    kinds = torch.where(tiles.flatten(2).any(-1), BLOCK_PARTIAL, BLOCK_SKIP).to(torch.int8)[None, None]
    padded = Layout.from_block_kinds(kinds, tiles[kinds[0, 0] > 0], q_len=length, kv_len=length, block_m=32,
                                     block_n=32, q_order=order[None], kv_order=order[None])
    both = Layout.concat_heads([plain, permuted, padded])
    assert both.num_q_blocks == 4 and both.num_kv_blocks == 4
    ref = torch.cat([plain.to_dense_mask(), permuted.to_dense_mask(), mask], 1)
    assert torch.equal(both.to_dense_mask(), ref)


def test_storage_grows_with_kept_blocks_not_with_l_squared():
    """A banded head at 120k tokens: kilobytes per row band, not the padded tables' hundreds of MiB."""
    length, block = 119_056, 128
    n = math.ceil(length / block)
    rows = torch.arange(n).repeat_interleave(3)
    cols = (rows + torch.tensor([-1, 0, 1]).repeat(n)).clamp(0, n - 1)
    keep = torch.ones_like(rows, dtype=torch.bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    rows, cols = rows[keep], cols[keep]
    edge = cols == n - 1
    column = pack_bits((torch.arange(block) < length - (n - 1) * block).expand(block, block))[None]
    lay = layout_from_rows(q_len=length, kv_len=length, block_m=block, block_n=block, mq=n, nk=n,
                           full_rows=rows[~edge], full_cols=cols[~edge], part_rows=rows[edge], part_cols=cols[edge],
                           part_ids=torch.zeros(int(edge.sum())), mask_table=column,
                           dense_rows=torch.zeros(n, dtype=torch.bool), num_heads=24)
    assert lay.nbytes() < 64 * 1024
    assert lay.density().mean().item() == pytest.approx(3 / n, rel=0.01)


def test_inverse_permutation():
    perm = torch.stack([torch.randperm(50) for _ in range(3)])
    inv = inverse_permutation(perm)
    assert torch.equal(torch.gather(perm, 1, inv), torch.arange(50).expand(3, 50))


_FIELDS = ("q_len", "kv_len", "block_m", "block_n", "heads", "full_ptr", "full_idx", "part_ptr", "part_idx",
           "part_mask", "dense_rows", "mask_bits")


def layout_fields(lay):
    return {f: getattr(lay, f) for f in _FIELDS}


def _valid_kwargs():
    return layout_fields(Layout.from_dense_mask(random_mask(1, 2, 64, 64), block_m=32, block_n=32))


@pytest.mark.parametrize(
    "field,mutate,message",
    [
        ("full_ptr", lambda t: t.long(), "full_ptr must be int32"),
        ("block_n", lambda v: 48, "block_n must be a positive multiple of 32"),
        ("block_m", lambda v: 8, "block_m must be >= 16"),
        ("part_ptr", lambda t: t[:2], "part_ptr must be"),
        ("full_ptr", lambda t: t + 1, "full_ptr must rise from 0"),
        ("mask_bits", lambda t: t[:, :16], "mask_bits must be"),
        ("q_len", lambda v: 0, "q_len/kv_len must be positive"),
        ("heads", lambda t: t + 7, "heads holds a structure outside"),
        ("dense_rows", lambda t: t.int(), "dense_rows must be a bool tensor"),
    ],
)
def test_validation_names_bad_field(field, mutate, message):
    kwargs = _valid_kwargs()
    kwargs[field] = mutate(kwargs[field])
    with pytest.raises(ValueError, match=message):
        Layout(**kwargs)


def test_validation_rejects_out_of_range_duplicates_and_padded_full_blocks():
    kinds = torch.full((1, 1, 2, 3), BLOCK_FULL, dtype=torch.int8)
    kinds[0, 0, :, 2] = BLOCK_SKIP  # rows keep two of three key blocks: listed, not dense
    lay = Layout.from_block_kinds(kinds, None, q_len=64, kv_len=96, block_m=32, block_n=32)
    base = layout_fields(lay)
    with pytest.raises(ValueError, match="full_idx holds a key block outside"):
        Layout(**dict(base, full_idx=torch.full_like(lay.full_idx, 5)))
    with pytest.raises(ValueError, match="listed twice"):
        Layout(**dict(base, full_idx=torch.zeros_like(lay.full_idx)))
    with pytest.raises(ValueError, match="must be partial, not full"):
        Layout(**dict(base, kv_len=80, full_idx=torch.tensor([0, 1, 0, 2], dtype=torch.int32)))
    with pytest.raises(ValueError, match="q_order must hold every token"):
        Layout(**base, q_order=torch.zeros(1, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="q_order must be int32"):
        Layout(**base, q_order=torch.arange(64)[None])
    with pytest.raises(ValueError, match="a dense row lists"):
        Layout(**dict(base, dense_rows=torch.ones(2, dtype=torch.bool)))
    with pytest.raises(ValueError, match="kv_order must hold every token"):
        Layout(**base, kv_order=torch.arange(96, dtype=torch.int32)[None] - 1)


def test_from_block_kinds_checks_arguments():
    kinds = torch.full((1, 1, 2, 2), BLOCK_PARTIAL, dtype=torch.int8)
    with pytest.raises(ValueError, match="partial_masks is None"):
        Layout.from_block_kinds(kinds, None, q_len=64, kv_len=64, block_m=32, block_n=32)
    with pytest.raises(ValueError, match="partial_masks must be"):
        Layout.from_block_kinds(kinds, torch.ones(3, 32, 32, dtype=torch.bool), q_len=64, kv_len=64,
                                block_m=32, block_n=32)
    with pytest.raises(ValueError, match="kinds must be"):
        Layout.from_block_kinds(kinds, None, q_len=200, kv_len=64, block_m=32, block_n=32)


def test_large_block_map_builds_quickly():
    """A Wan-480p-sized block map (26520 tokens, 12 heads) builds in well under a second."""
    import time

    length, bs, h = 26520, 128, 12
    n = math.ceil(length / bs)
    keep = torch.rand(h, n, n) < 0.1
    start = time.perf_counter()
    lay = Layout.from_block_map(keep, q_len=length, kv_len=length, block_m=bs, block_n=bs)
    elapsed = time.perf_counter() - start
    assert lay.mask_bits.shape[0] <= 1  # only the ragged-edge column mask
    assert elapsed < 5.0
