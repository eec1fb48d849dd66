"""The ``headsparse`` command.

``generate`` runs a pipeline dense and/or with headsparse and reports speed and fidelity; ``demo``
does that on the embedded model (trained in-house); ``search`` writes a per-head plan for a pipeline;
``inspect`` shows a plan; ``bench`` runs a benchmark script and prints its table; ``doctor`` says what
runs where on this machine and checks the GPU kernels statically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _search_pipeline(args: argparse.Namespace):
    """(pipeline, call defaults) for ``headsparse search``: a preset (``--model``), or a local folder."""
    from headsparse.pipelines import GenerateError, preset_for
    from headsparse.pipelines.generate import DTYPES as TORCH_DTYPES
    from headsparse.pipelines.generate import load_pipeline as load_preset
    from headsparse.pipelines.loading import PipelineLoadError, load_local_pipeline

    if args.model is None:
        if args.model_path is None:
            raise SearchError("search needs --model PRESET (e.g. --model shapes) or --model-path DIR")
        try:
            return load_local_pipeline(args.model_path, TORCH_DTYPES[DTYPES[args.dtype or "bf16"]], args.device), {}
        except PipelineLoadError as exc:
            raise SearchError(str(exc)) from None
    preset = preset_for(args.model)
    if preset.needs_image:
        raise SearchError(f"--model {preset.name} is image-to-video: search runs prompts only; search a plan with the "
                          "text-to-video model of the family (the same transformer class) or with --model-path")
    dtype = TORCH_DTYPES[DTYPES[args.dtype]] if args.dtype else TORCH_DTYPES[preset.dtype]
    try:
        pipe = load_preset(preset, args.model_path, dtype, args.device, cpu_offload=False)
    except GenerateError as exc:
        raise SearchError(str(exc)) from None
    pipe.set_progress_bar_config(disable=True)
    defaults: dict[str, object] = {"height": preset.height, "width": preset.width}
    if preset.guidance_arg is not None:
        defaults[preset.guidance_arg] = preset.guidance
    if preset.negative_prompt is not None:
        defaults["negative_prompt"] = preset.negative_prompt
    if preset.video:
        defaults["num_frames"] = preset.frames
    defaults.update(preset.call_kwargs)
    return pipe, defaults


class SearchError(ValueError):
    """A search that cannot start as asked; the message says what to pass."""


def _search(args: argparse.Namespace) -> int:
    import headsparse
    from headsparse.search import CostModel

    try:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    except OSError as exc:
        print(f"headsparse: error: --prompts {args.prompts}: {exc.strerror}", file=sys.stderr)
        return 2
    if not prompts:
        print(f"headsparse: error: no prompts in {args.prompts}", file=sys.stderr)
        return 2
    try:
        pipe, call = _search_pipeline(args)
    except SearchError as exc:
        print(f"headsparse: error: {exc}", file=sys.stderr)
        return 2
    given = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    call.update({k: v for k, v in given.items() if v is not None})
    cost = CostModel(args.cost, device=args.device, dtype=pipe.transformer.dtype)
    plan = headsparse.search(
        pipe, prompts=prompts, steps=args.steps, seeds=args.seeds, budget=args.budget,
        step_buckets=args.step_buckets, cost_model=cost, block_size=args.block_size, cache=args.cache,
        samples=args.samples, **call,
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


def is_main_process() -> bool:
    """Rank 0 (or no distributed run): the process that prints and writes files."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def _say(text: str) -> None:
    if is_main_process():
        print(text, flush=True)


