"""Pattern engines: a Geometry in, a Layout out, each with its exact token-level mask."""

from headsparse.patterns.base import Pattern
from headsparse.patterns.dense import Dense, Skip
from headsparse.patterns.geometry import Geometry
from headsparse.patterns.registry import PATTERNS, candidates, get_pattern
from headsparse.patterns.spatial import Spatial
from headsparse.patterns.temporal import Temporal

__all__ = ["PATTERNS", "Dense", "Geometry", "Pattern", "Skip", "Spatial", "Temporal", "candidates", "get_pattern"]
