"""A small causal LM as the drafter (the classic draft/target pair).

Runs the draft model autoregressively k steps per round over its own KVCache; the draft
cache needs no rollback of its own: the target's position P defines it. The first step of
a round feeds `last` at position P, and `prev` (position P-1) with it only when the draft
has not seen `prev` (`DraftState.feed_prev`: the previous round accepted every token some
row drafted, so the draft never fed its last proposal). Rewriting a slot with the same
token is harmless, so one such row makes it [prev, last] for the whole batch. Steps
therefore have two fixed shapes, [B, 1] and [B, 2]; the engine decides which from the
previous round's counts, which it has read anyway, so the choice costs no synchronisation.

`propose` is device work only (no host reads, no branches on tensor values), so it runs
inside the round and can be captured with it as one device program. `--k auto`'s
confidence stop (`stop_below`) ends a row's proposal on the device by masking
(`num_proposed`). An uncaptured round (`DraftState.may_sync`) also stops stepping once every
row has stopped, a host check that is cheap on a CPU; a captured one does so on the device
when it is given `conditional` (accel/rounds.py's `device_if`): draft steps 2..k each run
inside a CUDA graph IF node on "some row still drafts", so a round whose draft lost
confidence skips its remaining steps' kernels instead of running them to be masked. Its
tokens land in a buffer filled with `last` first, so a skipped step's slot still holds a
valid id (masked: past `num_proposed`).

What it does not: verify, or know whether the draft is a good match for the target.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch import Tensor

from ..decoding.drafting import Draft, DraftState, align_vocab
from ..decoding.sampling import logits_to_probs, sample
from ..models.loading import LoadedModel

__all__ = ["ModelDrafter"]

# The confidence stop's threshold on the device, one per draft runner. A captured round graph is
# bound to the drafter's runner and its pooled cache, not to the drafter object (accel/rounds.py
# reuses it for every drafter built on that runner: bench's passes, compare's settings), so the
# tensor the graph reads lives with the runner too; each drafter writes its own threshold into it
# when it starts a batch (prefill).
_THRESHOLDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _confidence(logits: Tensor, tok: Tensor, q: Tensor | None) -> Tensor:
    """[B]: the draft's own probability of the token it just proposed (greedy: its top one,
    exp(max - logsumexp) of the logits; sampling: q at the token)."""
    if q is not None:
        return q.gather(1, tok[:, None]).squeeze(1)
    lf = logits.float()
    return (lf.max(-1).values - lf.logsumexp(-1)).exp()


class ModelDrafter:
    name = "model"
    on_device = True

    def __init__(self, draft: LoadedModel, runner=None, stop_below: float | None = None,
                 conditional=None) -> None:
        """`runner`: the step that runs the draft model (decoding.step.ModelStep or an accelerated
        runner); a plain ModelStep when None. `stop_below`: stop a row's proposal after a token the
        draft gave less than this probability (adaptive draft length, `--k auto`). `conditional`:
        `conditional(pred, body)` runs body where the 0-d bool tensor pred holds, decided on the
        device (accel/rounds.py's device_if); with stop_below, a captured round's draft steps
        after the first run that way, so a round stops stepping once every row has stopped."""
        if runner is None:
            from ..decoding.step import ModelStep

            runner = ModelStep(draft.model)
        self.draft = draft
        self.runner = runner
        self.cache = None
        self.stop_below = stop_below
        self.conditional = conditional

    def _threshold(self, device: torch.device) -> Tensor:
        """The 0-d tensor the device confidence stop compares against: the runner's (see
        _THRESHOLDS), made holding stop_below."""
        t = _THRESHOLDS.get(self.runner)
        if t is None or t.device != torch.device(device):
            with torch.inference_mode():
                t = _THRESHOLDS[self.runner] = torch.full((), float(self.stop_below), dtype=torch.float32,
                                                          device=device)
        return t

    @contextmanager
    def _pinned(self, threshold: float):
        """Within: the device confidence stop compares against `threshold` instead of stop_below."""
        t = _THRESHOLDS.get(self.runner)
        if t is None or self.stop_below is None:
            yield
            return
        with torch.inference_mode():  # made inside propose's inference mode
            t.fill_(threshold)
        try:
            yield
        finally:
            with torch.inference_mode():
                t.fill_(float(self.stop_below))

    def full_rounds(self):
        """Within: the device confidence stop never fires, so a captured round runs all its draft
        steps (CapturedRounds times each round graph so, for `--k auto`'s costs)."""
        return self._pinned(0.0)

    def shortest_rounds(self):
        """Within: the device confidence stop fires after every first token (no probability
        reaches 2), so a captured round runs one draft step and skips the rest: what each
        skipped step saves (CapturedRounds times it, for `--k auto`'s pricing of the stop)."""
        return self._pinned(2.0)

    @property
    def device_stop(self) -> bool:
        """Whether captured rounds decide the confidence stop on the device (skipping steps)."""
        return self.stop_below is not None and self.conditional is not None

    def prefill(self, input_ids: Tensor, lengths: Tensor, max_len: int) -> None:
        b, length = input_ids.shape
        self.cache = self.runner.new_cache(b, max_len)
        # logits are not needed: the first proposal comes after the target's first token
        self.runner.prefill(input_ids, self.cache, attend_len=length)
        self.cache.set_positions(lengths)
        if self.device_stop and self.runner in _THRESHOLDS:  # this drafter's threshold, where graphs read it
            with torch.inference_mode():
                self._threshold(input_ids.device).fill_(float(self.stop_below))

    def _next(self, logits: Tensor, state: DraftState, j: int) -> tuple[Tensor, Tensor | None]:
        """logits: [B, V] already aligned to the target's rows."""
        if state.sampling.greedy:
            return self.runner.argmax(logits), None
        q = logits_to_probs(logits, state.sampling)  # [B, V] float32
        race = state.race[:, j] if state.race is not None else None
        return sample(q, state.generator, race=race), q

    @torch.inference_mode()
    def propose(self, state: DraftState, k: int) -> Draft:
        assert self.cache is not None, "prefill() first"
        cache = self.cache
        # 1. rewind to the slot of `last` (of `prev` when the draft has not seen it): everything
        #    before it is verified context the draft cache holds
        if state.feed_prev:
            cache.set_positions(state.positions - 1)
            step_in = torch.stack([state.prev, state.last], dim=1)  # [B, 2]
        else:
            cache.set_positions(state.positions)
            step_in = state.last[:, None]  # [B, 1]
        return self._steps(step_in, state, k)

    @torch.inference_mode()
    def propose_from(self, tokens: Tensor, positions: Tensor, state: DraftState, k: int) -> Draft:
        """k tokens per row continuing from `tokens` [B] at `positions` [B], everything before which
        the draft cache holds (an overlapped round drafts on from its unverified proposal, or from
        `last`: decoding/round.py's run_overlapped_round). Device work only, like `propose`."""
        assert self.cache is not None, "prefill() first"
        self.cache.set_positions(positions)
        return self._steps(tokens[:, None], state, k)

    def _step(self, inputs: Tensor, state: DraftState, j: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Draft step j over `inputs` [B, q] at the cache's positions: (its logits [B, V] over the
        target's rows, its token [B], q [B, V] or None when greedy); the cache advances past them."""
        logits = self.runner.forward(inputs, self.cache, state.attend_len, logits_to_keep=1)[:, -1]  # [B, V_d]
        logits = align_vocab(logits, state.target_rows)  # [B, V]
        self.cache.advance(inputs.shape[1])
        tok, q = self._next(logits, state, j)
        return logits, tok, q

    def _second(self, logits: Tensor, tok: Tensor) -> Tensor:
        """[B]: the draft's second choice, its greedy pick with `tok` taken out (a token tree's sibling)."""
        return self.runner.argmax(logits, exclude=tok)

    @staticmethod
    def _mark_stops(logits: Tensor, tok: Tensor, q: Tensor | None, j: int, threshold,
                    num_proposed: Tensor, stopped: Tensor) -> None:
        """The confidence stop after draft step j: rows not yet stopped whose token the draft gave
        less than `threshold` propose j + 1 tokens and stop (num_proposed, stopped in place)."""
        low = (_confidence(logits, tok, q) < threshold) & ~stopped
        num_proposed.copy_(torch.where(low, j + 1, num_proposed))
        stopped.logical_or_(low)

    def _steps(self, step_in: Tensor, state: DraftState, k: int) -> Draft:
        """k draft steps from step_in [B, q] at the cache's positions."""
        if self.device_stop and not state.may_sync and k > 1:
            return self._conditional_steps(step_in, state, k)
        tokens: list[Tensor] = []
        probs: list[Tensor] = []
        seconds: list[Tensor] = []
        bsz = step_in.shape[0]
        num_proposed = torch.full((bsz,), k, dtype=torch.long, device=step_in.device)
        stopped = torch.zeros(bsz, dtype=torch.bool, device=step_in.device)
        for j in range(k):
            logits, tok, q = self._step(step_in, state, j)
            tokens.append(tok)
            if q is not None:
                probs.append(q)
            if state.second:
                seconds.append(self._second(logits, tok))
            step_in = tok[:, None]  # [B, 1]
            if self.stop_below is not None and j < k - 1:
                self._mark_stops(logits, tok, q, j, self.stop_below, num_proposed, stopped)
                if state.may_sync and bool(stopped.all()):  # host sync (uncaptured only): all rows stopped
                    break
        return Draft(
            tokens=torch.stack(tokens, dim=1),  # [B, k'] (k' <= k)
            probs=torch.stack(probs, dim=1) if probs else None,  # [B, k', V]
            num_proposed=num_proposed.clamp(max=len(tokens)) if self.stop_below is not None else None,
            second=torch.stack(seconds, dim=1) if seconds else None,  # [B, k']
        )

    def _conditional_steps(self, step_in: Tensor, state: DraftState, k: int) -> Draft:
        """_steps with the confidence stop decided on the device: step j > 0 runs in
        `self.conditional` on "some row has not stopped", so once every row has, the round's
        remaining steps are skipped. Each step writes its token (and q) into buffers made before
        the first step, `last` (zeros) in every slot, so the Draft is the same whether a skipped
        step runs or not: its slots lie past every row's num_proposed."""
        bsz, device = step_in.shape[0], step_in.device
        threshold = self._threshold(device)
        tokens = state.last[:, None].expand(bsz, k).clone()  # [B, k]: valid ids in every slot
        probs = None if state.sampling.greedy else torch.zeros((bsz, k, state.target_rows), dtype=torch.float32,
                                                                device=device)
        seconds = tokens.clone() if state.second else None
        num_proposed = torch.full((bsz,), k, dtype=torch.long, device=device)
        stopped = torch.zeros(bsz, dtype=torch.bool, device=device)
        going = torch.ones((), dtype=torch.bool, device=device)  # some row still drafts

        def step(j: int) -> None:
            logits, tok, q = self._step(step_in if j == 0 else tokens[:, j - 1 : j].contiguous(), state, j)
            tokens[:, j].copy_(tok)
            if q is not None:
                probs[:, j].copy_(q)
            if seconds is not None:
                seconds[:, j].copy_(self._second(logits, tok))
            if j < k - 1:
                self._mark_stops(logits, tok, q, j, threshold, num_proposed, stopped)
                going.copy_(~stopped.all())

        step(0)
        for j in range(1, k):
            self.conditional(going, lambda j=j: step(j))
        return Draft(tokens=tokens, probs=probs, num_proposed=num_proposed, second=seconds)

    def drop_device_stop(self) -> None:
        """Draft every step from now on, the confidence stop off (where captured rounds cannot branch)."""
        self.conditional = None
        self.stop_below = None

    def observe(self, num_accepted: Tensor) -> None:
        """Nothing to roll back: the next propose() rewinds to the target's position."""

    def select_rows(self, rows: Tensor) -> None:
        if self.cache is not None:
            self.cache.select_rows(rows)
