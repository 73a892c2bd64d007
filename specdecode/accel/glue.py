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

`accept_overlapped` does the same for an overlapped round (decoding/round.py's
`accept_overlapped_reference`): the tested tokens (e_1 .. e_k and f_1, or f_1 alone), the
accepted prefix, f_1 or the target's token as the round's own, the commit, and f_2 .. f_{k+1}
as the next proposal with its flag, one program a row.

`argmax` is the greedy token choice over a vocabulary-sized row as one kernel of ~40 programs a
row (torch's reduction spends ~9 us on a 152k-id row on an H200, six times a k 5 round): the
verify's tokens for `commit`, and the draft's picks (ModelRunner.argmax).

What it does not: the sampling rule (verify.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import AVAILABLE, scratch, tl, triton

__all__ = ["accept_overlapped", "argmax", "commit"]


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
    def _overlapped_kernel(AHEAD, sah, OK, F, sf, TT, stt, NACC, NXT, LAST, PREV, ALIVE, POS, OUT, sout,
                           K: tl.constexpr, BLOCK: tl.constexpr, GREEDY: tl.constexpr):
        """One row of an overlapped round (decoding/round.py's accept_overlapped_reference): every
        value is loaded before anything is stored, and the stores touch what the loads read only
        in this row."""
        b = tl.program_id(0)
        j = tl.arange(0, BLOCK)
        good = tl.load(OK + b)
        e = tl.load(AHEAD + b * sah + j, mask=j < K, other=0)  # the proposal e_1 .. e_k
        f = tl.load(F + b * sf + j, mask=j < K + 1, other=0)  # f_1 .. f_{k+1}
        f_next = tl.load(F + b * sf + 1 + j, mask=j < K, other=0)  # f_2 .. f_{k+1}: the next proposal
        f1 = tl.sum(tl.where(j == 0, f, 0), axis=0)
        last = tl.load(LAST + b)
        alive = tl.load(ALIVE + b)
        pos = tl.load(POS + b)
        n = good * K + 1  # tokens tested: e_1 .. e_k, f_1 (good), or f_1 alone
        if GREEDY:
            t = tl.load(TT + b * stt + j, mask=j < K + 1, other=0)  # the target's argmax, [k + 1]
            tested = tl.where(good != 0, tl.where(j < K, e, f1), tl.where(j == 0, f1, 0))
            miss = ((tested != t) | (j >= n)) & (j < K + 1)
            n_acc = tl.min(tl.where(miss, j, n), axis=0)
            own = tl.sum(tl.where(j == tl.minimum(n_acc, K), t, 0), axis=0)
        else:
            n_acc = tl.load(NACC + b)
            own = tl.load(NXT + b)
        kept = n_acc == n
        nxt = tl.where(kept, f1, own)
        acc = tl.where(good != 0, tl.minimum(n_acc, K), 0)  # of the e's
        picked = tl.sum(tl.where(j == acc - 1, e, 0), axis=0)
        prev = tl.where(acc > 0, picked, last)
        tl.store(POS + b, pos + (acc + 1) * alive)
        tl.store(PREV + b, prev)
        tl.store(LAST + b, nxt)
        tl.store(OUT + b * sout, acc)
        tl.store(OUT + b * sout + 1, nxt)
        tl.store(OUT + b * sout + 2, good * K)
        tl.store(OUT + b * sout + 3 + j, e, mask=j < K)
        tl.store(AHEAD + b * sah + j, f_next, mask=j < K)
        tl.store(OK + b, kept.to(tl.int64) * alive)


    @triton.jit
    def _argmax_kernel(X, sx, V, PV, PI, CNT, OUT, EXC, S: tl.constexpr, SB: tl.constexpr, CHUNK: tl.constexpr,
                       BLOCK: tl.constexpr, HAS_EXC: tl.constexpr):
        """Program (r, s): the max of row r over its chunk s and the first index holding it, into
        the partials; the last of the row's S programs to finish (an atomic count) reduces the S
        partials and writes the row's index. NaN counts as larger than everything (as torch).
        HAS_EXC: id EXC[r] counts as -inf (the row's second choice, given its first)."""
        r = tl.program_id(0)
        s = tl.program_id(1)
        lane = tl.arange(0, BLOCK)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        where = tl.full([BLOCK], -1, tl.int32)
        exc = -1
        if HAS_EXC:
            exc = tl.load(EXC + r)
        for off in range(0, CHUNK, BLOCK):
            idx = s * CHUNK + off + lane
            x = tl.load(X + r * sx + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
            x = tl.where(x != x, float("inf"), x)
            if HAS_EXC:
                x = tl.where(idx == exc, float("-inf"), x)
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


def argmax(logits: Tensor, exclude: Tensor | None = None) -> Tensor:
    """logits [..., V] (any float dtype, last dimension contiguous) -> the first index of each row's
    maximum, int64 [...] (torch.argmax's result), as one kernel of many programs a row: torch's
    reduction reads a 152k-id row with few programs (~9 us on an H200). `exclude` [...] int64: each
    row's id that counts as -inf (its second choice given its first: no copy of the logits)."""
    lead, v = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, v)
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows = x.shape[0]
    exc = exclude.reshape(-1) if exclude is not None else None
    if exc is not None and exc.stride(-1) != 1:
        exc = exc.contiguous()
    parts = triton.cdiv(v, ARGMAX_CHUNK)
    pv = scratch(x.device, "argmax maxima", rows * parts, torch.float32, least=16384)
    pi = scratch(x.device, "argmax indices", rows * parts, torch.int32, least=16384)
    cnt = scratch(x.device, "argmax counters", rows, torch.int32)  # each row's last program resets it
    out = torch.empty(rows, dtype=torch.long, device=x.device)
    if rows:
        _argmax_kernel[(rows, parts)](x, x.stride(0), v, pv, pi, cnt, out, exc if exc is not None else out,
                                      S=parts, SB=triton.next_power_of_2(parts), CHUNK=ARGMAX_CHUNK,
                                      BLOCK=min(1024, triton.next_power_of_2(v)), HAS_EXC=exc is not None,
                                      num_warps=4)
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


def accept_overlapped(cache, bufs, k: int, draft_tokens: Tensor, target_tokens: Tensor | None = None,
                      accepted: Tensor | None = None, own: Tensor | None = None, logits: Tensor | None = None) -> None:
    """An overlapped round's acceptance and commit (decoding/round.py's accept_overlapped_reference,
    the same arguments and results) as one kernel, one program a row (two launches with `logits`
    [B, k+1, V], greedy: their `argmax` first). Saves the twenty-odd small kernels of the reference
    inside a captured round. draft_tokens [B, k+1] = f_1 .. f_{k+1}; all int64, contiguous rows."""
    B = draft_tokens.shape[0]
    if logits is not None and target_tokens is None and accepted is None:
        target_tokens = argmax(logits)  # [B, k+1]
    greedy = accepted is None
    if greedy and target_tokens is None:
        raise ValueError("accept_overlapped needs the target's tokens (greedy) or accepted and own (sampling)")
    f = draft_tokens if draft_tokens.stride(-1) == 1 else draft_tokens.contiguous()
    dummy = bufs.last
    tt = target_tokens if greedy else dummy
    _overlapped_kernel[(B,)](
        bufs.ahead, bufs.ahead.stride(0), bufs.ahead_ok, f, f.stride(0), tt, tt.stride(0) if greedy else 0,
        accepted if not greedy else dummy, own if not greedy else dummy, bufs.last, bufs.prev, bufs.alive,
        cache.positions, bufs.out, bufs.out.stride(0),
        K=k, BLOCK=triton.next_power_of_2(k + 1), GREEDY=greedy, num_warps=1)


def usable(device: torch.device) -> bool:
    """Whether captured rounds on `device` commit with the kernel (CUDA with Triton)."""
    return AVAILABLE and device.type == "cuda"
