"""Rich tables for bench and compare reports (the JSON-ready dicts of bench/report.py).

What it does not: compute anything; every figure comes from the report dict.
"""

from __future__ import annotations

from typing import Any

def _s(x: float | None, unit: str = " s", digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _match(report: dict[str, Any]) -> str:
    if not report["settings"].get("temperature"):
        m = report["output_match_rate"]
        if m is None:
            return "-"
        n = report["num_samples"]
        return f"{m:.1%} ({round(m * n)}/{n})"
    return "n/a (sampling)"


def render_bench(report: dict[str, Any], console) -> None:
    """The summary table (baseline and speculative time, speedup, acceptance rate, block
    efficiency), then the details, the per-position acceptance and the prediction."""
    from rich.table import Table

    s = report["settings"]
    base, spec = report["baseline"], report["speculative"]
    n, want = report["num_samples"], report["requested_samples"]
    mode = "greedy" if not s.get("temperature") else f"temperature {s['temperature']:g}"
    title = f"Benchmark: {n} samples, drafter {s['drafter']}, k={s['k']}, batch {s['batch_size']}, {mode}"
    if report["interrupted"]:
        title += f" (interrupted after {n} of {want} samples)"
    elif report.get("failure"):
        title += f" (stopped after {n} of {want} samples: {report['failure']})"
    if report.get("resumed_samples"):
        title += f" ({report['resumed_samples']} resumed from the samples file)"

    if n == 0:
        console.print(f"{title}: nothing was measured")
        return
    summary = Table(title=title, title_justify="left", min_width=72)
    summary.add_column("Run", style="bold")
    summary.add_column("Metric")
    summary.add_column("Value", justify="right")
    summary.add_row("Baseline Run", "Time", _s(base["time_s"]), end_section=True)
    summary.add_row("Speculative Run", "Time", _s(spec["time_s"]))
    summary.add_row("", "Speedup", _x(report["speedup"]))
    summary.add_row("", "Acceptance rate", _pct(report["acceptance_rate"]))
    summary.add_row("", "Block efficiency", _f(report["block_efficiency"]))
    console.print(summary)

    details = Table(title="Details", title_justify="left", min_width=72)
    details.add_column("", style="bold")
    details.add_column("baseline", justify="right")
    details.add_column("speculative", justify="right")
    rows = [
        ("wall time", _s(base["time_s"]), _s(spec["time_s"])),
        ("generated tokens", str(base["tokens"]), str(spec["tokens"])),
        ("throughput (tokens/s)", _f(base["tokens_per_s"], 1), _f(spec["tokens_per_s"], 1)),
        ("ms per token", _f(base["ms_per_token"]), _f(spec["ms_per_token"])),
        ("latency per sequence, mean", _s(base["latency_s"]["mean"]), _s(spec["latency_s"]["mean"])),
        ("latency per sequence, p50", _s(base["latency_s"]["p50"]), _s(spec["latency_s"]["p50"])),
        ("latency per sequence, p90", _s(base["latency_s"]["p90"]), _s(spec["latency_s"]["p90"])),
        ("time to first token, mean", _s(base["ttft_s"]["mean"]), _s(spec["ttft_s"]["mean"])),
        ("target forwards (rounds)", str(base["rounds"]), str(spec["rounds"])),
    ]
    for r in rows:
        details.add_row(*r)
    console.print(details)

    pos = report["acceptance_per_position"]
    if pos:
        cells = "  ".join(f"{j + 1}: {_pct(a)}" for j, a in enumerate(pos))
        console.print(f"acceptance per draft position  {cells}")
    console.print(f"output match rate  {_match(report)}")
    pred = report["prediction"]
    if pred:
        cost = (
            f"c={pred['c']:.3f} (draft {pred['draft_step_ms']:.2f} / target {pred['target_step_ms']:.2f} ms per step)"
            if pred["c_method"] == "measured"
            else "c=0 (prompt lookup)"
        )
        k = pred["k"]
        k_text = f"{k:g}" if float(k).is_integer() else f"{k:.2f} (mean proposed)"
        realised = f", {pred['realised']:.0%} of predicted" if pred.get("realised") is not None else ""
        # two short lines that a 100-column terminal does not wrap
        console.print(
            f"predicted speedup {_x(pred['speedup'])} at {pred['tokens_per_round']:.2f} tokens/round "
            f"({pred['model']}: α={pred['alpha']:.3f}, k={k_text}, {cost})",
            soft_wrap=True,
        )
        console.print(
            f"measured  speedup {_x(pred['measured_speedup'])} at {_f(pred['measured_tokens_per_round'])} "
            f"tokens/round{realised}",
            soft_wrap=True,
        )
        rc = pred.get("round_costs")
        if rc:
            console.print(
                f"at the measured round costs (verify of {rc['verify_tokens']} tokens = "
                f"{rc['verify_over_target_step']:.2f} target steps): {_x(rc['speedup_at_round_costs'])}",
                soft_wrap=True,
            )
    for role, how in (report.get("decode_steps") or {}).items():  # ModelRunner.describe() of each
        console.print(f"{role} decode steps: {how}", style="dim", soft_wrap=True)
    warm = report.get("warm_up_s") or {}
    if any(v > 0 for v in warm.values()):  # compiles and captures, outside every timing
        console.print("warm-up, untimed: " + ", ".join(f"{name} {v:.1f} s" for name, v in warm.items()),
                      style="dim", soft_wrap=True)
    if report.get("samples_file"):
        console.print(f"samples: {report['samples_file']}", style="dim")


def render_compare(report: dict[str, Any], console) -> None:
    from rich.table import Table

    title = f"compare: {report['num_samples']} samples, swept {', '.join(report['swept']) or 'nothing'}"
    if report.get("settings", {}).get("overlap"):
        title += ", overlapped rounds"
    if report["interrupted"]:
        title += " (interrupted)"
    elif report.get("failure"):
        title += f" (stopped: {report['failure']})"
    rows = report["rows"]
    show_batch = len({r["batch_size"] for r in rows}) > 1
    show_temp = len({r["temperature"] for r in rows}) > 1
    table = Table(title=title, title_justify="left")
    columns = [("", "left"), ("drafter", "left"), ("k", "right")]
    if show_batch:
        columns.append(("batch", "right"))
    if show_temp:
        columns.append(("temp.", "right"))
    columns += [("tokens/s", "right"), ("speedup", "right"), ("predicted", "right"),
                ("acceptance", "right"), ("block eff.", "right"), ("match", "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    for r in rows:
        cells = ["*" if r["best"] else "", r["drafter"], str(r["k"])]
        if show_batch:
            cells.append(str(r["batch_size"]))
        if show_temp:
            cells.append(f"{r['temperature']:g}")
        cells += [
            _f(r["tokens_per_s"], 1),
            _x(r["speedup"]),
            _x(r["predicted_speedup"]),
            _pct(r["acceptance_rate"]),
            _f(r["block_efficiency"]),
            _pct(r["output_match_rate"]) if not r["temperature"] else "n/a (sampling)",
        ]
        table.add_row(*cells, style="bold green" if r["best"] else None)
    console.print(table)
    baselines = {}
    for r in rows:
        baselines[(r["batch_size"], r["temperature"])] = r["baseline_tokens_per_s"]
    console.print(
        "baseline (target alone, measured once per batch size and temperature): "
        + ", ".join(f"{_f(v, 1)} tokens/s (batch {b}, temperature {t:g})" for (b, t), v in baselines.items())
    )
    if report["best"] is not None:
        b = rows[report["best"]]
        console.print(
            f"best (*): drafter {b['drafter']}, k={b['k']}, batch {b['batch_size']}, temperature {b['temperature']:g} "
            f"-> {_x(b['speedup'])}"
        )


# ---- plot ----------------------------------------------------------------------------------
