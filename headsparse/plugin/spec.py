"""ModelSpec: the small per-class description an adapter needs.

Which modules are self-attention, which processor classes we know how to rebind, where text tokens
sit inside the self-attention sequence, and how to read the token grid from the transformer's
forward arguments. Specs are registered by class name so that importing headsparse never imports
a model family the user does not have.

diffusers specs swap attention processors (the default); other families (timm, transformers) bring
an :class:`AttentionAdapter` that knows how their attention call is replaced and restored, and name
the submodule that sees the image (``geometry_module``), whose forward pre-hook reads the grid.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from headsparse.patterns.geometry import TextPosition

Grid = tuple[int, int, int]
GridReader = Callable[[nn.Module, Mapping[str, Any]], Grid | None]
TokenCounter = Callable[[nn.Module, Mapping[str, Any]], int]


class AttentionAdapter(Protocol):
    """How a model family's attention call is routed to headsparse and put back.

    ``check`` raises TypeError naming what makes a module unpatchable, before anything is touched;
    ``install`` makes the module's attention call go through a new router and returns it;
    ``restore`` undoes exactly what ``install`` did.
    """

    def check(self, model: nn.Module, name: str, module: nn.Module) -> None: ...

    def num_heads(self, module: nn.Module) -> int: ...

    def install(self, state: Any, layer: int, module: nn.Module) -> Any:
        """Route the module's attention through a new router for ``state`` (a runtime TransformerState);
        return the router (a runtime AttentionRouter). Typed loosely: the runtime imports this module."""
        ...

    def restore(self, module: nn.Module) -> None: ...


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
    # None: diffusers attention processors are rebound (headsparse.plugin.rebind).
    adapter: AttentionAdapter | None = None
    # Full-match regex of the submodule whose forward arguments give the grid (None: the model itself).
    geometry_module: str | None = None
    # Models whose layers run at several resolutions (UNets): a layer's grid from the model's grid and the
    # layer's sequence length (None: no level fits). None: every layer runs on the model's grid.
    layer_grid: Callable[[Grid, int], Grid | None] | None = None
    # Tokens that are neither grid nor text but sit *before* the grid while the text is a suffix (FramePack's
    # history latents): read per call like the grid. The router moves them behind the grid, where they join the
    # suffix block and follow the joint-text rule (they attend and are attended densely). None: no such tokens.
    leading_tokens: Callable[[nn.Module, Mapping[str, Any]], int] | None = None
    # Tokens that are neither grid nor text but sit *after* the grid while the text is a prefix (the reference
    # latents Qwen-Image-Edit and FLUX.2 editing append to the noisy ones): read per call like the grid. The router
    # moves them before the grid, where they join the prefix block and follow the joint-text rule (they attend
    # and are attended densely). None: no such tokens.
    trailing_tokens: TokenCounter | None = None
    # The timestep argument rises as denoising proceeds (Lumina 2 and Z-Image are given 1 - sigma): the step
    # tracker reads it negated, so that its "a larger value starts a new generation" rule still holds.
    timestep_rises: bool = False

    def __post_init__(self) -> None:
        if self.leading_tokens is not None and self.text_position != "suffix":
            raise ValueError(f"{self.class_name}: leading_tokens needs text_position='suffix' (they join the suffix)")
        if self.trailing_tokens is not None and self.text_position != "prefix":
            raise ValueError(f"{self.class_name}: trailing_tokens needs text_position='prefix' (they join the prefix)")

    def self_attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        pattern = re.compile(self.self_attention)
        return [(n, m) for n, m in model.named_modules() if pattern.fullmatch(n)]

    def geometry_target(self, model: nn.Module) -> nn.Module:
        """The module the grid-reading forward pre-hook goes on (TypeError unless exactly one matches)."""
        if self.geometry_module is None:
            return model
        pattern = re.compile(self.geometry_module)
        found = [m for n, m in model.named_modules() if pattern.fullmatch(n)]
        if len(found) != 1:
            raise TypeError(
                f"{type(model).__name__} has {len(found)} modules matching {self.geometry_module!r}; headsparse needs "
                "exactly one to read the token grid from"
            )
        return found[0]


SPECS: dict[str, ModelSpec] = {}
# Classes headsparse knows and refuses, with the reason (e.g. their self-attention has no softmax to sparsify).
REFUSED: dict[str, str] = {}


def register_spec(spec: ModelSpec) -> ModelSpec:
    SPECS[spec.class_name] = spec
    return spec


def register_refusal(class_name: str, reason: str) -> None:
    """Refuse ``class_name`` at patch time with ``reason`` (why it cannot be supported soundly)."""
    REFUSED[class_name] = reason


def refusal_for(model: nn.Module) -> str | None:
    """Why the model's class (or its nearest refused base class) is refused; None when it is not."""
    for cls in type(model).__mro__:
        if cls.__name__ in SPECS:
            return None
        if cls.__name__ in REFUSED:
            return REFUSED[cls.__name__]
    return None


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


def grid_from_image(pixels: Any, conv: nn.Module | None) -> Grid | None:
    """(1, rows, cols) tokens that a patchifying Conv2d makes of a (B, C, H, W) image."""
    if conv is None or pixels is None or not hasattr(pixels, "dim") or pixels.dim() != 4:
        return None
    size = []
    for axis, n in enumerate(pixels.shape[-2:]):
        if conv.padding == "same":
            size.append(n)
            continue
        p = 0 if conv.padding == "valid" else conv.padding[axis]
        k, s, d = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
        size.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    return (1, size[0], size[1]) if min(size) >= 1 else None
