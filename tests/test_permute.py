"""Token permutations: index builders, the Triton gather kernel and its torch reference."""

import pytest
import torch

from headsparse.kernels import frame_major_to_token_major, permute_tokens, tile_major
from headsparse.kernels.layout import inverse_permutation
from headsparse.kernels.permute import brick_order, permute_tokens_reference


def coords(frames, height, width):
    t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)], 1)


@pytest.mark.parametrize("grid", [(3, 4, 5), (1, 2, 2), (7, 1, 3)])
@pytest.mark.parametrize("prefix,suffix", [(0, 0), (4, 0), (0, 3), (2, 2)])
def test_frame_major_to_token_major(grid, prefix, suffix):
    f, h, w = grid
    idx = frame_major_to_token_major(f, h, w, prefix=prefix, suffix=suffix)
    n = f * h * w
    assert sorted(idx.tolist()) == list(range(prefix + n + suffix))
    assert idx[:prefix].tolist() == list(range(prefix))
    assert idx[prefix + n :].tolist() == list(range(prefix + n, prefix + n + suffix))
    c = coords(f, h, w)[idx[prefix : prefix + n] - prefix]
    # consecutive positions walk through frames of one spatial location
    assert torch.equal(c[:, 0], torch.arange(f).repeat(h * w))
    spatial = c[:, 1] * w + c[:, 2]
    assert torch.equal(spatial, torch.arange(h * w).repeat_interleave(f))


@pytest.mark.parametrize("grid,tile", [((4, 8, 8), (2, 4, 4)), ((3, 5, 7), (2, 2, 4)), ((1, 6, 6), (1, 3, 3))])
def test_tile_major_groups_tiles(grid, tile):
    f, h, w = grid
    idx = tile_major(f, h, w, tile, prefix=1, suffix=2)
    n = f * h * w
    assert sorted(idx.tolist()) == list(range(n + 3))
    assert idx[0] == 0 and idx[-2:].tolist() == [n + 1, n + 2]
    c = coords(f, h, w)[idx[1 : 1 + n] - 1]
    tile_id = (c[:, 0] // tile[0]) * 10_000 + (c[:, 1] // tile[1]) * 100 + c[:, 2] // tile[2]
    # every tile occupies one contiguous run, and tiles come in (t, h, w) order
    changes = (tile_id[1:] != tile_id[:-1]).sum().item()
    assert changes + 1 == len(torch.unique(tile_id))
    assert torch.equal(torch.unique_consecutive(tile_id), torch.sort(torch.unique(tile_id)).values)


def test_tile_major_full_tiles_are_block_contiguous():
    idx = tile_major(4, 8, 8, (2, 4, 4))
    assert torch.equal(idx[:32], torch.tensor([t * 64 + y * 8 + x for t in range(2) for y in range(4)
                                               for x in range(4)]))


def test_index_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="frames must be >= 1"):
        frame_major_to_token_major(0, 2, 2)
    with pytest.raises(ValueError, match="prefix must be >= 0"):
        frame_major_to_token_major(2, 2, 2, prefix=-1)
    with pytest.raises(ValueError, match=r"tile\[1\] must be >= 1"):
        tile_major(2, 2, 2, (1, 0, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 80])
def test_permute_kernel_matches_reference_and_round_trips(dtype, d):
    b, h, length = 2, 3, 150
    x = torch.randn(b, h, length, d).to(dtype)
    index = torch.stack([torch.randperm(length) for _ in range(h)])
    y = permute_tokens(x, index)
    assert torch.equal(y, permute_tokens_reference(x, index))
    assert torch.equal(permute_tokens(y, inverse_permutation(index)), x)


def test_permute_shared_index_and_strided_input():
    x = torch.randn(1, 40, 2, 32).transpose(1, 2)  # [B, H, L, D] view of [B, L, H, D]
    index = frame_major_to_token_major(2, 4, 5)
    y = permute_tokens(x, index)
    assert torch.equal(y, x[:, :, index])


def test_permute_rejects_bad_index():
    with pytest.raises(ValueError, match=r"index must be \[2, positions\]"):
        permute_tokens(torch.randn(1, 2, 10, 4), torch.zeros(3, 10, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padding_positions_give_zero_rows(dtype):
    x = torch.randn(1, 2, 10, 24).to(dtype)
    index = torch.tensor([[3, -1, 0, 9, -1, -1, 5, 1], [-1, 2, 4, 6, 8, -1, 7, 0]])
    y = permute_tokens(x, index)  # the Triton kernel under the interpreter
    assert y.shape == (1, 2, 8, 24) and torch.equal(y, permute_tokens_reference(x, index))
    assert not y[0, 0, 1].any() and torch.equal(y[0, 1, 2], x[0, 1, 4])


def test_brick_order_pads_bricks_and_text_to_whole_blocks():
    order = brick_order(3, 5, 6, (2, 2, 4), 8, offset=(0, 1, 2), prefix=3, suffix=2)
    assert order.numel() % 8 == 0 and sorted(order[order >= 0].tolist()) == list(range(3 + 90 + 2))
    blocks = order.view(-1, 8)
    assert blocks[0].tolist() == [0, 1, 2, -1, -1, -1, -1, -1]  # the prefix text fills its own block
    t, y, x = (torch.arange(90) // 30, torch.arange(90) // 6 % 5, torch.arange(90) % 6)
    for row in blocks[1:]:
        video = row[(row >= 3) & (row < 93)] - 3
        if video.numel():  # a block never mixes two bricks: one brick cell per axis
            assert (t[video] // 2).unique().numel() == 1
            assert ((y[video] + 1) // 2).unique().numel() == 1 and ((x[video] + 2) // 4).unique().numel() == 1
    with pytest.raises(ValueError, match=r"offset\[1\] in \[0, brick\[1\]\)"):
        brick_order(3, 5, 6, (2, 2, 4), 8, offset=(0, 2, 0))