def _parse_value(text: str):
    """A pattern parameter from the command line: JSON, true/false, or comma-separated numbers."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "," in text:
        return tuple(_parse_value(t) for t in text.split(","))
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        params[key.replace("-", "_")] = _parse_value(value)
    return params


def _dense_steps(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _request(args: argparse.Namespace):
    from headsparse.pipelines import GenerateRequest

    modes = (("dense", args.dense), ("pattern", args.pattern), ("plan", args.plan), ("auto", args.auto))
    mode = next((name for name, given in modes if given), None)
    return GenerateRequest(
        model=args.model, prompt=args.prompt, out=Path(args.out or f"outputs/{args.model}"),
        model_path=args.model_path, mode=mode, pattern=args.pattern, pattern_params=_parse_params(args.param),
        plan=args.plan, negative_prompt=args.negative_prompt, steps=args.steps, frames=args.frames,
        height=args.height, width=args.width, guidance=args.guidance, seed=args.seed,
        dtype=args.dtype, device=args.device,
        dense_steps=args.dense_steps, dense_layers=args.dense_layers, max_cost=args.max_cost, backend=args.backend,
        compare_dense=args.compare_dense, cpu_offload=args.cpu_offload, progress=not args.quiet,
        warmup=not args.no_warmup, repeats=args.repeats, image=args.image,
    )


def _run_generate(request) -> int:
    from headsparse.pipelines import GenerateError, generate

    try:
        report = generate(request)
    except GenerateError as exc:
        print(f"headsparse: error: {exc}", file=sys.stderr)
        return 2
    _say(Path(report["files"]["report"]).read_text())
    _say(f"wrote {', '.join(report['files'].values())}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    try:
        request = _request(args)
    except ValueError as exc:
        print(f"headsparse: error: {exc}", file=sys.stderr)
        return 2
    return _run_generate(request)


# The demo's default prompt per embedded model: a caption of its grammar that training never saw.
DEMO_PROMPTS = {
    "scenes": "a yellow triangle moving down and a blue circle moving right on a striped background drifting left",
    "shapes": "a red circle bouncing right",
    "tiny": "a red circle bouncing right",
}


def _demo(args: argparse.Namespace) -> int:
    from headsparse.pipelines import GenerateRequest, preset_for

    preset = preset_for(args.model)
    plan = preset.plan_file()
    how = (f"the plan searched for it ({plan.name})" if plan is not None and plan.is_file()
           else "online recognition")
    _say(f"headsparse demo: {preset.notes}.\nRunning it dense and with headsparse ({how}) from the same seed on "
         "this machine...")
    prompt = args.prompt or DEMO_PROMPTS[args.model]
    return _run_generate(GenerateRequest(model=args.model, prompt=prompt, out=Path(args.out), steps=args.steps,
                                         frames=args.frames, height=args.height, width=args.width,
                                         max_cost=args.max_cost, compare_dense=True, progress=not args.quiet,
                                         repeats=args.repeats))


def _architecture(text: str) -> int:
    from headsparse.kernels.triton_configs import ARCHITECTURES

    if not text.isdigit() or int(text) not in ARCHITECTURES:
        known = ", ".join(map(str, ARCHITECTURES))
        raise argparse.ArgumentTypeError(f"{text!r} is not an architecture headsparse ships configs for ({known})")
    return int(text)


def _doctor(args: argparse.Namespace) -> int:
    from headsparse import doctor

    if args.calibrate_cpu:
        from headsparse.kernels.cpu_profile import measure_cpu_profile

        profile, rows = measure_cpu_profile()
        for r in rows:
            _say(f"  {r['choice']}: {r['option']} {r['seconds']:.3f} s")
        _say(f"measured and cached: {profile}")
    if not args.gpu_static:
        _say(doctor.report())
        return 0
    from headsparse.kernels.gpu_static import triton_targets

    archs = tuple(args.archs) if args.archs else triton_targets()
    if not archs:
        print("headsparse: error: this Triton has no NVIDIA backend to compile for", file=sys.stderr)
        return 2
    _say(f"compiling every shipped Triton config for sm_{', sm_'.join(map(str, archs))} (no GPU needed)...")
    results = doctor.check_shipped(archs, quick=args.quick)
    _say(doctor.static_table(results))
    bad = [r for r in results if not r.ok]
    _say(f"{len(results) - len(bad)} of {len(results)} configs compile, fit shared memory and spill nothing")
    for r in bad:
        _say(f"  FAILED {r.kernel} sm_{r.arch} D={r.head_dim} {r.dtype} {r.config}: {r.problem()}")
    return 1 if bad else 0


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench(args: argparse.Namespace) -> int:
    scripts = sorted(p.stem for p in BENCHMARKS.glob("*.py")) if BENCHMARKS.is_dir() else []
    if not scripts:
        print("headsparse: error: the benchmarks ship with the source checkout (benchmarks/ next to the package); "
              "clone the repository to run them", file=sys.stderr)
        return 2
    if args.list or args.name is None:
        _say("benchmarks: " + ", ".join(scripts) + "\nrun one with: headsparse bench NAME [its options, e.g. --help]")
        return 0
    if args.name not in scripts:
        print(f"headsparse: error: unknown benchmark {args.name!r}; choose one of: {', '.join(scripts)}",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(BENCHMARKS / f"{args.name}.py"), *args.args])


def _add_generate_arguments(g: argparse.ArgumentParser) -> None:
    from headsparse.pipelines import PRESETS

    g.add_argument("--model", required=True, choices=list(PRESETS),
                   help="model family (tiny: the embedded offline pipeline, no checkpoint needed)")
    g.add_argument("--model-path", help="local folder of a diffusers pipeline (save_pretrained / hub snapshot layout)")
    g.add_argument("--prompt", default="a red car on the moon")
    g.add_argument("--negative-prompt")
    g.add_argument("--image", help="first frame (an image file) for image-to-video presets, e.g. wan-i2v")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--dense", action="store_true", help="run dense attention only (no headsparse)")
    mode.add_argument("--pattern", help="one pattern for every head, e.g. spatial, temporal, neighborhood")
    mode.add_argument("--plan", help="a plan JSON written by `headsparse search`")
    mode.add_argument("--auto", action="store_true", help="recognise every head online (the default)")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a pattern parameter, e.g. --param kernel_size=3,9,9 (repeatable)")
    g.add_argument("--steps", type=int, help="denoising steps (default: the model's preset)")
    g.add_argument("--frames", type=int, help="video frames (default: the model's preset)")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", choices=sorted(DTYPES), help="default: the model's preset")
    g.add_argument("--device", help="default: cuda when available, else cpu")
    g.add_argument("--dense-steps", type=_dense_steps,
                   help="leading steps run dense: a count (2) or a fraction (0.2); default: the preset")
    g.add_argument("--dense-layers", type=int, help="leading layers run dense; default: the preset")
    g.add_argument("--max-cost", type=float,
                   help="auto: only patterns this device runs in at most this fraction of dense attention's time "
                        "(measured once per geometry, cached); 1 = never slower than dense")
    g.add_argument("--backend", default="auto", choices=["auto", "triton", "grouped", "flex", "masked"])
    g.add_argument("--compare-dense", action="store_true",
                   help="also run dense from the same seed: side-by-side video and a speed/fidelity report")
    g.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload (large models, small GPUs)")
    g.add_argument("--no-warmup", action="store_true", help="skip the untimed one-step warm-up runs")
    g.add_argument("--repeats", type=int, default=1,
                   help="timed runs of each path, interleaved dense/headsparse; the report gives medians and spread")
    g.add_argument("--out", help="output folder (default: outputs/MODEL)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headsparse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser(
        "generate", help="generate a video/image with headsparse (and dense, to compare)",
        description="Generate with a diffusers pipeline patched by headsparse. With --compare-dense the same seed "
                    "also runs dense, and OUT gets both outputs, a side-by-side video and report.md/report.json "
                    "(wall time, attention time and share, per-layer density, PSNR/SSIM per frame).",
    )
    _add_generate_arguments(g)
    g.set_defaults(func=_generate)
    d = sub.add_parser("demo", help="dense vs headsparse on the embedded drifting-scenes model (offline, CPU, "
                                    "~3 min)")
    d.add_argument("--out", default="demo_output")
    d.add_argument("--model", choices=tuple(DEMO_PROMPTS), default="scenes",
                   help="scenes: the drifting-scenes model trained in-house, run with the plan searched for it "
                        "(default); shapes: the earlier moving-shapes model (online recognition); tiny: random "
                        "weights with planted heads")
    d.add_argument("--prompt", help="default: a held-out caption of the model's grammar")
    d.add_argument("--steps", type=int)
    d.add_argument("--frames", type=int)
    d.add_argument("--height", type=int)
    d.add_argument("--width", type=int)
    d.add_argument("--max-cost", type=float,
                   help="only patterns this device runs within this fraction of dense time (1: never slower)")
    d.add_argument("--repeats", type=int, default=3,
                   help="timed runs of each path, interleaved dense/headsparse (median and spread reported)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_demo)
    b = sub.add_parser("bench", help="run a benchmark script from benchmarks/ and print its table")
    b.add_argument("name", nargs="?", help="benchmark name (see --list)")
    b.add_argument("args", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    b.add_argument("--list", action="store_true")
    b.set_defaults(func=_bench)
    from headsparse.pipelines import PRESETS

    s = sub.add_parser("search", help="calibrate a pipeline on a few dense runs and write a per-head plan")
    s.add_argument("--model", choices=list(PRESETS),
                   help="a preset, as for generate (shapes and tiny are embedded: no --model-path needed)")
    s.add_argument("--model-path", help="folder of a diffusers pipeline (save_pretrained layout); its "
                                        "model_index.json names the pipeline class")
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
    s.add_argument("--dtype", choices=sorted(DTYPES), help="default: the preset's, else bf16")
    s.add_argument("--device", default="cuda" if _cuda() else "cpu")
    s.add_argument("--cache", help="calibration cache file: an interrupted search resumes from it")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_search)
    doc = sub.add_parser("doctor", help="versions, device, which executor runs each kind of head, caches; "
                                        "--gpu-static checks the Triton kernels for every NVIDIA architecture")
    doc.add_argument("--gpu-static", action="store_true",
                     help="compile every shipped Triton config for sm_80..sm_120 (no GPU needed): registers, spills, "
                          "shared memory; exit 1 if any fails")
    doc.add_argument("--archs", type=_architecture, nargs="+", metavar="ARCH",
                     help="with --gpu-static: only these compute capabilities (e.g. 86 90)")
    doc.add_argument("--quick", action="store_true", help="with --gpu-static: bf16 only (the CI subset)")
    doc.add_argument("--calibrate-cpu", action="store_true",
                     help="measure this CPU's executor profile (FlexAttention dtype, grouped threshold) and cache it")
    doc.set_defaults(func=_doctor)
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
