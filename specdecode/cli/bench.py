"""`specdecode bench`: speculative decoding against the target-only baseline, timed honestly.

Same prompts, same settings, same engine (the baseline is the drafter `none`), warm-up
first, device-synchronised timing (bench/runner.py; benchmarks/README.md explains the
method). Each finished batch's samples are appended to `<results-dir>/<name>.jsonl`;
the report goes to `<name>.json` there, to stdout in --format, and to --output (both
written atomically). Ctrl-C prints the partial summary, keeps the files and exits 130;
running out of memory does the same and exits 1, naming the batch size that failed.
`--resume` reruns a named run (summary_file_name or --name), measuring only the prompts
that its samples file does not hold yet; the report covers old and new samples.

What it does not: sweep settings (see `compare`) or describe the models (see `inspect`).
"""

import json
import sys
from typing import Annotated, Optional

import typer

from .options import DataOptions, SharedOptions, check_output_paths, data_options, fail, guarded, load_decoder
from .options import note, oom_advice, print_dry_run, rank_results_dir, resolve_settings, shared_options

__all__ = ["bench", "register"]

DEFAULT_RESULTS_DIR = "specdecode-results"


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
        from .tables import render_bench, render_compare

        (render_bench if kind == "bench" else render_compare)(report, console)


@data_options
@shared_options
def bench(
    results_dir: Annotated[str, typer.Option("--results-dir", help="where the samples (.jsonl) and report (.json) files go")] = DEFAULT_RESULTS_DIR,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="one untimed short generation of each run first")] = True,
    name: Annotated[Optional[str], typer.Option("--name", help="results name: <results-dir>/NAME.jsonl and NAME.json (the summary_file_name setting)", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run named by --name/summary_file_name: skip the samples its .jsonl already holds")] = False,
    *,
    opts: SharedOptions,
    data: DataOptions,
) -> None:
    """Benchmark speculative decoding against the target alone: speedup, acceptance, latency."""

    def body() -> None:
        from ..settings import SettingsError

        settings = resolve_settings(opts, data, summary_file_name=name)
        if resume and not settings.summary_file_name:
            raise SettingsError(
                "--resume needs the name of the run to continue: --name NAME (or summary_file_name in the config)"
            )
        if opts.dry_run:
            print_dry_run(settings, settings.format == "json")
            return
        from ..bench.report import bench_report, write_report
        from ..bench.runner import results_paths, run_benchmark
        from ..data import load_prompts

        samples_path, summary_path = results_paths(settings.summary_file_name, results_dir)
        own_dir = rank_results_dir(settings, results_dir, [str(samples_path)] if resume else [])
        if own_dir != results_dir:  # a rank other than 0 (torchrun): same rounds, private files
            samples_path, summary_path = results_paths(samples_path.stem, own_dir)
        named_by = "--name" if name else "summary_file_name"
        check_output_paths({"--output": settings.output, named_by: samples_path}, {"--results-dir": results_dir})

        prompt_set = load_prompts(settings.dataset, settings.num_samples)
        note(prompt_set.note())
        if resume:  # a samples file that cannot be resumed is refused before the models load
            from ..bench.runner import read_samples

            if not samples_path.is_file():
                note(f"--resume: no samples file {samples_path} yet: measuring every prompt")
            read_samples(samples_path, prompt_set.prompts, settings)
        if settings.drafter == "none":
            note("--drafter none: the speculative run is the baseline itself (speedup ~1)")

        decoder = load_decoder(settings)
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
                resume=resume,
            )
        finally:
            progress.close()
        if result.resumed:
            note(f"resumed {result.resumed} sample(s) from {samples_path}")
        if result.interrupted and result.completed == 0:
            # nothing measured: leave no empty samples file or empty report behind
            if samples_path.is_file() and samples_path.stat().st_size == 0:
                samples_path.unlink()
            sys.stderr.write(f"interrupted before the first of {len(result.prompts)} samples finished: nothing measured\n")
            raise typer.Exit(130)
        report = bench_report(result)
        write_report(report, summary_path, "bench")
        if settings.output:
            write_report(report, settings.output, "bench")
        emit(report, settings.format, "bench")
        if result.interrupted:
            again = "--resume" if name or settings.summary_file_name else f"--name {samples_path.stem} --resume"
            if results_dir != DEFAULT_RESULTS_DIR and not (name or settings.summary_file_name):
                again = f"--results-dir {results_dir} {again}"
            sys.stderr.write(
                f"interrupted: {result.completed} of {len(result.prompts)} samples measured, kept in {samples_path}; "
                f"to measure the rest, run the same command with {again}\n"
            )
            raise typer.Exit(130)
        if result.failure:
            fail(
                f"{result.failure} after {result.completed} of {len(result.prompts)} samples: "
                f"{oom_advice(result.failed_batch_size)} (the samples measured are kept in {samples_path}, "
                f"the partial summary in {summary_path})",
                1,
            )

    guarded(opts.debug, body)


def register(app: typer.Typer) -> None:
    app.command("bench", help="Benchmark speculative decoding against the target alone (speedup, acceptance, latency).")(bench)
