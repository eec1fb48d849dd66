"""Assignment: the cheapest pattern per head under an error budget (Lagrangian relaxation).

For a multiplier ``lam`` every head independently takes ``argmin cost[c] + lam * error[h, c]``;
a larger ``lam`` buys lower error with more time. Bisection finds the smallest ``lam`` whose mean
error over all heads meets ``budget``; layers whose own mean error still exceeds ``layer_budget``
are re-solved alone the same way. Heads whose every sparse candidate is worse than the budget end
up dense (cost 1, error 0) by the same rule, so which layers and steps stay dense follows from the
measured errors rather than a fixed warm-up.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _choose(errors: Tensor, costs: Tensor, lam: float) -> Tensor:
    score = costs + lam * errors  # [..., C]
    return score.argmin(-1)


def _solve(errors: Tensor, costs: Tensor, budget: float, iters: int = 60) -> Tensor:
    """Choices [...] (indices into C) with mean chosen error <= budget, cheapest found by bisection."""
    def mean_error(choice: Tensor) -> float:
        return float(errors.gather(-1, choice[..., None]).mean())

    lo, hi = 0.0, 1.0
    while mean_error(_choose(errors, costs, hi)) > budget and hi < 1e12:
        hi *= 4
    if mean_error(_choose(errors, costs, hi)) > budget:
        return errors.argmin(-1)  # the budget cannot be met: least error everywhere
    for _ in range(iters):
        mid = (lo + hi) / 2
        if mean_error(_choose(errors, costs, mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return _choose(errors, costs, hi)


def assign(errors: Tensor, costs: Tensor, budget: float, layer_budget: float | None = None,
           head_budget: float | None = None) -> Tensor:
    """int64 [layers, heads]: chosen candidate per head.

    ``errors`` [layers, heads, C] (relative L2 per head; inf or NaN = unusable), ``costs`` [C]
    (relative time, dense = 1). ``budget`` bounds the mean error over all heads; ``layer_budget``
    (default ``2 * budget``) bounds each layer's mean error; ``head_budget`` (default
    ``3 * budget``) bounds every single head, so that exact heads cannot pay for a badly
    approximated one.
    """
    if errors.dim() != 3 or errors.shape[-1] != costs.numel():
        raise ValueError(f"errors must be [layers, heads, {costs.numel()}], got {tuple(errors.shape)}")
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget!r}")
    layer_budget = 2 * budget if layer_budget is None else layer_budget
    head_budget = 3 * budget if head_budget is None else head_budget
    errors = torch.nan_to_num(errors.double(), nan=float("inf"), posinf=1e6)
    errors = torch.where(errors > head_budget, torch.full_like(errors, 1e6), errors)  # out of reach
    costs = costs.double()
    choice = _solve(errors, costs, budget)
    for layer in range(errors.shape[0]):
        layer_err = float(errors[layer].gather(-1, choice[layer][..., None]).mean())
        if layer_err > layer_budget:
            choice[layer] = _solve(errors[layer], costs, layer_budget)
    return choice
