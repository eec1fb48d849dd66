"""What runs while a patched transformer denoises: step tracking, geometry, the attention router.

State lives on the transformer (``_headsparse_state``); a forward pre-hook records the token grid
and the denoising step before each call; each patched self-attention module gets a router that
replaces its attention call, builds (and caches) the layer's multi-head Layout for the current
geometry, and runs it through :func:`headsparse.kernels.sparse_attention`; heads on agent attention
run through :func:`headsparse.patterns.agent.agent_attention` instead (a layer may mix both: each
executor gets its own heads, picked out of q/k/v). Both the hook and the
router are excluded from ``torch.compile`` graphs (they keep Python state), so a compiled
transformer traces everything else and breaks the graph only around attention.

Under diffusers' Ulysses context parallelism (see :mod:`headsparse.plugin.context_parallel`) the
router runs diffusers' all-to-all around the same routed op, which then holds the whole sequence
for this rank's heads only (``head_offset``: the global index of its first head).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headsparse.kernels import Layout, sparse_attention
from headsparse.kernels.layout_cache import CACHE
from headsparse.kernels.sparse_attention import Backend, HeadGroupRun, attention_by_head_groups
from headsparse.patterns import Agent, Dense, Geometry, Pattern
from headsparse.patterns.agent import agent_attention
from headsparse.patterns.frame_masked import FrameMasked
from headsparse.patterns.layer import heads_layout
from headsparse.patterns.recognize import Recognition, Recognizer, recognition_layout
from headsparse.plan import ModelPlan
from headsparse.plugin.context_parallel import (
    cp_config,
    joint_order,
    ulysses_attention,
    ulysses_head_offset,
    unsupported_reason,
)
from headsparse.plugin.rebind import ACTIVE, ROUTER_ATTR
from headsparse.plugin.spec import Grid, ModelSpec

logger = logging.getLogger(__name__)

STATE_ATTR = "_headsparse_state"


class StepTracker:
    """Denoising step index from the timesteps a pipeline feeds its transformer(s).

    A new timestep advances the step; the same timestep again (a CFG call made separately, or a
    second transformer) keeps it; a largest value above the last one's starts a new generation.
    Shared by all transformers of one pipeline (Wan 2.2 hands over from one to the other).

    Timesteps may be tensors of several values: per token (Wan 2.2 TI2V, whose first-frame
    condition tokens stay at 0) or per frame (SkyReels-V2 diffusion forcing, whose frames are at
    different noise levels). A timestep is summarised by its (largest, smallest, mean) value, which
    does not depend on how many batch items repeat it.
    """

    def __init__(self, num_steps: Callable[[], int | None] | None = None) -> None:
        self.step = 0
        self.last: tuple[float, float, float] | None = None
        self._num_steps = num_steps

    @staticmethod
    def summary(timestep: Any) -> tuple[float, float, float]:
        if isinstance(timestep, Tensor):
            values = timestep.detach().flatten().double()
            high, low, mean = torch.stack([values.max(), values.min(), values.mean()]).tolist()  # one device sync
            return high, low, mean
        value = float(timestep)
        return value, value, value

    def observe(self, timestep: Any) -> int:
        if timestep is None:
            return self.step
        value = self.summary(timestep)
        if self.last is None or value[0] > self.last[0]:
            self.step = 0
        elif value != self.last:
            self.step += 1
        self.last = value
        return self.step

    def num_steps(self) -> int | None:
        return self._num_steps() if self._num_steps is not None else None

    def reset(self) -> None:
        self.step, self.last = 0, None


@dataclass
class LayerStats:
    seconds: float = 0.0
    calls: int = 0
    sparse_calls: int = 0
    geometry: Geometry | None = None
    recognitions: int = 0
    recognition_seconds: float = 0.0
    # The frames x frames table of the model's own frame-granular mask on that call (None: no such mask).
    frame_table: tuple[tuple[bool, ...], ...] | None = None


@dataclass
class LayerDecision:
    """What the recogniser chose for a layer, at which step and geometry, and its layout."""

    recognition: Recognition
    layout: Layout
    geometry: Geometry
    step: int


@dataclass
class TransformerState:
    """Everything headsparse keeps on one patched transformer."""

    key: str
    spec: ModelSpec
    plan: ModelPlan
    tracker: StepTracker
    modules: list[tuple[str, nn.Module]]
    backend: Backend = "auto"
    profile: bool = False
    grid: Grid | None = None
    lead: int = 0  # non-grid tokens before the grid (spec.leading_tokens), moved behind it for the layout
    trail: int = 0  # non-grid tokens after the grid (spec.trailing_tokens), moved before it for the layout
    step: int = 0
    stats: list[LayerStats] = field(default_factory=list)
    hook: Any = None
    routers: list[Any] = field(default_factory=list)
    signature: inspect.Signature | None = None
    warned: set[str] = field(default_factory=set)
    recognizer: Recognizer | None = None
    decisions: dict[int, LayerDecision] = field(default_factory=dict)
    # Calibration (offline search): sees every eligible self-attention call, which then runs dense.
    observer: Callable[[int, int, Tensor, Tensor, Tensor, Geometry], None] | None = None
    model: nn.Module | None = None
    # (weak reference to the last frame-granular mask, its geometry, its frames x frames table or None).
    frame_mask: tuple[Any, Geometry, tuple[tuple[bool, ...], ...] | None] | None = None

    def warn_once(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            logger.warning("headsparse (%s): %s", self.spec.class_name, message)

    def heads_now(self, layer: int) -> tuple[Pattern, ...]:
        """The layer's patterns at the current step (in auto mode: the last recognised ones, which under
        Ulysses context parallelism are this process's heads only)."""
        if self.auto_now(layer):
            decision = self.decisions.get(layer)
            return decision.recognition.heads if decision else (Dense(),) * self.plan.num_heads
        return self.plan.heads_at(layer, self.step, self.tracker.num_steps())

    def auto_now(self, layer: int) -> bool:
        return self.recognizer is not None and not self.plan.in_warmup(layer, self.step, self.tracker.num_steps())


