"""Tiny random-weight instances of the diffusers image transformers of issue 22 (image group), with inputs.

Qwen-Image, FLUX.2, Z-Image, Chroma, HiDream-I1 and Lumina Image 2.0, built offline from configs like the ones
in ``tiny_models`` (2 heads of dimension 16, 1-2 layers of each kind, float32, ``eval()``, seeded weights).
``build(name)`` returns an :class:`ImageCase`: a :class:`tiny_models.TinyCase` that also knows how to run the
model (Z-Image takes and returns lists) and which part of an input or output tensor is one token row.

Grid conventions of ``make_inputs(batch, frames=1, height, width, seed, ...)``:

- qwen_image, flux2, chroma: ``height``/``width`` are the token grid (the pipelines pack 2x2 latent patches
  before the transformer): ``hidden_states`` is (B, height*width, 4*4).
- z_image, hidream, lumina2: latent units, patch 2; z_image's ``x`` is a list of (4, 1, height, width) tensors.

Extras: ``pad_text`` (the last text tokens of batch item 1 are padding: a mask, or for z_image a shorter
caption), ``reference=(rows, cols)`` (qwen_image, flux2: a reference image after the noisy one, as the edit
pipelines append it), ``mask`` (chroma: "float" as ChromaPipeline builds it, or "bool").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    ChromaTransformer2DModel,
    Flux2Transformer2DModel,
    HiDreamImageTransformer2DModel,
    Lumina2Transformer2DModel,
    QwenImageTransformer2DModel,
    ZImageTransformer2DModel,
)
from tiny_models import (
    CHANNELS,
    HEAD_DIM,
    HEADS,
    INNER_DIM,
    TEXT_DIM,
    TEXT_LEN,
    TinyCase,
    _check_image_frames,
    _gen,
    _image_tokens,
    _randn,
    _seeded,
    _text_mask,
)

CASE_NAMES: tuple[str, ...] = ("qwen_image", "flux2", "z_image", "chroma", "hidream", "lumina2")

PACKED = CHANNELS * 4  # channels of a 2x2-packed latent token
LLAMA_DIM = 8  # HiDream's Llama hidden size (tiny)
LLAMA_LEN = 5  # HiDream's Llama tokens
HIDREAM_MAX = (16, 16)  # HiDream's max_resolution (latent): non-square latents are padded to 8 x 8 = 64 tokens


@dataclass
class ImageCase(TinyCase):
    """A TinyCase that runs its model to one output tensor and slices token rows out of inputs and outputs."""

    # (tensor, row, cols) -> the view of that token row of a grid ``cols`` tokens wide in the model's input
    # latent or output (the same layout for both)
    row: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    input_key: str = "hidden_states"

    def run(self, inputs: dict) -> torch.Tensor:
        with torch.no_grad():
            out = self.model(**inputs, return_dict=False)[0]
        return torch.stack(list(out)) if isinstance(out, (list, tuple)) else out

    def latent(self, inputs: dict) -> torch.Tensor:
        """The input latent as one tensor (z_image's list of items stacked)."""
        x = inputs[self.input_key]
        return torch.stack(list(x)) if isinstance(x, (list, tuple)) else x

    def with_latent(self, inputs: dict, latent: torch.Tensor) -> dict:
        value = list(latent.unbind(0)) if isinstance(inputs[self.input_key], (list, tuple)) else latent
        return {**inputs, self.input_key: value}


def _packed_row(t: torch.Tensor, r: int, cols: int) -> torch.Tensor:
    """Row r of the grid in a packed (B, S, C) sequence whose grid comes first."""
    return t[:, r * cols : (r + 1) * cols]


def _latent_rows(patch: int) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """Row r of the token grid in a (..., H, W) latent: ``patch`` latent rows."""
    return lambda t, r, cols: t[..., r * patch : (r + 1) * patch, :]


# ---------------------------------------------------------------------------------------------------- Qwen-Image
def _build_qwen_image(seed: int) -> ImageCase:
    model = _seeded(
        seed,
        lambda: QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=PACKED,
            out_channels=CHANNELS,
            num_layers=2,
            attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS,
            joint_attention_dim=TEXT_DIM,
            axes_dims_rope=(8, 4, 4),
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 1, height: int = 2, width: int = 3, seed: int = 0,
                    pad_text: int = 0, reference: tuple[int, int] | None = None, text: int = TEXT_LEN) -> dict:
        _check_image_frames(frames)
        g = _gen(seed)
        images = [(1, height, width)] + ([(1, *reference)] if reference else [])
        tokens = sum(math.prod(i) for i in images)
        inputs = {
            "hidden_states": _randn(g, batch, tokens, PACKED),
            "encoder_hidden_states": _randn(g, batch, text, TEXT_DIM),
            "timestep": torch.rand(batch, generator=g),
            "img_shapes": [images] * batch,
        }
        if pad_text:  # QwenImagePipeline passes the tokenizer mask (None when nothing is padded)
            inputs["encoder_hidden_states_mask"] = _text_mask(batch, pad_text, torch.long)[:, :text]
        return inputs

    return ImageCase(
        name="qwen_image", model=model, make_inputs=make_inputs, tokens=_image_tokens(1), text_len=TEXT_LEN,
        text_position="prefix",
        self_attention=tuple(f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))),
        attention_call="dispatch", defaults=(1, 2, 3), video=False, row=_packed_row,
    )


