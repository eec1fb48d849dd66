"""Every pattern: the Layout's mask equals the exact reference mask, and executors match it."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layout_checks import assert_layout_is_mask

from headsparse.kernels import Layout, layout_reference, sparse_attention
from headsparse.patterns import (
    PATTERNS,
    Dense,
    Diagonal,
    Geometry,
    MultiDiagonal,
    Skip,
    Spatial,
    Temporal,
    Textural,
    VerticalStripe,
    candidates,
    get_pattern,
)

GEOMETRIES = [
    Geometry(3, 4, 5),
    Geometry(1, 6, 7),  # one frame
    Geometry(4, 3, 3, text_len=10, text_position="prefix"),
    Geometry(5, 2, 7, text_len=13, text_position="suffix"),
    Geometry(7, 1, 9),
]
PATTERN_CASES = [
    Dense(), Skip(), Spatial(), Spatial(frame_band=1, first_frame_sink=False), Spatial(text_dense=False),
    Temporal(), Temporal(spatial_window=3, frame_window=1), Temporal(text_dense=False),
    Temporal(location_band=2), Temporal(location_band=5, frame_window=1, text_dense=False),
    Diagonal(half_width=7), Diagonal(half_width=0, text_dense=False),
    MultiDiagonal(half_width=3), MultiDiagonal(half_width=2, frame_offsets=(-1, 0, 2)),
    VerticalStripe(), VerticalStripe(sink_frames=0, stride=5, phase=2), VerticalStripe(sink_frames=2, stride=3),
    Textural(stride=3, granule=4, half_width=5), Textural(stride=2, granule=7, half_width=0, text_dense=False),
]


@pytest.mark.parametrize("pattern", PATTERN_CASES, ids=repr)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=repr)
@pytest.mark.parametrize("blocks", [(16, 32), (32, 32)])
def test_layout_mask_equals_reference(pattern, geometry, blocks):
    assert_layout_is_mask(pattern, geometry, *blocks, heads=2)


@pytest.mark.parametrize("pattern", PATTERN_CASES, ids=repr)
def test_executors_match_pattern_mask(pattern):
    geometry = Geometry(4, 5, 6, text_len=7, text_position="prefix")
    lay = pattern.layout(geometry, num_heads=2, block_m=32, block_n=32)
    q, k, v = (torch.randn(1, 2, geometry.seq_len, 32) for _ in range(3))
    ref = layout_reference(q, k, v, lay)
    assert torch.equal(lay.to_dense_mask()[0, 0], pattern.dense_mask(geometry))
    with torch.no_grad():
        for backend in ("triton", "grouped", "masked"):
            out = sparse_attention(q, k, v, lay, backend=backend)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_spatial_semantics():
    g = Geometry(3, 2, 2, text_len=2, text_position="prefix")
    m = Spatial().dense_mask(g)
    frame = g.frame_of_token()
    q = 2 + 2 * 4  # first token of frame 2
    assert m[q].tolist() == [(f < 0) or f in (0, 2) for f in frame.tolist()]
    assert m[0].all() and m[:, 0].all()  # text sees and is seen by everything
    band = Spatial(frame_band=1, first_frame_sink=False).dense_mask(Geometry(4, 1, 1))
    assert band.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]


def test_temporal_semantics_and_permutation_localises_blocks():
    g = Geometry(8, 4, 4)
    m = Temporal().dense_mask(g)
    _, y, x, _ = g.coords(torch.arange(g.seq_len))
    assert torch.equal(m, (y[:, None] == y[None, :]) & (x[:, None] == x[None, :]))
    lay = Temporal().layout(g, block_m=32, block_n=32)
    # token-major order: a 32-token block holds 4 locations x 8 frames, so every query block
    # visits exactly its own key block (in frame-major order it would visit all four).
    assert lay.ordered
    kinds = lay.block_kinds()[0, 0]
    assert torch.equal(kinds > 0, torch.eye(4, dtype=torch.bool))


def test_sparse_vdit_and_textural_semantics():
    g = Geometry(3, 2, 3)  # 6 tokens per frame, 18 video tokens
    i = torch.arange(18)
    d = i[:, None] - i[None, :]
    assert torch.equal(Diagonal(half_width=2).dense_mask(g), d.abs() <= 2)
    multi = MultiDiagonal(half_width=1, frame_offsets=(0, 1)).dense_mask(g)
    assert torch.equal(multi, (d.abs() <= 1) | ((d - 6).abs() <= 1))
    stripes = VerticalStripe(sink_frames=1, stride=4, phase=1).dense_mask(g)
    assert torch.equal(stripes, ((i < 6) | (i % 4 == 1))[None, :].expand(18, 18))
    tex = Textural(stride=3, granule=2, half_width=1).dense_mask(g)
    assert torch.equal(tex, ((i // 2) % 3 == 0)[None, :] | (d.abs() <= 1))


def test_temporal_location_band_is_block_aligned():
    g = Geometry(8, 8, 8)  # token-major: 8 frames x 4 locations per 32-token block
    m = Temporal(location_band=1).dense_mask(g)
    _, y, x, _ = g.coords(torch.arange(g.seq_len))
    s = y * 8 + x
    assert torch.equal(m, (s[:, None] - s[None, :]).abs() <= 1)
    lay = Temporal(location_band=8).layout(g, block_m=32, block_n=32)
    # a band in token-major order: full blocks on and beside the diagonal, partial only at its edges
    i = torch.arange(16)
    dist = (i[:, None] - i[None, :]).abs()
    expected = torch.where(dist <= 1, 2, torch.where(dist == 2, 1, 0)).to(torch.int8)
    assert torch.equal(lay.block_kinds()[0, 0], expected)


def test_text_not_dense():
    g = Geometry(2, 2, 2, text_len=3, text_position="suffix")
    m = Spatial(text_dense=False).dense_mask(g)
    assert m[8:, 8:].all() and not m[8:, :8].any() and not m[:8, 8:].any()


def test_skip_is_empty_and_gives_zero():
    g = Geometry(2, 4, 4, text_len=4, text_position="prefix")
    lay = Skip().layout(g, num_heads=2, block_m=32, block_n=32)
    assert lay.density().sum() == 0
    q, k, v = (torch.randn(1, 2, g.seq_len, 32) for _ in range(3))
    with torch.no_grad():
        assert torch.equal(sparse_attention(q, k, v, lay), torch.zeros_like(q))


def test_dense_pattern_runs_plain_sdpa():
    from headsparse.kernels import choose_backend

    g = Geometry(2, 8, 8)
    lay = Dense().layout(g, num_heads=2, block_m=32, block_n=32)
    assert lay.is_dense() and choose_backend(torch.randn(1, 2, g.seq_len, 16), lay) == "sdpa"


def test_registry():
    assert {"dense", "skip", "spatial", "temporal", "diagonal", "multi_diagonal", "vertical_stripe",
            "textural"} <= set(PATTERNS)
    assert get_pattern("spatial", frame_band=2) == Spatial(frame_band=2)
    with pytest.raises(ValueError, match="unknown pattern 'nope'; known:"):
        get_pattern("nope")
    with pytest.raises(ValueError, match="bad parameters for pattern 'spatial'"):
        get_pattern("spatial", width=3)
    names = [p.name for p in candidates()]
    assert names.count("spatial") == len(Spatial.grid)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Spatial(frame_band=-1), "spatial.frame_band must be an integer >= 0"),
        (lambda: Temporal(spatial_window=2), "temporal.spatial_window must be an odd integer"),
        (lambda: Temporal(frame_window=-3), "temporal.frame_window must be None or an integer"),
        (lambda: Temporal(location_band=-1), "temporal.location_band must be None or an integer"),
        (lambda: Temporal(location_band=2, spatial_window=3), "location_band replaces spatial_window"),
        (lambda: Dense(text_dense="yes"), "Dense.text_dense must be a bool"),
        (lambda: Diagonal(half_width=-1), "diagonal.half_width must be an integer >= 0"),
        (lambda: MultiDiagonal(frame_offsets=()), "multi_diagonal.frame_offsets must be None or a non-empty"),
        (lambda: VerticalStripe(sink_frames=0), "vertical_stripe keeps nothing"),
        (lambda: VerticalStripe(stride=4, phase=4), r"vertical_stripe.phase must be in \[0, stride\)"),
        (lambda: Textural(granule=0), "textural.granule must be an integer >= 1"),
        (lambda: Geometry(0, 2, 2), "Geometry.frames must be an integer >= 1"),
        (lambda: Geometry(2, 2, 2, text_len=3), "does not fit text_position='none'"),
        (lambda: Geometry(2, 2, 2, text_position="middle"), "text_position must be"),
    ],
)
def test_bad_parameters_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_layout_rejects_bad_arguments():
    with pytest.raises(TypeError, match="geometry must be a headsparse Geometry"):
        Spatial().layout((2, 2, 2))
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        Spatial().layout(Geometry(1, 2, 2), num_heads=0)


def test_concat_heads_mixes_patterns():
    g = Geometry(3, 4, 4, text_len=5, text_position="prefix")
    pats = [Spatial(), Temporal(), Skip()]
    lay = Layout.concat_heads([p.layout(g, block_m=32, block_n=32) for p in pats])
    assert lay.num_heads == 3 and lay.ordered
    for h, p in enumerate(pats):
        assert torch.equal(lay.to_dense_mask()[0, h], p.dense_mask(g))
    q, k, v = (torch.randn(1, 3, g.seq_len, 16) for _ in range(3))
    with torch.no_grad():
        out = sparse_attention(q, k, v, lay, backend="triton")
    torch.testing.assert_close(out, layout_reference(q, k, v, lay), atol=1e-5, rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    frames=st.integers(1, 5), height=st.integers(1, 5), width=st.integers(1, 6),
    text=st.sampled_from([(0, "none"), (3, "prefix"), (5, "suffix")]),
    band=st.integers(0, 2), sink=st.booleans(), window=st.sampled_from([1, 3]),
    fwin=st.sampled_from([None, 0, 1]), text_dense=st.booleans(),
)
def test_property_layouts_match_reference(frames, height, width, text, band, sink, window, fwin, text_dense):
    g = Geometry(frames, height, width, text_len=text[0], text_position=text[1])
    for pattern in (Spatial(frame_band=band, first_frame_sink=sink, text_dense=text_dense),
                    Temporal(spatial_window=window, frame_window=fwin, text_dense=text_dense),
                    Temporal(location_band=band * 2, frame_window=fwin, text_dense=text_dense),
                    Diagonal(half_width=band * 5, text_dense=text_dense),
                    MultiDiagonal(half_width=band, text_dense=text_dense),
                    VerticalStripe(sink_frames=int(sink), stride=window + 1, text_dense=text_dense),
                    Textural(stride=window + 1, granule=band + 1, half_width=band * 3, text_dense=text_dense)):
        assert_layout_is_mask(pattern, g, 16, 32)


def test_render_mask(tmp_path):
    import numpy as np
    from PIL import Image

    from headsparse.patterns.render import render_mask

    g = Geometry(3, 3, 4, text_len=4, text_position="prefix")
    path = render_mask(Spatial(), g, tmp_path / "spatial.png", scale=2)
    img = Image.open(path)
    assert img.size == (g.seq_len * 2, g.seq_len * 2)
    pixels = torch.from_numpy(np.asarray(img.convert("RGB")).copy())[::2, ::2]
    kept = (pixels == torch.tensor([31, 119, 180])).all(-1)
    assert torch.equal(kept, Spatial().dense_mask(g))
    with pytest.raises(ValueError, match="render_mask draws every pair"):
        render_mask(Spatial(), Geometry(10, 20, 20), tmp_path / "big.png")
