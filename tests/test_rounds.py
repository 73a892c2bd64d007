"""The round as one device program (decoding/round.py) and the fixed-shape rounds around it.

On CPU the accelerated tier's captured rounds cannot run, but everything they rely on can:
fixed-shape rounds (finished rows stay frozen in the batch, a host drafter's proposal padded to
max_k positions, compiled steps) must emit exactly what the target alone would; `prepare` must
compile every shape up front so that generating afterwards compiles nothing; random numbers
come from the buffers drawn before each round, so a seed fixes the output; and a round
reads nothing back to the host until the engine's single read.
"""

from __future__ import annotations

import pytest
import torch

from fixtures import PROMPTS, oracle_greedy
from helpers import cpu_decoder
from specdecode.accel.runner import ModelRunner
from specdecode.decoding.engine import EagerRounds
from specdecode.decoding.round import RoundBuffers, RoundShape, run_round
from specdecode.decoding.sampling import SamplingParams

RAGGED = [PROMPTS[0], PROMPTS[7], PROMPTS[2]]
MAX_NEW = 30
# the Triton kernels of accel/glue.py: on the GPU where there is one, else under the interpreter
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _compiled(dec):
    """Every model of `dec` on compiled fixed-shape steps (what CUDA builds), traced without a C compiler."""
    models = [dec.target] + ([dec.draft] if dec.draft is not None else [])
    for loaded in models:
        dec.set_runner(loaded, ModelRunner(loaded.model, compile=True, compile_backend="aot_eager"))
    return dec


@pytest.mark.parametrize("k", [3, "auto"])
@pytest.mark.parametrize("drafter", ["model", "ngram"])
def test_fixed_shape_rounds_are_exact(llama_pair, k, drafter):
    """Compiled steps: rows stay in the batch after they finish, prompt lookup's rounds verify max_k
    positions, the draft's [prev, last] first step after fully accepted rounds: still the target's
    output."""
    torch._dynamo.reset()
    dec = _compiled(cpu_decoder(llama_pair.target, llama_pair.draft if drafter == "model" else None,
                                drafter=drafter, k=k, max_k=5, batch_size=3, max_new_tokens=MAX_NEW))
    eng = dec.engine()
    assert isinstance(eng.rounds, EagerRounds) and eng.rounds.fixed_shapes
    results = dec.generate(RAGGED)
    assert [r.token_ids for r in results] == oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)
    assert sum(r.stats.accepted_tokens for r in results) > 0


@pytest.mark.parametrize("drafter", ["model", "ngram"])
def test_fixed_shape_rounds_verify_the_k_a_draft_model_drafts(llama_pair, drafter):
    """Fixed shapes: each k of --k auto is a round shape of its own (a graph, or a compile), so a
    draft model's round of k verifies k positions; a host drafter's proposal (prompt lookup) is
    padded to max_k, one verify width whatever the host proposed. The rounds launched use those
    shapes, and the policy hears each round's counts with the k it ran."""
    dec = _compiled(cpu_decoder(llama_pair.target, llama_pair.draft if drafter == "model" else None,
                                drafter=drafter, k="auto", max_k=4, batch_size=3, max_new_tokens=MAX_NEW))
    eng = dec.engine()
    want = (lambda k: k) if drafter == "model" else (lambda k: 4)
    assert eng.shapes() and all(s.width == want(s.k) for s in eng.shapes())
    launched, heard = [], []
    launch, update = eng.rounds.launch, eng.k_policy.update

    def spy_launch(cache, bufs, shape, *args):
        launched.append(shape)
        return launch(cache, bufs, shape, *args)

    def spy_update(accepted, proposed, k=None):
        heard.append((len(accepted), k))
        return update(accepted, proposed, k=k)

    eng.rounds.launch, eng.k_policy.update = spy_launch, spy_update
    ids = dec.encode_all(RAGGED)
    out = [[] for _ in ids]
    for ev in eng.stream(ids):
        out[ev.row] += list(ev.tokens)
    assert out == oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)
    assert launched and all(s.width == want(s.k) for s in launched)
    if drafter == "model":
        assert len({s.k for s in launched}) > 1  # the policy moved k (free drafting keeps lookup at max_k)
    assert [k for _, k in heard] == [s.k for s in launched[: len(heard)]]
    assert heard[0][0] == 3 and heard[-1][0] < 3  # rows that finished earlier are left out


