"""Online recognition (plan="auto"), the pooled dynamic pattern, and the planted-pattern models."""

from __future__ import annotations

import pytest
import torch

import headsparse
from headsparse.kernels import layout_reference
from headsparse.kernels.layout import BLOCK_FULL
from headsparse.patterns import Dense, Geometry, PooledBlocks
from headsparse.patterns.recognize import Recognizer, default_candidates, recognition_layout
from headsparse.testing import EXPECTED_PATTERN, KINDS, plant_wan, planted_qkv, random_kinds, tiny_planted_wan

GEOMETRIES = [
    Geometry(5, 16, 16),
    Geometry(4, 16, 24, text_len=20, text_position="prefix"),
    Geometry(6, 12, 20, text_len=12, text_position="suffix"),
]


def test_planted_heads_attend_as_labelled():
    g = Geometry(5, 8, 12)
    q, k, _ = planted_qkv(g, list(KINDS), head_dim=64)
    probs = torch.softmax(q[0] @ k[0].transpose(-1, -2) / 8, -1)
    t, y, x, _ = g.coords(torch.arange(g.seq_len))
    same_frame = (t[:, None] == t[None, :]).float()
    same_place = ((y[:, None] == y[None, :]) & (x[:, None] == x[None, :])).float()
    near = (((t[:, None] - t[None, :]).abs() <= 1) & ((y[:, None] - y[None, :]).abs() <= 4)
            & ((x[:, None] - x[None, :]).abs() <= 4)).float()
    assert (probs[0] * same_frame).sum(-1).min() > 0.99  # spatial
    assert (probs[1] * same_place).sum(-1).min() > 0.99  # temporal
    assert (probs[2] * near).sum(-1).min() > 0.95 and (probs[2] * same_frame).sum(-1).max() < 0.95  # neighborhood
    torch.testing.assert_close(probs[3], torch.full_like(probs[3], 1 / g.seq_len))  # global


def test_recognition_accuracy_over_three_geometries():
    correct = total = 0
    for i, g in enumerate(GEOMETRIES):
        kinds = random_kinds(1, 16, seed=i)[0]
        q, k, v = planted_qkv(g, kinds, head_dim=64, seed=i)
        rec = Recognizer().recognize(q, k, v, g, block=64)
        for kind, pattern in zip(kinds, rec.heads, strict=True):
            correct += EXPECTED_PATTERN[kind] == pattern.name
            total += 1
    assert correct / total >= 0.95, f"accuracy {correct}/{total}"


def test_auto_layout_beats_every_fixed_pattern():
    g = GEOMETRIES[1]
    kinds = random_kinds(1, 12, seed=7)[0]
    q, k, v = planted_qkv(g, kinds, head_dim=64, seed=7)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def err(out):
        return ((out - dense).norm() / dense.norm()).item()

    rec = Recognizer().recognize(q, k, v, g, block=64)
    auto = recognition_layout(rec, g, 64)
    auto_err = err(headsparse.sparse_attention(q, k, v, auto))
    for pattern in default_candidates(g):
        fixed = pattern.layout(g, num_heads=12, block_m=64, block_n=64)
        assert auto_err < err(headsparse.sparse_attention(q, k, v, fixed)), pattern
    assert auto_err < 0.02
    assert float(auto.density().mean()) < 0.7
    # ... and the generic dynamic baseline at the same block budget
    budget = float(auto.block_density().mean())
    pooled = PooledBlocks(keep=budget).layout_from_qk(q[0], k[0], g, 64)
    assert float(pooled.block_density().mean()) >= budget * 0.95
    assert auto_err < err(headsparse.sparse_attention(q, k, v, pooled))


def test_unmatched_heads_stay_dense_and_bound_is_respected():
    g = GEOMETRIES[0]
    q, k, v = planted_qkv(g, ["global", "spatial"], head_dim=64)
    rec = Recognizer(pooled=None).recognize(q, k, v, g, block=64)
    assert isinstance(rec.heads[0], Dense) and rec.heads[1].name == "spatial"
    assert all(e <= 0.05 for e in rec.errors)
    with pytest.raises(ValueError, match="error_bound"):
        Recognizer(error_bound=2.0)


