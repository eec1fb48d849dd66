"""Generation scripts: metrics, media, the generate/demo/bench commands (subprocess) and their reports.

The embedded tiny pipeline runs at a few hundred tokens here (``--frames 5 --height 32 --width 32``);
``make demo`` runs the same code at its full size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import headsparse
from headsparse.cli import main
from headsparse.pipelines import GenerateError, GenerateRequest, generate
from headsparse.pipelines.media import side_by_side, write_video
from headsparse.pipelines.metrics import frame_metrics, psnr, ssim
from headsparse.pipelines.tiny import build_tiny_wan_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

SMALL = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "headsparse.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


# ------------------------------------------------------------------------------------------------ metrics / media
def test_ssim_and_psnr_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((40, 56, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    ref = metrics.structural_similarity(a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-6)
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(b, a, data_range=1.0), abs=1e-6)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)


def test_metric_errors_name_the_problem():
    with pytest.raises(ValueError, match="differ in shape"):
        frame_metrics(np.zeros((2, 16, 16, 3)), np.zeros((3, 16, 16, 3)))
    with pytest.raises(ValueError, match="at least 11 pixels"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    rows, note = frame_metrics(np.zeros((2, 16, 16, 3)), np.zeros((2, 16, 16, 3)))
    assert len(rows) == 2 and ("LPIPS" in note or "lpips" in rows[0])


def test_video_is_written_as_mp4_or_gif_fallback(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    frames = np.random.default_rng(0).random((4, 24, 34, 3)).astype(np.float32)
    path = write_video(frames, tmp_path / "v.mp4", fps=8)
    assert path.suffix == ".mp4"
    assert len(imageio.mimread(path)) == 4

    def broken(*args, **kwargs):
        raise RuntimeError("no ffmpeg here")

    monkeypatch.setattr(imageio, "get_writer", broken)
    fallback = write_video(frames, tmp_path / "w.mp4", fps=8)
    assert fallback == tmp_path / "w.gif" and fallback.is_file() and not (tmp_path / "w.mp4").exists()
    both = side_by_side(frames, frames, ("dense", "headsparse"))
    assert both.shape[0] == 4 and both.shape[2] == 2 * 34 + 8 and both.max() <= 1


# ------------------------------------------------------------------------------------------------------ generate
def test_generate_report_in_process(tmp_path):
    request = GenerateRequest(model="tiny", prompt="a red car", out=tmp_path, mode="pattern", pattern="spatial",
                              frames=5, height=32, width=32, steps=3, compare_dense=True, progress=False, repeats=2)
    report = generate(request)
    assert report["mode"] == "pattern" and report["patch"]["pattern"] == "spatial"
    assert set(report["runs"]) == {"dense", "headsparse"} and report["repeats"] == 2
    for run in report["runs"].values():
        assert run["wall_s"] > 0 and 0 < run["transformer_s"] <= run["wall_s"]
        assert 0 < run["attention_s"] <= run["transformer_s"] and 0 < run["attention_share"] < 1
        assert len(run["wall_s_runs"]) == 2 and run["wall_s_min"] <= run["wall_s"] <= run["wall_s_max"]
    assert report["runs"]["headsparse"]["sparse_calls"] > 0 and report["runs"]["dense"]["sparse_calls"] == 0
    assert set(report["speedup"]) == {"wall", "transformer", "attention"}
    for ratio in report["speedup"].values():
        assert ratio["low"] <= ratio["high"] and ratio["ratio"] > 0
    assert report["headline"].startswith("Speed-up (dense / headsparse, ratio of medians of 2 interleaved runs")
    assert report["device_info"]["kind"] == "cpu" and report["device_name"] == report["device_info"]["name"]
    assert len(report["per_frame"]) == report["frames"] == 5
    assert all(np.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 for r in report["per_frame"])
    # Four planted layers ran the spatial pattern on 3 x 8 x 8 tokens (one dense warm-up step first).
    assert [row["patterns"] for row in report["layers"]] == [{"spatial": 2}] * 4
    assert all(0 < row["density"] < 1 for row in report["layers"])
    for name in ("dense.mp4", "headsparse.mp4", "side_by_side.mp4", "report.json", "report.md"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    for name, ratio in report["speedup"].items():
        assert saved["speedup"][name] == pytest.approx(ratio)
    md = (tmp_path / "report.md").read_text()
    assert "PSNR" in md and "SSIM" in md and "blocks.3.attn1" in md and "LPIPS" in md
    assert report["headline"] in md and "AMX:" in md and "2 timed run(s) of each, interleaved" in md


def test_the_dense_run_is_the_unpatched_pipeline(tmp_path):
    import torch

    from headsparse.pipelines.generate import run_once
    from headsparse.pipelines.presets import preset_for

    pipe = build_tiny_wan_pipeline("demo")
    request = GenerateRequest(model="tiny", prompt="a red car", out=tmp_path, frames=5, height=32, width=32, steps=2)
    dense = run_once(pipe, preset_for("tiny"), request, "dense", {})
    assert not headsparse.is_patched(pipe)
    frames = pipe("a red car", num_frames=5, height=32, width=32, num_inference_steps=2, guidance_scale=1.0,
                  generator=torch.Generator("cpu").manual_seed(0), output_type="np").frames[0]
    np.testing.assert_array_equal(dense.frames, frames)
    assert dense.layers == [] and dense.attention_s > 0


def test_generate_refuses_before_loading(tmp_path):
    with pytest.raises(GenerateError, match="needs --model-path"):
        generate(GenerateRequest(model="wan", prompt="x", out=tmp_path))
    with pytest.raises(GenerateError, match=r"no model_index\.json"):
        generate(GenerateRequest(model="wan", prompt="x", out=tmp_path, model_path=str(tmp_path)))
    with pytest.raises(GenerateError, match="unknown model"):
        generate(GenerateRequest(model="sora", prompt="x", out=tmp_path))
    with pytest.raises(GenerateError, match="takes no --model-path"):
        generate(GenerateRequest(model="tiny", prompt="x", out=tmp_path, model_path=str(tmp_path)))
    with pytest.raises(GenerateError, match="CUDA device"):
        generate(GenerateRequest(model="tiny", prompt="x", out=tmp_path, device="cpu", cpu_offload=True))
    with pytest.raises(GenerateError, match="needs --plan"):
        generate(GenerateRequest(model="tiny", prompt="x", out=tmp_path, mode="plan"))
    with pytest.raises(GenerateError, match="--max-cost applies to online recognition"):
        generate(GenerateRequest(model="tiny", prompt="x", out=tmp_path, mode="dense", max_cost=1.0))
    with pytest.raises(GenerateError, match="--max-cost: max_cost must be"):
        generate(GenerateRequest(model="tiny", prompt="x", out=tmp_path, mode="auto", max_cost=-1.0))


def test_the_scenes_preset_runs_its_shipped_plan_unless_told_otherwise(tmp_path):
    from headsparse.pipelines import preset_for
    from headsparse.pipelines.generate import resolve_mode

    preset = preset_for("scenes")
    shipped = preset.plan_file()
    assert shipped is not None and shipped.is_file() and shipped.parent == preset.weights_folder()
    headsparse.load_plan(shipped)  # a valid plan file
    mode, kwargs = resolve_mode(GenerateRequest(model="scenes", prompt="x", out=tmp_path), preset)
    assert mode == "plan" and kwargs == {"plan": str(shipped)}
    mode, kwargs = resolve_mode(GenerateRequest(model="scenes", prompt="x", out=tmp_path, mode="auto"), preset)
    assert mode == "auto" and kwargs["plan"] == "auto"
    # Weights of one's own: the shipped plan belongs to the shipped weights, so online recognition runs.
    own = GenerateRequest(model="scenes", prompt="x", out=tmp_path, model_path=str(tmp_path))
    assert resolve_mode(own, preset)[0] == "auto"
    plan = _tiny_plan(tmp_path / "plan.json")
    mode, kwargs = resolve_mode(GenerateRequest(model="scenes", prompt="x", out=tmp_path, plan=str(plan)), preset)
    assert mode == "plan" and kwargs["plan"] == str(plan)


# --------------------------------------------------------------------------------------------- CLI (subprocess)
def _tiny_plan(path: Path, model: str = "WanTransformer3DModel") -> Path:
    names = [f"blocks.{i}.attn1" for i in range(4)]
    plan = headsparse.ModelPlan.uniform(model, names, 2, headsparse.get_pattern("temporal"), dense_steps=1)
    headsparse.Plan({"transformer": plan}).save(path)
    return path


@pytest.mark.parametrize("mode", [["--dense"], ["--pattern", "neighborhood", "--param", "kernel_size=3,5,5"],
                                  ["--plan", "PLAN"], ["--auto", "--compare-dense"], ["--auto", "--max-cost", "1e-6"]])
def test_generate_cli_modes(tmp_path, mode):
    mode = [str(_tiny_plan(tmp_path / "plan.json")) if m == "PLAN" else m for m in mode]
    out = tmp_path / "out"
    result = run_cli("generate", "--model", "tiny", *SMALL, "--no-warmup", *mode, "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    expected = {"--dense": "dense", "--pattern": "pattern", "--plan": "plan", "--auto": "auto"}[mode[0]]
    assert report["mode"] == expected and "# headsparse generate: tiny" in result.stdout
    if expected == "pattern":
        assert report["patch"]["kernel_size"] == [3, 5, 5]
        assert report["layers"][0]["patterns"] == {"neighborhood(kernel_size=(3, 5, 5))": 2}
    if expected == "plan":
        assert report["layers"][0]["patterns"] == {"temporal": 2}
    if mode[1:2] == ["--compare-dense"]:
        assert "headline" in report and (out / "side_by_side.mp4").is_file()
        assert sum(sum(r["patterns"].values()) for r in report["layers"]) == 8
    if "--max-cost" in mode:  # no pattern runs in a millionth of dense time: every head stays dense
        assert report["patch"]["recognizer"]["max_cost"] == 1e-6
        assert all(set(r["patterns"]) <= {"dense"} for r in report["layers"]), report["layers"]


def test_demo_runs_the_shipped_drifting_scenes_model_with_its_plan(tmp_path):
    """`make demo`'s command at a small size: the trained scenes model, dense vs the plan shipped with it."""
    from headsparse.cli import DEMO_PROMPTS
    from headsparse.pipelines import preset_for

    out = tmp_path / "demo"
    # The demo grid (its plan's windows cover the whole of a smaller one), one step.
    result = run_cli("demo", "--steps", "1", "--repeats", "1", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "scenes" and report["mode"] == "plan"
    assert report["patch"]["plan"] == str(preset_for("scenes").plan_file())
    assert report["prompt"] == DEMO_PROMPTS["scenes"] and (report["frames"], report["height"]) == (16, 64)
    assert isinstance(report["psnr_mean"], float) and report["psnr_mean"] > 25  # sparse, and close to dense
    assert report["headline"] in result.stdout


def test_demo_runs_the_shipped_moving_shapes_model(tmp_path):
    """`make demo --model shapes` at a small size: the moving-shapes model, dense vs auto, PSNR/SSIM and speed."""
    out = tmp_path / "demo"
    result = run_cli("demo", "--model", "shapes", "--steps", "3", "--frames", "4", "--height", "32", "--width", "32",
                     "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "shapes" and report["mode"] == "auto"
    assert report["prompt"] == "a red circle bouncing right"
    assert report["frames"] == 4 and report["height"] == 32 and report["psnr_mean"] > 10
    assert report["repeats"] == 3 and len(report["runs"]["dense"]["wall_s_runs"]) == 3
    assert report["headline"] in result.stdout and "PSNR" in result.stdout
    assert (out / "side_by_side.mp4").is_file() or (out / "side_by_side.gif").is_file()


def test_generate_cli_loads_a_local_checkpoint(tmp_path):
    from tiny_models import build_wan_pipeline

    folder = tmp_path / "tiny-wan"
    build_wan_pipeline().save_pretrained(folder)
    result = run_cli("generate", "--model", "wan", "--model-path", str(folder), "--frames", "9", "--height", "32",
                     "--width", "32", "--steps", "2", "--dtype", "fp32", "--pattern", "spatial", "--dense-steps", "0",
                     "--no-warmup", "--quiet", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"] == "wan" and report["frames"] == 9 and report["layers"][1]["patterns"] == {"spatial": 2}


def test_generate_cli_bad_arguments(tmp_path):
    unknown = run_cli("generate", "--model", "sora")
    assert unknown.returncode == 2 and "invalid choice: 'sora'" in unknown.stderr
    missing = run_cli("generate", "--model", "wan", "--model-path", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no model_index.json" in missing.stderr
    other = _tiny_plan(tmp_path / "cog.json", model="CogVideoXTransformer3DModel")
    wrong = run_cli("generate", "--model", "tiny", *SMALL, "--no-warmup", "--plan", str(other))
    assert wrong.returncode == 2 and "made for CogVideoXTransformer3DModel" in wrong.stderr


def test_generate_and_bench_errors_in_process(tmp_path, capsys):
    assert main(["generate", "--model", "hunyuanvideo", "--out", str(tmp_path)]) == 2
    assert "needs --model-path" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny", "--pattern", "spatial", "--param", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny", "--plan", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", "tiny", "--dense", "--auto"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "attention" in listed and "pipeline" in listed
    assert main(["bench", "nosuch"]) == 2 and "unknown benchmark" in capsys.readouterr().err
