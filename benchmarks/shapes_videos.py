"""Does an embedded model draw what its captions say? Videos read back by pixels, GIFs, loss curve.

For held-out captions (clip seeds the training stream never uses), the dense pipeline generates a
video at the training grid and at larger grids; each video is read back and compared with its
caption. Moving shapes (``--model shapes``, the default; 8 frames of 32x32 pixels first): read by
``moving_shapes.describe`` (nearest-palette pixels: background, shape colour, fill ratio -> shape,
centroid path -> direction and whether it turns back). Drifting scenes (``--model scenes``; 16
frames of 32x32 and 64x64 pixels): read by ``drifting_scenes.caption_matches`` (the background's
drift, which object colours are seen, each object's direction). The same reader on the dataset's
own clips of those seeds gives the ceiling. Writes a mosaic GIF per grid, the loss curve PNG from
the training logs (one per stage), and a markdown table. Its seconds column is one dense run's
wall time for the grid's videos, given for information only: nothing is compared, so no warm-up,
interleaving or repeats.

    python benchmarks/shapes_videos.py                   # results/shapes_videos_cpu.md, results/shapes/
    python benchmarks/shapes_videos.py --model scenes    # results/scenes_videos_cpu.md, results/scenes/
    python benchmarks/shapes_videos.py --count 4 --grids 8x32x32 --steps 4   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from headsparse.machine import device_line, device_report
from headsparse.pipelines.media import write_gif

sys.path.insert(0, str(Path(__file__).parent))
from embedded import MODELS, RESULTS, EmbeddedModel, add_model_arguments, parse_grid, token_grid

HELD_OUT = 10**9  # clip seeds from here on are never drawn by the training stream (seed * 10**7 + i)


def mosaic(videos: np.ndarray, labels: list[list[str]], columns: int = 4, scale: int = 3) -> np.ndarray:
    """[F, H', W', 3]: the videos [N, F, H, W, 3] upscaled and tiled, each with its label's lines below."""
    import cv2

    n, frames, h, w, _ = videos.shape
    big = videos.repeat(scale, axis=2).repeat(scale, axis=3)
    th, tw, gap = h * scale, w * scale, 4
    most = max(len(lines) for lines in labels)
    # Between the baselines of a label's lines; a one-line label keeps the 14-pixel strip the moving-shapes
    # GIFs always had, whatever the font size.
    pitch = round(10 * tw / 96) if most > 1 else 10
    strip = 4 + pitch * most
    rows = -(-n // columns)
    canvas = np.ones((frames, rows * (th + strip + gap), columns * (tw + gap), 3), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, columns)
        y, x = r * (th + strip + gap), c * (tw + gap)
        canvas[:, y : y + th, x : x + tw] = big[i]
        label = np.ones((strip, tw, 3), dtype=np.uint8) * 255
        for j, line in enumerate(labels[i]):
            cv2.putText(label, line, (1, pitch * (j + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.3 * tw / 96, (0, 0, 0), 1,
                        cv2.LINE_AA)
        canvas[:, y + th : y + th + strip, x : x + tw] = label / 255.0
    return canvas


def loss_curve(logs: list[Path], out: Path, title: str) -> list[dict]:
    """Plot the training logs of successive stages (each resumed from the last) against CPU hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=120)
    stages, offset = [], 0.0
    for n, log in enumerate(logs, 1):
        with log.open() as f:
            rows = list(csv.DictReader(f))
        hours = [offset + float(r["seconds"]) / 3600 for r in rows]
        name = "" if len(logs) == 1 else f"stage {n}: "  # a single run needs no stage number
        ax.plot(hours, [float(r["loss"]) for r in rows], lw=0.4, alpha=0.3, color=f"C{n - 1}")
        ax.plot(hours, [float(r["smooth"]) for r in rows], lw=1.5, color=f"C{n - 1}",
                label=f"{name}{len(rows)} steps (smoothed)")
        stages.append({"name": name, "steps": int(rows[-1]["step"]), "final_smooth": float(rows[-1]["smooth"]),
                       "hours": hours[-1] - offset})
        offset = hours[-1]
    ax.set_xlabel("training time on this CPU (hours)")
    ax.set_ylabel("flow-matching MSE")
    ax.set_yscale("log")
    ax.set_title(f"{title}: training loss (thin: batch loss)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return stages


def read_back(model: EmbeddedModel, videos: list[torch.Tensor], captions: list[str]) -> dict[str, int]:
    """Per field (and 'all'): how many of the videos show what their caption says."""
    hits = {f: 0 for f in (*model.fields, "all")}
    for video, caption in zip(videos, captions, strict=True):
        m = model.dataset.caption_matches(video, caption)
        for f in model.fields:
            hits[f] += m[f]
        hits["all"] += all(m.values())
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--grids", nargs="+", default=None,
                        help="FRAMESxHxW (default: shapes 8x32x32 16x32x32 16x64x64, scenes 16x32x32 16x64x64)")
    parser.add_argument("--count", type=int, default=16, help="captions per grid")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--train-logs", type=Path, nargs="+", default=None,
                        help="loss.csv of each training stage, in order (default: results/<model>_train_loss.csv)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = MODELS[args.model]
    pipe = model.load(args.model_path)
    gif_dir = args.out / model.name
    gif_dir.mkdir(parents=True, exist_ok=True)
    seeds = [HELD_OUT + i for i in range(args.count)]
    fields = model.fields
    lines = [
        f"# {model.title}: generated videos read back by pixels",
        "",
        f"Device: {device_line(device_report('cpu'))}. Command: `python {' '.join(sys.argv)}`. Dense attention, "
        f"{args.steps} Euler steps, guidance {args.guidance}, seed i for caption i; the {args.count} captions are "
        f"those of held-out dataset clips {HELD_OUT}..{HELD_OUT + args.count - 1}. A field counts as right when "
        f"{model.reader} reads the captioned value from the video. The 'dataset' rows read the real "
        "clips of the same seeds rendered at that grid: the reader's ceiling. Seconds: the wall time of generating "
        "the grid's videos one after the other (dense only, one run, the first one paying any first-call costs), "
        "for information; it is not a comparison.",
        "",
        "| grid (frames x H x W px) | tokens | source | " + " | ".join(fields)
        + f" | {model.all_fields} | seconds (dense, one run, for information) |",
        "|---|---:|---|" + "---:|" * (len(fields) + 2),
    ]
    for text in args.grids or model.video_grids:
        frames, height, width = parse_grid(text)
        real, captions = zip(*(model.dataset.clip(s, frames=frames, height=height, width=width) for s in seeds),
                             strict=True)
        captions = list(captions)
        start = time.perf_counter()
        videos = []
        for i, caption in enumerate(captions):
            out = pipe(caption, num_frames=frames, height=height, width=width, num_inference_steps=args.steps,
                       guidance_scale=args.guidance, generator=torch.Generator().manual_seed(i))
            videos.append(out.frames[0])
        seconds = time.perf_counter() - start
        videos_np = np.stack(videos)
        tokens = math.prod(token_grid(pipe, frames, height, width))
        for source, vids in (("generated", [torch.from_numpy(v) for v in videos_np]), ("dataset", list(real))):
            hits = read_back(model, vids, captions)
            cells = " | ".join(f"{hits[f]}/{len(vids)}" for f in (*fields, "all"))
            secs = f"{seconds:.0f}" if source == "generated" else "-"
            lines.append(f"| {text} | {tokens} | {source} | {cells} | {secs} |")
        labels = [model.label(c) for c in captions]
        gif = write_gif(mosaic(videos_np, labels), gif_dir / f"generated_{text}.gif", fps=6)
        write_gif(mosaic(np.stack([r.permute(0, 2, 3, 1).numpy() for r in real]), labels),
                  gif_dir / f"dataset_{text}.gif", fps=6)
        print(lines[-2], lines[-1], f"-> {gif}", sep="\n", flush=True)
    logs = [log for log in args.train_logs or [model.train_log] if log.is_file()]
    if logs:
        plot = f"{model.name}_loss.png"
        stages = loss_curve(logs, args.out / plot, model.title.lower())
        done = "; ".join(f"{st['name']}{st['steps']} steps in {st['hours']:.2f} h, final smoothed loss "
                         f"{st['final_smooth']:.4f} (`{log.name}`)" for st, log in zip(stages, logs, strict=True))
        lines += ["", f"Training on this CPU: {done}; {sum(st['hours'] for st in stages):.2f} h in all; "
                  f"curve: `{plot}`."]
    lines += ["", "GIFs (generated, and the dataset's clips of the same captions): "
              f"`{model.name}/generated_<grid>.gif`, `{model.name}/dataset_<grid>.gif`.", ""]
    (args.out / f"{model.name}_videos_cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