def test_prepare_compiles_every_shape_before_generation(llama_pair):
    """After engine.prepare() (what bench runs untimed), generating compiles nothing new: every
    k of --k auto and both first-step shapes of the draft were built up front."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    dec = _compiled(cpu_decoder(llama_pair.target, llama_pair.draft, k="auto", max_k=4, batch_size=3,
                                max_new_tokens=MAX_NEW))
    ids = dec.encode_all(RAGGED)
    dec.reserve(ids)
    eng = dec.engine()
    assert {(s.k, s.feed_prev) for s in eng.shapes()} == {(k, p) for k in range(1, 5) for p in (False, True)}
    eng.prepare(ids)
    before = counters["stats"]["unique_graphs"]
    assert before > 0
    for other in (dec.engine(), dec.with_settings(drafter="none").engine()):
        if other.drafter is None:
            other.prepare(ids)
            before = counters["stats"]["unique_graphs"]
        list(other.stream(ids))
    assert counters["stats"]["unique_graphs"] == before


def test_prompts_of_other_lengths_reuse_the_reserved_cache_size(llama_pair):
    """bench reserves the data set's longest prompt: every batch then gets one pooled cache size."""
    dec = _compiled(cpu_decoder(llama_pair.target, llama_pair.draft, k=3, batch_size=1, max_new_tokens=MAX_NEW))
    ids = dec.encode_all(PROMPTS[:6])
    dec.reserve(ids)
    runner = dec.runner(dec.target)
    sizes = set()
    for one in ids:
        eng = dec.engine()
        cache, *_ = eng._open([one])
        sizes.add(cache.max_len)
    assert len(sizes) == 1 and sizes.pop() >= max(map(len, ids)) + MAX_NEW
    assert runner.fixed_shapes


def test_a_round_reads_nothing_back_to_the_host(llama_pair, monkeypatch):
    """run_round is device work only: no .item()/.tolist()/bool() of a tensor inside it (here,
    on CPU, those are trapped), so a captured round has nothing to wait for."""
    dec = cpu_decoder(llama_pair.target, llama_pair.draft, k=4, batch_size=2, max_new_tokens=MAX_NEW,
                      temperature=0.8, top_p=0.9, seed=1)
    eng = dec.engine()
    ids = dec.encode_all(RAGGED[:2])
    cache, bufs, input_ids, lengths, max_len = eng._open(ids)
    bufs.last.copy_(eng._prefill(cache, input_ids, lengths))
    eng.drafter.prefill(input_ids, lengths, max_len)
    bufs.draw_noise(eng.generator)

    def trap(*a, **k):
        raise AssertionError("host read inside a round")

    for name in ("item", "tolist", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, trap)
    steps = run_round(eng.runner, cache, eng.drafter, bufs, RoundShape(4, 4, True), eng.params.sampling,
                      max_len, eng.target_rows, may_sync=False)
    monkeypatch.undo()
    assert steps == 4
    out = bufs.out.tolist()
    assert all(0 <= row[0] <= 4 and row[2] == 4 for row in out)


