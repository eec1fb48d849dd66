"""A Wan-like transformer, dense vs patched: time per denoising step and output error.

A real ``WanTransformer3DModel`` with random weights and Wan 2.1 1.3B dimensions (hidden 1536,
12 heads of 128, FFN 8960, text 4096) but only a few blocks, run on a latent that patchifies to
21x30x52 tokens (32760, Wan 480p 81 frames). Every configuration runs on its own copy of the model,
patched once; each path (dense and every configuration) is called once untimed (layouts, compilation),
then all take turns in one ``headsparse.timing.interleaved`` call for ``--repeats`` rounds: medians,
the ratio of the medians and the range of the per-round ratios. Its output is compared with the
dense output (relative L2; identical outputs claim no speed-up). Weights are random, so the error
says how much each pattern changes *this* network, not how a trained model's video would look.

    python benchmarks/pipeline.py                       # the table in results/pipeline_cpu.md
    python benchmarks/pipeline.py --frames 5 --layers 1 # smaller and faster
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import headsparse
from headsparse.machine import device_line, device_report
from headsparse.patterns import Spatial, Temporal
from headsparse.plan import LayerPlan, ModelPlan, Phase
from headsparse.timing import Spread, interleaved, ratio_cell, ratio_spread, spread_cell

sys.path.insert(0, str(Path(__file__).parent))
from attention import DTYPES


def build_model(layers: int, dtype: torch.dtype, *, hidden_heads: int = 12, head_dim: int = 128,
                ffn: int = 8960, text_dim: int = 4096) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=hidden_heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=ffn, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    )
    model = model.to(dtype)
    for name, module in model.named_modules():  # what from_pretrained(torch_dtype=...) keeps in float32
        if any(k in name.split(".") for k in model._keep_in_fp32_modules or ()):
            module.float()
    return model.eval()


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The Wan-like model's size, dtype and repeat count (shared with benchmarks/online.py and search.py)."""
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ffn", type=int, default=8960)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds after the warm-up")


def step_for(model: torch.nn.Module, args: argparse.Namespace, grid: tuple[int, int, int]
             ) -> Callable[[], torch.Tensor]:
    """One denoising call of ``model`` on a latent of ``grid`` tokens (timestep 500); the inputs are drawn
    from fixed seeds, so every model (and every copy of one) gets the same."""
    dtype = DTYPES[args.dtype]
    f, h, w = grid
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, f, 2 * h, 2 * w, generator=g).to(dtype)
    text = torch.randn(1, args.text_len, args.text_dim, generator=g).to(dtype)

    def step() -> torch.Tensor:
        with torch.no_grad():
            return model(x, torch.tensor([500]), text, return_dict=False)[0]

    return step


def model_and_step(args: argparse.Namespace, grid: tuple[int, int, int]
                   ) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """The model of ``args`` and one denoising call of it on a latent of ``grid`` tokens (timestep 500)."""
    model = build_model(args.layers, DTYPES[args.dtype], hidden_heads=args.heads, head_dim=args.head_dim,
                        ffn=args.ffn, text_dim=args.text_dim)
    return model, step_for(model, args, grid)


def patched_copies(model: torch.nn.Module, args: argparse.Namespace, grid: tuple[int, int, int],
                   configs: dict[str, dict[str, Any]]) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, Any]]:
    """The paths an interleaved timing takes turns over: ``"dense"`` (``model`` itself, unpatched) and, per
    configuration, a copy of ``model`` patched once with its ``headsparse.patch`` keyword arguments and kept
    patched (so nothing is patched, recognised or built inside a timed call after the warm-up).

    Returns ({label: step}, {label: patch handle}); unpatch the handles (or drop the copies) when done.
    """
    headsparse.unpatch(model)  # a no-op unless something left it patched: dense must be dense
    paths = {"dense": step_for(model, args, grid)}
    handles = {}
    for label, kwargs in configs.items():
        twin = copy.deepcopy(model)
        handles[label] = headsparse.patch(twin, **kwargs)
        paths[label] = step_for(twin, args, grid)
    return paths, handles


