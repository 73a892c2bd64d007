"""A small causal LM as the drafter (the classic draft/target pair).

Runs the draft model autoregressively k steps per round over its own KVCache. The first
step of a round feeds two tokens, [prev, last], at positions [P-1, P]: `prev` is already
in the cache unless the previous round accepted all k proposals (then the draft never saw
its own k-th token), and rewriting a slot with the same token is harmless. This keeps
every step a fixed shape ([B, 2] once, then [B, 1]) with no host-side branching, and the
draft cache needs no rollback of its own: the target's position P defines it.

What it does not: verify, or know whether the draft is a good match for the target.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..decoding.cache import KVCache, ModelRunner
from ..decoding.sampling import logits_to_probs, sample
from ..models.loading import LoadedModel
from .base import Draft, DraftState, align_vocab

__all__ = ["ModelDrafter"]


class ModelDrafter:
    name = "model"

    def __init__(self, draft: LoadedModel, runner: ModelRunner | None = None, stop_below: float | None = None) -> None:
        """`stop_below`: stop a row's drafting after a token the draft gave less than this probability
        (adaptive draft length, `--k auto`). Drafting ends early once every row has stopped; that
        check is one host synchronisation per draft step, so it is off (None) for fixed k."""
        self.draft = draft
        self.runner = runner if runner is not None else ModelRunner(draft.model)
        self.cache: KVCache | None = None
        self.stop_below = stop_below

    def prefill(self, input_ids: Tensor, lengths: Tensor, max_len: int) -> None:
        b, length = input_ids.shape
        self.cache = self.runner.new_cache(b, max_len)
        # logits are not needed: the first proposal comes after the target's first token
        self.runner.prefill(input_ids, self.cache, attend_len=length)
        self.cache.set_positions(lengths)

    def _next(self, logits: Tensor, state: DraftState) -> tuple[Tensor, Tensor | None]:
        """logits: [B, V] already aligned to the target's rows."""
        if state.sampling.greedy:
            return logits.argmax(dim=-1), None
        q = logits_to_probs(logits, state.sampling)  # [B, V] float32
        return sample(q, state.generator), q

    @torch.inference_mode()
    def propose(self, state: DraftState, k: int) -> Draft:
        assert self.cache is not None, "prefill() first"
        cache = self.cache
        # 1. rewind to the slot of `prev`: everything before it is already verified context
        cache.set_positions(state.positions - 1)
        tokens: list[Tensor] = []
        probs: list[Tensor] = []
        step_in = torch.stack([state.prev, state.last], dim=1)  # [B, 2]
        bsz = step_in.shape[0]
        num_proposed = torch.full((bsz,), k, dtype=torch.long, device=step_in.device)
        stopped = torch.zeros(bsz, dtype=torch.bool, device=step_in.device)
        for j in range(k):
            logits = self.runner.forward(step_in, cache, state.attend_len, logits_to_keep=1)[:, -1]  # [B, V_d]
            logits = align_vocab(logits, state.target_rows)  # [B, V]
            cache.advance(step_in.shape[1])
            tok, q = self._next(logits, state)
            tokens.append(tok)
            if q is not None:
                probs.append(q)
            step_in = tok[:, None]  # [B, 1]
            if self.stop_below is not None and j < k - 1:
                # the draft's own confidence in the token it just proposed (greedy: its top probability)
                if q is not None:
                    conf = q.gather(1, tok[:, None]).squeeze(1)  # [B]
                else:  # greedy: p(argmax) = exp(max - logsumexp)
                    lf = logits.float()
                    conf = (lf.max(-1).values - lf.logsumexp(-1)).exp()  # [B]
                low = (conf < self.stop_below) & ~stopped
                num_proposed = torch.where(low, j + 1, num_proposed)
                stopped |= low
                if bool(stopped.all()):  # host sync: every row is done drafting
                    break
        return Draft(
            tokens=torch.stack(tokens, dim=1),  # [B, k'] (k' <= k)
            probs=torch.stack(probs, dim=1) if probs else None,  # [B, k', V]
            num_proposed=num_proposed.clamp(max=len(tokens)) if self.stop_below is not None else None,
        )

    def observe(self, num_accepted: Tensor) -> None:
        """Nothing to roll back: the next propose() rewinds to the target's position."""

    def select_rows(self, rows: Tensor) -> None:
        if self.cache is not None:
            self.cache.select_rows(rows)
