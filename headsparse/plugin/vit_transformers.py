"""transformers vision encoders: ViT, DINOv2 (with and without registers), SigLIP vision, CLIP vision.

How the attention call is swapped: in transformers 5 every attention module asks
``ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)``
for its attention function at each call and hands it ``(module, q, k, v, mask, dropout=, scaling=,
...)`` with q/k/v as (B, H, S, D), expecting ``(output (B, S, H, D), weights)`` back. headsparse
registers one function per original implementation, ``"headsparse_<original>"`` (e.g.
``headsparse_sdpa``), with :meth:`transformers.AttentionInterface.register` (and the original's
mask builder under the same name with ``AttentionMaskInterface``, so masks are built as before),
and sets that name on the configs of the patched attention modules only (``module.config``; in a
full CLIP/SigLIP model the text tower's config is left alone). The function finds the module's
router (an attribute set on the module); calls the router cannot take (a mask, dropout, causal
attention, ``output_attentions``, other keyword arguments), calls on unpatched modules, and
dense-plan calls run the original implementation with the original arguments, so a dense plan is
bit-identical. ``restore`` deletes the attributes and puts each config's implementation back.
Registered names stay registered (they are inert without a router); no existing entry changes.

Module names and classes are those of transformers 5.x (q_proj/k_proj/v_proj attention modules;
heads read from ``num_heads`` / ``num_attention_heads`` / the config, whatever the projections are
called). Geometry: a forward pre-hook on the vision embeddings reads ``pixel_values`` (B, C, H, W)
and the patchifying Conv2d gives the grid, so interpolated position encodings and other image
sizes are followed. Prefix tokens (class token, DINOv2 registers) come first and are counted as the
sequence minus the grid; SigLIP has none (its attention-pooling head is not self-attention and is
left alone).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from headsparse.plugin.runtime import AttentionRouter, TransformerState
from headsparse.plugin.spec import Grid, ModelSpec, grid_from_image, register_spec

PREFIX = "headsparse_"
ROUTER_ATTR = "_headsparse_router"
IMPL_ATTR = "_headsparse_attn_implementation"
# Keyword arguments that do not change what attention computes when they are None / False / 0.
_INERT = ("dropout", "scaling", "is_causal", "output_attentions", "output_hidden_states", "return_dict")


def _interfaces() -> tuple[Any, Any]:
    from transformers import AttentionInterface, AttentionMaskInterface

    return AttentionInterface, AttentionMaskInterface


def original_function(module: nn.Module, original: str | None) -> Callable[..., Any]:
    """The attention function ``module`` used before patching (its own eager one for "eager" / None)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if original is None or original == "eager":
        if eager is None:
            raise TypeError(f"{type(module).__name__}'s module has no eager_attention_forward")
        return eager
    return ALL_ATTENTION_FUNCTIONS.get_interface(original, eager)


def _routable(module: nn.Module, query: Tensor, key: Tensor, mask: Any, kwargs: Mapping[str, Any]) -> bool:
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    others = any(v not in (None, False) for k, v in kwargs.items() if k not in _INERT)
    return (mask is None and not causal and not kwargs.get("dropout") and not kwargs.get("output_attentions")
            and not others and query.shape[2] == key.shape[2])


def _routed_interface(original: str | None) -> Callable[..., Any]:
    def headsparse_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                             **kwargs: Any) -> tuple[Tensor, Any]:
        router = module.__dict__.get(ROUTER_ATTR)
        if router is None or not _routable(module, query, key, attention_mask, kwargs):
            return original_function(module, original)(module, query, key, value, attention_mask, **kwargs)
        out = router(query, key, value, attn_mask=None, scale=kwargs.get("scaling"))
        return out.transpose(1, 2).contiguous(), None

    return headsparse_attention


def register_implementation(original: str | None) -> str:
    """The name of headsparse's attention function standing in for ``original`` (registered once)."""
    attention, masks = _interfaces()
    name = PREFIX + (original or "eager")
    if name not in attention._global_mapping:
        attention.register(name, _routed_interface(original))
        mask_builder = masks._global_mapping.get(original or "eager")
        if mask_builder is not None:
            masks.register(name, mask_builder)
    return name


