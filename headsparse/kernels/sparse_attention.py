"""``sparse_attention``: the one entry point that runs a Layout on whatever device q lives on.

On CUDA, heads that keep every pair run flash SDPA, very dense layouts SDPA under their mask, and the
rest the Triton kernel (:func:`choose_backend`). On CPU: a layout that keeps every pair runs plain SDPA; one
whose query blocks share keys in large groups runs the grouped executor (batched SDPA per group);
others run compiled FlexAttention; a layer whose heads want different executors is split by head
(dense heads run plain SDPA). The eager masked executor serves gradients, the log-sum-exp
and a failed compile. The group size from which grouped wins, and FlexAttention's compute dtype,
are this machine's (:mod:`headsparse.kernels.cpu_profile`). The layout's
token permutation is applied before and undone after, so callers see the original token order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from headsparse.kernels import cpu_tuning
from headsparse.kernels.cpu_profile import cpu_profile
from headsparse.kernels.flex import flex_block_sparse_attention
from headsparse.kernels.grouped import grouped_block_sparse_attention, mean_group_rows
from headsparse.kernels.layout import Layout
from headsparse.kernels.masked import masked_block_attention
from headsparse.kernels.permute import permute_tokens, triton_available
from headsparse.kernels.triton_attention import triton_block_sparse_attention
from headsparse.kernels.triton_configs import kernel_blocks

logger = logging.getLogger(__name__)

Backend = Literal["auto", "triton", "grouped", "flex", "masked"]

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_flex_compile_failed = False


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, layout: Layout) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, seq, head_dim], got shape {tuple(t.shape)}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads and head_dim"
        )
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a headsparse Layout, got {type(layout).__name__}")
    b, h, lq, _ = q.shape
    if layout.num_heads != h:
        raise ValueError(f"layout has {layout.num_heads} heads but q has {h}")
    if layout.batch not in (1, b):
        raise ValueError(f"layout batch {layout.batch} must be 1 or the input batch {b}")
    if (layout.q_len, layout.kv_len) != (lq, k.shape[2]):
        raise ValueError(
            f"layout was built for q_len={layout.q_len}, kv_len={layout.kv_len} but got "
            f"q_len={lq}, kv_len={k.shape[2]}"
        )


# On CUDA, a layout visiting at least this share of dense attention's work runs SDPA under its mask
# (memory-efficient attention) instead of the Triton kernel. A documented default until the device check
# (benchmarks/gpu_check.py) measures the crossover on a GPU.
CUDA_MASKED_CROSSOVER = 0.9


def device_kind(device: torch.device) -> str:
    """"cuda" where the Triton kernel runs natively, else "cpu" (a seam tests patch to exercise CUDA dispatch)."""
    return "cuda" if device.type == "cuda" else "cpu"


def choose_backend(q: Tensor, layout: Layout, *, return_lse: bool = False) -> str:
    """The executor ``backend="auto"`` uses for these inputs.

    CUDA (float16 / bfloat16; float32 runs SDPA, masked where sparse): heads that keep every pair run
    ``F.scaled_dot_product_attention`` (flash / cuDNN), layouts denser
    than :data:`CUDA_MASKED_CROSSOVER` SDPA under their mask, the rest the Triton kernel; a layer whose heads
    want different ones is split by head. A layout built on the device per call (a dynamic block selection)
    goes straight to the Triton kernel: asking whether it is dense would read it back. CPU: see the module
    docstring.
    """
    kind = device_kind(q.device)
    if kind == "cuda" and q.dtype == torch.float32:
        # The kernel's float32 (IEEE) variant has no launch config that fits: at D=128 it needs 232 KB of
        # shared memory on sm_89 with the bf16 tiles and spills 1.5 KB even at 32x32 (gpu_static), so
        # float32 runs SDPA, under the layout's mask where it is not dense.
        return "sdpa" if layout.checked and not return_lse and layout.is_dense() else "masked"
    if kind == "cuda" and not layout.checked and _triton_runs(layout, q.device):
        return "triton"
    if layout.is_dense() and not return_lse:
        return "sdpa"
    if kind == "cpu":
        # Compiled FlexAttention on CPU is inference-only and cannot return the log-sum-exp.
        needs_eager = return_lse or (torch.is_grad_enabled() and q.requires_grad)
        if needs_eager:
            return "masked"
    elif return_lse:
        return "triton" if _triton_runs(layout, q.device) else "masked"
    if layout.num_heads > 1 and len(head_groups(layout, kind)) > 1:
        return "per-head"
    if kind == "cpu":
        tuned = cpu_tuning.tuned_choice(layout, q)
        if tuned is not None:
            return tuned
    return _executor(layout, kind, q.device)


def _triton_runs(layout: Layout, device: torch.device) -> bool:
    """The Triton kernel runs here and its config table covers the layout's block sizes."""
    return triton_available(device) and kernel_blocks(layout.block_m, layout.block_n)


