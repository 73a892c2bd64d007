"""One pydantic Settings model shared by every command, and its layering.

Layers, lowest first: the model's defaults < a preset or `--config` YAML file < CLI flags.
YAML is read with `yaml.safe_load`; a malformed file is reported with its file and line,
an unknown key by name. The flat YAML format (draft_model, target_model, k, max_new_tokens,
max_length, num_samples, dataset.path/name, batch_size, device, quantized, summary_file_name)
loads unchanged.

This module imports no torch and loads no model: `--dry-run` and `--help` stay instant.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

__all__ = [
    "DatasetSettings",
    "Settings",
    "SettingsError",
    "list_presets",
    "load_settings",
    "preset_path",
    "read_yaml",
]

Drafter = Literal["model", "ngram", "early-exit", "none"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Attention = Literal["auto", "sdpa", "eager", "flash_attention_2"]
OutputFormat = Literal["table", "json", "csv"]

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_MEMORY_RE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)$", re.IGNORECASE)


def parse_max_memory(v: Any) -> dict[str, str] | None:
    """`0=20GiB,cpu=64GiB` (or a YAML mapping) -> {"0": "20GiB", "cpu": "64GiB"}: device names are a
    GPU index, cpu or disk; sizes are accelerate's (a number and a unit, e.g. 500MB, 2GiB)."""
    if v is None:
        return None
    if isinstance(v, str):
        if not v.strip():
            raise ValueError("must not be empty")
        pairs = []
        for part in v.split(","):
            if "=" not in part:
                raise ValueError(f"expected DEVICE=SIZE pairs separated by commas, e.g. 0=20GiB,cpu=64GiB (got {part.strip()!r})")
            key, size = part.split("=", 1)
            pairs.append((key, size))
    elif isinstance(v, dict):
        pairs = list(v.items())
    else:
        raise ValueError("expected DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=64GiB")
    out: dict[str, str] = {}
    for key, size in pairs:
        key = str(key).strip().lower().removeprefix("cuda:")
        size = str(size).strip().replace(" ", "")
        if not (key.isdigit() or key in ("cpu", "disk")):
            raise ValueError(f"device {key!r}: expected a GPU index (0, 1, ...), cpu or disk")
        if not _MEMORY_RE.match(size):
            raise ValueError(f"size {size!r} for device {key}: expected a number and a unit, e.g. 20GiB or 500MB")
        if key in out:
            raise ValueError(f"device {key} is given twice")
        out[key] = size
    return out


# The flat YAML format's names -> this model's names.
_ALIASES = {"target_model": "target", "draft_model": "draft", "num_draft_tokens": "k"}


class SettingsError(ValueError):
    """Invalid settings: the message is one line naming the culprit (option, key, file, line)."""


# `--prompt-field` syntax: NAME or NAME[INDEX] (data.py parses it with the same pattern)
PROMPT_FIELD_RE = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<index>-?\d+)\])?$")


def _not_blank(v: Any) -> Any:
    """An empty name or path is a mistake (an unset shell variable), not 'leave it unset'."""
    if isinstance(v, str) and not v.strip():
        raise ValueError("must not be empty")
    return v


