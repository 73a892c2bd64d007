"""Tests for specdecode.decoding.verify: the acceptance rule, greedy and sampled.

The sampled tests are the project's Invariant 2 in its purest form (vLLM rejection-sampler style):
with synthetic per-position target distributions p_j and draft distributions q_j, run one
verify_sampling call over a large batch of independent rows and check with a chi-square test
that the j-th emitted token follows p_j (positions 0 and 1, and the bonus token), and that the
acceptance rate at position 0 is sum_x min(p_0(x), q_0(x)) (Leviathan et al. 2022, Theorem 3.5).
A negative control shows the chi-square test rejects wrong emitters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stats import chi2_test
from specdecode.decoding.sampling import SamplingParams, logits_to_probs, sample
from specdecode.decoding.verify import verify_greedy, verify_sampling

V = 16  # small vocabulary: every bin gets thousands of samples
K = 3  # draft tokens per round
N = 120_000  # rows per verify_sampling call
PASS = 1e-4  # chi-square p-value above which a distribution "matches"


def test_chi2_helper_known_values():
    # The 95th percentile of chi-square with 1 df is 3.841; with 10 df, 18.307.
    assert chi2_test(torch.tensor([60.0 + 9.601, 40.0 - 9.601]), torch.tensor([0.6, 0.4]))[2] == pytest.approx(0.05, abs=2e-3)
    q = torch.tensor([0.5, 0.5])
    assert chi2_test(torch.tensor([500, 500]), q)[2] == pytest.approx(1.0)
    stat, df, _ = chi2_test(torch.tensor([1000, 0, 0]), torch.tensor([0.4, 0.3, 0.3]))
    assert df == 2 and stat > 1000
    assert chi2_test(torch.tensor([10, 1]), torch.tensor([1.0, 0.0]))[2] == 0.0  # impossible outcome
    # Rare bins are pooled: 6 bins with expected 1 each become one bin of expected 6.
    stat, df, _ = chi2_test(torch.tensor([94, 1, 1, 1, 1, 1, 1]), torch.tensor([94.0, 1, 1, 1, 1, 1, 1]))
    assert df == 1 and stat == pytest.approx(0.0)


# ---------------------------------------------------------------- greedy


def logits_with_argmax(argmax: list[list[int]], vocab: int = 10) -> torch.Tensor:
    """[B, k+1, V] logits whose argmax at [b, j] is argmax[b][j] (other entries random, lower)."""
    index = torch.tensor(argmax)
    logits = torch.rand(*index.shape, vocab, generator=torch.Generator().manual_seed(0))
    return logits.scatter(-1, index[..., None], 5.0)


def test_greedy_all_accepted_gives_bonus_from_position_k():
    draft = torch.tensor([[3, 1, 4]])
    logits = logits_with_argmax([[3, 1, 4, 7]])
    num_accepted, next_token = verify_greedy(draft, logits)
    assert num_accepted.tolist() == [3] and next_token.tolist() == [7]
    assert num_accepted.dtype == next_token.dtype == torch.int64


def test_greedy_first_rejection_gives_argmax_there():
    draft = torch.tensor([[3, 2, 4]])
    logits = logits_with_argmax([[3, 1, 4, 7]])  # position 1 disagrees, position 2 agrees again
    num_accepted, next_token = verify_greedy(draft, logits)
    assert num_accepted.tolist() == [1] and next_token.tolist() == [1]

    num_accepted, next_token = verify_greedy(torch.tensor([[0, 1, 4]]), logits)
    assert num_accepted.tolist() == [0] and next_token.tolist() == [3]


def test_greedy_num_proposed_caps_acceptance():
    draft = torch.tensor([[3, 1, 4], [3, 1, 4], [3, 1, 4], [3, 1, 4]])
    logits = logits_with_argmax([[3, 1, 4, 7]] * 4)
    num_accepted, next_token = verify_greedy(draft, logits, num_proposed=torch.tensor([3, 2, 1, 0]))
    # Padding positions match the target here, yet are never accepted; the next token is the
    # target's argmax right after the last real proposal.
    assert num_accepted.tolist() == [3, 2, 1, 0]
    assert next_token.tolist() == [7, 4, 1, 3]


def test_greedy_batch_rows_differ():
    draft = torch.tensor([[5, 6, 7], [5, 0, 7], [9, 6, 7], [5, 6, 8], [-1, -1, -1]])
    logits = logits_with_argmax([[5, 6, 7, 2], [5, 6, 7, 2], [5, 6, 7, 2], [5, 6, 7, 2], [5, 6, 7, 2]])
    num_accepted, next_token = verify_greedy(draft, logits, num_proposed=torch.tensor([3, 3, 3, 3, 0]))
    assert num_accepted.tolist() == [3, 1, 0, 2, 0]
    assert next_token.tolist() == [2, 6, 5, 7, 5]


def test_greedy_k_zero_and_out_of_vocab():
    num_accepted, next_token = verify_greedy(torch.zeros(2, 0, dtype=torch.long), logits_with_argmax([[4], [2]]))
    assert num_accepted.tolist() == [0, 0] and next_token.tolist() == [4, 2]
    # A draft id beyond the target's vocabulary (draft vocab larger) is simply rejected.
    num_accepted, next_token = verify_greedy(torch.tensor([[3, 12]]), logits_with_argmax([[3, 1, 0]]))
    assert num_accepted.tolist() == [1] and next_token.tolist() == [1]


def test_greedy_shape_check():
    with pytest.raises(ValueError):
        verify_greedy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 10))


def reference_greedy(draft: list[list[int]], logits: torch.Tensor, num_proposed: list[int]) -> tuple[list[int], list[int]]:
    """The obvious Python loop."""
    accepted, nxt = [], []
    for b, row in enumerate(draft):
        n = 0
        while n < num_proposed[b] and row[n] == int(logits[b, n].argmax()):
            n += 1
        accepted.append(n)
        nxt.append(int(logits[b, n].argmax()))
    return accepted, nxt


@given(
    batch=st.integers(1, 6),
    k=st.integers(0, 5),
    vocab=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
@settings(max_examples=80, deadline=None)
def test_greedy_matches_reference_loop(batch, k, vocab, seed, data):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, k + 1, vocab, generator=generator)
    # Draft from the target's own argmax with occasional corruption, so long prefixes happen.
    draft = logits[:, :k].argmax(-1)
    corrupt = torch.rand(batch, k, generator=generator) < 0.3
    draft = torch.where(corrupt, torch.randint(0, vocab, (batch, k), generator=generator), draft)
    num_proposed = data.draw(st.lists(st.integers(0, k), min_size=batch, max_size=batch))
    num_accepted, next_token = verify_greedy(draft, logits, torch.tensor(num_proposed))
    assert (num_accepted.tolist(), next_token.tolist()) == reference_greedy(draft.tolist(), logits, num_proposed)


@given(batch=st.integers(1, 6), k=st.integers(0, 5), vocab=st.integers(2, 6), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_sampling_with_greedy_probs_equals_greedy(batch, k, vocab, seed):
    """Temperature 0: p and q are one-hot, and the sampling rule must reduce to greedy matching."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, k + 1, vocab, generator=generator)
    draft = torch.where(
        torch.rand(batch, k, generator=generator) < 0.3,
        torch.randint(0, vocab, (batch, k), generator=generator),
        logits[:, :k].argmax(-1),
    )
    num_proposed = torch.randint(0, k + 1, (batch,), generator=generator)
    greedy = SamplingParams()
    p = logits_to_probs(logits, greedy)
    q_one_hot = torch.zeros(batch, k, vocab).scatter(-1, draft[..., None], 1.0)
    expected = verify_greedy(draft, logits, num_proposed)
    for q in (None, q_one_hot):
        got = verify_sampling(draft, q, p, generator, num_proposed)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# ---------------------------------------------------------------- sampling: the distribution tests


