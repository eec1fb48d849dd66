"""Layout construction, exact masks, statistics and validation."""

import math

import pytest
import torch

from headsparse.kernels import BLOCK_FULL, BLOCK_PARTIAL, BLOCK_SKIP, Layout
from headsparse.kernels.layout import inverse_permutation, pack_bits, unpack_bits


def random_mask(lb, h, lq, lk, p=0.3):
    return torch.rand(lb, h, lq, lk) < p


def test_pack_unpack_roundtrip():
    mask = torch.rand(5, 7, 96) < 0.5
    mask[0, 0, 31] = True  # bit 31 -> sign bit of an int32 word
    words = pack_bits(mask)
    assert words.dtype == torch.int32 and words.shape == (5, 7, 3)
    assert torch.equal(unpack_bits(words), mask)


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
    assert lay.batch == 2 and lay.perm is not None
    assert torch.equal(lay.to_dense_mask(), mask)
    permuted = lay.to_dense_mask(permuted=True)
    assert torch.equal(permuted[0, 1], mask[0, 1][perm[1]][:, perm[1]])


def test_block_classification_and_dedup():
    # Block-diagonal mask on 128 tokens with 32-token blocks: 4 full diagonal blocks, rest skipped.
    length, bs = 128, 32
    ids = torch.arange(length) // bs
    mask = (ids[:, None] == ids[None, :]).expand(1, 2, length, length)
    lay = Layout.from_dense_mask(mask, block_m=bs, block_n=bs)
    assert lay.full_num.tolist() == [[[1, 1, 1, 1]] * 2]
    assert lay.part_num.sum() == 0 and lay.mask_bits.shape[0] == 0
    # A causal mask has identical lower-triangular diagonal tiles: one distinct partial mask.
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool)).expand(1, 2, length, length)
    lay = Layout.from_dense_mask(causal, block_m=bs, block_n=bs)
    assert lay.mask_bits.shape[0] == 1
    assert lay.part_num.tolist() == [[[1, 1, 1, 1]] * 2]
    assert lay.full_num.tolist() == [[[0, 1, 2, 3]] * 2]
    assert torch.equal(lay.to_dense_mask(), causal)


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


def test_block_density_counts_visited_blocks():
    kinds = torch.zeros(1, 2, 4, 4, dtype=torch.int8)
    kinds[0, 0, :, 0] = BLOCK_FULL
    kinds[0, 1] = BLOCK_FULL
    lay = Layout.from_block_kinds(kinds, None, q_len=128, kv_len=128, block_m=32, block_n=32)
    assert lay.block_density().tolist() == [[0.25, 1.0]]
    assert lay.density().tolist() == [[0.25, 1.0]]


def test_inverse_permutation():
    perm = torch.stack([torch.randperm(50) for _ in range(3)])
    inv = inverse_permutation(perm)
    assert torch.equal(torch.gather(perm, 1, inv), torch.arange(50).expand(3, 50))


_FIELDS = ("q_len", "kv_len", "block_m", "block_n", "full_num", "full_idx", "part_num", "part_idx", "part_mask",
           "mask_bits")


def layout_fields(lay):
    return {f: getattr(lay, f) for f in _FIELDS}


def _valid_kwargs():
    return layout_fields(Layout.from_dense_mask(random_mask(1, 2, 64, 64), block_m=32, block_n=32))


@pytest.mark.parametrize(
    "field,mutate,message",
    [
        ("full_num", lambda t: t.long(), "full_num must be int32"),
        ("block_n", lambda v: 48, "block_n must be a positive multiple of 32"),
        ("block_m", lambda v: 8, "block_m must be >= 16"),
        ("part_num", lambda t: t[:, :1], "part_num must be"),
        ("part_num", lambda t: t + 100, "part_num out of range"),
        ("mask_bits", lambda t: t[:, :16], "mask_bits must be"),
        ("q_len", lambda v: 0, "q_len/kv_len must be positive"),
    ],
)
def test_validation_names_bad_field(field, mutate, message):
    kwargs = _valid_kwargs()
    kwargs[field] = mutate(kwargs[field])
    with pytest.raises(ValueError, match=message):
        Layout(**kwargs)


def test_validation_rejects_out_of_range_and_duplicates():
    kinds = torch.full((1, 1, 2, 2), BLOCK_FULL, dtype=torch.int8)
    lay = Layout.from_block_kinds(kinds, None, q_len=64, kv_len=64, block_m=32, block_n=32)
    base = layout_fields(lay)
    bad = dict(base, full_idx=torch.full_like(lay.full_idx, 5))
    with pytest.raises(ValueError, match="full_idx holds a key block outside"):
        Layout(**bad)
    bad = dict(base, full_idx=torch.zeros_like(lay.full_idx))
    with pytest.raises(ValueError, match="listed twice"):
        Layout(**bad)
    bad = dict(base, kv_len=50)
    with pytest.raises(ValueError, match="must be partial, not full"):
        Layout(**bad)
    with pytest.raises(ValueError, match="perm is not a permutation"):
        Layout(**base, perm=torch.zeros(1, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="perm must be"):
        Layout(**base, perm=torch.arange(64))


def test_from_block_kinds_checks_arguments():
    kinds = torch.full((1, 1, 2, 2), BLOCK_PARTIAL, dtype=torch.int8)
    with pytest.raises(ValueError, match="partial_masks is None"):
        Layout.from_block_kinds(kinds, None, q_len=64, kv_len=64, block_m=32, block_n=32)
    with pytest.raises(ValueError, match="partial_masks must be"):
        Layout.from_block_kinds(kinds, torch.ones(3, 32, 32, dtype=torch.bool), q_len=64, kv_len=64,
                                block_m=32, block_n=32)
    with pytest.raises(ValueError, match="kinds must be"):
        Layout.from_block_kinds(kinds, None, q_len=200, kv_len=64, block_m=32, block_n=32)


def test_large_layout_builds_quickly():
    """A Wan-480p-sized block map (26520 tokens, 12 heads) builds in well under a second."""
    import time

    length, bs, h = 26520, 128, 12
    n = math.ceil(length / bs)
    kinds = ((torch.rand(1, h, n, n) < 0.1).to(torch.int8)) * BLOCK_FULL
    start = time.perf_counter()
    lay = Layout.from_block_kinds(kinds, None, q_len=length, kv_len=length, block_m=bs, block_n=bs)
    elapsed = time.perf_counter() - start
    assert lay.mask_bits.shape[0] <= 1  # only the ragged-edge column mask
    assert elapsed < 5.0
