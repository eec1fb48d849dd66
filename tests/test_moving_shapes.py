"""The moving-shapes dataset: deterministic, and every clip shows what its caption says (checked by pixels)."""

from __future__ import annotations

import itertools

import pytest
import torch

from headsparse.pipelines.moving_shapes import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    FILL,
    centres,
    clip,
    render,
    sample_clip,
    vocabulary,
)

SEEDS = range(40)


def test_clips_are_deterministic_and_varied():
    a, cap_a = clip(7)
    b, cap_b = clip(7)
    assert torch.equal(a, b) and cap_a == cap_b
    captions = {clip(s)[1] for s in SEEDS}
    assert len(captions) > 20
    state = torch.random.get_rng_state()
    clip(3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_captions_use_the_grammar():
    words = set(vocabulary())
    for s in SEEDS:
        caption = sample_clip(s).caption
        assert set(caption.split()) <= words
        assert caption.startswith("a ") and any(f" {d}" in caption for d in DIRECTIONS)


@pytest.mark.parametrize("seed", SEEDS)
def test_pixels_show_the_caption(seed):
    frames, height, width = 12, 64, 64
    c = sample_clip(seed, height=height, width=width, frames=frames)
    video = render(c, frames=frames, height=height, width=width)
    assert video.shape == (frames, 3, height, width) and 0 <= video.min() and video.max() <= 1
    background = torch.tensor(BACKGROUNDS[c.background])[:, None]
    colour = torch.tensor(COLOURS[c.colour])[:, None]
    ys, xs = [], []
    for t in range(frames):
        pixels = video[t].flatten(1)
        shape = (pixels - background).abs().sum(0) > 1e-6
        assert shape.any(), "the shape left the frame"
        assert torch.allclose(pixels[:, shape], colour.expand(-1, int(shape.sum())))  # the captioned colour
        idx = shape.view(height, width).nonzero().float()
        ys.append(idx[:, 0].mean().item())
        xs.append(idx[:, 1].mean().item())
        if t == 0:  # the captioned shape: its fill of its bounding square
            fill = shape.sum().item() / c.size**2
            nearest = min(FILL, key=lambda name: abs(FILL[name] - fill))
            assert nearest == c.shape, (fill, c.shape)
    dy, dx = DIRECTIONS[c.direction]
    expected = centres(c, frames, height, width)
    for t in range(frames):  # the centroid follows the clip's path (triangles' centroid sits low)
        assert abs(xs[t] + 0.5 - expected[t][1]) < 1.0
        assert abs(ys[t] + 0.5 - expected[t][0]) < (c.size / 6 + 1.0 if c.shape == "triangle" else 1.0)
    along = ys if dy else xs
    sign = dy or dx
    steps = [sign * (b - a) for a, b in itertools.pairwise(along)]
    if c.motion == "moving":
        assert all(s > 0 for s in steps), "a moving shape goes the captioned way every frame"
    else:
        assert any(s < 0 for s in steps) or any(s > 0 for s in steps)


def test_bouncing_turns_at_the_edges():
    turned = 0
    for s in SEEDS:
        c = sample_clip(s, frames=12, height=64, width=64)
        if c.motion != "bouncing":
            continue
        dy, _dx = DIRECTIONS[c.direction]
        axis = 0 if dy else 1
        path = [p[axis] for p in centres(c, 12, 64, 64)]
        steps = [b - a for a, b in itertools.pairwise(path)]
        turned += any(x * y < 0 for x, y in itertools.pairwise(steps))
        half = c.size / 2
        assert all(half - 1e-6 <= p <= 64 - half + 1e-6 for p in path)
    assert turned >= 5


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at least 16x16"):
        sample_clip(0, height=8, width=32)
