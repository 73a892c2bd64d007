"""The embedded demo pair: shipped in the package, the default, and really speculating.

Loads `builtin:demo/target` and `builtin:demo/draft` from the installed package (offline),
checks that greedy speculative output equals the target alone, token for token, and that
the draft's greedy acceptance stays above a floor well under what was measured (0.62 on
these 6 prompts x 32 tokens with k=2, float32 CPU; 0.66 with the bench defaults).
"""

from __future__ import annotations

import json
import os

import pytest

from specdecode.demo.prompts import PROMPTS
from specdecode.settings import load_settings

ACCEPTANCE_FLOOR = 0.45


def test_demo_is_the_default_and_loads_nothing():
    s = load_settings()
    assert s.target == "builtin:demo/target" and s.draft == "builtin:demo/draft"
    assert s.dataset.path == "builtin:demo"
    assert load_settings(overrides={"target": "some/model"}).target == "some/model"
    assert load_settings(preset="gemma-4b").target == "google/gemma-3-4b-it"


def test_builtin_paths_resolve_to_the_package():
    from specdecode.models.loading import ModelLoadError, resolve_model_path

    total = 0
    for role in ("target", "draft"):
        path = resolve_model_path(f"builtin:demo/{role}")
        names = set(os.listdir(path))
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
        assert json.load(open(os.path.join(path, "config.json")))["architectures"] == ["LlamaForCausalLM"]
        total += sum(os.path.getsize(os.path.join(path, n)) for n in names)
    assert total < 32 * 2**20
    t, d = resolve_model_path("builtin:demo/target"), resolve_model_path("builtin:demo/draft")
    assert open(os.path.join(t, "tokenizer.json")).read() == open(os.path.join(d, "tokenizer.json")).read()
    assert resolve_model_path("gpt2") == "gpt2"
    with pytest.raises(ModelLoadError):
        resolve_model_path("builtin:nope/target")


def test_builtin_prompts():
    from specdecode.data import load_prompts

    assert len(PROMPTS) >= 32 and len(set(PROMPTS)) == len(PROMPTS)
    assert all(p == p.rstrip() and p.strip() for p in PROMPTS)  # never cut on a whitespace token
    ps = load_prompts(load_settings().dataset)
    assert ps.prompts == list(PROMPTS) and ps.source == "builtin:demo"


@pytest.fixture(scope="module")
def demo_decoder(monkeypatch_module):
    from specdecode.api import SpeculativeDecoder

    settings = load_settings(overrides={"max_new_tokens": 32, "device": "cpu", "k": 2})
    return SpeculativeDecoder.from_settings(settings)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield mp
    mp.undo()


def test_demo_pair_is_exact_and_accepts(demo_decoder):
    prompts = list(PROMPTS[:6])
    spec = demo_decoder.generate(prompts)
    base = demo_decoder.with_settings(drafter="none").generate(prompts)
    for s, b in zip(spec, base):
        assert s.token_ids == b.token_ids, s.prompt
        assert s.stats.new_tokens == 32 or s.finish_reason == "eos"
    proposed = sum(r.stats.draft_tokens for r in spec)
    accepted = sum(r.stats.accepted_tokens for r in spec)
    assert proposed > 0
    assert accepted / proposed >= ACCEPTANCE_FLOOR, accepted / proposed
    assert any(len(r.text.strip()) > 20 for r in spec)  # it writes something, not just EOS
