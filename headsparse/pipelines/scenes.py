"""The in-house drifting-scenes model: a pixel-space ``WanTransformer3DModel`` whose heads see real video structure.

Trained on this CPU by :mod:`headsparse.pipelines.train` on :mod:`headsparse.pipelines.drifting_scenes`:
textured backgrounds drifting under a captioned camera pan with one to three captioned moving
objects. Clips of about a thousand tokens (16 frames of 32x32 pixels, 4 of 64x64, 8 of 48x48, with
4x4-pixel tokens) teach it long time and wide frames; it generates at 16 frames of 64x64 pixels
(4096 tokens), the demo grid, where attention is most of its time. No position channels: its
inputs are pixels only, so it is translation-equivariant and a wider canvas is just more scene.
The weights ship inside the package (``weights/drifting_scenes``) and load offline with
:func:`load_scenes_pipeline`; the model card is ``docs/embedded-models.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from headsparse.pipelines import drifting_scenes
from headsparse.pipelines.pixel_video import (
    PixelModelSize,
    PixelVideoPipeline,
    flow_scheduler,
    load_pixel_pipeline,
)
from headsparse.pipelines.pixel_video import (
    build_components as build_pixel_components,
)

WEIGHTS = Path(__file__).resolve().parent / "weights" / "drifting_scenes"
MAX_TOKENS = 24  # longest caption (three objects): 22 words + </s>
SHIFT = 2.0
# Clip sizes (frames, height, width) in pixels the model trains on, in turn, step by step.
TRAIN_SIZES = ((16, 32, 32), (4, 64, 64), (8, 48, 48))
DEMO_SIZE = (16, 64, 64)

ScenesSize = PixelModelSize


def default_size() -> PixelModelSize:
    f, h, w = TRAIN_SIZES[0]
    return PixelModelSize(frames=f, height=h, width=w)


def build_components(size: PixelModelSize | None = None, seed: int = 0) -> dict:
    """Fresh (untrained) tokenizer, frozen random text encoder and transformer, from ``seed``."""
    return build_pixel_components(size or default_size(), drifting_scenes.vocabulary(), seed)


class DriftingScenesPipeline(PixelVideoPipeline):
    """Text-to-video with the drifting-scenes model (prompts: 'a red circle moving left on a striped
    background drifting up'; see ``drifting_scenes``)."""

    max_caption_tokens = MAX_TOKENS
    default_size = DEMO_SIZE


def scenes_scheduler(shift: float = SHIFT):
    return flow_scheduler(shift)


def load_scenes_pipeline(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu") -> DriftingScenesPipeline:
    """The trained drifting-scenes pipeline from ``path`` (default: the weights shipped in the package)."""
    return load_pixel_pipeline(DriftingScenesPipeline, path if path is not None else WEIGHTS, dtype, device,
                               "drifting-scenes", "python -m headsparse.pipelines.train --dataset scenes --out DIR")
