"""Models and q/k/v whose attention heads have known (planted) patterns.

Wan applies a 3-D rotary embedding to q and k: the head dimension is split into a temporal part
and a height and a width part, each made of channel pairs rotated by ``omega * position``. If q
and k are the same constant vector ``c`` for every token, the attention logit between tokens i and
j becomes ``sum_p |c_p|^2 cos(omega_p (pos_i - pos_j))`` along each pair's axis, which depends only
on the offset between the tokens. Putting the energy of ``c`` in

- high-frequency *temporal* pairs peaks the logit at the same frame (a **spatial** head),
- high-frequency *height and width* pairs peaks it at the same location in every frame
  (a **temporal** head),
- low-frequency pairs of all three axes makes it decay smoothly with distance (a
  **neighborhood** head),
- nowhere (``c = 0``) makes attention uniform (a **global** head: only dense fits it).

:func:`plant_wan` writes these vectors into a real ``WanTransformer3DModel`` (q/k projection
weights zero, biases ``c``, RMS-norm weights that keep ``c`` as it is); :func:`planted_qkv` makes
q/k/v for one attention call directly. Both are for tests and benchmarks of pattern recognition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from headsparse.patterns import Geometry

KINDS = ("spatial", "temporal", "neighborhood", "global")
# The pattern a correct recogniser or search gives each planted kind (global heads need dense).
EXPECTED_PATTERN = {"spatial": "spatial", "temporal": "temporal", "neighborhood": "neighborhood", "global": "dense"}
THETA = 10000.0


def rotary_split(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) channel counts of Wan's rotary embedding for a head dimension."""
    h = w = 2 * (head_dim // 6)
    return head_dim - h - w, h, w


def _pair_frequencies(dim: int) -> Tensor:
    return THETA ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def _axis_amplitudes(dim: int, band: tuple[float, float]) -> Tensor:
    """Energy per channel pair of one axis: 1 on pairs whose frequency lies in ``band``."""
    omega = _pair_frequencies(dim)
    return ((omega >= band[0]) & (omega <= band[1])).double()


# Frequency bands (radians per token) of the pairs that carry each kind's energy.
HIGH = (0.1, 1.0)
LOW = (0.02, 0.25)


# Per kind: (band, logit drop at offset 1 relative to ``sharpness``) for the t, y and x axes.
# The neighborhood kind decays with the squared offset (low frequencies): a drop of 1/16 at offset
# 1 reaches ``sharpness`` at offset 4: a window of about +-4 rows/columns, and (1/4) +-1 frame.
_AXES: dict[str, tuple[tuple[tuple[float, float], float] | None, ...]] = {
    "spatial": ((HIGH, 1.0), None, None),
    "temporal": (None, (HIGH, 1.0), (HIGH, 1.0)),
    "neighborhood": ((LOW, 1 / 4), (LOW, 1 / 16), (LOW, 1 / 16)),
    "global": (None, None, None),
}


def head_vector(kind: str, head_dim: int, sharpness: float) -> Tensor:
    """The constant q = k vector (float64 [head_dim]) that plants ``kind`` in one head.

    Each used axis is scaled so that the softmax logit (with the 1/sqrt(head_dim) attention scale)
    drops by ``sharpness`` (times the kind's axis factor) from a token to its neighbour on that axis.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    pairs = []
    for dim, axis in zip(rotary_split(head_dim), _AXES[kind], strict=True):
        if axis is None:
            pairs.append(torch.zeros(dim // 2, dtype=torch.float64))
            continue
        band, factor = axis
        energy = _axis_amplitudes(dim, band)
        drop = float((energy * (1 - torch.cos(_pair_frequencies(dim)))).sum())
        pairs.append(energy * (sharpness * factor * math.sqrt(head_dim) / drop))
    c = torch.zeros(head_dim, dtype=torch.float64)
    c[0::2] = torch.cat(pairs).sqrt()  # |c_p|^2 per pair
    return c


def random_kinds(layers: int, heads: int, seed: int) -> list[list[str]]:
    """A reproducible random planted kind per (layer, head)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(KINDS), (layers, heads), generator=g)
    return [[KINDS[int(i)] for i in row] for row in idx]


