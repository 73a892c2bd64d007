"""GPU tests (marker `gpu`): the round as one captured device program.

On CUDA, rounds run as CUDA graphs (accel/rounds.py): each must be exactly the round the
reference runs (fp32 greedy equals the target alone, for every drafter, k auto included),
wait on the host exactly once per round, launch one graph per round and nothing else that
drains the device, and capture nothing after `prepare` (what bench runs untimed).
"""

from __future__ import annotations

import pytest
import torch

from fixtures import PROMPTS, oracle_greedy
from specdecode.api import SpeculativeDecoder
from specdecode.settings import Settings

pytestmark = pytest.mark.gpu

RAGGED = [PROMPTS[0], PROMPTS[7], PROMPTS[2]]


def dec(pair, **kw):
    s = Settings(target=str(pair.target), draft=str(pair.draft), device="cuda", chat=False, dtype="float32", **kw)
    return SpeculativeDecoder.from_settings(s)


@pytest.mark.parametrize("drafter,k", [("model", 4), ("model", "auto"), ("ngram", 3), ("early-exit", 3)])
@pytest.mark.parametrize("batch", [1, 3])
def test_captured_rounds_are_exact(llama_pair, drafter, k, batch):
    d = dec(llama_pair, drafter=drafter, k=k, max_k=5, exit_layer=1 if drafter == "early-exit" else None,
            max_new_tokens=40, batch_size=batch)
    rounds = d.rounds()
    assert rounds is not None and rounds.captured
    results = d.generate(RAGGED)
    assert [r.token_ids for r in results] == oracle_greedy(llama_pair.target, RAGGED, 40)
    assert rounds.captures > 0


@pytest.mark.parametrize("k", [4, "auto"])
@pytest.mark.parametrize("batch", [1, 3])
def test_captured_rounds_with_a_sibling_are_exact(llama_pair, k, batch):
    """--sibling in captured rounds (the Triton attention kernel's tree, the sibling's keys and values
    moved on the device, the fused commit; k auto with the device confidence stop): fp32 greedy
    equals the target alone, and a round still waits on the host once."""
    d = dec(llama_pair, k=k, max_k=5, max_new_tokens=40, batch_size=batch, sibling=True)
    ids = d.encode_all(RAGGED)
    d.reserve(ids)
    eng = d.engine()
    assert eng.params.sibling and all(s.sibling for s in eng.shapes())
    eng.prepare(ids)
    tokens = [[] for _ in ids]
    try:
        for ev in eng.stream(ids):
            tokens[ev.row] += list(ev.tokens)
            if ev.round == 0 and ev.row == len(ids) - 1:  # rounds after the first tokens: no sync inside
                torch.cuda.set_sync_debug_mode("error")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert tokens == oracle_greedy(llama_pair.target, RAGGED, 40)
    assert eng.rounds.captures > 0


def test_one_host_wait_and_one_graph_launch_per_round(llama_pair, monkeypatch):
    """After the first tokens, a round is one graph replay and one wait on its counts; any other
    synchronising call (.item(), a pageable copy, torch.cuda.synchronize) raises in sync-debug mode."""
    d = dec(llama_pair, k=4, max_new_tokens=40, batch_size=3)
    ids = d.encode_all(RAGGED)
    d.reserve(ids)
    eng = d.engine()
    eng.prepare(ids)  # capture first: capturing synchronises
    captured = eng.rounds.captures
    waits, replays, counting = [0], [0], [False]  # counted once the first tokens are out (prefill
    real_sync, real_replay = torch.cuda.Event.synchronize, torch.cuda.CUDAGraph.replay  # is a replay too)

    def counted_sync(self):
        waits[0] += counting[0]
        return real_sync(self)

    def counted_replay(self):
        replays[0] += counting[0]
        return real_replay(self)

    monkeypatch.setattr(torch.cuda.Event, "synchronize", counted_sync)
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted_replay)
    rounds = 0
    stream = eng.stream(ids)
    for ev in stream:
        if ev.round == 0 and ev.row == len(ids) - 1:
            torch.cuda.set_sync_debug_mode("error")
            counting[0] = True
        rounds = max(rounds, ev.round)
    torch.cuda.set_sync_debug_mode("default")
    assert rounds > 3 and eng.max_in_flight == 2  # rounds were launched one ahead
    assert waits[0] == rounds
    # one graph per round; a round launched ahead is dropped when every row stopped (EOS) before it
    assert rounds <= replays[0] <= rounds + 1
    assert eng.rounds.captures == captured  # nothing captured while generating


