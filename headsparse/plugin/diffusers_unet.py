"""Spec of the diffusers Stable Diffusion UNet (``UNet2DConditionModel``): its ``attn1`` self-attention.

Token order: each ``Transformer2DModel`` flattens its feature map row-major, so ``attn1`` sees an
image-only grid; ``attn2`` is cross-attention to the text and is left alone. Unlike the DiTs, every
resolution level has its own grid: the latent (1, H, W) at the top, then halved (rounding up, as the
stride-2 convolutions of ``Downsample2D`` do) once per level. The grid of a call is the level whose
token count equals the call's sequence length; a length that matches no level runs dense.

All patched layers must have the same head count (a Plan has one per model): SD 1.x / 2.x UNets do;
SDXL's (5, 10, 20 heads per level) is refused with that error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from headsparse.plugin.spec import Grid, ModelSpec, register_spec


def _unet_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    sample = args.get("sample")
    if sample is None or not hasattr(sample, "dim") or sample.dim() != 4:
        return None
    return (1, int(sample.shape[-2]), int(sample.shape[-1]))


def unet_level_grid(grid: Grid, tokens: int) -> Grid | None:
    """The grid of the resolution level with ``tokens`` tokens: the latent grid halved (ceil) per level."""
    _, h, w = grid
    while h * w > tokens and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    return (1, h, w) if h * w == tokens else None


UNET = register_spec(ModelSpec(
    "UNet2DConditionModel", "diffusers-unet",
    r"(down_blocks|up_blocks|mid_block)(\.\d+)?\.attentions\.\d+\.transformer_blocks\.\d+\.attn1",
    ("AttnProcessor2_0",), "none", _unet_grid, timestep_arg="timestep", layer_grid=unet_level_grid,
    notes="attn1 self-attention per resolution level (grid from the sequence length); attn2 untouched",
))
