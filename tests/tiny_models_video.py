"""Tiny random-weight instances of the issue-22 video transformers, with example inputs and token-grid views.

Built offline from configs like ``tiny_models`` (2 heads of dimension 16, 1-2 layers, float32, ``eval()``,
seeded weights); ``build(name)`` returns a :class:`VideoCase`. Every ``make_inputs(batch, frames, height, width,
seed)`` takes the *latent* grid; ``case.frame(tensor, i)`` is the part of an input or output latent that belongs to
token frame ``i`` (all patch sizes here are 1 along time, so one latent frame is one token frame).

- hunyuan_video15: (B, C, F, H, W), spatial patch 2. Conditions: 3 image tokens (zero embeds = text-to-video: the
  model marks them invalid), 4 ByT5 tokens, 7 text tokens; batch item 1 pads 3 text tokens.
- framepack: (B, C, F, H, W), spatial patch 2, plus history latents at the video's height/width: 2 clean frames
  (1x2x2 tokens), 2 frames at 2x (2x4x4) and 8 frames at 4x (4x8x8), each with its frame indices; 4 image tokens
  and 7 text tokens; batch item 1 pads 3 text tokens.
- ltx2: packed video (B, F*H*W, C) with ``num_frames``/``height``/``width``, patch 1; 5 audio latent frames.
- cosmos: (B, C, F, H, W), patch (1, 2, 2), zero padding mask.
- kandinsky5: (B, F, H, W, C) channels last, patch (1, 2, 2); ``return_dict=False`` returns the tensor itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tiny_models
import torch
from diffusers import (
    CosmosTransformer3DModel,
    HunyuanVideo15Transformer3DModel,
    HunyuanVideoFramepackTransformer3DModel,
    Kandinsky5Transformer3DModel,
    LTX2VideoTransformer3DModel,
    SanaVideoTransformer3DModel,
)
from tiny_models import CHANNELS, HEAD_DIM, HEADS, INNER_DIM, TEXT_DIM, TEXT_LEN, TinyCase, _gen, _randn, _seeded

VIDEO_CASES: tuple[str, ...] = ("hunyuan_video15", "framepack", "ltx2", "cosmos", "kandinsky5")

TEXT_PAD = 3  # padded text tokens of batch item 1 (HunyuanVideo 1.5, FramePack)
HV15_IMAGE, HV15_BYT5, HV15_BYT5_DIM, HV15_IMAGE_DIM = 3, 4, 8, 12
FRAMEPACK_IMAGE = 4
AUDIO_FRAMES = 5


@dataclass
class VideoCase(TinyCase):
    """A :class:`TinyCase` plus how to reach the video output and one token frame of a latent."""

    frame: Callable[[torch.Tensor, int], torch.Tensor] = lambda t, i: t[:, :, i]
    output: Callable[[object], torch.Tensor] = lambda out: out[0]


def _mask(batch: int, length: int, pad: int) -> torch.Tensor:
    mask = torch.ones(batch, length)
    if batch > 1 and pad:
        mask[1, length - pad :] = 0
    return mask


# ------------------------------------------------------------------------------------------------ HunyuanVideo 1.5
def _build_hunyuan_video15(seed: int) -> VideoCase:
    model = _seeded(seed, lambda: HunyuanVideo15Transformer3DModel(
        in_channels=CHANNELS, out_channels=CHANNELS, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
        num_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, text_embed_dim=TEXT_DIM,
        text_embed_2_dim=HV15_BYT5_DIM, image_embed_dim=HV15_IMAGE_DIM, rope_axes_dim=(4, 6, 6), target_size=16,
        task_type="t2v",
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0,
                    image: bool = False) -> dict:
        """``image``: non-zero image embeddings (image-to-video: the 3 image tokens are valid)."""
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, frames, height, width),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "encoder_attention_mask": _mask(batch, TEXT_LEN, TEXT_PAD),
            "encoder_hidden_states_2": _randn(g, batch, HV15_BYT5, HV15_BYT5_DIM),
            "encoder_attention_mask_2": torch.ones(batch, HV15_BYT5),
            "image_embeds": (_randn(g, batch, HV15_IMAGE, HV15_IMAGE_DIM) if image
                             else torch.zeros(batch, HV15_IMAGE, HV15_IMAGE_DIM)),
        }

    return VideoCase(
        name="hunyuan_video15", model=model, make_inputs=make_inputs, tokens=_tokens((1, 2, 2)),
        text_len=HV15_IMAGE + HV15_BYT5 + TEXT_LEN, text_position="suffix",
        self_attention=tuple(f"transformer_blocks.{i}.attn" for i in range(2)), attention_call="dispatch",
        patch=(1, 2, 2),
    )


# ------------------------------------------------------------------------------------------------------- FramePack
def framepack_history_tokens(height: int, width: int) -> int:
    """History tokens of ``make_inputs`` for a latent height/width (2 clean, 2 at 2x, 8 at 4x frames)."""
    def ceil(n: int, k: int) -> int:
        return -(-n // k)

    clean = 2 * (height // 2) * (width // 2)
    return clean + ceil(2, 2) * ceil(height, 4) * ceil(width, 4) + ceil(8, 4) * ceil(height, 8) * ceil(width, 8)


def _build_framepack(seed: int) -> VideoCase:
    model = _seeded(seed, lambda: HunyuanVideoFramepackTransformer3DModel(
        in_channels=CHANNELS, out_channels=CHANNELS, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=TEXT_DIM, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6), image_condition_type=None,
        has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True,
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)

        def history(n: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
            return _randn(g, batch, CHANNELS, n, height, width), torch.arange(start, start + n)

        clean, clean_idx = history(2, 0)
        h2, h2_idx = history(2, 2)
        h4, h4_idx = history(8, 4)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, frames, height, width),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "encoder_attention_mask": _mask(batch, TEXT_LEN, TEXT_PAD),
            "pooled_projections": _randn(g, batch, 8),
            "image_embeds": _randn(g, batch, FRAMEPACK_IMAGE, 16),
            "indices_latents": torch.arange(12, 12 + frames),
            "guidance": torch.full((batch,), 6.0 * 1000),
            "latents_clean": clean, "indices_latents_clean": clean_idx,
            "latents_history_2x": h2, "indices_latents_history_2x": h2_idx,
            "latents_history_4x": h4, "indices_latents_history_4x": h4_idx,
        }

    paths = ("transformer_blocks.0.attn", "single_transformer_blocks.0.attn")
    return VideoCase(
        name="framepack", model=model, make_inputs=make_inputs, tokens=_tokens((1, 2, 2)),
        text_len=FRAMEPACK_IMAGE + TEXT_LEN, text_position="suffix", self_attention=paths, attention_call="dispatch",
        patch=(1, 2, 2),
    )


# ----------------------------------------------------------------------------------------------------------- LTX-2
def _build_ltx2(seed: int) -> VideoCase:
    model = _seeded(seed, lambda: LTX2VideoTransformer3DModel(
        in_channels=CHANNELS, out_channels=CHANNELS, patch_size=1, patch_size_t=1, num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM, cross_attention_dim=INNER_DIM, audio_in_channels=CHANNELS,
        audio_out_channels=CHANNELS, audio_num_attention_heads=HEADS, audio_attention_head_dim=8,
        audio_cross_attention_dim=16, num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=TEXT_DIM,
        rope_double_precision=False,
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 2, width: int = 3, seed: int = 0,
                    isolate_modalities: bool = False) -> dict:
        """``isolate_modalities``: the model's switch that turns audio-video cross-attention off."""
        g = _gen(seed)
        latents = _randn(g, batch, CHANNELS, frames, height, width)
        return {
            "hidden_states": latents.flatten(2).transpose(1, 2),  # LTX2Pipeline._pack_latents with patch 1
            "audio_hidden_states": _randn(g, batch, AUDIO_FRAMES, CHANNELS),
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "audio_encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_attention_mask": torch.ones(batch, TEXT_LEN, dtype=torch.long),
            "num_frames": frames, "height": height, "width": width,
            "audio_num_frames": AUDIO_FRAMES, "fps": 24.0, "isolate_modalities": isolate_modalities,
        }

    def frame(t: torch.Tensor, i: int) -> torch.Tensor:  # packed (B, F*H*W, C); the test grid's frames
        hw = t.shape[1] // 3
        return t[:, i * hw : (i + 1) * hw]

    return VideoCase(
        name="ltx2", model=model, make_inputs=make_inputs, tokens=_tokens((1, 1, 1)), text_len=0,
        text_position="none", self_attention=tuple(f"transformer_blocks.{i}.attn1" for i in range(2)),
        attention_call="dispatch", patch=(1, 1, 1), defaults=(2, 2, 3), frame=frame,
    )


