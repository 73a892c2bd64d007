"""Counters and derived figures: percentiles, speedup, acceptance, Leviathan's predictions.

Pure functions over numbers and simple records (RowStats, GenerationStats, or anything
with the same attributes): no torch, no timing, no printing. bench, compare and inspect
compute every figure they report here, so each one is unit-tested in one place.

The predictions follow Leviathan et al. 2022 (section 3.3, Theorem 3.8), with i.i.d.
acceptance α per draft token, k draft tokens per round and c = draft step time / target
step time:

    expected tokens per round    (1 - α^(k+1)) / (1 - α)
    walltime improvement         (1 - α^(k+1)) / ((1 - α)(k·c + 1))

What it does not: measure anything (bench/runner.py does) or format it (bench/report.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "AcceptanceTotals",
    "ALPHAS",
    "KS",
    "acceptance_totals",
    "best_k",
    "conditional_position_acceptance",
    "cost_ratio",
    "expected_tokens_per_round",
    "first_mismatch",
    "iid_alpha",
    "latency_summary",
    "match_rate",
    "mean",
    "median",
    "ms_per_token",
    "overlapped_speedup",
    "overlapped_tokens_per_round",
    "percentile",
    "position_acceptance",
    "predicted",
    "predicted_speedup",
    "prediction_model",
    "prediction_table",
    "round_counts",
    "speedup",
    "throughput",
    "tokens_per_round",
]

ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)  # inspect's prediction table
KS = tuple(range(1, 9))


# ---- plain statistics --------------------------------------------------------------------


def acceptance_rate(accepted: int, proposed: int) -> float | None:
    """Accepted draft tokens / proposed draft tokens (None when nothing was proposed)."""
    return accepted / proposed if proposed else None


def block_efficiency(accepted: int, rounds: int) -> float | None:
    """Tokens emitted per round = accepted + 1, averaged over rounds (None before any round)."""
    return (accepted + rounds) / rounds if rounds else None


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default method). None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def latency_summary(values: Sequence[float]) -> dict[str, float | None]:
    """{"mean", "p50", "p90"} of a list of latencies (seconds)."""
    return {"mean": mean(values), "p50": percentile(values, 50), "p90": percentile(values, 90)}


def throughput(tokens: int, time_s: float) -> float | None:
    return tokens / time_s if time_s > 0 else None


def ms_per_token(tokens: int, time_s: float) -> float | None:
    return 1000.0 * time_s / tokens if tokens > 0 else None


def speedup(baseline_time_s: float, speculative_time_s: float,
            baseline_tokens: int | None = None, speculative_tokens: int | None = None) -> float | None:
    """Baseline wall time / speculative wall time for the same tokens.

    When token counts are given and differ (sampling can stop on EOS at different points),
    the ratio of throughputs is used instead; with equal counts the two are identical.
    """
    if baseline_time_s <= 0 or speculative_time_s <= 0:
        return None
    if baseline_tokens is None or speculative_tokens is None or baseline_tokens == speculative_tokens:
        return baseline_time_s / speculative_time_s
    if baseline_tokens <= 0:
        return None
    return (speculative_tokens / speculative_time_s) / (baseline_tokens / baseline_time_s)


def match_rate(pairs: Iterable[tuple[Sequence[int], Sequence[int]]]) -> float | None:
    """Share of (baseline ids, speculative ids) pairs that are identical; None for none."""
    n = same = 0
    for a, b in pairs:
        n += 1
        same += list(a) == list(b)
    return same / n if n else None


def first_mismatch(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (or the shorter length), None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ---- acceptance --------------------------------------------------------------------------


class _RowLike(Protocol):
    rounds: int
    draft_tokens: int
    accepted_tokens: int
    position_trials: list[int]
    position_accepts: list[int]


class AcceptanceCounts:
    """Rates from counters named accepted_tokens, draft_tokens and rounds (RowStats, AcceptanceTotals)."""

    accepted_tokens: int
    draft_tokens: int
    rounds: int

    @property
    def acceptance_rate(self) -> float | None:
        return acceptance_rate(self.accepted_tokens, self.draft_tokens)

    @property
    def block_efficiency(self) -> float | None:
        return block_efficiency(self.accepted_tokens, self.rounds)


@dataclass(frozen=True)
class AcceptanceTotals(AcceptanceCounts):
    rounds: int
    draft_tokens: int
    accepted_tokens: int
    position_trials: tuple[int, ...]
    position_accepts: tuple[int, ...]
    rejected_rounds: int | None = None  # rounds that rejected a draft token (None: not counted)

    @property
    def alpha(self) -> float | None:
        """Leviathan's per-token acceptance α, estimated under their i.i.d. model (see `iid_alpha`);
        falls back to the acceptance rate when rejections were not counted."""
        if self.rejected_rounds is None:
            return self.acceptance_rate
        return iid_alpha(self.accepted_tokens, self.rejected_rounds)

    @property
    def mean_proposed(self) -> float | None:
        """Draft tokens proposed per round (k, or less for lookup drafters that find no match)."""
        return self.draft_tokens / self.rounds if self.rounds else None

    @property
    def position_acceptance(self) -> list[float | None]:
        return position_acceptance(self.position_trials, self.position_accepts)

    def to_dict(self) -> dict[str, Any]:
        return {
            **round_counts(self),
            "rejected_rounds": self.rejected_rounds,
            "acceptance_rate": self.acceptance_rate,
            "alpha": self.alpha,
            "block_efficiency": self.block_efficiency,
            "position_acceptance": self.position_acceptance,
        }


def round_counts(row: _RowLike) -> dict[str, int]:
    """The round counters under the names the JSON contracts use (generate --json, bench)."""
    return {"rounds": row.rounds, "draft_tokens": row.draft_tokens, "accepted_tokens": row.accepted_tokens}


def acceptance_totals(rows: Iterable[_RowLike]) -> AcceptanceTotals:
    """Sum per-row counters (RowStats, GenerationStats, ...) into one total."""
    rounds = drafted = accepted = 0
    rejected: int | None = 0
    trials: list[int] = []
    accepts: list[int] = []
    for r in rows:
        rounds += r.rounds
        drafted += r.draft_tokens
        accepted += r.accepted_tokens
        rej = getattr(r, "rejected_rounds", None)
        rejected = None if rejected is None or rej is None else rejected + rej
        for j, (t, a) in enumerate(zip(r.position_trials, r.position_accepts)):
            if j >= len(trials):
                trials.append(0)
                accepts.append(0)
            trials[j] += t
            accepts[j] += a
    return AcceptanceTotals(rounds, drafted, accepted, tuple(trials), tuple(accepts), rejected)


def position_acceptance(trials: Sequence[int], accepts: Sequence[int]) -> list[float | None]:
    """Per draft position j (1..k): rounds that accepted it / rounds that proposed it.

    A token is only accepted when every token before it was (the first rejection ends the
    round), so this falls with j: under i.i.d. acceptance it is α^j. None where a position
    was never proposed.
    """
    return [a / t if t else None for t, a in zip(trials, accepts)]


def conditional_position_acceptance(trials: Sequence[int], accepts: Sequence[int]) -> list[float | None]:
    """Per draft position j: P(accept j | 1..j-1 accepted), i.e. accepts[j] / accepts[j-1]
    (j = 1: / trials[1]). Under i.i.d. acceptance every entry is α; where it drops is where
    the draft loses track of the target. Exact when every round proposes the same k."""
    out: list[float | None] = []
    prev: int | None = None
    for t, a in zip(trials, accepts):
        denom = t if prev is None else min(prev, t)
        out.append(a / denom if denom else None)
        prev = a
    return out


def iid_alpha(accepted: int, rejected_rounds: int) -> float | None:
    """Per-token acceptance α under Leviathan et al.'s i.i.d. model, from counts.

    Each round verifies draft tokens one by one until the first rejection, so every accepted
    token is a success and every round that rejected one is one failure (rounds that kept all
    k end without a failure): the maximum-likelihood α is accepted / (accepted + rejections).
    The plain acceptance rate (accepted / proposed) is lower than α, because tokens proposed
    after a rejection are never tried; plugging it into the formulas underestimates them.
    """
    n = accepted + rejected_rounds
    return accepted / n if n else None


# ---- Leviathan et al. 2022 ---------------------------------------------------------------


def expected_tokens_per_round(alpha: float, k: float) -> float:
    """(1 - α^(k+1)) / (1 - α): expected tokens per round with i.i.d. acceptance α (k+1 at α=1)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, k: float, c: float) -> float:
    """(1 - α^(k+1)) / ((1 - α)(k·c + 1)): the expected walltime improvement."""
    return speedup_at_round_costs(alpha, k, c, 1.0)


