"""A round's bookkeeping after the verify as one Triton kernel (captured rounds on CUDA).

Between the verify's logits and the next round, decoding/round.py runs the acceptance decision
and the commit as plain tensor operations: for a greedy round the comparison of the proposal
with the target's argmax, the accepted prefix (cumprod, sum), the next token's gather; then
the cache advance, the new `prev` (gather, where), `last`, and four writes of the result row.
That is about twenty kernels of a few elements each. Inside a CUDA graph each still costs its
launch gap and a ramp-up (~3-4 us on an H200), about 70 us a round, as much as a tenth of a
draft step; and target-alone decoding (k = 0 rounds) pays a dozen of them per token.

`commit` does all of it in one program per row:

    greedy:    accepted = the longest prefix j < num_proposed with proposal[j] == target[j]
               next     = target[accepted]
    sampling:  accepted, next given (verify.verify_sampling decided them)
    then:      positions += (accepted + 1) * alive     (the target cache keeps last, d_1..d_a)
               prev = d_accepted (last when nothing was accepted); last = next
               out[:, 0..2] = accepted, next, proposed; out[:, 3..3+W] = the proposal

with exactly the reference's results (decoding/round.py's `commit_reference`; integers only,
so there is no rounding to differ in). Tests run it under Triton's interpreter on CPU against
the reference; captured rounds use it when the Triton kernels can run (accel/rounds.py).

`argmax` is the greedy token choice over a vocabulary-sized row as one kernel of ~40 programs a
row (torch's reduction spends ~9 us on a 152k-id row on an H200, six times a k 5 round): the
verify's tokens for `commit`, and the draft's picks (ModelRunner.argmax).

What it does not: the sampling rule (verify.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import AVAILABLE, scratch, tl, triton

__all__ = ["argmax", "commit"]


if AVAILABLE:

    @triton.jit
    def _commit_kernel(VIN, svin, TT, stt, NACC, NXT, NUM, LAST, PREV, ALIVE, POS, OUT, sout,
                       num_all, W: tl.constexpr, BLOCK: tl.constexpr, GREEDY: tl.constexpr,
                       HAS_NUM: tl.constexpr):
        b = tl.program_id(0)
        j = tl.arange(0, BLOCK)
        in_w = j < W
        # the proposal: the verify's input past its first column (which is `last`)
        d = tl.load(VIN + b * svin + 1 + j, mask=in_w, other=0)
        last = tl.load(VIN + b * svin)
        if HAS_NUM:
            num = tl.load(NUM + b)
        else:
            num = num_all + tl.zeros((), dtype=tl.int64)
        num = tl.minimum(tl.maximum(num, 0), W)
        if GREEDY:
            t = tl.load(TT + b * stt + j, mask=j < W + 1, other=0)  # the target's argmax, [W + 1]
            miss = ((d != t) | (j >= num)) & in_w
            n_acc = tl.min(tl.where(miss, j, W), axis=0)
            nxt = tl.sum(tl.where(j == n_acc, t, 0), axis=0)
        else:
            n_acc = tl.load(NACC + b)
            nxt = tl.load(NXT + b)
        picked = tl.sum(tl.where(j == n_acc - 1, d, 0), axis=0)
        prev = tl.where(n_acc > 0, picked, last)
        alive = tl.load(ALIVE + b)
        pos = tl.load(POS + b)
        tl.store(POS + b, pos + (n_acc + 1) * alive)
        tl.store(PREV + b, prev)
        tl.store(LAST + b, nxt)
        tl.store(OUT + b * sout, n_acc)
        tl.store(OUT + b * sout + 1, nxt)
        tl.store(OUT + b * sout + 2, num)
        tl.store(OUT + b * sout + 3 + j, d, mask=in_w)


    @triton.jit
    def _argmax_kernel(X, sx, V, PV, PI, CNT, OUT, S: tl.constexpr, SB: tl.constexpr, CHUNK: tl.constexpr,
                       BLOCK: tl.constexpr):
        """Program (r, s): the max of row r over its chunk s and the first index holding it, into
        the partials; the last of the row's S programs to finish (an atomic count) reduces the S
        partials and writes the row's index. NaN counts as larger than everything (as torch)."""
        r = tl.program_id(0)
        s = tl.program_id(1)
        lane = tl.arange(0, BLOCK)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        where = tl.full([BLOCK], -1, tl.int32)
        for off in range(0, CHUNK, BLOCK):
            idx = s * CHUNK + off + lane
            x = tl.load(X + r * sx + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
            x = tl.where(x != x, float("inf"), x)
            # strict: a lane keeps its earlier index on ties; its first in-range element always
            take = ((x > best) | (where < 0)) & (idx < V)
            best = tl.where(take, x, best)
            where = tl.where(take, idx, where)
        m = tl.max(best, axis=0)
        i = tl.min(tl.where((best == m) & (where >= 0), where, 2147483647), axis=0)
        tl.store(PV + r * S + s, m)
        tl.store(PI + r * S + s, i)
        tl.debug_barrier()
        done = tl.atomic_add(CNT + r, 1, sem="acq_rel")
        if done == S - 1:
            j = tl.arange(0, SB)
            pv = tl.load(PV + r * S + j, mask=j < S, other=float("-inf"), cache_modifier=".cg")
            pi = tl.load(PI + r * S + j, mask=j < S, other=2147483647, cache_modifier=".cg")
            m = tl.max(pv, axis=0)
            i = tl.min(tl.where(pv == m, pi, 2147483647), axis=0)
            tl.store(OUT + r, i.to(tl.int64))
            tl.atomic_xchg(CNT + r, 0)  # ready for the next launch


ARGMAX_CHUNK = 4096  # vocabulary ids per program (a 152k vocabulary: 38 programs a row)


def argmax(logits: Tensor) -> Tensor:
    """logits [..., V] (any float dtype, last dimension contiguous) -> the first index of each row's
    maximum, int64 [...] (torch.argmax's result), as one kernel of many programs a row: torch's
    reduction reads a 152k-id row with few programs (~9 us on an H200)."""
    lead, v = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, v)
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows = x.shape[0]
    parts = triton.cdiv(v, ARGMAX_CHUNK)
    pv = scratch(x.device, "argmax maxima", rows * parts, torch.float32, least=16384)
    pi = scratch(x.device, "argmax indices", rows * parts, torch.int32, least=16384)
    cnt = scratch(x.device, "argmax counters", rows, torch.int32)  # each row's last program resets it
    out = torch.empty(rows, dtype=torch.long, device=x.device)
    if rows:
        _argmax_kernel[(rows, parts)](x, x.stride(0), v, pv, pi, cnt, out, S=parts,
                                      SB=triton.next_power_of_2(parts), CHUNK=ARGMAX_CHUNK,
                                      BLOCK=min(1024, triton.next_power_of_2(v)), num_warps=4)
    return out.view(lead)


