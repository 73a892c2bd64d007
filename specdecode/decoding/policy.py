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

With the drafter's confidence stop decided on the device (`stop=True`: a row stops drafting after
a token the draft gave too little probability, and a captured round skips its steps once every
row has) k is a cap, not the round's length, and the rule prices what the stop leaves. (The
caller turns it on where round costs are measured, full and shortest: captured rounds. Priced
by the k·c + 1 model alone, which leaves the verify's rows out, a longer cap lost on the CPU.) From the rounds' (accepted,
proposed) counts, with their k (`update(..., k=)`), it keeps three more decayed rates: p̂, that
a proposed token is confident (tokens 1..p-1 of a row that proposed p were; token p was not when
p < k; a row that proposed all k counts its last as confident, which it may not have been: the
optimistic guess lets a run at a small k find out that a longer cap pays), and the acceptance of
confident and of unconfident tokens, α̂c and α̂u (as far as the counts show them). Then, tokens
independent and B rows a round:

  * tokens a round: 1 + α̂all · Σ_{i<k} (p̂ α̂c)^i, with α̂all = p̂ α̂c + (1 - p̂) α̂u (token i is
    proposed when tokens before it were confident, kept when they and it were accepted);
  * draft steps a round: Σ_{i<k} 1 - (1 - p̂^i)^B (step i + 1 runs while some row drafts);
  * a round's cost: the full round's, less a step's cost for each step skipped: measured as
    (full - shortest) / (k - 1) where the engine gives the shortest rounds' costs too
    (`set_costs(..., shortest=)`: the round graph timed with the stop firing after its first
    step), else the slope through the measured costs, else c.

So a draft that stays confident gets the plain rule, and one that stops early gets a longer cap
for the rounds where it does not. Until a round's counts come with their k (`update` without
k), the plain rule.

Measured costs are the round graphs' device times, which leave out what passes between two
rounds: the gap between graphs, and the host's share of a round where it falls behind the
device. That time is the same whatever k, so leaving it out prices short rounds too cheaply
(on an H100 the real pair's rounds took 0.14-0.19 ms more than their graphs, and `--k auto`
ran at a mean k of 3.8 where k 5 was fastest). The engine reports each round's wall time
(`observe_time`: result to result, while the next round was already queued) and the median of
what it exceeds the round's measured cost by, over the last rounds (`gaps`, a window a decoder
keeps across its batches), is added to every measured cost once GAP_SAMPLES rounds are in.

What it does not: choose k per row (a drafter may still propose fewer than k per row through
`Draft.num_proposed`).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence

from ..metrics import expected_tokens_per_round

__all__ = ["AdaptiveK", "GAP_SAMPLES", "GAP_WINDOW", "PRIOR_ALPHA", "PRIOR_UNCONFIDENT_ALPHA", "PRIOR_WEIGHT",
           "round_gaps"]

PRIOR_ALPHA = 0.8  # the acceptance rate assumed before any round (a matched pair's typical)
PRIOR_UNCONFIDENT_ALPHA = 0.5  # with the confidence stop: a token the draft was unsure of
PRIOR_WEIGHT = 2.0  # in draft tokens: the first rounds outweigh it at once
GAP_SAMPLES = 8  # rounds timed before the time between rounds is priced
GAP_WINDOW = 32  # the last rounds whose median prices it


def round_gaps() -> deque:
    """A window of measured gaps between rounds, for AdaptiveK(gaps=): a decoder keeps one across
    its batches, so each batch's policy starts from what earlier ones measured."""
    return deque(maxlen=GAP_WINDOW)


