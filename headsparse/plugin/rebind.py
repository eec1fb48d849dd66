"""Run a processor's own code with its attention call replaced.

diffusers processors do their real work (projections, norms, RoPE, text concatenation, output
projection) around one attention call: ``dispatch_attention_fn(q, k, v, ...)`` on (B, S, H, D) or
``F.scaled_dot_product_attention(q, k, v, ...)`` on (B, H, S, D), both looked up as globals of the
processor's module. Instead of rewriting each processor (and drifting from diffusers), we build a
subclass whose ``__call__`` is the *same bytecode* evaluated in a copy of the module's namespace
where those two names point at headsparse's stand-ins. Everything else the processor does stays
identical, ``inspect.signature`` (which diffusers uses to filter kwargs) is unchanged, and nothing
global is modified, so unpatched models in the same process are unaffected.

One subclass serves every processor of a class: the stand-in reaches the calling layer's router
through the processor that is running (:data:`ACTIVE`), so torch.compile sees the same code, the
same globals and the same type in every layer and compiles a repeated block once.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F

DISPATCH_NAME = "dispatch_attention_fn"
ORIGINAL_ATTR = "_headsparse_original"


def functional_with(sdpa: Callable[..., Any]) -> types.ModuleType:
    """A module object that is ``torch.nn.functional`` except for ``scaled_dot_product_attention``."""
    shim = types.ModuleType(F.__name__)
    shim.__dict__.update(F.__dict__)
    shim.scaled_dot_product_attention = sdpa  # type: ignore[attr-defined]
    return shim


def with_globals(func: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    """``func``'s code, defaults and closure evaluated in ``namespace`` instead of its module's globals."""
    rebound = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__)
    rebound.__kwdefaults__ = func.__kwdefaults__
    rebound.__qualname__ = func.__qualname__
    rebound.__doc__ = func.__doc__
    return rebound


def attention_call_style(processor: Any) -> str | None:
    """'dispatch' or 'sdpa': how the processor calls attention; None when it calls neither."""
    code_names = type(processor).__call__.__code__.co_names
    namespace = type(processor).__call__.__globals__
    if DISPATCH_NAME in code_names and DISPATCH_NAME in namespace:
        return "dispatch"
    if "scaled_dot_product_attention" in code_names and namespace.get("F") is F:
        return "sdpa"
    return None


class ActiveProcessor:
    """The rebound processor whose ``__call__`` is running: set there, read by the attention stand-ins.

    Every rebound processor of one class shares one subclass, one ``__call__`` and one namespace (so a
    compiled block is one graph for every layer: ``compile_repeated_blocks`` compiles once, not once per
    layer); the stand-in in that namespace finds its layer's router through this holder.
    """

    def __init__(self) -> None:
        self.processor: Any = None


ACTIVE = ActiveProcessor()
ROUTER_ATTR = "_headsparse_router"
_SUBCLASSES: dict[tuple[type, Any, Any], type] = {}


def rebound_class(cls: type, dispatch: Callable[..., Any] | None, sdpa: Callable[..., Any] | None) -> type:
    """The subclass of ``cls`` whose ``__call__`` is ``cls.__call__`` calling ``dispatch``/``sdpa`` for attention.

    Made once per (class, stand-ins) and reused, so all layers (and later patches) share it. Its namespace
    is a copy of the processor module's globals taken then.
    """
    key = (cls, dispatch, sdpa)
    if key in _SUBCLASSES:
        return _SUBCLASSES[key]
    call = cls.__call__
    if not isinstance(call, types.FunctionType):
        raise TypeError(f"{cls.__name__}.__call__ is not a plain Python function; cannot rebind it")
    # Keep the rebound body free of graph breaks: torch.compile cannot resume a frame whose globals
    # are not its module's (the router hands attention to a custom op for that reason).
    namespace = dict(call.__globals__)
    if dispatch is not None:
        namespace[DISPATCH_NAME] = dispatch
    if sdpa is not None:
        namespace["F"] = functional_with(sdpa)
    rebound = with_globals(call, namespace)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer, ACTIVE.processor = ACTIVE.processor, self
        out = rebound(self, *args, **kwargs)
        ACTIVE.processor = outer
        return out

    # ``inspect.signature`` (which diffusers filters kwargs with) follows ``__wrapped__`` to the original's.
    functools.update_wrapper(__call__, rebound)
    sub = type(f"Headsparse{cls.__name__}", (cls,), {"__call__": __call__, "__module__": __name__})
    _SUBCLASSES[key] = sub
    return sub


def rebind_processor(
    processor: Any, *, dispatch: Callable[..., Any] | None = None, sdpa: Callable[..., Any] | None = None,
    router: Any = None,
) -> Any:
    """A copy of ``processor`` whose ``__call__`` calls ``dispatch``/``sdpa`` for attention.

    The copy is an instance of :func:`rebound_class` sharing the original's attributes; it remembers
    the original (``_headsparse_original``) so it can be restored, and carries its layer's ``router``
    (``_headsparse_router``), which the stand-ins reach through :data:`ACTIVE`.
    """
    sub = rebound_class(type(processor), dispatch, sdpa)
    copy = type(processor).__new__(sub)
    copy.__dict__.update(processor.__dict__)
    setattr(copy, ORIGINAL_ATTR, processor)
    setattr(copy, ROUTER_ATTR, router)
    return copy


def original_processor(processor: Any) -> Any:
    """The processor a rebound copy was made from (or the processor itself)."""
    return getattr(processor, ORIGINAL_ATTR, processor)


def restore_processor(processor: Any) -> Any:
    """The original of a rebound copy, given every attribute set on the copy since patching.

    diffusers configures processors in place (``set_attention_backend`` sets ``_attention_backend``,
    ``enable_parallelism`` sets ``_parallel_config``): what was set on the copy stays in force after unpatch.
    """
    original = original_processor(processor)
    if original is processor:
        return processor
    missing = object()
    for name, value in processor.__dict__.items():
        if name not in (ORIGINAL_ATTR, ROUTER_ATTR) and original.__dict__.get(name, missing) is not value:
            setattr(original, name, value)
    return original


def is_rebound(processor: Any) -> bool:
    return hasattr(processor, ORIGINAL_ATTR)
