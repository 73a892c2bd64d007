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

What it does not: the argmax over the vocabulary (torch's reduction is one kernel already) or
the sampling rule (verify.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import AVAILABLE, tl, triton

__all__ = ["commit"]


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


def commit(verify_in: Tensor, cache, bufs, num_proposed: Tensor | int,
           target_tokens: Tensor | None = None, accepted: Tensor | None = None,
           next_token: Tensor | None = None) -> None:
    """Accept (greedy: from `target_tokens` [B, W+1], the verify's argmax) or take `accepted` and
    `next_token` [B] (sampling), and commit the round in place: the target cache's lengths
    (`cache.positions`), `bufs.prev`, `bufs.last`, `bufs.out` (see the module doc).

    verify_in [B, W+1] int64: [last, proposal]; num_proposed: [B] int64, or an int for every row.
    All int64 and contiguous in their last dimension; one launch, no host synchronisation."""
    B, w1 = verify_in.shape
    width = w1 - 1
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
