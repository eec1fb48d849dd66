"""Tiny random-weight instances of the real diffusers transformers, with matching example inputs.

Everything is built offline from configs (no hub access), the way diffusers' own model tests configure their
tiny models: 2 heads of dimension 16, 2 layers, float32, ``eval()``, seeded weights. ``build(name)`` returns a
:class:`TinyCase`; ``build_wan_pipeline()`` and ``build_cogvideox_pipeline()`` return complete tiny pipelines.

Grid conventions of ``make_inputs(batch, frames, height, width, seed)`` (all in *latent* units; ``case.patch`` is
the number of latent units per token along (frames, height, width)):

- wan, hunyuan_video, mochi: ``hidden_states`` is (B, C, frames, height, width), spatial patch 2, temporal 1.
- cogvideox: ``hidden_states`` is (B, frames, C, height, width) (frames before channels), spatial patch 2,
  ``patch_size_t=None`` (CogVideoX 1.0): one token row per latent frame.
- ltx_video: patch sizes 1 (as in LTX-Video), so latent units are tokens; ``make_inputs`` packs the latent the way
  ``LTXPipeline._pack_latents`` does, into (B, frames*height*width, C), and passes the grid as
  ``num_frames``/``height``/``width``.
- flux: ``height``/``width`` are the token grid itself (the pipeline's 2x2 packing is already done):
  ``hidden_states`` is (B, height*width, C) with ``img_ids`` rows ``(0, row, col)``; ``frames`` must be 1.
- sd3: ``hidden_states`` is (B, C, height, width), patch 2; ``frames`` must be 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FluxTransformer2DModel,
    HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    MochiTransformer3DModel,
    SD3Transformer2DModel,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from transformers import T5EncoderModel

from headsparse.pipelines.tiny import build_tiny_wan_pipeline, t5_encoder_config, tiny_t5_tokenizer

CASE_NAMES: tuple[str, ...] = ("wan", "cogvideox", "hunyuan_video", "ltx_video", "mochi", "flux", "sd3")

HEADS = 2
HEAD_DIM = 16
INNER_DIM = HEADS * HEAD_DIM
TEXT_LEN = 7  # text tokens per prompt in make_inputs (odd, so it is never confused with a grid size)
TEXT_DIM = 16  # width of the (pre-projection) text embeddings
CHANNELS = 4  # latent channels

SELF_ATTENTION_NOTES: dict[str, str] = {
    "wan": (
        "blocks.{i}.attn1 (WanAttention, WanAttnProcessor) is video-only self-attention: dispatch_attention_fn "
        "with q/k/v (B, S, H, D), attn_mask=None. blocks.{i}.attn2 is cross-attention to the text (keys = text "
        "length). The pipeline runs CFG as two batch-1 calls."
    ),
    "cogvideox": (
        "transformer_blocks.{i}.attn1 (Attention, CogVideoXAttnProcessor2_0) is joint attention over "
        "cat([text, video]): F.scaled_dot_product_attention with q/k/v (B, H, S, D), attn_mask=None. RoPE (when "
        "image_rotary_emb is given) is applied to the video part only. The pipeline runs CFG as one batch-2 call."
    ),
    "hunyuan_video": (
        "transformer_blocks.{i}.attn (dual stream) and single_transformer_blocks.{i}.attn (single stream), both "
        "Attention + HunyuanVideoAttnProcessor2_0: joint attention over cat([video, text]) through "
        "dispatch_attention_fn with q/k/v (B, S, H, D) and a bool attn_mask (B, 1, 1, S), True = keep, False on "
        "padded text tokens (keys). context_embedder.token_refiner.refiner_blocks.{i}.attn is text-only "
        "(Attention + AttnProcessor2_0, F.scaled_dot_product_attention, bool mask (B, 1, T, T))."
    ),
    "ltx_video": (
        "transformer_blocks.{i}.attn1 (LTXAttention, LTXVideoAttnProcessor) is video-only self-attention: "
        "dispatch_attention_fn with q/k/v (B, S, H, D), attn_mask=None. transformer_blocks.{i}.attn2 is "
        "cross-attention to the text with an additive float mask (B, H, 1, T) built from encoder_attention_mask."
    ),
    "mochi": (
        "transformer_blocks.{i}.attn1 (MochiAttention, MochiAttnProcessor2_0) is joint attention over "
        "cat([video, valid text]): the processor loops over the batch and calls F.scaled_dot_product_attention "
        "once per sample with q/k/v (1, H, S_b, D), S_b = video + number of unmasked text tokens of sample b, "
        "attn_mask=None (padded text tokens are dropped, not masked). time_embed.pooler (MochiAttentionPool) also "
        "calls F.scaled_dot_product_attention (query length 1, 8 heads) on the text: not self-attention."
    ),
    "flux": (
        "transformer_blocks.{i}.attn (dual stream, FluxAttention with added kv projections) and "
        "single_transformer_blocks.{i}.attn (single stream, input already cat([text, image])), both "
        "FluxAttnProcessor: joint attention over cat([text, image]) through dispatch_attention_fn with q/k/v "
        "(B, S, H, D), attn_mask=None unless joint_attention_kwargs carries one."
    ),
    "sd3": (
        "transformer_blocks.{i}.attn (Attention, JointAttnProcessor2_0) is joint attention over cat([image, "
        "text]): F.scaled_dot_product_attention with q/k/v (B, H, S, D), no mask. The last block is "
        "context_pre_only (text still enters attention; its output is dropped). SD3.5 dual_attention_layers would "
        "add an image-only attn2; this tiny SD3 (3.0 style) has none."
    ),
}


@dataclass
class TinyCase:
    """A tiny transformer, its example inputs and where the text sits in its self-attention."""

    name: str
    model: torch.nn.Module
    make_inputs: Callable[..., dict]
    tokens: Callable[..., tuple[int, int, int]]
    text_len: int
    text_position: str
    self_attention: tuple[str, ...] = ()  # dotted paths of the (joint) self-attention modules
    attention_call: str = ""  # "dispatch": dispatch_attention_fn, (B, S, H, D); "sdpa": F.sdpa, (B, H, S, D)
    patch: tuple[int, int, int] = (1, 1, 1)  # latent units per token along (frames, height, width)
    defaults: tuple[int, int, int] = (2, 4, 6)  # make_inputs' default latent (frames, height, width)
    video: bool = True  # False: an image model, frames must be 1


def _seeded(seed: int, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a model under a private RNG state, give all-zero weight tensors random values, return eval()."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
        for param in model.parameters():
            # e.g. Mochi's pos_frequencies start at 0 (identity RoPE): make every path matter in tests
            if param.ndim >= 2 and not param.detach().any():
                torch.nn.init.normal_(param, std=0.5)
    return model.float().eval()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)


def _text_mask(batch: int, pad: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Right-padded text mask (B, TEXT_LEN): batch item 1 (if any) has its last ``pad`` tokens masked out."""
    mask = torch.ones(batch, TEXT_LEN, dtype=dtype)
    if batch > 1 and pad > 0:
        mask[1, TEXT_LEN - pad :] = 0
    return mask


