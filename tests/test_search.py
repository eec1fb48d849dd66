"""Offline search on planted models: recovery, budget, cost model, resumption, plans across grids."""

from __future__ import annotations

import pytest
import torch

import headsparse
from headsparse.patterns import Dense, Geometry, Spatial, Temporal
from headsparse.search import Calibration, CostModel, assign, search_candidates
from headsparse.testing import EXPECTED_PATTERN, plant_wan, random_kinds, tiny_planted_wan

BLOCKS = CostModel("blocks")


def _runner(model, timesteps=(900, 800), grid=(5, 16, 24), calls=None):
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, *grid, generator=g), torch.randn(1, 5, 16, generator=g)

    def run():
        if calls is not None:
            calls.append(1)
        with torch.no_grad():
            return [model(x, torch.tensor([t]), text, return_dict=False)[0] for t in timesteps]

    return run


def test_search_recovers_planted_heads_within_budget():
    labels = random_kinds(3, 8, seed=3)
    model = tiny_planted_wan(labels)
    plan = headsparse.search(model, _runner(model), budget=0.01, cost_model=BLOCKS, block_size=64, progress=False)
    mp = plan.transformers["transformer"]
    right = sum(EXPECTED_PATTERN[kind] == p.name for layer, row in zip(mp.layers, labels, strict=True)
                for kind, p in zip(row, layer.phases[0].heads, strict=True))
    assert right / 24 >= 0.95, right
    report = plan.settings["predicted"]["transformer"]["buckets"][0]
    assert report["mean_error"] <= 0.01 and max(report["layer_error"]) <= 0.02
    assert report["relative_time"] < 0.8


def test_searched_plan_beats_uniform_patterns_at_equal_time():
    labels = random_kinds(2, 8, seed=5)
    model = tiny_planted_wan(labels)
    run = _runner(model, timesteps=(900,))
    ref = run()[0]
    plan = headsparse.search(model, run, budget=0.01, cost_model=BLOCKS, block_size=64, progress=False)
    predicted_time = plan.settings["predicted"]["transformer"]["buckets"][0]["relative_time"]

    def err(out):
        return ((out - ref).norm() / ref.norm()).item()

    with headsparse.patch(model, plan):
        searched = err(run()[0])
    g = Geometry(5, 8, 12)
    cands = search_candidates(g)
    costs = BLOCKS.costs(cands, g, heads=8, head_dim=64, block=64)
    compared = 0
    for pattern, cost in zip(cands, costs.tolist(), strict=True):
        if cost <= predicted_time and not isinstance(pattern, Dense):
            with headsparse.patch(model, pattern=pattern, block_size=64):
                assert searched < err(run()[0]), pattern
            compared += 1
    assert compared >= 5


def test_plan_round_trip_density_and_other_resolution(tmp_path):
    model = tiny_planted_wan([["spatial", "temporal", "neighborhood", "global"]])
    plan = headsparse.search(model, _runner(model), budget=0.01, cost_model=BLOCKS, block_size=64, progress=False)
    path = plan.save(tmp_path / "plan.json")
    loaded = headsparse.load_plan(path)
    assert loaded.transformers == plan.transformers
    with headsparse.patch(model, path) as handle:
        _runner(model, timesteps=(900,))()
        rows = handle.summary(print_table=False)
        density = sum(r["density"] for r in rows) / len(rows)
        assert density == pytest.approx(plan.settings["predicted"]["transformer"]["buckets"][0]["density"])
        out = _runner(model, timesteps=(900,), grid=(3, 12, 20))()[0]  # another resolution: the plan applies
        assert torch.isfinite(out).all() and handle.states["transformer"].grid == (3, 6, 10)
    with pytest.raises(ValueError, match="made for WanTransformer3DModel"):
        from tiny_models import build

        headsparse.patch(build("flux").model, path)


def test_step_buckets_follow_changing_heads():
    a, b = [["spatial", "temporal"]], [["temporal", "spatial"]]
    model = tiny_planted_wan(a)
    run_a, run_b = _runner(model, timesteps=(900,)), _runner(model, timesteps=(800,))

    def run():
        plant_wan(model, a)
        run_a()
        plant_wan(model, b)
        run_b()  # step 1: the heads changed

    plan = headsparse.search(model, run, budget=0.01, step_buckets=(0, 1), cost_model=BLOCKS, block_size=64,
                             progress=False)
    phases = plan.transformers["transformer"].layers[0].phases
    assert [p.from_step for p in phases] == [0, 1]
    assert [h.name for h in phases[0].heads] == ["spatial", "temporal"]
    assert [h.name for h in phases[1].heads] == ["temporal", "spatial"]


