"""Prompt sources for bench, compare and inspect --measure.

Three sources, all returning plain prompt strings (the decoder applies the chat template
and --max-length truncation when it tokenizes):

  * a Hugging Face dataset id (`--dataset openai/gsm8k --dataset-name main --split test`),
    through `datasets.load_dataset`;
  * a local .jsonl/.json/.csv/.parquet/.txt file (or a directory `datasets` can read),
    also through `datasets` (a .txt file holds one prompt per line);
  * a few built-in prompts, when no dataset is named.

The prompt field is detected (prompt, question, turns[0], text, instruction) or named
with `--prompt-field` (`turns[1]` picks another list element). Rows whose field is missing
or empty are skipped and counted. Errors are one line: a bad field name or a missing
local file is a `SettingsError` (exit 2), an uncached dataset while offline a `DataError`
(exit 1) that suggests a local file.

What it does not: tokenize, truncate or apply chat templates (api.py does), or download
anything itself (`datasets` does, when the hub can be reached).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import PROMPT_FIELD_RE, DatasetSettings, SettingsError

__all__ = [
    "BUILTIN_PROMPTS",
    "DETECTED_FIELDS",
    "DataError",
    "PromptSet",
    "extract_prompt",
    "load_prompts",
]

# Fields tried in this order when --prompt-field is not given.
DETECTED_FIELDS = ("prompt", "question", "turns", "text", "instruction")

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}

# Used when no dataset is named: a mix of the kinds of requests Spec-Bench covers.
BUILTIN_PROMPTS = (
    "Explain speculative decoding to a software engineer in three short paragraphs.",
    "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
    "Janet has 16 eggs. She eats 3 and bakes muffins with 4. She sells the rest for $2 each. "
    "How much does she make? Think step by step.",
    "Summarize the plot of Romeo and Juliet in five sentences.",
    "Translate into French: The weather is nice today, so we will walk to the market.",
    "List ten countries in Europe and their capital cities.",
    "What are the main differences between TCP and UDP?",
    "Write a short poem about the sea at night.",
)


class DataError(RuntimeError):
    """Prompts could not be loaded for a runtime reason (offline, not found); exit code 1."""


@dataclass(frozen=True)
class PromptSet:
    prompts: list[str]
    source: str  # dataset id, file path or "built-in"
    field: str | None  # the field the prompts came from (None for built-in)
    rows_read: int  # rows looked at
    skipped: int  # rows whose field was missing or empty

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "field": self.field,
            "prompts": len(self.prompts),
            "rows_read": self.rows_read,
            "skipped": self.skipped,
        }

    def note(self) -> str | None:
        """A one-line note about skipped rows, or None."""
        if not self.skipped:
            return None
        return f"skipped {self.skipped} of {self.rows_read} rows with no '{self.field}' prompt"


_FIELD_RE = PROMPT_FIELD_RE


def _parse_field(spec: str) -> tuple[str, int | None]:
    """'turns[1]' -> ('turns', 1); 'question' -> ('question', None)."""
    m = _FIELD_RE.match(spec.strip())
    if not m:
        raise SettingsError(f"--prompt-field: cannot parse '{spec}' (expected NAME or NAME[INDEX])")
    index = m.group("index")
    return m.group("name"), int(index) if index is not None else None


def extract_prompt(value: Any, index: int | None = None) -> str | None:
    """A prompt string from a field value, or None when there is none.

    Strings are used as they are; lists give their element `index` (default 0), and a chat
    message ({"role", "content"} or {"from", "value"}) gives its text.
    """
    if isinstance(value, (list, tuple)):
        i = 0 if index is None else index
        if not value or not -len(value) <= i < len(value):
            return None
        return extract_prompt(value[i])
    if isinstance(value, dict):
        for key in ("content", "value", "text"):
            if isinstance(value.get(key), str):
                return extract_prompt(value[key])
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    return None


def _is_local(path: str) -> bool:
    p = Path(path).expanduser()
    if p.exists():
        return True
    looks_like_path = (
        p.suffix.lower() in LOCAL_SUFFIXES
        or path.startswith((".", "/", "~"))
        or path.count("/") > 1
        or os.sep != "/" and os.sep in path
    )
    if looks_like_path:
        raise SettingsError(f"--dataset: no such file: {path}")
    return False


def _check_text_file(p: Path) -> None:
    """A local text dataset must be non-empty UTF-8. `datasets` reports either as "An error occurred
    while generating the dataset", or (JSON Lines) fails later, while the prompts are read."""
    import codecs

    NEWLINE = b"\n"
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset, content = 1, 0, False
    try:
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    at = max(0, min(e.start, len(chunk)))
                    where = f"line {line + chunk[:at].count(NEWLINE)}, byte {offset + at}"
                    raise SettingsError(f"--dataset: {p} is not UTF-8 text ({where}): save it as UTF-8") from None
                content = content or bool(text.strip())
                line += chunk.count(NEWLINE)
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise SettingsError(f"--dataset: {p} is not UTF-8 text (it ends inside a character): save it as UTF-8") from None
    except OSError as e:
        raise SettingsError(f"--dataset: cannot read {p}: {e.strerror or e}") from None
    if not content:
        raise SettingsError(f"--dataset: {p} is empty")


