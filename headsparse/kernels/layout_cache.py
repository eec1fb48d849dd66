"""One least-recently-used cache for every layout headsparse keeps, bounded by bytes, not entries.

Layouts are built per pattern, geometry, head count and device (and per layer mix, and for the
recogniser's sampled rows); a process that generates at many resolutions would otherwise keep them
all. Entries are weighed by what they hold, including what executors cached on them afterwards
(FlexAttention block masks, grouped plans), and the least recently used go first once the total
passes the limit: ``HEADSPARSE_LAYOUT_CACHE_BYTES`` (default 2 GiB), or :func:`set_layout_cache_limit`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from torch import Tensor

DEFAULT_LIMIT = 2 * 1024**3


def weigh(value: Any) -> int:
    """Bytes of a cached value: a Layout's (and its caches'), a tensor's, or 0."""
    if hasattr(value, "nbytes") and callable(value.nbytes):
        return int(value.nbytes())
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(weigh(v) for v in value)
    return 0


class LayoutCache:
    """An LRU mapping bounded by the bytes of its values (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.evictions = 0

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The cached value for ``key``, built (and the oldest entries evicted past the limit) if absent."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = build()
        self._entries[key] = value
        self._trim(keep=key)
        return value

    def _trim(self, keep: Hashable) -> None:
        total = self.nbytes()
        while total > self.limit and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            total -= weigh(self._entries.pop(oldest))
            self.evictions += 1

    def nbytes(self) -> int:
        return sum(weigh(v) for v in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def clear(self, prefix: Hashable | None = None) -> None:
        """Forget every entry (or those whose key tuple starts with ``prefix``)."""
        if prefix is None:
            self._entries.clear()
            return
        for key in [k for k in self._entries if isinstance(k, tuple) and k and k[0] == prefix]:
            del self._entries[key]


def _limit_from_env() -> int:
    raw = os.environ.get("HEADSPARSE_LAYOUT_CACHE_BYTES")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"HEADSPARSE_LAYOUT_CACHE_BYTES must be a number of bytes, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"HEADSPARSE_LAYOUT_CACHE_BYTES must be >= 0, got {value}")
    return value


CACHE = LayoutCache(_limit_from_env())


def set_layout_cache_limit(limit: int) -> None:
    """Bound every cached layout of this process to ``limit`` bytes (evicting now if needed)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"the layout cache limit must be an integer number of bytes >= 0, got {limit!r}")
    CACHE.limit = limit
    if CACHE._entries:
        CACHE._trim(keep=next(reversed(CACHE._entries)))
