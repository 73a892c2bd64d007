"""Hypothesis strategies and an in-process harness for fuzzing the `specdecode` command line.

What it does:
  * `invoke(args)` runs `specdecode.cli.app.main(args)` in this process with stdout and
    stderr captured, and returns an `Outcome` (exit code, output, and the traceback of any
    exception that escaped `main`, which the contract forbids).
  * `violation(outcome, ...)` says how an outcome breaks the error contract of DESIGN.md
    (exit 0 or 2 for settings-only runs; exactly one `error:` line; never a traceback), or
    returns None.
  * strategies: `cli_args` (random option lists for generate/bench/compare/inspect, valid
    and invalid values for every shared and data option, ending with `--dry-run`),
    `yaml_documents` (mappings with valid keys and wrong types, unknown keys, nested junk,
    non-mappings, broken syntax, non-UTF-8 bytes), `settings_dicts` (for the model itself).
  * `normalise(line)`: an error line with paths, numbers and quoted values masked, to count
    distinct messages.

Used by tests/test_hardening.py (a few dozen examples per property, in CI) and by
benchmarks/fuzz_cli.py (thousands). What it does not: load models (dry runs load nothing).
"""

from __future__ import annotations

import io
import re
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import yaml
from hypothesis import strategies as st

__all__ = [
    "Outcome",
    "cli_args",
    "invoke",
    "normalise",
    "settings_dicts",
    "violation",
    "yaml_documents",
]


# ---- running the CLI ------------------------------------------------------------------------


@dataclass
class Outcome:
    args: list[str]
    code: int | None
    out: str
    err: str
    crash: str | None  # traceback of an exception that escaped main(), None when it exited properly

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def invoke(args: list[str]) -> Outcome:
    from specdecode.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    crash = None
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
            crash = "main() returned instead of exiting"
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else -1)
        except BaseException:  # noqa: BLE001 - recording it is the point
            crash = traceback.format_exc()
    return Outcome(list(args), code, out.getvalue(), err.getvalue(), crash)


def violation(o: Outcome, allowed: tuple[int, ...] = (0, 2), strict_stderr: bool = True) -> str | None:
    """How `o` breaks the error contract, or None. An exception that only the last-resort
    handler caught (a generic "Name: text (rerun with --debug ...)" line) counts as a break.

    strict_stderr: a failing run prints nothing on stderr but its one error line (true for dry
    runs; real runs may print notes and progress lines first).
    """
    if o.crash:
        return "exception escaped main(): " + o.crash.strip().splitlines()[-1]
    if "Traceback (most recent call last)" in o.err + o.out:
        return "traceback printed"
    if o.code not in allowed:
        return f"exit code {o.code} (allowed {allowed})"
    if o.code == 130:  # Ctrl-C: says so, no error line
        if "interrupted" not in o.err or o.error_lines:
            return "exit 130 without an 'interrupted' line (or with an error line)"
    elif o.code != 0:
        if len(o.error_lines) != 1:
            return f"{len(o.error_lines)} error lines on stderr"
        if "rerun with --debug for the traceback" in o.error_lines[0]:
            # one line, exit 1, but from the last-resort handler: an exception nobody anticipated
            return "unanticipated exception (generic one-line report)"
        if strict_stderr and len(o.err.strip().splitlines()) != 1:
            return f"{len(o.err.strip().splitlines())} lines on stderr"
    return None


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[+-]?\d+)?")
_GOT = re.compile(r"\(got .*\)$")


def normalise(line: str, tmp: str | None = None) -> str:
    """An error line with the run's values masked (paths, quoted values, numbers)."""
    if tmp:
        line = line.replace(tmp, "<dir>")
    line = _GOT.sub("(got <value>)", line)
    line = _QUOTED.sub("'<s>'", line)
    line = re.sub(r"(/[^\s:'\"]*)+", "<path>", line)
    return _NUMBER.sub("N", line)


# ---- option values --------------------------------------------------------------------------

# argv text: no NUL (impossible in a real argv), and nothing that starts with "--" (a value
# that is itself an option name only tests click, and "--" would turn the final --dry-run
# into a prompt)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12).filter(
    lambda s: not s.startswith("--")
)


def _ints(lo: int, hi: int):
    return st.integers(lo, hi).map(str)


FLOAT_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.0", "0x10", "1_000"]),
)

