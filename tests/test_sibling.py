"""A token tree of one sibling (decoding/round.py's RoundShape.sibling, verify.verify_greedy_sibling).

A greedy round may verify, besides the draft's chain d_1 .. d_k, the draft's second choice s at each
row's last proposed position n, in one more verify row: s sits at d_n's position, is written at
its own slot (the round's last) and sees last, d_1 .. d_{n-1} and itself, not d_n. Where the
target rejects d_n and its token there is s, the round keeps s and the target's token after it.
What must hold: the acceptance rule alone; the sibling row's logits equal a plain forward of the
sibling in its twin's place, on every attention path (transformers' modules, the compiled
layers' explicit masks); its keys and values move to the twin's slot when kept; and the output
is exactly the target alone's, greedy, with the sibling kept in some rounds.
"""

from __future__ import annotations

import pytest
import torch

from fixtures import PROMPTS, oracle_greedy
from helpers import cpu_decoder
from specdecode.accel.runner import ModelRunner
from specdecode.decoding import round as round_mod
from specdecode.decoding.cache import KVCache
from specdecode.decoding.engine import EagerRounds, EngineParams, SpeculativeEngine
from specdecode.decoding.sampling import SamplingParams
from specdecode.decoding.step import ModelStep
from specdecode.decoding.verify import verify_greedy, verify_greedy_sibling
from specdecode.drafters.draft_model import ModelDrafter

RAGGED = [PROMPTS[0], PROMPTS[7], PROMPTS[2]]
MAX_NEW = 40


# ---- the acceptance rule -------------------------------------------------------------------


def test_the_sibling_is_kept_only_where_the_target_rejects_the_last_token_and_takes_it():
    draft = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7], [5, 6, 7], [5, 6, 0]])
    sibling = torch.tensor([9, 9, 9, 8, 9])
    num = torch.tensor([3, 3, 3, 3, 2])
    target = torch.tensor([
        [5, 6, 9, 40, 41],  # d_3 rejected, the target's token there is the sibling: kept, then 41
        [5, 6, 7, 40, 41],  # everything kept: the bonus 40, no sibling
        [5, 1, 9, 40, 41],  # d_2 rejected (not the last token): the plain rule
        [5, 6, 9, 40, 41],  # d_3 rejected but the sibling (8) is not the target's 9
        [5, 9, 7, 40, 41],  # n = 2: d_2 rejected, the sibling 9 taken; the tree's row gives 41
    ])
    accepted, nxt, taken = verify_greedy_sibling(draft, sibling, target, num)
    assert accepted.tolist() == [3, 3, 1, 2, 2]
    assert nxt.tolist() == [41, 40, 1, 9, 41]
    assert taken.tolist() == [True, False, False, False, True]
    # where the sibling is not kept, the plain greedy rule's result
    plain = verify_greedy(draft, torch.nn.functional.one_hot(target[:, :4], 64).float(), num)
    for b in range(5):
        if not taken[b]:
            assert (accepted[b], nxt[b]) == (plain[0][b], plain[1][b])
    with pytest.raises(ValueError):
        verify_greedy_sibling(draft, sibling, target[:, :4], num)


# ---- the sibling row on every attention path ----------------------------------------------


