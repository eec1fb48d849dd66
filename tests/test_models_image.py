"""headsparse on the diffusers image transformers of issue 22: Qwen-Image, FLUX.2, Z-Image, Chroma, HiDream-I1
and Lumina Image 2.0, each as a tiny random-weight instance (``tiny_models_image``).

For every class: the spec finds exactly the self-attention modules; a dense plan is bit-identical and unpatch
restores the original processor objects; a sparse plan changes only self-attention; a one-row perturbation proves
the token geometry in the model's real token order (with a pattern that keeps one token row and keeps text apart,
changing one row of the latent changes that row of the output and nothing else, while the dense model spreads it
everywhere); and the patched model equals the model whose self-attention is masked by the pattern's exact mask laid
out in the model's token order, padding and reference tokens included. The inputs exercise each class's hardest
real case: padded text (Qwen-Image, Lumina 2), items packed to different lengths (Z-Image, Lumina 2), reference
images after the grid (Qwen-Image-Edit, FLUX.2), and padded non-square latents (HiDream).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from attention_replay import modules_the_patch_changes, recorded_attention_inputs
from gloo_workers import run_on_gloo
from patch_checks import assert_dense_patch_is_identity, processors
from tiny_models_image import CASE_NAMES, ImageCase, build, grid_inputs

import headsparse
from headsparse.patterns import Geometry, Neighborhood, Pattern
from headsparse.plugin import SPECS
from headsparse.plugin.rebind import rebind_processor

pytestmark = [pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*FluxPosEmbed.*:FutureWarning")]

ROWS, COLS = 3, 5  # the token grid of every test
REFERENCE = (2, 2)  # a reference image's token grid (edit pipelines)
# Inputs of each class's hardest real case (batch 2).
EXTRAS: dict[str, dict[str, Any]] = {
    "qwen_image": {"pad_text": 3, "reference": REFERENCE},
    "flux2": {"reference": REFERENCE},
    "z_image": {"captions": (40, 7)},  # 64 and 32 caption tokens after padding: packed under a key mask
    "chroma": {"pad_text": 3, "mask": "float"},  # ChromaPipeline's mask: 0/1 floats over [text, image]
    "hidream": {},  # 3 x 5 is not square: the model pads the image tokens to 8 x 8
    "lumina2": {"pad_text": 3},
}
TRAILING = {"qwen_image": REFERENCE[0] * REFERENCE[1], "flux2": REFERENCE[0] * REFERENCE[1]}
# Attention modules that are not self-attention over the image: text only.
TEXT_ONLY = {"z_image": r"context_refiner\.\d+\.attention", "lumina2": r"context_refiner\.\d+\.attn"}
# Keeps the query's token row; text (and every other non-grid token) only sees non-grid tokens.
ROW = Neighborhood(kernel_size=(1, 1, COLS), text_dense=False)
# The eager executor: no compile per new sequence length (the runtime's decisions do not depend on it).
EAGER = {"backend": "masked"}


@pytest.fixture(scope="module", params=CASE_NAMES)
def case(request: pytest.FixtureRequest) -> ImageCase:
    return build(request.param)


def _inputs(case: ImageCase, batch: int = 2, seed: int = 0, **extras: Any) -> dict:
    return grid_inputs(case, ROWS, COLS, batch=batch, seed=seed, **{**EXTRAS[case.name], **extras})


def _rows_changed(case: ImageCase, delta: torch.Tensor) -> list[int]:
    return [r for r in range(ROWS) if case.row(delta, r, COLS).abs().max() > 1e-5]


def _perturb_row(case: ImageCase, inputs: dict, row: int) -> dict:
    latent = case.latent(inputs).clone()
    part = case.row(latent, row, COLS)
    part.add_(torch.randn_like(part))
    return case.with_latent(inputs, latent)


# ------------------------------------------------------------------------------------------------ every class
def test_spec_finds_the_self_attention_modules(case: ImageCase) -> None:
    spec = SPECS[type(case.model).__name__]
    found = tuple(n for n, _ in spec.self_attention_modules(case.model))
    assert found == case.self_attention
    others = sorted(set(processors(case.model)) - set(found))
    if case.name in TEXT_ONLY:
        import re

        assert others and all(re.fullmatch(TEXT_ONLY[case.name], n) for n in others), others
        # they never see an image token: their inputs are the caption alone
        seen: dict[str, int] = {}

        def record(module: torch.nn.Module, args: tuple, kwargs: dict, name: str) -> None:
            seen[name] = (args[0] if args else kwargs["hidden_states"]).shape[1]

        hooks = [case.model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, kw, n=n: record(m, a, kw, n), with_kwargs=True) for n in others]
        inputs = _inputs(case)
        case.run(inputs)
        for h in hooks:
            h.remove()
        captions = {x.shape[0] for x in inputs["cap_feats"]} if case.name == "z_image" else {case.text_len}
        assert set(seen.values()) <= {n + (-n) % 32 for n in captions} | captions, seen
    else:
        assert not others, others


def test_dense_plan_is_bit_identical_and_unpatch_restores(case: ImageCase) -> None:
    inputs = _inputs(case)
    assert_dense_patch_is_identity(case.model, lambda: case.run(inputs), case.self_attention)


def test_sparse_plan_changes_only_self_attention(case: ImageCase) -> None:
    """Replay every attention module on the inputs it saw: only the self-attention ones differ."""
    inputs = _inputs(case)
    with headsparse.patch(case.model, pattern=ROW, **EAGER):
        with recorded_attention_inputs(case.model) as recorded:
            case.run(inputs)
        assert set(recorded) == set(processors(case.model))
        assert modules_the_patch_changes(case.model, recorded) == set(case.self_attention)


def test_one_row_perturbation_isolates_rows_in_the_real_token_order(case: ImageCase) -> None:
    inputs = _inputs(case)
    changed = _perturb_row(case, inputs, 1)
    assert _rows_changed(case, case.run(changed) - case.run(inputs)) == [0, 1, 2]  # dense: everywhere
    with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle:
        delta = case.run(changed) - case.run(inputs)
        stats = handle.states["transformer"].stats
        assert all(s.sparse_calls > 0 for s in stats), "every self-attention layer must have run sparse"
    assert _rows_changed(case, delta) == [1], "another token row changed: the geometry is wrong"


def _pattern_mask(pattern: Pattern, grid: int, trail: int, position: str, keep: torch.Tensor) -> torch.Tensor:
    """bool [S, S] in the model's token order: the pattern's exact mask over the item's valid tokens, with
    trailing (reference) tokens counted as text (moved before the grid when the text comes first), padded queries
    keeping every valid key and padded keys dropped. Written from the definitions, independently of runtime."""
    seq = keep.numel()
    idx = torch.arange(seq)
    if trail and position == "prefix":  # [text, grid, trailing] -> [text, trailing, grid]
        text = seq - grid - trail
        order = torch.cat([idx[:text], idx[text + grid :], idx[text : text + grid]])
    else:
        order = idx
    kept = order[keep[order]]  # model indices of the valid tokens, in pattern order
    n_text = kept.numel() - grid
    geometry = Geometry(1, ROWS, COLS, n_text, position if n_text else "none")
    mask = torch.zeros(seq, seq, dtype=torch.bool)
    mask[kept[:, None], kept[None, :]] = pattern.dense_mask(geometry)
    mask[(~keep).nonzero().flatten()[:, None], kept[None, :]] = True
    return mask


def _masked_attention(case: ImageCase, pattern: Pattern, style: str) -> Any:
    """An attention function that runs the pattern's exact mask (for ``rebind_processor``)."""
    trail = TRAILING.get(case.name, 0)
    position = case.text_position

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value)) if style == "dispatch" else (query, key, value)
        batch, _, seq, _ = q.shape
        keep, pairs = torch.ones(batch, seq, dtype=torch.bool), None
        if attn_mask is not None and attn_mask.shape[-2] == seq:  # Chroma's token mask m_i * m_j, (B, 1, S, S)
            pairs = attn_mask[:, 0]
            keep = pairs.bool().any(-2)
        elif attn_mask is not None:  # the other classes' key masks: (B, 1, 1, S) bool
            keep = attn_mask.reshape(batch, seq).bool()
        masks = torch.stack([_pattern_mask(pattern, ROWS * COLS, trail, position, keep[b]) for b in range(batch)])
        if pairs is not None and pairs.dtype == torch.bool:
            masks = masks & pairs  # padded queries keep no key
        elif pairs is not None:  # 0/1 added to the scores; padded keys are text, seen where text is
            text = torch.arange(seq) < seq - ROWS * COLS
            sees_text = text[:, None] if not pattern.text_dense else torch.ones(seq, 1, dtype=torch.bool)
            masks = masks | (~keep[:, None, :] & sees_text[None]) | ~keep[:, :, None]
            masks = torch.where(masks, pairs, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[:, None], scale=scale)
        return out.transpose(1, 2) if style == "dispatch" else out

    return attention