@dataclass
class Outcome:
    draft: torch.Tensor  # [N, K]
    num_accepted: torch.Tensor  # [N]
    next_token: torch.Tensor  # [N]
    num_proposed: torch.Tensor  # [N]

    def emitted(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows that emit a token at `position`, that token), from one round's output.

        A round emits draft[:, :num_accepted] then next_token; its position-j token exists when
        num_accepted >= j, and is draft[:, j] if num_accepted > j else next_token.
        """
        has = self.num_accepted >= position
        token = torch.where(self.num_accepted > position, self.draft[:, min(position, self.draft.shape[1] - 1)], self.next_token)
        return has, token[has]


def draw_drafts(q: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """[K, V] per-position q -> [n, K] independent draft tokens (torch.multinomial: not the code under test)."""
    return torch.stack([torch.multinomial(q_j, n, replacement=True, generator=generator) for q_j in q], dim=1)


def run_verify(p, q, *, draft=None, num_proposed=None, seed=0) -> Outcome:
    """p [K+1, V], q [K, V] or None (then `draft` [N, K] is given); same p and q for every row."""
    generator = torch.Generator().manual_seed(seed)
    if draft is None:
        draft = draw_drafts(q, N, generator)
    n = draft.shape[0]
    num_accepted, next_token = verify_sampling(
        draft,
        None if q is None else q.expand(n, *q.shape),  # [N, K, V] views: no copy
        p.expand(n, *p.shape),  # [N, K+1, V]
        generator=generator,
        num_proposed=num_proposed,
    )
    full = torch.full((n,), draft.shape[1]) if num_proposed is None else num_proposed
    return Outcome(draft, num_accepted, next_token, full)


def check_invariants(out: Outcome, p: torch.Tensor) -> None:
    """Structural facts that hold row by row, whatever the randomness."""
    assert out.num_accepted.dtype == out.next_token.dtype == torch.int64
    assert (out.num_accepted >= 0).all() and (out.num_accepted <= out.num_proposed).all()
    # Every accepted draft token and every next token has positive target probability there.
    k = out.draft.shape[1]
    accepted = torch.arange(k) < out.num_accepted[:, None]  # [N, K]
    p_draft = p[:k].gather(-1, out.draft.clamp(0, p.shape[-1] - 1).T).T  # [N, K]
    assert (p_draft[accepted] > 0).all()
    assert (p[out.num_accepted, out.next_token] > 0).all()


def check_distribution(name: str, out: Outcome, p: torch.Tensor, positions=(0, 1)) -> None:
    """Emitted token at each position j follows p_j; the bonus token follows p_K."""
    for j in positions:
        has, tokens = out.emitted(j)
        assert has.sum() > 2000, f"too few rows reach position {j} for a meaningful test"
        stat, df, pvalue = chi2_test(torch.bincount(tokens, minlength=V), p[j])
        print(f"{name:20s} pos{j}  chi2={stat:8.2f} df={df:2d} p={pvalue:.3g}")  # shown with -s or on failure
        assert pvalue > PASS, f"{name}: emitted token {j} does not follow p_{j}: chi2={stat:.1f} df={df} p={pvalue:.2e}"
    bonus = out.num_accepted == K
    if bonus.sum() > 2000:
        stat, df, pvalue = chi2_test(torch.bincount(out.next_token[bonus], minlength=V), p[K])
        print(f"{name:20s} bonus chi2={stat:8.2f} df={df:2d} p={pvalue:.3g}")
        assert pvalue > PASS, f"{name}: bonus token does not follow p_K: chi2={stat:.1f} df={df} p={pvalue:.2e}"


def acceptance_within_4se(measured_rows: torch.Tensor, expected: float) -> None:
    n = measured_rows.numel()
    measured = float(measured_rows.double().mean())
    se = math.sqrt(max(expected * (1 - expected), 1e-12) / n)
    assert abs(measured - expected) <= 4 * se, f"acceptance rate {measured:.4f}, expected {expected:.4f} (se {se:.4f})"


def dist(generator: torch.Generator, scale: float = 1.5, shape=(V,)) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, generator=generator) * scale, dim=-1)


def case_close(g):
    p = dist(g, shape=(K + 1, V))
    q = torch.softmax(p[:K].log() + 0.3 * torch.randn(K, V, generator=g), -1)
    return p, q


def case_far(g):
    # p puts most mass on tokens 0..7, q puts ~97% on tokens 12..15, where p is small but nonzero.
    p_logits = torch.randn(K + 1, V, generator=g)
    p_logits[:, :8] += 3.0
    q_logits = torch.randn(K, V, generator=g)
    q_logits[:, 12:] += 6.0
    return p_logits.softmax(-1), q_logits.softmax(-1)


def case_zeros(g):
    # Both sides processed by top-k / top-p, with different settings: p has zeros where q has
    # mass (those draft tokens must always be rejected) and vice versa.
    base = torch.randn(K + 1, V, generator=g)
    target = logits_to_probs(base, SamplingParams(temperature=1.0, top_k=8, top_p=0.9))
    draft = logits_to_probs(base[:K] + 0.8 * torch.randn(K, V, generator=g), SamplingParams(temperature=1.3, top_k=10))
    assert ((target[:K] == 0) & (draft > 0)).any() and ((target[:K] > 0) & (draft == 0)).any()
    return target, draft


def case_equal(g):
    p = dist(g, shape=(K + 1, V))
    return p, p[:K].clone()


CASES = {"close": case_close, "far": case_far, "zeros": case_zeros, "equal": case_equal}


@pytest.mark.parametrize("name", list(CASES))
def test_sampling_emits_target_distribution(name):
    p, q = CASES[name](torch.Generator().manual_seed(100 + len(name)))
    out = run_verify(p, q, seed=1)
    check_invariants(out, p)
    check_distribution(name, out, p)
    # Acceptance at position 0: sum_x min(p_0(x), q_0(x)); and at position 1 given position 0.
    acceptance_within_4se(out.num_accepted >= 1, float(torch.minimum(p[0], q[0]).sum()))
    reached = out.num_accepted >= 1
    acceptance_within_4se(out.num_accepted[reached] >= 2, float(torch.minimum(p[1], q[1]).sum()))
    if name == "equal":
        assert (out.num_accepted == K).all()  # p == q: u < p/q = 1 always; only bonus tokens
    if name == "far":
        assert float(torch.minimum(p[0], q[0]).sum()) < 0.25  # the case really is far


def test_sampling_second_token_independent_of_first():
    """Position 1 follows p_1 given each value of position 0 (catches leaking state between positions)."""
    p, q = case_close(torch.Generator().manual_seed(3))
    out = run_verify(p, q, seed=4)
    has, second = out.emitted(1)
    first = out.draft[has, 0]  # a row reaches position 1 only when its first draft token was accepted
    for value in first.bincount(minlength=V).topk(3).indices:
        stat, df, pvalue = chi2_test(torch.bincount(second[first == value], minlength=V), p[1])
        assert pvalue > PASS, (int(value), stat, df, pvalue)


@pytest.mark.parametrize("which", ["spread", "argmax", "rare"])
def test_sampling_deterministic_draft(which):
    """probs=None: draft tokens chosen by any rule (n-gram), one-hot q. Acceptance = p(x)."""
    generator = torch.Generator().manual_seed(11)
    p = dist(generator, shape=(K + 1, V))
    if which == "spread":  # different token per row, independent of the verifier's randomness
        draft = torch.randint(0, V, (N, K), generator=generator)
    elif which == "argmax":  # the target's most likely token (what an n-gram match often is)
        draft = p[:K].argmax(-1).expand(N, K)
    else:  # the token the target likes least
        draft = p[:K].argmin(-1).expand(N, K)
    out = run_verify(p, None, draft=draft, seed=12)
    check_invariants(out, p)
    # A rarely accepted first token leaves too few rows at position 1 to test there.
    check_distribution(f"none-{which}", out, p, positions=(0,) if which == "rare" else (0, 1))
    p0_at_draft = p[0, draft[:, 0]]  # [N] acceptance probability of each row's first token
    acceptance_within_4se(out.num_accepted >= 1, float(p0_at_draft.double().mean()))


def test_sampling_num_proposed_shorter():
    """Rows proposing m < K tokens (padding after them, even -1) still emit p_j at every position."""
    generator = torch.Generator().manual_seed(21)
    p, q = case_far(generator)
    draft = draw_drafts(q, N, generator)
    num_proposed = torch.randint(0, K + 1, (N,), generator=generator)
    padding = torch.arange(K) >= num_proposed[:, None]
    draft = draft.masked_fill(padding, -1)
    out = run_verify(p, q, draft=draft, num_proposed=num_proposed, seed=22)
    check_invariants(out, p)
    assert (out.num_accepted <= num_proposed).all()
    check_distribution("num_proposed", out, p)
    # Rows that proposed nothing draw their one token straight from p_0.
    empty = num_proposed == 0
    assert (out.num_accepted[empty] == 0).all()
    assert chi2_test(torch.bincount(out.next_token[empty], minlength=V), p[0])[2] > PASS
    # Rows that proposed exactly one and had it accepted get their next token from p_1.
    one = (num_proposed == 1) & (out.num_accepted == 1)
    assert one.sum() > 1000
    assert chi2_test(torch.bincount(out.next_token[one], minlength=V), p[1])[2] > PASS
    acceptance_within_4se(out.num_accepted[num_proposed >= 1] >= 1, float(torch.minimum(p[0], q[0]).sum()))


def test_sampling_residual_zero_falls_back_to_p():
    """Rejection with an empty residual (p <= q everywhere) must draw from p, never NaN or a dead token."""
    n = 40_000
    p = torch.tensor([0.5, 0.5, 0.0, 0.0])
    q = torch.tensor([0.5, 0.5, 0.0, 0.0])
    # Token 2 has p = q = 0: it cannot be accepted, and max(0, p - q) is all zeros.
    draft = torch.full((n, 1), 2)
    num_accepted, next_token = verify_sampling(
        draft, q.expand(n, 1, 4), torch.stack([p, p]).expand(n, 2, 4), torch.Generator().manual_seed(0)
    )
    assert (num_accepted == 0).all()
    counts = torch.bincount(next_token, minlength=4)
    assert counts[2:].sum() == 0
    assert chi2_test(counts, p)[2] > PASS


def test_sampling_q_zero_at_draft_token_is_guarded():
    """q(x) == 0 cannot happen for a sampled x; if it does: accept when p(x) > 0, no NaN, no division."""
    n = 1000
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])  # [k+1 = 2, V = 4]
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # draft token 3 has q = 0
    num_accepted, next_token = verify_sampling(torch.full((n, 1), 3), q.expand(n, 1, 4), p.expand(n, 2, 4))
    assert (num_accepted == 1).all()
    assert ((next_token >= 0) & (next_token < 4)).all()


def test_sampling_out_of_vocab_draft_rejected():
    """A draft id >= the target's V (draft vocabulary larger) is rejected, and the recovered token is valid."""
    n = 20_000
    p = dist(torch.Generator().manual_seed(5), shape=(2, 8))
    num_accepted, next_token = verify_sampling(torch.full((n, 1), 9), None, p.expand(n, 2, 8), torch.Generator().manual_seed(1))
    assert (num_accepted == 0).all()
    assert chi2_test(torch.bincount(next_token, minlength=8), p[0])[2] > PASS


