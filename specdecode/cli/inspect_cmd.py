"""`specdecode inspect`: parse the options, run specdecode.inspect, render its report.

The report (what the pair is, the tokenizer verdict, c, the predicted speedup, and with
`--measure N` the measured acceptance and a token trace) is computed by specdecode/inspect.py;
this module prints it as a rich table, JSON or CSV, and writes --output.

What it does not: compute anything about the models.
"""

import json
import sys
from typing import Annotated, Any, Optional

import typer

from ..inspect import describe_model, inspect_pair, measure_pair  # describe_model: tests import it from here
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

__all__ = ["describe_model", "inspect", "inspect_pair", "measure_pair", "register", "render"]


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


def _decode_step(v: str) -> str:
    """inspect's decode_step ('fused', 'fused NF4', 'transformers: <why>') as the table says it."""
    return {"fused": "fused layers", "fused NF4": "fused NF4 kernels"}.get(v, "transformers modules")


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
        ("dtype", None, None),
        ("memory (weights)", "memory_bytes", _bytes),
        ("weights read per step", "step_bytes", _bytes),
        ("KV cache per token", "kv_bytes_per_token", _bytes),
        ("sliding window", "sliding_window", lambda v: "-" if v is None else str(v)),
        ("decode step", "decode_step", _decode_step),
    ]
    for label, key, fmt in fields:
        cells = []
        for m in (t, d) if d is not None else (t,):
            if label.startswith("heads"):
                cells.append(f"{m['num_attention_heads']} / {m['num_key_value_heads']} (head dim {m['head_dim']})")
            elif label.startswith("vocabulary"):
                cells.append(f"{m['vocab_size']} / {m['tokenizer_vocab']}")
            elif label.startswith("dtype"):
                stored = m["stored_dtype"]
                cells.append(m["dtype"] if stored is None or stored == m["dtype"] else f"{m['dtype']}, stored as {stored}")
            else:
                cells.append(fmt(m[key]))
        models.add_row(label, *cells)
    console.print(models)
    console.print(Text(f"drafter: {report['drafter_note']}", style="dim"))
    if report["drafter"] == "model":
        verdict = Text("tokenizers: ")
        verdict.append("compatible" if report["compatible"] else "NOT compatible", "bold green" if report["compatible"] else "bold red")
        console.print(verdict)
    _render_placement(report.get("placement"), console)
    for r in report["reasons"]:
        console.print(f"  reason: {r}")
    for w in report["warnings"]:
        console.print(f"  warning: {w}")
    for role, m in (("target", t), ("draft", d)):
        step = (m or {}).get("decode_step", "fused")
        if step.startswith("transformers"):
            console.print(Text(f"{role} decode step on the transformers modules ({step.removeprefix('transformers: ')})",
                               style="dim"))

    pred = report["predicted_speedup"]
    cr = report["cost_ratio"]
    if pred is not None:
        extra = f"; from layers {cr['c_layers']:.3f}" if cr["c_layers"] is not None and report["drafter"] != "ngram" else ""
        if pred["c_source"] == "weight bytes" and cr.get("c_params") is not None:
            extra = f"; from parameters {cr['c_params']:.3f}" + extra
        table = Table(
            title=f"predicted speedup ({pred['model']}), c = {pred['c']:.3f} from {pred['c_source']}{extra}",
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
            console.print(f"predicted speedup at the measured α ({m['prediction_model']})  {cells}")
        costs = m.get("step_costs")
        if costs and costs.get("target_step_ms"):
            line = f"measured step costs: target {costs['target_step_ms']:.3f} ms"
            if costs.get("draft_step_ms"):
                line += f", draft {costs['draft_step_ms']:.3f} ms (c = {costs['c']:.2f})"
            if costs.get("verify_step_ms") is not None:
                line += (f", verify of {costs['verify_tokens']} tokens {costs['verify_step_ms']:.3f} ms "
                         f"({costs['verify_over_target_step']:.2f} target steps)")
            console.print(line)
            if costs.get("speedup_at_round_costs") is not None:
                console.print(f"speedup these costs and α predict at k={m['k']}: {costs['speedup_at_round_costs']:.2f}x "
                              "(bench measures it)")
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


def _render_placement(place: dict[str, Any] | None, console) -> None:
    """Where the weights go: one row per device (or rank) with the target's and draft's bytes."""
    from rich.table import Table

    if not place:
        return
    title = f"placement: {place['mode']}" + (f", {place['tp']} ranks" if place.get("tp", 1) > 1 else "")
    table = Table(title=title, title_justify="left")
    table.add_column("device")
    table.add_column("target weights", justify="right")
    table.add_column("draft weights", justify="right")
    table.add_column("total", justify="right")
    for row in place["per_device"]:
        table.add_row(row["device"], _bytes(row["target_bytes"]), _bytes(row["draft_bytes"]), _bytes(row["total_bytes"]))
    console.print(table)
    console.print(f"  {place['note']}", style="dim")


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
        from .render import Status, describe_models

        with Status(f"reading {describe_models(settings)} …"):
            report = inspect_pair(settings, cost_ratio)
        if measure:
            with Status(f"loading and measuring {describe_models(settings)} …") as status:
                report["measure"] = measure_pair(settings, measure, report["cost_ratio"]["c"],
                                                 on_loaded=lambda d: (status.stop(), print_load_notes(d)))
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
