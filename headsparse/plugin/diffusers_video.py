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


# ------------------------------------------------------------------------------------------------------------------
# Wan family (issue 22, wan_family): WanVACE, WanAnimate, SkyReels-V2. Wan 2.1 I2V / FLF2V and Wan 2.2 TI2V run
# through WanTransformer3DModel (WAN above): their image condition is channels of the latent (I2V) or its first
# latent frame (TI2V), so self-attention sees the video grid only; CLIP image tokens reach cross-attention (attn2's
# added k/v) only.
# - WanVACE ``blocks.N.attn1`` and ``vace_blocks.N.attn1``: video only; the control latents share the grid; VACE
#   reference images are leading latent frames of the grid (cropped by the pipeline after denoising).
# - WanAnimate ``blocks.N.attn1``: video only; latent frame 0 is the reference character image. ``face_adapter.N``
#   is frame-aligned cross-attention to the motion tokens and ``attn2`` cross-attention to text + CLIP image:
#   both left alone.
# - SkyReels-V2 ``blocks.N.attn1``: video only. Diffusion forcing with ``num_frame_per_block > 1`` masks it
#   block-causally by frame (a bool (1, 1, S, S) mask); the router intersects every head's pattern with it.
WAN_VACE = register_spec(ModelSpec(
    "WanVACETransformer3DModel", "diffusers-video", r"(blocks|vace_blocks)\.\d+\.attn1",
    ("WanAttnProcessor", "WanAttnProcessor2_0"), "none", _wan_grid,
    notes="attn1 of the main and the VACE blocks: self-attention over video tokens (reference images are leading "
          "latent frames of the grid); attn2 cross-attention untouched",
))
WAN_ANIMATE = register_spec(ModelSpec(
    "WanAnimateTransformer3DModel", "diffusers-video", r"blocks\.\d+\.attn1", ("WanAttnProcessor",), "none",
    _wan_grid,
    notes="attn1 self-attention over video tokens (latent frame 0: the reference character); attn2 (text + CLIP "
          "image) and the face adapter's frame-aligned motion cross-attention untouched",
))
SKYREELS_V2 = register_spec(ModelSpec(
    "SkyReelsV2Transformer3DModel", "diffusers-video", r"blocks\.\d+\.attn1",
    ("SkyReelsV2AttnProcessor", "SkyReelsV2AttnProcessor2_0"), "none", _wan_grid,
    notes="attn1 self-attention over video tokens; with diffusion forcing's block-causal frame mask "
          "(num_frame_per_block > 1) every head's pattern runs intersected with it; attn2 cross-attention untouched",
))
