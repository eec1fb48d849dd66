"""headsparse.search on a planted Wan transformer: the searched plan vs uniform patterns.

A WanTransformer3DModel with Wan 1.3B dimensions (few blocks, random weights) whose heads have
planted spatial / temporal / neighborhood / global patterns is calibrated on one dense call; the
cost model measures every candidate on this device; the plan is then timed against dense and
against every head running one uniform pattern, with output PSNR against dense. Search time,
head recovery and the predicted time/error are reported too. Timing: each configuration runs on
its own copy of the model, patched once; every path is called once untimed (layouts, compilation),
then dense and every configuration take turns in one ``headsparse.timing.interleaved`` call for
``--repeats`` rounds: medians, the ratio of the medians and the range of the per-round ratios.

    python benchmarks/search.py                          # results/search_cpu.md
    python benchmarks/search.py --grid 5x30x52 --layers 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import headsparse
from headsparse.machine import device_line, device_report
from headsparse.patterns import Geometry, Neighborhood, PooledBlocks, Spatial, Temporal, Textural
from headsparse.search import CostModel
from headsparse.testing import EXPECTED_PATTERN, plant_wan
from headsparse.timing import interleaved, ratio_cell, ratio_spread, spread_cell

sys.path.insert(0, str(Path(__file__).parent))
from attention import DTYPES
from online import psnr, rel_l2
from pipeline import add_model_arguments, model_and_step, patched_copies


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="9x30x52")
    add_model_arguments(p)
    p.add_argument("--budget", type=float, default=0.01)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--cost", choices=["measured", "blocks"], default="measured")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search_cpu.md")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    dtype = DTYPES[args.dtype]
    f, h, w = (int(n) for n in args.grid.split("x"))
    model, step = model_and_step(args, (f, h, w))
    labels = plant_wan(model, None, seed=2)

    start = time.perf_counter()
    plan = headsparse.search(model, step, budget=args.budget, block_size=args.block, progress=False,
                             cost_model=CostModel(args.cost, dtype=dtype))
    search_s = time.perf_counter() - start
    mp = plan.transformers["transformer"]
    right = sum(EXPECTED_PATTERN[k] == pat.name for layer, row in zip(mp.layers, labels, strict=True)
                for k, pat in zip(row, layer.phases[0].heads, strict=True))
    predicted = plan.settings["predicted"]["transformer"]["buckets"][0]
    print(f"search: {search_s:.1f} s, {right}/{len(labels) * args.heads} heads recovered, predicted {predicted}")

    uniform = {"all spatial": Spatial(), "all temporal": Temporal(),
               "all neighborhood (3,9,9)": Neighborhood(kernel_size=(3, 9, 9)), "all textural": Textural(),
               "all pooled (keep 0.2)": PooledBlocks(keep=0.2)}
    configs = {"searched plan": {"plan": plan},
               **{k: {"pattern": v, "block_size": args.block} for k, v in uniform.items()}}
    geometry = Geometry(f, h, w)
    predicted_time = {"searched plan": predicted["relative_time"]}
    for label, pattern in uniform.items():
        if not getattr(pattern, "dynamic", False):
            predicted_time[label] = float(CostModel(args.cost, dtype=dtype).costs(
                [pattern], geometry, heads=args.heads, head_dim=args.head_dim, block=args.block)[0])
    paths, handles = patched_copies(model, args, (f, h, w), configs)
    outputs = {label: fn() for label, fn in paths.items()}  # the warm-up, untimed: layouts, compilation
    times = interleaved(paths, args.repeats, warmup=False)
    dense = outputs["dense"]
    rows = []
    for label, handle in handles.items():
        summary = handle.summary(print_table=False)
        handle.unpatch()
        out = outputs[label]
        dens = [r["density"] for r in summary if r["density"] is not None]
        ratio, rounds = ratio_spread(times[label], times["dense"])
        identical = torch.equal(out, dense)
        rows.append({"config": label, "density": sum(dens) / len(dens) if dens else float("nan"),
                     "predicted": predicted_time.get(label), "sparse": spread_cell(times[label], ".2f"),
                     "ratio": ratio, "ratio_low": rounds.low, "ratio_high": rounds.high, "identical": identical,
                     "ratio_cell": ratio_cell(ratio, rounds, identical=identical),
                     "psnr": psnr(out, dense), "rel_l2": rel_l2(out, dense)})
        print(rows[-1])
    lines = [
        f"# headsparse.search on a planted Wan transformer ({device_line(device_report('cpu'))})",
        "",
        f"`python benchmarks/search.py {' '.join(argv)}`: WanTransformer3DModel, {args.layers} blocks, {args.heads} "
        f"heads x {args.head_dim}, FFN {args.ffn}, grid {f}x{h}x{w} = {f * h * w} tokens, {args.dtype}, planted "
        f"heads (random kinds), one calibration call, budget {args.budget}, cost model `{args.cost}`.",
        "",
        f"Search: {search_s:.1f} s on this CPU (calibration, {plan.settings['predicted']['transformer']['candidates']}"
        f" candidates measured by the cost model, assignment); {right}/{len(labels) * args.heads} planted heads "
        f"recovered; predicted attention time {predicted['relative_time']:.3f} of dense, density "
        f"{predicted['density']:.3f}, mean head error {predicted['mean_error']:.4f}.",
        "",
        f"Dense: {spread_cell(times['dense'], '.2f')} s per transformer call. Times: median of {args.repeats} "
        "interleaved rounds after a warm-up (dense and every configuration once per round, in table order, in one "
        "process, each configuration on its own patched copy of the model), with the min-max. Ratio = patched / "
        "dense time of one call, the ratio of the medians with the min-max of the per-round ratios ('identical to "
        "dense': the output equals dense's, so no speed-up is claimed); PSNR and rel. L2 of the output against "
        "dense.",
        "",
        "Predicted = the cost model's attention time relative to dense (what the search optimises); ratio = the "
        "whole transformer call.",
        "",
        "| configuration | attention density | predicted attention time | patched s/call | patched / dense time "
        "(call, per-round range) | output PSNR dB | output rel. L2 |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['config']} | {r['density']:.3f} | "
              f"{'' if r['predicted'] is None else format(r['predicted'], '.3f')} | {r['sparse']} | "
              f"{r['ratio_cell']} | {r['psnr']:.1f} | {r['rel_l2']:.4f} |" for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
