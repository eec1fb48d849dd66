"""headsparse: per-head sparse attention for diffusion transformers and vision transformers."""

from headsparse.kernels import Layout, sparse_attention
from headsparse.patterns import Geometry, Pattern, get_pattern
from headsparse.plan import LayerPlan, ModelPlan, Phase, Plan, load_plan
from headsparse.plugin import PatchHandle, is_patched, patch, summary, supported_classes, unpatch
from headsparse.search import search

__version__ = "0.1.0"
__all__ = [
    "Geometry",
    "LayerPlan",
    "Layout",
    "ModelPlan",
    "PatchHandle",
    "Pattern",
    "Phase",
    "Plan",
    "__version__",
    "get_pattern",
    "is_patched",
    "load_plan",
    "patch",
    "search",
    "sparse_attention",
    "summary",
    "supported_classes",
    "unpatch",
]
