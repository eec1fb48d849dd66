"""The ``headsparse`` command: ``search`` writes a plan for a local pipeline, ``inspect`` shows one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_pipeline(path: str, dtype: str, device: str):
    """A diffusers pipeline from a local folder (``save_pretrained`` layout) or a hub id if online."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=getattr(torch, DTYPES[dtype]))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _search(args: argparse.Namespace) -> int:
    import headsparse
    from headsparse.search import CostModel

    prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"no prompts in {args.prompts}")
    pipe = load_pipeline(args.model_path, args.dtype, args.device)
    kwargs = {k: v for k, v in (("height", args.height), ("width", args.width), ("num_frames", args.num_frames))
              if v is not None}
    import torch

    cost = CostModel(args.cost, device=args.device, dtype=getattr(torch, DTYPES[args.dtype]))
    plan = headsparse.search(
        pipe, prompts=prompts, steps=args.steps, seeds=args.seeds, budget=args.budget,
        step_buckets=args.step_buckets, cost_model=cost, block_size=args.block_size, cache=args.cache,
        samples=args.samples, **kwargs,
    )
    plan.save(args.out)
    from headsparse.search.inspect import plan_table

    print(plan_table(plan))
    for key, info in plan.settings["predicted"].items():
        for bucket in info["buckets"]:
            print(f"{key} from step {bucket['from_step']}: predicted attention time {bucket['relative_time']:.3f} "
                  f"of dense, density {bucket['density']:.3f}, mean head error {bucket['mean_error']:.4f}")
    print(f"search took {plan.settings['search_seconds']} s; wrote {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from headsparse.plan import load_plan
    from headsparse.search.inspect import plan_heatmap, plan_table

    plan = load_plan(args.plan)
    print(plan_table(plan))
    png = Path(args.png) if args.png else Path(args.plan).with_suffix(".png")
    plan_heatmap(plan, png, step=args.step)
    print(f"wrote {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headsparse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="calibrate a local pipeline and write a per-head plan")
    s.add_argument("--model-path", required=True, help="folder of a diffusers pipeline (save_pretrained layout)")
    s.add_argument("--prompts", required=True, help="text file, one prompt per line")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--seeds", type=int, nargs="+", default=[0])
    s.add_argument("--budget", type=float, default=0.02, help="mean relative attention-output error per head")
    s.add_argument("--step-buckets", type=int, nargs="+", default=[0], help="start steps of the plan's phases")
    s.add_argument("--height", type=int)
    s.add_argument("--width", type=int)
    s.add_argument("--num-frames", type=int)
    s.add_argument("--samples", type=int, default=32, help="query rows sampled per head and call")
    s.add_argument("--cost", choices=["measured", "blocks"], default="measured")
    s.add_argument("--block-size", type=int, default=128)
    s.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    s.add_argument("--device", default="cuda" if _cuda() else "cpu")
    s.add_argument("--cache", help="calibration cache file: an interrupted search resumes from it")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_search)
    i = sub.add_parser("inspect", help="print a plan's per-layer table and write its heatmap PNG")
    i.add_argument("plan")
    i.add_argument("--png", help="heatmap path (default: the plan's path with .png)")
    i.add_argument("--step", type=int, default=0, help="denoising step whose phase to draw")
    i.set_defaults(func=_inspect)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
