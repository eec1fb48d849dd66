"""Specs of the diffusers image transformers: FLUX.1 and Stable Diffusion 3 / 3.5.

Token order inside self-attention:
- FLUX ``transformer_blocks.N.attn`` (joint) and ``single_transformer_blocks.N.attn``: [text, image].
  The image grid is read from ``img_ids`` (row, column per packed 2x2 latent patch).
- SD3 ``transformer_blocks.N.attn`` (joint): [image, text]; SD3.5's ``attn2`` is image-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from headsparse.plugin.spec import Grid, ModelSpec, register_spec


def _flux_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    ids, hidden = args.get("img_ids"), args.get("hidden_states")
    if ids is None or hidden is None or hidden.dim() != 3:
        return None
    ids = ids[0] if ids.dim() == 3 else ids
    if ids.shape[0] != hidden.shape[1] or bool((ids[:, 0] != ids[0, 0]).any()):
        return None  # several images (e.g. Kontext references): no single grid
    rows, cols = ids[:, 1].long(), ids[:, 2].long()
    rows, cols = rows - rows.min(), cols - cols.min()
    height, width = int(rows.max()) + 1, int(cols.max()) + 1
    order = torch.arange(rows.shape[0], device=rows.device)
    if height * width != hidden.shape[1] or not bool((rows * width + cols == order).all()):
        return None  # not a row-major grid
    return (1, height, width)


def _sd3_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    hidden = args.get("hidden_states")
    if hidden is None or hidden.dim() != 4:
        return None
    p = model.config.patch_size
    return (1, hidden.shape[2] // p, hidden.shape[3] // p)


FLUX = register_spec(ModelSpec(
    "FluxTransformer2DModel", "diffusers-image", r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn",
    ("FluxAttnProcessor", "FluxAttnProcessor2_0"), "prefix", _flux_grid, notes="text then image tokens",
))
SD3 = register_spec(ModelSpec(
    "SD3Transformer2DModel", "diffusers-image", r"transformer_blocks\.\d+\.attn2?", ("JointAttnProcessor2_0",),
    "suffix", _sd3_grid, notes="image then text tokens (attn2 of SD3.5: image only)",
))
