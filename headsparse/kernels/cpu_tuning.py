"""On CPU, time the grouped and FlexAttention executors on a layout's first large call, keep the faster.

Which of the two wins depends on more than the CPU (:mod:`headsparse.kernels.cpu_profile`): in an
ad-hoc probe on one AMD EPYC at 4096 tokens, float32, D=32, a sliding-tile layout of 32-token tiles ran
faster than dense SDPA grouped and slower than dense under FlexAttention, while the profile's threshold
(groups of >= 512 rows, measured in bfloat16 at D=64) picked FlexAttention. So a layout whose call is
large enough for the difference to matter is timed once with the real inputs, each executor warmed first (FlexAttention
compiles, the grouped plan is built), and the winner is cached on the layout for every later call
of that shape and dtype. The timed calls compute the real output, which is returned, so the
tuning costs a few calls once per layout, not a wrong result.

``HEADSPARSE_CPU_TUNING=0`` turns it off (the profile's rule decides alone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from torch import Tensor

from headsparse.kernels.layout import Layout

# A call with fewer (query, key) pairs than this (over batch and heads) is not worth timing: the rule decides.
TUNE_MIN_PAIRS = 1 << 24
CANDIDATES = ("grouped", "flex")
_ROUNDS = 2


def tuning_enabled() -> bool:
    raw = os.environ.get("HEADSPARSE_CPU_TUNING", "1").strip().lower()
    return raw not in ("0", "false", "no", "off")


def _key(q: Tensor) -> tuple:
    return ("cpu_tuned", q.dtype, q.shape[0], q.shape[-1])


def tuned_choice(layout: Layout, q: Tensor) -> str | None:
    """The executor measured for this layout and q's dtype, batch and head size, if one was."""
    return layout._cache.get(_key(q))


def worth_tuning(layout: Layout, q: Tensor) -> bool:
    """The call visits at least ``TUNE_MIN_PAIRS`` pairs (the cheap bound first: this runs on every untuned call)."""
    pairs = q.shape[0] * layout.num_heads * layout.q_len * layout.kv_len
    if not tuning_enabled() or pairs < TUNE_MIN_PAIRS:
        return False
    if "mean_block_density" not in layout._cache:
        layout._cache["mean_block_density"] = float(layout.block_density().mean())
    return pairs * layout._cache["mean_block_density"] >= TUNE_MIN_PAIRS


def tune(layout: Layout, q: Tensor, run: Callable[[str], Tensor]) -> tuple[str, Tensor]:
    """Warm then time ``run(executor)`` for each candidate (``_ROUNDS`` interleaved rounds, best of each);
    cache and return the fastest and its output. A candidate that fails is dropped."""
    best: dict[str, float] = {}
    outputs: dict[str, Tensor] = {}
    alive = list(CANDIDATES)
    for name in list(alive):
        try:
            run(name)  # warm-up: compilation, plan construction
        except Exception:
            alive.remove(name)
    if not alive:
        raise RuntimeError("no CPU executor ran this layout")
    for _ in range(_ROUNDS):
        for name in alive:
            start = time.perf_counter()
            outputs[name] = run(name)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    winner = min(best, key=best.get)
    layout._cache[_key(q)] = winner
    return winner, outputs[winner]
