"""The moving-shapes model: its pipeline, training script, shipped weights, and the pixel reader.

The pipeline and training tests use a 1-layer model trained for a few steps (seconds); the
shipped-weights tests load the real trained model from the package and check, by pixels, that it
draws the captioned colour, background and shape, and moves it.
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

import headsparse
from headsparse.pipelines import moving_shapes
from headsparse.pipelines.shapes import (
    WEIGHTS,
    MovingShapesPipeline,
    ShapesSize,
    build_components,
    load_moving_shapes_pipeline,
    shapes_scheduler,
    with_positions,
)
from headsparse.pipelines.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ShapesSize(layers=1, heads=2, head_dim=16, ffn=32, frames=4, height=16, width=16)
SMALL_POSITIONS = dataclasses.replace(SMALL, positions=True)


def small_pipeline(seed: int = 0, size: ShapesSize = SMALL) -> MovingShapesPipeline:
    parts = build_components(size, seed)
    pipe = MovingShapesPipeline(**parts, scheduler=shapes_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt="a red circle moving left", **kw):
    kw = {"num_frames": 4, "height": 16, "width": 16, "num_inference_steps": 3,
          "generator": torch.Generator().manual_seed(0), **kw}
    return pipe(prompt, **kw).frames


# ---------------------------------------------------------------- the pixel reader
def test_describe_reads_the_dataset():
    counts = dict.fromkeys(("colour", "shape", "background", "direction", "motion"), 0)
    moving = moving_right = 0
    for seed in range(60):
        c = moving_shapes.sample_clip(seed)
        m = moving_shapes.describe(moving_shapes.render(c)).matches(c)
        for k in counts:
            counts[k] += m[k]
        if c.motion == "moving":
            moving += 1
            moving_right += m["direction"] and m["motion"]
    assert moving and moving_right == moving
    assert counts == dict.fromkeys(counts, 60)  # every field of every clip (bouncing clips go their way first)


def test_describe_accepts_channels_last_and_blank_videos():
    c = moving_shapes.sample_clip(3)
    video = moving_shapes.render(c)
    assert moving_shapes.describe(video.permute(0, 2, 3, 1)) == moving_shapes.describe(video)
    blank = moving_shapes.describe(torch.zeros(4, 3, 16, 16))
    assert blank.colour is None and blank.shape is None and blank.direction is None and blank.background == "black"


def test_parse_caption():
    for seed in range(20):
        c = moving_shapes.sample_clip(seed)
        p = moving_shapes.parse_caption(c.caption)
        assert (p.colour, p.shape, p.background, p.direction, p.motion) == (
            c.colour, c.shape, c.background, c.direction, c.motion)


# ---------------------------------------------------------------- the pipeline
def test_pipeline_generates_videos_in_range_and_reproducibly():
    pipe = small_pipeline()
    a = generate(pipe)
    b = generate(pipe)
    assert a.shape == (1, 4, 16, 16, 3) and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    pt = generate(pipe, ["a red circle moving left", "a blue square bouncing up"], guidance_scale=1.0,
                  num_frames=2, height=20, width=24, output_type="pt")
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 2, 20, 24, 3)


def test_pipeline_takes_the_standard_diffusers_call_arguments():
    pipe = small_pipeline()
    seen = []

    def callback(p, step, timestep, tensors):
        seen.append((step, sorted(tensors)))
        return {"latents": tensors["latents"] * 0} if step == 2 else {}

    latents = torch.randn(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    out = pipe("a red circle moving left", num_frames=4, height=16, width=16, num_inference_steps=3,
               latents=latents, callback_on_step_end=callback,
               callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], output_type="latent",
               return_dict=False)
    assert seen == [(0, ["latents", "prompt_embeds"]), (1, ["latents", "prompt_embeds"]),
                    (2, ["latents", "prompt_embeds"])]
    assert isinstance(out, tuple) and torch.equal(out[0], torch.zeros(1, 3, 4, 16, 16))  # the callback's latents
    same = generate(pipe, latents=latents.clone())
    np.testing.assert_array_equal(same, generate(pipe, latents=latents.clone()))  # latents replace the generator
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        generate(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise"])
    with pytest.raises(ValueError, match="latents must have shape"):
        generate(pipe, latents=torch.zeros(1, 3, 2, 16, 16))
    with pytest.raises(TypeError, match="unexpected arguments"):
        generate(pipe, eta=0.5)


def test_pipeline_refuses_bad_sizes():
    pipe = small_pipeline()
    with pytest.raises(ValueError, match="multiples of 4"):
        generate(pipe, height=18)
    with pytest.raises(ValueError, match="output_type"):
        generate(pipe, output_type="pil")


@pytest.mark.parametrize("size", [SMALL, SMALL_POSITIONS], ids=["pixels", "positions"])
def test_patching_the_pipeline(size):
    pipe = small_pipeline(size=size)
    ref = generate(pipe, num_frames=4, height=32, width=32)
    with headsparse.patch(pipe, pattern="dense"):
        np.testing.assert_array_equal(generate(pipe, num_frames=4, height=32, width=32), ref)
    with headsparse.patch(pipe, pattern="spatial", first_frame_sink=False, block_size=64) as handle:
        sparse = generate(pipe, num_frames=4, height=32, width=32)
        rows = handle.summary(print_table=False)
    assert not np.array_equal(sparse, ref)
    assert {r["pattern"] for r in rows} == {"spatial(first_frame_sink=False)"}
    assert all(r["density"] == pytest.approx(0.25) for r in rows)
    np.testing.assert_array_equal(generate(pipe, num_frames=4, height=32, width=32), ref)  # unpatched again


# ---------------------------------------------------------------- training
def _train(out, steps):
    return train(out, steps=steps, batch=2, lr=1e-3, seed=0, ema_decay=0.9, save_every=2, warmup=2, size=SMALL,
                 quiet=True)


def test_training_logs_resumes_exactly_and_saves_a_loadable_pipeline(tmp_path):
    straight = _train(tmp_path / "a", 3)
    _train(tmp_path / "b", 2)
    resumed = _train(tmp_path / "b", 3)  # continues from b's step-2 checkpoint
    with (tmp_path / "a" / "loss.csv").open() as f:
        rows_a = list(csv.DictReader(f))
    with (tmp_path / "b" / "loss.csv").open() as f:
        rows_b = list(csv.DictReader(f))
    assert [r["step"] for r in rows_a] == ["1", "2", "3"]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    pa, pb = load_moving_shapes_pipeline(straight), load_moving_shapes_pipeline(resumed)
    for (name, x), (_, y) in zip(pa.transformer.state_dict().items(), pb.transformer.state_dict().items(),
                                 strict=True):
        assert torch.equal(x, y), name
    np.testing.assert_array_equal(generate(pa), generate(pb))


def test_training_starts_from_a_saved_pipeline(tmp_path):
    first = _train(tmp_path / "a", 2)
    # lr 0: the second stage changes nothing, so what it saves is exactly what it started from.
    second = train(tmp_path / "b", steps=1, batch=2, lr=0.0, seed=1, ema_decay=0.9, save_every=2, warmup=1,
                   size=SMALL, init=first, quiet=True)
    pa, pb = load_moving_shapes_pipeline(first), load_moving_shapes_pipeline(second)
    for module in ("transformer", "text_encoder"):
        a, b = getattr(pa, module).state_dict(), getattr(pb, module).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), module
    # The same command resumes a stage that started from ``init``: 2 + 1 steps equal 3 straight.
    stage = dict(batch=2, lr=1e-3, seed=1, ema_decay=0.9, save_every=2, warmup=2, size=SMALL, init=first, quiet=True)
    straight = train(tmp_path / "s", steps=3, **stage)
    train(tmp_path / "r", steps=2, **stage)
    resumed = train(tmp_path / "r", steps=3, **stage)
    ps, pr = load_moving_shapes_pipeline(straight), load_moving_shapes_pipeline(resumed)
    np.testing.assert_array_equal(generate(ps), generate(pr))
    assert not np.array_equal(generate(ps), generate(pa))
    with pytest.raises(FileNotFoundError, match="init: no text_encoder"):
        train(tmp_path / "c", steps=1, batch=2, lr=0.0, seed=0, ema_decay=0.9, save_every=2, size=SMALL,
              init=tmp_path, quiet=True)


def test_position_channels_are_the_clip_coordinates():
    x = torch.rand(2, 3, 4, 8, 12)
    assert with_positions(x, 3) is x
    y = with_positions(x, 6)
    assert y.shape == (2, 6, 4, 8, 12) and torch.equal(y[:, :3], x)
    torch.testing.assert_close(y[1, 3, :, 2, 5], torch.linspace(-1, 1, 4))  # t
    torch.testing.assert_close(y[0, 4, 3, :, 0], torch.linspace(-1, 1, 8))  # y
    torch.testing.assert_close(y[1, 5, 0, 7, :], torch.linspace(-1, 1, 12))  # x
    with pytest.raises(ValueError, match="in_channels"):
        with_positions(x, 5)


def test_training_with_position_channels(tmp_path):
    folder = train(tmp_path / "p", steps=2, batch=2, lr=1e-3, seed=0, ema_decay=0.9, save_every=2, warmup=1,
                   size=SMALL_POSITIONS, quiet=True)
    pipe = load_moving_shapes_pipeline(folder)
    assert pipe.transformer.config.in_channels == 6
    video = generate(pipe)
    assert video.shape == (1, 4, 16, 16, 3) and np.isfinite(video).all()
    # The coordinates reach the model: zeroing their patch-embedding weights changes the video.
    with torch.no_grad():
        pipe.transformer.patch_embedding.weight[:, 3:] = 0
    assert not np.array_equal(generate(pipe), video)
    with pytest.raises(ValueError, match="--positions must match"):
        train(tmp_path / "q", steps=1, batch=2, lr=0.0, seed=0, ema_decay=0.9, save_every=2, size=SMALL,
              init=folder, quiet=True)


def test_loading_a_folder_without_weights_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no moving-shapes weights"):
        load_moving_shapes_pipeline(tmp_path)


# ---------------------------------------------------------------- the shipped, trained model
def test_shipped_weights_are_small_safetensors():
    files = sorted(p for p in WEIGHTS.rglob("*") if p.is_file())
    assert any(p.suffix == ".safetensors" for p in files)
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in files)
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20


def test_shipped_model_draws_the_captioned_colour_background_shape_and_motion():
    """Eight held-out captions at the training grid, as ``benchmarks/shapes_videos.py`` makes them.

    The shipped model draws a shape of the captioned colour on the captioned background and moves
    it the captioned way (chance would be 2 of 8 directions), bouncing when the caption says so; its
    outline is the captioned one most of the time. These weights read 8, 6, 8, 7 and 8 of 8.
    """
    pipe = load_moving_shapes_pipeline()
    hits = dict.fromkeys(("colour", "shape", "background", "direction", "motion"), 0)
    moved = 0
    for i in range(8):
        caption = moving_shapes.sample_clip(10**9 + i).caption
        video = torch.from_numpy(pipe(caption, generator=torch.Generator().manual_seed(i)).frames[0])
        reading = moving_shapes.describe(video)
        moved += reading.direction is not None
        for field, hit in reading.matches(moving_shapes.parse_caption(caption)).items():
            hits[field] += hit
    assert hits["colour"] == hits["background"] == 8, hits
    assert hits["shape"] >= 5, hits
    assert hits["direction"] >= 6, hits
    assert hits["motion"] >= 7, hits
    assert moved == 8, "every video shows a shape that moves"


@pytest.mark.parametrize("local", [False, True])
def test_local_prior_starts_every_head_local(local):
    """With the local prior, a fresh model's heads put most of their attention on their 3x5x5
    neighbourhood (about a tenth of the tokens); without it they spread near-uniformly."""
    from headsparse.patterns import Geometry, Neighborhood

    size = dataclasses.replace(SMALL, layers=2, heads=2, head_dim=32, frames=8, height=32, width=32,
                               qk_gain=6.0, local_prior=local)
    pipe = small_pipeline(size=size)
    model = pipe.transformer
    geometry = Geometry(8, 8, 8)
    index = torch.arange(geometry.seq_len)
    mask = Neighborhood(kernel_size=(3, 5, 5)).mask(geometry, index[:, None], index[None, :])
    masses = []

    def observe(layer, step, q, k, v, geom):
        probs = torch.softmax(q[0].float() @ k[0].float().transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
        masses.append((probs * mask).sum(-1).mean(-1))

    handle = headsparse.patch(model, pattern="dense")
    for state in handle.states.values():
        state.observer = observe
    text = torch.randn(1, 4, model.config.text_dim)
    with torch.no_grad():
        model(hidden_states=torch.randn(1, 3, 8, 32, 32), timestep=torch.tensor([500]),
              encoder_hidden_states=text, return_dict=False)
    handle.unpatch()
    mass = torch.cat(masses)
    density = mask.float().mean().item()
    assert mass.numel() == 4 and density < 0.15
    if local:
        assert mass.min() > 0.6, mass
    else:
        assert mass.max() < 2 * density, mass
