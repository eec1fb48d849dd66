"""headsparse on the Wan family: WanVACE, WanAnimate, Wan 2.1 I2V and Wan 2.2 TI2V (WanTransformer3DModel), SkyReels-V2.

Every class gets the proofs of ``test_plugin``: which tokens reach self-attention (the video grid only), a dense
plan is bit-identical and unpatch restores the processor objects, a sparse plan changes self-attention only, and a
one-frame pattern isolates frames in the real token order, the reference/condition frame 0 included. Plus what is
special to the family: per-token (TI2V) and per-frame (diffusion forcing) timesteps drive the step counter;
SkyReels-V2's block-causal frame mask is intersected with every head's pattern, exactly; Wan I2V / TI2V under
diffusers' Ulysses context parallelism (two gloo processes) match one process.

Timing (2 cores shared with other jobs): about 25 s for the single-process tests and 30-50 s for the spawn of
the two context-parallel workers, whose imports of torch + diffusers dominate.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from attention_replay import modules_the_patch_changes, recorded_attention_inputs
from gloo_workers import run_on_gloo
from layout_checks import assert_layout_is_mask
from patch_checks import assert_dense_patch_is_identity
from tiny_models_wan_family import (
    CASE_NAMES,
    DF_BLOCK,
    I2V_TEXT_LEN,
    IMAGE_TOKENS,
    build,
    df_timestep,
    ti2v_timestep,
)

import headsparse
from headsparse.patterns import Dense, Geometry, Neighborhood, Spatial, Temporal
from headsparse.patterns.frame_masked import FrameMasked
from headsparse.plan import LayerPlan, ModelPlan, Phase
from headsparse.plugin import SPECS
from headsparse.plugin.rebind import rebind_processor
from headsparse.plugin.runtime import StepTracker, frame_table

pytestmark = [pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning"), pytest.mark.usefixtures("one_thread")]

GRID = (4, 3, 5)  # tokens (frames, height, width); latent (4, 6, 10) with the (1, 2, 2) patch
LATENT = (GRID[0], 2 * GRID[1], 2 * GRID[2])
TOKENS = GRID[0] * GRID[1] * GRID[2]
ONE_FRAME = Spatial(first_frame_sink=False)
BACKEND = "masked"  # eager and exact: these tests are about geometry (the executors have their own tests)

_CASES: dict[str, Any] = {}


def get(name: str) -> Any:
    if name not in _CASES:
        _CASES[name] = build(name)
    return _CASES[name]


@pytest.fixture(scope="module", params=CASE_NAMES)
def case(request):
    return get(request.param)


def _inputs(case, batch: int = 2, seed: int = 0) -> dict:
    return case.make_inputs(batch, *LATENT, seed=seed)


def _run(case, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**inputs, return_dict=False)[0]


def _frame(tensor: torch.Tensor, index: int) -> torch.Tensor:
    """Latent frame ``index`` of a (B, C, F, H, W) input or output (one token frame per latent frame)."""
    return tensor[:, :, index]


def _block_causal(frames: int, block: int) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(j // block <= i // block for j in range(frames)) for i in range(frames))


# -------------------------------------------------------------------------------------- what self-attention sees
@dataclass
class Call:
    module: str
    q_len: int
    k_len: int
    mask: torch.Tensor | None


@contextmanager
def record_attention(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Call]]:
    """Every ``dispatch_attention_fn`` call (q/k as (B, S, H, D)) with the attention module that made it."""
    calls: list[Call] = []
    stack: list[str] = []
    handles = []
    namespaces = set()

    def leave(module: torch.nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    for name, module in model.named_modules():
        if hasattr(module, "processor"):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: stack.append(n)))
            handles.append(module.register_forward_hook(leave))
            namespaces.add(sys.modules[type(module.processor).__module__])
    for namespace in namespaces:
        def wrapper(query, key, value, attn_mask=None, *args, _original=namespace.dispatch_attention_fn, **kwargs):
            calls.append(Call(stack[-1] if stack else "", query.shape[1], key.shape[1], attn_mask))
            return _original(query, key, value, attn_mask, *args, **kwargs)

        monkeypatch.setattr(namespace, "dispatch_attention_fn", wrapper)
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
        monkeypatch.undo()


def test_spec_finds_the_self_attention_modules(case):
    spec = SPECS[type(case.model).__name__]
    assert tuple(n for n, _ in spec.self_attention_modules(case.model)) == case.self_attention
    assert spec.text_position == "none"


def test_self_attention_sees_the_video_grid_only(case, monkeypatch):
    with record_attention(case.model, monkeypatch) as calls:
        _run(case, _inputs(case))
    selfs = [c for c in calls if c.module in case.self_attention]
    assert [c.module for c in selfs] == sorted(case.self_attention, key=lambda n: n.startswith("blocks"))
    assert all(c.q_len == c.k_len == TOKENS for c in selfs), [(c.module, c.q_len, c.k_len) for c in selfs]
    # No other attention call is over the grid: the list of self-attention modules is complete.
    others = [c for c in calls if c.module not in case.self_attention]
    assert others and all(not (c.q_len == c.k_len == TOKENS) for c in others)
    keys = {c.k_len for c in others if c.module.endswith("attn2")}
    if case.name in ("wan_i2v", "wan_animate"):  # text and CLIP image tokens: cross-attention only
        assert keys == {I2V_TEXT_LEN, IMAGE_TOKENS}
    if case.name == "wan_animate":  # frame-aligned: each frame's tokens against its motion tokens
        face = [c for c in others if c.module.startswith("face_adapter")]
        assert face and all(c.q_len == GRID[1] * GRID[2] and c.k_len == 3 for c in face)
    if case.name == "skyreels_v2_df":  # the model's own block-causal frame mask
        table = torch.tensor(_block_causal(GRID[0], DF_BLOCK))
        expected = table.repeat_interleave(GRID[1] * GRID[2], 0).repeat_interleave(GRID[1] * GRID[2], 1)
        for c in selfs:
            assert c.mask is not None and c.mask.dtype == torch.bool and torch.equal(c.mask[0, 0], expected)
    else:
        assert all(c.mask is None for c in selfs)


# ---------------------------------------------------------------------------------------------- patch / unpatch
def test_dense_plan_is_bit_identical_and_unpatch_restores(case):
    inputs = _inputs(case)
    assert_dense_patch_is_identity(case.model, lambda: _run(case, inputs), case.self_attention)


def test_sparse_plan_changes_only_self_attention(case):
    """Replay every attention module on the inputs it saw: only the self-attention ones differ."""
    inputs = _inputs(case)
    with headsparse.patch(case.model, pattern=ONE_FRAME, backend=BACKEND):
        with recorded_attention_inputs(case.model) as recorded:
            _run(case, inputs)
        assert set(case.self_attention) < set(recorded)
        assert modules_the_patch_changes(case.model, recorded) == set(case.self_attention)


def test_one_frame_pattern_isolates_frames_in_the_real_token_order(case):
    """Frame 0 (the reference / condition frame of VACE, Animate, I2V, TI2V) is a grid frame like the others."""
    inputs = _inputs(case)
    base = _run(case, inputs)
    changed = {}
    for f in (0, 2):
        hidden = inputs["hidden_states"].clone()
        _frame(hidden, f).add_(torch.randn_like(_frame(hidden, f)))
        changed[f] = {**inputs, "hidden_states": hidden}
        delta = _run(case, changed[f]) - base
        assert any(_frame(delta, i).abs().max() > 1e-4 for i in range(GRID[0]) if i != f), "dense must spread it"
    with headsparse.patch(case.model, pattern=ONE_FRAME, backend=BACKEND) as handle:
        base = _run(case, inputs)
        for f, perturbed in changed.items():
            delta = _run(case, perturbed) - base
            assert _frame(delta, f).abs().max() > 1e-4
            for i in range(GRID[0]):
                if i != f:
                    assert _frame(delta, i).abs().max() <= 1e-5, f"perturbing frame {f} changed frame {i}"
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
        assert handle.states["transformer"].grid == GRID


# ---------------------------------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("name", ["wan_ti2v", "skyreels_v2_df"])
def test_per_token_and_per_frame_timesteps_drive_the_step(name):
    """TI2V's first-frame tokens stay at timestep 0 and diffusion forcing's frames differ: the step still advances
    once per denoising step, a CFG call repeats it, a noisier timestep starts a new generation."""
    case = get(name)
    inputs = _inputs(case)
    if name == "wan_ti2v":
        ts = [ti2v_timestep(t, 2, *LATENT) for t in (900, 800)]
    else:
        ts = [df_timestep(2, GRID[0], start=s) for s in (600, 500)]
    dense = [_run(case, {**inputs, "timestep": t}) for t in ts]
    with headsparse.patch(case.model, pattern=ONE_FRAME, dense_steps=1, backend=BACKEND) as handle:
        first = _run(case, {**inputs, "timestep": ts[0]})
        assert handle.step == 0 and torch.equal(first, dense[0])
        second = _run(case, {**inputs, "timestep": ts[1]})
        assert handle.step == 1 and not torch.allclose(second, dense[1])
        again = _run(case, {**inputs, "timestep": ts[1][:1].expand(2, -1)})
        assert handle.step == 1 and torch.equal(again, second)
        restart = _run(case, {**inputs, "timestep": ts[0]})
        assert handle.step == 0 and torch.equal(restart, dense[0])


def test_step_tracker_follows_an_asynchronous_diffusion_forcing_schedule():
    """SkyReels-V2's own step matrix (ar_step 5, blocks of 5 frames): one step per iteration, none restarts."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(flow_shift=8.0, use_flow_sigmas=True, prediction_type="flow_prediction")
    scheduler.set_timesteps(10)
    matrix, _, _, intervals = SkyReelsV2DiffusionForcingPipeline.generate_timestep_matrix(
        None, 15, scheduler.timesteps, 15, 5, 0, 5, False)
    assert len(matrix) > 10  # asynchronous: more iterations than steps
    tracker = StepTracker()
    for i, (t, (start, end)) in enumerate(zip(matrix, intervals, strict=True)):
        timestep = t.expand(2, -1)[:, start:end]
        assert tracker.observe(timestep) == i and tracker.observe(timestep[:1]) == i  # CFG: the same step
    assert tracker.observe(matrix[0][None]) == 0  # a new generation


