"""Launch configs of the Triton kernels, per GPU architecture: tiles, warps and pipeline stages.

A config must compile for its architecture, fit its shared memory and spill no register; the static
check (``headsparse doctor --gpu-static``, ``tests/test_gpu_static.py``) compiles every entry for every
target and fails on any of the three. The launcher picks the entry for the device's compute
capability; the kernel's tiles divide the layout's blocks, so every layout block size runs
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Architectures users run (RTX 30/40/50 cards, A100, H100/H200, B200) and their opt-in shared memory
# per block, bytes.
ARCHITECTURES: dict[int, int] = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448, 100: 232_448, 120: 101_376}


@dataclass(frozen=True)
class KernelConfig:
    tile_m: int
    tile_n: int
    num_warps: int
    num_stages: int

    def astuple(self) -> tuple[int, int, int, int]:
        return self.tile_m, self.tile_n, self.num_warps, self.num_stages


def _family(capability: int) -> int:
    """The table row an architecture uses: its own, or the nearest older one listed."""
    known = sorted(ARCHITECTURES)
    older = [c for c in known if c <= capability]
    return older[-1] if older else known[0]


def config_for(capability: int, head_dim: int, block_m: int, block_n: int) -> KernelConfig:
    """The attention kernel's config for an architecture (e.g. 90), head dim and layout block sizes."""
    arch = _family(capability)
    small_smem = ARCHITECTURES[arch] < 150_000
    d = max(16, 1 << (head_dim - 1).bit_length())
    tile_m = min(block_m, 64 if (d > 64 or small_smem) else 128)
    tile_n = min(block_n, 64 if d > 64 else 128)
    warps = 4
    stages = 2 if (small_smem and d > 64) else 3
    return KernelConfig(tile_m, tile_n, warps, stages)


def launch_config(device: torch.device, head_dim: int, dtype: torch.dtype, block_m: int, block_n: int,
                  return_lse: bool) -> tuple[int, int, int, int]:
    """(tile_m, tile_n, num_warps, num_stages) for this device; the interpreter (CPU) uses the blocks."""
    if device.type != "cuda":
        return min(block_m, 64), min(block_n, 64), 4, 1
    major, minor = torch.cuda.get_device_capability(device)
    return config_for(10 * major + minor, head_dim, block_m, block_n).astuple()


HEAD_DIMS = (64, 128)  # the head dims of the supported models (others round up to the next power of two)
DTYPES = ("fp16", "bf16")


def shipped_configs(archs: tuple[int, ...] | None = None, *, quick: bool = False):
    """(arch, dtype, head dim, config, with log-sum-exp, with a key order) for every config the launcher can
    pick: each architecture x head dim x dtype, plus the log-sum-exp and key-order variants of the largest
    head dim. ``quick``: one dtype (the variants do not change tiles or stages)."""
    dtypes = DTYPES[-1:] if quick else DTYPES
    for arch in archs or tuple(ARCHITECTURES):
        for head_dim in HEAD_DIMS:
            config = config_for(arch, head_dim, 128, 128)
            for dtype in dtypes:
                yield arch, dtype, head_dim, config, False, False
        config = config_for(arch, HEAD_DIMS[-1], 128, 128)
        yield arch, DTYPES[-1], HEAD_DIMS[-1], config, True, False
        yield arch, DTYPES[-1], HEAD_DIMS[-1], config, False, True
