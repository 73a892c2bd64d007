"""`specdecode generate`: stream answers with accepted and target tokens highlighted.

What it does not: benchmark (no warm-up, no baseline); see `bench`.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..settings import SettingsError
from .options import SharedOptions, guarded, print_dry_run, print_load_notes, resolve_settings, shared_options

__all__ = ["generate", "read_prompts_file"]


def read_prompts_file(path: str) -> list[str]:
    """One prompt per line (.txt) or a `prompt` field per line (.jsonl); blank lines skipped."""
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"--prompts-file: no such file: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SettingsError(f"--prompts-file: {p} is not UTF-8 text (byte {e.start})") from None
    prompts: list[str] = []
    jsonl = p.suffix.lower() in (".jsonl", ".json")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SettingsError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise SettingsError(f"{p}:{n}: expected an object with a string 'prompt' field")
            if not obj["prompt"].strip():
                raise SettingsError(f"{p}:{n}: the prompt is empty")
            prompts.append(obj["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise SettingsError(f"--prompts-file: {p} holds no prompts")
    return prompts


@shared_options
def generate(
    prompt: Annotated[Optional[list[str]], typer.Argument(help="prompt(s); or use --prompts-file", show_default=False)] = None,
    prompts_file: Annotated[Optional[str], typer.Option("--prompts-file", help="a .txt (one per line) or .jsonl (`prompt` field) file", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON Lines, one object per prompt")] = False,
    show_rejected: Annotated[bool, typer.Option("--show-rejected", help="also show rejected draft tokens")] = False,
    output_format: Annotated[
        Optional[str],
        typer.Option("--format", help="text | json (json = --json; with --dry-run: the settings as JSON)", show_default=False),
    ] = None,
    *,
    opts: SharedOptions,
) -> None:
    """Generate text with speculative decoding, streaming each round as it completes."""

    def body() -> None:
        nonlocal json_out
        if output_format is not None:
            if output_format not in ("text", "table", "json"):
                raise SettingsError(f"--format: expected text or json (got {output_format!r})")
            json_out = json_out or output_format == "json"
        settings = resolve_settings(opts)
        if opts.dry_run:
            print_dry_run(settings, json_out)
            return
        prompts = list(prompt or [])
        for n, p in enumerate(prompts, 1):
            if not p.strip():
                where = "the prompt" if len(prompts) == 1 else f"prompt {n}"
                raise SettingsError(f"{where} is empty: give the text to continue (or use --prompts-file)")
        if prompts_file:
            prompts += read_prompts_file(prompts_file)
        if not prompts:
            raise SettingsError("no prompt: give one as an argument or use --prompts-file")
        from .render import Status, describe_models

        with Status(f"loading {describe_models(settings)} …") as status:
            from ..api import SpeculativeDecoder

            decoder = SpeculativeDecoder.from_settings(settings)
            status.update("generating: the first round also prepares the decode steps …")
            print_load_notes(decoder)
            if json_out:
                from ..io import json_line

                for result in decoder.generate(prompts):
                    status.stop()
                    sys.stdout.write(json_line(result.to_dict()))
                return
            _stream(decoder, prompts, show_rejected, status.stop)

    guarded(opts.debug, body)


def _stream(decoder, prompts: list[str], show_rejected: bool, first_output=lambda: None) -> None:
    """Print each prompt's answer. The first row of each batch streams live; the other rows of
    the batch are buffered and printed, in order, when the batch completes. `first_output` is
    called before anything is written (it ends the loading status line). Piped, each answer's
    stats line goes to stderr, so stdout holds the text alone."""
    from rich.console import Console

    from .render import TokenStreamer, legend, stats_line

    console = Console(highlight=False, soft_wrap=True)
    styled = console.is_terminal
    begun = []

    def begin() -> None:
        """At the first output: end the status line, then (in a terminal) the legend."""
        if not begun:
            begun.append(True)
            first_output()
            if styled:
                console.print(legend())

    streamers = [TokenStreamer(console, decoder.decode, show_rejected) for _ in prompts]
    buffers: list[list] = [[] for _ in prompts]
    started: set[int] = set()
    live = {"row": 0}

    def write(piece) -> None:
        begin()
        if styled:
            console.print(piece, end="")
        else:
            sys.stdout.write(piece.plain)
            sys.stdout.flush()

    def start(i: int) -> None:
        if i in started:
            return
        begin()
        started.add(i)
        if len(prompts) > 1 or styled:
            if styled:
                console.print(Text_prompt(prompts[i]))
            else:
                sys.stdout.write(f"> {prompts[i]}\n")
        for piece in buffers[i]:
            write(piece)
        buffers[i] = []

    def on_event(row: int, ev) -> None:
        piece = streamers[row].round(ev.accepted, ev.token, ev.rejected)
        if row == live["row"]:
            start(row)
            write(piece)
        else:
            buffers[row].append(piece)

    for first, results in decoder.iter_results(prompts, on_event=on_event):
        for j, result in enumerate(results):
            start(first + j)
            begin()
            if styled:
                console.print()
                console.print(stats_line(result.stats.to_dict()))
            else:
                sys.stdout.write("\n")
                sys.stdout.flush()
                label = f"prompt {first + j + 1}: " if len(prompts) > 1 else ""
                sys.stderr.write(f"{label}{stats_line(result.stats.to_dict()).plain.strip()}\n")
        live["row"] = first + len(results)


def Text_prompt(prompt: str):
    from rich.text import Text

    t = Text("› ", style="bold")
    t.append(prompt, style="dim")
    return t
