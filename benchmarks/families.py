"""The newer video transformer classes, dense vs patched: does the router cost anything on them?

``benchmarks/pipeline.py`` times Wan only. This script builds every other video family headsparse patches
(Wan VACE, Wan Animate, SkyReels-V2, HunyuanVideo 1.5, FramePack, LTX-2, Cosmos, Kandinsky 5, with Wan as the
reference row) from the test suite's tiny builders (``tests/tiny_models*.py``) with real-shaped attention: the
class's real head dim (128; Kandinsky 5: 64), hidden 1536 by default (12 heads of 128, 24 of 64), the class's
real FFN / MLP ratio and RoPE split, 2 blocks, on a token grid of a few thousand tokens (3x30x52 = 4680 by
default). The conditioning inputs keep the tiny builders' widths (4 latent channels, 7 text tokens of 16, small
audio / face / image encoders): they cost little next to the blocks and do not reach the router.

Per class three models, the copies patched once and kept patched: ``dense`` (unpatched), ``patched dense``
(``headsparse.patch(pattern="dense")``: the router in place, every head dense; its output must be bit-identical
and its time/dense ratio about 1.00, the number this script is for) and ``spatial`` (a sparse pattern, to show the
router really routes). Every path is called once untimed, then all take turns in ``--repeats`` interleaved rounds
(``headsparse.timing.interleaved``). The self-attention share of a dense step is measured after the rounds by
patching the dense-pattern copy again with ``profile=True`` for one call. A CPU measurement of overhead: it makes
no claim about GPU speed.

    python benchmarks/families.py                          # results/families_cpu.md (every class)
    python benchmarks/families.py --classes ltx2 cosmos    # a subset
    python benchmarks/families.py --quick                  # a tiny grid, 1 block, 1 round: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging

import headsparse
from headsparse.machine import device_line, device_report
from headsparse.timing import Spread, interleaved, ratio_cell, ratio_spread, spread_cell

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # the tiny builders
from attention import DTYPES
from pipeline import rel_err

HIDDEN = 1536  # Wan 2.1 1.3B / SkyReels-V2 1.3B width; --heads default = HIDDEN // head dim
Config = Callable[[int, int, int], dict[str, Any]]  # (heads, head dim, blocks) -> constructor arguments


@dataclass(frozen=True)
class Family:
    """One class: its tiny builder (module, case) and its real-shaped constructor arguments."""

    cls: str
    module: str
    case: str
    head_dim: int  # the class's real head dim
    config: Config


def _rope3(head_dim: int) -> tuple[int, int, int]:
    """HunyuanVideo's RoPE split of a head (16, 56, 56 of 128)."""
    return head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16


def _wan(ffn_ratio: float) -> Config:
    def config(h: int, d: int, n: int) -> dict[str, Any]:
        return {"num_attention_heads": h, "attention_head_dim": d, "num_layers": n, "ffn_dim": round(ffn_ratio * h * d),
                "freq_dim": 256, "rope_max_seq_len": 1024}
    return config


WAN_13B = 8960 / 1536  # Wan 2.1 1.3B, VACE 1.3B, SkyReels-V2 1.3B
WAN_14B = 13824 / 5120  # Wan Animate 14B

