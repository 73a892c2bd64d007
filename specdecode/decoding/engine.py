"""The round loop: prefill, then rounds of draft -> verify -> accept -> commit, one event per round and row.

Read it like gpt-fast's `speculative_decode`:

  1. prefill the target over the prompts; its prediction at each row's last prompt token
     is the first generated token (as in plain decoding); the drafter prefills its own cache
     (a captured draft model on CUDA on a side stream, concurrently: the first token does
     not wait for it)
  2. loop:
       a. choose k (fixed, or the adaptive policy) and whether the drafter must feed `prev`
       b. a host drafter (prompt lookup) proposes here, from the histories
       c. one round (round.py): draft, verify, accept, commit, all device work
       d. one host synchronisation: the round's counts and tokens come back
       e. bookkeeping: stops (EOS, max_new_tokens; nothing follows EOS), statistics, events
       f. finished rows leave the batch (uncaptured), or stay frozen (fixed shapes)

The target-only baseline is the same loop with k = 0: every round then emits exactly one
target token, so baseline and speculative timings share all overhead.

How rounds run is the `Rounds` seam: `EagerRounds` here calls `run_round` directly (the
reference); the accelerated tier captures it as one CUDA graph per shape. With fixed-shape
rounds (the target alone, or a drafter on the device), the loop launches round r+1 before
reading round r — every input of r+1 is already on the device — so the host's reading and
bookkeeping overlap the device's work instead of idling it. A row that ends in round r
wastes round r+1's work for it, nothing else: its events are dropped.

What it does not: tokenize, time, print, or load models. It yields `RoundEvent`s; callers
(api.py, the CLI, bench) render or time them. Nothing here imports rich.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .drafting import Drafter, DraftState
from .events import RoundEvent, RowStats, TokenKind
from .round import EagerRounds, RoundBuffers, RoundShape
from .sampling import SamplingParams, logits_to_probs, make_generator, sample
from .step import ModelStep

__all__ = ["EagerRounds", "EngineParams", "RoundEvent", "RowStats", "SpeculativeEngine", "make_generator"]


@dataclass(frozen=True)
class EngineParams:
    num_draft_tokens: int  # k; 0 = target alone
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    eos_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    attend_bucket: int = 64  # eager path: attend over the cache in buckets of this many slots
    min_cache_len: int = 0  # size caches for at least this many slots (a whole data set's longest)
    overlap: bool = False  # overlapped rounds: the draft drafts the next round during the verify (round.py)
    # greedy rounds of an on-device drafter verify its second choice at the last proposed position too
    # (a token tree of one sibling: round.py's RoundShape.sibling)
    sibling: bool = False


class SpeculativeEngine:
    def __init__(self, target, drafter: Drafter | None, params: EngineParams, k_policy=None,
                 generator: torch.Generator | None = None, runner=None, rounds=None) -> None:
        """`target`: the LoadedModel; `runner`: its Step (a plain ModelStep when None); `rounds`:
        how rounds run (EagerRounds over the runner when None); `k_policy`: adaptive k, an object
        with .k, .max_k and .update(accepted, proposed)."""
        self.target = target
        self.runner = runner if runner is not None else ModelStep(target.model)
        self.rounds = rounds if rounds is not None else EagerRounds(
            self.runner, fixed_shapes=getattr(self.runner, "fixed_shapes", False))
        self.drafter = drafter if drafter is not None and drafter.name != "none" else None
        self.params = params
        self.k_policy = k_policy if self.drafter is not None else None
        if self.drafter is None:
            self.params = EngineParams(**{**params.__dict__, "num_draft_tokens": 0, "overlap": False, "sibling": False})
        if self.params.overlap:
            if not hasattr(self.drafter, "propose_from"):
                raise ValueError("overlapped rounds need a draft model as the drafter")
            if self.k_policy is not None:
                raise ValueError("overlapped rounds need a fixed k: each round drafts the next one's proposal")
        if self.params.sibling and not (self.drafter is not None and self.drafter.on_device
                                        and self.params.sampling.greedy and not self.params.overlap):
            raise ValueError("a token tree's sibling needs greedy rounds of a draft model, not overlapped")
        self.device = target.device
        self.target_rows = target.vocab_rows
        self.stats: list[RowStats] = []
        # finished rows leave the batch (None: unless rounds have fixed shapes)
        self.compact_rows: bool | None = None
        # fixed shapes, target alone or an on-device drafter: launch each round before reading the last
        self.lookahead = True
        self.max_in_flight = 0  # most rounds launched and not yet read, in the last stream
        # where a captured draft model prefills, concurrently with the target (see _start)
        drafter_runner = getattr(self.drafter, "runner", None)
        self.drafting = (torch.cuda.Stream(self.device) if self.device.type == "cuda"
                         and getattr(drafter_runner, "graphs", False) else None)
        # one random stream for every batch of a call: batches must not repeat each other's draws
        self.generator = generator if generator is not None or params.sampling.greedy else \
            make_generator(self.device, params.seed)

    @property
    def max_k(self) -> int:
        return int(self.k_policy.max_k) if self.k_policy is not None else self.params.num_draft_tokens

    def _k(self) -> int:
        return int(self.k_policy.k) if self.k_policy is not None else self.params.num_draft_tokens

    def _bucket(self, need: int, max_len: int) -> int:
        b = self.params.attend_bucket
        return min(max_len, -(-need // b) * b)

    @staticmethod
    def cache_len(longest_prompt: int, max_new_tokens: int, max_k: int, overlap: bool = False) -> int:
        """Cache slots a batch needs: its longest prompt, every new token, and one round's overshoot
        (a verify's sibling one slot past its proposal; an overlapped round's draft writes k + 1
        positions past its proposal)."""
        return longest_prompt + max_new_tokens + (2 * max_k + 3 if overlap else max_k + 3)

    def shapes(self) -> list[RoundShape]:
        """Every round shape this engine can run (what a warm-up must capture or compile)."""
        if self.drafter is None:
            return [RoundShape(0, 0, False)]
        if self.params.overlap:
            return [RoundShape(self.max_k, self.max_k, False, overlap=True)]
        ks = range(1, self.max_k + 1) if self.k_policy is not None else [self.max_k]
        prev = (False, True) if self.drafter.on_device else (False,)
        return [RoundShape(k, self._width(k, fixed=self.rounds.fixed_shapes), p, sibling=self.params.sibling)
                for k in ks for p in prev]

    def _width(self, k: int, fixed: bool) -> int:
        """Draft positions a round of k draft steps verifies. Uncaptured, variable shapes: k. Fixed
        shapes: an on-device drafter's round of k is a shape of its own (a round graph, or a compile,
        per k), so it verifies its k; a host drafter's proposal is padded to max_k, one shape for
        every round whatever the host proposed."""
        if not fixed or (self.drafter is not None and self.drafter.on_device):
            return k
        return self.max_k

    # ---- the loop -----------------------------------------------------------------------
    @torch.inference_mode()
    def stream(self, prompts: Sequence[Sequence[int]]) -> Iterator[RoundEvent]:
        """Generate for a batch of tokenized prompts, yielding events as rounds complete."""
        if not prompts:
            return
        if any(len(p) == 0 for p in prompts):
            raise ValueError("a prompt is empty after tokenization")
        p = self.params
        bsz = len(prompts)
        eos = set(p.eos_token_ids)
        self.stats = [RowStats() for _ in range(bsz)]
        histories = [list(x) for x in prompts]
        generated = [0] * bsz

        # 1. prefill: target (its first token) and drafter (on a side stream where it can overlap)
        cache, bufs, max_len, first = self._start(prompts)
        positions = [len(x) for x in prompts]  # host copy: position of `last` per row
        active = list(range(bsz))  # batch slot -> prompt index
        finished: set[int] = set()
        first_host = first.tolist()  # waits for the target's prefill, not for the draft's
        self._join_draft()  # rounds read the draft's cache
        for b, tok in enumerate(first_host):
            generated[b] = 1
            histories[b].append(tok)
            self.stats[b].new_tokens = 1
            reason = "eos" if tok in eos else ("length" if p.max_new_tokens <= 1 else None)
            if reason:
                finished.add(b)
            yield RoundEvent(b, 0, (), (), tok, "first", 0, 0, reason is not None, reason)

        fixed = self.rounds.fixed_shapes
        compact = not fixed if self.compact_rows is None else self.compact_rows
        # look-ahead: launch round r+1 before reading round r when its inputs are all on the device
        # (fixed shapes; the target alone or an on-device drafter). The draft then always feeds
        # [prev, last] first: whether it has seen `prev` is only known after reading round r, and
        # rewriting a slot it holds is harmless.
        lookahead = self.lookahead and not compact and (self.drafter is None or self.drafter.on_device)
        feed_prev = lookahead and self.drafter is not None  # else: the draft prefilled the whole prompt
        overlap = p.overlap
        if overlap:
            feed_prev = False  # an overlapped round's draft branch holds everything before `last`
        pending: deque[tuple[int, int, int, Tensor]] = deque()  # (round, k, steps, result)
        costs_at = self._give_costs(-1, cache, bufs, feed_prev)  # captures when the policy last got costs
        timed = self.k_policy is not None and hasattr(self.k_policy, "observe_time")
        # when the last result was read, if the round after it was already queued, and the captures
        # by then (a round whose interval holds a capture says nothing about the time between rounds)
        read_at, read_captures = None, 0
        rnd = 0
        gone: set[int] = set()  # rows whose finishing the batch has already absorbed
        while True:
            if finished - gone:
                bufs, active, positions = self._retire(finished, gone, active, positions, cache, bufs, compact)
                if all(row in finished for row in active):
                    return
            # 2a-c. launch a round (two in flight with look-ahead)
            while not pending or (lookahead and len(pending) < 2
                                  and self._more(active, finished, generated, len(pending) * (self.max_k + 1))):
                rnd += 1
                k = self._k() if self.drafter is not None else 0
                width = self._width(k, fixed)
                if self.drafter is not None and not self.drafter.on_device:
                    draft = self.drafter.propose(self._host_state(bufs, cache, histories, active, k), k)
                    bufs.give(draft)
                    if not fixed:
                        k = width = draft.tokens.shape[1]  # uncaptured: verify only what was proposed
                ahead = len(pending) * (self.max_k + 1)  # positions the rounds in flight may add
                live = [pos + ahead for pos, row in zip(positions, active) if row not in finished]
                # an overlapped round's draft reaches k + 1 positions past its proposal's last; a
                # sibling sits one slot past the proposal
                sibling = p.sibling and k > 0
                reach = 2 * k + 2 if overlap else max(width, k) + 1 + sibling
                attend_len = self._bucket(max(live) + reach, max_len)
                shape = RoundShape(k, width, feed_prev, overlap, sibling=sibling)
                if self.generator is not None:
                    bufs.draw_noise(self.generator)
                steps, result = self.rounds.launch(cache, bufs, shape, p.sampling, attend_len, self.target_rows)
                pending.append((rnd, k, steps, result))
                self.max_in_flight = max(self.max_in_flight, len(pending))
            # 2d. the round's single host synchronisation
            rnd_done, k_round, steps, result = pending.popleft()
            host = self.rounds.read(result)
            if timed:  # a round's wall time, result to result, where it ran right behind the last
                now = time.perf_counter()
                if read_at is not None and self.rounds.captures == read_captures:
                    self.k_policy.observe_time(k_round, (now - read_at) * 1e3)
                read_at, read_captures = (now if pending else None), self.rounds.captures
            if self.k_policy is not None:
                costs_at = self._give_costs(costs_at, cache, bufs, feed_prev)
                live = [h for s, h in enumerate(host) if active[s] not in finished]  # frozen rows say nothing
                self.k_policy.update([h[0] for h in live], [h[2] for h in live], k=k_round)
            if self.drafter is not None:
                self.drafter.observe(torch.tensor([h[0] for h in host]))
                # the draft fed last, d_1 .. d_{ran-1}: it lacks the next `prev` iff a row kept all.
                # A confidence stop decided on the device skips the steps after every row stopped,
                # so the steps that ran are the most any row proposed (a draft stopped on the host
                # returns just those steps; otherwise every row proposes all of them)
                ran = min(steps, max(h[2] for h in host)) if host else steps
                feed_prev = not overlap and (lookahead or (ran > 0 and any(
                    host[s][0] >= ran for s, row in enumerate(active) if row not in finished)))

            # 2e. per-row bookkeeping, stops, events
            for slot, row in enumerate(active):
                if row in finished:
                    continue
                a, tok, proposed = host[slot][0], host[slot][1], host[slot][2]
                drafted = host[slot][3:]
                positions[slot] += a + 1
                self.stats[row].record(proposed, a)
                out, reason = self._emit(drafted[:a] + [tok], generated[row], eos)
                generated[row] += len(out)
                histories[row].extend(out)
                self.stats[row].new_tokens = generated[row]
                own = out[a] if len(out) > a else None
                # (an overlapped round proposes nothing for a row whose proposal was not good: its token is the target's)
                kind: TokenKind = ("target" if k_round == 0 or (overlap and proposed == 0)
                                   else ("bonus" if a >= proposed else "recovered"))
                if reason:
                    finished.add(row)
                yield RoundEvent(row, rnd_done, tuple(out[: min(a, len(out))]), tuple(drafted[a:proposed]), own,
                                 kind, proposed, a, reason is not None, reason)

    @torch.inference_mode()
    def prepare(self, prompts: Sequence[Sequence[int]]) -> None:
        """Compile or capture, now, every round shape this engine may run on a batch like `prompts`
        (bench calls it before timing); generates nothing."""
        cache, bufs, _, _ = self._start(prompts)
        self._join_draft()
        for shape in self.shapes():
            if self.drafter is not None and not self.drafter.on_device:
                bufs.give(self.drafter.propose(self._host_state(bufs, cache, [list(p) for p in prompts],
                                                                range(len(prompts)), shape.k), shape.k))
            if self.generator is not None:
                bufs.draw_noise(self.generator)
            self.rounds.prepare(cache, bufs, shape, self.params.sampling, self.target_rows)

    # ---- pieces of the loop ----------------------------------------------------------------
    def _start(self, prompts: Sequence[Sequence[int]]):
        """Open a batch and prefill the target and the drafter: (cache, buffers with `last` and
        `prev` set, cache size, the first token per row [B]). With a captured draft model on CUDA
        its prefill runs on a side stream (`self.drafting`), concurrently with the target's (each
        alone leaves most of the GPU idle), so the first token does not wait for it; the caller
        calls `_join_draft` before anything reads the draft's cache."""
        cache, bufs, input_ids, lengths, max_len = self._open(prompts)
        first = self._prefill(cache, input_ids, lengths)  # [B]
        bufs.last.copy_(first)
        bufs.prev.copy_(input_ids.gather(1, (lengths - 1)[:, None]).squeeze(1))
        drafting = self.drafting
        if drafting is not None:
            drafting.wait_stream(torch.cuda.current_stream(self.device))  # input_ids, lengths are ready
            for t in (input_ids, lengths):  # the allocator must not reuse them before the side stream is done
                t.record_stream(drafting)
            with torch.cuda.stream(drafting):
                self.drafter.prefill(input_ids, lengths, max_len)
        elif self.drafter is not None:
            self.drafter.prefill(input_ids, lengths, max_len)
        return cache, bufs, max_len, first

    def _join_draft(self) -> None:
        """The current stream waits (on the device) for the draft's prefill on its side stream."""
        if self.drafting is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.drafting)

    def _open(self, prompts: Sequence[Sequence[int]]):
        """Right-padded prompts on the device (slot == position), the target cache and buffers."""
        p = self.params
        lengths_host = [len(x) for x in prompts]
        longest = max(lengths_host)
        max_len = max(self.cache_len(longest, p.max_new_tokens, self.max_k, p.overlap), p.min_cache_len)
        input_ids = torch.zeros((len(prompts), longest), dtype=torch.long)
        for b, ids in enumerate(prompts):
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        input_ids = input_ids.to(self.device)
        lengths = torch.tensor(lengths_host, dtype=torch.long, device=self.device)
        # overlapped rounds test one draft token more than k and draw for it
        width = self.max_k + 1 if p.overlap else self.max_k
        cache, bufs = self.rounds.open(self.drafter, len(prompts), max_len, width, self.target_rows, p.sampling,
                                       overlap=p.overlap)
        return cache, bufs, input_ids, lengths, max(max_len, cache.max_len)

    def _prefill(self, cache, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """Prefill the target; its token after each row's last prompt token. [B]"""
        last = (lengths - 1)[:, None]  # [B, 1]
        logits = self.runner.prefill(input_ids, cache, attend_len=input_ids.shape[1], logits_to_keep=last)[:, 0]
        cache.set_positions(lengths)
        if self.params.sampling.greedy:
            return logits.argmax(dim=-1)  # [B]
        return sample(logits_to_probs(logits, self.params.sampling), self.generator)

    def _give_costs(self, seen: int, cache, bufs: RoundBuffers, feed_prev: bool) -> int:
        """Hand `--k auto`'s policy the rounds' measured costs (captured rounds time each graph once)
        when rounds were captured since it last got them (`seen`: the capture count then)."""
        if self.k_policy is None or not hasattr(self.k_policy, "set_costs"):
            return seen
        captures = self.rounds.captures
        if captures != seen:
            if getattr(self.k_policy, "stop", False) and not getattr(self.drafter, "device_stop", False):
                self.k_policy.drop_stop()  # the capture turned the drafter's device stop off
            costs = self.rounds.measured(cache, bufs, self.params.sampling, feed_prev)
            if costs:
                shortest = (self.rounds.measured(cache, bufs, self.params.sampling, feed_prev, shortest=True)
                            if getattr(self.k_policy, "stop", False) else None)
                if shortest:
                    self.k_policy.set_costs(costs, shortest=shortest)
                else:  # (a policy without the stop's pricing takes the costs alone)
                    self.k_policy.set_costs(costs)
        return captures

    def _host_state(self, bufs: RoundBuffers, cache, histories, active, k: int) -> DraftState:
        return DraftState(last=bufs.last, prev=bufs.prev, positions=cache.positions, attend_len=0,
                          sampling=self.params.sampling, target_rows=self.target_rows,
                          histories=[histories[row] for row in active], generator=self.generator)

    def _more(self, active: list[int], finished: set[int], generated: list[int], ahead: int) -> bool:
        """Whether a row still needs a round even if the rounds in flight emit `ahead` tokens for it
        (their most): launching ahead then wastes nothing unless EOS comes first."""
        return any(row not in finished and generated[row] + ahead < self.params.max_new_tokens for row in active)

    def _emit(self, block: list[int], generated: int, eos: set[int]) -> tuple[list[int], str | None]:
        """The tokens of a round's block a row keeps (up to EOS or max_new_tokens) and why it stops."""
        budget = self.params.max_new_tokens - generated
        out: list[int] = []
        for t in block:
            out.append(t)
            if t in eos:
                return out, "eos"
            if len(out) >= budget:
                return out, "length"
        return out, ("length" if generated + len(out) >= self.params.max_new_tokens else None)

    def _retire(self, finished: set[int], gone: set[int], active: list[int], positions: list[int], cache,
                bufs: RoundBuffers, compact: bool):
        """Finished rows stop: frozen in place (fixed shapes) or removed from every cache."""
        gone |= finished
        keep = [i for i, row in enumerate(active) if row not in finished]
        if not keep:
            return bufs, active, positions
        if not compact:
            alive = torch.tensor([row not in finished for row in active], dtype=torch.long)
            bufs.alive.copy_(alive.pin_memory() if bufs.alive.is_cuda else alive, non_blocking=True)
            return bufs, active, positions
        if len(keep) < len(active):
            rows = torch.tensor(keep, dtype=torch.long, device=self.device)
            cache.select_rows(rows)
            bufs.select_rows(rows)
            if self.drafter is not None:
                self.drafter.select_rows(rows)
            active = [active[i] for i in keep]
            positions = [positions[i] for i in keep]
        return bufs, active, positions
