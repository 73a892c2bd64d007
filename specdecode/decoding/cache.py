"""Pre-allocated, position-indexed KV cache with per-row lengths, and the model step that drives it.

Why our own cache: speculative decoding writes k+1 positions per round and then keeps a
different number of them in every row of the batch. transformers' DynamicCache can only
crop whole batches (and refuses to crop sliding-window layers once the window is full);
its StaticCache shares one write position across the batch and keeps sliding-window
layers in a rolling buffer, where a rolled-back position is already overwritten.

Here every layer keeps its keys and values in one buffer [B, H, S, D] with slot == token
position, for full *and* sliding-window layers. Each row has its own length
(`positions[b]` = tokens of row b held in the cache). A step writes its q new tokens at
slots positions[b] .. positions[b] + q - 1 (scatter, no host sync) and attends through an
explicit mask that encodes causality and, for sliding layers, the window. Rollback is
`positions[b] = n`: slots past the length are invisible to the mask and are overwritten
before they ever become visible again. Nothing is copied.

The cache is duck-typed to what transformers' attention layers call (`update`), so any
model whose layers use the standard `cache.update(...)` protocol and accept a prepared 4D
mask (or a dict of them keyed by layer type) runs unmodified. It does not support
multi-latent attention, chunked attention or encoder-decoder models.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import kernels as _kernels
from .native import KernelFailure, NativeModel, NativeUnsupported

__all__ = ["KVCache", "ModelRunner", "UnsupportedModelError"]

log = logging.getLogger("specdecode")


class UnsupportedModelError(RuntimeError):
    """The model's attention cannot be driven by this cache."""


class KVCache:
    """Per-layer KV buffers [B, H, S, D] indexed by absolute position, with per-row lengths.

    Buffers are allocated on the first write of each layer (shapes come from the model's own
    key/value states, so head counts and head sizes never need to be guessed); after prefill
    no allocation happens again.
    """

    is_compileable = True  # read by some transformers code paths

    def __init__(self, batch_size: int, max_len: int, device: torch.device) -> None:
        self.batch_size = batch_size
        self.max_len = max_len
        self.device = device
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        # tokens of each row held in the cache; the next write starts here. [B]
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=device)
        # set by `prepare` for the forward in flight
        self._step_positions: Tensor | None = None  # [B, q]
        self._attend_len = max_len

    # ---- transformers' cache protocol ---------------------------------------------------
    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        """Write this step's keys/values at each row's positions; return the visible buffers."""
        if layer_idx not in self.keys:
            b, h, _, d = key_states.shape
            self.keys[layer_idx] = torch.zeros(b, h, self.max_len, d, dtype=key_states.dtype, device=self.device)
            self.values[layer_idx] = torch.zeros(
                b, h, self.max_len, value_states.shape[-1], dtype=value_states.dtype, device=self.device
            )
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        pos = self._step_positions  # [B, q]
        assert pos is not None, "KVCache.prepare() must run before a forward"
        b, h, q, d = key_states.shape
        # scatter along the sequence axis: slot positions[b] + j <- token j of row b
        idx_k = pos[:, None, :, None].expand(b, h, q, d)
        k_buf.scatter_(2, idx_k, key_states.to(k_buf.dtype))
        idx_v = pos[:, None, :, None].expand(b, h, q, value_states.shape[-1])
        v_buf.scatter_(2, idx_v, value_states.to(v_buf.dtype))
        n = self._attend_len
        return k_buf[:, :, :n], v_buf[:, :, :n]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._attend_len

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_len

    def __len__(self) -> int:
        return len(self.keys)

    # ---- ours -------------------------------------------------------------------------
    def prepare(self, q: int, attend_len: int) -> Tensor:
        """Set up a forward of q tokens per row; returns position ids [B, q]."""
        if attend_len > self.max_len:
            raise ValueError(f"attend_len {attend_len} exceeds the cache size {self.max_len}")
        self._attend_len = attend_len
        offsets = torch.arange(q, device=self.device)
        self._step_positions = self.positions[:, None] + offsets  # [B, q]
        return self._step_positions

    def advance(self, n: Tensor) -> None:
        """positions += n ([B]). Rolling back a round is advancing by fewer than were written."""
        self.positions += n

    def set_positions(self, positions: Tensor) -> None:
        self.positions.copy_(positions)

    def select_rows(self, rows: Tensor) -> None:
        """Keep only the given rows (batch compaction when rows finish). Copies the buffers once."""
        for i in list(self.keys):
            self.keys[i] = self.keys[i].index_select(0, rows)
            self.values[i] = self.values[i].index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)
        self.batch_size = int(rows.numel())


@dataclass(frozen=True)
class _AttentionLayout:
    kinds: tuple[str, ...]  # layer type per layer ("full_attention" / "sliding_attention")
    sliding_window: int | None
    as_dict: bool  # the model takes {layer_type: mask}
    additive: bool  # eager attention adds the mask; sdpa takes a boolean one


