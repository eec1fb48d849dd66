"""On CPU a large layout is timed once under each executor with the real inputs; the faster is kept."""

from __future__ import annotations

import pytest
import torch

from headsparse.kernels import choose_backend, cpu_tuning, sparse_attention
from headsparse.patterns import Geometry, SlidingTile
from headsparse.patterns.base import clear_layout_cache

G = Geometry(4, 8, 8)


@pytest.fixture
def tuning(monkeypatch):
    clear_layout_cache()  # a cached layout keeps its tuned choice
    monkeypatch.setenv("HEADSPARSE_CPU_TUNING", "1")
    monkeypatch.setattr(cpu_tuning, "TUNE_MIN_PAIRS", 1)
    return monkeypatch


def _inputs(seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, G.seq_len, 16, generator=gen).to(dtype) for _ in range(3)]


def _layout():
    return SlidingTile(tile=(2, 4, 4), window=(1, 1, 3)).layout(G, num_heads=2, block_m=32, block_n=32)


@pytest.mark.parametrize("winner", cpu_tuning.CANDIDATES)
def test_the_faster_executor_is_kept_and_its_output_is_exact(tuning, winner):
    layout = _layout()
    q, k, v = _inputs()
    real = cpu_tuning.time.perf_counter
    clock = {"t": 0.0}

    def fake_clock():  # the winner's calls take 1 s, the other's 5 s (the clock advances on each read)
        return clock["t"]

    runs = []
    original = cpu_tuning.tune

    def tune(layout_, q_, run):
        def timed(name):
            runs.append(name)
            clock["t"] += 1.0 if name == winner else 5.0
            return run(name)
        return original(layout_, q_, timed)

    tuning.setattr(cpu_tuning.time, "perf_counter", fake_clock)
    tuning.setattr(cpu_tuning, "tune", tune)
    with torch.inference_mode():
        out = sparse_attention(q, k, v, layout)
    tuning.setattr(cpu_tuning.time, "perf_counter", real)
    reference = sparse_attention(q, k, v, layout, backend="masked")
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert cpu_tuning.tuned_choice(layout, q) == winner
    assert choose_backend(q, layout) == winner
    assert sorted(set(runs)) == sorted(cpu_tuning.CANDIDATES)  # each warmed and timed
    n = len(runs)
    with torch.inference_mode():
        again = sparse_attention(*_inputs(1), layout)
    assert len(runs) == n, "a tuned layout is not timed again"
    torch.testing.assert_close(again, sparse_attention(*_inputs(1), layout, backend="masked"), atol=1e-5, rtol=1e-5)


def test_a_new_dtype_or_batch_is_tuned_on_its_own(tuning):
    layout = _layout()
    with torch.inference_mode():
        sparse_attention(*_inputs(), layout)
        q16 = _inputs(dtype=torch.bfloat16)[0]
        assert cpu_tuning.tuned_choice(layout, q16) is None
        sparse_attention(*_inputs(dtype=torch.bfloat16), layout)
    assert cpu_tuning.tuned_choice(layout, q16) in cpu_tuning.CANDIDATES


def test_off_small_or_explicit_backend_means_no_timing(monkeypatch):
    clear_layout_cache()
    layout = _layout()
    q, k, v = _inputs()
    monkeypatch.setattr(cpu_tuning, "TUNE_MIN_PAIRS", 1)
    monkeypatch.setenv("HEADSPARSE_CPU_TUNING", "0")
    with torch.inference_mode():
        sparse_attention(q, k, v, layout)
    assert cpu_tuning.tuned_choice(layout, q) is None
    monkeypatch.setenv("HEADSPARSE_CPU_TUNING", "1")
    with torch.inference_mode():
        sparse_attention(q, k, v, layout, backend="grouped")
    assert cpu_tuning.tuned_choice(layout, q) is None
    monkeypatch.setattr(cpu_tuning, "TUNE_MIN_PAIRS", 1 << 40)
    with torch.inference_mode():
        sparse_attention(q, k, v, layout)
    assert cpu_tuning.tuned_choice(layout, q) is None