def make_pre_hook(state: TransformerState) -> Callable[..., None]:
    """Forward pre-hook: read the token grid and the step from the transformer's arguments."""

    @torch.compiler.disable
    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if state.signature is None:
            state.signature = inspect.signature(module.forward)
        try:
            bound: Mapping[str, Any] = state.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = kwargs
        state.grid = state.spec.grid(module, bound)
        state.lead = state.spec.leading_tokens(module, bound) if state.spec.leading_tokens is not None else 0
        counter = state.spec.trailing_tokens
        state.trail = counter(module, bound) if counter is not None and state.grid is not None else 0
        timestep = bound.get(state.spec.timestep_arg)
        if state.spec.timestep_rises and timestep is not None:
            timestep = -(float(timestep.flatten()[0]) if isinstance(timestep, Tensor) else float(timestep))
        state.step = state.tracker.observe(timestep)
        expected = state.plan.grid
        if expected is not None and state.grid is not None and tuple(expected) != tuple(state.grid):
            raise ValueError(
                f"the headsparse plan for {state.spec.class_name} was made for a token grid (frames, height, width)="
                f"{tuple(expected)}, but this call has {tuple(state.grid)}; search a plan for this resolution or "
                "use a plan without a grid"
            )

    return pre_hook


def dynamic_layer_attention(q: Tensor, k: Tensor, v: Tensor, heads: tuple[Pattern, ...], geometry: Geometry,
                            block: int, scale: float | None, backend: Backend) -> Tensor:
    """A layer whose heads include dynamic patterns (pooled), q/k/v [B, H, L, D]: each dynamic setting's heads
    choose their blocks from this call's q/k (batch item 0) and run as one layout built on the device with no
    synchronisation (:meth:`Layout.from_block_map` with ``on_device``); the static heads run their cached layout."""
    groups: dict[Pattern | None, list[int]] = {}
    for h, p in enumerate(heads):
        groups.setdefault(p if getattr(p, "dynamic", False) else None, []).append(h)

    def run_dynamic(pattern: Any) -> HeadGroupRun:
        def run(qs: Tensor, ks: Tensor, vs: Tensor) -> Tensor:
            layout = pattern.layout_from_qk(qs[0], ks[0], geometry, block, on_device=True)
            return sparse_attention(qs, ks, vs, layout, scale=scale, backend=backend)
        return run

    def run_static(idx: list[int]) -> HeadGroupRun:
        layout = layer_layout(tuple(heads[h] for h in idx), geometry, block, str(q.device))
        return lambda qs, ks, vs: sparse_attention(qs, ks, vs, layout, scale=scale, backend=backend)

    runs = [(idx, run_static(idx) if p is None else run_dynamic(p)) for p, idx in groups.items()]
    if len(runs) == 1:
        return runs[0][1](q, k, v)
    return attention_by_head_groups(q, k, v, runs)


def layer_layout(heads: tuple[Pattern, ...], geometry: Geometry, block: int, device: str) -> Layout:
    """The multi-head Layout of a layer of static patterns on ``device`` (in the byte-bounded layout cache)."""
    return CACHE.get(("layer", heads, geometry, block, device), lambda: heads_layout(heads, geometry, block).to(device))


@functools.lru_cache(maxsize=64)
def _trail_order(text: int, grid: int, trail: int, device: str) -> tuple[Tensor, Tensor]:
    """(order, inverse): [text, grid, trailing] -> [text, trailing, grid] and back.

    Trailing tokens after a grid that follows the text leave non-grid tokens on both sides of the grid; a
    layout sees them as one text prefix once they are moved before the grid.
    """
    order = torch.cat([torch.arange(text), torch.arange(text + grid, text + grid + trail),
                       torch.arange(text, text + grid)])
    return order.to(device), torch.argsort(order).to(device)


def trail_order(geometry: Geometry, trail: int, device: str) -> tuple[Tensor, Tensor] | None:
    """(order, inverse) of the layout's token order when ``trail`` tokens follow the grid after a text prefix
    (None: the model's own order already has every non-grid token on one side)."""
    if not trail or geometry.text_position != "prefix":
        return None
    return _trail_order(geometry.text_len - trail, geometry.video_len, trail, device)


