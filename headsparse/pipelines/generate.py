"""Generate with a diffusers pipeline, dense and/or headsparse, and report speed and fidelity.

``generate(request)`` loads the pipeline (a local checkpoint folder, or an embedded model), warms
up every path it will time (one untimed step each), then runs dense and headsparse in turn
(dense, headsparse, dense, ...) ``repeats`` times from the same seed; writes the outputs (and a
side-by-side video) and a report (JSON + markdown): the device, each path's median wall, transformer
and attention time with its spread, the ratio of the medians with the spread of the per-round ratios,
the density of each layer, PSNR/SSIM per frame. A run in which no head ran sparse, or whose output
is identical to dense, claims no speed-up: its headline says so.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import headsparse
from headsparse.machine import device_line, device_report
from headsparse.pipelines.loading import PipelineLoadError, read_model_index, resolve_class
from headsparse.pipelines.media import side_by_side, write_output
from headsparse.pipelines.metrics import frame_metrics
from headsparse.pipelines.presets import Preset, preset_for
from headsparse.timing import Spread, ratio_spread

logger = logging.getLogger(__name__)

MODES = ("dense", "pattern", "plan", "auto")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class GenerateError(ValueError):
    """A request that cannot run as given (bad path, wrong model, a plan for another model...)."""


@dataclass
class GenerateRequest:
    """Everything one ``headsparse generate`` run needs; None means the model preset's default."""

    model: str
    prompt: str
    out: Path
    model_path: str | None = None
    mode: str | None = None  # "dense" | "pattern" | "plan" | "auto"; None: the preset's default
    pattern: str | None = None
    pattern_params: dict[str, Any] = field(default_factory=dict)
    plan: str | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    guidance: float | None = None
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    dense_steps: float | None = None
    dense_layers: int | None = None
    max_cost: float | None = None  # auto: only patterns this device runs within this fraction of dense time
    backend: str = "auto"
    compare_dense: bool = False
    cpu_offload: bool = False
    progress: bool = True
    warmup: bool = True  # an untimed 1-step run of every timed path first, so no timed run pays first-call costs
    repeats: int = 1  # timed runs of each path, interleaved (dense, headsparse, dense, ...)
    image: str | None = None  # the first frame of an image-to-video preset


@dataclass
class RunResult:
    """One generation: its frames (F, H, W, 3) in [0, 1] and where its time went."""

    label: str
    frames: np.ndarray
    wall_s: float
    transformer_s: float
    attention_s: float | None
    layers: list[dict[str, Any]] = field(default_factory=list)
    sparse_calls: int = 0  # attention calls that ran a sparse layout (0: every head was dense)


def resolve_mode(request: GenerateRequest, preset: Preset) -> tuple[str, dict[str, Any]]:
    """The mode to run and the keyword arguments of ``headsparse.patch`` for it."""
    mode = request.mode
    shipped = preset.plan_file() if request.model_path is None else None
    if mode is None and request.plan is None and shipped is not None and shipped.is_file():
        request = replace(request, plan=str(shipped))  # the plan searched for the shipped weights
    if mode is None:
        mode = "plan" if request.plan is not None else "auto" if preset.mode == "auto" else "pattern"
    if mode not in MODES:
        raise GenerateError(f"mode must be one of {MODES}, got {mode!r}")
    if request.plan is not None and mode != "plan":
        raise GenerateError("--plan was given with another mode")
    if request.max_cost is not None and mode != "auto":
        raise GenerateError(f"--max-cost applies to online recognition (auto); the mode is {mode!r}")
    kwargs: dict[str, Any] = {}
    if mode == "dense":
        return mode, kwargs
    if mode == "plan":
        if request.plan is None:
            raise GenerateError("mode 'plan' needs --plan FILE")
        if not Path(request.plan).is_file():
            raise GenerateError(f"--plan: no such file: {request.plan}")
        kwargs["plan"] = request.plan
    elif mode == "auto":
        kwargs["plan"] = "auto"
        if request.max_cost is not None:
            from headsparse.patterns.recognize import Recognizer

            try:
                kwargs["recognizer"] = Recognizer(max_cost=request.max_cost)
            except ValueError as exc:
                raise GenerateError(f"--max-cost: {exc}") from None
    else:
        name = request.pattern or preset.mode
        if name == "auto":
            raise GenerateError("mode 'pattern' needs --pattern NAME")
        params = request.pattern_params if request.pattern else {**preset.pattern_params, **request.pattern_params}
        kwargs.update(pattern=name, **params)
    if mode != "plan" or request.dense_steps is not None:
        kwargs["dense_steps"] = preset.dense_steps if request.dense_steps is None else request.dense_steps
    if mode != "plan" or request.dense_layers is not None:
        kwargs["dense_layers"] = preset.dense_layers if request.dense_layers is None else request.dense_layers
    return mode, kwargs