class AdaptiveK:
    """`--k auto`: `k` is the current draft length, in [1, max_k]; call `update` once per round."""

    def __init__(self, max_k: int = 8, start: int | None = None, cost_ratio: float = 0.5,
                 decay: float = 0.9, stop: bool = False, gaps: deque | None = None) -> None:
        """cost_ratio: c, a draft step's cost in target steps, for the cost model before any
        measured round (see the module doc); start: the first k (default: the best k at the
        prior acceptance); decay: per-round weight of earlier rounds' counts, in (0, 1]; stop:
        the drafter stops a round's proposal at its confidence stop (k is then a cap); gaps: the
        window of measured time between rounds (`round_gaps()`; shared to carry it across
        batches), a new one when None."""
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
        self.shortest: dict[int, float] = {}  # the same rounds when the stop fires after step 1
        self._line: tuple[float, float, float] | None = None  # fitted in set_costs
        self.stop = bool(stop)
        # with the stop: decayed counts of proposed tokens confident / not, and of accepted and
        # rejected tokens among each (priors: confident, accepted at PRIOR_ALPHA / at
        # PRIOR_UNCONFIDENT_ALPHA)
        self.confident, self.unconfident = PRIOR_WEIGHT, 0.0
        self._kept = {True: PRIOR_ALPHA * PRIOR_WEIGHT, False: PRIOR_UNCONFIDENT_ALPHA * PRIOR_WEIGHT}
        self._lost = {True: (1.0 - PRIOR_ALPHA) * PRIOR_WEIGHT, False: (1.0 - PRIOR_UNCONFIDENT_ALPHA) * PRIOR_WEIGHT}
        self.rows = 1  # rows of the last round (the stop skips a step only when every row stopped)
        self.stop_rounds = 0  # rounds whose counts came with their k (the stop's evidence)
        self.gaps = round_gaps() if gaps is None else gaps
        self.gap = 0.0  # what a round costs beyond its measured cost (priced once costs are measured)
        self.k = self.best() if start is None else max(1, min(int(start), self.max_k))
        self.history: list[int] = [self.k]  # k after every update (for reports and tests)

    @property
    def alpha(self) -> float:
        """The current acceptance estimate α̂."""
        return self.accepted / (self.accepted + self.rejected)

    @property
    def confident_rate(self) -> float:
        """p̂: the share of proposed tokens the draft was confident of (1 without the stop)."""
        return self.confident / (self.confident + self.unconfident) if self.stop else 1.0

    def _rate(self, confident: bool) -> float:
        return self._kept[confident] / (self._kept[confident] + self._lost[confident])

    def drop_stop(self) -> None:
        """The drafter no longer stops on the device (a capture could not branch and turned its stop
        off, ModelDrafter.drop_device_stop): every round runs all k steps, priced as such from now on."""
        self.stop = False
        self.shortest = {}
        self.k = self.best()

    def set_costs(self, costs: Mapping[int, float], shortest: Mapping[int, float] | None = None) -> None:
        """Measured round costs by k (e.g. ms per captured round); replaces the cost model where
        given, and the k is chosen again at once. `shortest`: the same rounds' costs when the
        confidence stop fires after the first draft step (every later step skipped)."""
        self.costs = {int(k): float(v) for k, v in costs.items() if 1 <= int(k) <= self.max_k and v > 0}
        self.shortest = {int(k): float(v) for k, v in (shortest or {}).items()
                         if int(k) in self.costs and 0 < v <= self.costs[int(k)]}
        self._line = None  # (mean k, mean cost, slope) of the measured costs, when two or more
        if len(self.costs) >= 2:
            ks, vs = list(self.costs), list(self.costs.values())
            mk, mv = sum(ks) / len(ks), sum(vs) / len(vs)
            slope = sum((a - mk) * (b - mv) for a, b in zip(ks, vs)) / sum((a - mk) ** 2 for a in ks)
            self._line = (mk, mv, max(slope, 0.0))
        self.gap = self._median_gap()
        self.k = self.best()

    def _measured(self, k: int) -> float:
        """A round's device cost with k draft tokens from the measured costs: measured, or on the
        line through them, or scaled through the one measured k by the k·c + 1 model."""
        if k in self.costs:
            return self.costs[k]
        if self._line is not None:
            mk, mv, slope = self._line
            fit = mv + slope * (k - mk)
            return fit if fit > 0 else min(self.costs.values())
        (k0, v0), = self.costs.items()
        return v0 * (1.0 + self.cost_ratio * k) / (1.0 + self.cost_ratio * k0)

    def cost(self, k: int) -> float:
        """A round's cost with k draft tokens: its measured device cost plus the measured time
        between rounds (see the module doc), or k·c + 1 target steps before any measurement."""
        if self.costs:
            return self._measured(k) + self.gap
        return 1.0 + self.cost_ratio * k

    def _median_gap(self) -> float:
        if not self.costs or len(self.gaps) < GAP_SAMPLES:
            return 0.0
        return max(0.0, statistics.median(self.gaps))

    def observe_time(self, k: int, ms: float) -> None:
        """A round of k took `ms` of wall time, result to result, with the next round already
        queued behind it. What that exceeds its measured device cost by joins the window, and the
        window's median (from GAP_SAMPLES rounds on) is priced into every round. Not with the
        confidence stop, whose rounds run fewer steps than their measured cost."""
        if self.stop or not self.costs:
            return
        self.gaps.append(ms - self._measured(k))
        gap = self._median_gap()
        if gap != self.gap:
            self.gap = gap
            self.k = self.best()

    def step_saving(self, k: int) -> float:
        """What a round of k saves per draft step the stop skips, in cost units."""
        measured = {j: (self.costs[j] - v) / (j - 1) for j, v in self.shortest.items() if j > 1}
        if k in measured:
            return measured[k]
        if measured:
            return sum(measured.values()) / len(measured)
        if self._line is not None:
            return self._line[2]  # the slope: a step and the verify's extra row, a little more than a step
        return self.cost(k) - self.cost(k - 1)  # one measured cost or none: the k·c + 1 model's step

    def expected_steps(self, k: int) -> float:
        """Draft steps a round of k runs: k, or fewer where the stop ends every row's proposal."""
        if not self.stop:
            return float(k)
        pc = self.confident_rate  # 1 until a stop is seen (the prior counts no unconfident token)
        return sum(1.0 - (1.0 - pc ** i) ** self.rows for i in range(k))

    def expected_tokens(self, k: int) -> float:
        """Tokens a row emits a round of k (see the module doc)."""
        if not self.stop or not self.stop_rounds:
            return expected_tokens_per_round(self.alpha, k)
        pc, ac, au = self.confident_rate, self._rate(True), self._rate(False)
        run = pc * ac  # a token proposed after a confident, accepted one
        return 1.0 + (pc * ac + (1.0 - pc) * au) * sum(run ** i for i in range(k))

    def expected_cost(self, k: int) -> float:
        """A round's cost with a cap of k: the full round's, less the steps the stop skips."""
        full = self.cost(k)
        if not self.stop or k <= 1:
            return full
        return max(full - (k - self.expected_steps(k)) * self.step_saving(k), 1e-9)

    def expected_rate(self, k: int) -> float:
        """Expected tokens per unit of cost at the current estimates with k draft tokens."""
        return self.expected_tokens(k) / self.expected_cost(k)

    def best(self) -> int:
        """The k in [1, max_k] with the highest expected rate; the smallest on a tie."""
        rates = [(self.expected_rate(k), -k) for k in range(1, self.max_k + 1)]
        return -max(rates)[1]

    def update(self, num_accepted: Sequence[int], proposed: Sequence[int], k: int | None = None) -> int:
        """One round's per-row accepted and proposed counts -> the k for the next round. `k`: the
        round's own k (with the stop, a row that proposed fewer stopped at its last token)."""
        accepted = rejected = 0
        conf = unconf = 0
        kept = {True: 0, False: 0}
        lost = {True: 0, False: 0}
        rows = 0
        for a, p in zip(num_accepted, proposed):
            if p <= 0:
                continue  # the row drafted nothing: no evidence
            rows += 1
            accepted += min(a, p)
            rejected += a < p  # a block kept whole ends without a rejection
            if self.stop and k is not None:
                # tokens 1..p-1 were confident; token p was not when the row stopped short of k. A
                # row that proposed all k never shows token k's confidence: it counts as confident
                # (optimistic, so a run at a small k still finds out whether a longer cap pays)
                sure = p if p >= k else p - 1
                conf += sure
                kept[True] += min(a, sure)
                lost[True] += a < sure
                if p < k:
                    unconf += 1
                    if a >= p - 1:  # token p was tested
                        kept[False] += a >= p
                        lost[False] += a < p
        if accepted or rejected:
            self.accepted = self.decay * self.accepted + accepted
            self.rejected = self.decay * self.rejected + rejected
            if conf or unconf:
                self.stop_rounds += 1
                d = self.decay
                self.confident, self.unconfident = d * self.confident + conf, d * self.unconfident + unconf
                for c in (True, False):
                    self._kept[c] = d * self._kept[c] + kept[c]
                    self._lost[c] = d * self._lost[c] + lost[c]
            self.rows = max(rows, 1)
            self.k = self.best()
        self.history.append(self.k)
        return self.k

    def __repr__(self) -> str:
        stop = f", confident={self.confident_rate:.3f}" if self.stop else ""
        return f"AdaptiveK(k={self.k}, max_k={self.max_k}, alpha={self.alpha:.3f}{stop})"
