"""One round of speculative decoding as device work: draft -> verify -> accept -> commit.

A round (Leviathan et al. 2022, Algorithm 1; Chen et al. 2023), for B rows:

  1. draft: the drafter proposes up to k tokens per row                 tokens [B, k]
     (a host drafter's proposal is handed in, already on the device)
  2. verify: the target runs once over [last, d_1 .. d_w]               logits [B, w+1, V]
  3. accept: verify.py keeps the longest acceptable prefix and adds one target token
     (recovered at the first rejection, bonus when all are kept)       accepted [B], next [B]
  4. commit: the target cache keeps last, d_1 .. d_a (advances by a+1: that is the
     rollback), `prev` and `last` move on, and the round's counts and tokens land in
     `RoundBuffers.out`, the one thing the host reads back

A greedy round may also verify the draft's second choice at each row's last proposed position,
a token tree of one sibling (`RoundShape.sibling`, `_sibling_round`).

Everything a round reads or writes between rounds lives in `RoundBuffers` and the caches,
updated in place, and no step reads a tensor's value on the host: only Python parameters
and shapes decide branches. So the same function runs eagerly (the reference the tests
check) and, captured once per shape, as one CUDA graph per round (accel/rounds.py).

Random numbers are drawn before the round into `RoundBuffers` (`draw_noise`): the exponential
races of the draft's samples and of the target's token, and the acceptance uniforms. A
captured round then consumes no random state of its own, and a seed fixes the output.

`EagerRounds` is the reference way to run rounds (the engine's `Rounds` seam): `run_round`
called directly, its counts read with one `.tolist()`. The accelerated tier (accel/rounds.py)
implements the same four methods with captured graphs.

What it does not: choose k, stop rows or emit events (engine.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .drafting import Draft, Drafter, DraftState
from .sampling import SamplingParams, logits_to_probs
from .verify import verify_greedy, verify_greedy_sibling, verify_sampling

__all__ = ["EagerRounds", "RoundBuffers", "RoundShape", "accept_overlapped_reference", "commit_reference",
           "overlapped_tested", "run_overlapped_round", "run_round"]


@dataclass(frozen=True)
class RoundShape:
    """What a round's device program depends on (a captured round exists per shape)."""

    k: int  # draft steps this round (0: the target alone)
    width: int  # draft positions verified (>= k; fixed shapes pad a host drafter's proposal to max_k)
    feed_prev: bool  # the drafter's first step also feeds `prev` (see drafting.DraftState)
    overlap: bool = False  # the draft drafts the next round while the target verifies this one (see below)
    # greedy, an on-device drafter: the verify also tests the draft's second choice at each row's last
    # proposed position, in one more row (a token tree of one sibling; see run_round)
    sibling: bool = False


