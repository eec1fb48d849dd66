"""timm ViT-B/16 (random weights), dense vs headsparse.patch at several image sizes: time and output change.

The ``vit_base_patch16_224`` architecture (12 blocks, 12 heads of 64, class token) built with
``pretrained=False`` and ``img_size`` set, so at 224 / 512 / 1024 px it runs on 14x14 / 32x32 / 64x64
patch grids (+1 class token). For every pattern the whole forward (``forward_features`` +
``forward_head(pre_logits=True)``) is timed against the dense model in one process, interleaved
(dense, pattern 1, pattern 2, ... in every round) and best-of-N, so a busy shared CPU slows all
configurations alike. Attention alone is timed the same way on random q/k/v of one layer's shape.
Output change = cosine similarity of the final features with the dense model's: the pooled (class
token) features and the mean over tokens of each token's features. Weights are random, so attention
is close to uniform and the similarity says how much a pattern changes *this* network, not the
accuracy of a trained one.

    python benchmarks/vit.py            # the table in results/vit_cpu.md (224, 512, 1024 px)
    python benchmarks/vit.py --quick    # 224 and 320 px, 1 repeat: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import headsparse
from headsparse.kernels import choose_backend, sparse_attention
from headsparse.patterns import Agent, Geometry, Neighborhood, Pattern
from headsparse.patterns.agent import agent_attention

sys.path.insert(0, str(Path(__file__).parent))
from attention import DTYPES

from headsparse.machine import device_name

ARCH = "vit_base_patch16_224"


def build_vit(size: int, dtype: torch.dtype) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False, img_size=size, num_classes=0).to(dtype).eval()


def patterns(args: argparse.Namespace) -> dict[str, Pattern]:
    side, w = int(args.agents**0.5), args.window
    return {
        f"agent ({side}x{side} agents)": Agent(agents=args.agents),
        **{f"neighborhood {k}x{k}": Neighborhood(kernel_size=(1, k, k)) for k in args.kernels},
        f"blocked window {w}x{w}": Neighborhood(kernel_size=(1, w, w), stride=(1, w, w)),
    }


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int,
                     prepare: Callable[[str], None] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Best-of-``repeats`` seconds per function, one call of each per round, after one warm-up call each
    (whose results are returned). ``prepare(name)`` runs untimed before each call (e.g. patching)."""
    results = {}
    for name, fn in fns.items():
        if prepare is not None:
            prepare(name)
        results[name] = fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if prepare is not None:
                prepare(name)
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(0, -2), b.float().flatten(0, -2), dim=-1).mean().item()


