"""specdecode.metrics: percentiles, speedup, acceptance aggregation and Leviathan's predictions."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from specdecode import metrics


def test_percentile_matches_linear_interpolation():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert metrics.percentile(xs, 0) == 1.0
    assert metrics.percentile(xs, 100) == 4.0
    assert metrics.percentile(xs, 50) == pytest.approx(2.5)
    assert metrics.percentile(xs, 90) == pytest.approx(3.7)  # numpy.percentile([1,2,3,4], 90)
    assert metrics.percentile([7.0], 90) == 7.0
    assert metrics.percentile([], 50) is None
    with pytest.raises(ValueError):
        metrics.percentile(xs, 101)


def test_latency_summary_and_means():
    s = metrics.latency_summary([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "p50": 2.0, "p90": pytest.approx(2.8)}
    assert metrics.latency_summary([]) == {"mean": None, "p50": None, "p90": None}
    assert metrics.throughput(100, 2.0) == 50.0
    assert metrics.ms_per_token(100, 2.0) == 20.0
    assert metrics.ms_per_token(0, 2.0) is None


def test_speedup_is_time_ratio_for_equal_tokens_and_throughput_ratio_otherwise():
    assert metrics.speedup(10.0, 5.0) == 2.0
    assert metrics.speedup(10.0, 5.0, 100, 100) == 2.0
    # speculative produced half the tokens in half the time: no speedup
    assert metrics.speedup(10.0, 5.0, 100, 50) == pytest.approx(1.0)
    assert metrics.speedup(0.0, 5.0) is None


def test_match_rate_and_first_mismatch():
    assert metrics.match_rate([([1, 2], [1, 2]), ([1, 2], [1, 3])]) == 0.5
    assert metrics.match_rate([]) is None
    assert metrics.first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert metrics.first_mismatch([1, 2, 3], [1, 5, 3]) == 1
    assert metrics.first_mismatch([1, 2], [1, 2, 3]) == 2


def test_expected_tokens_and_predicted_speedup_formulas():
    # α = 0: every round emits only the target's token
    assert metrics.expected_tokens_per_round(0.0, 5) == 1.0
    # α = 1: k + 1 tokens per round (the limit of the formula)
    assert metrics.expected_tokens_per_round(1.0, 4) == 5.0
    a, k, c = 0.8, 4, 0.1
    tokens = (1 - a ** (k + 1)) / (1 - a)
    assert metrics.expected_tokens_per_round(a, k) == pytest.approx(tokens)
    assert metrics.predicted_speedup(a, k, c) == pytest.approx(tokens / (k * c + 1))
    # the formula is a geometric sum: 1 + α + ... + α^k
    assert metrics.expected_tokens_per_round(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    # c = 0 (prompt lookup): speedup = tokens per round
    assert metrics.predicted_speedup(0.7, 3, 0.0) == pytest.approx(metrics.expected_tokens_per_round(0.7, 3))
    with pytest.raises(ValueError):
        metrics.expected_tokens_per_round(1.5, 3)
    with pytest.raises(ValueError):
        metrics.predicted_speedup(0.5, 3, -1.0)


def test_prediction_table_and_best_k():
    table = metrics.prediction_table(0.05)
    assert len(table) == len(metrics.ALPHAS) and all(len(r) == len(metrics.KS) for r in table)
    # more acceptance never predicts less speedup
    for col in range(len(metrics.KS)):
        assert all(table[i][col] <= table[i + 1][col] for i in range(len(table) - 1))
    # an expensive draft wants a short block, a free one the longest
    assert metrics.best_k(0.6, 0.5) == 1
    assert metrics.best_k(0.9, 0.0) == max(metrics.KS)
    assert metrics.cost_ratio(1.0, 4.0) == 0.25
    assert metrics.cost_ratio(1.0, 0.0) is None


@dataclass
class Row:
    rounds: int
    draft_tokens: int
    accepted_tokens: int
    position_trials: list[int] = field(default_factory=list)
    position_accepts: list[int] = field(default_factory=list)


def _simulate(alpha: float, k: int, rounds: int, seed: int = 0):
    """Rounds of i.i.d. acceptance: (Row, rejected rounds)."""
    rng = random.Random(seed)
    row = Row(0, 0, 0, [0] * k, [0] * k)
    rejected = 0
    for _ in range(rounds):
        a = 0
        while a < k and rng.random() < alpha:
            a += 1
        row.rounds += 1
        row.draft_tokens += k
        row.accepted_tokens += a
        for j in range(k):
            row.position_trials[j] += 1
            row.position_accepts[j] += j < a
        rejected += a < k
    return row, rejected


def test_acceptance_totals_sum_rows():
    rows = [Row(2, 8, 5, [2, 2, 2, 2], [2, 2, 1, 0]), Row(1, 2, 2, [1, 1], [1, 1])]
    t = metrics.acceptance_totals(rows)
    assert (t.rounds, t.draft_tokens, t.accepted_tokens) == (3, 10, 7)
    assert t.acceptance_rate == pytest.approx(0.7)
    assert t.block_efficiency == pytest.approx((7 + 3) / 3)
    assert t.position_trials == (3, 3, 2, 2)
    assert t.position_acceptance == [1.0, 1.0, 0.5, 0.0]
    assert t.rejected_rounds is None and t.alpha == t.acceptance_rate  # not counted: fall back
    empty = metrics.acceptance_totals([])
    assert empty.acceptance_rate is None and empty.block_efficiency is None and empty.position_acceptance == []


def test_iid_alpha_recovers_alpha_where_the_acceptance_rate_does_not():
    alpha, k = 0.8, 5
    row, rejected = _simulate(alpha, k, 20000)
    est = metrics.iid_alpha(row.accepted_tokens, rejected)
    assert est == pytest.approx(alpha, abs=0.01)
    # accepted / proposed is biased low: E[accepted] / k = α(1 - α^k) / ((1 - α) k)
    biased = alpha * (1 - alpha**k) / ((1 - alpha) * k)
    assert row.accepted_tokens / row.draft_tokens == pytest.approx(biased, abs=0.01)
    # per position: P(first j accepted) = α^j; conditional ≈ α everywhere
    pos = metrics.position_acceptance(row.position_trials, row.position_accepts)
    assert all(p == pytest.approx(alpha ** (j + 1), abs=0.02) for j, p in enumerate(pos))
    cond = metrics.conditional_position_acceptance(row.position_trials, row.position_accepts)
    assert all(c == pytest.approx(alpha, abs=0.03) for c in cond)
    # the prediction then matches the measured tokens per round
    t = metrics.expected_tokens_per_round(est, k)
    assert t == pytest.approx((row.accepted_tokens + row.rounds) / row.rounds, rel=0.02)
    assert metrics.iid_alpha(0, 0) is None
    assert metrics.iid_alpha(10, 0) == 1.0
    assert not math.isnan(metrics.predicted_speedup(1.0, 3, 0.1))


@pytest.mark.parametrize("alpha, k", [(0.9, 2), (0.7, 4), (0.5, 1)])
def test_overlapped_tokens_per_round_matches_a_simulation(alpha, k):
    """The stationary formula against the overlapped round's rule simulated with i.i.d. acceptance:
    a good round tests k + 1 tokens (e_1 .. e_k and the draft's guess f_1), emits up to the first
    rejection (inclusive) and stays good only when all k + 1 pass; a round without a good proposal
    tests f_1 alone, emits one token and is followed by a good one when f_1 passes."""
    rng = random.Random(0)
    good, tokens, rounds = False, 0, 200_000
    for _ in range(rounds):
        tests = k + 1 if good else 1
        passed = 0
        while passed < tests and rng.random() < alpha:
            passed += 1
        tokens += min(passed + 1, k + 1) if good else 1
        good = passed == tests
    assert tokens / rounds == pytest.approx(metrics.overlapped_tokens_per_round(alpha, k), rel=0.01)


def test_overlapped_speedup_limits():
    assert metrics.overlapped_tokens_per_round(1.0, 3) == pytest.approx(4.0)
    assert metrics.overlapped_tokens_per_round(0.0, 3) == 1.0
    # a round costs the longer branch: the verify (v) or k + 1 draft steps
    assert metrics.overlapped_speedup(1.0, 3, 0.1, 1.2) == pytest.approx(4.0 / 1.2)
    assert metrics.overlapped_speedup(1.0, 3, 0.5, 1.2) == pytest.approx(4.0 / 2.0)
    with pytest.raises(ValueError):
        metrics.overlapped_speedup(0.5, 3, -0.1)
