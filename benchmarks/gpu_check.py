"""One-shot device check of headsparse's CUDA path: correctness, attention timings, one Wan step.

Made to run once on a lent H100/H200 within about 8 minutes, with only torch and triton installed
(diffusers is optional: the Wan step is skipped with a message without it). It writes
``benchmarks/results/gpu_<device>.md``:

1. **Correctness.** The Triton kernel (and ``sparse_attention``'s CUDA dispatch) against a float32
   reference on random layouts: full, partial and skipped blocks, rows that keep nothing, ragged
   lengths, per-head layouts, token orders with padding, fp16/bf16, head dims 64 and 128, every layout
   block size; and the log-sum-exp.
2. **Attention timings** at L 32,760 (Wan 480p) and 75,600 (Wan 720p), H 12/24/40, D 128, bf16: the
   Triton kernel and compiled FlexAttention against SDPA (flash) on random block densities
   1.0/0.5/0.25/0.1/0.05 and on the spatial, temporal and strided-neighbourhood layouts of the grid.
   Every path is warmed up, then they take turns for ``--repeats`` rounds (medians, per-round ratio
   spread). The two targets are checked: at density 1.0 Triton within 1.3x of flash; at density
   d <= 0.25, time <= 1.3 x d x dense + the launch overhead (measured on an empty layout).
3. **A Wan 2.1 1.3B-sized ``WanTransformer3DModel``** (random weights, bf16) at 480p, 81 frames: one
   denoising step dense against ``headsparse.patch(model, pattern="spatial")``.

    python benchmarks/gpu_check.py                # on the GPU
    python benchmarks/gpu_check.py --dry-run      # the same code paths on the CPU (TRITON_INTERPRET=1), tiny
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from functools import partial
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _setup(dry_run: bool) -> None:
    # The interpreter flag is read when the kernels are defined: set it before importing headsparse.
    if dry_run:
        os.environ["TRITON_INTERPRET"] = "1"


def correctness(device, dry_run: bool) -> list[dict]:
    import torch

    from headsparse.kernels import Layout, layout_reference, sparse_attention
    from headsparse.kernels.triton_attention import triton_block_sparse_attention

    rows = []
    sizes = [(2, 2, 70, 32)] if dry_run else [(1, 4, 1000, 64), (2, 8, 2100, 128), (1, 3, 777, 128)]
    dtypes = [torch.float16, torch.bfloat16]
    blocks = (32,) if dry_run else (32, 64, 128)
    tolerance = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
    seed = 0
    for b, h, length, d in sizes:
        for block in blocks:
            for dtype in dtypes:
                for ordered in (False, True):
                    seed += 1
                    g = torch.Generator().manual_seed(seed)
                    n = math.ceil(length / block)
                    kinds = (torch.rand(1, h, n, n, generator=g) < 0.4).to(torch.int8) * 2
                    kinds = torch.where((kinds > 0) & (torch.rand(1, h, n, n, generator=g) < 0.5), 1, kinds)
                    mask = kinds.repeat_interleave(block, 2).repeat_interleave(block, 3)[..., :length, :length]
                    element = torch.rand(1, h, length, length, generator=g) < 0.5
                    mask = (mask == 2) | ((mask == 1) & element)
                    mask[:, 0, :3] = False
                    perm = torch.stack([torch.randperm(length, generator=g) for _ in range(h)]) if ordered else None
                    layout = Layout.from_dense_mask(mask, block_m=block, block_n=block, perm=perm).to(device)
                    q, k, v = (torch.randn(b, h, length, d, generator=g).to(device, dtype) for _ in range(3))
                    with torch.no_grad():
                        ref = layout_reference(q.float(), k.float(), v.float(), layout)
                        out = sparse_attention(q, k, v, layout)
                        perm_free = layout if not ordered else None
                        lse_err = 0.0
                        if perm_free is not None:
                            _, lse = triton_block_sparse_attention(q, k, v, layout, return_lse=True)
                            _, ref_lse = layout_reference(q.float(), k.float(), v.float(), layout, return_lse=True)
                            finite = torch.isfinite(ref_lse)
                            lse_err = float((lse - ref_lse)[finite].abs().max()) if finite.any() else 0.0
                            assert torch.equal(torch.isinf(lse), ~finite)
                    err = float((out.float() - ref).abs().max())
                    rows.append({"case": f"B{b} H{h} L{length} D{d} block {block} {str(dtype)[6:]}"
                                         + (" ordered" if ordered else ""), "error": err, "lse_error": lse_err,
                                 "ok": err <= tolerance[dtype] and lse_err <= 1e-2 and not torch.isnan(out).any()})
    return rows


def timings(device, dry_run: bool, repeats: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from headsparse.kernels import BLOCK_FULL, Layout, sparse_attention
    from headsparse.kernels.flex import flex_block_sparse_attention
    from headsparse.patterns import Geometry, Neighborhood, Spatial, Temporal
    from headsparse.timing import interleaved, ratio_spread

    grids = {32760: Geometry(21, 30, 52), 75600: Geometry(21, 45, 80)}
    heads_for = {32760: (12, 24, 40), 75600: (12, 24, 40)}
    if dry_run:
        grids = {240: Geometry(3, 8, 10)}
        heads_for = {240: (2,)}
    rows = []
    block = 128 if not dry_run else 32
    for length, g in grids.items():
        for h in heads_for[length]:
            gen = torch.Generator().manual_seed(h)
            q, k, v = (torch.randn(1, h, length, 128 if not dry_run else 32, generator=gen).to(device, torch.bfloat16)
                       for _ in range(3))
            n = math.ceil(length / block)
            layouts = {}
            for density in (1.0, 0.25) if dry_run else (1.0, 0.5, 0.25, 0.1, 0.05):
                keep = max(1, round(density * n))
                scores = torch.rand(h, n, n, generator=gen)
                scores[:, torch.arange(n), torch.arange(n)] = 2.0
                kinds = torch.zeros(1, h, n, n, dtype=torch.int8).scatter_(-1, scores.topk(keep, -1).indices[None],
                                                                           BLOCK_FULL)
                layouts[f"random {density:.2f}"] = Layout.from_block_kinds(kinds, None, q_len=length, kv_len=length,
                                                                           block_m=block, block_n=block)
            start = time.perf_counter()
            for name, pattern in (("spatial", Spatial()), ("temporal", Temporal()),
                                  ("neighborhood (4,16,16)/(2,8,8)", Neighborhood(kernel_size=(4, 16, 16),
                                                                                  stride=(2, 8, 8)))):
                layouts[name] = pattern.layout(g, num_heads=h, block_m=block, block_n=block)
            build = time.perf_counter() - start
            empty = torch.zeros(1, h, n, n, dtype=torch.int8)
            layouts["empty (launch overhead)"] = Layout.from_block_kinds(empty, None, q_len=length, kv_len=length,
                                                                         block_m=block, block_n=block)
            layouts = {name: lay.to(device) for name, lay in layouts.items()}
            paths = {"sdpa": partial(F.scaled_dot_product_attention, q, k, v)}
            for name, lay in layouts.items():
                paths[f"triton | {name}"] = partial(sparse_attention, q, k, v, lay, backend="triton")
            if h == heads_for[length][len(heads_for[length]) // 2]:  # FlexAttention compiles per shape: one H
                for name in [n for n in ("random 0.25", "random 0.10", "spatial") if n in layouts]:
                    paths[f"flex | {name}"] = partial(flex_block_sparse_attention, q, k, v, layouts[name])
            with torch.no_grad():
                times = interleaved(paths, repeats, device)
            dense = times["sdpa"]
            overhead = sorted(times["triton | empty (launch overhead)"])[len(dense) // 2]
            dense_median = sorted(dense)[len(dense) // 2]
            for key, series in times.items():
                if key == "sdpa":
                    continue
                executor, name = key.split(" | ")
                lay = layouts[name]
                ratio, rounds = ratio_spread(series, dense)
                work = float(lay.block_density().mean())
                median = sorted(series)[len(series) // 2]
                target = None
                if name == "random 1.00" and executor == "triton":
                    target = ("<= 1.3x flash", median <= 1.3 * dense_median)
                elif name.startswith("random") and work <= 0.25 and executor == "triton":
                    target = ("<= 1.3 d dense + overhead", median <= 1.3 * work * dense_median + overhead)
                rows.append({"L": length, "H": h, "executor": executor, "layout": name,
                             "density": float(lay.density().mean()), "work": work, "dense_ms": 1e3 * dense_median,
                             "ms": 1e3 * median, "ratio": ratio, "low": rounds.low, "high": rounds.high,
                             "target": target, "build_s": build})
    return rows


def wan_step(device, dry_run: bool, repeats: int) -> dict:
    import torch

    try:
        from diffusers import WanTransformer3DModel
    except ImportError as exc:
        return {"skipped": f"diffusers is not importable here ({exc}): the Wan step needs it"}
    import headsparse
    from headsparse.timing import interleaved, ratio_spread

    if dry_run:
        config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                      out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=64)
        latent, text = (1, 4, 3, 8, 12), (1, 7, 16)
    else:  # Wan 2.1 T2V 1.3B, 480p x 81 frames: latent 21 x 60 x 104, 32,760 tokens
        config = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                      out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                      cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
        latent, text = (1, 16, 21, 60, 104), (1, 512, 4096)
    dtype = torch.bfloat16 if not dry_run else torch.float32
    with torch.device(device):
        model = WanTransformer3DModel(**config).eval()
    model.to(dtype)  # a timing check: every module in bf16, including those a checkpoint would keep in float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(latent, generator=gen).to(device, dtype)
    enc = torch.randn(text, generator=gen).to(device, dtype)
    t = torch.tensor([500.0], device=device)

    def step():
        with torch.no_grad():
            return model(hidden_states=x, timestep=t, encoder_hidden_states=enc, return_dict=False)[0]

    dense_out = step()
    handle = headsparse.patch(model, pattern="spatial")
    sparse_out = step()
    handle.unpatch()
    times = {}

    def dense_step():
        step()

    def sparse_step():
        with headsparse.patch(model, pattern="spatial"):
            step()

    times = interleaved({"dense": dense_step, "spatial": sparse_step}, repeats, device)
    ratio, rounds = ratio_spread(times["spatial"], times["dense"])
    rel = float((sparse_out.float() - dense_out.float()).norm() / dense_out.float().norm())
    return {"tokens": int(latent[2] * latent[3] * latent[4] // 4), "dense_s": sorted(times["dense"])[repeats // 2],
            "sparse_s": sorted(times["spatial"])[repeats // 2], "ratio": ratio, "low": rounds.low,
            "high": rounds.high, "rel_l2": rel}


def to_markdown(device_line: str, checks: list[dict], timing_rows: list[dict], wan: dict, argv: list[str],
                seconds: float) -> str:
    lines = [f"# headsparse device check: {device_line}", "",
             f"Command: `python benchmarks/gpu_check.py {' '.join(argv)}` ({seconds:.0f} s).", "",
             "## Correctness (Triton kernel and CUDA dispatch vs float32 reference)", "",
             "| case | max error | lse error | ok |", "|---|---:|---:|---|"]
    lines += [f"| {r['case']} | {r['error']:.2e} | {r['lse_error']:.2e} | {'yes' if r['ok'] else 'NO'} |"
              for r in checks]
    lines += ["", "## Attention: Triton and FlexAttention against SDPA (flash), bf16, D 128", "",
              "Interleaved rounds after a warm-up; ratio = time / SDPA time (median), with the per-round range.", "",
              "| L | H | executor | layout | density | work | SDPA ms | ms | ratio | range | target |",
              "|---:|---:|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in timing_rows:
        target = "" if r["target"] is None else f"{r['target'][0]}: {'met' if r['target'][1] else 'MISSED'}"
        lines.append(f"| {r['L']} | {r['H']} | {r['executor']} | {r['layout']} | {r['density']:.3f} | {r['work']:.3f} "
                     f"| {r['dense_ms']:.2f} | {r['ms']:.2f} | {r['ratio']:.3f} | {r['low']:.3f}-{r['high']:.3f} | "
                     f"{target} |")
    lines += ["", "## One denoising step of a Wan 2.1 1.3B-sized transformer (random weights), dense vs spatial", ""]
    if "skipped" in wan:
        lines.append(wan["skipped"])
    else:
        lines.append(f"{wan['tokens']} tokens: dense {wan['dense_s']:.3f} s, spatial {wan['sparse_s']:.3f} s, ratio "
                     f"{wan['ratio']:.3f} ({wan['low']:.3f}-{wan['high']:.3f}), output rel. L2 {wan['rel_l2']:.3f}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU, tiny, interpreted")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 1 in a dry run)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    _setup(args.dry_run)
    import torch

    from headsparse.machine import device_line, device_report, slug

    start = time.perf_counter()
    if args.dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a machine without a GPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    repeats = args.repeats or (1 if args.dry_run else 5)
    line = device_line(device_report(device))
    print(f"device: {line}", flush=True)
    failures = 0
    checks = correctness(device, args.dry_run)
    failures += sum(not r["ok"] for r in checks)
    print(f"correctness: {len(checks) - failures} of {len(checks)} cases within tolerance", flush=True)
    try:
        timing_rows = timings(device, args.dry_run, repeats)
    except Exception:  # keep what was measured: the report says what failed
        traceback.print_exc()
        timing_rows, failures = [], failures + 1
    for r in timing_rows:
        print(f"  L={r['L']} H={r['H']} {r['executor']:6s} {r['layout']:34s} {r['ms']:9.2f} ms  ratio {r['ratio']:.3f}",
              flush=True)
    wan = wan_step(device, args.dry_run, repeats)
    print(f"wan step: {wan}", flush=True)
    name = "dry-run" if args.dry_run else slug(device_report(device)["name"])
    out = args.out or RESULTS / f"gpu_{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(line, checks, timing_rows, wan, argv, time.perf_counter() - start))
    print(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