def _grid_tokens(patch: tuple[int, int, int]) -> Callable[..., tuple[int, int, int]]:
    def tokens(frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames // patch[0], height // patch[1], width // patch[2]

    return tokens


def _image_tokens(patch: int) -> Callable[..., tuple[int, int, int]]:
    def tokens(frames: int, height: int, width: int) -> tuple[int, int, int]:
        return 1, height // patch, width // patch

    return tokens


def _check_image_frames(frames: int) -> None:
    if frames != 1:
        raise ValueError(f"image model: frames must be 1, got {frames}")


# ----------------------------------------------------------------------------------------------------------- Wan
def _build_wan(seed: int) -> TinyCase:
    model = _seeded(
        seed,
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            text_dim=TEXT_DIM,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, frames, height, width),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
        }

    return TinyCase(
        name="wan",
        model=model,
        make_inputs=make_inputs,
        tokens=_grid_tokens((1, 2, 2)),
        text_len=0,
        text_position="none",
        self_attention=tuple(f"blocks.{i}.attn1" for i in range(len(model.blocks))),
        attention_call="dispatch",
        patch=(1, 2, 2),
    )


# ----------------------------------------------------------------------------------------------------- CogVideoX
def _cogvideox_rope(model: torch.nn.Module, frames: int, h_tokens: int, w_tokens: int) -> tuple[torch.Tensor, ...]:
    """RoPE as CogVideoXPipeline._prepare_rotary_positional_embeddings builds it (CogVideoX 1.0, patch_size_t None)."""
    cfg = model.config
    base_h, base_w = cfg.sample_height // cfg.patch_size, cfg.sample_width // cfg.patch_size
    return get_3d_rotary_pos_embed(
        embed_dim=cfg.attention_head_dim,
        crops_coords=get_resize_crop_region_for_grid((h_tokens, w_tokens), base_w, base_h),
        grid_size=(h_tokens, w_tokens),
        temporal_size=frames,
    )


