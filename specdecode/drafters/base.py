"""The Drafter seam: what proposes draft tokens, and what it is told back.

A drafter proposes up to k tokens per row (`propose`) and hears how many the target kept
(`observe`). It never decides what is emitted: verification (decoding/verify.py) does.
`Draft.probs` is the draft's processed distribution q over the *target's* vocabulary rows
(so verification needs no knowledge of the draft's table), or None for a deterministic
proposal, which sampling treats as one-hot q.

What it does not: own the round loop, touch the target's cache, or choose k (an adaptive-k
policy object does, outside the drafter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..decoding.sampling import SamplingParams

__all__ = ["Draft", "DraftState", "Drafter", "align_vocab"]


@dataclass
class Draft:
    tokens: Tensor  # [B, k] int64; positions >= num_proposed are padding
    probs: Tensor | None = None  # [B, k, V_target] float32, q; None = deterministic (one-hot) or greedy
    num_proposed: Tensor | None = None  # [B] int64 <= k; None = k for every row


@dataclass
class DraftState:
    """What the engine tells a drafter at the start of a round (device tensors, no host copies)."""

    last: Tensor  # [B] the newest emitted token; not yet in either cache
    prev: Tensor  # [B] the token before it, at position positions - 1
    positions: Tensor  # [B] absolute position of `last` (= tokens in the target's cache)
    attend_len: int  # cache slots every row fits in this round (host int, bucketed)
    sampling: SamplingParams
    generator: torch.Generator | None
    target_rows: int  # V: the ids the target can emit
    histories: list[list[int]]  # per row: prompt + emitted ids (host side, for lookup drafters)


@runtime_checkable
class Drafter(Protocol):
    name: str

    def prefill(self, input_ids: Tensor, lengths: Tensor, max_len: int) -> None:
        """Start a batch: right-padded prompts [B, L] with true lengths [B]; caches hold max_len slots."""

    def propose(self, state: DraftState, k: int) -> Draft:
        """Propose up to k tokens per row."""

    def observe(self, num_accepted: Tensor) -> None:
        """How many of this round's proposals each row kept ([B], on device)."""

    def select_rows(self, rows: Tensor) -> None:
        """Keep only these rows of the batch (finished rows are dropped)."""


def align_vocab(logits: Tensor, target_rows: int) -> Tensor:
    """Draft logits [..., V_draft] -> [..., target_rows]: drop ids the target cannot emit, and give
    ids the draft has no row for -inf (probability 0), so the draft never proposes them."""
    v = logits.shape[-1]
    if v == target_rows:
        return logits
    if v > target_rows:
        return logits[..., :target_rows]
    pad = logits.new_full((*logits.shape[:-1], target_rows - v), float("-inf"))
    return torch.cat([logits, pad], dim=-1)