def load_pipeline(preset: Preset, model_path: str | None, dtype: torch.dtype, device: str, cpu_offload: bool):
    """The preset's pipeline: the embedded tiny one, or ``from_pretrained`` on a local folder."""
    if cpu_offload and not device.startswith("cuda"):
        raise GenerateError(f"--cpu-offload moves models between the CPU and a CUDA device; the device is {device}")
    if preset.name == "tiny":
        if model_path is not None:
            raise GenerateError("--model tiny is built in; it takes no --model-path")
        from headsparse.pipelines.tiny import build_tiny_wan_pipeline

        pipe = build_tiny_wan_pipeline("demo")
        return pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)
    if model_path is None and preset.weights is not None:
        model_path = str(preset.weights_folder())
    if model_path is None:
        raise GenerateError(
            f"--model {preset.name} needs --model-path DIR: a local diffusers folder (e.g. a download of "
            f"{preset.checkpoint}); nothing is downloaded"
        )
    folder = Path(model_path)
    try:
        index = read_model_index(folder)
        cls = resolve_class(preset.pipeline)
    except PipelineLoadError as exc:
        raise GenerateError(f"--model-path {model_path}: {exc}") from None
    transformer = index.get("transformer", [None, None])[1]
    if transformer != preset.transformer:
        raise GenerateError(
            f"--model {preset.name} expects a {preset.transformer}; the pipeline in {model_path} has {transformer}"
        )
    if hasattr(cls, "load_local"):  # an embedded pixel-space model (its own text-encoder dtype)
        return cls.load_local(folder, dtype, device)
    import diffusers

    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if preset.vae_float32 and "vae" in index:
        vae_cls = getattr(diffusers, index["vae"][1])
        kwargs["vae"] = vae_cls.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    pipe = cls.from_pretrained(folder, **kwargs)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    return pipe.to(device)