FAMILIES: dict[str, Family] = {
    "wan": Family("WanTransformer3DModel", "tiny_models", "wan", 128, _wan(WAN_13B)),
    "wan_vace": Family("WanVACETransformer3DModel", "tiny_models_wan_family", "wan_vace", 128,
                       lambda h, d, n: {**_wan(WAN_13B)(h, d, n), "vace_layers": list(range(0, n, 2))}),
    "wan_animate": Family("WanAnimateTransformer3DModel", "tiny_models_wan_family", "wan_animate", 128,
                          lambda h, d, n: {**_wan(WAN_14B)(h, d, n), "added_kv_proj_dim": h * d,
                                           "inject_face_latents_blocks": min(5, n)}),
    "skyreels_v2": Family("SkyReelsV2Transformer3DModel", "tiny_models_wan_family", "skyreels_v2", 128,
                          _wan(WAN_13B)),
    "hunyuan_video15": Family("HunyuanVideo15Transformer3DModel", "tiny_models_video", "hunyuan_video15", 128,
                              lambda h, d, n: {"num_attention_heads": h, "attention_head_dim": d, "num_layers": n,
                                               "num_refiner_layers": 2, "mlp_ratio": 4.0, "rope_axes_dim": _rope3(d)}),
    # FramePack (HunyuanVideo): 20 dual-stream and 40 single-stream blocks, kept 1:2 (1 + 1 at 2 blocks).
    "framepack": Family("HunyuanVideoFramepackTransformer3DModel", "tiny_models_video", "framepack", 128,
                        lambda h, d, n: {"num_attention_heads": h, "attention_head_dim": d,
                                         "num_layers": -(-n // 3), "num_single_layers": n - -(-n // 3),
                                         "num_refiner_layers": 2, "mlp_ratio": 4.0, "rope_axes_dim": _rope3(d)}),
    "ltx2": Family("LTX2VideoTransformer3DModel", "tiny_models_video", "ltx2", 128,
                   lambda h, d, n: {"num_attention_heads": h, "attention_head_dim": d, "num_layers": n,
                                    "cross_attention_dim": h * d, "rope_double_precision": True}),
    "cosmos": Family("CosmosTransformer3DModel", "tiny_models_video", "cosmos", 128,
                     lambda h, d, n: {"num_attention_heads": h, "attention_head_dim": d, "num_layers": n,
                                      "mlp_ratio": 4.0, "adaln_lora_dim": 256, "max_size": (128, 240, 240)}),
    # Kandinsky 5: head dim = sum(axes_dims) (16, 24, 24), FFN 5120 of 2048.
    "kandinsky5": Family("Kandinsky5Transformer3DModel", "tiny_models_video", "kandinsky5", 64,
                         lambda h, d, n: {"model_dim": h * d, "ff_dim": round(2.5 * h * d), "num_visual_blocks": n,
                                          "axes_dims": (d // 4, 3 * d // 8, 3 * d // 8)}),
}


def build(name: str, heads: int, head_dim: int, layers: int, dtype: torch.dtype) -> Any:
    """The tiny case of ``name`` rebuilt with real-shaped attention, its model in ``dtype`` (what
    ``from_pretrained(torch_dtype=...)`` keeps in float32 stays there)."""
    fam = FAMILIES[name]
    case = importlib.import_module(fam.module).build(fam.case, **fam.config(heads, head_dim, layers))
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # .to() warns about the modules kept in float32 below
    model = case.model.to(dtype)
    diffusers_logging.set_verbosity(verbosity)
    for mod_name, module in model.named_modules():
        if any(k in mod_name.split(".") for k in model._keep_in_fp32_modules or ()):
            module.float()
    return case


def step_for(case: Any, model: torch.nn.Module, latent: tuple[int, int, int], dtype: torch.dtype
             ) -> Callable[[], torch.Tensor]:
    """One call of ``model`` on the case's inputs for ``latent`` (frames, height, width), video output only. Inputs
    come from a fixed seed (every copy gets the same); floating tensors (latents, text, masks, timesteps) go to
    ``dtype``, as HunyuanVideo 1.5's pipeline passes them."""
    inputs = case.make_inputs(1, *latent, seed=0)
    inputs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in inputs.items()}
    output = getattr(case, "output", lambda out: out[0])

    def step() -> torch.Tensor:
        with torch.no_grad():
            return output(model(**inputs, return_dict=False))

    return step


def measure(name: str, args: argparse.Namespace, grid: tuple[int, int, int]) -> dict[str, Any]:
    """Time one class dense, patched dense and spatial; its attention share and output errors."""
    fam, dtype = FAMILIES[name], DTYPES[args.dtype]
    head_dim = args.head_dim or fam.head_dim
    heads = args.heads or HIDDEN // head_dim
    start = time.perf_counter()
    case = build(name, heads, head_dim, args.layers, dtype)
    latent = tuple(t * p for t, p in zip(grid, case.patch, strict=True))
    model = case.model
    twins = {"patched dense": copy.deepcopy(model), "spatial": copy.deepcopy(model)}
    handles = {"patched dense": headsparse.patch(twins["patched dense"], pattern="dense"),
               "spatial": headsparse.patch(twins["spatial"], pattern="spatial")}
    paths = {"dense": step_for(case, model, latent, dtype)}
    paths.update({label: step_for(case, twin, latent, dtype) for label, twin in twins.items()})
    build_s = time.perf_counter() - start
    outputs = {label: step() for label, step in paths.items()}  # the warm-up: layouts; untimed
    times = interleaved(paths, args.repeats, warmup=False)

    stats = [st for state in handles["spatial"].states.values() for st in state.stats]
    geometry = next((st.geometry for st in stats if st.geometry is not None), None)
    layers, sparse_layers = len(stats), sum(st.sparse_calls > 0 for st in stats)
    for handle in handles.values():
        handle.unpatch()
    # The attention share: the dense-pattern copy patched again with profiling, one more call.
    profiled = headsparse.patch(twins["patched dense"], pattern="dense", profile=True)
    t0 = time.perf_counter()
    paths["patched dense"]()
    wall = time.perf_counter() - t0
    prof = [st for state in profiled.states.values() for st in state.stats]
    attention_s, attention_calls = sum(st.seconds for st in prof), sum(st.calls for st in prof)
    profiled.unpatch()

    dense = outputs["dense"]
    row: dict[str, Any] = {
        "name": name, "class": fam.cls, "heads": heads, "head_dim": head_dim, "build_s": build_s,
        "grid": "x".join(map(str, grid)), "layers": layers, "sparse_layers": sparse_layers,
        "attention_calls": attention_calls, "finite": all(bool(o.isfinite().all()) for o in outputs.values()),
        "tokens": None if geometry is None else geometry.video_len + geometry.text_len,
        "other_tokens": None if geometry is None else geometry.text_len,
        "dense": spread_cell(times["dense"], ".3f"), "dense_s": Spread.of(times["dense"]).median,
        "share": attention_s / wall, "identical": torch.equal(outputs["patched dense"], dense),
    }
    for label, key in (("patched dense", "patched"), ("spatial", "spatial")):
        ratio, rounds = ratio_spread(times[label], times["dense"])
        row.update({key: spread_cell(times[label], ".3f"), f"{key}_ratio": ratio,
                    f"{key}_ratio_cell": ratio_cell(ratio, rounds, ".3f"),
                    f"{key}_err": rel_err(outputs[label], dense)})
    del model, twins, case, paths, outputs
    gc.collect()
    return row


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", nargs="+", choices=list(FAMILIES), default=list(FAMILIES), metavar="NAME",
                   help=f"classes to run, of: {', '.join(FAMILIES)} (default: all)")
    p.add_argument("--frames", type=int, default=3, help="token frames (= latent frames)")
    p.add_argument("--height", type=int, default=30, help="token rows (latent height / spatial patch)")
    p.add_argument("--width", type=int, default=52, help="token columns (latent width / spatial patch)")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks")
    p.add_argument("--heads", type=int, default=None, help=f"attention heads (default: {HIDDEN} / head dim)")
    p.add_argument("--head-dim", type=int, default=None, help="head dim, a multiple of 32 (default: the class's)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds after the warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a 2x8x12 token grid, 1 block, 1 round: a smoke run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "families_cpu.md")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.height, args.width, args.layers, args.repeats = 2, 8, 12, 1, 1
    if args.repeats < 1 or args.layers < 1:
        p.error("--repeats and --layers must be >= 1")
    if args.frames < 2:
        p.error("--frames must be >= 2 (Wan Animate's first latent frame is its reference image)")
    if args.head_dim is not None and args.head_dim % 32:
        p.error(f"--head-dim must be a multiple of 32 (the RoPE splits), got {args.head_dim}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    grid = (args.frames, args.height, args.width)
    print(f"{len(args.classes)} classes, {args.layers} blocks, token grid {'x'.join(map(str, grid))}, {args.dtype}, "
          f"{args.repeats} rounds, {device_line(device_report('cpu'))}")
    rows = []
    for name in args.classes:
        r = measure(name, args, grid)
        rows.append(r)
        print(f"{r['class']}: {tokens_cell(r)} tokens, {r['heads']}x{r['head_dim']}, dense {r['dense']} s, "
              f"patched dense {r['patched_ratio_cell']} (rel. L2 {identity_cell(r)}), spatial "
              f"{r['spatial_ratio_cell']} (rel. L2 {r['spatial_err']:.4f}, {r['sparse_layers']}/{r['layers']} "
              f"layers sparse), self-attention {r['share']:.1%} of the step (built in {r['build_s']:.1f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(rows, args, argv))
    print(f"wrote {args.out}")
    return rows


def tokens_cell(r: dict[str, Any]) -> str:
    """The self-attention sequence: grid tokens plus the others (text, history, image tokens) where any."""
    if r["tokens"] is None:
        return f"? (grid {r['grid']}, never ran sparse)"
    return f"{r['tokens']}" + (f" ({r['other_tokens']} non-grid)" if r["other_tokens"] else "")


def identity_cell(r: dict[str, Any]) -> str:
    """Patched dense's output against dense: 0 when bit-identical (what the router promises)."""
    return "0 (bit-identical)" if r["identical"] else f"{r['patched_err']:.2e} (NOT bit-identical)"


def to_markdown(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str]) -> str:
    head = (
        f"# Video families, dense vs headsparse.patch: the router's overhead ({device_line(device_report('cpu'))})\n\n"
        f"`python benchmarks/families.py {' '.join(argv)}`: each class built from the tests' tiny builders with "
        f"real-shaped attention (the class's head dim, hidden {HIDDEN} unless `--heads`, its real FFN / MLP ratio), "
        f"random weights, {args.layers} blocks, token grid {args.frames}x{args.height}x{args.width}, batch 1, "
        f"{args.dtype}; conditioning inputs at the tiny builders' widths (7 text tokens). Time = one transformer call: "
        f"median of {args.repeats} interleaved rounds after a warm-up (dense, patched dense and spatial once per "
        "round, each its own copy, patched once), with the min-max; ratio = patched / dense, the ratio of the "
        "medians with the min-max of the per-round ratios. *Patched dense* is `headsparse.patch(pattern=\"dense\")`: "
        "the router in place with every head dense, so its ratio is the router's overhead and its output must equal "
        "dense bit for bit. *Spatial* is `pattern=\"spatial\"` (layers sparse / layers). Tokens = the self-attention "
        "sequence (grid plus non-grid tokens: text, FramePack's history, ...). Self-attention share = the routed "
        "self-attention's time in one profiled dense-pattern call over that call's time. Rel. L2 = of the output "
        "against dense (random weights: a measure of change). A CPU measurement: no claim about GPU speed.\n\n"
        "| class | tokens | heads x dim | dense s/step | patched dense s/step | patched dense / dense "
        "| patched dense rel. L2 | spatial s/step | spatial / dense | layers sparse | self-attention share "
        "| spatial rel. L2 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['class']} | {tokens_cell(r)} | {r['heads']}x{r['head_dim']} | {r['dense']} | {r['patched']} | "
        f"{r['patched_ratio_cell']} | {identity_cell(r)} | "
        f"{r['spatial']} | {r['spatial_ratio_cell']} | {r['sparse_layers']}/{r['layers']} | {r['share']:.1%} | "
        f"{r['spatial_err']:.4f}{'' if r['finite'] else ' (non-finite output)'} |\n"
        for r in rows
    )
    return head + body


if __name__ == "__main__":
    main()
