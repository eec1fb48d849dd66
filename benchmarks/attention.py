"""Dense SDPA vs headsparse sparse attention, side by side in one process.

Wan-like 480p grids (frames x 30 x 52 tokens): L = 4680 (3 frames), 7800 (5), 26520 (17).
Layouts: random block layouts at a given block density (every query block keeps the same number
of key blocks, the diagonal included), and a spatial layout (keys in the query's frame) built at
block granularity from token coordinates. Prints a table of sparse/dense time ratios (min of
several runs) and writes it under benchmarks/results/.

    python benchmarks/attention.py                 # the full table (about 20 minutes on 2 cores)
    python benchmarks/attention.py --quick         # small sizes, a minute
    python benchmarks/attention.py --device cuda   # Triton kernel and FlexAttention vs SDPA (flash)
"""

from __future__ import annotations

import argparse
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from headsparse.kernels import BLOCK_FULL, BLOCK_PARTIAL, Layout, sparse_attention
from headsparse.kernels.sparse_attention import choose_backend
from headsparse.timing import best_time, device_name

TOKENS_PER_FRAME = 30 * 52
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def random_block_layout(heads: int, length: int, density: float, block: int, seed: int = 0) -> Layout:
    """Each query block keeps round(density * NK) key blocks: its diagonal block plus random others."""
    g = torch.Generator().manual_seed(seed)
    n = math.ceil(length / block)
    keep = max(1, round(density * n))
    scores = torch.rand(1, heads, n, n, generator=g)
    scores[..., torch.arange(n), torch.arange(n)] = 2.0  # always keep the diagonal
    top = scores.topk(keep, dim=-1).indices
    kinds = torch.zeros(1, heads, n, n, dtype=torch.int8).scatter_(-1, top, BLOCK_FULL)
    return _with_ragged_edge(kinds, length, block)


def _with_ragged_edge(kinds: torch.Tensor, length: int, block: int) -> Layout:
    return Layout.from_block_kinds(kinds, None, q_len=length, kv_len=length, block_m=block, block_n=block)


def spatial_layout(heads: int, frames: int, block: int) -> Layout:
    """Keys in the same frame as the query, classified per block from token frame ids."""
    length = frames * TOKENS_PER_FRAME
    n = math.ceil(length / block)
    frame = torch.arange(n * block).clamp(max=length - 1) // TOKENS_PER_FRAME
    lo, hi = frame.view(n, block).min(1).values, frame.view(n, block).max(1).values
    overlap = (lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None])
    same = (lo[:, None] == hi[:, None]) & (lo[None, :] == hi[None, :]) & (lo[:, None] == lo[None, :])
    kinds2d = torch.where(same, BLOCK_FULL, torch.where(overlap, BLOCK_PARTIAL, 0)).to(torch.int8)
    pos = (kinds2d == BLOCK_PARTIAL).nonzero()
    fb = frame.view(n, block)
    masks = fb[pos[:, 0]][:, :, None] == fb[pos[:, 1]][:, None, :]
    kinds = kinds2d.expand(1, heads, n, n).contiguous()
    masks = masks.repeat(heads, 1, 1)
    return Layout.from_block_kinds(kinds, masks, q_len=length, kv_len=length, block_m=block, block_n=block)


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for length in args.lengths:
        frames = length // TOKENS_PER_FRAME
        layouts = {f"random {d:.2f}": random_block_layout(args.heads, length, d, args.block) for d in args.densities}
        if frames * TOKENS_PER_FRAME == length:
            layouts[f"spatial ({frames} frames)"] = spatial_layout(args.heads, frames, args.block)
        layouts = {name: lay.to(args.device) for name, lay in layouts.items()}
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            q, k, v = (torch.randn(1, args.heads, length, args.head_dim, dtype=dtype, device=args.device)
                       for _ in range(3))
            repeats = args.repeats if length < 20000 else max(1, args.repeats - 1)
            with torch.inference_mode():
                dense = best_time(partial(F.scaled_dot_product_attention, q, k, v), repeats, args.device)
                print(f"L={length} {dname}: dense SDPA {dense:.3f} s", flush=True)
                for lname, layout in layouts.items():
                    for backend in args.backends:
                        chosen = choose_backend(q, layout) if backend == "auto" else backend
                        t = best_time(partial(sparse_attention, q, k, v, layout, backend=backend), repeats,
                                      args.device)
                        row = {
                            "L": length, "dtype": dname, "layout": lname, "backend": f"{backend} ({chosen})"
                            if backend == "auto" else backend,
                            "block_density": float(layout.block_density().mean()),
                            "density": float(layout.density().mean()), "dense_s": dense, "sparse_s": t,
                            "ratio": t / dense,
                        }
                        rows.append(row)
                        print(f"  {lname:22s} {row['backend']:16s} density {row['density']:.3f} "
                              f"(blocks {row['block_density']:.3f})  {t:.3f} s  ratio {row['ratio']:.3f}", flush=True)
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    if args.device == "cuda":
        device = f"GPU {torch.cuda.get_device_name()}"
    else:
        device = f"CPU ({device_name()}, {torch.get_num_threads()} threads)"
    lines = [
        f"# Attention: dense SDPA vs headsparse ({args.device})",
        "",
        f"Device: {device}, torch {torch.__version__}. "
        f"B=1, H={args.heads}, D={args.head_dim}, block {args.block}. Min of {args.repeats} runs "
        "(one fewer at L >= 20000) after a warm-up, dense and sparse in one process.",
        "",
        f"Command: `python benchmarks/attention.py {' '.join(args.argv)}`",
        "",
        "| L | dtype | layout | backend | density | block density | dense s | sparse s | sparse/dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['L']} | {r['dtype']} | {r['layout']} | {r['backend']} | {r['density']:.3f} | "
            f"{r['block_density']:.3f} | {r['dense_s']:.3f} | {r['sparse_s']:.3f} | {r['ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[4680, 7800, 26520])
    p.add_argument("--densities", type=float, nargs="+", default=[0.25, 0.10, 0.05])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--backends", nargs="+", default=None,
                   help="executors to time (default: auto flex grouped on CPU, triton flex on CUDA)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes: L 1560 and 3120, bf16 only")
    p.add_argument("--out", type=Path, default=None, help="markdown table path (default under benchmarks/results/)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.backends is None:
        args.backends = ["triton", "flex"] if args.device == "cuda" else ["auto", "flex", "grouped"]
    if args.quick:
        args.lengths, args.dtypes, args.repeats = [1560, 3120], ["bf16"], 2
    rows = run(args)
    out = args.out
    if out is None:
        name = f"attention_{args.device}{'_quick' if args.quick else ''}.md"
        out = Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(rows, args))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
