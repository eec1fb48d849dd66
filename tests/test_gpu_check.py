"""The device check script runs end to end: ``--dry-run`` takes its code paths on the CPU (interpreted Triton)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_writes_its_report(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "## Correctness" in text and "| NO |" not in text
    assert "| triton | random 0.25 |" in text and "| flex | spatial |" in text
    assert "One denoising step" in text and "output rel. L2" in text
