"""Test and benchmark helpers shipped with the package: models and inputs with planted head patterns."""

from headsparse.testing.planted import EXPECTED_PATTERN, KINDS, plant_wan, planted_qkv, random_kinds, tiny_planted_wan

__all__ = ["EXPECTED_PATTERN", "KINDS", "plant_wan", "planted_qkv", "random_kinds", "tiny_planted_wan"]
