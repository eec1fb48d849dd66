"""Which attention structure did an embedded model learn? Mass kept per layer and head.

For the moving-shapes model (``--model shapes``, the default) or the drifting-scenes model
(``--model scenes``), the dense pipeline generates held-out captions; at every self-attention call
(every step, layer, both CFG halves) the exact softmax of every query row is computed from the
call's own q/k, and we add up how much of each row's attention mass falls inside the spatial (same
frame), temporal (same location in every frame) and 3-D neighbourhood (3x3x3 tokens, NATTEN rule)
masks. A head that keeps most of its mass in a small mask has that structure; uniform attention
would keep only the mask's density. Beside these fixed masks, the mass in each row's own top 10% of
keys says how much a query-dependent (dynamic) pattern could keep at that density: attention
concentrated on the shape's tokens wherever it is, rather than on a fixed window. After these
columns come the 3-D local windows a model whose heads are local windows would keep (NATTEN
neighbourhoods of 5x5x5, 7x7x7, 7x9x9 and 9x9x9 tokens, sliding tiles of 4x4x4 tokens with a
3x3x3-tile window), each cut to the grid. Writes a table (mass per layer/head, mask densities, the
sparsest fixed mask that keeps >= 80% of the mass, how many heads keep >= 80% inside one fixed mask
of density <= 0.25), a heatmap PNG, and a PNG of one query's attention per head.

    python benchmarks/shapes_attention.py      # results/shapes_attention_cpu.md, shapes_attention*.png
    python benchmarks/shapes_attention.py --model scenes   # results/scenes_attention_cpu.md, scenes_attention*.png
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
from headsparse.patterns import Geometry, Neighborhood, Pattern, Spatial, Temporal, get_pattern
from headsparse.patterns.recognize import sample_rows

sys.path.insert(0, str(Path(__file__).parent))
from embedded import MODELS, RESULTS, add_model_arguments, local_windows, parse_grid, token_grid

HELD_OUT = 10**9 + 500
PATTERNS = {"spatial": Spatial(first_frame_sink=False), "temporal": Temporal(),
            "neighborhood": Neighborhood(kernel_size=(3, 3, 3))}
KEEP = 0.8
SPARSE = 0.25  # the acceptance criterion: heads keeping >= KEEP of their mass in a fixed mask this dense or less
TOP = 0.1  # the dynamic oracle: each query row's own top 10% of keys
TOP_COLUMN = f"top {TOP:.0%} keys"


def fixed_masks(geometry: Geometry) -> dict[str, Pattern]:
    """Every fixed mask, in column order: spatial, temporal, 3x3x3, then the local windows clipped to the grid."""
    local = local_windows(geometry.frames, geometry.height, geometry.width)
    return {**PATTERNS, **{n: get_pattern(kw["pattern"], **{k: v for k, v in kw.items() if k != "pattern"})
                           for n, kw in local.items()}}


class MassCounter:
    """Sums, per (layer, head), the attention mass each mask keeps; also one query's attention map."""

    def __init__(self, layers: int, heads: int, geometry: Geometry, device: str = "cpu",
                 max_rows: int | None = None) -> None:
        idx = torch.arange(geometry.seq_len)
        # Every query row, or a stratified sample of them (the recogniser's sampler): the mass is a mean over rows.
        rows = idx if max_rows is None or max_rows >= geometry.seq_len else sample_rows(geometry, max_rows, 0)
        self.rows = rows
        patterns = fixed_masks(geometry)
        self.masks = {n: p.mask(geometry, rows[:, None], idx[None, :]).to(device) for n, p in patterns.items()}
        # The first columns as they always were (the three masks, the top keys), then the local windows.
        self.columns = (*PATTERNS, TOP_COLUMN, *(n for n in patterns if n not in PATTERNS))
        self.index = {n: i for i, n in enumerate(self.columns)}
        self.density = {n: m.float().mean().item() for n, m in self.masks.items()}
        self.top = max(1, math.ceil(TOP * geometry.seq_len))
        self.density[TOP_COLUMN] = self.top / geometry.seq_len
        self.mass = torch.zeros(layers, heads, len(self.columns), dtype=torch.float64)
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
            keys = k[b].float().transpose(-1, -2)
            probs = torch.softmax((q[b][:, self.rows].float() @ keys) * scale, dim=-1)  # [H, rows, L]
            for name, m in self.masks.items():
                self.mass[layer, :, self.index[name]] += (probs * m).sum(-1).mean(-1).double()
            self.mass[layer, :, self.index[TOP_COLUMN]] += probs.topk(self.top, dim=-1).values.sum(-1).mean(-1).double()
            centre = torch.softmax((q[b][:, self.query : self.query + 1].float() @ keys) * scale, dim=-1)  # [H, 1, L]
            self.maps[layer] += centre[:, 0].double()
        self.calls[layer] += q.shape[0]

    def mean_mass(self) -> torch.Tensor:
        return self.mass / self.calls.clamp_min(1)[:, None, None]


