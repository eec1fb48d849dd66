"""Has the moving-shapes model learned the captioned direction? Its predictions, per direction word.

A video's layout (where the shape is in each frame) is decided in the first sampling steps, at
nearly pure noise, where the best prediction is the mean clip of the caption. In the dataset that
mean moves the captioned way: a shape "moving left" starts on the right, so the mean's centroid
along the motion axis runs from one side to the other. This script compares, for each direction
word and both motions, that centroid path in the dataset's clips with the one in the model's
prediction of ``x0`` at noise level 1 (averaged over noise samples, no guidance). A model that
learned the direction reproduces the dataset's paths; one that did not predicts the same path for
every direction. Seconds on a CPU, no generation.

A second table swaps the word at partial noise: real clips moving one way are noised to level
``s`` and the model predicts ``x0`` from them with the true direction word, the opposite one and no
caption. Where the noisy clip still hides the path (``s`` near 1) a model that reads the word moves
its prediction the way the word says; one that ignores it predicts the same path for both words.

    python benchmarks/shapes_direction.py               # results/shapes_direction_cpu.md
    python benchmarks/shapes_direction.py --model-path outputs/run/pipeline
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from headsparse.machine import device_name
from headsparse.pipelines import moving_shapes
from headsparse.pipelines.shapes import load_moving_shapes_pipeline, with_positions

RESULTS = Path(__file__).parent / "results"


def centroid_path(video: torch.Tensor, colour: str, axis: int) -> torch.Tensor:
    """[F]: centroid (pixels) along ``axis`` (0 rows, 1 columns) of the mass of ``colour`` in video [N, F, 3, H, W]."""
    rgb = torch.tensor(moving_shapes.COLOURS[colour])[None, None, :, None, None]
    # How much each pixel looks like the colour, against black: its projection on the colour.
    mass = (video * rgb).sum(2).clamp(min=0)  # [N, F, H, W]
    profile = mass.sum((0, 3 - axis))  # [F, extent]: summed over samples and the other axis
    coord = torch.arange(profile.shape[-1], dtype=torch.float32) + 0.5
    return (profile * coord).sum(-1) / profile.sum(-1).clamp(min=1e-9)


def dataset_paths(clips: int, frames: int, size: int) -> dict[tuple[str, str], torch.Tensor]:
    """(motion, direction) -> mean centroid path of real clips along the direction's axis."""
    paths: dict[tuple[str, str], list[torch.Tensor]] = {}
    seed = 10**9
    while min((len(v) for v in paths.values()), default=0) < clips or len(paths) < 8:
        c = moving_shapes.sample_clip(seed, height=size, width=size, frames=frames)
        seed += 1
        key = (c.motion, c.direction)
        if len(paths.setdefault(key, [])) >= clips:
            continue
        axis = 0 if moving_shapes.DIRECTIONS[c.direction][0] else 1
        centres = moving_shapes.centres(c, frames, size, size)
        paths[key].append(torch.tensor([p[axis] for p in centres]))
    return {k: torch.stack(v).mean(0) for k, v in paths.items()}


def predicted_x0(pipe, xs: torch.Tensor, s: float, prompt: str) -> torch.Tensor:
    """[N, F, 3, H, W] in [0, 1]: the model's x0 prediction (no guidance) from clips ``xs`` noised to level ``s``."""
    transformer = pipe.transformer
    text = pipe.encode_prompt(prompt, xs.device).expand(len(xs), -1, -1)
    with torch.no_grad():
        v = transformer(hidden_states=with_positions(xs, transformer.config.in_channels),
                        timestep=torch.full((len(xs),), 1000.0 * s), encoder_hidden_states=text, return_dict=False)[0]
    return ((xs - s * v).clamp(-1, 1) + 1).div(2).permute(0, 2, 1, 3, 4)


