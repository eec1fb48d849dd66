"""Tiny pipelines for the stacking tests, built offline from configs, and a tiny LoRA made on the spot.

``build_flux_pipeline()`` is a real ``FluxPipeline``: CLIP text encoder and tokenizer (an in-memory BPE
vocabulary of single characters), T5 encoder and tokenizer (``headsparse.pipelines.tiny``), a one-level
``AutoencoderKL`` (scale factor 1, so a 16x16 image is an 8x8 token grid after Flux's 2x2 packing) and a
1 + 1 block ``FluxTransformer2DModel`` of 2 heads of 16. Nothing touches the hub.

``save_tiny_lora(pipe, folder)`` gives the pipeline's transformer a random LoRA on its attention projections
(peft), writes it with the pipeline class's own ``save_lora_weights`` and removes it again, so that the test
loads it back with ``pipe.load_lora_weights(folder)`` exactly as a user loads a downloaded one.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from tiny_models import build_wan_pipeline  # noqa: F401  (re-exported: the tiny WanPipeline)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5EncoderModel

from headsparse.pipelines.tiny import t5_encoder_config, tiny_t5_tokenizer

CLIP_MAX_LENGTH = 16  # tokens per prompt for CLIP (its pooled output is all Flux takes from it)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP (BPE) tokenizer over single characters, with and without the end-of-word mark; no merges."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase)
    pieces = specials + chars + [f"{c}</w>" for c in chars]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def build_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A tiny FluxPipeline, float32 on the CPU. Use height/width multiples of 2 and ``max_sequence_length=8``."""
    clip_tokenizer = tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=32,
            bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        ))
        t5 = T5EncoderModel(t5_encoder_config(len(t5_tokenizer)))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=4,
            norm_num_groups=1, sample_size=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=clip.eval(),
        tokenizer=clip_tokenizer, text_encoder_2=t5.eval(), tokenizer_2=t5_tokenizer,
        transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_lora(pipe, folder: str | Path, *, rank: int = 2, seed: int = 0) -> Path:
    """Write a random rank-``rank`` LoRA for ``pipe.transformer``'s attention projections into ``folder``.

    The adapter is added with peft (random B, so it changes the output), saved with the pipeline class's
    ``save_lora_weights`` and deleted again: the pipeline is left as it was.
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = pipe.transformer
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config, adapter_name="tiny")
    layers = get_peft_model_state_dict(transformer, adapter_name="tiny")
    transformer.delete_adapters("tiny")
    folder = Path(folder)
    type(pipe).save_lora_weights(folder, transformer_lora_layers=layers)
    return folder
