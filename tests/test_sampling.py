"""Tests for specdecode.decoding.sampling: HF-equivalent logits processing and the exponential race."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdecode.decoding.sampling import SamplingParams, logits_to_probs, process_logits, sample


def hf_process(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The warpers Hugging Face generate(do_sample=True) builds, in its order, on float32 logits."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(temperature)))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    scores = logits.float()
    return warpers(torch.zeros(scores.shape[0], 1, dtype=torch.long), scores)


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Upper-tail p-value of Pearson's chi-square test (minimal copy of the one in test_verify)."""
    counts, expected = counts.double(), probs.double() / probs.double().sum() * counts.sum()
    keep = expected >= 5
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    expected = torch.cat([expected[keep], expected[~keep].sum()[None]])
    if expected[-1] < 5:  # the pooled bin is too small: fold it into the smallest kept bin
        smallest = int(expected[:-1].argmin())
        observed[smallest] += observed[-1]
        expected[smallest] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    stat = ((observed - expected) ** 2 / expected).sum()
    df = len(expected) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.double), stat / 2))


# ---------------------------------------------------------------- SamplingParams


def test_params_defaults_are_greedy():
    assert SamplingParams().greedy
    assert not SamplingParams(temperature=0.7).greedy


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": math.inf},
        {"temperature": math.nan},
        {"top_k": -1},
        {"top_k": 2.5},
        {"top_p": 1.5},
        {"top_p": -0.1},
    ],
)
def test_params_reject_invalid(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_params_frozen():
    with pytest.raises(Exception):
        SamplingParams().temperature = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------- process_logits vs transformers

HF_COMBOS = [
    (1.0, 0, 1.0),
    (0.7, 0, 1.0),
    (1.3, 0, 1.0),
    (1.0, 5, 1.0),
    (0.5, 1, 1.0),
    (1.0, 0, 0.9),
    (2.0, 0, 0.5),
    (0.8, 10, 0.9),
    (1.0, 3, 0.3),
    (0.6, 40, 0.95),
    (1.0, 200, 0.99),  # top_k > V: clipped to V
    (1.5, 7, 0.0),  # top_p = 0 keeps exactly the top token
]


@pytest.mark.parametrize("temperature, top_k, top_p", HF_COMBOS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_process_logits_matches_transformers(temperature, top_k, top_p, dtype):
    generator = torch.Generator().manual_seed(hash((temperature, top_k, top_p)) % 2**31)
    logits = (torch.randn(6, 3, 50, generator=generator) * 3).to(dtype)  # [B, positions, V]
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)

    ours = process_logits(logits, params)
    assert ours.dtype == torch.float32 and ours.shape == logits.shape
    theirs = hf_process(logits.reshape(-1, 50), temperature, top_k, top_p).reshape(logits.shape)

    kept = torch.isfinite(ours)
    assert torch.equal(kept, torch.isfinite(theirs))
    assert kept.any(-1).all()  # never removes everything
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(logits_to_probs(logits, params), theirs.softmax(-1), rtol=1e-6, atol=1e-7)


def test_top_k_keeps_ties_with_kth_value():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0, 2.0]])
    out = process_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    # 3 is first, 2.0 is the 2nd largest value and appears three times: all kept, as in HF.
    assert torch.isfinite(out).tolist() == [[True, False, True, True, False, True]]
    theirs = hf_process(logits, 1.0, 2, 1.0)
    assert torch.equal(torch.isfinite(out), torch.isfinite(theirs))


def test_top_p_always_keeps_one_and_uses_cumulative_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # Boundaries (cumsum exactly at 1 - top_p) depend on float rounding: compare with HF there.
    for top_p in (0.0, 0.2, 0.5, 0.6, 0.96, 1.0):
        ours = process_logits(logits, SamplingParams(temperature=1.0, top_p=top_p))
        theirs = hf_process(logits, 1.0, 0, top_p)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs)), top_p
        assert torch.isfinite(ours)[0, 0]
    # Ascending cumsum is 0.05, 0.2, 0.5, 1.0: top_p = 0.9 removes only cumsum <= 0.1.
    ours = process_logits(logits, SamplingParams(temperature=1.0, top_p=0.9))
    assert torch.isfinite(ours).tolist() == [[True, True, True, False]]


@given(
    temperature=st.floats(0.05, 5.0),
    top_k=st.integers(0, 40),
    top_p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    vocab=st.integers(1, 33),
)
@settings(max_examples=60, deadline=None)
def test_process_logits_matches_transformers_property(temperature, top_k, top_p, seed, vocab):
    generator = torch.Generator().manual_seed(seed)
    # Rounded logits make ties common, which is where top-k / top-p semantics differ most.
    logits = (torch.randn(4, vocab, generator=generator) * 4).round() / 2
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    ours = process_logits(logits, params)
    theirs = hf_process(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), rtol=1e-6, atol=1e-7)


def test_greedy_process_is_float32_identity_and_probs_one_hot():
    logits = torch.tensor([[0.5, 2.0, 2.0, -1.0], [3.0, 0.0, 1.0, 2.0]], dtype=torch.bfloat16)
    params = SamplingParams(temperature=0.0, top_k=1, top_p=0.1)  # warpers ignored when greedy
    out = process_logits(logits, params)
    assert out.dtype == torch.float32
    assert torch.equal(out, logits.float())
    probs = logits_to_probs(logits, params)
    # First index on ties, like torch.argmax and HF greedy.
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]


def test_logits_to_probs_float32_and_normalised():
    logits = torch.randn(3, 2, 17, dtype=torch.float16)
    probs = logits_to_probs(logits, SamplingParams(temperature=0.9, top_k=5, top_p=0.8))
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2))
    assert ((probs > 0).sum(-1) <= 5).all()


# ---------------------------------------------------------------- sample


def test_sample_shape_dtype_and_support():
    probs = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    tokens = sample(probs.expand(4, 5, 6), torch.Generator().manual_seed(0))
    assert tokens.shape == (4, 5) and tokens.dtype == torch.int64
    # Zero-probability tokens never come out, even over many draws.
    many = sample(probs.expand(50_000, 6), torch.Generator().manual_seed(1))
    assert set(many.unique().tolist()) <= {1, 3, 4}


def test_sample_one_hot_is_deterministic():
    probs = torch.zeros(1000, 9)
    probs[torch.arange(1000), torch.arange(1000) % 9] = 1.0
    assert torch.equal(sample(probs), torch.arange(1000) % 9)


def test_sample_follows_distribution():
    generator = torch.Generator().manual_seed(1234)
    probs = torch.softmax(torch.randn(16, generator=generator) * 1.5, -1)
    probs[3] = 0.0  # a removed token as well
    n = 200_000
    tokens = sample(probs.expand(n, 16), generator)
    counts = torch.bincount(tokens, minlength=16)
    assert counts[3] == 0
    assert chi2_pvalue(counts, probs) > 1e-4


def test_sample_unnormalised_rows_are_scale_invariant():
    generator = torch.Generator().manual_seed(7)
    probs = torch.tensor([1.0, 3.0, 0.0, 4.0])  # sums to 8
    counts = torch.bincount(sample(probs.expand(100_000, 4), generator), minlength=4)
    assert chi2_pvalue(counts, probs / 8) > 1e-4


def test_sample_seeded_reproducible_and_seed_sensitive():
    probs = torch.softmax(torch.randn(64, 32), -1)
    a = sample(probs, torch.Generator().manual_seed(5))
    b = sample(probs, torch.Generator().manual_seed(5))
    c = sample(probs, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
