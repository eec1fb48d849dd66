"""Pixel-space text-to-video with a small ``WanTransformer3DModel``: the embedded models' pipeline.

headsparse ships models trained in-house on this project's CPU (moving shapes, drifting scenes).
They are real diffusers Wan transformers (3-D RoPE self-attention, text cross-attention,
flow-matching objective) that denoise *pixels* in 4x4 patches: the clips are procedural and small,
so a learned autoencoder would only add training time and a second source of error between
"dense" and "sparse" videos. Captions are encoded by a 2-layer UMT5 encoder with frozen random
weights and a word-level T5 tokenizer built from the dataset's vocabulary; nothing is downloaded.

:class:`PixelVideoPipeline` is a ``DiffusionPipeline`` with diffusers' usual call arguments
(``negative_prompt``, ``latents``, ``output_type``, ``return_dict``, ``callback_on_step_end``...);
each embedded model subclasses it with its name and caption length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline
from torch import Tensor

POSITION_CHANNELS = 3


@dataclass(frozen=True)
class PixelModelSize:
    """Architecture of an embedded pixel-space model (and the clip size it trains on by default)."""

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
    # Initial scale of self-attention logits (the q and k norms' weights start at its square root). Why: with
    # q/k RMS-normed over 32 dims, logits start within about +-6, too flat to single out a neighbourhood
    # among a thousand tokens; a larger start lets heads become local in hundreds of steps, not thousands.
    qk_gain: float = 1.0
    # Start every self-attention head local (see ``local_prior``), as ConViT starts its heads as convolutions;
    # training keeps the locality where it helps and unlearns it where content matters more.
    local_prior: bool = False


def word_tokenizer(words: Sequence[str]):
    """A T5 (Unigram) tokenizer with one token per word of ``words``; other words go letter by letter."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"] + [f"▁{w}" for w in words]
    pieces += list("abcdefghijklmnopqrstuvwxyz")
    vocab = [(piece, 0.0 if i < 3 else -float(i)) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_components(size: PixelModelSize, words: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Fresh (untrained) tokenizer, frozen random text encoder and transformer, from ``seed``."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from headsparse.pipelines.tiny import t5_encoder_config

    tokenizer = word_tokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(t5_encoder_config(len(tokenizer), UMT5Config))
        transformer = WanTransformer3DModel(
            patch_size=(1, size.patch, size.patch), num_attention_heads=size.heads, attention_head_dim=size.head_dim,
            in_channels=3 + (POSITION_CHANNELS if size.positions else 0), out_channels=3,
            text_dim=text_encoder.config.d_model, freq_dim=64, ffn_dim=size.ffn,
            num_layers=size.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=256,
        )
        if size.local_prior:
            local_prior(transformer)
        if size.qk_gain != 1.0:
            with torch.no_grad():
                for block in transformer.blocks:
                    block.attn1.norm_q.weight.fill_(size.qk_gain ** 0.5)
                    block.attn1.norm_k.weight.fill_(size.qk_gain ** 0.5)
    text_encoder.requires_grad_(False)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder.eval(), "transformer": transformer}


# Per RoPE axis (t, y, x), the energy of the q/k bias in its fastest pair and in its second pair: the fast
# pair sharpens the peak, the slow one suppresses what the fast pair's period would bring back (cos(6) ~ 1).
# With the logit scale ``qk_gain`` about 6 this gives a peak that falls by ~2 at one token, ~5 at three.
LOCAL_PRIOR_ENERGY = (3.2, 15.2)


def local_prior(transformer: torch.nn.Module) -> None:
    """Initialise the self-attention q/k biases of a Wan transformer so that every head attends locally.

    RoPE rotates q and k by their positions, so a bias ``b`` in the first component of a rotary pair
    contributes ``|b|^2 cos(w (p_q - p_k))`` to the logit whatever the content: the same vector in q and k,
    placed in the two fastest pairs of each axis, is a bump centred on the query in frames, rows and
    columns. It dominates the content part of q/k at initialisation (about 5x its energy); training can
    shrink it.
    """
    rope = transformer.rope
    head_dim = transformer.config.attention_head_dim
    bias = torch.zeros(head_dim)
    offset = 0
    for dim in (rope.t_dim, rope.h_dim, rope.w_dim):
        for pair, energy in enumerate(LOCAL_PRIOR_ENERGY):
            if 2 * pair < dim:
                bias[offset + 2 * pair] = energy ** 0.5
        offset += dim
    with torch.no_grad():
        for block in transformer.blocks:
            attn = block.attn1
            heads = attn.to_q.out_features // head_dim
            attn.to_q.bias.copy_(bias.repeat(heads))
            attn.to_k.bias.copy_(bias.repeat(heads))


def encode_captions(tokenizer, text_encoder, captions: list[str], max_tokens: int) -> Tensor:
    """[B, max_tokens, text_dim] caption embeddings, zeroed after each caption's last token (as Wan does)."""
    tokens = tokenizer(captions, padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt")
    ids = tokens.input_ids.to(text_encoder.device)
    mask = tokens.attention_mask.to(text_encoder.device)
    with torch.no_grad():
        hidden = text_encoder(ids, attention_mask=mask).last_hidden_state
    return hidden * mask[..., None].to(hidden.dtype)


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


def flow_scheduler(shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift)


class PixelVideoPipeline(DiffusionPipeline):
    """Text-to-video in pixel space: flow-matching Euler steps of a Wan transformer, optional CFG.

    ``pipe(prompt, num_frames=..., height=..., width=..., num_inference_steps=20, guidance_scale=3.0)``
    returns an object whose ``frames`` are [B, F, H, W, 3] in [0, 1] (numpy by default, like
    ``WanPipeline``). Height and width must be multiples of the patch (4).
    """

    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "prompt_embeds"]
    max_caption_tokens = 16  # subclasses: the longest caption of their grammar, plus </s>
    default_size = (8, 32, 32)  # (frames, height, width) when the call gives none

    def __init__(self, tokenizer, text_encoder, transformer, scheduler) -> None:
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                              scheduler=scheduler)

    @classmethod
    def load_local(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> PixelVideoPipeline:
        """``from_pretrained`` on a saved folder, the tiny text encoder kept in float32 (caption embeddings
        are then identical whatever the transformer's dtype), progress bar off."""
        pipe = cls.from_pretrained(folder, torch_dtype=dtype)
        pipe.text_encoder.to(torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    def encode_prompt(self, prompt: str | list[str], device: torch.device) -> Tensor:
        captions = [prompt] if isinstance(prompt, str) else list(prompt)
        return encode_captions(self.tokenizer, self.text_encoder, captions, self.max_caption_tokens).to(device)

    def _check_call(self, num_frames: int, height: int, width: int, output_type: str,
                    callback_inputs: Sequence[str], latents: Tensor | None, batch: int) -> None:
        patch = self.transformer.config.patch_size[1]
        if height % patch or width % patch or num_frames < 1:
            raise ValueError(f"height and width must be multiples of {patch} and num_frames >= 1; "
                             f"got {num_frames} frames of {height}x{width}")
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        bad = [name for name in callback_inputs if name not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} are not among {self._callback_tensor_inputs}")
        shape = (batch, 3, num_frames, height, width)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (batch, RGB, frames, height, width); "
                             f"got {tuple(latents.shape)}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        **unused: Any,
    ):
        """``latents``: the starting noise [B, 3, F, H, W] (pixels in [-1, 1] at the end); ``output_type``
        ``"latent"`` returns it denoised, unclipped. ``callback_on_step_end(pipe, step, timestep, kwargs)``
        sees the tensors named in ``callback_on_step_end_tensor_inputs`` and may return replacements."""
        from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

        if unused:
            raise TypeError(f"{type(self).__name__} got unexpected arguments: {sorted(unused)}")
        frames_default, height_default, width_default = self.default_size
        num_frames = num_frames or frames_default
        height, width = height or height_default, width or width_default
        captions = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(captions)
        self._check_call(num_frames, height, width, output_type, callback_on_step_end_tensor_inputs, latents, batch)
        device = self._execution_device
        dtype = self.transformer.dtype
        prompt_embeds = self.encode_prompt(captions, device).to(dtype)
        cfg = guidance_scale > 1.0
        if cfg:
            negative = negative_prompt if negative_prompt is not None else ""
            negatives = [negative] * batch if isinstance(negative, str) else list(negative)
            prompt_embeds = torch.cat([self.encode_prompt(negatives, device).to(dtype), prompt_embeds])
        shape = (batch, 3, num_frames, height, width)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32)
        latents = latents.to(device, torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                inp = with_positions(torch.cat([latents, latents]) if cfg else latents,
                                     self.transformer.config.in_channels)
                v = self.transformer(hidden_states=inp.to(dtype), timestep=t.expand(inp.shape[0]),
                                     encoder_hidden_states=prompt_embeds, return_dict=False)[0].float()
                if cfg:
                    uncond, text = v.chunk(2)
                    v = uncond + guidance_scale * (text - uncond)
                latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds}
                    given = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    returned = callback_on_step_end(self, i, t, given) or {}
                    latents = returned.get("latents", latents)
                    prompt_embeds = returned.get("prompt_embeds", prompt_embeds)
                bar.update()
        self.maybe_free_model_hooks()
        if output_type == "latent":
            out = latents
        else:
            frames = to_pixels(latents)
            out = frames.cpu().numpy() if output_type == "np" else frames
        return WanPipelineOutput(frames=out) if return_dict else (out,)


def load_pixel_pipeline(cls: type[PixelVideoPipeline], folder: str | Path, dtype: torch.dtype,
                        device: str | torch.device, what: str, train_hint: str) -> PixelVideoPipeline:
    """``cls.from_pretrained(folder)`` with the text encoder kept in float32; a clear error without weights."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no {what} weights at {folder} (expected model_index.json); train them with "
                                f"`{train_hint}`")
    return cls.load_local(folder, dtype, device)
