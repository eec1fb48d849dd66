"""Token permutations that make patterns block-aligned, and the kernel that applies them.

Index builders describe a reordering of a video token grid (frames, height, width) with text or
condition tokens kept in place before (prefix) and/or after (suffix) the video tokens: position
``a`` of the new order holds original token ``index[a]``. ``permute_tokens`` gathers q/k/v rows
by such an index (one per head), with a Triton kernel on CUDA (or under TRITON_INTERPRET=1) and
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


def permute_tokens_reference(x: Tensor, index: Tensor) -> Tensor:
    """y[b, h, a] = x[b, h, index[h, a]] for x [B, H, L, D] and index [H, L]."""
    b, h, length, d = x.shape
    return torch.gather(x, 2, index.to(x.device)[None, :, :, None].expand(b, h, length, d))


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
        src = tl.load(Index + h * stride_ih + rows, mask=row_ok, other=0)
        ok = row_ok[:, None] & (cols[None, :] < D)
        vals = tl.load(
            X + b * stride_xb + h * stride_xh + src[:, None] * stride_xl + cols[None, :] * stride_xd, mask=ok
        )
        tl.store(Y + b * stride_yb + h * stride_yh + rows[:, None] * stride_yl + cols[None, :] * stride_yd, vals,
                 mask=ok)


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    if triton is None:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def permute_tokens(x: Tensor, index: Tensor) -> Tensor:
    """Gather token rows per head: y[b, h, a] = x[b, h, index[h, a]], x as [B, H, L, D].

    Uses the Triton kernel where Triton runs, ``torch.gather`` elsewhere. ``index`` is [H, L] (or
    [L], shared by every head) and may be the inverse of an earlier index to undo a permutation.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, H, L, D], got shape {tuple(x.shape)}")
    b, h, length, d = x.shape
    if index.dim() == 1 and index.shape[0] == length:
        index = index.expand(h, length)
    if tuple(index.shape) != (h, length):
        raise ValueError(f"index must be [{h}, {length}] (or [{length}]), got {tuple(index.shape)}")
    index = index.to(x.device)
    if not triton_available(x.device):
        return permute_tokens_reference(x, index)
    index = index.contiguous()
    y = torch.empty((b, h, length, d), dtype=x.dtype, device=x.device)
    block_l = 64
    grid = (triton.cdiv(length, block_l), b * h)
    _gather_rows_kernel[grid](
        x, y, index,
        *x.stride(), *y.stride(), index.stride(0), h, length, d,
        BLOCK_L=block_l, BLOCK_D=triton.next_power_of_2(d),
    )
    return y