def test_k_auto_prices_rounds_by_their_captured_graphs(llama_pair):
    """Each captured round graph is timed once at capture; --k auto's policy gets those times by
    k (the lookahead rounds' shapes) before its first round, and chooses among them."""
    d = dec(llama_pair, k="auto", max_k=5, max_new_tokens=24, batch_size=1)
    ids = d.encode_all(RAGGED[:1])
    d.reserve(ids)
    eng = d.engine()
    eng.prepare(ids)
    rounds = eng.rounds
    assert len(rounds.round_ms) == rounds.captures == 10  # k 1..5, with and without `prev`
    assert all(ms > 0 for ms in rounds.round_ms.values())
    list(eng.stream(ids))
    costs = eng.k_policy.costs
    assert sorted(costs) == [1, 2, 3, 4, 5] and all(v > 0 for v in costs.values())
    assert costs[5] > costs[1]  # four more draft steps cost something
    assert set(eng.k_policy.history) <= set(costs)
    assert all(s.width == s.k for s in eng.shapes())  # a round of k verifies k positions
    if getattr(eng.drafter, "device_stop", False):
        # the device confidence stop: each round of k > 1 timed again, every step after the first skipped
        assert len(rounds.shortest_ms) == 8 and eng.k_policy.stop
        short = eng.k_policy.shortest
        # (a shortest round timed above its full one, by noise, is left out)
        assert 5 in short and set(short) <= {2, 3, 4, 5} and all(short[k] <= costs[k] for k in short)
        assert eng.k_policy.step_saving(5) > 0


