"""headsparse on the diffusers image transformers of issue 22: Qwen-Image, FLUX.2, Z-Image, Chroma, HiDream-I1
and Lumina Image 2.0, each as a tiny random-weight instance (``tiny_models_image``).

For every class: the spec finds exactly the self-attention modules; a dense plan is bit-identical and unpatch
restores the original processor objects; a sparse plan changes only self-attention; a one-row perturbation proves
the token geometry in the model's real token order (with a pattern that keeps one token row and keeps text apart,
changing one row of the latent changes that row of the output and nothing else, while the dense model spreads it
everywhere); and the patched model equals the model whose self-attention is masked by the pattern's exact mask laid
out in the model's token order, padding and condition tokens included. The inputs exercise each class's hardest
real case: padded text (Qwen-Image, Lumina 2), items packed to different lengths (Z-Image, Lumina 2), reference
images after the grid (Qwen-Image-Edit, FLUX.2), and padded non-square latents (HiDream).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tiny_models_image import CASE_NAMES, ImageCase, build, grid_inputs

import headsparse
from headsparse.patterns import Geometry, Neighborhood, Pattern
from headsparse.plugin import SPECS
from headsparse.plugin.rebind import is_rebound, original_processor, rebind_processor

pytestmark = [pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*FluxPosEmbed.*:FutureWarning")]

ROWS, COLS = 3, 5  # the token grid of every test
REFERENCE = (2, 2)  # a reference image's token grid (edit pipelines)
# Inputs of each class's hardest real case (batch 2).
EXTRAS: dict[str, dict[str, Any]] = {
    "qwen_image": {"pad_text": 3, "reference": REFERENCE},
    "flux2": {"reference": REFERENCE},
    "z_image": {"captions": (40, 7)},  # 64 and 32 caption tokens after padding: packed under a key mask
    "chroma": {},
    "hidream": {},  # 3 x 5 is not square: the model pads the image tokens to 8 x 8
    "lumina2": {"pad_text": 3},
}
CONDITION = {"qwen_image": REFERENCE[0] * REFERENCE[1], "flux2": REFERENCE[0] * REFERENCE[1]}
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


def _processors(model: torch.nn.Module) -> dict[str, Any]:
    return {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}


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
    others = sorted(set(_processors(case.model)) - set(found))
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
    before = _processors(case.model)
    ref = case.run(inputs)
    with headsparse.patch(case.model, pattern="dense") as handle:
        patched = _processors(case.model)
        assert all(is_rebound(patched[name]) == (name in case.self_attention) for name in patched)
        out = case.run(inputs)
        assert handle.plan.transformers["transformer"].num_heads == 2
    assert torch.equal(out, ref)
    after = _processors(case.model)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not headsparse.is_patched(case.model)
    assert torch.equal(case.run(inputs), ref)


def test_sparse_plan_changes_only_self_attention(case: ImageCase) -> None:
    """Replay every attention module on the inputs it saw: only the self-attention ones differ."""
    inputs = _inputs(case)
    recorded: dict[str, tuple] = {}

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict, name: str) -> None:
        recorded.setdefault(name, (args, kwargs))

    hooks = [module.register_forward_pre_hook(lambda m, a, kw, n=name: grab(m, a, kw, n), with_kwargs=True)
             for name, module in case.model.named_modules() if hasattr(module, "processor")]
    with headsparse.patch(case.model, pattern=ROW, **EAGER):
        case.run(inputs)
        for h in hooks:
            h.remove()
        assert set(recorded) == set(_processors(case.model))
        for name, (args, kwargs) in recorded.items():
            module = case.model.get_submodule(name)
            with torch.no_grad():
                sparse = module(*args, **kwargs)
                patched = module.processor
                module.processor = original_processor(patched)
                dense = module(*args, **kwargs)
                module.processor = patched
            sparse = sparse if isinstance(sparse, tuple) else (sparse,)
            dense = dense if isinstance(dense, tuple) else (dense,)
            same = all(torch.equal(a, b) for a, b in zip(sparse, dense, strict=True))
            assert same == (name not in case.self_attention), name


def test_one_row_perturbation_isolates_rows_in_the_real_token_order(case: ImageCase) -> None:
    inputs = _inputs(case)
    changed = _perturb_row(case, inputs, 1)
    assert _rows_changed(case, case.run(changed) - case.run(inputs)) == [0, 1, 2]  # dense: everywhere
    with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle:
        delta = case.run(changed) - case.run(inputs)
        stats = handle.states["transformer"].stats
        assert all(s.sparse_calls > 0 for s in stats), "every self-attention layer must have run sparse"
    assert _rows_changed(case, delta) == [1], "another token row changed: the geometry is wrong"


def _pattern_mask(pattern: Pattern, grid: int, condition: int, position: str, keep: torch.Tensor) -> torch.Tensor:
    """bool [S, S] in the model's token order: the pattern's exact mask over the item's valid tokens, with
    condition tokens counted as text (moved before the grid when the text comes first), padded queries
    keeping every valid key and padded keys dropped. Written from the definitions, independently of runtime."""
    seq = keep.numel()
    idx = torch.arange(seq)
    if condition and position == "prefix":  # [text, grid, condition] -> [text, condition, grid]
        text = seq - grid - condition
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
    condition = CONDITION.get(case.name, 0)
    position = case.text_position

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value)) if style == "dispatch" else (query, key, value)
        batch, _, seq, _ = q.shape
        keep = torch.ones(batch, seq, dtype=torch.bool)
        if attn_mask is not None:  # the classes' key masks: (B, 1, 1, S) bool
            keep = attn_mask.reshape(batch, seq).bool()
        masks = torch.stack([_pattern_mask(pattern, ROWS * COLS, condition, position, keep[b]) for b in range(batch)])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[:, None], scale=scale)
        return out.transpose(1, 2) if style == "dispatch" else out

    return attention


def test_patched_model_equals_the_pattern_mask_in_the_model_token_order(case: ImageCase) -> None:
    pattern = Neighborhood(kernel_size=(1, 3, 3))  # text dense: the joint-text rule
    inputs = _inputs(case)
    originals = {name: case.model.get_submodule(name).processor for name in case.self_attention}
    fn = _masked_attention(case, pattern, case.attention_call)
    key = "dispatch" if case.attention_call == "dispatch" else "sdpa"
    try:
        for name, proc in originals.items():
            case.model.get_submodule(name).processor = rebind_processor(proc, **{key: fn})
        expected = case.run(inputs)
    finally:
        for name, proc in originals.items():
            case.model.get_submodule(name).processor = proc
    with headsparse.patch(case.model, pattern=pattern, block_size=32, **EAGER) as handle:
        out = case.run(inputs)
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(out, case.run(inputs), atol=1e-4)  # the pattern is not dense


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
def test_reference_image_tokens_are_condition_tokens(name: str) -> None:
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
        assert state.grid == (1, ROWS, COLS) and state.condition == REFERENCE[0] * REFERENCE[1]
        text = case.text_len + state.condition
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


def test_hidream_square_latents_have_no_image_padding() -> None:
    case = build("hidream")
    inputs = grid_inputs(case, 4, 4, batch=1)
    with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle:
        case.run(inputs)
        stats = handle.states["transformer"].stats
    # double stream: [image, T5, last Llama layer, the block's Llama layer]; single stream: the same tokens
    assert [s.geometry for s in stats] == [Geometry(1, 4, 4, case.text_len, "suffix")] * 2
    inputs = grid_inputs(case, ROWS, COLS, batch=1)  # non-square: padded to 8 x 8 image tokens
    with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle:
        case.run(inputs)
        assert handle.states["transformer"].stats[0].geometry.text_len == 64 - ROWS * COLS + case.text_len


def test_flux2_kv_cache_processors_are_refused_and_model_untouched() -> None:
    from diffusers.models.transformers.transformer_flux2 import Flux2KVAttnProcessor

    case = build("flux2")
    case.model.transformer_blocks[0].attn.set_processor(Flux2KVAttnProcessor())
    before = _processors(case.model)
    with pytest.raises(TypeError, match="Flux2KVAttnProcessor"):
        headsparse.patch(case.model, pattern="spatial")
    assert all(before[k] is p for k, p in _processors(case.model).items())
    assert not headsparse.is_patched(case.model)


def test_warns_and_runs_dense_when_no_grid_is_known(caplog: pytest.LogCaptureFixture) -> None:
    """Z-Image items of different sizes have no single grid: dense, with a warning naming why."""
    case = build("z_image")
    inputs = grid_inputs(case, ROWS, COLS, batch=2)
    inputs["x"] = [inputs["x"][0], torch.randn(4, 1, 2 * ROWS, 2 * (COLS + 1))]
    with caplog.at_level(logging.WARNING, logger="headsparse"):
        ref = case.model(**inputs, return_dict=False)[0]
        with headsparse.patch(case.model, pattern=ROW, **EAGER) as handle, torch.no_grad():
            out = case.model(**inputs, return_dict=False)[0]
            assert all(s.sparse_calls == 0 for s in handle.states["transformer"].stats)
    assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))
    assert "token grid could not be read" in caplog.text