@dataclass
class RoundBuffers:
    """Device tensors a round reads and writes in place, for B rows; W = widest round."""

    last: Tensor  # [B] int64 newest emitted token, not yet in the target cache
    prev: Tensor  # [B] int64 the token before it
    alive: Tensor  # [B] int64 1 = generating, 0 = finished (kept, frozen, in a fixed-shape batch)
    out: Tensor  # [B, 3 + W] int64: accepted, next token, proposed, draft tokens
    given_tokens: Tensor  # [B, W] int64 a host drafter's proposal
    given_num: Tensor  # [B] int64 how many of them are real
    race: Tensor | None = None  # [B, W + 1, V] float32 Exp(1): draft j uses [:, j], the target [:, w]
    uniform: Tensor | None = None  # [B, W] float32 U[0, 1): acceptance tests
    # overlapped rounds (run_overlapped_round): the next round's proposal, drafted during this one
    ahead: Tensor | None = None  # [B, W] int64 e_1 .. e_k, the draft's tokens after `last`
    ahead_probs: Tensor | None = None  # [B, W, V] float32 their q (sampling)
    ahead_ok: Tensor | None = None  # [B] int64 1 = `ahead` follows `last` (its first token was accepted)

    @classmethod
    def new(cls, batch: int, width: int, vocab: int, sampling: SamplingParams, device: torch.device,
            overlap: bool = False) -> RoundBuffers:
        """Buffers for rounds of up to `width` draft positions; `overlap`: with the state of
        overlapped rounds (their random draws and results need one position more than k)."""
        z = lambda *shape: torch.zeros(shape, dtype=torch.long, device=device)  # noqa: E731
        race = uniform = ahead = ahead_probs = ahead_ok = None
        if not sampling.greedy:
            race = torch.ones((batch, width + 1, vocab), dtype=torch.float32, device=device)
            uniform = torch.zeros((batch, width), dtype=torch.float32, device=device)
        if overlap:
            ahead, ahead_ok = z(batch, width), z(batch)
            if not sampling.greedy:
                ahead_probs = torch.zeros((batch, width, vocab), dtype=torch.float32, device=device)
        return cls(last=z(batch), prev=z(batch), alive=torch.ones(batch, dtype=torch.long, device=device),
                   out=z(batch, 3 + width), given_tokens=z(batch, width), given_num=z(batch),
                   race=race, uniform=uniform, ahead=ahead, ahead_probs=ahead_probs, ahead_ok=ahead_ok)

    def draw_noise(self, generator: torch.Generator | None) -> None:
        """This round's random numbers, in place (sampling only; one stream, so a seed fixes them)."""
        if self.race is not None:
            self.race.exponential_(generator=generator)
            self.uniform.uniform_(generator=generator)

    def select_rows(self, rows: Tensor) -> None:
        """Keep only these rows (eager batch compaction)."""
        for name in ("last", "prev", "alive", "out", "given_tokens", "given_num", "race", "uniform", "ahead",
                     "ahead_probs", "ahead_ok"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, rows))

    def give(self, draft: Draft) -> None:
        """A host drafter's proposal (host tensors) into the device buffers, without a sync."""
        n = draft.tokens.shape[1]
        self.given_tokens.zero_()
        if n:
            src = draft.tokens.pin_memory() if self.given_tokens.is_cuda else draft.tokens
            self.given_tokens[:, :n].copy_(src, non_blocking=True)
        num = draft.num_proposed if draft.num_proposed is not None else torch.full((draft.tokens.shape[0],), n)
        src = num.pin_memory() if self.given_num.is_cuda else num
        self.given_num.copy_(src, non_blocking=True)


def _verify_input(last: Tensor, draft: Draft, width: int) -> tuple[Tensor, Tensor | None, Tensor | int]:
    """(verify_in [B, width+1] = [last, proposal, padding], probs [B, width, V] or None,
    num_proposed: [B] int64, or the int `width` when every row proposed all `width` positions).
    One concatenation; padding is never proposed."""
    tokens, probs = draft.tokens, draft.probs
    b, n = tokens.shape
    num = draft.num_proposed
    if num is None:  # every row proposed its n tokens: a count only where padding follows them
        num = n if n == width else torch.full((b,), n, dtype=torch.long, device=tokens.device)
    parts = [last[:, None]]
    if n:
        parts.append(tokens)
    if n < width:
        parts.append(tokens.new_zeros((b, width - n)))
        if probs is not None:
            probs = torch.cat([probs, probs.new_zeros((b, width - n, probs.shape[-1]))], dim=1)
    verify_in = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return verify_in, probs, num


def commit_reference(verify_in: Tensor, cache, bufs: RoundBuffers, num_proposed: Tensor | int,
                     accepted: Tensor, next_token: Tensor) -> None:
    """The round's commit as tensor operations (the reference; accel/glue.py's `commit` is the
    same as one kernel): the target cache keeps last, d_1..d_a (`positions` advances by a+1 in
    live rows: that is the rollback), the new `prev` is d_a (or last), `last` the next token,
    and the counts and proposal land in `bufs.out`."""
    width = verify_in.shape[1] - 1
    tokens = verify_in[:, 1:]
    cache.advance((accepted + 1) * bufs.alive)
    if width > 0:
        gathered = tokens.gather(1, (accepted - 1).clamp(min=0)[:, None]).squeeze(1)  # [B]
        bufs.prev.copy_(torch.where(accepted > 0, gathered, verify_in[:, 0]))
    else:
        bufs.prev.copy_(verify_in[:, 0])
    bufs.last.copy_(next_token)
    bufs.out[:, 0] = accepted
    bufs.out[:, 1] = next_token
    bufs.out[:, 2] = num_proposed.clamp(max=width) if isinstance(num_proposed, Tensor) else min(num_proposed, width)
    bufs.out[:, 3:3 + width] = tokens


