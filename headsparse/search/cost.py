"""Cost model: how long a candidate pattern's attention takes, relative to dense, on this device.

``measured`` times each candidate's layout with :func:`headsparse.sparse_attention` (the executor
``auto`` picks) against dense SDPA at the calibration geometry, head count, head dim and dtype,
on random inputs, and caches the ratios per device in a JSON file, so the search optimises
predicted time, not FLOPs (a frame-aligned layout on the grouped executor and a scattered one on
FlexAttention differ a lot at equal density). ``blocks`` is the cheap proxy for tests: the fraction
of key blocks the layout visits.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from headsparse.kernels import sparse_attention
from headsparse.patterns import Dense, Geometry, Pattern
from headsparse.plan import pattern_to_dict
from headsparse.timing import best_time


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{platform.processor() or 'unknown'}-{torch.get_num_threads()}threads"


def default_cache_dir() -> Path:
    return Path(os.environ.get("HEADSPARSE_CACHE", Path.home() / ".cache" / "headsparse"))


@dataclass
class CostModel:
    """Relative attention time of each candidate (dense = 1) at one geometry."""

    mode: str = "measured"  # or "blocks"
    device: str = "cpu"
    dtype: torch.dtype = torch.bfloat16
    repeats: int = 2
    cache_dir: Path | None = None
    _costs: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("measured", "blocks"):
            raise ValueError(f"CostModel.mode must be 'measured' or 'blocks', got {self.mode!r}")

    def _cache_path(self) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_name(self.device))
        return (self.cache_dir or default_cache_dir()) / f"cost-{safe}.json"

    def _load(self) -> dict[str, float]:
        path = self._cache_path()
        return json.loads(path.read_text()) if path.is_file() else {}

    def _store(self, costs: dict[str, float]) -> None:
        path = self._cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self._load(), **costs}
        path.write_text(json.dumps(merged, indent=0, sort_keys=True))

    def costs(self, patterns: Sequence[Pattern], geometry: Geometry, *, heads: int, head_dim: int,
              block: int = 128) -> torch.Tensor:
        """float64 [len(patterns)]: predicted time of each pattern relative to dense attention."""
        if self.mode == "blocks":
            return torch.tensor([
                1.0 if isinstance(p, Dense) else float(p.layout(geometry, block_m=block, block_n=block)
                                                       .block_density().mean())
                for p in patterns
            ], dtype=torch.float64)
        g = (geometry.frames, geometry.height, geometry.width, geometry.text_len, geometry.text_position)
        keys = [json.dumps([pattern_to_dict(p), g, heads, head_dim, block, str(self.dtype)], sort_keys=True)
                for p in patterns]
        known = {**self._load(), **self._costs}
        missing = [i for i, key in enumerate(keys) if key not in known]
        if missing:
            device = torch.device(self.device)
            gen = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(1, heads, geometry.seq_len, head_dim, generator=gen).to(device, self.dtype)
                       for _ in range(3))
            with torch.no_grad():
                dense = best_time(lambda: F.scaled_dot_product_attention(q, k, v), self.repeats, device)
                new = {}
                for i in missing:
                    p = patterns[i]
                    if isinstance(p, Dense):
                        new[keys[i]] = 1.0
                        continue
                    layout = p.layout(geometry, num_heads=heads, block_m=block, block_n=block)
                    new[keys[i]] = best_time(lambda layout=layout: sparse_attention(q, k, v, layout), self.repeats,
                                              device) / dense
            self._costs.update(new)
            self._store(new)
            known.update(new)
        return torch.tensor([known[key] for key in keys], dtype=torch.float64)