def _load_local(path: str):
    import datasets

    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() in (".jsonl", ".json", ".csv", ".txt"):
        _check_text_file(p)
    try:
        if p.is_dir():
            ds = datasets.load_dataset(str(p), split="train")
        else:
            builder = LOCAL_SUFFIXES.get(p.suffix.lower())
            if builder is None:
                kinds = ", ".join(LOCAL_SUFFIXES)
                raise SettingsError(f"--dataset: {p}: unsupported file type '{p.suffix}' (use one of {kinds})")
            ds = datasets.load_dataset(builder, data_files=str(p), split="train")
    except SettingsError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed file is one line naming it
        if "corresponds to no data" in str(e):  # e.g. a CSV with a header and no rows
            raise SettingsError(f"--dataset: {p} has no rows") from None
        raise SettingsError(f"--dataset: cannot read {p}: {_first_line(e)}") from None
    return ds


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    cause = e.__cause__ or e.__context__
    # `datasets` wraps the real problem: "An error occurred while generating the dataset"
    while cause is not None and (not text or "error occurred while generating" in text.lower()):
        text = f"{type(cause).__name__}: {str(cause).strip()}" if str(cause).strip() else text
        cause = cause.__cause__ or cause.__context__
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _offline_env() -> bool:
    return any(
        os.environ.get(v, "0").lower() not in ("0", "", "false", "no") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Can the hub's host be reached at all? Answers in seconds, where `datasets` would retry for minutes."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


class _forced_offline:
    """Switch `datasets` and `huggingface_hub` to offline mode for one call: a cached dataset
    still loads, an uncached one fails at once instead of after retries."""

    def __init__(self, active: bool) -> None:
        self.active = active

    def __enter__(self):
        if self.active:
            import datasets.config
            import huggingface_hub.constants as hc

            self._saved = (datasets.config.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE)
            datasets.config.HF_HUB_OFFLINE = hc.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        if self.active:
            import datasets.config
            import huggingface_hub.constants as hc

            datasets.config.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE = self._saved
        return False


def _load_hub(path: str, name: str | None, split: str):
    import datasets

    unreachable = not _offline_env() and not _hub_reachable()
    with _forced_offline(unreachable):
        try:
            return datasets.load_dataset(path, name, split=split)
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise _translate(path, name, split, e, unreachable) from None


def _translate(path: str, name: str | None, split: str, e: Exception, unreachable: bool = False) -> Exception:
    kind = type(e).__name__
    text = f"{kind}: {e}"
    low = text.lower()
    label = f"'{path}'" + (f" ({name})" if name else "")
    if "gated" in low or "401" in low or "403" in low:
        return DataError(
            f"dataset {label} is gated on the Hugging Face hub: accept its terms on its page, then run `hf auth login`"
        )
    if (
        unreachable
        or _offline_env()
        or isinstance(e, ConnectionError)
        or "couldn't reach" in low
        or "offline" in low
        or "connection" in low
        or "localentrynotfound" in low
    ):
        why = "no network?" if unreachable else "offline"
        return DataError(
            f"dataset {label} is not in the Hugging Face cache and the hub cannot be reached ({why}): "
            f"download it first (`hf download {path} --repo-type dataset`) or pass a local file, "
            "e.g. --dataset prompts.jsonl"
        )
    if "config name is missing" in low or ("builderconfig" in low and "not found" in low):
        return SettingsError(f"--dataset-name: {_first_line(e)}")
    if "unknown split" in low or ("split" in low and "not found" in low):
        return SettingsError(f"--split: no split '{split}' in dataset {label}: {_first_line(e)}")
    if "doesn't exist" in low or "not found" in low or "datasetnotfound" in low or "404" in low:
        return DataError(f"dataset {label} was not found: not a local file and not a dataset id on the hub")
    return DataError(f"could not load dataset {label}: {_first_line(e)}")


def _columns(ds) -> list[str]:
    return list(getattr(ds, "column_names", None) or [])


def _pick_field(columns: Sequence[str], wanted: str | None, source: str) -> tuple[str, int | None]:
    if wanted:
        name, index = _parse_field(wanted)
        if name not in columns:
            raise SettingsError(
                f"--prompt-field: no field '{name}' in {source} (available: {', '.join(columns) or 'none'})"
            )
        return name, index
    for name in DETECTED_FIELDS:
        if name in columns:
            return name, None
    raise SettingsError(
        f"--prompt-field: cannot detect the prompt field of {source} (tried {', '.join(DETECTED_FIELDS)}; "
        f"available: {', '.join(columns) or 'none'}): name it with --prompt-field"
    )


def prompts_from_rows(rows, columns: Sequence[str], prompt_field: str | None, source: str,
                      num_samples: int | None = None) -> PromptSet:
    """Pick the prompt field and collect up to num_samples non-empty prompts from rows (dicts)."""
    name, index = _pick_field(columns, prompt_field, source)
    label = name if index is None else f"{name}[{index}]"
    prompts: list[str] = []
    read = skipped = 0
    try:
        for row in rows:
            if num_samples is not None and len(prompts) >= num_samples:
                break
            read += 1
            text = extract_prompt(row.get(name), index)
            if text is None:
                skipped += 1
                continue
            prompts.append(text)
    except (SettingsError, DataError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a row `datasets` cannot decode: one line naming the source
        raise SettingsError(f"--dataset: cannot read row {read} of {source}: {_first_line(e)}") from None
    if not prompts:
        raise SettingsError(f"--dataset: {source} has no rows with a non-empty '{label}' prompt ({read} rows read)")
    return PromptSet(prompts, source, label, read, skipped)


def _builtin_prompts(path: str | None, num_samples: int | None) -> PromptSet:
    """The general built-in prompts (no dataset named) or a named set: `builtin:demo` holds the
    demo pair's Python-code prompts (specdecode/demo/prompts.py)."""
    if not path:
        builtin, source = BUILTIN_PROMPTS, "built-in"
    elif path == "builtin:demo":
        from .demo.prompts import PROMPTS as builtin

        source = path
    else:
        raise SettingsError(f"--dataset: unknown built-in prompt set '{path}' (available: builtin:demo)")
    prompts = list(builtin[:num_samples] if num_samples else builtin)
    if num_samples and num_samples > len(builtin):
        # repeat the built-ins so --num-samples is honoured
        prompts = [builtin[i % len(builtin)] for i in range(num_samples)]
    return PromptSet(prompts, source, None, len(prompts), 0)


def load_prompts(dataset: DatasetSettings, num_samples: int | None = None) -> PromptSet:
    """Prompts from the dataset settings (or the built-in prompts when no dataset is named)."""
    path = dataset.path
    if not path or path.startswith("builtin:"):
        return _builtin_prompts(path, num_samples)
    with _quiet_datasets():
        if _is_local(path):
            ds = _load_local(path)
            source = str(Path(path).expanduser())
        else:
            ds = _load_hub(path, dataset.name, dataset.split)
            source = path + (f" ({dataset.name}, {dataset.split})" if dataset.name else f" ({dataset.split})")
    return prompts_from_rows(iter(ds), _columns(ds), dataset.prompt_field, source, num_samples)


class _quiet_datasets:
    """Silence `datasets`' progress bars and info logs while loading; restore them after."""

    def __enter__(self):
        import datasets
        from datasets.utils import logging as dlog

        self._bars = not datasets.utils.are_progress_bars_disabled()
        self._level = dlog.get_verbosity()
        datasets.disable_progress_bars()
        dlog.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        import datasets
        from datasets.utils import logging as dlog

        if self._bars:
            datasets.enable_progress_bars()
        dlog.set_verbosity(self._level)
        return False
