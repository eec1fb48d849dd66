"""headsparse stacked with diffusers' own speed and memory features, on a tiny WanPipeline and FluxPipeline.

For every feature, in both orders (feature then ``headsparse.patch``, and patch then feature):

- patched with the dense pattern, the pipeline's output is bit-identical to the same pipeline with the feature
  and without headsparse;
- patched sparse (Wan: a same-frame ``spatial`` pattern, FLUX: a 3x3 ``neighborhood`` on its 8x8 token grid),
  every self-attention layer runs sparse through headsparse's rebound processors, the output is finite and
  differs from the dense one, and does not depend on the order;
- ``unpatch`` puts the original processor objects back, the output is the feature's own again, and the
  feature still works afterwards (caches disable, LoRAs unload, backends reset).

Pipelines return latents (``output_type="latent"``): the VAE is the same with and without headsparse.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from diffusers import WanPipeline
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from patch_checks import processors
from tiny_pipelines import build_flux_pipeline, build_wan_pipeline, save_tiny_lora

import headsparse
from headsparse.kernels.layout_cache import CACHE
from headsparse.patterns import Dense, Spatial
from headsparse.plan import LayerPlan, ModelPlan, Phase, Plan
from headsparse.plugin import SPECS
from headsparse.plugin.rebind import is_rebound

pytestmark = [pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning"), pytest.mark.usefixtures("one_thread")]

STEPS = 4
BUILDERS = {"wan": build_wan_pipeline, "flux": build_flux_pipeline}
SPARSE = {
    "wan": {"pattern": "spatial", "first_frame_sink": False},
    "flux": {"pattern": "neighborhood", "kernel_size": (1, 3, 3)},
}
MODELS = sorted(BUILDERS)


def generate(pipe, steps: int = STEPS) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if isinstance(pipe, WanPipeline):  # 3 latent frames of 2x2 tokens; CFG: two transformer calls per step
        return pipe(prompt="a cat", negative_prompt="blurry", num_inference_steps=steps, height=32, width=32,
                    num_frames=9, guidance_scale=5.0, output_type="latent", generator=g).frames
    # FLUX: 8 text tokens then an 8x8 token grid (16x16 latents packed 2x2)
    return pipe(prompt="a cat", num_inference_steps=steps, height=16, width=16, max_sequence_length=8,
                output_type="latent", generator=g).images


def self_attention(pipe) -> list[torch.nn.Module]:
    spec = SPECS[type(pipe.transformer).__name__]
    return [m for _, m in spec.self_attention_modules(pipe.transformer)]


_PLAIN: dict[str, torch.Tensor] = {}


def plain_output(name: str) -> torch.Tensor:
    """The model's output with no feature and no headsparse (computed once per model)."""
    if name not in _PLAIN:
        _PLAIN[name] = generate(BUILDERS[name]())
    return _PLAIN[name]


def run_sparse(name: str, pipe, steps: int = STEPS) -> torch.Tensor:
    with headsparse.patch(pipe, **SPARSE[name]) as handle:
        assert all(is_rebound(m.processor) for m in self_attention(pipe))
        out = generate(pipe, steps)
        stats = handle.states["transformer"].stats
        assert all(s.sparse_calls > 0 for s in stats), "every self-attention layer must have run sparse"
    assert torch.isfinite(out).all()
    return out


def check_stack(name: str, pipe, ref: torch.Tensor) -> torch.Tensor:
    """With the feature on: dense patch == ``ref``, sparse differs, unpatch restores; returns the sparse output."""
    before = processors(pipe.transformer)
    with headsparse.patch(pipe, pattern="dense"):
        assert torch.equal(generate(pipe), ref)
    sparse = run_sparse(name, pipe)
    assert not torch.equal(sparse, ref)
    after = processors(pipe.transformer)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert torch.equal(generate(pipe), ref)
    return sparse