def speedup_at_round_costs(alpha: float, k: float, c: float, v: float) -> float:
    """The same with the verify priced as measured: v = the target's (k+1)-token step over its
    one-token step (Leviathan et al.'s formula takes v = 1)."""
    if c < 0 or v <= 0:
        raise ValueError(f"need c >= 0 and v > 0, got c={c}, v={v}")
    return expected_tokens_per_round(alpha, k) / (k * c + v)


def overlapped_tokens_per_round(alpha: float, k: float) -> float:
    """Expected tokens per overlapped round (decoding/round.py's run_overlapped_round) with i.i.d.
    acceptance α: a round whose proposal is good emits (1 - α^(k+1)) / (1 - α) and keeps the next
    round's good with probability α^(k+1) (all k and the draft's guess f_1 accepted); a round
    without one emits one token and makes the next good with probability α (f_1 accepted). The
    stationary share of good rounds is α / (α + 1 - α^(k+1))."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    if alpha == 0:
        return 1.0
    good = alpha / (alpha + 1.0 - alpha ** (k + 1))
    return good * expected_tokens_per_round(alpha, k) + (1.0 - good)


def overlapped_speedup(alpha: float, k: float, c: float, v: float = 1.0) -> float:
    """Expected speedup of overlapped rounds if their two branches overlap perfectly: a round costs
    the longer of the verify (v target steps) and the draft's k + 1 steps ((k + 1)·c)."""
    if c < 0 or v <= 0:
        raise ValueError(f"need c >= 0 and v > 0, got c={c}, v={v}")
    return overlapped_tokens_per_round(alpha, k) / max(v, (k + 1) * c)


