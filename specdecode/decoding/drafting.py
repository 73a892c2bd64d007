"""The Drafter seam: what proposes draft tokens, and what it is told back.

A drafter proposes up to k tokens per row (`propose`) and hears how many the target kept
(`observe`). It never decides what is emitted: verification (verify.py) does.
`Draft.probs` is the draft's processed distribution q over the *target's* vocabulary rows
(so verification needs no knowledge of the draft's table), or None for a deterministic
proposal, which sampling treats as one-hot q.

Two kinds of drafter:

* on the device (`on_device = True`: a draft model, early exit): `propose` is pure device
  work — no host synchronisation, branches only on shapes and on the host values in
  `DraftState` — so it runs inside the round and the accelerated tier can capture the
  whole round (draft, verify, accept) as one device program;
* on the host (`on_device = False`: prompt lookup): `propose` reads the host-side
  histories; the engine calls it before the round and hands its tokens in.

A captured round graph is kept per drafter runner, not per drafter object (accel/rounds.py):
the drafters built on one runner (bench's passes, compare's settings) replay the same graph, so
an on-device drafter keeps the device state its round reads with its runner (the draft model's
pooled cache, its confidence threshold). One whose round reads tensors of its own instead sets
`capture_key` (any hashable naming them, e.g. its id while it stays alive) to get graphs of its own.

This module lives in decoding/ so that the engine and the drafters/ package both import it
and neither imports the other's package back.

What it does not: own the round loop, touch the target's cache, or choose k (an adaptive-k
policy object does, outside the drafter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .sampling import SamplingParams

__all__ = ["Draft", "DraftState", "Drafter", "align_vocab"]


@dataclass
class Draft:
    tokens: Tensor  # [B, k] int64; positions >= num_proposed are padding
    probs: Tensor | None = None  # [B, k, V_target] float32, q; None = deterministic (one-hot) or greedy
    num_proposed: Tensor | None = None  # [B] int64 <= k; None = k for every row
    # [B, k] int64: the drafter's second choice at each position (greedy, when DraftState.second
    # asks for it): the sibling a token tree verifies beside the last proposed token
    second: Tensor | None = None


@dataclass
class DraftState:
    """What the engine tells a drafter at the start of a round."""

    last: Tensor  # [B] the newest emitted token; not yet in either cache
    prev: Tensor  # [B] the token before it, at position positions - 1
    positions: Tensor  # [B] absolute position of `last` (= tokens in the target's cache)
    attend_len: int  # cache slots every row fits in this round (host int)
    sampling: SamplingParams
    target_rows: int  # V: the ids the target can emit
    # whether the drafter's own cache lacks `prev`: the previous round accepted every token some
    # row drafted (the draft never fed its last proposal). Decided on the host from the previous
    # round's counts, so it costs no synchronisation.
    feed_prev: bool = False
    race: Tensor | None = None  # [B, k, V] Exp(1) draws for sampling draft j (None: greedy)
    may_sync: bool = True  # False inside a captured round: no host synchronisation allowed
    generator: torch.Generator | None = None  # host drafters' own draws (none use it today)
    histories: list[list[int]] | None = None  # per row: prompt + emitted ids (host drafters)
    second: bool = False  # also return each position's second choice (Draft.second; greedy only)


@runtime_checkable
class Drafter(Protocol):
    name: str
    on_device: bool  # propose() is device work that may be captured inside the round

    def prefill(self, input_ids: Tensor, lengths: Tensor, max_len: int) -> None:
        """Start a batch: right-padded prompts [B, L] with true lengths [B]; caches hold max_len slots."""

    def propose(self, state: DraftState, k: int) -> Draft:
        """Propose up to k tokens per row."""

    def observe(self, num_accepted: Tensor) -> None:
        """How many of the last round's proposals each row kept ([B], on the host)."""

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
