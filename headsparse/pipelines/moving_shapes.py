"""Moving shapes: the procedural captioned video dataset the in-house tiny model trains on.

Each clip is one coloured shape (circle, square, triangle) of a fixed size, moving at a constant
speed, or bouncing off the frame's edges, over a plain background, with a caption from a small grammar
("a red circle moving left", "a blue square bouncing up on a gray background"). Everything follows
from the clip's seed, so a dataset is an index range, not files: training streams clips, tests
regenerate any clip exactly. Shapes and colours are chosen so that a generated video can be
checked by pixels (which colour, which shape by fill ratio, which direction by the centroid).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {"black": (0.0, 0.0, 0.0), "gray": (0.45, 0.45, 0.45)}
SHAPES = ("circle", "square", "triangle")
# Direction word -> unit step (dy, dx) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
MOTIONS = ("moving", "bouncing")
# Fraction of its bounding square that each shape fills (used to recognise shapes by pixels).
FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
# The side of a shape's bounding square, as a fraction of the frame's shorter side, and the speed of
# each motion as the fraction of the free span (frame minus shape) travelled over the clip. Both are
# fixed: what varies is what the caption says (shape, colour, background, direction, motion) and
# where the shape starts, so a small model trained on a CPU for an hour or two spends its capacity
# on the caption and on keeping one shape on one path, not on sizes and speeds no caption names.
SIZE = 0.375
SPEED = {"moving": 0.75, "bouncing": 1.25}


@dataclass(frozen=True)
class Clip:
    """What a clip shows; ``caption`` says it in words."""

    shape: str
    colour: str
    background: str
    direction: str
    motion: str
    size: float  # side of the shape's bounding square, in pixels
    speed: float  # pixels per frame
    start: tuple[float, float]  # centre (y, x) in frame 0

    @property
    def caption(self) -> str:
        where = "" if self.background == "black" else f" on a {self.background} background"
        return f"a {self.colour} {self.shape} {self.motion} {self.direction}{where}"


def vocabulary() -> list[str]:
    """Every word a caption can use (for the in-memory tokenizer)."""
    words = {"a", "on", "background", *COLOURS, *BACKGROUNDS, *SHAPES, *DIRECTIONS, *MOTIONS}
    return sorted(words)


def sample_clip(seed: int, *, height: int = 32, width: int = 32, frames: int = 8) -> Clip:
    """The clip of ``seed``: its content drawn from a private generator (the global RNG is untouched)."""
    if min(height, width) < 16 or frames < 2:
        raise ValueError(f"clips need at least 16x16 pixels and 2 frames; got {height}x{width}, {frames} frames")
    g = torch.Generator().manual_seed(seed)

    def pick(options) -> str:
        return list(options)[int(torch.randint(len(options), (1,), generator=g))]

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    shape, colour, background = pick(SHAPES), pick(COLOURS), pick(BACKGROUNDS)
    direction, motion = pick(DIRECTIONS), pick(MOTIONS)
    size = SIZE * min(height, width)
    dy, dx = DIRECTIONS[direction]
    extent = height if dy else width
    # Moving clips stay inside the frame (they travel part of what is left of it); bouncing clips
    # travel further than that, so they hit an edge and turn.
    speed = SPEED[motion] * (extent - size) / (frames - 1)
    half = size / 2
    # How far the shape must be able to go the captioned way from its start: a constant-speed clip
    # its whole path (it ends inside the frame); a bouncing clip two frames' worth before its first
    # bounce, so that it is seen going the way its caption says before it turns.
    travel = speed * (frames - 1) if motion == "moving" else min(2 * speed, (extent - size) / 2)
    lo_y, hi_y = half, height - half
    lo_x, hi_x = half, width - half
    y = uniform(lo_y, hi_y) if dy == 0 else (uniform(lo_y, hi_y - travel) if dy > 0 else uniform(lo_y + travel, hi_y))
    x = uniform(lo_x, hi_x) if dx == 0 else (uniform(lo_x, hi_x - travel) if dx > 0 else uniform(lo_x + travel, hi_x))
    return Clip(shape, colour, background, direction, motion, size, speed, (y, x))


def centres(clip: Clip, frames: int, height: int, width: int) -> list[tuple[float, float]]:
    """The shape's centre in each frame (bouncing reflects off the edges)."""
    dy, dx = DIRECTIONS[clip.direction]
    half = clip.size / 2
    out = []
    for t in range(frames):
        pos = []
        for start, step, extent in ((clip.start[0], dy, height), (clip.start[1], dx, width)):
            p = start + step * clip.speed * t
            lo, hi = half, extent - half
            span = hi - lo
            if span > 0 and clip.motion == "bouncing":
                q = (p - lo) % (2 * span)
                p = lo + (q if q <= span else 2 * span - q)
            pos.append(min(max(p, lo), hi))
        out.append((pos[0], pos[1]))
    return out


def shape_mask(shape: str, centre: tuple[float, float], size: float, height: int, width: int) -> Tensor:
    """bool [H, W]: pixels whose centre lies inside the shape."""
    y = torch.arange(height, dtype=torch.float32)[:, None] + 0.5 - centre[0]
    x = torch.arange(width, dtype=torch.float32)[None, :] + 0.5 - centre[1]
    half = size / 2
    if shape == "circle":
        return y**2 + x**2 <= half**2
    if shape == "square":
        return (y.abs() <= half) & (x.abs() <= half)
    if shape == "triangle":  # apex up, base down: a point is inside when |x| <= (y + half) / 2 within the box
        return (y.abs() <= half) & (x.abs() <= (y + half) / 2)
    raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")


