"""Agent attention: the executor against a direct reference, its prefix/text rule, parameters, plans, and
its use through headsparse.patch on diffusers image models (FLUX, SD3), alone and mixed with block-sparse heads.

``reference_agent`` and ``reference_attention`` are the references the ViT tests use too.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import build

import headsparse
from headsparse.patterns import Agent, Dense, Geometry, Neighborhood, Pattern, candidates, get_pattern
from headsparse.patterns.agent import agent_attention
from headsparse.patterns.recognize import default_candidates
from headsparse.plan import LayerPlan, ModelPlan, Phase, Plan
from headsparse.search import search_candidates

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")]

REAL_SDPA = torch.nn.functional.scaled_dot_product_attention


# ---------------------------------------------------------------------------------------------- references


def _regions(length: int, parts: int) -> list[range]:
    """Adaptive average pooling's cells along one axis: [floor(i L / n), ceil((i + 1) L / n))."""
    return [range(i * length // parts, -(-(i + 1) * length // parts)) for i in range(parts)]


def reference_agent(q, k, v, g: Geometry, pattern: Agent, scale: float | None = None) -> torch.Tensor:
    """Agent attention written out token by token in float64 (see headsparse/patterns/agent.py)."""
    dtype = q.dtype
    q, k, v = (t.double() for t in (q, k, v))
    batch, heads, length, dim = q.shape
    s = scale if scale is not None else dim**-0.5
    grid = list(range(g.video_start, g.video_start + g.video_len))
    text = [i for i in range(length) if i not in set(grid)]
    pools = [min(a, n) for a, n in zip(pattern.agents, (g.frames, g.height, g.width), strict=True)]

    def token(t: int, y: int, x: int) -> int:
        return g.video_start + (t * g.height + y) * g.width + x

    out = torch.zeros(batch, heads, length, v.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            qs, ks, vs = q[b, h], k[b, h], v[b, h]
            agents = torch.stack([
                qs[[token(t, y, x) for t in ts for y in ys for x in xs]].mean(0)
                for ts in _regions(g.frames, pools[0]) for ys in _regions(g.height, pools[1])
                for xs in _regions(g.width, pools[2])
            ])
            gather = agents @ ks[grid].T * s
            agent_values = torch.softmax(gather, -1) @ vs[grid]
            for i in grid:
                weights = torch.softmax(qs[i] @ agents.T * s**pattern.broadcast_scale_power, -1)
                o = weights @ agent_values
                if text and pattern.text_dense:
                    logits = qs[i] @ ks[text].T * s
                    gate = torch.sigmoid((weights * torch.logsumexp(gather, -1)).sum() - torch.logsumexp(logits, -1))
                    o = gate * o + (1 - gate) * (torch.softmax(logits, -1) @ vs[text])
                out[b, h, i] = o + pattern.shortcut * vs[i]
            for i in text:
                keys = list(range(length)) if pattern.text_dense else text
                out[b, h, i] = torch.softmax(qs[i] @ ks[keys].T * s, -1) @ vs[keys]
    return out.to(dtype)


def reference_attention(heads: tuple[Pattern, ...], geometries: list[Geometry]):
    """An SDPA stand-in computing each head's reference: agent by ``reference_agent``, the others as dense
    attention under ``pattern.dense_mask``. The geometry is chosen by sequence length; other calls pass through."""
    by_length = {g.seq_len: g for g in geometries}

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        q, k, v = query, key, value
        g = by_length.get(q.shape[2])
        if g is None or k.shape[2] != q.shape[2] or q.shape[1] != len(heads):
            return REAL_SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                             **kwargs)
        assert attn_mask is None and not dropout_p and not is_causal
        outs = []
        for h, p in enumerate(heads):
            qh, kh, vh = q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1]
            if isinstance(p, Agent):
                outs.append(reference_agent(qh, kh, vh, g, p, scale))
            elif isinstance(p, Dense):
                outs.append(REAL_SDPA(qh, kh, vh, scale=scale))
            else:
                outs.append(REAL_SDPA(qh, kh, vh, attn_mask=p.dense_mask(g), scale=scale))
        return torch.cat(outs, 1)

    return sdpa


def _qkv(g: Geometry, batch: int = 2, heads: int = 2, dim: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, g.seq_len, dim, generator=gen) for _ in range(3))


# ---------------------------------------------------------------------------------------------- the executor


