"""Executors of a Layout: the Triton block-sparse kernel, compiled FlexAttention on CPU, an eager
masked fallback, token permutations, and the dense masked reference they are all tested against."""

from headsparse.kernels.layout import BLOCK_FULL, BLOCK_PARTIAL, BLOCK_SKIP, Layout
from headsparse.kernels.permute import frame_major_to_token_major, permute_tokens, tile_major
from headsparse.kernels.reference import layout_reference, masked_attention
from headsparse.kernels.sparse_attention import choose_backend, sparse_attention

__all__ = [
    "BLOCK_FULL",
    "BLOCK_PARTIAL",
    "BLOCK_SKIP",
    "Layout",
    "choose_backend",
    "frame_major_to_token_major",
    "layout_reference",
    "masked_attention",
    "permute_tokens",
    "sparse_attention",
    "tile_major",
]
