"""Sanity checks of the offline test fixtures (tests/fixtures.py, tests/conftest.py).

What it does: checks that every fixture directory is a complete local model that
transformers loads, that each pair has the shape the invariant tests rely on
(padded Qwen2 vocabulary, Gemma 3 sliding window that changes the output, close
drafts that agree with their targets often, random drafts that rarely do), and that
the oracle's greedy tokens past the sliding window agree with a cache-free forward.

What it does not: test specdecode itself.
"""

from __future__ import annotations

import pytest
import torch

from fixtures import EOS_ID, PROMPTS, oracle_greedy

MODEL_FIXTURES = ["llama_pair", "qwen2_pair", "gemma3_pair", "gemma3_softcap_pair"]


def _load(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _random_batch(n=20, length=9, seed=0):
    """n prompts of random non-special ids after <bos>: one [n, length] batch, no padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 112, (n, length), generator=gen)
    ids[:, 0] = 1
    return ids


@torch.no_grad()
def _agreement(target_dir, draft_dir):
    """(first-token, all-position) greedy agreement of draft and target over 20 prompts."""
    ids = _random_batch()
    target = _load(target_dir)(ids).logits.argmax(-1)  # [20, 9]
    draft = _load(draft_dir)(ids).logits.argmax(-1)
    same = target == draft
    return same[:, -1].float().mean().item(), same.float().mean().item()


def test_tokenizer(tokenizer_dir, chat_model, qwen2_pair):
    tok = _tok(tokenizer_dir)
    assert len(tok) == 112
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == prompt
    assert tok.chat_template is None
    chat = _tok(chat_model)
    text = chat.apply_chat_template([{"role": "user", "content": "hello"}],
                                    add_generation_prompt=True, tokenize=False)
    assert text == "user : hello assistant : "
    assert chat.unk_token_id not in chat(text).input_ids
    # AutoTokenizer loads a qwen2 dir through Qwen2Tokenizer: the byte-level BPE survives.
    qwen = _tok(qwen2_pair.target)
    assert type(qwen).__name__ == "Qwen2Tokenizer" and len(qwen) == 112
    assert (qwen.pad_token_id, qwen.bos_token_id, qwen.eos_token_id) == (0, 1, 2)
    for prompt in PROMPTS:
        ids = qwen(prompt).input_ids
        assert ids[0] == 1 and qwen.decode(ids, skip_special_tokens=True) == prompt


@pytest.mark.parametrize("name", MODEL_FIXTURES + ["llama_random_draft", "chat_model"])
def test_fixture_dirs_load(request, name):
    value = request.getfixturevalue(name)
    dirs = [value.target, value.draft] if hasattr(value, "target") else [value]
    for path in dirs:
        assert (path / "model.safetensors").is_file()
        model, tok = _load(path), _tok(path)
        assert len(tok) == 112 and model.config.vocab_size >= len(tok)
        assert model.dtype == torch.float32 and not model.config.tie_word_embeddings
        assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
        ids = tok(PROMPTS[0], return_tensors="pt").input_ids
        assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    if hasattr(value, "family"):
        assert _load(value.target).config.model_type.startswith(value.family)


@torch.no_grad()
def test_qwen2_vocabularies_differ(qwen2_pair):
    target, draft = _load(qwen2_pair.target), _load(qwen2_pair.draft)
    assert target.get_input_embeddings().weight.shape[0] == 128
    assert draft.get_input_embeddings().weight.shape[0] == 112
    assert target.lm_head.weight.shape[0] > draft.lm_head.weight.shape[0]
    # The padded rows (ids 112..127, absent from the tokenizer) are never the greedy pick.
    ids = _tok(qwen2_pair.target)(PROMPTS[-1], return_tensors="pt").input_ids
    assert (target(ids).logits[0].argmax(-1) < 112).all()


@torch.no_grad()
def test_gemma3_sliding_window(gemma3_pair, gemma3_softcap_pair):
    target = _load(gemma3_pair.target)
    cfg = target.config
    assert cfg.sliding_window == 8 and cfg.num_hidden_layers == 4
    assert cfg.layer_types.count("sliding_attention") == 3 and "full_attention" in cfg.layer_types
    assert cfg.final_logit_softcapping is None
    draft_cfg = _load(gemma3_pair.draft).config
    assert draft_cfg.num_hidden_layers == 2 and len(draft_cfg.layer_types) == 2
    assert _load(gemma3_softcap_pair.target).config.final_logit_softcapping == 10.0
    # The window changes predictions: the same weights without it (window 512) disagree
    # on many positions past the window, so a cache that ignores it is caught.
    ids = _random_batch(n=1, length=41)
    windowless = _load(gemma3_pair.target, sliding_window=512)
    differ = (target(ids).logits[0, 8:].argmax(-1) != windowless(ids).logits[0, 8:].argmax(-1))
    assert differ.float().mean() > 0.3


def test_close_drafts_agree(llama_pair, llama_random_draft, qwen2_pair, gemma3_pair):
    measured = {
        "llama noisy": _agreement(llama_pair.target, llama_pair.draft),
        "llama random": _agreement(llama_pair.target, llama_random_draft),
        "qwen2": _agreement(qwen2_pair.target, qwen2_pair.draft),
        "gemma3": _agreement(gemma3_pair.target, gemma3_pair.draft),
    }
    print("greedy agreement (first token, all positions):",
          {k: (round(a, 2), round(b, 2)) for k, (a, b) in measured.items()})
    # Measured (first token / all positions, 20 random prompts of 9 ids): llama noisy
    # 0.45 / 0.46, qwen2 0.55 / 0.48, gemma3 0.65 / 0.71, random 0.00 / 0.00. The bounds
    # say: close drafts give ragged acceptance (neither all nor nothing), a random one none.
    for name in ("llama noisy", "qwen2", "gemma3"):
        first, every = measured[name]
        assert 0.3 <= first <= 0.95 and 0.3 <= every <= 0.95, name
    assert max(measured["llama random"]) <= 0.2


@torch.no_grad()
def test_oracle_greedy_past_window(gemma3_pair):
    prompt = PROMPTS[2]
    (new,) = oracle_greedy(gemma3_pair.target, [prompt], max_new_tokens=40)
    assert len(new) == 40 and EOS_ID not in new
    # Cross-check without a cache: one causal forward over prompt + continuation must
    # have each new token as the argmax at the position before it.
    model, tok = _load(gemma3_pair.target), _tok(gemma3_pair.target)
    prompt_ids = tok(prompt, return_tensors="pt").input_ids
    assert prompt_ids.shape[1] + 40 > 4 * 8  # runs well past the window of 8
    ids = torch.cat([prompt_ids, torch.tensor([new])], dim=1)
    argmax = model(ids).logits[0, prompt_ids.shape[1] - 1 : -1].argmax(-1)
    assert argmax.tolist() == new
