"""Online recognition of each head's pattern (Sparse VideoGen's profiling, RainFusion's ARM).

From a few sampled query rows per head, compute their exact attention over all keys and the
output they produce; for each candidate pattern (cheapest first, by the fraction of blocks its
layout visits) estimate what it would output on those rows with its mask; the first candidate
whose relative output error stays within ``error_bound`` wins. Heads no static candidate fits may
take the dynamic ``pooled`` selection under the same test; the rest stay dense. The cost is a
few matrix products of ``samples`` rows against the keys: a small fraction of the attention.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from headsparse.kernels.layout import Layout
from headsparse.patterns.base import Pattern
from headsparse.patterns.dense import Dense
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.neighborhood import Neighborhood
from headsparse.patterns.pooled import PooledBlocks
from headsparse.patterns.spatial import Spatial
from headsparse.patterns.stripes import Textural
from headsparse.patterns.temporal import Temporal


def default_candidates(geometry: Geometry) -> tuple[Pattern, ...]:
    """Spatial, temporal, neighborhood and textural settings that fit the geometry."""
    def odd_fit(k: int, n: int) -> int:
        return min(k, n if n % 2 else max(1, n - 1))

    dims = (geometry.frames, geometry.height, geometry.width)
    hoods = {tuple(odd_fit(k, n) for k, n in zip(kernel, dims, strict=True)) for kernel in ((3, 9, 9), (5, 15, 15))}
    return (
        Spatial(first_frame_sink=False), Spatial(), Spatial(frame_band=1),
        Temporal(), Temporal(spatial_window=3),
        *(Neighborhood(kernel_size=k) for k in sorted(hoods)),
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


@functools.lru_cache(maxsize=1024)
def _row_mask(pattern: Pattern, geometry: Geometry, rows: tuple[int, ...]) -> Tensor:
    idx = torch.arange(geometry.seq_len)
    return pattern.mask(geometry, torch.tensor(rows)[:, None], idx[None, :])


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
    """

    error_bound: float = 0.05
    samples: int = 32
    every: int = 5
    candidates: tuple[Pattern, ...] | None = None
    pooled: PooledBlocks | None = DEFAULT_POOLED
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.error_bound < 1:
            raise ValueError(f"error_bound must be in (0, 1), got {self.error_bound!r}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples!r}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every!r}")

    def recognize(self, q: Tensor, k: Tensor, v: Tensor, geometry: Geometry, *, block: int = 128,
                  scale: float | None = None) -> Recognition:
        """Classify the heads of one attention call; q/k/v [B, H, L, D] (batch item 0 is sampled)."""
        start = time.perf_counter()
        q0, k0, v0 = q[0], k[0], v[0]
        num_heads, length, dim = q0.shape
        if length != geometry.seq_len:
            raise ValueError(f"q has {length} tokens, the geometry {geometry.seq_len}")
        rows = sample_rows(geometry, self.samples, self.seed)
        scale = scale if scale is not None else 1 / math.sqrt(dim)
        # Products run in the inputs' dtype (fast bf16 on CPUs that have it); softmax and masses in fp32.
        logits = (q0[:, rows] @ k0.transpose(-1, -2)).float() * scale  # [H, n, L]
        probs = torch.softmax(logits, dim=-1)
        full = (probs.to(v0.dtype) @ v0).float()  # [H, n, D]
        full_norm = full.norm(dim=(-1, -2)).clamp_min(1e-12)
        min_mass = 1 - 10 * self.error_bound

        def errors(masks: Tensor, heads: Tensor) -> Tensor:
            """Relative output error per head in ``heads`` under masks [n, L] or [len(heads), n, L].

            Heads whose sampled rows lose much attention mass (below ``1 - 10 * error_bound``) are
            rejected without computing their output (inf), which keeps recognition cheap.
            """
            kept = probs[heads] * masks
            mass = kept.sum(-1, keepdim=True)  # [h, n, 1]
            result = torch.full((heads.numel(),), float("inf"), device=probs.device)
            worth = mass.amin(dim=(-1, -2)) >= min_mass
            if worth.any():
                sel = worth.nonzero().flatten()
                hs = heads[sel]
                out = (kept[sel].to(v0.dtype) @ v0[hs]).float() / mass[sel].clamp_min(1e-30)
                result[sel] = (out - full[hs]).norm(dim=(-1, -2)) / full_norm[hs]
            return result

        chosen: list[Pattern | None] = [None] * num_heads
        err: list[float] = [0.0] * num_heads
        candidates = self.candidates if self.candidates is not None else default_candidates(geometry)
        key = tuple(rows.tolist())
        for pattern in sorted(candidates, key=lambda p: block_cost(p, geometry, block)):
            open_heads = torch.tensor([h for h in range(num_heads) if chosen[h] is None], dtype=torch.long)
            if open_heads.numel() == 0:
                break
            e = errors(_row_mask(pattern, geometry, key).to(probs.device), open_heads.to(probs.device))
            for h, value in zip(open_heads.tolist(), e.tolist(), strict=True):
                if value <= self.error_bound:
                    chosen[h], err[h] = pattern, value
        pooled_kinds: dict[int, Tensor] = {}
        open_heads = [h for h in range(num_heads) if chosen[h] is None]
        if open_heads and self.pooled is not None:
            heads_t = torch.tensor(open_heads, dtype=torch.long, device=q0.device)
            kinds = self.pooled.block_kinds_from_qk(q0[heads_t], k0[heads_t], geometry, block)
            masks = _block_row_mask(kinds, rows.to(kinds.device), length, block)
            e = errors(masks.to(probs.device), heads_t)
            for i, (h, value) in enumerate(zip(open_heads, e.tolist(), strict=True)):
                if value <= self.error_bound:
                    chosen[h], err[h] = self.pooled, value
                    pooled_kinds[h] = kinds[i].cpu()
        for h in range(num_heads):
            if chosen[h] is None:
                chosen[h] = Dense()
        return Recognition(tuple(chosen), tuple(err), time.perf_counter() - start, pooled_kinds)  # type: ignore[arg-type]


def recognition_layout(rec: Recognition, geometry: Geometry, block: int) -> Layout:
    """One multi-head Layout for a recognised layer (pooled heads keep the blocks chosen then)."""
    parts = []
    for h, pattern in enumerate(rec.heads):
        if h in rec.pooled_kinds:
            parts.append(Layout.from_block_kinds(rec.pooled_kinds[h][None], None, q_len=geometry.seq_len,
                                                 kv_len=geometry.seq_len, block_m=block, block_n=block))
        else:
            parts.append(pattern.layout(geometry, num_heads=1, block_m=block, block_n=block))
    return parts[0] if len(parts) == 1 else Layout.concat_heads(parts)