def _run_masked(case: ImageCase, pattern: Pattern, inputs: dict) -> torch.Tensor:
    """The model's output with every self-attention masked by ``pattern``'s exact mask."""
    originals = {name: case.model.get_submodule(name).processor for name in case.self_attention}
    fn = _masked_attention(case, pattern, case.attention_call)
    key = "dispatch" if case.attention_call == "dispatch" else "sdpa"
    try:
        for name, proc in originals.items():
            case.model.get_submodule(name).processor = rebind_processor(proc, **{key: fn})
        return case.run(inputs)
    finally:
        for name, proc in originals.items():
            case.model.get_submodule(name).processor = proc


def _check_equals_pattern_mask(case: ImageCase, pattern: Pattern, inputs: dict) -> None:
    expected = _run_masked(case, pattern, inputs)
    with headsparse.patch(case.model, pattern=pattern, block_size=32, **EAGER) as handle:
        out = case.run(inputs)
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(out, case.run(inputs), atol=1e-4)  # the pattern is not dense


def test_patched_model_equals_the_pattern_mask_in_the_model_token_order(case: ImageCase) -> None:
    _check_equals_pattern_mask(case, Neighborhood(kernel_size=(1, 3, 3)), _inputs(case))  # text dense


# ------------------------------------------------------------------------------------------------ per class
@pytest.mark.parametrize("name", ["qwen_image", "lumina2", "z_image"])
def test_padded_items_equal_their_unpadded_runs(name: str) -> None:
    """The padded (or shorter-packed) item of a batch gives what it gives alone without the padding."""
    case = build(name)
    pattern = Neighborhood(kernel_size=(1, 3, 3))
    inputs = _inputs(case)
    if name == "z_image":  # item 1 has the shorter caption; alone it is not packed
        alone = {"x": inputs["x"][1:], "t": inputs["t"][1:], "cap_feats": inputs["cap_feats"][1:]}
    elif name == "qwen_image":  # item 1's last 3 text tokens are padding: drop them
        alone = {**{k: v[1:] for k, v in inputs.items() if torch.is_tensor(v)}, "img_shapes": inputs["img_shapes"][1:]}
        alone["encoder_hidden_states"] = alone["encoder_hidden_states"][:, :-3]
        del alone["encoder_hidden_states_mask"]
    else:  # lumina2: item 1's caption is 3 tokens shorter
        alone = {k: v[1:] for k, v in inputs.items()}
        alone["encoder_hidden_states"] = alone["encoder_hidden_states"][:, :-3]
        alone["encoder_attention_mask"] = alone["encoder_attention_mask"][:, :-3]
    with headsparse.patch(case.model, pattern=pattern, block_size=32, **EAGER):
        both, single = case.run(inputs), case.run(alone)
    torch.testing.assert_close(both[1:], single, atol=2e-5, rtol=1e-4)
    dense_both = case.run(inputs)
    torch.testing.assert_close(dense_both[1:], case.run(alone), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["qwen_image", "flux2"])
