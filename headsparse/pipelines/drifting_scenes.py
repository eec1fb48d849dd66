"""Drifting scenes: a procedural captioned video dataset with the local statistics of natural video.

Each clip is a window onto an endless textured plane (mottled value noise, stripes, checks or a
smooth gradient, in two muted colours) that drifts across the frame in a captioned direction (a
camera pan) or stays still, with one to three flat-coloured objects (circle, square, triangle) on
top, each moving its own captioned way, occluding each other and the background. Captions say
what moves and how: "a red circle moving left and a blue square moving up on a striped background
drifting right" (the longest has 22 words).

Why: a video DiT learns local heads (same frame, same place in the next frame, a 3-D window)
because natural video is locally correlated in space and time. Here every pixel's neighbourhood
predicts it (textures at scales of 1-4 tokens) and the previous frame predicts it one drift step
away, so a model trained on these clips has the same reason to attend locally. Textures are
functions of plane coordinates, sizes and speeds are in pixels, so a clip has no fixed canvas:
a model trained on small clips generates larger ones that look the same, only wider.

Everything follows from the clip's seed (a private generator: the global RNG is untouched), so a
dataset is an index range, not files. :func:`read_scene` reads back from pixels what a clip (or a
generated video) shows: the background's drift and each object's colour and direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TEXTURES = ("mottled", "striped", "checkered", "smooth")
# Muted background colour pairs: far, in RGB, from every object colour, so objects read by colour.
BACKGROUND_PAIRS: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.22, 0.22, 0.24), (0.58, 0.58, 0.55)),  # charcoal / stone
    ((0.36, 0.27, 0.18), (0.62, 0.54, 0.40)),  # bark / sand
    ((0.16, 0.26, 0.22), (0.42, 0.50, 0.40)),  # moss / sage
    ((0.18, 0.22, 0.34), (0.46, 0.50, 0.58)),  # navy / slate
    ((0.34, 0.22, 0.28), (0.60, 0.50, 0.52)),  # plum / rose grey
)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.08, 0.08), "green": (0.05, 0.85, 0.15), "blue": (0.10, 0.25, 1.0), "yellow": (1.0, 0.9, 0.0),
}
SHAPES = ("circle", "square", "triangle")
# Direction word -> unit step (dy, dx) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
STILL = "still"
OBJECT_SIZE = (8.0, 12.0)  # side of an object's bounding square, pixels
OBJECT_SPEED = (0.75, 1.25)  # pixels per frame
DRIFT_SPEED = (1.0, 2.0)  # pixels per frame
SUPERSAMPLE = 2  # samples per pixel side: soft edges, no aliasing under sub-pixel drift


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    direction: str
    size: float
    speed: float
    start: tuple[float, float]  # centre (y, x) in frame 0, pixels

    def centre(self, t: float) -> tuple[float, float]:
        dy, dx = DIRECTIONS[self.direction]
        return self.start[0] + dy * self.speed * t, self.start[1] + dx * self.speed * t

    @property
    def words(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


@dataclass(frozen=True)
class Scene:
    """What a clip shows; ``caption`` says it in words."""

    texture: str
    palette: int  # index into BACKGROUND_PAIRS
    scale: float  # texture scale, pixels (noise cell, stripe period, check size, gradient length)
    angle: float  # stripe / gradient orientation, radians
    drift: str  # a direction word, or "still"
    drift_speed: float
    origin: tuple[float, float]  # plane coordinates of pixel (0, 0) in frame 0
    texture_seed: int
    objects: tuple[SceneObject, ...]

    @property
    def caption(self) -> str:
        listed = " and ".join(o.words for o in self.objects)
        motion = "still" if self.drift == STILL else f"drifting {self.drift}"
        if motion == "still":
            return f"{listed} on a still {self.texture} background"
        return f"{listed} on a {self.texture} background {motion}"

    def drift_velocity(self) -> tuple[float, float]:
        """The background's motion in the frame, pixels per frame (dy, dx)."""
        if self.drift == STILL:
            return 0.0, 0.0
        dy, dx = DIRECTIONS[self.drift]
        return dy * self.drift_speed, dx * self.drift_speed


def vocabulary() -> list[str]:
    """Every word a caption can use (for the in-memory tokenizer)."""
    words = {"a", "and", "on", "background", "moving", "drifting", STILL, *TEXTURES, *COLOURS, *SHAPES,
             *DIRECTIONS}
    return sorted(words)


def _check_size(frames: int, height: int, width: int) -> None:
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if min(height, width) < 24:
        raise ValueError(f"scenes need at least 24x24 pixels (objects are up to {OBJECT_SIZE[1]:.0f} px); "
                         f"got {height}x{width}")


