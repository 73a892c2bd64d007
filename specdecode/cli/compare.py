"""`specdecode compare`: sweep k, batch size, drafter and temperature; one row per combination.

`--k 3 5 7` (main() rewrites it to `--k 3 --k 5 --k 7`, which works as well), and the same
for `--batch-size`, `--drafter` and `--temperature`. The models are loaded once; the
baseline is measured once per batch size (and temperature) and reused by every row; the
row with the best speedup is highlighted. `--plot PATH` draws speedup and acceptance
against the swept value (needs the `plot` extra: matplotlib).

Like bench, the report is written to `<results-dir>/<name>.json` (default name
`compare-<date>-<time>`), rewritten after every row so an interrupted sweep keeps its rows,
and to --output when given.

What it does not: write per-sample files (bench does), or pick settings for you.
"""

import importlib.util
import itertools
import sys
from typing import Annotated, Optional

import typer

from .options import DataOptions, SharedOptions, check_output_paths, data_options, fail, guarded, load_decoder
from .options import oom_advice, print_dry_run, rank_results_dir, resolve_settings, shared_options_except

__all__ = ["compare", "register"]

SWEPT = ("k", "batch_size", "drafter", "temperature")
SWEEP = "Sweep (each takes one or more values)"


@data_options
@shared_options_except(*SWEPT)
def compare(
    k: Annotated[Optional[list[str]], typer.Option("--k", help="draft tokens per round to sweep, e.g. --k 3 5 7", rich_help_panel=SWEEP, show_default=False)] = None,
    batch_size: Annotated[Optional[list[int]], typer.Option("--batch-size", help="batch sizes to sweep", rich_help_panel=SWEEP, show_default=False)] = None,
    drafter: Annotated[Optional[list[str]], typer.Option("--drafter", help="drafters to sweep: model ngram early-exit", rich_help_panel=SWEEP, show_default=False)] = None,
    temperature: Annotated[Optional[list[float]], typer.Option("--temperature", help="temperatures to sweep (0 = greedy)", rich_help_panel=SWEEP, show_default=False)] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="write a PNG of speedup and acceptance (needs matplotlib)", show_default=False)] = None,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="one untimed short generation per run first")] = True,
    results_dir: Annotated[str, typer.Option("--results-dir", help="where the report (.json) goes")] = "specdecode-results",
    results_name: Annotated[Optional[str], typer.Option("--name", help="report name: <results-dir>/NAME.json (default compare-<date>-<time>)", show_default=False)] = None,
    *,
    opts: SharedOptions,
    data: DataOptions,
) -> None:
    """Compare speculative decoding settings: one row per combination of the swept values."""

    def body() -> None:
        nonlocal plot
        given = {"k": k, "batch_size": batch_size, "drafter": drafter, "temperature": temperature}
        # each value is validated through Settings (errors name the flag: `--k: ...`), and the
        # validated value is what runs (`--k 3` -> 3, `--k auto` -> 'auto')
        checked: dict[str, list] = {}
        for name, values in given.items():
            checked[name] = [getattr(resolve_settings(opts, data, **{name: v}), name) for v in values or []]
        base = resolve_settings(opts, data, **{n: (v[0] if v else None) for n, v in checked.items()})
        axes = {n: list(dict.fromkeys(v)) if v else [getattr(base, n)] for n, v in checked.items()}
        swept = [n for n in SWEPT if len(axes[n]) > 1]
        combos = _combos(axes)
        # every combination must be valid on its own (e.g. early-exit needs --exit-layer)
        for combo in combos:
            resolve_settings(opts, data, **combo.to_dict())
        if opts.dry_run:
            print_dry_run(base, base.format == "json")
            sys.stderr.write(f"{len(combos)} combination(s): {', '.join(_label(c) for c in combos)}\n")
            return
        if plot and importlib.util.find_spec("matplotlib") is None:
            fail("--plot needs matplotlib: pip install 'specdecode[plot]' (or leave out --plot)", 1)
        from ..bench.runner import results_paths

        _, summary_path = results_paths(results_name, results_dir, prefix="compare")
        own_dir = rank_results_dir(base, results_dir)
        if own_dir != results_dir:  # a rank other than 0 (torchrun): same rounds, private files
            _, summary_path = results_paths(summary_path.stem, own_dir, prefix="compare")
            plot = None
        check_output_paths({"--output": base.output, "--plot": plot, "--name": summary_path},
                           {"--results-dir": results_dir})

        from ..bench.report import compare_report, plot_compare, write_report
        from ..bench.runner import run_sweep
        from ..data import load_prompts
        from .bench import Progress, emit
        from .options import note

        prompt_set = load_prompts(base.dataset, base.num_samples)
        note(prompt_set.note())

        # load the draft model when any row needs it; other drafters reuse the loaded target
        load_with = base.model_copy(update={"drafter": "model" if "model" in axes["drafter"] else axes["drafter"][0]})
        decoder = load_decoder(load_with)
        progress = Progress(len(combos), label="compare")

        def on_row(r) -> None:
            progress.update(len(r.rows), _row_stats(r))
            # the rows so far, rewritten atomically: a crash or Ctrl-C keeps them
            partial = compare_report(base, r, swept, len(prompt_set.prompts))
            write_report(partial, summary_path, "compare")
            if base.output:
                write_report(partial, base.output, "compare")

        try:
            sweep = run_sweep(
                decoder,
                prompt_set.prompts,
                combos,
                on_row=on_row,
                on_phase=progress.phase,
                warmup=warmup,
            )
        finally:
            progress.close()
        report = compare_report(base, sweep, swept, len(prompt_set.prompts))
        if sweep.rows or not sweep.interrupted:
            write_report(report, summary_path, "compare")
        if base.output:
            write_report(report, base.output, "compare")
        emit(report, base.format, "compare")
        if sweep.rows or not sweep.interrupted:
            note(f"report written to {summary_path}")
        if plot and report["rows"]:
            path = plot_compare(report, plot)
            note(f"plot written to {path}")
        if sweep.interrupted:
            sys.stderr.write(f"interrupted: {len(sweep.rows)} of {len(combos)} combinations measured\n")
            raise typer.Exit(130)
        if sweep.failure:
            failed = sweep.failed_combo
            kept = f", kept in {summary_path}" + (f" and {base.output}" if base.output else "")
            fail(
                f"{sweep.failure} ({_label(failed) if failed else 'before the first row'}) after {len(sweep.rows)} of "
                f"{len(combos)} combinations: {oom_advice(failed.batch_size if failed else base.batch_size)} "
                f"(the rows measured are in the report above{kept})",
                1,
            )

    guarded(opts.debug, body)