def _build_cogvideox(seed: int) -> TinyCase:
    # CogVideoX-5b style: RoPE instead of the sincos table (so any grid works), patch_size_t None.
    model = _seeded(
        seed,
        lambda: CogVideoXTransformer3DModel(
            num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            time_embed_dim=4,
            text_embed_dim=TEXT_DIM,
            num_layers=2,
            sample_width=8,
            sample_height=8,
            sample_frames=9,
            patch_size=2,
            patch_size_t=None,
            temporal_compression_ratio=4,
            max_text_seq_length=TEXT_LEN,
            use_rotary_positional_embeddings=True,
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, frames, CHANNELS, height, width),
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "timestep": torch.randint(0, 1000, (batch,), generator=g),
            "image_rotary_emb": _cogvideox_rope(model, frames, height // 2, width // 2),
        }

    return TinyCase(
        name="cogvideox",
        model=model,
        make_inputs=make_inputs,
        tokens=_grid_tokens((1, 2, 2)),
        text_len=TEXT_LEN,
        text_position="prefix",
        self_attention=tuple(f"transformer_blocks.{i}.attn1" for i in range(len(model.transformer_blocks))),
        attention_call="sdpa",
        patch=(1, 2, 2),
    )


# ------------------------------------------------------------------------------------------------- HunyuanVideo
HUNYUAN_TEXT_PAD = 3  # padded text tokens of batch item 1


def _build_hunyuan_video(seed: int) -> TinyCase:
    model = _seeded(
        seed,
        lambda: HunyuanVideoTransformer3DModel(
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=2,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=TEXT_DIM,
            pooled_projection_dim=8,
            rope_axes_dim=(4, 6, 6),
            image_condition_type=None,
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, frames, height, width),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            # the pipeline passes the tokenizer mask cast to the transformer dtype; right padding only
            "encoder_attention_mask": _text_mask(batch, HUNYUAN_TEXT_PAD),
            "pooled_projections": _randn(g, batch, 8),
            "guidance": torch.full((batch,), 6.0 * 1000),
        }

    paths = tuple(f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))) + tuple(
        f"single_transformer_blocks.{i}.attn" for i in range(len(model.single_transformer_blocks))
    )
    return TinyCase(
        name="hunyuan_video",
        model=model,
        make_inputs=make_inputs,
        tokens=_grid_tokens((1, 2, 2)),
        text_len=TEXT_LEN,
        text_position="suffix",
        self_attention=paths,
        attention_call="dispatch",
        patch=(1, 2, 2),
    )


# ---------------------------------------------------------------------------------------------------- LTX-Video
LTX_TEXT_PAD = 2  # padded text tokens of batch item 1 (cross-attention only)


