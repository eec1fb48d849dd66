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


# Per architecture, head dim and layout block size (the smaller of the query and key blocks): the kernel
# config. Chosen with ``benchmarks/gpu_configs.py`` (every candidate compiled for every target; results in
# ``benchmarks/results/gpu_configs.md``): the largest tiles that fit and spill nothing in every variant
# (fp16, bf16, with the log-sum-exp). Where the 4-warp 32x32 tile spills (sm_86/89 at head dim 64 with the
# log-sum-exp, sm_100/120 at 128), 2 warps hold it in registers.
_C = KernelConfig
TABLE: dict[int, dict[int, dict[int, KernelConfig]]] = {
    80: {64: {128: _C(128, 64, 8, 2), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 4, 2)},
         128: {128: _C(128, 64, 8, 3), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 4, 2)}},
    86: {64: {128: _C(128, 64, 8, 2), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 2, 2)},
         128: {128: _C(128, 64, 8, 3), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 4, 2)}},
    89: {64: {128: _C(128, 64, 8, 2), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 2, 2)},
         128: {128: _C(128, 64, 8, 3), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 4, 2)}},
    90: {64: {128: _C(128, 64, 8, 2), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 4, 2)},
         128: {128: _C(128, 64, 8, 2), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 4, 2)}},
    100: {64: {128: _C(128, 32, 8, 2), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 4, 2)},
          128: {128: _C(128, 64, 8, 2), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 2, 2)}},
    120: {64: {128: _C(128, 64, 8, 2), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 4, 2)},
          128: {128: _C(128, 64, 8, 3), 64: _C(64, 64, 8, 2), 32: _C(32, 32, 2, 2)}},
}
HEAD_DIMS = (64, 128)  # table rows; other head dims use the row of the next larger one (their tiles are padded)
DTYPES = ("fp16", "bf16")
BLOCK_SIZES = (32, 64, 128)  # the layout block sizes plans may use (headsparse.plan.BLOCK_SIZES)


def _family(capability: int) -> int:
    """The table row an architecture uses: its own, or the nearest older one listed."""
    known = sorted(ARCHITECTURES)
    older = [c for c in known if c <= capability]
    return older[-1] if older else known[0]


def config_for(capability: int, head_dim: int, block_m: int, block_n: int) -> KernelConfig:
    """The attention kernel's config for an architecture (e.g. 90), head dim and layout block sizes.

    Blocks that differ use the entry of the smaller one (its tiles divide both); a head dim between table
    rows uses the next larger row (its tiles are padded to that width).
    """
    for name, block in (("block_m", block_m), ("block_n", block_n)):
        if block not in BLOCK_SIZES:
            raise ValueError(f"{name}={block}: layout blocks are one of {BLOCK_SIZES}")
    row = TABLE[_family(capability)]
    dim = next((d for d in sorted(row) if d >= head_dim), max(row))
    return row[dim][min(block_m, block_n)]


def kernel_blocks(block_m: int, block_n: int) -> bool:
    """Whether the table has a checked config for these layout blocks (other sizes run another executor)."""
    return block_m in BLOCK_SIZES and block_n in BLOCK_SIZES


def launch_config(device: torch.device, head_dim: int, dtype: torch.dtype, block_m: int, block_n: int,
                  return_lse: bool) -> tuple[int, int, int, int]:
    """(tile_m, tile_n, num_warps, num_stages) for this device; the interpreter (CPU) uses the blocks."""
    if device.type != "cuda":
        return min(block_m, 64), min(block_n, 64), 4, 1
    major, minor = torch.cuda.get_device_capability(device)
    return config_for(10 * major + minor, head_dim, block_m, block_n).astuple()


def shipped_configs(archs: tuple[int, ...] | None = None, *, quick: bool = False):
    """(arch, dtype, head dim, layout block, config, with log-sum-exp) for every launch the table can make:
    each architecture x head dim x block size x dtype, and the log-sum-exp variant of each. ``quick``: bf16
    only, and the log-sum-exp variant of 128-token blocks only."""
    dtypes = DTYPES[-1:] if quick else DTYPES
    for arch in archs or tuple(ARCHITECTURES):
        for head_dim in HEAD_DIMS:
            for block in BLOCK_SIZES:
                config = config_for(arch, head_dim, block, block)
                for dtype in dtypes:
                    yield arch, dtype, head_dim, block, config, False
                if block == 128 or not quick:
                    yield arch, DTYPES[-1], head_dim, block, config, True
