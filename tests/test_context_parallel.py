"""headsparse under diffusers context parallelism: 2 CPU processes (gloo) against one process.

One spawn of two workers runs every scenario (process start-up and imports dominate the cost);
each test then compares one scenario with the same model patched the same way in this process.
diffusers' context parallelism runs on CPU once ``torch.accelerator.device_count`` returns 1 (it
divides by it) and the model is called with ``return_dict=False``. Ring attention needs a forward op
that returns the log-sum-exp, which diffusers' native (CPU) backend does not; the ring scenario
swaps one in so that diffusers' ring itself runs, and checks that headsparse leaves it dense.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from gloo_workers import run_on_gloo

import headsparse
from headsparse.patterns import Neighborhood, Spatial, Temporal
from headsparse.plan import LayerPlan, ModelPlan, Phase, Plan
from headsparse.plugin.context_parallel import joint_order
from headsparse.search import CostModel
from headsparse.testing import tiny_planted_wan

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

WORLD = 2
BACKEND = "masked"  # eager and deterministic: the same executor in every process
BLOCK = 32
WAN_SIZE = {"frames": 2, "height": 8, "width": 16}  # latent: 2 x 4 x 8 = 64 tokens, 32 per rank
FLUX_SIZE = {"height": 4, "width": 4}  # 16 image tokens, 8 per rank
FLUX_TEXT = 6  # tiny_models gives 7 text tokens; diffusers splits each stream evenly, so keep 6 (3 per rank)
PLANTED = [["spatial", "temporal"]]
PLANTED_GRID = (2, 8, 32)  # latent; tokens (2, 4, 16) = 128, 64 per rank


def _per_head_plan(model: torch.nn.Module, heads: tuple, block_size: int = BLOCK) -> ModelPlan:
    """Every self-attention layer runs ``heads`` (one pattern per head)."""
    names = tuple(n for n, _ in headsparse.plugin.SPECS[type(model).__name__].self_attention_modules(model))
    layers = tuple(LayerPlan(name, (Phase(0, heads),)) for name in names)
    return ModelPlan(type(model).__name__, len(heads), layers, block_size=block_size)


def _wan_plan(model: torch.nn.Module) -> ModelPlan:
    return _per_head_plan(model, (Spatial(first_frame_sink=False), Temporal()))


def _flux_plan(model: torch.nn.Module) -> ModelPlan:
    # Head 0: a 3x3 window; head 1: its token row. Text stays dense (the default).
    return _per_head_plan(model, (Neighborhood(kernel_size=(1, 3, 3)), Neighborhood(kernel_size=(1, 1, 4))))


def _flux_inputs(case: Any) -> dict:
    inputs = case.make_inputs(**FLUX_SIZE)
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, :FLUX_TEXT]
    inputs["txt_ids"] = inputs["txt_ids"][:FLUX_TEXT]
    return inputs


def _planted_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, *PLANTED_GRID, generator=g), torch.tensor([900]), torch.randn(1, 5, 16, generator=g)


def _run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _sparse_calls(handle: Any) -> list[int]:
    return [s.sparse_calls for s in handle.states["transformer"].stats]


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _forward_op_with_lse(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                         scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                         _save_ctx: bool = True, _parallel_config: Any = None) -> Any:
    """diffusers' native forward op plus the log-sum-exp ring attention merges with (test scaffolding)."""
    q, k, v = (t.permute(0, 2, 1, 3) for t in (query, key, value))
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    out = (scores.softmax(-1) @ v).permute(0, 2, 1, 3)
    return (out, scores.logsumexp(-1).permute(0, 2, 1)) if return_lse else out


# ------------------------------------------------------------------------------------------------- the workers