def run_round(target, cache, drafter, bufs: RoundBuffers, shape: RoundShape, sampling: SamplingParams,
              attend_len: int, target_rows: int, may_sync: bool = True, commit=None, side=None,
              accept=None, verify_side=None) -> int:
    """One round over `bufs` and the caches (see the module doc); returns the draft steps the
    drafter ran (<= k; fewer only when an uncaptured drafter stopped early).

    `target`: the target's Step (forward over `cache`); `drafter`: an on-device drafter, or None
    when the proposal was handed in (`bufs.give`) or k == 0. `commit`: the acceptance and commit
    fused into one kernel (accel/glue.py's `commit`, captured rounds on CUDA); None runs them
    as the reference tensor operations below. An overlapped shape runs `run_overlapped_round`
    (`side`, `verify_side`: where its branches run; `accept`: its fused acceptance; see there)."""
    if shape.overlap:
        return run_overlapped_round(target, cache, drafter, bufs, shape, sampling, attend_len, target_rows,
                                    accept=accept, side=side, verify_side=verify_side)
    B = bufs.last.shape[0]
    k, width = shape.k, shape.width

    # 1. draft: up to k tokens per row
    if k == 0:
        draft = Draft(tokens=bufs.last.new_zeros((B, 0)), num_proposed=None)
    elif drafter is None:  # a host drafter's proposal, handed in
        draft = Draft(tokens=bufs.given_tokens[:, :k], num_proposed=bufs.given_num)
    else:
        state = DraftState(last=bufs.last, prev=bufs.prev, positions=cache.positions, attend_len=attend_len,
                           sampling=sampling, target_rows=target_rows, feed_prev=shape.feed_prev,
                           race=bufs.race[:, :k] if bufs.race is not None else None, may_sync=may_sync,
                           second=shape.sibling)
        draft = drafter.propose(state, k)
    steps = draft.tokens.shape[1]
    width = max(width, steps)
    verify_in, probs, num_proposed = _verify_input(bufs.last, draft, width)  # [B, w+1], [B, w, V] | None
    if shape.sibling and k > 0:
        return _sibling_round(target, cache, bufs, draft, verify_in, num_proposed, width, attend_len, commit)
    tokens = verify_in[:, 1:]  # [B, w]

    # 2. verify: one target forward over w+1 positions
    logits = target.forward(verify_in, cache, attend_len)  # [B, w+1, V]

    # 3. accept (pure functions, no host sync) and 4. commit
    if sampling.greedy and commit is not None:
        commit(verify_in, cache, bufs, num_proposed, logits=logits)
        return steps
    num = num_proposed if isinstance(num_proposed, Tensor) else None  # None: all `width` proposed
    if sampling.greedy:
        n_acc, nxt = verify_greedy(tokens, logits, num)
    else:
        p = logits_to_probs(logits, sampling)  # [B, w+1, V] float32
        n_acc, nxt = verify_sampling(tokens, probs, p, num_proposed=num,
                                     uniform=bufs.uniform[:, :width], race=bufs.race[:, width])
    if commit is not None:
        commit(verify_in, cache, bufs, num_proposed, accepted=n_acc, next_token=nxt)
    else:
        commit_reference(verify_in, cache, bufs, num_proposed, n_acc, nxt)
    return steps