def _executor(layout: Layout, kind: str, device: torch.device | None = None) -> str:
    """The executor for a layout whose heads all want the same (decided once per layout and kind)."""
    key = f"executor_{kind}"
    if key not in layout._cache or kind == "cpu":  # the CPU choice can change (a failed FlexAttention compile)
        layout._cache[key] = _decide_executor(layout, kind, device)
    return layout._cache[key]


def _decide_executor(layout: Layout, kind: str, device: torch.device | None) -> str:
    if layout.is_dense():
        return "sdpa"
    if kind == "cuda":
        if float(layout.block_density().max()) >= CUDA_MASKED_CROSSOVER:
            return "masked"
        return "triton" if device is None or _triton_runs(layout, device) else "masked"
    if mean_group_rows(layout) >= cpu_profile().grouped_min_rows:
        return "grouped"
    # Masked dense SDPA never beat FlexAttention on this CPU (at 75% of blocks: 1.60 vs 1.19 of
    # dense), so it only serves where compile fails.
    return "masked" if _flex_compile_failed else "flex"


def head_groups(layout: Layout, kind: str = "cpu") -> list[tuple[str, list[int], Layout]]:
    """(executor, heads, their layout) for the heads of a layer, grouped by the executor each wants.

    A layer mixing patterns (dense, spatial, temporal, neighbourhood heads...) would otherwise run every
    head through the executor that suits the mix as a whole: dense heads through masked tiles instead of
    flash (CUDA) or large SDPA tiles (CPU). Decided per structure (heads sharing one decide together);
    cached on the layout.
    """
    key = f"head_groups_{kind}"
    if key not in layout._cache:
        by_choice: dict[str, list[int]] = {}
        structures = layout.head_structures().tolist()
        choice_of: dict[int, str] = {}
        for h in range(layout.num_heads):
            s = structures[h]
            if s not in choice_of:
                choice_of[s] = _executor(layout.select_heads([h]), kind)
            by_choice.setdefault(choice_of[s], []).append(h)
        layout._cache[key] = [
            (choice, heads, layout if len(by_choice) == 1 else layout.select_heads(heads))
            for choice, heads in by_choice.items()
        ]
    return layout._cache[key]


def cpu_head_groups(layout: Layout) -> list[tuple[str, list[int], Layout]]:
    """:func:`head_groups` on the CPU."""
    return head_groups(layout, "cpu")


HeadGroupRun = Callable[[Tensor, Tensor, Tensor], Tensor]


def attention_by_head_groups(q: Tensor, k: Tensor, v: Tensor,
                             groups: Sequence[tuple[list[int], HeadGroupRun]]) -> Tensor:
    """Attention of q/k/v [B, H, L, D] run group by group of heads: each group's heads are picked out,
    run by its function, and written back in place (a layer whose heads need different executors)."""
    out = q.new_empty((*q.shape[:3], v.shape[-1]))
    for heads, run in groups:
        idx = head_index(tuple(heads), str(q.device))
        out.index_copy_(1, idx, run(q.index_select(1, idx), k.index_select(1, idx), v.index_select(1, idx)))
    return out


@functools.lru_cache(maxsize=1024)
def head_index(heads: tuple[int, ...], device: str) -> Tensor:
    """The head indices as a tensor on ``device``, made once (no host-to-device copy per call)."""
    return torch.tensor(heads, device=device)


