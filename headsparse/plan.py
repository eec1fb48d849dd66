"""Plan: which pattern every head of every self-attention layer runs, and from which step.

A Plan is data, not code: versioned JSON that a person can read and edit, written by the offline
search (or built in one line with :meth:`ModelPlan.uniform`) and read by the plugin. It records
the model class, head count, the self-attention modules in order, the dense warm-up, and
optionally the token grid it was made for, so that applying it to another model is refused with
the mismatch named instead of silently running the wrong heads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headsparse.patterns import Dense, Pattern, get_pattern

PLAN_FORMAT = "headsparse-plan"
PLAN_VERSION = 1
# Query/key block sizes the executors run: masks pack into 32-bit words per row of a block, and
# every shipped Triton launch config is checked for these (tests/test_gpu_static.py).
BLOCK_SIZES = (32, 64, 128)


def pattern_to_dict(pattern: Pattern) -> dict[str, Any]:
    """{"pattern": name, **parameters} with tuples written as lists."""
    return pattern.to_dict()


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def pattern_from_dict(spec: Mapping[str, Any] | str) -> Pattern:
    """Inverse of :func:`pattern_to_dict`; a bare name means the pattern with default parameters."""
    if isinstance(spec, str):
        return get_pattern(spec)
    if not isinstance(spec, Mapping) or "pattern" not in spec:
        raise ValueError(f"a head entry must be a pattern name or a dict with a 'pattern' key, got {spec!r}")
    params = {k: _tuples(v) for k, v in spec.items() if k != "pattern"}
    return get_pattern(spec["pattern"], **params)


@dataclass(frozen=True)
class Phase:
    """From ``from_step`` on (until the next phase), head h of the layer runs ``heads[h]``."""

    from_step: int
    heads: tuple[Pattern, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.from_step, int) or self.from_step < 0:
            raise ValueError(f"Phase.from_step must be an integer >= 0, got {self.from_step!r}")
        if not self.heads:
            raise ValueError("Phase.heads is empty")
        for h, p in enumerate(self.heads):
            if not isinstance(p, Pattern):
                raise TypeError(f"Phase.heads[{h}] must be a Pattern, got {type(p).__name__}")


@dataclass(frozen=True)
class LayerPlan:
    """One self-attention module (by its name inside the transformer) and its per-step phases."""

    name: str
    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError(f"layer {self.name!r} has no phases")
        starts = [p.from_step for p in self.phases]
        if starts[0] != 0 or starts != sorted(set(starts)):
            raise ValueError(f"layer {self.name!r}: phases must start at step 0 and increase, got {starts}")
        counts = {len(p.heads) for p in self.phases}
        if len(counts) != 1:
            raise ValueError(f"layer {self.name!r}: phases disagree on the head count: {sorted(counts)}")

    @property
    def num_heads(self) -> int:
        return len(self.phases[0].heads)

    def heads_at(self, step: int) -> tuple[Pattern, ...]:
        chosen = self.phases[0]
        for phase in self.phases:
            if phase.from_step <= step:
                chosen = phase
        return chosen.heads


DenseSteps = int | float


@dataclass(frozen=True)
class ModelPlan:
    """The plan of one transformer (a pipeline may have two, e.g. Wan 2.2)."""

    model: str
    num_heads: int
    layers: tuple[LayerPlan, ...]
    grid: tuple[int, int, int] | None = None
    dense_steps: DenseSteps = 0
    dense_layers: tuple[int, ...] = ()
    block_size: int = 128
    # Hash of the model's architecture config (see headsparse.plugin.patch.config_hash), if recorded.
    config_hash: str | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError(f"the plan for {self.model} has no layers")
        for i, layer in enumerate(self.layers):
            if layer.num_heads != self.num_heads:
                raise ValueError(
                    f"layer {i} ({layer.name}) of the plan has {layer.num_heads} heads, the plan says {self.num_heads}"
                )
        check_dense_steps(self.dense_steps)
        bad = [i for i in self.dense_layers if not 0 <= i < len(self.layers)]
        if bad:
            raise ValueError(f"dense_layers {bad} are outside the plan's {len(self.layers)} layers")
        check_block_size(self.block_size)
        if self.grid is not None and (len(self.grid) != 3 or any(int(n) < 1 for n in self.grid)):
            raise ValueError(f"grid must be (frames, height, width) in tokens, got {self.grid!r}")

    @classmethod
    def uniform(
        cls, model: str, layer_names: Sequence[str], num_heads: int, pattern: Pattern, *,
        dense_steps: DenseSteps = 0, dense_layers: Sequence[int] | int = (), block_size: int = 128,
        grid: tuple[int, int, int] | None = None,
    ) -> ModelPlan:
        """Every head of every layer runs ``pattern`` (after the dense warm-up)."""
        heads = (pattern,) * num_heads
        layers = tuple(LayerPlan(name, (Phase(0, heads),)) for name in layer_names)
        return cls(model, num_heads, layers, grid, dense_steps, resolve_dense_layers(dense_layers, len(layers)),
                   block_size)

    def dense_step_count(self, num_steps: int | None) -> int:
        """How many leading denoising steps run dense, given the run's step count (for a fraction)."""
        if isinstance(self.dense_steps, int):
            return self.dense_steps
        if num_steps is None:
            raise ValueError(
                f"dense_steps={self.dense_steps} is a fraction of the denoising steps, but the step count is "
                "unknown: patch the pipeline (not only its transformer) or pass num_inference_steps="
            )
        return math.ceil(self.dense_steps * num_steps)

    def in_warmup(self, layer: int, step: int, num_steps: int | None = None) -> bool:
        """True when the layer runs dense at this step (a dense layer or a warm-up step)."""
        return layer in self.dense_layers or step < self.dense_step_count(num_steps)

    def heads_at(self, layer: int, step: int, num_steps: int | None = None) -> tuple[Pattern, ...]:
        """Patterns of the layer's heads at a step, the dense warm-up applied."""
        if self.in_warmup(layer, step, num_steps):
            return (Dense(),) * self.num_heads
        return self.layers[layer].heads_at(step)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "num_heads": self.num_heads,
            "grid": list(self.grid) if self.grid is not None else None,
            "dense_steps": self.dense_steps,
            "dense_layers": list(self.dense_layers),
            "block_size": self.block_size,
            "config_hash": self.config_hash,
            "layers": [
                {
                    "name": layer.name,
                    "phases": [
                        {"from_step": p.from_step, "heads": [pattern_to_dict(h) for h in p.heads]}
                        for p in layer.phases
                    ],
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelPlan:
        try:
            layers = tuple(
                LayerPlan(
                    layer["name"],
                    tuple(Phase(int(p["from_step"]), tuple(pattern_from_dict(h) for h in p["heads"]))
                          for p in layer["phases"]),
                )
                for layer in data["layers"]
            )
            grid = data.get("grid")
            return cls(
                model=data["model"], num_heads=int(data["num_heads"]), layers=layers,
                grid=tuple(int(n) for n in grid) if grid is not None else None,
                dense_steps=data.get("dense_steps", 0), dense_layers=tuple(data.get("dense_layers", ())),
                block_size=int(data.get("block_size", 128)), config_hash=data.get("config_hash"),
            )
        except KeyError as exc:
            raise ValueError(f"plan entry is missing the key {exc}") from None


def check_block_size(value: Any) -> None:
    """Raise ValueError unless ``value`` is a block size the executors run (``BLOCK_SIZES``)."""
    if isinstance(value, bool) or value not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))} (tokens per query/key "
                         f"block); got {value!r}")


