"""Randomised layouts through every executor, against a float64 reference built from the original mask.

Each case draws a random element mask (block maps mixing skipped, whole and partly kept blocks, rows
that keep nothing, ragged lengths), 1-4 heads, batch 1-2 (a layout per batch item or shared), block
sizes from 32 to 64, fp32/bf16/fp16, and sometimes per-head token orders with padding positions. The
Layout is built from the mask; the reference is computed from the *mask* (not the Layout) in float64;
every executor must match it: masked, grouped, compiled FlexAttention (on the shapes it has compiled;
eager FlexAttention elsewhere), the Triton kernel (interpreter) and ``auto``.

The default suite runs ``FUZZ_CASES`` cases, with FlexAttention and ``auto`` on every fourth (eager
FlexAttention evaluates its mask on every element: seconds a case); ``pytest -m slow
tests/test_layout_fuzz.py`` runs 1000 more with every executor on every case (slow tests are left out of
the default run).
"""

from __future__ import annotations

import functools
import importlib
import math
from unittest import mock

import pytest
import torch

from headsparse.kernels import BLOCK_PARTIAL, BLOCK_SKIP, Layout, sparse_attention
from headsparse.kernels.flex import flex_block_sparse_attention

executor_module = importlib.import_module("headsparse.kernels.sparse_attention")

FUZZ_CASES = 240
SLOW_CASES = FUZZ_CASES + 1000
TOLERANCE = {torch.float32: 2e-5, torch.float16: 1.5e-2, torch.bfloat16: 6e-2}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCKS = ((32, 32), (64, 32), (32, 64), (64, 64))
# FlexAttention is compiled for one shape per case kind; other shapes run it eagerly (same BlockMask).
COMPILED_SHAPE = (1, 2, 96, 96, 32, torch.float32)


def reference(q, k, v, mask, scale):
    """float64 softmax(q k^T scale) v over the mask [LB, H, Lq, Lk]; rows keeping nothing are zero."""
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", p, v.double())


def random_orders(g: torch.Generator, heads: int, length: int, block: int) -> torch.Tensor:
    """Per-head orders of ``length`` tokens scattered over whole blocks with padding positions (-1)."""
    positions = (math.ceil(length / block) + int(torch.randint(0, 2, (1,), generator=g))) * block
    out = torch.full((heads, positions), -1, dtype=torch.int64)
    for h in range(heads):
        slots = torch.randperm(positions, generator=g)[:length].sort().values
        out[h, slots] = torch.randperm(length, generator=g)
    return out


