"""timm ViT-B/16 (random weights), dense vs headsparse.patch at several image sizes: time and output change.

The ``vit_base_patch16_224`` architecture (12 blocks, 12 heads of 64, class token) built with
``pretrained=False`` and ``img_size`` set, so at 224 / 512 / 1024 px it runs on 14x14 / 32x32 / 64x64
patch grids (+1 class token). For every pattern the whole forward (``forward_features`` +
``forward_head(pre_logits=True)``) is timed against the dense model in one process: each pattern
runs on its own copy of the model, patched once; every path is called once untimed (layouts,
compilation), then dense and every pattern take turns in one ``headsparse.timing.interleaved`` call
(dense, pattern 1, pattern 2, ... in every round) for ``--repeats`` rounds: medians, the ratio of
the medians and the range of the per-round ratios, so a busy shared CPU slows all configurations
alike. Attention alone is timed the same way (3x the rounds) on random q/k/v of one layer's shape.
Output change = cosine similarity of the final features with the dense model's: the pooled (class
token) features and the mean over tokens of each token's features. Weights are random, so attention
is close to uniform and the similarity says how much a pattern changes *this* network, not the
accuracy of a trained one.

    python benchmarks/vit.py            # the table in results/vit_cpu.md (224, 512, 1024 px)
    python benchmarks/vit.py --quick    # 224 and 320 px, 2 rounds: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import headsparse
from headsparse.kernels import choose_backend, sparse_attention
from headsparse.machine import device_line, device_report
from headsparse.patterns import Agent, Geometry, Neighborhood, Pattern
from headsparse.patterns.agent import agent_attention
from headsparse.timing import Spread, interleaved, ratio_cell, ratio_spread, spread_cell

sys.path.insert(0, str(Path(__file__).parent))
from attention import DTYPES

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


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(0, -2), b.float().flatten(0, -2), dim=-1).mean().item()


def measure_size(size: int, args: argparse.Namespace) -> list[dict]:
    dtype = DTYPES[args.dtype]
    model = build_vit(size, dtype)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    grid = size // 16
    geometry = Geometry(1, grid, grid, model.num_prefix_tokens, "prefix")
    chosen = patterns(args)

    def forward_of(m: torch.nn.Module) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def forward() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                tokens = m.forward_features(x)
                return tokens, m.forward_head(tokens, pre_logits=True)
        return forward

    models = {"dense": model}
    for label, p in chosen.items():  # one copy per pattern, patched once: nothing is patched inside a timed call
        models[label] = copy.deepcopy(model)
        headsparse.patch(models[label], pattern=p, block_size=args.block_size)
    forwards = {label: forward_of(m) for label, m in models.items()}
    outputs = {label: fn() for label, fn in forwards.items()}  # the warm-up, untimed: layouts, compilation
    model_time = interleaved(forwards, args.repeats, warmup=False)
    for label in chosen:
        headsparse.unpatch(models[label])
    del models, forwards
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
    attention_out = {label: fn() for label, fn in attention_fns.items()}  # the warm-up, untimed
    attention_time = interleaved(attention_fns, args.repeats * 3, warmup=False)

    rows = []
    for label, p in chosen.items():
        tokens, pooled = outputs[label]
        density = None if isinstance(p, Agent) else float(
            p.layout(geometry, num_heads=1, block_m=args.block_size, block_n=args.block_size).density().mean())
        identical = torch.equal(tokens, dense_tokens) and torch.equal(pooled, dense_pooled)
        ratio, rounds = ratio_spread(model_time[label], model_time["dense"])
        attn_ratio, attn_rounds = ratio_spread(attention_time[label], attention_time["dense"])
        attn_identical = torch.equal(attention_out[label], attention_out["dense"])
        rows.append({
            "size": size, "tokens": geometry.seq_len, "pattern": label, "density": density,
            "executor": executors[label],
            "dense_s": Spread.of(model_time["dense"]).median, "sparse_s": Spread.of(model_time[label]).median,
            "dense_cell": spread_cell(model_time["dense"], ".2f"), "sparse_cell": spread_cell(model_time[label], ".2f"),
            "ratio": ratio, "ratio_low": rounds.low, "ratio_high": rounds.high, "identical": identical,
            "ratio_cell": ratio_cell(ratio, rounds, ".2f", identical=identical),
            "attn_dense_ms": 1000 * Spread.of(attention_time["dense"]).median,
            "attn_dense_cell": spread_cell([1000 * t for t in attention_time["dense"]], ".1f"),
            "attn_ratio": attn_ratio, "attn_ratio_low": attn_rounds.low, "attn_ratio_high": attn_rounds.high,
            "attn_ratio_cell": ratio_cell(attn_ratio, attn_rounds, ".2f", identical=attn_identical),
            "cos_pooled": _cosine(pooled, dense_pooled), "cos_tokens": _cosine(tokens, dense_tokens),
        })
        r = rows[-1]
        print(f"{size}px {label}: model {r['ratio_cell']} of dense ({r['dense_cell']} s), attention "
              f"{r['attn_ratio_cell']} ({r['attn_dense_cell']} ms), cos pooled {r['cos_pooled']:.4f}, "
              f"tokens {r['cos_tokens']:.4f}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024], help="image sizes in px (multiples of 16)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds after the warm-up (attention: 3x)")
    p.add_argument("--agents", type=int, default=49, help="agent tokens (a square: 49 = 7x7)")
    p.add_argument("--kernels", type=int, nargs="+", default=[7, 13], help="neighborhood windows (tokens per side)")
    p.add_argument("--window", type=int, default=8, help="blocked (Swin-like) window in tokens per side")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="224 and 320 px, two rounds")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if any(s % 16 for s in args.sizes):
        p.error(f"--sizes must be multiples of the patch size 16, got {args.sizes}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.repeats = [224, 320], 2
    out = args.out or Path(__file__).parent / "results" / ("vit_cpu_quick.md" if args.quick else "vit_cpu.md")
    print(f"{ARCH} (random weights), {args.dtype}, {device_line(device_report('cpu'))}, torch {torch.__version__}")
    rows = [r for size in args.sizes for r in measure_size(size, args)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(rows, args))
    print(f"wrote {out}")
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    head = (
        f"# timm ViT-B/16, dense vs headsparse.patch ({device_line(device_report('cpu'))}, "
        f"torch {torch.__version__})\n\n"
        f"`python benchmarks/vit.py {' '.join(sys.argv[1:])}`: `{ARCH}` built with `pretrained=False` (random "
        f"weights) and `img_size` set, batch 1, {args.dtype}, layout blocks of {args.block_size}. Model = "
        "`forward_features` + `forward_head(pre_logits=True)`; attention = one layer's attention call on random "
        f"q/k/v of that shape (12 heads x 64). Times: median of {args.repeats} interleaved rounds after a warm-up "
        f"(attention: {args.repeats * 3}) in one process, dense and every pattern (each on its own patched copy of "
        "the model) in each round, with the min-max; ratio = patched / dense, the ratio of the medians with the "
        "min-max of the per-round ratios (lower is faster; 'identical to dense': the output equals dense's, so no "
        "speed-up is claimed). cos = cosine similarity with the dense model's final features: the pooled class-token "
        "features, and the mean over tokens. Random weights make attention nearly uniform: the cosine measures how "
        "much the output moves, not a trained model's accuracy. density = fraction of (query, key) pairs the "
        "layout keeps (agent attention has no mask: every query reads every key through the agents); executor = "
        "what `sparse_attention(backend='auto')` runs the layout with (`flex`: compiled FlexAttention).\n\n"
        + threads_note(args) +
        "| image | tokens | pattern | density | executor | dense model s | patched model s | model ratio "
        "(per-round range) | dense attention ms | attention ratio (per-round range) | cos pooled | cos tokens |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['size']} px | {r['tokens']} | {r['pattern']} | "
        f"{'-' if r['density'] is None else format(r['density'], '.3f')} | {r['executor']} | {r['dense_cell']} | "
        f"{r['sparse_cell']} | {r['ratio_cell']} | "
        f"{r['attn_dense_cell']} | {r['attn_ratio_cell']} | {r['cos_pooled']:.4f} | {r['cos_tokens']:.4f} |\n"
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
