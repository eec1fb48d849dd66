"""Static check of the Triton kernels for every NVIDIA architecture, on a machine without a GPU.

``triton.compile`` with a ``GPUTarget`` compiles a kernel for any architecture down to PTX (and its
shared-memory size); Triton's own ``ptxas`` then reports registers and spills. :func:`check_config`
does both for one launch config, specialised the way Triton's JIT specialises a real launch
(contiguous head dimension: stride 1 is a constant; pointers and the other strides divisible by 16),
and :func:`check_shipped` every shipped config of :mod:`headsparse.kernels.triton_configs`. A config
passes when it compiles, fits the architecture's shared memory, and spills nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from headsparse.kernels.triton_configs import ARCHITECTURES, KernelConfig, shipped_configs

_DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
_INT_POINTERS = ("Heads", "FullPtr", "FullIdx", "PartPtr", "PartIdx", "PartMask", "MaskBits")


@dataclass(frozen=True)
class StaticResult:
    """One kernel compiled for one architecture: what ptxas and Triton report, and the verdict."""

    kernel: str
    arch: int
    config: str
    dtype: str
    head_dim: int
    shared: int
    shared_limit: int
    registers: int | None
    spill_stores: int | None
    spill_loads: int | None
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return (not self.error and self.shared <= self.shared_limit and self.spill_stores == 0
                and self.spill_loads == 0)

    def problem(self) -> str:
        if self.error:
            return f"does not compile: {self.error}"
        if self.shared > self.shared_limit:
            return f"needs {self.shared} B of shared memory, the limit is {self.shared_limit} B"
        if self.spill_stores or self.spill_loads:
            return f"spills {self.spill_stores} B stores / {self.spill_loads} B loads ({self.registers} registers)"
        return ""

    def row(self) -> dict:
        return {**asdict(self), "ok": self.ok, "problem": self.problem()}


def ptxas_path(arch: int) -> Path:
    """Triton's own ptxas (its Blackwell build for sm_100 and newer)."""
    import triton

    folder = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    blackwell = folder / "ptxas-blackwell"
    return blackwell if arch >= 100 and blackwell.exists() else folder / "ptxas"


def gpu_name(arch: int) -> str:
    """ptxas's name for an architecture (the 'a' variants of sm_90 and sm_100 that Triton targets)."""
    return {90: "sm_90a", 100: "sm_100a", 120: "sm_120a"}.get(arch, f"sm_{arch}")


def ptxas_report(ptx: str, arch: int) -> tuple[int | None, int | None, int | None, str]:
    """(registers, spill store bytes, spill load bytes, error) of ``ptx`` for ``arch``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run([str(ptxas_path(arch)), "-v", f"--gpu-name={gpu_name(arch)}", str(src), "-o",
                               os.devnull], capture_output=True, text=True)
    text = proc.stderr + proc.stdout
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if proc.returncode != 0 or not regs:
        return None, None, None, (text.strip().splitlines() or ["ptxas failed"])[-1][:200]
    return max(map(int, regs)), sum(int(s) for s, _ in spills), sum(int(x) for _, x in spills), ""


def _attention_source(dtype: str, head_dim: int, config: KernelConfig, split_m: int, split_n: int, lse: bool):
    from triton.compiler import ASTSource

    from headsparse.kernels.triton_attention import _block_sparse_fwd

    names = _block_sparse_fwd.arg_names
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    constants = {"BLOCK_M": config.tile_m, "BLOCK_N": config.tile_n, "BLOCK_D": block_d, "SPLIT_M": split_m,
                 "SPLIT_N": split_n, "RETURN_LSE": lse, "IEEE": dtype == "fp32",
                 # What Triton's JIT makes of a contiguous head dimension: a stride equal to 1 is a constant.
                 "stride_qd": 1, "stride_kd": 1, "stride_vd": 1, "stride_od": 1}
    signature = {}
    for name in names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in ("Q", "K", "V", "Out"):
            signature[name] = f"*{_DTYPES[dtype]}"
        elif name == "Lse":
            signature[name] = "*fp32"
        elif name in _INT_POINTERS:
            signature[name] = "*i32"
        elif name == "qk_scale":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    # Pointers (torch allocations) and the strides of a head dimension that is a multiple of 16 are
    # divisible by 16, which the JIT tells the compiler; lengths are not assumed to be.
    hinted = [n for n in names if signature[n].startswith("*") or (n.startswith("stride") and signature[n] == "i32"
                                                                    and head_dim % 16 == 0)]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in hinted}
    return ASTSource(fn=_block_sparse_fwd, signature=signature, constexprs=constants, attrs=attrs)


def _permute_source(dtype: str, head_dim: int):
    from triton.compiler import ASTSource

    from headsparse.kernels.permute import _gather_rows_kernel

    names = _gather_rows_kernel.arg_names
    constants = {"BLOCK_L": 64, "BLOCK_D": max(16, 1 << (head_dim - 1).bit_length()), "stride_xd": 1,
                 "stride_yd": 1}
    signature = {}
    for name in names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in ("X", "Y"):
            signature[name] = f"*{_DTYPES[dtype]}"
        elif name == "Index":
            signature[name] = "*i64"
        else:
            signature[name] = "i32"
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("X", "Y", "Index")}
    return ASTSource(fn=_gather_rows_kernel, signature=signature, constexprs=constants, attrs=attrs)


def _interpreted() -> bool:
    """Whether this process defined the kernels for Triton's interpreter (they cannot be compiled then)."""
    from headsparse.kernels.triton_attention import _block_sparse_fwd

    return not hasattr(_block_sparse_fwd, "cache_key")


