"""Chi-square goodness of fit, by hand (no scipy): shared by the distribution tests."""

from __future__ import annotations

import math

import torch


def chi2_test(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's chi-square goodness of fit: (statistic, degrees of freedom, upper-tail p-value).

    Bins with expected count < min_expected are pooled into one bin (and that bin folded into the
    smallest regular one if it is still too small). A count in a bin of probability 0 is an
    impossible outcome: p-value 0. p = Q(df/2, stat/2), the regularised upper incomplete gamma.
    """
    counts = counts.double()
    probs = probs.double() / probs.double().sum()
    if (counts[probs == 0] > 0).any():
        return math.inf, 0, 0.0
    expected = probs * counts.sum()
    live = probs > 0
    counts, expected = counts[live], expected[live]
    big = expected >= min_expected
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expected = torch.cat([expected[big], expected[~big].sum()[None]])
    if expected[-1] < min_expected:
        if expected[-1] > 0 and len(expected) > 1:
            smallest = int(expected[:-1].argmin())
            observed[smallest] += observed[-1]
            expected[smallest] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    df = len(expected) - 1
    if df < 1:  # one bin: nothing to test
        return 0.0, 0, 1.0
    stat = float(((observed - expected) ** 2 / expected).sum())
    pvalue = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.double), torch.tensor(stat / 2, dtype=torch.double)))
    return stat, df, pvalue


