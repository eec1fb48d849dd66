"""The in-house moving-shapes model: a small ``WanTransformer3DModel`` trained here, and its pipeline.

What it is: a real diffusers Wan transformer (3-D RoPE, self-attention, text cross-attention,
flow-matching objective) of 6 layers x 4 heads x 32 channels, trained on this CPU by
:mod:`headsparse.pipelines.train_shapes` on the procedural clips of
:mod:`headsparse.pipelines.moving_shapes` (8 frames of 32x32 pixels). It denoises in *pixel space*
with 4x4 patches: the clips are flat colours on flat backgrounds, so a 4x4x3 patch is already a
compact token (48 numbers per token for a 128-wide model) and a learned autoencoder would only add
training time and a second source of error between "dense" and "sparse" videos. One clip is
8 x 8 x 8 = 512 tokens; at generation more frames keep one coherent object (16 frames of 32x32:
1024 tokens), while a larger frame (48x48, 64x64) repeats the object at its training size.
Captions are encoded by a 2-layer UMT5 encoder with frozen random weights and a word-level
tokenizer built in memory; the weights ship inside the package (``weights/moving_shapes``) and
load offline with :func:`load_moving_shapes_pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from torch import Tensor

from headsparse.pipelines import moving_shapes

WEIGHTS = Path(__file__).resolve().parent / "weights" / "moving_shapes"
MAX_TOKENS = 16  # longest caption: "a yellow triangle bouncing right on a gray background" + </s>
# Noise-level shift (as in SD3 / Wan): training samples and the sampler's steps lean towards high
# noise, where a video's layout (where the shape is in every frame) is decided.
SHIFT = 2.0


@dataclass(frozen=True)
class ShapesSize:
    """Architecture and training clip size of the moving-shapes model."""

    layers: int = 6
    heads: int = 4
    head_dim: int = 32
    ffn: int = 512
    patch: int = 4  # pixels per token side
    text_dim: int = 32
    frames: int = 8
    height: int = 32
    width: int = 32
    positions: bool = False  # (t, y, x) coordinates as 3 more input channels (see ``with_positions``)


def shapes_tokenizer():
    """A T5 (Unigram) tokenizer over the dataset's words: one token per word, nothing downloaded."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"] + [f"▁{w}" for w in moving_shapes.vocabulary()]
    pieces += list("abcdefghijklmnopqrstuvwxyz")  # unknown words still tokenize (letter by letter)
    vocab = [(piece, 0.0 if i < 3 else -float(i)) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_components(size: ShapesSize = ShapesSize(), seed: int = 0) -> dict[str, Any]:
    """Fresh (untrained) tokenizer, frozen random text encoder and transformer, from ``seed``."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from headsparse.pipelines.tiny import t5_encoder_config

    tokenizer = shapes_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(t5_encoder_config(len(tokenizer), UMT5Config))
        transformer = WanTransformer3DModel(
            patch_size=(1, size.patch, size.patch), num_attention_heads=size.heads, attention_head_dim=size.head_dim,
            in_channels=3 + (POSITION_CHANNELS if size.positions else 0), out_channels=3,
            text_dim=text_encoder.config.d_model, freq_dim=64, ffn_dim=size.ffn,
            num_layers=size.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=256,
        )
    text_encoder.requires_grad_(False)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder.eval(), "transformer": transformer}


def encode_captions(tokenizer, text_encoder, captions: list[str]) -> Tensor:
    """[B, MAX_TOKENS, text_dim] caption embeddings, zeroed after each caption's last token (as Wan does)."""
    tokens = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    ids = tokens.input_ids.to(text_encoder.device)
    mask = tokens.attention_mask.to(text_encoder.device)
    with torch.no_grad():
        hidden = text_encoder(ids, attention_mask=mask).last_hidden_state
    return hidden * mask[..., None].to(hidden.dtype)


POSITION_CHANNELS = 3


def with_positions(video: Tensor, in_channels: int) -> Tensor:
    """The transformer's input for pixels [B, 3, F, H, W]: as they are for a 3-channel model; for a
    6-channel one, with (t, y, x) coordinates in [-1, 1] across the clip appended as channels.

    Why: Wan's only position signal is relative RoPE, so at pure noise no token knows where in the
    frame it is, and "moving left" (start right, end left) cannot be drawn from the caption alone.
    Wan's image-to-video models widen ``in_channels`` for their condition the same way.
    """
    if in_channels == video.shape[1]:
        return video
    if in_channels != video.shape[1] + POSITION_CHANNELS:
        raise ValueError(f"in_channels: the transformer takes {in_channels} channels; pixels have "
                         f"{video.shape[1]} (+{POSITION_CHANNELS} with positions)")
    b, _, f, h, w = video.shape
    axes = [torch.linspace(-1, 1, n, device=video.device, dtype=video.dtype) for n in (f, h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # [3, F, H, W]
    return torch.cat([video, grid.expand(b, -1, -1, -1, -1)], dim=1)


def to_pixels(video: Tensor) -> Tensor:
    """[B, 3, F, H, W] in [-1, 1] -> [B, F, H, W, 3] float in [0, 1]."""
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)


class MovingShapesPipeline(DiffusionPipeline):
    """Text-to-video with the moving-shapes model: flow-matching Euler in pixel space, optional CFG.

    ``pipe(prompt, num_frames=8, height=32, width=32, num_inference_steps=20, guidance_scale=3.0)``
    returns an object whose ``frames`` are [B, F, H, W, 3] in [0, 1] (numpy by default, like
    ``WanPipeline``). Height and width must be multiples of 4 (the patch).
    """

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, tokenizer, text_encoder, transformer, scheduler) -> None:
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                              scheduler=scheduler)

    def encode_prompt(self, prompt: str | list[str], device: torch.device) -> Tensor:
        captions = [prompt] if isinstance(prompt, str) else list(prompt)
        return encode_captions(self.tokenizer, self.text_encoder, captions).to(device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 8,
        height: int = 32,
        width: int = 32,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        **unused: Any,
    ):
        from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

        if unused:
            raise TypeError(f"MovingShapesPipeline got unexpected arguments: {sorted(unused)}")
        patch = self.transformer.config.patch_size[1]
        if height % patch or width % patch or num_frames < 1:
            raise ValueError(f"height and width must be multiples of {patch} and num_frames >= 1; "
                             f"got {num_frames} frames of {height}x{width}")
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        device = self._execution_device
        dtype = self.transformer.dtype
        captions = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(captions)
        cond = self.encode_prompt(captions, device).to(dtype)
        cfg = guidance_scale > 1.0
        if cfg:
            negative = negative_prompt if negative_prompt is not None else ""
            negatives = [negative] * batch if isinstance(negative, str) else list(negative)
            cond = torch.cat([self.encode_prompt(negatives, device).to(dtype), cond])
        shape = (batch, 3, num_frames, height, width)
        x = torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        with self.progress_bar(total=num_inference_steps) as bar:
            for t in self.scheduler.timesteps:
                inp = with_positions(torch.cat([x, x]) if cfg else x, self.transformer.config.in_channels)
                v = self.transformer(hidden_states=inp.to(dtype), timestep=t.expand(inp.shape[0]),
                                     encoder_hidden_states=cond, return_dict=False)[0].float()
                if cfg:
                    uncond, text = v.chunk(2)
                    v = uncond + guidance_scale * (text - uncond)
                x = self.scheduler.step(v, t, x, return_dict=False)[0]
                bar.update()
        frames = to_pixels(x)
        self.maybe_free_model_hooks()
        out = frames.cpu().numpy() if output_type == "np" else frames
        return WanPipelineOutput(frames=out) if return_dict else (out,)


def shapes_scheduler(shift: float = SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift)


def load_moving_shapes_pipeline(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
                                device: str | torch.device = "cpu") -> MovingShapesPipeline:
    """The trained moving-shapes pipeline from ``path`` (default: the weights shipped in the package).

    ``path`` is a folder written by ``MovingShapesPipeline.save_pretrained`` (the training script
    writes one); nothing is downloaded.
    """
    folder = Path(path) if path is not None else WEIGHTS
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no moving-shapes weights at {folder} (expected model_index.json); train them with "
            "`python -m headsparse.pipelines.train_shapes --out DIR`"
        )
    pipe = MovingShapesPipeline.from_pretrained(folder, torch_dtype=dtype)
    pipe.text_encoder.to(torch.float32)  # tiny; float32 keeps caption embeddings identical across dtypes
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
