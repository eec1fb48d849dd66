"""benchmarks/families.py runs end to end (``--quick``, two classes, 2 heads of 32) and writes its table: the
dense-pattern patch is bit-identical to dense and the spatial patch runs sparse in every layer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_families_quick_writes_its_table(tmp_path):
    out = tmp_path / "families.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "families.py"), "--quick", "--classes", "wan_vace",
           "hunyuan_video15", "--heads", "2", "--head-dim", "32", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "Model |" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| WanVACETransformer3DModel", "| HunyuanVideo15Transformer3DModel"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "2x32"
        assert cells[6] == "0 (bit-identical)", row
        sparse, layers = cells[9].split("/")
        assert sparse == layers and int(layers) >= 1, row
        assert "non-finite" not in cells[11] and float(cells[11]) > 0, row  # spatial changes the output
    assert "(14 non-grid)" in rows[1]  # HunyuanVideo 1.5's text, ByT5 and image tokens join the sequence
