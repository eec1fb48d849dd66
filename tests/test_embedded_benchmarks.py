"""benchmarks/embedded.py, the model table of the shapes_* benchmarks: local windows cut to the grid, GIF labels,
the scenes preset's stand-in. No model is loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from embedded import MODELS, local_windows, scenes_label, shapes_label

from headsparse.patterns import Geometry, get_pattern


def test_local_windows_are_cut_to_the_grid_without_changing_the_mask():
    windows = local_windows(4, 8, 8)
    assert windows["neighborhood_5x5x5"]["kernel_size"] == (4, 5, 5)
    assert windows["neighborhood_9x9x9"]["kernel_size"] == (4, 8, 8)
    assert windows["sliding_tile_4x4x4"] == {"pattern": "sliding_tile", "tile": (4, 4, 4), "window": (3, 3, 3)}
    assert local_windows(16, 16, 16)["neighborhood_7x9x9"]["kernel_size"] == (7, 9, 9)
    g = Geometry(4, 8, 8)
    idx = torch.arange(g.seq_len)
    for name, (kernel, cut) in {"5": ((5, 5, 5), (4, 5, 5)), "9": ((9, 9, 9), (4, 8, 8))}.items():
        full = get_pattern("neighborhood", kernel_size=kernel).mask(g, idx[:, None], idx[None, :])
        assert torch.equal(full, get_pattern("neighborhood", kernel_size=cut).mask(g, idx[:, None], idx[None, :])), name


def test_gif_labels():
    assert shapes_label("a red circle moving left on a gray background") == ["red circle moving left (gray)"]
    assert scenes_label("a red circle moving left and a blue square moving up on a striped background drifting "
                        "right") == ["red circle left", "blue square up", "striped, drifting right"]
    assert scenes_label("a green triangle moving down on a still mottled background") == [
        "green triangle down", "still mottled"]


def test_models_read_their_own_clips_and_have_presets():
    for model in MODELS.values():
        video, caption = model.dataset.clip(10**9, frames=4, height=32, width=32)
        assert caption == model.caption(10**9, frames=4, height=32, width=32)
        assert set(model.dataset.caption_matches(video, caption)) == set(model.fields)
        preset = model.preset()
        assert preset.name == model.name and preset.video
    assert MODELS["scenes"].all_fields == "all three" and MODELS["shapes"].all_fields == "all five"
