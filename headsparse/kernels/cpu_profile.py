"""The CPU executor choices of *this* machine: measured once and cached, or read off the CPU's features.

Two choices decide CPU sparse attention speed, and both depend on the CPU:

- the dtype compiled FlexAttention computes in for bf16/fp16 inputs: on CPUs with AMX tiles reduced
  precision is fastest; without them float32 compute can win (on one AMD EPYC, 10% random blocks at
  L=26520 ran at 0.23 of dense in bf16 and 0.15 in float32 compute);
- how many query rows a group of query blocks sharing its keys needs before the grouped executor
  (batched dense SDPA per group) beats FlexAttention.

Without a measurement the profile follows the features (AMX: keep bf16; otherwise float32 compute;
groups of 512 rows). :func:`measure_cpu_profile` (run by ``headsparse doctor --calibrate-cpu`` and
``benchmarks/attention.py --calibrate``) times both choices at one moderate shape and caches the
answer per machine (CPU model, extensions, threads) next to the cost model's ratios; from then on
every process on this machine uses it.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from headsparse.kernels.layout import BLOCK_FULL, Layout
from headsparse.machine import cache_dir, cpu_features, cpu_model, machine_key
from headsparse.timing import interleaved

DEFAULT_GROUPED_MIN_ROWS = 512  # measured on an AMD EPYC without AMX: frame-sized groups 0.07 vs 0.13 of dense
_GROUP_ROWS = (128, 256, 512, 1024, 2048)
_REDUCED = ("bfloat16", "float16")


@dataclass(frozen=True)
class CpuProfile:
    """The CPU executor choices: FlexAttention's compute dtype per input dtype, the grouped threshold."""

    flex_compute: dict[str, str]  # input dtype name -> compute dtype name
    grouped_min_rows: int
    source: str  # "features" or "measured on <cpu> (<date>)"

    def compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        name = str(dtype).removeprefix("torch.")
        return getattr(torch, self.flex_compute.get(name, name))


def features_profile() -> CpuProfile:
    """The profile the CPU's features suggest, before anything is measured."""
    compute = "bfloat16" if cpu_features()["amx"] else "float32"
    flex = {name: (name if compute == "bfloat16" else "float32") for name in _REDUCED}
    return CpuProfile(flex, DEFAULT_GROUPED_MIN_ROWS, "features")


def profile_path() -> Path:
    return cache_dir() / f"cpu-profile-{machine_key('cpu')}.json"


@functools.cache
def cpu_profile() -> CpuProfile:
    """This machine's measured profile if one is cached, else :func:`features_profile` (read once per process)."""
    path = profile_path()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return CpuProfile(dict(data["flex_compute"]), int(data["grouped_min_rows"]), str(data["source"]))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache is ignored, and replaced by the next measurement
    return features_profile()


def _grouped_layout(heads: int, length: int, rows: int, block: int) -> Layout:
    """Block-diagonal groups of ``rows`` tokens (frames of a spatial head): every block of a group sees the group."""
    n = math.ceil(length / block)
    group = torch.arange(n) * block // rows
    kinds = torch.where(group[:, None] == group[None, :], BLOCK_FULL, 0).to(torch.int8)
    return Layout.from_block_kinds(kinds.expand(1, heads, n, n).contiguous(), None, q_len=length, kv_len=length,
                                   block_m=block, block_n=block)


def measure_cpu_profile(*, length: int = 8192, heads: int = 4, head_dim: int = 64, repeats: int = 3,
                        save: bool = True) -> tuple[CpuProfile, list[dict]]:
    """Time the two choices on this CPU (about half a minute) and cache the result; returns it and the rows."""
    from headsparse.kernels.flex import flex_block_sparse_attention
    from headsparse.kernels.grouped import grouped_block_sparse_attention

    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []
    q, k, v = (torch.randn(1, heads, length, head_dim, generator=gen, dtype=torch.bfloat16) for _ in range(3))
    sparse = _grouped_layout(heads, length, 1024, 128)
    flex_compute = {}
    with torch.inference_mode():
        for name in _REDUCED:
            inputs = tuple(t.to(getattr(torch, name)) for t in (q, k, v))
            paths = {c: partial(flex_block_sparse_attention, *inputs, sparse, compute_dtype=getattr(torch, c))
                     for c in (name, "float32")}
            med = {c: statistics.median(t) for c, t in interleaved(paths, repeats).items()}
            flex_compute[name] = min(med, key=med.get)
            rows += [{"choice": f"flex compute for {name}", "option": c, "seconds": s} for c, s in med.items()]
        threshold = None
        profile_dtype = getattr(torch, flex_compute["bfloat16"])
        for group_rows in _GROUP_ROWS:
            layout = _grouped_layout(heads, length, group_rows, 128)
            paths = {
                "grouped": lambda layout=layout: grouped_block_sparse_attention(q, k, v, layout),
                "flex": lambda layout=layout: flex_block_sparse_attention(q, k, v, layout, compute_dtype=profile_dtype),
            }
            med = {n: statistics.median(t) for n, t in interleaved(paths, repeats).items()}
            rows += [{"choice": f"groups of {group_rows} rows", "option": n, "seconds": s} for n, s in med.items()]
            if med["grouped"] < med["flex"]:
                threshold = group_rows if threshold is None else threshold
            else:
                threshold = None  # grouped must win from the threshold on, not only somewhere
    grouped_min_rows = threshold if threshold is not None else 10**9
    stamp = time.strftime("%Y-%m-%d")
    profile = CpuProfile(flex_compute, grouped_min_rows, f"measured on {cpu_model()} ({stamp})")
    if save:
        path = profile_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**asdict(profile), "rows": rows}, indent=1))
        cpu_profile.cache_clear()
    return profile, rows
