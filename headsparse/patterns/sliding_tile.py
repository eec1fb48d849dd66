"""sliding_tile (Sliding Tile Attention): the video grid is cut into tiles (e.g. 4x8x8 tokens) and a
query keeps every key whose tile lies in a window of tiles around its own tile: neighborhood attention
at tile granularity with stride 1. Runs in tile-major order, where its blocks are whole tiles.

Per axis with ``n`` tiles and a window of ``w`` tiles (odd), the query's tile ``a`` sees tiles
``[a - w // 2, a + w // 2]``, shifted back inside ``[0, n)`` at the edges like NATTEN, so the window
always covers ``min(w, n)`` tiles. Axes that the tile does not divide end with a smaller tile.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from headsparse.kernels.permute import brick_order
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.neighborhood import AxisWindow, AxisWindowPattern, check_triple, triple
from headsparse.patterns.registry import register


@functools.lru_cache(maxsize=1024)
def tile_window(length: int, tile: int, window: int) -> AxisWindow:
    """Sliding-tile window along one axis of ``length`` tokens (see the module docstring)."""
    tiles = -(-length // tile)
    a = torch.arange(length) // tile
    start = (a - window // 2).clamp(0, max(tiles - window, 0))
    end = start + min(window, tiles) - 1
    return AxisWindow.of(start * tile, ((end + 1) * tile).clamp_max(length) - 1)


@register
@dataclass(frozen=True, kw_only=True)
class SlidingTile(AxisWindowPattern):
    """Sliding Tile Attention: ``tile`` in tokens and ``window`` in tiles per (t, y, x) axis; ints
    broadcast to all three axes."""

    tile: tuple[int, int, int] = (4, 8, 8)
    window: tuple[int, int, int]

    name = "sliding_tile"
    grid = (
        {"window": (3, 3, 3)},
        {"window": (1, 3, 3)},
        {"window": (3, 5, 5)},
        {"window": (5, 3, 3)},
        {"window": (1, 5, 5)},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", triple(self.tile, int))
        object.__setattr__(self, "window", triple(self.window, int))
        super().__post_init__()

    def check(self) -> None:
        super().check()
        check_triple("sliding_tile", "tile", self.tile, int)
        check_triple("sliding_tile", "window", self.window, int)
        for a in range(3):
            if self.tile[a] < 1:
                raise ValueError(f"sliding_tile.tile[{a}] must be >= 1, got {self.tile[a]}")
            w = self.window[a]
            if w < 1 or w % 2 == 0:
                raise ValueError(f"sliding_tile.window[{a}] must be an odd integer >= 1 (tiles), got {w}")

    def windows(self, g: Geometry) -> tuple[AxisWindow, AxisWindow, AxisWindow]:
        params = zip((g.frames, g.height, g.width), self.tile, self.window, strict=True)
        return tuple(tile_window(*p) for p in params)  # type: ignore[return-value]

    def order_candidates(self, g: Geometry, block_m: int, block_n: int) -> list:
        """Tile-major, each tile padded to whole blocks (so a block never mixes tiles, even where the
        tile does not divide the grid and the last tile of an axis is smaller), or unpadded, or natural."""
        dims = (g.frames, g.height, g.width)
        text = {"prefix": g.prefix_len, "suffix": g.suffix_len}

        def order(block: int) -> Tensor:
            return brick_order(*dims, self.tile, block, **text)  # type: ignore[arg-type]

        unpadded = order(1)
        return [(None, None), (order(block_m), order(block_n)), (unpadded, unpadded)]