def _build_ltx_video(seed: int) -> TinyCase:
    model = _seeded(
        seed,
        lambda: LTXVideoTransformer3DModel(
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM,
            cross_attention_dim=INNER_DIM,
            num_layers=2,
            qk_norm="rms_norm_across_heads",
            caption_channels=TEXT_DIM,
        ),
    )
    p, pt = model.config.patch_size, model.config.patch_size_t

    def make_inputs(batch: int = 1, frames: int = 2, height: int = 2, width: int = 3, seed: int = 0) -> dict:
        g = _gen(seed)
        latents = _randn(g, batch, CHANNELS, frames, height, width)
        # LTXPipeline._pack_latents: (B, C, F, H, W) -> (B, F/pt * H/p * W/p, C * pt * p * p), frame-major
        f, h, w = frames // pt, height // p, width // p
        packed = latents.reshape(batch, CHANNELS, f, pt, h, p, w, p)
        packed = packed.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)
        return {
            "hidden_states": packed,
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_attention_mask": _text_mask(batch, LTX_TEXT_PAD, torch.long),
            "num_frames": f,
            "height": h,
            "width": w,
        }

    return TinyCase(
        name="ltx_video",
        model=model,
        make_inputs=make_inputs,
        tokens=_grid_tokens((pt, p, p)),
        text_len=0,
        text_position="none",
        self_attention=tuple(f"transformer_blocks.{i}.attn1" for i in range(len(model.transformer_blocks))),
        attention_call="dispatch",
        patch=(pt, p, p),
        defaults=(2, 2, 3),
    )


# -------------------------------------------------------------------------------------------------------- Mochi
def _build_mochi(seed: int) -> TinyCase:
    model = _seeded(
        seed,
        lambda: MochiTransformer3DModel(
            patch_size=2,
            num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM,
            num_layers=2,
            pooled_projection_dim=16,
            in_channels=CHANNELS,
            out_channels=None,
            qk_norm="rms_norm",
            text_embed_dim=TEXT_DIM,  # divisible by the 8 heads of its attention pooler
            time_embed_dim=4,
            activation_fn="swiglu",
            max_sequence_length=16,
        ),
    )

    def make_inputs(
        batch: int = 1, frames: int = 2, height: int = 4, width: int = 6, seed: int = 0, pad_text: int = 0
    ) -> dict:
        """``pad_text`` masks the last text tokens of batch item 1 (Mochi then drops them from its attention)."""
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, frames, height, width),
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "encoder_attention_mask": _text_mask(batch, pad_text, torch.bool),
        }

    return TinyCase(
        name="mochi",
        model=model,
        make_inputs=make_inputs,
        tokens=_grid_tokens((1, 2, 2)),
        text_len=TEXT_LEN,
        text_position="suffix",
        self_attention=tuple(f"transformer_blocks.{i}.attn1" for i in range(len(model.transformer_blocks))),
        attention_call="sdpa",
        patch=(1, 2, 2),
    )


# --------------------------------------------------------------------------------------------------------- Flux
def _build_flux(seed: int) -> TinyCase:
    model = _seeded(
        seed,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=CHANNELS * 4,  # 2x2-packed latent channels
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS,
            joint_attention_dim=TEXT_DIM,
            pooled_projection_dim=8,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 1, height: int = 2, width: int = 3, seed: int = 0) -> dict:
        """``height``/``width`` are the token grid (latent // 2): the latents are already packed."""
        _check_image_frames(frames)
        g = _gen(seed)
        img_ids = torch.zeros(height, width, 3)
        img_ids[..., 1] = torch.arange(height)[:, None]
        img_ids[..., 2] = torch.arange(width)[None, :]
        return {
            "hidden_states": _randn(g, batch, height * width, CHANNELS * 4),
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "pooled_projections": _randn(g, batch, 8),
            "timestep": torch.rand(batch, generator=g),  # in [0, 1]: the model multiplies by 1000
            "img_ids": img_ids.reshape(height * width, 3),
            "txt_ids": torch.zeros(TEXT_LEN, 3),
            "guidance": torch.full((batch,), 3.5),
        }

    paths = tuple(f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))) + tuple(
        f"single_transformer_blocks.{i}.attn" for i in range(len(model.single_transformer_blocks))
    )
    return TinyCase(
        name="flux",
        model=model,
        make_inputs=make_inputs,
        tokens=_image_tokens(1),
        text_len=TEXT_LEN,
        text_position="prefix",
        self_attention=paths,
        attention_call="dispatch",
        patch=(1, 1, 1),
        defaults=(1, 2, 3),
        video=False,
    )


