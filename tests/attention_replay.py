"""The "a sparse plan changes only self-attention" proof, shared by every model test file.

Record the inputs each attention module (anything with a ``processor``) saw during one patched forward,
then replay each module on them with its patched processor and with the original one: the modules whose
outputs differ are exactly the ones headsparse made sparse.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from headsparse.plugin.rebind import original_processor


@contextmanager
def recorded_attention_inputs(model: torch.nn.Module) -> Iterator[dict[str, tuple]]:
    """name -> (args, kwargs) of the first call of every attention module inside the ``with`` block."""
    recorded: dict[str, tuple] = {}
    hooks = []
    for name, module in model.named_modules():
        if hasattr(module, "processor"):
            def grab(mod, args, kwargs, name=name):
                recorded.setdefault(name, (args, kwargs))
            hooks.append(module.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        yield recorded
    finally:
        for hook in hooks:
            hook.remove()


def modules_the_patch_changes(model: torch.nn.Module, recorded: dict[str, tuple]) -> set[str]:
    """The recorded modules whose output on their recorded inputs differs between the processor they
    have now (patched) and the processor headsparse replaced."""
    changed = set()
    for name, (args, kwargs) in recorded.items():
        module = model.get_submodule(name)
        with torch.no_grad():
            sparse = module(*args, **kwargs)
            patched = module.processor
            module.processor = original_processor(patched)
            try:
                dense = module(*args, **kwargs)
            finally:
                module.processor = patched
        sparse = sparse if isinstance(sparse, tuple) else (sparse,)
        dense = dense if isinstance(dense, tuple) else (dense,)
        if not all(torch.equal(a, b) for a, b in zip(sparse, dense, strict=True)):
            changed.add(name)
    return changed
