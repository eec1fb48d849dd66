"""The tiny diffusers models of ``tiny_models``: forwards, token counts and where the text sits in attention.

The attention calls are recorded by wrapping ``F.scaled_dot_product_attention`` and the module-level
``dispatch_attention_fn`` name of the model's module, and attributed to the attention module that runs them
through forward hooks on every module that has a ``processor``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from tiny_models import CASE_NAMES, TEXT_LEN, TinyCase, build, build_cogvideox_pipeline, build_wan_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")


@dataclass
class Call:
    """One attention call: the attention module running it, the function, q/k/mask as that function saw them."""

    module: str
    fn: str  # "dispatch" (q/k/v (B, S, H, D)) or "sdpa" ((B, H, S, D))
    q: torch.Tensor
    k: torch.Tensor
    mask: torch.Tensor | None

    @property
    def q_len(self) -> int:
        return self.q.shape[1] if self.fn == "dispatch" else self.q.shape[-2]

    @property
    def k_len(self) -> int:
        return self.k.shape[1] if self.fn == "dispatch" else self.k.shape[-2]

    def q_rows(self) -> torch.Tensor:
        """q of batch item 0 as (S, H * D)."""
        q = self.q[0] if self.fn == "dispatch" else self.q[0].transpose(0, 1)
        return q.flatten(1)


@contextmanager
def record_attention(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, scale_self: tuple[str, ...] = (), factor: float = 1.0
) -> Iterator[list[Call]]:
    """Record every attention call made during the block; multiply outputs of modules in ``scale_self``."""
    calls: list[Call] = []
    stack: list[str] = []
    inside_dispatch = [False]
    handles = []

    def leave(module: torch.nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    for name, module in model.named_modules():
        if hasattr(module, "processor"):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: stack.append(n)))
            handles.append(module.register_forward_hook(leave))

    def record(fn: str, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor) -> None:
        where = stack[-1] if stack else ""
        calls.append(Call(where, fn, q.detach().clone(), k.detach().clone(), mask))
        if where in scale_self:
            out.mul_(factor)

    sdpa = F.scaled_dot_product_attention

    def sdpa_wrapper(query, key, value, attn_mask=None, *args, **kwargs):
        out = sdpa(query, key, value, attn_mask, *args, **kwargs)
        if not inside_dispatch[0]:
            record("sdpa", query, key, attn_mask, out)
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_wrapper)
    model_module = sys.modules[type(model).__module__]
    dispatch = getattr(model_module, "dispatch_attention_fn", None)
    if dispatch is not None:

        def dispatch_wrapper(query, key, value, attn_mask=None, *args, **kwargs):
            inside_dispatch[0] = True
            try:
                out = dispatch(query, key, value, attn_mask, *args, **kwargs)
            finally:
                inside_dispatch[0] = False
            record("dispatch", query, key, attn_mask, out)
            return out

        monkeypatch.setattr(model_module, "dispatch_attention_fn", dispatch_wrapper)
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
        monkeypatch.undo()


def run(case: TinyCase, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**inputs, return_dict=False)[0]


def odd_latent(case: TinyCase) -> tuple[int, int, int]:
    """Latent (frames, height, width) giving 3 x 3 x 5 tokens (1 x 3 x 5 for image models)."""
    pt, ph, pw = case.patch
    return (3 * pt if case.video else 1), 3 * ph, 5 * pw


def perturb_token(case: TinyCase, inputs: dict, latent: tuple[int, int, int], token: tuple[int, int, int]) -> dict:
    """A copy of ``inputs`` whose latent differs at one position inside the patch of ``token`` (f, y, x)."""
    f, y, x = token
    pt, ph, pw = case.patch
    hs = inputs["hidden_states"].clone()
    if case.name in ("wan", "hunyuan_video", "mochi"):  # (B, C, F, H, W)
        hs[:, :, f * pt, y * ph, x * pw] += 3.0
    elif case.name == "cogvideox":  # (B, F, C, H, W)
        hs[:, f * pt, :, y * ph, x * pw] += 3.0
    elif case.name == "sd3":  # (B, C, H, W)
        hs[:, :, y * ph, x * pw] += 3.0
    else:  # packed (B, S, C): ltx_video, flux
        _, th, tw = case.tokens(*latent)
        hs[:, (f * th + y) * tw + x, :] += 3.0
    return {**inputs, "hidden_states": hs}


def changed_rows(a: Call, b: Call) -> list[int]:
    diff = (a.q_rows() - b.q_rows()).abs().amax(dim=1)
    return torch.nonzero(diff > 1e-5).flatten().tolist()


def text_offset(case: TinyCase, n_video: int) -> int:
    """Index of the first text token in the joint sequence (the first video token is at the other end)."""
    return n_video if case.text_position == "suffix" else 0


def video_offset(case: TinyCase) -> int:
    return case.text_len if case.text_position == "prefix" else 0


CASES: dict[str, TinyCase] = {}


def get(name: str) -> TinyCase:
    if name not in CASES:
        CASES[name] = build(name)
    return CASES[name]


# ------------------------------------------------------------------------------------------------------ forwards
@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("batch,grid", [(1, "default"), (2, "default"), (2, "odd")])
def test_forward_shape(name: str, batch: int, grid: str) -> None:
    case = get(name)
    assert not case.model.training
    assert all(p.dtype == torch.float32 for p in case.model.parameters())
    latent = case.defaults if grid == "default" else odd_latent(case)
    inputs = case.make_inputs(batch, *latent)
    out = run(case, inputs)
    assert out.shape == inputs["hidden_states"].shape
    assert torch.isfinite(out).all()
    if grid == "odd":
        assert case.tokens(*latent) == ((3 if case.video else 1), 3, 5)


def test_seeds_and_inputs_are_deterministic() -> None:
    a, b, c = build("wan", seed=0), build("wan", seed=0), build("wan", seed=1)
    pa, pb, pc = (next(m.model.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    x, y = a.make_inputs(2, seed=3), a.make_inputs(2, seed=3)
    assert all(torch.equal(x[k], y[k]) for k in x)
    with pytest.raises(ValueError):
        get("flux").make_inputs(1, 2, 3, 5)
    with pytest.raises(KeyError):
        build("unet")


# ------------------------------------------------------------------------------------ self-attention token layout
@pytest.mark.parametrize("name", CASE_NAMES)
def test_self_attention_length_and_modules(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = get(name)
    latent = odd_latent(case)
    n = math.prod(case.tokens(*latent))
    batch = 2
    with record_attention(case.model, monkeypatch) as calls:
        run(case, case.make_inputs(batch, *latent))
    joint = n + case.text_len
    self_calls = [c for c in calls if c.module in case.self_attention]
    # every self-attention module is called, through the documented function, over [video + text] tokens
    assert {c.module for c in self_calls} == set(case.self_attention)
    per_module = batch if name == "mochi" else 1  # Mochi loops over the batch
    assert len(self_calls) == per_module * len(case.self_attention)
    for c in self_calls:
        assert c.fn == case.attention_call
        assert c.q_len == c.k_len == joint, (c.module, c.q.shape, c.k.shape, n, case.text_len)
        heads_dim = (c.q.shape[2], c.q.shape[3]) if c.fn == "dispatch" else (c.q.shape[1], c.q.shape[3])
        assert heads_dim == (2, 16)
        assert c.q.shape[0] == (1 if name == "mochi" else batch)
    # no other attention call has the joint length: the list of self-attention modules is complete
    assert all(c.q_len != joint or c.k_len != joint for c in calls if c.module not in case.self_attention)
    if name in ("wan", "ltx_video"):
        cross = [c for c in calls if c.module.endswith(".attn2")]
        assert len(cross) == len(case.self_attention)
        assert all(c.q_len == n and c.k_len == TEXT_LEN != n for c in cross)
    if name == "hunyuan_video":  # the refiner's attention is text-only
        refiner = [c for c in calls if "token_refiner" in c.module]
        assert refiner and all(c.fn == "sdpa" and c.q_len == c.k_len == TEXT_LEN for c in refiner)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_token_order(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Video tokens are (frame, row, column)-major after the text prefix / before the text suffix."""
    case = get(name)
    latent = odd_latent(case)
    grid = case.tokens(*latent)
    n = math.prod(grid)
    inputs = case.make_inputs(1, *latent)
    first = case.self_attention[0]

    def first_call(inp: dict) -> Call:
        with record_attention(case.model, monkeypatch) as calls:
            run(case, inp)
        return next(c for c in calls if c.module == first)

    base = first_call(inputs)
    for token in [(grid[0] - 1, 1, 3), (0, 2, 0), (grid[0] // 2, 0, 4)]:
        moved = first_call(perturb_token(case, inputs, latent, token))
        f, y, x = token
        # in the first block a q row depends on its own token only
        assert changed_rows(base, moved) == [video_offset(case) + (f * grid[1] + y) * grid[2] + x], token
    if case.text_len:
        j = 2
        ehs = inputs["encoder_hidden_states"].clone()
        ehs[:, j] += 3.0
        moved = first_call({**inputs, "encoder_hidden_states": ehs})
        rows = changed_rows(base, moved)
        start = text_offset(case, n)
        assert start + j in rows
        if name != "mochi":  # Mochi's time embedding pools the text, so its video rows move too
            assert set(rows) <= set(range(start, start + case.text_len))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_output_depends_on_self_attention(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = get(name)
    inputs = case.make_inputs(2, *case.defaults)
    ref = run(case, inputs)
    with record_attention(case.model, monkeypatch, scale_self=case.self_attention, factor=0.0):
        zeroed = run(case, inputs)
    assert (ref - zeroed).abs().max() > 1e-3


def test_hunyuan_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bool (B, 1, 1, video + text) mask, False on the padded text keys of batch item 1."""
    case = get("hunyuan_video")
    latent = odd_latent(case)
    n = math.prod(case.tokens(*latent))
    inputs = case.make_inputs(2, *latent)
    valid = int(inputs["encoder_attention_mask"][1].sum())
    assert valid < TEXT_LEN
    with record_attention(case.model, monkeypatch) as calls:
        out = run(case, inputs)
    expected = torch.ones(2, 1, 1, n + TEXT_LEN, dtype=torch.bool)
    expected[1, ..., n + valid :] = False
    for c in (c for c in calls if c.module in case.self_attention):
        assert c.mask is not None and c.mask.dtype == torch.bool
        assert torch.equal(c.mask, expected)
    # the padded text changes item 1's output
    unpadded = run(case, {**inputs, "encoder_attention_mask": torch.ones_like(inputs["encoder_attention_mask"])})
    assert torch.allclose(out[0], unpadded[0], atol=1e-5)
    assert not torch.allclose(out[1], unpadded[1], atol=1e-4)


def test_mochi_drops_padded_text(monkeypatch: pytest.MonkeyPatch) -> None:
    case = get("mochi")
    latent = odd_latent(case)
    n = math.prod(case.tokens(*latent))
    with record_attention(case.model, monkeypatch) as calls:
        run(case, case.make_inputs(2, *latent, pad_text=3))
    lengths = [c.q_len for c in calls if c.module == case.self_attention[0]]
    assert lengths == [n + TEXT_LEN, n + TEXT_LEN - 3]


def test_ltx_cross_attention_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    case = get("ltx_video")
    with record_attention(case.model, monkeypatch) as calls:
        run(case, case.make_inputs(2, *case.defaults))
    for c in calls:
        if c.module in case.self_attention:
            assert c.mask is None
        else:  # additive bias (B, H, 1, T)
            assert c.mask is not None and c.mask.shape == (2, 2, 1, TEXT_LEN) and c.mask.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize(
    "builder,num_frames,latent_frames,text_len,batch",
    [(build_wan_pipeline, 5, 2, 512, 1), (build_cogvideox_pipeline, 8, 2, 226, 2)],
)
def test_pipeline_runs(
    builder: Callable, num_frames: int, latent_frames: int, text_len: int, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = builder()
    with record_attention(pipe.transformer, monkeypatch) as calls:
        frames = pipe(
            prompt="a cat",
            num_inference_steps=2,
            height=16,
            width=16,
            num_frames=num_frames,
            guidance_scale=5.0,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).frames
    assert frames.shape == (1, num_frames, 3, 16, 16)
    assert torch.isfinite(frames).all()
    video_tokens = latent_frames * 1 * 1  # 16 px / 8 (VAE) / 2 (patch)
    if builder is build_wan_pipeline:  # CFG: two batch-1 calls per step; text only in cross-attention
        selfs = [c for c in calls if c.module.endswith("attn1")]
        crosses = [c for c in calls if c.module.endswith("attn2")]
        assert len(selfs) == 2 * 2 * 2  # steps x (cond, uncond) x layers
        assert all(c.q.shape[0] == batch and c.q_len == c.k_len == video_tokens for c in selfs)
        assert all(c.k_len == text_len for c in crosses)
    else:  # CFG: one batch-2 call per step over [text, video] (other calls: the T5 encoder and the VAE)
        joint = [c for c in calls if c.module.endswith("attn1")]
        assert len(joint) == 2 * 2
        assert all(c.q.shape[0] == batch and c.q_len == text_len + video_tokens for c in joint)