def test_reference_image_tokens_are_trailing_tokens(name: str) -> None:
    """Edit pipelines append reference latents after the noisy ones: they are not grid rows. Under a pattern that
    keeps text apart they reach no grid row (while the dense model spreads them everywhere), and the layers'
    geometry counts them with the text."""
    case = build(name)
    inputs = _inputs(case)
    latent = case.latent(inputs).clone()
    latent[:, ROWS * COLS :] += torch.randn_like(latent[:, ROWS * COLS :])
    changed = case.with_latent(inputs, latent)
    assert _rows_changed(case, case.run(changed) - case.run(inputs)) == [0, 1, 2]
    with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle:
        delta = case.run(changed) - case.run(inputs)
        state = handle.states["transformer"]
        assert state.grid == (1, ROWS, COLS) and state.trail == REFERENCE[0] * REFERENCE[1]
        text = case.text_len + state.trail
        assert all(s.geometry == Geometry(1, ROWS, COLS, text, "prefix") for s in state.stats)
    assert _rows_changed(case, delta) == []
    assert delta[:, ROWS * COLS :].abs().max() > 1e-4  # the reference tokens' own outputs do change


@pytest.mark.parametrize("name", ["z_image", "lumina2"])
def test_rising_timesteps_count_denoising_steps(name: str) -> None:
    """Z-Image and Lumina 2 are given 1 - sigma (0 at pure noise, rising): dense_steps=1 runs step 0 dense."""
    case = build(name)
    inputs = _inputs(case, batch=1)
    key = "t" if name == "z_image" else "timestep"

    def at(t: float) -> torch.Tensor:
        return case.run({**inputs, key: torch.tensor([t])})

    dense = {t: at(t) for t in (0.1, 0.3)}
    with headsparse.patch(case.model, pattern=ROW, dense_steps=1, **EAGER) as handle:
        assert torch.equal(at(0.1), dense[0.1]) and handle.step == 0
        second = at(0.3)
        assert handle.step == 1 and not torch.allclose(second, dense[0.3])
        assert torch.equal(at(0.3), second) and handle.step == 1  # a second (CFG) call at the same step
        assert torch.equal(at(0.1), dense[0.1]) and handle.step == 0  # back to noise: a new generation