def _scenario(rank: int, plan_path: str) -> dict[str, Any]:
    from diffusers import ContextParallelConfig
    from tiny_models import build

    results: dict[str, Any] = {}
    ulysses = ContextParallelConfig(ulysses_degree=WORLD)

    # Wan: parallelism first, then headsparse (a per-head plan, one pattern), then unpatched.
    wan = build("wan")
    inputs = wan.make_inputs(**WAN_SIZE)
    wan.model.enable_parallelism(config=ulysses)
    with headsparse.patch(wan.model, _wan_plan(wan.model), backend=BACKEND) as handle:
        results["wan_plan"] = _run(wan.model, inputs)
        results["wan_plan_sparse_calls"] = _sparse_calls(handle)
        results["wan_grid"] = handle.states["transformer"].grid
    with headsparse.patch(wan.model, pattern="neighborhood", kernel_size=(1, 3, 3), block_size=BLOCK,
                          backend=BACKEND) as handle:
        results["wan_pattern"] = _run(wan.model, inputs)
        results["wan_pattern_sparse_calls"] = _sparse_calls(handle)
    results["wan_dense"] = _run(wan.model, inputs)

    # FLUX (joint text + image): headsparse first, then parallelism; unpatching keeps the parallel config.
    flux = build("flux")
    inputs = _flux_inputs(flux)
    handle = headsparse.patch(flux.model, _flux_plan(flux.model), backend=BACKEND)
    flux.model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
    results["flux_plan"] = _run(flux.model, inputs)
    results["flux_sparse_calls"] = _sparse_calls(handle)
    results["flux_grid"] = handle.states["transformer"].grid
    handle.unpatch()
    results["flux_dense"] = _run(flux.model, inputs)

    # A plan searched on one process, applied unchanged.
    planted = tiny_planted_wan(PLANTED)
    planted.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
    x, t, text = _planted_inputs()
    with headsparse.patch(planted, plan_path, backend=BACKEND) as handle:
        with torch.no_grad():
            results["searched"] = planted(x, t, text, return_dict=False)[0]
        results["searched_sparse_calls"] = _sparse_calls(handle)
    # Online recognition: each rank decides for its own (planted spatial / temporal) head.
    with headsparse.patch(planted, "auto", backend=BACKEND, block_size=BLOCK) as handle:
        with torch.no_grad():
            results["auto"] = planted(x, t, text, return_dict=False)[0]
        results["auto_heads"] = [p.name for p in handle.states["transformer"].heads_now(0)]
        results["auto_sparse_calls"] = _sparse_calls(handle)
        try:
            handle.recognized_plan()
            results["auto_plan_error"] = None
        except RuntimeError as exc:
            results["auto_plan_error"] = str(exc)

    # Ring: diffusers' native CPU op cannot return the log-sum-exp ring attention needs.
    ring = build("wan")
    inputs = ring.make_inputs(**WAN_SIZE)
    ring.model.enable_parallelism(config=ContextParallelConfig(ring_degree=WORLD))
    try:
        _run(ring.model, inputs)
        results["ring_native_error"] = None
    except ValueError as exc:
        results["ring_native_error"] = str(exc)
    from diffusers.models import attention_dispatch

    native_op = attention_dispatch._native_attention_forward_op
    attention_dispatch._native_attention_forward_op = _forward_op_with_lse
    catcher = _Warnings()
    logging.getLogger("headsparse").addHandler(catcher)
    try:
        with headsparse.patch(ring.model, _wan_plan(ring.model), backend=BACKEND) as handle:
            results["ring_warned_at_patch"] = list(catcher.messages)
            results["ring"] = _run(ring.model, inputs)
            results["ring_sparse_calls"] = _sparse_calls(handle)
    finally:
        attention_dispatch._native_attention_forward_op = native_op
        logging.getLogger("headsparse").removeHandler(catcher)
    return results


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The workers' results per rank, plus the searched plan they applied."""
    out = tmp_path_factory.mktemp("cp")
    planted = tiny_planted_wan(PLANTED)
    x, t, text = _planted_inputs()

    def run() -> list[torch.Tensor]:
        with torch.no_grad():
            return [planted(x, t, text, return_dict=False)[0]]

    plan = headsparse.search(planted, run, budget=0.02, cost_model=CostModel("blocks"), block_size=BLOCK,
                             progress=False)
    plan_path = plan.save(out / "plan.json")
    ranks = run_on_gloo(_scenario, out, WORLD, (str(plan_path),))
    return {"ranks": ranks, "plan": plan, "plan_path": plan_path, "planted_input": (x, t, text)}