def test_noise_is_drawn_before_the_round_and_fixes_the_output(llama_pair):
    """Sampling: all randomness of a round sits in RoundBuffers (drawn from the seeded generator
    before the round), so two runs with one seed agree and another seed differs."""
    def run(seed):
        dec = cpu_decoder(llama_pair.target, llama_pair.draft, k=3, batch_size=3, max_new_tokens=MAX_NEW,
                          temperature=1.0, seed=seed)
        return [r.token_ids for r in dec.generate(RAGGED)]

    assert run(5) == run(5)
    assert run(5) != run(6)
    bufs = RoundBuffers.new(2, 3, 50, SamplingParams(temperature=1.0), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    bufs.draw_noise(g)
    assert bufs.race.shape == (2, 4, 50) and bufs.uniform.shape == (2, 3)
    assert (bufs.race > 0).all() and ((bufs.uniform >= 0) & (bufs.uniform < 1)).all()
    assert RoundBuffers.new(2, 3, 50, SamplingParams(), torch.device("cpu")).race is None  # greedy: none


@pytest.mark.parametrize("lookahead", [False, True])
def test_target_alone_on_fixed_shapes_with_lookahead(llama_pair, lookahead):
    """The baseline on fixed shapes launches round r+1 before reading round r (its input is on
    the device already); output and stops are the target's own."""
    torch._dynamo.reset()
    dec = _compiled(cpu_decoder(llama_pair.target, batch_size=3, max_new_tokens=MAX_NEW))
    eng = dec.engine()
    eng.lookahead = lookahead
    ids = dec.encode_all(RAGGED)
    tokens = [[] for _ in ids]
    for ev in eng.stream(ids):
        tokens[ev.row].extend(ev.tokens)
    assert tokens == oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)


@pytest.mark.parametrize("max_new", [pytest.param(3, marks=pytest.mark.slow), 17])
def test_speculative_lookahead_stops_where_the_plain_loop_does(llama_pair, max_new):
    """With a drafter on the device and fixed shapes, round r+1 is launched before round r is read
    (its draft then feeds [prev, last]); a row that ends on EOS or length in round r drops r+1.
    Tokens and finish reasons must be those of the loop that reads every round first."""
    torch._dynamo.reset()
    free = oracle_greedy(llama_pair.target, RAGGED, max_new)
    eos = (free[1][1],)  # row 1 stops on its second token

    def run(lookahead: bool):
        dec = _compiled(cpu_decoder(llama_pair.target, llama_pair.draft, k=3, batch_size=3, max_new_tokens=max_new))
        eng = dec.engine()
        eng.params = type(eng.params)(**{**eng.params.__dict__, "eos_token_ids": eos})
        eng.lookahead = lookahead
        ids = dec.encode_all(RAGGED)
        tokens, reasons = [[] for _ in ids], [None] * len(ids)
        for ev in eng.stream(ids):
            tokens[ev.row].extend(ev.tokens)
            if ev.finished:
                reasons[ev.row] = ev.finish_reason
        return tokens, reasons, eng.max_in_flight

    plain, plain_reasons, plain_flight = run(False)
    ahead, ahead_reasons, ahead_flight = run(True)
    assert plain_flight == 1 and ahead_flight == (2 if max_new > 8 else 1)
    assert ahead == plain and ahead_reasons == plain_reasons
    cut = [ref[: ref.index(eos[0]) + 1] if eos[0] in ref else ref for ref in free]
    assert plain == cut
    assert plain_reasons[1] == "eos"


class _Lengths:
    """The one thing the commit needs of a cache: its lengths (and `advance`, for the reference)."""

    def __init__(self, positions: torch.Tensor) -> None:
        self.positions = positions

    def advance(self, n: torch.Tensor) -> None:
        self.positions += n


def _commit_case(seed: int, batch: int, width: int, per_row_num: bool):
    """A round's state after the verify: [last, proposal] with a random agreeing prefix per row,
    the target's argmax tokens, counts proposed per row (a tensor, or an int for all rows), rows
    that have finished, and buffers holding stale values the commit must overwrite."""
    g = torch.Generator().manual_seed(seed)
    verify_in = torch.randint(0, 50, (batch, width + 1), generator=g)
    target = torch.randint(0, 50, (batch, width + 1), generator=g)
    for b in range(batch):
        agree = int(torch.randint(0, width + 1, (1,), generator=g))
        target[b, :agree] = verify_in[b, 1:1 + agree]
    num = torch.randint(0, width + 1, (batch,), generator=g) if per_row_num else width
    bufs = RoundBuffers.new(batch, width + 2, 50, SamplingParams(), torch.device("cpu"))
    bufs.last.copy_(verify_in[:, 0])
    bufs.prev.fill_(-7)
    bufs.out.fill_(-9)
    bufs.alive.copy_(torch.randint(0, 2, (batch,), generator=g))
    positions = torch.randint(10, 90, (batch,), generator=g)
    return verify_in, target, num, bufs, positions


