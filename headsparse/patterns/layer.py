"""The Layout of a whole layer: one pattern (or dynamic block map) per head, in head order."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from headsparse.kernels.layout import Layout
from headsparse.patterns.base import Pattern
from headsparse.patterns.geometry import Geometry


def heads_layout(heads: tuple[Pattern, ...], geometry: Geometry, block: int,
                 block_kinds: Mapping[int, Tensor] | None = None) -> Layout:
    """One multi-head Layout for a layer, so all its heads run in one executor call.

    Runs of equal static patterns share one repeated layout (and its mask table); a head listed in
    ``block_kinds`` (a dynamic pattern's int8 [MQ, NK] block map, e.g. ``pooled``) uses that map.
    """
    kinds = block_kinds or {}
    parts: list[Layout] = []
    run: Pattern | None = None
    count = 0

    def flush() -> None:
        if run is not None and count:
            parts.append(run.layout(geometry, num_heads=count, block_m=block, block_n=block))

    for h, pattern in enumerate(heads):
        if h not in kinds and pattern == run:
            count += 1
            continue
        flush()
        if h in kinds:
            run, count = None, 0
            parts.append(Layout.from_block_map(kinds[h][None] > 0, q_len=geometry.seq_len, kv_len=geometry.seq_len,
                                               block_m=block, block_n=block))
        else:
            run, count = pattern, 1
    flush()
    return parts[0] if len(parts) == 1 else Layout.concat_heads(parts)
