"""The round loop: prefill, draft, verify, accept, roll back — one event per round and row.

A round (Leviathan et al. 2022, Algorithm 1; Chen et al. 2023):

  1. the drafter proposes up to k tokens per row                       tokens [B, k]
  2. the target runs once over [last, d_1 .. d_k] at positions P..P+k   logits [B, k+1, V]
  3. verify keeps the longest acceptable prefix and adds one target token (recovered at the
     first rejection, bonus when all k are kept)                        accepted [B], next [B]
  4. one host synchronisation: the round's tokens come back for events and stopping
  5. the target cache keeps P..P+a (a = accepted), i.e. advances by a+1 — that is the
     rollback: the rejected slots are simply never made visible again
  6. rows that hit EOS or max_new_tokens stop (nothing follows EOS); finished rows leave
     the batch so they cost nothing more

The first generated token comes from the target's prefill, as in plain decoding. The
target-only baseline is the same loop with the drafter `none` (k = 0): every round then
emits exactly one target token, so baseline and speculative timings share all overhead.

What it does not: tokenize, time, print, or load models. It yields `RoundEvent`s; callers
(api.py, the CLI, bench) render or time them. Nothing here imports rich.
"""

from __future__ import annotations

import dataclasses

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..drafters.base import Draft, Drafter, DraftState
from ..metrics import acceptance_rate, block_efficiency
from ..models.loading import LoadedModel
from .cache import ModelRunner
from .sampling import SamplingParams, logits_to_probs, sample
from .verify import verify_greedy, verify_sampling

__all__ = ["EngineParams", "RoundEvent", "RowStats", "SpeculativeEngine", "make_generator"]

TokenKind = Literal["first", "recovered", "bonus", "target"]


@dataclass(frozen=True)
class EngineParams:
    num_draft_tokens: int  # k; 0 = target alone
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    eos_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    attend_bucket: int = 64  # eager path: attend over the cache in buckets of this many slots


@dataclass(frozen=True)
class RoundEvent:
    """What one round emitted for one row (round 0 is the prefill's first token)."""

    row: int  # index of the prompt in the call
    round: int
    accepted: tuple[int, ...]  # draft tokens kept and emitted
    rejected: tuple[int, ...]  # draft tokens proposed and discarded
    token: int | None  # the target's own token (first / recovered / bonus / target); None if cut by a stop
    kind: TokenKind
    proposed: int  # draft tokens proposed this round
    num_accepted: int  # verification's decision (may exceed len(accepted) when a stop cut the block)
    finished: bool
    finish_reason: Literal["eos", "length"] | None = None

    @property
    def tokens(self) -> tuple[int, ...]:
        """The ids this round emitted, in order."""
        return self.accepted + ((self.token,) if self.token is not None else ())


