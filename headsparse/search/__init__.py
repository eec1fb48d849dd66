"""Offline search: calibration on dense runs, a measured cost model, budgeted assignment, a Plan."""

from headsparse.patterns.cost import CostModel
from headsparse.search.assign import assign
from headsparse.search.calibrate import Calibration, search_candidates
from headsparse.search.search import search

__all__ = ["Calibration", "CostModel", "assign", "search", "search_candidates"]
