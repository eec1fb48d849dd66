"""Online recognition of each head's pattern (Sparse VideoGen's profiling, RainFusion's ARM).

From a few sampled query rows per head, compute their exact attention over all keys and the
output they produce; for each candidate pattern (cheapest first, by the fraction of blocks its
layout visits) estimate what it would output on those rows with its mask; the first candidate
whose relative output error stays within ``error_bound`` wins. Heads no static candidate fits may
take the dynamic ``pooled`` selection under the same test; the rest stay dense. The cost is a
few matrix products of ``samples`` rows against the keys: a small fraction of the attention.
With ``max_cost`` the recogniser also knows what the device runs fast: candidates whose measured
time (:class:`headsparse.patterns.cost.CostModel`, cached per device) exceeds that fraction of dense are
never tried, a layer with none left runs dense without sampling anything, and a layer whose chosen
mix of heads measures slower than that runs dense too.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from headsparse.kernels.layout import Layout
from headsparse.kernels.layout_cache import CACHE
from headsparse.patterns.base import Pattern
from headsparse.patterns.dense import Dense
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.layer import heads_layout
from headsparse.patterns.neighborhood import Neighborhood
from headsparse.patterns.pooled import PooledBlocks
from headsparse.patterns.sliding_tile import SlidingTile
from headsparse.patterns.spatial import Spatial
from headsparse.patterns.stripes import Textural
from headsparse.patterns.temporal import Temporal


def default_candidates(geometry: Geometry) -> tuple[Pattern, ...]:
    """Spatial, temporal, neighborhood, sliding-tile and textural settings that fit the geometry.

    Besides fixed windows, two scale with the grid: a 3-D neighbourhood of about half of each axis
    and a sliding tile of 3x3x3 tiles of about a quarter of each axis (at most STA's 4x8x8 tokens),
    the tile-aligned form of the same local window, which runs on whole blocks."""
    def odd_fit(k: int, n: int) -> int:
        return min(k, n if n % 2 else max(1, n - 1))

    dims = (geometry.frames, geometry.height, geometry.width)
    half = tuple(n // 2 + 1 if n // 2 % 2 == 0 else n // 2 for n in dims)  # odd, about half of each axis
    hoods = {tuple(odd_fit(k, n) for k, n in zip(kernel, dims, strict=True))
             for kernel in ((3, 9, 9), (5, 15, 15), half)}
    tile = tuple(max(1, min(t, -(-n // 4))) for t, n in zip((4, 8, 8), dims, strict=True))
    return (
        Spatial(first_frame_sink=False), Spatial(), Spatial(frame_band=1),
        Temporal(), Temporal(spatial_window=3),
        *(Neighborhood(kernel_size=k) for k in sorted(hoods)),
        SlidingTile(tile=tile, window=(3, 3, 3)),
        Textural(),
    )


@functools.lru_cache(maxsize=64)
def sample_rows(geometry: Geometry, samples: int, seed: int) -> Tensor:
    """int64 [n]: video query rows spread over the sequence (stratified, reproducible)."""
    video = torch.arange(geometry.video_start, geometry.video_start + geometry.video_len)
    n = min(samples, video.numel())
    g = torch.Generator().manual_seed(seed)
    edges = torch.linspace(0, video.numel(), n + 1).long()
    offsets = (torch.rand(n, generator=g) * (edges[1:] - edges[:-1]).float()).long()
    return video[edges[:-1] + offsets]


def _row_mask(pattern: Pattern, geometry: Geometry, rows: tuple[int, ...], device: str = "cpu") -> Tensor:
    """bool [n, L]: the pattern's mask on sampled rows, kept on ``device`` (in the byte-bounded layout cache:
    4 MB each at 120k tokens and 32 rows), so a recognition moves nothing from the host."""
    def build() -> Tensor:
        idx = torch.arange(geometry.seq_len)
        return pattern.mask(geometry, torch.tensor(rows)[:, None], idx[None, :]).to(device)

    return CACHE.get(("rows", pattern, geometry, rows, device), build)


@functools.lru_cache(maxsize=64)
def _on_device(rows: Tensor, device: str) -> Tensor:
    """The sampled rows on the attention's device, moved once per geometry and device."""
    return rows.to(device)


@functools.lru_cache(maxsize=1024)
def block_cost(pattern: Pattern, geometry: Geometry, block: int) -> float:
    """Fraction of blocks the pattern's layout visits: what the executors pay for."""
    if isinstance(pattern, Dense):
        return 1.0
    return float(pattern.layout(geometry, block_m=block, block_n=block).block_density().mean())