def test_max_cost_keeps_only_patterns_the_device_runs_fast(monkeypatch, tmp_path):
    """With ``max_cost`` a head takes only a pattern measured within that fraction of dense time."""
    from headsparse.patterns import recognize as recognize_module
    from headsparse.search import CostModel

    g = GEOMETRIES[0]
    q, k, v = planted_qkv(g, ["spatial", "temporal", "global"], head_dim=64)
    blocks = CostModel("blocks")
    monkeypatch.setattr(recognize_module, "_cost_model", lambda device, dtype: blocks)
    free = Recognizer().recognize(q, k, v, g, block=64)
    assert [p.name for p in free.heads[:2]] == ["spatial", "temporal"]
    # Just below spatial's block fraction, spatial is no longer affordable.
    bound = float(blocks.costs(free.heads[:1], g, heads=3, head_dim=64, block=64)[0]) * 0.99
    capped = Recognizer(max_cost=bound).recognize(q, k, v, g, block=64)
    assert capped.heads[0].name != "spatial"
    costs_capped = blocks.costs(capped.heads, g, heads=3, head_dim=64, block=64)
    assert all(isinstance(p, Dense) or c <= bound for p, c in zip(capped.heads, costs_capped.tolist(), strict=True))
    # Each pattern fits, but the layer's mix of heads does not: the layer runs dense.
    mixed = blocks.layer_cost(free.heads, g, head_dim=64, block=64)
    assert mixed > max(float(c) for p, c in zip(free.heads, blocks.costs(free.heads, g, heads=3, head_dim=64,
                                                                          block=64), strict=True)
                       if not isinstance(p, Dense))
    too_mixed = Recognizer(max_cost=mixed * 0.99).recognize(q, k, v, g, block=64)
    assert all(isinstance(p, Dense) for p in too_mixed.heads)
    assert Recognizer(max_cost=mixed).recognize(q, k, v, g, block=64).heads == free.heads
    # Nothing affordable: every head dense, and nothing sampled.
    none = Recognizer(max_cost=1e-6).recognize(q, k, v, g, block=64)
    assert all(isinstance(p, Dense) for p in none.heads) and none.errors == (0.0,) * 3
    with pytest.raises(ValueError, match="max_cost"):
        Recognizer(max_cost=0.0)


def test_max_cost_measures_on_this_device_and_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADSPARSE_CACHE", str(tmp_path))
    from headsparse.patterns import recognize as recognize_module

    recognize_module._cost_model.cache_clear()
    g = Geometry(2, 8, 8)
    q, k, v = planted_qkv(g, ["spatial", "global"], head_dim=32)
    rec = Recognizer(max_cost=1e9).recognize(q, k, v, g, block=32)  # everything fits: cheapest measured first
    assert not isinstance(rec.heads[0], Dense) and max(rec.errors) <= 0.05
    cached = list(tmp_path.glob("cost-*.json"))
    assert len(cached) == 1 and "pooled" in cached[0].read_text()  # the dynamic fallback is timed too
    recognize_module._cost_model.cache_clear()


# ---------------------------------------------------------------------------------------------- pooled


def test_pooled_block_selection():
    g = Geometry(4, 8, 16, text_len=10, text_position="prefix")
    q, k, v = planted_qkv(g, ["spatial", "temporal"], head_dim=64)
    pattern = PooledBlocks(keep=0.25)
    kinds = pattern.block_kinds_from_qk(q[0], k[0], g, 32)
    mq = kinds.shape[-1]
    assert kinds.shape == (2, mq, mq)
    full = kinds == BLOCK_FULL
    assert full[:, torch.arange(mq), torch.arange(mq)].all()  # own block
    assert full[:, :, 0].all() and full[:, 0, :].all()  # the text prefix lives in block 0
    first_frame_blocks = torch.arange(mq)[(torch.arange(mq) * 32 < 10 + 128)]
    assert full[:, :, first_frame_blocks].all()
    lay = pattern.layout_from_qk(q[0], k[0], g, 32)
    out = headsparse.sparse_attention(q, k, v, lay)
    torch.testing.assert_close(out, layout_reference(q, k, v, lay), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="dynamic"):
        pattern.layout(g)
    cdf = PooledBlocks(cdf=0.5).block_kinds_from_qk(q[0], k[0], g, 32)
    assert (cdf == BLOCK_FULL).sum() <= (PooledBlocks(keep=1.0).block_kinds_from_qk(q[0], k[0], g, 32) == 2).sum()


