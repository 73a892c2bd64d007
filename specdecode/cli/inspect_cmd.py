"""`specdecode inspect`: what a target/draft pair is, and what speculation can gain, without generating.

For each model: architecture, parameters, layers, hidden size, dtype, memory footprint and
KV-cache bytes per token, read from its config and tokenizer with the weights left on the
`meta` device (nothing is loaded or downloaded beyond config and tokenizer files). Then the
tokenizer verdict (models/pairing.py), the cost ratio c estimated from parameters (the
weights a step reads) and from layers, and Leviathan et al.'s predicted speedup over
α in {0.5 .. 0.9} and k in {1 .. 8}. For the ngram, early-exit and none drafters it says
what the drafter would do instead.

`--measure N` loads the pair and generates N prompts to measure α, block efficiency and
acceptance per draft position, plus a token trace of one prompt showing where the draft
goes wrong and the most frequent (draft token, target token) disagreements.

What it does not: time anything (see `bench`).
"""

import json
import sys
from collections import Counter
from typing import Annotated, Any, Optional

import typer

from .options import (
    DataOptions,
    SharedOptions,
    check_output_paths,
    data_options,
    guarded,
    print_dry_run,
    print_load_notes,
    resolve_settings,
    shared_options,
)

__all__ = ["describe_model", "inspect", "register"]

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


