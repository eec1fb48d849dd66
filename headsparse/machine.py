"""What machine this is: the CPU model and extensions, the CUDA device, and where caches live.

Measurements name their device (CPU timings differ tenfold between CPUs with and without AMX), and
every cache of measured decisions (the cost model's ratios, the CPU executor profile) is keyed by
the machine, so a decision measured on one machine is never applied on another.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    """Where headsparse keeps measured costs and profiles: ``$HEADSPARSE_CACHE`` or ~/.cache/headsparse."""
    return Path(os.environ.get("HEADSPARSE_CACHE", Path.home() / ".cache" / "headsparse"))


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> dict[str, bool]:
    """The CPU extensions that decide reduced-precision attention speed: AMX tiles and AVX-512-BF16."""
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return {"amx": amx, "avx512_bf16": bf16}


def device_name(device: torch.device | str = "cpu") -> str:
    """What a measurement ran on: the CUDA device's name, or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return cpu_model()


def device_report(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a report names about the device: model, threads and matrix extensions, or CUDA capability."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device), "capability": f"sm_{major}{minor}"}
    return {"kind": "cpu", "name": cpu_model(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            **cpu_features()}


def device_line(report: Mapping[str, Any]) -> str:
    """One line for a report: 'AMD EPYC, 2 threads, AVX-512-BF16: yes, AMX: no' or 'NVIDIA H100 (sm_90)'."""
    if report.get("kind") == "cuda":
        return f"{report['name']} ({report['capability']})"
    yes = {True: "yes", False: "no"}
    return (f"{report['name']}, {report['threads']} threads, AVX-512-BF16: {yes[bool(report['avx512_bf16'])]}, "
            f"AMX: {yes[bool(report['amx'])]}")


def machine_key(device: torch.device | str = "cpu") -> str:
    """A file-name-safe key of the device a measurement holds for: CUDA name and capability, or the
    CPU model, its extensions and the thread count (which changes CPU timings too)."""
    info = device_report(device)
    if info["kind"] == "cuda":
        text = f"{info['name']}-{info['capability']}"
    else:
        text = (f"cpu-{info['name']}-{'amx' if info['amx'] else 'noamx'}-{'bf16' if info['avx512_bf16'] else 'nobf16'}"
                f"-{info['threads']}t")
    return slug(text)


def slug(text: str) -> str:
    """Lower-case letters, digits, dots and dashes only: 'AMD EPYC 9B14' -> 'amd-epyc-9b14'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")
