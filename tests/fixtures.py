"""Offline test fixtures: tiny tokenizers and tiny Llama / Qwen2 / Gemma 3 models.

What it does:
  * ``build_tokenizer`` builds a word-level tokenizer (~112 ids) with the
    ``tokenizers`` library and saves it as a ``PreTrainedTokenizerFast``.
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


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(out_dir, vocab_words=None, with_chat_template=False):
    """Build and save a word-level fast tokenizer; return it.

    Ids: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3, then the words, digits
    0-9 and punctuation. Lower-cases input, splits on whitespace / punctuation and
    into single digits, prepends ``<bos>`` when ``add_special_tokens=True``, and
    decodes to space-separated words.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(WORDS if vocab_words is None else vocab_words)
    tokens = SPECIAL_TOKENS + words + [t for t in DIGITS + PUNCTUATION if t not in words]
    if len(set(tokens)) != len(tokens):
        raise ValueError("duplicate tokens in the vocabulary")
    vocab = {tok: i for i, tok in enumerate(tokens)}

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    # WordPiece's decoder joins tokens with spaces (no token carries the "##" prefix).
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
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


# --------------------------------------------------------------------------- models


def _layer_types(family, num_layers, sliding_window):
    if family != "gemma3" or sliding_window is None:
        return None
    # Two sliding layers, then one full layer, repeated (Gemma 3 uses 5:1).
    return [
        "full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(num_layers)
    ]


def _make_config(family, *, vocab_size, num_layers, hidden, sliding_window,
                 final_logit_softcapping, layer_types=None):
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
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "gemma3":
        if layer_types is None:
            layer_types = _layer_types(family, num_layers, sliding_window)
        if layer_types is None:
            layer_types = ["full_attention"] * num_layers
        return Gemma3TextConfig(
            **common,
            query_pre_attn_scalar=hidden // 4,
            sliding_window=sliding_window if sliding_window is not None else 512,
            layer_types=layer_types,
            final_logit_softcapping=final_logit_softcapping,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _model_class(family):
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM

    return {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "gemma3": Gemma3ForCausalLM}[
        family
    ]


@torch.no_grad()
def _init_peaked(model, std, layer_decay):
    """Re-initialise Linear and Embedding weights with a large std (norms untouched).

    A large std gives peaked next-token distributions, so greedy argmax ties are
    vanishingly rare and float32 greedy decoding is deterministic across code paths.
    The residual-branch outputs (o_proj, down_proj) of layer i get std * layer_decay**i:
    early layers dominate the residual stream, so a draft made of the target's first
    layers (or an early exit) agrees with it often, while every layer, and attention
    over the whole context, still changes the target's predictions.
    """
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            scale = 1.0
            if name.endswith(("o_proj", "down_proj")) and ".layers." in name:
                scale = layer_decay ** int(name.split(".layers.")[1].split(".")[0])
            module.weight.normal_(0.0, std * scale)
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0.0, std * scale)


def _write_tokenizer(out_dir, tokenizer_dir):
    if tokenizer_dir is None:
        build_tokenizer(out_dir)
        return
    for f in Path(tokenizer_dir).iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(f, Path(out_dir) / f.name)


def build_model(family, out_dir, *, vocab_size, num_layers, hidden=64, seed,
                sliding_window=None, tokenizer_dir=None, from_model=None, noise=0.0,
                final_logit_softcapping=None, init_std=0.3, layer_decay=0.5):
    """Build a tiny float32 model of ``family`` ("llama", "qwen2", "gemma3"), save it; return its dir.

    Fresh model: hidden 64, intermediate 128, 4 heads, 2 kv heads, head_dim 16,
    weights ~ N(0, init_std). ``sliding_window`` (gemma3 only) makes layers
    sliding, sliding, full, ... with that window.

    ``from_model``: a saved model dir of the same family. The new model copies its
    config (keeping the first ``num_layers`` layers) and its weights plus Gaussian
    noise of relative size ``noise`` (std = noise * the tensor's std). If
    ``vocab_size`` is smaller than the source's, embedding and lm_head rows are cut
    to the first ``vocab_size`` ids (a draft with a smaller vocabulary); the
    ``hidden``, ``sliding_window`` and ``final_logit_softcapping`` arguments are
    then ignored in favour of the source config.

    The tokenizer from ``tokenizer_dir`` (or a fresh default one) is copied in.
    """
    from transformers import AutoConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cls = _model_class(family)

    if from_model is None:
        config = _make_config(
            family, vocab_size=vocab_size, num_layers=num_layers, hidden=hidden,
            sliding_window=sliding_window, final_logit_softcapping=final_logit_softcapping,
        )
        model = cls(config)
        _init_peaked(model, init_std, layer_decay)
    else:
        src_config = AutoConfig.from_pretrained(from_model)
        if src_config.model_type != {"gemma3": "gemma3_text"}.get(family, family):
            raise ValueError(f"{from_model} is a {src_config.model_type} model, not {family}")
        if num_layers > src_config.num_hidden_layers or vocab_size > src_config.vocab_size:
            raise ValueError("a copied model can only drop layers and vocabulary rows")
        config = src_config
        config.num_hidden_layers = num_layers
        config.vocab_size = vocab_size
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types[:num_layers])
        src = cls.from_pretrained(from_model, dtype=torch.float32)
        model = cls(config)
        src_state = src.state_dict()
        gen = torch.Generator().manual_seed(seed)
        new_state = {}
        for name, tensor in model.state_dict().items():
            w = src_state[name]
            if w.shape != tensor.shape:  # embedding / lm_head with fewer rows
                w = w[: tensor.shape[0]]
            w = w.clone().float()
            if noise and w.is_floating_point() and w.numel() > 1 and "norm" not in name:
                w += noise * w.std() * torch.randn(w.shape, generator=gen)
            new_state[name] = w
        model.load_state_dict(new_state)

    model = model.to(torch.float32).eval()
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    model.save_pretrained(out_dir, safe_serialization=True)
    _write_tokenizer(out_dir, tokenizer_dir)
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