def _meta_model(name: str, trust_remote_code: bool):
    """(config, model on the meta device): shapes and parameter counts without weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.loading import ModelLoadError, _check_source, _translate, check_causal_lm, resolve_model_path

    name = resolve_model_path(name)  # builtin:demo/target -> the packaged directory
    _check_source(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise _translate(name, e) from e
    check_causal_lm(name, config)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise ModelLoadError(f"'{name}' is not a causal language model (config {type(config).__name__})") from e
    except Exception as e:  # noqa: BLE001
        raise _translate(name, e) from e
    return config, model


def _layer_index(name: str) -> int | None:
    if ".layers." not in name:
        return None
    head = name.split(".layers.", 1)[1].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def describe_model(name: str, tokenizer, dtype: str, quantized: bool, trust_remote_code: bool,
                   exit_layer: int | None = None) -> dict[str, Any]:
    """Facts about one model from its config (weights on the meta device).

    `exit_layer` describes the early-exit draft made of the first `exit_layer` layers instead.
    """
    config, model = _meta_model(name, trust_remote_code)
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
    seen: set[int] = set()
    for pname, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        layer = _layer_index(pname)
        if exit_layer is not None and layer is not None and layer >= exit_layer:
            continue
        n = p.numel()
        params += n
        if p is in_emb.weight:
            embed += n
            if tied:
                step_params += n  # read again as the LM head
            continue
        step_params += n
    used_layers = exit_layer if exit_layer is not None else layers
    bytes_per = DTYPE_BYTES.get(dtype, 4)
    if quantized:  # 4-bit NF4 linear weights (~0.5 byte each plus scales); embeddings stay in dtype
        memory = int((params - embed) * 0.53) + embed * bytes_per
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
        "num_layers": used_layers,
        "hidden_size": int(text.hidden_size),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": rows,
        "tokenizer_vocab": len(tokenizer.get_vocab()) if tokenizer is not None else None,
        "tied_embeddings": tied,
        "dtype": dtype + (" (4-bit weights)" if quantized else ""),
        "stored_dtype": str(stored).removeprefix("torch.") if stored is not None else None,
        "memory_bytes": memory,
        "kv_bytes_per_token": kv_bytes,
        "sliding_window": getattr(text, "sliding_window", None) if layer_types and "sliding_attention" in layer_types else None,
        "layer_types": dict(Counter(layer_types[:used_layers])) if layer_types else None,
        "decode_step": _decode_step(model, quantized),
    }
    if exit_layer is not None:
        info["name"] = f"{name} (first {exit_layer} of {layers} layers)"
        info["memory_bytes"] = 0  # shares the target's weights
        info["exit_layer"] = exit_layer
    return info


def _resolved_dtype(settings) -> str:
    from ..models.loading import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    return str(resolve_dtype(settings.dtype, device)).removeprefix("torch.")


def inspect_pair(settings, cost_ratio: float | None = None) -> dict[str, Any]:
    """The report `inspect --format json` prints (without --measure)."""
    from .. import metrics
    from ..models.loading import load_tokenizer
    from ..models.pairing import check_pair
    from ..settings import SettingsError

    if not settings.target:
        raise SettingsError("no target model: name one with --target or a --preset")
    if settings.drafter == "model" and not settings.draft:
        raise SettingsError("--drafter model needs a draft model: name one with --draft (or use --drafter ngram/none)")
    dtype = _resolved_dtype(settings)
    t_tok = load_tokenizer(settings.target, settings.trust_remote_code)
    target = describe_model(settings.target, t_tok, dtype, settings.quantized, settings.trust_remote_code)
    draft = None
    compatible = True
    reasons: list[str] = []
    warnings: list[str] = []
    tokenizer = None
    c_params = c_layers = None
    if settings.drafter == "model":
        d_tok = load_tokenizer(settings.draft, settings.trust_remote_code)
        draft = describe_model(settings.draft, d_tok, dtype, settings.quantized, settings.trust_remote_code)
        pair = check_pair(t_tok, d_tok, target["vocab_size"], draft["vocab_size"])
        tokenizer = pair.to_dict()
        compatible, reasons, warnings = pair.compatible, list(pair.reasons), list(pair.warnings)
        c_params = metrics.cost_ratio(draft["step_params"], target["step_params"])
        c_layers = metrics.cost_ratio(draft["num_layers"], target["num_layers"])
    elif settings.drafter == "early-exit":
        n = settings.exit_layer
        if n is None or n >= target["num_layers"]:
            raise SettingsError(f"--exit-layer {n} must be below the target's {target['num_layers']} layers")
        draft = describe_model(settings.target, t_tok, dtype, settings.quantized, settings.trust_remote_code, exit_layer=n)
        draft["kind"] = "early-exit"
        c_params = metrics.cost_ratio(draft["step_params"], target["step_params"])
        c_layers = metrics.cost_ratio(n, target["num_layers"])
    elif settings.drafter == "ngram":
        c_params = c_layers = 0.0

    c = cost_ratio if cost_ratio is not None else c_params
    c_source = "--cost-ratio" if cost_ratio is not None else "parameters"
    if c is not None and c_layers is not None and settings.drafter == "model" and c_layers > 2 * c:
        warnings.append(
            f"the draft has {draft['num_layers']} of the target's {target['num_layers']} layers (c from layers "
            f"{c_layers:.2f} vs {c:.2f} from parameters): when decoding is launch-bound (eager GPU, CPU) a step "
            "costs per layer, and c is closer to the layer ratio"
        )
    if c is not None and c >= 0.5:
        warnings.append(f"c = {c:.2f}: a draft step costs at least half a target step; speculation can hardly pay off")
    prediction = None
    if c is not None:
        prediction = {
            "c": c,
            "c_source": c_source,
            "alpha": list(metrics.ALPHAS),
            "k": list(metrics.KS),
            "speedup": metrics.prediction_table(c),
            "tokens_per_round": [[metrics.expected_tokens_per_round(a, k) for k in metrics.KS] for a in metrics.ALPHAS],
            "best_k": {str(a): metrics.best_k(a, c) for a in metrics.ALPHAS},
        }
    return {
        "settings": settings.to_public_dict(),
        "drafter": settings.drafter,
        "drafter_note": DRAFTER_NOTES[settings.drafter],
        "target": target,
        "draft": draft,
        "compatible": compatible,
        "reasons": reasons,
        "warnings": warnings,
        "tokenizer": tokenizer,
        "cost_ratio": {"c": c, "source": c_source, "c_params": c_params, "c_layers": c_layers},
        "predicted_speedup": prediction,
        "measure": None,
    }


def measure_pair(settings, n: int, c: float | None) -> dict[str, Any]:
    """Generate n prompts; α, block efficiency, acceptance per position, a trace and the top disagreements."""
    from .. import metrics
    from ..api import SpeculativeDecoder
    from ..data import load_prompts

    prompt_set = load_prompts(settings.dataset, n)
    decoder = SpeculativeDecoder.from_settings(settings)
    print_load_notes(decoder)
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
            {str(kk): metrics.predicted_speedup(alpha, kk, c) for kk in metrics.KS}
            if alpha is not None and c is not None
            else None
        ),
        "k": k,
        "disagreements": [
            {"draft": piece(d), "target": piece(t), "draft_id": d, "target_id": t, "count": cnt}
            for (d, t), cnt in disagreements.most_common(10)
        ],
        "trace": {"prompt": first.prompt, "rounds": trace[:TRACE_ROUNDS], "total_rounds": len(trace)},
    }


# ---- rendering ---------------------------------------------------------------------------


def _num(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def _decode_step(model, quantized: bool) -> str:
    """How generation will run this model's decode steps: 'fused' or 'transformers: <why>'."""
    from ..decoding.native import native_support

    if quantized:
        return "transformers: 4-bit weights are not plain nn.Linear layers"
    try:
        reason = native_support(model)
    except Exception as e:  # noqa: BLE001 - a description, never a failure of inspect
        reason = f"could not be checked ({type(e).__name__})"
    return "fused" if reason is None else f"transformers: {reason}"


