"""timm Vision Transformers: ``VisionTransformer`` (ViT, DeiT, DINOv2-style, with class and register
tokens) and ``Eva`` (EVA / EVA02, RoPE and prefix tokens).

How the attention call is swapped: timm's ``Attention.forward`` and ``EvaAttention.forward`` compute
q/k/v (norms, RoPE and all) and call ``F.scaled_dot_product_attention(q, k, v, ...)`` on (B, H, S, D)
when ``module.fused_attn`` is true. As for diffusers processors (:mod:`headsparse.plugin.rebind`),
the module gets the *same bytecode* as its class's ``forward``, evaluated in a copy of its module's
namespace where ``F`` is ``torch.nn.functional`` except for ``scaled_dot_product_attention``, which
is the router; it is bound as the instance's ``forward`` and ``fused_attn`` is forced on (the
unfused branch computes attention by hand and would bypass the router). Everything else timm does
stays timm's code, no class or global is modified, and other instances are unaffected. ``restore``
deletes the instance's ``forward`` (the class's is found again) and puts ``fused_attn`` back.

Why not a wrapper or a subclass swap: a wrapper cannot reach the call in the middle of ``forward``,
and re-implementing the forward would drift from timm (qk-norm, gates, RoPE, fused/unfused qkv).

Geometry: a forward pre-hook on ``patch_embed`` reads the image (B, C, H, W) and asks the patch
embedding for its grid (``dynamic_feat_size``, which follows dynamic image size and padding), so
it is right for every call, whichever of ``forward`` / ``forward_features`` /
``forward_intermediates`` runs. Prefix tokens (class, registers, distillation: ``num_prefix_tokens``)
come first; the router counts them as the sequence minus the grid and treats them like text: they
attend everything and everything attends them. Models whose tokens are exactly the grid (no class
token) run with no prefix.

Models created with ``fused_attn`` off (``TIMM_FUSED_ATTN=0``) run fused while patched, so a dense
plan matches them to float rounding, not bit for bit.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import nn

from headsparse.plugin.rebind import functional_with, with_globals
from headsparse.plugin.runtime import AttentionRouter, TransformerState
from headsparse.plugin.spec import Grid, ModelSpec, grid_from_image, register_spec

FUSED_ATTR = "_headsparse_fused_attn"
ATTENTION_CLASSES = {"VisionTransformer": ("Attention",), "Eva": ("EvaAttention",)}


def _patch_grid(patch_embed: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    image = args.get("x")
    if image is None or not hasattr(image, "dim") or image.dim() != 4:
        return None
    feat_size = getattr(patch_embed, "dynamic_feat_size", None)
    if callable(feat_size):
        rows, cols = feat_size((image.shape[-2], image.shape[-1]))
        return (1, int(rows), int(cols))
    return grid_from_image(image, getattr(patch_embed, "proj", None))


class TimmForwardAdapter:
    """Rebinds a timm attention module's ``forward`` so its SDPA call goes to the router."""

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes

    def check(self, model: nn.Module, name: str, module: nn.Module) -> None:
        cls = type(module)
        if cls.__name__ not in self.classes:
            raise TypeError(f"{type(model).__name__}.{name} is a {cls.__name__}; headsparse patches "
                            f"{', '.join(self.classes)} modules on this class")
        forward = cls.forward
        if not isinstance(forward, types.FunctionType) or forward.__globals__.get("F") is not F \
                or "scaled_dot_product_attention" not in forward.__code__.co_names:
            raise TypeError(f"{type(model).__name__}.{name}: {cls.__name__}.forward does not call "
                            "F.scaled_dot_product_attention; this timm version is not supported")
        if "forward" in module.__dict__ and not hasattr(module, FUSED_ATTR):
            raise TypeError(f"{type(model).__name__}.{name} already has an instance forward (another plugin?); "
                            "remove it before patching")
        if not hasattr(module, "fused_attn") or not hasattr(module, "num_heads"):
            raise TypeError(f"{type(model).__name__}.{name} has no fused_attn / num_heads attribute")

    def num_heads(self, module: nn.Module) -> int:
        return int(module.num_heads)

    def install(self, state: TransformerState, layer: int, module: nn.Module) -> AttentionRouter:
        router = AttentionRouter(state, layer, "sdpa", F.scaled_dot_product_attention)
        func = type(module).forward
        namespace = dict(func.__globals__)
        namespace["F"] = functional_with(router)
        rebound = with_globals(func, namespace)
        module.__dict__[FUSED_ATTR] = module.fused_attn
        module.fused_attn = True
        module.forward = types.MethodType(rebound, module)
        return router

    def restore(self, module: nn.Module) -> None:
        if FUSED_ATTR not in module.__dict__:
            return
        module.__dict__.pop("forward", None)
        module.fused_attn = module.__dict__.pop(FUSED_ATTR)


VISION_TRANSFORMER = register_spec(ModelSpec(
    "VisionTransformer", "timm-vit", r"blocks\.\d+\.attn", (), "prefix", _patch_grid,
    adapter=TimmForwardAdapter(ATTENTION_CLASSES["VisionTransformer"]), geometry_module="patch_embed",
    notes="[class, registers, patches]; blocks.N.attn (timm Attention)",
))
EVA = register_spec(ModelSpec(
    "Eva", "timm-vit", r"blocks\.\d+\.attn", (), "prefix", _patch_grid,
    adapter=TimmForwardAdapter(ATTENTION_CLASSES["Eva"]), geometry_module="patch_embed",
    notes="[class, registers, patches], RoPE on the patches; blocks.N.attn (EvaAttention)",
))
