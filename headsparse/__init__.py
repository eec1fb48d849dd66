"""headsparse: per-head sparse attention for diffusion transformers and vision transformers."""

from headsparse.kernels import Layout, sparse_attention

__version__ = "0.1.0"
__all__ = ["Layout", "sparse_attention", "__version__"]