@pytest.mark.parametrize("mask", ["float", "bool"])
def test_chroma_token_masks(mask: str) -> None:
    """ChromaPipeline masks padded text as queries and keys (m_i * m_j, (B, 1, S, S)); in diffusers 0.42.1 the
    mask is 0/1 floats, which attention adds to the scores. Both that and a boolean mask run sparse, equal to the
    pattern's mask combined with the model's, for text-dense and text-apart patterns."""
    case = build("chroma")
    inputs = _inputs(case, mask=mask)
    assert torch.allclose(_run_masked(case, headsparse.patterns.Dense(), inputs), case.run(inputs), atol=2e-5)
    for pattern in (Neighborhood(kernel_size=(1, 3, 3)), Neighborhood(kernel_size=(1, 3, 3), text_dense=False)):
        _check_equals_pattern_mask(case, pattern, inputs)


def test_search_calibrates_padded_items_on_their_valid_tokens() -> None:
    """ChromaPipeline masks every call (prompts are padded to 512 tokens): calibration observes each padded item on
    its valid tokens, where its layout applies, so a search through Chroma finds a plan."""
    from headsparse.search import CostModel

    case = build("chroma")
    inputs = _inputs(case)  # item 1 keeps 5 of its 7 text tokens
    seen: list[Geometry] = []
    handle = headsparse.patch(case.model, pattern="dense")
    handle.states["transformer"].observer = lambda layer, step, q, k, v, g: seen.append((q.shape[0], g))
    case.run(inputs)
    handle.unpatch()
    text = {g.text_len for _, g in seen}
    assert text == {case.text_len, case.text_len - 2} and all(b == 1 for b, _ in seen)
    plan = headsparse.search(case.model, lambda: case.run(inputs), budget=0.05, cost_model=CostModel("blocks"),
                             block_size=32, progress=False)
    assert len(plan.transformers["transformer"].layers) == len(case.self_attention)


