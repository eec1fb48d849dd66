"""Specs of the diffusers video transformers: Wan, CogVideoX, HunyuanVideo, LTX-Video, Mochi.

Token order inside self-attention (what the attention call receives):
- Wan 2.1/2.2 ``blocks.N.attn1``: video only (``attn2`` is cross-attention, left alone).
- CogVideoX ``transformer_blocks.N.attn1``: [text, video] (joint attention, text first).
- HunyuanVideo ``transformer_blocks.N.attn`` / ``single_transformer_blocks.N.attn``: [video, text]
  with a boolean key mask (B, 1, 1, S) over padded text; the token refiner is text-only, left alone.
- LTX-Video ``transformer_blocks.N.attn1``: video only (``attn2`` is cross-attention).
- Mochi ``transformer_blocks.N.attn1``: [video, valid text of that batch item], one call per item.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from headsparse.plugin.spec import Grid, ModelSpec, grid_from_5d, register_spec


def _wan_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    return grid_from_5d(args.get("hidden_states"), tuple(model.config.patch_size))


def _cogvideox_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    p, pt = model.config.patch_size, model.config.patch_size_t or 1
    return grid_from_5d(args.get("hidden_states"), (pt, p, p), channels_first=False)


def _hunyuan_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    p, pt = model.config.patch_size, model.config.patch_size_t
    return grid_from_5d(args.get("hidden_states"), (pt, p, p))


def _ltx_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    # LTX packs latents before the transformer and passes the token grid as arguments.
    dims = tuple(args.get(k) for k in ("num_frames", "height", "width"))
    hidden = args.get("hidden_states")
    if any(d is None for d in dims) or hidden is None or hidden.dim() != 3:
        return None
    f, h, w = (int(d) for d in dims)
    return (f, h, w) if f * h * w == hidden.shape[1] else None


def _mochi_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    p = model.config.patch_size
    return grid_from_5d(args.get("hidden_states"), (1, p, p))


WAN = register_spec(ModelSpec(
    "WanTransformer3DModel", "diffusers-video", r"blocks\.\d+\.attn1", ("WanAttnProcessor", "WanAttnProcessor2_0"),
    "none", _wan_grid, notes="attn1 self-attention over video tokens; attn2 cross-attention untouched",
))
COGVIDEOX = register_spec(ModelSpec(
    "CogVideoXTransformer3DModel", "diffusers-video", r"transformer_blocks\.\d+\.attn1",
    ("CogVideoXAttnProcessor2_0",), "prefix", _cogvideox_grid, notes="joint attention: text tokens first",
))
HUNYUAN_VIDEO = register_spec(ModelSpec(
    "HunyuanVideoTransformer3DModel", "diffusers-video",
    r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn", ("HunyuanVideoAttnProcessor2_0",), "suffix",
    _hunyuan_grid, notes="video then text; padded text keys masked",
))
LTX_VIDEO = register_spec(ModelSpec(
    "LTXVideoTransformer3DModel", "diffusers-video", r"transformer_blocks\.\d+\.attn1",
    ("LTXVideoAttnProcessor", "LTXVideoAttentionProcessor2_0"), "none", _ltx_grid,
    notes="attn1 self-attention over packed video tokens; attn2 cross-attention untouched",
))
MOCHI = register_spec(ModelSpec(
    "MochiTransformer3DModel", "diffusers-video", r"transformer_blocks\.\d+\.attn1", ("MochiAttnProcessor2_0",),
    "suffix", _mochi_grid, notes="video then the item's valid text tokens, one attention call per batch item",
))
