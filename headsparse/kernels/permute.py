"""Token orders that make patterns block-aligned, and the kernel that applies them.

Order builders describe a reordering of a video token grid (frames, height, width) with text or
condition tokens kept before (prefix) and/or after (suffix) the video tokens: position ``a`` of the
new order holds original token ``index[a]``, or -1 for a padding position (:func:`brick_order` pads
bricks and text to whole blocks). ``permute_tokens`` gathers q/k/v rows by such an index (one per
head; padding rows are zero), with a Triton kernel on CUDA (or under TRITON_INTERPRET=1) and
``torch.gather`` as the reference.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # triton is a Linux-only dependency
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None


def _check_grid(frames: int, height: int, width: int, prefix: int, suffix: int) -> None:
    for name, value in (("frames", frames), ("height", height), ("width", width)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name, value in (("prefix", prefix), ("suffix", suffix)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _with_text(video_index: Tensor, prefix: int, suffix: int) -> Tensor:
    n = video_index.numel()
    parts = [torch.arange(prefix), video_index + prefix, torch.arange(prefix + n, prefix + n + suffix)]
    return torch.cat(parts).to(torch.int64)


def frame_major_to_token_major(
    frames: int, height: int, width: int, *, prefix: int = 0, suffix: int = 0
) -> Tensor:
    """Index that lists, for each spatial location, its token in every frame (Sparse VideoGen).

    New position ``s * frames + t`` holds original token ``t * height * width + s``.
    """
    _check_grid(frames, height, width, prefix, suffix)
    hw = height * width
    t = torch.arange(frames)
    s = torch.arange(hw)
    video = (t[None, :] * hw + s[:, None]).reshape(-1)
    return _with_text(video, prefix, suffix)


def tile_major(
    frames: int, height: int, width: int, tile: tuple[int, int, int], *, prefix: int = 0, suffix: int = 0
) -> Tensor:
    """Index that groups video tokens into 3-D tiles (Sliding Tile / neighborhood attention).

    Tiles are visited in (t, h, w) order and tokens inside a tile in (t, h, w) order. Tiles at the
    far edge of an axis that does not divide evenly are smaller, so no token is duplicated.
    """
    _check_grid(frames, height, width, prefix, suffix)
    tt, th, tw = tile
    for name, value in (("tile[0]", tt), ("tile[1]", th), ("tile[2]", tw)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    tiles_h = -(-height // th)
    tiles_w = -(-width // tw)
    tile_id = ((t // tt) * tiles_h + h // th) * tiles_w + w // tw
    within = ((t % tt) * th + h % th) * tw + w % tw
    key = tile_id * (tt * th * tw) + within
    video = torch.argsort(key.reshape(-1), stable=True)
    return _with_text(video, prefix, suffix)


def brick_order(
    frames: int, height: int, width: int, brick: tuple[int, int, int], block: int, *,
    offset: tuple[int, int, int] = (0, 0, 0), within: str = "thw", prefix: int = 0, suffix: int = 0,
) -> Tensor:
    """A token order that packs the video grid into 3-D bricks, each padded to whole blocks.

    Bricks of ``brick`` tokens per (t, y, x) axis tile the grid, shifted by ``offset`` (a brick starts
    where ``i - offset`` is a multiple of its size, so the first brick of an axis may be smaller; so
    is the last). Bricks run in (t, y, x) order, tokens inside a brick in ``within`` order ("thw" or
    "hwt": every frame of a location together). Each brick, and the text before (``prefix``) and after
    (``suffix``) the video, starts on a block boundary: the positions up to it are padding (-1). So a
    block never mixes bricks, and a pattern whose windows are unions of bricks visits whole blocks.
    Returns int64 [positions], position -> token (-1 padding), positions a multiple of ``block``.
    """
    _check_grid(frames, height, width, prefix, suffix)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if within not in ("thw", "hwt"):
        raise ValueError(f"within must be 'thw' or 'hwt', got {within!r}")
    for axis, (b, o) in enumerate(zip(brick, offset, strict=True)):
        if b < 1 or not 0 <= o < b:
            raise ValueError(f"brick[{axis}] must be >= 1 and offset[{axis}] in [0, brick[{axis}]), got {b}, {o}")
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    coords = (t.reshape(-1), y.reshape(-1), x.reshape(-1))
    dims = (frames, height, width)
    cell, rank, counts = [], [], []
    for c, b, o, n in zip(coords, brick, offset, dims, strict=True):
        shifted = c + (b - o) % b  # brick k of this axis covers shifted values [k b, (k + 1) b)
        cell.append(shifted // b)
        counts.append(int((n - 1 + (b - o) % b) // b) + 1)
        rank.append(shifted % b)
    brick_id = (cell[0] * counts[1] + cell[1]) * counts[2] + cell[2]
    inner = [rank[0], rank[1], rank[2]] if within == "thw" else [rank[1], rank[2], rank[0]]
    sizes_in = [brick[0], brick[1], brick[2]] if within == "thw" else [brick[1], brick[2], brick[0]]
    local = (inner[0] * sizes_in[1] + inner[1]) * sizes_in[2] + inner[2]
    order = torch.argsort(brick_id * (brick[0] * brick[1] * brick[2]) + local, stable=True)
    ids = brick_id[order]
    n_bricks = counts[0] * counts[1] * counts[2]
    per_brick = torch.bincount(ids, minlength=n_bricks)
    padded = (per_brick + block - 1) // block * block
    start = torch.cumsum(padded, 0) - padded
    first = torch.cumsum(per_brick, 0) - per_brick
    pos = start[ids] + (torch.arange(ids.numel()) - first[ids])
    head, video_positions = -(-prefix // block) * block, int(padded.sum())
    total = head + video_positions + -(-suffix // block) * block
    out = torch.full((total,), -1, dtype=torch.int64)
    out[:prefix] = torch.arange(prefix)
    out[head + pos] = order + prefix
    out[head + video_positions : head + video_positions + suffix] = torch.arange(suffix) + prefix + ids.numel()
    return out


def permute_tokens_reference(x: Tensor, index: Tensor) -> Tensor:
    """y[b, h, a] = x[b, h, index[h, a]] for x [B, H, L, D] and index [H, P]; a row with index -1
    (a padding position of a token order) is zero."""
    b, h, _, d = x.shape
    index = index.to(x.device).long()
    positions = index.shape[1]
    y = torch.gather(x, 2, index.clamp_min(0)[None, :, :, None].expand(b, h, positions, d))
    return torch.where((index >= 0)[None, :, :, None], y, torch.zeros((), dtype=x.dtype, device=x.device))


if triton is not None:

    @triton.jit
    def _gather_rows_kernel(
        X, Y, Index,
        stride_xb, stride_xh, stride_xl, stride_xd,
        stride_yb, stride_yh, stride_yl, stride_yd,
        stride_ih, H, L, D,
        BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid_l = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < L
        src = tl.load(Index + h * stride_ih + rows, mask=row_ok, other=-1).to(tl.int64)
        ok = row_ok[:, None] & (cols[None, :] < D)
        # int64 offsets: B * H * L * D passes 2**31 at video sizes.
        x_row = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
        vals = tl.load(x_row + tl.maximum(src, 0)[:, None] * stride_xl + cols[None, :] * stride_xd,
                       mask=ok & (src >= 0)[:, None], other=0.0)
        y_row = Y + b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh
        tl.store(y_row + rows.to(tl.int64)[:, None] * stride_yl + cols[None, :] * stride_yd, vals, mask=ok)


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    if triton is None:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def permute_tokens(x: Tensor, index: Tensor) -> Tensor:
    """Gather token rows per head: y[b, h, a] = x[b, h, index[h, a]], x as [B, H, L, D].

    Uses the Triton kernel where Triton runs, ``torch.gather`` elsewhere. ``index`` is [H, P] (or [P],
    shared by every head): a token order with ``P >= L`` positions, -1 for a padding position (a zero
    row), or the inverse of an earlier order ([H, L]) to undo it.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, H, L, D], got shape {tuple(x.shape)}")
    b, h, _, d = x.shape
    if index.dim() == 1:
        index = index.expand(h, -1)
    if index.dim() != 2 or index.shape[0] != h:
        raise ValueError(f"index must be [{h}, positions] (or [positions]), got {tuple(index.shape)}")
    index = index.to(x.device)
    if not triton_available(x.device):
        return permute_tokens_reference(x, index)
    index = index.contiguous()
    positions = index.shape[1]
    y = torch.empty((b, h, positions, d), dtype=x.dtype, device=x.device)
    block_l = 64
    grid = (triton.cdiv(positions, block_l), b * h)
    _gather_rows_kernel[grid](
        x, y, index,
        *x.stride(), *y.stride(), index.stride(0), h, positions, d,
        BLOCK_L=block_l, BLOCK_D=triton.next_power_of_2(d),
    )
    return y
