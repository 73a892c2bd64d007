"""Adaptive draft length (`--k auto`): a policy object the engine asks for k every round.

The rule (one k for the whole batch, so every step keeps one shape) is Leviathan et al.'s
expected speedup, evaluated on what this run has seen:

  * the acceptance rate α̂: each drafting row's round is a run of accepted tokens ended by
    one rejection (or by the end of its block, which says nothing more), so α̂ = accepted /
    (accepted + rejections), with the counts of earlier rounds decayed by `decay` per round
    (a window of ~10 rounds: code, prose and boilerplate within one answer draft differently)
    and a weak prior (PRIOR_ALPHA, worth PRIOR_WEIGHT tokens);
  * the cost of a round of k draft tokens: the rounds' measured times where the engine
    gives them (`set_costs`: a captured round graph is timed once when it is captured, so
    the cost includes the verify's real width and every kernel the round runs), a line
    through them for a k not measured, and without any measurement k·c + 1 target steps,
    with c the draft/target cost ratio the caller passes (the pair's parameter ratio);
  * k = argmax over 1..max_k of (1 - α̂^(k+1)) / ((1 - α̂) · cost(k)): expected tokens per
    unit of time.

So k follows the local acceptance: with the model alone at c = 0.45, k = 1 at α̂ = 0.7, 3 at
0.9, 6 at 0.95 and 8 from 0.97; measured costs, whose fixed part (the verify) is usually
more than one target step, move it up (the real Qwen2.5-Coder 0.5B/1.5B pair's rounds cost
about 1.65 + 0.575 k ms on the H200: k = 4 at α̂ = 0.9). On an exact tie the smaller k wins.

What it does not: look at the draft's probabilities (the engine's confidence stop does, on
eager rounds), or choose k per row (a drafter may still propose fewer than k per row through
`Draft.num_proposed`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..metrics import expected_tokens_per_round

__all__ = ["AdaptiveK", "PRIOR_ALPHA", "PRIOR_WEIGHT"]

PRIOR_ALPHA = 0.8  # the acceptance rate assumed before any round (a matched pair's typical)
PRIOR_WEIGHT = 2.0  # in draft tokens: the first rounds outweigh it at once


class AdaptiveK:
    """`--k auto`: `k` is the current draft length, in [1, max_k]; call `update` once per round."""

    def __init__(self, max_k: int = 8, start: int | None = None, cost_ratio: float = 0.5,
                 decay: float = 0.9) -> None:
        """cost_ratio: c, a draft step's cost in target steps, for the cost model before any
        measured round (see the module doc); start: the first k (default: the best k at the
        prior acceptance); decay: per-round weight of earlier rounds' counts, in (0, 1]."""
        if max_k < 1:
            raise ValueError(f"max_k must be at least 1, got {max_k}")
        if cost_ratio < 0:
            raise ValueError(f"cost_ratio must be at least 0, got {cost_ratio}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.max_k = int(max_k)
        self.cost_ratio = float(cost_ratio)
        self.decay = float(decay)
        self.accepted = PRIOR_ALPHA * PRIOR_WEIGHT  # decayed counts, the prior included
        self.rejected = (1.0 - PRIOR_ALPHA) * PRIOR_WEIGHT
        self.costs: dict[int, float] = {}  # measured round cost by k (any unit)
        self._line: tuple[float, float, float] | None = None  # fitted in set_costs
        self.k = self.best() if start is None else max(1, min(int(start), self.max_k))
        self.history: list[int] = [self.k]  # k after every update (for reports and tests)

    @property
    def alpha(self) -> float:
        """The current acceptance estimate α̂."""
        return self.accepted / (self.accepted + self.rejected)

    def set_costs(self, costs: Mapping[int, float]) -> None:
        """Measured round costs by k (e.g. ms per captured round); replaces the cost model where
        given, and the k is chosen again at once."""
        self.costs = {int(k): float(v) for k, v in costs.items() if 1 <= int(k) <= self.max_k and v > 0}
        self._line = None  # (mean k, mean cost, slope) of the measured costs, when two or more
        if len(self.costs) >= 2:
            ks, vs = list(self.costs), list(self.costs.values())
            mk, mv = sum(ks) / len(ks), sum(vs) / len(vs)
            slope = sum((a - mk) * (b - mv) for a, b in zip(ks, vs)) / sum((a - mk) ** 2 for a in ks)
            self._line = (mk, mv, max(slope, 0.0))
        self.k = self.best()

    def cost(self, k: int) -> float:
        """A round's cost with k draft tokens: measured, on the line through the measured costs,
        or k·c + 1 (scaled through the one measured k)."""
        if k in self.costs:
            return self.costs[k]
        if self._line is not None:
            mk, mv, slope = self._line
            fit = mv + slope * (k - mk)
            return fit if fit > 0 else min(self.costs.values())
        model = 1.0 + self.cost_ratio * k
        if self.costs:
            (k0, v0), = self.costs.items()
            return v0 * model / (1.0 + self.cost_ratio * k0)
        return model

    def expected_rate(self, k: int) -> float:
        """Expected tokens per unit of cost at the current α̂ with k draft tokens."""
        return expected_tokens_per_round(self.alpha, k) / self.cost(k)

    def best(self) -> int:
        """The k in [1, max_k] with the highest expected rate; the smallest on a tie."""
        rates = [(self.expected_rate(k), -k) for k in range(1, self.max_k + 1)]
        return -max(rates)[1]

    def update(self, num_accepted: Sequence[int], proposed: Sequence[int]) -> int:
        """One round's per-row accepted and proposed counts -> the k for the next round."""
        accepted = rejected = 0
        for a, p in zip(num_accepted, proposed):
            if p <= 0:
                continue  # the row drafted nothing: no evidence
            accepted += min(a, p)
            rejected += a < p  # a block kept whole ends without a rejection
        if accepted or rejected:
            self.accepted = self.decay * self.accepted + accepted
            self.rejected = self.decay * self.rejected + rejected
            self.k = self.best()
        self.history.append(self.k)
        return self.k

    def __repr__(self) -> str:
        return f"AdaptiveK(k={self.k}, max_k={self.max_k}, alpha={self.alpha:.3f})"
