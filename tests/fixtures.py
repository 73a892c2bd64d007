"""Offline test fixtures: tiny tokenizers and tiny Llama / Qwen2 / Gemma 3 models.

What it does:
  * ``build_tokenizer`` builds a 112-id tokenizer with the ``tokenizers`` library
    (word level, or byte-level BPE for qwen2 dirs) and saves it as a
    ``PreTrainedTokenizerFast``.
  * ``build_model`` builds a small random model of one family from its config
    (or a "close" draft: a noisy, optionally truncated copy of a saved model),
    saves it as safetensors together with the tokenizer, so the directory is a
    complete local model that ``from_pretrained`` can load.
  * ``oracle_greedy`` is the reference for invariant 1: Hugging Face
    ``generate()`` on the target alone, one prompt at a time, no padding.
  * ``PROMPTS``: short prompts made of vocabulary words, 3 to 25 words long.

What it does not: download anything, touch ``specdecode`` (these helpers only use
torch / tokenizers / transformers so they can serve as an independent oracle),
or hold pytest fixtures (``conftest.py`` wraps these in session-scoped fixtures).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]

# 90 plain lowercase words: 4 specials + 90 words + 10 digits + 8 punctuation = 112 ids.
WORDS = (
    "the a and or but of to in on at for with from is are was be "
    "it this that he she they we you i my your not no yes "
    "cat dog bird fish tree river sea sun moon star rain wind fire stone "
    "house road city king queen child man woman friend time day night year "
    "go went see saw make made run ran eat say said know think "
    "big small red blue green old new good bad cold "
    "user assistant system hello please thanks what why how"
).split()
DIGITS = [str(d) for d in range(10)]
PUNCTUATION = [".", ",", "?", "!", ":", ";", "'", "-"]

# Words that the byte-level BPE tokenizer (kind="byte_bpe") merges into one token;
# with the alphabet, digits and punctuation they fill exactly 112 ids.
BPE_WORDS = (
    "the and a to sea saw said in at is my go but are was she you cat dog sun ran big "
    "red old why i"
).split()

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)

# Different lengths (3 to 25 words) so batches of them are ragged.
PROMPTS = [
    "the cat saw",
    "hello , how are you ?",
    "the old king went to the city at night",
    "a small bird and a big fish",
    "why is the sea blue and the sun red ?",
    "she said that the river was cold in the year 1 9 8 4 .",
    "my friend made a new house from stone , but the wind and the rain",
    "the child saw the moon and a star ; the dog ran to the tree , and the "
    "woman said : go to the sea",
]

FAMILIES = ("llama", "qwen2", "gemma3")


@dataclass(frozen=True)
class Pair:
    """A saved target and draft model directory of one family."""

    target: Path
    draft: Path
    family: str


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(out_dir, vocab_words=None, with_chat_template=False, kind="word"):
    """Build and save a fast tokenizer of 112 ids; return it.

    Ids: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3, then the rest.
    ``<bos>`` is prepended when ``add_special_tokens=True``.

    ``kind="word"`` (default): word level over ``vocab_words`` (default ``WORDS``),
    digits 0-9 and punctuation; lower-cases input, splits on whitespace /
    punctuation and into single digits, decodes to space-separated words.

    ``kind="byte_bpe"``: a byte-level BPE with Qwen2's exact pipeline, because
    ``AutoTokenizer`` loads any ``qwen2`` model dir through ``Qwen2Tokenizer``, which
    rebuilds that pipeline around the saved vocabulary (a word-level tokenizer would
    be mangled). Lower-case letters, digits and punctuation are single tokens and
    the words of ``BPE_WORDS`` (after a space) are merged into one token; other
    words are split into pieces. Upper-case letters are not in it (dropped).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "word":
        words = list(WORDS if vocab_words is None else vocab_words)
        tokens = SPECIAL_TOKENS + words + [t for t in DIGITS + PUNCTUATION if t not in words]
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in the vocabulary")
        tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
        )
        # WordPiece's decoder joins tokens with spaces (no token carries the "##" prefix).
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    elif kind == "byte_bpe":
        tok = _byte_bpe(BPE_WORDS if vocab_words is None else vocab_words)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
    if with_chat_template:
        fast.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _byte_bpe(words):
    """Byte-level BPE built by hand, with the normalizer / pre-tokenizer / decoder of
    transformers' Qwen2Tokenizer (which re-imposes them on load)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    space = "\u0120"  # byte-level's stand-in for " "
    alphabet = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [space] + DIGITS + PUNCTUATION
    tokens = SPECIAL_TOKENS + alphabet
    merges = []
    for right in PUNCTUATION:  # " ," -> one token
        merges.append((space, right))
        tokens.append(space + right)
    for word in words:  # " word" -> one token, merged left to right
        for i in range(len(word)):
            piece = space + word[: i + 1]
            if piece not in tokens:
                merges.append((space + word[:i] if i else space, word[i]))
                tokens.append(piece)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


# --------------------------------------------------------------------------- models

# Weight scale of fresh models. A std well above transformers' 0.02 gives peaked
# next-token distributions, so greedy argmax ties are rare and float32 greedy decoding
# gives the same tokens whichever code path computes the logits.
INIT_STD = 0.3
# Layer i's residual branch is scaled by LAYER_DECAY[family] ** i: early layers dominate
# the residual stream, so a draft made of the target's first layers (or an early exit)
# agrees with it often, while later layers and attention over the context still change
# the target's predictions. Chosen by measurement (see tests/test_fixtures.py).
LAYER_DECAY = {"llama": 0.3, "qwen2": 0.3, "gemma3": 0.5}
# Gemma 3 normalises each branch output (sandwich norms, gain 1 + weight) and q / k
# (attention logits ~N(0, 1), near-uniform attention that barely cares which tokens
# are in view). These gains restore a branch scale comparable to the embeddings and
# sharp attention, so the sliding window visibly changes the output.
GEMMA_BRANCH_GAIN = 3.0
GEMMA_QK_GAIN = 2.0
# lm_head rows for ids the tokenizer does not have (a padded vocabulary, as in Qwen)
# are scaled down: logits near 0, never a greedy pick in practice, rarely sampled.
PADDED_ROW_SCALE = 0.01


def _layer_types(num_layers, sliding_window):
    if sliding_window is None:
        return ["full_attention"] * num_layers
    # Two sliding layers, then one full layer, repeated (Gemma 3 itself uses 5:1).
    return ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(num_layers)]


def _make_config(family, *, vocab_size, num_layers, hidden, sliding_window, final_logit_softcapping):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    if family in ("llama", "qwen2"):
        if sliding_window is not None or final_logit_softcapping is not None:
            raise ValueError("sliding_window and final_logit_softcapping are for gemma3 only")
        return (LlamaConfig if family == "llama" else Qwen2Config)(**common)
    if family == "gemma3":
        return Gemma3TextConfig(
            **common,
            query_pre_attn_scalar=hidden // 4,
            sliding_window=sliding_window if sliding_window is not None else 512,
            layer_types=_layer_types(num_layers, sliding_window),
            final_logit_softcapping=final_logit_softcapping,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _model_class(family):
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM

    classes = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "gemma3": Gemma3ForCausalLM}
    if family not in classes:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return classes[family]


def _layer_index(name):
    return int(name.split(".layers.")[1].split(".")[0])


@torch.no_grad()
def _init_weights(model, family, std, layer_decay, num_real_ids):
    """Linear / Embedding weights ~ N(0, std), residual branches decayed by depth."""
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            scale = 1.0
            if family != "gemma3" and name.endswith(("o_proj", "down_proj")):
                scale = layer_decay ** _layer_index(name)
            module.weight.normal_(0.0, std * scale)
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0.0, std * scale)
    model.lm_head.weight[num_real_ids:] *= PADDED_ROW_SCALE
    if family == "gemma3":
        for name, param in model.named_parameters():
            if name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
                param.fill_(GEMMA_BRANCH_GAIN * layer_decay ** _layer_index(name) - 1.0)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                param.fill_(GEMMA_QK_GAIN - 1.0)


@torch.no_grad()
def _noisy_copy(cls, family, from_model, *, vocab_size, num_layers, noise, seed):
    """A model of the source's config cut to num_layers / vocab_size, its weights plus noise."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(from_model)
    expected_type = {"gemma3": "gemma3_text"}.get(family, family)
    if config.model_type != expected_type:
        raise ValueError(f"{from_model} is a {config.model_type} model, not {family}")
    if num_layers > config.num_hidden_layers or vocab_size > config.vocab_size:
        raise ValueError("a copied model can only drop layers and vocabulary rows")
    config.num_hidden_layers = num_layers
    config.vocab_size = vocab_size
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types[:num_layers])

    src_state = cls.from_pretrained(from_model, dtype=torch.float32).state_dict()
    model = cls(config)
    gen = torch.Generator().manual_seed(seed)
    new_state = {}
    for name, like in model.state_dict().items():
        w = src_state[name][: like.shape[0]].clone().float()  # fewer rows: a smaller vocabulary
        # Norm gains stay exact (Gemma's are stored as gain - 1, often all equal).
        if noise and "norm" not in name and w.numel() > 1:
            w += noise * w.std() * torch.randn(w.shape, generator=gen)
        new_state[name] = w
    model.load_state_dict(new_state)
    return model


