"""Every executor equals dense attention under the layout's exact mask.

Tolerances against a float32 reference (FlashAttention-style sweep): fp32 1e-5, fp16 1e-2,
bf16 5e-2. The Triton kernel runs in the interpreter on CPU (conftest sets TRITON_INTERPRET=1).
"""

import pytest
import torch

from headsparse.kernels import Layout, choose_backend, layout_reference, masked_attention, sparse_attention

ATOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def make_layout(lb, h, lq, lk, density, bm, bn, *, perm=False, empty_rows=True):
    """Per-head layouts mixing full, partial and skipped blocks (and optionally a permutation)."""
    blocks = torch.rand(lb, h, -(-lq // bm), -(-lk // bn)) < density
    elem = torch.rand(lb, h, lq, lk) < 0.7
    mask = blocks.repeat_interleave(bm, 2).repeat_interleave(bn, 3)[..., :lq, :lk]
    half = torch.rand(lb, h, *blocks.shape[2:]) < 0.5  # half of the kept blocks become partial
    half = half.repeat_interleave(bm, 2).repeat_interleave(bn, 3)[..., :lq, :lk]
    mask = mask & (elem | ~half)
    mask[..., 0, 0] = True
    if empty_rows:
        mask[:, 0, : min(lq, 5)] = False  # queries that keep no key
    p = torch.stack([torch.randperm(lq) for _ in range(h)]) if perm else None
    return Layout.from_dense_mask(mask, block_m=bm, block_n=bn, perm=p)


def qkv(b, h, lq, lk, d, dtype):
    return (torch.randn(b, h, lq, d, dtype=dtype), torch.randn(b, h, lk, d, dtype=dtype),
            torch.randn(b, h, lk, d, dtype=dtype))


def assert_matches_reference(q, k, v, lay, backend, atol):
    ref = layout_reference(q, k, v, lay)
    out = sparse_attention(q, k, v, lay, backend=backend)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=0)


# ---------------------------------------------------------------------------- Triton kernel sweep
@pytest.mark.parametrize(
    "b,h,lq,lk,d,bm,bn,density",
    [
        (1, 2, 128, 128, 64, 64, 64, 0.5),
        (2, 3, 200, 200, 32, 32, 32, 0.3),  # ragged length
        (1, 2, 96, 160, 128, 32, 64, 0.6),  # Lq != Lk, D = 128
        (1, 2, 100, 100, 80, 64, 32, 0.7),  # D not a power of two
        (1, 1, 64, 64, 16, 16, 32, 1.0),
        (2, 2, 150, 150, 64, 64, 64, 0.05),  # mostly skipped
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_kernel_matches_reference(b, h, lq, lk, d, bm, bn, density, dtype):
    lay = make_layout(1, h, lq, lk, density, bm, bn)
    q, k, v = qkv(b, h, lq, lk, d, dtype)
    assert_matches_reference(q, k, v, lay, "triton", ATOL[dtype])


def test_triton_per_batch_layout_and_permutation():
    lay = make_layout(2, 3, 130, 130, 0.4, 32, 32, perm=True)
    q, k, v = qkv(2, 3, 130, 130, 32, torch.float32)
    assert_matches_reference(q, k, v, lay, "triton", 1e-5)


def test_triton_strided_inputs():
    """Inputs as transposed views of [B, S, H, D] tensors (what diffusers processors hold)."""
    lay = make_layout(1, 2, 96, 96, 0.5, 32, 32)
    q, k, v = (torch.randn(1, 96, 2, 64).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    assert_matches_reference(q, k, v, lay, "triton", 1e-5)


def test_triton_log_sum_exp():
    lay = make_layout(1, 2, 100, 100, 0.5, 32, 32)
    q, k, v = qkv(1, 2, 100, 100, 32, torch.float32)
    _, lse_ref = layout_reference(q, k, v, lay, return_lse=True)
    _out, lse = sparse_attention(q, k, v, lay, backend="triton", return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 100)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_ref))
    finite = torch.isfinite(lse_ref)
    torch.testing.assert_close(lse[finite], lse_ref[finite], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- CPU executors
@pytest.mark.parametrize(
    "h,lq,lk,d,bm,bn,density,perm",
    [
        (2, 256, 256, 64, 64, 64, 0.4, False),
        (3, 200, 200, 64, 64, 64, 0.3, True),  # ragged + permutation
        (2, 128, 192, 32, 32, 64, 0.5, False),
    ],
)
@pytest.mark.parametrize("backend", ["grouped", "flex", "masked"])
def test_cpu_executors_match_reference(h, lq, lk, d, bm, bn, density, perm, backend):
    lay = make_layout(1, h, lq, lk, density, bm, bn, perm=perm)
    q, k, v = qkv(2, h, lq, lk, d, torch.float32)
    with torch.no_grad():
        assert_matches_reference(q, k, v, lay, backend, 1e-5)


def test_eager_flex_block_mask_is_exact():
    """The BlockMask's mask_mod is right on full blocks too (eager FlexAttention evaluates it there)."""
    from headsparse.kernels.flex import flex_block_sparse_attention

    lay = make_layout(1, 2, 128, 192, 0.5, 32, 64, perm=False)
    q, k, v = qkv(2, 2, 128, 192, 32, torch.float32)
    with torch.no_grad():
        out = flex_block_sparse_attention(q, k, v, lay, compiled=False)
    torch.testing.assert_close(out, layout_reference(q, k, v, lay), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flex_low_precision(dtype):
    lay = make_layout(1, 2, 256, 256, 0.3, 64, 64)
    q, k, v = qkv(1, 2, 256, 256, 64, dtype)
    with torch.no_grad():
        assert_matches_reference(q, k, v, lay, "flex", ATOL[dtype])


def test_flex_reuses_compiled_kernel_across_masks():
    """Changing only the layout's contents must not recompile (the CPU executor relies on it)."""
    from torch._dynamo.utils import counters

    q, k, v = qkv(1, 2, 256, 256, 64, torch.float32)
    with torch.no_grad():
        sparse_attention(q, k, v, make_layout(1, 2, 256, 256, 0.3, 64, 64), backend="flex")
        before = counters["stats"]["unique_graphs"]
        for density in (0.2, 0.6):
            assert_matches_reference(q, k, v, make_layout(1, 2, 256, 256, density, 64, 64), "flex", 1e-5)
        assert counters["stats"]["unique_graphs"] == before


def test_executors_agree_with_each_other():
    lay = make_layout(1, 3, 192, 192, 0.4, 64, 64, perm=True)
    q, k, v = qkv(1, 3, 192, 192, 64, torch.float32)
    with torch.no_grad():
        outs = {be: sparse_attention(q, k, v, lay, backend=be) for be in ("triton", "grouped", "flex", "masked")}
    for backend in ("grouped", "flex", "masked"):
        torch.testing.assert_close(outs["triton"], outs[backend], atol=1e-5, rtol=0)


def test_masked_executor_log_sum_exp_and_permutation():
    lay = make_layout(1, 2, 150, 150, 0.5, 32, 32, perm=True)
    q, k, v = qkv(1, 2, 150, 150, 32, torch.float32)
    out_ref, lse_ref = layout_reference(q, k, v, lay, return_lse=True)
    out, lse = sparse_attention(q, k, v, lay, return_lse=True)  # auto picks the masked executor
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    finite = torch.isfinite(lse_ref)
    assert torch.equal(finite, torch.isfinite(lse))
    torch.testing.assert_close(lse[finite], lse_ref[finite], atol=1e-5, rtol=0)


def test_dense_layout_uses_sdpa_and_is_exact():
    lay = Layout.dense(2, 256, block_m=64, block_n=64)
    q, k, v = qkv(1, 2, 256, 256, 64, torch.float32)
    assert choose_backend(q, lay) == "sdpa"
    out = sparse_attention(q, k, v, lay)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=0, rtol=0)


def test_auto_backend_choice_on_cpu():
    q = torch.randn(1, 2, 256, 64)
    sparse = make_layout(1, 2, 256, 256, 0.1, 64, 64, empty_rows=False)
    with torch.no_grad():
        assert choose_backend(q, sparse) == "flex"
        assert choose_backend(q, sparse, return_lse=True) == "masked"
        dense_ish = make_layout(1, 2, 256, 256, 1.0, 64, 64)
        assert choose_backend(q, dense_ish) == "flex"  # masked dense SDPA is slower even here
        ids = torch.arange(1024) // 512  # two 512-token "frames": groups of 8 query blocks
        frames = Layout.from_dense_mask((ids[:, None] == ids[None, :]).expand(2, 1024, 1024), block_m=64,
                                        block_n=64)
        assert choose_backend(torch.randn(1, 2, 1024, 64), frames) == "grouped"


def test_mixed_layer_splits_heads_by_executor_on_cpu():
    """A layer of a dense, a frame-grouped and a scattered head runs each through its own executor."""
    ids = torch.arange(1024) // 512
    frames = (ids[:, None] == ids[None, :])
    scattered = make_layout(1, 1, 1024, 1024, 0.1, 64, 64, empty_rows=False).to_dense_mask()[0, 0]
    mask = torch.stack([torch.ones(1024, 1024, dtype=torch.bool), frames, scattered])
    lay = Layout.from_dense_mask(mask, block_m=64, block_n=64)
    from headsparse.kernels.sparse_attention import cpu_head_groups

    q, k, v = qkv(2, 3, 1024, 1024, 32, torch.float32)
    with torch.no_grad():
        assert choose_backend(q, lay) == "per-head"
        assert [(c, h) for c, h, _ in cpu_head_groups(lay)] == [("sdpa", [0]), ("grouped", [1]), ("flex", [2])]
        assert_matches_reference(q, k, v, lay, "auto", ATOL[torch.float32])
        one = lay.select_heads([2, 0])
        assert one.num_heads == 2 and torch.equal(one.to_dense_mask()[0], lay.to_dense_mask()[0, [2, 0]])


def test_skipped_head_gives_zeros_not_nan():
    mask = torch.ones(1, 2, 96, 96, dtype=torch.bool)
    mask[:, 1] = False  # a head with an empty key list everywhere
    lay = Layout.from_dense_mask(mask, block_m=32, block_n=32)
    assert not lay.block_kinds()[0, 1].any()
    q, k, v = qkv(1, 2, 96, 96, 32, torch.float32)
    for backend in ("triton", "grouped", "flex", "masked"):
        with torch.no_grad():
            out = sparse_attention(q, k, v, lay, backend=backend)
        assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1])), backend
        assert not torch.isnan(out).any(), backend


