"""GPU tests (marker `gpu`, skipped without CUDA): the invariants hold on the device too.

float32 greedy output on CUDA equals Hugging Face generate() on the target alone; sampling
with a seed is reproducible on CUDA. bf16 is never asserted exact (near-ties can flip): two
bf16 greedy runs of one target (speculative vs target alone, kernels vs compiled layers) report
their match rate, and every row that differs must first differ at a near-tie of the target.
"""

from __future__ import annotations

import pytest
import torch

from fixtures import PROMPTS, oracle_greedy
from specdecode.api import SpeculativeDecoder
from specdecode.settings import Settings

pytestmark = pytest.mark.gpu

RAGGED = [PROMPTS[0], PROMPTS[7], PROMPTS[2]]
TIE_FACTOR = 4.0  # a near-tie: float32 gap <= TIE_FACTOR x the bf16 rounding of the logits there


@torch.inference_mode()
def first_divergences(target_dir, prompt_ids, rows_a, rows_b):
    """Compare two greedy runs of one target, row by row. Returns (identical rows, flips): per row
    that differs, (row, position j of the first different token, gap, rounding), where gap is
    |l(a_j) - l(b_j)| in the target's float32 logits after the common prefix, and rounding is
    max over the vocabulary of |bf16 logits - float32 logits| there (transformers, on the device).
    Each run emits the argmax of its own bf16 logits, so a run that computes the target right can
    only pick differently where the two choices are within a few roundings of each other."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).to("cuda").eval()
    half = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.bfloat16).to("cuda").eval()
    same, flips = 0, []
    for row, (ids, a, b) in enumerate(zip(prompt_ids, rows_a, rows_b, strict=True)):
        if a == b:
            same += 1
            continue
        j = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        assert j is not None, f"row {row}: same tokens but lengths {len(a)} and {len(b)} (a stop was missed)"
        x = torch.tensor([ids + a[:j]], device="cuda")
        l32 = ref(x).logits[0, -1].float()  # [V]
        l16 = half(x).logits[0, -1].float()
        flips.append((row, j, (l32[a[j]] - l32[b[j]]).abs().item(), (l16 - l32).abs().max().item()))
    return same, flips


def assert_flips_are_near_ties(flips):
    far = [f for f in flips if f[2] > TIE_FACTOR * f[3]]
    assert not far, "rows that differ away from a near-tie (row, position, float32 gap, bf16 rounding): " + str(far)


def dec(pair, **kw):
    s = Settings(target=str(pair.target), draft=str(pair.draft), device="cuda", chat=False, **kw)
    return SpeculativeDecoder.from_settings(s)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_fp32_greedy_exact_on_cuda(request, family):
    pair = request.getfixturevalue(f"{family}_pair")
    oracle = oracle_greedy(pair.target, RAGGED, 40)
    for k in (1, 4):
        results = dec(pair, dtype="float32", k=k, max_new_tokens=40, batch_size=3).generate(RAGGED)
        assert [r.token_ids for r in results] == oracle


def test_sampling_seeded_on_cuda(llama_pair):
    a = dec(llama_pair, dtype="float32", temperature=1.0, seed=3, max_new_tokens=16, batch_size=3).generate(RAGGED)
    b = dec(llama_pair, dtype="float32", temperature=1.0, seed=3, max_new_tokens=16, batch_size=3).generate(RAGGED)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_bf16_match_rate_is_reported(llama_pair, capsys):
    """bf16 speculative output against bf16 target alone: the match rate is printed; rows that
    differ must first differ at a near-tie (verifying k+1 positions at once rounds differently
    from one position at a time), never where the target clearly prefers one token."""
    d = dec(llama_pair, dtype="bfloat16", k=4, max_new_tokens=32, batch_size=4)
    assert d.target.dtype == torch.bfloat16
    spec = [r.token_ids for r in d.generate(PROMPTS)]
    base = [r.token_ids for r in d.with_settings(drafter="none").generate(PROMPTS)]
    same, flips = first_divergences(llama_pair.target, [d.encode(p) for p in PROMPTS], spec, base)
    with capsys.disabled():
        print(f"\nbf16 greedy output match rate (speculative vs target alone): {same / len(spec):.2f}; "
              f"first differences (row, position, float32 gap, bf16 rounding): {flips}")
    assert_flips_are_near_ties(flips)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_compiled_and_eager_paths_give_the_same_tokens(request, family):
    """The CUDA default (fused layers, torch.compile, CUDA graphs) against the transformers
    modules run eagerly, fp32, greedy; gemma3 runs past its 8-token sliding window."""
    pair = request.getfixturevalue(f"{family}_pair")
    prompts = PROMPTS[:6]
    common = dict(dtype="float32", k=4, max_new_tokens=48, batch_size=3)
    fast = dec(pair, **common)
    slow = dec(pair, compile=False, cuda_graphs=False, fused=False, **common)
    runner = fast.runner(fast.target)
    assert runner.fused is not None and runner.compiled and runner.graphs
    assert runner.fused.kernels, runner.describe()  # steps of <= 16 rows run the Triton kernels
    assert not slow.runner(slow.target).graphs and slow.runner(slow.target).fused is None
    assert [r.token_ids for r in fast.generate(prompts)] == [r.token_ids for r in slow.generate(prompts)]
    assert [r.token_ids for r in fast.with_settings(drafter="none").generate(prompts)] == oracle_greedy(
        pair.target, prompts, 48)


def test_adaptive_k_on_the_cuda_default_is_exact(llama_pair):
    """--k auto with compiled, captured steps: rounds verify padded to max_k; still the target's own output."""
    prompts = PROMPTS[:6]
    d = dec(llama_pair, dtype="float32", k="auto", max_k=6, max_new_tokens=40, batch_size=3)
    assert [r.token_ids for r in d.generate(prompts)] == oracle_greedy(llama_pair.target, prompts, 40)


@pytest.mark.parametrize("batch", [1, 6])
def test_kernels_and_compiled_layers_agree_in_bf16(gemma3_pair, batch, capsys):
    """bf16: the Triton kernels (steps of <= 16 rows) against the compiled layers (kernels off).
    They round differently, and on these tiny random models near-ties are common (3/6 rows were
    identical on the H200): every row is identical or first differs at a near-tie of the target."""
    from specdecode.accel.runner import ModelRunner

    prompts = PROMPTS[:6]
    d = dec(gemma3_pair, dtype="bfloat16", k=2, max_new_tokens=32, batch_size=batch)
    with_k = [r.token_ids for r in d.generate(prompts)]
    plain = dec(gemma3_pair, dtype="bfloat16", k=2, max_new_tokens=32, batch_size=batch)
    for loaded in (plain.target, plain.draft):
        plain.set_runner(loaded, ModelRunner(loaded.model, graphs=True, compile=True, kernels=False))
    without = [r.token_ids for r in plain.generate(prompts)]
    same, flips = first_divergences(gemma3_pair.target, [d.encode(p) for p in prompts], with_k, without)
    with capsys.disabled():
        print(f"\nbf16 kernels vs compiled layers, batch {batch}: {same}/{len(prompts)} rows identical; "
              f"first differences (row, position, float32 gap, bf16 rounding): {flips}")
    assert_flips_are_near_ties(flips)