@pytest.mark.parametrize(
    "geometry,pattern",
    [
        (Geometry(1, 5, 7), Agent(agents=4)),
        (Geometry(1, 4, 6, 3, "prefix"), Agent(agents=9)),
        (Geometry(1, 3, 5, 4, "suffix"), Agent(agents=4)),
        (Geometry(3, 4, 5), Agent(agents=(2, 2, 2))),
        (Geometry(2, 3, 4, 2, "prefix"), Agent(agents=(1, 2, 3), text_dense=False)),
        (Geometry(1, 3, 5, 1, "prefix"), Agent()),  # 7x7 agents clipped to the 3x5 grid
        (Geometry(1, 4, 4, 2, "prefix"), Agent(agents=4, broadcast_scale_power=1.0, shortcut=0.0)),
    ],
    ids=["image", "prefix", "suffix", "video", "text_apart", "clipped", "plain"],
)
def test_agent_attention_matches_reference(geometry, pattern):
    q, k, v = _qkv(geometry)
    out = agent_attention(q, k, v, geometry, pattern)
    torch.testing.assert_close(out, reference_agent(q, k, v, geometry, pattern), atol=2e-6, rtol=1e-5)
    scaled = agent_attention(q, k, v, geometry, pattern, scale=0.2)
    torch.testing.assert_close(scaled, reference_agent(q, k, v, geometry, pattern, 0.2), atol=2e-6, rtol=1e-5)


def test_agent_attention_bf16_close_to_fp32():
    g = Geometry(1, 6, 6, 2, "prefix")
    q, k, v = _qkv(g, dim=16)
    exact = agent_attention(q, k, v, g, Agent(agents=9))
    low = agent_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, Agent(agents=9))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, atol=3e-2, rtol=3e-2)


def test_prefix_keys_are_kept_exactly():
    """A prefix key that dominates every query's logits dominates the output, as it would densely; a prefix
    key no query looks at leaves the pure agent output (plus the shortcut)."""
    g = Geometry(1, 4, 4, 1, "prefix")
    q, k, v = _qkv(g, batch=1, heads=1, dim=8)
    pattern = Agent(agents=4, shortcut=0.0)
    grid = slice(1, None)
    u = torch.nn.functional.normalize(torch.randn(8), dim=0)
    q = q + 3 * u                                  # every query shares a direction ...
    k_hot, k_cold = k.clone(), k.clone()
    k_hot[:, :, 0] = 30 * u                        # ... so it scores this key far above the others
    k_cold[:, :, 0] = -30 * u                      # ... and this one far below
    hot = agent_attention(q, k_hot, v, g, pattern)
    dense_hot = REAL_SDPA(q, k_hot, v)
    torch.testing.assert_close(hot[:, :, grid], dense_hot[:, :, grid], atol=1e-3, rtol=1e-3)
    cold = agent_attention(q, k_cold, v, g, pattern)
    no_text = agent_attention(q[:, :, grid], k[:, :, grid], v[:, :, grid], Geometry(1, 4, 4), pattern)
    torch.testing.assert_close(cold[:, :, grid], no_text, atol=1e-4, rtol=1e-4)
    # Prefix queries are exact dense attention.
    torch.testing.assert_close(hot[:, :, :1], dense_hot[:, :, :1])


def test_agent_attention_rejects_bad_inputs():
    g = Geometry(1, 3, 3)
    q, k, v = _qkv(g)
    with pytest.raises(ValueError, match="q has 9 tokens"):
        agent_attention(q, k, v, Geometry(1, 2, 5), Agent(agents=4))
    with pytest.raises(TypeError, match="must be an Agent"):
        agent_attention(q, k, v, g, Dense())


# ---------------------------------------------------------------------------------------------- the pattern


def test_parameters_and_errors():
    assert get_pattern("agent", agents=64).agents == (1, 8, 8)
    assert Agent(agents=[2, 3, 3]).agents == (2, 3, 3)
    assert Agent().pool_shape(Geometry(4, 20, 30)) == (1, 7, 7)
    assert Agent(agents=(2, 8, 8)).pool_shape(Geometry(1, 5, 30)) == (1, 5, 8)
    for bad, message in [
        ({"agents": 50}, "agent.agents=50 must be a perfect square"),
        ({"agents": (1, 0, 2)}, "agent.agents must be"),
        ({"agents": True}, "agent.agents must be"),
        ({"broadcast_scale_power": -1}, "agent.broadcast_scale_power"),
        ({"shortcut": "x"}, "agent.shortcut"),
    ]:
        with pytest.raises(ValueError, match=message):
            Agent(**bad)
    with pytest.raises(TypeError, match="not a block-sparse Layout"):
        Agent().layout(Geometry(1, 4, 4))
    with pytest.raises(TypeError, match="no token mask"):
        Agent().dense_mask(Geometry(1, 4, 4))


def test_search_and_recognition_leave_agent_out():
    g = Geometry(1, 8, 8, 1, "prefix")
    assert any(p.name == "agent" for p in candidates())
    assert all(p.name != "agent" for p in search_candidates(g))
    assert all(p.name != "agent" for p in default_candidates(g))


