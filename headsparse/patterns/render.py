"""Pictures of patterns: a pattern is understood from its mask on a small geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from headsparse.patterns.base import Pattern
from headsparse.patterns.geometry import Geometry

_KEPT = (31, 119, 180)
_DROPPED = (245, 245, 245)
_TEXT = (255, 187, 120)


def render_mask(pattern: Pattern, geometry: Geometry, path: str | Path, *, scale: int = 4) -> Path:
    """Write the pattern's exact [L, L] mask as a PNG (queries down, keys across).

    Kept pairs are blue; rows and columns of text tokens are tinted so joint attention is visible.
    Meant for small geometries (L up to a few hundred tokens).
    """
    if geometry.seq_len > 2048:
        raise ValueError(f"render_mask draws every pair; geometry has {geometry.seq_len} tokens (max 2048)")
    mask = pattern.dense_mask(geometry).numpy()
    is_text = geometry.coords(torch.arange(geometry.seq_len))[3].numpy()
    img = np.empty((*mask.shape, 3), dtype=np.uint8)
    img[:] = _DROPPED
    tinted = is_text[:, None] | is_text[None, :]
    img[tinted & ~mask] = _TEXT
    img[mask] = _KEPT
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(img).resize((mask.shape[1] * scale, mask.shape[0] * scale), Image.Resampling.NEAREST)
    image.save(out)
    return out
