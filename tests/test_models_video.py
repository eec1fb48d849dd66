"""headsparse on the issue-22 video transformers: HunyuanVideo 1.5, FramePack, LTX-2, Cosmos, Kandinsky 5.

For each class, on a tiny random-weight instance (``tiny_models_video``): a dense plan is bit-identical and unpatch
restores the original processor objects; a sparse plan changes only the self-attention modules; and with a pattern
that keeps one frame, perturbing one latent frame changes that frame of the output and nothing else. The tokens
that are neither grid nor text (FramePack's history latents, HunyuanVideo 1.5's image and ByT5 conditions) are
shown to sit outside the grid and to follow the joint-text rule. SanaVideoTransformer3DModel is refused by name.
LTX-2 also runs under diffusers' Ulysses context parallelism (two gloo processes) as in one process.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from attention_replay import modules_the_patch_changes, recorded_attention_inputs
from gloo_workers import run_on_gloo
from patch_checks import assert_dense_patch_is_identity, processors
from tiny_models_video import VIDEO_CASES, build, build_sana_video, framepack_history_tokens

import headsparse
from headsparse.patterns import Geometry, Spatial
from headsparse.plugin import SPECS
from headsparse.plugin.rebind import original_processor

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

GRID = (3, 3, 5)  # tokens (frames, height, width)
ISOLATE = Spatial(first_frame_sink=False, text_dense=False)  # a frame sees its frame; text and history see text
JOINT = Spatial(first_frame_sink=False)  # the same frame rule, with the joint-text rule for every non-grid token


@pytest.fixture(scope="module")
def cases(one_thread) -> dict[str, Any]:
    return {}


@pytest.fixture(params=VIDEO_CASES)
def case(request, cases):
    if request.param not in cases:
        cases[request.param] = build(request.param)
    return cases[request.param]


def _inputs(case, batch=2, seed=0, **extra):
    pt, ph, pw = case.patch
    f, h, w = GRID
    return case.make_inputs(batch=batch, frames=f * pt, height=h * ph, width=w * pw, seed=seed, **extra)


def _run(case, inputs):
    with torch.no_grad():
        return case.output(case.model(**inputs, return_dict=False))


def _isolation_inputs(case, **extra):
    # LTX-2's audio-video cross-attention links every frame through the audio stream: turn it off here.
    return _inputs(case, **({"isolate_modalities": True} if case.name == "ltx2" else {}), **extra)


def _perturbed(case, inputs, index, key="hidden_states"):
    changed = dict(inputs)
    hidden = inputs[key].clone()
    part = case.frame(hidden, index) if key == "hidden_states" else hidden
    part.add_(torch.randn(part.shape, generator=torch.Generator().manual_seed(1)))
    changed[key] = hidden
    return changed


def _frame_changes(case, before, after):
    return [(case.frame(after, i) - case.frame(before, i)).abs().max().item() for i in range(GRID[0])]


# ---------------------------------------------------------------------------------------------------- the proofs


def test_spec_finds_the_self_attention_modules(case):
    spec = SPECS[type(case.model).__name__]
    assert tuple(n for n, _ in spec.self_attention_modules(case.model)) == case.self_attention


def test_dense_plan_is_bit_identical_and_unpatch_restores(case):
    inputs = _inputs(case)
    assert_dense_patch_is_identity(case.model, lambda: _run(case, inputs), case.self_attention)


def test_sparse_plan_changes_only_self_attention(case):
    """Replay every attention module on the inputs it saw: only the self-attention ones differ."""
    inputs = _inputs(case)
    with headsparse.patch(case.model, pattern=ISOLATE):
        with recorded_attention_inputs(case.model) as recorded:
            _run(case, inputs)
        assert set(case.self_attention) < set(recorded)  # cross-attention / text / audio modules ran too
        assert modules_the_patch_changes(case.model, recorded) == set(case.self_attention)


def test_sparse_geometry_isolates_frames_in_the_real_token_order(case):
    inputs = _isolation_inputs(case)
    changed = _perturbed(case, inputs, 1)
    dense = _frame_changes(case, _run(case, inputs), _run(case, changed))
    assert all(d > 1e-4 for d in dense), f"the dense model should spread a frame everywhere: {dense}"
    with headsparse.patch(case.model, pattern=ISOLATE) as handle:
        sparse = _frame_changes(case, _run(case, inputs), _run(case, changed))
        stats = handle.states["transformer"].stats
        assert all(s.sparse_calls > 0 for s in stats), "every self-attention layer must have run sparse"
        assert handle.states["transformer"].grid == GRID
        assert not handle.states["transformer"].warned
    assert sparse[1] > 1e-4
    assert sparse[0] <= 1e-5 and sparse[2] <= 1e-5, f"frames 0/2 changed ({sparse}): the geometry is wrong"


# ------------------------------------------------------------------------------------------ the non-grid tokens


@pytest.mark.parametrize("name,key,suffix", [
    ("framepack", "latents_clean", framepack_history_tokens(6, 10) + 4 + 7),  # history (40), image, text
    ("hunyuan_video15", "encoder_hidden_states", 3 + 4 + 7),  # image, ByT5, text conditions
])
def test_non_grid_tokens_sit_outside_the_grid_and_follow_the_joint_text_rule(cases, name, key, suffix):
    """Perturbing them reaches no frame when text sees only text, and every frame under the joint-text rule."""
    if name not in cases:
        cases[name] = build(name)
    case = cases[name]
    inputs = _inputs(case, batch=1)
    changed = _perturbed(case, inputs, 0, key=key)
    with headsparse.patch(case.model, pattern=ISOLATE) as handle:
        apart = _frame_changes(case, _run(case, inputs), _run(case, changed))
        assert handle.states["transformer"].stats[0].geometry == Geometry(*GRID, suffix, "suffix")
    with headsparse.patch(case.model, pattern=JOINT):
        joint = _frame_changes(case, _run(case, inputs), _run(case, changed))
        # and a frame reaches the other frames through them (they attend every frame)
        frame = _frame_changes(case, _run(case, inputs), _run(case, _perturbed(case, inputs, 1)))
    assert max(apart) <= 1e-5, apart
    assert min(joint) > 1e-4, joint
    assert min(frame) > 1e-4, frame


def test_framepack_padded_batch_matches_each_item_alone(cases):
    """Batch 2 pads item 1's text (a key mask over [history, video, conditions]); batch 1 drops the padding."""
    if "framepack" not in cases:
        cases["framepack"] = build("framepack")
    case = cases["framepack"]
    inputs = _inputs(case)
    batched = {k for k, v in inputs.items() if v.dim() >= 2} | {"timestep", "guidance"}  # not the frame indices
    item = {k: v[1:] if k in batched else v for k, v in inputs.items()}
    item["encoder_attention_mask"] = item["encoder_attention_mask"][:, :-3]
    item["encoder_hidden_states"] = item["encoder_hidden_states"][:, :-3]
    with headsparse.patch(case.model, pattern=JOINT) as handle:
        both = _run(case, inputs)
        alone = _run(case, item)
        assert all(s.sparse_calls == 2 for s in handle.states["transformer"].stats)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)