def test_device_if_runs_its_body_only_where_the_predicate_holds():
    from specdecode.accel.rounds import conditional_supported, device_if

    device = torch.device("cuda")
    if not conditional_supported(device):
        pytest.skip("this torch cannot capture CUDA graph IF nodes")
    pred = torch.ones((), dtype=torch.bool, device=device)
    inside, after = torch.zeros(4, device=device), torch.zeros(4, device=device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        device_if(pred, lambda: inside.add_(1))
        after.add_(1)
    inside.zero_()
    after.zero_()
    for value in (True, False, True):
        pred.fill_(value)
        graph.replay()
    torch.cuda.synchronize()
    assert inside.tolist() == [2.0] * 4 and after.tolist() == [3.0] * 4


def test_k_auto_stops_drafting_on_the_device(llama_pair):
    """--k auto's confidence stop in captured rounds: the draft steps after every row stopped sit
    in CUDA graph IF nodes; the output stays the target's own, proposals get shorter than k, and
    a round still waits on the host once (no synchronisation inside the IF nodes)."""
    d = dec(llama_pair, k="auto", max_k=5, max_new_tokens=40, batch_size=1)
    ids = d.encode_all(RAGGED[:1])
    d.reserve(ids)
    eng = d.engine()
    if getattr(eng.drafter, "conditional", None) is None:
        pytest.skip("this torch cannot capture CUDA graph IF nodes")
    eng.prepare(ids)
    events = []
    try:
        for ev in eng.stream(ids):
            events.append(ev)
            if ev.round == 0:  # the first token is read with a sync; rounds after it must not add any
                torch.cuda.set_sync_debug_mode("error")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    tokens = [t for ev in events for t in ev.tokens]
    assert [tokens] == oracle_greedy(llama_pair.target, RAGGED[:1], 40)
    rounds = [ev for ev in events if ev.round > 0]
    assert any(ev.proposed < eng.k_policy.max_k for ev in rounds)


def test_a_refused_if_node_captures_the_round_without_the_stop(llama_pair, monkeypatch, caplog):
    """Where the driver refuses the draft's IF nodes, the round is captured again without them
    (one warning) and decodes exactly as before."""
    from specdecode.accel import rounds as rounds_mod

    real, calls = rounds_mod.capture, []

    def refusing(fn, state, pool=None, warmups=2):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("operation not permitted when stream is capturing")
        return real(fn, state, pool=pool, warmups=warmups)

    d = dec(llama_pair, k="auto", max_k=4, max_new_tokens=24, batch_size=1)
    eng = d.engine()
    if getattr(eng.drafter, "conditional", None) is None:
        pytest.skip("this torch cannot capture CUDA graph IF nodes")
    monkeypatch.setattr(rounds_mod, "capture", refusing)
    monkeypatch.setattr(rounds_mod, "_IF_REFUSED", set())  # what this test refuses stays in it
    with caplog.at_level("WARNING", logger="specdecode"):
        results = d.generate(RAGGED[:1])
    assert [r.token_ids for r in results] == oracle_greedy(llama_pair.target, RAGGED[:1], 24)
    assert sum("confidence stop is off" in r.message for r in caplog.records) == 1
    assert not rounds_mod.conditional_supported(torch.device("cuda"))  # later drafters draft without it


def test_sampling_is_seeded_through_captured_rounds(llama_pair):
    a = dec(llama_pair, k=3, temperature=1.0, top_p=0.9, seed=3, max_new_tokens=24, batch_size=3).generate(RAGGED)
    b = dec(llama_pair, k=3, temperature=1.0, top_p=0.9, seed=3, max_new_tokens=24, batch_size=3).generate(RAGGED)
    c = dec(llama_pair, k=3, temperature=1.0, top_p=0.9, seed=4, max_new_tokens=24, batch_size=3).generate(RAGGED)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_captured_sampling_equals_the_eager_round_on_the_same_noise(llama_pair):
    """Same modules (transformers, uncompiled), same seed: the captured round and the eager
    round draw the same noise before each round, so they emit the same tokens."""
    common = dict(k=3, temperature=1.0, seed=11, max_new_tokens=24, batch_size=1, fused=False, compile=False)
    graphs = dec(llama_pair, cuda_graphs=True, **common)
    eager = dec(llama_pair, cuda_graphs=False, **common)
    assert graphs.rounds() is not None and eager.rounds() is None
    got = [r.token_ids for r in graphs.generate(RAGGED[:1])]
    ref = [r.token_ids for r in eager.generate(RAGGED[:1])]
    assert got == ref


@pytest.mark.parametrize("batch", [1, 3])
def test_draft_equal_to_target_accepts_everything_in_captured_rounds(llama_pair, batch):
    """The draft's own path (its one- and two-row kernel steps, the feed of the previous round's
    last proposal, its captured prefill and cache) must reproduce the target's tokens: with the
    target as its own draft every proposal is accepted. A fault there costs acceptance only,
    never exactness, so the exactness tests cannot see it."""
    s = Settings(target=str(llama_pair.target), draft=str(llama_pair.target), device="cuda", chat=False,
                 dtype="float32", k=4, max_new_tokens=40, batch_size=batch)
    d = SpeculativeDecoder.from_settings(s)
    assert d.rounds() is not None and d.rounds().captured
    results = d.generate(RAGGED)
    assert [r.token_ids for r in results] == oracle_greedy(llama_pair.target, RAGGED, 40)
    for r in results:
        assert r.stats.draft_tokens > 0
        assert r.stats.acceptance_rate == 1.0


def test_the_captured_round_commits_in_one_kernel(llama_pair):
    """On CUDA the round's acceptance and commit run as accel/glue.py's one kernel; --no-kernels
    keeps Triton out of the round (the reference's tensor operations). Both are the target's own
    output."""
    from specdecode.accel import glue

    fused = dec(llama_pair, k=4, max_new_tokens=40, batch_size=3)
    plain = dec(llama_pair, k=4, max_new_tokens=40, batch_size=3, kernels=False)
    assert fused.rounds().commit is glue.commit
    assert plain.rounds() is not None and plain.rounds().commit is None
    want = oracle_greedy(llama_pair.target, RAGGED, 40)
    assert [r.token_ids for r in fused.generate(RAGGED)] == want
    assert [r.token_ids for r in plain.generate(RAGGED)] == want


# ---- overlapped rounds (--overlap): the draft branch on a second stream inside the round's graph ----

@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_captured_overlapped_rounds_are_exact(llama_pair, k, batch):
    """The round's graph forks: the verify on the main stream, the draft's k+1 steps on the side
    stream (its kernels on their own scratch lane), joined before the acceptance. fp32 greedy
    equals the target alone, one graph launch and one host wait per round, nothing captured
    after prepare."""
    d = dec(llama_pair, k=k, overlap=True, max_new_tokens=40, batch_size=batch)
    ids = d.encode_all(RAGGED)
    d.reserve(ids)
    eng = d.engine()
    eng.prepare(ids)
    rounds = eng.rounds
    assert rounds.captured and rounds.side is not None and rounds.captures == 1
    assert rounds.accept is not None  # the acceptance and commit as one kernel (accel/glue.py)
    tokens = [[] for _ in ids]
    for ev in eng.stream(ids):
        tokens[ev.row].extend(ev.tokens)
    assert tokens == oracle_greedy(llama_pair.target, RAGGED, 40)
    assert eng.max_in_flight == 2 and rounds.captures == 1
    assert sum(s.accepted_tokens for s in eng.stats) > 0


def test_captured_overlapped_rounds_with_the_target_as_draft_accept_everything(llama_pair):
    """The draft branch's kernels on the side stream reproduce the target's tokens: with the target
    as its own draft every proposal after the first round is good and accepted."""
    s = Settings(target=str(llama_pair.target), draft=str(llama_pair.target), device="cuda", chat=False,
                 dtype="float32", k=3, overlap=True, max_new_tokens=40, batch_size=3)
    results = SpeculativeDecoder.from_settings(s).generate(RAGGED)
    assert [r.token_ids for r in results] == oracle_greedy(llama_pair.target, RAGGED, 40)
    for r in results:
        assert r.stats.acceptance_rate == 1.0 and r.stats.draft_tokens == 3 * (r.stats.rounds - 1)


def test_captured_overlapped_sampling_equals_the_in_line_branches(llama_pair):
    """Same seed: the overlapped round with its draft branch on the side stream emits what it emits
    with the branches one after the other on one stream (CapturedRounds(concurrent=False))."""
    from specdecode.accel.rounds import CapturedRounds

    common = dict(k=2, overlap=True, temperature=1.0, seed=5, max_new_tokens=24, batch_size=3)
    concurrent = [r.token_ids for r in dec(llama_pair, **common).generate(RAGGED)]
    d = dec(llama_pair, **common)
    d._rounds[(id(d.runner(d.target)), None)] = CapturedRounds(d.runner(d.target), concurrent=False)
    assert d.rounds().side is None
    assert [r.token_ids for r in d.generate(RAGGED)] == concurrent


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_overlapped_rounds_with_the_verify_on_a_green_context(llama_pair, temperature):
    """--overlap-sms: the verify runs on a green context of all but N SMs (its own stream, forked
    and joined inside the round's graph like the draft branch). Greedy fp32 output equals the
    target alone; sampling with a seed equals the same rounds with every SM shared."""
    from specdecode.accel.rounds import green_stream

    try:
        green_stream(torch.device("cuda"), 8)
    except RuntimeError as e:
        pytest.skip(str(e))
    common = dict(k=2, overlap=True, temperature=temperature, seed=5, max_new_tokens=32, batch_size=3)
    d = dec(llama_pair, overlap_sms=16, **common)
    rounds = d.rounds()
    assert rounds.verify_side is not None and rounds.side is not None
    tokens = [r.token_ids for r in d.generate(RAGGED)]
    if temperature == 0.0:
        assert tokens == oracle_greedy(llama_pair.target, RAGGED, 32)
    else:
        assert tokens == [r.token_ids for r in dec(llama_pair, **common).generate(RAGGED)]


def test_a_round_graph_is_shared_by_a_runners_drafters_unless_one_names_its_own_state(llama_pair):
    """Captured round graphs are kept per drafter runner: a second drafter on the runner replays the
    first one's graphs (what bench's passes rely on to capture nothing on the clock), and a drafter
    whose round reads tensors of its own (capture_key: gpu_bench's oracle) gets graphs of its own."""
    from specdecode.drafters.draft_model import ModelDrafter

    d = dec(llama_pair, k=3, max_new_tokens=8)
    rounds = d.rounds()
    ids = d.encode_all(RAGGED[:1])
    d.reserve(ids)
    first = d.engine()
    first.prepare(ids)
    before = rounds.captures
    assert before > 0
    second = d.engine()
    assert second.drafter is not first.drafter and second.drafter.runner is first.drafter.runner
    second.prepare(ids)
    assert rounds.captures == before  # the same graphs

    class Own(ModelDrafter):
        capture_key = "own tensors"

    third = d.engine()
    third.drafter = Own(d.draft, runner=first.drafter.runner)
    third.prepare(ids)
    assert rounds.captures > before