SHARED_VALUES = {
    "--preset": st.one_of(st.sampled_from(["gemma-4b", "qwen2.5-7b", "llama-3.1-8b", "no-such", "x.yaml", "./", ""]), TEXT),
    "--target": st.one_of(st.sampled_from(["org/model", "/no/such/dir", "", " "]), TEXT),
    "--draft": st.one_of(st.sampled_from(["org/draft", "./draft", ""]), TEXT),
    "--drafter": st.one_of(st.sampled_from(["model", "ngram", "early-exit", "none", "NGRAM", "medusa", ""]), TEXT),
    "--exit-layer": st.one_of(_ints(-2, 80), TEXT),
    "--k": st.one_of(st.sampled_from(["auto", "AUTO", " auto ", "0", "65", "3.0", "1e1", ""]), _ints(-3, 100), FLOAT_TEXT, TEXT),
    "--max-k": st.one_of(_ints(-2, 100), TEXT),
    "--max-new-tokens": st.one_of(_ints(-5, 5000), _ints(-(10**30), 10**30), TEXT),
    "--max-length": st.one_of(_ints(-5, 5000), _ints(-(10**30), 10**30), TEXT),
    "--temperature": st.one_of(st.floats(0, 3).map(str), FLOAT_TEXT, TEXT),
    "--top-k": st.one_of(_ints(-3, 10**25), TEXT),
    "--top-p": st.one_of(st.floats(0, 1).map(str), FLOAT_TEXT, TEXT),
    "--seed": st.one_of(_ints(-(2**70), 2**70), TEXT),
    "--batch-size": st.one_of(_ints(-2, 10**7), TEXT),
    "--device": st.one_of(st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:x", "mps", "tpu", "CUDA", ""]), TEXT),
    "--dtype": st.one_of(st.sampled_from(["auto", "float32", "bfloat16", "float16", "fp8", ""]), TEXT),
    "--attention": st.one_of(st.sampled_from(["auto", "sdpa", "eager", "flash_attention_2", "xformers", ""]), TEXT),
    "--threads": st.one_of(st.sampled_from(["auto", "AUTO", "1", "2", "0", "-1", "1025", "1.5", ""]), _ints(-3, 2000), TEXT),
    "--gguf-file": st.one_of(st.sampled_from(["model.gguf", "q4_k_m.gguf", "", " ", "../x.gguf"]), TEXT),
}
SHARED_SWITCHES = ["--quantized", "--no-quantized", "--chat", "--no-chat", "--trust-remote-code"]

DATA_VALUES = {
    "--dataset": st.one_of(st.sampled_from(["openai/gsm8k", "prompts.jsonl", "./missing.csv", "a/b/c", ""]), TEXT),
    "--dataset-name": st.one_of(st.sampled_from(["main", ""]), TEXT),
    "--split": st.one_of(st.sampled_from(["test", "train", "", "test[:10]"]), TEXT),
    "--prompt-field": st.one_of(st.sampled_from(["prompt", "turns[0]", "turns[-1]", "a[[1]", "[0]", "x[1.5]", "", "]"]), TEXT),
    "--num-samples": st.one_of(_ints(-2, 10**6), TEXT),
    "--format": st.one_of(st.sampled_from(["table", "json", "csv", "xml", "JSON", ""]), TEXT),
    "--output": st.one_of(st.sampled_from(["out.json", "out.csv", "", "/"]), TEXT),
}

SWEPT = ("--k", "--batch-size", "--drafter", "--temperature")
JUNK = st.sampled_from(["--bogus", "--k=3", "-k", "--max-new-tokens=", "extra", "--format=json", "--help-me"])


@st.composite
def cli_args(draw, commands=("generate", "bench", "compare", "inspect"), config: str | None = None) -> list[str]:
    """An argument list for one command, ending with --dry-run (nothing is loaded)."""
    command = draw(st.sampled_from(commands))
    pairs: list[list[str]] = []
    flags = dict(SHARED_VALUES)
    if command != "generate":
        flags.update(DATA_VALUES)
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=6, unique=True))
    for flag in chosen:
        if command == "compare" and flag in SWEPT:
            values = draw(st.lists(flags[flag], min_size=1, max_size=3))
            pairs.append([flag, *values])
        else:
            pairs.append([flag, draw(flags[flag])])
    for switch in draw(st.lists(st.sampled_from(SHARED_SWITCHES), max_size=2, unique=True)):
        pairs.append([switch])
    if config is not None and draw(st.booleans()):
        pairs.append(["--config", config])
    if draw(st.integers(0, 9)) == 0:
        pairs.append([draw(JUNK)])
    if command == "generate":
        if draw(st.booleans()):
            pairs.insert(0, [draw(TEXT.filter(lambda s: not s.startswith("-")))])  # a prompt
        if draw(st.booleans()):
            pairs.append(["--json"])
    order = draw(st.permutations(range(len(pairs))))
    args = [command]
    for i in order:
        args.extend(pairs[i])
    return args + ["--dry-run"]


# ---- settings documents ---------------------------------------------------------------------

SETTING_KEYS = (
    "target", "draft", "drafter", "exit_layer", "k", "max_k", "max_new_tokens", "max_length", "temperature",
    "top_k", "top_p", "seed", "batch_size", "device", "dtype", "quantized", "attention", "chat",
    "trust_remote_code", "dataset", "num_samples", "format", "output", "summary_file_name", "threads", "gguf_file",
)
ALIASES = ("target_model", "draft_model", "num_draft_tokens")

