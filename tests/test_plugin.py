"""headsparse.patch / unpatch / summary on tiny random-weight instances of every supported class.

For each class: a dense plan is bit-identical and unpatch restores the original processor objects;
a sparse plan changes only self-attention; and an isolation check proves the geometry in the
model's real token order: with a pattern that keeps only one frame (video) or one token row
(image) and keeps text apart, perturbing one frame/row of the input changes that frame/row of the
output and nothing else, while the dense model spreads it everywhere.
"""

from __future__ import annotations

import copy

import pytest
import torch
from attention_replay import modules_the_patch_changes, recorded_attention_inputs
from patch_checks import assert_dense_patch_is_identity, processors
from tiny_models import CASE_NAMES, build

import headsparse
from headsparse.patterns import Neighborhood, Spatial
from headsparse.patterns.recognize import Recognizer
from headsparse.plan import LayerPlan, ModelPlan, Phase, Plan
from headsparse.plugin import SPECS
from headsparse.plugin.rebind import is_rebound, original_processor

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

# Odd token grids: video 3x3x5 tokens, image 3x5 tokens.
GRID = {"video": (3, 3, 5), "image": (1, 3, 5)}


@pytest.fixture(scope="module", params=CASE_NAMES)
def case(request):
    return build(request.param)


def _inputs(case, batch=2, seed=0):
    f, h, w = GRID["video" if case.video else "image"]
    pt, ph, pw = case.patch
    kwargs = {"batch": batch, "frames": f * pt if case.video else 1, "height": h * ph, "width": w * pw, "seed": seed}
    if case.name == "mochi":
        kwargs["pad_text"] = 2  # batch item 1 drops 2 text tokens from its attention
    return case.make_inputs(**kwargs)


def _run(case, inputs):
    with torch.no_grad():
        return case.model(**inputs, return_dict=False)[0]


def test_spec_finds_the_self_attention_modules(case):
    spec = SPECS[type(case.model).__name__]
    assert tuple(n for n, _ in spec.self_attention_modules(case.model)) == case.self_attention


def test_dense_plan_is_bit_identical_and_unpatch_restores(case):
    inputs = _inputs(case)
    assert_dense_patch_is_identity(case.model, lambda: _run(case, inputs), case.self_attention)


def test_patch_twice_is_idempotent(case):
    before = processors(case.model)
    headsparse.patch(case.model, pattern="spatial")
    headsparse.patch(case.model, pattern="spatial")
    for name, proc in processors(case.model).items():
        if is_rebound(proc):
            assert original_processor(proc) is before[name]
            assert not is_rebound(original_processor(proc))
    headsparse.unpatch(case.model)
    assert all(p is before[k] for k, p in processors(case.model).items())


def _isolating_pattern(case):
    """Keeps one frame (video) or one token row (image); text only sees text."""
    if case.video:
        return Spatial(first_frame_sink=False, text_dense=False)
    width = GRID["image"][2]
    return Neighborhood(kernel_size=(1, 1, width), text_dense=False)


def _unit(case, tensor, index):
    """The part of a latent (input or output) that belongs to frame/row ``index`` of the token grid."""
    _, h, w = GRID["video" if case.video else "image"]
    if case.name in ("wan", "hunyuan_video", "mochi"):  # (B, C, F, H, W), one latent frame per token frame
        return tensor[:, :, index]
    if case.name == "cogvideox":  # (B, F, C, H, W)
        return tensor[:, index]
    if case.name == "ltx_video":  # packed (B, F*H*W, C)
        return tensor[:, index * h * w : (index + 1) * h * w]
    if case.name == "flux":  # packed (B, H*W, C): token row
        return tensor[:, index * w : (index + 1) * w]
    if case.name == "sd3":  # (B, C, H, W), patch 2: two latent rows per token row
        return tensor[:, :, 2 * index : 2 * index + 2]
    raise AssertionError(case.name)


def _perturbed(case, inputs, index):
    changed = dict(inputs)
    hidden = inputs["hidden_states"].clone()
    _unit(case, hidden, index).add_(torch.randn_like(_unit(case, hidden, index)))
    changed["hidden_states"] = hidden
    return changed


def test_sparse_geometry_isolates_frames_in_the_real_token_order(case):
    inputs = _inputs(case)
    changed = _perturbed(case, inputs, 1)
    units = 3
    # Dense: the change reaches every frame/row.
    delta = _run(case, changed) - _run(case, inputs)
    assert all(_unit(case, delta, i).abs().max() > 1e-4 for i in range(units))
    with headsparse.patch(case.model, pattern=_isolating_pattern(case)) as handle:
        delta = _run(case, changed) - _run(case, inputs)
        stats = handle.states["transformer"].stats
        assert all(s.sparse_calls > 0 for s in stats), "every self-attention layer must have run sparse"
    assert _unit(case, delta, 1).abs().max() > 1e-4
    for i in (0, 2):
        assert _unit(case, delta, i).abs().max() <= 1e-5, f"frame/row {i} changed: the geometry is wrong"