def test_reference_empty_rows():
    q, k, v = qkv(1, 1, 4, 4, 8, torch.float32)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    out, lse = masked_attention(q, k, v, mask, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    lay = make_layout(1, 2, 64, 64, 0.5, 32, 32)
    q, k, v = qkv(1, 2, 64, 64, 32, torch.float32)
    with pytest.raises(TypeError, match="dtypes differ"):
        sparse_attention(q, k.half(), v, lay)
    with pytest.raises(TypeError, match="supported: float16, bfloat16, float32"):
        sparse_attention(q.double(), k.double(), v.double(), lay)
    with pytest.raises(ValueError, match=r"q must be \[batch, heads, seq, head_dim\]"):
        sparse_attention(q[0], k, v, lay)
    with pytest.raises(ValueError, match="layout has 2 heads but q has 3"):
        sparse_attention(*qkv(1, 3, 64, 64, 32, torch.float32), make_layout(1, 2, 64, 64, 0.5, 32, 32))
    with pytest.raises(ValueError, match="layout was built for q_len=64"):
        sparse_attention(*qkv(1, 2, 96, 96, 32, torch.float32), lay)
    with pytest.raises(ValueError, match="k and v shapes differ"):
        sparse_attention(q, k, v[:, :, :32], lay)
    with pytest.raises(ValueError, match="layout batch 2 must be 1 or the input batch 3"):
        sparse_attention(*qkv(3, 2, 64, 64, 32, torch.float32), make_layout(2, 2, 64, 64, 0.5, 32, 32))
    with pytest.raises(ValueError, match="backend must be one of"):
        sparse_attention(q, k, v, lay, backend="nope")
    with pytest.raises(TypeError, match="layout must be a headsparse Layout"):
        sparse_attention(q, k, v, None)
    if torch.device("meta") != q.device:
        with pytest.raises(ValueError, match="devices differ"):
            sparse_attention(q, k.to("meta"), v, lay)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_executor_frames(dtype):
    """Same-frame masks on frames of 100 tokens with 32-token blocks: query blocks inside a frame
    share a column-masked key list, blocks straddling two frames split into two row sets; neither
    needs an SDPA mask. A random head needs one. Per-batch and shared layouts both match."""
    from headsparse.kernels.grouped import plan_groups

    length, bs = 330, 32
    frame = torch.arange(length) // 100
    mask = (frame[:, None] == frame[None, :]).expand(2, 2, length, length).clone()
    mask[1, 1] = torch.rand(length, length) < 0.2
    q, k, v = qkv(2, 2, length, length, 32, dtype)
    shared = Layout.from_dense_mask(mask[:1], block_m=bs, block_n=bs)
    plan = plan_groups(shared)
    assert all(b.mask_ids is None for b in plan)
    assert any(b.n_q % bs for b in plan)  # straddling blocks were split by rows
    per_batch = Layout.from_dense_mask(mask, block_m=bs, block_n=bs)
    assert any(b.mask_ids is not None for b in plan_groups(per_batch))  # the random head
    for lay in (per_batch, shared):
        with torch.no_grad():
            assert_matches_reference(q, k, v, lay, "grouped", ATOL[dtype])


def test_grouped_rejects_log_sum_exp():
    lay = make_layout(1, 2, 64, 64, 0.5, 32, 32)
    with pytest.raises(ValueError, match="grouped executor cannot return the log-sum-exp"):
        sparse_attention(*qkv(1, 2, 64, 64, 32, torch.float32), lay, backend="grouped", return_lse=True)