# ---------------------------------------------------------------------------------------------- plugin


LABELS_A = [["spatial", "temporal", "neighborhood", "global"], ["temporal", "spatial", "global", "neighborhood"]]
LABELS_B = [["temporal", "spatial", "global", "neighborhood"], ["spatial", "temporal", "neighborhood", "global"]]


def _call(model, t):
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 5, 16, 24, generator=g), torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([t, t]), text, return_dict=False)[0]


def _families(handle, layer):
    return [p.name for p in handle.states["transformer"].heads_now(layer)]


def test_auto_patch_ontiny_planted_wan():
    model = tiny_planted_wan(LABELS_A)
    ref, warm = _call(model, 900), _call(model, 950)
    fixed = {}
    for pattern in ("spatial", "temporal"):
        with headsparse.patch(model, pattern=pattern, block_size=64):
            fixed[pattern] = _call(model, 900)
    with headsparse.patch(model, "auto", block_size=64, dense_steps=1) as handle:
        assert torch.equal(_call(model, 950), warm)  # the warm-up step runs dense
        out = _call(model, 900)
        for layer in range(2):
            assert _families(handle, layer) == [EXPECTED_PATTERN[k] for k in LABELS_A[layer]]
        rows = handle.summary(print_table=False)
        assert all(r["recognitions"] == 1 and r["recognition_ms"] > 0 for r in rows)
        plan = handle.recognized_plan()
    err = ((out - ref).norm() / ref.norm()).item()
    assert all(err < ((o - ref).norm() / ref.norm()).item() for o in fixed.values())
    # the recognised heads, saved as a static plan, reproduce the auto run
    with headsparse.patch(model, plan):
        _call(model, 950)  # warm-up step of the saved plan
        torch.testing.assert_close(_call(model, 900), out, atol=1e-5, rtol=1e-5)


def test_patch_without_a_plan_or_pattern_recognises_every_head():
    model = tiny_planted_wan(LABELS_A)
    with headsparse.patch(model, block_size=64) as handle:  # headsparse.patch(pipe): plan="auto"
        _call(model, 900)
        for layer in range(2):
            assert _families(handle, layer) == [EXPECTED_PATTERN[k] for k in LABELS_A[layer]]


def test_re_recognition_follows_a_changing_head():
    model = tiny_planted_wan(LABELS_A)
    with headsparse.patch(model, "auto", block_size=64, recognizer=Recognizer(every=2)) as handle:
        _call(model, 900)
        assert _families(handle, 0) == [EXPECTED_PATTERN[k] for k in LABELS_A[0]]
        plant_wan(model, LABELS_B)  # the heads change their pattern
        _call(model, 800)  # within `every` steps: the decision is reused
        assert _families(handle, 0) == [EXPECTED_PATTERN[k] for k in LABELS_A[0]]
        _call(model, 700)  # re-recognised
        assert _families(handle, 0) == [EXPECTED_PATTERN[k] for k in LABELS_B[0]]
        assert _families(handle, 1) == [EXPECTED_PATTERN[k] for k in LABELS_B[1]]
        assert handle.states["transformer"].stats[0].recognitions == 2
        plant_wan(model, LABELS_A)
        _call(model, 900)  # a new generation starts: recognised again
        assert _families(handle, 0) == [EXPECTED_PATTERN[k] for k in LABELS_A[0]]
        assert handle.states["transformer"].stats[0].recognitions == 3


def test_pooled_heads_in_a_static_plan():
    model = tiny_planted_wan(LABELS_A)
    ref = _call(model, 900)
    with headsparse.patch(model, pattern=PooledBlocks(keep=0.5), block_size=64) as handle:
        out = _call(model, 900)
        assert all(s.sparse_calls == 1 for s in handle.states["transformer"].stats)
    assert ((out - ref).norm() / ref.norm()).item() < 0.5
    assert not torch.equal(out, ref)
