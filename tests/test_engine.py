"""Invariant 1 and 3 (DESIGN.md) end to end on tiny models loaded through the product's loader.

Greedy speculative output must equal Hugging Face `generate()` on the target alone, token
for token, in float32 on CPU: batch 1 and a ragged batch of 3, k in {1, 4}, three model
families (Llama; Qwen2 with a target table padded past the draft's; Gemma 3 with an
8-token sliding window, run well past it). Draft == target accepts everything; EOS inside
an accepted block stops the row; max_new_tokens is never exceeded.
"""

from __future__ import annotations

import pytest
import torch

from fixtures import PROMPTS, oracle_greedy
from helpers import cpu_decoder
from specdecode.api import SpeculativeDecoder
from specdecode.decoding.engine import EngineParams, SpeculativeEngine
from specdecode.decoding.round import RoundShape
from specdecode.decoding.sampling import SamplingParams
from specdecode.drafters.draft_model import ModelDrafter

MAX_NEW = 40
RAGGED = [PROMPTS[0], PROMPTS[7], PROMPTS[2]]  # 3, 25 and 9 words


def decoder(target, draft=None, **kw) -> SpeculativeDecoder:
    return cpu_decoder(target, draft, **{"max_new_tokens": MAX_NEW, **kw})


@pytest.fixture(scope="module")
def oracles(llama_pair, qwen2_pair, gemma3_pair):
    prompts = sorted(set(RAGGED + [PROMPTS[1]]))
    out = {}
    for pair in (llama_pair, qwen2_pair, gemma3_pair):
        ids = oracle_greedy(pair.target, prompts, MAX_NEW)
        out[pair.family] = dict(zip(prompts, ids))
    return out


def _pair(request, family):
    return request.getfixturevalue(f"{family}_pair")


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_matches_target_alone(request, oracles, family, k, batch):
    pair = _pair(request, family)
    dec = decoder(pair.target, pair.draft, k=k, batch_size=batch)
    results = dec.generate(RAGGED)
    for prompt, res in zip(RAGGED, results):
        assert res.token_ids == oracles[family][prompt], (family, k, batch, prompt)
        assert res.stats.new_tokens == len(res.token_ids) <= MAX_NEW
    # the pair must actually exercise partial acceptance, or the test proves little
    accepted = sum(r.stats.accepted_tokens for r in results)
    proposed = sum(r.stats.draft_tokens for r in results)
    assert 0 < accepted < proposed


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("batch", [1, 3])
def test_overlapped_rounds_match_target_alone(request, oracles, family, k, batch):
    """--overlap: each round verifies the proposal drafted during the one before while the draft
    drafts the next (round.py's run_overlapped_round; here its two branches run one after the
    other): still the target's output, token for token, and rounds whose proposal was good
    accept some of it."""
    pair = _pair(request, family)
    dec = decoder(pair.target, pair.draft, k=k, batch_size=batch, overlap=True)
    assert dec.engine().shapes() == [RoundShape(k, k, False, overlap=True)]
    results = dec.generate(RAGGED)
    for prompt, res in zip(RAGGED, results):
        assert res.token_ids == oracles[family][prompt], (family, k, batch, prompt)
        assert res.stats.new_tokens == len(res.token_ids) <= MAX_NEW
        # every round emits accepted + 1 tokens, the prefill one more
        assert res.stats.new_tokens == min(MAX_NEW, res.stats.accepted_tokens + res.stats.rounds + 1) or \
            res.token_ids[-1] in dec.target.eos_token_ids
    accepted = sum(r.stats.accepted_tokens for r in results)
    proposed = sum(r.stats.draft_tokens for r in results)
    assert 0 < accepted < proposed


def test_overlapped_rounds_with_the_target_as_draft_accept_everything(llama_pair):
    """Invariant 3 under --overlap: a draft equal to the target has every proposal accepted, and
    after the first round (which has no proposal yet) every round's proposal is good."""
    results = decoder(llama_pair.target, llama_pair.target, k=3, batch_size=3, overlap=True).generate(RAGGED)
    for r in results:
        assert r.stats.acceptance_rate == 1.0
        assert r.stats.draft_tokens == 3 * (r.stats.rounds - 1)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_baseline_drafter_none_matches_target_alone(request, oracles, family):
    pair = _pair(request, family)
    results = decoder(pair.target, batch_size=3).generate(RAGGED)
    for prompt, res in zip(RAGGED, results):
        assert res.token_ids == oracles[family][prompt]
        assert res.stats.draft_tokens == 0
        assert res.stats.block_efficiency == 1.0