def test_sampling_k_zero():
    n = 20_000
    p = dist(torch.Generator().manual_seed(6), shape=(1, V))
    num_accepted, next_token = verify_sampling(torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0, V), p.expand(n, 1, V))
    assert (num_accepted == 0).all()
    assert chi2_test(torch.bincount(next_token, minlength=V), p[0])[2] > PASS


def test_sampling_shape_checks():
    with pytest.raises(ValueError):
        verify_sampling(torch.zeros(2, 3, dtype=torch.long), None, torch.rand(2, 3, 5))
    with pytest.raises(ValueError):
        verify_sampling(torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3, 6), torch.rand(2, 4, 5))


def test_sampling_accepts_half_precision_probs():
    p = dist(torch.Generator().manual_seed(8), shape=(4, 2, V)).to(torch.bfloat16)
    num_accepted, next_token = verify_sampling(torch.zeros(4, 1, dtype=torch.long), None, p)
    assert num_accepted.dtype == next_token.dtype == torch.int64


def test_sampling_seed_determinism():
    p, q = case_close(torch.Generator().manual_seed(9))
    draft = draw_drafts(q, 5000, torch.Generator().manual_seed(10))
    args = (draft, q.expand(5000, K, V), p.expand(5000, K + 1, V))
    a = verify_sampling(*args, generator=torch.Generator().manual_seed(1))
    b = verify_sampling(*args, generator=torch.Generator().manual_seed(1))
    c = verify_sampling(*args, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


# ---------------------------------------------------------------- negative control


@pytest.mark.parametrize("bug", ["always_emit_draft", "recover_from_p"])
def test_negative_control_detects_wrong_distribution(bug):
    """The chi-square check must fail loudly for a wrong rule, or passing it would mean nothing.

    always_emit_draft: emit the draft token unconditionally (the emitted token follows q).
    recover_from_p: the classic subtle bug, drawing the recovered token from p instead of
    norm(max(0, p - q)): the output is then alpha * min(p, q)/alpha + (1 - alpha) * p, not p.
    """
    generator = torch.Generator().manual_seed(31)
    p, q = case_far(generator)
    draft = draw_drafts(q, N, generator)
    if bug == "always_emit_draft":
        first = draft[:, 0]
    else:
        p0, q0 = p[0].expand(N, V), q[0].expand(N, V)
        x = draft[:, 0]
        accept = torch.rand(N, generator=generator) * q0.gather(1, x[:, None]).squeeze(1) < p0.gather(1, x[:, None]).squeeze(1)
        first = torch.where(accept, x, sample(p0, generator))
    stat, df, pvalue = chi2_test(torch.bincount(first, minlength=V), p[0])
    print(f"negative-{bug:20s} pos0 chi2={stat:8.1f} df={df:2d} p={pvalue:.3g}")
    assert pvalue < 1e-6, (stat, df, pvalue)


# ---------------------------------------------------------------- capturability


def test_no_host_sync_runs_on_meta_tensors():
    """Meta tensors have shapes but no data: `.item()`, `.tolist()`, `bool(tensor)`, `nonzero` and
    boolean-mask indexing all raise on them. So running on meta proves the functions never read
    tensor values on the host, the condition for capturing them in a CUDA graph."""
    meta = torch.device("meta")
    draft = torch.empty(8, K, dtype=torch.long, device=meta)
    logits = torch.empty(8, K + 1, V, device=meta)
    q = torch.empty(8, K, V, device=meta)
    num_proposed = torch.empty(8, dtype=torch.long, device=meta)
    for out in (
        verify_greedy(draft, logits, num_proposed),
        verify_sampling(draft, q, logits, None, num_proposed),
        verify_sampling(draft, None, logits),
    ):
        assert [(t.shape, t.dtype, t.device.type) for t in out] == [((8,), torch.int64, "meta")] * 2
    for params in (SamplingParams(), SamplingParams(temperature=0.7, top_k=5, top_p=0.9)):
        assert logits_to_probs(logits, params).shape == logits.shape
    assert sample(q).shape == (8, K)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the premise: meta does catch a sync
        num_proposed.sum().item()


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces both functions whole (no data-dependent Python branch),
    so the engine can compile its verify step."""
    torch._dynamo.reset()
    p, q = case_zeros(torch.Generator().manual_seed(41))
    draft = draw_drafts(q, 64, torch.Generator().manual_seed(42))
    num_proposed = torch.randint(0, K + 1, (64,))
    greedy = torch.compile(verify_greedy, backend="eager", fullgraph=True)
    sampled = torch.compile(verify_sampling, backend="eager", fullgraph=True)
    logits = torch.randn(64, K + 1, V)
    assert torch.equal(greedy(draft, logits, num_proposed)[0], verify_greedy(draft, logits, num_proposed)[0])
    num_accepted, next_token = sampled(draft, q.expand(64, K, V), p.expand(64, K + 1, V), None, num_proposed)
    assert (num_accepted <= num_proposed).all() and (p[num_accepted, next_token] > 0).all()
    num_accepted, _ = sampled(draft, None, p.expand(64, K + 1, V), None, num_proposed)
    assert (num_accepted <= num_proposed).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture():
    """Both functions capture in a CUDA graph and replay with valid outputs."""
    device = torch.device("cuda")
    p, q = case_far(torch.Generator().manual_seed(51))
    p, q = p.to(device), q.to(device)
    batch = 4096
    draft = draw_drafts(q.cpu(), batch, torch.Generator().manual_seed(52)).to(device)
    num_proposed = torch.randint(0, K + 1, (batch,), device=device)
    probs_p, probs_q = p.expand(batch, K + 1, V).contiguous(), q.expand(batch, K, V).contiguous()
    logits = torch.randn(batch, K + 1, V, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph, as capture requires
        verify_greedy(draft, logits, num_proposed)
        verify_sampling(draft, probs_q, probs_p, None, num_proposed)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        greedy_out = verify_greedy(draft, logits, num_proposed)
        sampled_out = verify_sampling(draft, probs_q, probs_p, None, num_proposed)
        none_out = verify_sampling(draft, None, probs_p, None, num_proposed)
    seen = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(greedy_out[0], verify_greedy(draft, logits, num_proposed)[0])
        for num_accepted, next_token in (sampled_out, none_out):
            assert (num_accepted <= num_proposed).all() and (p[num_accepted, next_token] > 0).all()
        seen.append(sampled_out[1].clone())
    assert not torch.equal(seen[0], seen[1])  # replays draw fresh random numbers

