"""Layouts at the sizes users generate: build time, memory, storage, and work beyond the density.

For each geometry (Wan 2.1 1.3B 480p, Wan 14B 720p, HunyuanVideo 720p with its 256 text tokens,
CogVideoX-5B 720x480 with 226, LTX-Video 768x512 at 161 frames), every static candidate of the search
grid (``headsparse.patterns.registry.candidates()`` without agent, pooled, dense and skip) is built
cold (``clear_layout_cache()`` first) for the model's head count at 128-token blocks. Per candidate:

- build seconds, and the peak growth of the process's resident memory during the build (RSS sampled
  every 2 ms by a thread);
- the layout's bytes (``Layout.nbytes``: structures, rows, masks, orders);
- density (pairs kept / L^2) and block density (the executors' work: visited blocks x block area / L^2,
  padding positions included);
- for the patterns the issue asks to line up with blocks (temporal, neighborhood, sliding tile,
  spatial), whether block density <= 1.5 x density + one block per query row, and, where not, why.

    python benchmarks/layout_scale.py                          # every geometry (about 10 minutes)
    python benchmarks/layout_scale.py --geometries wan480p     # one
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch

from headsparse.machine import device_line, device_report
from headsparse.patterns import Geometry, Neighborhood, SlidingTile, Spatial, Temporal, candidates
from headsparse.patterns.base import clear_layout_cache

GEOMETRIES = {
    "wan480p": ("Wan 2.1 1.3B 480p, 81 frames", Geometry(21, 30, 52), 12),
    "wan720p": ("Wan 2.1 14B 720p, 81 frames", Geometry(21, 45, 80), 40),
    "hunyuan720p": ("HunyuanVideo 720p, 129 frames", Geometry(33, 45, 80, 256, "suffix"), 24),
    "cogvideox": ("CogVideoX-5B 720x480, 49 frames", Geometry(13, 30, 45, 226, "prefix"), 48),
    "ltx": ("LTX-Video 768x512, 161 frames", Geometry(21, 16, 24), 32),
}
ALIGNED = (Temporal, Neighborhood, SlidingTile, Spatial)
BLOCK = 128


class PeakRss:
    """Peak resident memory growth over a ``with`` block, sampled by a thread."""

    def __enter__(self) -> PeakRss:
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def grid() -> list:
    return [p for p in candidates() if not getattr(p, "dynamic", False) and p.name not in ("dense", "skip")]


def why_not_aligned(pattern, g: Geometry, layout) -> str:
    """The reason a pattern cannot reach block density <= 1.5 x density + a block per row."""
    if isinstance(pattern, Neighborhood) and all(s == 1 for s in pattern.stride):
        return ("stride 1: every query has its own window, so a block of 128 queries needs the union of 128 "
                "windows, several times one window whatever the order")
    if isinstance(pattern, Temporal) and pattern.spatial_window > 1:
        return (f"a block holds {max(1, BLOCK // g.frames)} locations x {g.frames} frames; their 3x3 windows "
                "cover several blocks of other locations")
    padded = layout.num_q_blocks * BLOCK
    if isinstance(pattern, Neighborhood) and padded > 1.05 * g.seq_len:
        tile = "x".join(str(s) for s in pattern.stride[1:])
        return (f"the {g.height}x{g.width} grid is no multiple of the {tile} stride tile: tiles are padded to whole "
                f"blocks, {100 * (1 - g.seq_len / padded):.0f}% of the ordered positions are padding, and padded "
                f"query and key blocks cost work like real ones (x{(padded / g.seq_len) ** 2:.2f})")
    return ""


def measure(name: str, g: Geometry, heads: int) -> list[dict]:
    rows = []
    for pattern in grid():
        clear_layout_cache()
        with PeakRss() as mem:
            start = time.perf_counter()
            try:
                layout = pattern.layout(g, num_heads=heads, block_m=BLOCK, block_n=BLOCK)
                error = ""
            except (RuntimeError, MemoryError) as exc:
                layout, error = None, str(exc).splitlines()[0][:80]
            seconds = time.perf_counter() - start
        row = {"geometry": name, "pattern": pattern.label(), "seconds": seconds, "peak": mem.growth, "error": error}
        if layout is not None:
            density = float(layout.density().mean())
            work = float(layout.block_density().mean())
            per_row = layout.num_q_blocks * BLOCK * BLOCK / (g.seq_len**2)
            row.update(bytes=layout.nbytes(), density=density, work=work, allowance=1.5 * density + per_row,
                       aligned=isinstance(pattern, ALIGNED), ordered=layout.ordered)
            row["meets"] = work <= row["allowance"]
            row["why"] = "" if row["meets"] or not row["aligned"] else why_not_aligned(pattern, g, layout)
        rows.append(row)
        print(f"  {pattern.label():70s} {seconds:6.2f} s  peak +{mem.growth / 2**20:7.0f} MiB  "
              + (f"{row['bytes'] / 2**20:7.2f} MiB  density {row['density']:.4f}  work {row['work']:.4f}"
                 if layout is not None else f"FAILED {error}"), flush=True)
    return rows


def to_markdown(results: dict[str, list[dict]], argv: list[str]) -> str:
    lines = [
        "# Layouts at scale: build time, memory, storage and work, every static search candidate",
        "",
        f"Device: {device_line(device_report('cpu'))}, torch {torch.__version__}. Blocks {BLOCK}x{BLOCK}; each "
        "layout built cold for the model's head count (heads share one structure). Peak = growth of resident "
        "memory during the build. Work = visited blocks x block area / L^2 (the executors' share of dense "
        "attention's work, padding positions included); allowance = 1.5 x density + one block per query row.",
        "",
        f"Command: `python benchmarks/layout_scale.py {' '.join(argv)}`",
    ]
    for key, rows in results.items():
        label, g, heads = GEOMETRIES[key]
        total = sum(r["seconds"] for r in rows)
        worst = max(rows, key=lambda r: r["seconds"])
        peak = max(r["peak"] for r in rows)
        biggest = max((r for r in rows if "bytes" in r and r["density"] <= 0.1), key=lambda r: r["bytes"],
                      default=None)
        lines += [
            "",
            f"## {label}: {g.frames}x{g.height}x{g.width}" + (f" + {g.text_len} text ({g.text_position})"
                                                               if g.text_len else "")
            + f", {g.seq_len} tokens, {heads} heads",
            "",
            f"All {len(rows)} candidates: {total:.1f} s; slowest {worst['pattern']} {worst['seconds']:.2f} s; "
            f"largest peak growth {peak / 2**20:.0f} MiB"
            + (f"; largest layout at density <= 0.1: {biggest['pattern']} {biggest['bytes'] / 2**20:.2f} MiB."
               if biggest else "."),
            "",
            "| pattern | build s | peak MiB | layout MiB | density | work | allowance | lined up | why not |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in rows:
            if "bytes" not in r:
                lines.append(f"| `{r['pattern']}` | {r['seconds']:.2f} | {r['peak'] / 2**20:.0f} | failed: "
                             f"{r['error']} | | | | | |")
                continue
            mark = ("yes" if r["meets"] else "no") if r["aligned"] else "-"
            lines.append(f"| `{r['pattern']}` | {r['seconds']:.2f} | {r['peak'] / 2**20:.0f} | "
                         f"{r['bytes'] / 2**20:.2f} | {r['density']:.4f} | {r['work']:.4f} | "
                         f"{r['allowance']:.4f} | {mark} | {r['why']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--geometries", nargs="+", choices=list(GEOMETRIES), default=list(GEOMETRIES))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "layout_scale_cpu.md")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    results = {}
    for key in args.geometries:
        label, g, heads = GEOMETRIES[key]
        print(f"{label}: {g} ({g.seq_len} tokens, {heads} heads)", flush=True)
        results[key] = measure(key, g, heads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(results, argv))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