def _sibling_round(target, cache, bufs: RoundBuffers, draft: Draft, verify_in: Tensor, num_proposed: Tensor | int,
                   width: int, attend_len: int, commit) -> int:
    """Steps 2-4 of a greedy round with a token tree of one sibling: the verify runs over
    [last, d_1 .. d_w, s], s the draft's second choice at each row's last proposed position n, in
    the last row: rotated at d_n's position, written at its own slot (the round's last), seeing
    last, d_1 .. d_{n-1} and itself (KVCache.prepare's `sibling`). Where the target rejects d_n
    and its token there is s, s is kept in d_n's place and the target's token after it is the
    next token (verify_greedy_sibling); s's keys and values move to d_n's slot before the commit.
    Returns the draft steps run."""
    B = verify_in.shape[0]
    n = num_proposed if isinstance(num_proposed, Tensor) else torch.full(
        (B,), num_proposed, dtype=torch.long, device=verify_in.device)
    n = n.clamp(1, width)  # a model drafter proposes at least its first token
    if draft.second is None:
        raise ValueError("a round with a sibling needs the drafter's second choices (Draft.second)")
    second = draft.second.gather(1, (n - 1)[:, None])  # [B, 1]
    tree_in = torch.cat([verify_in, second], dim=1)  # [B, w+2]
    logits = target.forward(tree_in, cache, attend_len, sibling=n)  # [B, w+2, V]
    target_tokens = target.argmax(logits)
    accepted, next_token, taken = verify_greedy_sibling(verify_in[:, 1:], second[:, 0], target_tokens,
                                                        None if isinstance(num_proposed, int) else num_proposed)
    # the sibling's keys and values (written at the round's last slot) to its twin's slot, where kept
    here = cache.positions
    scratch = here + width + 1
    cache.move_slots(scratch, torch.where(taken, here + n, scratch))
    # the kept tokens as the commit reads them: the sibling in its twin's place
    twin = verify_in.gather(1, n[:, None])
    kept = verify_in.scatter(1, n[:, None], torch.where(taken[:, None], second, twin))
    if commit is not None:
        commit(kept, cache, bufs, num_proposed, accepted=accepted, next_token=next_token)
    else:
        commit_reference(kept, cache, bufs, num_proposed, accepted, next_token)
    return draft.tokens.shape[1]


def overlapped_tested(bufs: RoundBuffers, k: int, draft_tokens: Tensor) -> Tensor:
    """[B, k+1]: what an overlapped round tests per row: e_1 .. e_k, f_1 where the proposal is good
    (`ahead_ok`), else f_1 then padding (draft_tokens [B, k+1] = f_1 .. f_{k+1})."""
    first = draft_tokens[:, :1]
    e = bufs.ahead[:, :k]
    return torch.where(bufs.ahead_ok.bool()[:, None], torch.cat([e, first], dim=1),
                       torch.cat([first, torch.zeros_like(e)], dim=1))


def accept_overlapped_reference(cache, bufs: RoundBuffers, k: int, draft_tokens: Tensor,
                                target_tokens: Tensor | None = None, accepted: Tensor | None = None,
                                own: Tensor | None = None, logits: Tensor | None = None) -> None:
    """An overlapped round's acceptance and commit as tensor operations (the reference; accel/glue.py's
    `accept_overlapped` is the same as one kernel). Greedy: from the target's argmax `target_tokens`
    [B, k+1] (of `logits` when not given); sampling: `accepted` [B] (of the n tested tokens) and
    `own` [B] (the recovered token) from verify_sampling over `overlapped_tested`.

    A row keeps its tested tokens up to the first rejection; when it keeps all n, f_1 is its own
    token, else `own` (greedy: the target's argmax at the rejection). Then the target cache keeps
    last and the accepted e's, `bufs.out` gets (accepted e's, own token, e's proposed (k or 0), the
    e's), and f_2 .. f_{k+1} become the next proposal, good where all were kept in a live row."""
    B = draft_tokens.shape[0]
    good = bufs.ahead_ok.bool()
    n = bufs.ahead_ok * k + 1  # [B] tokens tested per row
    if accepted is None:
        tested = overlapped_tested(bufs, k, draft_tokens)
        if target_tokens is None:
            target_tokens = logits.reshape(B * (k + 1), -1).argmax(dim=-1).view(B, k + 1)
        live = torch.arange(k + 1, device=n.device) < n[:, None]
        accepted = ((tested == target_tokens) & live).long().cumprod(dim=1).sum(dim=1)  # [B] in [0, n]
        own = target_tokens.gather(1, accepted.clamp(max=k)[:, None]).squeeze(1)
    all_kept = accepted == n
    nxt = torch.where(all_kept, draft_tokens[:, 0], own)  # (f_1 is tested last in every row)
    kept_e = torch.where(good, accepted.clamp(max=k), torch.zeros_like(accepted))
    verify_in = torch.cat([bufs.last[:, None], bufs.ahead[:, :k]], dim=1)
    commit_reference(verify_in, cache, bufs, bufs.ahead_ok * k, kept_e, nxt)
    bufs.ahead[:, :k].copy_(draft_tokens[:, 1:])
    bufs.ahead_ok.copy_(all_kept.long() * bufs.alive)