def model_streams(geometry: Geometry, trail: int) -> Geometry:
    """The call's two input streams as diffusers shards them under context parallelism: the text, and the
    hidden states (grid + trailing tokens), as a Geometry whose "video" is the whole hidden-state stream."""
    if not trail:
        return geometry
    text = geometry.text_len - trail
    return Geometry(1, 1, geometry.video_len + trail, text, geometry.text_position if text else "none")


def padding_fits(keep: Tensor, geometry: Geometry) -> bool:
    """Whether the padded tokens of an item (``keep`` False) are ones its geometry can drop: a tail of the
    sequence (items packed to the longest one: Lumina 2, Z-Image) or text tokens (Qwen-Image, HunyuanVideo)."""
    n = int(keep.sum())
    if n < geometry.video_len:
        return False
    if bool(keep[:n].all()):
        return True
    pad = (~keep).nonzero().flatten()
    start = geometry.video_start
    return not bool(((pad >= start) & (pad < start + geometry.video_len)).any())


def padding_groups(valid: Tensor, geometry: Geometry) -> list[tuple[Tensor, Tensor, Tensor, Geometry]] | None:
    """Items with the same padding, as (items, kept tokens, padded tokens, the geometry of the kept tokens).

    The kept tokens keep the model's token order with the text shortened. None when some item's padding does not
    fit its geometry (:func:`padding_fits`).
    """
    groups = []
    rows, which = torch.unique(valid, dim=0, return_inverse=True)
    for r in range(rows.shape[0]):
        keep = rows[r]
        if not padding_fits(keep, geometry):
            return None
        text = int(keep.sum()) - geometry.video_len
        g = Geometry(geometry.frames, geometry.height, geometry.width, text, geometry.text_position if text else "none")
        groups.append(((which == r).nonzero().flatten(), keep.nonzero().flatten(), (~keep).nonzero().flatten(), g))
    return groups


def _padding_of(mask: Tensor | None, batch: int, length: int) -> tuple[Tensor | None, str | None] | None:
    """(valid [B, S] or None when nothing is padded, kind) of a key mask (kind None) or a token mask (kind "bool" /
    "additive", see :func:`_token_mask`); None for any other mask."""
    if mask is None:
        return None, None
    valid = _key_padding(mask, batch, length)
    kind = None
    if valid is None:
        found = _token_mask(mask, batch, length)
        if found is None:
            return None
        valid, kind = found
    return (None, None) if bool(valid.all()) else (valid, kind)


def _key_mask_shape(mask: Tensor, batch: int, length: int) -> Tensor | None:
    """The mask as [B|1, S] when its shape says it only masks keys (same row for every query)."""
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        flat = mask[:, 0, 0]
    elif mask.dim() == 3 and mask.shape[1] == 1:
        flat = mask[:, 0]
    elif mask.dim() == 2 and mask.shape != (length, length):
        flat = mask
    else:
        return None
    if flat.shape[-1] != length or flat.shape[0] not in (1, batch):
        return None
    return flat


def _square_mask_shape(mask: Tensor, batch: int, length: int) -> bool:
    """Whether the mask is one [S, S] mask per item ([B|1, 1, S, S]), the shape of a token mask."""
    return mask.dim() == 4 and mask.shape[1] == 1 and tuple(mask.shape[2:]) == (length, length) and \
        mask.shape[0] in (1, batch)


def _token_mask(mask: Tensor, batch: int, length: int) -> tuple[Tensor, str] | None:
    """(valid [B, S], kind) when ``mask`` is a token mask applied to queries and keys alike, ``m_i * m_j``
    (ChromaPipeline's): kind "bool", or "additive" for 0/1 floats, which attention adds to the scores (valid
    pairs score one more than pairs with a padded token). None for any other mask."""
    if not _square_mask_shape(mask, batch, length):
        return None
    pairs = mask[:, 0]
    if pairs.dtype == torch.bool:
        valid = pairs.any(-2)
        if not torch.equal(pairs, valid[:, :, None] & valid[:, None, :]):
            return None
        return valid.expand(batch, length), "bool"
    if not pairs.is_floating_point() or not bool(((pairs == 0) | (pairs == 1)).all()):
        return None
    valid = pairs.amax(-2) == 1
    ones = valid.to(pairs.dtype)
    if not torch.equal(pairs, ones[:, :, None] * ones[:, None, :]):
        return None
    return valid.expand(batch, length), "additive"


def _rebuilt_mask(valid: Tensor, kind: str | None, dtype: torch.dtype) -> Tensor:
    """The [B, 1, S|1, S] mask ``valid`` stands for: a key mask (kind None) or a token mask."""
    if kind is None:
        return valid[:, None, None, :]
    if kind == "bool":
        return (valid[:, :, None] & valid[:, None, :])[:, None]
    ones = valid.to(dtype)
    return (ones[:, :, None] * ones[:, None, :])[:, None]