def check_both_orders(name: str, feature, *, changes_output: bool | None, undo=None, exact_undo: bool = True) -> None:
    """``feature(pipe)`` stacked with headsparse in both orders; ``undo(pipe)`` (if any) must give the plain output.

    ``changes_output``: whether the feature alone changes the output (None: not asserted).
    """
    plain = plain_output(name)
    pipe = BUILDERS[name]()
    feature(pipe)
    ref = generate(pipe)
    if changes_output is not None:
        assert torch.equal(ref, plain) != changes_output
    sparse = check_stack(name, pipe, ref)
    for kwargs, expected in (({"pattern": "dense"}, ref), (SPARSE[name], sparse)):
        later = BUILDERS[name]()
        handle = headsparse.patch(later, **kwargs)
        feature(later)  # patch, then the feature
        assert all(is_rebound(m.processor) for m in self_attention(later))
        assert torch.equal(generate(later), expected), f"patch then feature differs ({kwargs['pattern']})"
        handle.unpatch()
        assert not any(is_rebound(m.processor) for m in self_attention(later))
        assert torch.equal(generate(later), ref)
    if undo is not None:
        undo(pipe)
        out = generate(pipe)
        if exact_undo:
            assert torch.equal(out, plain)
        else:
            torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- cache hooks
def _timestep(pipe):
    return lambda: pipe.current_timestep


CACHES = {
    "first_block_cache": lambda name, pipe: FirstBlockCacheConfig(threshold=0.5),
    # diffusers' FasterCache approximates the unconditional branch of a batched CFG call; WanPipeline runs CFG as
    # two calls and FLUX is guidance-distilled, so both use is_guidance_distilled=True (attention skipping only).
    "faster_cache": lambda name, pipe: FasterCacheConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 901),
        current_timestep_callback=_timestep(pipe), attention_weight_callback=lambda _: 0.5,
        is_guidance_distilled=True,
    ),
    "pyramid_attention_broadcast": lambda name, pipe: PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=_timestep(pipe),
    ),
    # TaylorSeer's default identifiers end in "attn": they miss Wan's attn1, so name the self-attention modules.
    "taylorseer": lambda name, pipe: TaylorSeerCacheConfig(
        cache_interval=2, disable_cache_before_step=1, taylor_factors_dtype=torch.float32,
        cache_identifiers=[r"blocks\.\d+\.attn1"] if name == "wan" else None,
    ),
    "mag_cache": lambda name, pipe: MagCacheConfig(
        threshold=10.0, max_skip_steps=2, retention_ratio=0.0, num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS,
    ),
}


@pytest.mark.parametrize("cache", sorted(CACHES))
@pytest.mark.parametrize("name", MODELS)
def test_cache_hooks(name, cache):
    """transformer.enable_cache(...) before or after patch; disable_cache afterwards gives the plain model back."""
    check_both_orders(
        name, lambda pipe: pipe.transformer.enable_cache(CACHES[cache](name, pipe)), changes_output=True,
        undo=lambda pipe: pipe.transformer.disable_cache(),
    )


# ----------------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("fuse", [False, True], ids=["loaded", "fused"])
@pytest.mark.parametrize("name", MODELS)
def test_lora(name, fuse, tmp_path):
    """pipe.load_lora_weights(...) (and fuse_lora) before or after patch; unload afterwards restores the model."""
    pytest.importorskip("peft")
    folder = save_tiny_lora(BUILDERS[name](), tmp_path / "lora")

    def load(pipe):
        pipe.load_lora_weights(folder)
        if fuse:
            pipe.fuse_lora()

    def unload(pipe):
        if fuse:
            pipe.unfuse_lora()
        pipe.unload_lora_weights()

    check_both_orders(name, load, changes_output=True, undo=unload, exact_undo=not fuse)