def commit(verify_in: Tensor, cache, bufs, num_proposed: Tensor | int,
           target_tokens: Tensor | None = None, accepted: Tensor | None = None,
           next_token: Tensor | None = None, logits: Tensor | None = None) -> None:
    """Accept (greedy: from `target_tokens` [B, W+1], the verify's argmax) or take `accepted` and
    `next_token` [B] (sampling), and commit the round in place: the target cache's lengths
    (`cache.positions`), `bufs.prev`, `bufs.last`, `bufs.out` (see the module doc).

    verify_in [B, W+1] int64: [last, proposal]; num_proposed: [B] int64, or an int for every row.
    All int64 and contiguous in their last dimension; one launch (two with `logits` [B, W+1, V],
    greedy, instead of target_tokens: their `argmax` first), no host synchronisation."""
    B, w1 = verify_in.shape
    width = w1 - 1
    if logits is not None:
        target_tokens = argmax(logits)
    greedy = target_tokens is not None
    if not greedy and (accepted is None or next_token is None):
        raise ValueError("commit needs the target's tokens (greedy) or accepted and next_token (sampling)")
    has_num = isinstance(num_proposed, Tensor)
    positions = cache.positions
    dummy = positions
    _commit_kernel[(B,)](
        verify_in, verify_in.stride(0),
        target_tokens if greedy else dummy, target_tokens.stride(0) if greedy else 0,
        accepted if not greedy else dummy, next_token if not greedy else dummy,
        num_proposed if has_num else dummy, bufs.last, bufs.prev, bufs.alive, positions,
        bufs.out, bufs.out.stride(0), 0 if has_num else int(num_proposed),
        W=width, BLOCK=triton.next_power_of_2(width + 1), GREEDY=greedy, HAS_NUM=has_num, num_warps=1)


def usable(device: torch.device) -> bool:
    """Whether captured rounds on `device` commit with the kernel (CUDA with Triton)."""
    return AVAILABLE and device.type == "cuda"