def _block_row_mask(kinds: Tensor, rows: Tensor, length: int, block: int) -> Tensor:
    """bool [H, n, L] token masks of sampled rows from an int8 [H, MQ, NK] block map."""
    per_row = kinds[:, rows // block, :] > 0  # [H, n, NK]
    return per_row.repeat_interleave(block, dim=-1)[..., :length]


class SampledAttention:
    """Exact attention of a few sampled query rows per head, to score masks against.

    From q/k/v [B, H, L, D] (batch item 0): the sampled rows' softmax over all keys and their
    outputs. ``errors`` gives, per head, the relative L2 error of those outputs when the rows keep
    only a mask's keys (renormalised), which is what a sparse head would output there. Heads that
    lose too much mass (below ``min_mass`` on some row) get inf without the product: cheap rejects.
    """

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, geometry: Geometry, *, samples: int = 32, seed: int = 0,
                 scale: float | None = None, min_mass: float = 0.0) -> None:
        q0, k0, self.v = q[0], k[0], v[0]
        self.num_heads, length, dim = q0.shape
        if length != geometry.seq_len:
            raise ValueError(f"q has {length} tokens, the geometry {geometry.seq_len}")
        self.geometry = geometry
        self.rows = sample_rows(geometry, samples, seed)
        self._key = tuple(self.rows.tolist())
        scale = scale if scale is not None else 1 / math.sqrt(dim)
        # Products run in the inputs' dtype (fast bf16 on CPUs that have it); softmax and masses in fp32.
        logits = (q0[:, _on_device(self.rows, str(q0.device))] @ k0.transpose(-1, -2)).float() * scale  # [H, n, L]
        self.probs = torch.softmax(logits, dim=-1)
        self.full = (self.probs.to(self.v.dtype) @ self.v).float()  # [H, n, D]
        self.full_norm = self.full.norm(dim=(-1, -2)).clamp_min(1e-12)
        self.min_mass = min_mass

    def pattern_mask(self, pattern: Pattern) -> Tensor:
        """bool [n, L]: the pattern's mask on the sampled rows (on the attention's device)."""
        return _row_mask(pattern, self.geometry, self._key, str(self.probs.device))

    def errors(self, masks: Tensor, heads: Tensor | None = None) -> Tensor:
        """Relative output error per head (all, or those in ``heads``) under masks [n, L] or [h, n, L]."""
        if heads is None:
            heads = torch.arange(self.num_heads)
        heads = heads.to(self.probs.device)
        kept = self.probs[heads] * masks.to(self.probs.device)
        mass = kept.sum(-1, keepdim=True)  # [h, n, 1]
        result = torch.full((heads.numel(),), float("inf"), device=self.probs.device)
        worth = mass.amin(dim=(-1, -2)) >= self.min_mass
        if worth.any():
            sel = worth.nonzero().flatten()
            hs = heads[sel]
            out = (kept[sel].to(self.v.dtype) @ self.v[hs.to(self.v.device)]).float() / mass[sel].clamp_min(1e-30)
            result[sel] = (out - self.full[hs]).norm(dim=(-1, -2)) / self.full_norm[hs]
        return result


@dataclass
class Recognition:
    """The outcome for one layer: a pattern per head, its estimated error and the cost paid."""

    heads: tuple[Pattern, ...]
    errors: tuple[float, ...]
    seconds: float
    pooled_kinds: dict[int, Tensor] = field(default_factory=dict)  # head -> int8 [MQ, NK]


DEFAULT_POOLED = PooledBlocks(keep=0.2)