def sample_scene(seed: int, *, frames: int = 16, height: int = 32, width: int = 32) -> Scene:
    """The scene of ``seed`` for a clip of that size (object paths are fitted to it)."""
    _check_size(frames, height, width)
    g = torch.Generator().manual_seed(seed)

    def rand() -> float:
        return float(torch.rand((), generator=g))

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * rand()

    def pick(options):
        options = list(options)
        return options[int(torch.randint(len(options), (1,), generator=g))]

    texture = pick(TEXTURES)
    drift = STILL if rand() < 0.2 else pick(DIRECTIONS)
    scale = {"mottled": uniform(5, 10), "striped": uniform(6, 12), "checkered": uniform(5, 9),
             "smooth": uniform(24, 48)}[texture]
    # Stripes and gradients are constant along one axis: a drift along it would be invisible (the
    # aperture problem), so their normal is kept within 60 degrees of the drift direction.
    angle = uniform(0, math.pi)
    if drift != STILL and texture in ("striped", "smooth"):
        dy, dx = DIRECTIONS[drift]
        angle = math.atan2(dy, dx) + uniform(-math.pi / 3, math.pi / 3)
    n_objects = 1 + int(torch.randint(3, (1,), generator=g))
    colours = torch.randperm(len(COLOURS), generator=g)[:n_objects].tolist()
    objects: list[SceneObject] = []
    for c in colours:
        shape, direction = pick(SHAPES), pick(DIRECTIONS)
        size, speed = uniform(*OBJECT_SIZE), uniform(*OBJECT_SPEED)
        dy, dx = DIRECTIONS[direction]
        extent = height if dy else width
        speed = min(speed, (extent - size - 2) / (frames - 1))  # the whole path stays inside the frame
        travel = speed * (frames - 1)
        half = size / 2 + 1

        def start_on(axis_step: int, length: int, half: float = half, travel: float = travel) -> float:
            if axis_step > 0:
                return uniform(half, length - half - travel)
            if axis_step < 0:
                return uniform(half + travel, length - half)
            return uniform(half, length - half)

        # Objects may cross (and occlude each other there) but do not start or end on top of another
        # one: an object hidden for the whole clip would not be what its caption says.
        for _ in range(_PLACEMENT_TRIES):
            obj = SceneObject(shape, list(COLOURS)[c], direction, size, speed,
                              (start_on(dy, height), start_on(dx, width)))
            if all(_apart(obj, other, frames) for other in objects):
                objects.append(obj)
                break
    return Scene(texture, int(torch.randint(len(BACKGROUND_PAIRS), (1,), generator=g)), scale, angle, drift,
                 uniform(*DRIFT_SPEED), (uniform(-1e3, 1e3), uniform(-1e3, 1e3)),
                 int(torch.randint(2**30, (1,), generator=g)), tuple(objects))


_PLACEMENT_TRIES = 20


def _apart(a: SceneObject, b: SceneObject, frames: int) -> bool:
    """True when the two objects do not overlap in the first, middle and last frames."""
    gap = 0.6 * (a.size + b.size)
    for t in (0, (frames - 1) / 2, frames - 1):
        (ay, ax), (by, bx) = a.centre(t), b.centre(t)
        if math.hypot(ay - by, ax - bx) < gap:
            return False
    return True


def _hash01(iy: Tensor, ix: Tensor, seed: int) -> Tensor:
    """A deterministic pseudo-random value in [0, 1) per integer lattice point (int64 tensors)."""
    h = (iy * 374761393 + ix * 668265263 + seed * 2147483647) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).double() / float(1 << 24)


def _value_noise(u: Tensor, v: Tensor, cell: float, seed: int) -> Tensor:
    """Smooth value noise in [0, 1] at plane coordinates (u, v) with lattice spacing ``cell``."""
    a, b = u / cell, v / cell
    ia, ib = torch.floor(a), torch.floor(b)
    fa, fb = a - ia, b - ib
    fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)  # smoothstep
    ia, ib = ia.long(), ib.long()
    n00, n01 = _hash01(ia, ib, seed), _hash01(ia, ib + 1, seed)
    n10, n11 = _hash01(ia + 1, ib, seed), _hash01(ia + 1, ib + 1, seed)
    return (n00 * (1 - fb) + n01 * fb) * (1 - fa) + (n10 * (1 - fb) + n11 * fb) * fa