# ---------------------------------------------------------------------------------------------------------- SD3
def _build_sd3(seed: int) -> TinyCase:
    model = _seeded(
        seed,
        lambda: SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=CHANNELS,
            num_layers=2,
            attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS,
            caption_projection_dim=INNER_DIM,
            joint_attention_dim=TEXT_DIM,
            pooled_projection_dim=8,
            out_channels=CHANNELS,
            pos_embed_max_size=16,
            dual_attention_layers=(),
            qk_norm=None,
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 1, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        _check_image_frames(frames)
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, height, width),
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "pooled_projections": _randn(g, batch, 8),
            "timestep": torch.rand(batch, generator=g) * 1000,
        }

    return TinyCase(
        name="sd3",
        model=model,
        make_inputs=make_inputs,
        tokens=_image_tokens(2),
        text_len=TEXT_LEN,
        text_position="suffix",
        self_attention=tuple(f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))),
        attention_call="sdpa",
        patch=(1, 2, 2),
        defaults=(1, 4, 6),
        video=False,
    )


_BUILDERS: dict[str, Callable[[int], TinyCase]] = {
    "wan": _build_wan,
    "cogvideox": _build_cogvideox,
    "hunyuan_video": _build_hunyuan_video,
    "ltx_video": _build_ltx_video,
    "mochi": _build_mochi,
    "flux": _build_flux,
    "sd3": _build_sd3,
}


def build(name: str, seed: int = 0, **config: object) -> TinyCase:
    """A tiny case by name (one of ``CASE_NAMES``) with weights drawn from ``seed``; ``config``: constructor
    arguments replacing the tiny ones (:func:`with_config`)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown case {name!r}; choose from {CASE_NAMES}")
    return with_config(_BUILDERS[name](seed), seed, config)


def with_config(case: TinyCase, seed: int, config: dict) -> TinyCase:
    """``case`` with its model rebuilt (seeded the same way) from its config with ``config``'s constructor arguments
    in place of the tiny ones, e.g. real head counts and widths for ``benchmarks/families.py``.

    ``make_inputs`` is unchanged (so are the input widths it draws: latent channels, text width and length), and
    ``self_attention`` names the default config's modules. Empty ``config``: ``case`` itself.
    """
    if not config:
        return case
    cls, base = type(case.model), dict(case.model.config)
    unknown = sorted(set(config) - set(base))
    if unknown:
        raise TypeError(f"{cls.__name__} has no config argument {', '.join(unknown)}")
    return dataclasses.replace(case, model=_seeded(seed, lambda: cls.from_config({**base, **config})))


# ----------------------------------------------------------------------------------------------------- pipelines
def build_wan_pipeline(seed: int = 0) -> WanPipeline:
    """A tiny WanPipeline (UMT5 encoder, AutoencoderKLWan, flow-matching Euler) built offline: the package's
    ``test`` size (2 heads of 16, 2 layers, random heads).

    Use height/width multiples of 16 and ``num_frames = 4k + 1``; CFG runs two batch-1 transformer calls.
    """
    return build_tiny_wan_pipeline("test", seed)


def build_cogvideox_pipeline(seed: int = 0) -> CogVideoXPipeline:
    """A tiny CogVideoXPipeline (T5 encoder, AutoencoderKLCogVideoX, CogVideoX DDIM) built offline.

    CogVideoX 1.0 (2b) style: sincos positions, which need the text length to equal ``max_text_seq_length``
    (226, the pipeline's default ``max_sequence_length``). Height/width at least 16 (the tiny VAE downsamples by 8);
    CFG runs one batch-2 transformer call.
    """
    tokenizer = tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            time_embed_dim=4,
            text_embed_dim=32,
            num_layers=2,
            sample_width=2,
            sample_height=2,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=226,
        )
        vae = AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=CHANNELS,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        )
        text_encoder = T5EncoderModel(t5_encoder_config(len(tokenizer)))
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=CogVideoXDDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_tokens(case: TinyCase, frames: int, height: int, width: int) -> int:
    """Video/image tokens of a latent grid: the product of ``case.tokens``."""
    return math.prod(case.tokens(frames, height, width))
