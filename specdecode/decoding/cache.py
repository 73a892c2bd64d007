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
mask (or a dict of them keyed by layer type) runs unmodified (step.py drives it). It does
not support multi-latent attention, chunked attention or encoder-decoder models.

What it does not: run a model, build masks, or know about graphs and compilation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["KVCache"]


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
        self._offset_cache: dict[int, Tensor] = {}
        self._stack: tuple[Tensor, Tensor] | None = None  # every layer's keys / values in one tensor
        # set by `prepare` for a verify whose last token is a sibling (a token tree): [B] the count of
        # the step's tokens before it that it follows (its parent's index + 1), else None
        self.sibling: Tensor | None = None

    def layer(self, i: int, heads: int, key_dim: int, value_dim: int, dtype: torch.dtype,
              device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Layer i's key and value buffers [B, heads, max_len, dim], allocated on first use (the
        transformers modules and the fused layers both get their buffers here), on `device` (the
        layer's own, for a model split across GPUs by a device map; default: the cache's)."""
        k = self.keys.get(i)
        if k is None:
            device = self.device if device is None else device
            k = self.keys[i] = torch.zeros(self.batch_size, heads, self.max_len, key_dim, dtype=dtype, device=device)
            self.values[i] = torch.zeros(self.batch_size, heads, self.max_len, value_dim, dtype=dtype,
                                         device=device)
        return k, self.values[i]

    def stack(self, layers: int, heads: int, dim: int, dtype: torch.dtype) -> None:
        """Allocate every layer's buffers now as views of one keys and one values tensor
        [layers, B, heads, max_len, dim] (each view is laid out as a layer's own buffer), so that
        `move_slots` moves a slot of every layer in a few kernels. For models whose layers share one
        shape (the fused layers); others allocate per layer on first use."""
        if self.keys:
            raise RuntimeError("stack() must come before the first layer is allocated")
        shape = (layers, self.batch_size, heads, self.max_len, dim)
        ks = torch.zeros(shape, dtype=dtype, device=self.device)
        vs = torch.zeros(shape, dtype=dtype, device=self.device)
        self._stack = (ks, vs)
        for i in range(layers):
            self.keys[i], self.values[i] = ks[i], vs[i]

    def move_slots(self, src: Tensor, dst: Tensor) -> None:
        """Copy slot src[b] to slot dst[b] in row b of every layer (keys and values); src, dst [B]
        int64 on the device, no host synchronisation (a row that keeps its slot passes dst = src).
        A token verified at a scratch slot (a token tree's sibling) moves to its position so."""
        rows = self._offsets(self.batch_size)  # arange(B), made once
        if self._stack is not None:
            for buf in self._stack:  # [L, B, H, S, D]: the advanced indices move to the front
                buf[:, rows, :, dst] = buf[:, rows, :, src]
            return
        for i in self.keys:
            for buf in (self.keys[i], self.values[i]):
                buf[rows, :, dst] = buf[rows, :, src]

    # ---- transformers' cache protocol ---------------------------------------------------
    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        """Write this step's keys/values at each row's positions; return the visible buffers."""
        # head counts from the states themselves: under tensor parallelism, this rank's heads
        k_buf, v_buf = self.layer(layer_idx, key_states.shape[1], key_states.shape[-1], value_states.shape[-1],
                                  key_states.dtype, key_states.device)
        pos = self._step_positions  # [B, q]
        assert pos is not None, "KVCache.prepare() must run before a forward"
        if pos.device != k_buf.device:  # a layer on another GPU (device map): no host sync
            pos = pos.to(k_buf.device, non_blocking=True)
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
    def prepare(self, q: int, attend_len: int, sibling: Tensor | None = None) -> Tensor:
        """Set up a forward of q tokens per row; returns their slots [B, q] (slot == position, but
        for a sibling). `sibling` [B]: the step's last token is a sibling of token sibling[b]: it
        follows the step's tokens before that one (see `rope_positions` and step.py's masks)."""
        if attend_len > self.max_len:
            raise ValueError(f"attend_len {attend_len} exceeds the cache size {self.max_len}")
        self._attend_len = attend_len
        self.sibling = sibling
        if q == 1:
            # a view, no kernel (a captured round runs a dozen such steps): valid for this forward,
            # which reads it before anything advances the lengths
            self._step_positions = self.positions[:, None]
        else:
            self._step_positions = self.positions[:, None] + self._offsets(q)  # [B, q]
        return self._step_positions

    def rope_positions(self, slots: Tensor) -> Tensor:
        """The rotary positions of a step's tokens at `slots` [B, q]: the slots, but a sibling (the
        last token, see `prepare`) sits at its twin's position, slots[b, 0] + sibling[b], while it is
        written at its own slot (the last one)."""
        if self.sibling is None:
            return slots
        return torch.cat([slots[:, :-1], (slots[:, 0] + self.sibling)[:, None]], dim=1)

    def _offsets(self, q: int) -> Tensor:
        """arange(q) on the cache's device, made once per q (outside a graph capture: a tensor made
        during one would live in the graph's memory)."""
        found = self._offset_cache.get(q)
        if found is None:
            found = torch.arange(q, device=self.device)
            capturing = self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
            if not capturing:
                self._offset_cache[q] = found
        return found

    def advance(self, n: Tensor) -> None:
        """positions += n ([B]). Rolling back a round is advancing by fewer than were written."""
        self.positions += n

    def set_positions(self, positions: Tensor) -> None:
        self.positions.copy_(positions)

    def select_rows(self, rows: Tensor) -> None:
        """Keep only the given rows (batch compaction when rows finish). Copies the buffers once."""
        if self._stack is not None:
            self._stack = tuple(buf.index_select(1, rows) for buf in self._stack)
            for i in list(self.keys):
                self.keys[i], self.values[i] = self._stack[0][i], self._stack[1][i]
        else:
            for i in list(self.keys):
                self.keys[i] = self.keys[i].index_select(0, rows)
                self.values[i] = self.values[i].index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)
        self.batch_size = int(rows.numel())


