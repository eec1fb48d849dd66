"""Generation: model presets, the embedded models (trained moving shapes, planted tiny), dense vs headsparse reports."""

from headsparse.pipelines.generate import GenerateError, GenerateRequest, generate
from headsparse.pipelines.presets import PRESETS, Preset, preset_for

__all__ = ["PRESETS", "GenerateError", "GenerateRequest", "Preset", "generate", "preset_for"]