# --------------------------------------------------------------------------------------------------------- FLUX.2
def _flux2_ids(t: int, height: int, width: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.tensor([t]), torch.arange(height), torch.arange(width), torch.tensor([0]))


def _build_flux2(seed: int) -> ImageCase:
    model = _seeded(
        seed,
        lambda: Flux2Transformer2DModel(
            patch_size=1,
            in_channels=PACKED,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS,
            joint_attention_dim=TEXT_DIM,
            timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4),
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 1, height: int = 2, width: int = 3, seed: int = 0,
                    reference: tuple[int, int] | None = None, text: int = TEXT_LEN) -> dict:
        """``reference``: one reference image after the noisy one, with t = 10 as Flux2Pipeline numbers it."""
        _check_image_frames(frames)
        g = _gen(seed)
        ids = [_flux2_ids(0, height, width)] + ([_flux2_ids(10, *reference)] if reference else [])
        img_ids = torch.cat(ids)
        txt_ids = torch.cartesian_prod(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.arange(text))
        return {
            "hidden_states": _randn(g, batch, img_ids.shape[0], PACKED),
            "encoder_hidden_states": _randn(g, batch, text, TEXT_DIM),
            "timestep": torch.rand(batch, generator=g),  # in [0, 1]: the model multiplies by 1000
            "img_ids": img_ids[None].expand(batch, -1, -1),
            "txt_ids": txt_ids[None].expand(batch, -1, -1),
            "guidance": torch.full((batch,), 4.0),
        }

    paths = tuple(f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))) + tuple(
        f"single_transformer_blocks.{i}.attn" for i in range(len(model.single_transformer_blocks))
    )
    return ImageCase(
        name="flux2", model=model, make_inputs=make_inputs, tokens=_image_tokens(1), text_len=TEXT_LEN,
        text_position="prefix", self_attention=paths, attention_call="dispatch", defaults=(1, 2, 3), video=False,
        row=_packed_row,
    )


# -------------------------------------------------------------------------------------------------------- Z-Image
Z_PAD = 32  # Z-Image pads image and caption tokens to a multiple of 32