def _after(bufs, positions):
    return [t.cpu() for t in (positions, bufs.prev, bufs.last, bufs.out)]


def _copy(bufs: RoundBuffers) -> RoundBuffers:
    """Round buffers with every tensor cloned (`_on` to the device they are on already aliases)."""
    return RoundBuffers(**{name: (t.clone() if isinstance(t, torch.Tensor) else t) for name, t in bufs.__dict__.items()})


def _on(x, device):
    """Round buffers (or a tensor, or an int) on `device` (copies)."""
    if isinstance(x, RoundBuffers):
        return RoundBuffers(**{name: (t.to(device) if isinstance(t, torch.Tensor) else t)
                               for name, t in x.__dict__.items()})
    return x.to(device) if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("width", [0, 1, 5, 7])
@pytest.mark.parametrize("per_row_num", [False, True])
def test_the_fused_commit_equals_the_reference(width, per_row_num):
    """accel/glue.commit (one Triton kernel per round, here under the interpreter) accepts and
    commits exactly what the reference's tensor operations do: greedy (the accepted prefix from
    the target's argmax, capped by each row's proposal count) and sampling (counts given), for
    live and finished rows, with the proposal padded to a wider result buffer."""
    from specdecode.accel import glue
    from specdecode.decoding.round import commit_reference
    from specdecode.decoding.verify import verify_greedy

    for seed in range(6):
        verify_in, target, num, bufs, positions = _commit_case(seed, 4, width, per_row_num)
        # reference: verify_greedy on one-hot logits of the target's tokens, then the commit
        logits = torch.nn.functional.one_hot(target, 50).float()
        ref_bufs, ref_pos = RoundBuffers(**{**bufs.__dict__}), positions.clone()
        for name in ("last", "prev", "out", "alive"):
            setattr(ref_bufs, name, getattr(bufs, name).clone())
        n_acc, nxt = verify_greedy(verify_in[:, 1:], logits, num if isinstance(num, torch.Tensor) else None)
        commit_reference(verify_in, _Lengths(ref_pos), ref_bufs, num, n_acc, nxt)
        fused_pos, dbufs = positions.to(DEV), _on(bufs, DEV)
        glue.commit(verify_in.to(DEV), _Lengths(fused_pos), dbufs, _on(num, DEV), target_tokens=target.to(DEV))
        bufs = _on(dbufs, "cpu")
        assert [t.tolist() for t in _after(bufs, fused_pos)] == [t.tolist() for t in _after(ref_bufs, ref_pos)]
        # the greedy decision itself: a prefix that agrees, then the target's token
        for b in range(4):
            a = int(bufs.out[b, 0])
            cap = int(num[b]) if isinstance(num, torch.Tensor) else width
            assert a <= cap and verify_in[b, 1:1 + a].tolist() == target[b, :a].tolist()
            assert a == cap or verify_in[b, 1 + a] != target[b, a]
            assert int(bufs.out[b, 1]) == int(target[b, a]) == int(bufs.last[b])

        # sampling: the rule's counts and token handed in
        verify_in, target, num, bufs, positions = _commit_case(100 + seed, 3, width, per_row_num)
        cap = num if isinstance(num, torch.Tensor) else torch.full((3,), width)
        n_acc = (torch.rand(3, generator=torch.Generator().manual_seed(seed)) * (cap + 1)).long().clamp(max=cap)
        nxt = torch.randint(0, 50, (3,))
        ref_bufs, ref_pos = RoundBuffers(**{**bufs.__dict__}), positions.clone()
        for name in ("last", "prev", "out", "alive"):
            setattr(ref_bufs, name, getattr(bufs, name).clone())
        commit_reference(verify_in, _Lengths(ref_pos), ref_bufs, num, n_acc, nxt)
        fused_pos, dbufs = positions.to(DEV), _on(bufs, DEV)
        glue.commit(verify_in.to(DEV), _Lengths(fused_pos), dbufs, _on(num, DEV), accepted=n_acc.to(DEV),
                    next_token=nxt.to(DEV))
        bufs = _on(dbufs, "cpu")
        assert [t.tolist() for t in _after(bufs, fused_pos)] == [t.tolist() for t in _after(ref_bufs, ref_pos)]


