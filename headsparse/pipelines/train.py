"""Train an embedded pixel-space model on this CPU: ``python -m headsparse.pipelines.train --dataset scenes --out DIR``.

Datasets: ``shapes`` (:mod:`headsparse.pipelines.moving_shapes`, the moving-shapes model) and ``scenes``
(:mod:`headsparse.pipelines.drifting_scenes`, the drifting-scenes model). With several clip sizes
(``--sizes 16x32x32 4x64x64``) step ``i`` trains on size ``i % len(sizes)``.

Rectified flow (flow matching) as diffusers' ``FlowMatchEulerDiscreteScheduler`` samples it:
``x_s = (1 - s) x0 + s noise`` with ``s`` logit-normal (SD3) and shifted towards high noise by
``shapes.SHIFT`` (``s -> shift s / (1 + (shift - 1) s)``, the sampler's own shift), the
transformer predicts ``noise - x0`` at timestep ``1000 s``. Captions are dropped (replaced by "")
10% of the time so that classifier-free guidance works. AdamW with warm-up and cosine decay; an
exponential moving average of the weights is what gets saved. ``--positions`` builds a
6-channel transformer that also sees each pixel's (t, y, x) coordinates (``shapes.with_positions``).
Everything follows from ``--seed``: clip ``i`` of the stream is
``dataset.clip(seed * 10**7 + i)``, so a rerun reproduces the same batches.
The run writes ``loss.csv`` (step, loss, smoothed loss, lr, seconds) as it goes, a resumable
``checkpoint.pt`` every ``--save-every`` steps, and at the end the EMA pipeline
(``save_pretrained``, safetensors) into ``DIR/pipeline``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from headsparse.pipelines import drifting_scenes, moving_shapes, scenes, shapes
from headsparse.pipelines.pixel_video import (
    PixelModelSize,
    PixelVideoPipeline,
    build_components,
    encode_captions,
    flow_scheduler,
    with_positions,
)

Size = tuple[int, int, int]


@dataclass(frozen=True)
class Dataset:
    """A procedural dataset and the pipeline class its model is saved as."""

    name: str
    clip: Callable[..., tuple[torch.Tensor, str]]
    vocabulary: Callable[[], list[str]]
    pipeline: type[PixelVideoPipeline]
    sizes: tuple[Size, ...]  # default training clip sizes (frames, height, width), pixels
    shift: float


DATASETS = {
    "shapes": Dataset("shapes", moving_shapes.clip, moving_shapes.vocabulary, shapes.MovingShapesPipeline,
                      ((8, 32, 32),), shapes.SHIFT),
    "scenes": Dataset("scenes", drifting_scenes.clip, drifting_scenes.vocabulary, scenes.DriftingScenesPipeline,
                      scenes.TRAIN_SIZES, scenes.SHIFT),
}
SHIFT = shapes.SHIFT


def dataset_named(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def batch_of(step: int, batch: int, seed: int, size: Size,
             dataset: Dataset = DATASETS["shapes"]) -> tuple[torch.Tensor, list[str]]:
    """Clips ``step * batch ...`` of the seed's stream at ``size`` (frames, height, width): video
    [B, 3, F, H, W] in [-1, 1] and captions."""
    frames, height, width = size
    videos, captions = [], []
    for j in range(batch):
        video, caption = dataset.clip(seed * 10**7 + step * batch + j, frames=frames, height=height, width=width)
        videos.append(video.permute(1, 0, 2, 3) * 2 - 1)
        captions.append(caption)
    return torch.stack(videos), captions


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(out: Path, *, steps: int, batch: int, lr: float, seed: int, ema_decay: float, save_every: int,
          warmup: int = 200, drop: float = 0.1, threads: int | None = None, size: PixelModelSize | None = None,
          init: Path | None = None, shift: float | None = None, quiet: bool = False, dataset: str = "shapes",
          sizes: Sequence[Size] | None = None) -> Path:
    """Train (resuming from ``out/checkpoint.pt`` if present); returns the saved pipeline folder.

    ``size`` is the architecture (and, without ``sizes``, the one training clip size); ``sizes``
    the clip sizes trained on in turn (default: the dataset's, or ``size``'s clip when ``size`` is
    given). ``init`` is a saved pipeline folder whose transformer and text encoder weights the run
    starts from (a second stage of training); when resuming, the checkpoint's transformer replaces
    the init's, so the same command both starts and resumes a stage.
    """
    if threads:
        torch.set_num_threads(threads)
    data = dataset_named(dataset)
    shift = data.shift if shift is None else shift
    if sizes is None:
        sizes = data.sizes if size is None else ((size.frames, size.height, size.width),)
    sizes = tuple(tuple(int(n) for n in s) for s in sizes)
    out.mkdir(parents=True, exist_ok=True)
    size = size or PixelModelSize(frames=sizes[0][0], height=sizes[0][1], width=sizes[0][2])
    parts = build_components(size, data.vocabulary(), seed)
    tokenizer, text_encoder, model = parts["tokenizer"], parts["text_encoder"], parts["transformer"]
    if init is not None:
        start_from(init, text_encoder, model)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    # Every caption the grammar can produce, and "", encoded once: the text encoder is frozen.
    cache: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    start = 0
    ckpt = out / "checkpoint.pt"
    log = out / "loss.csv"
    smooth = None
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, smooth = state["step"], state["smooth"]
        if not quiet:
            print(f"resuming at step {start}")
    elif log.exists():
        log.unlink()
    offset = 0.0
    if log.exists():  # keep the log up to the checkpoint (a killed run may have logged a few steps more)
        kept = [line for line in log.read_text().splitlines()[1:] if int(line.split(",")[0]) <= start]
        offset = float(kept[-1].split(",")[-1]) if kept else 0.0
        log.write_text("\n".join(["step,loss,smooth,lr,seconds", *kept]) + "\n")
    else:
        log.write_text("step,loss,smooth,lr,seconds\n")
    params = sum(p.numel() for p in model.parameters())
    if not quiet:
        clips = ", ".join(f"{f}x{h}x{w} px ({f * (h // size.patch) * (w // size.patch)} tokens)" for f, h, w in sizes)
        print(f"transformer: {params / 1e6:.2f} M parameters; {steps} steps of {batch} {data.name} clips of {clips}")
    model.train()
    t0 = time.perf_counter()
    max_tokens = data.pipeline.max_caption_tokens
    for step in range(start, steps):
        x0, captions = batch_of(step, batch, seed, sizes[step % len(sizes)], data)
        keep = torch.rand(batch, generator=gen) >= drop
        captions = [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]
        missing = sorted({c for c in captions if c not in cache})
        if missing:
            cache.update(zip(missing, encode_captions(tokenizer, text_encoder, missing, max_tokens), strict=True))
        text = torch.stack([cache[c] for c in captions])
        s = torch.sigmoid(torch.randn(batch, generator=gen))  # logit-normal(0, 1), as SD3
        s = shift * s / (1 + (shift - 1) * s)
        noise = torch.randn(x0.shape, generator=gen)
        sb = s[:, None, None, None, None]
        xs = (1 - sb) * x0 + sb * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        pred = model(hidden_states=with_positions(xs, model.config.in_channels), timestep=s * 1000,
                     encoder_hidden_states=text, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        value = loss.item()
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        seconds = offset + time.perf_counter() - t0
        with log.open("a") as f:
            f.write(f"{step + 1},{value:.5f},{smooth:.5f},{opt.param_groups[0]['lr']:.6g},{seconds:.1f}\n")
        if (step + 1) % 50 == 0 and not quiet:
            print(f"step {step + 1}/{steps} loss {value:.4f} (smoothed {smooth:.4f}) {seconds:.0f} s", flush=True)
        if (step + 1) % save_every == 0 or step + 1 == steps:
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "gen": gen.get_state(), "step": step + 1, "smooth": smooth}, ckpt)
    return save_pipeline(out / "pipeline", tokenizer, text_encoder, ema, shift, data.pipeline)


def start_from(folder: Path, text_encoder, transformer) -> None:
    """Load the text encoder and transformer weights of the pipeline saved in ``folder``."""
    for name, module in (("text_encoder", text_encoder), ("transformer", transformer)):
        if not (Path(folder) / name / "config.json").is_file():
            raise FileNotFoundError(f"init: no {name} in {folder} (expected a saved MovingShapesPipeline)")
        saved = type(module).from_pretrained(Path(folder) / name)
        if name == "transformer" and saved.config.in_channels != module.config.in_channels:
            raise ValueError(f"init: {folder} has a transformer of {saved.config['in_channels']} input channels, "
                             f"this run builds {module.config['in_channels']} (--positions must match)")
        module.load_state_dict(saved.state_dict(), strict=True)


def save_pipeline(folder: Path, tokenizer, text_encoder, transformer, shift: float = SHIFT,
                  pipeline: type[PixelVideoPipeline] = shapes.MovingShapesPipeline) -> Path:
    pipe = pipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer.eval(),
                    scheduler=flow_scheduler(shift))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def export(out: Path, seed: int = 0, size: PixelModelSize | None = None, init: Path | None = None,
           shift: float | None = None, dataset: str = "shapes") -> Path:
    """Save the EMA weights of ``out/checkpoint.pt`` as a pipeline in ``out/pipeline`` (e.g. mid-training)."""
    data = dataset_named(dataset)
    parts = build_components(size or PixelModelSize(), data.vocabulary(), seed)
    if init is not None:  # the text encoder the run was trained with
        start_from(init, parts["text_encoder"], parts["transformer"])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    parts["transformer"].load_state_dict(state["ema"])
    return save_pipeline(out / "pipeline", parts["tokenizer"], parts["text_encoder"], parts["transformer"],
                         data.shift if shift is None else shift, data.pipeline)


def parse_size(text: str) -> Size:
    """'16x32x32' -> (16, 32, 32): frames x height x width in pixels."""
    try:
        f, h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a clip size is FRAMESxHEIGHTxWIDTH, e.g. 16x32x32; got {text!r}") from None
    return f, h, w


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="shapes")
    parser.add_argument("--sizes", type=parse_size, nargs="+",
                        help="training clip sizes FRAMESxHEIGHTxWIDTH in pixels, used in turn (default: the dataset's)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--shift", type=float, default=None,
                        help="noise-level shift of training and sampling (default: the dataset's)")
    parser.add_argument("--positions", action="store_true",
                        help="append (t, y, x) coordinates as input channels (a 6-channel transformer)")
    parser.add_argument("--qk-gain", type=float, default=1.0,
                        help="initial scale of self-attention logits (see PixelModelSize.qk_gain)")
    parser.add_argument("--local-prior", action="store_true",
                        help="start every self-attention head local (see PixelModelSize.local_prior)")
    parser.add_argument("--init", type=Path, default=None,
                        help="a saved pipeline folder to start from (e.g. the shipped weights)")
    parser.add_argument("--export", action="store_true", help="only save the checkpoint's EMA weights as a pipeline")
    args = parser.parse_args(argv)
    data = dataset_named(args.dataset)
    sizes = tuple(args.sizes) if args.sizes else data.sizes
    f, h, w = sizes[0]
    size = PixelModelSize(frames=f, height=h, width=w, positions=args.positions, qk_gain=args.qk_gain,
                          local_prior=args.local_prior)
    if args.export:
        folder = export(args.out, args.seed, size, init=args.init, shift=args.shift, dataset=args.dataset)
        print(f"saved the EMA pipeline to {folder}")
        return
    folder = train(args.out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                   ema_decay=args.ema, save_every=args.save_every, threads=args.threads, warmup=args.warmup,
                   size=size, init=args.init, shift=args.shift, dataset=args.dataset, sizes=sizes)
    print(f"saved the EMA pipeline to {folder}")


if __name__ == "__main__":
    main()
