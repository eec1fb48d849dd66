"""Per-model presets: how to load a checkpoint, what to generate by default, how to patch it.

Loading follows each model's diffusers documentation (pipeline class, dtype, the VAE kept in
float32 for Wan). Sparse defaults follow REFERENCES.md: Sparse VideoGen runs the first 10-20% of
steps and ~3% of layers dense, STA the first 12-15 of 50 steps, RainFusion 2.0 is sparse from step
15 of 40; we use online recognition (``auto``) after a dense warm-up of 20-30% of the steps and the
first layer, which the offline search (a plan) replaces once searched for the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Preset:
    """One model family: checkpoint layout, generation defaults and the default headsparse mode."""

    name: str
    pipeline: str  # diffusers pipeline class
    transformer: str  # transformer class the loaded pipeline must have
    checkpoint: str  # a public checkpoint with this layout (to download elsewhere; nothing is fetched here)
    video: bool
    dtype: str  # torch dtype of the pipeline
    fps: int
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    dense_steps: float = 0.2
    dense_layers: int = 1
    mode: str = "auto"  # default headsparse mode: "auto", or a pattern name
    pattern_params: dict[str, Any] = field(default_factory=dict)
    vae_float32: bool = False  # load the VAE in float32 (Wan's recommendation)
    negative_prompt: str | None = None  # used when the request gives none (Qwen-Image's true CFG needs one)
    notes: str = ""
    weights: str | None = None  # an embedded model: its folder under headsparse/pipelines/weights
    # A plan searched for the embedded weights (a file in their folder): the default mode with those weights.
    plan: str | None = None
    # Further pipeline arguments the model's documentation sets (e.g. SkyReels-V2's ar_step).
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    needs_image: bool = False  # an image-to-video pipeline: generate needs --image (the first frame)
    # The pipeline's call argument for the guidance scale (Qwen-Image: true_cfg_scale); None where a guider
    # component holds it (HunyuanVideo 1.5).
    guidance_arg: str | None = "guidance_scale"

    def weights_folder(self) -> Path | None:
        return None if self.weights is None else WEIGHTS / self.weights

    def plan_file(self) -> Path | None:
        """The shipped plan of the embedded weights, if there is one."""
        folder = self.weights_folder()
        return None if folder is None or self.plan is None else folder / self.plan


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("wan", "WanPipeline", "WanTransformer3DModel", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", True, "bfloat16",
           16, 81, 480, 832, 50, 5.0, vae_float32=True, notes="Wan 2.1 T2V 1.3B / 14B"),
    Preset("wan2.2", "WanPipeline", "WanTransformer3DModel", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", True, "bfloat16",
           16, 81, 480, 832, 40, 4.0, vae_float32=True,
           notes="Wan 2.2 A14B: transformer and transformer_2 (high/low noise) are both patched"),
    Preset("cogvideox", "CogVideoXPipeline", "CogVideoXTransformer3DModel", "THUDM/CogVideoX-2b", True, "float16",
           8, 49, 480, 720, 50, 6.0, notes="CogVideoX 2b (float16) / 5b (use --dtype bf16)"),
    Preset("hunyuanvideo", "HunyuanVideoPipeline", "HunyuanVideoTransformer3DModel",
           "hunyuanvideo-community/HunyuanVideo", True, "bfloat16", 15, 61, 320, 512, 30, 6.0, dense_steps=0.25,
           notes="HunyuanVideo 13B; enable --cpu-offload below 80 GB"),
    Preset("ltx", "LTXPipeline", "LTXVideoTransformer3DModel", "Lightricks/LTX-Video", True, "bfloat16",
           24, 161, 480, 704, 50, 3.0, notes="LTX-Video 0.9.x"),
    Preset("mochi", "MochiPipeline", "MochiTransformer3DModel", "genmo/mochi-1-preview", True, "bfloat16",
           30, 85, 480, 848, 64, 4.5, notes="Mochi 1 preview; enable --cpu-offload below 80 GB"),
    Preset("flux", "FluxPipeline", "FluxTransformer2DModel", "black-forest-labs/FLUX.1-dev", False, "bfloat16",
           0, 1, 1024, 1024, 28, 3.5, dense_steps=0.25, notes="FLUX.1 dev / schnell"),
    Preset("sd3", "StableDiffusion3Pipeline", "SD3Transformer2DModel",
           "stabilityai/stable-diffusion-3.5-medium", False, "bfloat16", 0, 1, 1024, 1024, 28, 7.0,
           dense_steps=0.25, notes="Stable Diffusion 3 / 3.5"),
    # The Wan family beyond text-to-video.
    Preset("wan-i2v", "WanImageToVideoPipeline", "WanTransformer3DModel", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
           True, "bfloat16", 16, 81, 480, 832, 50, 5.0, vae_float32=True, needs_image=True,
           notes="Wan 2.1 I2V 14B (480P; 720P: --height 720 --width 1280): first-frame condition as channels, CLIP "
                 "image tokens in cross-attention only; Wan 2.2 I2V A14B loads the same way (both transformers)"),
    Preset("wan2.2-ti2v", "WanPipeline", "WanTransformer3DModel", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", True,
           "bfloat16", 24, 121, 704, 1280, 50, 5.0, vae_float32=True,
           notes="Wan 2.2 TI2V 5B, text-to-video (its 16x VAE: 121 frames of 704x1280 are 31 x 44 x 80 tokens); "
                 "per-token timesteps"),
    Preset("wan2.2-ti2v-i2v", "WanImageToVideoPipeline", "WanTransformer3DModel", "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
           True, "bfloat16", 24, 121, 704, 1280, 50, 5.0, vae_float32=True, needs_image=True,
           notes="Wan 2.2 TI2V 5B, image-to-video: the image is the first latent frame (timestep 0 on its tokens)"),
    Preset("wan-vace", "WanVACEPipeline", "WanVACETransformer3DModel", "Wan-AI/Wan2.1-VACE-1.3B-diffusers", True,
           "bfloat16", 16, 81, 480, 832, 30, 5.0, vae_float32=True,
           notes="Wan 2.1 VACE 1.3B / 14B, prompt only (no control video: its control latents are empty); the VACE "
                 "blocks' self-attention is patched too"),
    Preset("skyreels-v2", "SkyReelsV2Pipeline", "SkyReelsV2Transformer3DModel",
           "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers", True, "bfloat16", 24, 97, 544, 960, 50, 6.0, vae_float32=True,
           notes="SkyReels-V2 T2V 14B 540P (720P: --height 720 --width 1280)"),
    Preset("skyreels-v2-df", "SkyReelsV2DiffusionForcingPipeline", "SkyReelsV2Transformer3DModel",
           "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers", True, "bfloat16", 24, 97, 544, 960, 30, 6.0,
           vae_float32=True, call_kwargs={"base_num_frames": 97, "ar_step": 5, "causal_block_size": 5,
                                          "addnoise_condition": 20},
           notes="SkyReels-V2 diffusion forcing 1.3B 540P, asynchronous (ar_step 5, causal blocks of 5 latent frames): "
                 "the model's block-causal mask is intersected with every head's pattern; dense_steps counts the "
                 "pipeline's iterations, which outnumber --steps in this mode"),
    # Other video families: defaults from each pipeline's documentation (its example and __call__ defaults).
    Preset("hunyuanvideo1.5", "HunyuanVideo15Pipeline", "HunyuanVideo15Transformer3DModel",
           "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v", True, "float16", 15, 121, 352, 624, 50, 6.0,
           dense_steps=0.25, guidance_arg=None,
           notes="HunyuanVideo 1.5 480p T2V (8.3B); 352x624 is the pipeline's own 16:9 size at target size 480; "
                 "its guider component holds the guidance scale, so --guidance is not passed"),
    Preset("ltx2", "LTX2Pipeline", "LTX2VideoTransformer3DModel", "Lightricks/LTX-2", True, "bfloat16",
           24, 121, 512, 768, 30, 3.0,
           notes="LTX-2 audio-video; headsparse patches the video self-attention only (audio left dense)"),
    Preset("cosmos2.5", "Cosmos2_5_PredictBasePipeline", "CosmosTransformer3DModel", "nvidia/Cosmos-Predict2.5-2B",
           True, "bfloat16", 16, 93, 704, 1280, 36, 7.0,
           notes="Cosmos Predict 2.5 2B text-to-world (diffusers' Cosmos pipelines need the cosmos_guardrail package)"),
    Preset("kandinsky5", "Kandinsky5T2VPipeline", "Kandinsky5Transformer3DModel",
           "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers", True, "bfloat16", 24, 121, 512, 768, 50, 5.0,
           notes="Kandinsky 5.0 T2V Lite 5 s (regular attention; NABLA checkpoints run their own sparse attention, "
                 "which headsparse leaves alone)"),
    # Image families: defaults from each pipeline's documentation and call defaults.
    Preset("qwenimage", "QwenImagePipeline", "QwenImageTransformer2DModel", "Qwen/Qwen-Image", False, "bfloat16",
           0, 1, 1328, 1328, 50, 4.0, dense_steps=0.25, guidance_arg="true_cfg_scale", negative_prompt=" ",
           notes="Qwen-Image (20B): true CFG 4.0 with a blank negative prompt, 1328x1328 (1:1); enable --cpu-offload "
                 "below 80 GB. Qwen-Image-Edit's reference latents are patched too (QwenImageEditPipeline)"),
    Preset("flux2", "Flux2Pipeline", "Flux2Transformer2DModel", "black-forest-labs/FLUX.2-dev", False, "bfloat16",
           0, 1, 1024, 1024, 50, 4.0, dense_steps=0.25,
           notes="FLUX.2 dev (32B, guidance-distilled); enable --cpu-offload below 80 GB; reference images of "
                 "editing are patched too"),
    Preset("zimage", "ZImagePipeline", "ZImageTransformer2DModel", "Tongyi-MAI/Z-Image-Turbo", False, "bfloat16",
           0, 1, 1024, 1024, 8, 0.0, dense_steps=0.25,
           notes="Z-Image Turbo (6B, distilled: 8 steps, no CFG)"),
    Preset("chroma", "ChromaPipeline", "ChromaTransformer2DModel", "lodestones/Chroma1-HD", False, "bfloat16",
           0, 1, 1024, 1024, 35, 5.0, dense_steps=0.25, notes="Chroma1-HD (8.9B)"),
    Preset("hidream", "HiDreamImagePipeline", "HiDreamImageTransformer2DModel", "HiDream-ai/HiDream-I1-Full", False,
           "bfloat16", 0, 1, 1024, 1024, 50, 5.0, dense_steps=0.25,
           notes="HiDream-I1 Full (17B); the local folder must also hold tokenizer_4 / text_encoder_4 "
                 "(Llama 3.1 8B Instruct), which the hub repo does not; enable --cpu-offload below 80 GB"),
    Preset("lumina2", "Lumina2Pipeline", "Lumina2Transformer2DModel", "Alpha-VLLM/Lumina-Image-2.0", False,
           "bfloat16", 0, 1, 1024, 1024, 30, 4.0, dense_steps=0.25, notes="Lumina Image 2.0 (2.6B)"),
    Preset("tiny", "WanPipeline", "WanTransformer3DModel", "(embedded; built offline)", True, "float32",
           8, 17, 96, 160, 5, 1.0, dense_steps=1, dense_layers=0,
           notes="the embedded tiny Wan pipeline: random weights with planted attention heads (see "
                 "headsparse.pipelines.tiny); its videos are coloured noise, its attention structure is real; "
                 "CFG is off (guidance 1) because its text encoder is random too"),
    Preset("shapes", "MovingShapesPipeline", "WanTransformer3DModel", "(embedded; trained in-house)", True, "float32",
           8, 16, 32, 32, 20, 3.0, dense_steps=0.2, dense_layers=1, weights="moving_shapes",
           notes="the embedded moving-shapes model (headsparse.pipelines.shapes): a 6-layer Wan transformer trained "
                 "on this project's CPU on captioned clips of coloured shapes, in pixel space; prompts follow the "
                 "grammar 'a <red|green|blue|yellow> <circle|square|triangle> <moving|bouncing> "
                 "<left|right|up|down> [on a gray background]'"),
    Preset("scenes", "DriftingScenesPipeline", "WanTransformer3DModel", "(embedded; trained in-house)", True,
           "float32", 8, 16, 64, 64, 20, 3.0, dense_steps=0.2, dense_layers=1, weights="drifting_scenes",
           plan="headsparse_plan.json",
           notes="the embedded drifting-scenes model (headsparse.pipelines.scenes): a 6-layer Wan transformer trained "
                 "on this project's CPU on captioned textured scenes under a camera pan with one to three moving "
                 "objects, in pixel space; 16 frames of 64x64 px are 4096 tokens; its default mode is the plan "
                 "searched for it (shipped with the weights); prompts such as 'a red circle moving left on a "
                 "striped background drifting up'"),
)}


def preset_for(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