def _build_z_image(seed: int) -> ImageCase:
    model = _seeded(
        seed,
        lambda: ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=CHANNELS,
            dim=INNER_DIM,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=HEADS,
            n_kv_heads=HEADS,
            cap_feat_dim=TEXT_DIM,
            axes_dims=[8, 4, 4],
            axes_lens=[256, 32, 32],
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 1, height: int = 4, width: int = 6, seed: int = 0,
                    captions: tuple[int, ...] | None = None) -> dict:
        """``captions``: caption lengths per item (default ``TEXT_LEN`` each); lengths in different multiples
        of 32 give items of different lengths, which the model packs under a key mask."""
        _check_image_frames(frames)
        g = _gen(seed)
        lengths = captions or (TEXT_LEN,) * batch
        return {
            "x": [_randn(g, CHANNELS, 1, height, width) for _ in range(batch)],
            "t": torch.rand(batch, generator=g),  # 1 - sigma: rises while denoising
            "cap_feats": [_randn(g, n, TEXT_DIM) for n in lengths],
        }

    paths = tuple(f"noise_refiner.{i}.attention" for i in range(len(model.noise_refiner))) + tuple(
        f"layers.{i}.attention" for i in range(len(model.layers))
    )
    return ImageCase(
        name="z_image", model=model, make_inputs=make_inputs, tokens=_image_tokens(2), text_len=Z_PAD,
        text_position="suffix", self_attention=paths, attention_call="dispatch", patch=(1, 2, 2),
        defaults=(1, 4, 6), video=False, row=_latent_rows(2), input_key="x",
    )


# --------------------------------------------------------------------------------------------------------- Chroma
def _build_chroma(seed: int) -> ImageCase:
    model = _seeded(
        seed,
        lambda: ChromaTransformer2DModel(
            patch_size=1,
            in_channels=PACKED,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS,
            joint_attention_dim=TEXT_DIM,
            axes_dims_rope=(4, 6, 6),
            approximator_num_channels=8,
            approximator_hidden_dim=16,
            approximator_layers=1,
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 1, height: int = 2, width: int = 3, seed: int = 0,
                    pad_text: int = 0, mask: str | None = None, text: int = TEXT_LEN) -> dict:
        """``mask``: pass ``attention_mask`` over [text, image] as ChromaPipeline does: its text part keeps
        the prompt and one padding token (item 1 has ``pad_text`` padded tokens); "float" is the pipeline's
        dtype (the text encoder's), "bool" a boolean mask."""
        _check_image_frames(frames)
        g = _gen(seed)
        img_ids = torch.zeros(height, width, 3)
        img_ids[..., 1] = torch.arange(height)[:, None]
        img_ids[..., 2] = torch.arange(width)[None, :]
        inputs = {
            "hidden_states": _randn(g, batch, height * width, PACKED),
            "encoder_hidden_states": _randn(g, batch, text, TEXT_DIM),
            "timestep": torch.rand(batch, generator=g),
            "img_ids": img_ids.reshape(height * width, 3),
            "txt_ids": torch.zeros(text, 3),
        }
        if mask is not None:
            keep = torch.ones(batch, text)
            if batch > 1 and pad_text > 1:
                keep[1, text - pad_text + 1 :] = 0  # the prompt and one padding token are kept
            dtype = torch.float32 if mask == "float" else torch.bool
            image = torch.ones(batch, height * width, dtype=torch.bool)
            inputs["attention_mask"] = torch.cat([keep.to(dtype), image], dim=1)  # float: cat promotes to float
        return inputs

    paths = tuple(f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))) + tuple(
        f"single_transformer_blocks.{i}.attn" for i in range(len(model.single_transformer_blocks))
    )
    return ImageCase(
        name="chroma", model=model, make_inputs=make_inputs, tokens=_image_tokens(1), text_len=TEXT_LEN,
        text_position="prefix", self_attention=paths, attention_call="dispatch", defaults=(1, 2, 3), video=False,
        row=_packed_row,
    )