def _write_tokenizer(out_dir, tokenizer_dir, family):
    """Copy the tokenizer files of tokenizer_dir (default: a fresh one) into out_dir; return its size."""
    import json

    if tokenizer_dir is None:
        return len(build_tokenizer(out_dir, kind="byte_bpe" if family == "qwen2" else "word"))
    for f in Path(tokenizer_dir).iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json" or f.suffix == ".jinja":
            shutil.copy2(f, out_dir / f.name)
    spec = json.loads((out_dir / "tokenizer.json").read_text())
    if family == "qwen2" and spec["model"]["type"] != "BPE":
        raise ValueError("AutoTokenizer loads a qwen2 dir through Qwen2Tokenizer, which only keeps "
                         "a byte-level BPE: use build_tokenizer(kind='byte_bpe')")
    return len(spec["model"]["vocab"]) + sum(
        t["content"] not in spec["model"]["vocab"] for t in spec.get("added_tokens", [])
    )


def build_model(family, out_dir, *, vocab_size, num_layers, hidden=64, seed,
                sliding_window=None, tokenizer_dir=None, from_model=None, noise=0.0,
                final_logit_softcapping=None, layer_decay=None):
    """Build a tiny float32 model of ``family`` ("llama", "qwen2", "gemma3"), save it; return its dir.

    Fresh model: hidden 64, intermediate 128, 4 heads, 2 kv heads, head_dim 16,
    untied lm_head, weights ~ N(0, INIT_STD), residual branches decayed by depth
    (``layer_decay``, default ``LAYER_DECAY[family]``). ``vocab_size`` may exceed the
    tokenizer's size (a padded embedding table). gemma3 only: ``sliding_window``
    makes the layers sliding, sliding, full, ... with that window;
    ``final_logit_softcapping`` sets the config value.

    ``from_model``: a saved model dir of the same family. The new model takes its
    config, keeping the first ``num_layers`` layers (and their ``layer_types``) and
    the first ``vocab_size`` rows of embedding and lm_head, and its weights plus
    Gaussian noise of relative size ``noise`` (std = noise * the tensor's std; norm
    gains are copied exactly). ``hidden``, ``sliding_window``,
    ``final_logit_softcapping`` and ``layer_decay`` are then ignored.

    The tokenizer files of ``tokenizer_dir`` are copied into ``out_dir`` (default: a
    fresh ``build_tokenizer()``, byte-level BPE for qwen2), so the directory is a
    complete local model. qwen2 needs a byte-level BPE tokenizer (see build_tokenizer).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_ids = _write_tokenizer(out_dir, tokenizer_dir, family)
    torch.manual_seed(seed)
    cls = _model_class(family)
    if from_model is None:
        if vocab_size < num_ids:
            raise ValueError(f"vocab_size {vocab_size} < tokenizer size {num_ids}")
        config = _make_config(
            family, vocab_size=vocab_size, num_layers=num_layers, hidden=hidden,
            sliding_window=sliding_window, final_logit_softcapping=final_logit_softcapping,
        )
        model = cls(config)
        decay = LAYER_DECAY[family] if layer_decay is None else layer_decay
        _init_weights(model, family, INIT_STD, decay, num_real_ids=num_ids)
    else:
        model = _noisy_copy(cls, family, from_model, vocab_size=vocab_size,
                            num_layers=num_layers, noise=noise, seed=seed)

    model = model.to(torch.float32).eval()
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = BOS_ID, EOS_ID, PAD_ID
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# --------------------------------------------------------------------------- oracle


@torch.no_grad()
def oracle_greedy(model_dir, prompts, max_new_tokens):
    """Greedy continuations of ``prompts`` by Hugging Face ``generate()`` on one model.

    Each prompt runs alone (batch 1, no padding), tokenized with ``<bos>``
    prepended and no chat template. Returns the new ids only per prompt, ending
    with EOS when generation stopped on it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=True, return_tensors="pt").input_ids
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        out.append(gen[0, ids.shape[1]:].tolist())
    return out
