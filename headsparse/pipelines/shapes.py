"""The in-house moving-shapes model: a small ``WanTransformer3DModel`` trained here, and its pipeline.

What it is: a pixel-space Wan transformer (:mod:`headsparse.pipelines.pixel_video`) of 6 layers x 4
heads x 32 channels, trained on this CPU by :mod:`headsparse.pipelines.train` on the procedural clips
of :mod:`headsparse.pipelines.moving_shapes` (8 frames of 32x32 pixels: 8 x 8 x 8 = 512 tokens). The
clips are flat colours on flat backgrounds. At generation more frames keep one coherent object
(16 frames of 32x32: 1024 tokens), while a larger frame (48x48, 64x64) repeats the object at its
training size. The shipped weights have (t, y, x) position channels (``positions=True``); they ship
inside the package (``weights/moving_shapes``) and load offline with :func:`load_moving_shapes_pipeline`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from headsparse.pipelines import moving_shapes
from headsparse.pipelines.pixel_video import (
    POSITION_CHANNELS,
    PixelModelSize,
    PixelVideoPipeline,
    flow_scheduler,
    load_pixel_pipeline,
    with_positions,
    word_tokenizer,
)
from headsparse.pipelines.pixel_video import (
    build_components as build_pixel_components,
)

__all__ = ["MAX_TOKENS", "POSITION_CHANNELS", "SHIFT", "WEIGHTS", "MovingShapesPipeline", "ShapesSize",
           "build_components", "load_moving_shapes_pipeline", "shapes_scheduler", "shapes_tokenizer",
           "with_positions"]

WEIGHTS = Path(__file__).resolve().parent / "weights" / "moving_shapes"
MAX_TOKENS = 16  # longest caption: "a yellow triangle bouncing right on a gray background" + </s>
# Noise-level shift (as in SD3 / Wan): training samples and the sampler's steps lean towards high
# noise, where a video's layout (where the shape is in every frame) is decided.
SHIFT = 2.0

ShapesSize = PixelModelSize  # the architecture and training clip (8 frames of 32x32 pixels by default)


def shapes_tokenizer():
    """A T5 (Unigram) tokenizer over the dataset's words: one token per word, nothing downloaded."""
    return word_tokenizer(moving_shapes.vocabulary())


def build_components(size: ShapesSize | None = None, seed: int = 0) -> dict:
    """Fresh (untrained) tokenizer, frozen random text encoder and transformer, from ``seed``."""
    return build_pixel_components(size or ShapesSize(), moving_shapes.vocabulary(), seed)


class MovingShapesPipeline(PixelVideoPipeline):
    """Text-to-video with the moving-shapes model (prompts: 'a red circle bouncing right ...')."""

    max_caption_tokens = MAX_TOKENS
    default_size = (8, 32, 32)


def shapes_scheduler(shift: float = SHIFT):
    return flow_scheduler(shift)


def load_moving_shapes_pipeline(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
                                device: str | torch.device = "cpu") -> MovingShapesPipeline:
    """The trained moving-shapes pipeline from ``path`` (default: the weights shipped in the package).

    ``path`` is a folder written by ``MovingShapesPipeline.save_pretrained`` (the training script
    writes one); nothing is downloaded.
    """
    return load_pixel_pipeline(MovingShapesPipeline, path if path is not None else WEIGHTS, dtype, device,
                               "moving-shapes", "python -m headsparse.pipelines.train --dataset shapes --out DIR")
