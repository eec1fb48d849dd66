"""Plan: JSON round trip, per-step phases, dense warm-up, and clear errors."""

from __future__ import annotations

import json
import re

import pytest

from headsparse import LayerPlan, ModelPlan, Phase, Plan, load_plan
from headsparse.patterns import Dense, Neighborhood, Spatial, Temporal


def _plan() -> ModelPlan:
    layers = (
        LayerPlan("blocks.0.attn1", (Phase(0, (Spatial(), Temporal())),)),
        LayerPlan("blocks.1.attn1", (Phase(0, (Dense(), Dense())), Phase(3, (Neighborhood(kernel_size=(3, 5, 5)),
                                                                              Spatial(frame_band=1))))),
    )
    return ModelPlan("WanTransformer3DModel", 2, layers, grid=(3, 4, 6), dense_steps=1, dense_layers=(), block_size=64)


def test_json_round_trip(tmp_path):
    plan = Plan({"transformer": _plan()}, settings={"searched_on": "unit test"})
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["format"] == "headsparse-plan" and data["version"] == 1
    assert data["transformers"]["transformer"]["layers"][1]["phases"][1]["heads"][0]["pattern"] == "neighborhood"
    loaded = load_plan(path)
    assert loaded == plan


def test_phases_and_dense_warmup():
    plan = _plan()
    assert plan.heads_at(0, 0) == (Dense(), Dense())  # dense_steps=1
    assert plan.heads_at(0, 1) == (Spatial(), Temporal())
    assert plan.heads_at(1, 2) == (Dense(), Dense())
    assert plan.heads_at(1, 7)[1] == Spatial(frame_band=1)


def test_fractional_dense_steps_and_layers():
    plan = ModelPlan.uniform("M", ["a", "b", "c"], 2, Spatial(), dense_steps=0.25, dense_layers=1)
    assert plan.dense_layers == (0,)
    assert plan.heads_at(0, 9, num_steps=10) == (Dense(), Dense())
    assert plan.heads_at(1, 2, num_steps=10) == (Dense(), Dense())  # ceil(0.25 * 10) = 3 dense steps
    assert plan.heads_at(1, 3, num_steps=10) == (Spatial(), Spatial())
    with pytest.raises(ValueError, match="fraction"):
        plan.heads_at(1, 3)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ModelPlan.uniform("M", ["a"], 2, Spatial(), dense_steps=-1), "dense_steps"),
        (lambda: ModelPlan.uniform("M", ["a"], 2, Spatial(), dense_steps=1.5), "dense_steps"),
        (lambda: ModelPlan.uniform("M", ["a"], 2, Spatial(), block_size=100), "block_size"),
        (lambda: ModelPlan("M", 2, (LayerPlan("a", (Phase(0, (Spatial(),)),)),)), "heads"),
        (lambda: LayerPlan("a", (Phase(1, (Spatial(),)),)), "step 0"),
        (lambda: ModelPlan("M", 1, (LayerPlan("a", (Phase(0, (Spatial(),)),)),), dense_layers=(3,)), "dense_layers"),
    ],
)
def test_bad_plans_name_the_problem(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a headsparse plan"):
        load_plan(tmp_path / "x.json")
    (tmp_path / "v.json").write_text('{"format": "headsparse-plan", "version": 99, "transformers": {}}')
    with pytest.raises(ValueError, match="version 99"):
        load_plan(tmp_path / "v.json")
    (tmp_path / "p.json").write_text(json.dumps({"format": "headsparse-plan", "version": 1, "transformers": {
        "transformer": {"model": "M", "num_heads": 1, "layers": [{"name": "a", "phases": [
            {"from_step": 0, "heads": [{"pattern": "no-such-pattern"}]}]}]}}}))
    with pytest.raises(ValueError, match="unknown pattern"):
        load_plan(tmp_path / "p.json")


def test_unreadable_plan_files_name_the_file_and_the_problem(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError, match=rf"plan file {re.escape(str(empty))} is empty"):
        load_plan(empty)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "headsparse-plan",\n "version": 1,')
    with pytest.raises(ValueError, match=rf"plan file {re.escape(str(broken))} is not JSON: .* at line 2"):
        load_plan(broken)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="is not text"):
        load_plan(binary)
    newer = tmp_path / "newer.json"
    newer.write_text('{"format": "headsparse-plan", "version": 7, "transformers": {}}')
    with pytest.raises(ValueError, match=r"plan version 7, newer than this headsparse reads \(1\): upgrade"):
        load_plan(newer)
    bare = tmp_path / "bare.json"
    bare.write_text('{"format": "headsparse-plan", "version": 1}')
    with pytest.raises(ValueError, match=r'bare.json has no "transformers" object'):
        load_plan(bare)


@pytest.mark.parametrize("size", [16, 48, 256, True])
def test_block_size_is_refused_up_front_with_the_allowed_values(size):
    with pytest.raises(ValueError, match=r"block_size must be one of 32, 64, 128 .*got"):
        ModelPlan.uniform("M", ["a"], 2, Spatial(), block_size=size)