def test_gemma3_runs_past_the_sliding_window(gemma3_pair):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(gemma3_pair.target)
    assert cfg.sliding_window == 8 and "sliding_attention" in cfg.layer_types
    dec = decoder(gemma3_pair.target, gemma3_pair.draft, k=4)
    ids = dec.encode(RAGGED[1])
    assert len(ids) + MAX_NEW > 4 * cfg.sliding_window


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_draft_equal_to_target_accepts_everything(request, family):
    pair = _pair(request, family)
    for k in (1, 3, 5):
        results = decoder(pair.target, pair.target, k=k, batch_size=3).generate(RAGGED)
        for r in results:
            assert r.stats.draft_tokens > 0
            assert r.stats.acceptance_rate == 1.0


def test_different_vocab_sizes_never_propose_unemittable_ids(qwen2_pair):
    from transformers import AutoConfig

    t_rows = AutoConfig.from_pretrained(qwen2_pair.target).vocab_size
    d_rows = AutoConfig.from_pretrained(qwen2_pair.draft).vocab_size
    assert t_rows > d_rows  # the fixture pads the target's table
    dec = decoder(qwen2_pair.target, qwen2_pair.draft, k=4)
    assert dec.report is not None and dec.report.compatible
    assert dec.report.shared_rows == d_rows
    for ev in dec.stream(RAGGED):
        assert all(t < d_rows for t in ev.accepted + ev.rejected)


def _engine(pair, k, max_new, eos):
    dec = decoder(pair.target, pair.draft, k=k)
    params = EngineParams(num_draft_tokens=k, max_new_tokens=max_new, eos_token_ids=eos)
    return dec, SpeculativeEngine(dec.target, ModelDrafter(dec.draft), params)


@pytest.mark.parametrize("overlap", [False, True])
def test_eos_inside_an_accepted_block_stops_the_row(llama_pair, overlap):
    # Use the target as its own draft so whole blocks are accepted, and declare as EOS a
    # token the target emits mid-block: the row must stop right after it.
    dec = decoder(llama_pair.target, llama_pair.target, k=4)
    ids = [dec.encode(p) for p in RAGGED]
    free = oracle_greedy(llama_pair.target, RAGGED, MAX_NEW)
    # pick, for row 0, a token at a position that is inside a block (not a block's last token)
    eng = SpeculativeEngine(dec.target, ModelDrafter(dec.target), EngineParams(4, MAX_NEW, overlap=overlap))
    blocks = [ev for ev in eng.stream(ids[:1]) if ev.round > 0]
    mid = next(ev for ev in blocks if len(ev.accepted) >= 2)
    stop_token = mid.accepted[0]
    expect_len = free[0].index(stop_token) + 1
    eng = SpeculativeEngine(dec.target, ModelDrafter(dec.target),
                            EngineParams(4, MAX_NEW, eos_token_ids=(stop_token,), overlap=overlap))
    out = [[] for _ in ids]
    reasons = [None] * len(ids)
    for ev in eng.stream(ids):
        assert not reasons[ev.row], "nothing may follow a finished row"
        out[ev.row].extend(ev.tokens)
        if ev.finished:
            reasons[ev.row] = ev.finish_reason
    assert out[0] == free[0][:expect_len] and out[0][-1] == stop_token
    assert reasons[0] == "eos"
    for row in range(len(ids)):  # every row: the oracle cut at its first EOS
        cut = free[row].index(stop_token) + 1 if stop_token in free[row] else len(free[row])
        assert out[row] == free[row][:cut]


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("max_new", [1, 2, 5, 7])
def test_max_new_tokens_respected_mid_round(llama_pair, max_new, overlap):
    dec = decoder(llama_pair.target, llama_pair.target, k=4, max_new_tokens=max_new, batch_size=3, overlap=overlap)
    free = oracle_greedy(llama_pair.target, RAGGED, max_new)
    results = dec.generate(RAGGED)
    for res, ref in zip(results, free):
        assert res.token_ids == ref
        assert len(res.token_ids) <= max_new