# ------------------------------------------------------------------------------- block-causal diffusion forcing
@pytest.mark.parametrize("inner", [Dense(), ONE_FRAME, Spatial(frame_band=1), Temporal(),
                                   Neighborhood(kernel_size=(3, 3, 3)), Spatial(text_dense=False)], ids=repr)
@pytest.mark.parametrize("geometry", [Geometry(4, 3, 5), Geometry(6, 2, 3),
                                      Geometry(4, 3, 3, text_len=5, text_position="prefix")], ids=repr)
def test_frame_masked_layout_keeps_exactly_pattern_and_frame_mask(inner, geometry):
    for block in (1, 2, 3):
        pattern = FrameMasked(inner=inner, allowed=_block_causal(geometry.frames, block))
        assert_layout_is_mask(pattern, geometry, 16, 32, heads=2)
        ref = inner.dense_mask(geometry)
        frame = geometry.frame_of_token()
        video = frame >= 0
        allowed = torch.tensor(pattern.allowed)[frame.clamp_min(0)][:, frame.clamp_min(0)]
        expected = ref & (allowed | ~video[:, None] | ~video[None, :])
        assert torch.equal(pattern.dense_mask(geometry), expected)


def test_executors_run_frame_masked_layouts():
    """The Triton kernel (interpreted here), grouped and masked executors keep exactly the intersected mask."""
    from headsparse.kernels import Layout, layout_reference, sparse_attention

    geometry = Geometry(4, 3, 5)
    heads = (FrameMasked(inner=Spatial(frame_band=1), allowed=_block_causal(4, 2)),
             FrameMasked(inner=Temporal(), allowed=_block_causal(4, 2)))
    lay = Layout.concat_heads([p.layout(geometry, block_m=32, block_n=32) for p in heads])
    q, k, v = (torch.randn(1, 2, geometry.seq_len, 16) for _ in range(3))
    ref = layout_reference(q, k, v, lay)
    for h, pattern in enumerate(heads):
        assert torch.equal(lay.to_dense_mask()[0, h], pattern.dense_mask(geometry))
    with torch.no_grad():
        for backend in ("triton", "grouped", "masked"):
            torch.testing.assert_close(sparse_attention(q, k, v, lay, backend=backend), ref, atol=1e-5, rtol=0)


