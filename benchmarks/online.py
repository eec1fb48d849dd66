"""plan="auto" (online recognition) on planted heads: overhead, speed and fidelity against dense.

Part 1, one attention call: q/k/v whose 12 heads (D=128) have planted spatial / temporal /
neighborhood / global patterns (``headsparse.testing.planted_qkv``) at Wan-like grids of 8k+
tokens. Dense SDPA, the recogniser, and the recognised layout are compared; overhead =
recognition time / dense attention time; the recognised layout is compared with every head running
one fixed pattern.

Part 2, a planted WanTransformer3DModel (Wan 1.3B dims, few blocks, random weights apart from the
planted q/k): one transformer call dense, auto-patched (recognition on its first call, then
reused) and patched with single fixed patterns, each configuration on its own patched copy of the
model; output PSNR against dense.

Timing, in both parts: every path is called once untimed (recognition, layouts, compilation), then
dense and every other path take turns in one ``headsparse.timing.interleaved`` call for ``--repeats``
rounds; the tables give medians, ratios of the medians and the range of the per-round ratios.

    python benchmarks/online.py                      # the table in results/online_cpu.md
    python benchmarks/online.py --grids 5x30x52      # part 1 on one grid only
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

import headsparse
from headsparse.machine import device_line, device_report
from headsparse.patterns import Geometry, Spatial, Temporal
from headsparse.patterns.recognize import Recognizer, recognition_layout
from headsparse.testing import EXPECTED_PATTERN, plant_wan, planted_qkv, random_kinds
from headsparse.timing import Spread, interleaved, ratio_cell, ratio_spread, spread_cell

sys.path.insert(0, str(Path(__file__).parent))
from attention import DTYPES
from pipeline import add_model_arguments, model_and_step, patched_copies


def psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    mse = (out.float() - ref.float()).pow(2).mean().item()
    peak = (ref.max() - ref.min()).item()
    return float("inf") if mse == 0 else 20 * math.log10(peak) - 10 * math.log10(mse)


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _percent(ratio: float, rounds: Spread) -> str:
    return f"{100 * ratio:.2f}% ({100 * rounds.low:.2f}-{100 * rounds.high:.2f}%)"


def attention_rows(grid: tuple[int, int, int], args: argparse.Namespace) -> list[dict]:
    dtype = DTYPES[args.dtype]
    g = Geometry(*grid)
    kinds = random_kinds(1, args.heads, seed=sum(grid))[0]
    q, k, v = planted_qkv(g, kinds, head_dim=args.head_dim, dtype=dtype)
    recognizer = Recognizer()
    with torch.no_grad():
        rec = recognizer.recognize(q, k, v, g, block=args.block)
        right = sum(p.name == EXPECTED_PATTERN[kd] for kd, p in zip(kinds, rec.heads, strict=True))
        configs = {"auto": recognition_layout(rec, g, args.block)}
        for pattern in (Spatial(), Temporal()):
            configs[f"all {pattern.name}"] = pattern.layout(g, num_heads=args.heads, block_m=args.block,
                                                            block_n=args.block)
        paths = {"dense": partial(F.scaled_dot_product_attention, q, k, v),
                 "recognition": partial(recognizer.recognize, q, k, v, g, block=args.block)}
        paths.update({label: partial(headsparse.sparse_attention, q, k, v, lay) for label, lay in configs.items()})
        outputs = {label: fn() for label, fn in paths.items()}  # the warm-up, untimed (compilation, caches)
        times = interleaved(paths, args.repeats, warmup=False)
    dense = outputs["dense"]
    overhead, over_rounds = ratio_spread(times["recognition"], times["dense"])
    rows = []
    for label, layout in configs.items():
        out = outputs[label]
        ratio, rounds = ratio_spread(times[label], times["dense"])
        identical = torch.equal(out, dense)
        rows.append({
            "grid": "x".join(map(str, grid)), "tokens": g.seq_len, "config": label,
            "density": float(layout.density().mean()), "dense": spread_cell(times["dense"]),
            "sparse": spread_cell(times[label]), "ratio": ratio, "ratio_low": rounds.low, "ratio_high": rounds.high,
            "identical": identical, "ratio_cell": ratio_cell(ratio, rounds, identical=identical),
            "overhead": overhead if label == "auto" else None,
            "overhead_cell": _percent(overhead, over_rounds) if label == "auto" else "",
            "accuracy": f"{right}/{len(kinds)}" if label == "auto" else "",
            "psnr": psnr(out, dense), "rel_l2": rel_l2(out, dense),
        })
        print(rows[-1])
    return rows


def model_rows(args: argparse.Namespace) -> list[dict]:
    model, _ = model_and_step(args, args.model_grid)
    planted = plant_wan(model, None, seed=1)

    configs = {"auto": {"plan": "auto"}, "all spatial": {"pattern": "spatial"}, "all temporal": {"pattern": "temporal"}}
    paths, handles = patched_copies(model, args, args.model_grid,
                                    {label: {"profile": True, **kwargs} for label, kwargs in configs.items()})
    # The warm-up, untimed: recognises (auto), builds layouts, compiles.
    outputs = {label: step() for label, step in paths.items()}
    first = {label: handle.summary(print_table=label == "auto") for label, handle in handles.items()}
    for handle in handles.values():
        handle.reset()  # fresh timings; the recognised decisions are kept (step 0 again)
    times = interleaved(paths, args.repeats, warmup=False)
    dense = outputs["dense"]
    rows = []
    for label, handle in handles.items():
        summary = handle.summary(print_table=False)
        handle.unpatch()
        out = outputs[label]
        density = sum(r["density"] for r in summary) / len(summary)
        rec_ms = sum(r["recognition_ms"] or 0 for r in first[label] if r["head"] == 0)
        attn_ms = sum(r["attention_ms"] for r in summary if r["head"] == 0)
        accuracy = ""
        if label == "auto":
            right = sum(r["pattern"].split("(")[0] == EXPECTED_PATTERN[planted[r["layer"]][r["head"]]]
                        for r in first[label])
            accuracy = f"{right}/{len(first[label])}"
        ratio, rounds = ratio_spread(times[label], times["dense"])
        identical = torch.equal(out, dense)
        rows.append({"config": label, "density": density, "sparse": spread_cell(times[label], ".2f"), "ratio": ratio,
                     "ratio_low": rounds.low, "ratio_high": rounds.high, "identical": identical,
                     "ratio_cell": ratio_cell(ratio, rounds, identical=identical), "psnr": psnr(out, dense),
                     "rel_l2": rel_l2(out, dense), "recognition_ms": rec_ms, "attention_ms": attn_ms,
                     "accuracy": accuracy,
                     "recognitions_timed": sum(r["recognitions"] for r in summary if r["head"] == 0)})
        print(rows[-1])
    rows.append({"dense_s": Spread.of(times["dense"]).median, "dense": spread_cell(times["dense"], ".2f"),
                 "labels": planted})
    return rows


def to_markdown(att: list[dict], mod: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"# plan=\"auto\" on planted heads ({device_line(device_report('cpu'))})",
        "",
        f"`python benchmarks/online.py {' '.join(sys.argv[1:])}`, {args.dtype}, {args.heads} heads x {args.head_dim}, "
        f"block {args.block}. Times: median of {args.repeats} interleaved rounds after a warm-up (dense and every "
        "other path once per round, in table order, in one process), with the min-max; ratios = the ratio of the "
        "medians, with the min-max of the per-round ratios ('identical to dense': the output equals dense's, so no "
        "speed-up is claimed). PSNR and relative L2 are against dense attention (part 1) or the dense model output "
        "(part 2).",
        "",
        "## 1. One attention call: recognition overhead and the recognised layout",
        "",
        "Recognition overhead = time of `Recognizer().recognize` (32 sampled rows per head, all candidates) / dense "
        "SDPA time of the same call, timed in the same rounds. It is paid once per `every` (default 5) steps.",
        "",
        "| grid | tokens | layout | heads recognised | density | dense s | sparse s | sparse / dense time "
        "(per-round range) | recognition / dense (per-round range) | PSNR dB | rel. L2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in att:
        lines.append(f"| {r['grid']} | {r['tokens']} | {r['config']} | {r['accuracy']} | {r['density']:.3f} | "
                     f"{r['dense']} | {r['sparse']} | {r['ratio_cell']} | {r['overhead_cell']} | {r['psnr']:.1f} | "
                     f"{r['rel_l2']:.4f} |")
    f, h, w = args.model_grid
    dense = mod[-1].get("dense", f"{mod[-1]['dense_s']:.2f}")
    lines += [
        "",
        f"## 2. Planted WanTransformer3DModel: {args.layers} blocks, {f}x{h}x{w} = {f * h * w} tokens",
        "",
        f"Dense: {dense} s per transformer call. Each configuration runs on its own copy of the model, patched "
        "once. Each head's planted kind is drawn at random. The auto run's timed calls reuse the decision made on "
        "its warm-up call; recognition ms is that cost summed over layers; it includes building every candidate's "
        "layout for a geometry seen for the first time (cached after).",
        "",
        "| configuration | heads recognised | attention density | patched s | patched / dense time (per-round range) "
        "| output PSNR dB | output rel. L2 | recognition ms (first call) | attention ms per call after recognition "
        "(sum of layers) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in mod[:-1]:
        lines.append(f"| {r['config']} | {r['accuracy']} | {r['density']:.3f} | {r['sparse']} | {r['ratio_cell']} | "
                     f"{r['psnr']:.1f} | {r['rel_l2']:.4f} | {r['recognition_ms']:.0f} | {r['attention_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", nargs="+", default=["6x30x52", "11x30x52", "21x30x52"])
    p.add_argument("--model-grid", default="9x30x52")
    add_model_arguments(p)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "online_cpu.md")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    args.model_grid = tuple(int(n) for n in args.model_grid.split("x"))
    att = [r for grid in args.grids for r in attention_rows(tuple(int(n) for n in grid.split("x")), args)]
    mod = [{"dense_s": float("nan"), "labels": []}] if args.skip_model else model_rows(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(att, mod, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
