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


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["search", "--prompts", "x"])  # --model-path and --out are required
    empty = tmp_path / "p.txt"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match="no prompts"):
        main(["search", "--model-path", str(tmp_path), "--prompts", str(empty), "--out", str(tmp_path / "o.json")])