def _same_on_every_rank(cp: dict[str, Any], key: str) -> torch.Tensor:
    outs = [r[key] for r in cp["ranks"]]
    for other in outs[1:]:
        assert torch.equal(other, outs[0]), f"{key}: the ranks gathered different outputs"
    return outs[0]


def _close(cp_out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (cp_out - ref).abs().max().item()
    torch.testing.assert_close(cp_out, ref, atol=1e-5, rtol=1e-5)
    return diff


# --------------------------------------------------------------------------------------------------- the tests


def test_joint_order_puts_interleaved_tokens_back_in_model_order():
    from headsparse.patterns import Geometry

    g = Geometry(1, 2, 4, 4, "prefix")  # text 4 (2 per rank), grid 8 (4 per rank)
    gathered = torch.tensor([0, 1, 4, 5, 6, 7, 2, 3, 8, 9, 10, 11])  # model index at each gathered position
    assert torch.equal(gathered[joint_order(g, 2)], torch.arange(12))
    suffix = Geometry(1, 2, 4, 4, "suffix")  # grid then text, per rank
    gathered = torch.tensor([0, 1, 2, 3, 8, 9, 4, 5, 6, 7, 10, 11])
    assert torch.equal(gathered[joint_order(suffix, 2)], torch.arange(12))
    assert joint_order(Geometry(1, 2, 4), 2) is None and joint_order(Geometry(1, 2, 3, 3, "prefix"), 2) is None


def test_wan_per_head_plan_matches_one_process(cp):
    from tiny_models import build

    wan = build("wan")
    inputs = wan.make_inputs(**WAN_SIZE)
    dense = _run(wan.model, inputs)
    with headsparse.patch(wan.model, _wan_plan(wan.model), backend=BACKEND):
        ref = _run(wan.model, inputs)
    out = _same_on_every_rank(cp, "wan_plan")
    print("wan per-head plan: max diff vs one process", _close(out, ref))
    assert (ref - dense).abs().max() > 1e-3  # the plan is not dense
    for r in cp["ranks"]:
        assert r["wan_grid"] == (2, 4, 8)  # read from the unsplit input
        assert all(n > 0 for n in r["wan_plan_sparse_calls"]), r["wan_plan_sparse_calls"]
    torch.testing.assert_close(_same_on_every_rank(cp, "wan_dense"), dense, atol=1e-5, rtol=1e-5)


def test_wan_one_pattern_matches_one_process(cp):
    from tiny_models import build

    wan = build("wan")
    inputs = wan.make_inputs(**WAN_SIZE)
    with headsparse.patch(wan.model, pattern="neighborhood", kernel_size=(1, 3, 3), block_size=BLOCK, backend=BACKEND):
        ref = _run(wan.model, inputs)
    print("wan pattern: max diff vs one process", _close(_same_on_every_rank(cp, "wan_pattern"), ref))
    assert all(all(n > 0 for n in r["wan_pattern_sparse_calls"]) for r in cp["ranks"])


def test_online_recognition_decides_each_ranks_own_heads(cp):
    planted = tiny_planted_wan(PLANTED)
    x, t, text = cp["planted_input"]
    with headsparse.patch(planted, "auto", backend=BACKEND, block_size=BLOCK) as handle, torch.no_grad():
        ref = planted(x, t, text, return_dict=False)[0]
        heads = [p.name for p in handle.states["transformer"].heads_now(0)]
    assert heads == ["spatial", "temporal"]  # the planted heads, recognised in one process
    print("auto: max diff vs one process", _close(_same_on_every_rank(cp, "auto"), ref))
    for rank, r in enumerate(cp["ranks"]):
        assert r["auto_heads"] == [heads[rank]]  # rank r recognised global head r, and only it
        assert r["auto_sparse_calls"] == [1]
        assert "recognised for 1 of its 2 heads" in (r["auto_plan_error"] or "")


def test_flux_joint_attention_matches_one_process(cp):
    from tiny_models import build

    flux = build("flux")
    inputs = _flux_inputs(flux)
    assert FLUX_TEXT % WORLD == 0 and (FLUX_SIZE["height"] * FLUX_SIZE["width"]) % WORLD == 0
    dense = _run(flux.model, inputs)
    with headsparse.patch(flux.model, _flux_plan(flux.model), backend=BACKEND):
        ref = _run(flux.model, inputs)
    out = _same_on_every_rank(cp, "flux_plan")
    print("flux per-head plan: max diff vs one process", _close(out, ref))
    assert (ref - dense).abs().max() > 1e-3
    for r in cp["ranks"]:
        assert r["flux_grid"] == (1, 4, 4)
        assert all(n > 0 for n in r["flux_sparse_calls"]), r["flux_sparse_calls"]
    # Patched before enable_parallelism: unpatching keeps the parallel config diffusers set.
    torch.testing.assert_close(_same_on_every_rank(cp, "flux_dense"), dense, atol=1e-5, rtol=1e-5)


def test_plan_searched_on_one_process_applies_under_ulysses(cp):
    plan: Plan = cp["plan"]
    heads = {p.name for layer in plan.transformers["transformer"].layers for p in layer.phases[0].heads}
    assert heads - {"dense"}, f"the search chose only dense heads: {heads}"
    planted = tiny_planted_wan(PLANTED)
    x, t, text = cp["planted_input"]
    with headsparse.patch(planted, cp["plan_path"], backend=BACKEND), torch.no_grad():
        ref = planted(x, t, text, return_dict=False)[0]
    print("searched plan", sorted(heads), ": max diff vs one process", _close(_same_on_every_rank(cp, "searched"), ref))
    assert all(all(n > 0 for n in r["searched_sparse_calls"]) for r in cp["ranks"])


def test_ring_runs_dense_with_a_warning(cp):
    from tiny_models import build

    wan = build("wan")
    dense = _run(wan.model, wan.make_inputs(**WAN_SIZE))
    for r in cp["ranks"]:
        assert "return_lse" in (r["ring_native_error"] or ""), "diffusers' native op now runs ring on CPU"
        assert any("ring attention (ring_degree=2)" in m for m in r["ring_warned_at_patch"]), r["ring_warned_at_patch"]
        assert r["ring_sparse_calls"] == [0, 0]
    print("ring: max diff vs one-process dense", _close(_same_on_every_rank(cp, "ring"), dense))


def test_a_parallel_config_that_splits_nothing_runs_as_usual():
    from types import SimpleNamespace

    from tiny_models import build

    wan = build("wan")
    inputs = wan.make_inputs(**WAN_SIZE)
    with headsparse.patch(wan.model, _wan_plan(wan.model), backend=BACKEND) as handle:
        ref = _run(wan.model, inputs)
        single = SimpleNamespace(context_parallel_config=SimpleNamespace(ring_degree=1, ulysses_degree=1))
        for name in wan.self_attention:
            wan.model.get_submodule(name).processor._parallel_config = single
        handle.reset()
        assert torch.equal(_run(wan.model, inputs), ref)
        assert all(n > 0 for n in _sparse_calls(handle))


def test_forward_op_with_lse_matches_sdpa():
    q, k, v = torch.randn(3, 1, 5, 2, 4).unbind(0)
    out, lse = _forward_op_with_lse(None, q, k, v, return_lse=True)
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    assert lse.shape == (1, 5, 2)