class DatasetSettings(BaseModel):
    """Where bench and compare read prompts from."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="Hugging Face dataset id, or a local .jsonl/.json/.csv/.parquet/.txt file")
    name: str | None = Field(None, description="dataset configuration name (e.g. 'main' for openai/gsm8k)")
    split: str = "test"
    prompt_field: str | None = Field(None, description="field holding the prompt; detected when not given")

    @field_validator("path", "name", "split", "prompt_field", mode="before")
    @classmethod
    def _not_blank(cls, v: Any) -> Any:
        return _not_blank(v)

    @field_validator("prompt_field")
    @classmethod
    def _field_syntax(cls, v: str | None) -> str | None:
        if v is not None and not PROMPT_FIELD_RE.match(v.strip()):
            raise ValueError(f"cannot parse '{v}' (expected NAME or NAME[INDEX])")
        return v


class Settings(BaseModel):
    """Everything a command needs to know. Validated once, shared by generate/bench/compare/inspect."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # models
    target: str | None = Field(None, description="target model: hub id, local directory or .gguf file")
    draft: str | None = Field(None, description="draft model: hub id, local directory or .gguf file")
    gguf_file: str | None = Field(
        None, description="the .gguf file inside --target/--draft when they name a directory (or a hub id)"
    )
    drafter: Drafter = "model"
    exit_layer: int | None = Field(None, ge=1, description="layers of the target used by the early-exit drafter")
    k: int | Literal["auto"] = Field(5, description="draft tokens per round, or 'auto' (adaptive)")
    max_k: int = Field(8, ge=1, le=64, description="upper bound for --k auto")
    overlap: bool = Field(
        False, description="overlapped rounds: the draft model drafts the next round's k tokens while the target "
                           "verifies this round's, on a CUDA stream of its own (PEARL's post-verify); needs the "
                           "model drafter and a fixed k. The output is unchanged. Experimental: slower than plain rounds on an H200 "
                           "for every pair measured"
    )
    sibling: bool = Field(
        False, description="greedy rounds of a draft model also verify the draft's second choice at its last "
                           "proposed token, in one more verify row (a token tree of one sibling): where the target "
                           "rejects that token and takes the second choice, the round keeps it and the target's "
                           "token after it. The output is unchanged. Experimental: no faster than plain rounds on "
                           "an H100 for the pair measured"
    )
    overlap_sms: int | None = Field(
        None, ge=1, description="with --overlap on CUDA: SMs kept from the target's verify for the draft branch (the "
                                "verify runs on a CUDA green context of the others, rounded down to the driver's "
                                "granularity, 8 SMs on sm_90, so the draft keeps at least this many); unset: both "
                                "branches share every SM"
    )

    # lengths
    max_new_tokens: int = Field(128, ge=1)
    max_length: int = Field(1024, ge=1, description="prompts are truncated (from the left) to this many tokens")

    # sampling
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="0 = off")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="1.0 = off")
    seed: int | None = Field(None, ge=0, le=2**64 - 1, description="torch seeds are unsigned 64-bit")

    # execution
    batch_size: int = Field(1, ge=1)
    device: str = "auto"
    threads: int | Literal["auto"] = Field(
        "auto", description="CPU threads for torch; 'auto' = half the usable cores (at least 1), or "
                            "OMP_NUM_THREADS when it is set"
    )
    tp: int = Field(1, ge=1, le=1024, description="tensor-parallel degree of the target: the N of torchrun "
                                                  "--nproc-per-node N (1 = one process)")
    device_map: str | None = Field(None, description="load the target through accelerate's device map: auto | "
                                                     "balanced | balanced_low_0 | sequential (None = one device)")
    max_memory: dict[str, str] | None = Field(None, description="with device_map: memory per device, e.g. "
                                                                "'0=20GiB,cpu=64GiB' (cpu and disk offload allowed)")
    offload_folder: str | None = Field(None, description="with device_map: where layers offloaded to disk go")
    dtype: DType = "auto"
    quantized: bool = False
    quantize_draft: bool = Field(True, description="with quantized: the draft model in 4-bit too; False keeps it in "
                                                   "dtype (NF4 decode steps of a small model cost more than bf16 ones)")
    attention: Attention = "auto"
    chat: bool | None = Field(None, description="apply the tokenizer's chat template; None = when it has one")
    cuda_graphs: bool | None = Field(None, description="replay decode steps as CUDA graphs; None = on CUDA devices")
    fused: bool | None = Field(
        None, description="decode steps through specdecode's fused layers (Llama, Mistral, Qwen2/3, Gemma 3); None = where supported"
    )
    compile: bool | None = Field(
        None, description="compile decode steps with torch.compile before capturing them; None = on CUDA for fused layers"
    )
    kernels: bool | None = Field(
        None, description="Triton decode kernels for captured steps of fused models (hidden size <= 3072); "
                          "None = with --compile on CUDA"
    )
    draft_fp8_head: bool = Field(
        False, description="the draft model's vocabulary head as an e4m3 (fp8) copy in its kernel decode steps: "
                           "half its bytes, proposals chosen from slightly rounded logits; the output is unchanged. "
                           "Needs the Triton kernels and a GPU of compute capability 8.9+"
    )
    trust_remote_code: bool = False

    # data and output (bench / compare)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    num_samples: int | None = Field(None, ge=1)
    format: OutputFormat = "table"
    output: str | None = None
    summary_file_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_format_aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for old, new in _ALIASES.items():
                if old in data:
                    if new in data and data[new] != data[old]:
                        raise ValueError(f"both '{old}' and '{new}' are set")
                    data[new] = data.pop(old)
        return data

    @field_validator("target", "draft", "gguf_file", "output", "summary_file_name", "offload_folder", mode="before")
    @classmethod
    def _names_not_blank(cls, v: Any) -> Any:
        return _not_blank(v)

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        if isinstance(v, bool):
            raise ValueError("k must be a positive integer or 'auto'")
        if isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise ValueError("k must be a positive integer or 'auto'") from None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int):  # lists, mappings, 3.5, nan: one message naming k, not pydantic's union branches
            raise ValueError("k must be a positive integer or 'auto'")
        if isinstance(v, int) and v < 1:
            raise ValueError("k must be at least 1")
        if isinstance(v, int) and v > 64:
            raise ValueError("k must be at most 64")
        return v

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("threads must be a positive integer or 'auto'")
        if not 1 <= v <= 1024:
            raise ValueError("threads must be between 1 and 1024")
        return v

    @field_validator("device_map", mode="before")
    @classmethod
    def _device_map(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str) or v.strip().lower() not in DEVICE_MAPS:
            raise ValueError(f"device_map must be one of {', '.join(DEVICE_MAPS)}")
        return v.strip().lower()

    @field_validator("max_memory", mode="before")
    @classmethod
    def _max_memory(cls, v: Any) -> Any:
        return parse_max_memory(v)


    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")

    @model_validator(mode="after")
    def _consistency(self, info: ValidationInfo) -> Settings:
        if info.context and info.context.get("layer"):
            return self  # one file of several: another layer (or a flag) may supply the rest
        if self.drafter == "early-exit" and self.exit_layer is None:
            raise ValueError("the early-exit drafter needs an exit layer: --exit-layer N (exit_layer: N in a config)")
        if self.overlap and self.drafter in ("ngram", "early-exit"):  # (none: the baseline, nothing to overlap)
            raise ValueError(f"--overlap drafts with a draft model beside the target: it needs --drafter model "
                             f"(not {self.drafter})")
        if self.overlap_sms is not None and not self.overlap:
            raise ValueError("--overlap-sms divides the GPU between an overlapped round's branches: add --overlap")
        if self.overlap and self.k == "auto":
            raise ValueError("--overlap needs a fixed --k: each round drafts the next round's tokens before --k auto "
                             "could choose their number")
        if self.sibling and self.drafter == "ngram":  # (none: the baseline, nothing to branch)
            raise ValueError("--sibling verifies a draft model's second choice: it needs --drafter model or "
                             "early-exit (not ngram)")
        if self.sibling and not self.greedy:
            raise ValueError("--sibling verifies the draft's second choice greedily: it needs --temperature 0")
        if self.sibling and self.overlap:
            raise ValueError("--sibling and --overlap are two ways to run a round: choose one")
        if self.tp > 1 and self.device_map is not None:
            raise ValueError("--tp and --device-map are two ways to split the target: choose one")
        if self.tp > 1 and self.quantized:
            raise ValueError("--tp shards the target's weights; 4-bit (--quantized) weights cannot be sharded: choose one")
        if self.tp > 1 and self.device in ("mps",):
            raise ValueError("--tp runs on CUDA GPUs (NCCL) or the CPU (gloo), not on mps")
        if (self.max_memory is not None or self.offload_folder is not None) and self.device_map is None:
            raise ValueError("--max-memory and --offload-folder apply to --device-map: add --device-map auto")
        return self

    # ---- derived views -------------------------------------------------------------------
    @property
    def max_draft_tokens(self) -> int:
        """The most draft tokens one round can propose: k, or max_k under `k: auto`."""
        return self.max_k if self.k == "auto" else int(self.k)

    def cache_reserve(self, longest_prompt: int) -> int:
        """Cache slots a batch of prompts up to this long needs (decoding/engine.py's cache_len)."""
        from .decoding.engine import SpeculativeEngine  # noqa: PLC0415 - the engine imports torch

        return SpeculativeEngine.cache_len(longest_prompt, self.max_new_tokens, self.max_draft_tokens, self.overlapped)

    @property
    def overlapped(self) -> bool:
        """Whether the rounds these settings run are overlapped ones: --overlap with a draft model
        (the validation refuses it with the other drafters; --drafter none runs the target alone)."""
        return self.overlap and self.drafter == "model"

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_public_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what --dry-run prints and results files embed)."""
        return self.model_dump(mode="json")


# ---- YAML ----------------------------------------------------------------------------------


class _SafeUniqueLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no Python tags, no code) that refuses a key given twice in one mapping:
    PyYAML would keep the last value silently, and `k: 3 ... k: 7` is a typo, not a choice."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then overriding a key is YAML's own way to override
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: SafeLoader reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' given twice (first on line {first + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; errors name the file (and line, when YAML knows it)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise SettingsError(f"config file {p} is a directory, not a YAML file")
    if not p.is_file():
        raise SettingsError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SettingsError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.load(text, Loader=_SafeUniqueLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise SettingsError(f"{p}: malformed YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SettingsError(f"{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{p}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _yaml_key_line(path: Path, key: str) -> int | None:
    """Best-effort line number of a top-level or nested key in a YAML file (for error messages)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - only used to decorate an error message
        return None

    def walk(n: Any) -> int | None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                if getattr(k, "value", None) == key:
                    return k.start_mark.line + 1
                found = walk(v)
                if found:
                    return found
        return None

    return walk(node)