def render(report: dict[str, Any], console) -> None:
    from rich.table import Table
    from rich.text import Text

    t, d = report["target"], report["draft"]
    models = Table(title=f"inspect: drafter {report['drafter']}", title_justify="left")
    models.add_column("", style="bold")
    models.add_column("target")
    if d is not None:
        models.add_column("draft")
    fields = [
        ("name", "name", str),
        ("architecture", "architecture", str),
        ("parameters", "params", _num),
        ("layers", "num_layers", str),
        ("hidden size", "hidden_size", str),
        ("heads / kv heads", None, None),
        ("vocabulary (rows / tokenizer)", None, None),
        ("dtype (stored)", None, None),
        ("memory (weights)", "memory_bytes", _bytes),
        ("KV cache per token", "kv_bytes_per_token", _bytes),
        ("sliding window", "sliding_window", lambda v: "-" if v is None else str(v)),
        ("decode step", "decode_step", lambda v: "fused layers" if v == "fused" else "transformers modules"),
    ]
    for label, key, fmt in fields:
        cells = []
        for m in (t, d) if d is not None else (t,):
            if label.startswith("heads"):
                cells.append(f"{m['num_attention_heads']} / {m['num_key_value_heads']} (head dim {m['head_dim']})")
            elif label.startswith("vocabulary"):
                cells.append(f"{m['vocab_size']} / {m['tokenizer_vocab']}")
            elif label.startswith("dtype"):
                cells.append(f"{m['dtype']} ({m['stored_dtype'] or '?'})")
            else:
                cells.append(fmt(m[key]))
        models.add_row(label, *cells)
    console.print(models)
    console.print(Text(f"drafter: {report['drafter_note']}", style="dim"))
    if report["drafter"] == "model":
        verdict = Text("tokenizers: ")
        verdict.append("compatible" if report["compatible"] else "NOT compatible", "bold green" if report["compatible"] else "bold red")
        console.print(verdict)
    for r in report["reasons"]:
        console.print(f"  reason: {r}")
    for w in report["warnings"]:
        console.print(f"  warning: {w}")
    for role, m in (("target", t), ("draft", d)):
        step = (m or {}).get("decode_step", "fused")
        if step != "fused":
            console.print(Text(f"{role} decode step on the transformers modules ({step.removeprefix('transformers: ')})",
                               style="dim"))

    pred = report["predicted_speedup"]
    cr = report["cost_ratio"]
    if pred is not None:
        extra = f"; from layers {cr['c_layers']:.3f}" if cr["c_layers"] is not None and report["drafter"] != "ngram" else ""
        table = Table(
            title=f"predicted speedup (Leviathan et al.), c = {pred['c']:.3f} from {pred['c_source']}{extra}",
            title_justify="left",
        )
        table.add_column("α \\ k", style="bold")
        for k in pred["k"]:
            table.add_column(str(k), justify="right")
        for a, row in zip(pred["alpha"], pred["speedup"]):
            best = pred["best_k"][str(a)]
            table.add_row(
                f"{a:.1f}",
                *[Text(f"{s:.2f}x", style="bold green" if k == best else "") for k, s in zip(pred["k"], row)],
            )
        console.print(table)

    m = report.get("measure")
    if m:
        pos = "  ".join(f"{j + 1}: {a:.0%}" if a is not None else f"{j + 1}: -" for j, a in enumerate(m["acceptance_per_position"]))
        acc = m["acceptance_rate"]
        be = m["block_efficiency"]
        al = m["alpha"]
        console.print(
            f"measured on {m['samples']} prompt(s): acceptance rate "
            + (f"{acc:.1%}" if acc is not None else "n/a")
            + ", per-token α "
            + (f"{al:.3f}" if al is not None else "n/a")
            + ", block efficiency "
            + (f"{be:.2f}" if be is not None else "n/a")
        )
        if pos:
            cond = "  ".join(
                f"{j + 1}: {a:.0%}" if a is not None else f"{j + 1}: -"
                for j, a in enumerate(m["acceptance_per_position_conditional"])
            )
            console.print(f"acceptance per draft position  {pos}")
            console.print(f"  given the previous ones were  {cond}")
        if m["predicted_speedup"]:
            cells = "  ".join(f"k={k}: {s:.2f}x" for k, s in m["predicted_speedup"].items())
            console.print(f"predicted speedup at the measured α  {cells}")
        if m["disagreements"]:
            dis = Table(title="where the draft goes wrong (first rejection)", title_justify="left", min_width=48)
            dis.add_column("draft proposed")
            dis.add_column("target chose")
            dis.add_column("times", justify="right")
            for row in m["disagreements"]:
                dis.add_row(repr(row["draft"]), repr(row["target"]), str(row["count"]))
            console.print(dis)
        tr = m["trace"]
        trace = Table(title=f"token trace of the first prompt ({len(tr['rounds'])} of {tr['total_rounds']} rounds)", title_justify="left")
        trace.add_column("round", justify="right")
        trace.add_column("accepted", style="green")
        trace.add_column("rejected", style="red")
        trace.add_column("target's token", style="bold magenta")
        for r in tr["rounds"]:
            trace.add_row(
                str(r["round"]),
                repr(r["accepted"]) if r["accepted_ids"] else "",
                repr(r["rejected"]) if r["rejected_ids"] else "",
                (repr(r["token"]) + f" ({r['kind']})") if r["token"] is not None else "",
            )
        console.print(trace)


