"""Session-scoped pytest fixtures: tiny saved models built once per test session.

What it does: wraps the helpers of ``tests/fixtures.py`` in fixtures that build a
tokenizer and Llama / Qwen2 / Gemma 3 target-draft pairs into a temporary directory
(each a complete local model: config, safetensors weights, tokenizer), skips
tests marked ``gpu`` when CUDA is absent, and runs torch on one CPU thread.

What it does not: download anything, import ``specdecode``, or decide what the
product does with these models (tests load them through the product's own code).
"""

from __future__ import annotations

import os

import pytest

try:  # without a GPU, the Triton kernels run (slowly, exactly) under Triton's interpreter
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

from fixtures import Pair, build_model, build_tokenizer

TOKENIZER_VOCAB = 112  # ids in the default tokenizer
# Relative weight noise of the "close" drafts (see LAYER_DECAY in fixtures.py);
# measured first-token agreement with their targets is in tests/test_fixtures.py.
DRAFT_NOISE = 0.03


def pytest_configure(config):
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine
    # torch's spinning worker threads made a 4-layer forward 0.75 s instead of 3 ms.
    # An explicit OMP_NUM_THREADS wins.
    import os

    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """Directory of the default 112-id word-level tokenizer (no chat template)."""
    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def qwen2_tokenizer_dir(tmp_path_factory):
    """Directory of the 112-id byte-level BPE tokenizer (what a qwen2 dir needs)."""
    path = tmp_path_factory.mktemp("qwen2_tokenizer")
    build_tokenizer(path, kind="byte_bpe")
    return path


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory):
    """Same tokenizer, with a chat template."""
    path = tmp_path_factory.mktemp("chat_tokenizer")
    build_tokenizer(path, with_chat_template=True)
    return path


def _pair(root, family, tokenizer_dir, *, target_vocab=TOKENIZER_VOCAB, draft_vocab=TOKENIZER_VOCAB,
          target_layers=4, draft_layers=1, sliding_window=None, final_logit_softcapping=None):
    target = build_model(
        family, root / "target", vocab_size=target_vocab, num_layers=target_layers, seed=0,
        sliding_window=sliding_window, final_logit_softcapping=final_logit_softcapping,
        tokenizer_dir=tokenizer_dir,
    )
    draft = build_model(
        family, root / "draft", vocab_size=draft_vocab, num_layers=draft_layers, seed=1,
        from_model=target, noise=DRAFT_NOISE, tokenizer_dir=tokenizer_dir,
    )
    return Pair(target=target, draft=draft, family=family)


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory, tokenizer_dir):
    """Llama: 4-layer target; draft = its first layer plus noise."""
    return _pair(tmp_path_factory.mktemp("llama"), "llama", tokenizer_dir)


@pytest.fixture(scope="session")
def llama_random_draft(tmp_path_factory, tokenizer_dir):
    """An independent random 1-layer Llama over the same tokenizer (low acceptance)."""
    return build_model("llama", tmp_path_factory.mktemp("llama_random") / "draft",
                       vocab_size=TOKENIZER_VOCAB, num_layers=1, seed=2, tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def qwen2_pair(tmp_path_factory, qwen2_tokenizer_dir):
    """Qwen2: 4-layer target with 128 embedding rows (16 padded) over the 112-id
    byte-level BPE tokenizer; draft with 112 rows = the target's first layer and
    rows plus noise."""
    return _pair(tmp_path_factory.mktemp("qwen2"), "qwen2", qwen2_tokenizer_dir, target_vocab=128)


@pytest.fixture(scope="session")
def gemma3_pair(tmp_path_factory, tokenizer_dir):
    """Gemma 3: 4-layer target, sliding window 8 (sliding, sliding, full, sliding);
    draft = its first 2 layers (both sliding) plus noise."""
    return _pair(tmp_path_factory.mktemp("gemma3"), "gemma3", tokenizer_dir,
                 draft_layers=2, sliding_window=8)


@pytest.fixture(scope="session")
def gemma3_softcap_pair(tmp_path_factory, tokenizer_dir):
    """As gemma3_pair, with final_logit_softcapping=10.0 (it changes the distributions)."""
    return _pair(tmp_path_factory.mktemp("gemma3_softcap"), "gemma3", tokenizer_dir,
                 draft_layers=2, sliding_window=8, final_logit_softcapping=10.0)


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory, chat_tokenizer_dir):
    """A 2-layer Llama model dir whose tokenizer has a chat template."""
    return build_model("llama", tmp_path_factory.mktemp("chat") / "model",
                       vocab_size=TOKENIZER_VOCAB, num_layers=2, seed=3, tokenizer_dir=chat_tokenizer_dir)
