"""Adaptive draft length (`--k auto`): a policy object the engine asks for k every round.

The rule (one k for the whole batch, so every step keeps one shape):

  * start at k = min(4, max_k);
  * after each round, look only at the rows that proposed at least one token;
  * if at least half of them accepted everything they proposed, k += 1 (up to max_k):
    the draft is running ahead of the target, so longer blocks pay;
  * otherwise, if the round's acceptance rate (accepted / proposed over those rows) is
    below 0.5, k -= 1 (down to 1): most of the block was wasted verification;
  * otherwise k stays.

At batch 1 with i.i.d. acceptance α this settles where the chance of a fully accepted
block (α^k) balances the chance of losing more than half of it: about k = 1-2 at α = 0.6,
4-5 at α = 0.8 and max_k from α ≈ 0.9, close to the k that maximises the expected speedup
(1 - α^(k+1)) / ((1 - α)(k·c + 1)) for a cheap draft (c ≈ 0.1). It is the additive
increase / decrease of Hugging Face's "heuristic" assistant schedule (+2 on a full
acceptance, -1 otherwise), made batch-aware and less eager to shrink after one rejection
late in the block.

What it does not: look at timings or the draft's probabilities, or stop drafting per row
(a drafter may still propose fewer than k per row through `Draft.num_proposed`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["AdaptiveK"]


class AdaptiveK:
    """`--k auto`: `k` is the current draft length, in [1, max_k]; call `update` once per round."""

    def __init__(self, max_k: int = 8, start: int = 4, raise_share: float = 0.5, lower_below: float = 0.5) -> None:
        if max_k < 1:
            raise ValueError(f"max_k must be at least 1, got {max_k}")
        self.max_k = int(max_k)
        self.k = max(1, min(int(start), self.max_k))
        self.raise_share = raise_share  # share of drafting rows that kept their whole block
        self.lower_below = lower_below  # round acceptance rate under which k shrinks
        self.history: list[int] = [self.k]  # k after every update (for reports and tests)

    def update(self, num_accepted: Sequence[int], proposed: Sequence[int]) -> int:
        """One round's per-row accepted and proposed counts -> the k for the next round."""
        drafting = [(a, p) for a, p in zip(num_accepted, proposed) if p > 0]
        if drafting:
            full = sum(1 for a, p in drafting if a >= p) / len(drafting)
            rate = sum(a for a, _ in drafting) / sum(p for _, p in drafting)
            if full >= self.raise_share:
                self.k = min(self.max_k, self.k + 1)
            elif rate < self.lower_below:
                self.k = max(1, self.k - 1)
        self.history.append(self.k)
        return self.k

    def __repr__(self) -> str:
        return f"AdaptiveK(k={self.k}, max_k={self.max_k})"
