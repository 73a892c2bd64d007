"""GPU tests (marker `gpu`, skipped without CUDA): the invariants hold on the device too.

float32 greedy output on CUDA equals Hugging Face generate() on the target alone; sampling
with a seed is reproducible on CUDA; bf16 runs and its match rate against the bf16 baseline
is reported, never asserted exact (near-ties can flip in bf16).
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
    d = dec(llama_pair, dtype="bfloat16", k=4, max_new_tokens=32, batch_size=4)
    spec = [r.token_ids for r in d.generate(PROMPTS)]
    base = [r.token_ids for r in d.with_settings(drafter="none").generate(PROMPTS)]
    rate = sum(a == b for a, b in zip(spec, base)) / len(spec)
    with capsys.disabled():
        print(f"\nbf16 greedy output match rate (speculative vs target alone): {rate:.2f}")
    assert d.target.dtype == torch.bfloat16


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
    assert runner.native is not None and runner.compiled and runner.graphs
    assert runner.native.kernels, runner.describe()  # steps of <= 16 rows run the Triton kernels
    assert not slow.runner(slow.target).graphs and slow.runner(slow.target).native is None
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
    """bf16: the Triton kernels (steps of <= 16 rows) against the compiled layers (kernels off):
    the same greedy tokens in most rows (they round differently; near-ties may flip)."""
    from specdecode.decoding.cache import ModelRunner

    prompts = PROMPTS[:6]
    d = dec(gemma3_pair, dtype="bfloat16", k=2, max_new_tokens=32, batch_size=batch)
    with_k = [r.token_ids for r in d.generate(prompts)]
    plain = dec(gemma3_pair, dtype="bfloat16", k=2, max_new_tokens=32, batch_size=batch)
    for loaded in (plain.target, plain.draft):
        plain.set_runner(loaded, ModelRunner(loaded.model, graphs=True, compile=True, kernels=False))
    without = [r.token_ids for r in plain.generate(prompts)]
    same = sum(a == b for a, b in zip(with_k, without))
    with capsys.disabled():
        print(f"\nbf16 kernels vs compiled layers, batch {batch}: {same}/{len(prompts)} rows identical")
    assert same >= len(prompts) // 2