def texture_value(scene: Scene, u: Tensor, v: Tensor) -> Tensor:
    """The background's mix weight in [0, 1] (0: first colour, 1: second) at plane coordinates (u, v)."""
    s, seed = scene.scale, scene.texture_seed
    if scene.texture == "mottled":
        return (0.65 * _value_noise(u, v, s, seed) + 0.35 * _value_noise(u, v, s / 2.3, seed + 1)).clamp(0, 1)
    along = u * math.sin(scene.angle) + v * math.cos(scene.angle)  # distance along the normal
    if scene.texture == "striped":
        # Wavy stripes whose contrast varies along them: a drift along the stripes still shows
        # (plain stripes would hide it: the aperture problem).
        phase = along / s + 0.6 * _value_noise(u, v, 2.5 * s, seed)
        contrast = 0.25 + 0.75 * _value_noise(u, v, 1.2 * s, seed + 1)
        return 0.5 + 0.45 * contrast * torch.tanh(2.5 * torch.sin(2 * math.pi * phase))
    if scene.texture == "checkered":
        parity = (torch.floor(u / s) + torch.floor(v / s)) % 2
        return 0.15 + 0.55 * parity + 0.3 * _value_noise(u, v, 3 * s, seed)
    # smooth: a slow ramp along the normal, folded back so it never runs out, with soft noise on top
    ramp = (along / s) % 2
    ramp = torch.where(ramp > 1, 2 - ramp, ramp)
    return (0.65 * ramp + 0.35 * _value_noise(u, v, s / 4, seed)).clamp(0, 1)


def object_coverage(obj: SceneObject, cy: float, cx: float, ys: Tensor, xs: Tensor) -> Tensor:
    """bool: which sample points (pixel coordinates) lie inside the object centred at (cy, cx)."""
    y, x, half = ys - cy, xs - cx, obj.size / 2
    if obj.shape == "circle":
        return y**2 + x**2 <= half**2
    if obj.shape == "square":
        return (y.abs() <= half) & (x.abs() <= half)
    if obj.shape == "triangle":  # apex up
        return (y.abs() <= half) & (x.abs() <= (y + half) / 2)
    raise ValueError(f"unknown shape {obj.shape!r}; shapes: {SHAPES}")


def render_scene(scene: Scene, *, frames: int = 16, height: int = 32, width: int = 32) -> Tensor:
    """float32 [frames, 3, H, W] in [0, 1]."""
    _check_size(frames, height, width)
    n = SUPERSAMPLE
    offsets = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    ys = (torch.arange(height, dtype=torch.float64)[:, None] + offsets[None, :]).reshape(-1)  # [H * n]
    xs = (torch.arange(width, dtype=torch.float64)[:, None] + offsets[None, :]).reshape(-1)  # [W * n]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    c0, c1 = (torch.tensor(c, dtype=torch.float64) for c in BACKGROUND_PAIRS[scene.palette])
    vy, vx = scene.drift_velocity()
    out = torch.empty(frames, 3, height, width)
    for t in range(frames):
        # Content drifting by (vy, vx) per frame: pixel p at frame t shows plane point p - t * v.
        u = gy + scene.origin[0] - vy * t
        v = gx + scene.origin[1] - vx * t
        w = texture_value(scene, u, v)[None]
        image = c0[:, None, None] * (1 - w) + c1[:, None, None] * w  # [3, H n, W n]
        for obj in scene.objects:  # later objects occlude earlier ones
            cy, cx = obj.centre(t)
            inside = object_coverage(obj, cy, cx, gy, gx)
            image = torch.where(inside[None], torch.tensor(COLOURS[obj.colour], dtype=torch.float64)[:, None, None],
                                image)
        out[t] = image.view(3, height, n, width, n).mean((2, 4)).float()
    return out


def clip(seed: int, *, frames: int = 16, height: int = 32, width: int = 32) -> tuple[Tensor, str]:
    """(video [frames, 3, H, W] in [0, 1], caption) of ``seed``."""
    scene = sample_scene(seed, frames=frames, height=height, width=width)
    return render_scene(scene, frames=frames, height=height, width=width), scene.caption


# ---------------------------------------------------------------------------------------------- reading back
@dataclass(frozen=True)
class SceneReading:
    """What a video shows, read from its pixels: the background's drift and each object's direction."""

    drift: str | None  # a direction word, "still", or None (unreadable)
    drift_velocity: tuple[float, float]  # mean background shift per frame (dy, dx), pixels
    objects: dict[str, str | None]  # colour seen -> its direction (None: seen but not moving clearly)


@dataclass(frozen=True)
class CaptionedScene:
    """The content words of a caption: what a reading is compared with."""

    drift: str
    objects: dict[str, str]  # colour -> direction


def parse_caption(caption: str) -> CaptionedScene:
    words = caption.split()
    objects = {}
    for i, w in enumerate(words):
        if w in COLOURS and i + 3 < len(words) and words[i + 2] == "moving":
            objects[w] = words[i + 3]
    if "drifting" in words:
        drift = words[words.index("drifting") + 1]
    elif STILL in words:
        drift = STILL
    else:
        raise ValueError(f"caption {caption!r} says neither 'drifting <direction>' nor 'still'")
    return CaptionedScene(drift, objects)