def _per_head_groups(q: Tensor, k: Tensor, v: Tensor, layout: Layout, scale: float | None) -> Tensor:
    def executor(choice: str, sub: Layout) -> HeadGroupRun:
        if choice == "sdpa":
            return lambda qs, ks, vs: F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        # The CPU executors of a group are timed on its first large call (cpu_tuning), so they go through "auto".
        backend = "auto" if choice in cpu_tuning.CANDIDATES else choice
        return lambda qs, ks, vs: sparse_attention(qs, ks, vs, sub, scale=scale, backend=backend)  # type: ignore

    groups = [(heads, executor(choice, sub)) for choice, heads, sub in head_groups(layout, device_kind(q.device))]
    return attention_by_head_groups(q, k, v, groups)


def sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float | None = None,
    return_lse: bool = False, backend: Backend = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of q/k/v [B, H, L, D] restricted to ``layout``, in the original token order.

    Returns the output [B, H, Lq, D] in q's dtype, and with ``return_lse`` the float32
    log-sum-exp [B, H, Lq] (natural log; -inf for a query that keeps no key, whose output is 0).
    """
    _check_inputs(q, k, v, layout)
    layout = layout.to(q.device)
    chosen = choose_backend(q, layout, return_lse=return_lse) if backend == "auto" else backend
    if chosen == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if chosen == "per-head":
        return _per_head_groups(q, k, v, layout, scale)
    if layout.ordered and layout.batch > 1:
        # Token orders are per structure and the structures per batch item: run the items one by one.
        items = [sparse_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], layout.batch_item(i), scale=scale,
                                  return_lse=return_lse, backend=chosen) for i in range(layout.batch)]
        if return_lse:
            return torch.cat([o for o, _ in items]), torch.cat([lse for _, lse in items])
        return torch.cat(items)
    q_index, kv_index = layout.order_index("q"), layout.order_index("kv")
    if q_index is not None:
        q = permute_tokens(q, q_index)
    if kv_index is not None:
        k, v = permute_tokens(k, kv_index), permute_tokens(v, kv_index)
    if (backend == "auto" and chosen in cpu_tuning.CANDIDATES and not return_lse and device_kind(q.device) == "cpu"
            and cpu_tuning.tuned_choice(layout, q) is None and cpu_tuning.worth_tuning(layout, q)):
        # Each CPU executor named explicitly, so a failing one raises and is dropped rather than replaced.
        _, result = cpu_tuning.tune(layout, q, lambda name: _run_executor(q, k, v, layout, name, name, scale, False))
    else:
        result = _run_executor(q, k, v, layout, chosen, backend, scale, return_lse)
    if q_index is None:
        return result
    inv = layout.order_index("q_inverse")  # [H, q_len]: each token's position; padding rows are cropped
    if return_lse:
        out, lse = result
        return permute_tokens(out, inv), torch.gather(lse, 2, inv[None].expand(lse.shape[0], -1, -1))
    return permute_tokens(result, inv)


def _run_executor(q: Tensor, k: Tensor, v: Tensor, layout: Layout, chosen: str, backend: Backend,
                  scale: float | None, return_lse: bool) -> Tensor | tuple[Tensor, Tensor]:
    """The ``chosen`` executor on q/k/v already in the layout's token order (the output stays in that order)."""
    global _flex_compile_failed
    if chosen == "triton":
        if not triton_available(q.device):
            raise RuntimeError(
                f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); q is on {q.device}"
            )
        result = triton_block_sparse_attention(q, k, v, layout, scale=scale, return_lse=return_lse)
    elif chosen == "flex":
        try:
            result = flex_block_sparse_attention(q, k, v, layout, scale=scale, return_lse=return_lse)
        except Exception as exc:
            if backend == "flex":
                raise
            logger.warning("compiled FlexAttention failed (%s); using the eager masked executor", exc)
            _flex_compile_failed = True
            result = masked_block_attention(q, k, v, layout, scale=scale, return_lse=return_lse)
    elif chosen == "grouped":
        if return_lse:
            raise ValueError("the grouped executor cannot return the log-sum-exp; use backend='masked'")
        result = grouped_block_sparse_attention(q, k, v, layout, scale=scale)
    elif chosen == "masked":
        result = masked_block_attention(q, k, v, layout, scale=scale, return_lse=return_lse)
    else:
        raise ValueError(
            f"backend must be one of 'auto', 'triton', 'grouped', 'flex', 'masked'; got {backend!r}"
        )
    return result
