"""``patch`` / ``unpatch`` / ``summary``: the one-line front door for diffusers pipelines and ViTs.

``patch`` finds the pipeline's transformers, checks everything (model class, processors, plan
fit) before touching anything, then swaps each self-attention module's processor for a rebound
copy whose attention call goes through a router, and adds a forward pre-hook that reads the token
grid and the step. ``unpatch`` puts the original processor objects back and removes the hook.
Families without diffusers processors (timm, transformers) do the swap through their spec's
:class:`~headsparse.plugin.spec.AttentionAdapter`; everything else is shared.

Context parallelism (diffusers ``enable_parallelism``, before or after ``patch``): Ulysses runs
sparse; ring attention and ``ulysses_anything`` are not refused but run dense, with a warning
(here when the model already has its parallel config, else on its first attention call); see
:mod:`headsparse.plugin.context_parallel`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import nn

from headsparse.kernels.sparse_attention import Backend
from headsparse.patterns import Dense, Pattern, get_pattern
from headsparse.patterns.frame_masked import FrameMasked
from headsparse.patterns.recognize import Recognizer
from headsparse.plan import (
    DenseSteps,
    LayerPlan,
    ModelPlan,
    Phase,
    Plan,
    check_dense_steps,
    load_plan,
    resolve_dense_layers,
)
from headsparse.plugin import (  # noqa: F401  (registers the specs)
    diffusers_image,
    diffusers_unet,
    diffusers_video,
    vit_timm,
    vit_transformers,
)
from headsparse.plugin.context_parallel import cp_config, unsupported_reason
from headsparse.plugin.rebind import (
    attention_call_style,
    is_rebound,
    original_processor,
    rebind_processor,
    restore_processor,
)
from headsparse.plugin.runtime import (
    STATE_ATTR,
    AttentionRouter,
    LayerStats,
    StepTracker,
    TransformerState,
    layer_layout,
    make_pre_hook,
    routed_dispatch,
    routed_sdpa,
)
from headsparse.plugin.spec import ModelSpec, refusal_for, spec_for, supported_classes

PIPELINE_TRANSFORMERS = ("transformer", "transformer_2")


def _unwrap(module: Any) -> Any:
    """The module inside ``torch.compile``'s OptimizedModule (patching happens on the real one)."""
    return getattr(module, "_orig_mod", module)


def find_transformers(target: Any) -> dict[str, nn.Module]:
    """{"transformer": module, ...} for a pipeline, or {"transformer": target} for a model."""
    target = _unwrap(target)
    if isinstance(target, nn.Module):
        return {"transformer": target}
    found = {}
    for name in PIPELINE_TRANSFORMERS:
        module = _unwrap(getattr(target, name, None))
        if isinstance(module, nn.Module):
            found[name] = module
    if not found:
        raise TypeError(
            f"headsparse.patch expects a diffusers pipeline with a `transformer` or a transformer model; got "
            f"{type(target).__name__}. Supported transformer classes: {', '.join(supported_classes())}"
        )
    return found


def _check_supported(key: str, model: nn.Module) -> tuple[ModelSpec, list[tuple[str, nn.Module]]]:
    refused = refusal_for(model)
    if refused is not None:
        raise TypeError(f"headsparse does not support {type(model).__name__} ({key}): {refused}")
    spec = spec_for(model)
    if spec is None:
        raise TypeError(
            f"headsparse does not support {type(model).__name__} ({key}); supported classes: "
            f"{', '.join(supported_classes())}"
        )
    modules = spec.self_attention_modules(model)
    if not modules:
        raise TypeError(
            f"{type(model).__name__} ({key}) has no self-attention modules matching {spec.self_attention!r}"
        )
    spec.geometry_target(model)
    if spec.adapter is not None:
        for name, module in modules:
            spec.adapter.check(model, name, module)
        return spec, modules
    for name, module in modules:
        proc = original_processor(getattr(module, "processor", None))
        proc_name = type(proc).__name__
        if proc_name not in spec.processors or attention_call_style(proc) is None:
            raise TypeError(
                f"{type(model).__name__}.{name} uses the attention processor {proc_name}; headsparse patches "
                f"{', '.join(spec.processors)} on this class. Restore the default processor "
                "(e.g. transformer.set_default_attn_processor() where available) or unpatch other plugins first"
            )
    return spec, modules


