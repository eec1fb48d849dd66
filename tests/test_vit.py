"""headsparse.patch on Vision Transformers: timm ViT (class + register tokens, DINOv2-style dynamic size,
no class token), timm EVA (RoPE, prefix tokens), transformers ViT, DINOv2 (with and without registers),
SigLIP vision and CLIP vision; tiny random-weight models built from configs.

For each: a dense plan is bit-identical, unpatch restores the original objects (and outputs), patching twice
is idempotent, the grid and prefix are read from the real inputs (a non-square image), a one-token window
isolates one patch in the model's real token order, and neighborhood / blocked-window / agent / mixed-head
layers equal a reference that runs each head's exact mask (prefix tokens dense) or the reference agent
attention, computed by replacing SDPA in the unpatched model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from test_agent import reference_attention
from torch import nn

import headsparse
from headsparse.patterns import Agent, Geometry, Neighborhood, Pattern
from headsparse.plan import LayerPlan, ModelPlan, Phase

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


PATCH = 8
IMAGE = (32, 40)  # 4 x 5 patches: non-square, so a transposed grid would be caught


@dataclass
class ViTCase:
    name: str
    model: nn.Module
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # every token's final features
    prefix: int
    image: tuple[int, int] = IMAGE

    @property
    def grid(self) -> tuple[int, int, int]:
        return (1, self.image[0] // PATCH, self.image[1] // PATCH)

    def geometry(self) -> Geometry:
        _, h, w = self.grid
        return Geometry(1, h, w, self.prefix, "prefix" if self.prefix else "none")

    def pixels(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        return torch.randn(batch, 3, *self.image, generator=torch.Generator().manual_seed(seed))


def _timm_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_features(x)


def _hf_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state


def _hf_config(cls: type, **extra) -> object:
    return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
               patch_size=PATCH, **extra)


def _build(name: str) -> ViTCase:
    torch.manual_seed(0)
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    small = {"patch_size": PATCH, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 0}
    if name == "timm_vit_reg":
        model = VisionTransformer(img_size=IMAGE, reg_tokens=2, **small)
        return ViTCase(name, model.eval(), _timm_features, prefix=3)
    if name == "timm_dinov2_style":  # registers, layer scale, no pos-embed for prefix, dynamic image size
        model = VisionTransformer(img_size=32, reg_tokens=4, init_values=0.5, no_embed_class=True,
                                  dynamic_img_size=True, **small)
        return ViTCase(name, model.eval(), _timm_features, prefix=5, image=(40, 48))
    if name == "timm_no_class":
        model = VisionTransformer(img_size=IMAGE, class_token=False, global_pool="avg", **small)
        return ViTCase(name, model.eval(), _timm_features, prefix=0)
    if name == "timm_eva":
        model = Eva(img_size=IMAGE, num_reg_tokens=1, use_rot_pos_emb=True, ref_feat_shape=(4, 5), **small)
        return ViTCase(name, model.eval(), _timm_features, prefix=2)
    t = transformers
    if name == "hf_vit":
        return ViTCase(name, t.ViTModel(_hf_config(t.ViTConfig)).eval(), _hf_features, prefix=1)
    if name == "hf_dinov2":
        return ViTCase(name, t.Dinov2Model(_hf_config(t.Dinov2Config)).eval(),
                       lambda m, x: m(pixel_values=x).last_hidden_state, prefix=1)
    if name == "hf_dinov2_registers":
        config = _hf_config(t.Dinov2WithRegistersConfig, num_register_tokens=2)
        return ViTCase(name, t.Dinov2WithRegistersModel(config).eval(),
                       lambda m, x: m(pixel_values=x).last_hidden_state, prefix=3)
    if name == "hf_siglip":
        return ViTCase(name, t.SiglipVisionModel(_hf_config(t.SiglipVisionConfig)).eval(), _hf_features, prefix=0)
    if name == "hf_clip":
        return ViTCase(name, t.CLIPVisionModel(_hf_config(t.CLIPVisionConfig)).eval(), _hf_features, prefix=1)
    raise KeyError(name)


CASES = ("timm_vit_reg", "timm_dinov2_style", "timm_no_class", "timm_eva", "hf_vit", "hf_dinov2",
         "hf_dinov2_registers", "hf_siglip", "hf_clip")


@pytest.fixture(scope="module", params=CASES)
def case(request) -> ViTCase:
    return _build(request.param)


def _run(case: ViTCase, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return case.run(case.model, x)


def _attention_modules(case: ViTCase) -> list[tuple[str, nn.Module]]:
    return _spec(case).self_attention_modules(case.model)


def _spec(case: ViTCase):
    from headsparse.plugin.spec import spec_for

    spec = spec_for(case.model)
    assert spec is not None
    return spec


def _snapshot(case: ViTCase) -> dict:
    """What patching may touch: instance dicts of the attention modules, their configs' attention
    implementation, and forward hooks anywhere in the model."""
    state = {}
    for name, module in _attention_modules(case):
        state[name] = (dict(module.__dict__), getattr(getattr(module, "config", None), "_attn_implementation", None))
    state["hooks"] = sorted((n, len(m._forward_pre_hooks)) for n, m in case.model.named_modules())
    return state


def _same_snapshot(a: dict, b: dict) -> bool:
    if a.keys() != b.keys() or a["hooks"] != b["hooks"]:
        return False
    for key in a:
        if key == "hooks":
            continue
        (da, ia), (db, ib) = a[key], b[key]
        if ia != ib or da.keys() != db.keys() or any(da[k] is not db[k] and da[k] != db[k] for k in da):
            return False
    return True


def _plan(case: ViTCase, heads: tuple[Pattern, ...]) -> ModelPlan:
    layers = tuple(LayerPlan(n, (Phase(0, heads),)) for n, _ in _attention_modules(case))
    return ModelPlan(type(case.model).__name__, 2, layers, block_size=32)


# ---------------------------------------------------------------------------------------------- basics


def test_spec_finds_attention_and_geometry(case):
    names = [n for n, _ in _attention_modules(case)]
    assert len(names) == 2
    x = case.pixels()
    with headsparse.patch(case.model, pattern="dense") as handle:
        _run(case, x)
        state = handle.states["transformer"]
        assert state.grid == case.grid
        assert handle.plan.transformers["transformer"].num_heads == 2


def test_dense_plan_is_bit_identical_and_unpatch_restores(case):
    x = case.pixels()
    before = _snapshot(case)
    ref = _run(case, x)
    with headsparse.patch(case.model, pattern="dense"):
        assert not _same_snapshot(before, _snapshot(case))
        out = _run(case, x)
    assert torch.equal(out, ref)
    assert _same_snapshot(before, _snapshot(case))
    assert not headsparse.is_patched(case.model)
    assert torch.equal(_run(case, x), ref)


def test_patch_twice_is_idempotent(case):
    x = case.pixels()
    before = _snapshot(case)
    ref = _run(case, x)
    headsparse.patch(case.model, pattern="agent", agents=4)
    first = _run(case, x)
    headsparse.patch(case.model, pattern="agent", agents=4)
    assert torch.equal(_run(case, x), first)
    headsparse.unpatch(case.model)
    headsparse.unpatch(case.model)  # a no-op
    assert _same_snapshot(before, _snapshot(case))
    assert torch.equal(_run(case, x), ref)


def test_one_token_window_isolates_one_patch(case):
    """Each patch sees only itself and prefix tokens only each other: changing the pixels of patch (r, c)
    changes exactly token prefix + r * W + c, which proves the prefix count and the grid order."""
    x = case.pixels()
    _, rows, cols = case.grid
    r, c = rows - 1, 1
    changed = x.clone()
    changed[:, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] += 1.0
    with headsparse.patch(case.model, pattern="neighborhood", kernel_size=1, text_dense=False, backend="masked"):
        delta = (_run(case, changed) - _run(case, x)).abs().amax(dim=(0, 2))
    moved = (delta > 1e-5).nonzero().flatten().tolist()
    assert moved == [case.prefix + r * cols + c]


HEADS = {
    "neighborhood": (Neighborhood(kernel_size=(1, 3, 3)),) * 2,
    "blocked": (Neighborhood(kernel_size=(1, 2, 2), stride=(1, 2, 2)),) * 2,
    "agent": (Agent(agents=4),) * 2,
    "agent+neighborhood": (Agent(agents=(1, 2, 3)), Neighborhood(kernel_size=(1, 3, 3))),
}


@pytest.mark.parametrize("kind", list(HEADS))
def test_sparse_heads_equal_the_reference(case, kind, monkeypatch):
    heads = HEADS[kind]
    x = case.pixels()
    dense = _run(case, x)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        reference_attention(heads, [case.geometry()]))
    expected = _run(case, x)
    monkeypatch.undo()
    with headsparse.patch(case.model, _plan(case, heads), backend="masked") as handle:
        out = _run(case, x)
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
    assert not torch.allclose(out, dense, atol=1e-4), "a sparse pattern must change the output"
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- plans, summary


def test_plan_file_round_trip_and_summary(tmp_path, capsys):
    case = _build("timm_vit_reg")
    x = case.pixels(batch=1)
    heads = (Agent(agents=4), Neighborhood(kernel_size=(1, 3, 3)))
    with headsparse.patch(case.model, _plan(case, heads), backend="masked", profile=True) as handle:
        out = _run(case, x)
        rows = handle.summary()
        path = handle.plan.save(tmp_path / "vit.json")
    printed = capsys.readouterr().out
    assert "VisionTransformer" in printed and "agent(agents=(1, 2, 2))" in printed
    assert [r["pattern"] for r in rows[:2]] == ["agent(agents=(1, 2, 2))", "neighborhood(kernel_size=(1, 3, 3))"]
    assert all(r["attention_ms"] > 0 for r in rows)
    with headsparse.patch(case.model, str(path), backend="masked"):
        assert torch.equal(_run(case, x), out)
    other = _build("timm_eva")
    with pytest.raises(ValueError, match="made for VisionTransformer, not Eva"):
        headsparse.patch(other.model, str(path))


def test_transformers_plan_records_config_hash_across_patching():
    case = _build("hf_vit")
    from headsparse.plugin.patch import config_hash

    before = config_hash(case.model)
    assert before is not None
    with headsparse.patch(case.model, pattern="agent", agents=4):
        assert config_hash(case.model) == before


def test_full_clip_model_patches_the_vision_tower_only():
    t = transformers
    tiny_text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                 "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 32, "patch_size": PATCH}
    torch.manual_seed(0)
    model = t.CLIPModel(t.CLIPConfig(text_config=tiny_text, vision_config=vision)).eval()
    ids, pixels = torch.tensor([[0, 5, 6, 1]]), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pixels)
        with headsparse.patch(model, pattern="agent", agents=4) as handle:
            assert [n for n, _ in handle.states["transformer"].modules] == [
                "vision_model.encoder.layers.0.self_attn", "vision_model.encoder.layers.1.self_attn"]
            assert model.config.text_config._attn_implementation == "sdpa"
            out = model(input_ids=ids, pixel_values=pixels)
        assert torch.equal(out.text_embeds, ref.text_embeds)
        assert not torch.allclose(out.image_embeds, ref.image_embeds)
        assert model.config.vision_config._attn_implementation == "sdpa"


# ---------------------------------------------------------------------------------------------- refusals


def test_unsupported_models_are_refused_and_left_alone():
    t = transformers
    text = t.CLIPTextModel(t.CLIPTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=100, bos_token_id=0, eos_token_id=1,
                                            pad_token_id=1))
    with pytest.raises(TypeError, match="not a vision encoder's attention"):
        headsparse.patch(text, pattern="agent")
    assert text.config._attn_implementation == "sdpa" and not headsparse.is_patched(text)
    with pytest.raises(TypeError, match="VisionTransformer"):
        headsparse.patch(nn.Sequential(nn.Linear(2, 2)), pattern="agent")

    case = _build("timm_vit_reg")

    class OtherAttention(type(case.model.blocks[1].attn)):
        pass

    case.model.blocks[1].attn.__class__ = OtherAttention
    before = _snapshot(case)
    with pytest.raises(TypeError, match=r"blocks\.1\.attn is a OtherAttention"):
        headsparse.patch(case.model, pattern="agent")
    assert _same_snapshot(before, _snapshot(case)) and not headsparse.is_patched(case.model)


def test_training_and_grad_run_the_original_attention():
    case = _build("timm_vit_reg")
    x = case.pixels(batch=1)
    ref = case.run(case.model, x)
    with headsparse.patch(case.model, pattern="agent", agents=4):
        out = case.run(case.model, x)  # autograd on: attention runs dense, gradients flow
        out.sum().backward()
    torch.testing.assert_close(out, ref)
    assert case.model.blocks[0].attn.qkv.weight.grad is not None


def test_eager_transformers_model_stays_eager():
    t = transformers
    torch.manual_seed(0)
    model = t.ViTModel(_hf_config(t.ViTConfig, attn_implementation="eager")).eval()
    assert model.config._attn_implementation == "eager"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
        with headsparse.patch(model, pattern="dense"):
            assert model.config._attn_implementation == "headsparse_eager"
            assert torch.equal(model(pixel_values=x).last_hidden_state, ref)
        assert model.config._attn_implementation == "eager"


def test_torch_compile_timm():
    case = _build("timm_vit_reg")
    x = case.pixels(batch=1)
    with torch.no_grad():
        dense = case.model(x)
        with headsparse.patch(case.model, pattern="agent", agents=4):
            eager = case.model(x)
            compiled = torch.compile(case.model)
            torch.testing.assert_close(compiled(x), eager, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(compiled(x), dense, atol=1e-5, rtol=1e-5)  # unpatched: recompiled
    assert not torch.allclose(eager, dense, atol=1e-4)
