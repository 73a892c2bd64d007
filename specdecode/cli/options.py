"""Options every command shares, turning them into Settings, and the error contract.

`shared_options` adds the shared flags (DESIGN.md, "Command-line contract") to a command's
signature and hands the command one `SharedOptions`; `data_options` adds the dataset and
output flags of bench and compare. `resolve_settings` layers defaults < preset/config <
flags. `guarded` maps failures to exit codes: 2 bad usage or invalid settings, 1 runtime
failure, 130 interrupted — one line each, a traceback only with --debug.

What it does not: import torch or transformers (commands do that inside their bodies).
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Optional

import typer

from ..settings import Settings, SettingsError, load_settings

__all__ = [
    "DataOptions",
    "SharedOptions",
    "data_options",
    "fail",
    "check_output_paths",
    "guarded",
    "oom_advice",
    "one_line",
    "load_decoder",
    "note",
    "print_load_notes",
    "print_dry_run",
    "rank_results_dir",
    "resolve_settings",
    "shared_options",
    "shared_options_except",
]

SHARED = "Models and decoding"
DATA = "Data and output"


@dataclass(frozen=True)
class SharedOptions:
    preset: str | None
    config: str | None
    target: str | None
    draft: str | None
    gguf_file: str | None
    drafter: str | None
    exit_layer: int | None
    k: str | None
    max_k: int | None
    overlap: bool | None
    overlap_sms: int | None
    sibling: bool | None
    max_new_tokens: int | None
    max_length: int | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    seed: int | None
    batch_size: int | None
    device: str | None
    threads: str | None
    tp: int | None
    device_map: str | None
    max_memory: str | None
    offload_folder: str | None
    dtype: str | None
    quantized: bool | None
    quantize_draft: bool | None
    attention: str | None
    chat: bool | None
    cuda_graphs: bool | None
    fused: bool | None
    compile: bool | None
    kernels: bool | None
    draft_fp8_head: bool | None
    trust_remote_code: bool
    debug: bool
    dry_run: bool


@dataclass(frozen=True)
class DataOptions:
    dataset: str | None
    dataset_name: str | None
    split: str | None
    prompt_field: str | None
    num_samples: int | None
    format: str | None
    output: str | None


def _opt(*decls: str, help: str, panel: str = SHARED, default: Any = None, metavar: str | None = None,
         key: str | None = None, **kw: Any):
    """One option. Switches show no type tag (metavar ""); a value option shows `metavar`; `key`
    names the setting whose default (and the demo preset's value, when it differs) the help shows."""
    if key is not None:
        help += _default_text(key)
    return typer.Option(default, *decls, help=help, rich_help_panel=panel, show_default=False,
                        metavar=metavar if metavar is not None else "", **kw)


def _default_text(key: str) -> str:
    """` (default 5; demo preset: auto)`: the layered defaults, without loading anything."""
    from ..settings import DEFAULT_PRESET, preset_path, read_yaml

    default = Settings.model_fields[key].default
    shown = f" (default {'-' if default is None else default}"
    try:
        demo = read_yaml(preset_path(DEFAULT_PRESET)).get(key)
    except Exception:  # noqa: BLE001 - help text must never fail
        demo = None
    if demo is not None and demo != default:
        shown += f"; {DEFAULT_PRESET} preset: {demo}"
    return shown + ")"


_SHARED_PARAMS: list[tuple[str, Any, Any]] = [
    ("preset", Optional[str], _opt("--preset", metavar="NAME|PATH", help="built-in preset name or YAML path (`specdecode presets` lists them; default demo when no model is named)")),
    ("config", Optional[str], _opt("--config", metavar="PATH", help="YAML settings file (the flat YAML format with target_model, draft_model, k, ... works too)")),
    ("target", Optional[str], _opt("--target", metavar="ID|PATH", help="target model: hub id, local directory or .gguf file")),
    ("draft", Optional[str], _opt("--draft", metavar="ID|PATH", help="draft model: hub id, local directory or .gguf file")),
    ("gguf_file", Optional[str], _opt("--gguf-file", metavar="NAME", help="the .gguf file inside the --target/--draft directory")),
    ("drafter", Optional[str], _opt("--drafter", metavar="NAME", key="drafter", help="model | ngram | early-exit | none")),
    ("exit_layer", Optional[int], _opt("--exit-layer", metavar="N", help="early-exit drafter: target layers to use")),
    ("k", Optional[str], _opt("--k", metavar="N|auto", key="k", help="draft tokens per round (num_draft_tokens), or 'auto'")),
    ("max_k", Optional[int], _opt("--max-k", metavar="N", key="max_k", help="upper bound for --k auto")),
    ("overlap", Optional[bool], _opt("--overlap/--no-overlap", help="experimental: draft the next round while the target verifies this one, on a second CUDA stream (--drafter model, fixed --k; output unchanged; default off: slower than plain rounds on an H200 for every pair measured)")),
    ("sibling", Optional[bool], _opt("--sibling/--no-sibling", help="greedy rounds of a draft model also verify its second choice at the last proposed token, in one more verify row (a token tree of one sibling; output unchanged; off by default: no gain measured on an H100)")),
    ("overlap_sms", Optional[int], _opt("--overlap-sms", help="with --overlap on CUDA: keep this many SMs from the target's verify for the draft (the verify runs on a CUDA green context of the rest); default: both share every SM")),
    ("max_new_tokens", Optional[int], _opt("--max-new-tokens", metavar="N", key="max_new_tokens", help="tokens to generate per prompt")),
    ("max_length", Optional[int], _opt("--max-length", metavar="N", key="max_length", help="truncate prompts to this many tokens (from the left)")),
    ("temperature", Optional[float], _opt("--temperature", metavar="F", key="temperature", help="0 = greedy")),
    ("top_k", Optional[int], _opt("--top-k", metavar="N", key="top_k", help="sample from the k most likely tokens (0 = off)")),
    ("top_p", Optional[float], _opt("--top-p", metavar="F", key="top_p", help="nucleus sampling mass in (0, 1]")),
    ("seed", Optional[int], _opt("--seed", metavar="N", help="random seed (same seed, same output)")),
    ("batch_size", Optional[int], _opt("--batch-size", metavar="N", key="batch_size", help="prompts decoded together")),
    ("device", Optional[str], _opt("--device", metavar="NAME", key="device", help="auto | cpu | cuda | cuda:N")),
    ("threads", Optional[str], _opt("--threads", metavar="N|auto", key="threads", help="CPU threads for torch (auto: half the usable cores, or OMP_NUM_THREADS when set)")),
    ("tp", Optional[int], _opt("--tp", metavar="N", key="tp", help="tensor-parallel degree of the target; run under `torchrun --nproc-per-node N`")),
    ("device_map", Optional[str], _opt("--device-map", metavar="NAME", help="split the target with accelerate's device map: auto | balanced | balanced_low_0 | sequential")),
    ("max_memory", Optional[str], _opt("--max-memory", metavar="DEV=SIZE,...", help="with --device-map: memory per device, e.g. 0=20GiB,cpu=64GiB")),
    ("offload_folder", Optional[str], _opt("--offload-folder", metavar="PATH", help="with --device-map: folder for layers offloaded to disk")),
    ("dtype", Optional[str], _opt("--dtype", metavar="NAME", key="dtype", help="auto | float32 | bfloat16 | float16")),
    ("quantized", Optional[bool], _opt("--quantized/--no-quantized", help="load 4-bit weights (bitsandbytes; default off)")),
    ("quantize_draft", Optional[bool], _opt("--quantize-draft/--no-quantize-draft", help="with --quantized: the draft in 4-bit too (default); --no-quantize-draft keeps it in --dtype")),
    ("attention", Optional[str], _opt("--attention", metavar="NAME", key="attention", help="auto | sdpa | eager")),
    ("chat", Optional[bool], _opt("--chat/--no-chat", help="apply the chat template (default: when the tokenizer has one)")),
    ("cuda_graphs", Optional[bool], _opt("--cuda-graphs/--no-cuda-graphs", help="replay decode steps as CUDA graphs (default on CUDA)")),
    ("fused", Optional[bool], _opt("--fused/--no-fused", help="fused decode layers for Llama/Mistral/Qwen/Gemma 3 (default: where supported)")),
    ("compile", Optional[bool], _opt("--compile/--no-compile", help="torch.compile decode steps before capture (default: on CUDA, for fused layers)")),
    ("kernels", Optional[bool], _opt("--kernels/--no-kernels", help="Triton decode kernels for captured steps (default: with --compile on CUDA, models up to hidden size 3072)")),
    ("draft_fp8_head", Optional[bool], _opt("--draft-fp8-head/--no-draft-fp8-head", help="the draft's vocabulary head in fp8 (e4m3) in its kernel steps; output unchanged (default off; needs a GPU of compute capability 8.9+)")),
    ("trust_remote_code", bool, _opt("--trust-remote-code", default=False, help="allow models that ship their own code")),
    ("debug", bool, _opt("--debug", default=False, help="show tracebacks")),
    ("dry_run", bool, _opt("--dry-run", default=False, help="print the resolved settings and load nothing")),
]

_DATA_PARAMS: list[tuple[str, Any, Any]] = [
    ("dataset", Optional[str], _opt("--dataset", metavar="ID|PATH", help="HF dataset id or local .jsonl/.json/.csv/.parquet/.txt", panel=DATA)),
    ("dataset_name", Optional[str], _opt("--dataset-name", metavar="NAME", help="dataset configuration (e.g. main)", panel=DATA)),
    ("split", Optional[str], _opt("--split", metavar="NAME", help="dataset split (default test)", panel=DATA)),
    ("prompt_field", Optional[str], _opt("--prompt-field", metavar="NAME", help="field holding the prompt (detected by default)", panel=DATA)),
    ("num_samples", Optional[int], _opt("--num-samples", metavar="N", help="prompts to run (default: all; demo preset: 40)", panel=DATA)),
    ("format", Optional[str], _opt("--format", metavar="NAME", help="table | json | csv (default table)", panel=DATA)),
    ("output", Optional[str], _opt("--output", metavar="PATH", help="also write the results to this file", panel=DATA)),
]

# settings key -> the flag that sets it (so errors name the flag the user typed)
FLAG_NAMES = {
    "target": "--target", "draft": "--draft", "drafter": "--drafter", "exit_layer": "--exit-layer", "k": "--k",
    "max_k": "--max-k", "overlap": "--overlap", "overlap_sms": "--overlap-sms", "sibling": "--sibling", "max_new_tokens": "--max-new-tokens", "max_length": "--max-length",
    "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "seed": "--seed",
    "batch_size": "--batch-size", "device": "--device", "threads": "--threads", "tp": "--tp", "device_map": "--device-map", "max_memory": "--max-memory",
    "offload_folder": "--offload-folder", "gguf_file": "--gguf-file", "dtype": "--dtype", "quantized": "--quantized",
    "quantize_draft": "--quantize-draft",
    "attention": "--attention", "chat": "--chat", "num_samples": "--num-samples", "format": "--format",
    "output": "--output", "summary_file_name": "--name", "dataset.path": "--dataset", "dataset.name": "--dataset-name", "dataset.split": "--split",
    "dataset.prompt_field": "--prompt-field",
}


def _inject(params: list[tuple[str, Any, Any]], cls: type, arg: str,
            fixed: dict[str, Any] | None = None) -> Callable[[Callable], Callable]:
    names = [n for n, _, _ in params]
    fixed = fixed or {}

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != arg]
        extra = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
            for n, ann, default in params
        ]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            kwargs[arg] = cls(**values, **fixed)
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
        # Typer reads annotations through typing.get_type_hints: give it real objects
        wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
        del wrapper.__wrapped__  # functools.wraps set it; inspect would unwrap to fn's signature
        return wrapper

    return decorate


