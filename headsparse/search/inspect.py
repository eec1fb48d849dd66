"""Read a plan back: a per-layer table and a heatmap of which pattern each head runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from headsparse.plan import Plan

# One colour per pattern family (others grey); dense is black so the dense share stands out.
FAMILY_COLOURS = {
    "dense": (20, 20, 20), "skip": (255, 255, 255), "spatial": (31, 119, 180), "temporal": (255, 127, 14),
    "neighborhood": (44, 160, 44), "sliding_tile": (152, 223, 138), "diagonal": (214, 39, 40),
    "multi_diagonal": (255, 152, 150), "vertical_stripe": (148, 103, 189), "textural": (140, 86, 75),
    "pooled": (227, 119, 194),
}


def plan_table(plan: Plan) -> str:
    """Per transformer, phase and layer: how many heads run each pattern."""
    lines = []
    for key, mp in plan.transformers.items():
        lines.append(f"{key}: {mp.model}, {len(mp.layers)} layers x {mp.num_heads} heads, block {mp.block_size}, "
                     f"dense_steps={mp.dense_steps}, dense_layers={list(mp.dense_layers)}")
        for i, layer in enumerate(mp.layers):
            for phase in layer.phases:
                counts: dict[str, int] = {}
                for p in phase.heads:
                    counts[p.label()] = counts.get(p.label(), 0) + 1
                mix = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
                lines.append(f"  {i:3d} {layer.name} (from step {phase.from_step}): {mix}")
    return "\n".join(lines)


def plan_heatmap(plan: Plan, path: str | Path, *, cell: int = 12, step: int = 0) -> Path:
    """PNG: one row per layer, one column per head, coloured by the pattern family at ``step``."""
    rows = [(key, i, layer) for key, mp in plan.transformers.items() for i, layer in enumerate(mp.layers)]
    heads = max(mp.num_heads for mp in plan.transformers.values())
    legend = sorted({p.name for _, _, layer in rows for p in layer.heads_at(step)})
    width = heads * cell + 160
    height = max(len(rows) * cell, len(legend) * 16 + 8)
    img = np.full((height, width, 3), 235, dtype=np.uint8)
    for r, (_, _, layer) in enumerate(rows):
        for h, p in enumerate(layer.heads_at(step)):
            colour = FAMILY_COLOURS.get(p.name, (128, 128, 128))
            img[r * cell : (r + 1) * cell - 1, h * cell : (h + 1) * cell - 1] = colour
    image = Image.fromarray(img)
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(legend):
        y = 4 + 16 * i
        draw.rectangle([heads * cell + 8, y, heads * cell + 20, y + 12], fill=FAMILY_COLOURS.get(name, (128, 128, 128)))
        draw.text((heads * cell + 26, y), name, fill=(0, 0, 0))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