def prediction_model(overlap: bool = False) -> str:
    """The name of the model that predicts: plain rounds (Leviathan et al.) or overlapped rounds."""
    return "overlapped rounds, perfect overlap" if overlap else "Leviathan et al."


def predicted(alpha: float, k: float, c: float, overlap: bool = False, v: float = 1.0) -> float:
    """The speedup the rounds these settings run are expected to give, the verify priced at v target
    steps (1: the models' own formulas): plain rounds' (speedup_at_round_costs; predicted_speedup
    at v = 1) or, with `overlap`, overlapped rounds' at a perfect overlap (overlapped_speedup)."""
    return overlapped_speedup(alpha, k, c, v) if overlap else speedup_at_round_costs(alpha, k, c, v)


def tokens_per_round(alpha: float, k: float, overlap: bool = False) -> float:
    """Expected tokens per round: plain rounds' (expected_tokens_per_round) or overlapped ones'."""
    return overlapped_tokens_per_round(alpha, k) if overlap else expected_tokens_per_round(alpha, k)


def prediction_table(c: float, alphas: Sequence[float] = ALPHAS, ks: Sequence[int] = KS,
                     overlap: bool = False) -> list[list[float]]:
    """The predicted speedup (`predicted`) for every α (rows) and k (columns)."""
    return [[predicted(a, k, c, overlap) for k in ks] for a in alphas]


def best_k(alpha: float, c: float, ks: Sequence[int] = KS, overlap: bool = False) -> int:
    """The k in ks with the highest predicted speedup."""
    return max(ks, key=lambda k: predicted(alpha, k, c, overlap))


def cost_ratio(draft: float, target: float) -> float | None:
    """c = draft cost / target cost (step times, parameters or layers)."""
    if target <= 0:
        return None
    return draft / target