def _step(pair, path):
    """The target's Step: transformers' modules, the fused layers (explicit masks, eager), or the
    Triton kernels (the attention kernel; under the interpreter on CPU) with the tensor-core
    products ("mixed") or cuBLAS's ("hybrid")."""
    model = cpu_decoder(pair.target).target.model
    if path == "transformers":
        return ModelStep(model)
    if path == "fused":
        return ModelRunner(model, fused=True, kernels=False)
    return ModelRunner(model, fused=True, kernels=True, multi_row=path.split("-")[1])


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("path", ["transformers", "fused", "kernels-mixed", "kernels-hybrid"])
@pytest.mark.parametrize("stacked", [False, True], ids=["per-layer", "stacked"])
def test_the_sibling_row_is_a_forward_of_the_sibling_in_its_twins_place(request, family, path, stacked):
    """Logits of [last, d_1 .. d_w, s] with s a sibling of d_n: rows 0..w as the plain forward of
    [last, d_1 .. d_w], the sibling's row as the plain forward's row n of [last, .., d_{n-1}, s];
    after move_slots its keys and values sit where that forward wrote s's."""
    pair = request.getfixturevalue(f"{family}_pair")
    step = _step(pair, path)
    g = torch.Generator().manual_seed(0)
    B, w, P, S = 2, 4, 11, 40  # Gemma 3's window is 8: the tree runs past it
    ids = torch.randint(3, 100, (B, P + w + 1), generator=g)
    n = torch.tensor([2, 4])
    sib = torch.tensor([17, 23])

    def prefilled():
        cache = KVCache(B, S, torch.device("cpu"))
        if stacked:
            text = step.model.config.get_text_config()
            dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            cache.stack(text.num_hidden_layers, text.num_key_value_heads, dim, next(step.model.parameters()).dtype)
        step.forward(ids[:, :P], cache, S)
        cache.set_positions(torch.full((B,), P))
        return cache

    with torch.inference_mode():
        tree_in = torch.cat([ids[:, P:], sib[:, None]], dim=1)  # [B, w + 2]
        cache = prefilled()
        tree = step.forward(tree_in, cache, S, sibling=n).float()
        cache.move_slots(cache.positions + w + 1, cache.positions + n)
        plain = step.forward(ids[:, P:], prefilled(), S).float()
        torch.testing.assert_close(tree[:, : w + 1], plain, rtol=1e-4, atol=1e-4)
        for b in range(B):
            nb = int(n[b])
            alt_in = torch.cat([ids[b : b + 1, P : P + nb], sib[b : b + 1, None]], dim=1)
            other = prefilled()
            alt = step.forward(alt_in.expand(B, -1).contiguous(), other, S).float()
            torch.testing.assert_close(tree[b, w + 1], alt[b, nb], rtol=1e-4, atol=1e-4)
            for i in other.keys:  # the moved slot holds what the plain forward wrote for s
                torch.testing.assert_close(cache.keys[i][b, :, P + nb], other.keys[i][b, :, P + nb],
                                           rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(cache.values[i][b, :, P + nb], other.values[i][b, :, P + nb],
                                           rtol=1e-4, atol=1e-4)


# ---- rounds ----------------------------------------------------------------------------------


def _host_if(pred, body):
    """What a CUDA graph IF node does with `body`, decided on the host (CPU tests)."""
    if bool(pred):
        body()


class _InRoundRounds(EagerRounds):
    """Rounds run as a captured round runs them: no host synchronisation inside (the draft's
    confidence stop decided by its `conditional`)."""

    def launch(self, cache, bufs, shape, sampling, attend_len, target_rows):
        steps = self._round(cache, bufs, shape, sampling, attend_len, target_rows, may_sync=False)
        return steps, bufs.out[:, : 3 + max(shape.width, steps)].clone()


def _generate(pair, *, k, fixed, stop_below=None, compiled=False, fused_commit=False, device_stop=False):
    """Per-row tokens of greedy rounds with the sibling, and how many rounds kept one.
    fused_commit: the commit as captured rounds run it (accel/glue.py's kernel; under the
    interpreter on CPU); device_stop: the confidence stop decided in the round (IF nodes)."""
    dec = cpu_decoder(pair.target, pair.draft, k=k, max_new_tokens=MAX_NEW)
    target_step = ModelStep(dec.target.model)
    draft_runner = None
    if compiled:  # fused layers, compiled without a C compiler: the explicit masks' path
        target_step = ModelRunner(dec.target.model, compile=True, compile_backend="aot_eager")
        draft_runner = ModelRunner(dec.draft.model, compile=True, compile_backend="aot_eager")
    drafter = ModelDrafter(dec.draft, runner=draft_runner, stop_below=stop_below,
                           conditional=_host_if if device_stop else None)
    params = EngineParams(k, MAX_NEW, sampling=SamplingParams(), sibling=True)
    rounds = (_InRoundRounds if device_stop else EagerRounds)(target_step, fixed_shapes=fixed)
    eng = SpeculativeEngine(dec.target, drafter, params, runner=target_step, rounds=rounds)
    if fused_commit:
        from specdecode.accel import glue

        eng.rounds.commit = glue.commit
    kept = []
    real = round_mod.verify_greedy_sibling

    def spy(*args, **kw):
        out = real(*args, **kw)
        kept.append(int(out[2].sum()))
        return out

    round_mod.verify_greedy_sibling = spy
    try:
        ids = [dec.encode(p) for p in RAGGED]
        tokens = [[] for _ in ids]
        shapes = set()
        for ev in eng.stream(ids):
            tokens[ev.row] += list(ev.tokens)
        shapes = {s.sibling for s in eng.shapes()}
    finally:
        round_mod.verify_greedy_sibling = real
    return tokens, sum(kept), shapes


@pytest.mark.parametrize("fixed", [False, True], ids=["variable", "fixed-shapes"])
@pytest.mark.parametrize("k,stop_below", [(3, None), (5, 0.6)], ids=["k3", "k5-stop"])
def test_rounds_with_a_sibling_emit_what_the_target_alone_does(llama_pair, fixed, k, stop_below):
    """Rounds whose last token the target rejects keep the sibling where the target takes it, and
    the output stays the target's own."""
    tokens, kept, shapes = _generate(llama_pair, k=k, fixed=fixed, stop_below=stop_below)
    assert tokens == oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)
    assert kept > 0  # the tree did keep siblings
    assert shapes == {True}


