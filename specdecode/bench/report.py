"""Report writers: bench and compare results as JSON-ready dicts, CSV and a plot (the rich tables
that show them in a terminal live in cli/tables.py).

The JSON shapes are the contract of DESIGN.md:

  bench    {"settings", "baseline": {"time_s", "tokens", "tokens_per_s", "ms_per_token", ...},
            "speculative": {...}, "speedup", "acceptance_rate", "block_efficiency",
            "output_match_rate", "samples": [...], ...}
  compare  {"rows": [{"k", "speedup", "acceptance_rate", "block_efficiency", "tokens_per_s", ...}]}

Every figure is computed with specdecode.metrics; this module only arranges and formats.
What it does not: time or run models (runner.py does).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import metrics
from .runner import BenchResult, Combo, PassRun, StepTimes, SweepResult, sample_record

__all__ = [
    "bench_csv",
    "bench_report",
    "compare_csv",
    "compare_report",
    "pass_summary",
    "plot_compare",
    "write_report",
]


# ---- dicts ---------------------------------------------------------------------------------


def pass_summary(p: PassRun) -> dict[str, Any]:
    """Timing figures of one engine over the prompts."""
    return {
        "time_s": p.time_s,
        "tokens": p.tokens,
        "tokens_per_s": metrics.throughput(p.tokens, p.time_s),
        "ms_per_token": metrics.ms_per_token(p.tokens, p.time_s),
        "sequences": len(p.runs),
        "batches": len(p.batch_times),
        "rounds": sum(r.rounds for r in p.runs),
        "latency_s": metrics.latency_summary([r.latency_s for r in p.runs]),
        "ttft_s": metrics.latency_summary([r.ttft_s for r in p.runs]),
    }


def _k_for_prediction(settings, acc: metrics.AcceptanceTotals) -> float | None:
    # prompt lookup proposes fewer than k when it finds no match, and --k auto varies k:
    # use what was really proposed per round there, the configured k otherwise
    if isinstance(settings.k, int) and settings.drafter != "ngram":
        return float(settings.k)
    return acc.mean_proposed


def prediction(settings, acc: metrics.AcceptanceTotals, step: StepTimes | None,
               measured_speedup: float | None) -> dict[str, Any] | None:
    """The expected speedup from the measured α and c (Leviathan et al.'s; with --overlap, overlapped
    rounds' at a perfect overlap: `model` says which), next to the measured one."""
    alpha = acc.alpha
    k = _k_for_prediction(settings, acc)
    if alpha is None or k is None or step is None:
        return None
    overlap = settings.overlapped
    # overlapped rounds: the verify and k + 1 draft steps side by side, priced as if they overlapped perfectly
    predicted = metrics.predicted(alpha, k, step.c, overlap)
    verify = None
    if step.verify_ms is not None and step.target_ms:
        v = step.verify_ms / step.target_ms
        at_costs = metrics.predicted(alpha, k, step.c, overlap, v)
        verify = {
            "verify_tokens": step.verify_tokens,
            "verify_step_ms": step.verify_ms,
            "verify_over_target_step": v,
            "speedup_at_round_costs": at_costs,
            "realised_at_round_costs": measured_speedup / at_costs if measured_speedup is not None else None,
        }
    return {
        "alpha": alpha,
        "alpha_method": "accepted / (accepted + rejections)" if acc.rejected_rounds is not None else "acceptance rate",
        "k": k,
        "c": step.c,
        "c_method": step.method,
        "target_step_ms": step.target_ms,
        "draft_step_ms": step.draft_ms,
        "tokens_per_round": metrics.tokens_per_round(alpha, k, overlap),
        "model": metrics.prediction_model(overlap),
        "measured_tokens_per_round": acc.block_efficiency,
        "speedup": predicted,
        "measured_speedup": measured_speedup,
        "realised": measured_speedup / predicted if measured_speedup is not None and predicted > 0 else None,
        # the round priced as measured: k draft steps and the verify's own cost (v target steps)
        "round_costs": verify,
    }


def bench_report(result: BenchResult) -> dict[str, Any]:
    s = result.settings
    base, spec = result.baseline, result.speculative
    acc = metrics.acceptance_totals(spec.runs)
    speculative = pass_summary(spec)
    speculative.update(acc.to_dict())
    done = result.completed
    speedup = metrics.speedup(base.time_s, spec.time_s, base.tokens, spec.tokens) if done else None
    match = (
        metrics.match_rate((b.token_ids, x.token_ids) for b, x in zip(base.runs, spec.runs)) if s.greedy else None
    )
    pred = prediction(s, acc, result.step, speedup)
    return {
        "settings": s.to_public_dict(),
        "interrupted": result.interrupted,
        "failure": result.failure,
        "num_samples": done,
        "requested_samples": len(result.prompts),
        "resumed_samples": result.resumed,
        "device": result.device,
        "dtype": result.dtype,
        "decode_steps": result.decode_steps,
        "warm_up_s": result.warm_up_s,
        "data": result.data,
        "baseline": pass_summary(base),
        "speculative": speculative,
        "speedup": speedup,
        "acceptance_rate": acc.acceptance_rate,
        "block_efficiency": acc.block_efficiency,
        "acceptance_per_position": acc.position_acceptance,
        "output_match_rate": match,
        "predicted_speedup": pred["speedup"] if pred else None,
        "prediction": pred,
        "samples_file": str(result.samples_path) if result.samples_path else None,
        "samples": [sample_record(result, b, x) for b, x in zip(base.runs, spec.runs)],
    }


def compare_row(combo: Combo, base: PassRun, spec: PassRun, step: StepTimes | None, settings) -> dict[str, Any]:
    acc = metrics.acceptance_totals(spec.runs)
    speedup = metrics.speedup(base.time_s, spec.time_s, base.tokens, spec.tokens)
    greedy = combo.temperature == 0
    match = metrics.match_rate((b.token_ids, x.token_ids) for b, x in zip(base.runs, spec.runs)) if greedy else None
    row_settings = settings.model_copy(update={"k": combo.k, "drafter": combo.drafter})
    pred = prediction(row_settings, acc, step, speedup)
    return {
        **combo.to_dict(),
        "speedup": speedup,
        "acceptance_rate": acc.acceptance_rate,
        "block_efficiency": acc.block_efficiency,
        "tokens_per_s": metrics.throughput(spec.tokens, spec.time_s),
        "ms_per_token": metrics.ms_per_token(spec.tokens, spec.time_s),
        "time_s": spec.time_s,
        "tokens": spec.tokens,
        "baseline_tokens_per_s": metrics.throughput(base.tokens, base.time_s),
        "baseline_time_s": base.time_s,
        "output_match_rate": match,
        "predicted_speedup": pred["speedup"] if pred else None,
        "c": step.c if step else None,
        "acceptance_per_position": acc.position_acceptance,
        "best": False,
    }


def compare_report(settings, sweep: SweepResult, swept: Sequence[str], num_prompts: int) -> dict[str, Any]:
    rows = [compare_row(c, b, s, st, settings) for c, b, s, st in sweep.rows]
    best = None
    scored = [(r["speedup"], i) for i, r in enumerate(rows) if r["speedup"] is not None]
    if scored:
        best = max(scored)[1]
        rows[best]["best"] = True
    return {
        "settings": settings.to_public_dict(),
        "swept": list(swept),
        "num_samples": num_prompts,
        "interrupted": sweep.interrupted,
        "failure": sweep.failure,
        "rows": rows,
        "best": best,
    }


# ---- CSV -----------------------------------------------------------------------------------


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}_"))
        elif isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = json.dumps(v)
        else:
            out[f"{prefix}{k}"] = "" if v is None else v
    return out


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def bench_csv(report: dict[str, Any]) -> str:
    """One header line and one line of summary figures (the samples are in the JSONL file)."""
    s = report["settings"]
    row = {
        "target": s.get("target"),
        "draft": s.get("draft"),
        "drafter": s.get("drafter"),
        "k": s.get("k"),
        "batch_size": s.get("batch_size"),
        "temperature": s.get("temperature"),
        "max_new_tokens": s.get("max_new_tokens"),
        "num_samples": report["num_samples"],
        "interrupted": report["interrupted"],
        **_flatten({"baseline": report["baseline"], "speculative": report["speculative"]}),
        "speedup": report["speedup"],
        "acceptance_rate": report["acceptance_rate"],
        "block_efficiency": report["block_efficiency"],
        "output_match_rate": report["output_match_rate"],
        "predicted_speedup": report["predicted_speedup"],
    }
    return _csv([{k: ("" if v is None else v) for k, v in row.items()}])


