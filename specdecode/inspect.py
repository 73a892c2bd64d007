"""What `specdecode inspect` computes: what a target/draft pair is, and what speculation can gain.

For each model: architecture, parameters, layers, hidden size, dtype, memory footprint and
KV-cache bytes per token, where the pair would be placed (one device, `--tp N` ranks, or
accelerate's `--device-map`) with the weight bytes per device, read from its config and tokenizer with the weights left on the
`meta` device (nothing is loaded or downloaded beyond config and tokenizer files; for a GGUF
file, its header: architecture and quantization), the weight bytes a decode step reads (its
floor: those bytes over the memory bandwidth) and how generation runs its decode steps. Then the
tokenizer verdict (models/pairing.py), the cost ratio c estimated from parameters (the weights a
step reads; with --quantized from their bytes, NF4 projections at nf4.nf4_nbytes and the rest in
the dtype) and from layers, and Leviathan et al.'s predicted speedup over α in {0.5 .. 0.9} and k
in {1 .. 8}.
For the ngram, early-exit and none drafters it says what the drafter would do instead.

`measure_pair` loads the pair and generates N prompts to measure α, block efficiency and
acceptance per draft position, plus a token trace of one prompt showing where the draft goes
wrong and the most frequent (draft token, target token) disagreements; then it times the steps a
round is made of as `bench` does (the draft's and the target's one-token steps, the target's
k+1-token verify), because c from parameters is a floor that small drafts do not reach on a GPU
(their steps are bound by per-kernel latency), and prices the round at those costs.

What it does not: print or render (cli/inspect_cmd.py does), or time generation (see `bench`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["DRAFTER_NOTES", "describe_model", "inspect_pair", "measure_pair"]

TRACE_ROUNDS = 16
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

DRAFTER_NOTES = {
    "model": "a small model of the same tokenizer drafts k tokens autoregressively; the target verifies them in one forward",
    "ngram": (
        "prompt lookup: proposes the up to k tokens that followed the most recent earlier occurrence of the last "
        "n tokens in the prompt and output; no draft model (c ≈ 0), no extra memory; acceptance depends on how "
        "much the output repeats its context (high for summarisation, extraction and code edits, low for open generation)"
    ),
    "early-exit": (
        "self-speculation: the target's first N layers, final norm and LM head draft (no extra weights; a KV cache "
        "for N layers); c ≈ N / layers; acceptance depends on how much the remaining layers change the argmax"
    ),
    "none": "no drafter: the target alone (the baseline bench compares against); nothing to predict",
}


def _meta_model(source, trust_remote_code: bool):
    """(config, model on the meta device): shapes and parameter counts without weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models.loading import ModelLoadError, check_model_config, check_source, translate_error

    name = source.name
    check_source(source)
    try:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code,
                                            **source.pretrained_kwargs())
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise translate_error(name, e) from e
    check_model_config(name, config)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise ModelLoadError(f"'{name}' is not a causal language model (config {type(config).__name__})") from e
    except Exception as e:  # noqa: BLE001
        raise translate_error(name, e) from e
    return config, model


