"""Dense SDPA vs headsparse sparse attention, side by side in one process.

Wan-like 480p grids (frames x 30 x 52 tokens): L = 4680 (3 frames), 7800 (5), 26520 (17).
Layouts: random block layouts at a given block density (every query block keeps the same number
of key blocks, the diagonal included), and a spatial layout (keys in the query's frame) built at
block granularity from token coordinates. Every path is warmed up, then dense and every sparse
path take turns for ``--repeats`` rounds; the table gives the median time of each and the
sparse/dense ratio of the medians with the spread of the per-round ratios. Written under
benchmarks/results/ with the machine in the file name (``attention_cpu_<cpu>.md``).

    python benchmarks/attention.py                 # the full table (about 20 minutes on 2 cores)
    python benchmarks/attention.py --quick         # small sizes, a minute
    python benchmarks/attention.py --calibrate     # also measure and cache this CPU's executor profile
    python benchmarks/attention.py --device cuda   # Triton kernel and FlexAttention vs SDPA (flash)

Backends: auto, triton, flex, grouped, masked, and flex:bf16 / flex:fp32 (FlexAttention computing
in that dtype, whatever auto would pick).
"""

from __future__ import annotations

import argparse
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from headsparse.kernels import BLOCK_FULL, BLOCK_PARTIAL, Layout, sparse_attention
from headsparse.kernels.cpu_profile import cpu_profile, measure_cpu_profile
from headsparse.kernels.flex import flex_block_sparse_attention
from headsparse.kernels.sparse_attention import choose_backend
from headsparse.machine import device_line, device_report, slug
from headsparse.timing import interleaved, ratio_spread

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


def sparse_path(q, k, v, layout: Layout, backend: str):
    """The call that times ``backend`` on the layout (``flex:<dtype>``: FlexAttention computing in that dtype)."""
    if backend.startswith("flex:"):
        compute = DTYPES[backend.split(":", 1)[1]]
        return partial(flex_block_sparse_attention, q, k, v, layout, compute_dtype=compute)
    return partial(sparse_attention, q, k, v, layout, backend=backend)


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
            repeats = args.repeats if length < 20000 else max(2, args.repeats - 1)
            paths = {"dense": partial(F.scaled_dot_product_attention, q, k, v)}
            labels = {}
            for lname, layout in layouts.items():
                for backend in args.backends:
                    shown = f"{backend} ({choose_backend(q, layout)})" if backend == "auto" else backend
                    key = f"{lname} / {shown}"
                    paths[key] = sparse_path(q, k, v, layout, backend)
                    labels[key] = (lname, shown, layout)
            with torch.inference_mode():
                times = interleaved(paths, repeats, args.device)
            dense = times["dense"]
            print(f"L={length} {dname}: dense SDPA {sorted(dense)[len(dense) // 2]:.3f} s", flush=True)
            for key, (lname, shown, layout) in labels.items():
                ratio, rounds = ratio_spread(times[key], dense)
                row = {
                    "L": length, "dtype": dname, "layout": lname, "backend": shown,
                    "block_density": float(layout.block_density().mean()),
                    "density": float(layout.density().mean()), "dense_s": sorted(dense)[len(dense) // 2],
                    "sparse_s": sorted(times[key])[len(times[key]) // 2], "ratio": ratio,
                    "ratio_low": rounds.low, "ratio_high": rounds.high, "repeats": repeats,
                }
                rows.append(row)
                print(f"  {lname:22s} {shown:16s} density {row['density']:.3f} (blocks {row['block_density']:.3f})"
                      f"  {row['sparse_s']:.3f} s  ratio {ratio:.3f} ({rounds.low:.3f}-{rounds.high:.3f})", flush=True)
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace, profile_note: str) -> str:
    lines = [
        f"# Attention: dense SDPA vs headsparse ({args.device})",
        "",
        f"Device: {device_line(device_report(args.device))}, torch {torch.__version__}. "
        f"B=1, H={args.heads}, D={args.head_dim}, block {args.block}. Every path warmed up, then dense and every "
        f"sparse path in turn for {args.repeats} rounds (at L >= 20000 one fewer, at least 2); medians, and the "
        "min-max of the per-round sparse/dense ratios.",
        "",
        f"CPU executor profile: {profile_note}.",
        "",
        f"Command: `python benchmarks/attention.py {' '.join(args.argv)}`",
        "",
        "| L | dtype | layout | backend | density | block density | dense s | sparse s | sparse/dense "
        "| per-round range |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['L']} | {r['dtype']} | {r['layout']} | {r['backend']} | {r['density']:.3f} | "
            f"{r['block_density']:.3f} | {r['dense_s']:.3f} | {r['sparse_s']:.3f} | {r['ratio']:.3f} | "
            f"{r['ratio_low']:.3f}-{r['ratio_high']:.3f} |"
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
    p.add_argument("--calibrate", action="store_true",
                   help="first measure and cache this CPU's executor profile (flex compute dtype, grouped threshold)")
    p.add_argument("--out", type=Path, default=None, help="markdown table path (default under benchmarks/results/)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.backends is None:
        args.backends = ["triton", "flex"] if args.device == "cuda" else ["auto", "flex", "grouped"]
    if args.quick:
        args.lengths, args.dtypes, args.repeats = [1560, 3120], ["bf16"], 2
    note = "not used (CUDA)"
    if args.device == "cpu":
        if args.calibrate:
            profile, measured = measure_cpu_profile()
            for r in measured:
                print(f"  profile: {r['choice']}: {r['option']} {r['seconds']:.3f} s")
        profile = cpu_profile()
        note = (f"{profile.source}: FlexAttention computes bf16 in {profile.flex_compute['bfloat16']}, fp16 in "
                f"{profile.flex_compute['float16']}; grouped from {profile.grouped_min_rows} rows per group")
        print(f"CPU executor profile: {note}")
    rows = run(args)
    out = args.out
    if out is None:
        machine = slug(device_report(args.device)["name"])
        name = f"attention_{args.device}_{machine}{'_quick' if args.quick else ''}.md"
        out = Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(rows, args, note))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