def analyse(pipe, grid: tuple[int, int, int], prompts: list[str], steps: int, guidance: float,
            max_rows: int | None = None) -> MassCounter:
    frames, height, width = grid
    t = pipe.transformer
    geometry = Geometry(*token_grid(pipe, frames, height, width))
    counter = MassCounter(len(t.blocks), t.config.num_attention_heads, geometry, max_rows=max_rows)
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


def label(masses: dict[str, float], density: dict[str, float], fixed: list[str]) -> str:
    """The sparsest of the ``fixed`` masks keeping >= KEEP of the mass, else 'global' (also when only masks that
    keep every key do: a local window as large as the grid)."""
    fits = [(density[n], n) for n in fixed if masses[n] >= KEEP and density[n] < 1]
    return min(fits)[1] if fits else "global"


def local(masses: dict[str, float], density: dict[str, float], fixed: list[str]) -> bool:
    """Does the head keep >= KEEP of its mass inside one of the ``fixed`` masks of density <= SPARSE?"""
    return any(masses[n] >= KEEP and density[n] <= SPARSE for n in fixed)


def shown(kwargs: dict) -> str:
    """A local window's parameters as in the tables: 'kernel_size 5x5x5', 'tile 4x4x4, window 3x3x3'."""
    return ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in kwargs.items() if k != "pattern")