def test_hidream_image_padding_and_patchified_inputs() -> None:
    """Square latents have no image padding; non-square ones are padded to max_resolution with zero keys that
    join the text suffix; already patchified inputs read their grid from img_sizes; ``timesteps`` counts steps."""
    case = build("hidream")
    inputs = grid_inputs(case, 4, 4, batch=1)
    with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle:
        case.run(inputs)
        stats = handle.states["transformer"].stats
    # double stream: [image, T5, last Llama layer, the block's Llama layer]; single stream: the same tokens
    assert [s.geometry for s in stats] == [Geometry(1, 4, 4, case.text_len, "suffix")] * 2
    inputs = grid_inputs(case, ROWS, COLS, batch=1)  # non-square: padded to 8 x 8 image tokens
    with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle:
        out = case.run(inputs)
        assert handle.states["transformer"].stats[0].geometry.text_len == 64 - ROWS * COLS + case.text_len
        assert handle.step == 0
        # already patchified (what the model makes of a non-square latent): the grid comes from img_sizes
        hidden, masks, sizes, ids = case.model.patchify(inputs["hidden_states"])
        given = {**inputs, "hidden_states": hidden, "hidden_states_masks": masks, "img_sizes": sizes, "img_ids": ids,
                 "timesteps": inputs["timesteps"] - 100}
        again = case.run(given)
        assert handle.states["transformer"].grid == (1, ROWS, COLS) and handle.step == 1  # timesteps: the step
    with headsparse.patch(case.model, pattern=ROW, **EAGER):
        torch.testing.assert_close(case.run(given), case.run({**inputs, "timesteps": given["timesteps"]}))
    assert not torch.allclose(out, again)


def test_trailing_tokens_need_a_text_prefix() -> None:
    from headsparse.plugin.spec import ModelSpec

    with pytest.raises(ValueError, match="trailing_tokens needs text_position='prefix'"):
        ModelSpec("Model", "diffusers-image", r"attn", ("P",), "suffix", lambda m, a: None,
                  trailing_tokens=lambda m, a: 0)


def test_flux2_kv_cache_processors_are_refused_and_model_untouched() -> None:
    from diffusers.models.transformers.transformer_flux2 import Flux2KVAttnProcessor

    case = build("flux2")
    case.model.transformer_blocks[0].attn.set_processor(Flux2KVAttnProcessor())
    before = processors(case.model)
    with pytest.raises(TypeError, match="Flux2KVAttnProcessor"):
        headsparse.patch(case.model, pattern="spatial")
    assert all(before[k] is p for k, p in processors(case.model).items())
    assert not headsparse.is_patched(case.model)