def _combos(axes: dict):
    from ..bench.runner import Combo

    out = []
    seen = set()
    for bs, temp, drafter, k in itertools.product(axes["batch_size"], axes["temperature"], axes["drafter"], axes["k"]):
        if drafter == "none":  # k does not matter without a drafter: one row per batch size/temperature
            key = (bs, temp, drafter)
        else:
            key = (bs, temp, drafter, k)
        if key in seen:
            continue
        seen.add(key)
        out.append(Combo(drafter=drafter, k=k, batch_size=bs, temperature=temp))
    return out


def _label(c) -> str:
    return f"{c.drafter}/k={c.k}/batch {c.batch_size}/T={c.temperature:g}"


def _row_stats(sweep) -> str:
    from .. import metrics

    combo, base, spec, _ = sweep.rows[-1]
    acc = metrics.acceptance_totals(spec.runs).acceptance_rate
    sp = metrics.speedup(base.time_s, spec.time_s, base.tokens, spec.tokens)
    return (
        f"{_label(combo)}: acceptance " + (f"{acc:.1%}" if acc is not None else "n/a")
        + (f" · speedup {sp:.2f}x" if sp is not None else "")
    )


def register(app: typer.Typer) -> None:
    app.command("compare", help="Sweep k, batch size, drafter and temperature; one row per combination.")(compare)
