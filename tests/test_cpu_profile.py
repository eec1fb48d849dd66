"""The CPU executor profile follows the machine: its features before a measurement, the measurement after."""

from __future__ import annotations

import json

import pytest

from headsparse.kernels import cpu_profile as cp


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSPARSE_CACHE", str(tmp_path))
    cp.cpu_profile.cache_clear()
    yield tmp_path
    cp.cpu_profile.cache_clear()


@pytest.mark.parametrize("amx,compute", [(True, "bfloat16"), (False, "float32")])
def test_without_a_measurement_the_profile_follows_the_cpu_features(cache, monkeypatch, amx, compute):
    monkeypatch.setattr(cp, "cpu_features", lambda: {"amx": amx, "avx512_bf16": True})
    profile = cp.cpu_profile()
    assert profile.source == "features" and profile.flex_compute["bfloat16"] == compute
    assert profile.grouped_min_rows == cp.DEFAULT_GROUPED_MIN_ROWS


def test_a_measurement_is_cached_per_machine_and_read_back(cache, monkeypatch):
    # Timings stand in for the executors: float32 compute wins for both reduced dtypes, and the grouped
    # executor wins at 128 rows, loses at 256, then wins from 512 on: the threshold is where it wins for good.
    grouped_wins = iter([True, False, True, True, True])

    def fake_interleaved(paths, repeats):
        if "grouped" in paths:
            win = next(grouped_wins)
            return {"grouped": [1.0 if win else 3.0], "flex": [2.0]}
        return {name: [1.0 if name == "float32" else 2.0] for name in paths}

    monkeypatch.setattr(cp, "interleaved", fake_interleaved)
    profile, rows = cp.measure_cpu_profile(length=512, heads=1, head_dim=32, repeats=1)
    assert profile.flex_compute == {"bfloat16": "float32", "float16": "float32"}
    assert profile.grouped_min_rows == 512
    assert profile.source.startswith(f"measured on {cp.cpu_model()}")
    saved = json.loads(cp.profile_path().read_text())
    assert saved["grouped_min_rows"] == 512 and len(saved["rows"]) == len(rows) == 4 + 2 * 5
    assert cp.cpu_profile() == profile  # every later call in this process (and the next) reads it
    cp.profile_path().write_text("{not json")
    cp.cpu_profile.cache_clear()
    assert cp.cpu_profile().source == "features"  # a damaged cache is ignored
