"""The proof every supported model class owes: a dense patch is bit-identical, and unpatch restores it.

Shared by the per-family model tests; each passes its own model, a closure that runs it on fixed inputs,
and the names of the modules its spec calls self-attention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

import headsparse
from headsparse.plugin.rebind import is_rebound


def processors(model: torch.nn.Module) -> dict[str, Any]:
    """Each attention module's processor, by module name."""
    return {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}


def assert_dense_patch_is_identity(model: torch.nn.Module, run: Callable[[], torch.Tensor],
                                   self_attention: Iterable[str], num_heads: int = 2) -> None:
    """Patched with the dense pattern, exactly the self-attention processors are rebound and the output is
    bit-identical; unpatched, the very same processor objects are back, no hook is left, and the output is
    still identical."""
    before = processors(model)
    ref = run()
    with headsparse.patch(model, pattern="dense") as handle:
        patched = processors(model)
        assert {n for n, p in patched.items() if is_rebound(p)} == set(self_attention)
        out = run()
        assert handle.plan.transformers["transformer"].num_heads == num_heads
    assert torch.equal(out, ref)
    after = processors(model)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not headsparse.is_patched(model) and not model._forward_pre_hooks
    assert torch.equal(run(), ref)
