"""Tiny random-weight instances of the Wan family's other diffusers transformers, with example inputs.

Built offline from configs like ``tiny_models`` (2 heads of 16, 2 layers, float32, ``eval()``, seeded), with
``hidden_states`` always (B, C, frames, height, width) in latent units, spatial patch 2, temporal patch 1:

- ``wan_vace``: WanVACETransformer3DModel; ``control_hidden_states`` (B, 8, F, H, W) on the same grid. VACE
  reference images are extra *leading latent frames* of both (the pipeline crops them after denoising).
- ``wan_animate``: WanAnimateTransformer3DModel; frame 0 of ``hidden_states`` is the reference character,
  ``pose_hidden_states`` covers frames 1.., ``face_pixel_values`` has ``4 * (F - 2) + 1`` frames so that the face
  encoder yields one motion frame per latent frame (the face adapter is frame-aligned only then).
- ``wan_i2v``: WanTransformer3DModel as Wan 2.1 I2V: ``in_channels = 2 C + 4`` (noise, mask, first-frame
  condition concatenated as channels), CLIP image tokens (``encoder_hidden_states_image``) projected by the
  cross-attention's added k/v; its processor splits them off by assuming exactly 512 text tokens.
- ``wan_ti2v``: WanTransformer3DModel as Wan 2.2 TI2V-5B in image-to-video mode: ``timestep`` is per token
  (B, F * h * w), 0 on the first frame's tokens (the image condition), ``t`` elsewhere.
- ``skyreels_v2``: SkyReelsV2Transformer3DModel (text-to-video).
- ``skyreels_v2_df``: SkyReelsV2Transformer3DModel in diffusion forcing: per-frame ``timestep`` (B, F),
  ``enable_diffusion_forcing=True``, and ``num_frame_per_block=2``, which makes the model mask its own
  self-attention block-causally over frames (frames must be a multiple of 2). No fps embedding
  (``inject_sample_info``): diffusers 0.42.1 adds it to a per-frame timestep only for batch 1.
"""

from __future__ import annotations

from collections.abc import Callable

import tiny_models
import torch
from diffusers import (
    SkyReelsV2Transformer3DModel,
    WanAnimateTransformer3DModel,
    WanTransformer3DModel,
    WanVACETransformer3DModel,
)
from tiny_models import CHANNELS, HEAD_DIM, HEADS, INNER_DIM, TEXT_DIM, TEXT_LEN, TinyCase, _gen, _grid_tokens, _randn
from tiny_models import _seeded as seeded

CASE_NAMES: tuple[str, ...] = ("wan_vace", "wan_animate", "wan_i2v", "wan_ti2v", "skyreels_v2", "skyreels_v2_df")

I2V_TEXT_LEN = 512  # Wan's I2V processor splits [image, text] assuming 512 text tokens
IMAGE_TOKENS = 5  # CLIP image tokens (257 in the real models)
IMAGE_DIM = 16
VACE_CHANNELS = 8
DF_BLOCK = 2  # SkyReels-V2 diffusion forcing: frames per causal block

_COMMON = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": HEADS,
    "attention_head_dim": HEAD_DIM,
    "text_dim": TEXT_DIM,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}


def _base_inputs(g: torch.Generator, batch: int, channels: int, frames: int, height: int, width: int,
                 text_len: int = TEXT_LEN) -> dict:
    return {
        "hidden_states": _randn(g, batch, channels, frames, height, width),
        "timestep": torch.rand(batch, generator=g) * 1000,
        "encoder_hidden_states": _randn(g, batch, text_len, TEXT_DIM),
    }


def _case(name: str, model: torch.nn.Module, make_inputs: Callable[..., dict], self_attention: tuple[str, ...],
          defaults: tuple[int, int, int] = (2, 4, 6)) -> TinyCase:
    return TinyCase(name=name, model=model, make_inputs=make_inputs, tokens=_grid_tokens((1, 2, 2)), text_len=0,
                    text_position="none", self_attention=self_attention, attention_call="dispatch", patch=(1, 2, 2),
                    defaults=defaults)


def _blocks(model: torch.nn.Module, prefix: str = "blocks") -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}.attn1" for i in range(len(getattr(model, prefix))))