def _module_heads(module: nn.Module) -> int:
    """A diffusers attention module's head count (``heads``; Kandinsky 5's modules call it ``num_heads``)."""
    heads = getattr(module, "heads", None)
    return int(heads if heads is not None else module.num_heads)


def _heads_of(model: nn.Module, modules: list[tuple[str, nn.Module]]) -> int:
    spec = spec_for(model)
    adapter = spec.adapter if spec is not None else None
    counts = {adapter.num_heads(m) if adapter is not None else _module_heads(m) for _, m in modules}
    if len(counts) != 1:
        raise TypeError(f"{type(model).__name__}: self-attention modules disagree on the head count: {sorted(counts)}")
    return counts.pop()


# Config keys that describe a checkpoint's origin or dtype, not its architecture (transformers).
_NOT_ARCHITECTURE = frozenset({"transformers_version", "architectures", "dtype", "torch_dtype", "name_or_path",
                               "output_attentions", "output_hidden_states", "return_dict"})


def config_hash(model: nn.Module) -> str | None:
    """A short hash of the model's architecture config (public keys of ``model.config``), if it has one."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers configs are no mappings
    items = {k: v for k, v in raw.items() if not str(k).startswith("_") and k not in _NOT_ARCHITECTURE}
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_plan(key: str, model: nn.Module, modules: list[tuple[str, nn.Module]], plan: ModelPlan) -> None:
    cls = type(model).__name__
    if plan.model != cls:
        raise ValueError(f"the plan for {key!r} was made for {plan.model}, not {cls}")
    own = config_hash(model)
    if plan.config_hash is not None and own is not None and plan.config_hash != own:
        raise ValueError(
            f"the plan for {cls} was made for a model with config hash {plan.config_hash}; this model's config "
            f"hashes to {own} (a different size or variant)"
        )
    if len(plan.layers) != len(modules):
        raise ValueError(
            f"the plan for {cls} has {len(plan.layers)} layers; this model has {len(modules)} self-attention layers"
        )
    heads = _heads_of(model, modules)
    if plan.num_heads != heads:
        raise ValueError(f"the plan for {cls} has {plan.num_heads} heads per layer; this model has {heads}")
    for i, (layer, (name, _)) in enumerate(zip(plan.layers, modules, strict=True)):
        if layer.name != name:
            raise ValueError(f"layer {i} of the plan for {cls} is {layer.name!r}; this model's layer {i} is {name!r}")


def _resolve_plan(
    plan: Plan | ModelPlan | str | Path | None, pattern: Pattern | str | None, pattern_params: dict[str, Any],
    checked: dict[str, tuple[nn.Module, ModelSpec, list[tuple[str, nn.Module]]]],
    dense_steps: DenseSteps | None, dense_layers: Sequence[int] | int | None, block_size: int | None,
) -> dict[str, ModelPlan]:
    if plan is not None and pattern is not None:
        raise ValueError("pass either plan= or pattern=, not both")
    if isinstance(plan, str) and plan == "auto":
        # Online recognition: the plan only carries the dense warm-up; the heads are decided at run time.
        plan, pattern = None, Dense()
    if plan is None and pattern is None:
        raise ValueError(
            "headsparse.patch needs a plan (Plan or path to a plan JSON) or a pattern name, e.g. pattern='spatial'"
        )
    if pattern_params and pattern is None:
        raise ValueError(f"pattern parameters {sorted(pattern_params)} were given without pattern=")
    if dense_steps is not None:
        check_dense_steps(dense_steps)
    plans: dict[str, ModelPlan] = {}
    if pattern is not None:
        if isinstance(pattern, str):
            chosen = get_pattern(pattern, **pattern_params)
        elif isinstance(pattern, Pattern):
            if pattern_params:
                raise ValueError("pattern parameters go into the Pattern object when pattern= is a Pattern")
            chosen = pattern
        else:
            raise TypeError(f"pattern must be a name or a Pattern, got {type(pattern).__name__}")
        for key, (model, _, modules) in checked.items():
            plans[key] = ModelPlan.uniform(
                type(model).__name__, [n for n, _ in modules], _heads_of(model, modules), chosen,
                dense_steps=dense_steps or 0, dense_layers=dense_layers or (), block_size=block_size or 128,
            )
        return plans
    if isinstance(plan, (str, Path)):
        plan = load_plan(plan)
    if isinstance(plan, ModelPlan):
        if len(checked) != 1:
            raise ValueError(
                f"a single-model plan was given for {len(checked)} transformers ({', '.join(checked)}); use a Plan"
            )
        plan = Plan({next(iter(checked)): plan})
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a Plan, a ModelPlan, a path or 'auto'; got {type(plan).__name__}")
    missing = [k for k in checked if k not in plan.transformers]
    if len(checked) == 1 and len(plan.transformers) == 1:
        missing = []
        plan = Plan({next(iter(checked)): next(iter(plan.transformers.values()))}, plan.settings)
    if missing:
        raise ValueError(f"the plan has entries for {sorted(plan.transformers)} but not for {missing}")
    for key, (model, _, modules) in checked.items():
        mp = plan.transformers[key]
        _check_plan(key, model, modules, mp)
        overrides: dict[str, Any] = {}
        if dense_steps is not None:
            overrides["dense_steps"] = dense_steps
        if dense_layers is not None:
            overrides["dense_layers"] = resolve_dense_layers(dense_layers, len(mp.layers))
        if block_size is not None:
            overrides["block_size"] = block_size
        plans[key] = ModelPlan(**{**mp.__dict__, **overrides}) if overrides else mp
    return plans


class PatchHandle:
    """What ``patch`` returns: unpatch it, use it as a context manager, print its summary."""

    def __init__(self, target: Any, states: dict[str, TransformerState]) -> None:
        self.target = target
        self.states = states

    @property
    def plan(self) -> Plan:
        return Plan({k: s.plan for k, s in self.states.items()})

    @property
    def step(self) -> int:
        return max(s.step for s in self.states.values())

    def reset(self) -> None:
        """Start step counting (and profiling) afresh, e.g. between two generations."""
        for state in self.states.values():
            state.tracker.reset()
            state.stats = [LayerStats() for _ in state.modules]

    def unpatch(self) -> None:
        unpatch(self.target)

    def recognized_plan(self) -> Plan:
        """In auto mode: the heads recognised so far as a static Plan (dense where none yet)."""
        plans = {}
        for key, state in self.states.items():
            layers = []
            for i, (name, _) in enumerate(state.modules):
                decision = state.decisions.get(i)
                heads = decision.recognition.heads if decision else (Dense(),) * state.plan.num_heads
                if len(heads) != state.plan.num_heads:
                    raise RuntimeError(
                        f"{key} layer {i} was recognised for {len(heads)} of its {state.plan.num_heads} heads: under "
                        "Ulysses context parallelism each process recognises only its own heads; recognise on one "
                        "process to save a plan"
                    )
                layers.append(LayerPlan(name, (Phase(0, heads),)))
            p = state.plan
            plans[key] = ModelPlan(p.model, p.num_heads, tuple(layers), p.grid, p.dense_steps, p.dense_layers,
                                   p.block_size)
        return Plan(plans, {"recognizer": repr(next(iter(self.states.values())).recognizer)})

    def summary(self, *, print_table: bool = True) -> list[dict[str, Any]]:
        return summary(self.target, print_table=print_table)

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpatch()


def _step_count_source(target: Any, num_inference_steps: int | None) -> Callable[[], int | None] | None:
    """Where the run's step count comes from: the argument, else the pipeline's scheduler."""
    if num_inference_steps is not None:
        return lambda: num_inference_steps
    scheduler = getattr(_unwrap(target), "scheduler", None)
    if scheduler is None:
        return None

    def from_scheduler() -> int | None:
        n = getattr(scheduler, "num_inference_steps", None)
        if n is None and getattr(scheduler, "timesteps", None) is not None:
            n = len(scheduler.timesteps)
        return n

    return from_scheduler


def patch(
    target: Any,
    plan: Plan | ModelPlan | str | Path | None = None,
    *,
    pattern: Pattern | str | None = None,
    dense_steps: DenseSteps | None = None,
    dense_layers: Sequence[int] | int | None = None,
    block_size: int | None = None,
    backend: Backend = "auto",
    profile: bool = False,
    num_inference_steps: int | None = None,
    recognizer: Recognizer | None = None,
    **pattern_params: Any,
) -> PatchHandle:
    """Run the self-attention of ``target`` (a diffusers pipeline or transformer, or a timm /
    transformers Vision Transformer: see ``supported_classes()``) sparsely.

    ``plan``: a Plan, a ModelPlan or a path to a plan JSON. Or ``pattern``: one pattern (a name
    with ``**pattern_params``, or a Pattern) for every head. Or ``plan="auto"``, the default when
    neither is given (``headsparse.patch(pipe)``): every head is recognised online (``recognizer``
    sets the error bound, sampling and re-recognition interval; see
    :class:`headsparse.patterns.recognize.Recognizer`). ``dense_steps``: leading denoising
    steps run dense (an int, or a fraction of the steps); ``dense_layers``: the first N layers (an
    int) or the listed layer indices run dense. Patching again replaces the previous patch.
    Everything is checked before the model is touched.
    """
    transformers = find_transformers(target)
    checked = {}
    for key, model in transformers.items():
        spec, modules = _check_supported(key, model)
        checked[key] = (model, spec, modules)
    if plan is None and pattern is None:
        plan = "auto"
    auto = isinstance(plan, str) and plan == "auto"
    if recognizer is not None and not auto:
        raise ValueError("recognizer= is only used with plan='auto'")
    if auto:
        recognizer = recognizer or Recognizer()
    plans = _resolve_plan(plan, pattern, pattern_params, checked, dense_steps, dense_layers, block_size)
    if backend not in ("auto", "triton", "grouped", "flex", "masked"):
        raise ValueError(f"backend must be 'auto', 'triton', 'grouped', 'flex' or 'masked'; got {backend!r}")
    steps_of_run = _step_count_source(target, num_inference_steps)
    for key, model_plan in plans.items():
        frac = model_plan.dense_steps
        if isinstance(frac, float) and frac > 0 and steps_of_run is None:
            raise ValueError(
                f"dense_steps={frac} is a fraction of the denoising steps; patching a bare transformer ({key}) "
                "needs num_inference_steps= (or patch the pipeline)"
            )

    unpatch(target)  # idempotent: a second patch replaces the first
    tracker = StepTracker(steps_of_run)
    states = {}
    for key, (model, spec, modules) in checked.items():
        state = TransformerState(key, spec, plans[key], tracker, modules, backend=backend, profile=profile,
                                 recognizer=recognizer, model=model)
        state.stats = [LayerStats() for _ in modules]
        for layer, (_, module) in enumerate(modules):
            if spec.adapter is not None:
                state.routers.append(spec.adapter.install(state, layer, module))
                continue
            proc = module.processor
            style = attention_call_style(proc)
            if style == "dispatch":
                original_fn = type(proc).__call__.__globals__["dispatch_attention_fn"]
                router = AttentionRouter(state, layer, style, original_fn)
                module.processor = rebind_processor(proc, dispatch=routed_dispatch, router=router)
            else:
                router = AttentionRouter(state, layer, "sdpa", F.scaled_dot_product_attention)
                module.processor = rebind_processor(proc, sdpa=routed_sdpa, router=router)
            state.routers.append(router)
        state.hook = spec.geometry_target(model).register_forward_pre_hook(make_pre_hook(state), with_kwargs=True)
        cp = cp_config(getattr(model, "_parallel_config", None))
        why = None if cp is None else unsupported_reason(cp)
        if why is not None:
            state.warn_once(f"running dense under context parallelism: {why}")
        setattr(model, STATE_ATTR, state)
        states[key] = state
    return PatchHandle(target, states)


def unpatch(target: Any) -> None:
    """Restore the original processors and remove headsparse's hook (a no-op when not patched)."""
    if isinstance(target, PatchHandle):
        target = target.target
    for model in find_transformers(target).values():
        state: TransformerState | None = getattr(model, STATE_ATTR, None)
        if state is None:
            continue
        for _, module in state.modules:
            if state.spec.adapter is not None:
                state.spec.adapter.restore(module)
            elif is_rebound(module.processor):
                # What diffusers set on the copy since (enable_parallelism, set_attention_backend) stays in force.
                module.processor = restore_processor(module.processor)
        for router in state.routers:
            router.release()
        if state.hook is not None:
            state.hook.remove()
        delattr(model, STATE_ATTR)