def test_hunyuan_video15_pair_mask_runs_sparse_and_padded_rows_match_the_model(cases):
    """The (B, 1, S, S) pair mask is read as padding: valid rows sparse, padded rows as the model computes them."""
    if "hunyuan_video15" not in cases:
        cases["hunyuan_video15"] = build("hunyuan_video15")
    case = cases["hunyuan_video15"]
    for image in (False, True):  # text-to-video (image tokens padded) and image-to-video (image tokens valid)
        inputs = _inputs(case, image=image)
        recorded: dict[str, Any] = {}

        def grab(module, args, kwargs, recorded=recorded):
            recorded.setdefault("call", (args, kwargs))

        attn = case.model.get_submodule(case.self_attention[0])
        hook = attn.register_forward_pre_hook(grab, with_kwargs=True)
        with headsparse.patch(case.model, pattern=Spatial(frame_band=GRID[0])) as handle:  # keeps every pair
            _run(case, inputs)
            hook.remove()
            assert all(s.sparse_calls == 1 for s in handle.states["transformer"].stats)
            args, kwargs = recorded["call"]
            mask = kwargs["attention_mask"]
            assert mask.shape[1:] == (14,) and not bool(mask[1].all())  # item 1 has padded conditions
            with torch.no_grad():
                sparse = attn(*args, **kwargs)
                proc = attn.processor
                attn.processor = original_processor(proc)
                dense = attn(*args, **kwargs)
                attn.processor = proc
        for a, b in zip(sparse, dense, strict=True):  # video rows, then condition rows (padded ones included)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ltx2_audio_video_cross_attention_is_left_alone(cases):
    """With audio-video cross-attention on, a frame reaches the others only through the (untouched) audio stream."""
    if "ltx2" not in cases:
        cases["ltx2"] = build("ltx2")
    case = cases["ltx2"]
    inputs = _inputs(case)
    changed = _perturbed(case, inputs, 1)
    with headsparse.patch(case.model, pattern=ISOLATE):
        with torch.no_grad():
            video, audio = case.model(**inputs, return_dict=False)
            video2, audio2 = case.model(**changed, return_dict=False)
    assert min(_frame_changes(case, video, video2)) > 1e-5  # via v2a then a2v
    assert (audio2 - audio).abs().max() > 1e-5