def test_sparse_plan_changes_only_self_attention(case):
    """Replay every attention module on the inputs it saw: only the self-attention ones differ."""
    inputs = _inputs(case)
    with headsparse.patch(case.model, pattern=_isolating_pattern(case)):
        with recorded_attention_inputs(case.model) as recorded:
            _run(case, inputs)
        assert modules_the_patch_changes(case.model, recorded) == set(case.self_attention) & set(recorded)


def test_summary_reports_patterns_density_and_time(case, capsys):
    inputs = _inputs(case, batch=1)
    pattern = _isolating_pattern(case)
    with headsparse.patch(case.model, pattern=pattern, profile=True, dense_layers=1) as handle:
        _run(case, inputs)
        rows = handle.summary()
    printed = capsys.readouterr().out
    layers = len(case.self_attention)
    assert len(rows) == layers * 2
    assert rows[0]["pattern"] == "dense" and rows[-1]["pattern"].startswith(pattern.name + "(")
    assert all(r["attention_ms"] is not None and r["attention_ms"] > 0 for r in rows)
    assert rows[-1]["density"] is not None and 0 < rows[-1]["density"] < 1
    assert pattern.name in printed and type(case.model).__name__ in printed


# ---------------------------------------------------------------------------------------------- refusals


def test_unsupported_model_is_refused_and_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        headsparse.patch(model, pattern="spatial")
    assert not hasattr(model, "_headsparse_state") and not model._forward_pre_hooks

    class NotAPipeline:
        pass

    with pytest.raises(TypeError, match="Supported transformer classes"):
        headsparse.patch(NotAPipeline(), pattern="spatial")


def test_unknown_processor_is_refused_and_model_untouched():
    case = build("wan")
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    class CustomProcessor(WanAttnProcessor):
        pass

    case.model.blocks[1].attn1.processor = CustomProcessor()
    before = processors(case.model)
    with pytest.raises(TypeError, match="CustomProcessor"):
        headsparse.patch(case.model, pattern="spatial")
    assert all(before[k] is p for k, p in processors(case.model).items())
    assert not headsparse.is_patched(case.model)


def test_bad_block_size_and_plan_files_are_refused_before_patching(tmp_path):
    case = build("wan")
    before = processors(case.model)
    with pytest.raises(ValueError, match=r"block_size must be one of 32, 64, 128 .*got 16"):
        headsparse.patch(case.model, pattern="spatial", block_size=16)
    plan = headsparse.patch(case.model, pattern="spatial").plan
    headsparse.unpatch(case.model)
    with pytest.raises(ValueError, match="block_size must be one of"):
        headsparse.patch(case.model, plan, block_size=256)
    (tmp_path / "empty.json").write_text("   \n")
    with pytest.raises(ValueError, match=r"plan file .*empty\.json is empty"):
        headsparse.patch(case.model, str(tmp_path / "empty.json"))
    assert all(before[k] is p for k, p in processors(case.model).items())
    assert not headsparse.is_patched(case.model)


def test_plans_for_another_model_are_refused():
    wan, cog = build("wan"), build("cogvideox")
    wan_plan = headsparse.patch(wan.model, pattern="spatial").plan
    headsparse.unpatch(wan.model)
    with pytest.raises(ValueError, match="made for WanTransformer3DModel, not CogVideoXTransformer3DModel"):
        headsparse.patch(cog.model, wan_plan)
    mp = wan_plan.transformers["transformer"]
    fewer = ModelPlan(mp.model, mp.num_heads, mp.layers[:1])
    with pytest.raises(ValueError, match="1 layers; this model has 2"):
        headsparse.patch(wan.model, fewer)
    more_heads = ModelPlan(mp.model, 4, tuple(LayerPlan(x.name, (Phase(0, (Spatial(),) * 4),)) for x in mp.layers))
    with pytest.raises(ValueError, match="4 heads per layer; this model has 2"):
        headsparse.patch(wan.model, more_heads)
    renamed = ModelPlan(mp.model, 2, (LayerPlan("blocks.9.attn1", mp.layers[0].phases), mp.layers[1]))
    with pytest.raises(ValueError, match=r"blocks\.9\.attn1"):
        headsparse.patch(wan.model, renamed)
    assert not headsparse.is_patched(wan.model) and not headsparse.is_patched(cog.model)
    # A plan made for another grid is refused when the model runs at a different one.
    gridded = ModelPlan(mp.model, 2, mp.layers, grid=(9, 9, 9))
    with headsparse.patch(wan.model, gridded), pytest.raises(ValueError, match=r"\(9, 9, 9\).*\(3, 3, 5\)"):
        _run(wan, _inputs(wan))


