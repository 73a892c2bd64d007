"""A small causal LM as the drafter (the classic draft/target pair).

Runs the draft model autoregressively k steps per round over its own KVCache; the draft
cache needs no rollback of its own: the target's position P defines it. The first step of
a round feeds `last` at position P, and `prev` (position P-1) with it only when the draft
has not seen `prev`: after a round in which a row accepted every draft step's token (the
draft never fed its own last proposal). Rewriting a slot with the same token is harmless,
so one such row makes it [prev, last] for the whole batch. Steps therefore have two fixed
shapes, [B, 1] and (after fully accepted rounds) [B, 2]; which one is decided on the device
during the previous round and read on the host after the engine's synchronisation, so the
choice costs no synchronisation of its own. (On the GPU single-row steps run the fastest
kernels: benchmarks/results/2026-11-29-h200-kernels-notes.md.)

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
        self._prev_seen = False  # whether the draft cache holds every row's next `prev`
        self._seen_pending = False  # observe() decided it on the device; propose() reads it
        self._seen_host: Tensor | None = None  # where it lands (pinned memory on CUDA)
        self._seen_ready: torch.cuda.Event | None = None
        self._steps = 0  # draft steps run in the last round

    def prefill(self, input_ids: Tensor, lengths: Tensor, max_len: int) -> None:
        b, length = input_ids.shape
        self.cache = self.runner.new_cache(b, max_len)
        # logits are not needed: the first proposal comes after the target's first token
        self.runner.prefill(input_ids, self.cache, attend_len=length)
        self.cache.set_positions(lengths)
        self._prev_seen, self._seen_pending = True, False  # `prev`: each row's last prompt token

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
        if self._seen_pending:
            if self._seen_ready is not None:
                self._seen_ready.synchronize()  # done by now: the engine synchronised after verify
            self._prev_seen = bool(self._seen_host)
            self._seen_pending = False
        # 1. rewind to the slot of `last` (of `prev` when the draft has not seen it): everything
        #    before it is verified context the draft cache holds
        if self._prev_seen:
            cache.set_positions(state.positions)
            step_in = state.last[:, None]  # [B, 1]
        else:
            cache.set_positions(state.positions - 1)
            step_in = torch.stack([state.prev, state.last], dim=1)  # [B, 2]
        tokens: list[Tensor] = []
        probs: list[Tensor] = []
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
        # the draft fed last, d_1 .. d_{k'-1}: the next `prev` (d_a) is in its cache iff a < k'
        self._steps = len(tokens)
        self._prev_seen = False  # until observe() says otherwise
        return Draft(
            tokens=torch.stack(tokens, dim=1),  # [B, k'] (k' <= k)
            probs=torch.stack(probs, dim=1) if probs else None,  # [B, k', V]
            num_proposed=num_proposed.clamp(max=len(tokens)) if self.stop_below is not None else None,
        )

    def observe(self, num_accepted: Tensor) -> None:
        """Nothing to roll back: the next propose() rewinds to the target's position. Whether the
        draft has seen every row's next `prev` is computed on the device and copied to the host
        without waiting; the next propose() reads it."""
        seen = (num_accepted < self._steps).all()
        if seen.device.type == "cuda":
            if self._seen_host is None:
                self._seen_host = torch.empty((), dtype=torch.bool, pin_memory=True)
                self._seen_ready = torch.cuda.Event()
            self._seen_host.copy_(seen, non_blocking=True)
            self._seen_ready.record()
        else:
            self._seen_host, self._seen_ready = seen, None
        self._seen_pending = True

    def select_rows(self, rows: Tensor) -> None:
        if self.cache is not None:
            self.cache.select_rows(rows)