@data_options
@shared_options
def inspect(
    measure: Annotated[int, typer.Option("--measure", min=0, help="also generate N prompts to measure acceptance (0 = off)")] = 0,
    cost_ratio: Annotated[Optional[float], typer.Option("--cost-ratio", min=0.0, help="use this c (draft/target step time) for the prediction", show_default=False)] = None,
    *,
    opts: SharedOptions,
    data: DataOptions,
) -> None:
    """Describe the pair and predict the speedup, without generating (unless --measure N)."""

    def body() -> None:
        settings = resolve_settings(opts, data)
        if opts.dry_run:
            print_dry_run(settings, settings.format == "json")
            return
        check_output_paths({"--output": settings.output})
        report = inspect_pair(settings, cost_ratio)
        if measure:
            report["measure"] = measure_pair(settings, measure, report["cost_ratio"]["c"])
        if settings.output:
            from ..io import atomic_write_text

            atomic_write_text(settings.output, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        if settings.format == "json":
            sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        elif settings.format == "csv":
            _csv(report)
        else:
            from rich.console import Console

            render(report, Console(highlight=False))

    guarded(opts.debug, body)


def _csv(report: dict[str, Any]) -> None:
    """The prediction grid as CSV: alpha, k, c, speedup, tokens_per_round."""
    import csv

    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["alpha", "k", "c", "predicted_speedup", "tokens_per_round"])
    pred = report["predicted_speedup"]
    if pred is None:
        return
    for a, srow, trow in zip(pred["alpha"], pred["speedup"], pred["tokens_per_round"]):
        for k, s, t in zip(pred["k"], srow, trow):
            w.writerow([a, k, pred["c"], f"{s:.4f}", f"{t:.4f}"])


def register(app: typer.Typer) -> None:
    app.command("inspect", help="Describe a target/draft pair and predict the speedup, without generating.")(inspect)
