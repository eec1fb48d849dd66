"""Test and benchmark helpers shipped with the package: models and inputs with planted head patterns."""

from headsparse.testing.planted import KINDS, plant_wan, planted_qkv

__all__ = ["KINDS", "plant_wan", "planted_qkv"]
