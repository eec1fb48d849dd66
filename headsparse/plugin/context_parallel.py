"""headsparse inside diffusers context parallelism (``ContextParallelConfig`` + ``enable_parallelism``).

Under Ulysses each rank all-to-alls q/k/v so that it holds the *full* sequence for ``H / N`` heads,
runs an attention "forward op", and all-to-alls the output back. We run diffusers' own
``TemplatedUlyssesAttention`` with our forward op, so the communication stays diffusers' and only
the per-rank attention becomes sparse. Two facts make the per-rank call correct:

- heads: rank ``r`` of the Ulysses mesh holds global heads ``[r * H/N, (r + 1) * H/N)``, so it
  takes exactly those heads' patterns from the plan (recognition, in ``auto`` mode, sees only its
  own heads and decides for them);
- token order: diffusers splits each input stream along the sequence before attention, so the
  gathered sequence is the ranks' local sequences one after another. For a video-only model that
  is the original order. For joint text + video/image attention each local sequence is
  [text chunk, video chunk] (or video then text), so the gathered one interleaves them; we gather
  it back into the model's own order (all text, then the whole grid, or the reverse), run the
  layout there, and scatter the output back.

The token grid comes from the transformer's own (unsplit) inputs: diffusers splits them inside
``forward`` (FLUX) or at a block's input (Wan), after headsparse's forward pre-hook has read them.

Not supported, each run dense through diffusers with a warning naming why (at patch time when the
model already has its parallel config, else on the first attention call): ring attention (ring
degree above 1: K/V chunks travel round the ring and partial results merge by log-sum-exp, which a
per-head layout over the whole sequence does not split into in this version) and
``ulysses_anything`` (ranks may hold unequal sequence lengths, so the gathered token order is not
known from the geometry alone). Calibration for ``headsparse.search`` needs every head in one
process and is refused under context parallelism.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from headsparse.patterns import Geometry


def cp_config(parallel_config: Any) -> Any | None:
    """The ``ContextParallelConfig`` of a run that really splits the sequence (a degree above 1), else None."""
    cp = getattr(parallel_config, "context_parallel_config", None)
    if cp is None or int(cp.ring_degree or 1) * int(cp.ulysses_degree or 1) <= 1:
        return None
    return cp


def unsupported_reason(cp: Any) -> str | None:
    """Why this context-parallel setting runs dense under headsparse (None: Ulysses, runs sparse)."""
    if int(cp.ring_degree or 1) > 1:
        return (f"ring attention (ring_degree={cp.ring_degree}) merges partial results of K/V chunks, which "
                "headsparse's per-head layouts do not split into; use ulysses_degree only to run sparse")
    if getattr(cp, "ulysses_anything", False):
        return "ulysses_anything lets ranks hold unequal sequence lengths; use plain ulysses_degree to run sparse"
    return None


def ulysses_head_offset(cp: Any, local_heads: int) -> int:
    """The global index of this rank's first head under Ulysses."""
    return int(cp._ulysses_local_rank) * local_heads


def joint_order(geometry: Geometry, world: int) -> Tensor | None:
    """Positions in the gathered (rank-interleaved) sequence of the tokens in the model's own order.

    ``gathered[order]`` is the sequence in the model's order. None when nothing is interleaved (no
    text), or when the text or the grid does not split evenly over ``world`` ranks (diffusers
    refuses to split such inputs, so the local layout is unknown; the caller then runs dense).
    """
    text, video = geometry.text_len, geometry.video_len
    if text == 0 or text % world or video % world:
        return None
    t, g = text // world, video // world
    starts = torch.arange(world)[:, None] * (t + g)  # where each rank's local sequence begins
    text_first = geometry.text_position == "prefix"
    text_pos = (starts + (0 if text_first else g) + torch.arange(t)).flatten()
    video_pos = (starts + (t if text_first else 0) + torch.arange(g)).flatten()
    return torch.cat([text_pos, video_pos] if text_first else [video_pos, text_pos])


def _no_backward(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("headsparse's sparse attention is inference-only; training runs dense attention")


def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None, parallel_config: Any,
                      run_local: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
    """diffusers' Ulysses all-to-all around ``run_local(q, k, v)`` on (B, S_full, H_local, D) tensors.

    ``q``/``k``/``v`` are this rank's (B, S_local, H, D); the result is its (B, S_local, H, D) output.
    """
    from diffusers.models.attention_dispatch import TemplatedUlyssesAttention

    def forward_op(ctx: Any, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None,
                   dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool, return_lse: bool,
                   _save_ctx: bool = True, _parallel_config: Any = None) -> Tensor:
        return run_local(query, key, value)

    with torch.no_grad():
        return TemplatedUlyssesAttention.apply(q, k, v, None, 0.0, False, scale, False, False, forward_op,
                                               _no_backward, parallel_config)