class _TransformerClock:
    """Seconds spent inside the pipeline's transformer(s), from forward hooks."""

    def __init__(self, pipe: Any) -> None:
        self.seconds = 0.0
        self._start = 0.0
        self._handles = []
        for name in ("transformer", "transformer_2"):
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post))

    def _sync(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _layer_rows(pipe: Any) -> list[dict[str, Any]]:
    """Per patched layer: its pattern mix and mean density over heads (None where never run sparse)."""
    layers: dict[tuple[str, int], dict[str, Any]] = {}
    for row in headsparse.summary(pipe, print_table=False):
        entry = layers.setdefault((row["transformer"], row["layer"]), {
            "transformer": row["transformer"], "layer": row["layer"], "module": row["module"], "patterns": {},
            "densities": [],
        })
        entry["patterns"][row["pattern"]] = entry["patterns"].get(row["pattern"], 0) + 1
        if row["density"] is not None:
            entry["densities"].append(row["density"])
    out = []
    for entry in layers.values():
        dens = entry.pop("densities")
        entry["density"] = sum(dens) / len(dens) if dens else None
        out.append(entry)
    return out


def _patch(pipe: Any, request: GenerateRequest, patch_kwargs: dict[str, Any], profile: bool) -> Any:
    """``headsparse.patch`` with ``patch_kwargs`` (``{}``: the dense pattern); its refusals become GenerateError."""
    try:
        kwargs = patch_kwargs or {"pattern": "dense"}
        return headsparse.patch(pipe, profile=profile, backend=request.backend, **kwargs)
    except (TypeError, ValueError) as exc:
        raise GenerateError(str(exc)) from None


def run_once(pipe: Any, preset: Preset, request: GenerateRequest, label: str,
             patch_kwargs: dict[str, Any]) -> RunResult:
    """One generation from ``request.seed`` with ``pipe`` patched by ``patch_kwargs`` (``{}``: dense).

    The dense run is patched with the dense pattern and profiling on: outputs are bit-identical to
    the unpatched pipeline and its attention time is measured the same way as the sparse run's.
    """
    handle = _patch(pipe, request, patch_kwargs, profile=True)
    clock = _TransformerClock(pipe)
    try:
        start = time.perf_counter()
        output = pipe(**pipeline_call(preset, request))
        wall = time.perf_counter() - start
        attention = sum(st.seconds for state in handle.states.values() for st in state.stats)
        sparse_calls = sum(st.sparse_calls for state in handle.states.values() for st in state.stats)
        layers = _layer_rows(pipe) if patch_kwargs else []
    finally:
        clock.remove()
        handle.unpatch()
    frames = np.asarray(output.frames[0] if preset.video else output.images)
    if frames.ndim == 3:
        frames = frames[None]
    return RunResult(label, frames.astype(np.float32), wall, clock.seconds, attention, layers, sparse_calls)


def warm_up(pipe: Any, preset: Preset, request: GenerateRequest, patch_kwargs: dict[str, Any]) -> None:
    """One untimed sparse step (dense when ``patch_kwargs`` is empty) through the whole pipeline.

    It pays the first-call costs (kernel compilation, layout construction, oneDNN/cuDNN setup,
    the VAE's first decode) so that no timed run carries them; every timed path gets its own
    (a dense run warmed by a sparse one still pays dense SDPA's first call). Online recognition is
    redone in the timed run, whose cost it is.
    """
    handle = _patch(pipe, request, {**patch_kwargs, "dense_steps": 0} if patch_kwargs else {}, profile=False)
    try:
        pipe(**pipeline_call(preset, request, steps=1))
    finally:
        handle.unpatch()


def pipeline_call(preset: Preset, request: GenerateRequest, steps: int | None = None) -> dict[str, Any]:
    """The pipeline's keyword arguments for this request (``steps`` overrides the step count)."""
    call: dict[str, Any] = {
        "prompt": request.prompt, "num_inference_steps": steps or request.steps or preset.steps,
        "height": request.height or preset.height, "width": request.width or preset.width,
        "generator": torch.Generator("cpu").manual_seed(request.seed), "output_type": "np",
    }
    if preset.guidance_arg is not None:
        call[preset.guidance_arg] = preset.guidance if request.guidance is None else request.guidance
    if preset.video:
        call["num_frames"] = request.frames or preset.frames
    negative = preset.negative_prompt if request.negative_prompt is None else request.negative_prompt
    if negative is not None:
        call["negative_prompt"] = negative
    call.update(preset.call_kwargs)
    if request.image is not None:
        call["image"] = load_image(request.image)
    return call


def check_image(preset: Preset, image: str | None) -> None:
    """An image-to-video preset needs ``image`` (a readable image file); other presets take none."""
    if preset.needs_image and image is None:
        raise GenerateError(f"--model {preset.name} is image-to-video ({preset.pipeline}): pass --image PATH, the "
                            "first frame")
    if image is not None and not preset.needs_image:
        raise GenerateError(f"--image is for image-to-video presets; --model {preset.name} ({preset.pipeline}) "
                            "takes a prompt only")
    if image is not None:
        load_image(image)


def load_image(path: str) -> Any:
    """The image at ``path`` as an RGB PIL image (GenerateError naming the file when it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise GenerateError(f"--image {path}: cannot read it as an image ({exc})") from None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return math.inf if not finite else sum(finite) / len(finite)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _run_summary(results: list[RunResult]) -> dict[str, Any]:
    """Median (and every run's value) of one path's wall, transformer and attention seconds."""
    out: dict[str, Any] = {"repeats": len(results)}
    for key in ("wall_s", "transformer_s", "attention_s"):
        values = [getattr(r, key) for r in results]
        if any(v is None for v in values):
            out[key], out[f"{key}_runs"] = None, None
            continue
        spread = Spread.of(values)
        out[key], out[f"{key}_min"], out[f"{key}_max"], out[f"{key}_runs"] = (spread.median, spread.low, spread.high,
                                                                            values)
    out["attention_share"] = _ratio(out["attention_s"], out["wall_s"])
    out["sparse_calls"] = sum(r.sparse_calls for r in results)
    return out


def _speedup(dense: list[RunResult], sparse: list[RunResult]) -> dict[str, Any]:
    """Per measure: dense / headsparse as the ratio of medians, and the spread of the per-round ratios."""
    out = {}
    for name, key in (("wall", "wall_s"), ("transformer", "transformer_s"), ("attention", "attention_s")):
        d, s = [getattr(r, key) for r in dense], [getattr(r, key) for r in sparse]
        if any(not v for v in d + s):
            out[name] = None
            continue
        ratio, rounds = ratio_spread(d, s)
        out[name] = {"ratio": ratio, "low": rounds.low, "high": rounds.high}
    return out


def headline(report: dict[str, Any]) -> str:
    """The report's first claim: the speed-up with its spread, or why there is none."""
    runs = report["runs"]
    if "headsparse" not in runs:
        return "Dense only: nothing to compare."
    if "dense" not in runs:
        return "headsparse only: no dense run to compare with (use --compare-dense)."
    n = runs["dense"]["repeats"]
    wall = f"dense {_fmt(runs['dense']['wall_s'])} s, headsparse {_fmt(runs['headsparse']['wall_s'])} s"
    if runs["headsparse"]["sparse_calls"] == 0:
        return (f"No head was made sparse: outputs identical, times equal within noise ({wall}, median of {n}). "
                "No speed-up is claimed.")
    if report.get("identical"):
        return (f"Every sparse layout kept every pair: outputs identical to dense ({wall}, median of {n}). "
                "No speed-up is claimed.")
    s = report["speedup"]

    def part(name: str) -> str:
        r = s[name]
        if r is None:
            return f"{name} -"
        spread = "" if n == 1 else f" ({r['low']:.2f}-{r['high']:.2f} per round)"
        return f"{name} {r['ratio']:.2f}x{spread}"

    runs_note = (f"ratio of medians of {n} interleaved runs each" if n > 1 else
                 "one run each: no spread measured, and runs differ by 20% or more on a busy machine; use --repeats 3")
    return f"Speed-up (dense / headsparse, {runs_note}): {part('wall')}, {part('transformer')}, {part('attention')}."


def generate(request: GenerateRequest) -> dict[str, Any]:
    """Run the request; write outputs and the report under ``request.out``; return the report."""
    try:
        preset = preset_for(request.model)
    except ValueError as exc:
        raise GenerateError(str(exc)) from None
    mode, patch_kwargs = resolve_mode(request, preset)
    check_image(preset, request.image)
    if not isinstance(request.repeats, int) or request.repeats < 1:
        raise GenerateError(f"--repeats must be an integer >= 1, got {request.repeats!r}")
    dtype_name = request.dtype or preset.dtype
    if dtype_name not in DTYPES:
        raise GenerateError(f"--dtype must be one of bf16, fp16, fp32; got {dtype_name!r}")
    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(preset, request.model_path, DTYPES[dtype_name], device, request.cpu_offload)
    pipe.set_progress_bar_config(disable=not request.progress)
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    fps = preset.fps or 1

    paths = ["dense"] if mode == "dense" or request.compare_dense else []
    if mode != "dense":
        paths.append("headsparse")
    kwargs_of = {"dense": {}, "headsparse": patch_kwargs}
    if request.warmup:
        for label in paths:
            warm_up(pipe, preset, request, kwargs_of[label])
    timed: dict[str, list[RunResult]] = {label: [] for label in paths}
    for _ in range(request.repeats):
        for label in paths:  # interleaved: dense, headsparse, dense, headsparse, ...
            timed[label].append(run_once(pipe, preset, request, label, kwargs_of[label]))
    runs = {label: results[0] for label, results in timed.items()}

    files = {label: str(write_output(r.frames, out / label, fps, preset.video)) for label, r in runs.items()}
    call = pipeline_call(preset, request)
    report: dict[str, Any] = {
        "headsparse_version": headsparse.__version__, "model": preset.name, "model_notes": preset.notes,
        "model_path": request.model_path, "prompt": request.prompt, "seed": request.seed,
        "steps": call["num_inference_steps"], "frames": int(next(iter(runs.values())).frames.shape[0]),
        "height": call["height"], "width": call["width"],
        "dtype": str(DTYPES[dtype_name]).removeprefix("torch."),
        "device": device, "device_info": device_report(device), "mode": mode,
        "patch": {k: _jsonable(v) for k, v in patch_kwargs.items()},
        "runs": {label: _run_summary(results) for label, results in timed.items()},
        "repeats": request.repeats,
    }
    report["device_name"] = report["device_info"]["name"]
    if "headsparse" in runs:
        report["layers"] = runs["headsparse"].layers
    if len(runs) == 2:
        dense, sparse = runs["dense"], runs["headsparse"]
        report["identical"] = bool(np.array_equal(dense.frames, sparse.frames))
        no_claim = report["identical"] or sparse.sparse_calls == 0
        report["speedup"] = None if no_claim else _speedup(timed["dense"], timed["headsparse"])
        per_frame, note = frame_metrics(sparse.frames, dense.frames)
        report["per_frame"] = per_frame
        report["psnr_mean"] = _finite_mean([r["psnr"] for r in per_frame])
        report["ssim_mean"] = sum(r["ssim"] for r in per_frame) / len(per_frame)
        if "lpips" in per_frame[0]:
            report["lpips_mean"] = sum(r["lpips"] for r in per_frame) / len(per_frame)
        report["lpips_note"] = note or "LPIPS (AlexNet) computed from local weights"
        medians = {label: report["runs"][label]["wall_s"] for label in runs}
        captions = (f"dense {medians['dense']:.1f} s", f"headsparse {medians['headsparse']:.1f} s")
        both = side_by_side(dense.frames, sparse.frames, captions)
        files["side_by_side"] = str(write_output(both, out / "side_by_side", fps, preset.video))
    report["headline"] = headline(report)
    report["files"] = files
    (out / "report.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    report["files"]["report"] = str(out / "report.md")
    return report


def _fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return f"{value:{spec}}{unit}"


def _jsonable(value: Any) -> Any:
    """A ``headsparse.patch`` argument as the report records it (a recognizer by its settings)."""
    from headsparse.patterns.recognize import Recognizer

    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Recognizer):
        return {"error_bound": value.error_bound, "every": value.every, "max_cost": value.max_cost}
    return value


def _timed(run: dict[str, Any], key: str, spec: str = ".2f") -> str:
    """A median with its min-max spread when there were several runs."""
    if run.get(key) is None:
        return "-"
    if run["repeats"] == 1:
        return _fmt(run[key], spec)
    return f"{_fmt(run[key], spec)} ({_fmt(run[key + '_min'], spec)}-{_fmt(run[key + '_max'], spec)})"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the run, the headline, time side by side, fidelity, per-layer density."""
    n = report["repeats"]
    lines = [
        f"# headsparse generate: {report['model']}",
        "",
        f"**{report['headline']}**",
        "",
        f"- prompt: {report['prompt']!r}, seed {report['seed']}, {report['steps']} steps, {report['frames']} "
        f"frame(s) of {report['height']}x{report['width']}, {report['dtype']}",
        f"- device: {device_line(report['device_info'])}",
        f"- mode: {report['mode']} {json.dumps(report['patch'])}",
        f"- model: {report['model_notes']}",
        f"- timing: every path warmed up by one untimed step, then {n} timed run(s) of each, interleaved; "
        + ("median (min-max) seconds" if n > 1 else "seconds of the one run"),
        "",
        "| run | wall s | transformer s | attention s | attention share | sparse calls |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in report["runs"].items():
        lines.append(f"| {label} | {_timed(r, 'wall_s')} | {_timed(r, 'transformer_s')} | {_timed(r, 'attention_s')} | "
                     f"{_fmt(r['attention_share'], '.1%')} | {r['sparse_calls']} |")
    if "per_frame" in report:
        lines += [
            "",
            f"Fidelity vs dense: PSNR {_fmt(report['psnr_mean'], '.2f')} dB, SSIM {_fmt(report['ssim_mean'], '.4f')}"
            + (f", LPIPS {_fmt(report['lpips_mean'], '.4f')}" if "lpips_mean" in report else "")
            + f" (mean over {len(report['per_frame'])} frame(s)); {report['lpips_note']}.",
            "",
            "| frame | PSNR dB | SSIM |",
            "|---:|---:|---:|",
        ]
        lines += [f"| {i} | {_fmt(r['psnr'])} | {_fmt(r['ssim'], '.4f')} |" for i, r in enumerate(report["per_frame"])]
    if report.get("layers"):
        lines += ["", "| transformer | layer | module | heads | density |", "|---|---:|---|---|---:|"]
        for row in report["layers"]:
            mix = ", ".join(f"{n}x {p}" for p, n in row["patterns"].items())
            lines.append(f"| {row['transformer']} | {row['layer']} | {row['module']} | {mix} | "
                         f"{_fmt(row['density'], '.3f')} |")
    lines += ["", "Files: " + ", ".join(f"{k}: {Path(v).name}" for k, v in report["files"].items()), ""]
    return "\n".join(lines)