def _attention_layout(model) -> _AttentionLayout:
    config = model.config
    text = getattr(config, "get_text_config", lambda: config)()
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise UnsupportedModelError(
            f"attention implementation '{impl}' cannot take the per-row masks the engine needs; use sdpa or eager"
        )
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        kinds = tuple(layer_types)
        unknown = set(kinds) - {"full_attention", "sliding_attention"}
        if unknown:
            raise UnsupportedModelError(f"layer types {sorted(unknown)} are not supported by the engine")
        as_dict = "sliding_attention" in kinds
    else:
        use_window = window is not None and getattr(text, "use_sliding_window", True)
        kinds = ("sliding_attention" if use_window else "full_attention",) * text.num_hidden_layers
        as_dict = False
    if "sliding_attention" in kinds and not window:
        raise UnsupportedModelError("the config declares sliding-window layers but no sliding_window size")
    return _AttentionLayout(kinds, window if "sliding_attention" in kinds else None, as_dict, impl == "eager")


class ModelRunner:
    """Runs one causal LM step over a KVCache: positions, masks and the forward call.

    No host synchronisation: positions live on the device, the mask is built from them.

    With `graphs=True` (CUDA only) every fixed-shape step — a given (cache, batch, q) — is
    captured once as a CUDA graph and replayed afterwards: launch overhead is paid once per
    step instead of once per kernel. Captured steps attend over the whole cache (a fixed
    shape), and caches are pooled by (batch, size) so later batches replay the same graphs.
    `compile=True` runs decode steps through the fused path of `native.py` (Llama, Mistral,
    Qwen2, Qwen3, Gemma 3), each layer compiled with torch.compile, before capturing them;
    other architectures get torch.compile over the transformers forward instead.
    `native=True` uses the fused path without compiling it (tests; `None` follows `compile`).
    Prefill (variable length) always runs eagerly through the transformers modules.
    """

    def __init__(self, model, graphs: bool = False, compile: bool = False, native: bool | None = None,
                 compile_backend: str = "inductor", kernels: bool | None = None) -> None:
        self.model = model
        self.layout = _attention_layout(model)
        params = inspect.signature(model.forward).parameters
        # transformers 5.2x renamed past_key_values -> cache
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in params
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.graphs = bool(graphs) and self.device.type == "cuda"
        self.compiled = bool(compile)
        self.compile_error: str | None = None  # set when compiling failed and the runner fell back
        self.native: NativeModel | None = None
        self.native_unsupported: str | None = None  # why the fused path is not used, when asked for
        if kernels is None and not self.graphs:
            # uncaptured, every Triton launch pays Python's launch cost (tens of us, five a layer):
            # by default the kernels serve captured steps only
            kernels = False
        if native or (native is None and compile):
            try:  # NativeModel checks native_support itself
                self.native = NativeModel(model, self.layout.kinds, compile=compile,
                                          compile_backend=compile_backend, kernels=kernels)
            except NativeUnsupported as e:
                self.native_unsupported = str(e)
                if native:
                    raise UnsupportedModelError(self.native_unsupported) from None
        self._step = self._forward if self.native is None else self._native_forward
        if compile and self.native is None:
            # inductor fuses the step's elementwise work; CUDA graphs are ours (captured below)
            self._step = torch.compile(self._forward, dynamic=False, backend=compile_backend)
        self._captured: dict[tuple, tuple] = {}
        self._caches: dict[tuple[int, int], KVCache] = {}
        self._pool = None

    def describe(self) -> str:
        """How this runner's decode steps run, e.g. 'fused layers, compiled, CUDA graphs'."""
        parts = ["fused layers" if self.native is not None else "transformers modules"]
        if self.native is not None and self.native.kernels:
            parts.append(f"Triton decode kernels (whole steps of <= {_kernels.MAX_ROWS} rows, attention in larger ones)")
        elif self.native is not None and self.native.kernel_error:
            parts.append(f"no Triton kernels ({self.native.kernel_error})")
        if self.compiled:
            parts.append("compiled")
        elif self.compile_error:
            parts.append(f"not compiled ({self.compile_error})")
        parts.append("CUDA graphs" if self.graphs else "eager")
        return ", ".join(parts)

    @staticmethod
    def pool_len(max_len: int) -> int:
        """Cache size of the pooled caches of graph mode: the next power of two, at least 256.
        Captured (and compiled) steps are specific to a cache size; powers of two keep the number
        of sizes, and so of captures and compiles, small. Attending over the unused slots of a
        larger cache costs little next to reading the weights."""
        return max(256, 1 << (max_len - 1).bit_length())

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        if not self.graphs:
            return KVCache(batch_size, max_len, self.device)
        # graph mode: reuse buffers (and with them the captured graphs) across batches
        max_len = self.pool_len(max_len)
        key = (batch_size, max_len)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = KVCache(batch_size, max_len, self.device)
        cache.positions.zero_()
        return cache

    def _masks(self, step_pos: Tensor, attend_len: int, boolean: bool = False):
        slots = torch.arange(attend_len, device=step_pos.device)  # [S]
        qpos = step_pos[:, None, :, None]  # [B, 1, q, 1]
        causal = slots <= qpos  # [B, 1, q, S]
        masks = {"full_attention": causal}
        if self.layout.sliding_window is not None:
            # transformers' convention: a query at position i sees keys at positions > i - window
            masks["sliding_attention"] = causal & (slots > qpos - self.layout.sliding_window)
        if boolean:
            return masks
        if self.layout.additive:
            neg = torch.finfo(self.dtype).min
            masks = {name: torch.zeros((), dtype=self.dtype, device=m.device).masked_fill(~m, neg) for name, m in masks.items()}
        if self.layout.as_dict:
            return masks
        kind = self.layout.kinds[0]
        return masks[kind]

    def forward(self, input_ids: Tensor, cache: KVCache, attend_len: int, logits_to_keep: Tensor | int = 0) -> Tensor:
        """One forward of input_ids [B, q] at each row's cache position; returns logits [B, q', V].

        The cache's positions are NOT advanced: the caller decides how many of the q tokens stay.
        In graph mode the returned logits live in a static buffer that the next replay of the
        same step overwrites: consume them first.
        """
        if not self.graphs or not isinstance(logits_to_keep, int):
            if self.compiled:  # one compiled shape per (batch, q): always attend over the whole cache
                attend_len = cache.max_len
            return self._guarded_step(input_ids, cache, attend_len, logits_to_keep)
        key = (id(cache), cache.batch_size, input_ids.shape[1], logits_to_keep)
        entry = self._captured.get(key)
        if entry is None:
            entry = self._capture(input_ids, cache, logits_to_keep)
            self._captured[key] = entry
        graph, static_in, static_out = entry
        static_in.copy_(input_ids)
        graph.replay()
        return static_out

    def prefill(self, input_ids: Tensor, cache: KVCache, attend_len: int, logits_to_keep: Tensor | int = 1) -> Tensor:
        """A variable-length forward (prompts): never compiled or captured. With the fused path it
        runs the fused layers uncompiled (a third of the kernel launches of the transformers
        modules); otherwise the transformers modules."""
        if self.native is not None:
            return self._native_forward(input_ids, cache, attend_len, logits_to_keep, eager=True)
        return self._forward(input_ids, cache, attend_len, logits_to_keep)

    def _guarded_step(self, *args) -> Tensor:
        """The step; if torch.compile fails to build it (no working Triton, an unsupported GPU or
        compiler), the runner falls back to the uncompiled step once, says so, and carries on."""
        try:
            return self._step(*args)
        except KernelFailure as e:
            self.native.disable_kernels(e.__cause__ or e)
            log.warning("the Triton decode kernels could not run here (%s); using the compiled layers "
                        "instead", self.native.kernel_error)
            return self._guarded_step(*args)  # now without kernels (and torch.compile still guarded)
        except torch._dynamo.exc.TorchDynamoException as e:
            if not self.compiled:
                raise
            self.uncompile(e)
            return self._step(*args)

    def uncompile(self, error: BaseException | None = None) -> None:
        """Run decode steps uncompiled from now on (captured graphs of compiled steps stay valid)."""
        self.compiled = False
        if self.native is not None:
            self.native.uncompile()
            self._step = self._native_forward
        else:
            self._step = self._forward
        if error is not None:
            # the backend's own exception says what went wrong; dynamo's wrapper only that it did
            cause = getattr(error, "inner_exception", None) or error.__cause__ or error
            text = str(cause).strip().splitlines()
            self.compile_error = f"{type(cause).__name__}: {text[0] if text else ''}"[:300]
            log.warning("torch.compile could not build the decode step (%s); running it uncompiled "
                        "(--no-compile avoids the attempt)", self.compile_error)

    def _capture(self, input_ids: Tensor, cache: KVCache, logits_to_keep: int) -> tuple:
        """Warm up with the real inputs (their KV writes are exactly what the replay writes), then capture."""
        static_in = input_ids.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # also triggers torch.compile's compilation when enabled
                self._guarded_step(static_in, cache, cache.max_len, logits_to_keep)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self._step(static_in, cache, cache.max_len, logits_to_keep)
        return graph, static_in, static_out

    def _native_forward(self, input_ids: Tensor, cache: KVCache, attend_len: int,
                        logits_to_keep: Tensor | int = 0, eager: bool = False) -> Tensor:
        position_ids = cache.prepare(input_ids.shape[1], attend_len)  # [B, q]
        if not eager and self.native.kernels:
            masks = {}  # the kernels mask from the positions themselves
        else:
            masks = self._masks(position_ids, attend_len, boolean=True)
        return self.native.forward(input_ids, cache, position_ids, masks, attend_len, logits_to_keep, eager=eager)

    def _forward(self, input_ids: Tensor, cache: KVCache, attend_len: int, logits_to_keep: Tensor | int = 0) -> Tensor:
        q = input_ids.shape[1]
        position_ids = cache.prepare(q, attend_len)  # [B, q]
        mask = self._masks(position_ids, attend_len)
        kwargs = {self._cache_kw: cache}
        if self._has_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
        )
        logits = out.logits
        if not self._has_logits_to_keep and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            logits = logits[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else logits[:, logits_to_keep]
        return logits
