"""``headsparse.search``: calibrate on a few dense runs, then assign a pattern to every head.

The pipeline (or transformer) is patched with a dense plan whose routers hand each self-attention
call to a :class:`Calibration`; after the runs, a :class:`CostModel` predicts each candidate's
time on this device and :func:`assign` picks, per step bucket, layer and head, the cheapest
candidate within the error budget. The result is an ordinary :class:`~headsparse.plan.Plan`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from headsparse.patterns import Dense, Pattern
from headsparse.patterns.cost import CostModel
from headsparse.plan import LayerPlan, ModelPlan, Phase, Plan
from headsparse.plugin import patch
from headsparse.plugin.patch import config_hash
from headsparse.search.assign import assign
from headsparse.search.calibrate import Calibration, search_candidates


def _pipeline_runs(target: Any, prompts: Sequence[str], steps: int, seeds: Sequence[int],
                   pipe_kwargs: dict[str, Any]) -> list[tuple[str, Callable[[], object]]]:
    runs = []
    for prompt in prompts:
        for seed in seeds:
            def run(prompt: str = prompt, seed: int = seed) -> object:
                gen = torch.Generator().manual_seed(seed)
                return target(prompt=prompt, num_inference_steps=steps, generator=gen, **pipe_kwargs)
            runs.append((json.dumps([prompt, seed, steps]), run))
    return runs


def search(
    target: Any,
    run: Callable[[], object] | Sequence[Callable[[], object]] | None = None,
    *,
    prompts: Sequence[str] = (),
    steps: int = 10,
    seeds: Sequence[int] = (0,),
    budget: float = 0.02,
    layer_budget: float | None = None,
    head_budget: float | None = None,
    step_buckets: Sequence[int] = (0,),
    candidates: Sequence[Pattern] | None = None,
    samples: int = 32,
    cost_model: CostModel | None = None,
    block_size: int = 128,
    cache: str | Path | None = None,
    progress: bool = True,
    **pipe_kwargs: Any,
) -> Plan:
    """A per-step-bucket, per-layer, per-head Plan for ``target`` within ``budget``.

    Calibration runs: ``run`` (callables that each run the model, e.g. transformer calls), or a
    pipeline called once per prompt and seed with ``num_inference_steps=steps`` and ``pipe_kwargs``.
    ``budget``: the mean over heads of each head's relative L2 attention-output error on sampled
    rows; ``layer_budget`` (default twice that) bounds each layer, ``head_budget`` (default three
    times) each head. ``step_buckets``: start steps
    of the phases (e.g. ``(0, 5)``: one assignment for steps 0-4, one from step 5). ``cache``: a
    file that keeps the calibration so an interrupted search resumes where it stopped.
    """
    start = time.perf_counter()
    if run is None:
        runs = _pipeline_runs(target, prompts, steps, seeds, pipe_kwargs)
    else:
        fns = [run] if callable(run) else list(run)
        runs = [(f"run {i}", fn) for i, fn in enumerate(fns)]
    if not runs:
        raise ValueError("search needs run= or at least one prompt")
    buckets = tuple(step_buckets)
    cost_model = cost_model or CostModel()
    handle = patch(target, pattern="dense", block_size=block_size)
    calibrations: dict[str, Calibration] = {}
    done: list[str] = []
    cache_path = Path(cache) if cache is not None else None
    if cache_path is not None and cache_path.is_file():
        saved = torch.load(cache_path, weights_only=False)
        calibrations = {k: Calibration.from_state_dict(v) for k, v in saved["calibrations"].items()}
        done = list(saved["done"])
    try:
        for key, state in handle.states.items():
            def observe(layer, step, q, k, v, geometry, key=key, state=state) -> None:
                cal = calibrations.get(key)
                if cal is None:
                    chosen = tuple(candidates) if candidates is not None else search_candidates(geometry)
                    if not any(isinstance(p, Dense) for p in chosen):
                        chosen = (Dense(), *chosen)
                    cal = calibrations[key] = Calibration(chosen, len(state.modules), state.plan.num_heads, buckets,
                                                          samples)
                cal.observe(layer, step, q, k, v, geometry)
            state.observer = observe
        todo = [(rid, fn) for rid, fn in runs if rid not in done]
        bar = _progress(len(todo), progress)
        for rid, fn in todo:
            handle.reset()
            with torch.no_grad():
                fn()
            done.append(rid)
            if cache_path is not None:
                torch.save({"calibrations": {k: c.state_dict() for k, c in calibrations.items()}, "done": done},
                           cache_path)
            bar(rid)
    finally:
        handle.unpatch()
    if not calibrations:
        raise RuntimeError("the calibration runs reached no self-attention call that headsparse could score")
    plans = {}
    predicted: dict[str, Any] = {}
    for key, cal in calibrations.items():
        state = handle.states[key]
        plans[key], predicted[key] = _plan_from(cal, state.plan, cost_model, (budget, layer_budget, head_budget),
                                                 block_size, config_hash(state.model))
    settings = {
        "budget": budget, "layer_budget": layer_budget or 2 * budget, "head_budget": head_budget or 3 * budget,
        "step_buckets": list(buckets),
        "samples": samples, "runs": done, "cost_model": cost_model.mode, "device": cost_model.device,
        "search_seconds": round(time.perf_counter() - start, 2), "predicted": predicted,
    }
    return Plan(plans, settings)


def _plan_from(cal: Calibration, template: ModelPlan, cost_model: CostModel,
               budgets: tuple[float, float | None, float | None], block: int,
               model_hash: str | None) -> tuple[ModelPlan, dict[str, Any]]:
    g = cal.geometry
    assert g is not None
    costs = cost_model.costs(cal.candidates, g, heads=cal.num_heads, head_dim=cal.head_dim, block=block)
    errors = cal.mean_errors()  # [B, L, H, C]
    dense = next(i for i, p in enumerate(cal.candidates) if isinstance(p, Dense))
    phases: list[list[Phase]] = [[] for _ in range(cal.num_layers)]
    report = []
    density = torch.tensor([_density(p, g, block) for p in cal.candidates], dtype=torch.float64)
    for b, start in enumerate(cal.buckets):
        seen = cal.counts[b] > 0  # [L]
        choice = torch.full((cal.num_layers, cal.num_heads), dense, dtype=torch.long)
        if seen.any():
            choice[seen] = assign(errors[b][seen], costs, *budgets)
        err = torch.where(seen[:, None], errors[b].gather(-1, choice[..., None])[..., 0], torch.zeros(()))
        report.append({"from_step": start, "mean_error": float(err.mean()),
                       "relative_time": float(costs[choice].mean()), "density": float(density[choice].mean()),
                       "layer_error": [round(float(x), 5) for x in err.mean(-1)]})
        for layer in range(cal.num_layers):
            heads = tuple(cal.candidates[int(c)] for c in choice[layer])
            if not phases[layer] or phases[layer][-1].heads != heads:
                phases[layer].append(Phase(start, heads))
    layers = tuple(LayerPlan(layer.name, tuple(ph)) for layer, ph in zip(template.layers, phases, strict=True))
    plan = ModelPlan(template.model, template.num_heads, layers, None, 0, (), block, config_hash=model_hash)
    info = {"geometry": [g.frames, g.height, g.width, g.text_len, g.text_position], "buckets": report,
            "candidates": len(cal.candidates), "peak_sample_bytes": cal.peak_bytes}
    return plan, info


def _density(pattern: Pattern, geometry: Any, block: int) -> float:
    """Fraction of (query, key) pairs the pattern keeps at the geometry."""
    return float(pattern.layout(geometry, block_m=block, block_n=block).density().mean())


def _progress(total: int, enabled: bool) -> Callable[[str], None]:
    if not enabled:
        return lambda _: None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with diffusers
        return lambda rid: print(f"calibrated {rid}")
    bar = tqdm(total=total, desc="headsparse search: calibration runs")
    return lambda _: bar.update(1)
