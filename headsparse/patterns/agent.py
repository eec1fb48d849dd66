"""agent: Agent Attention, training-free (AgentSD's recipe), as a per-head pattern with its own executor.

A few *agent* tokens (the queries average-pooled over the token grid) first aggregate the keys and
values, then every query reads from the agents::

    A     = adaptive_avg_pool(Q on the (t, y, x) grid)          n agents, one per pool cell
    V_A   = softmax(A K^T * s) V                                 agents aggregate (grid keys)
    O     = softmax(Q A^T * s ** p) V_A  +  c * V                queries read the agents

with ``s`` the attention's own scale (``head_dim ** -0.5`` unless the model passes another), ``p =
broadcast_scale_power`` (AgentSD's ``k_scale2`` = 0.3: the query->agent logits are multiplied by
``s ** 0.3``, larger than ``s``, so that softmax stays sharp although averaged agents have smaller dot
products than single tokens) and ``c = shortcut`` (AgentSD's ``k_shortcut`` = 0.075: each query adds
that much of its own value). The cost is O(N * n * d) instead of O(N^2 * d). Source: Han et al.,
"Agent Attention" (ECCV 2024) and its AgentSD patch (``agentsd/patch.py``: ``sim1 = agent k^T *
scale``, ``sim2 = q agent^T * scale ** k_scale2``, ``out + v * k_shortcut``). AgentSD makes its agents
by token merging and applies them only when agents are fewer than half the tokens; here agents are
pooled queries, as in the trained Agent-DeiT (``AdaptiveAvgPool2d`` over the query grid), and the
pattern runs wherever a plan puts it. In RoPE models the pooled queries are the rotated ones (what
the attention call receives). The trained models' extras (a depthwise convolution on V, learned
agent/position biases) need training and are not applicable training-free; they are not implemented.

Text / prefix tokens (class and register tokens of a ViT, text in joint attention), with
``text_dense=True``:

- a text query attends every key exactly (dense softmax);
- a grid query keeps the text keys exactly: its output mixes the exact softmax over the text keys
  (log-mass ``lse_T``) with the agent output for the grid keys, weighted by their softmax masses,
  ``O = g * O_agent + (1 - g) * O_text`` with ``g = sigmoid(lse_G - lse_T)``. The grid keys' log-mass
  ``lse_G`` is estimated from the agents: the agents' own log-sum-exp over the grid keys, averaged
  with the query's agent weights ``softmax(Q A^T s^p)``. Then the shortcut ``c * V`` is added.

With ``text_dense=False`` text queries attend only text keys and grid queries only the agents.
Agents never include text tokens. A pool larger than the grid is clipped to it per axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from headsparse.kernels.layout import Layout
from headsparse.patterns.base import Pattern
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.registry import register


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@register
@dataclass(frozen=True)
class Agent(Pattern):
    """Agent attention with ``agents`` pooled queries per head and AgentSD's scales (module docstring).

    ``agents``: an int n is a sqrt(n) x sqrt(n) spatial pool (e.g. 49 = 7x7; a video's frames are
    averaged together); a (t, y, x) triple pools video over time too, e.g. (4, 7, 7).
    """

    agents: Any = 49
    broadcast_scale_power: float = 0.3
    shortcut: float = 0.075

    name = "agent"
    # No static mask: the agents come from each call's queries (the search and the recogniser skip it).
    dynamic: ClassVar[bool] = True
    grid = ({"agents": 49}, {"agents": 64})

    def __post_init__(self) -> None:
        agents = self.agents
        if isinstance(agents, int) and not isinstance(agents, bool) and agents >= 1:
            side = math.isqrt(agents)
            if side * side != agents:
                raise ValueError(f"agent.agents={agents} must be a perfect square (a side x side pool), or a "
                                 "(t, y, x) triple")
            agents = (1, side, side)
        elif isinstance(agents, (tuple, list)):
            agents = tuple(agents)
        object.__setattr__(self, "agents", agents)
        super().__post_init__()

    def check(self) -> None:
        super().check()
        a = self.agents
        if not (isinstance(a, tuple) and len(a) == 3 and all(isinstance(n, int) and not isinstance(n, bool)
                                                             and n >= 1 for n in a)):
            raise ValueError(f"agent.agents must be a positive perfect square or a (t, y, x) triple of integers >= 1, "
                             f"got {self.agents!r}")
        if not _is_number(self.broadcast_scale_power) or self.broadcast_scale_power < 0:
            raise ValueError(f"agent.broadcast_scale_power must be a number >= 0, got {self.broadcast_scale_power!r}")
        if not _is_number(self.shortcut):
            raise ValueError(f"agent.shortcut must be a number, got {self.shortcut!r}")

    def pool_shape(self, geometry: Geometry) -> tuple[int, int, int]:
        """The (t, y, x) agent grid on this geometry: ``agents`` clipped to the token grid."""
        dims = (geometry.frames, geometry.height, geometry.width)
        return tuple(min(a, n) for a, n in zip(self.agents, dims, strict=True))  # type: ignore[return-value]

    def video_mask(self, g, tq, yq, xq, tk, yk, xk) -> Tensor:
        raise TypeError("agent attention has no token mask: every query reads every key through the agents "
                        "(run it with headsparse.patterns.agent.agent_attention)")

    def layout(self, geometry: Geometry, *, num_heads: int = 1, block_m: int = 128, block_n: int = 128) -> Layout:
        raise TypeError("agent attention is not a block-sparse Layout; it runs in its own executor "
                        "(headsparse.patterns.agent.agent_attention)")


def agent_tokens(q: Tensor, geometry: Geometry, pattern: Agent) -> Tensor:
    """[B, H, n, D]: the queries of the grid tokens average-pooled to ``pattern.pool_shape(geometry)``."""
    b, h, _, d = q.shape
    start, count = geometry.video_start, geometry.video_len
    grid = q[:, :, start : start + count].reshape(b * h, geometry.frames, geometry.height, geometry.width, d)
    pooled = F.adaptive_avg_pool3d(grid.permute(0, 4, 1, 2, 3).float(), pattern.pool_shape(geometry))
    return pooled.flatten(2).transpose(1, 2).reshape(b, h, -1, d).to(q.dtype)


def _text_slice(geometry: Geometry) -> slice:
    if geometry.text_position == "prefix":
        return slice(0, geometry.text_len)
    return slice(geometry.video_start + geometry.video_len, geometry.seq_len)


def agent_attention(q: Tensor, k: Tensor, v: Tensor, geometry: Geometry, pattern: Agent, *,
                    scale: float | None = None) -> Tensor:
    """Agent attention of q/k/v [B, H, L, D] on ``geometry``; the output has q's shape and dtype.

    Products run in the inputs' dtype, softmaxes and the mixing in float32.
    """
    if not isinstance(pattern, Agent):
        raise TypeError(f"pattern must be an Agent, got {type(pattern).__name__}")
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be [batch, heads, seq, head_dim] of one shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] != geometry.seq_len:
        raise ValueError(f"q has {q.shape[2]} tokens but the geometry {geometry} has {geometry.seq_len}")
    s = scale if scale is not None else q.shape[-1] ** -0.5
    start, count = geometry.video_start, geometry.video_len
    grid = slice(start, start + count)
    qg, kg, vg = q[:, :, grid], k[:, :, grid], v[:, :, grid]
    agents = agent_tokens(q, geometry, pattern)                                       # [B, H, n, D]
    # Few passes over the big [*, n, G] / [*, G, n] tensors: a fused softmax each, no separate logsumexp.
    gather = ((agents * s) @ kg.transpose(-1, -2)).float()                            # [B, H, n, G]
    gather_probs = torch.softmax(gather, dim=-1)
    agent_values = gather_probs.to(v.dtype) @ vg                                      # [B, H, n, Dv]
    broadcast = (qg @ (agents * s**pattern.broadcast_scale_power).transpose(-1, -2)).float()
    weights = torch.softmax(broadcast, dim=-1)                                        # [B, H, G, n]
    out_grid = weights @ agent_values.float()                                         # [B, H, G, Dv]
    out = q.new_empty((*q.shape[:3], v.shape[-1]))
    if geometry.text_len:
        text = _text_slice(geometry)
        qt, kt, vt = q[:, :, text], k[:, :, text], v[:, :, text]
        if pattern.text_dense:
            to_text = (qg @ kt.transpose(-1, -2)).float() * s                         # [B, H, G, T]
            lse_text = torch.logsumexp(to_text, dim=-1, keepdim=True)
            out_text = torch.softmax(to_text, dim=-1) @ vt.float()
            # Each agent's log-sum-exp over the grid keys, from its softmax: lse = max logit - log(max prob).
            lse_agents = gather.amax(-1, keepdim=True) - gather_probs.amax(-1, keepdim=True).log()
            gate = torch.sigmoid(weights @ lse_agents - lse_text)                     # [B, H, G, 1]
            out_grid = out_grid.sub_(out_text).mul_(gate).add_(out_text)
            out[:, :, text] = F.scaled_dot_product_attention(qt, k, v, scale=s)
        else:
            out[:, :, text] = F.scaled_dot_product_attention(qt, kt, vt, scale=s)
    if pattern.shortcut:
        out_grid = out_grid.add_(vg, alpha=pattern.shortcut)
    out[:, :, grid] = out_grid
    return out