# ------------------------------------------------------------------------------------------------------ VACE
def _build_wan_vace(seed: int) -> TinyCase:
    model = seeded(seed, lambda: WanVACETransformer3DModel(
        **_COMMON, in_channels=CHANNELS, out_channels=CHANNELS, vace_layers=[0, 1], vace_in_channels=VACE_CHANNELS,
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)
        inputs = _base_inputs(g, batch, CHANNELS, frames, height, width)
        inputs["control_hidden_states"] = _randn(g, batch, VACE_CHANNELS, frames, height, width)
        return inputs

    # named_modules order (the plan's layer order): the main blocks, then the VACE blocks (which run first).
    return _case("wan_vace", model, make_inputs, _blocks(model) + _blocks(model, "vace_blocks"))


# ---------------------------------------------------------------------------------------------------- Animate
def face_frames(frames: int) -> int:
    """Face video frames whose motion encoding has one frame per latent frame after the reference frame."""
    return 4 * (frames - 2) + 1


def _build_wan_animate(seed: int) -> TinyCase:
    model = seeded(seed, lambda: WanAnimateTransformer3DModel(
        **_COMMON, in_channels=2 * CHANNELS + 4, latent_channels=CHANNELS, out_channels=CHANNELS,
        image_dim=IMAGE_DIM, added_kv_proj_dim=INNER_DIM,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8,
        motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        if frames < 2:
            raise ValueError(f"wan_animate: frames must be >= 2 (a reference frame and a video frame), got {frames}")
        g = _gen(seed)
        inputs = _base_inputs(g, batch, 2 * CHANNELS + 4, frames, height, width, I2V_TEXT_LEN)
        inputs["encoder_hidden_states_image"] = _randn(g, batch, IMAGE_TOKENS, IMAGE_DIM)
        inputs["pose_hidden_states"] = _randn(g, batch, CHANNELS, frames - 1, height, width)
        inputs["face_pixel_values"] = _randn(g, batch, 3, face_frames(frames), 16, 16)
        return inputs

    return _case("wan_animate", model, make_inputs, _blocks(model))


# ---------------------------------------------------------------------------------------------- Wan I2V / TI2V
def _build_wan_i2v(seed: int) -> TinyCase:
    model = seeded(seed, lambda: WanTransformer3DModel(
        **_COMMON, in_channels=2 * CHANNELS + 4, out_channels=CHANNELS, image_dim=IMAGE_DIM,
        added_kv_proj_dim=INNER_DIM,
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)
        inputs = _base_inputs(g, batch, 2 * CHANNELS + 4, frames, height, width, I2V_TEXT_LEN)
        inputs["encoder_hidden_states_image"] = _randn(g, batch, IMAGE_TOKENS, IMAGE_DIM)
        return inputs

    return _case("wan_i2v", model, make_inputs, _blocks(model))


def ti2v_timestep(t: float, batch: int, frames: int, height: int, width: int) -> torch.Tensor:
    """Wan 2.2 TI2V's per-token timestep in image-to-video mode: 0 on the first frame's tokens, t elsewhere."""
    per_frame = (height // 2) * (width // 2)
    ts = torch.full((batch, frames * per_frame), float(t))
    ts[:, :per_frame] = 0.0
    return ts


def _build_wan_ti2v(seed: int) -> TinyCase:
    model = seeded(seed, lambda: WanTransformer3DModel(**_COMMON, in_channels=CHANNELS, out_channels=CHANNELS))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)
        inputs = _base_inputs(g, batch, CHANNELS, frames, height, width)
        inputs["timestep"] = ti2v_timestep(900.0, batch, frames, height, width)
        return inputs

    return _case("wan_ti2v", model, make_inputs, _blocks(model))


# ------------------------------------------------------------------------------------------------- SkyReels-V2
def _build_skyreels_v2(seed: int) -> TinyCase:
    model = seeded(seed, lambda: SkyReelsV2Transformer3DModel(**_COMMON, in_channels=CHANNELS, out_channels=CHANNELS))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        return _base_inputs(_gen(seed), batch, CHANNELS, frames, height, width)

    return _case("skyreels_v2", model, make_inputs, _blocks(model))


def df_timestep(batch: int, frames: int, start: float = 600.0, lag: float = 100.0) -> torch.Tensor:
    """A diffusion-forcing timestep (B, F): later frames noisier (non-decreasing in the frame index)."""
    per_frame = start + lag * torch.div(torch.arange(frames), DF_BLOCK, rounding_mode="floor").float()
    return per_frame.clamp(max=999.0).expand(batch, frames).clone()


def _build_skyreels_v2_df(seed: int) -> TinyCase:
    model = seeded(seed, lambda: SkyReelsV2Transformer3DModel(
        **_COMMON, in_channels=CHANNELS, out_channels=CHANNELS, num_frame_per_block=DF_BLOCK,
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        if frames % DF_BLOCK:
            raise ValueError(f"skyreels_v2_df: frames must be a multiple of {DF_BLOCK}, got {frames}")
        inputs = _base_inputs(_gen(seed), batch, CHANNELS, frames, height, width)
        inputs.update(timestep=df_timestep(batch, frames), enable_diffusion_forcing=True)
        return inputs

    return _case("skyreels_v2_df", model, make_inputs, _blocks(model))


_BUILDERS: dict[str, Callable[[int], TinyCase]] = {
    "wan_vace": _build_wan_vace,
    "wan_animate": _build_wan_animate,
    "wan_i2v": _build_wan_i2v,
    "wan_ti2v": _build_wan_ti2v,
    "skyreels_v2": _build_skyreels_v2,
    "skyreels_v2_df": _build_skyreels_v2_df,
}


def build(name: str, seed: int = 0, **config: object) -> TinyCase:
    """A tiny case by name (one of ``CASE_NAMES``) with weights drawn from ``seed``; ``config``:
    constructor arguments replacing the tiny ones (``tiny_models.with_config``)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown case {name!r}; choose from {CASE_NAMES}")
    return tiny_models.with_config(_BUILDERS[name](seed), seed, config)