def test_search_resumes_from_its_cache(tmp_path):
    model = tiny_planted_wan([["spatial", "temporal"]])
    calls: list[int] = []
    first = _runner(model, calls=calls)

    def broken():
        raise KeyboardInterrupt

    cache = tmp_path / "calibration.pt"
    with pytest.raises(KeyboardInterrupt):
        headsparse.search(model, [first, broken], cache=cache, cost_model=BLOCKS, block_size=64, progress=False)
    assert len(calls) == 1 and cache.is_file() and not headsparse.is_patched(model)
    plan = headsparse.search(model, [first, _runner(model)], cache=cache, cost_model=BLOCKS, block_size=64,
                             progress=False)
    assert len(calls) == 1  # the finished run was not repeated
    assert plan.settings["runs"] == ["run 0", "run 1"]
    fresh = headsparse.search(model, [_runner(model), _runner(model)], cost_model=BLOCKS, block_size=64,
                              progress=False)
    assert fresh.transformers == plan.transformers


def test_calibration_state_round_trip(tmp_path):
    g = Geometry(3, 4, 8)
    cal = Calibration((Dense(), Spatial(), Temporal()), num_layers=2, num_heads=2, buckets=(0, 3))
    q = torch.randn(1, 2, g.seq_len, 16)
    cal.observe(1, 4, q, q, torch.randn_like(q), g)
    cal.save(tmp_path / "c.pt")
    back = Calibration.load(tmp_path / "c.pt")
    assert torch.equal(back.sums, cal.sums) and back.geometry == g and back.candidates == cal.candidates
    errors = back.mean_errors()
    assert torch.isnan(errors[0]).all() and torch.isnan(errors[1, 0]).all()
    assert (errors[1, 1, :, 0] < 1e-6).all()  # dense keeps everything
    with pytest.raises(ValueError, match="buckets"):
        Calibration((Dense(),), 1, 1, buckets=(2,))


def test_assign_meets_budget_cheapest():
    errors = torch.tensor([[[0.0, 0.001, 0.5], [0.0, 0.3, 0.002]]])  # 1 layer, 2 heads, 3 candidates
    costs = torch.tensor([1.0, 0.3, 0.1])
    assert assign(errors, costs, budget=0.01).tolist() == [[1, 2]]
    assert assign(errors, costs, budget=0.5).tolist() == [[2, 2]]  # mean error 0.251 <= 0.5, cheapest
    assert assign(errors, costs, budget=1e-6).tolist() == [[0, 0]]  # only dense meets it
    with pytest.raises(ValueError, match="budget"):
        assign(errors, costs, budget=0)


def test_measured_cost_model_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSPARSE_CACHE", str(tmp_path))
    g = Geometry(4, 8, 16)
    model = CostModel("measured", dtype=torch.float32, repeats=1)
    patterns = (Dense(), Spatial(first_frame_sink=False), Temporal())
    costs = model.costs(patterns, g, heads=2, head_dim=32, block=64)
    assert costs[0] == 1.0 and (costs > 0).all()
    files = list(tmp_path.glob("cost-*.json"))
    assert len(files) == 1
    again = CostModel("measured", dtype=torch.float32).costs(patterns, g, heads=2, head_dim=32, block=64)
    assert torch.equal(again, costs)  # read back from the cache, not re-measured


def test_search_a_tiny_pipeline():
    from tiny_models import build_wan_pipeline

    pipe = build_wan_pipeline()
    plan = headsparse.search(pipe, prompts=["a cat", "a dog"], steps=2, seeds=(0,), budget=0.05, cost_model=BLOCKS,
                             block_size=64, progress=False, height=32, width=32, num_frames=9, guidance_scale=5.0)
    mp = plan.transformers["transformer"]
    assert [layer.name for layer in mp.layers] == ["blocks.0.attn1", "blocks.1.attn1"]
    assert len(plan.settings["runs"]) == 2
    with headsparse.patch(pipe, plan):
        pipe(prompt="a cat", num_inference_steps=2, height=32, width=32, num_frames=9, output_type="pt")


def test_plan_for_another_model_size_is_refused_by_config_hash():
    model = tiny_planted_wan([["spatial", "temporal"]])
    plan = headsparse.search(model, _runner(model), cost_model=BLOCKS, block_size=64, progress=False)
    assert plan.transformers["transformer"].config_hash is not None
    other = tiny_planted_wan([["spatial", "temporal"]])
    other.register_to_config(ffn_dim=128)  # same layers and heads, another variant
    with pytest.raises(ValueError, match="config hash"):
        headsparse.patch(other, plan)
    assert not headsparse.is_patched(other)