def _layer_index(name: str) -> int | None:
    if ".layers." not in name:
        return None
    head = name.split(".layers.", 1)[1].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def describe_model(name: str, tokenizer, dtype: str, quantized: bool, trust_remote_code: bool,
                   exit_layer: int | None = None, gguf_file: str | None = None) -> dict[str, Any]:
    """Facts about one model from its config (weights on the meta device).

    `exit_layer` describes the early-exit draft made of the first `exit_layer` layers instead.
    A GGUF file (`x.gguf`, or a directory and `gguf_file`) also reports its quantization.
    """
    import torch

    from .accel.nf4 import nf4_nbytes
    from .models.loading import decode_weights, gguf_info, model_source

    source = model_source(name, gguf_file)
    name = source.name
    config, model = _meta_model(source, trust_remote_code)
    text = config.get_text_config()
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    rows = int(out_emb.weight.shape[0])
    tied = out_emb.weight is in_emb.weight

    params = 0
    embed = 0
    step_params = 0  # the weights one decoding step reads: all but the input embedding table
    # --quantized: bitsandbytes NF4 (double quantization, blocks of 64: models/loading.py) for every
    # nn.Linear but the LM head; embeddings, norms, biases and the head stay in dtype
    nf4_ids = ({id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not out_emb}
               if quantized else set())
    nf4_params = nf4_bytes = 0
    step_bytes = 0  # the bytes of those weights: NF4 projections as stored, the rest in dtype
    bytes_per = DTYPE_BYTES.get(dtype, 4)
    for pname, p, read in decode_weights(model):
        layer = _layer_index(pname)
        if exit_layer is not None and layer is not None and layer >= exit_layer:
            continue
        n = p.numel()
        params += n
        size = n * bytes_per
        if id(p) in nf4_ids:
            size = nf4_nbytes(n)
            nf4_params += n
            nf4_bytes += size
        if p is in_emb.weight:
            embed += n
        if read:  # (a tied embedding table is read whole, as the LM head)
            step_params += n
            step_bytes += size
    used_layers = exit_layer if exit_layer is not None else layers
    if quantized:  # 4-bit NF4 linear weights (~0.516 byte each with their scales); the rest in dtype
        memory = nf4_bytes + (params - nf4_params) * bytes_per
        kv_bytes = 2 * used_layers * kv_heads * head_dim * (bytes_per if dtype != "float32" else 2)
    else:
        memory = params * bytes_per
        kv_bytes = 2 * used_layers * kv_heads * head_dim * bytes_per
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    layer_types = getattr(text, "layer_types", None)
    info: dict[str, Any] = {
        "name": name,
        "architecture": (getattr(config, "architectures", None) or [type(model).__name__])[0],
        "model_type": getattr(config, "model_type", None),
        "params": params,
        "embedding_params": embed,
        "step_params": step_params,
        "step_bytes": step_bytes,
        "num_layers": used_layers,
        "hidden_size": int(text.hidden_size),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": rows,
        "tokenizer_vocab": len(tokenizer.get_vocab()) if tokenizer is not None else None,
        "tied_embeddings": tied,
        "dtype": dtype + (" (4-bit NF4 weights)" if quantized else ""),
        "stored_dtype": str(stored).removeprefix("torch.") if stored is not None else None,
        "memory_bytes": memory,
        "kv_bytes_per_token": kv_bytes,
        "sliding_window": getattr(text, "sliding_window", None) if layer_types and "sliding_attention" in layer_types else None,
        "layer_types": dict(Counter(layer_types[:used_layers])) if layer_types else None,
        "decode_step": _decode_step(model, quantized),
    }
    info["format"] = "gguf" if source.is_gguf else "transformers"
    info["gguf"] = None
    if source.is_gguf and source.gguf_path is not None:
        info["gguf"] = gguf_info(source.gguf_path)
        info["stored_dtype"] = f"GGUF {info['gguf']['quantization']}"
    if exit_layer is not None:
        info["name"] = f"{name} (first {exit_layer} of {layers} layers)"
        info["memory_bytes"] = 0  # shares the target's weights
        info["exit_layer"] = exit_layer
    return info


def _resolved_dtype(settings) -> str:
    from .models.loading import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    return str(resolve_dtype(settings.dtype, device)).removeprefix("torch.")


def _placement(settings, target: dict[str, Any], draft: dict[str, Any] | None, dtype: str) -> dict[str, Any]:
    """Where the pair's weights would go (one device, tensor parallel, or accelerate's device map)
    and the weight bytes per device (models/placement.py), from the target's meta model."""
    from .models.loading import model_source
    from .models.placement import placement

    draft_bytes = int(draft["memory_bytes"]) if draft is not None else 0
    meta = None
    if settings.tp > 1 or settings.device_map is not None:
        _, meta = _meta_model(model_source(settings.target, settings.gguf_file), settings.trust_remote_code)
    return placement(settings, meta, draft_bytes, int(target["memory_bytes"]), dtype, DTYPE_BYTES.get(dtype, 4))


