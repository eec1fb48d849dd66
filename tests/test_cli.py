"""The headsparse command on a tiny pipeline saved to disk (the real from_pretrained path)."""

from __future__ import annotations

import json

import pytest
from tiny_models import build_wan_pipeline

from headsparse.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")


def test_search_and_inspect_from_a_local_folder(tmp_path, capsys):
    folder = tmp_path / "tiny-wan"
    build_wan_pipeline().save_pretrained(folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog surfing\n")
    out = tmp_path / "plan.json"
    cache = tmp_path / "cal.pt"
    code = main([
        "search", "--model-path", str(folder), "--prompts", str(prompts), "--steps", "2", "--cost", "blocks",
        "--block-size", "64", "--height", "32", "--width", "32", "--num-frames", "9", "--dtype", "fp32",
        "--budget", "0.05", "--cache", str(cache), "--out", str(out),
    ])
    assert code == 0 and out.is_file() and cache.is_file()
    data = json.loads(out.read_text())
    assert data["transformers"]["transformer"]["model"] == "WanTransformer3DModel"
    assert len(data["settings"]["runs"]) == 2
    printed = capsys.readouterr().out
    assert "blocks.1.attn1" in printed and "predicted attention time" in printed
    assert main(["inspect", str(out), "--png", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").stat().st_size > 0
    assert "blocks.0.attn1" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--prompts", "x"])  # --out is required
    empty = tmp_path / "p.txt"
    empty.write_text("\n")
    assert main(["search", "--model", "shapes", "--prompts", str(empty), "--out", str(tmp_path / "o.json")]) == 2
    assert "no prompts in" in capsys.readouterr().err
    assert main(["search", "--model", "shapes", "--prompts", str(tmp_path / "none.txt"), "--out", "o.json"]) == 2
    assert "none.txt: No such file" in capsys.readouterr().err
    prompts = tmp_path / "q.txt"
    prompts.write_text("a cat\n")
    assert main(["search", "--prompts", str(prompts), "--out", "o.json"]) == 2
    assert "search needs --model PRESET" in capsys.readouterr().err


def _folder_with_class(tmp_path, name) -> str:
    folder = tmp_path / "pipe"
    folder.mkdir(exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": name, "transformer": ["diffusers", "X"]}))
    return str(folder)


def test_search_refuses_a_pipeline_class_it_cannot_import_in_one_line(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    for name, expected in ((
        "NoSuchPipeline", "is neither in diffusers"), (["no_such_module", "P"], "cannot import the pipeline P")):
        folder = _folder_with_class(tmp_path, name)
        assert main(["search", "--model-path", folder, "--prompts", str(prompts), "--out", "o.json"]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["search", "--model-path", str(tmp_path / "missing"), "--prompts", str(prompts), "--out", "o"]) == 2
    assert "no model_index.json" in capsys.readouterr().err


def test_model_index_names_the_pipeline_class(tmp_path):
    from headsparse.pipelines.loading import pipeline_class, resolve_class
    from headsparse.pipelines.shapes import WEIGHTS, MovingShapesPipeline

    assert pipeline_class(WEIGHTS) is MovingShapesPipeline  # the shipped folder: "MovingShapesPipeline"
    assert resolve_class("WanPipeline").__name__ == "WanPipeline"
    assert resolve_class(["headsparse.pipelines.shapes", "MovingShapesPipeline"]) is MovingShapesPipeline
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "my_pipeline.py").write_text("class MyPipeline:\n    pass\n")  # diffusers' custom_pipeline layout
    assert resolve_class(["my_pipeline", "MyPipeline"], folder).__name__ == "MyPipeline"


def test_search_on_the_shipped_model_then_inspect_and_generate_with_the_plan(tmp_path):
    """The newcomer's path, offline: search the embedded model, read the plan, generate with it."""
    from test_generate import run_cli

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square bouncing up on a gray background\n")
    plan = tmp_path / "plan.json"
    small = ["--num-frames", "4", "--height", "32", "--width", "32"]
    searched = run_cli("search", "--model", "shapes", "--prompts", str(prompts), "--steps", "2", *small,
                       "--out", str(plan))
    assert searched.returncode == 0, searched.stderr
    assert "blocks.5.attn1" in searched.stdout and plan.is_file()
    inspected = run_cli("inspect", str(plan))
    assert inspected.returncode == 0 and "WanTransformer3DModel, 6 layers x 4 heads" in inspected.stdout
    out = tmp_path / "gen"
    generated = run_cli("generate", "--model", "shapes", "--plan", str(plan), "--compare-dense", "--steps", "2",
                        "--frames", "4", "--height", "32", "--width", "32", "--quiet", "--out", str(out))
    assert generated.returncode == 0, generated.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "plan" and report["headline"] in generated.stdout
    # The shipped folder also loads through its model_index.json, with no preset.
    from headsparse.pipelines.shapes import WEIGHTS

    by_path = run_cli("search", "--model-path", str(WEIGHTS), "--prompts", str(prompts), "--steps", "1",
                      "--num-frames", "2", "--height", "16", "--width", "16", "--dtype", "fp32", "--cost", "blocks",
                      "--out", str(tmp_path / "p2.json"))
    assert by_path.returncode == 0, by_path.stderr


def test_doctor_reports_device_executors_and_caches(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "versions: python" in out and "torch" in out
    assert "CPU: " in out and "CUDA: no device" in out
    assert "dense heads: torch SDPA" in out and "FlexAttention" in out
    assert "layout cache:" in out and "HEADSPARSE_LAYOUT_CACHE_BYTES" in out


def test_doctor_gpu_static_names_an_unknown_architecture(capsys):
    with pytest.raises(SystemExit):
        main(["doctor", "--gpu-static", "--archs", "75"])
    assert "75" in capsys.readouterr().err
