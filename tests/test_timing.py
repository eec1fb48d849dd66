"""Honest timing: warm-up of every path, interleaving, medians and spread, the headline, the device line.

The report logic is tested with fake runs of chosen times (``run_once`` and ``warm_up`` replaced),
so each rule is checked exactly: which paths were warmed up, in which order the timed runs went,
what the median and the per-round spread are, and when no speed-up may be claimed.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from headsparse.machine import cpu_model, device_line, device_report, machine_key, slug
from headsparse.pipelines.generate import GenerateRequest, RunResult, headline
from headsparse.timing import Spread, interleaved, ratio_cell, ratio_spread, spread_cell

gen = importlib.import_module("headsparse.pipelines.generate")  # the module (the package exports the function)


# ---------------------------------------------------------------------------------------------- timing helpers
def test_interleaved_warms_every_path_then_takes_turns():
    calls = []
    paths = {"dense": lambda: calls.append("dense"), "sparse": lambda: calls.append("sparse")}
    times = interleaved(paths, 3)
    assert calls == ["dense", "sparse"] + ["dense", "sparse"] * 3  # one untimed call each, then rounds
    assert set(times) == {"dense", "sparse"} and all(len(t) == 3 and min(t) >= 0 for t in times.values())
    calls.clear()
    interleaved(paths, 2, warmup=False)
    assert calls == ["dense", "sparse", "dense", "sparse"]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        interleaved(paths, 0)


def test_median_spread_and_ratio_of_medians():
    s = Spread.of([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.count) == (2.0, 1.0, 3.0, 3)
    assert f"{s:.1f}" == "2.0 (1.0-3.0, 3 runs)" and f"{Spread.of([1.5]):.2f}" == "1.50 (1 run)"
    ratio, rounds = ratio_spread([4.0, 2.0, 6.0], [2.0, 2.0, 2.0])
    assert ratio == 2.0 and (rounds.low, rounds.median, rounds.high) == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="one non-zero length"):
        ratio_spread([1.0], [1.0, 2.0])


def test_report_cells_give_median_and_range_and_refuse_identical_outputs():
    assert spread_cell([0.43, 0.412, 0.398]) == "0.412 (0.398-0.430)"
    assert spread_cell(Spread.of([2.0, 1.0, 3.0]), ".1f") == "2.0 (1.0-3.0)"
    ratio, rounds = ratio_spread([1.0, 0.9, 1.2], [2.0, 2.0, 2.0])
    assert ratio_cell(ratio, rounds) == "0.500 (0.450-0.600)" and ratio_cell(ratio, rounds, ".2f") == "0.50 (0.45-0.60)"
    assert ratio_cell(ratio, rounds, identical=True) == "identical to dense"  # no speed-up claimed, whatever the times


def test_device_line_names_the_cpu_and_its_matrix_extensions():
    info = device_report("cpu")
    assert info["kind"] == "cpu" and info["name"] == cpu_model() and info["threads"] == torch.get_num_threads()
    assert set(info) >= {"amx", "avx512_bf16"}
    line = device_line(info)
    assert line.startswith(cpu_model()) and "AVX-512-BF16: " in line and "AMX: " in line
    fake = {"kind": "cpu", "name": "Intel Xeon", "threads": 2, "amx": True, "avx512_bf16": True}
    assert device_line(fake) == "Intel Xeon, 2 threads, AVX-512-BF16: yes, AMX: yes"
    assert device_line({"kind": "cuda", "name": "NVIDIA H100", "capability": "sm_90"}) == "NVIDIA H100 (sm_90)"
    assert slug("AMD EPYC 9B14 (x2)") == "amd-epyc-9b14-x2"
    assert machine_key("cpu").startswith("cpu-") and " " not in machine_key("cpu")


# ------------------------------------------------------------------------------------------------ the report
def _result(label: str, wall: float, *, sparse_calls: int, frames: np.ndarray) -> RunResult:
    return RunResult(label, frames, wall, 0.8 * wall, 0.5 * wall, [], sparse_calls)


@pytest.fixture
def fake_runs(monkeypatch):
    """Replace the pipeline runs by fakes: each path's times come from a list; records the call order."""
    order: list[str] = []
    warmed: list[str] = []
    plan = {"dense": [], "headsparse": []}
    output = {"same": False, "sparse_calls": 5}
    frames = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)

    def run_once(pipe, preset, request, label, kwargs):
        order.append(label)
        wall = plan[label].pop(0)
        other = frames if label == "dense" or output["same"] else np.clip(frames + 0.01, 0, 1)
        return _result(label, wall, sparse_calls=0 if label == "dense" else output["sparse_calls"], frames=other)

    def warm_up(pipe, preset, request, kwargs):
        warmed.append("headsparse" if kwargs else "dense")

    monkeypatch.setattr(gen, "run_once", run_once)
    monkeypatch.setattr(gen, "warm_up", warm_up)
    monkeypatch.setattr(gen, "load_pipeline", lambda *a, **k: _NoPipe())
    return order, warmed, plan, output


