"""Geometry: how the tokens of one attention call are laid out.

A video grid of (frames, height, width) tokens after patchification, stored frame-major, with
optional text/condition tokens before it (prefix, e.g. CogVideoX, FLUX) or after it (suffix, e.g.
HunyuanVideo, SD3). Patterns read coordinates from here; nothing guesses a grid from a length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

TextPosition = Literal["none", "prefix", "suffix"]


@dataclass(frozen=True)
class Geometry:
    frames: int
    height: int
    width: int
    text_len: int = 0
    text_position: TextPosition = "none"

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Geometry.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.text_len, int) or self.text_len < 0:
            raise ValueError(f"Geometry.text_len must be an integer >= 0, got {self.text_len!r}")
        if self.text_position not in ("none", "prefix", "suffix"):
            raise ValueError(f"Geometry.text_position must be 'none', 'prefix' or 'suffix', got {self.text_position!r}")
        if (self.text_len > 0) != (self.text_position != "none"):
            raise ValueError(
                f"Geometry.text_len={self.text_len} does not fit text_position={self.text_position!r}: "
                "text tokens need 'prefix' or 'suffix', and 'none' needs text_len=0"
            )

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def video_len(self) -> int:
        return self.frames * self.height * self.width

    @property
    def seq_len(self) -> int:
        return self.video_len + self.text_len

    @property
    def prefix_len(self) -> int:
        """Text tokens before the video tokens."""
        return self.text_len if self.text_position == "prefix" else 0

    @property
    def suffix_len(self) -> int:
        """Text tokens after the video tokens."""
        return self.text_len if self.text_position == "suffix" else 0

    @property
    def video_start(self) -> int:
        return self.prefix_len

    def coords(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(frame, row, col, is_text) of token indices; text tokens get coordinates -1."""
        v = index - self.video_start
        is_text = (v < 0) | (v >= self.video_len)
        v = v.clamp(0, self.video_len - 1)
        hw = self.tokens_per_frame
        t, rest = v // hw, v % hw
        y, x = rest // self.width, rest % self.width
        neg = torch.full_like(v, -1)
        return (torch.where(is_text, neg, t), torch.where(is_text, neg, y), torch.where(is_text, neg, x), is_text)

    def frame_of_token(self) -> Tensor:
        """int64 [seq_len]: frame of each token, -1 for text."""
        return self.coords(torch.arange(self.seq_len))[0]
