"""name -> pattern class, so plans and the search can enumerate candidates and their grids."""

from __future__ import annotations

from typing import Any

from headsparse.patterns.base import Pattern

PATTERNS: dict[str, type[Pattern]] = {}


def register(cls: type[Pattern]) -> type[Pattern]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in PATTERNS and PATTERNS[cls.name] is not cls:
        raise ValueError(f"pattern name {cls.name!r} is already registered by {PATTERNS[cls.name].__name__}")
    PATTERNS[cls.name] = cls
    return cls


def get_pattern(name: str, **params: Any) -> Pattern:
    """Instantiate a registered pattern; unknown names and parameters raise a clear error."""
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; known: {', '.join(sorted(PATTERNS))}")
    cls = PATTERNS[name]
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for pattern {name!r}: {exc}") from None


def candidates(names: list[str] | None = None) -> list[Pattern]:
    """Every registered pattern (or those named) at every point of its parameter grid."""
    chosen = sorted(PATTERNS) if names is None else names
    return [get_pattern(n, **params) for n in chosen for params in PATTERNS[n].grid]
