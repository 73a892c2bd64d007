"""Pure acceptance functions: draft tokens + target output -> per row, tokens accepted and the next token.

What it does:
  * `verify_greedy`: accept the longest prefix where draft == argmax(target); the next token is the
    target's argmax right after it (the recovered token, or the bonus token when all are accepted).
  * `verify_sampling`: the speculative sampling rule of Leviathan et al. 2022 (Algorithm 1) and
    Chen et al. 2023 (Algorithm 2), which makes the emitted tokens follow the target's processed
    distribution p exactly, whatever the draft's distribution q.

Shapes: B rows, k draft tokens per row, V vocabulary. `target_*[:, j]` is the target's
prediction for the token after the j-th input of the verifying forward, so position j < k
verifies `draft_tokens[:, j]` and position k gives the bonus token.
A row may propose fewer than k real tokens (`num_proposed[b] <= k`: an n-gram drafter with a short
match, adaptive k); the draft tokens at positions >= num_proposed[b] are padding, may hold any
value (even -1), and are never accepted.

What it does not: no model, no cache, no logits processing (callers pass p and q through
sampling.py), no bookkeeping of emitted tokens. No host synchronisation either (`.item()`,
`.tolist()`, `nonzero`, Python branches on tensor values): only shapes decide branches, so a
verify step can be captured in a CUDA graph. Outputs live on the inputs' device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from specdecode.decoding.sampling import sample

__all__ = ["verify_greedy", "verify_greedy_sibling", "verify_sampling"]


def _proposed_mask(num_proposed: Tensor | None, batch: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(num_proposed clamped to [0, k] as int64 [B], mask [B, k] of real, non-padding positions)."""
    if num_proposed is None:
        num_proposed = torch.full((batch,), k, dtype=torch.long, device=device)
    else:
        # Clamp on device rather than validate on the host: a value > k would otherwise let
        # position k borrow q from position k-1 in verify_sampling.
        num_proposed = num_proposed.to(device=device, dtype=torch.long).clamp(0, k)
    positions = torch.arange(k, device=device)  # [k]
    return num_proposed, positions < num_proposed[:, None]  # [B], [B, k]


def _accepted_prefix(accepted: Tensor) -> Tensor:
    """bool [B, k] per-position acceptance -> int64 [B] length of the all-accepted prefix."""
    # cumprod zeroes everything from the first rejection on; it works for k == 0 as well.
    return accepted.long().cumprod(dim=-1).sum(dim=-1)