def measure_size(size: int, args: argparse.Namespace) -> list[dict]:
    dtype = DTYPES[args.dtype]
    model = build_vit(size, dtype)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    grid = size // 16
    geometry = Geometry(1, grid, grid, model.num_prefix_tokens, "prefix")
    chosen = patterns(args)

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            tokens = model.forward_features(x)
            return tokens, model.forward_head(tokens, pre_logits=True)

    def prepare(label: str) -> None:
        if label == "dense":
            headsparse.unpatch(model)
        else:
            headsparse.patch(model, pattern=chosen[label], block_size=args.block_size)

    model_time, outputs = interleaved_best(dict.fromkeys(["dense", *chosen], forward), args.repeats, prepare)
    headsparse.unpatch(model)
    dense_tokens, dense_pooled = outputs["dense"]

    gen = torch.Generator().manual_seed(1)
    heads, dim = model.blocks[0].attn.num_heads, model.blocks[0].attn.head_dim
    q, k, v = (torch.randn(1, heads, geometry.seq_len, dim, generator=gen).to(dtype) for _ in range(3))
    attention_fns: dict[str, Callable[[], Any]] = {"dense": lambda: F.scaled_dot_product_attention(q, k, v)}
    executors = {}
    for label, p in chosen.items():
        if isinstance(p, Agent):
            attention_fns[label] = lambda p=p: agent_attention(q, k, v, geometry, p)
            executors[label] = "agent"
        else:
            layout = p.layout(geometry, num_heads=heads, block_m=args.block_size, block_n=args.block_size)
            attention_fns[label] = lambda layout=layout: sparse_attention(q, k, v, layout)
            executors[label] = choose_backend(q, layout)
    attention_time, _ = interleaved_best(attention_fns, args.repeats * 3)

    rows = []
    for label, p in chosen.items():
        tokens, pooled = outputs[label]
        density = None if isinstance(p, Agent) else float(
            p.layout(geometry, num_heads=1, block_m=args.block_size, block_n=args.block_size).density().mean())
        rows.append({
            "size": size, "tokens": geometry.seq_len, "pattern": label, "density": density,
            "executor": executors[label],
            "dense_s": model_time["dense"], "sparse_s": model_time[label],
            "ratio": model_time[label] / model_time["dense"],
            "attn_dense_ms": 1000 * attention_time["dense"],
            "attn_ratio": attention_time[label] / attention_time["dense"],
            "cos_pooled": _cosine(pooled, dense_pooled), "cos_tokens": _cosine(tokens, dense_tokens),
        })
        r = rows[-1]
        print(f"{size}px {label}: model {r['ratio']:.2f}x of dense ({r['dense_s']:.2f} s), attention "
              f"{r['attn_ratio']:.2f}x ({r['attn_dense_ms']:.1f} ms), cos pooled {r['cos_pooled']:.4f}, "
              f"tokens {r['cos_tokens']:.4f}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024], help="image sizes in px (multiples of 16)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the interleaved best-of")
    p.add_argument("--agents", type=int, default=49, help="agent tokens (a square: 49 = 7x7)")
    p.add_argument("--kernels", type=int, nargs="+", default=[7, 13], help="neighborhood windows (tokens per side)")
    p.add_argument("--window", type=int, default=8, help="blocked (Swin-like) window in tokens per side")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="224 and 320 px, one round")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if any(s % 16 for s in args.sizes):
        p.error(f"--sizes must be multiples of the patch size 16, got {args.sizes}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.repeats = [224, 320], 1
    out = args.out or Path(__file__).parent / "results" / ("vit_cpu_quick.md" if args.quick else "vit_cpu.md")
    print(f"{ARCH} (random weights), {args.dtype}, CPU {device_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    rows = [r for size in args.sizes for r in measure_size(size, args)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(rows, args))
    print(f"wrote {out}")
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    head = (
        f"# timm ViT-B/16, dense vs headsparse.patch (CPU: {device_name()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__})\n\n"
        f"`python benchmarks/vit.py {' '.join(sys.argv[1:])}`: `{ARCH}` built with `pretrained=False` (random "
        f"weights) and `img_size` set, batch 1, {args.dtype}, layout blocks of {args.block_size}. Model = "
        "`forward_features` + `forward_head(pre_logits=True)`; attention = one layer's attention call on random "
        f"q/k/v of that shape (12 heads x 64). Times are best of {args.repeats} interleaved rounds (attention: "
        f"{args.repeats * 3}) in one process, dense and every pattern in each round; ratio = patched / dense "
        "(lower is faster). cos = cosine similarity with the dense model's final features: the pooled class-token "
        "features, and the mean over tokens. Random weights make attention nearly uniform: the cosine measures how "
        "much the output moves, not a trained model's accuracy. density = fraction of (query, key) pairs the "
        "layout keeps (agent attention has no mask: every query reads every key through the agents); executor = "
        "what `sparse_attention(backend='auto')` runs the layout with (`flex`: compiled FlexAttention).\n\n"
        + threads_note(args) +
        "| image | tokens | pattern | density | executor | dense model s | model ratio | dense attention ms "
        "| attention ratio | cos pooled | cos tokens |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['size']} px | {r['tokens']} | {r['pattern']} | "
        f"{'-' if r['density'] is None else format(r['density'], '.3f')} | {r['executor']} | {r['dense_s']:.2f} | "
        f"{r['ratio']:.2f} | "
        f"{r['attn_dense_ms']:.1f} | {r['attn_ratio']:.2f} | {r['cos_pooled']:.4f} | {r['cos_tokens']:.4f} |\n"
        for r in rows
    )
    return head + body


def threads_note(args: argparse.Namespace) -> str:
    if args.threads is None:
        return ""
    return (
        f"Run with `--threads {args.threads}`: this 2-core machine was shared with another job; with 2 threads "
        "every small op waited for the busy core (agent attention at 4097 tokens: 0.07 s on one thread, 0.3-0.4 s "
        "on two), which measured the neighbour, not the code. One thread on a free core gives stable ratios.\n\n"
    )


if __name__ == "__main__":
    main()
