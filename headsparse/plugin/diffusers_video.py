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

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from headsparse.plugin.spec import Grid, ModelSpec, grid_from_5d, register_refusal, register_spec


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
# The Wan family: WanVACE, WanAnimate, SkyReels-V2. Wan 2.1 I2V / FLF2V and Wan 2.2 TI2V run
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


# ---------------------------------------------------------------------------------------------------------------
# Newer video families: HunyuanVideo 1.5, FramePack, LTX-2, Cosmos, Kandinsky 5; Sana-Video refused.
#
# Token order inside self-attention:
# - HunyuanVideo 1.5 ``transformer_blocks.N.attn``: [video, conditions] where the conditions are, per item,
#   [valid image, valid ByT5, valid text, then the padded ones]; the mask is a bool pair mask (B, 1, S, S) =
#   valid[:, None] & valid[None, :] (padded tokens neither attend nor are attended). The token refiner is text-only.
# - FramePack ``transformer_blocks.N.attn`` / ``single_transformer_blocks.N.attn``: [history 4x, history 2x,
#   clean latents, video, image tokens, text] with a key mask (B, 1, 1, S) over padded text (batch 1: the text is
#   cut to its valid length, no mask). The history tokens are leading non-grid tokens (``leading_tokens``).
# - LTX-2 ``transformer_blocks.N.attn1``: video only. ``audio_attn1`` (audio self-attention), ``attn2`` /
#   ``audio_attn2`` (text cross-attention) and ``audio_to_video_attn`` / ``video_to_audio_attn`` are left alone.
# - Cosmos ``transformer_blocks.N.attn1``: video only (``attn2`` is cross-attention).
# - Kandinsky 5 ``visual_transformer_blocks.N.self_attention``: video only (``cross_attention`` attends the text,
#   ``text_transformer_blocks.N.self_attention`` is text-only). With ``sparse_params`` (its own NABLA attention)
#   the tokens are reordered into 8x8 tiles and carry a flex BlockMask: headsparse leaves such calls dense.
# ---------------------------------------------------------------------------------------------------------------


def _conv_tokens(latent: Any, kernel: tuple[int, int, int], *, pad: bool) -> int:
    """Tokens a stride = kernel Conv3d makes of a (B, C, F, H, W) latent (``pad``: replicate-padded up first)."""
    dims = latent.shape[-3:]
    if pad:
        return math.prod(-(-n // k) for n, k in zip(dims, kernel, strict=True))
    return math.prod(n // k for n, k in zip(dims, kernel, strict=True))


def _framepack_history(model: nn.Module, args: Mapping[str, Any]) -> int:
    """FramePack's history tokens before the grid: clean latents (1x2x2), 2x (2x4x4) and 4x (4x8x8) histories."""
    count = 0
    for latent, index, kernel, pad in (("latents_clean", "indices_latents_clean", (1, 2, 2), False),
                                       ("latents_history_2x", "indices_latents_history_2x", (2, 4, 4), True),
                                       ("latents_history_4x", "indices_latents_history_4x", (4, 8, 8), True)):
        hidden = args.get(latent)
        if hidden is not None and args.get(index) is not None and hidden.dim() == 5:
            count += _conv_tokens(hidden, kernel, pad=pad)
    return count


def _ltx2_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    # The pipeline passes the latent grid; RoPE coordinates step by the patch sizes (ceil).
    dims = tuple(args.get(k) for k in ("num_frames", "height", "width"))
    hidden = args.get("hidden_states")
    if any(d is None for d in dims) or hidden is None or hidden.dim() != 3:
        return None
    pt, p = model.config.patch_size_t, model.config.patch_size
    f, h, w = (-(-int(n) // k) for n, k in zip(dims, (pt, p, p), strict=True))
    return (f, h, w) if f * h * w == hidden.shape[1] else None  # e.g. appended condition tokens: unknown


def _cosmos_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    return grid_from_5d(args.get("hidden_states"), tuple(model.config.patch_size))


def _kandinsky5_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    hidden = args.get("hidden_states")
    if args.get("sparse_params") is not None or hidden is None or hidden.dim() != 5:
        return None  # NABLA: its own tile order and block mask
    pt, ph, pw = model.config.patch_size
    _, f, h, w, _ = hidden.shape  # (B, F, H, W, C): channels last
    return (f // pt, h // ph, w // pw)


HUNYUAN_VIDEO15 = register_spec(ModelSpec(
    "HunyuanVideo15Transformer3DModel", "diffusers-video", r"transformer_blocks\.\d+\.attn",
    ("HunyuanVideo15AttnProcessor2_0",), "suffix", _hunyuan_grid,
    notes="video then [image, ByT5, text] conditions, valid first; padded ones masked both ways (pair mask)",
))
HUNYUAN_VIDEO_FRAMEPACK = register_spec(ModelSpec(
    "HunyuanVideoFramepackTransformer3DModel", "diffusers-video",
    r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn", ("HunyuanVideoAttnProcessor2_0",), "suffix",
    _hunyuan_grid, leading_tokens=_framepack_history,
    notes="history (4x, 2x, clean) tokens, video, then image + text tokens; history and text run dense both ways",
))
LTX2_VIDEO = register_spec(ModelSpec(
    "LTX2VideoTransformer3DModel", "diffusers-video", r"transformer_blocks\.\d+\.attn1",
    ("LTX2AudioVideoAttnProcessor", "LTX2PerturbedAttnProcessor"), "none", _ltx2_grid,
    notes="attn1 video self-attention; audio self-attention, text and audio-video cross-attention untouched",
))
COSMOS = register_spec(ModelSpec(
    "CosmosTransformer3DModel", "diffusers-video", r"transformer_blocks\.\d+\.attn1", ("CosmosAttnProcessor2_0",),
    "none", _cosmos_grid, notes="attn1 self-attention over video tokens; attn2 cross-attention untouched",
))
KANDINSKY5 = register_spec(ModelSpec(
    "Kandinsky5Transformer3DModel", "diffusers-video", r"visual_transformer_blocks\.\d+\.self_attention",
    ("Kandinsky5AttnProcessor",), "none", _kandinsky5_grid,
    notes="visual self-attention over video tokens; text self-attention and cross-attention untouched; "
          "NABLA calls (sparse_params) run dense",
))
register_refusal(
    "SanaVideoTransformer3DModel",
    "its self-attention (attn1, SanaLinearAttnProcessor3_0) is ReLU linear attention, (V K^T) Q normalised by "
    "K-sums, with no softmax score matrix to sparsify; only its text cross-attention (attn2) is softmax attention",
)