def shared_options(fn: Callable) -> Callable:
    """Add the shared flags; the command receives them as `opts: SharedOptions`."""
    return _inject(_SHARED_PARAMS, SharedOptions, "opts")(fn)


def shared_options_except(*names: str) -> Callable[[Callable], Callable]:
    """Like `shared_options` without the named flags (the command declares its own, e.g. compare's
    sweeps `--k 3 5 7`); those fields of `opts` are None."""
    return _inject([p for p in _SHARED_PARAMS if p[0] not in names], SharedOptions, "opts", {n: None for n in names})


def data_options(fn: Callable) -> Callable:
    """Add dataset/output flags; the command receives them as `data: DataOptions`."""
    return _inject(_DATA_PARAMS, DataOptions, "data")(fn)


def resolve_settings(opts: SharedOptions, data: DataOptions | None = None, **extra: Any) -> Settings:
    """defaults < preset < --config < flags."""
    overrides: dict[str, Any] = {f.name: getattr(opts, f.name) for f in fields(opts)}
    for key in ("preset", "config", "debug", "dry_run"):
        overrides.pop(key)
    if not opts.trust_remote_code:
        overrides.pop("trust_remote_code")  # a flag left off must not undo a config's `true`
    if data is not None:
        overrides.update(
            {
                "dataset.path": data.dataset,
                "dataset.name": data.dataset_name,
                "dataset.split": data.split,
                "dataset.prompt_field": data.prompt_field,
                "num_samples": data.num_samples,
                "format": data.format,
                "output": data.output,
            }
        )
    overrides.update(extra)
    return load_settings(opts.preset, opts.config, overrides, FLAG_NAMES)


