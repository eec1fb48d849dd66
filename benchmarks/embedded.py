"""The embedded models the ``shapes_*`` benchmarks run on, one row each: loader, captions, reader, file prefix, grids.

``--model shapes`` (the default) is the moving-shapes model (:mod:`headsparse.pipelines.shapes`, captions
and reader in :mod:`headsparse.pipelines.moving_shapes`); ``--model scenes`` is the drifting-scenes model
(:mod:`headsparse.pipelines.scenes`, :mod:`headsparse.pipelines.drifting_scenes`). Both datasets offer
``clip(seed, frames=, height=, width=) -> (video, caption)`` and ``caption_matches(video, caption)``;
a model's results are written as ``<name>_*`` (``shapes_attention_cpu.md``, ``scenes_attention_cpu.md``).
Also here: the 3-D local windows (NATTEN neighbourhoods, sliding tiles) clipped to a token grid, which
``shapes_attention.py`` measures and ``shapes_fidelity.py`` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from headsparse.pipelines import drifting_scenes, moving_shapes
from headsparse.pipelines.presets import Preset, preset_for
from headsparse.pipelines.scenes import load_scenes_pipeline
from headsparse.pipelines.shapes import load_moving_shapes_pipeline

RESULTS = Path(__file__).parent / "results"
NUMBERS = {3: "three", 5: "five"}


def shapes_label(caption: str) -> list[str]:
    """A moving-shapes caption as a GIF label: one line."""
    return [caption.replace(" on a gray background", " (gray)").removeprefix("a ")]


def scenes_label(caption: str) -> list[str]:
    """A drifting-scenes caption as a GIF label: a line per object, then the background."""
    things, _, ground = caption.partition(" on a ")
    lines = [t.removeprefix("a ").replace(" moving ", " ") for t in things.split(" and ")]
    return [*lines, ground.replace(" background", ",").removesuffix(",")]  # "striped, drifting up", "still checkered"


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model as the benchmarks see it."""

    name: str  # the --model choice, the preset's name and the result files' prefix
    title: str  # for headings: "Moving-shapes model"
    load: Callable[[str | None], Any]  # weights folder (None: the shipped weights) -> pipeline
    dataset: ModuleType  # clip(seed, frames=, height=, width=) and caption_matches(video, caption)
    sample: Callable[..., Any]  # seed (and frames=, height=, width=) -> what a clip shows, with .caption
    fields: tuple[str, ...]  # caption_matches' keys, in table order
    reader: str  # what reads a video back, for the write-ups
    label: Callable[[str], list[str]]  # a caption as the lines of its GIF label
    attention_grids: tuple[str, ...]  # default grids, FRAMESxHxW pixels, per script
    video_grids: tuple[str, ...]
    fidelity_grid: str = "16x64x64"

    def caption(self, seed: int, **size: int) -> str:
        """The caption of the dataset clip ``seed`` (``size``: frames, height, width; default the dataset's)."""
        return self.sample(seed, **size).caption

    @property
    def all_fields(self) -> str:
        """The table header of 'every field right': 'all five'."""
        return f"all {NUMBERS.get(len(self.fields), len(self.fields))}"

    @property
    def train_log(self) -> Path:
        return RESULTS / f"{self.name}_train_loss.csv"

    def preset(self) -> Preset:
        """The model's generation preset (dense warm-up, defaults)."""
        return preset_for(self.name)


MODELS: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel("shapes", "Moving-shapes model", load_moving_shapes_pipeline, moving_shapes,
                  moving_shapes.sample_clip, ("colour", "shape", "background", "direction", "motion"),
                  "`moving_shapes.describe`", shapes_label, ("8x32x32", "16x64x64"),
                  ("8x32x32", "16x32x32", "16x64x64")),
    EmbeddedModel("scenes", "Drifting-scenes model", load_scenes_pipeline, drifting_scenes,
                  drifting_scenes.sample_scene, ("drift", "colours", "motions"),
                  "`drifting_scenes.caption_matches` (background drift, the object colours seen, each object's "
                  "direction)", scenes_label, ("16x64x64", "16x32x32"), ("16x32x32", "16x64x64")),
)}


def add_model_arguments(parser) -> None:
    """--model and --model-path, the same in every script."""
    parser.add_argument("--model", choices=sorted(MODELS), default="shapes", help="which embedded model")
    parser.add_argument("--model-path", default=None, help="a trained pipeline folder (default: the shipped weights)")


def parse_grid(text: str) -> tuple[int, int, int]:
    """'16x64x64' -> (16, 64, 64): frames, height, width in pixels."""
    f, h, w = (int(x) for x in text.lower().split("x"))
    return f, h, w


def token_grid(pipe: Any, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(frames, height, width) in tokens of a pixel grid, from the transformer's patch size."""
    pt, ph, pw = pipe.transformer.config.patch_size
    return frames // pt, height // ph, width // pw


# 3-D local windows, what a model whose heads are local windows keeps: NATTEN neighbourhoods and sliding tiles.
LOCAL_KERNELS = ((5, 5, 5), (7, 7, 7), (7, 9, 9), (9, 9, 9))
TILE, TILE_WINDOW = (4, 4, 4), (3, 3, 3)


def local_windows(frames: int, height: int, width: int) -> dict[str, dict[str, Any]]:
    """name -> ``headsparse.patch`` keyword arguments of each local window on a token grid, clipped to it.

    A kernel (or tile) longer than an axis is cut to the axis's length. ``Neighborhood`` does not check
    kernels against the grid (a longer one covers the whole axis, the same mask; NATTEN itself would
    refuse it), so the cut changes no mask: it keeps the stated parameters what the mask is.
    """
    dims = (frames, height, width)

    def fit(size: tuple[int, int, int]) -> tuple[int, int, int]:
        f, h, w = (min(k, n) for k, n in zip(size, dims, strict=True))
        return f, h, w

    def named(size: tuple[int, int, int]) -> str:
        return "x".join(map(str, size))

    out: dict[str, dict[str, Any]] = {
        f"neighborhood_{named(k)}": {"pattern": "neighborhood", "kernel_size": fit(k)} for k in LOCAL_KERNELS}
    out[f"sliding_tile_{named(TILE)}"] = {"pattern": "sliding_tile", "tile": fit(TILE), "window": TILE_WINDOW}
    return out
