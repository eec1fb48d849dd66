"""The drifting-scenes dataset: deterministic from a seed, captions in its grammar, and pixels that show
what the caption says (read back by ``read_scene``), at the training size and on a larger canvas."""

from __future__ import annotations

import pytest
import torch

from headsparse.pipelines import drifting_scenes as ds

pytestmark = pytest.mark.usefixtures("one_thread")


def test_clips_are_deterministic_varied_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, caption_a = ds.clip(5, frames=4)
    assert torch.equal(torch.get_rng_state(), before)
    b, caption_b = ds.clip(5, frames=4)
    assert torch.equal(a, b) and caption_a == caption_b
    assert a.shape == (4, 3, 32, 32) and 0 <= float(a.min()) and float(a.max()) <= 1
    captions = {ds.sample_scene(s).caption for s in range(40)}
    assert len(captions) >= 35  # varied
    scenes = [ds.sample_scene(s) for s in range(200)]
    assert {s.texture for s in scenes} == set(ds.TEXTURES)
    assert {s.drift for s in scenes} == {*ds.DIRECTIONS, ds.STILL}
    assert {len(s.objects) for s in scenes} == {1, 2, 3}


def test_captions_use_the_vocabulary_and_parse_back():
    vocabulary = set(ds.vocabulary())
    for seed in range(50):
        scene = ds.sample_scene(seed)
        assert set(scene.caption.split()) <= vocabulary, scene.caption
        said = ds.parse_caption(scene.caption)
        assert said.drift == scene.drift
        assert said.objects == {o.colour: o.direction for o in scene.objects}
    with pytest.raises(ValueError, match="neither"):
        ds.parse_caption("a red circle moving left")


@pytest.mark.parametrize("size", [(16, 32, 32), (8, 64, 64)])
def test_pixels_show_the_caption(size):
    """Background drift, object colours and object motions read from the pixels agree with the caption in
    most clips, at the training size and at a canvas four times larger (a texture under a pan has no scale)."""
    frames, height, width = size
    fields = {"drift": 0, "colours": 0, "motions": 0}
    n = 12
    for seed in range(n):
        video, caption = ds.clip(1000 + seed, frames=frames, height=height, width=width)
        for field, ok in ds.caption_matches(video, caption).items():
            fields[field] += ok
    assert fields["drift"] >= n - 2 and fields["colours"] >= n - 2 and fields["motions"] >= n - 3, fields


def test_the_reader_sees_a_moved_background_and_no_invented_objects():
    scene = ds.sample_scene(7, frames=8)
    still = ds.Scene(scene.texture, scene.palette, scene.scale, scene.angle, ds.STILL, 0.0, scene.origin,
                     scene.texture_seed, ())
    video = ds.render_scene(still, frames=8)
    reading = ds.read_scene(video)
    assert reading.drift == ds.STILL and reading.objects == {}
    right = ds.Scene("mottled", 0, 6.0, 0.0, "right", 1.5, (0.0, 0.0), 3, ())
    assert ds.read_scene(ds.render_scene(right, frames=8)).drift == "right"
    assert ds.read_scene(ds.render_scene(right, frames=8).permute(0, 2, 3, 1)).drift == "right"  # channels last


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="frames must be >= 2"):
        ds.clip(0, frames=1)
    with pytest.raises(ValueError, match="at least 24x24"):
        ds.clip(0, height=16)
