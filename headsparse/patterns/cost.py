"""Cost model: how long a candidate pattern's attention takes, relative to dense, on this device.

It sits beside the patterns (it times their layouts on the executors), below both the online
recogniser and the offline search, which use it.

``measured`` times each candidate's layout with :func:`headsparse.sparse_attention` (the executor
``auto`` picks) against dense SDPA at the calibration geometry, head count, head dim and dtype,
on random inputs (a dynamic pattern, such as ``pooled``, on the blocks it picks for them), and
caches the ratios per device in a JSON file, so the search optimises predicted time, not FLOPs (a
frame-aligned layout on the grouped executor and a scattered one on FlexAttention differ a lot at
equal density). A layer of mixed heads is timed as the one call it runs as (``layer_cost``), which
the cost-aware recogniser checks. ``blocks`` is the cheap proxy for tests: the fraction of key
blocks the layout visits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from headsparse.kernels import sparse_attention
from headsparse.machine import cache_dir, machine_key
from headsparse.patterns.base import Pattern
from headsparse.patterns.dense import Dense
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.layer import heads_layout
from headsparse.timing import best_time


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
        return (self.cache_dir or cache_dir()) / f"cost-{machine_key(self.device)}.json"

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
        """float64 [len(patterns)]: predicted time of each pattern (on every head) relative to dense attention."""
        return torch.tensor(self._layer_costs([(p,) * heads for p in patterns], geometry, head_dim, block),
                            dtype=torch.float64)

    def layer_cost(self, heads: Sequence[Pattern], geometry: Geometry, *, head_dim: int, block: int = 128) -> float:
        """Predicted time of one layer whose heads run ``heads`` (mixed patterns in one executor call, as
        the runtime runs them) relative to dense attention: a mix can cost more than its parts."""
        return self._layer_costs([tuple(heads)], geometry, head_dim, block)[0]

    def _layer_costs(self, layers: list[tuple[Pattern, ...]], geometry: Geometry, head_dim: int,
                     block: int) -> list[float]:
        """Each layer's relative time: from memory, else the cache file (read once), else timed, on one
        set of random inputs and one dense timing per head count, and stored in one write."""
        if self.mode == "blocks":
            return [1.0 if all(isinstance(p, Dense) for p in heads)
                    else float(_heads_layout(heads, geometry, head_dim, block).block_density().mean())
                    for heads in layers]
        g = (geometry.frames, geometry.height, geometry.width, geometry.text_len, geometry.text_position)

        def key(heads: tuple[Pattern, ...]) -> str:
            runs = [(p.to_dict(), n) for p, n in _runs(heads)]
            return json.dumps([runs[0][0] if len(runs) == 1 else runs, g, len(heads), head_dim, block,
                               str(self.dtype)], sort_keys=True)

        keys = [key(heads) for heads in layers]
        missing = [i for i, k in enumerate(keys) if k not in self._costs]
        if missing:
            wanted = set(keys)
            self._costs.update({k: v for k, v in self._load().items() if k in wanted})
            missing = [i for i in missing if keys[i] not in self._costs]
        new: dict[str, float] = {}
        device = torch.device(self.device)
        for count in sorted({len(layers[i]) for i in missing}):
            gen = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(1, count, geometry.seq_len, head_dim, generator=gen).to(device, self.dtype)
                       for _ in range(3))
            with torch.no_grad():
                dense = best_time(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), self.repeats, device)
                for i in missing:
                    heads = layers[i]
                    if len(heads) != count or keys[i] in new:
                        continue
                    if all(isinstance(p, Dense) for p in heads):
                        new[keys[i]] = 1.0
                        continue
                    layout = _heads_layout(heads, geometry, head_dim, block, q[0].float().cpu(),
                                           k[0].float().cpu()).to(device)
                    new[keys[i]] = best_time(lambda q=q, k=k, v=v, layout=layout: sparse_attention(q, k, v, layout),
                                             self.repeats, device) / dense
        if new:
            self._costs.update(new)
            self._store(new)
        return [self._costs[k] for k in keys]


def _runs(heads: tuple[Pattern, ...]) -> list[tuple[Pattern, int]]:
    """Consecutive equal patterns as (pattern, count)."""
    runs: list[tuple[Pattern, int]] = []
    for p in heads:
        if runs and runs[-1][0] == p:
            runs[-1] = (p, runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


def _heads_layout(heads: tuple[Pattern, ...], geometry: Geometry, head_dim: int, block: int,
                  q: torch.Tensor | None = None, k: torch.Tensor | None = None):
    """The layer's layout; a dynamic head (``pooled``) picks its blocks from q, k [H, L, D] (random if None)."""
    dynamic = [h for h, p in enumerate(heads) if getattr(p, "dynamic", False)]
    kinds = {}
    if dynamic:
        if q is None or k is None:
            gen = torch.Generator().manual_seed(0)
            q, k = (torch.randn(len(heads), geometry.seq_len, head_dim, generator=gen) for _ in range(2))
        for h in dynamic:
            kinds[h] = heads[h].block_kinds_from_qk(q[h:h + 1], k[h:h + 1], geometry, block)[0]
    return heads_layout(heads, geometry, block, kinds)