def heatmap(counter: MassCounter, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mass = counter.mean_mass().numpy()
    columns = counter.columns
    across = min(5, len(columns))
    down = -(-len(columns) // across)
    fig, axes = plt.subplots(down, across, figsize=(3.2 * across, 3.4 * down), dpi=120, squeeze=False,
                             gridspec_kw={"hspace": 0.55})
    for ax in axes.flat[len(columns):]:
        ax.set_visible(False)
    for i, (ax, name) in enumerate(zip(axes.flat, columns, strict=False)):
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
    add_model_arguments(parser)
    parser.add_argument("--grids", nargs="+", default=None,
                        help="FRAMESxHxW pixels (default: shapes 8x32x32 16x64x64, scenes 16x64x64 16x32x32)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rows", type=int, default=None,
                        help="query rows per call (a stratified sample, the same every call; default: all rows)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    model = MODELS[args.model]
    grids = args.grids or list(model.attention_grids)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = model.load(args.model_path)
    prompts = [model.caption(HELD_OUT + i) for i in range(args.prompts)]
    local_names = ", ".join(local_windows(16, 16, 16))
    rows = "all query rows" if args.rows is None else f"{args.rows} query rows per grid (a fixed stratified sample)"
    lines = [
        f"# {model.title}: attention mass kept by spatial / temporal / neighbourhood masks, top-10% keys and "
        "3-D local windows",
        "",
        f"Device: {device_name('cpu')}. Command: `python {' '.join(sys.argv)}`. Dense generation of "
        f"{args.prompts} held-out captions ({', '.join(repr(p) for p in prompts)}), {args.steps} steps, guidance "
        f"{args.guidance}; every self-attention call of every step (both CFG halves), "
        f"{rows}. Masks: "
        "spatial = same frame; temporal = same (y, x) in every frame; neighbourhood = 3x3x3 tokens (NATTEN rule); "
        f"top {TOP:.0%} keys = each query row's own most-attended {TOP:.0%} of keys (what a query-dependent "
        f"pattern could keep at that density); then 3-D local windows ({local_names}): NATTEN neighbourhoods of "
        "those kernels (frames x rows x columns, in tokens) and sliding tiles of 4x4x4 tokens with a window of "
        "3x3x3 tiles, each kernel or tile cut to the grid where an axis is shorter. "
        f"'sparsest >= {KEEP:.0%}' is the sparsest fixed mask (every column but the top keys) "
        f"that keeps at least {KEEP:.0%} of a head's mass on average ('global' if none but a mask of every key "
        f"does). 'Local heads': heads keeping >= {KEEP:.0%} of their mass inside one fixed mask of density <= "
        f"{SPARSE} (the acceptance criterion asks for at least a third of the heads).",
    ]
    report = {}
    for text in grids:
        counter = analyse(pipe, parse_grid(text), prompts, args.steps, args.guidance, args.rows)
        mass = counter.mean_mass()
        g = counter.geometry
        d = counter.density
        columns, fixed = counter.columns, list(counter.masks)
        start = len(lines)
        lines += [
            "",
            f"## {text} pixels: {g.frames}x{g.height}x{g.width} = {g.seq_len} tokens",
            "",
            "Mask densities (the mass uniform attention would keep): "
            + ", ".join(f"{n} {d[n]:.4f}" for n in columns) + ". Local windows as cut to this grid: "
            + ", ".join(f"{n} {shown(kw)}" for n, kw in local_windows(g.frames, g.height, g.width).items()) + ".",
            "",
            "| layer | head | " + " | ".join(f"{n} mass" for n in columns) + f" | sparsest >= {KEEP:.0%} |",
            "|---:|---:|" + "---:|" * len(columns) + "---|",
        ]
        labels, local_heads = {}, []
        for layer in range(mass.shape[0]):
            for head in range(mass.shape[1]):
                m = dict(zip(columns, mass[layer, head].tolist(), strict=True))
                labels[f"{layer}.{head}"] = lab = label(m, d, fixed)
                if local(m, d, fixed):
                    local_heads.append(f"{layer}.{head}")
                lines.append(f"| {layer} | {head} | " + " | ".join(f"{x:.3f}" for x in m.values()) + f" | {lab} |")
        counts = {n: list(labels.values()).count(n) for n in (*fixed, "global")}
        heads = len(labels)
        met = "met" if 3 * len(local_heads) >= heads else "not met"
        lines += ["", "Heads by sparsest mask: " + ", ".join(f"{n} {c}" for n, c in counts.items()) + ".", "",
                  f"Local heads (>= {KEEP:.0%} of the mass inside one fixed mask of density <= {SPARSE}): "
                  f"{len(local_heads)} of {heads} ({', '.join(local_heads) or 'none'}); at least a third: {met}."]
        name = f"{model.name}_attention_{text}.png"
        query = f"{model.name}_attention_query_{text}.png"
        heatmap(counter, args.out / name, f"attention mass kept, {text} px ({g.seq_len} tokens)")
        query_maps(counter, args.out / query)
        lines += ["", f"Heatmap: `{name}`; one query's attention per head: `{query}`."]
        report[text] = {"mass": mass.tolist(), "columns": list(columns), "density": d, "labels": labels,
                        "local_heads": local_heads, "heads": heads}
        print("\n".join(lines[start:]), flush=True)
    (args.out / f"{model.name}_attention_cpu.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{model.name}_attention_cpu.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