def test_frame_table_reads_only_frame_granular_masks():
    g = Geometry(4, 2, 3)
    table = _block_causal(4, 2)
    per_token = torch.tensor(table).repeat_interleave(6, 0).repeat_interleave(6, 1)
    assert frame_table(per_token, g) == table
    assert frame_table(torch.ones(24, 24, dtype=torch.bool), g) == ((True,) * 4,) * 4
    assert frame_table(torch.ones(24, 24, dtype=torch.bool).tril(), g) is None  # token-causal
    broken = per_token.clone()
    broken[7, 0] = False  # one query row of frame 1 differs from its frame's first row
    assert frame_table(broken, g) is None
    assert frame_table(torch.zeros(24, 24, dtype=torch.bool), g) is None  # a frame that sees nothing
    assert frame_table(torch.ones(29, 29, dtype=torch.bool), Geometry(4, 2, 3, 5, "suffix")) is None  # text
    with pytest.raises(ValueError, match="square"):
        FrameMasked(allowed=((True, False),))
    with pytest.raises(ValueError, match="without any key frame"):
        FrameMasked(allowed=((True, False), (False, False)))


def _masked_reference(model: torch.nn.Module, heads: tuple) -> list[Any]:
    """Rebind every self-attention processor to SDPA with (the model's mask & each head's exact pattern mask)."""
    geometry = Geometry(*GRID)
    pattern_masks = torch.stack([p.dense_mask(geometry) for p in heads])  # [H, S, S]

    def masked_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        mask = pattern_masks[None] & (True if attn_mask is None else attn_mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(1, 2)

    spec = SPECS[type(model).__name__]
    originals = []
    for _, module in spec.self_attention_modules(model):
        originals.append(module.processor)
        module.processor = rebind_processor(module.processor, dispatch=masked_sdpa)
    return originals


def test_block_causal_diffusion_forcing_runs_sparse_and_exact():
    case = get("skyreels_v2_df")
    heads = (Spatial(frame_band=1, first_frame_sink=False), Temporal())
    names = tuple(n for n, _ in SPECS[type(case.model).__name__].self_attention_modules(case.model))
    plan = ModelPlan(type(case.model).__name__, 2, tuple(LayerPlan(n, (Phase(0, heads),)) for n in names),
                     block_size=32)
    inputs = _inputs(case)
    dense = _run(case, inputs)
    originals = _masked_reference(case.model, heads)
    try:
        ref = _run(case, inputs)
    finally:
        for (_, module), proc in zip(SPECS[type(case.model).__name__].self_attention_modules(case.model), originals,
                                     strict=True):
            module.processor = proc
    assert (ref - dense).abs().max() > 1e-3  # the plan is not dense
    with headsparse.patch(case.model, plan, backend=BACKEND) as handle:
        out = _run(case, inputs)
        rows = handle.summary(print_table=False)
        stats = handle.states["transformer"].stats
        assert all(s.sparse_calls == 1 and s.frame_table == _block_causal(GRID[0], DF_BLOCK) for s in stats)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # The reported density is of what ran: the patterns intersected with the causal mask.
    geometry = Geometry(*GRID)
    plain = [p.layout(geometry, block_m=32, block_n=32).density()[0, 0].item() for p in heads]
    assert all(r["density"] < plain[r["head"]] for r in rows)


def test_frame_masked_calls_in_auto_mode_run_dense_with_a_warning(caplog):
    case = get("skyreels_v2_df")
    inputs = _inputs(case)
    dense = _run(case, inputs)
    with headsparse.patch(case.model, "auto") as handle:
        out = _run(case, inputs)
        assert all(s.sparse_calls == 0 for s in handle.states["transformer"].stats)
    assert torch.equal(out, dense)
    assert "frame-masked (e.g. block-causal) call runs static patterns only" in caplog.text


def test_diffusion_forcing_pipeline_runs_sparse_every_iteration():
    """The real asynchronous loop (ar_step 1, causal blocks of 2 latent frames) with a tiny SkyReels-V2."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    from headsparse.pipelines.tiny import build_tiny_wan_pipeline

    wan = build_tiny_wan_pipeline("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = SkyReelsV2Transformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32).eval()
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=wan.tokenizer, text_encoder=wan.text_encoder, transformer=transformer, vae=wan.vae,
        scheduler=UniPCMultistepScheduler(flow_shift=8.0, use_flow_sigmas=True, prediction_type="flow_prediction"))
    pipe.set_progress_bar_config(disable=True)
    # prompt_embeds: the pipeline's prompt cleaning needs ftfy, which this environment lacks.
    call = dict(prompt=None, prompt_embeds=torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(0)),
                num_inference_steps=2, height=32, width=32, num_frames=13, base_num_frames=13, ar_step=1,
                causal_block_size=2, guidance_scale=1.0, output_type="pt")
    dense = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    assert transformer.config.num_frame_per_block == 2
    with headsparse.patch(pipe, pattern=ONE_FRAME, backend=BACKEND) as handle:
        sparse = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
        stats = handle.states["transformer"].stats
        iterations = stats[0].sparse_calls
        assert iterations > 2 and all(s.sparse_calls == iterations for s in stats)  # more iterations than steps
        assert handle.step == iterations - 1
        assert all(s.frame_table == _block_causal(4, 2) for s in stats)
    assert torch.isfinite(sparse).all() and not torch.allclose(sparse, dense)


# -------------------------------------------------------------------------------- context parallelism (Ulysses)
CP_WORLD = 2
CP_LATENT = (2, 8, 16)  # tokens 2 x 4 x 8 = 64, 32 per rank
CP_CASES = ("wan_i2v", "wan_ti2v")


def _cp_inputs(case) -> dict:
    inputs = case.make_inputs(1, *CP_LATENT)
    if case.name == "wan_ti2v":
        inputs["timestep"] = ti2v_timestep(700.0, 1, *CP_LATENT)
    return inputs


def _cp_plan(model: torch.nn.Module) -> ModelPlan:
    heads = (Spatial(first_frame_sink=False), Temporal())
    names = tuple(n for n, _ in SPECS[type(model).__name__].self_attention_modules(model))
    return ModelPlan(type(model).__name__, 2, tuple(LayerPlan(n, (Phase(0, heads),)) for n in names), block_size=32)


def _cp_scenario(rank: int) -> dict[str, Any]:
    from diffusers import ContextParallelConfig
    from tiny_models_wan_family import build as build_case

    results: dict[str, Any] = {}
    for name in CP_CASES:
        case = build_case(name)
        inputs = _cp_inputs(case)
        case.model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=CP_WORLD))
        with headsparse.patch(case.model, _cp_plan(case.model), backend=BACKEND) as handle:
            results[name] = _run(case, inputs)
            results[f"{name}_sparse_calls"] = [s.sparse_calls for s in handle.states["transformer"].stats]
            results[f"{name}_grid"] = handle.states["transformer"].grid
        results[f"{name}_dense"] = _run(case, inputs)
    return results


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_on_gloo(_cp_scenario, tmp_path_factory.mktemp("cp_wan_family"), CP_WORLD)


@pytest.mark.parametrize("name", CP_CASES)
def test_ulysses_matches_one_process(cp, name):
    case = build(name)
    inputs = _cp_inputs(case)
    dense = _run(case, inputs)
    with headsparse.patch(case.model, _cp_plan(case.model), backend=BACKEND):
        ref = _run(case, inputs)
    assert (ref - dense).abs().max() > 1e-3  # the plan is not dense
    for rank in cp:
        torch.testing.assert_close(rank[name], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rank[f"{name}_dense"], dense, atol=1e-5, rtol=1e-5)
        assert rank[f"{name}_grid"] == (2, 4, 8)  # read from the unsplit input
        assert all(n > 0 for n in rank[f"{name}_sparse_calls"])


def test_classes_without_a_cp_plan_cannot_enable_parallelism():
    """Context parallelism is WanTransformer3DModel's only in this family (diffusers 0.42.1 ``_cp_plan``)."""
    for name in ("wan_vace", "wan_animate", "skyreels_v2"):
        assert getattr(type(get(name).model), "_cp_plan", None) is None, name
    assert type(get("wan_i2v").model)._cp_plan is not None


# ------------------------------------------------------------------------------------------------------ presets
WAN_FAMILY_PRESETS = ("wan-i2v", "wan2.2-ti2v", "wan2.2-ti2v-i2v", "wan-vace", "skyreels-v2", "skyreels-v2-df")


@pytest.mark.parametrize("name", WAN_FAMILY_PRESETS)
def test_presets_name_a_real_pipeline_and_a_supported_transformer(name):
    import inspect

    import diffusers

    from headsparse.pipelines.presets import preset_for

    preset = preset_for(name)
    pipeline = getattr(diffusers, preset.pipeline)
    assert preset.transformer in SPECS
    accepted = inspect.signature(pipeline.__call__).parameters
    assert set(preset.call_kwargs) <= set(accepted)
    assert ("image" in accepted) == preset.needs_image  # the image-to-video ones, and only they, take a first frame
    assert preset.frames % 4 == 1 and preset.height % 16 == 0 and preset.width % 16 == 0


def test_image_to_video_presets_take_an_image_and_others_refuse_one(tmp_path):
    from PIL import Image

    from headsparse.pipelines import GenerateError, GenerateRequest, generate
    from headsparse.pipelines.generate import pipeline_call
    from headsparse.pipelines.presets import preset_for

    with pytest.raises(GenerateError, match=r"image-to-video .*pass --image PATH"):
        generate(GenerateRequest(model="wan-i2v", prompt="a cat", out=tmp_path, model_path=str(tmp_path)))
    with pytest.raises(GenerateError, match="--image is for image-to-video presets"):
        generate(GenerateRequest(model="skyreels-v2", prompt="a cat", out=tmp_path, image="x.png"))
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(GenerateError, match=r"not_an_image\.png: cannot read it as an image"):
        generate(GenerateRequest(model="wan-i2v", prompt="a cat", out=tmp_path, image=str(bad)))
    Image.new("RGB", (24, 16), (200, 10, 10)).save(tmp_path / "first.png")
    request = GenerateRequest(model="wan-i2v", prompt="a cat", out=tmp_path, image=str(tmp_path / "first.png"))
    call = pipeline_call(preset_for("wan-i2v"), request)
    assert call["image"].size == (24, 16) and call["num_frames"] == 81
    df = pipeline_call(preset_for("skyreels-v2-df"), GenerateRequest(model="skyreels-v2-df", prompt="a", out=tmp_path))
    assert df["ar_step"] == 5 and df["causal_block_size"] == 5 and "image" not in df