def mixed_plan(model: torch.nn.Module, layer_names: list[str], heads: int) -> ModelPlan:
    """Half the heads spatial, half temporal: Sparse VideoGen's two head kinds."""
    half = (Spatial(),) * (heads // 2) + (Temporal(),) * (heads - heads // 2)
    layers = tuple(LayerPlan(n, (Phase(0, half),)) for n in layer_names)
    return ModelPlan(type(model).__name__, heads, layers)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=21, help="latent frames (= token frames)")
    p.add_argument("--height", type=int, default=30, help="token rows (latent height / 2)")
    p.add_argument("--width", type=int, default=52, help="token columns (latent width / 2)")
    add_model_arguments(p)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline_cpu.md")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")

    grid = (args.frames, args.height, args.width)
    model, _ = model_and_step(args, grid)
    tokens = args.frames * args.height * args.width
    print(f"Wan-like transformer: {args.layers} blocks, {args.heads}x{args.head_dim} heads, "
          f"{args.frames}x{args.height}x{args.width} = {tokens} tokens, {args.dtype}, "
          f"{device_line(device_report('cpu'))}")

    names = [n for n, _ in headsparse.plugin.SPECS["WanTransformer3DModel"].self_attention_modules(model)]
    configs = {
        "spatial (all heads)": {"pattern": "spatial"},
        "temporal (all heads)": {"pattern": "temporal"},
        f"{args.heads // 2} spatial + {args.heads - args.heads // 2} temporal heads": {
            "plan": mixed_plan(model, names, args.heads)},
        "neighborhood 3x9x9 (all heads)": {"pattern": "neighborhood", "kernel_size": (3, 9, 9)},
    }
    paths, handles = patched_copies(model, args, grid, configs)
    outputs = {label: step() for label, step in paths.items()}  # the warm-up: layouts, compilation; untimed
    times = interleaved(paths, args.repeats, warmup=False)
    dense_out = outputs["dense"]
    print(f"dense: {spread_cell(times['dense'], '.2f')} s/step")
    rows = []
    for label, handle in handles.items():
        summary = handle.summary(print_table=False)
        handle.unpatch()
        ratio, rounds = ratio_spread(times[label], times["dense"])
        identical = torch.equal(outputs[label], dense_out)
        rows.append({
            "config": label, "density": sum(r["density"] for r in summary) / len(summary),
            "dense_s": Spread.of(times["dense"]).median, "sparse_s": Spread.of(times[label]).median,
            "dense": spread_cell(times["dense"], ".2f"), "sparse": spread_cell(times[label], ".2f"),
            "ratio": ratio, "ratio_low": rounds.low, "ratio_high": rounds.high, "identical": identical,
            "ratio_cell": ratio_cell(ratio, rounds, ".2f", identical=identical),
            "rel_err": rel_err(outputs[label], dense_out),
        })
        r = rows[-1]
        print(f"{label}: density {r['density']:.3f}, {r['sparse']} s/step, ratio {r['ratio_cell']}, "
              f"output rel. L2 {r['rel_err']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(rows, args, tokens))
    print(f"wrote {args.out}")
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace, tokens: int) -> str:
    head = (
        f"# Wan-like transformer step, dense vs headsparse.patch ({device_line(device_report('cpu'))})\n\n"
        f"`python benchmarks/pipeline.py {' '.join(sys.argv[1:])}`: WanTransformer3DModel with random weights, "
        f"{args.layers} blocks, {args.heads} heads x {args.head_dim}, FFN {args.ffn}, text {args.text_len}x"
        f"{args.text_dim}, latent grid {args.frames}x{args.height}x{args.width} = {tokens} tokens, batch 1, "
        f"{args.dtype}. Time = one transformer call: median of {args.repeats} interleaved rounds after a warm-up "
        "(dense and every configuration once per round, in table order, in one process; the warm-up call builds "
        "the layouts and compiles), with the min-max; ratio = patched / dense, the ratio of the medians with the "
        "min-max of the per-round ratios (lower is faster; 'identical to dense': the output equals dense's, so "
        "no speed-up is claimed); error = relative L2 of the output against dense (random weights: "
        "a measure of change, not of visual quality).\n\n"
        "| configuration | attention density | dense s/step | patched s/step | ratio (per-round range) "
        "| output rel. L2 |\n"
        "|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['config']} | {r['density']:.3f} | {r['dense']} | {r['sparse']} | {r['ratio_cell']} | "
        f"{r['rel_err']:.3f} |\n"
        for r in rows
    )
    return head + body


if __name__ == "__main__":
    main()