def _object_masks(video: Tensor, threshold: float = 0.3) -> dict[str, Tensor]:
    """Per object colour: bool [F, H, W] of pixels within ``threshold`` (RGB distance) of it."""
    pixels = video.permute(0, 2, 3, 1)  # [F, H, W, 3]
    return {name: (pixels - torch.tensor(rgb)).norm(dim=-1) < threshold for name, rgb in COLOURS.items()}


_DRIFT_SPEEDS = tuple(0.25 * i for i in range(2, 13))  # 0.5 .. 3 pixels per frame, the hypotheses tested


def _shifted(frames: Tensor, dy: float, dx: float) -> Tensor:
    """frames [N, C, H, W] moved by (dy, dx) pixels (bilinear; content leaving the frame is dropped)."""
    n, _, h, w = frames.shape
    theta = torch.tensor([[1.0, 0.0, -2 * dx / w], [0.0, 1.0, -2 * dy / h]]).expand(n, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(frames.shape), align_corners=False)
    return torch.nn.functional.grid_sample(frames, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def drift_errors(video: Tensor, keep: Tensor) -> dict[tuple[str, float], float]:
    """Mean absolute error of predicting each frame from the previous one moved by each hypothesis
    ("still", or a direction at each of ``_DRIFT_SPEEDS``), over pixels ``keep`` (bool [F - 1, H, W])
    away from the frame's border."""
    prev, nxt = video[:-1], video[1:]
    border = 4
    inner = torch.zeros_like(keep)
    inner[:, border:-border, border:-border] = True
    sel = keep & inner
    if int(sel.sum()) < 16:
        return {}
    hypotheses = [(STILL, 0.0)] + [(d, s) for d in DIRECTIONS for s in _DRIFT_SPEEDS]
    errors = {}
    for name, speed in hypotheses:
        dy, dx = (0, 0) if name == STILL else DIRECTIONS[name]
        moved = _shifted(prev, dy * speed, dx * speed)
        errors[(name, speed)] = float((moved - nxt).abs().sum(1)[sel].mean())
    return errors


def _direction_of(dy: float, dx: float, minimum: float) -> str | None:
    if max(abs(dy), abs(dx)) < minimum:
        return None
    if abs(dy) > abs(dx):
        return "down" if dy > 0 else "up"
    return "right" if dx > 0 else "left"


def read_scene(video: Tensor, *, min_pixels: int = 8) -> SceneReading:
    """Read a video [F, 3, H, W] (or [F, H, W, 3]) in [0, 1]: background drift, objects by colour.

    Drift: the hypothesis ("still", or one of the four directions at 0.5 to 3 pixels per frame) that
    best predicts every frame's background from the previous frame's (object pixels left out); a
    test of the few answers a caption can give, which stripes or gradients cannot fool the way a
    free shift estimate is fooled along their constant axis. Objects: pixels near each object colour;
    a colour present in at least half the frames is an object, its direction the axis and sign of
    its centroid's net travel (None when it travels under 2 pixels).
    """
    video = video.float()
    if video.shape[-1] == 3 and video.shape[1] != 3:
        video = video.permute(0, 3, 1, 2)
    frames = video.shape[0]
    masks = _object_masks(video)
    any_object = torch.stack(list(masks.values())).any(0)  # [F, H, W]
    # Leave out object pixels, grown by the largest drift tested (and their soft edges).
    reach = 2 * math.ceil(max(_DRIFT_SPEEDS)) + 1
    grown = torch.nn.functional.max_pool2d(any_object[:, None].float(), reach, 1, reach // 2)[:, 0] > 0
    errors = drift_errors(video, ~grown[:-1] & ~grown[1:])
    drift, speed = min(errors, key=errors.get) if errors else (None, 0.0)
    dy, dx = (0, 0) if drift in (None, STILL) else DIRECTIONS[drift]
    vy, vx = dy * speed, dx * speed
    objects: dict[str, str | None] = {}
    for name, mask in masks.items():
        counts = mask.flatten(1).sum(1)
        present = counts >= min_pixels
        if int(present.sum()) * 2 < frames:
            continue
        path = []
        for t in present.nonzero().flatten().tolist():
            idx = mask[t].nonzero().float()
            path.append((float(idx[:, 0].mean()), float(idx[:, 1].mean())))
        objects[name] = _direction_of(path[-1][0] - path[0][0], path[-1][1] - path[0][1], 2.0)
    return SceneReading(drift, (vy, vx), objects)


def caption_matches(video: Tensor, caption: str) -> dict[str, bool]:
    """Per field, does the video show what the caption says? ``drift`` (the background's motion),
    ``colours`` (exactly the captioned object colours are seen), ``motions`` (every captioned object
    moves its captioned way)."""
    said, seen = parse_caption(caption), read_scene(video)
    return {
        "drift": seen.drift == said.drift,
        "colours": set(seen.objects) == set(said.objects),
        "motions": all(seen.objects.get(c) == d for c, d in said.objects.items()),
    }