def inspect_pair(settings, cost_ratio: float | None = None) -> dict[str, Any]:
    """The report `inspect --format json` prints (without --measure)."""
    from . import metrics
    from .api import check_models_named
    from .models.loading import load_tokenizer
    from .models.pairing import check_pair
    from .settings import SettingsError

    check_models_named(settings)
    dtype = _resolved_dtype(settings)
    gguf = settings.gguf_file
    t_tok = load_tokenizer(settings.target, settings.trust_remote_code, gguf)
    target = describe_model(settings.target, t_tok, dtype, settings.quantized, settings.trust_remote_code,
                            gguf_file=gguf)
    draft = None
    compatible = True
    reasons: list[str] = []
    warnings: list[str] = []
    tokenizer = None
    c_params = c_bytes = c_layers = None
    if settings.drafter == "model":
        d_tok = load_tokenizer(settings.draft, settings.trust_remote_code, gguf)
        draft = describe_model(settings.draft, d_tok, dtype, settings.quantized and settings.quantize_draft,
                               settings.trust_remote_code, gguf_file=gguf)
        pair = check_pair(t_tok, d_tok, target["vocab_size"], draft["vocab_size"])
        tokenizer = pair.to_dict()
        compatible, reasons, warnings = pair.compatible, list(pair.reasons), list(pair.warnings)
        c_params = metrics.cost_ratio(draft["step_params"], target["step_params"])
        c_bytes = metrics.cost_ratio(draft["step_bytes"], target["step_bytes"])
        c_layers = metrics.cost_ratio(draft["num_layers"], target["num_layers"])
    elif settings.drafter == "early-exit":
        n = settings.exit_layer
        if n is None or n >= target["num_layers"]:
            raise SettingsError(f"--exit-layer {n} must be below the target's {target['num_layers']} layers")
        draft = describe_model(settings.target, t_tok, dtype, settings.quantized, settings.trust_remote_code,
                               exit_layer=n, gguf_file=gguf)
        draft["kind"] = "early-exit"
        c_params = metrics.cost_ratio(draft["step_params"], target["step_params"])
        c_bytes = metrics.cost_ratio(draft["step_bytes"], target["step_bytes"])
        c_layers = metrics.cost_ratio(n, target["num_layers"])
    elif settings.drafter == "ngram":
        c_params = c_bytes = c_layers = 0.0

    # the weights a step reads: with NF4 projections (--quantized) their bytes, not their count (the
    # head and embeddings stay in the dtype, so a small draft reads relatively more)
    quantized = settings.quantized and settings.drafter in ("model", "early-exit")
    c = cost_ratio if cost_ratio is not None else (c_bytes if quantized else c_params)
    c_source = "--cost-ratio" if cost_ratio is not None else ("weight bytes" if quantized else "parameters")
    if c is not None and c_layers is not None and settings.drafter == "model" and c_layers > 2 * c:
        warnings.append(
            f"the draft has {draft['num_layers']} of the target's {target['num_layers']} layers (c from layers "
            f"{c_layers:.2f} vs {c:.2f} from parameters): a small model's step is bound by per-layer costs "
            "(launches when eager, each kernel's latency even when captured), so the real c lies between the two "
            "(Qwen2.5-Coder 0.5B -> 1.5B: 0.32 from parameters, 0.86 from layers, 0.44 measured on an H200); "
            "--measure N times it"
        )
    if c is not None and c >= 0.5:
        warnings.append(f"c = {c:.2f}: a draft step costs at least half a target step; speculation can hardly pay off")
    if quantized and target["decode_step"] == "fused NF4":
        warnings.append(
            "--quantized: the verify's k + 1 rows cost the NF4 kernels more than one token does (on an H200 a 6-row "
            "Qwen2.5 1.5B NF4 step is 1.55x a one-token NF4 step, in bf16 1.2x), where the prediction below prices "
            "the verify as one step (the real Qwen2.5-Coder 0.5B -> 1.5B pair, k 5: 1.00x the NF4 target alone with "
            "both models in NF4, 1.26x with --no-quantize-draft, 1.26x in bf16); --measure N times it"
        )
    prediction = None
    if c is not None:
        overlap = settings.overlapped
        prediction = {
            "c": c,
            "c_source": c_source,
            "model": metrics.prediction_model(overlap),
            "alpha": list(metrics.ALPHAS),
            "k": list(metrics.KS),
            "speedup": metrics.prediction_table(c, overlap=overlap),
            "tokens_per_round": [[metrics.tokens_per_round(a, k, overlap) for k in metrics.KS] for a in metrics.ALPHAS],
            "best_k": {str(a): metrics.best_k(a, c, overlap=overlap) for a in metrics.ALPHAS},
        }
    return {
        "settings": settings.to_public_dict(),
        "placement": _placement(settings, target, draft, dtype),
        "drafter": settings.drafter,
        "drafter_note": DRAFTER_NOTES[settings.drafter],
        "target": target,
        "draft": draft,
        "compatible": compatible,
        "reasons": reasons,
        "warnings": warnings,
        "tokenizer": tokenizer,
        "cost_ratio": {"c": c, "source": c_source, "c_params": c_params, "c_bytes": c_bytes, "c_layers": c_layers},
        "predicted_speedup": prediction,
        "measure": None,
    }