class _NoPipe:
    def set_progress_bar_config(self, **kw):
        pass


def _request(tmp_path, repeats: int) -> GenerateRequest:
    return GenerateRequest(model="tiny", prompt="x", out=tmp_path, mode="pattern", pattern="spatial",
                           compare_dense=True, repeats=repeats, progress=False)


def test_report_interleaves_warms_both_paths_and_gives_medians(tmp_path, fake_runs):
    order, warmed, plan, _ = fake_runs
    plan["dense"] += [9.0, 2.0, 2.2]  # a cold first dense run: the median ignores it
    plan["headsparse"] += [1.0, 1.1, 0.9]
    report = gen.generate(_request(tmp_path, 3))
    assert warmed == ["dense", "headsparse"]
    assert order == ["dense", "headsparse"] * 3
    dense, sparse = report["runs"]["dense"], report["runs"]["headsparse"]
    assert dense["wall_s_runs"] == [9.0, 2.0, 2.2] and dense["wall_s"] == 2.2
    assert (dense["wall_s_min"], dense["wall_s_max"]) == (2.0, 9.0) and sparse["wall_s"] == 1.0
    wall = report["speedup"]["wall"]
    assert wall["ratio"] == pytest.approx(2.2)  # the ratio of the medians, not of the sums
    assert (wall["low"], wall["high"]) == (pytest.approx(2.0 / 1.1), pytest.approx(9.0))  # per-round ratios
    assert "wall 2.20x (1.82-9.00 per round)" in report["headline"]
    md = (tmp_path / "report.md").read_text()
    assert "| dense | 2.20 (2.00-9.00) |" in md and "3 timed run(s) of each, interleaved" in md


def test_no_sparse_head_claims_no_speed_up(tmp_path, fake_runs):
    _, _, plan, output = fake_runs
    output.update(same=True, sparse_calls=0)
    plan["dense"] += [3.0, 3.1, 2.9]
    plan["headsparse"] += [1.0, 1.0, 1.0]  # a "3x" that is only noise or a cold start: not claimed
    report = gen.generate(_request(tmp_path, 3))
    assert report["speedup"] is None and report["identical"]
    assert report["headline"].startswith("No head was made sparse: outputs identical, times equal within noise")
    assert "No speed-up is claimed" in report["headline"]
    md = (tmp_path / "report.md").read_text()
    assert "Speed-up" not in md and "x (" not in md and report["headline"] in md


def test_identical_output_claims_no_speed_up_even_when_layouts_ran(tmp_path, fake_runs):
    _, _, plan, output = fake_runs
    output.update(same=True, sparse_calls=12)
    plan["dense"] += [2.0]
    plan["headsparse"] += [1.0]
    report = gen.generate(_request(tmp_path, 1))
    assert report["speedup"] is None
    assert report["headline"].startswith("Every sparse layout kept every pair: outputs identical to dense")


def test_one_run_says_it_measured_no_spread(tmp_path, fake_runs):
    _, _, plan, _ = fake_runs
    plan["dense"] += [2.0]
    plan["headsparse"] += [1.0]
    report = gen.generate(_request(tmp_path, 1))
    assert "one run each: no spread measured" in report["headline"] and "wall 2.00x," in report["headline"]


def test_repeats_must_be_positive(tmp_path, fake_runs):
    with pytest.raises(gen.GenerateError, match="--repeats must be an integer >= 1"):
        gen.generate(_request(tmp_path, 0))


def test_headline_without_a_comparison():
    assert headline({"runs": {"dense": {}}}) == "Dense only: nothing to compare."
    assert "use --compare-dense" in headline({"runs": {"headsparse": {}}})