@pytest.mark.parametrize("device_stop", [False, True], ids=["plain", "device-stop"])
def test_rounds_with_a_sibling_and_the_fused_commit_emit_what_the_target_alone_does(llama_pair, device_stop):
    """As captured rounds run: the fused commit, and (device-stop) the draft's confidence stop decided
    in the round, its skipped steps' second choices left at `last` past every row's proposal."""
    tokens, kept, _ = _generate(llama_pair, k=4, fixed=True, fused_commit=True, device_stop=device_stop,
                                stop_below=0.6 if device_stop else None)
    assert tokens == oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)
    assert kept > 0


def test_compiled_rounds_with_a_sibling_emit_what_the_target_alone_does(llama_pair):
    torch._dynamo.reset()
    tokens, kept, _ = _generate(llama_pair, k=4, fixed=True, compiled=True)
    assert tokens == oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)
    assert kept > 0


def test_the_engine_refuses_a_sibling_without_greedy_rounds_of_a_draft_model(llama_pair):
    dec = cpu_decoder(llama_pair.target, llama_pair.draft, k=3)
    drafter = ModelDrafter(dec.draft)
    with pytest.raises(ValueError, match="sibling"):
        SpeculativeEngine(dec.target, drafter, EngineParams(3, 8, sampling=SamplingParams(temperature=0.8),
                                                            sibling=True))
    # the target alone: nothing to branch, the flag is dropped
    eng = SpeculativeEngine(dec.target, None, EngineParams(3, 8, sibling=True))
    assert not eng.params.sibling


def test_move_slots_copies_one_slot_per_row_in_every_layer():
    for stacked in (False, True):
        cache = KVCache(3, 16, torch.device("cpu"))
        if stacked:
            cache.stack(4, 2, 8, torch.float32)
        for i in range(4):
            for buf in cache.layer(i, 2, 8, 8, torch.float32):
                buf.normal_()
        before = {i: (cache.keys[i].clone(), cache.values[i].clone()) for i in range(4)}
        src, dst = torch.tensor([10, 11, 12]), torch.tensor([3, 11, 5])  # row 1 keeps its slot
        cache.move_slots(src, dst)
        for i in range(4):
            for now, old in zip((cache.keys[i], cache.values[i]), before[i]):
                want = old.clone()
                for b in range(3):
                    want[b, :, dst[b]] = old[b, :, src[b]]
                assert torch.equal(now, want)
        if stacked:  # after a compaction: the kept rows, still views of one tensor
            moved = cache.keys[1].clone()
            cache.select_rows(torch.tensor([2, 0]))
            assert torch.equal(cache.keys[1], moved[[2, 0]])
            assert cache.keys[1].data_ptr() == cache._stack[0][1].data_ptr()


def test_sibling_settings_say_what_they_need():
    from specdecode.settings import Settings

    assert Settings(sibling=True).sibling and Settings(sibling=True, drafter="none").sibling  # the baseline
    assert Settings(sibling=True, drafter="early-exit", exit_layer=1).sibling
    for bad, says in (({"drafter": "ngram"}, "not ngram"), ({"temperature": 0.7}, "--temperature 0"),
                      ({"overlap": True}, "--overlap")):
        with pytest.raises(ValueError, match=says):
            Settings(sibling=True, **bad)