def test_kandinsky5_nabla_calls_are_left_to_the_model():
    """With ``sparse_params`` (its own NABLA attention: 8x8 tile order, a flex BlockMask) the grid is not read."""
    spec = SPECS["Kandinsky5Transformer3DModel"]
    case = build("kandinsky5")
    inputs = _inputs(case, batch=1)
    assert spec.grid(case.model, inputs) == GRID
    assert spec.grid(case.model, {**inputs, "sparse_params": {"to_fractal": True}}) is None


# -------------------------------------------------------------------------------------------------- refusals


def test_sana_video_is_refused_by_name_with_the_reason():
    model = build_sana_video()
    before = processors(model)
    assert type(before["transformer_blocks.0.attn1"]).__name__ == "SanaLinearAttnProcessor3_0"
    with pytest.raises(TypeError, match=r"SanaVideoTransformer3DModel.*linear attention.*no softmax"):
        headsparse.patch(model, pattern="spatial")
    assert all(before[k] is p for k, p in processors(model).items())
    assert not headsparse.is_patched(model) and not model._forward_pre_hooks
    assert "SanaVideoTransformer3DModel" not in headsparse.supported_classes()


# ---------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["hunyuanvideo1.5", "ltx2", "cosmos2.5", "kandinsky5"])
def test_generate_presets_fit_their_pipelines(name, tmp_path):
    """Each preset names a diffusers pipeline of its transformer class whose call takes every argument we pass."""
    import inspect

    import diffusers

    from headsparse.pipelines import GenerateRequest, preset_for
    from headsparse.pipelines.generate import pipeline_call

    preset = preset_for(name)
    cls = getattr(diffusers, preset.pipeline)
    assert preset.transformer in str(inspect.signature(cls.__init__).parameters["transformer"].annotation)
    assert preset.transformer in SPECS and preset.video
    call = pipeline_call(preset, GenerateRequest(name, "a cat", tmp_path, negative_prompt="blurry"))
    params = inspect.signature(cls.__call__).parameters
    assert set(call) <= set(params), set(call) - set(params)
    assert (preset.guidance_arg in call) == (preset.guidance_arg is not None)
    assert params["num_frames"].default in (preset.frames, None) and params["num_inference_steps"].default in (
        preset.steps, None)


# -------------------------------------------------------------------------------------- context parallelism

CP_TEXT = 6  # diffusers splits the text stream too: an even length


def _cp_inputs(case):
    # diffusers' LTX-2 context parallelism runs only without audio-video cross-attention (its RoPE is not split
    # by the model's _cp_plan) and without a text mask (the mask keeps every head while each rank holds half).
    inputs = case.make_inputs(batch=1, frames=2, height=4, width=8, isolate_modalities=True)
    for key in ("encoder_hidden_states", "audio_encoder_hidden_states"):
        inputs[key] = inputs[key][:, :CP_TEXT]
    inputs["encoder_attention_mask"] = None
    return inputs


def _cp_patch(model):
    return headsparse.patch(model, pattern="spatial", first_frame_sink=False, block_size=32, backend="masked")


def _cp_scenario(rank: int) -> dict[str, Any]:
    from diffusers import ContextParallelConfig

    case = build("ltx2")
    inputs = _cp_inputs(case)
    case.model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    with torch.no_grad():
        with _cp_patch(case.model) as handle:
            sparse = case.model(**inputs, return_dict=False)
            calls = [s.sparse_calls for s in handle.states["transformer"].stats]
            grid = handle.states["transformer"].grid
        dense = case.model(**inputs, return_dict=False)
    # The outputs are gathered with functional collectives (AsyncCollectiveTensor): an op waits for them,
    # torch.save alone may write the buffer before the gather lands.
    sparse, dense = (tuple(t.clone() for t in out) for out in (sparse, dense))
    return {"sparse": sparse, "dense": dense, "calls": calls, "grid": grid}


def test_ltx2_under_ulysses_matches_one_process(tmp_path):
    ranks = run_on_gloo(_cp_scenario, tmp_path)
    case = build("ltx2")
    inputs = _cp_inputs(case)
    with torch.no_grad():
        dense = case.model(**inputs, return_dict=False)
        with _cp_patch(case.model):
            sparse = case.model(**inputs, return_dict=False)
    assert (sparse[0] - dense[0]).abs().max() > 1e-3  # the pattern is not dense here
    for r in ranks:
        assert r["grid"] == (2, 4, 8) and r["calls"] == [1, 1], (r["grid"], r["calls"])
        for got, want in zip((*r["sparse"], *r["dense"]), (*sparse, *dense), strict=True):  # video and audio
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
