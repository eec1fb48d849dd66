"""``headsparse doctor``: what headsparse will do on this machine, and whether its GPU kernels are sound.

The report: package versions; the device (CPU model and matrix extensions, CUDA devices and their
compute capability); which executor each kind of head runs on here; where measured costs and
profiles are cached, and the layout cache's bound. ``--gpu-static`` compiles every shipped Triton
launch config for every NVIDIA architecture (no GPU needed) and prints registers, spills and shared
memory against each architecture's limit; ``--calibrate-cpu`` measures this CPU's executor profile.
"""

from __future__ import annotations

import importlib
import platform

from headsparse.kernels.gpu_static import StaticResult, check_shipped

__all__ = ["check_shipped", "report", "static_table"]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("headsparse", "torch", "triton", "diffusers", "transformers", "timm"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            out[name] = "not installed"
    return out


def executor_lines() -> list[str]:
    """Which executor each kind of head runs on this machine (CUDA if present, else the CPU profile)."""
    import torch

    from headsparse.kernels.cpu_profile import cpu_profile
    from headsparse.kernels.sparse_attention import CUDA_MASKED_CROSSOVER
    from headsparse.kernels.triton_configs import config_for

    lines = []
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        cap = 10 * major + minor
        c128 = config_for(cap, 128, 128, 128)
        lines += [
            "dense heads (and dense rows of a layer split by head): torch SDPA (flash / cuDNN)",
            f"static sparse heads: Triton block-sparse kernel (sm_{cap}, D=128, 128-token blocks: tiles "
            f"{c128.tile_m}x{c128.tile_n}, {c128.num_warps} warps, {c128.num_stages} stages)",
            f"layouts visiting >= {CUDA_MASKED_CROSSOVER:.0%} of dense work: SDPA under the layout's mask",
            "dynamic heads (pooled): built on the GPU per call, Triton kernel",
        ]
    else:
        profile = cpu_profile()
        lines += [
            "dense heads: torch SDPA",
            f"static sparse heads whose query blocks share keys in groups of >= {profile.grouped_min_rows} rows "
            "(frames, tiles): grouped SDPA",
            f"other sparse heads: compiled FlexAttention (bf16 computed in {profile.flex_compute['bfloat16']}, "
            f"fp16 in {profile.flex_compute['float16']}; profile: {profile.source})",
            "gradients, the log-sum-exp, or no compiler: the masked SDPA executor",
        ]
    lines.append("agent heads: agent attention (pooled queries, two small softmaxes)")
    return lines


def cache_lines() -> list[str]:
    from headsparse.kernels.cpu_profile import profile_path
    from headsparse.kernels.layout_cache import CACHE
    from headsparse.machine import cache_dir

    folder = cache_dir()
    costs = sorted(folder.glob("cost-*.json")) if folder.is_dir() else []
    profile = profile_path()
    return [
        f"cache folder: {folder} ($HEADSPARSE_CACHE)",
        f"measured attention costs: {', '.join(p.name for p in costs) if costs else 'none yet'}",
        f"CPU executor profile: {profile.name if profile.is_file() else 'none (from features; --calibrate-cpu)'}",
        f"layout cache: {CACHE.nbytes() / 2**20:.1f} MiB of {CACHE.limit / 2**30:.1f} GiB "
        "($HEADSPARSE_LAYOUT_CACHE_BYTES)",
    ]


def report() -> str:
    import torch

    from headsparse.machine import device_line, device_report

    lines = ["headsparse doctor", "", "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()), "",
             f"CPU: {device_line(device_report('cpu'))}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"CUDA {i}: {device_line(device_report(f'cuda:{i}'))}")
    else:
        lines.append("CUDA: no device")
    lines += ["", "executors:"] + [f"  {line}" for line in executor_lines()]
    lines += ["", "caches:"] + [f"  {line}" for line in cache_lines()]
    return "\n".join(lines)


def static_table(results: list[StaticResult]) -> str:
    rows = ["| kernel | arch | head dim | dtype | config | compiled | registers | spills (st/ld B) | shared B / limit "
            "| verdict |", "|---|---|---:|---|---|---|---:|---|---|---|"]
    for r in results:
        compiled = "no" if r.error else "yes"
        rows.append(f"| {r.kernel} | sm_{r.arch} | {r.head_dim} | {r.dtype} | {r.config} | {compiled} | "
                    f"{r.registers if r.registers is not None else '-'} | "
                    f"{'-' if r.spill_stores is None else f'{r.spill_stores}/{r.spill_loads}'} | "
                    f"{r.shared} / {r.shared_limit} | {'ok' if r.ok else r.problem()} |")
    return "\n".join(rows)