def compare_csv(report: dict[str, Any]) -> str:
    return _csv([_flatten(r) for r in report["rows"]])


def write_report(report: dict[str, Any], path: str | Path, kind: str) -> Path:
    """Write `report` to `path` atomically (a crash never leaves half a file): CSV for a .csv name, JSON otherwise."""
    from ..io import atomic_write_text

    p = Path(path).expanduser()
    if p.suffix.lower() == ".csv":
        return atomic_write_text(p, bench_csv(report) if kind == "bench" else compare_csv(report))
    return atomic_write_text(p, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def plot_compare(report: dict[str, Any], path: str | Path) -> Path:
    """PNG of speedup (measured, and predicted dashed) and acceptance rate against the swept value.

    The first swept numeric setting (k, then batch size, then temperature) is the x axis and
    every combination of the other swept settings is one line; with only drafters swept,
    the drafters are categories on the x axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    swept = [s for s in report["swept"] if s in ("k", "batch_size", "drafter", "temperature")]
    numeric = [a for a in ("k", "batch_size", "temperature") if a in swept]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if numeric:
        x_axis = numeric[0]
        others = [a for a in swept if a != x_axis]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(tuple(r[a] for a in others), []).append(r)
        for key, members in groups.items():
            members = [m for m in members if m[x_axis] != "auto"]
            if not members:
                continue
            members.sort(key=lambda m: float(m[x_axis]))
            xs = [float(m[x_axis]) for m in members]
            label = " ".join(f"{a}={v}" for a, v in zip(others, key)) or "measured"
            (line,) = ax1.plot(xs, [m["speedup"] for m in members], "o-", label=label)
            ax1.plot(xs, [m["predicted_speedup"] for m in members], "--", color=line.get_color(), alpha=0.6)
            ax2.plot(xs, [m["acceptance_rate"] for m in members], "o-", color=line.get_color(), label=label)
        for ax in (ax1, ax2):
            ax.set_xlabel(x_axis)
    else:
        xs = list(range(len(rows)))
        labels = [" ".join(f"{a}={r[a]}" for a in swept) or str(i) for i, r in enumerate(rows)]
        ax1.plot(xs, [r["speedup"] for r in rows], "o-", label="measured")
        ax1.plot(xs, [r["predicted_speedup"] for r in rows], "s--", alpha=0.6, label="predicted")
        ax2.plot(xs, [r["acceptance_rate"] for r in rows], "o-", color="tab:green")
        for ax in (ax1, ax2):
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=30, ha="right")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set_ylabel("speedup (x)")
    model = metrics.prediction_model(bool(report.get("settings", {}).get("overlap")))
    ax1.set_title(f"speedup (dashed: predicted, {model})", fontsize="small")
    ax2.set_title("acceptance rate", fontsize="small")
    ax1.legend(fontsize="small")
    ax2.set_ylabel("acceptance rate")
    ax2.set_ylim(0, 1.05)
    fig.suptitle(f"compare: {report['num_samples']} samples", fontsize="medium")
    fig.tight_layout()
    from ..io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