def check_dense_steps(value: Any) -> None:
    ok_int = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ok_frac = isinstance(value, float) and 0.0 <= value <= 1.0
    if not (ok_int or ok_frac):
        raise ValueError(
            f"dense_steps must be a step count (int >= 0) or a fraction of the steps (float in [0, 1]); got {value!r}"
        )


def resolve_dense_layers(value: Sequence[int] | int, num_layers: int) -> tuple[int, ...]:
    """An int N means the first N layers; a sequence names layer indices."""
    if isinstance(value, bool):
        raise ValueError(f"dense_layers must be an int or a list of layer indices, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"dense_layers must be >= 0, got {value}")
        return tuple(range(min(value, num_layers)))
    return tuple(sorted({int(i) for i in value}))


@dataclass(frozen=True)
class Plan:
    """Per-transformer plans of a pipeline, keyed by the pipeline attribute ("transformer", ...)."""

    transformers: dict[str, ModelPlan]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.transformers:
            raise ValueError("a Plan needs at least one transformer plan")

    def to_json(self) -> str:
        data = {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "settings": self.settings,
            "transformers": {k: v.to_dict() for k, v in self.transformers.items()},
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "the plan") -> Plan:
        """Parse a plan; ``source`` (e.g. its file name) is named in every error."""
        if not text.strip():
            raise ValueError(f"{source} is empty: expected a headsparse plan (JSON written by Plan.save or "
                             "`headsparse search`)")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise ValueError(f"{source} is not a headsparse plan (expected \"format\": \"{PLAN_FORMAT}\")")
        version = data.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > PLAN_VERSION:
            raise ValueError(f"{source} has plan version {version}, newer than this headsparse reads "
                             f"({PLAN_VERSION}): upgrade headsparse to use it")
        if version != PLAN_VERSION:
            raise ValueError(f"{source}: plan version {version!r} is not supported (this headsparse reads "
                             f"{PLAN_VERSION})")
        transformers = data.get("transformers")
        if not isinstance(transformers, dict):
            raise ValueError(f"{source} has no \"transformers\" object")
        try:
            return cls({k: ModelPlan.from_dict(v) for k, v in transformers.items()}, dict(data.get("settings", {})))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path


def load_plan(path: str | Path) -> Plan:
    """Read a plan written by :meth:`Plan.save` (or the search); errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no plan file at {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"plan file {path} is not text (expected JSON)") from None
    return Plan.from_json(text, source=f"plan file {path}")
