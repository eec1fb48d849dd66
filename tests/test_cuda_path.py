"""The CUDA path without a GPU: dispatch (dense heads to SDPA, the rest to Triton), a sync-free dynamic builder.

Dispatch is tested with the device check patched (``device_kind`` says "cuda" for CPU tensors; the Triton
kernel runs in the interpreter), so the very code a GPU takes decides and runs, against the reference.
The dynamic (pooled) builder is shown to need no value from the device: it runs whole on the *meta*
device (where any read-back raises) and traces whole under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from headsparse.kernels import Layout, layout_reference, sparse_attention
from headsparse.kernels.layout import block_map_rows
from headsparse.kernels.triton_attention import kernel_rows
from headsparse.patterns import Geometry, PooledBlocks, Spatial
from headsparse.patterns.layer import heads_layout

executors = importlib.import_module("headsparse.kernels.sparse_attention")


@pytest.fixture
def as_cuda(monkeypatch):
    """CPU tensors take the CUDA dispatch."""
    monkeypatch.setattr(executors, "device_kind", lambda device: "cuda")


def _qkv(heads, length, d=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, heads, length, d, generator=g).to(dtype) for _ in range(3))


BF16 = {"atol": 2e-2, "rtol": 0}  # bf16 outputs against the float32 reference of the same bf16 inputs


def _reference(q, k, v, layout):
    return layout_reference(q.float(), k.float(), v.float(), layout).to(q.dtype)


def test_dense_heads_run_sdpa_and_sparse_heads_triton_on_cuda(as_cuda, monkeypatch):
    g = Geometry(4, 6, 8)
    dense = Layout.dense(2, g.seq_len, block_m=32, block_n=32)
    assert executors.choose_backend(_qkv(2, g.seq_len)[0], dense) == "sdpa"
    mixed = heads_layout((Spatial(), Spatial(), Spatial(frame_band=9), Spatial()), g, 32)  # head 2 keeps everything
    q, k, v = _qkv(4, g.seq_len, dtype=torch.bfloat16)
    assert executors.choose_backend(q, mixed) == "per-head"
    groups = {choice: heads for choice, heads, _ in executors.head_groups(mixed, "cuda")}
    assert groups == {"triton": [0, 1, 3], "sdpa": [2]}
    calls = []
    flash = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape[1])
        return flash(*args, **kwargs)

    monkeypatch.setattr(executors.F, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        out = sparse_attention(q, k, v, mixed)
    assert calls == [1]  # the dense head went to SDPA, alone
    torch.testing.assert_close(out, _reference(q, k, v, mixed), **BF16)


def test_float32_runs_sdpa_on_cuda_masked_where_sparse(as_cuda):
    """No launch config of the kernel's float32 variant fits a GPU, so float32 inputs never reach it."""
    g = Geometry(4, 6, 8)
    mixed = heads_layout((Spatial(), Spatial(frame_band=9)), g, 32)
    q, k, v = _qkv(2, g.seq_len)
    assert executors.choose_backend(q, mixed) == "masked"
    assert executors.choose_backend(q, Layout.dense(2, g.seq_len, block_m=32, block_n=32)) == "sdpa"
    assert executors.choose_backend(q.bfloat16(), mixed) == "per-head"
    with torch.no_grad():
        torch.testing.assert_close(sparse_attention(q, k, v, mixed), layout_reference(q, k, v, mixed), atol=1e-5,
                                   rtol=0)


def test_very_dense_layouts_run_masked_sdpa_on_cuda(as_cuda):
    length = 256
    mask = torch.ones(1, 2, length, length, dtype=torch.bool)
    mask[0, :, 5, 7] = False  # every block visited, one pair dropped
    almost = Layout.from_dense_mask(mask, block_m=32, block_n=32)
    assert not almost.is_dense() and float(almost.block_density().max()) >= executors.CUDA_MASKED_CROSSOVER
    q, k, v = _qkv(2, length)
    assert executors.choose_backend(q, almost) == "masked"
    with torch.no_grad():
        torch.testing.assert_close(sparse_attention(q, k, v, almost), layout_reference(q, k, v, almost), atol=1e-5,
                                   rtol=0)


def test_the_cpu_dispatch_is_unchanged_by_the_cuda_rules():
    g = Geometry(4, 6, 8)
    mixed = heads_layout((Spatial(), Spatial(frame_band=9)), g, 32)
    assert executors.choose_backend(_qkv(2, g.seq_len)[0], mixed) == "per-head"
    assert {c for c, _, _ in executors.head_groups(mixed, "cpu")} <= {"sdpa", "grouped", "flex"}


def test_pooled_layouts_are_built_on_the_meta_device_without_reading_back(as_cuda, monkeypatch):
    """Every read-back (``.item()``, ``bool(tensor)``, ``nonzero``) raises on meta tensors: the builder has none."""
    g = Geometry(5, 8, 12, text_len=9, text_position="suffix")
    heads, length = 3, g.seq_len
    q = torch.empty(heads, length, 64, device="meta")
    k = torch.empty(heads, length, 64, device="meta")
    layout = PooledBlocks(keep=0.2).layout_from_qk(q, k, g, 64, on_device=True)
    assert layout.device.type == "meta" and not layout.checked
    rows = kernel_rows(layout)  # what the kernel launch reads: no dense-row expansion, no read-back
    assert all(t.device.type == "meta" for t in rows)
    assert layout.order_index("q") is None and layout.order_index("kv") is None
    monkeypatch.setattr(executors, "triton_available", lambda device: True)
    q4 = torch.empty(1, heads, length, 64, device="meta", dtype=torch.bfloat16)
    assert executors.choose_backend(q4, layout) == "triton"
    assert executors.choose_backend(q4.float(), layout) == "masked"  # float32: no read-back either
    with pytest.raises((RuntimeError, NotImplementedError)):
        layout.is_dense()  # the statistics *do* read back: the CUDA dispatch must (and does) not ask


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_pooled_selection_and_rows_trace_whole_under_compile():
    g = Geometry(4, 8, 8, text_len=5, text_position="prefix")
    pattern = PooledBlocks(keep=0.25)

    def build(q, k):
        keep = pattern.keep_blocks(q, k, g, 32)
        return block_map_rows(keep, g.seq_len, 32, 32)

    compiled = torch.compile(build, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, g.seq_len, 16, generator=gen) for _ in range(2))
    got, want = compiled(q, k), build(q, k)
    assert set(got) == set(want) and all(torch.equal(got[name], want[name]) for name in want)


def test_on_device_pooled_layouts_compute_exactly(as_cuda):
    """The layout built on the device runs (Triton, interpreter) and equals its checked twin's reference."""
    g = Geometry(4, 6, 10)
    q, k, v = _qkv(2, g.seq_len, dtype=torch.bfloat16)
    pattern = PooledBlocks(keep=0.3)
    fast = pattern.layout_from_qk(q[0], k[0], g, 32, on_device=True)
    checked = pattern.layout_from_qk(q[0], k[0], g, 32)
    assert executors.choose_backend(q, fast) == "triton"
    with torch.no_grad():
        out = sparse_attention(q, k, v, fast)
    torch.testing.assert_close(out, _reference(q, k, v, checked), **BF16)
