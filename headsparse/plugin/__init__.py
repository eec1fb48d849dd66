"""Adapters that patch diffusers transformers: one spec per model class, one router per layer."""

from headsparse.plugin.patch import PatchHandle, find_transformers, is_patched, patch, summary, unpatch
from headsparse.plugin.spec import SPECS, ModelSpec, supported_classes

__all__ = ["SPECS", "ModelSpec", "PatchHandle", "find_transformers", "is_patched", "patch", "summary",
           "supported_classes", "unpatch"]
