"""Every pattern at a Wan-480p-like grid: density, layout build time, attention time vs dense.

Geometry 21x30x52 tokens (32760), 12 heads, D=128 by default. For each pattern: the fraction of
(query, key) pairs kept, the time to build its 12-head layout (cold cache, timed on its own: not
part of the attention time), the executor `auto` picks, and its attention time against dense SDPA.
Timing: every layout is built first, every path is called once untimed (compilation), then dense
and all the patterns take turns in one ``headsparse.timing.interleaved`` call (dense, pattern 1,
..., pattern 12 in every round) for ``--repeats`` rounds: medians, the ratio of the medians and
the range of the per-round ratios. A pattern whose output equals dense's is reported as such.

    python benchmarks/patterns.py                  # the full table
    python benchmarks/patterns.py --frames 5       # a smaller grid (7800 tokens)
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from headsparse.kernels import choose_backend, sparse_attention
from headsparse.machine import device_line, device_report
from headsparse.patterns import (
    Diagonal,
    Geometry,
    MultiDiagonal,
    Neighborhood,
    SlidingTile,
    Spatial,
    Temporal,
    Textural,
    VerticalStripe,
)
from headsparse.patterns.base import clear_layout_cache
from headsparse.timing import interleaved, ratio_cell, ratio_spread, spread_cell

sys.path.insert(0, str(Path(__file__).parent))
from attention import DTYPES

PATTERNS = [
    Spatial(), Spatial(frame_band=1), Temporal(), Temporal(spatial_window=3, frame_window=8),
    Temporal(location_band=64),
    Neighborhood(kernel_size=(3, 9, 9)), Neighborhood(kernel_size=(4, 16, 16), stride=(4, 16, 16)),
    SlidingTile(tile=(4, 8, 8), window=(1, 3, 3)), Diagonal(half_width=512),
    MultiDiagonal(half_width=128, frame_offsets=(-2, -1, 0, 1, 2)), VerticalStripe(sink_frames=1),
    Textural(stride=8, granule=128, half_width=256),
]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--height", type=int, default=30)
    p.add_argument("--width", type=int, default=52)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds after the warm-up")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "patterns_cpu.md")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    g = Geometry(args.frames, args.height, args.width)
    q, k, v = (torch.randn(1, args.heads, g.seq_len, args.head_dim, dtype=DTYPES[args.dtype]) for _ in range(3))
    built = []  # (label, layout, build seconds, executor)
    for pattern in PATTERNS:
        clear_layout_cache()
        start = time.perf_counter()
        layout = pattern.layout(g, num_heads=args.heads)
        built.append((repr(pattern), layout, time.perf_counter() - start, choose_backend(q, layout)))
    paths = {"dense": partial(F.scaled_dot_product_attention, q, k, v)}
    paths.update({label: partial(sparse_attention, q, k, v, layout) for label, layout, _, _ in built})
    with torch.inference_mode():
        dense_out = paths["dense"]()  # the warm-up: every path once, untimed; outputs compared with dense's
        identical = {label: torch.equal(paths[label](), dense_out) for label, _, _, _ in built}
        del dense_out
        times = interleaved(paths, args.repeats, warmup=False)
    dense = times["dense"]
    print(f"{g} L={g.seq_len} {args.dtype}: dense SDPA {spread_cell(dense)} s", flush=True)
    rows = []
    for label, layout, build, backend in built:
        ratio, rounds = ratio_spread(times[label], dense)
        row = {"pattern": label, "density": float(layout.density().mean()),
               "block_density": float(layout.block_density().mean()), "build_s": build, "executor": backend,
               "sparse": spread_cell(times[label]), "ratio": ratio, "ratio_low": rounds.low,
               "ratio_high": rounds.high, "cell": ratio_cell(ratio, rounds, identical=identical[label])}
        rows.append(row)
        print(f"  {label:80s} density {row['density']:.3f} blocks {row['block_density']:.3f} build {build:.2f} s "
              f"{backend:8s} {row['sparse']} s ratio {row['cell']}", flush=True)
    lines = [
        "# Patterns at a Wan-like grid: density, layout build time, attention time vs dense",
        "",
        f"Device: {device_line(device_report('cpu'))}, torch {torch.__version__}. "
        f"Geometry {g.frames}x{g.height}x{g.width} ({g.seq_len} tokens), B=1, H={args.heads}, D={args.head_dim}, "
        f"{args.dtype}, blocks 128. Times: median of {args.repeats} interleaved rounds after a warm-up (dense SDPA "
        "and every pattern once per round, in table order, in one process), with the min-max; sparse/dense = ratio "
        "of the medians, with the min-max of the per-round ratios (lower is faster). Build = the layout's "
        "construction from a cold cache, timed separately and not part of the attention time. "
        f"Dense SDPA {spread_cell(dense)} s.",
        "",
        f"Command: `python benchmarks/patterns.py {' '.join(argv)}`",
        "",
        "| pattern | density | block density | build s | executor | sparse s (median, min-max) "
        "| sparse/dense (per-round range) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| `{r['pattern']}` | {r['density']:.3f} | {r['block_density']:.3f} | {r['build_s']:.2f} | "
              f"{r['executor']} | {r['sparse']} | {r['cell']} |" for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