def _labels(labels: Sequence[Sequence[str]] | str | None, layers: int, heads: int, seed: int) -> list[list[str]]:
    if labels is None:
        return random_kinds(layers, heads, seed)
    if isinstance(labels, str):
        return [[labels] * heads for _ in range(layers)]
    rows = [list(r) for r in labels]
    if len(rows) != layers or any(len(r) != heads for r in rows):
        raise ValueError(f"labels must be {layers} layers x {heads} heads")
    for r in rows:
        for k in r:
            if k not in KINDS:
                raise ValueError(f"unknown planted kind {k!r}; kinds: {KINDS}")
    return rows


@torch.no_grad()
def plant_wan(model: nn.Module, labels: Sequence[Sequence[str]] | str | None = None, *, sharpness: float = 8.0,
              seed: int = 0) -> list[list[str]]:
    """Plant a pattern in every self-attention head of a ``WanTransformer3DModel`` (in place).

    ``labels[layer][head]`` is one of :data:`KINDS` (a single string: every head; None: random).
    Returns the labels. Only q/k of ``attn1`` change: values, outputs and cross-attention keep
    their weights, so the model still mixes tokens the way its heads say.
    """
    blocks = model.blocks
    heads = blocks[0].attn1.heads
    head_dim = blocks[0].attn1.to_q.out_features // heads
    rows = _labels(labels, len(blocks), heads, seed)
    for block, row in zip(blocks, rows, strict=True):
        attn = block.attn1
        c = torch.cat([head_vector(kind, head_dim, sharpness) for kind in row])
        rms = float(c.pow(2).mean().sqrt())
        for proj, norm in ((attn.to_q, attn.norm_q), (attn.to_k, attn.norm_k)):
            proj.weight.zero_()
            proj.bias.copy_(c.to(proj.bias.dtype))
            if norm is not None and getattr(norm, "weight", None) is not None:
                # RMSNorm(c) * w == c when w == rms(c) (every token has the same c).
                norm.weight.fill_(rms if rms > 0 else 1.0)
    return rows


def tiny_planted_wan(labels: Sequence[Sequence[str]], *, head_dim: int = 64, seed: int = 0) -> nn.Module:
    """A small ``WanTransformer3DModel`` (one block per row of ``labels``, one head per entry) with
    its heads planted; other weights random from ``seed`` (the global RNG is left as it was)."""
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=len(labels[0]), attention_head_dim=head_dim, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=16, ffn_dim=64, num_layers=len(labels), cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
        ).eval()
    plant_wan(model, labels)
    return model


def wan_rotary(geometry: Geometry, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos, sin [seq_len, head_dim] of Wan's rotary embedding (text tokens: no rotation)."""
    dims = rotary_split(head_dim)
    t, y, x, is_text = geometry.coords(torch.arange(geometry.seq_len))
    angles = []
    for pos, d in zip((t, y, x), dims, strict=True):
        angles.append(pos.clamp(min=0).double()[:, None] * _pair_frequencies(d)[None, :])
    theta = torch.cat(angles, dim=1).repeat_interleave(2, dim=1)
    theta[is_text] = 0
    return theta.cos(), theta.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs, as Wan does."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out


def planted_qkv(geometry: Geometry, kinds: Sequence[str], *, head_dim: int = 64, batch: int = 1,
                sharpness: float = 8.0, dtype: torch.dtype = torch.float32, seed: int = 0
                ) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v [batch, heads, seq_len, head_dim] whose head h attends like ``kinds[h]``.

    Video tokens carry the planted rotary q = k; text tokens get q = k = 0; v is random.
    """
    cos, sin = wan_rotary(geometry, head_dim)
    c = torch.stack([head_vector(kind, head_dim, sharpness) for kind in kinds])  # [H, D]
    qk = apply_rotary(c[:, None, :].expand(-1, geometry.seq_len, -1), cos[None], sin[None])
    _, _, _, is_text = geometry.coords(torch.arange(geometry.seq_len))
    qk[:, is_text] = 0
    qk = qk[None].expand(batch, -1, -1, -1).to(dtype).contiguous()
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, len(kinds), geometry.seq_len, head_dim, generator=g).to(dtype)
    return qk, qk.clone(), v
