"""The `specdecode` command: generate, bench, compare, inspect, presets.

Commands register here; each lives in its own module and imports torch/transformers only
inside its body, so `specdecode --help` stays instant. `main()` runs the Typer app without
click's standalone error handling, so a usage error is one line on stderr with exit 2.

`compare` takes sweeps the way users type them, `--k 3 5 7`; click options take one value
each, so main() rewrites such runs to `--k 3 --k 5 --k 7` before parsing.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as cx

from .generate import generate
from .options import one_line

app = typer.Typer(
    name="specdecode",
    help="Lossless speculative decoding for Hugging Face causal LMs: generate, benchmark, compare, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("specdecode")
        except PackageNotFoundError:  # run from a source tree without installing
            from .. import __version__ as v
        sys.stdout.write(f"specdecode {v}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, metavar="",
                                 help="print the version and exit"),
) -> None:
    """Lossless speculative decoding for Hugging Face causal LMs: generate, benchmark, compare, inspect."""


app.command(help="Generate text, streaming accepted draft tokens and the target's own tokens in distinct styles.")(generate)


@app.command("presets")
def presets_command(
    format: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """List the built-in presets."""
    import json

    from ..settings import list_presets

    if format not in ("table", "json"):
        raise cx.BadParameter(f"expected table or json, got {format!r}", param_hint="'--format'")

    items = list_presets()
    if format == "json":
        sys.stdout.write(json.dumps(items, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="built-in presets (use --preset NAME)")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, desc in items.items():
        table.add_row(name, desc)
    Console().print(table)


def _register_optional() -> None:
    """bench / compare / inspect live in their own modules."""
    import importlib

    for module, name in (("bench", "bench"), ("compare", "compare"), ("inspect_cmd", "inspect")):
        try:
            mod = importlib.import_module(f"specdecode.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"specdecode.cli.{module}":
                continue
            raise
        mod.register(app)


_register_optional()

# options whose values compare sweeps over: `--k 3 5 7` -> `--k 3 --k 5 --k 7`
SWEEP_OPTIONS = ("--k", "--batch-size", "--drafter", "--temperature")


def expand_sweeps(argv: list[str]) -> list[str]:
    if not argv or argv[0] != "compare":
        return argv
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        out.append(arg)
        i += 1
        if arg in SWEEP_OPTIONS:
            first = True
            while i < len(argv) and not argv[i].startswith("--"):
                if not first:
                    out.append(arg)
                out.append(argv[i])
                first = False
                i += 1
    return out


class _StderrLines(logging.Handler):
    """`warning: <message>` on whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"warning: {one_line(record.getMessage())}\n")
        except Exception:  # noqa: BLE001 - logging must never end the run
            self.handleError(record)


def _log_to_stderr() -> None:
    """The library's own warnings (e.g. a torch.compile fallback) as one `warning:` line each."""
    log = logging.getLogger("specdecode")
    if not any(isinstance(h, _StderrLines) for h in log.handlers):
        log.addHandler(_StderrLines(logging.WARNING))
    if log.level == logging.NOTSET:
        log.setLevel(logging.WARNING)


_METAVARS = {"int": "N", "float": "F", "list[int]": "N...", "list[float]": "F...", "list[str]": "TEXT..."}


def _tidy_help(command) -> None:
    """No type tags in help: a switch shows none, a value option its kind (N, F, TEXT) unless it
    names its own metavar (ID|PATH, N|auto ...)."""
    ctx = typer.Context(command, info_name=command.name, help_option_names=["-h", "--help"])
    help_option = command.get_help_option(ctx) if hasattr(command, "get_help_option") else None
    for param in [*getattr(command, "params", []), *([help_option] if help_option is not None else [])]:
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None  # `[PROMPT]...` in the usage line says it
        elif param.metavar is None:
            if getattr(param, "is_flag", False) or getattr(param, "count", False):
                param.metavar = ""
            else:
                try:
                    kind = param.bare_type()
                except Exception:  # noqa: BLE001 - help text only
                    kind = ""
                param.metavar = _METAVARS.get(kind, "TEXT")
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub)


def _quiet_other_ranks() -> None:
    """Under torchrun, only rank 0 prints: the other ranks run the same rounds silently (their
    failures still end the run: torchrun reports a rank's non-zero exit)."""
    # read here, not through models.placement: that package imports torch, and --help must stay instant
    rank, size = os.environ.get("RANK", "0").strip(), os.environ.get("WORLD_SIZE", "1").strip()
    if size.isdigit() and int(size) > 1 and rank.isdigit() and int(rank) > 0:
        devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
        sys.stdout = devnull
        sys.stderr = devnull


def _leave_process_group() -> bool:
    """Under torchrun, tear the process group down before the interpreter exits (left to exit's
    destructors, gloo's worker threads can be destroyed while joinable). Whether there was one."""
    dist = sys.modules.get("torch.distributed")  # never imported for --help or a one-process run
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the run's own outcome decides the exit code
        pass
    return True


def _rank_exit(code: int) -> None:
    """How a torchrun rank ends once its group is gone: its output flushed, then out without
    running exit's C++ destructors. Even after destroy_process_group, a c10d thread that is still
    joinable at that point aborts a rank that has printed everything ("terminate called without
    an active exception", exit -6): 2 runs in 80 of the unseeded `--tp 2` sampling test on two
    loaded cores. Nothing the CLI writes is left for exit to finish: reports are written and
    closed by the commands, and the standard streams are flushed here."""
    for stream in (*logging.getLogger().handlers, sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not change the exit code
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    _quiet_other_ranks()
    args = expand_sweeps(list(sys.argv[1:] if argv is None else argv))
    if "--debug" not in args:
        # the CLI draws its own progress; keep library chatter (weight-loading bars, warnings) off
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    _log_to_stderr()
    command = typer.main.get_command(app)
    _tidy_help(command)
    try:
        code = command.main(args=args, prog_name="specdecode", standalone_mode=False)
    except cx.NoArgsIsHelpError:
        code = 0  # typer has printed the help already
    except cx.UsageError as e:
        msg = e.format_message()
        cmd = e.ctx.command_path if e.ctx else "specdecode"
        sys.stderr.write(f"error: {one_line(msg)} (see `{cmd} --help`)\n")
        code = 2
    except typer.Abort:  # (typer's own class: typer._click.exceptions has no Abort)
        sys.stderr.write("interrupted\n")
        code = 130
    except typer.Exit as e:
        code = e.exit_code
    except cx.ClickException as e:
        sys.stderr.write(f"error: {one_line(e.format_message())}\n")
        code = e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except Exception as e:  # noqa: BLE001 - the last net: whatever escaped a command is still one line
        if "--debug" in args:
            raise
        from .options import _runtime_message

        sys.stderr.write(f"error: {one_line(_runtime_message(e))}\n")
        code = 1
    code = code if isinstance(code, int) else 0
    if _leave_process_group():
        _rank_exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
