"""Which attention structure did the moving-shapes model learn? Mass kept per layer and head.

The dense pipeline generates held-out captions; at every self-attention call (every step, layer,
both CFG halves) the exact softmax of every query row is computed from the call's own q/k, and we
add up how much of each row's attention mass falls inside the spatial (same frame), temporal
(same location in every frame) and 3-D neighbourhood (3x3x3 tokens, NATTEN rule) masks. A head
that keeps most of its mass in a small mask has that structure; uniform attention would keep only
the mask's density. Beside these fixed masks, the mass in each row's own top 10% of keys says how
much a query-dependent (dynamic) pattern could keep at that density: attention concentrated on the
shape's tokens wherever it is, rather than on a fixed window. Writes a table (mass per layer/head,
mask densities, the sparsest fixed mask that keeps >= 80% of the mass), a heatmap PNG, and a PNG
of one query's attention per head.

    python benchmarks/shapes_attention.py      # results/shapes_attention_cpu.md, shapes_attention*.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import headsparse
from headsparse.machine import device_name
from headsparse.patterns import Geometry, Neighborhood, Spatial, Temporal
from headsparse.pipelines import moving_shapes
from headsparse.pipelines.shapes import load_moving_shapes_pipeline

RESULTS = Path(__file__).parent / "results"
HELD_OUT = 10**9 + 500
PATTERNS = {"spatial": Spatial(first_frame_sink=False), "temporal": Temporal(),
            "neighborhood": Neighborhood(kernel_size=(3, 3, 3))}
KEEP = 0.8
TOP = 0.1  # the dynamic oracle: each query row's own top 10% of keys
COLUMNS = (*PATTERNS, f"top {TOP:.0%} keys")


class MassCounter:
    """Sums, per (layer, head), the attention mass each mask keeps; also one query's attention map."""

    def __init__(self, layers: int, heads: int, geometry: Geometry, device: str = "cpu") -> None:
        idx = torch.arange(geometry.seq_len)
        self.masks = {n: p.mask(geometry, idx[:, None], idx[None, :]).to(device) for n, p in PATTERNS.items()}
        self.density = {n: m.float().mean().item() for n, m in self.masks.items()}
        self.top = max(1, math.ceil(TOP * geometry.seq_len))
        self.density[COLUMNS[-1]] = self.top / geometry.seq_len
        self.mass = torch.zeros(layers, heads, len(COLUMNS), dtype=torch.float64)
        self.calls = torch.zeros(layers, dtype=torch.int64)
        self.geometry = geometry
        f, h, w = geometry.frames, geometry.height, geometry.width
        self.query = (f // 2) * h * w + (h // 2) * w + w // 2  # the centre token of the middle frame
        self.maps = torch.zeros(layers, heads, geometry.seq_len, dtype=torch.float64)

    def __call__(self, layer: int, step: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 geometry: Geometry) -> None:
        if geometry.seq_len != self.geometry.seq_len:
            raise ValueError(f"one grid per counter: {self.geometry} vs {geometry}")
        scale = 1 / math.sqrt(q.shape[-1])
        for b in range(q.shape[0]):
            probs = torch.softmax((q[b].float() @ k[b].float().transpose(-1, -2)) * scale, dim=-1)  # [H, L, L]
            for i, m in enumerate(self.masks.values()):
                self.mass[layer, :, i] += (probs * m).sum(-1).mean(-1).double()
            self.mass[layer, :, -1] += probs.topk(self.top, dim=-1).values.sum(-1).mean(-1).double()
            self.maps[layer] += probs[:, self.query].double()
        self.calls[layer] += q.shape[0]

    def mean_mass(self) -> torch.Tensor:
        return self.mass / self.calls.clamp_min(1)[:, None, None]


def analyse(pipe, grid: tuple[int, int, int], prompts: list[str], steps: int, guidance: float) -> MassCounter:
    frames, height, width = grid
    t = pipe.transformer
    geometry = Geometry(frames, height // 4, width // 4)
    counter = MassCounter(len(t.blocks), t.config.num_attention_heads, geometry)
    handle = headsparse.patch(pipe, pattern="dense")
    try:
        for state in handle.states.values():
            state.observer = counter
        for i, prompt in enumerate(prompts):
            handle.reset()
            pipe(prompt, num_frames=frames, height=height, width=width, num_inference_steps=steps,
                 guidance_scale=guidance, generator=torch.Generator().manual_seed(i))
    finally:
        handle.unpatch()
    return counter


def label(masses: list[float], density: dict[str, float]) -> str:
    """The sparsest fixed mask keeping >= KEEP of the mass, else 'global'."""
    fits = [(density[n], n) for n, m in zip(PATTERNS, masses[: len(PATTERNS)], strict=True) if m >= KEEP]
    return min(fits)[1] if fits else "global"


def heatmap(counter: MassCounter, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mass = counter.mean_mass().numpy()
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(3.2 * len(COLUMNS), 3.4), dpi=120)
    for i, (ax, name) in enumerate(zip(axes, COLUMNS, strict=True)):
        im = ax.imshow(mass[:, :, i], vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{name}\n(mask density {counter.density[name]:.3f})", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(mass.shape[1]))
        ax.set_yticks(range(mass.shape[0]))
        for (y, x), val in np.ndenumerate(mass[:, :, i]):
            ax.text(x, y, f"{val:.2f}", ha="center", va="center", fontsize=7, color="w" if val < 0.6 else "k")
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention mass kept")
    fig.suptitle(title, fontsize=10, y=1.06)  # above the panel titles
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def query_maps(counter: MassCounter, path: Path) -> None:
    """Per (layer, head): the centre query's mean attention over every frame, frames side by side (log10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = counter.geometry
    maps = counter.maps / counter.calls.clamp_min(1)[:, None, None]
    layers, heads = maps.shape[:2]
    frames = maps.view(layers, heads, g.frames, g.height, g.width).clamp_min(1e-6).log10().numpy()
    width = g.frames * (g.width + 1) / (g.height + 1)
    fig, axes = plt.subplots(layers, heads, figsize=(heads * width * 0.55 + 0.5, layers * 0.7 + 0.6), dpi=110,
                             squeeze=False, constrained_layout=True)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            strip = np.concatenate([np.pad(f, ((0, 0), (0, 1)), constant_values=np.nan)
                                    for f in frames[layer, head]], 1)
            ax.imshow(strip, vmin=-4, vmax=0, cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    fig.suptitle(f"attention of the centre token of frame {g.frames // 2} (log10, -4..0); one column per frame, "
                 f"{g.frames} frames", fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--grids", nargs="+", default=["8x32x32", "16x64x64"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    pipe = load_moving_shapes_pipeline(args.model_path)
    prompts = [moving_shapes.sample_clip(HELD_OUT + i).caption for i in range(args.prompts)]
    lines = [
        "# Moving-shapes model: attention mass kept by spatial / temporal / neighbourhood masks and top-10% keys",
        "",
        f"Device: {device_name('cpu')}. Command: `python {' '.join(sys.argv)}`. Dense generation of "
        f"{args.prompts} held-out captions ({', '.join(repr(p) for p in prompts)}), {args.steps} steps, guidance "
        f"{args.guidance}; every self-attention call of every step (both CFG halves), all query rows. Masks: "
        "spatial = same frame; temporal = same (y, x) in every frame; neighbourhood = 3x3x3 tokens (NATTEN rule); "
        f"top {TOP:.0%} keys = each query row's own most-attended {TOP:.0%} of keys (what a query-dependent "
        f"pattern could keep at that density). 'sparsest >= {KEEP:.0%}' is the sparsest of the three fixed masks "
        f"that keeps at least {KEEP:.0%} of a head's mass on average ('global' if none does).",
    ]
    report = {}
    for text in args.grids:
        frames, height, width = (int(x) for x in text.split("x"))
        counter = analyse(pipe, (frames, height, width), prompts, args.steps, args.guidance)
        mass = counter.mean_mass()
        g = counter.geometry
        d = counter.density
        lines += [
            "",
            f"## {text} pixels: {g.frames}x{g.height}x{g.width} = {g.seq_len} tokens",
            "",
            "Mask densities (the mass uniform attention would keep): "
            + ", ".join(f"{n} {d[n]:.4f}" for n in COLUMNS) + ".",
            "",
            "| layer | head | " + " | ".join(f"{n} mass" for n in COLUMNS) + f" | sparsest >= {KEEP:.0%} |",
            "|---:|---:|" + "---:|" * len(COLUMNS) + "---|",
        ]
        labels = {}
        for layer in range(mass.shape[0]):
            for head in range(mass.shape[1]):
                m = mass[layer, head].tolist()
                labels[f"{layer}.{head}"] = lab = label(m, d)
                lines.append(f"| {layer} | {head} | " + " | ".join(f"{x:.3f}" for x in m) + f" | {lab} |")
        counts = {n: list(labels.values()).count(n) for n in (*PATTERNS, "global")}
        lines += ["", "Heads by sparsest mask: " + ", ".join(f"{n} {c}" for n, c in counts.items()) + "."]
        title = f"attention mass kept, {text} px ({g.seq_len} tokens)"
        heatmap(counter, args.out / f"shapes_attention_{text}.png", title)
        query_maps(counter, args.out / f"shapes_attention_query_{text}.png")
        lines += ["", f"Heatmap: `shapes_attention_{text}.png`; one query's attention per head: "
                  f"`shapes_attention_query_{text}.png`."]
        report[text] = {"mass": mass.tolist(), "density": d, "labels": labels}
        print("\n".join(lines[-(mass.numel() // len(COLUMNS) + 8):]), flush=True)
    (args.out / "shapes_attention_cpu.md").write_text("\n".join(lines) + "\n")
    (args.out / "shapes_attention_cpu.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
