"""The model step of the reference tier: one forward of a causal LM over the engine's KVCache.

`ModelStep` runs the transformers modules unchanged. It computes each step's position ids
from the cache's per-row lengths (on the device), builds the explicit attention mask that
encodes causality and, for sliding-window layers, the window (transformers' convention: a
query at position i sees keys at positions > i - window), and passes the cache in. No host
synchronisation happens inside a step.

This is the `Step` seam the engine and the drafters drive: `new_cache`, `prefill` (a
variable-length forward over prompts) and `forward` (a decode step of q tokens per row).
The accelerated tier (accel/runner.py) implements the same three methods with fused
layers, torch.compile and Triton kernels.

What it does not: compile, capture graphs, fuse layers, or advance the cache (the caller
decides how many of the q tokens stay).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from .cache import KVCache

__all__ = ["AttentionLayout", "ModelStep", "UnsupportedModelError", "attention_layout"]


class UnsupportedModelError(RuntimeError):
    """The model's attention cannot be driven by this cache."""


@dataclass(frozen=True)
class AttentionLayout:
    kinds: tuple[str, ...]  # layer type per layer ("full_attention" / "sliding_attention")
    sliding_window: int | None
    as_dict: bool  # the model takes {layer_type: mask}
    additive: bool  # eager attention adds the mask; sdpa takes a boolean one


def attention_layout(model) -> AttentionLayout:
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
    return AttentionLayout(kinds, window if "sliding_attention" in kinds else None, as_dict, impl == "eager")


class ModelStep:
    """One causal-LM forward over a KVCache through the transformers modules."""

    def __init__(self, model) -> None:
        self.model = model
        self.layout = attention_layout(model)
        params = inspect.signature(model.forward).parameters
        # transformers 5.2x renamed past_key_values -> cache
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in params
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device

    def describe(self) -> str:
        return "transformers modules, eager"

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(batch_size, max_len, self.device)

    def masks(self, step_pos: Tensor, attend_len: int, boolean: bool = False, rope: Tensor | None = None):
        """Attention masks for queries at slots step_pos [B, q] over the first attend_len slots.
        `rope` [B, q]: their rotary positions where the last query is a token tree's sibling
        (KVCache.rope_positions): it sees the slots before its twin's position and its own slot."""
        slots = torch.arange(attend_len, device=step_pos.device)  # [S]
        qpos = step_pos[:, None, :, None]  # [B, 1, q, 1]
        causal = slots <= qpos  # [B, 1, q, S]
        rpos = qpos if rope is None else rope[:, None, :, None]  # the queries' positions
        if rope is not None:
            sees = (slots < rope[:, -1:]) | (slots == step_pos[:, -1:])  # [B, S]
            causal = torch.cat([causal[:, :, :-1], sees[:, None, None, :]], dim=2)
        masks = {"full_attention": causal}
        if self.layout.sliding_window is not None:
            # transformers' convention: a query at position i sees keys at positions > i - window
            masks["sliding_attention"] = causal & (slots > rpos - self.layout.sliding_window)
        if boolean:
            return masks
        if self.layout.additive:
            neg = torch.finfo(self.dtype).min
            masks = {name: torch.zeros((), dtype=self.dtype, device=m.device).masked_fill(~m, neg) for name, m in masks.items()}
        if self.layout.as_dict:
            return masks
        return masks[self.layout.kinds[0]]

    def argmax(self, logits: Tensor, exclude: Tensor | None = None) -> Tensor:
        """The greedy pick over logits [..., V] (int64 [...]); accelerated runners may run it as
        their own kernel (accel/runner.py). `exclude` [...]: each row's id that counts as -inf (its
        second choice, given its first)."""
        if exclude is not None:
            logits = logits.scatter(-1, exclude[..., None], float("-inf"))
        return logits.argmax(dim=-1)

    def forward(self, input_ids: Tensor, cache: KVCache, attend_len: int, logits_to_keep: Tensor | int = 0,
                sibling: Tensor | None = None) -> Tensor:
        """One forward of input_ids [B, q] at each row's cache position; returns logits [B, q', V].
        `sibling` [B]: the last token is a sibling of the step's token sibling[b] (a token tree of
        one sibling: same position, its own slot, it sees what its twin sees but not the twin).

        The cache's positions are NOT advanced: the caller decides how many of the q tokens stay."""
        q = input_ids.shape[1]
        slots = cache.prepare(q, attend_len, sibling)  # [B, q]
        position_ids = cache.rope_positions(slots)
        mask = self.masks(slots, attend_len, rope=position_ids if sibling is not None else None)
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

    def prefill(self, input_ids: Tensor, cache: KVCache, attend_len: int, logits_to_keep: Tensor | int = 1) -> Tensor:
        """A variable-length forward over right-padded prompts. `logits_to_keep` may also be a
        [B, n] tensor: n positions per row (each row's last prompt token)."""
        if isinstance(logits_to_keep, Tensor) and logits_to_keep.dim() == 2:
            logits = self.forward(input_ids, cache, attend_len, 0)  # [B, L, V]
            return logits.gather(1, logits_to_keep[..., None].expand(-1, -1, logits.shape[-1]))
        return self.forward(input_ids, cache, attend_len, logits_to_keep)