@dataclass(frozen=True)
class Recognizer:
    """Picks each head's cheapest candidate whose sampled output error is within ``error_bound``.

    ``every``: re-recognise every this many denoising steps and reuse the decision in between.
    ``pooled``: the dynamic fallback tried before dense (None: straight to dense).
    ``max_cost``: only try candidates whose attention this device runs in at most this fraction of
    dense attention's time at the call's geometry, heads and dtype (1.0: never slower than dense;
    None: choose by error alone). Measured on the first call of each geometry, cached on disk.
    """

    error_bound: float = 0.05
    samples: int = 32
    every: int = 5
    candidates: tuple[Pattern, ...] | None = None
    pooled: PooledBlocks | None = DEFAULT_POOLED
    seed: int = 0
    max_cost: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.error_bound < 1:
            raise ValueError(f"error_bound must be in (0, 1), got {self.error_bound!r}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples!r}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every!r}")
        if self.max_cost is not None and not self.max_cost > 0:
            raise ValueError(f"max_cost must be None or > 0, got {self.max_cost!r}")

    def affordable(self, geometry: Geometry, *, heads: int, head_dim: int, block: int, device: torch.device,
                   dtype: torch.dtype) -> tuple[list[Pattern], PooledBlocks | None]:
        """The candidates, cheapest first, and the pooled fallback, that fit ``max_cost`` on this device.

        Without ``max_cost``: all of them, ordered by the fraction of blocks their layout visits.
        """
        candidates = list(self.candidates if self.candidates is not None else default_candidates(geometry))
        # A candidate that visits every block is never cheaper than dense (and may keep every pair).
        candidates = [p for p in candidates if block_cost(p, geometry, block) < 1.0]
        if self.max_cost is None:
            return sorted(candidates, key=lambda p: block_cost(p, geometry, block)), self.pooled
        tried = candidates + ([self.pooled] if self.pooled is not None else [])
        costs = _cost_model(str(device), dtype).costs(tried, geometry, heads=heads, head_dim=head_dim,
                                                      block=block).tolist()
        pooled = self.pooled if self.pooled is not None and costs[-1] <= self.max_cost else None
        fitting = [(c, p) for p, c in zip(candidates, costs, strict=False) if c <= self.max_cost]
        return [p for _, p in sorted(fitting, key=lambda cp: cp[0])], pooled

    def recognize(self, q: Tensor, k: Tensor, v: Tensor, geometry: Geometry, *, block: int = 128,
                  scale: float | None = None) -> Recognition:
        """Classify the heads of one attention call; q/k/v [B, H, L, D] (batch item 0 is sampled)."""
        start = time.perf_counter()
        num_heads, length = q.shape[1], geometry.seq_len
        candidates, pooled = self.affordable(geometry, heads=num_heads, head_dim=q.shape[-1], block=block,
                                             device=q.device, dtype=q.dtype)
        if not candidates and pooled is None:
            return Recognition((Dense(),) * num_heads, (0.0,) * num_heads, time.perf_counter() - start)
        sampled = SampledAttention(q, k, v, geometry, samples=self.samples, seed=self.seed, scale=scale,
                                   min_mass=1 - 10 * self.error_bound)
        q0, k0 = q[0], k[0]
        chosen: list[Pattern | None] = [None] * num_heads
        err: list[float] = [0.0] * num_heads
        for pattern in candidates:
            open_heads = torch.tensor([h for h in range(num_heads) if chosen[h] is None], dtype=torch.long)
            if open_heads.numel() == 0:
                break
            e = sampled.errors(sampled.pattern_mask(pattern), open_heads)
            for h, value in zip(open_heads.tolist(), e.tolist(), strict=True):
                if value <= self.error_bound:
                    chosen[h], err[h] = pattern, value
        pooled_kinds: dict[int, Tensor] = {}
        open_heads = [h for h in range(num_heads) if chosen[h] is None]
        if open_heads and pooled is not None:
            heads_t = torch.tensor(open_heads, dtype=torch.long, device=q0.device)
            kinds = pooled.block_kinds_from_qk(q0[heads_t], k0[heads_t], geometry, block)
            masks = _block_row_mask(kinds, sampled.rows.to(kinds.device), length, block)
            e = sampled.errors(masks, heads_t)
            for i, (h, value) in enumerate(zip(open_heads, e.tolist(), strict=True)):
                if value <= self.error_bound:
                    chosen[h], err[h] = pooled, value
                    pooled_kinds[h] = kinds[i].cpu()
        for h in range(num_heads):
            if chosen[h] is None:
                chosen[h] = Dense()
        if self.max_cost is not None and not all(isinstance(p, Dense) for p in chosen):
            # The heads run as one mixed layout, which can cost more than each pattern alone.
            cost = _cost_model(str(q.device), q.dtype).layer_cost(chosen, geometry, head_dim=q.shape[-1], block=block)
            if cost > self.max_cost:
                chosen, err, pooled_kinds = [Dense()] * num_heads, [0.0] * num_heads, {}
        return Recognition(tuple(chosen), tuple(err), time.perf_counter() - start, pooled_kinds)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=8)
def _cost_model(device: str, dtype: torch.dtype):
    """One measured cost model per device and dtype (its ratios are cached on disk too)."""
    from headsparse.patterns.cost import CostModel  # it imports the pattern modules this one is among

    return CostModel("measured", device=device, dtype=dtype)


def recognition_layout(rec: Recognition, geometry: Geometry, block: int) -> Layout:
    """One multi-head Layout for a recognised layer (pooled heads keep the blocks chosen then)."""
    return heads_layout(rec.heads, geometry, block, rec.pooled_kinds)