# ---------------------------------------------------------------------------------------------------------- Cosmos
def _build_cosmos(seed: int) -> VideoCase:
    model = _seeded(seed, lambda: CosmosTransformer3DModel(
        in_channels=CHANNELS, out_channels=CHANNELS, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
        num_layers=2, mlp_ratio=2, text_embed_dim=TEXT_DIM, adaln_lora_dim=4, max_size=(4, 32, 32),
        patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=True, extra_pos_embed_type="learnable",
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, frames, height, width),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "attention_mask": torch.ones(batch, TEXT_LEN),
            "fps": 30,
            "padding_mask": torch.zeros(1, 1, height, width),  # the model repeats it over the batch
        }

    return VideoCase(
        name="cosmos", model=model, make_inputs=make_inputs, tokens=_tokens((1, 2, 2)), text_len=0,
        text_position="none", self_attention=tuple(f"transformer_blocks.{i}.attn1" for i in range(2)),
        attention_call="dispatch", patch=(1, 2, 2),
    )


# ------------------------------------------------------------------------------------------------------ Kandinsky 5
def _build_kandinsky5(seed: int) -> VideoCase:
    model = _seeded(seed, lambda: Kandinsky5Transformer3DModel(
        in_visual_dim=CHANNELS, in_text_dim=TEXT_DIM, in_text_dim2=8, time_dim=16, out_visual_dim=CHANNELS,
        patch_size=(1, 2, 2), model_dim=INNER_DIM, ff_dim=32, num_text_blocks=1, num_visual_blocks=2,
        axes_dims=(4, 6, 6), visual_cond=False, attention_type="regular",
    ))

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, frames, height, width, CHANNELS),
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "pooled_projections": _randn(g, batch, 8),
            "visual_rope_pos": [torch.arange(frames), torch.arange(height // 2), torch.arange(width // 2)],
            "text_rope_pos": torch.arange(TEXT_LEN),
        }

    return VideoCase(
        name="kandinsky5", model=model, make_inputs=make_inputs, tokens=_tokens((1, 2, 2)), text_len=0,
        text_position="none", self_attention=tuple(f"visual_transformer_blocks.{i}.self_attention" for i in range(2)),
        attention_call="dispatch", patch=(1, 2, 2), frame=lambda t, i: t[:, i], output=lambda out: out,
    )


def _tokens(patch: tuple[int, int, int]) -> Callable[..., tuple[int, int, int]]:
    def tokens(frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames // patch[0], height // patch[1], width // patch[2]

    return tokens


_BUILDERS: dict[str, Callable[[int], VideoCase]] = {
    "hunyuan_video15": _build_hunyuan_video15,
    "framepack": _build_framepack,
    "ltx2": _build_ltx2,
    "cosmos": _build_cosmos,
    "kandinsky5": _build_kandinsky5,
}


def build(name: str, seed: int = 0, **config: object) -> VideoCase:
    """A tiny case by name (one of ``VIDEO_CASES``) with weights drawn from ``seed``; ``config``:
    constructor arguments replacing the tiny ones (``tiny_models.with_config``)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown case {name!r}; choose from {VIDEO_CASES}")
    return tiny_models.with_config(_BUILDERS[name](seed), seed, config)


def build_sana_video(seed: int = 0) -> torch.nn.Module:
    """A tiny SanaVideoTransformer3DModel (refused by headsparse: its self-attention is linear)."""
    return _seeded(seed, lambda: SanaVideoTransformer3DModel(
        in_channels=CHANNELS, out_channels=CHANNELS, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
        num_layers=1, num_cross_attention_heads=HEADS, cross_attention_head_dim=HEAD_DIM, cross_attention_dim=INNER_DIM,
        caption_channels=TEXT_DIM, sample_size=8, patch_size=(1, 2, 2),
    ))