# -------------------------------------------------------------------------------------------------------- offload
OFFLOADS = {
    # The CPU is the execution device here: diffusers moves each model "to" it around its forward.
    "model_cpu_offload": lambda pipe, tmp: pipe.enable_model_cpu_offload(device="cpu"),
    "group_offload_block": lambda pipe, tmp: pipe.transformer.enable_group_offload(
        onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1),
    # The pipeline-level call offloads every component (text encoders and VAE too), leaf by leaf.
    "group_offload_leaf_pipeline": lambda pipe, tmp: pipe.enable_group_offload(
        onload_device=torch.device("cpu"), offload_type="leaf_level"),
    # Weights really leave memory: written to safetensors files and read back before each block runs.
    "group_offload_disk": lambda pipe, tmp: pipe.transformer.enable_group_offload(
        onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1,
        offload_to_disk_path=str(tmp / f"offload-{id(pipe)}")),
}


@pytest.mark.parametrize("offload", sorted(OFFLOADS))
@pytest.mark.parametrize("name", MODELS)
def test_offload(name, offload, tmp_path):
    # Weights read back from disk can differ from the built ones in the last bit of FLUX's output (the same without
    # headsparse): only the in-memory offloads are asserted to leave the output as it was.
    changes = None if offload == "group_offload_disk" else False
    check_both_orders(name, lambda pipe: OFFLOADS[offload](pipe, tmp_path), changes_output=changes)


def test_group_offload_streams_need_an_accelerator():
    """use_stream=True is refused by diffusers itself on the CPU (no streams): nothing for headsparse to do."""
    pipe = build_wan_pipeline()
    with pytest.raises(ValueError, match="streams"):
        pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                              num_blocks_per_group=1, use_stream=True)


# ----------------------------------------------------------------------------------------------- layerwise casting
@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", MODELS)
def test_layerwise_casting(name, compute):
    """fp8 (e4m3) weight storage, compute in float32 (an fp32 pipeline) or bfloat16 (a bf16 pipeline)."""
    dtype = getattr(torch, compute)

    def cast(pipe):
        if dtype != torch.float32:
            pipe.to(dtype)
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)

    check_both_orders(name, cast, changes_output=True)


# ----------------------------------------------------------------------------------------------- attention backend
@pytest.fixture
def backend_spy(monkeypatch):
    """Counts the calls (and head counts) that reach diffusers' "_native_math" backend; restores the active backend."""
    active = _AttentionBackendRegistry._active_backend
    calls: list[int] = []
    name = AttentionBackendName._NATIVE_MATH
    real = _AttentionBackendRegistry._backends[name]

    def spy(**kwargs):
        calls.append(kwargs["query"].shape[2])  # (B, S, H, D)
        return real(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, spy)
    yield calls
    _AttentionBackendRegistry.set_active_backend(active)


@pytest.mark.parametrize("name", MODELS)
def test_attention_backend(name, backend_spy):
    """set_attention_backend before or after patch: whatever headsparse runs dense goes to that backend."""
    # "_native_math" and "native" (SDPA's CPU kernel) differ in the last bits on Wan, not on FLUX: not asserted.
    # diffusers' reset_attention_backend leaves the process-wide active backend set: "native" resets both.
    check_both_orders(name, lambda pipe: pipe.transformer.set_attention_backend("_native_math"), changes_output=None,
                      undo=lambda pipe: pipe.transformer.set_attention_backend("native"))
    pipe = BUILDERS[name]()
    pipe.transformer.set_attention_backend("_native_math")
    backend_spy.clear()
    generate(pipe)
    unpatched = len(backend_spy)
    with headsparse.patch(pipe, pattern="dense"):
        backend_spy.clear()
        generate(pipe)
        assert len(backend_spy) == unpatched  # every attention call, self- and cross-attention, reached it
    with headsparse.patch(pipe, **SPARSE[name]):
        backend_spy.clear()
        generate(pipe)
        assert len(backend_spy) == unpatched - STEPS * (2 if name == "wan" else 1) * len(self_attention(pipe))