@pytest.mark.parametrize("kind", ["sizes", "omni"])
def test_z_image_without_a_single_grid_runs_dense_with_a_warning(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Z-Image items of different sizes, and omni mode ([caption, several images, SigLIP] per item), have no single
    token grid: every layer runs dense (bit-identical), with a warning naming why."""
    case = build("z_image")
    g = torch.Generator().manual_seed(0)
    if kind == "sizes":
        inputs = grid_inputs(case, ROWS, COLS, batch=2)
        inputs["x"] = [inputs["x"][0], torch.randn(4, 1, 2 * ROWS, 2 * (COLS + 1), generator=g)]
    else:  # one item: a condition image then the image being denoised, one caption each, no SigLIP features
        images = [torch.randn(4, 1, 2 * ROWS, 2 * COLS, generator=g) for _ in range(2)]
        captions = [torch.randn(n, 16, generator=g) for n in (7, 5)]
        inputs = {"x": [images], "t": torch.tensor([0.3]), "cap_feats": [captions], "siglip_feats": [None],
                  "image_noise_mask": [[0, 1]]}
    with caplog.at_level(logging.WARNING, logger="headsparse"), torch.no_grad():
        ref = case.model(**inputs, return_dict=False)[0]
        with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle:
            out = case.model(**inputs, return_dict=False)[0]
            assert all(s.sparse_calls == 0 for s in handle.states["transformer"].stats)
    assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))
    assert "token grid could not be read" in caplog.text


# ------------------------------------------------------------------------------------ context parallelism
CP_CLASSES = ("qwen_image", "flux2")  # the classes with a diffusers _cp_plan
CP_GRID = (4, 4)  # 16 image tokens + 4 reference tokens: 10 per rank
CP_TEXT = 6  # 3 per rank: diffusers splits each stream evenly


def _cp_plan(model: torch.nn.Module) -> Any:
    """Head 0: a 3x3 window; head 1: its token row. Text and reference tokens stay dense (the default)."""
    from headsparse.plan import LayerPlan, ModelPlan, Phase

    heads = (Neighborhood(kernel_size=(1, 3, 3)), Neighborhood(kernel_size=(1, 1, 4)))
    names = [n for n, _ in SPECS[type(model).__name__].self_attention_modules(model)]
    return ModelPlan(type(model).__name__, 2, tuple(LayerPlan(n, (Phase(0, heads),)) for n in names), block_size=32)


def _cp_inputs(case: ImageCase) -> dict:
    return grid_inputs(case, *CP_GRID, batch=1, reference=REFERENCE, text=CP_TEXT)


def _settled(out: torch.Tensor) -> torch.Tensor:
    """A plain copy of a (possibly still gathering) output of diffusers' context parallelism."""
    return (out.wait() if hasattr(out, "wait") else out).clone()


def _cp_scenario(rank: int) -> dict[str, Any]:
    from diffusers import ContextParallelConfig

    results: dict[str, Any] = {}
    for name in CP_CLASSES:
        case = build(name)
        inputs = _cp_inputs(case)
        case.model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
        with headsparse.patch(case.model, _cp_plan(case.model), **EAGER) as handle:
            results[name] = _settled(case.run(inputs))
            results[f"{name}_sparse_calls"] = [s.sparse_calls for s in handle.states["transformer"].stats]
            results[f"{name}_grid"] = (handle.states["transformer"].grid, handle.states["transformer"].trail)
        results[f"{name}_dense"] = _settled(case.run(inputs))
    return results


@pytest.fixture(scope="module")
def cp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_on_gloo(_cp_scenario, tmp_path_factory.mktemp("cp_image"))


@pytest.mark.parametrize("name", CP_CLASSES)
def test_ulysses_context_parallelism_matches_one_process(name: str, cp_results: list[dict[str, Any]]) -> None:
    """Two gloo processes (Ulysses degree 2) with joint text + image + reference tokens give the one-process
    output of the same per-head plan, every layer sparse on both ranks."""
    case = build(name)
    inputs = _cp_inputs(case)
    dense = case.run(inputs)
    with headsparse.patch(case.model, _cp_plan(case.model), **EAGER):
        ref = case.run(inputs)
    assert (ref - dense).abs().max() > 1e-3  # the plan is not dense
    for r in cp_results:
        torch.testing.assert_close(r[name], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r[f"{name}_dense"], dense, atol=1e-5, rtol=1e-5)
        assert all(n > 0 for n in r[f"{name}_sparse_calls"]), r[f"{name}_sparse_calls"]
        assert r[f"{name}_grid"] == ((1, *CP_GRID), REFERENCE[0] * REFERENCE[1])  # read from the unsplit inputs


# ---------------------------------------------------------------------------------------------------- presets
PRESETS = {"qwenimage": "QwenImageTransformer2DModel", "flux2": "Flux2Transformer2DModel",
           "zimage": "ZImageTransformer2DModel", "chroma": "ChromaTransformer2DModel",
           "hidream": "HiDreamImageTransformer2DModel", "lumina2": "Lumina2Transformer2DModel"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_generate_presets_call_their_pipelines_with_real_arguments(name: str) -> None:
    import inspect
    from pathlib import Path

    import diffusers

    from headsparse.pipelines.generate import GenerateRequest, pipeline_call
    from headsparse.pipelines.presets import preset_for

    preset = preset_for(name)
    assert preset.transformer == PRESETS[name] and preset.transformer in SPECS and not preset.video
    pipeline = getattr(diffusers, preset.pipeline)
    assert PRESETS[name] in str(inspect.signature(pipeline.__init__).parameters["transformer"].annotation)
    call = pipeline_call(preset, GenerateRequest(name, "a cat", Path("unused")))
    accepted = inspect.signature(pipeline.__call__).parameters
    assert set(call) <= set(accepted), set(call) - set(accepted)
    assert (call["height"], call["width"], call["num_inference_steps"]) == (preset.height, preset.width, preset.steps)
    if name == "qwenimage":  # true CFG: the guidance goes to true_cfg_scale and needs a negative prompt
        assert call["true_cfg_scale"] == 4.0 and call["negative_prompt"] == " " and "guidance_scale" not in call
    else:
        assert call["guidance_scale"] == preset.guidance
