"""ModelSpec: the small per-class description an adapter needs.

Which modules are self-attention, which processor classes we know how to rebind, where text tokens
sit inside the self-attention sequence, and how to read the token grid from the transformer's
forward arguments. Specs are registered by class name so that importing headsparse never imports
a model family the user does not have.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from headsparse.patterns.geometry import TextPosition

Grid = tuple[int, int, int]
GridReader = Callable[[nn.Module, Mapping[str, Any]], Grid | None]


@dataclass(frozen=True)
class ModelSpec:
    class_name: str
    family: str
    # Full-match regex over module names (as in ``named_modules``) of the self-attention modules.
    self_attention: str
    processors: tuple[str, ...]
    text_position: TextPosition
    grid: GridReader
    # Forward argument carrying the denoising timestep.
    timestep_arg: str = "timestep"
    notes: str = ""

    def self_attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        pattern = re.compile(self.self_attention)
        return [(n, m) for n, m in model.named_modules() if pattern.fullmatch(n)]


SPECS: dict[str, ModelSpec] = {}


def register_spec(spec: ModelSpec) -> ModelSpec:
    SPECS[spec.class_name] = spec
    return spec


def spec_for(model: nn.Module) -> ModelSpec | None:
    """The spec of the model's class (or of its nearest registered base class)."""
    for cls in type(model).__mro__:
        if cls.__name__ in SPECS:
            return SPECS[cls.__name__]
    return None


def supported_classes() -> list[str]:
    return sorted(SPECS)


def grid_from_5d(hidden_states: Any, patch: tuple[int, int, int], *, channels_first: bool = True) -> Grid | None:
    """(frames, height, width) tokens of a (B, C, F, H, W) or (B, F, C, H, W) latent."""
    if hidden_states is None or hidden_states.dim() != 5:
        return None
    if channels_first:
        _, _, f, h, w = hidden_states.shape
    else:
        _, f, _, h, w = hidden_states.shape
    pt, ph, pw = patch
    return (-(-f // pt), h // ph, w // pw)