@pytest.mark.skipif(DEV == "cuda", reason="CPU rounds: on CUDA, test_gpu_rounds.py runs the fused commit")
@pytest.mark.parametrize("temperature", [pytest.param(0.0, marks=pytest.mark.slow), 0.8])
def test_rounds_with_the_fused_commit_are_exact(llama_pair, temperature):
    """Whole generations whose rounds commit through the fused kernel (as captured rounds do on
    CUDA; here under Triton's interpreter, slow for greedy, whose argmax kernel runs every round)
    emit what the reference rounds emit, greedy and sampled
    with one seed, with a model drafter and with prompt lookup (counts per row), and overlapped
    rounds through their own kernel (glue.accept_overlapped)."""
    from specdecode.accel import glue

    def run(fused: bool, drafter: str, overlap: bool = False):
        dec = cpu_decoder(llama_pair.target, llama_pair.draft if drafter == "model" else None, drafter=drafter,
                          k=3, batch_size=3, max_new_tokens=MAX_NEW, temperature=temperature, seed=3, overlap=overlap)
        eng = dec.engine()
        if fused:
            eng.rounds.commit, eng.rounds.accept = glue.commit, glue.accept_overlapped
        ids = dec.encode_all(RAGGED)
        tokens = [[] for _ in ids]
        for ev in eng.stream(ids):
            tokens[ev.row].extend(ev.tokens)
        return tokens

    fused_model = run(True, "model")
    assert fused_model == run(False, "model")
    assert run(True, "ngram") == run(False, "ngram")
    fused_overlap = run(True, "model", overlap=True)
    assert fused_overlap == run(False, "model", overlap=True)
    if temperature == 0.0:
        assert fused_model == fused_overlap == oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_argmax_kernel_equals_torch(dtype):
    """accel/glue.argmax (many programs a row, the last to finish reduces; here under the
    interpreter) returns torch.argmax's index: the first of tied maxima, within and across its
    chunks, on rows of a real vocabulary's size and of odd sizes, on sliced rows, a row of -inf,
    a row with NaN, and leading dimensions; with `exclude`, the second choice."""
    from specdecode.accel import glue

    g = torch.Generator().manual_seed(0)
    for v in (151936, 5000, 37):
        x = torch.randn((5, v + 3), generator=g).to(dtype).to(DEV)[:, :v]  # rows strided past their length
        x[1, :] = 0.0
        x[1, v // 2] = x[1, v - 1] = 4.0  # tie across chunks: the first one
        x[2, :] = float("-inf")
        x[3, v // 3] = float("nan")
        x[4, 7 % v] = x[4, (7 + glue.ARGMAX_CHUNK) % v] = 30.0
        assert glue.argmax(x).tolist() == x.argmax(dim=-1).tolist()
        three = x[:4].reshape(2, 2, v)
        assert glue.argmax(three).tolist() == three.argmax(dim=-1).tolist()
        # the second choice: each row's first pick counts as -inf (as a scatter of -inf there)
        first = x.argmax(dim=-1)
        want = x.scatter(1, first[:, None], float("-inf")).argmax(dim=-1)
        assert glue.argmax(x, exclude=first).tolist() == want.tolist()
        assert glue.argmax(three, exclude=first[:4].reshape(2, 2)).tolist() == want[:4].reshape(2, 2).tolist()
    # the counters are left at zero: a second launch over the same rows gives the same answer
    y = torch.randn((3, 9000), generator=g).to(DEV)
    assert glue.argmax(y).tolist() == glue.argmax(y).tolist() == y.argmax(dim=-1).tolist()


def test_padding_past_a_shorter_proposal_is_never_accepted():
    """A fixed-shape round verifies `width` positions; when the drafter proposed fewer (k < width,
    --k auto), the padding must not count as proposed even where the target's argmax equals it."""
    from specdecode.decoding.drafting import Draft

    class Zeros:  # a target whose argmax is token 0 everywhere, as the padding is
        def forward(self, ids, cache, attend_len):
            logits = torch.zeros((*ids.shape, 7))
            logits[..., 0] = 1.0
            return logits

    class Drafter:  # proposes k zeros, no per-row counts
        def propose(self, state, k):
            return Draft(tokens=torch.zeros((state.last.shape[0], k), dtype=torch.long))

    bufs = RoundBuffers.new(2, 4, 7, SamplingParams(), torch.device("cpu"))
    cache = _Lengths(torch.tensor([10, 20]))
    run_round(Zeros(), cache, Drafter(), bufs, RoundShape(2, 4, False), SamplingParams(), 32, 7, may_sync=False)
    assert bufs.out[:, 0].tolist() == [2, 2] and bufs.out[:, 2].tolist() == [2, 2]
    assert cache.positions.tolist() == [13, 23]


# ---- overlapped rounds (--overlap: round.py's run_overlapped_round) ------------------------------

@pytest.mark.parametrize("k", [1, 3])
def test_overlapped_rounds_on_fixed_shapes_are_exact(llama_pair, k):
    """Compiled fixed-shape steps, finished rows frozen in the batch, two rounds in flight (the
    next launched before the last is read, as captured rounds run): the draft branch's cache
    reaches 2k + 1 positions past `last` and the output is still the target's."""
    torch._dynamo.reset()
    dec = _compiled(cpu_decoder(llama_pair.target, llama_pair.draft, k=k, batch_size=3, max_new_tokens=MAX_NEW,
                                overlap=True))
    eng = dec.engine()
    assert eng.rounds.fixed_shapes and eng.lookahead
    ids = dec.encode_all(RAGGED)
    tokens = [[] for _ in ids]
    for ev in eng.stream(ids):
        tokens[ev.row].extend(ev.tokens)
    assert tokens == oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)
    assert eng.max_in_flight == 2
    assert sum(s.accepted_tokens for s in eng.stats) > 0


class _RecordingSide:
    """A stand-in for accel/rounds.py's SideBranch: records what runs where."""

    def __init__(self, log, branch="draft"):
        self.log = log
        self.prefix = "" if branch == "draft" else f"{branch} "
        self.branch = branch

    def run(self, fn):
        self.log.append(f"{self.prefix}fork")
        out = fn()
        self.log.append(f"{self.branch} done")
        return out

    def join(self):
        self.log.append(f"{self.prefix}join")


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_an_overlapped_round_forks_the_draft_and_reads_nothing_back(llama_pair, monkeypatch, temperature):
    """The draft branch runs inside `side.run` (on CUDA: a second stream), every draft step in it,
    and the round joins before the acceptance; with `verify_side` (--overlap-sms: a green
    context's stream) the verify runs inside it, joined before the draft branch; the round reads
    nothing back to the host; and its results equal the in-line round's (no sides) from the
    same state."""
    dec = cpu_decoder(llama_pair.target, llama_pair.draft, k=3, batch_size=2, max_new_tokens=MAX_NEW,
                      temperature=temperature, seed=1, overlap=True)
    eng = dec.engine()
    ids = dec.encode_all(RAGGED[:2])

    def state():
        if eng.generator is not None:
            eng.generator.manual_seed(4)
        cache, bufs, input_ids, lengths, max_len = eng._open(ids)
        bufs.last.copy_(eng._prefill(cache, input_ids, lengths))
        eng.drafter.prefill(input_ids, lengths, max_len)
        if eng.generator is not None:
            bufs.draw_noise(eng.generator)
        return cache, bufs, max_len

    shape = RoundShape(3, 3, False, overlap=True)
    outs = []
    for side in (None, "recording", "both"):
        log = []
        cache, bufs, max_len = state()
        forward = eng.drafter.runner.forward
        monkeypatch.setattr(eng.drafter.runner, "forward", lambda *a, **kw: (log.append("draft step"), forward(*a, **kw))[1])
        target_forward = eng.runner.forward
        monkeypatch.setattr(eng.runner, "forward", lambda *a, **kw: (log.append("verify"), target_forward(*a, **kw))[1])

        def trap(*a, **k):
            raise AssertionError("host read inside a round")

        for name in ("item", "tolist", "__bool__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, trap)
        rounds = []
        for _ in range(3):  # the first round has no proposal; the next ones do where f_1 was kept
            rounds.append(run_round(eng.runner, cache, eng.drafter, bufs, shape, eng.params.sampling, max_len,
                                    eng.target_rows, may_sync=False,
                                    side=_RecordingSide(log) if side else None,
                                    verify_side=_RecordingSide(log, "verify") if side == "both" else None))
        monkeypatch.undo()
        assert rounds == [3, 3, 3]
        outs.append((bufs.out.tolist(), bufs.ahead.tolist(), bufs.ahead_ok.tolist(), cache.positions.tolist()))
        if side == "recording":
            one = ["fork"] + ["draft step"] * 4 + ["draft done", "verify", "join"]
            assert log == one * 3
        elif side == "both":
            one = (["fork"] + ["draft step"] * 4
                   + ["draft done", "verify fork", "verify", "verify done", "verify join", "join"])
            assert log == one * 3
    assert outs[0] == outs[1] == outs[2]
    out = outs[0][0]
    assert all(0 <= row[0] <= row[2] and row[2] in (0, 3) for row in out)


def test_scratch_buffers_are_per_lane():
    """A concurrent branch's kernels (kernels.lane) never share counters or partial sums with the
    main stream's; one lane's buffer is the same at every call (graphs captured later reuse it)."""
    from specdecode.accel import kernels

    dev = torch.device("cpu")
    main = kernels.scratch(dev, "test lane", 8, torch.int32)
    with kernels.lane("side"):
        side = kernels.scratch(dev, "test lane", 8, torch.int32)
        assert kernels.scratch(dev, "test lane", 8, torch.int32) is side
    assert side is not main and side.data_ptr() != main.data_ptr()
    assert kernels.scratch(dev, "test lane", 8, torch.int32) is main


def test_the_verify_share_leaves_the_draft_at_least_what_was_asked():
    """--overlap-sms N: the verify's green context gets all SMs but N rounded DOWN to the driver's
    granularity (the driver rounds a request up, which would take SMs from the draft)."""
    from specdecode.accel.rounds import green_share

    assert green_share(132, 16, 9) == 112  # H100/H200: multiples of 8; the draft keeps 20
    assert green_share(132, 20, 9) == 112 and green_share(132, 32, 9) == 96
    assert green_share(108, 9, 8) == 98  # A100: multiples of 2
    for sms, keep, major in ((132, 16, 9), (132, 124, 9), (108, 9, 8), (80, 3, 7), (60, 1, 6)):
        share = green_share(sms, keep, major)
        assert sms - share >= keep and share % (8 if major >= 9 else 2 if major >= 7 else 1) == 0
    with pytest.raises(ValueError, match="smallest share"):
        green_share(132, 126, 9)  # 6 left: below 8
    with pytest.raises(ValueError, match="smallest share"):
        green_share(132, 140, 9)


def test_green_streams_are_made_once_per_share_and_refused_clearly(monkeypatch):
    """green_stream: one green context and stream per (device, SMs), kept (graphs captured on the
    stream refer to it); a torch without green contexts gets one clear error, not an AttributeError."""
    from torch.cuda import green_contexts

    from specdecode.accel import rounds

    monkeypatch.setattr(rounds, "_GREEN", {})
    monkeypatch.setattr(green_contexts, "SUPPORTED", False, raising=False)  # torch 2.9-2.13 without them
    with pytest.raises(RuntimeError, match="green contexts"):
        rounds.green_stream(torch.device("cuda", 0), 32)

    class Refusing:  # torch 2.14 without cuda-bindings: no SUPPORTED flag, the constructor refuses
        @staticmethod
        def create(num_sms, device_id):
            raise RuntimeError("GreenContext requires the cuda.bindings package")

        def Stream(self):
            raise AssertionError("never reached")

    monkeypatch.delattr(green_contexts, "SUPPORTED", raising=False)
    monkeypatch.setattr(green_contexts, "GreenContext", Refusing)
    with pytest.raises(RuntimeError, match="green contexts are not available here: GreenContext requires the cuda"):
        rounds.green_stream(torch.device("cuda", 0), 32)
    assert rounds._GREEN == {}

    made = []

    class FakeStream:
        pass

    class FakeContext:
        @staticmethod
        def create(num_sms, device_id):
            made.append((num_sms, device_id))
            ctx = FakeContext()
            ctx.stream = FakeStream()
            return ctx

        def Stream(self):
            return self.stream

    monkeypatch.setattr(green_contexts, "GreenContext", FakeContext)  # (2.14: no SUPPORTED flag)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    a = rounds.green_stream(torch.device("cuda", 0), 32)
    assert rounds.green_stream(torch.device("cuda", 0), 32) is a
    b = rounds.green_stream(torch.device("cuda", 0), 96)
    assert b is not a and isinstance(b, FakeStream)
    assert made == [(32, 0), (96, 0)]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_the_fused_overlapped_acceptance_equals_the_reference(k):
    """accel/glue.accept_overlapped (one kernel a round, here under the interpreter) accepts and
    commits exactly what round.py's accept_overlapped_reference does: rows whose proposal is good
    test e_1 .. e_k and f_1, the others f_1 alone; greedy from the target's argmax (agreeing
    prefixes of every length, f_1 kept or not) and sampling (counts given); live and finished rows;
    the next proposal and its flag."""
    from specdecode.accel import glue
    from specdecode.decoding.round import accept_overlapped_reference, overlapped_tested

    B = 6
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        bufs = RoundBuffers.new(B, k + 1, 50, SamplingParams(), torch.device("cpu"), overlap=True)
        bufs.ahead.copy_(torch.randint(0, 50, (B, k + 1), generator=g))
        bufs.ahead_ok.copy_(torch.tensor([1, 1, 1, 0, 0, 1]) if seed % 2 else torch.randint(0, 2, (B,), generator=g))
        bufs.alive.copy_(torch.tensor([1, 1, 1, 1, 0, 0]) if seed % 2 else torch.randint(0, 2, (B,), generator=g))
        bufs.last.copy_(torch.randint(0, 50, (B,), generator=g))
        bufs.prev.fill_(-7)
        bufs.out.fill_(-9)
        f = torch.randint(0, 50, (B, k + 1), generator=g)
        tested = overlapped_tested(bufs, k, f)
        target = torch.randint(0, 50, (B, k + 1), generator=g)
        for b in range(B):  # agree on a prefix of every length, the whole of it in some rows
            agree = (b + seed) % (k + 2)
            target[b, :agree] = tested[b, :agree]
        positions = torch.randint(10, 90, (B,), generator=g)
        n = bufs.ahead_ok * k + 1
        cases = [dict(target_tokens=target)]
        a = (torch.rand(B, generator=g) * (n + 1)).long().clamp(max=n)
        cases.append(dict(accepted=a, own=torch.randint(0, 50, (B,), generator=g)))
        for kw in cases:
            ref_bufs, ref_pos = _copy(bufs), positions.clone()
            accept_overlapped_reference(_Lengths(ref_pos), ref_bufs, k, f, **kw)
            dbufs, fused_pos = _on(_copy(bufs), DEV), positions.clone().to(DEV)
            glue.accept_overlapped(_Lengths(fused_pos), dbufs, k, f.to(DEV), **{n_: t.to(DEV) for n_, t in kw.items()})
            got = _on(dbufs, "cpu")
            for name in ("last", "prev", "out", "ahead", "ahead_ok"):
                assert getattr(got, name).tolist() == getattr(ref_bufs, name).tolist(), (seed, name, kw.keys())
            assert fused_pos.cpu().tolist() == ref_pos.tolist()
        # the reference itself, on the greedy case: good rows that kept all of e_1 .. e_k and f_1
        # emit f_1 as their own token and keep f_2 .. f_{k+1} as a good proposal
        ref_bufs = _copy(bufs)
        accept_overlapped_reference(_Lengths(positions.clone()), ref_bufs, k, f, target_tokens=target)
        for b in range(B):
            kept_all = bool((tested[b, : int(n[b])] == target[b, : int(n[b])]).all())
            assert int(ref_bufs.ahead_ok[b]) == int(kept_all and bufs.alive[b])
            if kept_all:
                assert int(ref_bufs.last[b]) == int(f[b, 0])