def run_overlapped_round(target, cache, drafter, bufs: RoundBuffers, shape: RoundShape, sampling: SamplingParams,
                         attend_len: int, target_rows: int, accept=None, side=None, verify_side=None) -> int:
    """One overlapped round: the target verifies the proposal the draft made during the previous
    round while the draft drafts the next one (Liu et al. 2024, "Parallel Speculative Decoding
    with Adaptive Draft Length", PEARL's post-verify, in one fixed-shape program). Returns k.

    State: `bufs.ahead` holds e_1 .. e_k and, where `bufs.ahead_ok`, they follow `last` (the draft
    cache then holds last, e_1 .. e_{k-1}). Two branches, independent until the acceptance:

      * verify: the target over [last, e_1 .. e_k] (k + 1 rows): p_1 .. p_{k+1};
      * draft: k + 1 draft steps from e_k at its position (rows whose `ahead` is good), or from
        `last` at its own (the others): f_1 .. f_{k+1}. f_1 is the draft's guess of the token
        after e_k (of the token after `last`), f_2 .. f_{k+1} the next round's proposal.

    Acceptance: rows with a good `ahead` test [e_1 .. e_k, f_1] against p_1 .. p_{k+1}; the others
    test [f_1] against p_1 (their e's never count: zero proposed). The usual rule (verify.py),
    except that there is no target distribution after the last draft: when all are accepted, f_1
    itself is the round's own token (greedy: it equals the target's argmax; sampling: accepted
    with probability min(1, p/q), it follows p), and the next round's proposal f_2 .. f_{k+1} is
    good. Otherwise the round's own token is the recovered one and the next round verifies no
    proposal of its own (its draft branch starts again from `last`). So the output is exactly
    the target's (greedy) or follows its distribution (sampling), and every round emits what a
    round of k draft tokens emits: accepted + 1 tokens, counted the same way.

    `side`: where the draft branch runs, an object with `run(fn)` (fn's result) and `join()`
    (accel/rounds.py's side stream: the branches run concurrently on the GPU); None runs the
    branches one after the other (the reference). `verify_side`: where the verify runs, the same
    kind of object (a green context's share of the SMs, `--overlap-sms`); None: the current
    stream. `accept`: the acceptance and commit fused
    (accel/glue.py's `accept_overlapped`, captured rounds); None: `accept_overlapped_reference`.
    Device work only, no host synchronisation.
    """
    B = bufs.last.shape[0]
    k = shape.k
    if bufs.ahead is None or k < 1 or bufs.ahead.shape[1] < k + 1:
        raise ValueError("an overlapped round needs RoundBuffers.new(..., overlap=True) of width k + 1 and k >= 1")

    def draft_branch() -> Draft:
        good = bufs.ahead_ok.bool()
        start = torch.where(good, bufs.ahead[:, k - 1], bufs.last)  # [B]
        at = cache.positions + bufs.ahead_ok * k  # [B] the start token's position
        state = DraftState(last=bufs.last, prev=bufs.prev, positions=cache.positions, attend_len=attend_len,
                           sampling=sampling, target_rows=target_rows,
                           race=bufs.race[:, : k + 1] if bufs.race is not None else None, may_sync=False)
        return drafter.propose_from(start, at, state, k + 1)

    draft = side.run(draft_branch) if side is not None else draft_branch()
    verify_in = torch.cat([bufs.last[:, None], bufs.ahead[:, :k]], dim=1)  # [B, k+1]

    def verify_branch() -> Tensor:
        return target.forward(verify_in, cache, attend_len)  # [B, k+1, V]

    if verify_side is not None:
        logits = verify_side.run(verify_branch)
        verify_side.join()
    else:
        logits = verify_branch()
    if side is not None:
        side.join()

    f = draft.tokens  # [B, k+1]
    if sampling.greedy:
        picks = target.argmax(logits.reshape(B * (k + 1), -1)).view(B, k + 1) if accept is None else None
        (accept or accept_overlapped_reference)(cache, bufs, k, f, target_tokens=picks, logits=logits)
    else:
        good = bufs.ahead_ok.bool()  # [B]
        p = logits_to_probs(logits, sampling)  # [B, k+1, V] float32
        p = torch.cat([p, p[:, -1:]], dim=1)  # a stand-in after the last position: its draw is never used
        q_first = draft.probs[:, :1]  # [B, 1, V]
        q_e = bufs.ahead_probs[:, :k]
        q = torch.where(good[:, None, None], torch.cat([q_e, q_first], dim=1),
                        torch.cat([q_first, torch.zeros_like(q_e)], dim=1))  # [B, k+1, V]
        a, own = verify_sampling(overlapped_tested(bufs, k, f), q, p, num_proposed=bufs.ahead_ok * k + 1,
                                 uniform=bufs.uniform[:, : k + 1], race=bufs.race[:, k + 1])
        bufs.ahead_probs[:, :k].copy_(draft.probs[:, 1:])  # the next proposal's q (its tokens: the commit)
        (accept or accept_overlapped_reference)(cache, bufs, k, f, accepted=a, own=own)
    return k