@dataclass
class RowStats:
    new_tokens: int = 0
    rounds: int = 0  # verification rounds (the prefill's first token is not a round)
    draft_tokens: int = 0  # proposed
    accepted_tokens: int = 0  # kept by verification
    position_trials: list[int] = field(default_factory=list)  # per draft position j: rounds that proposed it
    position_accepts: list[int] = field(default_factory=list)  # ... and accepted it

    @property
    def acceptance_rate(self) -> float | None:
        return acceptance_rate(self.accepted_tokens, self.draft_tokens)

    @property
    def block_efficiency(self) -> float | None:
        return block_efficiency(self.accepted_tokens, self.rounds)

    def record(self, proposed: int, accepted: int) -> None:
        self.rounds += 1
        self.draft_tokens += proposed
        self.accepted_tokens += accepted
        while len(self.position_trials) < proposed:
            self.position_trials.append(0)
            self.position_accepts.append(0)
        for j in range(proposed):
            self.position_trials[j] += 1
            if j < accepted:
                self.position_accepts[j] += 1


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on `device`, seeded when a seed is given, from OS entropy otherwise."""
    g = torch.Generator(device=device)
    if seed is not None:
        g.manual_seed(seed)
    else:
        g.seed()
    return g


def _pad_draft(draft: Draft, width: int) -> Draft:
    """`draft` with its tokens (and probabilities) padded to `width` columns; the padding is not
    proposed (num_proposed is unchanged, or the unpadded width), so verification never accepts it."""
    b, n = draft.tokens.shape
    tokens = torch.zeros((b, width), dtype=draft.tokens.dtype, device=draft.tokens.device)
    tokens[:, :n] = draft.tokens
    probs = None
    if draft.probs is not None:
        probs = draft.probs.new_zeros((b, width, draft.probs.shape[-1]))
        probs[:, :n] = draft.probs
    num = draft.num_proposed
    if num is None:
        num = torch.full((b,), n, dtype=torch.long, device=draft.tokens.device)
    return dataclasses.replace(draft, tokens=tokens, probs=probs, num_proposed=num)


class _NoDrafter:
    """k = 0: the target alone, through the same loop."""

    name = "none"

    def prefill(self, input_ids: Tensor, lengths: Tensor, max_len: int) -> None:
        pass

    def propose(self, state: DraftState, k: int) -> Draft:
        b = state.last.shape[0]
        return Draft(tokens=state.last.new_empty((b, 0)))

    def observe(self, num_accepted: Tensor) -> None:
        pass

    def select_rows(self, rows: Tensor) -> None:
        pass


_NO_DRAFTER = _NoDrafter()


@dataclass
class _Pending:
    """A launched round whose results [B, 3 + k] (accepted, next token, proposed, draft tokens)
    have not been read by the host yet."""

    round: int
    k_round: int
    out: Tensor
    done: torch.cuda.Event | None = None

    @classmethod
    def start(cls, rnd: int, k_round: int, out: Tensor, copy_ahead: bool) -> "_Pending":
        if not copy_ahead or not out.is_cuda:
            return cls(rnd, k_round, out)
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return cls(rnd, k_round, host, done)

    def read(self) -> list[list[int]]:
        if self.done is not None:
            self.done.synchronize()
        return self.out.tolist()


class SpeculativeEngine:
    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter | None,
        params: EngineParams,
        k_policy=None,
        generator: torch.Generator | None = None,
        runner: ModelRunner | None = None,
    ) -> None:
        self.target = target
        self.runner = runner if runner is not None else ModelRunner(target.model)
        self.drafter: Drafter = drafter if drafter is not None else _NoDrafter()
        self.params = params
        self.k_policy = k_policy  # adaptive k: an object with .k (int) and .update(num_accepted list, proposed)
        if self.drafter.name == "none":
            self.params = EngineParams(**{**params.__dict__, "num_draft_tokens": 0})
        self.device = target.device
        self.target_rows = target.vocab_rows
        self.stats: list[RowStats] = []
        # finished rows leave the batch (None: unless the runner replays fixed-shape graphs)
        self.compact_rows: bool | None = None
        # target alone on fixed rows: launch each round before reading the previous one (see stream)
        self.lookahead = True
        # one random stream for every batch of a call: batches must not repeat each other's draws
        self.generator = generator if generator is not None else self._new_generator()

    # ---- helpers ------------------------------------------------------------------------
    def _new_generator(self) -> torch.Generator | None:
        if self.params.sampling.greedy:
            return None
        return make_generator(self.device, self.params.seed)

    def _pick(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """The target's own token from logits [B, V]."""
        if self.params.sampling.greedy:
            return logits.argmax(dim=-1)
        return sample(logits_to_probs(logits, self.params.sampling), generator)

    def _bucket(self, need: int, max_len: int) -> int:
        b = self.params.attend_bucket
        return min(max_len, -(-need // b) * b)

    @staticmethod
    def cache_len(longest_prompt: int, max_new_tokens: int, max_k: int) -> int:
        """Cache slots a batch needs: its longest prompt, every new token, and one round's overshoot."""
        return longest_prompt + max_new_tokens + max_k + 2

    def _max_k(self) -> int:
        if self.k_policy is not None:
            return int(self.k_policy.max_k)
        return self.params.num_draft_tokens

    # ---- the loop -----------------------------------------------------------------------
    @torch.inference_mode()
    def stream(self, prompts: Sequence[Sequence[int]]) -> Iterator[RoundEvent]:
        """Generate for a batch of tokenized prompts, yielding events as rounds complete."""
        if not prompts:
            return
        if any(len(p) == 0 for p in prompts):
            raise ValueError("a prompt is empty after tokenization")
        p = self.params
        device = self.device
        bsz = len(prompts)
        lengths_host = [len(x) for x in prompts]
        longest = max(lengths_host)
        max_len = self.cache_len(longest, p.max_new_tokens, self._max_k())
        eos = set(p.eos_token_ids)
        generator = self.generator
        self.stats = [RowStats() for _ in range(bsz)]
        histories = [list(x) for x in prompts]
        generated = [0] * bsz

        # right-padded prompts: row b holds its tokens at slots 0..L_b-1 (slot == position)
        input_ids = torch.zeros((bsz, longest), dtype=torch.long)
        for b, ids in enumerate(prompts):
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        input_ids = input_ids.to(device)
        lengths = torch.tensor(lengths_host, dtype=torch.long, device=device)

        # 1. prefill the target; its prediction at each row's last prompt token is the first token
        cache = self.runner.new_cache(bsz, max_len)
        keep = sorted(set(n - 1 for n in lengths_host))
        keep_t = torch.tensor(keep, dtype=torch.long, device=device)
        logits = self.runner.prefill(input_ids, cache, attend_len=longest, logits_to_keep=keep_t)  # [B, |keep|, V]
        col = torch.tensor([keep.index(n - 1) for n in lengths_host], device=device)
        first = self._pick(logits[torch.arange(bsz, device=device), col], generator)  # [B]
        cache.set_positions(lengths)
        self.drafter.prefill(input_ids, lengths, max_len)

        last = first  # [B] newest token, not yet in any cache
        prev = input_ids.gather(1, (lengths - 1)[:, None]).squeeze(1)  # [B]
        positions_host = list(lengths_host)  # position of `last` per row

        active = list(range(bsz))  # batch slot -> prompt index
        finished_now: list[int] = []
        # eager: finished rows leave the batch. Graph mode keeps shapes fixed: finished rows stay,
        # masked — their caches stop advancing and they emit nothing.
        compact = not self.runner.graphs if self.compact_rows is None else self.compact_rows
        # captured/compiled steps exist per shape: a round with fewer draft tokens (adaptive k, a
        # drafter that stopped early) verifies padded to max_k, so one verify shape serves them all
        fixed_shapes = self.runner.graphs or getattr(self.runner, "compiled", False)
        dead: set[int] = set()
        alive = torch.ones(bsz, dtype=torch.long, device=device)
        for b, tok in enumerate(first.tolist()):
            generated[b] = 1
            histories[b].append(tok)
            self.stats[b].new_tokens = 1
            reason = "eos" if tok in eos else ("length" if p.max_new_tokens <= 1 else None)
            if reason:
                finished_now.append(b)
            yield RoundEvent(b, 0, (), (), tok, "first", 0, 0, reason is not None, reason)

        # Target alone through the captured path: each round's input is the previous round's
        # token, already on the device, so round r+1 is launched before round r's tokens are read
        # back, and the host's reading and bookkeeping overlap the GPU's next step instead of
        # idling it. (With a drafter the next round's shape depends on what the host reads.) The
        # only cost: when every row stops on EOS, one step past it was computed and is dropped.
        lookahead = (self.lookahead and not compact and isinstance(self.drafter, _NoDrafter)
                     and self.k_policy is None)
        pending: deque[_Pending] = deque()
        rnd = 0

        def launch() -> _Pending:
            nonlocal rnd, last, prev
            rnd += 1
            k = self.params.num_draft_tokens if self.k_policy is None else int(self.k_policy.k)
            # rounds in flight have each moved a row one position on (k = 0 when there are any)
            ahead = len(pending)
            live_positions = [pos + ahead for pos, row in zip(positions_host, active) if row not in dead]
            attend_len = self._bucket(max(live_positions) + k + 1, max_len)
            state = DraftState(
                last=last,
                prev=prev,
                positions=cache.positions,
                attend_len=attend_len,
                sampling=p.sampling,
                generator=generator,
                target_rows=self.target_rows,
                histories=[histories[row] for row in active],
            )

            # 2. draft: up to k tokens per row
            draft = self.drafter.propose(state, k) if k > 0 else _NO_DRAFTER.propose(state, 0)
            if fixed_shapes and 0 < draft.tokens.shape[1] < self._max_k():
                draft = _pad_draft(draft, self._max_k())
            k_round = draft.tokens.shape[1]
            nb = last.shape[0]
            num_proposed = (
                draft.num_proposed
                if draft.num_proposed is not None
                else torch.full((nb,), k_round, dtype=torch.long, device=device)
            )

            # 3. verify: one target forward over k+1 positions
            verify_in = torch.cat([last[:, None], draft.tokens], dim=1)  # [B, k+1]
            logits = self.runner.forward(verify_in, cache, attend_len)  # [B, k+1, V]

            # 4. accept (pure functions, no host sync)
            if p.sampling.greedy:
                n_acc, nxt = verify_greedy(draft.tokens, logits, num_proposed)
            else:
                target_probs = logits_to_probs(logits, p.sampling)  # [B, k+1, V] float32
                n_acc, nxt = verify_sampling(draft.tokens, draft.probs, target_probs, generator, num_proposed)

            # 5. roll back: keep last, d_1..d_a in the target cache; the new `prev` is d_a (or last)
            cache.advance((n_acc + 1) * alive if not compact else n_acc + 1)
            self.drafter.observe(n_acc)
            if k_round > 0:
                gathered = draft.tokens.gather(1, (n_acc - 1).clamp(min=0)[:, None]).squeeze(1)
                prev = torch.where(n_acc > 0, gathered, last)
            else:
                prev = last
            last = nxt
            out = torch.cat([n_acc[:, None], nxt[:, None], num_proposed[:, None], draft.tokens], dim=1)
            return _Pending.start(rnd, k_round, out, copy_ahead=lookahead)

        def more_to_launch() -> bool:
            """Whether a row may still need a round after those in flight (EOS is unknown
            until they are read; max_new_tokens is not)."""
            ahead = len(pending)
            return any(row not in dead and generated[row] + ahead < p.max_new_tokens for row in active)

        while True:
            if finished_now:
                dead.update(finished_now)
                keep_slots = [i for i, row in enumerate(active) if row not in dead]
                finished_now = []
                if not keep_slots:
                    return
                if not compact:
                    alive = torch.tensor([row not in dead for row in active], dtype=torch.long, device=device)
                elif len(keep_slots) < len(active):
                    # 6. batch compaction: finished rows leave every cache
                    rows = torch.tensor(keep_slots, dtype=torch.long, device=device)
                    cache.select_rows(rows)
                    self.drafter.select_rows(rows)
                    last, prev = last.index_select(0, rows), prev.index_select(0, rows)
                    active = [active[i] for i in keep_slots]
                    positions_host = [positions_host[i] for i in keep_slots]
            if not pending:
                pending.append(launch())
            if lookahead and len(pending) < 2 and more_to_launch():
                pending.append(launch())
            this = pending.popleft()
            rnd_done, k_round = this.round, this.k_round
            # the round's single host synchronisation
            host = this.read()
            if self.k_policy is not None:
                self.k_policy.update([h[0] for h in host], [h[2] for h in host])

            # 6. per-row bookkeeping, stops, events
            for slot, row in enumerate(active):
                if row in dead:
                    continue
                a, tok, proposed = host[slot][0], host[slot][1], host[slot][2]
                drafted = host[slot][3:]
                positions_host[slot] += a + 1
                self.stats[row].record(proposed, a)
                block = drafted[:a] + [tok]
                budget = p.max_new_tokens - generated[row]
                out: list[int] = []
                reason = None
                for t in block:
                    out.append(t)
                    if t in eos:
                        reason = "eos"
                        break
                    if len(out) >= budget:
                        reason = "length"
                        break
                if reason is None and generated[row] + len(out) >= p.max_new_tokens:
                    reason = "length"
                generated[row] += len(out)
                histories[row].extend(out)
                self.stats[row].new_tokens = generated[row]
                accepted = tuple(out[: min(a, len(out))])
                own = out[a] if len(out) > a else None
                if k_round == 0:
                    kind: TokenKind = "target"
                elif a >= proposed:
                    kind = "bonus"
                else:
                    kind = "recovered"
                if reason:
                    finished_now.append(row)
                yield RoundEvent(
                    row, rnd_done, accepted, tuple(drafted[a:proposed]), own, kind, proposed, a, reason is not None, reason
                )
