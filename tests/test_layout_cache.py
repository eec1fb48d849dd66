"""Every cached layout shares one byte bound: least recently used entries go first, rebuilt on demand."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from headsparse.kernels import layout_cache
from headsparse.kernels.layout_cache import CACHE, LayoutCache, set_layout_cache_limit
from headsparse.patterns import Geometry, Neighborhood, Spatial


def test_the_cache_evicts_least_recently_used_entries_past_its_byte_bound():
    cache = LayoutCache(limit=3000)
    made = []

    def build(name):
        made.append(name)
        return torch.zeros(250, dtype=torch.int32)  # 1000 bytes

    for name in "abc":
        cache.get(name, lambda name=name: build(name))
    assert cache.nbytes() == 3000 and len(cache) == 3
    cache.get("a", lambda: build("a!"))  # a hit: "a" becomes the most recent, nothing is built
    cache.get("d", lambda: build("d"))
    assert "b" not in cache and {"a", "c", "d"} <= set(cache._entries)
    assert cache.nbytes() <= 3000 and cache.evictions == 1
    assert made == ["a", "b", "c", "d"]
    # An entry larger than the bound is kept (it is in use) until the next one arrives.
    cache.get("huge", lambda: torch.zeros(10_000, dtype=torch.int8))
    assert list(cache._entries) == ["huge"]


def test_pattern_layouts_stay_within_the_bound_and_rebuild_identically():
    old = CACHE.limit
    CACHE.clear()
    try:
        first = Spatial().layout(Geometry(8, 16, 16), num_heads=2, block_m=64, block_n=64)
        reference = first.to_dense_mask()
        one = first.nbytes()
        set_layout_cache_limit(3 * one)
        for frames in range(2, 14):  # many resolutions, as a user generating at several sizes
            Neighborhood(kernel_size=(3, 5, 5)).layout(Geometry(frames, 16, 16), num_heads=2, block_m=64, block_n=64)
            assert CACHE.nbytes() <= 3 * one + max(
                (layout_cache.weigh(v) for v in CACHE._entries.values()), default=0)
        assert CACHE.evictions > 0
        again = Spatial().layout(Geometry(8, 16, 16), num_heads=2, block_m=64, block_n=64)
        assert again is not first  # evicted, then rebuilt
        assert torch.equal(again.to_dense_mask(), reference)
    finally:
        set_layout_cache_limit(old)
        CACHE.clear()


def test_bad_limits_are_refused_with_the_value():
    with pytest.raises(ValueError, match="-1"):
        set_layout_cache_limit(-1)
    with pytest.raises(ValueError, match=r"1\.5"):
        set_layout_cache_limit(1.5)  # type: ignore[arg-type]
    code = "import headsparse.kernels.layout_cache"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"HEADSPARSE_LAYOUT_CACHE_BYTES": "lots", "PATH": ""}, check=False)
    assert proc.returncode != 0 and "HEADSPARSE_LAYOUT_CACHE_BYTES must be a number of bytes, got 'lots'" in proc.stderr
