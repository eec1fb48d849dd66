"""Pattern engines: a Geometry in, a Layout out, each with its exact token-level mask."""

from headsparse.patterns.agent import Agent
from headsparse.patterns.base import Pattern
from headsparse.patterns.dense import Dense, Skip
from headsparse.patterns.diagonal import Diagonal, MultiDiagonal
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.neighborhood import Neighborhood
from headsparse.patterns.pooled import PooledBlocks
from headsparse.patterns.registry import PATTERNS, candidates, get_pattern
from headsparse.patterns.sliding_tile import SlidingTile
from headsparse.patterns.spatial import Spatial
from headsparse.patterns.stripes import Textural, VerticalStripe
from headsparse.patterns.temporal import Temporal

__all__ = [
    "PATTERNS",
    "Agent",
    "Dense",
    "Diagonal",
    "Geometry",
    "MultiDiagonal",
    "Neighborhood",
    "Pattern",
    "PooledBlocks",
    "Skip",
    "SlidingTile",
    "Spatial",
    "Temporal",
    "Textural",
    "VerticalStripe",
    "candidates",
    "get_pattern",
]