def model_paths(pipe, samples: int, frames: int, size: int) -> dict[tuple[str, str], torch.Tensor]:
    """(motion, direction) -> centroid path of the model's x0 prediction at noise level 1 ('a red square ...')."""
    noise = torch.randn(samples, 3, frames, size, size, generator=torch.Generator().manual_seed(0))
    out = {}
    for motion in moving_shapes.MOTIONS:
        for direction, (dy, _) in moving_shapes.DIRECTIONS.items():
            x0 = predicted_x0(pipe, noise, 1.0, f"a red square {motion} {direction}")  # black background
            out[(motion, direction)] = centroid_path(x0, "red", 0 if dy else 1)
    return out


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def swap_travel(pipe, clips: int, levels: tuple[float, ...], frames: int, size: int) -> dict:
    """(direction, s, prompt) -> travel (px) of the x0 prediction from noised 'a red square moving <direction>'
    clips, prompted with the true word, the opposite word and no caption."""
    gen = torch.Generator().manual_seed(1)
    out = {}
    for direction, (dy, _) in moving_shapes.DIRECTIONS.items():
        videos, seed = [], 2 * 10**9
        want = ("square", "red", "black", "moving", direction)
        while len(videos) < clips:
            c = moving_shapes.sample_clip(seed, height=size, width=size, frames=frames)
            seed += 1
            if (c.shape, c.colour, c.background, c.motion, c.direction) == want:
                video = moving_shapes.render(c, frames=frames, height=size, width=size)
                videos.append(video.permute(1, 0, 2, 3) * 2 - 1)
        x0 = torch.stack(videos)  # [N, 3, F, H, W]
        noise = torch.randn(x0.shape, generator=gen)
        prompts = {"true": f"a red square moving {direction}", "opposite": f"a red square moving {OPPOSITE[direction]}",
                   "none": ""}
        for s in levels:
            xs = (1 - s) * x0 + s * noise
            for name, prompt in prompts.items():
                path = centroid_path(predicted_x0(pipe, xs, s, prompt), "red", 0 if dy else 1)
                out[(direction, s, name)] = float(path[-1] - path[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, help="a saved MovingShapesPipeline (default: the shipped weights)")
    parser.add_argument("--samples", type=int, default=16, help="noise samples averaged")
    parser.add_argument("--clips", type=int, default=200, help="dataset clips per (motion, direction)")
    parser.add_argument("--swap-clips", type=int, default=8, help="real clips per direction in the word-swap table")
    parser.add_argument("--out", type=Path, default=RESULTS / "shapes_direction_cpu.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = load_moving_shapes_pipeline(args.model_path)
    frames, size = 8, 32
    data = dataset_paths(args.clips, frames, size)
    model = model_paths(pipe, args.samples, frames, size)
    lines = [
        "# Moving shapes: the captioned direction in the model's predictions", "",
        "## The mean clip at pure noise", "",
        f"Device: {device_name('cpu')}. Command: `python {' '.join(sys.argv)}`. Model: "
        f"{args.model_path or 'the shipped weights'}. Centroid (pixels, along the direction's axis; the frame "
        f"is {size} px) of the red mass of `a red square <motion> <direction>`, frame 0 -> frame {frames - 1}: "
        f"the dataset's mean over {args.clips} clips, and the model's prediction of x0 at noise level 1 averaged "
        f"over {args.samples} noise samples. 'travel' is last minus first.", "",
        "| motion | direction | dataset path | dataset travel | model path | model travel |",
        "|---|---|---|---:|---|---:|",
    ]
    for key in sorted(data):
        d, m = data[key], model[key]
        lines.append(f"| {key[0]} | {key[1]} | {' '.join(f'{x:.1f}' for x in d.tolist())} | {d[-1] - d[0]:+.1f} | "
                     f"{' '.join(f'{x:.1f}' for x in m.tolist())} | {m[-1] - m[0]:+.1f} |")
    spread = torch.stack([model[("moving", "left")] - model[("moving", "right")],
                          model[("moving", "up")] - model[("moving", "down")]]).abs().max()
    lines += ["", f"Largest gap between opposite directions in the model's paths: {spread:.2f} px "
              f"(dataset: {(data[('moving', 'left')] - data[('moving', 'right')]).abs().max():.1f} px)."]
    levels = (0.97, 0.93, 0.9, 0.8)
    swap = swap_travel(pipe, args.swap_clips, levels, frames, size)
    lines += ["", "## Swapping the direction word at partial noise", "",
              f"Travel (px, last frame minus first, along the direction's axis) of the model's x0 prediction from "
              f"{args.swap_clips} real clips of `a red square moving <direction>` noised to level s, prompted with "
              "the true word / the opposite word / no caption (the clips travel "
              f"{data[('moving', 'right')][-1] - data[('moving', 'right')][0]:.1f} px).", "",
              "| direction | " + " | ".join(f"s = {s}" for s in levels) + " |",
              "|---|" + "---:|" * len(levels)]
    for direction in moving_shapes.DIRECTIONS:
        cells = [" / ".join(f"{swap[(direction, s, n)]:+.1f}" for n in ("true", "opposite", "none")) for s in levels]
        lines.append(f"| {direction} | " + " | ".join(cells) + " |")
    gap = max(abs(swap[(d, s, "true")] - swap[(d, s, "opposite")]) for d in moving_shapes.DIRECTIONS for s in levels)
    lines += ["", f"Largest difference the word makes (true minus opposite): {gap:.2f} px."]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