def preset_dir():  # -> Traversable
    """Installed: the package `specdecode.presets` (presets/ mapped into the wheel). Run from a
    source checkout without installing: the top-level presets/ folder beside the package."""
    try:
        return importlib.resources.files("specdecode.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> dict[str, str]:
    """Built-in preset names -> their first comment line (a one-line description)."""
    out: dict[str, str] = {}
    for entry in sorted(preset_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text(encoding="utf-8").splitlines()[0] if entry.read_text(encoding="utf-8") else ""
            out[entry.name[: -len(".yaml")]] = first.lstrip("# ").strip()
    return out


def preset_path(name_or_path: str) -> Path:
    """A built-in preset name or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():  # a directory named like a preset is not one
        if not p.is_file():
            raise SettingsError(f"preset file not found: {p}")
        return p
    entry = preset_dir() / f"{name_or_path}.yaml"
    if not entry.is_file():
        names = ", ".join(list_presets()) or "none"
        raise SettingsError(f"unknown preset '{name_or_path}' (built-in presets: {names})")
    with importlib.resources.as_file(entry) as real:
        return Path(real)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    for old, new in _ALIASES.items():
        if old in data and new not in data:
            data[new] = data.pop(old)
    if isinstance(data.get("dataset"), str):  # `dataset: openai/gsm8k` shorthand
        data["dataset"] = {"path": data["dataset"]}
    return data


def _describe(err: ValidationError, source: str | None, path: Path | None, flags: dict[str, str]) -> str:
    """One line naming the culprit of the first validation error."""
    first = err.errors()[0]
    # drop pydantic's validator and union-branch tags ("function-...", "int", "literal['auto']")
    loc = [str(x) for x in first["loc"]
           if not str(x).startswith("function-") and "[" not in str(x) and str(x) not in ("int", "str", "float", "bool")]
    key = ".".join(loc) if loc else "settings"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    msg = msg.removeprefix("Value error, ")
    if key in flags:
        got = repr(first.get("input"))
        return f"{flags[key]}: {msg} (got {got if len(got) <= 80 else got[:77] + '...'})"
    if path is not None:
        line = _yaml_key_line(path, loc[-1]) if loc else None
        where = f"{path}:{line}" if line else str(path)
        return f"{where}: {msg}" if key == "settings" else f"{where}: '{key}': {msg}"
    if key == "settings":
        return msg
    return f"'{key}': {msg}"


# Used when neither a preset, a --config file nor --target names a model.
DEFAULT_PRESET = "demo"


def load_settings(
    preset: str | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    flag_names: dict[str, str] | None = None,
) -> Settings:
    """Build Settings: defaults < preset < --config < overrides (CLI flags; None values are ignored).

    With no preset, no config and no target override, the `demo` preset (the small pair shipped
    in the package) is the first layer.

    `flag_names` maps a settings key to the CLI flag that set it, so errors name the flag.
    """
    if not preset and not config and not (overrides or {}).get("target"):
        preset = DEFAULT_PRESET  # no model named anywhere: the embedded demo pair, offline
    layers: list[tuple[dict[str, Any], Path | None]] = []
    for source, is_config in ((preset, False), (config, True)):
        if source:
            p = Path(source).expanduser() if is_config else preset_path(source)  # --config is always a file
            layers.append((_normalise(read_yaml(p)), p))
    data: dict[str, Any] = {}
    for layer, path in layers:
        try:
            Settings.model_validate(layer, context={"layer": True})
        except ValidationError as e:
            raise SettingsError(_describe(e, None, path, {})) from None
        data = _merge(data, layer)
    flags = flag_names or {}
    clean = {k: v for k, v in (overrides or {}).items() if v is not None}
    # dataset.* flags arrive flat ("dataset.path": ...)
    nested: dict[str, Any] = {}
    for key, value in clean.items():
        if "." in key:
            head, tail = key.split(".", 1)
            nested.setdefault(head, {})[tail] = value
        else:
            nested[key] = value
    data = _merge(data, nested)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        flat_flags = {k: v for k, v in flags.items()}
        raise SettingsError(_describe(e, None, None, flat_flags)) from None