# ------------------------------------------------------------------------------------------------------- HiDream
def _build_hidream(seed: int) -> ImageCase:
    model = _seeded(
        seed,
        lambda: HiDreamImageTransformer2DModel(
            patch_size=2,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS,
            caption_channels=[TEXT_DIM, LLAMA_DIM],
            text_emb_dim=8,
            num_routed_experts=0,
            axes_dims_rope=(8, 4, 4),
            max_resolution=HIDREAM_MAX,
            llama_layers=(0, 1),
            force_inference_output=True,
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 1, height: int = 4, width: int = 6, seed: int = 0) -> dict:
        """A non-square latent is padded by the model to ``HIDREAM_MAX`` (zero keys after the grid)."""
        _check_image_frames(frames)
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, height, width),
            "timesteps": torch.rand(batch, generator=g) * 1000,
            "encoder_hidden_states_t5": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "encoder_hidden_states_llama3": _randn(g, 2, batch, LLAMA_LEN, LLAMA_DIM),
            "pooled_embeds": _randn(g, batch, 8),
        }

    paths = tuple(f"double_stream_blocks.{i}.block.attn1" for i in range(len(model.double_stream_blocks))) + tuple(
        f"single_stream_blocks.{i}.block.attn1" for i in range(len(model.single_stream_blocks))
    )
    return ImageCase(
        name="hidream", model=model, make_inputs=make_inputs, tokens=_image_tokens(2),
        text_len=TEXT_LEN + 2 * LLAMA_LEN, text_position="suffix", self_attention=paths, attention_call="sdpa",
        patch=(1, 2, 2), defaults=(1, 4, 6), video=False, row=_latent_rows(2),
    )


# ------------------------------------------------------------------------------------------------------ Lumina 2
def _build_lumina2(seed: int) -> ImageCase:
    model = _seeded(
        seed,
        lambda: Lumina2Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=CHANNELS,
            hidden_size=INNER_DIM,
            num_layers=2,
            num_refiner_layers=1,
            num_attention_heads=HEADS,
            num_kv_heads=1,  # grouped-query attention: the processor repeats k/v before attention
            multiple_of=2,
            axes_dim_rope=(8, 4, 4),
            axes_lens=(64, 32, 32),
            cap_feat_dim=TEXT_DIM,
        ),
    )

    def make_inputs(batch: int = 1, frames: int = 1, height: int = 4, width: int = 6, seed: int = 0,
                    pad_text: int = 0) -> dict:
        """``pad_text``: item 1's caption is shorter; the model packs [caption, image] per item to the longest."""
        _check_image_frames(frames)
        g = _gen(seed)
        return {
            "hidden_states": _randn(g, batch, CHANNELS, height, width),
            "timestep": torch.rand(batch, generator=g),  # 1 - t / 1000: rises while denoising
            "encoder_hidden_states": _randn(g, batch, TEXT_LEN, TEXT_DIM),
            "encoder_attention_mask": _text_mask(batch, pad_text, torch.bool),
        }

    paths = tuple(f"noise_refiner.{i}.attn" for i in range(len(model.noise_refiner))) + tuple(
        f"layers.{i}.attn" for i in range(len(model.layers))
    )
    return ImageCase(
        name="lumina2", model=model, make_inputs=make_inputs, tokens=_image_tokens(2), text_len=TEXT_LEN,
        text_position="prefix", self_attention=paths, attention_call="sdpa", patch=(1, 2, 2), defaults=(1, 4, 6),
        video=False, row=_latent_rows(2),
    )


_BUILDERS: dict[str, Callable[[int], ImageCase]] = {
    "qwen_image": _build_qwen_image,
    "flux2": _build_flux2,
    "z_image": _build_z_image,
    "chroma": _build_chroma,
    "hidream": _build_hidream,
    "lumina2": _build_lumina2,
}


def build(name: str, seed: int = 0) -> ImageCase:
    """A tiny case by name (one of ``CASE_NAMES``) with weights drawn from ``seed``."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown case {name!r}; choose from {CASE_NAMES}")
    return _BUILDERS[name](seed)


def grid_inputs(case: ImageCase, rows: int, cols: int, **extras: Any) -> dict:
    """Inputs whose token grid is ``rows`` x ``cols``, in the case's own units."""
    p = case.patch[1]
    return case.make_inputs(**{"height": rows * p, "width": cols * p, **extras})