def test_plan_file_round_trip_through_patch(tmp_path):
    case = build("wan")
    plan = headsparse.patch(case.model, pattern="temporal", dense_steps=2).plan
    headsparse.unpatch(case.model)
    path = plan.save(tmp_path / "wan.json")
    with headsparse.patch(case.model, str(path)) as handle:
        assert handle.plan == plan
    with pytest.raises(ValueError, match="either plan= or pattern="):
        headsparse.patch(case.model, path, pattern="spatial")
    with pytest.raises(ValueError, match="only used with plan='auto'"):
        headsparse.patch(case.model, pattern="spatial", recognizer=Recognizer())
    with pytest.raises(ValueError, match="unknown pattern"):
        headsparse.patch(case.model, pattern="nope")
    with pytest.raises(ValueError, match="num_inference_steps"):
        headsparse.patch(case.model, pattern="spatial", dense_steps=0.5)
    assert not headsparse.is_patched(case.model)


# ---------------------------------------------------------------------------------------------- steps


def test_dense_warmup_steps_and_new_generation():
    case = build("wan")
    inputs = _inputs(case)
    dense = {t: _run(case, {**inputs, "timestep": torch.tensor([t, t])}) for t in (900, 800)}
    with headsparse.patch(case.model, pattern="spatial", first_frame_sink=False, dense_steps=1) as handle:
        first = _run(case, {**inputs, "timestep": torch.tensor([900, 900])})
        assert handle.step == 0 and torch.equal(first, dense[900])
        second = _run(case, {**inputs, "timestep": torch.tensor([800, 800])})
        assert handle.step == 1 and not torch.allclose(second, dense[800])
        again = _run(case, {**inputs, "timestep": torch.tensor([800, 800])})  # CFG as a second call
        assert handle.step == 1 and torch.equal(again, second)
        restart = _run(case, {**inputs, "timestep": torch.tensor([900, 900])})  # a new generation
        assert handle.step == 0 and torch.equal(restart, dense[900])


def test_per_step_phases():
    case = build("wan")
    inputs = _inputs(case)
    names = case.self_attention
    spatial = (Spatial(first_frame_sink=False),) * 2
    layers = tuple(LayerPlan(n, (Phase(0, spatial), Phase(1, (Spatial(),) * 2))) for n in names)
    plan = Plan({"transformer": ModelPlan("WanTransformer3DModel", 2, layers)})
    outs = {}
    for pattern in (Spatial(first_frame_sink=False), Spatial()):
        with headsparse.patch(case.model, pattern=pattern):
            outs[pattern] = _run(case, {**inputs, "timestep": torch.tensor([800, 800])})
    with headsparse.patch(case.model, plan):
        _run(case, {**inputs, "timestep": torch.tensor([900, 900])})
        step1 = _run(case, {**inputs, "timestep": torch.tensor([800, 800])})
    assert torch.equal(step1, outs[Spatial()])


# ---------------------------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("name", ["wan", "flux"])
def test_torch_compile(name):
    case = build(name)
    inputs = _inputs(case)
    with headsparse.patch(case.model, pattern=_isolating_pattern(case)):
        eager = _run(case, inputs)
        compiled = torch.compile(case.model)
        with torch.no_grad():
            out = compiled(**inputs, return_dict=False)[0]
        torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    ref = _run(case, inputs)
    with torch.no_grad():
        out = compiled(**inputs, return_dict=False)[0]  # unpatched: recompiled without headsparse
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref, eager)


def test_compiled_module_can_be_patched():
    case = build("wan")
    inputs = _inputs(case)
    compiled = torch.compile(case.model)
    with headsparse.patch(compiled, pattern="dense"):
        assert headsparse.is_patched(case.model)
        with torch.no_grad():
            out = compiled(**inputs, return_dict=False)[0]
    torch.testing.assert_close(out, _run(case, inputs), atol=1e-5, rtol=1e-5)


def test_wan22_pipeline_patches_both_transformers():
    from tiny_models import build_wan_pipeline

    pipe = build_wan_pipeline()
    pipe.transformer_2 = copy.deepcopy(pipe.transformer)
    with headsparse.patch(pipe, pattern="spatial") as handle:
        assert set(handle.states) == {"transformer", "transformer_2"}
        assert headsparse.is_patched(pipe.transformer) and headsparse.is_patched(pipe.transformer_2)
        assert handle.states["transformer"].tracker is handle.states["transformer_2"].tracker
    assert not headsparse.is_patched(pipe.transformer_2)