def is_patched(target: Any) -> bool:
    return any(hasattr(m, STATE_ATTR) for m in find_transformers(target).values())


def summary(target: Any, *, print_table: bool = True) -> list[dict[str, Any]]:
    """Per transformer, layer and head: the pattern now in force, its density, and attention time.

    Density is measured on the last geometry the layer ran sparsely (None before that); time is
    the layer's mean attention milliseconds per call when patched with ``profile=True``. Under
    Ulysses context parallelism each process reports what it sees: every head of a static plan, but
    in auto mode only the heads it recognised itself (its ``H / N``, numbered from 0).
    """
    if isinstance(target, PatchHandle):
        target = target.target
    rows: list[dict[str, Any]] = []
    lines = []
    for key, model in find_transformers(target).items():
        state: TransformerState | None = getattr(model, STATE_ATTR, None)
        if state is None:
            continue
        lines.append(f"{key}: {state.spec.class_name}, step {state.step}, grid {state.grid}")
        for layer, ((name, _), stats) in enumerate(zip(state.modules, state.stats, strict=True)):
            heads = state.heads_now(layer)
            density = None
            decision = state.decisions.get(layer)
            if decision is not None and state.auto_now(layer):
                density = decision.layout.density()[0].tolist()
            elif stats.geometry is not None and not any(getattr(p, "dynamic", False) for p in heads):
                table = stats.frame_table  # the model's own frame mask, which the heads ran intersected with
                ran = heads if table is None else tuple(FrameMasked(inner=p, allowed=table) for p in heads)
                lay = layer_layout(ran, stats.geometry, state.plan.block_size, "cpu")
                density = lay.density()[0].tolist()
            ms = 1000 * stats.seconds / stats.calls if stats.calls else None
            rec_ms = 1000 * stats.recognition_seconds if stats.recognitions else None
            for h, p in enumerate(heads):
                rows.append({
                    "transformer": key, "layer": layer, "module": name, "head": h, "pattern": p.label(),
                    "density": None if density is None else density[h], "attention_ms": ms,
                    "recognitions": stats.recognitions, "recognition_ms": rec_ms,
                })
            counts: dict[str, int] = {}
            for p in heads:
                counts[p.label()] = counts.get(p.label(), 0) + 1
            mix = ", ".join(f"{n}x {lab}" for lab, n in counts.items())
            dens = "" if density is None else f"  density {sum(density) / len(density):.3f}"
            time_s = "" if ms is None else f"  {ms:.2f} ms/call"
            rec_s = "" if rec_ms is None else f"  recognised {stats.recognitions}x in {rec_ms:.1f} ms"
            lines.append(f"  {layer:3d} {name}: {mix}{dens}{time_s}{rec_s}")
    if print_table:
        print("\n".join(lines))
    return rows
