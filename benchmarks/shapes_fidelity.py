"""Fidelity on the trained moving-shapes model: every pattern family, "auto" and a searched plan vs dense.

Each mode generates the same held-out captions from the same seeds as the dense run, in one
process, with the preset's dense warm-up (first 20% of steps and the first layer dense). Reported
per mode: density in the sparse steps, attention time (profiled attention calls) and wall time
against dense, video PSNR and mean per-frame SSIM against the dense video, and how many of the
caption's five fields (colour, shape, background, direction, motion) ``moving_shapes.describe``
still reads from the video. The searched plan is calibrated on other held-out captions than the
ones scored.

Timing: every mode (and dense) first runs one untimed 1-step generation (compilation, layouts);
then dense and every mode take turns for ``--repeats`` rounds (at least one per caption), round i
generating caption i mod N with every mode: per-video medians, the ratio of the medians and the
range of the per-round ratios. Fidelity is scored on the first N rounds (each caption once); a
mode whose videos equal dense's is reported as identical, not as a speed-up.

    python benchmarks/shapes_fidelity.py                 # results/shapes_fidelity_cpu.md
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
from headsparse.pipelines import moving_shapes
from headsparse.pipelines.generate import GenerateRequest, run_once, warm_up
from headsparse.pipelines.metrics import psnr, ssim
from headsparse.pipelines.presets import preset_for
from headsparse.pipelines.shapes import load_moving_shapes_pipeline
from headsparse.timing import ratio_cell, ratio_spread, spread_cell

RESULTS = Path(__file__).parent / "results"
SCORED = 10**9 + 700  # held-out clip seeds whose captions are scored
CALIBRATION = 10**9 + 900  # held-out clip seeds whose captions calibrate the search
def families(frames: int, height: int, width: int) -> dict[str, dict]:
    """One setting per family for a token grid: windows of about half the frame, a band of 1/8 of the tokens.

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
    }


MODES = tuple(families(16, 16, 16))  # the family names, in table order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--grid", default="16x64x64", help="FRAMESxHxW pixels")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--budget", type=float, default=0.05, help="search budget (mean relative L2 per head)")
    parser.add_argument("--modes", nargs="+", default=[*MODES, "auto", "plan"])
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds, dense and every mode in turn (at least one per caption)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.repeats < 1 or args.prompts < 1:
        parser.error(f"--repeats and --prompts must be >= 1, got {args.repeats} and {args.prompts}")
    frames, height, width = (int(x) for x in args.grid.split("x"))
    family = families(frames, height // 4, width // 4)
    args.out.mkdir(parents=True, exist_ok=True)
    preset = preset_for("shapes")
    pipe = load_moving_shapes_pipeline(args.model_path)
    warm = {"dense_steps": preset.dense_steps, "dense_layers": preset.dense_layers}
    captions = [moving_shapes.sample_clip(SCORED + i).caption for i in range(args.prompts)]
    requests = [GenerateRequest(model="shapes", prompt=c, out=args.out, steps=args.steps, frames=frames, height=height,
                                width=width, guidance=args.guidance, seed=i) for i, c in enumerate(captions)]

    plan_note = ""
    modes: dict[str, dict] = {m: {**family[m], **warm} for m in args.modes if m in family}
    if "auto" in args.modes:
        modes["auto"] = {"plan": "auto", **warm}
    if "plan" in args.modes:
        start = time.perf_counter()
        calib = [moving_shapes.sample_clip(CALIBRATION + i).caption for i in range(2)]
        plan = headsparse.search(pipe, prompts=calib, steps=args.steps, seeds=(0,), budget=args.budget,
                                 progress=False, num_frames=frames, height=height, width=width,
                                 guidance_scale=args.guidance)
        path = plan.save(args.out / f"shapes_plan_{args.grid}.json")
        plan_note = (f"Searched plan: `headsparse.search` on {len(calib)} other held-out captions ({calib}), "
                     f"budget {args.budget}, {time.perf_counter() - start:.0f} s including calibration; saved as "
                     f"`{path.name}`. It decides its dense steps and layers itself (no warm-up rule added).")
        modes["plan"] = {"plan": str(path)}
    unknown = [m for m in args.modes if m not in modes]
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
        "# Moving-shapes model: fidelity and speed of every pattern family, auto and a searched plan",
        "",
        f"Device: {device_line(device_report('cpu'))}. Command: `python {' '.join(sys.argv)}`. "
        f"Grid {args.grid} pixels = {frames}x{height // 4}x{width // 4} tokens, {args.steps} steps, guidance "
        f"{args.guidance}, float32, captions {captions} (seed i for caption i). Times: median of {rounds} "
        "interleaved rounds after a warm-up (an untimed 1-step generation per mode; then in every round dense and "
        f"every mode, in table order, generate caption i mod {len(captions)}), per video, with the min-max. Dense: "
        f"attention {spread_cell(dense_att, '.1f')} s, wall {spread_cell(dense_wall, '.1f')} s per video. "
        f"Warm-up for patterns and auto: first {preset.dense_steps:.0%} of steps and first {preset.dense_layers} "
        "layer dense. Density: fraction of (query, key) pairs kept in the sparse steps, mean over layers (dense "
        "layers count 1; '-': pooled and agent choose per call from q/k). Time ratios: headsparse / dense, the "
        "ratio of the medians with the min-max of the per-round ratios; 'identical to dense': the mode's videos "
        "equal dense's, so no speed-up is claimed. PSNR over each whole video, SSIM mean over frames, both "
        "averaged over the captions' first videos. 'read': caption fields read from the video by "
        "`moving_shapes.describe` (dense reads in the first row).",
        "",
        "| mode | params | density | attention s | attention time ratio | wall s | wall time ratio | PSNR dB | SSIM "
        "| read |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def read(frames_np: np.ndarray, caption: str) -> int:
        return sum(moving_shapes.caption_matches(torch.from_numpy(frames_np), caption).values())

    total_fields = 5 * len(captions)
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
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "-"
        lines.append(f"| {mode} | {shown} | {density} | {spread_cell(att_s, '.2f')} | {att} | "
                     f"{spread_cell(wall_s, '.2f')} | {wall} | {p:.2f} | {s:.4f} | {hits}/{total_fields} |")
        print(lines[-1], flush=True)
    if plan_note:
        lines += ["", plan_note]
    (args.out / f"shapes_fidelity_cpu{'' if args.grid == '16x64x64' else '_' + args.grid}.md").write_text(
        "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