def print_dry_run(settings: Settings, as_json: bool) -> None:
    data = settings.to_public_dict()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="resolved settings (nothing loaded)", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")

    def add(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                add(f"{prefix}{k}.", v)
            else:
                table.add_row(f"{prefix}{k}", "-" if v is None else str(v))

    add("", data)
    Console().print(table)


def check_output_paths(files: dict[str, Any], dirs: dict[str, Any] | None = None) -> None:
    """Before anything is loaded: can the result files be written? (option -> path; None skipped)."""
    from ..io import check_writable_dir, check_writable_file

    for option, path in (dirs or {}).items():
        if path is not None and (problem := check_writable_dir(path, option)):
            raise SettingsError(problem)
    for option, path in files.items():
        if path is not None and (problem := check_writable_file(path, option)):
            raise SettingsError(problem)


def rank_results_dir(settings: Settings, results_dir: str, keep: list[str] | None = None) -> str:
    """Under torchrun, rank 0 writes the result files; every other rank runs the same rounds and
    writes into a private temporary folder instead (with a copy of the files in `keep` it must read,
    e.g. the samples file --resume continues), and no --output."""
    import os

    rank, size = os.environ.get("RANK", "0").strip(), os.environ.get("WORLD_SIZE", "1").strip()
    if not (size.isdigit() and int(size) > 1 and rank.isdigit() and int(rank) > 0):
        return results_dir
    import shutil
    import tempfile
    from pathlib import Path

    private = tempfile.mkdtemp(prefix=f"specdecode-rank{rank}-")
    for path in keep or []:
        if Path(path).is_file():
            shutil.copy(path, Path(private) / Path(path).name)
    settings.output = None
    return private


def oom_advice(batch_size: int | None) -> str:
    """What to try after running out of memory with batches of `batch_size`."""
    if batch_size and batch_size > 1:
        return f"try --batch-size {max(1, batch_size // 2)}"
    return "try a smaller --max-new-tokens or --max-length, --quantized, or --dtype bfloat16"


def print_load_notes(decoder) -> None:
    """What loading wants the user to know (pickle weights, custom code not run): one line each."""
    for message in getattr(decoder, "notes", []):
        sys.stderr.write(f"warning: {one_line(message)}\n")


def load_decoder(settings):
    """Load the models `settings` names under a status line, then say what loading wants the user
    to know: the load notes (print_load_notes) and the decoder's report warnings, a note each."""
    from .render import Status, describe_models

    with Status(f"loading {describe_models(settings)} …"):
        from ..api import SpeculativeDecoder

        decoder = SpeculativeDecoder.from_settings(settings)
    print_load_notes(decoder)
    if decoder.report is not None:
        for w in decoder.report.warnings:
            note(w)
    return decoder


def note(message: str | None) -> None:
    """A note on stderr (nothing for an empty message)."""
    if message:
        sys.stderr.write(f"note: {message}\n")


# everything str.splitlines() breaks on (terminals and log viewers break on some of them too)
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def one_line(message: str) -> str:
    """The contract is one line: a line break inside a path, a value or a YAML key must not make two."""
    return message.strip().translate(_LINE_BREAKS)


def fail(message: str, code: int) -> None:
    """Print one line on stderr and exit."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    raise typer.Exit(code)


def guarded(debug: bool, body: Callable[[], Any]) -> Any:
    """Run a command body under the exit-code contract."""
    try:
        return body()
    except typer.Exit:
        raise
    except SettingsError as e:
        if debug:
            raise
        fail(str(e), 2)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write("interrupted\n")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - the contract: one line, exit 1, traceback only with --debug
        if debug:
            raise
        fail(str(e) if _is_expected_runtime_error(e) else _runtime_message(e), 1)


def _is_expected_runtime_error(e: BaseException) -> bool:
    """A ModelLoadError or DataError: its message already says what to do. Looked up in
    sys.modules, not imported: a validation error must not pay for importing torch, and an
    error of a module never imported cannot have been raised."""
    for module, name in (("specdecode.models.loading", "ModelLoadError"), ("specdecode.data", "DataError")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return False


def _runtime_message(e: BaseException) -> str:
    name = type(e).__name__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "OutOfMemory" in name or "out of memory" in text.lower() or isinstance(e, MemoryError):
        return f"out of memory ({text[:200]}): try a smaller --batch-size, --max-new-tokens or --quantized"
    if isinstance(e, OSError) and getattr(e, "filename", None):
        return f"{e.strerror or name}: {e.filename}"
    return f"{name}: {text} (rerun with --debug for the traceback)"
