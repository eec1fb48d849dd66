"""Specs of the diffusers image transformers: FLUX.1 and Stable Diffusion 3 / 3.5.

Token order inside self-attention:
- FLUX ``transformer_blocks.N.attn`` (joint) and ``single_transformer_blocks.N.attn``: [text, image].
  The image grid is read from ``img_ids`` (row, column per packed 2x2 latent patch).
- SD3 ``transformer_blocks.N.attn`` (joint): [image, text]; SD3.5's ``attn2`` is image-only.
"""

from __future__ import annotations

import inspect
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


# ------------------------------------------------------------------------------------------------------------------
# Issue 22, image group: Qwen-Image, FLUX.2, Z-Image, Chroma, HiDream-I1, Lumina Image 2.0.
#
# Token order inside self-attention (every class was checked in its diffusers 0.42.1 source):
# - Qwen-Image ``transformer_blocks.N.attn`` (joint): [text, image, reference images]. ``img_shapes`` lists the
#   (frames, rows, cols) of each image in ``hidden_states``: the first is the one being denoised (the grid), the
#   rest are Qwen-Image-Edit's reference latents (trailing tokens). Padded text is a key mask over the text.
# - FLUX.2 ``transformer_blocks.N.attn`` / ``single_transformer_blocks.N.attn``: [text, image, reference images];
#   ``img_ids`` (t, row, col, l): the grid is the leading run of tokens with the first t (references have t 10, 20..).
# - Z-Image ``noise_refiner.N.attention``: [image, image padding]; ``layers.N.attention``: [image, image padding,
#   caption, caption padding] (padding: learned tokens up to a multiple of 32, attended like text); items of
#   different lengths are packed to the longest under a key mask. ``context_refiner`` (caption only) is left alone.
#   Omni mode (several images per item: [caption, images, SigLIP]) has no single grid and runs dense.
# - Chroma ``transformer_blocks.N.attn`` / ``single_transformer_blocks.N.attn``: [text, image], as FLUX.1.
# - HiDream-I1 ``double_stream_blocks.N.block.attn1`` / ``single_stream_blocks.N.block.attn1``: [image, image
#   padding, T5 text, Llama text]; non-square latents are padded to ``max_resolution`` with zero keys (attended
#   like text).
# - Lumina Image 2.0 ``noise_refiner.N.attn``: image only; ``layers.N.attn``: [item's caption, image], items packed
#   to the longest under a key mask. ``context_refiner`` (caption only) is left alone.

def _qwen_images(model: nn.Module, args: Mapping[str, Any]) -> list[tuple[int, int, int]] | None:
    """(frames, rows, cols) of each image in ``hidden_states``, read as the model reads ``img_shapes``."""
    shapes = args.get("img_shapes")
    if isinstance(shapes, list):  # one entry per batch item; the model uses the first
        shapes = shapes[0] if shapes else None
    if shapes is None:
        return None
    entries = shapes if isinstance(shapes, list) else [shapes]
    try:
        images = [tuple(int(n) for n in entry) for entry in entries]
    except (TypeError, ValueError):
        return None
    hidden = args.get("hidden_states")
    if any(len(i) != 3 for i in images) or hidden is None or hidden.dim() != 3:
        return None
    return images if sum(f * h * w for f, h, w in images) == hidden.shape[1] else None


def _qwen_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    images = _qwen_images(model, args)
    return None if images is None else images[0]


def _qwen_references(model: nn.Module, args: Mapping[str, Any]) -> int:
    images = _qwen_images(model, args) or []
    return sum(f * h * w for f, h, w in images[1:])


def _row_major(rows: torch.Tensor, cols: torch.Tensor) -> tuple[int, int] | None:
    """(height, width) when the (row, col) ids enumerate a full grid row by row, else None."""
    rows, cols = rows.long() - rows.min(), cols.long() - cols.min()
    height, width = int(rows.max()) + 1, int(cols.max()) + 1
    order = torch.arange(rows.shape[0], device=rows.device)
    if height * width != rows.shape[0] or not bool((rows * width + cols == order).all()):
        return None
    return height, width


