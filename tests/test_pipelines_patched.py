"""Tiny WanPipeline and CogVideoXPipeline, assembled offline, run end to end patched and unpatched."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_cogvideox_pipeline, build_wan_pipeline

import headsparse

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

BUILDERS = {"wan": (build_wan_pipeline, 9), "cogvideox": (build_cogvideox_pipeline, 16)}


def _generate(pipe, num_frames):
    return pipe(
        prompt="a cat", negative_prompt="blurry", num_inference_steps=3, height=32, width=32, num_frames=num_frames,
        guidance_scale=5.0, output_type="pt", generator=torch.Generator().manual_seed(0),
    ).frames


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_pipeline_end_to_end(name):
    build, num_frames = BUILDERS[name]
    pipe = build()
    ref = _generate(pipe, num_frames)
    with headsparse.patch(pipe, pattern="dense"):
        assert torch.equal(_generate(pipe, num_frames), ref)
    # Sparse after one dense step of three (a fraction, resolved from the pipeline's scheduler).
    with headsparse.patch(pipe, pattern="spatial", first_frame_sink=False, dense_steps=0.3) as handle:
        out = _generate(pipe, num_frames)
        state = handle.states["transformer"]
        assert handle.step == 2
        assert state.grid is not None and state.grid[0] >= 2 and state.grid[1:] == (2, 2)
        # ceil(0.3 * 3) = 1 dense step; Wan runs CFG as two transformer calls per step, CogVideoX as one.
        calls_per_step = 2 if name == "wan" else 1
        assert [s.sparse_calls for s in state.stats] == [2 * calls_per_step] * len(state.stats)
        rows = handle.summary(print_table=False)
        assert {r["pattern"] for r in rows} == {"spatial(first_frame_sink=False)"}
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.equal(out, ref)
    assert torch.equal(_generate(pipe, num_frames), ref)


def test_patch_with_model_cpu_offload():
    """accelerate's offload hooks (here with the CPU as the execution device) and ours coexist."""
    pipe = build_wan_pipeline()
    with headsparse.patch(pipe, pattern="spatial"):
        ref = _generate(pipe, 9)
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.transformer, "_hf_hook")
    with headsparse.patch(pipe, pattern="spatial") as handle:
        out = _generate(pipe, 9)
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
    assert torch.equal(out, ref)
