"""How the Triton launch-config table was chosen: compile candidate configs for every architecture, no GPU needed.

For each NVIDIA architecture (sm_80/86/89/90/100/120), head dim and dtype, every candidate (query tile,
key tile, warps, stages) of the attention kernel is compiled with ``triton.compile`` for that target and
checked with Triton's ``ptxas``: shared memory against the architecture's limit, registers, spills
(:mod:`headsparse.kernels.gpu_static`). The table printed (and written to
``benchmarks/results/gpu_configs.md``) lists every candidate; the largest spill-free tiles are what
:mod:`headsparse.kernels.triton_configs` ships. Results are cached in a JSON file as they come, so an
interrupted sweep resumes.

    python benchmarks/gpu_configs.py                       # every architecture (about 20 minutes on 2 cores)
    python benchmarks/gpu_configs.py --archs 86 90 --head-dims 128
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
from pathlib import Path

from headsparse.kernels import triton_attention
from headsparse.kernels.gpu_static import check_config
from headsparse.kernels.triton_configs import ARCHITECTURES, KernelConfig

# Candidates per layout block size (the kernel's tiles divide the block).
CANDIDATES: dict[int, tuple[KernelConfig, ...]] = {
    128: (KernelConfig(128, 64, 8, 2), KernelConfig(128, 64, 8, 3), KernelConfig(128, 32, 8, 2),
          KernelConfig(128, 32, 8, 3), KernelConfig(64, 64, 8, 2), KernelConfig(64, 32, 4, 2)),
    64: (KernelConfig(64, 64, 8, 2), KernelConfig(64, 64, 8, 3), KernelConfig(64, 32, 8, 2), KernelConfig(64, 32, 4, 2),
         KernelConfig(64, 64, 4, 2), KernelConfig(32, 32, 4, 2)),
    32: (KernelConfig(32, 32, 4, 2), KernelConfig(32, 32, 4, 3), KernelConfig(32, 32, 2, 2)),
}
RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", type=int, nargs="+", default=list(ARCHITECTURES))
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--dtypes", nargs="+", default=["bf16"])
    p.add_argument("--cache", type=Path, default=Path("outputs/gpu_configs_cache.json"))
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_configs.md")
    args = p.parse_args(argv)
    cache = json.loads(args.cache.read_text()) if args.cache.is_file() else {}
    kernel = hashlib.sha256(inspect.getsource(triton_attention).encode()).hexdigest()[:12]
    rows = []
    for arch in args.archs:
        for d in args.head_dims:
            for dtype in args.dtypes:
                for block, configs in CANDIDATES.items():
                    for c in configs:
                        key = f"{kernel}-{arch}-{d}-{dtype}-{block}-{c.tile_m}-{c.tile_n}-{c.num_warps}-{c.num_stages}"
                        if key not in cache:
                            cache[key] = check_config(arch, dtype, d, c, block_m=block, block_n=block).row()
                            args.cache.parent.mkdir(parents=True, exist_ok=True)
                            args.cache.write_text(json.dumps(cache, indent=0))
                        r = {**cache[key], "block": block}
                        rows.append(r)
                        print(f"sm_{arch} D={d} {dtype} {r['config']:>26}: shared {r['shared']:>6} / "
                              f"{r['shared_limit']} regs {r['registers']} spills {r['spill_stores']}/"
                              f"{r['spill_loads']} {'ok' if r['ok'] else r['problem']}", flush=True)
    lines = ["# Triton launch-config candidates, compiled for each architecture (no GPU)", "",
             "Attention kernel, candidates for each layout block size (128, 64, 32), specialised "
             "as a real launch is (head-dim stride 1, pointers and strides divisible by 16). ok = compiles, fits "
             "shared memory, 0 spilled bytes.", "",
             f"Command: `python benchmarks/gpu_configs.py {' '.join(argv)}`", "",
             "| arch | head dim | dtype | layout block | config | shared B | limit B | registers | "
             "spill st/ld B | verdict |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| sm_{r['arch']} | {r['head_dim']} | {r['dtype']} | {r['block']} | {r['config']} | "
                     f"{r['shared']} | "
                     f"{r['shared_limit']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | "
                     f"{'ok' if r['ok'] else r['problem']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