def check_config(arch: int, dtype: str, head_dim: int, config: KernelConfig, *, block_m: int = 128,
                 block_n: int = 128, lse: bool = False, kernel: str = "attention") -> StaticResult:
    """Compile one kernel config for ``arch`` (e.g. 86) and report shared memory, registers and spills.

    Under ``TRITON_INTERPRET=1`` (the tests) the kernels are interpreted functions, so the compile runs in
    a fresh process without the flag.
    """
    if _interpreted():
        return _run_jobs([(arch, dtype, head_dim, (block_m, block_n), config, lse, kernel)], 1)[0]
    import triton
    from triton.backends.compiler import GPUTarget

    start = time.perf_counter()
    limit = ARCHITECTURES[arch]
    label = (f"{config.tile_m}x{config.tile_n} w{config.num_warps} s{config.num_stages}" if kernel == "attention"
             else "64 rows")
    if kernel == "attention":
        label += f" blocks {block_m}" + (" lse" if lse else "")
    try:
        if kernel == "attention":
            src = _attention_source(dtype, head_dim, config, block_m // config.tile_m, block_n // config.tile_n, lse)
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        else:
            src = _permute_source(dtype, head_dim)
            options = {"num_warps": 4, "num_stages": 1}
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # a compile error is a result, not a crash of the check
        return StaticResult(kernel, arch, label, dtype, head_dim, 0, limit, None, None, None,
                            time.perf_counter() - start, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    regs, stores, loads, error = ptxas_report(compiled.asm["ptx"], arch)
    return StaticResult(kernel, arch, label, dtype, head_dim, int(compiled.metadata.shared), limit, regs, stores,
                        loads, time.perf_counter() - start, error)


def _check(args: tuple) -> StaticResult:
    arch, dtype, head_dim, block, config, lse, kernel = args
    block_m, block_n = block if isinstance(block, tuple) else (block, block)
    return check_config(arch, dtype, head_dim, config, block_m=block_m, block_n=block_n, lse=lse, kernel=kernel)


def static_jobs(archs: tuple[int, ...] | None, quick: bool) -> list[tuple]:
    """One job per distinct compile: the attention kernel's shipped configs, and the permutation kernel."""
    jobs = [(arch, dtype, d, block, config, lse, "attention")
            for arch, dtype, d, block, config, lse in shipped_configs(archs, quick=quick)]
    for arch in archs or tuple(ARCHITECTURES):
        for d in (128,) if quick else (64, 128):
            jobs.append((arch, "bf16", d, 128, KernelConfig(0, 0, 4, 1), False, "permute"))
    return jobs


def check_shipped(archs: tuple[int, ...] | None = None, *, quick: bool = False, workers: int | None = None,
                  progress: Callable[[StaticResult], None] | None = None) -> list[StaticResult]:
    """Compile every shipped config for every architecture (processes in parallel: a compile is seconds)."""
    jobs = static_jobs(archs, quick)
    return _run_jobs(jobs, workers or max(1, min(len(jobs), os.cpu_count() or 1)), progress)


def _run_jobs(jobs: list[tuple], workers: int, progress: Callable[[StaticResult], None] | None = None,
              ) -> list[StaticResult]:
    interpreted = _interpreted()
    if workers == 1 and not interpreted:
        results = []
        for job in jobs:
            results.append(_check(job))
            if progress:
                progress(results[-1])
        return results
    # Workers start fresh (spawn) without the interpreter flag, so they import compilable kernels.
    flag = os.environ.pop("TRITON_INTERPRET", None)
    try:
        results = []
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for result in pool.map(_check, jobs):
                results.append(result)
                if progress:
                    progress(result)
        return results
    finally:
        if flag is not None:
            os.environ["TRITON_INTERPRET"] = flag


def triton_targets() -> tuple[int, ...]:
    """The architectures of :data:`ARCHITECTURES` this Triton can compile for."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:  # pragma: no cover - a Triton without the NVIDIA backend
        return ()
    return tuple(ARCHITECTURES)