@pytest.mark.parametrize("name", MODELS)
def test_attention_backend_is_read_per_call(name, backend_spy):
    """The backend is read per call: changed after patch, the dense path follows it, and unpatch keeps it."""
    pipe = BUILDERS[name]()
    pipe.transformer.set_attention_backend("_native_math")
    with headsparse.patch(pipe, pattern="dense"):
        pipe.transformer.set_attention_backend("native")
        backend_spy.clear()
        generate(pipe)
        assert backend_spy == []
        pipe.transformer.set_attention_backend("_native_math")
    assert all(m.processor._attention_backend == AttentionBackendName._NATIVE_MATH for m in self_attention(pipe))
    backend_spy.clear()
    generate(pipe)
    assert backend_spy


def test_dense_heads_of_a_sparse_layer_run_on_the_chosen_backend(backend_spy):
    """A layer with one dense and one spatial head: the dense head goes to the chosen backend, alone."""
    pipe = build_wan_pipeline()
    names = [n for n, _ in SPECS["WanTransformer3DModel"].self_attention_modules(pipe.transformer)]
    heads = (Dense(), Spatial(first_frame_sink=False))
    plan = Plan({"transformer": ModelPlan("WanTransformer3DModel", 2, tuple(LayerPlan(n, (Phase(0, heads),))
                                                                          for n in names))})
    pipe.transformer.set_attention_backend("_native_math")
    # The masked executor (no FlexAttention compile) keeps this fast; routing is the same for every executor.
    with headsparse.patch(pipe, plan, backend="masked") as handle:
        backend_spy.clear()
        mixed = generate(pipe)
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
    self_calls = STEPS * 2 * len(names)
    assert backend_spy.count(1) == self_calls  # one head per self-attention call
    pipe.transformer.reset_attention_backend()
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
    with headsparse.patch(pipe, plan, backend="masked"):  # the default backend: the executor runs the dense head
        default = generate(pipe)
    torch.testing.assert_close(mixed, default, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- torch.compile
def _counter(backend: str | None = None):
    """Counts compiled graphs; runs them as traced (or through ``backend``, e.g. "aot_eager"): no inductor."""
    from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

    return CompileCounter() if backend is None else CompileCounterWithBackend(backend)


def _layer_plan(pipe) -> Plan:
    """Layer 0 dense, every later layer spatial: one compiled graph must still run each layer's own plan."""
    spec = SPECS[type(pipe.transformer).__name__]
    names = [n for n, _ in spec.self_attention_modules(pipe.transformer)]
    sparse = Spatial(first_frame_sink=False)
    layers = tuple(LayerPlan(n, (Phase(0, (Dense(),) * 2 if i == 0 else (sparse,) * 2),)) for i, n in enumerate(names))
    return Plan({"transformer": ModelPlan(type(pipe.transformer).__name__, 2, layers)})


def test_regional_compile_one_graph_for_every_layer():
    """compile_repeated_blocks(fullgraph=True): one graph serves every patched block, each layer keeps its plan.

    The dynamo-only ``CompileCounter`` backend (no inductor code generation) keeps this fast; the inductor case
    is ``test_compile_with_inductor``.
    """
    torch._dynamo.reset()
    pipe = build_wan_pipeline()
    plan = _layer_plan(pipe)
    with headsparse.patch(pipe, plan) as handle:
        eager = generate(pipe, steps=2)
        counter = _counter()
        pipe.transformer.compile_repeated_blocks(backend=counter, fullgraph=True)
        compiled = generate(pipe, steps=2)
        assert counter.frame_count == 1  # two WanTransformerBlocks, one graph: no recompile per layer
        assert [s.sparse_calls for s in handle.states["transformer"].stats] == [0, 8]  # twice 2 steps x 2 calls
    assert torch.equal(compiled, eager)
    ref = generate(pipe, steps=2)
    assert counter.frame_count == 2  # the original processors: one recompile
    with headsparse.patch(pipe, pattern="dense"):
        assert torch.equal(generate(pipe, steps=2), ref)
    with headsparse.patch(pipe, plan):
        assert torch.equal(generate(pipe, steps=2), eager)
    assert counter.frame_count == 2  # a new patch reuses the rebound processors' graph
    assert torch.equal(generate(pipe, steps=2), ref)


@pytest.mark.parametrize("name", MODELS)
def test_regional_compile_then_patch(name, monkeypatch):
    """Blocks compiled first (fullgraph, AOT-traced), patched afterwards: dense is bit-identical, sparse runs sparse.

    The first sparse call (FlexAttention BlockMasks built) is the first run of the recompiled blocks, where
    torch.vmap fails: the CPU executor must not need it (it used to fall back to the masked executor for good).
    """
    torch._dynamo.reset()
    kernels = importlib.import_module("headsparse.kernels.sparse_attention")
    monkeypatch.setattr(kernels, "_flex_compile_failed", False)
    CACHE.clear("layer")
    pipe = BUILDERS[name]()
    counter = _counter("aot_eager")
    pipe.transformer.compile_repeated_blocks(backend=counter, fullgraph=True)
    ref = generate(pipe, steps=2)
    with headsparse.patch(pipe, **SPARSE[name]) as handle:
        out = generate(pipe, steps=2)  # recompiled, and its first run is sparse
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
    assert not kernels._flex_compile_failed
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    with headsparse.patch(pipe, pattern="dense"):
        assert torch.equal(generate(pipe, steps=2), ref)
    assert torch.equal(generate(pipe, steps=2), ref)
    # One graph per block class before patching and one with headsparse's processors (FLUX has two classes).
    assert counter.frame_count == 2 * len(pipe.transformer._repeated_blocks)


@pytest.mark.parametrize("order", ["compile_then_patch", "patch_then_compile"])
def test_torch_compile_whole_transformer(order):
    """pipe.transformer.compile(fullgraph=True) (the whole model, headsparse's step hook included), either order."""
    torch._dynamo.reset()
    pipe = build_flux_pipeline()
    plain = generate(pipe, steps=2)
    eager_sparse = run_sparse("flux", build_flux_pipeline(), steps=2)
    counter = _counter()
    if order == "compile_then_patch":
        pipe.transformer.compile(backend=counter, fullgraph=True)
        assert torch.equal(generate(pipe, steps=2), plain)
    with headsparse.patch(pipe, **SPARSE["flux"]) as handle:
        if order == "patch_then_compile":
            pipe.transformer.compile(backend=counter, fullgraph=True)
        out = generate(pipe, steps=2)
        assert all(s.sparse_calls > 0 for s in handle.states["transformer"].stats)
    assert counter.frame_count >= 1
    assert torch.equal(out, eager_sparse)
    assert torch.equal(generate(pipe, steps=2), plain)
    with headsparse.patch(pipe, pattern="dense"):
        assert torch.equal(generate(pipe, steps=2), plain)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["regional", "whole"])
def test_compile_with_inductor(mode):
    """The default inductor backend (C++ code generation on CPU: a minute or more here), compiled before patching."""
    torch._dynamo.reset()
    pipe = build_flux_pipeline()
    eager_sparse = run_sparse("flux", build_flux_pipeline())
    if mode == "regional":
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    else:
        pipe.transformer.compile()
    ref = generate(pipe)
    with headsparse.patch(pipe, pattern="dense"):
        assert torch.equal(generate(pipe), ref)
    with headsparse.patch(pipe, **SPARSE["flux"]):
        out = generate(pipe)
    torch.testing.assert_close(out, eager_sparse, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, ref)
    assert torch.equal(generate(pipe), ref)


def test_routed_op_is_never_captured_in_a_cuda_graph():
    """mode="reduce-overhead" replays CUDA graphs: the routed op (a per-call Python decision) must stay outside them.

    Checked here by its tag (which inductor's CUDA-graph partitioning reads); running it needs a GPU.
    """
    assert torch.Tag.cudagraph_unsafe in torch.ops.headsparse.routed_attention.default.tags