YAML_TEXT = st.text(max_size=12)  # YAML can carry any character (escaped)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), YAML_TEXT
)
ANY_VALUE = st.recursive(
    SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(YAML_TEXT, inner, max_size=3)),
    max_leaves=6,
)

GOOD_VALUES = {
    "target": st.sampled_from(["google/gemma-3-4b-it", "/models/target", "org/m"]),
    "draft": st.sampled_from(["google/gemma-3-270m-it", "./draft"]),
    "drafter": st.sampled_from(["model", "ngram", "early-exit", "none"]),
    "exit_layer": st.integers(1, 40),
    "k": st.one_of(st.integers(1, 64), st.just("auto")),
    "max_k": st.integers(1, 64),
    "max_new_tokens": st.integers(1, 4096),
    "max_length": st.integers(1, 8192),
    "temperature": st.floats(0, 2),
    "top_k": st.integers(0, 1000),
    "top_p": st.floats(0.01, 1.0),
    "seed": st.integers(0, 2**32),
    "batch_size": st.integers(1, 64),
    "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "mps"]),
    "dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
    "quantized": st.booleans(),
    "attention": st.sampled_from(["auto", "sdpa", "eager"]),
    "threads": st.one_of(st.integers(1, 64), st.just("auto")),
    "gguf_file": st.sampled_from(["model.gguf", "qwen2.5-0.5b-q4_k_m.gguf"]),
    "chat": st.one_of(st.none(), st.booleans()),
    "trust_remote_code": st.booleans(),
    "dataset": st.one_of(
        st.sampled_from(["openai/gsm8k", "prompts.jsonl"]),
        st.fixed_dictionaries({"path": st.sampled_from(["openai/gsm8k", "x.jsonl"])},
                              optional={"name": st.sampled_from(["main", "socratic"]),
                                        "split": st.sampled_from(["test", "train"]),
                                        "prompt_field": st.sampled_from(["question", "turns[0]"])}),
    ),
    "num_samples": st.integers(1, 1000),
    "format": st.sampled_from(["table", "json", "csv"]),
    "output": st.sampled_from(["report.json", "out/r.csv"]),
    "summary_file_name": st.sampled_from(["my_experiment", "run1.json"]),
}
GOOD_VALUES.update({"target_model": GOOD_VALUES["target"], "draft_model": GOOD_VALUES["draft"],
                    "num_draft_tokens": GOOD_VALUES["k"]})


@st.composite
def settings_dicts(draw, junk_keys: bool = True) -> dict:
    """A settings mapping: mostly real keys with good values, some wrong types, some unknown keys."""
    keys = draw(st.lists(st.sampled_from(SETTING_KEYS + ALIASES), max_size=8, unique=True))
    out: dict = {}
    for key in keys:
        out[key] = draw(GOOD_VALUES[key]) if draw(st.integers(0, 3)) else draw(ANY_VALUE)
    if junk_keys and draw(st.integers(0, 4)) == 0:
        out[draw(YAML_TEXT)] = draw(ANY_VALUE)
    return out


BROKEN_YAML = st.sampled_from([
    "k: [1, 2\n", "\tk: 1\n", "k: {a: 1\n", "- a\nb: 1\n", ": :\n", "k: 'unterminated\n",
    "a: &x [*x]\n", "k: !!python/object/apply:os.system ['true']\n", "k: !!binary 'not base64'\n",
    "%YAML 9.9\n---\nk: 1\n", "---\nk: 1\n---\nk: 2\n", "k: 3\nk: 4\n", "? [a, b]\n: 1\n",
    "k: *undefined\n", "dataset:\n  path: x\n path: y\n", "k: 1\n  max_k: 2\n", "@k: 1\n", "k: `1`\n",
    "[" * 200 + "]" * 200 + "\n", "{" * 1000 + "\n", "k: " + "[" * 1000 + "\n",
])


@st.composite
def yaml_documents(draw) -> bytes:
    """Bytes of a --config file: valid settings, wrong types, junk, non-mappings, broken YAML, non-UTF-8."""
    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "scalar", "text", "broken", "bytes", "mutated"]))
    if kind == "mapping":
        return yaml.safe_dump(draw(settings_dicts()), allow_unicode=True).encode("utf-8")
    if kind == "scalar":
        return yaml.safe_dump(draw(ANY_VALUE), allow_unicode=True).encode("utf-8")
    if kind == "text":
        return draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
    if kind == "broken":
        return (draw(BROKEN_YAML) + yaml.safe_dump(draw(settings_dicts(junk_keys=False)))).encode("utf-8")
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    good = yaml.safe_dump(draw(settings_dicts(junk_keys=False)), allow_unicode=True).encode("utf-8")
    at = draw(st.integers(0, len(good)))
    patch = draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\t", b":", b"\n  ", b"\xef\xbb\xbf", b""]))
    return good[:at] + patch + good[at + draw(st.integers(0, 3)):]