def _with_padded_keys(out: Tensor, lse: Tensor, q: Tensor, k_pad: Tensor, v_pad: Tensor,
                      heads: tuple[Pattern, ...], geometry: Geometry, scale: float | None) -> Tensor:
    """The valid queries' attention (``out``, ``lse`` over the valid keys) merged by log-sum-exp with the padded
    keys of an additive 0/1 token mask, which score one less. Padded keys are text: a head's queries see them
    where its pattern lets them see text (every query under ``text_dense``, else the text queries)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    text_rows = geometry.coords(torch.arange(geometry.seq_len, device=q.device))[3]
    merged = torch.empty_like(out)
    for h, pattern in enumerate(heads):
        scores = (q[:, h] @ k_pad[:, h].transpose(-1, -2)).float() * scale - 1.0
        if not pattern.text_dense:
            scores = scores.masked_fill(~text_rows[None, :, None], float("-inf"))
        lse_pad = torch.logsumexp(scores, -1)
        out_pad = torch.softmax(scores, -1).nan_to_num(0.0) @ v_pad[:, h].float()
        top = torch.maximum(lse[:, h], lse_pad)
        w_kept, w_pad = (lse[:, h] - top).exp(), (lse_pad - top).exp().nan_to_num(0.0)
        total = (out[:, h].float() * w_kept[..., None] + out_pad * w_pad[..., None]) / (w_kept + w_pad)[..., None]
        merged[:, h] = total.to(out.dtype)
    return merged


def _key_padding(mask: Tensor, batch: int, length: int) -> Tensor | None:
    """bool [B, S] of valid keys if ``mask`` only masks keys (same for every query), else None."""
    flat = _key_mask_shape(mask, batch, length)
    if flat is None:
        return None
    if flat.dtype == torch.bool:
        valid = flat
    elif flat.is_floating_point():
        if not bool(((flat == 0) | (flat < -1e4)).all()):
            return None  # an additive bias, not a padding mask
        valid = flat == 0
    else:
        return None
    return valid.expand(batch, length)


def _square_mask(mask: Tensor, length: int) -> Tensor | None:
    """The mask as bool [S, S] when it is one query x key table shared by every batch item and head."""
    if mask.dtype != torch.bool:
        return None
    if mask.dim() == 4 and mask.shape[:2] == (1, 1):
        mask = mask[0, 0]
    if mask.dim() != 2 or mask.shape != (length, length):
        return None
    return mask


def frame_table(mask: Tensor, geometry: Geometry) -> tuple[tuple[bool, ...], ...] | None:
    """The frames x frames table of a frame-granular bool [S, S] mask over a video-only sequence, else None.

    Frame-granular: whether query token q may see key token k depends only on their frames (e.g.
    SkyReels-V2's block-causal diffusion forcing). Read off the first token of every frame, then
    checked against the whole mask one query frame at a time.
    """
    frames, hw = geometry.frames, geometry.tokens_per_frame
    if geometry.text_len or mask.shape != (geometry.seq_len, geometry.seq_len):
        return None
    table = mask[::hw, ::hw]
    if not bool(table.any(1).all()):
        return None
    for f in range(frames):
        rows = mask[f * hw : (f + 1) * hw].view(hw, frames, hw)
        if not bool((rows == table[f][None, :, None]).all()):
            return None
    return tuple(tuple(bool(x) for x in row) for row in table.cpu().tolist())


def lead_order(lead: int, video: int, length: int, device: torch.device) -> Tensor:
    """Positions that move ``lead`` leading tokens behind the ``video`` grid tokens that follow them."""
    return torch.cat([torch.arange(lead, lead + video), torch.arange(lead), torch.arange(lead + video, length)]).to(
        device)


_ROUTERS: dict[int, AttentionRouter] = {}
_ROUTER_IDS = itertools.count()
_CALL_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


# cudagraph_unsafe: the op decides in Python on every call (step, plan, geometry); a CUDA graph
# (torch.compile mode="reduce-overhead") would replay the first call's decision forever.
_OP_TAGS = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


@torch.library.custom_op("headsparse::routed_attention", mutates_args=(), tags=_OP_TAGS)
def routed_attention(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, scale: float | None, router: Tensor,
    head_offset: int | None, backend: str | None,
) -> Tensor:
    """One layer's self-attention, decided at run time from the plan, the step and the geometry.

    A custom op so that ``torch.compile`` keeps it whole in the graph: the decision (dense or which
    layout) reads Python state that must not be traced or guarded on. ``router``: the layer's router
    id as a CPU tensor, so that it is an input of a compiled graph and not a constant (one graph serves
    every layer of a repeated block). ``head_offset``: None when the call holds all the layer's heads;
    under Ulysses, the global index of the first head it holds. ``backend``: the diffusers attention
    backend the processor asked for (``set_attention_backend``), which the heads left dense run on.
    """
    return _ROUTERS[int(router)].run(query, key, value, attn_mask, scale, head_offset, backend).contiguous()


@routed_attention.register_fake
def _(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, scale: float | None,
      router: Tensor, head_offset: int | None, backend: str | None) -> Tensor:
    return query.new_empty(query.shape)


def routed_dispatch(*args: Any, **kwargs: Any) -> Any:
    """Stands in for ``dispatch_attention_fn`` in every rebound processor: the running layer's router."""
    return getattr(ACTIVE.processor, ROUTER_ATTR)(*args, **kwargs)


def routed_sdpa(*args: Any, **kwargs: Any) -> Any:
    """Stands in for ``F.scaled_dot_product_attention`` in every rebound processor."""
    return getattr(ACTIVE.processor, ROUTER_ATTR)(*args, **kwargs)


def chosen_backend(backend: str | None) -> str | None:
    """The diffusers attention backend a user chose for dense attention: the processor's (``set_attention_backend``),
    else the active one (``attention_backend(...)``, ``DIFFUSERS_ATTN_BACKEND``) unless it is the default "native"."""
    if backend is not None:
        return backend
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    except ImportError:  # pragma: no cover - diffusers is a dependency
        return None
    active = _backend_name(_AttentionBackendRegistry.get_active_backend()[0])
    return None if active == "native" else active


def _backend_name(backend: Any) -> str | None:
    """A diffusers ``AttentionBackendName`` (a str enum) or name as a plain str (what the custom op takes)."""
    if backend is None:
        return None
    return str(getattr(backend, "value", backend))


class AttentionRouter:
    """Stands in for one module's attention function; sparse when the plan and the call allow.

    Calls that can never be sparse (cross-attention, dropout, causal, a non-key mask, autograd,
    ring context parallelism) go straight to the original function; the rest go through the
    ``headsparse::routed_attention`` op, which decides per call (under Ulysses: inside diffusers'
    all-to-all, on this rank's heads).
    """

    def __init__(self, state: TransformerState, layer: int, style: str, original: Callable[..., Any]) -> None:
        self.state = state
        self.layer = layer
        self.style = style  # "dispatch": q (B, S, H, D); "sdpa": q (B, H, S, D)
        self.original = original
        self.id = next(_ROUTER_IDS)
        self.key = torch.tensor(self.id)  # what the custom op gets (a graph input under torch.compile)
        _ROUTERS[self.id] = self

    def release(self) -> None:
        _ROUTERS.pop(self.id, None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = dict(zip(_CALL_ARGS, args, strict=False))
        call.update(kwargs)
        q, k = call["query"], call["key"]
        seq_dim = 1 if self.style == "dispatch" else 2
        mask = call.get("attn_mask")
        parallel = call.get("parallel_config")
        cp = cp_config(parallel)
        static_dense = (
            (parallel is not None and self.style != "dispatch")
            or call.get("dropout_p") or call.get("is_causal") or call.get("enable_gqa")
            or q.shape[seq_dim] != k.shape[seq_dim]
            # Under context parallelism a mask covers this rank's keys only (diffusers gathers it): dense.
            or (mask is not None and cp is not None)
            or (torch.is_grad_enabled() and q.requires_grad)
        )
        if static_dense:
            return self.original(*args, **kwargs)
        length = q.shape[seq_dim]
        if mask is not None and _key_mask_shape(mask, q.shape[0], length) is None and \
                not _square_mask_shape(mask, q.shape[0], length):
            self.state.warn_once(f"layer {self.layer}: running dense because its attention mask "
                                 f"{tuple(mask.shape)} differs between queries (headsparse handles key masks and "
                                 "token masks)")
            return self.original(*args, **kwargs)
        scale = call.get("scale")
        backend = _backend_name(call.get("backend"))
        if cp is not None:
            why = unsupported_reason(cp)
            if why is not None:
                self.state.warn_once(f"running dense under context parallelism: {why}")
                return self.original(*args, **kwargs)
            if self.state.observer is not None:
                raise RuntimeError("headsparse.search calibrates every head in one process; run it without context "
                                   "parallelism and apply the plan under it")
            run_local = functools.partial(self._ulysses, cp, scale, backend)
            return ulysses_attention(q, k, call["value"], scale, parallel, run_local)
        # A parallel config that splits nothing (no context parallelism): an ordinary call.
        return routed_attention(q, k, call["value"], mask, scale, self.key, None, backend)

    def _ulysses(self, cp: Any, scale: float | None, backend: str | None, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """One rank's attention inside Ulysses: the whole sequence, this rank's heads, (B, S, H_local, D).

        Joint text + grid sequences arrive rank-interleaved; they run in the model's token order.
        """
        offset = ulysses_head_offset(cp, q.shape[2])
        geometry, _ = self._geometry(q)
        if self.state.lead:
            self.state.warn_once(f"layer {self.layer}: leading non-grid tokens under context parallelism are not "
                                 "built; running dense")
            return self._dense(q, k, v, None, scale, backend)
        streams = None if geometry is None else model_streams(geometry, self.state.trail)
        order = None if streams is None else joint_order(streams, int(cp.ulysses_degree))
        if order is None:
            if streams is not None and streams.text_len:
                self.state.warn_once(f"layer {self.layer}: {streams.text_len} text and {streams.video_len} grid "
                                     f"tokens do not split evenly over {cp.ulysses_degree} ranks; running dense")
                return self._dense(q, k, v, None, scale, backend)
            return routed_attention(q, k, v, None, scale, self.key, offset, backend)
        order = order.to(q.device)
        out = routed_attention(q[:, order], k[:, order], v[:, order], None, scale, self.key, offset, backend)
        return out[:, torch.argsort(order)]

    def run(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None,
            head_offset: int | None = None, backend: str | None = None) -> Tensor:
        state = self.state
        if not state.profile:
            return self._route(q, k, v, mask, scale, head_offset, backend)
        start = time.perf_counter()
        out = self._route(q, k, v, mask, scale, head_offset, backend)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        stats = state.stats[self.layer]
        stats.seconds += time.perf_counter() - start
        stats.calls += 1
        return out

    # ------------------------------------------------------------------ routing
    def _dense(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None,
               backend: str | None = None) -> Tensor:
        """The model's own attention call (for diffusers' dispatcher: on the backend the processor asked for)."""
        extra = {"backend": backend} if backend is not None else {}
        return self.original(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale, **extra)

    def _heads(self, auto: bool, count: int, head_offset: int | None) -> tuple[Pattern, ...]:
        """The patterns of this call's heads: all the layer's, or ``count`` from ``head_offset`` (Ulysses).

        In auto mode each process recognises only the heads it runs, so its decision holds exactly them.
        """
        heads = self.state.heads_now(self.layer)
        if head_offset is None:
            return heads
        if auto:
            return heads if self.layer in self.state.decisions else (Dense(),) * count
        return heads[head_offset : head_offset + count]

    def _route(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None,
               head_offset: int | None, backend: str | None = None) -> Tensor:
        state = self.state
        if state.observer is not None:
            self._observe(q, k, v, mask)
            return self._dense(q, k, v, mask, scale, backend)
        auto = state.auto_now(self.layer)
        heads = self._heads(auto, q.shape[2 if self.style == "dispatch" else 1], head_offset)
        if not auto and all(isinstance(p, Dense) for p in heads):
            return self._dense(q, k, v, mask, scale, backend)
        geometry, reason = self._geometry(q, len(heads))
        if geometry is None:
            state.warn_once(f"layer {self.layer}: running dense because {reason}")
            return self._dense(q, k, v, mask, scale, backend)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v)) if self.style == "dispatch" else (q, k, v)
        padding = _padding_of(mask, qh.shape[0], qh.shape[2])
        valid, kind, table = None, None, None
        if padding is not None:
            valid, kind = padding
        else:
            square = _square_mask(mask, qh.shape[2])
            table = None if square is None else self._frame_table(mask, square, geometry)
            if table is None:
                state.warn_once(f"layer {self.layer}: running dense because its attention mask is neither a key mask, "
                                "a token mask nor frame-granular over a video-only sequence")
                return self._dense(q, k, v, mask, scale, backend)
            if auto or any(getattr(p, "dynamic", False) for p in heads):
                state.warn_once(f"layer {self.layer}: a frame-masked (e.g. block-causal) call runs static "
                                "patterns only; recognition and dynamic patterns run dense here")
                return self._dense(q, k, v, mask, scale, backend)
            heads = tuple(FrameMasked(inner=p, allowed=table) for p in heads)
        # Non-grid tokens on the far side of the grid (spec.leading_tokens / trailing_tokens) join the text block.
        order = self._token_order(geometry, q.device)
        if order is not None:
            qh, kh, vh = (t.index_select(2, order[0]) for t in (qh, kh, vh))
            valid = None if valid is None else valid.index_select(1, order[0])
        if auto:
            if valid is not None:
                state.warn_once(f"layer {self.layer}: recognition does not handle padded text; this call runs dense")
                return self._dense(q, k, v, mask, scale, backend)
            decision = self._decide(qh, kh, vh, geometry, scale)
            if all(isinstance(p, Dense) for p in decision.recognition.heads):
                return self._dense(q, k, v, mask, scale, backend)
            out = sparse_attention(qh, kh, vh, decision.layout, scale=scale, backend=state.backend)
        else:
            out = self._sparse(qh, kh, vh, heads, geometry, valid, scale, kind, dense_backend=backend)
        if order is not None:
            out = out.index_select(2, order[1])
        stats = state.stats[self.layer]
        stats.sparse_calls += 1
        stats.geometry = geometry
        stats.frame_table = table
        return out.transpose(1, 2) if self.style == "dispatch" else out

    def _frame_table(self, mask: Tensor, square: Tensor, geometry: Geometry) -> tuple[tuple[bool, ...], ...] | None:
        """:func:`frame_table` of ``square`` (``mask`` as [S, S]), read once per mask tensor: every layer of a
        transformer call gets the same one."""
        cached = self.state.frame_mask
        if cached is not None and cached[0]() is mask and cached[1] == geometry:
            return cached[2]
        table = frame_table(square, geometry)
        self.state.frame_mask = (weakref.ref(mask), geometry, table)
        return table

    def _token_order(self, geometry: Geometry, device: torch.device) -> tuple[Tensor, Tensor] | None:
        """(order, inverse) of the layout's token order when non-grid tokens sit on the far side of the grid from
        the text (leading tokens before a grid with a text suffix, trailing ones after a grid with a text prefix):
        they move next to the text; None: the model's own order."""
        state = self.state
        if state.lead:
            order = lead_order(state.lead, geometry.video_len, geometry.seq_len, device)
            return order, torch.argsort(order)
        return trail_order(geometry, state.trail, str(device))

    def _observe(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
        """Calibration: hand the call's q/k/v (B, H, S, D) in the layout's token order to the observer; a padded
        item is observed on its valid tokens, where its layout applies."""
        state = self.state
        geometry, _ = self._geometry(q, state.plan.num_heads)
        if geometry is None:
            return
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v)) if self.style == "dispatch" else (q, k, v)
        padding = _padding_of(mask, qh.shape[0], qh.shape[2])
        if padding is None:
            return
        valid = padding[0]
        order = self._token_order(geometry, q.device)
        if order is not None:
            qh, kh, vh = (t.index_select(2, order[0]) for t in (qh, kh, vh))
            valid = None if valid is None else valid.index_select(1, order[0])
        if valid is None:
            state.observer(self.layer, state.step, qh, kh, vh, geometry)
            return
        for items, kept, _, g in padding_groups(valid, geometry) or ():
            state.observer(self.layer, state.step, *(t[items].index_select(2, kept) for t in (qh, kh, vh)), g)

    def _decide(self, q: Tensor, k: Tensor, v: Tensor, geometry: Geometry, scale: float | None) -> LayerDecision:
        """The layer's recognised decision: reused within ``every`` steps at the same geometry."""
        state = self.state
        recognizer = state.recognizer
        assert recognizer is not None
        old = state.decisions.get(self.layer)
        if old is not None and old.geometry == geometry and 0 <= state.step - old.step < recognizer.every:
            return old
        block = state.plan.block_size
        rec = recognizer.recognize(q, k, v, geometry, block=block, scale=scale)
        start = time.perf_counter()
        layout = recognition_layout(rec, geometry, block).to(q.device)
        stats = state.stats[self.layer]
        stats.recognitions += 1
        stats.recognition_seconds += rec.seconds + time.perf_counter() - start
        decision = LayerDecision(rec, layout, geometry, state.step)
        state.decisions[self.layer] = decision
        return decision

    def _geometry(self, q: Tensor, num_heads: int | None = None) -> tuple[Geometry | None, str]:
        """The call's Geometry (None and why when it cannot be known); ``num_heads``: the heads q must have."""
        state = self.state
        seq_dim, head_dim = (1, 2) if self.style == "dispatch" else (2, 1)
        if num_heads is not None and q.shape[head_dim] != num_heads:
            raise ValueError(
                f"the headsparse plan for {state.spec.class_name} has {num_heads} heads in layer {self.layer}, "
                f"but its attention runs {q.shape[head_dim]} heads"
            )
        if state.grid is None:
            return None, "the token grid could not be read from the transformer's inputs"
        grid = state.grid
        if state.spec.layer_grid is not None:
            grid = state.spec.layer_grid(state.grid, q.shape[seq_dim])
            if grid is None:
                return None, f"its sequence ({q.shape[seq_dim]}) matches no resolution level of the grid {state.grid}"
        frames, height, width = grid
        text = q.shape[seq_dim] - frames * height * width
        if text < 0:
            return None, f"the sequence ({q.shape[seq_dim]}) is shorter than the token grid {grid}"
        if text < state.lead:
            return None, (f"the sequence ({q.shape[seq_dim]}) is shorter than the grid {grid} and its "
                          f"{state.lead} leading tokens")
        if state.trail > text:
            return None, (f"the sequence ({q.shape[seq_dim]}) is shorter than the grid {grid} and its "
                          f"{state.trail} trailing tokens")
        position = state.spec.text_position if text else "none"
        if text and position == "none":
            return None, f"{text} tokens beyond the video grid in a model whose self-attention has no text"
        return Geometry(frames, height, width, text, position), ""

    def _split_heads(self, q: Tensor, k: Tensor, v: Tensor, heads: tuple[Pattern, ...], geometry: Geometry,
                     scale: float | None) -> Tensor:
        """A layer with agent heads: each agent setting runs its heads, the other heads run as a smaller layer."""
        groups: dict[Pattern | None, list[int]] = {}
        for h, p in enumerate(heads):
            groups.setdefault(p if isinstance(p, Agent) else None, []).append(h)
        if len(groups) == 1:
            (pattern,) = groups
            return agent_attention(q, k, v, geometry, pattern, scale=scale)  # type: ignore[arg-type]

        def executor(pattern: Pattern | None, idx: list[int]) -> HeadGroupRun:
            if pattern is None:
                rest = tuple(heads[h] for h in idx)
                return lambda qs, ks, vs: self._sparse(qs, ks, vs, rest, geometry, None, scale)
            return lambda qs, ks, vs: agent_attention(qs, ks, vs, geometry, pattern, scale=scale)  # type: ignore

        return attention_by_head_groups(q, k, v, [(idx, executor(p, idx)) for p, idx in groups.items()])

    def _dense_heads_apart(self, q: Tensor, k: Tensor, v: Tensor, heads: tuple[Pattern, ...], geometry: Geometry,
                           scale: float | None, backend: str) -> Tensor:
        """A layer mixing dense and sparse heads under a chosen diffusers backend: its dense heads run there."""
        dense = [h for h, p in enumerate(heads) if isinstance(p, Dense)]
        rest = [h for h, p in enumerate(heads) if not isinstance(p, Dense)]
        rest_heads = tuple(heads[h] for h in rest)

        def run_dense(qs: Tensor, ks: Tensor, vs: Tensor) -> Tensor:
            qs, ks, vs = (t.transpose(1, 2) for t in (qs, ks, vs))
            return self._dense(qs, ks, vs, None, scale, backend).transpose(1, 2)

        def run_rest(qs: Tensor, ks: Tensor, vs: Tensor) -> Tensor:
            return self._sparse(qs, ks, vs, rest_heads, geometry, None, scale)

        return attention_by_head_groups(q, k, v, [(dense, run_dense), (rest, run_rest)])

    def _sparse(self, q: Tensor, k: Tensor, v: Tensor, heads: tuple[Pattern, ...], geometry: Geometry,
                valid: Tensor | None, scale: float | None, kind: str | None = None,
                dense_backend: str | None = None) -> Tensor:
        """The layer's static or dynamic heads. ``valid``: bool [B, S], False on padded tokens; ``kind``: None when
        only keys are masked, "bool" or "additive" for a token mask (see ``_token_mask``); ``dense_backend``: the
        diffusers backend chosen for the heads left dense."""
        agent = any(isinstance(p, Agent) for p in heads)
        dynamic = any(getattr(p, "dynamic", False) for p in heads)  # agent and pooled heads
        mixed = 0 < sum(isinstance(p, Dense) for p in heads) < len(heads)
        if mixed and valid is None and not dynamic and self.style == "dispatch":
            chosen = chosen_backend(dense_backend)
            if chosen is not None:
                return self._dense_heads_apart(q, k, v, heads, geometry, scale, chosen)
        if valid is not None and dynamic:
            what = "agent attention" if agent else "dynamic patterns"
            self.state.warn_once(f"layer {self.layer}: {what} with padded text is not built; running dense")
            return F.scaled_dot_product_attention(q, k, v, attn_mask=_rebuilt_mask(valid, kind, q.dtype),
                                                  scale=scale)
        if agent:
            return self._split_heads(q, k, v, heads, geometry, scale)
        block = self.state.plan.block_size
        backend = self.state.backend
        if valid is None:
            if dynamic:
                return dynamic_layer_attention(q, k, v, heads, geometry, block, scale, backend)
            layout = layer_layout(heads, geometry, block, str(q.device))
            return sparse_attention(q, k, v, layout, scale=scale, backend=backend)
        # Padded tokens (HunyuanVideo's and Qwen-Image's text, Lumina 2 / Z-Image items packed to the longest
        # one, Chroma's text): each item runs on its valid tokens, in order, which keep the model's token order
        # with the text shortened. Padded query rows are computed as the model computes them: under a key mask
        # they attend the valid keys densely; under a token mask they keep no key ("bool") or attend every key
        # alike ("additive"), whose valid queries also see the padded keys, one unit lower.
        groups = padding_groups(valid, geometry)
        if groups is None:
            self.state.warn_once(f"layer {self.layer}: its attention mask pads grid tokens; this call runs dense")
            return F.scaled_dot_product_attention(q, k, v, attn_mask=_rebuilt_mask(valid, kind, q.dtype), scale=scale)
        out = torch.empty_like(q)
        for items, kept, pad, g in groups:
            layout = layer_layout(heads, g, block, str(q.device))
            qi, ki, vi = q[items], k[items], v[items]
            qk, kk, vk = (t.index_select(2, kept) for t in (qi, ki, vi))
            oi = torch.empty_like(qi)
            if kind == "additive" and pad.numel():
                # the executors that return the log-sum-exp: triton, masked ("auto" picks one of them)
                with_lse = backend if backend in ("triton", "masked") else "auto"
                o, lse = sparse_attention(qk, kk, vk, layout, scale=scale, backend=with_lse, return_lse=True)
                o = _with_padded_keys(o, lse, qk, ki.index_select(2, pad), vi.index_select(2, pad), heads, g, scale)
            else:
                o = sparse_attention(qk, kk, vk, layout, scale=scale, backend=backend)
            oi.index_copy_(2, kept, o)
            if not pad.numel():
                out[items] = oi
                continue
            qp = qi.index_select(2, pad)
            if kind is None:
                rest = F.scaled_dot_product_attention(qp, kk, vk, scale=scale)
            elif kind == "bool":
                none = torch.zeros(1, 1, pad.numel(), ki.shape[2], dtype=torch.bool, device=q.device)
                rest = F.scaled_dot_product_attention(qp, ki, vi, attn_mask=none, scale=scale)
            else:
                rest = F.scaled_dot_product_attention(qp, ki, vi, scale=scale)
            oi.index_copy_(2, pad, rest)
            out[items] = oi
        return out