def test_plan_round_trip_with_agent_heads(tmp_path):
    heads = (Agent(agents=(2, 4, 4), shortcut=0.0), Neighborhood(kernel_size=(1, 3, 3)))
    layers = tuple(LayerPlan(f"blocks.{i}.attn", (Phase(0, heads),)) for i in range(2))
    plan = Plan({"transformer": ModelPlan("VisionTransformer", 2, layers, block_size=64)})
    loaded = headsparse.load_plan(plan.save(tmp_path / "agent.json"))
    assert loaded == plan
    assert loaded.transformers["transformer"].layers[0].phases[0].heads[0].agents == (2, 4, 4)


# ---------------------------------------------------------------------------------------------- diffusers image models

GRIDS = {"flux": (3, 5), "sd3": (3, 5)}


def _image_case(name: str):
    case = build(name)
    rows, cols = GRIDS[name]
    ph = case.patch[1]
    inputs = case.make_inputs(batch=2, height=rows * ph, width=cols * ph)
    g = Geometry(1, rows, cols, case.text_len, case.text_position)  # type: ignore[arg-type]
    return case, inputs, g


def _run(case, inputs):
    with torch.no_grad():
        return case.model(**inputs, return_dict=False)[0]


@pytest.mark.parametrize("name", ["flux", "sd3"])
@pytest.mark.parametrize("mixed", [False, True], ids=["agent", "agent+neighborhood"])
def test_diffusers_image_models_run_agent_heads(name, mixed, monkeypatch):
    case, inputs, g = _image_case(name)
    heads: tuple[Pattern, ...] = (Agent(agents=4), Neighborhood(kernel_size=(1, 3, 3)) if mixed else Agent(agents=4))
    dense = _run(case, inputs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", reference_attention(heads, [g]))
    expected = _run(case, inputs)
    monkeypatch.undo()
    names = [n for n, _ in headsparse.plugin.SPECS[type(case.model).__name__].self_attention_modules(case.model)]
    layers = tuple(LayerPlan(n, (Phase(0, heads),)) for n in names)
    plan = ModelPlan(type(case.model).__name__, 2, layers, block_size=32)
    with headsparse.patch(case.model, plan, backend="masked") as handle:
        out = _run(case, inputs)
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
        rows = handle.summary(print_table=False)
    assert rows[0]["pattern"] == "agent(agents=(1, 2, 2))"
    assert not torch.allclose(out, dense, atol=1e-4)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_run(case, inputs), dense, atol=0, rtol=0)


def test_agent_pool_cells_are_square_per_frame():
    assert Agent(agents=49).agents == (1, 7, 7) and math.prod(Agent(agents=64).agents) == 64


# ---------------------------------------------------------------------------------------------- SD UNet attn1


def _tiny_unet(heads: int | tuple[int, int] = 2) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=heads, norm_num_groups=8,
    ).eval()


def test_unet_attn1_runs_agent_heads_per_resolution_level(monkeypatch):
    """Latent 8x10: attn1 runs at 8x10 (80 tokens) and 4x5 (20 tokens); attn2 (7 text tokens) is untouched."""
    unet = _tiny_unet()
    g = torch.Generator().manual_seed(0)
    inputs = {"sample": torch.randn(2, 4, 8, 10, generator=g), "timestep": torch.tensor([500, 500]),
              "encoder_hidden_states": torch.randn(2, 7, 16, generator=g)}

    def run():
        with torch.no_grad():
            return unet(**inputs, return_dict=False)[0]

    heads: tuple[Pattern, ...] = (Agent(agents=4), Neighborhood(kernel_size=(1, 3, 3)))
    dense = run()
    processors = dict(unet.attn_processors)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        reference_attention(heads, [Geometry(1, 8, 10), Geometry(1, 4, 5)]))
    expected = run()
    monkeypatch.undo()
    names = [n for n, _ in headsparse.plugin.SPECS["UNet2DConditionModel"].self_attention_modules(unet)]
    assert len(names) == 7 and all(n.endswith("attn1") for n in names)
    plan = ModelPlan("UNet2DConditionModel", 2, tuple(LayerPlan(n, (Phase(0, heads),)) for n in names), block_size=32)
    with headsparse.patch(unet, plan, backend="masked") as handle:
        out = run()
        stats = handle.states["transformer"].stats
        assert all(s.sparse_calls > 0 for s in stats)
        assert {(s.geometry.height, s.geometry.width) for s in stats} == {(8, 10), (4, 5)}
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, dense, atol=1e-4)
    assert all(p is processors[k] for k, p in unet.attn_processors.items())
    with headsparse.patch(unet, pattern="dense"):
        assert torch.equal(run(), dense)


def test_unet_with_per_level_head_counts_is_refused():
    unet = _tiny_unet(heads=(2, 4))  # SDXL-like: heads differ per level, a Plan has one head count
    with pytest.raises(TypeError, match="disagree on the head count"):
        headsparse.patch(unet, pattern="agent")
    assert not headsparse.is_patched(unet)
