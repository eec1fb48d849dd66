"""Fidelity on a trained embedded model: every pattern family, "auto" and a searched plan vs dense.

On the moving-shapes model (``--model shapes``, the default) or the drifting-scenes model
(``--model scenes``), each mode generates the same held-out captions from the same seeds as the
dense run, in one process, with the preset's dense warm-up (first 20% of steps and the first layer
dense). Reported per mode: density in the sparse steps, attention time (profiled attention calls)
and wall time against dense, video PSNR and mean per-frame SSIM against the dense video, and how
many of the caption's fields the model's reader still reads from the video (moving shapes: colour,
shape, background, direction, motion by ``moving_shapes.describe``; drifting scenes: drift,
colours, motions by ``drifting_scenes.caption_matches``). The searched plan is calibrated on other
held-out captions than the ones scored. Besides one setting per family sized to the grid, the 3-D
local windows (neighbourhoods of 5x5x5 to 9x9x9 tokens, sliding tiles of 4x4x4 tokens), cut to the
grid, run as modes of their own.

Timing: every mode (and dense) first runs one untimed 1-step generation (compilation, layouts);
then dense and every mode take turns for ``--repeats`` rounds (at least one per caption), round i
generating caption i mod N with every mode: per-video medians, the ratio of the medians and the
range of the per-round ratios. Fidelity is scored on the first N rounds (each caption once); a
mode whose videos equal dense's is reported as identical, not as a speed-up.

    python benchmarks/shapes_fidelity.py                 # results/shapes_fidelity_cpu.md
    python benchmarks/shapes_fidelity.py --model scenes  # results/scenes_fidelity_cpu.md
    python benchmarks/shapes_fidelity.py --grid 8x32x32 --prompts 1 --modes spatial auto --steps 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import headsparse
from headsparse.machine import device_line, device_report
from headsparse.patterns.recognize import Recognizer
from headsparse.pipelines.generate import GenerateRequest, run_once, warm_up
from headsparse.pipelines.metrics import psnr, ssim
from headsparse.timing import ratio_cell, ratio_spread, spread_cell

sys.path.insert(0, str(Path(__file__).parent))
from embedded import MODELS, RESULTS, add_model_arguments, local_windows, parse_grid, token_grid

SCORED = 10**9 + 700  # held-out clip seeds whose captions are scored
CALIBRATION = 10**9 + 900  # held-out clip seeds whose captions calibrate the search


def families(frames: int, height: int, width: int) -> dict[str, dict]:
    """One setting per family for a token grid: windows of about half the frame, a band of 1/8 of the tokens;
    then the 3-D local windows, cut to the grid.

    At 16 x 16 x 16 tokens (16 frames of 64x64 pixels) these are neighbourhood (3, 9, 9), tiles of
    4 x 8 x 8 and a diagonal half-width of 512.
    """
    def odd(n: int) -> int:  # the odd window nearest above half the axis, at most the axis
        k = n // 2 + 1
        return min(k + 1 - k % 2, n)

    tokens = frames * height * width
    return {
        "spatial": {"pattern": "spatial"},
        "temporal": {"pattern": "temporal"},
        "neighborhood": {"pattern": "neighborhood", "kernel_size": (min(3, frames), odd(height), odd(width))},
        "sliding_tile": {"pattern": "sliding_tile", "tile": (4, max(1, height // 2), max(1, width // 2)),
                         "window": (3, 3, 3)},
        "diagonal": {"pattern": "diagonal", "half_width": max(1, tokens // 8)},
        "multi_diagonal": {"pattern": "multi_diagonal"},
        "vertical_stripe": {"pattern": "vertical_stripe"},
        "textural": {"pattern": "textural", "stride": 4},
        "pooled": {"pattern": "pooled", "keep": 0.2},
        "agent": {"pattern": "agent"},
        **local_windows(frames, height, width),
    }


MODES = tuple(families(16, 16, 16))  # the family names, in table order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--grid", default=None, help="FRAMESxHxW pixels (default 16x64x64)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--budget", type=float, nargs="+", default=[0.05],
                        help="search budgets (mean relative L2 per head): one plan each, from one calibration")
    parser.add_argument("--modes", nargs="+", default=[*MODES, "auto", "plan"])
    parser.add_argument("--max-cost", type=float, nargs="+", default=[],
                        help="with auto in --modes: also auto limited to patterns this device runs within each "
                             "fraction of dense time (one mode per value)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds, dense and every mode in turn (at least one per caption)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.repeats < 1 or args.prompts < 1:
        parser.error(f"--repeats and --prompts must be >= 1, got {args.repeats} and {args.prompts}")
    model = MODELS[args.model]
    grid = args.grid or model.fidelity_grid
    frames, height, width = parse_grid(grid)
    args.out.mkdir(parents=True, exist_ok=True)
    preset = model.preset()
    pipe = model.load(args.model_path)
    tokens = token_grid(pipe, frames, height, width)
    family = families(*tokens)
    warm = {"dense_steps": preset.dense_steps, "dense_layers": preset.dense_layers}
    captions = [model.caption(SCORED + i) for i in range(args.prompts)]
    requests = [GenerateRequest(model=model.name, prompt=c, out=args.out, steps=args.steps, frames=frames,
                                height=height, width=width, guidance=args.guidance, seed=i)
                for i, c in enumerate(captions)]

    plan_note = ""
    modes: dict[str, dict] = {m: {**family[m], **warm} for m in args.modes if m in family}
    if "auto" in args.modes:
        modes["auto"] = {"plan": "auto", **warm}
        for cost in args.max_cost:
            modes[f"auto max_cost {cost:g}"] = {"plan": "auto", "recognizer": Recognizer(max_cost=cost), **warm}
    if "plan" in args.modes:
        start = time.perf_counter()
        calib = [model.caption(CALIBRATION + i) for i in range(2)]
        cache = args.out / f"{model.name}_calibration_{grid}.pt"  # one calibration serves every budget
        cache.unlink(missing_ok=True)
        notes = []
        for budget in args.budget:
            plan = headsparse.search(pipe, prompts=calib, steps=args.steps, seeds=(0,), budget=budget,
                                     progress=False, cache=cache, num_frames=frames, height=height, width=width,
                                     guidance_scale=args.guidance)
            single = len(args.budget) == 1
            name = "plan" if single else f"plan {budget:g}"
            path = plan.save(args.out / f"{model.name}_plan_{grid}{'' if single else f'_{budget:g}'}.json")
            modes[name] = {"plan": str(path)}
            notes.append(f"`{path.name}` (budget {budget:g})")
        cache.unlink(missing_ok=True)
        plan_note = (f"Searched plans: `headsparse.search` on {len(calib)} other held-out captions ({calib}), "
                     f"one calibration, {time.perf_counter() - start:.0f} s in all; saved as {', '.join(notes)}. "
                     "A plan decides its dense steps and layers itself (no warm-up rule added).")
    unknown = [m for m in args.modes if m not in modes and m != "plan"]
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; choose from {[*MODES, 'auto', 'plan']}")

    # Pay every mode's first-call costs (compilation, layouts) on an untimed 1-step run before timing anything.
    for kwargs in [{}, *modes.values()]:
        warm_up(pipe, preset, requests[0], kwargs)
    paths = {"dense": {}, **modes}
    rounds = max(args.repeats, len(requests))
    runs: dict[str, list] = {label: [] for label in paths}
    for i in range(rounds):  # interleaved: caption i mod N with dense, then every mode
        for label, kwargs in paths.items():
            runs[label].append(run_once(pipe, preset, requests[i % len(requests)], label, kwargs))
    dense = runs["dense"]
    scored = dense[: len(requests)]  # each caption once: the videos fidelity is scored on
    dense_att = [d.attention_s for d in dense]
    dense_wall = [d.wall_s for d in dense]
    lines = [
        f"# {model.title}: fidelity and speed of every pattern family, auto and a searched plan",
        "",
        f"Device: {device_line(device_report('cpu'))}. Command: `python {' '.join(sys.argv)}`. "
        f"Grid {grid} pixels = {'x'.join(map(str, tokens))} tokens, {args.steps} steps, guidance "
        f"{args.guidance}, float32, captions {captions} (seed i for caption i). Times: median of {rounds} "
        "interleaved rounds after a warm-up (an untimed 1-step generation per mode; then in every round dense and "
        f"every mode, in table order, generate caption i mod {len(captions)}), per video, with the min-max. Dense: "
        f"attention {spread_cell(dense_att, '.1f')} s, wall {spread_cell(dense_wall, '.1f')} s per video. "
        f"Warm-up for patterns and auto: first {preset.dense_steps:.0%} of steps and first {preset.dense_layers} "
        "layer dense. Density: fraction of (query, key) pairs kept in the sparse steps, mean over layers (dense "
        "layers count 1; '-': pooled and agent choose per call from q/k). Time ratios: headsparse / dense, the "
        "ratio of the medians with the min-max of the per-round ratios; 'identical to dense': the mode's videos "
        "equal dense's, so no speed-up is claimed. PSNR over each whole video, SSIM mean over frames, both "
        "averaged over the captions' first videos. 'read': caption fields "
        f"({', '.join(model.fields)}) read from the video by {model.reader}; dense reads in the first row.",
        "",
        "| mode | params | density | attention s | attention time ratio | wall s | wall time ratio | PSNR dB | SSIM "
        "| read |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def read(frames_np: np.ndarray, caption: str) -> int:
        return sum(model.dataset.caption_matches(torch.from_numpy(frames_np), caption).values())

    total_fields = len(model.fields) * len(captions)
    dense_read = sum(read(d.frames, c) for d, c in zip(scored, captions, strict=True))
    lines.append(f"| dense | - | 1.000 | {spread_cell(dense_att, '.2f')} | - | {spread_cell(dense_wall, '.2f')} | - "
                 f"| inf | 1.0000 | {dense_read}/{total_fields} |")
    print(lines[-1], flush=True)
    for mode, kwargs in modes.items():
        timed = runs[mode]
        mine = timed[: len(requests)]
        dens = [1.0 if row["density"] is None else row["density"] for row in mine[0].layers]
        dynamic = kwargs.get("pattern") in ("pooled", "agent")
        density = "-" if dynamic else f"{sum(dens) / len(dens):.3f}"
        identical = all(np.array_equal(r.frames, d.frames) for r, d in zip(mine, scored, strict=True))
        att_s = [r.attention_s for r in timed]
        wall_s = [r.wall_s for r in timed]
        att = ratio_cell(*ratio_spread(att_s, dense_att), ".2f", identical=identical)
        wall = ratio_cell(*ratio_spread(wall_s, dense_wall), ".2f", identical=identical)
        p = np.mean([psnr(r.frames, d.frames) for r, d in zip(mine, scored, strict=True)])
        s = np.mean([np.mean([ssim(a, b) for a, b in zip(r.frames, d.frames, strict=True)])
                     for r, d in zip(mine, scored, strict=True)])
        hits = sum(read(r.frames, c) for r, c in zip(mine, captions, strict=True))
        params = {k: v for k, v in kwargs.items() if k not in ("pattern", "plan", *warm)}
        if isinstance(params.get("recognizer"), Recognizer):  # its repr is every field; the mode name says it
            params["recognizer"] = f"max_cost={params['recognizer'].max_cost:g}"
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "-"
        lines.append(f"| {mode} | {shown} | {density} | {spread_cell(att_s, '.2f')} | {att} | "
                     f"{spread_cell(wall_s, '.2f')} | {wall} | {p:.2f} | {s:.4f} | {hits}/{total_fields} |")
        print(lines[-1], flush=True)
    if plan_note:
        lines += ["", plan_note]
    suffix = "" if grid == model.fidelity_grid else f"_{grid}"
    (args.out / f"{model.name}_fidelity_cpu{suffix}.md").write_text(
        "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
