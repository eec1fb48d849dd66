"""Every pattern at a Wan-480p-like grid: density, layout build time, attention time vs dense.

Geometry 21x30x52 tokens (32760), 12 heads, D=128 by default. For each pattern: the fraction of
(query, key) pairs kept, the time to build its 12-head layout (cold cache), the executor `auto`
picks, and sparse/dense attention time measured side by side in one process (min of runs after a
warm-up).

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
from headsparse.machine import device_name
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
from headsparse.timing import best_time

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
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "patterns_cpu.md")
    args = p.parse_args(argv)
    g = Geometry(args.frames, args.height, args.width)
    q, k, v = (torch.randn(1, args.heads, g.seq_len, args.head_dim, dtype=DTYPES[args.dtype]) for _ in range(3))
    rows = []
    with torch.inference_mode():
        dense = best_time(partial(F.scaled_dot_product_attention, q, k, v), 1)
        print(f"{g} L={g.seq_len} {args.dtype}: dense SDPA {dense:.2f} s", flush=True)
        for pattern in PATTERNS:
            clear_layout_cache()
            start = time.perf_counter()
            layout = pattern.layout(g, num_heads=args.heads)
            build = time.perf_counter() - start
            backend = choose_backend(q, layout)
            t = best_time(partial(sparse_attention, q, k, v, layout), args.repeats)
            row = (repr(pattern), float(layout.density().mean()), float(layout.block_density().mean()), build,
                   backend, t, t / dense)
            rows.append(row)
            print(f"  {row[0]:80s} density {row[1]:.3f} blocks {row[2]:.3f} build {build:.2f} s "
                  f"{backend:8s} {t:.2f} s ratio {row[6]:.3f}", flush=True)
    lines = [
        "# Patterns at a Wan-like grid: density, layout build time, attention time vs dense",
        "",
        f"Device: CPU ({device_name()}, {torch.get_num_threads()} threads), torch {torch.__version__}. "
        f"Geometry {g.frames}x{g.height}x{g.width} ({g.seq_len} tokens), B=1, H={args.heads}, D={args.head_dim}, "
        f"{args.dtype}, blocks 128. Dense SDPA {dense:.2f} s. Min of {args.repeats} runs after a warm-up.",
        "",
        f"Command: `python benchmarks/patterns.py {' '.join(argv)}`",
        "",
        "| pattern | density | block density | build s | executor | sparse s | sparse/dense |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| `{r[0]}` | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.2f} | {r[4]} | {r[5]:.2f} | {r[6]:.3f} |" for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