def render(clip: Clip, *, frames: int = 8, height: int = 32, width: int = 32) -> Tensor:
    """float32 [frames, 3, H, W] in [0, 1]."""
    video = torch.empty(frames, 3, height, width)
    video[:] = torch.tensor(BACKGROUNDS[clip.background])[None, :, None, None]
    colour = torch.tensor(COLOURS[clip.colour])[:, None]
    for t, centre in enumerate(centres(clip, frames, height, width)):
        mask = shape_mask(clip.shape, centre, clip.size, height, width)
        video[t][:, mask] = colour
    return video


def clip(seed: int, *, frames: int = 8, height: int = 32, width: int = 32) -> tuple[Tensor, str]:
    """(video [frames, 3, H, W] in [0, 1], caption) of ``seed``."""
    c = sample_clip(seed, height=height, width=width, frames=frames)
    return render(c, frames=frames, height=height, width=width), c.caption


@dataclass(frozen=True)
class Reading:
    """What a video shows, read from its pixels (None where it cannot be read)."""

    colour: str | None
    shape: str | None
    background: str | None
    direction: str | None
    motion: str | None
    fill: float  # shape pixels / their bounding box in the first frame that shows the shape
    path: tuple[tuple[float, float], ...]  # centroid (y, x) per frame, NaN where no shape

    def matches(self, clip: Clip) -> dict[str, bool]:
        return {"colour": self.colour == clip.colour, "shape": self.shape == clip.shape,
                "background": self.background == clip.background, "direction": self.direction == clip.direction,
                "motion": self.motion == clip.motion}


def parse_caption(caption: str) -> Clip:
    """The content words of a caption as a Clip (geometry fields zero): what a reading is compared with."""
    words = caption.split()
    pick = lambda options, default=None: next((w for w in words if w in options), default)
    return Clip(pick(SHAPES), pick(COLOURS), pick(BACKGROUNDS, "black"), pick(DIRECTIONS), pick(MOTIONS),
                0.0, 0.0, (0.0, 0.0))


def describe(video: Tensor, *, min_pixels: int = 4, min_step: float = 0.25) -> Reading:
    """Read a video [F, 3, H, W] (or [F, H, W, 3]) in [0, 1] the way its caption describes it.

    Every pixel takes the nearest palette colour (backgrounds and shape colours); the background is
    the most common class on the border, the shape is the rest, its colour the majority class. The
    shape is named by how much of its bounding box it fills (``FILL``), the direction by the axis
    and sign of the centroid's first clear step, the motion by whether the centroid turns back
    ("bouncing") along that axis.
    """
    video = video.float()
    if video.shape[-1] == 3 and video.shape[1] != 3:
        video = video.permute(0, 3, 1, 2)
    names = list(BACKGROUNDS) + list(COLOURS)
    palette = torch.tensor([*BACKGROUNDS.values(), *COLOURS.values()])  # [P, 3]
    pixels = video.permute(0, 2, 3, 1)  # [F, H, W, 3]
    classes = torch.cdist(pixels.reshape(-1, 3), palette).argmin(-1).view(pixels.shape[:3])
    border = torch.cat([classes[:, 0], classes[:, -1], classes[:, :, 0], classes[:, :, -1]], dim=1).flatten()
    background = int(border.mode().values)
    shape_px = classes >= len(BACKGROUNDS)
    path: list[tuple[float, float]] = []
    fill = float("nan")
    for t in range(classes.shape[0]):
        idx = shape_px[t].nonzero().float()
        if len(idx) < min_pixels:
            path.append((float("nan"), float("nan")))
            continue
        path.append((idx[:, 0].mean().item() + 0.5, idx[:, 1].mean().item() + 0.5))
        if fill != fill:  # first frame with a shape
            box = (idx.max(0).values - idx.min(0).values + 1).prod().item()
            fill = len(idx) / box
    colour = names[int(classes[shape_px].mode().values)] if shape_px.sum() >= min_pixels else None
    shape = min(FILL, key=lambda n: abs(FILL[n] - fill)) if fill == fill else None
    direction = motion = None
    seen = [p for p in path if p[0] == p[0]]
    if len(seen) >= 2:
        steps = [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(seen)]
        axis = 0 if sum(abs(s[0]) for s in steps) > sum(abs(s[1]) for s in steps) else 1
        along = [s[axis] for s in steps if abs(s[axis]) >= min_step]
        if along:
            sign = 1 if along[0] > 0 else -1
            direction = next(d for d, v in DIRECTIONS.items() if v[axis] == sign)
            motion = "bouncing" if any(a * sign < 0 for a in along) else "moving"
    return Reading(colour, shape, names[background], direction, motion, fill, tuple(path))


def caption_matches(video: Tensor, caption: str) -> dict[str, bool]:
    """Per caption field (colour, shape, background, direction, motion): does ``describe(video)`` read it?"""
    return describe(video).matches(parse_caption(caption))
