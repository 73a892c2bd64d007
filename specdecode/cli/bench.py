"""`specdecode bench`: speculative decoding against the target-only baseline, timed honestly.

Same prompts, same settings, same engine (the baseline is the drafter `none`), warm-up
first, device-synchronised timing (bench/runner.py; benchmarks/README.md explains the
method). Each finished batch's samples are appended to `<results-dir>/<name>.jsonl`;
the report goes to `<name>.json` there, to stdout in --format, and to --output.
Ctrl-C prints the partial summary, keeps the files and exits 130.

What it does not: sweep settings (see `compare`) or describe the models (see `inspect`).
"""

import json
import sys
from typing import Annotated

import typer

from .options import DataOptions, SharedOptions, data_options, guarded, print_dry_run, resolve_settings, shared_options

__all__ = ["bench", "register"]

DEFAULT_RESULTS_DIR = "specdecode-results"


def note(message: str | None) -> None:
    if message:
        sys.stderr.write(f"note: {message}\n")


class Progress:
    """A rich progress bar over samples with live acceptance and speedup when stderr is a
    terminal; otherwise one plain line per batch on stderr."""

    def __init__(self, total: int, label: str = "bench") -> None:
        from rich.console import Console

        self.total = total
        self.label = label
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self.bar = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self.bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.bar.add_task(label, total=total, stats="")
            self.bar.start()

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{self.label}: {name}")
        else:
            sys.stderr.write(f"{self.label}: {name}\n")

    def update(self, done: int, stats: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, stats=stats)
        else:
            sys.stderr.write(f"{self.label}: [{done}/{self.total}] {stats}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def live_stats(result) -> str:
    from .. import metrics

    acc = metrics.acceptance_totals(result.speculative.runs).acceptance_rate
    sp = metrics.speedup(result.baseline.time_s, result.speculative.time_s, result.baseline.tokens,
                         result.speculative.tokens)
    parts = ["acceptance " + (f"{acc:.1%}" if acc is not None else "n/a")]
    if sp is not None:
        parts.append(f"speedup {sp:.2f}x")
    return " · ".join(parts)


def emit(report: dict, fmt: str, kind: str) -> None:
    """Print the report on stdout in the chosen format."""
    from ..bench import report as rep

    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        sys.stdout.write(rep.bench_csv(report) if kind == "bench" else rep.compare_csv(report))
    else:
        from rich.console import Console

        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=max(console.width, 100))  # piped: do not truncate
        (rep.render_bench if kind == "bench" else rep.render_compare)(report, console)


@data_options
@shared_options
def bench(
    results_dir: Annotated[str, typer.Option("--results-dir", help="where the samples (.jsonl) and report (.json) files go")] = DEFAULT_RESULTS_DIR,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="one untimed short generation of each run first")] = True,
    *,
    opts: SharedOptions,
    data: DataOptions,
) -> None:
    """Benchmark speculative decoding against the target alone: speedup, acceptance, latency."""

    def body() -> None:
        settings = resolve_settings(opts, data)
        if opts.dry_run:
            print_dry_run(settings, settings.format == "json")
            return
        from ..bench.report import bench_report, write_report
        from ..bench.runner import results_paths, run_benchmark
        from ..data import load_prompts

        prompt_set = load_prompts(settings.dataset, settings.num_samples)
        note(prompt_set.note())
        if settings.drafter == "none":
            note("--drafter none: the speculative run is the baseline itself (speedup ~1)")

        from ..api import SpeculativeDecoder

        decoder = SpeculativeDecoder.from_settings(settings)
        if decoder.report is not None:
            for w in decoder.report.warnings:
                note(w)
        samples_path, summary_path = results_paths(settings.summary_file_name, results_dir)
        progress = Progress(len(prompt_set.prompts))
        try:
            result = run_benchmark(
                decoder,
                prompt_set.prompts,
                samples_path=samples_path,
                on_batch=lambda r: progress.update(r.completed, live_stats(r)),
                on_phase=progress.phase,
                warmup=warmup,
                data=prompt_set.to_dict(),
            )
        finally:
            progress.close()
        report = bench_report(result)
        write_report(report, summary_path, "bench")
        if settings.output:
            write_report(report, settings.output, "bench")
        emit(report, settings.format, "bench")
        if result.interrupted:
            sys.stderr.write(
                f"interrupted: {result.completed} of {len(result.prompts)} samples measured, kept in {samples_path}\n"
            )
            raise typer.Exit(130)

    guarded(opts.debug, body)


def register(app: typer.Typer) -> None:
    app.command("bench", help="Benchmark speculative decoding against the target alone (speedup, acceptance, latency).")(bench)