def _flux2_images(args: Mapping[str, Any]) -> tuple[Grid, int] | None:
    """The grid of the image being denoised and the number of reference tokens after it, from ``img_ids``."""
    ids, hidden = args.get("img_ids"), args.get("hidden_states")
    if ids is None or hidden is None or hidden.dim() != 3:
        return None
    ids = ids[0] if ids.dim() == 3 else ids
    if ids.dim() != 2 or ids.shape[0] != hidden.shape[1] or ids.shape[0] == 0:
        return None
    first = ids[:, 0] == ids[0, 0]
    n = int(first.long().cumprod(0).sum())  # the leading run of tokens of the first image
    if bool(first[n:].any()):
        return None
    size = _row_major(ids[:n, 1], ids[:n, 2])
    return None if size is None else ((1, *size), ids.shape[0] - n)


def _flux2_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    found = _flux2_images(args)
    return None if found is None else found[0]


def _flux2_references(model: nn.Module, args: Mapping[str, Any]) -> int:
    found = _flux2_images(args)
    return 0 if found is None else found[1]


def _forward_default(model: nn.Module, name: str) -> Any:
    return inspect.signature(type(model).forward).parameters[name].default


def _z_image_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    images = args.get("x")
    if not isinstance(images, (list, tuple)) or not images or not all(hasattr(x, "dim") for x in images):
        return None  # omni mode: a list of images per item
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        return None  # items of different sizes have different grids
    _, frames, height, width = next(iter(shapes))
    p = int(args.get("patch_size", _forward_default(model, "patch_size")))
    pf = int(args.get("f_patch_size", _forward_default(model, "f_patch_size")))
    return (frames // pf, height // p, width // p)


def _hidream_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    hidden, p = args.get("hidden_states"), model.config.patch_size
    if hidden is None:
        return None
    if hidden.dim() == 4:
        return (1, hidden.shape[2] // p, hidden.shape[3] // p)
    sizes = args.get("img_sizes")  # already patchified: (rows, cols) per item
    if hidden.dim() != 3 or sizes is None:
        return None
    distinct = {tuple(int(n) for n in size) for size in sizes}
    return (1, *next(iter(distinct))) if len(distinct) == 1 and len(next(iter(distinct))) == 2 else None


def _lumina2_grid(model: nn.Module, args: Mapping[str, Any]) -> Grid | None:
    return _sd3_grid(model, args)


QWEN_IMAGE = register_spec(ModelSpec(
    "QwenImageTransformer2DModel", "diffusers-image", r"transformer_blocks\.\d+\.attn",
    ("QwenDoubleStreamAttnProcessor2_0",), "prefix", _qwen_grid, trailing_tokens=_qwen_references,
    notes="text, image, then reference images (edit); padded text masked",
))
FLUX2 = register_spec(ModelSpec(
    "Flux2Transformer2DModel", "diffusers-image", r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn",
    ("Flux2AttnProcessor", "Flux2ParallelSelfAttnProcessor"), "prefix", _flux2_grid,
    trailing_tokens=_flux2_references, notes="text, image, then reference images (edit); the KV-cache "
    "processors of FLUX.2 klein KV are not patched",
))
Z_IMAGE = register_spec(ModelSpec(
    "ZImageTransformer2DModel", "diffusers-image", r"(noise_refiner|layers)\.\d+\.attention",
    ("ZSingleStreamAttnProcessor",), "suffix", _z_image_grid, timestep_arg="t", timestep_rises=True,
    notes="image (+ padding) then caption; the caption refiner is untouched; omni mode runs dense",
))
CHROMA = register_spec(ModelSpec(
    "ChromaTransformer2DModel", "diffusers-image", r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn",
    ("FluxAttnProcessor", "FluxAttnProcessor2_0"), "prefix", _flux_grid, notes="text then image tokens",
))
HIDREAM_IMAGE = register_spec(ModelSpec(
    "HiDreamImageTransformer2DModel", "diffusers-image",
    r"(double_stream_blocks|single_stream_blocks)\.\d+\.block\.attn1", ("HiDreamAttnProcessor",), "suffix",
    _hidream_grid, timestep_arg="timesteps", notes="image (+ padding of non-square latents) then T5 and Llama text",
))
LUMINA2 = register_spec(ModelSpec(
    "Lumina2Transformer2DModel", "diffusers-image", r"(noise_refiner|layers)\.\d+\.attn",
    ("Lumina2AttnProcessor2_0",), "prefix", _lumina2_grid, timestep_rises=True,
    notes="caption then image (items packed to the longest caption); the caption refiner is untouched",
))
