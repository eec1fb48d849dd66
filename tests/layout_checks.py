"""The check every pattern test shares: a pattern's Layout keeps exactly its token-level mask."""

from __future__ import annotations

import torch

from headsparse.patterns import Geometry, Pattern


def assert_layout_is_mask(pattern: Pattern, geometry: Geometry, block_m: int, block_n: int, heads: int = 1) -> None:
    """Every head of ``pattern.layout(geometry, ...)`` keeps exactly ``pattern.dense_mask(geometry)``."""
    lay = pattern.layout(geometry, num_heads=heads, block_m=block_m, block_n=block_n)
    assert lay.num_heads == heads and lay.q_len == geometry.seq_len
    ref = pattern.dense_mask(geometry)
    dense = lay.to_dense_mask()
    for h in range(heads):
        assert torch.equal(dense[0, h], ref), (pattern, geometry, h)