def test_events_partition_the_output(llama_pair):
    dec = decoder(llama_pair.target, llama_pair.draft, k=4, batch_size=3)
    results = dec.generate(RAGGED)
    for r in results:
        assert r.events[0].kind == "first" and r.events[0].round == 0
        assert [t for ev in r.events for t in ev.tokens] == r.token_ids
        assert r.events[-1].finished and all(not ev.finished for ev in r.events[:-1])
        for ev in r.events[1:]:
            assert ev.kind in ("recovered", "bonus")
            assert len(ev.accepted) + len(ev.rejected) <= ev.proposed
            if ev.kind == "bonus":
                assert ev.num_accepted == ev.proposed
        s = r.stats
        assert s.rounds == len(r.events) - 1
        assert sum(s.position_accepts) == s.accepted_tokens
        assert s.position_trials[0] == s.rounds


def test_same_output_across_runs(llama_pair):
    a = decoder(llama_pair.target, llama_pair.draft, k=3, batch_size=3).generate(RAGGED)
    b = decoder(llama_pair.target, llama_pair.draft, k=3, batch_size=3).generate(RAGGED)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_attention_eager_matches_sdpa(llama_pair, oracles):
    res = decoder(llama_pair.target, llama_pair.draft, k=4, batch_size=3, attention="eager").generate(RAGGED)
    for prompt, r in zip(RAGGED, res):
        assert r.token_ids == oracles["llama"][prompt]


def test_kv_cache_rollback_is_a_length_move():
    from specdecode.decoding.cache import KVCache

    cache = KVCache(batch_size=2, max_len=16, device=torch.device("cpu"))
    cache.prepare(3, 16)
    k = torch.randn(2, 1, 3, 4)
    full_k, _ = cache.update(k, k.clone(), 0)
    before = full_k.data_ptr()
    cache.advance(torch.tensor([1, 3]))
    assert cache.positions.tolist() == [1, 3]
    pos = cache.prepare(2, 16)
    assert pos.tolist() == [[1, 2], [3, 4]]
    k2 = torch.randn(2, 1, 2, 4)
    full_k2, _ = cache.update(k2, k2.clone(), 0)
    assert full_k2.data_ptr() == before  # same buffer: nothing copied
    torch.testing.assert_close(full_k2[0, :, 0], k[0, :, 0])
    torch.testing.assert_close(full_k2[0, :, 1:3], k2[0])  # row 0 overwrote its rejected slots
    torch.testing.assert_close(full_k2[1, :, :3], k[1])
    torch.testing.assert_close(full_k2[1, :, 3:5], k2[1])


# ---------------------------------------------------------------- more architectures, through the loader

def _tiny_arch(name: str, layers: int):
    import transformers as T

    common = dict(vocab_size=112, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4)
    return {
        # attention-logit softcapping: sdpa cannot run it, the loader must pick eager by itself
        "gemma2": lambda: T.Gemma2Config(num_key_value_heads=2, head_dim=16, sliding_window=8, **small, **common),
        # a sliding window declared without layer_types: every layer slides
        "mistral": lambda: T.MistralConfig(num_key_value_heads=2, sliding_window=8, **small, **common),
        "gpt2": lambda: T.GPT2Config(n_embd=64, n_layer=layers, n_head=4, n_positions=256, vocab_size=112,
                                     bos_token_id=1, eos_token_id=2),
        "phi3": lambda: T.Phi3Config(num_key_value_heads=2, **small, **common),
        # the families below run in the slow layer, each with a draft that is a noisy copy of its target
        "gpt_neox": lambda: T.GPTNeoXConfig(**small, **common),  # parallel residual, partial rotary
        "opt": lambda: T.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=layers, num_attention_heads=4,
                                   word_embed_proj_dim=64, **common),  # learned positions with an offset
        "falcon": lambda: T.FalconConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                         vocab_size=112, bos_token_id=1, eos_token_id=2),  # multi-query
        "gptj": lambda: T.GPTJConfig(n_embd=64, n_layer=layers, n_head=4, rotary_dim=8, vocab_size=112,
                                     n_positions=256, bos_token_id=1, eos_token_id=2),
        "mpt": lambda: T.MptConfig(d_model=64, n_layers=layers, n_heads=4, vocab_size=112, max_seq_len=256,
                                   bos_token_id=1, eos_token_id=2),  # ALiBi over the key slots
        "olmo2": lambda: T.Olmo2Config(num_key_value_heads=2, **small, **common),  # q/k norms
        "qwen3": lambda: T.Qwen3Config(num_key_value_heads=2, head_dim=16, **small, **common),
        "cohere": lambda: T.CohereConfig(num_key_value_heads=2, **small, **common),  # logit scale
        "mixtral": lambda: T.MixtralConfig(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                           **small, **common),  # mixture of experts
        "deepseek_v3": lambda: T.DeepseekV3Config(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                                                  moe_intermediate_size=32, first_k_dense_replace=1, kv_lora_rank=16,
                                                  q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                                  v_head_dim=16, n_group=1, topk_group=1, **small, **common),  # MLA
        "gpt_oss": lambda: T.GptOssConfig(num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                          num_experts_per_tok=2, sliding_window=8, **small, **common),  # sinks
    }[name]()


