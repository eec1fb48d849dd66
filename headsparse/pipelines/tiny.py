"""The embedded tiny video pipeline: a real diffusers ``WanPipeline`` built offline from configs.

What it is, honestly: every component is a real diffusers/transformers class (UMT5 text encoder,
``AutoencoderKLWan``, ``WanTransformer3DModel``, flow-matching Euler scheduler) at a tiny size with
*random* weights, so its videos are coloured noise, not pictures. To give its attention real
structure, the ``demo`` size plants a pattern in every self-attention head
(:func:`headsparse.testing.plant_wan`: spatial, temporal, neighbourhood or global heads through
Wan's 3-D RoPE). Sparse attention that matches those heads keeps the output; one that does not
changes it visibly, so the demo's PSNR/SSIM and time ratio measure something real. The tokenizer
is a T5 Unigram tokenizer over an in-memory vocabulary; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WORDS = ("a", "cat", "dog", "dance", "monkey", "on", "the", "moon", "red", "blue", "car", "tree", "sky", "sea")


@dataclass(frozen=True)
class TinySize:
    """Architecture of a tiny Wan pipeline."""

    heads: int
    head_dim: int
    layers: int
    ffn: int
    latent_channels: int
    vae_base_dim: int
    vae_downsamples: int  # 2x spatial stages of the VAE (1-3); the last two also halve time
    rope_max_seq_len: int
    # Planted kind of each (layer, head) (see headsparse.testing.planted.KINDS); None: random heads.
    planted: tuple[tuple[str, ...], ...] | None = None


SIZES: dict[str, TinySize] = {
    # Unit tests: 2 heads of 16, 2 layers, random heads, the standard 8x/4x VAE; seconds per generation.
    "test": TinySize(2, 16, 2, 32, 16, 3, 3, 32),
    # The demo: 4 layers of 2 heads of 128 (Wan's head size) with planted heads (3 spatial, 3 temporal,
    # 1 neighbourhood, 1 global), and a 2x/2x VAE so that attention, not the VAE, dominates as in real
    # video models: 17 frames of 96x160 pixels are 9 x 24 x 40 = 8640 tokens.
    "demo": TinySize(2, 128, 4, 512, 16, 8, 1, 1024, planted=(
        ("spatial", "temporal"), ("spatial", "neighborhood"), ("temporal", "global"), ("spatial", "temporal"),
    )),
}


def tiny_t5_tokenizer():
    """A T5 (Unigram) tokenizer from an in-memory vocabulary: specials, a few words, single characters."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"] + [f"▁{w}" for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = [(piece, 0.0 if i < 3 else -float(i)) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def t5_encoder_config(vocab_size: int, config_cls=None):
    """A 2-layer, 32-wide T5 (or UMT5) encoder config."""
    from transformers import T5Config

    return (config_cls or T5Config)(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        is_encoder_decoder=False, pad_token_id=0, eos_token_id=1,
    )


def build_tiny_wan_pipeline(size: str = "demo", seed: int = 0):
    """A tiny ``WanPipeline`` (see the module docstring), float32, on the CPU, built from ``seed``.

    The global RNG is left as it was. Height/width must be multiples of 16 and ``num_frames = 4k + 1``;
    classifier-free guidance runs two batch-1 transformer calls per step.
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    s = SIZES[size]
    tokenizer = tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        temporal = [False, True, True][-s.vae_downsamples :]
        vae = AutoencoderKLWan(
            base_dim=s.vae_base_dim, z_dim=s.latent_channels, dim_mult=[1] * (len(temporal) + 1),
            num_res_blocks=1, temperal_downsample=temporal, scale_factor_spatial=2 ** len(temporal),
            scale_factor_temporal=2 ** sum(temporal),
        )
        text_encoder = UMT5EncoderModel(t5_encoder_config(len(tokenizer), UMT5Config))
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=s.heads, attention_head_dim=s.head_dim,
            in_channels=s.latent_channels, out_channels=s.latent_channels, text_dim=32, freq_dim=32, ffn_dim=s.ffn,
            num_layers=s.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=s.rope_max_seq_len,
        )
    if s.planted is not None:
        from headsparse.testing.planted import plant_wan

        plant_wan(transformer, s.planted)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), transformer=transformer.eval(), vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
