"""The Triton kernels compile for every NVIDIA architecture users run, fit shared memory and spill nothing.

No GPU is needed: ``triton.compile`` targets each architecture and Triton's ``ptxas`` reports registers and
spills (:mod:`headsparse.kernels.gpu_static`). The quick subset (bf16, the log-sum-exp variant on
128-token blocks) runs here; ``headsparse doctor --gpu-static`` runs every dtype.
"""

from __future__ import annotations

import os

import pytest

from headsparse.kernels.gpu_static import check_config, check_shipped, triton_targets
from headsparse.kernels.triton_configs import (
    ARCHITECTURES,
    BLOCK_SIZES,
    HEAD_DIMS,
    TABLE,
    KernelConfig,
    config_for,
    kernel_blocks,
    shipped_configs,
)
from headsparse.plan import BLOCK_SIZES as PLAN_BLOCK_SIZES

needs_nvidia_backend = pytest.mark.skipif(not triton_targets(), reason="this Triton has no NVIDIA backend")


def test_table_has_an_entry_for_every_architecture_head_dim_and_block():
    assert set(TABLE) == set(ARCHITECTURES)
    assert BLOCK_SIZES == PLAN_BLOCK_SIZES
    for arch, rows in TABLE.items():
        assert set(rows) == set(HEAD_DIMS), arch
        for head_dim, by_block in rows.items():
            assert set(by_block) == set(BLOCK_SIZES), (arch, head_dim)
            for block, c in by_block.items():
                assert block % c.tile_m == 0 and block % c.tile_n == 0, (arch, head_dim, block, c)


def test_config_for_uses_the_smaller_block_and_the_next_larger_head_dim():
    assert config_for(89, 128, 128, 32) == TABLE[89][128][32]
    assert config_for(89, 80, 64, 64) == TABLE[89][128][64]
    assert config_for(87, 64, 128, 128) == TABLE[86][64][128]  # an unlisted architecture: the nearest older one
    assert config_for(121, 128, 128, 128) == TABLE[120][128][128]
    with pytest.raises(ValueError, match="block_n=16"):
        config_for(90, 64, 128, 16)
    assert kernel_blocks(64, 128) and not kernel_blocks(16, 128)


def test_shipped_configs_cover_every_table_entry():
    shipped = {(arch, d, block, c) for arch, _, d, block, c, _ in shipped_configs()}
    assert shipped == {(arch, d, block, c) for arch, rows in TABLE.items() for d, by in rows.items()
                       for block, c in by.items()}


@needs_nvidia_backend
def test_the_check_rejects_a_config_that_does_not_fit():
    # The config this kernel once shipped for every GPU: 128x128 tiles need more shared memory than an
    # RTX 40 card (sm_89) has, and more registers than a thread can hold at head dim 128.
    result = check_config(89, "bf16", 128, KernelConfig(128, 128, 8, 3))
    assert not result.ok
    assert "shared memory" in result.problem() or "spills" in result.problem()


@needs_nvidia_backend
def test_every_shipped_config_compiles_fits_and_does_not_spill():
    results = check_shipped(quick=True, workers=min(4, os.cpu_count() or 1))
    assert {r.arch for r in results} == set(ARCHITECTURES)
    bad = [f"sm_{r.arch} D={r.head_dim} {r.dtype} {r.config}: {r.problem()}" for r in results if not r.ok]
    assert not bad, "\n".join(bad)