def case(seed: int):
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    b, h = pick((1, 2)), pick((1, 2, 3, 4))
    bm, bn = pick(BLOCKS)
    lq = pick((bm, 2 * bm, 2 * bm + 7, 3 * bm - 5, 77))
    square = bool(torch.rand((), generator=g) < 0.6)
    lk = lq if square else pick((bn, 2 * bn + 3, 100, 141))
    dtype = pick(DTYPES)
    d = pick((16, 32, 48))
    if seed % 5 == 0:  # one compiled FlexAttention shape, many masks
        b, h, lq, lk, d, dtype = COMPILED_SHAPE
        bm, bn, square = 32, 32, True
    lb = pick((1, b))
    ordered = square and bool(torch.rand((), generator=g) < 0.35)
    density = float(torch.rand((), generator=g)) * 0.9 + 0.05
    # A block map over natural-order blocks, then element masks inside partial blocks.
    mq, nk = math.ceil(lq / bm), math.ceil(lk / bn)
    kinds = (torch.rand(lb, h, mq, nk, generator=g) < density).to(torch.int8) * 2
    kinds = torch.where((kinds > 0) & (torch.rand(lb, h, mq, nk, generator=g) < 0.5), BLOCK_PARTIAL, kinds)
    mask = kinds.repeat_interleave(bm, 2).repeat_interleave(bn, 3)[..., :lq, :lk]
    element = torch.rand(lb, h, lq, lk, generator=g) < float(torch.rand((), generator=g))
    mask = (mask == 2) | ((mask == BLOCK_PARTIAL) & element)
    if torch.rand((), generator=g) < 0.4:
        rows = torch.randint(0, lq, (max(1, lq // 10),), generator=g)
        mask[:, 0, rows] = False  # queries that keep no key
    if torch.rand((), generator=g) < 0.3:
        mask[:, -1] = True  # a dense head
    if ordered:
        q_order = random_orders(g, h, lq, bm)
        k_order = q_order if bm == bn and torch.rand((), generator=g) < 0.5 else random_orders(g, h, lk, bn)
        layout = layout_in_orders(mask, q_order, k_order, bm, bn)
    else:
        layout = Layout.from_dense_mask(mask, block_m=bm, block_n=bn)
    q = torch.randn(b, h, lq, d, generator=g).to(dtype)
    k = torch.randn(b, h, lk, d, generator=g).to(dtype)
    v = torch.randn(b, h, lk, d, generator=g).to(dtype)
    return q, k, v, mask.expand(b, h, lq, lk), layout


def layout_in_orders(mask, q_order, k_order, bm, bn):
    """The Layout of ``mask`` in per-head padded orders (element masks in order positions)."""
    lb, h, lq, lk = mask.shape
    pq, pk = q_order.shape[1], k_order.shape[1]
    qi, ki = q_order.clamp_min(0), k_order.clamp_min(0)
    ordered = torch.zeros(lb, h, pq, pk, dtype=torch.bool)
    for b in range(lb):
        for hh in range(h):
            m = mask[b, hh][qi[hh]][:, ki[hh]]
            ordered[b, hh] = m & (q_order[hh] >= 0)[:, None] & (k_order[hh] >= 0)[None, :]
    tiles = ordered.view(lb, h, pq // bm, bm, pk // bn, bn).permute(0, 1, 2, 4, 3, 5)
    kinds = torch.where(tiles.flatten(-2).any(-1), BLOCK_PARTIAL, BLOCK_SKIP).to(torch.int8)
    return Layout.from_block_kinds(kinds, tiles[kinds > 0], q_len=lq, kv_len=lk, block_m=bm, block_n=bn,
                                   q_order=q_order, kv_order=k_order)


def executors(q, layout, every: bool):
    """The executors of a case; where its shape has no compiled FlexAttention, flex (also inside auto)
    runs eagerly (the same BlockMask, mask_mod evaluated on every block) instead of compiling."""
    compiled = (q.shape[0], q.shape[1], q.shape[2], layout.kv_len, q.shape[3], q.dtype) == COMPILED_SHAPE
    return ["masked", "grouped", "triton"] + (["flex", "auto"] if every or compiled else []), compiled


def run(q, k, v, layout, backend, scale, compiled):
    if compiled:
        return sparse_attention(q, k, v, layout, scale=scale, backend=backend)
    eager = functools.partial(flex_block_sparse_attention, compiled=False)
    with mock.patch.object(executor_module, "flex_block_sparse_attention", eager):
        return sparse_attention(q, k, v, layout, scale=scale, backend=backend)


def check(seed: int, every: bool = True) -> list[str]:
    q, k, v, mask, layout = case(seed)
    scale = q.shape[-1] ** -0.5
    ref = reference(q, k, v, mask, scale)
    problems = []
    backends, compiled = executors(q, layout, every)
    with torch.no_grad():
        for backend in backends:
            out = run(q, k, v, layout, backend, scale, compiled)
            err = (out.double() - ref).abs().max().item() if out.numel() else 0.0
            if not (out.shape == q.shape and out.dtype == q.dtype and err <= TOLERANCE[q.dtype]):
                problems.append(f"seed {seed} {backend}: max error {err:.3g} ({q.dtype}, {tuple(q.shape)}, "
                                f"{layout})")
    return problems


@pytest.mark.parametrize("start", range(0, FUZZ_CASES, 20))
def test_random_layouts_match_the_float64_mask_reference(start):
    problems = [p for seed in range(start, start + 20) for p in check(seed, every=seed % 4 == 1)]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("start", range(FUZZ_CASES, SLOW_CASES, 50))
def test_many_more_random_layouts(start):
    problems = [p for seed in range(start, start + 50) for p in check(seed)]
    assert not problems, "\n".join(problems)
