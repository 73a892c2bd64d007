"""The accelerated model step: fused layers, torch.compile and Triton kernels over the KVCache.

`ModelRunner` implements the reference tier's Step seam (decoding/step.py: `new_cache`,
`prefill`, `forward`) and adds:

* the fused decode layers of fused.py (Llama, Mistral, Qwen2, Qwen3, Gemma 3), each layer
  compiled with torch.compile when `compile=True`, over floating-point weights or (`nf4`)
  bitsandbytes NF4 ones; other architectures get torch.compile over the transformers forward
  instead;
* the Triton decode kernels (kernels.py) inside those layers, by default for captured steps
  only (uncaptured, their Python launches would cost more than they save);
* fixed shapes: a compiled or captured step always attends over the whole cache, and cache
  sizes are pooled (`pool_len`), so one compiled function and one captured graph serve every
  batch of a given size; pooled caches are reused, which is what lets a captured round
  replay on them (rounds.py).

Prefill (variable length) runs the fused layers (sdpa) or the transformers modules; the fused
layer is compiled only where prefills are captured (`graphs` and `compile`: prompts are padded to
a few buckets, one compile and one graph each), uncompiled elsewhere. A torch.compile or Triton
failure falls back once, with one warning.

What it does not: capture graphs (rounds.py captures whole rounds), or decide its own
settings (execution.py does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from ..decoding.cache import KVCache
from ..decoding.step import ModelStep, UnsupportedModelError
from . import glue as _glue
from .fused import KernelFailure, FusedModel, FusedUnsupported

__all__ = ["ModelRunner", "pool_len"]

log = logging.getLogger("specdecode")


def pool_len(max_len: int) -> int:
    """Cache size of pooled caches: the next power of two, at least 256. Compiled and captured
    steps are specific to a cache size; powers of two keep the number of sizes, and so of
    compiles and captures, small. Attending over the unused slots of a larger cache costs
    little next to reading the weights."""
    return max(256, 1 << (max_len - 1).bit_length())


class ModelRunner(ModelStep):
    """A model's decode step with the accelerations `Execution` chose for it.

    `graphs`: its steps will run inside captured rounds (CUDA only): caches are pooled and the
    Triton kernels are on by default. `compile`: torch.compile the decode step. `fused`: use
    the fused layers (None: when compiling). `kernels`: the Triton decode kernels (None: on
    for captured steps where they can run). `attention`, `max_kernel_rows`, `inductor_options`,
    `pdl`, `multi_row`, `fold_combine`, `max_mixed_rows`, `nf4_kernel_rows`: see FusedModel (profiling and tests; the defaults are the measured choices). `nf4`: let
    the fused layers run bitsandbytes NF4 Linear4bit weights (FusedModel's nf4; Execution.nf4 turns
    it on for models that hold them, e.g. `--quantized`). `head_fp8`: the kernel steps read an e4m3
    copy of the vocabulary head (FusedModel's head_fp8: a draft model's, `--draft-fp8-head`).
    `mlp_rows`: kernel steps of at most this many rows run each gated MLP as one kernel
    (FusedModel's mlp_rows; measured slower on the H200, off: profiling and tests)."""

    def __init__(self, model, graphs: bool = False, compile: bool = False, fused: bool | None = None,
                 compile_backend: str = "inductor", kernels: bool | None = None, attention: str | None = None,
                 max_kernel_rows: int | None = None, inductor_options: dict | None = None,
                 pdl: bool | None = None, nf4: bool = False, multi_row: str | None = None,
                 fold_combine: bool = False, max_mixed_rows: int | None = None,
                 nf4_kernel_rows: int | None = None, head_fp8: bool = False, mlp_rows: int = 0) -> None:
        super().__init__(model)
        self.graphs = bool(graphs) and self.device.type == "cuda"
        self.compiled = bool(compile)
        self.compile_error: str | None = None  # set when compiling failed and the runner fell back
        self.fused: FusedModel | None = None
        self.fused_unsupported: str | None = None  # why the fused path is not used, when asked for
        if kernels is None and not self.graphs:
            kernels = False  # uncaptured, each Triton launch pays Python's launch cost
        if fused or (fused is None and compile):
            try:  # FusedModel checks fused_support itself
                self.fused = FusedModel(model, self.layout.kinds, compile=compile, compile_backend=compile_backend,
                                        kernels=kernels, attention=attention, max_kernel_rows=max_kernel_rows,
                                        inductor_options=inductor_options, pdl=pdl, nf4=nf4,
                                        multi_row=multi_row, fold_combine=fold_combine,
                                        max_mixed_rows=max_mixed_rows, nf4_kernel_rows=nf4_kernel_rows,
                                        compile_prefill=compile and self.graphs, head_fp8=head_fp8,
                                        mlp_rows=mlp_rows)
            except FusedUnsupported as e:
                self.fused_unsupported = str(e)
                if fused:
                    raise UnsupportedModelError(self.fused_unsupported) from None
        self._step = self._transformers_step if self.fused is None else self._fused_step
        if compile and self.fused is None:
            # inductor fuses the step's elementwise work; CUDA graphs are captured around rounds
            self._step = torch.compile(self._transformers_step, dynamic=False, backend=compile_backend)
        # greedy picks on glue.argmax's kernel inside captured rounds (--no-kernels: torch's)
        self._picks_on_kernel = self.graphs and kernels is not False and _glue.usable(self.device)
        self._caches: dict[tuple[int, int], KVCache] = {}
        self._prefills: dict[tuple, tuple] = {}  # captured prefills per (cache, batch, bucket, kept logits)
        self._pool = None

    @property
    def fixed_shapes(self) -> bool:
        """Steps attend over the whole (pooled) cache: compiled and captured code is per shape."""
        return self.graphs or self.compiled

    def describe(self) -> str:
        """How this runner's decode steps run, e.g. 'fused layers, compiled, CUDA graphs'."""
        parts = ["fused layers" if self.fused is not None else "transformers modules"]
        if self.fused is not None and self.fused.kernels and self.fused.nf4:
            pdl = ", attention with programmatic dependent launch" if self.fused.pdl else ""
            mixed = ""
            if self.fused.multi_row == "mixed" and self.fused.max_mixed_rows > self.fused.nf4_kernel_rows:
                mixed = (f"steps of {self.fused.nf4_kernel_rows + 1}-{self.fused.max_mixed_rows} rows on the Triton "
                         "kernels over each layer dequantized, ")
            parts.append(f"fused NF4 kernels (whole steps of <= {self.fused.nf4_kernel_rows} rows{pdl}; {mixed}larger "
                         "steps and prefill dequantize one layer at a time)")
        elif self.fused is not None and self.fused.kernels:
            pdl = ", programmatic dependent launch" if self.fused.pdl else ""
            larger = ("all but the down projection in larger ones" if self.fused.multi_row == "mixed"
                      else "attention in larger ones")
            parts.append(f"Triton decode kernels (whole steps of <= {self.fused.max_kernel_rows} rows, "
                         f"{larger}{pdl})")
            if self.fused.head_fp8 is not None:
                parts.append("e4m3 (fp8) vocabulary head")
            if self.fused.mlp_rows:
                parts.append(f"the gated MLP as one kernel in steps of <= {self.fused.mlp_rows} rows")
        elif self.fused is not None and self.fused.kernel_error:
            parts.append(f"no Triton kernels ({self.fused.kernel_error})")
        if self.fused is not None and self.fused.nf4 and not self.fused.kernels:
            parts.append("NF4 weights dequantized one layer at a time")
        if self.compiled:
            parts.append("compiled")
        elif self.compile_error:
            parts.append(f"not compiled ({self.compile_error})")
        parts.append("CUDA graphs (one per round)" if self.graphs else "eager")
        return ", ".join(parts)

    pool_len = staticmethod(pool_len)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        if not self.fixed_shapes:
            return self._stacked(KVCache(batch_size, max_len, self.device))
        # fixed shapes: pooled sizes, and (for captured rounds) the same buffers every batch
        max_len = pool_len(max_len)
        key = (batch_size, max_len)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = self._stacked(KVCache(batch_size, max_len, self.device))
        cache.positions.zero_()
        return cache

    def _stacked(self, cache: KVCache) -> KVCache:
        """The fused layers' caches hold every layer in one keys and one values tensor (their layers
        share one shape), so a token tree's sibling moves to its slot in a few kernels."""
        if self.fused is not None:
            sh = self.fused.shape
            cache.stack(len(self.fused.weights), sh.n_kv, sh.head_dim, self.fused.dtype)
        return cache

    def forward(self, input_ids: Tensor, cache: KVCache, attend_len: int, logits_to_keep: Tensor | int = 0,
                sibling: Tensor | None = None) -> Tensor:
        """One decode step (see ModelStep.forward, `sibling` too). With fixed shapes it attends over
        the whole cache, so one compiled function serves every round."""
        if self.fixed_shapes:
            attend_len = cache.max_len
        return self._guarded_step(input_ids, cache, attend_len, logits_to_keep, sibling)

    def argmax(self, logits: Tensor, exclude: Tensor | None = None) -> Tensor:
        """The greedy pick (ModelStep.argmax, `exclude` too): one kernel of many programs a row in
        captured steps (accel/glue.py's argmax; torch's reduction reads a 152k-id row with few)."""
        if self._picks_on_kernel and logits.is_cuda:
            return _glue.argmax(logits, exclude)
        return ModelStep.argmax(self, logits, exclude)

    def prefill(self, input_ids: Tensor, cache: KVCache, attend_len: int, logits_to_keep: Tensor | int = 1) -> Tensor:
        """A variable-length forward (prompts). With the fused path it runs the fused layers (sdpa);
        otherwise the transformers modules. With graphs, prompts are right-padded to a bucket
        (`prefill_len`) and each (batch, bucket) is captured once, its fused layer compiled for that
        shape (with `compile`): an eager prefill is hundreds of launches, and a new prompt length
        would allocate memory on the clock. The padding's cache writes land past each row's length,
        where nothing reads them. Without graphs nothing here is compiled (one compile per prompt
        length would cost more than it saves)."""
        if not self.graphs:
            return self._eager_prefill(input_ids, cache, attend_len, logits_to_keep)
        B, L = input_ids.shape
        span = min(self.prefill_len(L), cache.max_len)
        keep_rows = isinstance(logits_to_keep, Tensor)
        key = (id(cache), B, span, logits_to_keep if not keep_rows else tuple(logits_to_keep.shape))
        entry = self._prefills.get(key)
        if entry is None:
            from .rounds import capture  # noqa: PLC0415 (rounds imports this module)

            ids = torch.zeros((B, span), dtype=torch.long, device=self.device)
            keep = logits_to_keep.clone() if keep_rows else logits_to_keep
            if keep_rows:
                keep.zero_()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph, out = capture(lambda: self._eager_prefill(ids, cache, span, keep), [cache.positions], pool=self._pool)
            entry = self._prefills[key] = (graph, ids, keep, out)
        graph, ids, keep, out = entry
        ids.zero_()
        ids[:, :L].copy_(input_ids)
        if keep_rows:
            keep.copy_(logits_to_keep)
        graph.replay()
        return out

    @staticmethod
    def prefill_len(length: int) -> int:
        """The bucket a prompt of `length` tokens is padded to under graphs: a power of two, at least 32."""
        return max(32, 1 << (length - 1).bit_length())

    def _eager_prefill(self, input_ids: Tensor, cache: KVCache, attend_len: int,
                       logits_to_keep: Tensor | int) -> Tensor:
        if self.fused is not None:  # compiled where its prefills are captured (bucketed shapes)
            return self._guarded(lambda: self._fused_step(input_ids, cache, attend_len, logits_to_keep, eager=True))
        return ModelStep.prefill(self, input_ids, cache, attend_len, logits_to_keep)

    def _guarded_step(self, *args) -> Tensor:
        return self._guarded(lambda: self._step(*args))  # self._step changes when the runner falls back

    def _guarded(self, call: Callable[[], Tensor]) -> Tensor:
        """`call()` (a decode step or a prefill); if torch.compile fails to build it (no working
        Triton, an unsupported GPU or compiler), the runner falls back to uncompiled functions once,
        says so, and calls again; a kernel failure falls back to the compiled layers likewise."""
        try:
            return call()
        except KernelFailure as e:
            self.fused.disable_kernels(e.__cause__ or e)
            log.warning("the Triton decode kernels could not run here (%s); using the compiled layers "
                        "instead", self.fused.kernel_error)
            return self._guarded(call)  # now without kernels (and torch.compile still guarded)
        except torch._dynamo.exc.TorchDynamoException as e:
            if not self.compiled:
                raise
            self.uncompile(e)
            return call()

    def uncompile(self, error: BaseException | None = None) -> None:
        """Run decode steps uncompiled from now on."""
        self.compiled = False
        if self.fused is not None:
            self.fused.uncompile()
            self._step = self._fused_step
        else:
            self._step = self._transformers_step
        if error is not None:
            # the backend's own exception says what went wrong; dynamo's wrapper only that it did
            cause = getattr(error, "inner_exception", None) or error.__cause__ or error
            text = str(cause).strip().splitlines()
            self.compile_error = f"{type(cause).__name__}: {text[0] if text else ''}"[:300]
            log.warning("torch.compile could not build the decode step (%s); running it uncompiled "
                        "(--no-compile avoids the attempt)", self.compile_error)

    def _transformers_step(self, input_ids: Tensor, cache: KVCache, attend_len: int,
                           logits_to_keep: Tensor | int = 0, sibling: Tensor | None = None) -> Tensor:
        return ModelStep.forward(self, input_ids, cache, attend_len, logits_to_keep, sibling)

    def _fused_step(self, input_ids: Tensor, cache: KVCache, attend_len: int,
                     logits_to_keep: Tensor | int = 0, sibling: Tensor | None = None, eager: bool = False) -> Tensor:
        slots = cache.prepare(input_ids.shape[1], attend_len, sibling)  # [B, q]
        if not eager and self.fused.on_kernels(input_ids.numel()):
            masks = {}  # the kernels mask from the positions themselves (and cache.sibling)
        else:
            masks = self.masks(slots, attend_len, boolean=True,
                               rope=cache.rope_positions(slots) if sibling is not None else None)
        return self.fused.forward(input_ids, cache, slots, masks, attend_len, logits_to_keep, eager=eager)