def verify_greedy(
    draft_tokens: Tensor,
    target_logits: Tensor,
    num_proposed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Greedy verification.

    draft_tokens [B, k] int64; target_logits [B, k+1, V] (any float dtype: argmax does not need
    float32, and casting would not change it); num_proposed [B] int64 <= k or None (= all k).
    Returns (num_accepted [B] int64, next_token [B] int64): the longest prefix with
    draft == argmax(target), capped by num_proposed, and argmax(target_logits[b, num_accepted[b]]).
    """
    batch, k = draft_tokens.shape
    if target_logits.shape[:2] != (batch, k + 1):
        raise ValueError(f"target_logits must be [B, k+1, V] = [{batch}, {k + 1}, V], got {tuple(target_logits.shape)}")
    _, num_accepted, next_token = _greedy_prefix(draft_tokens, target_logits.argmax(dim=-1), num_proposed)
    return num_accepted, next_token


def _greedy_prefix(draft_tokens: Tensor, target_tokens: Tensor, num_proposed: Tensor | None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(num_proposed clamped [B], the longest prefix of draft_tokens [B, k] equal to target_tokens
    [B, >= k+1] within each row's proposal [B], the target's token right after it [B])."""
    batch, k = draft_tokens.shape
    device = target_tokens.device
    num, proposed = _proposed_mask(num_proposed, batch, k, device)  # [B], [B, k]
    # Out-of-vocabulary or padding ids simply never match an argmax.
    matches = (draft_tokens.to(device) == target_tokens[:, :k]) & proposed  # [B, k]
    num_accepted = _accepted_prefix(matches)  # [B]
    return num, num_accepted, target_tokens.gather(1, num_accepted[:, None]).squeeze(1)


def verify_greedy_sibling(
    draft_tokens: Tensor,
    sibling: Tensor,
    target_tokens: Tensor,
    num_proposed: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy verification of a token tree of one sibling: besides its proposal d_1 .. d_k, each
    row proposed `sibling` [B] as an alternative to its last proposed token d_n (n = num_proposed),
    verified in one more position. target_tokens [B, k+2] int64: the target's argmax after each
    input of [last, d_1 .. d_k, sibling], the sibling's at k+1 (it follows last, d_1 .. d_{n-1}).

    Returns (num_accepted [B], next_token [B], taken [B] bool). As verify_greedy; but where the row
    rejects d_n itself (it accepted n - 1) and the target's token there is the sibling, the sibling
    is accepted in its place (num_accepted = n, the n-th accepted token being the sibling) and the
    next token is the target's after the sibling: the same tokens the target alone would emit."""
    batch, k = draft_tokens.shape
    if target_tokens.shape != (batch, k + 2):
        raise ValueError(f"target_tokens must be [B, k+2] = [{batch}, {k + 2}], got {tuple(target_tokens.shape)}")
    num, accepted, next_token = _greedy_prefix(draft_tokens, target_tokens, num_proposed)
    taken = (num > 0) & (accepted == num - 1) & (sibling == next_token)
    accepted = torch.where(taken, num, accepted)
    next_token = torch.where(taken, target_tokens[:, k + 1], next_token)
    return accepted, next_token, taken


def verify_sampling(
    draft_tokens: Tensor,
    draft_probs: Tensor | None,
    target_probs: Tensor,
    generator: torch.Generator | None = None,
    num_proposed: Tensor | None = None,
    uniform: Tensor | None = None,
    race: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Speculative sampling verification (Leviathan et al. 2022, Algorithm 1; Chen et al. 2023).

    draft_tokens [B, k] int64, each drawn from q at its position.
    draft_probs [B, k, V] float32: q, the draft's processed distribution; None = deterministic
        proposal, treated as a one-hot q at the draft token.
    target_probs [B, k+1, V] float32: p, the target's processed distribution.
    generator: the source of every random draw (uniforms, then the exponential race) that is not
        given: `uniform` [B, k] U[0, 1) and `race` [B, V] Exp(1) may be drawn beforehand (a captured
        round draws them into fixed buffers before it is launched).
    num_proposed [B] int64 <= k, or None = all k; positions >= num_proposed[b] act as q = 0.
    Returns (num_accepted [B] int64, next_token [B] int64): the index of the first rejection
    (num_proposed[b] if none), and the recovered token drawn from norm(max(0, p_j - q_j)) at
    that index, or the bonus token drawn from p at index num_accepted when nothing was rejected.
    """
    batch, k = draft_tokens.shape
    vocab = target_probs.shape[-1]
    if target_probs.shape[:2] != (batch, k + 1):
        raise ValueError(f"target_probs must be [B, k+1, V] = [{batch}, {k + 1}, V], got {tuple(target_probs.shape)}")
    if draft_probs is not None and draft_probs.shape != (batch, k, vocab):
        raise ValueError(
            f"draft_probs must be [B, k, V] = [{batch}, {k}, {vocab}] (same V as target_probs), "
            f"got {tuple(draft_probs.shape)}"
        )
    device = target_probs.device
    p = target_probs.float()  # [B, k+1, V]; no copy when already float32
    q = None if draft_probs is None else draft_probs.to(device=device, dtype=torch.float32)  # [B, k, V]
    draft_tokens = draft_tokens.to(device)
    num_proposed, proposed = _proposed_mask(num_proposed, batch, k, device)  # [B], [B, k]

    # Padding may hold any id (e.g. -1) and a draft may propose ids beyond the target's vocabulary:
    # gather at a clamped id, then zero the probability of ids the target cannot emit.
    in_vocab = (draft_tokens >= 0) & (draft_tokens < vocab)  # [B, k]
    token_index = draft_tokens.clamp(0, vocab - 1)[..., None]  # [B, k, 1]
    p_x = p[:, :k].gather(-1, token_index).squeeze(-1) * in_vocab  # [B, k]  p_j(x_j)
    if q is None:
        q_x = in_vocab.float()  # [B, k]  one-hot q: q_j(x_j) = 1
    else:
        q_x = q.gather(-1, token_index).squeeze(-1) * in_vocab  # [B, k]  q_j(x_j)

    # 1. Accept x_j with probability min(1, p_j(x_j) / q_j(x_j)) (Leviathan et al. 2022, Alg. 1):
    #    u < p/q, written u * q < p so that q(x) == 0 never divides by zero: it accepts when
    #    p(x) > 0 (ratio +inf) and rejects when p(x) == 0. u is in [0, 1), so p >= q always accepts.
    if uniform is None:
        uniform = torch.rand((batch, k), generator=generator, device=device, dtype=torch.float32)  # [B, k]
    accepted = (uniform * q_x < p_x) & proposed  # [B, k]
    num_accepted = _accepted_prefix(accepted)  # [B], in [0, num_proposed]

    # 2. The distribution of the next token, at position j = num_accepted, per row:
    #    j < num_proposed (a rejection): norm(max(0, p_j - q_j)), the recovered token;
    #    j == num_proposed (none rejected): q_j := 0, so the residual is p_j itself (the bonus token
    #    when j == k, and exactly the right distribution for a row that proposed fewer than k).
    position_index = num_accepted[:, None, None].expand(batch, 1, vocab)  # [B, 1, V]
    p_j = p.gather(1, position_index).squeeze(1)  # [B, V]
    rejected_here = (num_accepted < num_proposed).float()[:, None]  # [B, 1]
    if k == 0:
        q_j = torch.zeros_like(p_j)  # [B, V]; nothing was proposed, the token comes from p_0
    else:
        # Gather at min(j, k-1) so j == k stays in range; rejected_here zeroes that case anyway.
        draft_index = num_accepted.clamp(max=k - 1)  # [B]
        if q is None:
            x_j = token_index.squeeze(-1).gather(1, draft_index[:, None])  # [B, 1]
            live = in_vocab.gather(1, draft_index[:, None]).float()  # [B, 1]
            q_j = torch.zeros_like(p_j).scatter_(-1, x_j, live)  # [B, V] one-hot at x_j
        else:
            q_j = q.gather(1, draft_index[:, None, None].expand(batch, 1, vocab)).squeeze(1)  # [B, V]
        q_j = q_j * rejected_here
    residual = (p_j - q_j).clamp_min(0.0)  # [B, V]

    # A residual that sums to 0 means p_j <= q_j everywhere (p == q numerically, or a draft token
    # with p = q = 0 was forced through): fall back to p_j rather than sample from nothing.
    # `sample` is scale invariant, so neither distribution needs normalising.
    empty = residual.sum(dim=-1, keepdim=True) <= 0  # [B, 1]
    next_distribution = torch.where(empty, p_j, residual)  # [B, V]
    next_token = sample(next_distribution, generator, race=race)  # [B]
    return num_accepted, next_token