@pytest.mark.parametrize("arch", ["gemma2", "mistral", "gpt2", "phi3"])
def test_other_architectures_exact_through_the_loader(tmp_path, tokenizer_dir, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dirs = []
    for name, layers in (("target", 3), ("draft", 1)):
        torch.manual_seed(len(dirs))
        model = AutoModelForCausalLM.from_config(_tiny_arch(arch, layers))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.3)  # peaked distributions: no argmax near-ties
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        dirs.append(tmp_path / name)
    dec = decoder(dirs[0], dirs[1], k=4, batch_size=3)
    if arch == "gemma2":
        assert dec.target.model.config._attn_implementation == "eager"
    results = dec.generate(RAGGED)
    assert [r.token_ids for r in results] == oracle_greedy(dirs[0], RAGGED, MAX_NEW)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neox", "opt", "falcon", "gptj", "mpt", "olmo2", "qwen3", "cohere", "mixtral",
                                  "deepseek_v3", "gpt_oss"])
def test_more_families_exact_with_partial_acceptance(tmp_path, tokenizer_dir, arch):
    """Invariant 1 on families whose attention, positions or MLP differ from the fixtures' (see
    _tiny_arch), with a draft that is the target plus noise, so that rounds accept some of their
    proposals and reject the rest: greedy output equals the target's own generate()."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_arch(arch, 3))
    dirs = []
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)  # peaked distributions: no argmax near-ties
        for name in ("target", "draft"):
            if name == "draft":
                gen = torch.Generator().manual_seed(5)
                for p in model.parameters():
                    if p.dim() > 1:
                        p.add_(torch.randn(p.shape, generator=gen) * 0.04)
            model.save_pretrained(tmp_path / name)
            tok.save_pretrained(tmp_path / name)
            dirs.append(tmp_path / name)
    results = decoder(dirs[0], dirs[1], k=4, batch_size=3).generate(RAGGED)
    assert [r.token_ids for r in results] == oracle_greedy(dirs[0], RAGGED, MAX_NEW)
    accepted = sum(r.stats.accepted_tokens for r in results)
    proposed = sum(r.stats.draft_tokens for r in results)
    assert 0 < accepted < proposed, (accepted, proposed)


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.9, top_k=20)])
@pytest.mark.parametrize("max_new", [1, 2, 9])
def test_target_alone_lookahead_emits_what_the_plain_loop_does(llama_pair, sampling, max_new):
    """Target alone with rows kept in the batch (the captured path) launches round r+1 before
    reading round r: the events, stats and stops must be those of the loop that reads every
    round first (rows of different lengths, one stopped by EOS mid-way, the rest by length)."""
    dec = decoder(llama_pair.target)
    ids = [dec.encode(p) for p in RAGGED]
    free = oracle_greedy(llama_pair.target, RAGGED, max_new)
    eos = (free[1][1],) if max_new > 2 else ()  # row 1 stops on its second token

    def run(lookahead: bool):
        # attend_bucket=1: each step attends exactly to the slots it may see, so a position the
        # look-ahead got wrong would change the tokens
        params = EngineParams(0, max_new, sampling=sampling, eos_token_ids=eos, seed=7, attend_bucket=1)
        eng = SpeculativeEngine(dec.target, None, params)
        eng.compact_rows = False  # as under CUDA graphs: finished rows stay, masked
        eng.lookahead = lookahead
        events = list(eng.stream(ids))
        return events, [(s.rounds, s.new_tokens) for s in eng.stats]

    plain, plain_stats = run(lookahead=False)
    ahead, ahead_stats = run(lookahead=True)
    assert ahead == plain
    assert ahead_stats == plain_stats
    per_row = [[t for ev in plain if ev.row == r for t in ev.tokens] for r in range(len(ids))]
    if sampling.greedy:
        for r, ref in enumerate(free):
            cut = ref.index(eos[0]) + 1 if eos and eos[0] in ref else len(ref)
            assert per_row[r] == ref[:cut]
    if eos and sampling.greedy:
        assert [ev.finish_reason for ev in plain if ev.row == 1 and ev.finished] == ["eos"]
    assert all(len(toks) <= max_new for toks in per_row)