class EagerRounds:
    """The reference `Rounds`: each round calls `run_round` directly; `read` is its one sync.

    `fixed_shapes`: rounds come in a fixed set of shapes (a host drafter's proposal is padded to
    max_k draft positions; an on-device drafter's round of k verifies k) and finished rows stay in
    the batch, frozen (what compiled steps need; the accelerated tier's captured rounds too)."""

    captured = False
    captures = 0  # round graphs captured so far (CapturedRounds counts them)
    commit = None  # run_round's commit: None = the reference (captured rounds fuse it: accel/glue.py)
    side = None  # where an overlapped round's draft branch runs: None = before the verify, in line
    verify_side = None  # where its verify runs: None = the current stream
    accept = None  # an overlapped round's acceptance and commit: None = the reference (accel/glue.py)

    def __init__(self, target, fixed_shapes: bool = False) -> None:
        self.target = target  # the target's Step
        self.fixed_shapes = fixed_shapes
        self.drafter: Drafter | None = None

    def open(self, drafter: Drafter | None, batch: int, max_len: int, width: int, vocab: int,
             sampling: SamplingParams, overlap: bool = False):
        """A batch's target cache and round buffers (`overlap`: with overlapped rounds' state)."""
        self.drafter = drafter
        device = self.target.device
        return (self.target.new_cache(batch, max_len),
                RoundBuffers.new(batch, width, vocab, sampling, device, overlap=overlap))

    def prepare(self, cache, bufs: RoundBuffers, shape: RoundShape, sampling: SamplingParams,
                target_rows: int) -> None:
        """Make the first round of this shape cost what later ones do: with fixed shapes, run it
        once (compiled steps compile on first use) and put the round's state back."""
        if not self.fixed_shapes:
            return
        state = self._state(cache, bufs)
        saved = [t.clone() for t in state]
        self.launch(cache, bufs, shape, sampling, cache.max_len, target_rows)
        for t, s in zip(state, saved):
            t.copy_(s)

    def launch(self, cache, bufs: RoundBuffers, shape: RoundShape, sampling: SamplingParams,
               attend_len: int, target_rows: int) -> tuple[int, Tensor]:
        """Run one round; (draft steps run, the result tensor to read)."""
        steps = self._round(cache, bufs, shape, sampling, attend_len, target_rows, may_sync=True)
        width = max(shape.width, steps)
        return steps, bufs.out[:, : 3 + width].clone()

    def _round(self, cache, bufs: RoundBuffers, shape: RoundShape, sampling: SamplingParams, attend_len: int,
               target_rows: int, may_sync: bool) -> int:
        """run_round with this batch's drafter when it drafts on the device (a host drafter's
        proposal is already in `bufs`)."""
        drafter = self.drafter if (self.drafter is not None and self.drafter.on_device) else None
        return run_round(self.target, cache, drafter, bufs, shape, sampling, attend_len, target_rows, may_sync,
                         commit=self.commit, side=self.side, accept=self.accept, verify_side=self.verify_side)

    def _state(self, cache, bufs: RoundBuffers) -> list[Tensor]:
        """The tensors a round changes that a warm-up must leave as it found them."""
        state = [cache.positions, bufs.last, bufs.prev, bufs.out]
        state += [t for t in (bufs.ahead, bufs.ahead_ok, bufs.ahead_probs) if t is not None]
        dcache = getattr(self.drafter, "cache", None)
        if dcache is not None:
            state.append(dcache.positions)
        return state

    def read(self, result: Tensor) -> list[list[int]]:
        return result.tolist()  # the round's single host synchronisation

    def measured(self, cache, bufs: RoundBuffers, sampling: SamplingParams, feed_prev: bool,
                 shortest: bool = False) -> dict[int, float]:
        """Measured round costs by k (captured rounds time their graphs); none here."""
        return {}
