"""A Wan-like transformer, dense vs patched: time per denoising step and output error.

A real ``WanTransformer3DModel`` with random weights and Wan 2.1 1.3B dimensions (hidden 1536,
12 heads of 128, FFN 8960, text 4096) but only a few blocks, run on a latent that patchifies to
21x30x52 tokens (32760, Wan 480p 81 frames). Each configuration is timed side by side with the
dense model in one process (min of runs after a warm-up that builds layouts and compiles), and its
output is compared with the dense output (relative L2). Weights are random, so the error says
how much each pattern changes *this* network, not how a trained model's video would look.

    python benchmarks/pipeline.py                       # the table in results/pipeline_cpu.md
    python benchmarks/pipeline.py --frames 5 --layers 1 # smaller and faster
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import headsparse
from headsparse.machine import device_name
from headsparse.patterns import Spatial, Temporal
from headsparse.plan import LayerPlan, ModelPlan, Phase
from headsparse.timing import best_time

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
    """The Wan-like model's size, dtype and repeat count (shared with benchmarks/online.py)."""
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ffn", type=int, default=8960)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--repeats", type=int, default=1)


def model_and_step(args: argparse.Namespace, grid: tuple[int, int, int]
                   ) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """The model of ``args`` and one denoising call of it on a latent of ``grid`` tokens (timestep 500)."""
    dtype = DTYPES[args.dtype]
    model = build_model(args.layers, dtype, hidden_heads=args.heads, head_dim=args.head_dim, ffn=args.ffn,
                        text_dim=args.text_dim)
    f, h, w = grid
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, f, 2 * h, 2 * w, generator=g).to(dtype)
    text = torch.randn(1, args.text_len, args.text_dim, generator=g).to(dtype)

    def step() -> torch.Tensor:
        with torch.no_grad():
            return model(x, torch.tensor([500]), text, return_dict=False)[0]

    return model, step


def mixed_plan(model: torch.nn.Module, layer_names: list[str], heads: int) -> ModelPlan:
    """Half the heads spatial, half temporal: Sparse VideoGen's two head kinds."""
    half = (Spatial(),) * (heads // 2) + (Temporal(),) * (heads - heads // 2)
    layers = tuple(LayerPlan(n, (Phase(0, half),)) for n in layer_names)
    return ModelPlan(type(model).__name__, heads, layers)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=21, help="latent frames (= token frames)")
    p.add_argument("--height", type=int, default=30, help="token rows (latent height / 2)")
    p.add_argument("--width", type=int, default=52, help="token columns (latent width / 2)")
    add_model_arguments(p)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline_cpu.md")
    args = p.parse_args(argv)

    model, step = model_and_step(args, (args.frames, args.height, args.width))
    tokens = args.frames * args.height * args.width
    print(f"Wan-like transformer: {args.layers} blocks, {args.heads}x{args.head_dim} heads, "
          f"{args.frames}x{args.height}x{args.width} = {tokens} tokens, {args.dtype}, {device_name()}")

    dense_before = best_time(step, args.repeats)
    dense_out = step().float()
    print(f"dense: {dense_before:.2f} s/step")
    names = [n for n, _ in headsparse.plugin.SPECS["WanTransformer3DModel"].self_attention_modules(model)]
    configs = {
        "spatial (all heads)": {"pattern": "spatial"},
        "temporal (all heads)": {"pattern": "temporal"},
        "6 spatial + 6 temporal heads": {"plan": mixed_plan(model, names, args.heads)},
        "neighborhood 3x9x9 (all heads)": {"pattern": "neighborhood", "kernel_size": (3, 9, 9)},
    }
    measured = []
    for label, kwargs in configs.items():
        with headsparse.patch(model, **kwargs) as handle:
            sparse_time = best_time(step, args.repeats)
            out = step().float()
            rows_summary = handle.summary(print_table=False)
        density = sum(r["density"] for r in rows_summary) / len(rows_summary)
        err = ((out - dense_out).norm() / dense_out.norm()).item()
        measured.append((label, density, sparse_time, err))
        print(f"{label}: density {density:.3f}, {sparse_time:.2f} s/step, output rel. L2 {err:.3f}")
    # Dense again at the end: the ratio uses the mean of the two, so slow drift does not flatter sparse.
    dense_after = best_time(step, args.repeats)
    dense = (dense_before + dense_after) / 2
    print(f"dense again: {dense_after:.2f} s/step")
    rows = [
        {"config": label, "density": density, "dense_s": dense, "sparse_s": t, "ratio": t / dense, "rel_err": err}
        for label, density, t, err in measured
    ]
    for r in rows:
        print(f"{r['config']}: {r['ratio']:.2f}x of dense")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(rows, args, tokens))
    print(f"wrote {args.out}")
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace, tokens: int) -> str:
    head = (
        f"# Wan-like transformer step, dense vs headsparse.patch (CPU: {device_name()}, {torch.get_num_threads()} "
        f"threads)\n\n"
        f"`python benchmarks/pipeline.py {' '.join(sys.argv[1:])}`: WanTransformer3DModel with random weights, "
        f"{args.layers} blocks, {args.heads} heads x {args.head_dim}, FFN {args.ffn}, text {args.text_len}x"
        f"{args.text_dim}, latent grid {args.frames}x{args.height}x{args.width} = {tokens} tokens, batch 1, "
        f"{args.dtype}. Time = one transformer call (min of {args.repeats} after a warm-up); dense is measured "
        "before and after the patched runs in the same process and averaged; ratio = patched / dense; "
        "error = relative L2 of the output against dense (random weights: "
        "a measure of change, not of visual quality).\n\n"
        "| configuration | attention density | dense s/step | patched s/step | ratio | output rel. L2 |\n"
        "|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['config']} | {r['density']:.3f} | {r['dense_s']:.2f} | {r['sparse_s']:.2f} | {r['ratio']:.2f} | "
        f"{r['rel_err']:.3f} |\n"
        for r in rows
    )
    return head + body


if __name__ == "__main__":
    main()