def _dense_call(module: nn.Module, fn: Callable[..., Any]) -> Callable[..., Tensor]:
    """The router's dense path: the original function on (B, H, S, D), output back to (B, H, S, D)."""

    def dense(q: Tensor, k: Tensor, v: Tensor, attn_mask: Any = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, **_: Any) -> Tensor:
        out, _weights = fn(module, q, k, v, attn_mask, dropout=dropout_p, scaling=scale, is_causal=is_causal)
        return out.transpose(1, 2)

    return dense


class AttentionInterfaceAdapter:
    """Routes a transformers attention module through a registered ``headsparse_*`` implementation."""

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes

    def check(self, model: nn.Module, name: str, module: nn.Module) -> None:
        cls = type(module)
        where = f"{type(model).__name__}.{name}"
        if cls.__name__ not in self.classes:
            raise TypeError(f"{where} is a {cls.__name__}; headsparse patches {', '.join(self.classes)} on this class")
        if "ALL_ATTENTION_FUNCTIONS" not in cls.forward.__code__.co_names:
            raise TypeError(f"{where}: {cls.__name__}.forward does not dispatch through transformers' "
                            "AttentionInterface; this transformers version is not supported")
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "patch_size"):
            raise TypeError(f"{where} is not a vision encoder's attention (its config has no patch_size); headsparse "
                            "patches the vision tower only")
        impl = config._attn_implementation
        if impl is not None and not isinstance(impl, str):
            raise TypeError(f"{where}: config._attn_implementation is {impl!r}; expected a name")

    def num_heads(self, module: nn.Module) -> int:
        for attr in ("num_heads", "num_attention_heads"):
            if isinstance(getattr(module, attr, None), int):
                return int(getattr(module, attr))
        return int(module.config.num_attention_heads)

    def install(self, state: TransformerState, layer: int, module: nn.Module) -> AttentionRouter:
        config = module.config
        current = config._attn_implementation
        original = current[len(PREFIX):] if isinstance(current, str) and current.startswith(PREFIX) else current
        config._attn_implementation_internal = register_implementation(original)
        router = AttentionRouter(state, layer, "sdpa", _dense_call(module, original_function(module, original)))
        module.__dict__[IMPL_ATTR] = original
        module.__dict__[ROUTER_ATTR] = router
        return router

    def restore(self, module: nn.Module) -> None:
        if IMPL_ATTR not in module.__dict__:
            return
        original = module.__dict__.pop(IMPL_ATTR)
        module.__dict__.pop(ROUTER_ATTR, None)
        if module.config._attn_implementation == PREFIX + (original or "eager"):
            module.config._attn_implementation_internal = original


def _pixel_grid(embeddings: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    conv = next((m for m in embeddings.modules() if isinstance(m, nn.Conv2d)), None)
    return grid_from_image(args.get("pixel_values"), conv)


def _spec(base: str, tower: str, attention: str, classes: tuple[str, ...], notes: str) -> ModelSpec:
    return register_spec(ModelSpec(
        base, "transformers-vision", rf"({tower}\.)?{attention}", (), "prefix", _pixel_grid,
        adapter=AttentionInterfaceAdapter(classes), geometry_module=rf"({tower}\.)?embeddings", notes=notes,
    ))


VIT = _spec("ViTPreTrainedModel", "vit", r"layers\.\d+\.attention", ("ViTAttention",), "[class, patches]")
DINOV2 = _spec("Dinov2PreTrainedModel", "dinov2", r"encoder\.layer\.\d+\.attention", ("Dinov2Attention",),
               "[class, patches]")
DINOV2_REGISTERS = _spec("Dinov2WithRegistersPreTrainedModel", "dinov2_with_registers",
                         r"encoder\.layer\.\d+\.attention", ("Dinov2WithRegistersAttention",),
                         "[class, registers, patches]")
SIGLIP = _spec("SiglipPreTrainedModel", "vision_model", r"encoder\.layers\.\d+\.self_attn", ("SiglipAttention",),
               "[patches] (no class token); the attention-pooling head is left alone")
CLIP = _spec("CLIPPreTrainedModel", "vision_model", r"encoder\.layers\.\d+\.self_attn", ("CLIPAttention",),
             "[class, patches]; vision tower only")