def measure_pair(settings, n: int, c: float | None, on_loaded: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Generate n prompts; α, block efficiency, acceptance per position, a trace and the top
    disagreements. `on_loaded(decoder)` runs once the pair is loaded (the CLI prints its notes)."""
    from . import metrics
    from .api import SpeculativeDecoder
    from .data import load_prompts

    prompt_set = load_prompts(settings.dataset, n)
    decoder = SpeculativeDecoder.from_settings(settings)
    if on_loaded is not None:
        on_loaded(decoder)
    results = decoder.generate(prompt_set.prompts)
    acc = metrics.acceptance_totals(r.stats for r in results)
    tok = decoder.tokenizer

    def piece(i: int) -> str:
        return tok.decode([i], skip_special_tokens=False)

    disagreements: Counter = Counter()
    for r in results:
        for ev in r.events:
            if ev.rejected and ev.token is not None and ev.kind == "recovered":
                disagreements[(ev.rejected[0], ev.token)] += 1
    trace = []
    first = results[0]
    for ev in first.events:
        if ev.round == 0:
            continue
        trace.append(
            {
                "round": ev.round,
                "accepted": tok.decode(list(ev.accepted), skip_special_tokens=False),
                "rejected": tok.decode(list(ev.rejected), skip_special_tokens=False),
                "token": piece(ev.token) if ev.token is not None else None,
                "kind": ev.kind,
                "accepted_ids": list(ev.accepted),
                "rejected_ids": list(ev.rejected),
                "token_id": ev.token,
            }
        )
    k = settings.k if isinstance(settings.k, int) else acc.mean_proposed
    rejections = sum(1 for r in results for ev in r.events if ev.round > 0 and ev.num_accepted < ev.proposed)
    alpha = metrics.iid_alpha(acc.accepted_tokens, rejections)
    costs = _step_costs(decoder, prompt_set.prompts, alpha)
    return {
        "samples": len(results),
        "data": prompt_set.to_dict(),
        "acceptance_rate": acc.acceptance_rate,
        "alpha": alpha,
        "block_efficiency": acc.block_efficiency,
        "acceptance_per_position": acc.position_acceptance,
        "acceptance_per_position_conditional": metrics.conditional_position_acceptance(
            acc.position_trials, acc.position_accepts
        ),
        "draft_tokens": acc.draft_tokens,
        "accepted_tokens": acc.accepted_tokens,
        "rounds": acc.rounds,
        "predicted_speedup": (
            {str(kk): metrics.predicted(alpha, kk, c, settings.overlapped) for kk in metrics.KS}
            if alpha is not None and c is not None
            else None
        ),
        "prediction_model": metrics.prediction_model(settings.overlapped),
        "k": k,
        "step_costs": costs,
        "disagreements": [
            {"draft": piece(d), "target": piece(t), "draft_id": d, "target_id": t, "count": cnt}
            for (d, t), cnt in disagreements.most_common(10)
        ],
        "trace": {"prompt": first.prompt, "rounds": trace[:TRACE_ROUNDS], "total_rounds": len(trace)},
    }


def _step_costs(decoder, prompts, alpha: float | None) -> dict[str, Any] | None:
    """What a round costs on this machine, timed as bench times it (bench.runner.measure_step_times:
    the decoder's own steps, captured where its rounds are): the target's and the draft's one-token
    steps, their ratio c, the target's (k+1)-token verify step (a fixed k), and the speedup those
    costs and the measured α predict. None without a drafter to time."""
    from . import metrics
    from .bench.runner import encode_prompts, measure_step_times

    step = measure_step_times(decoder, encode_prompts(decoder, prompts[: decoder.settings.batch_size]))
    if step is None:
        return None
    out = step.to_dict()
    out["verify_over_target_step"] = v = (step.verify_ms / step.target_ms
                                          if step.verify_ms is not None and step.target_ms else None)
    k = decoder.settings.k
    out["speedup_at_round_costs"] = (metrics.predicted(alpha, k, step.c, decoder.settings.overlapped, v)
                                     if alpha is not None and v is not None and isinstance(k, int) else None)
    return out


def _decode_step(model, quantized: bool) -> str:
    """How generation will run this model's decode steps: 'fused', 'fused NF4' (--quantized: the
    fused layers on the NF4 projections bitsandbytes makes of them, accel/execution.py) or
    'transformers: <why>'. `model` is the meta model of the config: the architecture decides."""
    from .accel.fused import fused_support

    try:
        reason = fused_support(model)
    except Exception as e:  # noqa: BLE001 - a description, never a failure of inspect
        reason = f"could not be checked ({type(e).__name__})"
    if reason is None:
        return "fused NF4" if quantized else "fused"
    return f"transformers: {reason}"
