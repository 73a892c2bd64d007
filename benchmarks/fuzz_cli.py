"""Fuzz the `specdecode` command line in-process: thousands of generated inputs, one contract.

    python benchmarks/fuzz_cli.py [--options 1200] [--yaml 600] [--real 700] [--seed 0]

Drives `specdecode.cli.app.main` with hypothesis-generated inputs (tests/cli_fuzz.py has the
strategies, shared with tests/test_hardening.py) in three phases:

  options   random option lists for generate/bench/compare/inspect, valid and invalid values
            for every shared and data option, sweeps, junk tokens; ends with --dry-run
  yaml      random --config documents (valid keys with wrong types, unknown keys, nested junk,
            non-mappings, broken syntax, non-UTF-8 bytes), --dry-run
  real      real runs on tiny local models built like the test fixtures (a Llama pair, a draft
            with another tokenizer, a BERT, a BLOOM (ALiBi), custom code, pickle-only weights,
            missing paths; GGUF files written with the gguf package: an F32 and a Q8_0 qwen2
            pair, a directory of them for --gguf-file, and bogus .gguf files: random bytes, a
            bare header, a missing one), random prompts, prompt files and datasets (random
            bytes, rows with missing or mistyped fields), sampling settings, devices, dtypes,
            batch sizes, k, outputs

The contract checked (DESIGN.md, "Command-line contract"): dry runs exit 0 or 2; real runs
0, 1 or 2; a failing run prints exactly one `error:` line, dry runs nothing else on stderr;
never a traceback, never an exception out of main(), never a hang (60 s alarm per run);
successful --format json / --json output parses. An exception that only the last-resort
handler caught ("... (rerun with --debug for the traceback)") counts as a crash too, and so
does a custom model's code running without --trust-remote-code. Recorded: inputs tried per phase, the
exit-code histogram, the distinct error messages (paths, numbers and quoted values masked)
with counts, and every crash (input, what broke). Results:
benchmarks/results/<date>-fuzz.{json,md}. Offline: HF_HUB_OFFLINE is set; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # fixtures and the shared strategies
sys.path.insert(0, str(REPO))

WORK = Path(tempfile.mkdtemp(prefix="specdecode-fuzz-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = str(WORK / "datasets-cache")  # random datasets stay out of ~/.cache
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cli_fuzz import TEXT, cli_args, invoke, normalise, violation, yaml_documents  # noqa: E402
from fixtures import WORDS, build_model, build_tokenizer  # noqa: E402
from gguf_fixture import write_gguf  # noqa: E402

RUN_TIMEOUT_S = 60


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so no `except Exception` in the product swallows it."""


def _alarm(signum, frame):
    raise Hang(f"no exit after {RUN_TIMEOUT_S} s")


# ---- recording ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.tried = collections.Counter()
        self.codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.messages = collections.Counter()
        self.examples: dict[str, list] = {}
        self.crashes: list[dict] = []
        self.seconds = collections.Counter()

    def record(self, phase: str, args: list[str], allowed: tuple[int, ...], strict: bool, extra: str | None = None,
               check_json: bool = False) -> None:
        signal.alarm(RUN_TIMEOUT_S)
        t0 = time.perf_counter()
        try:
            o = invoke(args)
        finally:
            signal.alarm(0)
        self.seconds[phase] += time.perf_counter() - t0
        self.tried[phase] += 1
        self.codes[phase][str(o.code)] += 1
        problem = violation(o, allowed, strict)
        if problem is None and o.code == 0 and check_json:
            try:
                json.loads(o.out)  # one document (--format json, a dry run's settings)
            except json.JSONDecodeError:
                try:  # generate --json: JSON Lines
                    for line in o.out.strip().splitlines():
                        json.loads(line)
                except json.JSONDecodeError as e:
                    problem = f"exit 0 but the JSON output does not parse ({e.msg})"
        if o.error_lines:
            key = normalise(o.error_lines[0], str(WORK))
            self.messages[key] += 1
            self.examples.setdefault(key, [phase, o.error_lines[0][:300]])
        if problem:
            self.crashes.append({"phase": phase, "problem": problem, "args": [a[:200] for a in args],
                                 "input": (extra or "")[:500], "stderr_tail": o.err[-1500:],
                                 "traceback": (o.crash or "")[-3000:]})
            print(f"[{phase}] {problem}: {args[:8]}", file=sys.__stderr__)


def fuzz(strategy, n: int, seed: int, body) -> None:
    """Run `body` on `n` generated examples: generation only (no shrinking, no database)."""

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(x):
        body(x)

    from hypothesis import seed as hseed

    hseed(seed)(run)()


# ---- real models ----------------------------------------------------------------------------


def build_models(root: Path) -> dict[str, Path]:
    """Tiny local checkpoints, as in tests/conftest.py, plus the awkward ones."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForMaskedLM, BloomConfig, BloomForCausalLM

    import shutil

    tok, qtok = root / "tok", root / "qtok"
    build_tokenizer(tok)
    build_tokenizer(qtok, kind="byte_bpe")
    chat = root / "chat_tok"
    build_tokenizer(chat, with_chat_template=True)
    m: dict[str, Path] = {}
    m["target"] = build_model("llama", root / "target", vocab_size=112, num_layers=4, seed=0, tokenizer_dir=tok)
    m["draft"] = build_model("llama", root / "draft", vocab_size=112, num_layers=1, seed=1, from_model=m["target"],
                             noise=0.03, tokenizer_dir=tok)
    m["chat"] = build_model("llama", root / "chat", vocab_size=112, num_layers=2, seed=3, tokenizer_dir=chat)
    m["qwen_draft"] = build_model("qwen2", root / "qwen", vocab_size=112, num_layers=1, seed=2, tokenizer_dir=qtok)
    bert = root / "bert"
    BertForMaskedLM(BertConfig(vocab_size=112, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(bert)
    build_tokenizer(bert)
    m["bert"] = bert
    bloom = root / "bloom"  # ALiBi from a 2-D padding mask: refused from its config
    BloomForCausalLM(BloomConfig(vocab_size=112, hidden_size=16, n_layer=1, n_head=2)).save_pretrained(bloom)
    build_tokenizer(bloom)
    m["bloom"] = bloom
    custom = root / "custom"
    shutil.copytree(m["draft"], custom)
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="fuzz_custom", auto_map={"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M"})
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "evil.py").write_text(f"open({str(root / 'CODE-RAN')!r}, 'w').write('x')\n")
    m["custom"] = custom
    pickle = root / "pickle"
    shutil.copytree(m["draft"], pickle)
    torch.save(load_file(pickle / "model.safetensors"), pickle / "pytorch_model.bin")
    (pickle / "model.safetensors").unlink()
    m["pickle"] = pickle
    m["missing"] = root / "no-such-model"
    m["file"] = root / "target" / "config.json"
    # GGUF: a qwen2 pair over one byte-level BPE tokenizer, as files and as a directory
    gg = root / "gguf"
    gg.mkdir()
    qt = build_model("qwen2", root / "qwen_t", vocab_size=112, num_layers=2, seed=4, tokenizer_dir=qtok)
    qd = build_model("qwen2", root / "qwen_d", vocab_size=112, num_layers=1, seed=5, from_model=qt, noise=0.05,
                     tokenizer_dir=qtok)
    m["gguf"] = write_gguf(qt, gg / "target-f32.gguf")
    m["gguf_q8"] = write_gguf(qt, gg / "target-q8_0.gguf", quantize="Q8_0")
    m["gguf_draft"] = write_gguf(qd, gg / "draft-f32.gguf")
    m["gguf_dir"] = gg
    (root / "bogus.gguf").write_bytes(os.urandom(300))
    m["gguf_bogus"] = root / "bogus.gguf"
    (root / "header.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    m["gguf_header"] = root / "header.gguf"
    m["gguf_missing"] = root / "missing.gguf"
    return m


PROMPT = st.one_of(
    st.lists(st.sampled_from(WORDS + ["1", "2", ",", "."]), min_size=1, max_size=12).map(" ".join),
    st.lists(st.sampled_from(WORDS + ["1", "2", ",", "."]), min_size=1, max_size=12).map(" ".join),
    st.sampled_from(["", " ", "\n", "hello", "the cat " * 300, "日本語", "🙂" * 5, "<eos>", "<bos> <pad>"]),
    TEXT,
)
GOOD_ROWS = st.lists(st.fixed_dictionaries({"prompt": PROMPT}), min_size=1, max_size=4).map(
    lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())
FILE_BYTES = st.one_of(
    GOOD_ROWS,
    GOOD_ROWS,
    st.lists(PROMPT, min_size=0, max_size=4).map(lambda ps: "\n".join(ps).encode("utf-8", "surrogatepass")),
    st.lists(st.dictionaries(st.sampled_from(["prompt", "question", "text", "turns", "other"]),
                             st.one_of(PROMPT, st.integers(), st.none(), st.lists(PROMPT, max_size=2)), max_size=3),
             max_size=4).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()),
    st.binary(max_size=80),
)


def pick(rnd, valid: list, invalid: list):
    """A valid value most of the time (so most runs get as far as generating), an invalid one 1 in 15.
    The choices come from a PRNG seeded by hypothesis: its own integer draws favour boundary values."""
    if invalid and rnd.random() < 1 / 15:
        return rnd.choice(invalid)
    return rnd.choice(valid)


@st.composite
def real_args(draw, models: dict[str, Path], n: list[int]) -> tuple[list[str], str]:
    """A real (non dry-run) command on the tiny models; returns (args, description of files written)."""
    import random

    # hypothesis draws the same things every time (a seed, prompts, file bytes); every other choice
    # comes from a PRNG seeded by the seed and the example number (hypothesis draws the same
    # small integers often, and a draw that depended on the PRNG would make generation flaky)
    seed = draw(st.integers(0, 2**32 - 1))
    prompts = draw(st.lists(PROMPT.filter(lambda p: not p.startswith("-")), max_size=3))
    data = draw(FILE_BYTES)
    n[0] += 1
    rnd = random.Random(f"{seed}-{n[0]}")
    run_dir = WORK / f"run{n[0]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    command = rnd.choice(["generate", "generate", "bench", "compare", "inspect"])
    target = pick(rnd, ["target", "target", "target", "chat", "gguf", "gguf_q8", "gguf_dir"],
                  ["bert", "bloom", "custom", "pickle", "missing", "file", "gguf_bogus", "gguf_header", "gguf_missing"])
    gguf_pair = target.startswith("gguf")
    draft = pick(rnd, ["gguf_draft", "gguf_draft", "gguf"] if gguf_pair else ["draft", "draft", "target"],
                 ["qwen_draft", "bert", "bloom", "missing", "pickle", "gguf_bogus", "gguf_draft" if not gguf_pair else "draft"])
    args = [command, "--target", str(models[target])]
    if target == "gguf_dir" or rnd.random() < 0.05:
        args += ["--gguf-file", pick(rnd, ["target-f32.gguf", "target-q8_0.gguf"], ["nope.gguf", "draft-f32.gguf/"])]
    if rnd.random() < 0.3:
        args += ["--threads", pick(rnd, ["1", "auto"], ["0", "x", "-2"])]
    drafter = pick(rnd, ["model", "model", "model", "ngram", "early-exit", "none", ""], ["medusa"])
    if drafter:
        args += ["--drafter", drafter]
    if drafter in ("", "model") or rnd.random() < 0.25:
        args += ["--draft", str(models[draft])]
    if drafter == "early-exit" or rnd.random() < 0.15:
        args += ["--exit-layer", pick(rnd, ["1", "2", "3"], ["0", "4", "6"])]
    opt = {
        "--device": (["cpu"], ["auto", "cuda", "cuda:1", "mps", "tpu"]),
        "--dtype": (["float32", "float32", "bfloat16", "float16", "auto"], ["fp8"]),
        "--temperature": (["0", "0.7", "1", "2.5", "1e-6"], ["-1", "nan"]),
        "--top-k": (["0", "1", "5", "111", "112", "1000000"], ["-1"]),
        "--top-p": (["1", "0.9", "0.1", "1e-9"], ["0", "1.5"]),
        "--seed": (["0", "1", "42", str(2**63)], ["-3", str(2**64)]),
        "--max-length": (["1", "2", "8", "40", "1024"], ["0"]),
        "--attention": (["auto", "sdpa", "eager"], ["flash_attention_2", "xformers"]),
        "--max-k": (["1", "3", "8", "64"], ["0", "65"]),
    }
    for flag in rnd.sample(sorted(opt), rnd.randint(0, 4)):
        args += [flag, pick(rnd, *opt[flag])]
    if "--device" not in args:
        args += ["--device", "cpu"]
    if "--dtype" not in args:
        args += ["--dtype", "float32"]
    k = ["1", "2", "3", "5", "8", "20", "auto"], ["0", "x", "65"]
    args += ["--k", *[pick(rnd, *k) for _ in range(rnd.randint(1, 3 if command == "compare" else 1))]]
    args += ["--max-new-tokens", pick(rnd, ["1", "2", "4", "6", "8", "12"], ["0", "600", "-1", "1e3"])]
    bs = ["1", "2", "3", "5"], ["0"]
    args += ["--batch-size", *[pick(rnd, *bs) for _ in range(rnd.randint(1, 2 if command == "compare" else 1))]]
    switches = pick(rnd, [[], ["--no-chat"], ["--chat"], ["--trust-remote-code"]], [["--quantized"]])
    args += switches
    args += pick(rnd, [[], ["--fused"], ["--no-fused"], ["--compile"], ["--no-compile", "--no-cuda-graphs"],
                       ["--kernels"], ["--no-kernels"]], [])
    written = ""
    if command == "generate":
        args[1:1] = prompts
        if rnd.random() < 0.3:
            f = run_dir / rnd.choice(["p.txt", "p.jsonl", "p.json"])
            f.write_bytes(data)
            written = f"{f.name}: {data[:200]!r}"
            args += ["--prompts-file", str(f)]
        if rnd.random() < 0.5:
            args.append("--json")
    else:
        if rnd.random() < 0.7:
            f = run_dir / rnd.choice(["d.jsonl", "d.jsonl", "d.txt", "d.csv", "d.json"])
            f.write_bytes(data)
            written = f"{f.name}: {data[:200]!r}"
            args += ["--dataset", str(f)]
            if rnd.random() < 0.25:
                args += ["--prompt-field", pick(rnd, ["prompt", "question", "turns[1]", "text"], ["other", "x[["])]
        args += ["--num-samples", pick(rnd, ["1", "2", "3"], ["0"])]
        args += ["--format", rnd.choice(["json", "json", "table", "csv"])]
        if rnd.random() < 0.25:
            args += ["--output", str(pick(rnd, [run_dir / "out.json", run_dir / "out.csv", run_dir / "sub" / "o.json"],
                                          [run_dir]))]
        if command in ("bench", "compare"):
            args.append("--no-warmup")
        if command == "bench":
            if rnd.random() < 0.25:  # a named run in a shared folder: --resume meets earlier runs' files
                args += ["--results-dir", str(WORK / "shared-results"), "--name", rnd.choice(["a", "b"])]
                if rnd.random() < 0.5:
                    args.append("--resume")
            else:
                args += ["--results-dir", str(run_dir / "results")]
        if command == "inspect" and rnd.random() < 0.5:
            args += ["--measure", rnd.choice(["1", "2"])]
    return args, written


# ---- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--options", type=int, default=1200, help="dry runs with random option lists")
    ap.add_argument("--yaml", type=int, default=600, help="dry runs with random --config documents")
    ap.add_argument("--real", type=int, default=700, help="real runs on tiny models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results path stem (default benchmarks/results/<date>-fuzz)")
    a = ap.parse_args()

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    rec = Recorder()
    started = time.perf_counter()

    fuzz(cli_args(), a.options, a.seed,
         lambda args: rec.record("options", args, (0, 2), True, check_json="--format" in args and "json" in args))

    config = WORK / "config.yaml"

    def yaml_body(x):
        doc, command = x
        config.write_bytes(doc)
        fmt = ["--json"] if command == "generate" else ["--format", "json"]
        rec.record("yaml", [command, "--config", str(config), "--dry-run", *fmt], (0, 2), True,
                   extra=repr(doc[:300]), check_json=True)

    fuzz(st.tuples(yaml_documents(), st.sampled_from(["generate", "bench", "compare", "inspect"])), a.yaml, a.seed,
         yaml_body)

    if a.real:
        models = build_models(WORK / "models")
        counter = [0]

        marker = WORK / "models" / "CODE-RAN"  # written by the custom model's own module when it runs

        def real_body(x):
            args, written = x
            fmt_json = "--json" in args or ("--format" in args and args[args.index("--format") + 1] == "json")
            rec.record("real", args, (0, 1, 2), False, extra=written, check_json=fmt_json)
            torch.set_num_threads(1)  # a drawn --threads must not slow the runs after it
            if marker.exists():
                marker.unlink()
                if "--trust-remote-code" not in args:
                    rec.crashes.append({"phase": "real", "problem": "a model's own code ran without --trust-remote-code",
                                        "args": args})

        fuzz(real_args(models, counter), a.real, a.seed, real_body)

    total = sum(rec.tried.values())
    histogram = collections.Counter()
    for c in rec.codes.values():
        histogram.update(c)
    result = {
        "date": date.today().isoformat(),
        "command": " ".join(["python benchmarks/fuzz_cli.py", *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
        "inputs": total,
        "inputs_per_phase": dict(rec.tried),
        "seconds_per_phase": {k: round(v, 1) for k, v in rec.seconds.items()},
        "wall_s": round(time.perf_counter() - started, 1),
        "exit_codes": dict(sorted(histogram.items())),
        "exit_codes_per_phase": {k: dict(sorted(v.items())) for k, v in rec.codes.items()},
        "distinct_error_messages": len(rec.messages),
        "error_messages": [{"message": m, "count": c, "phase": rec.examples[m][0], "example": rec.examples[m][1]}
                           for m, c in rec.messages.most_common()],
        "crashes": rec.crashes,
    }
    stem = Path(a.out) if a.out else REPO / "benchmarks" / "results" / f"{result['date']}-fuzz"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"{total} inputs, {len(rec.messages)} distinct error messages, exit codes {dict(histogram)}, "
          f"{len(rec.crashes)} crash(es) -> {stem}.json", file=sys.__stderr__)


def markdown(r: dict) -> str:
    phases = ", ".join(f"{p} {n}" for p, n in r["inputs_per_phase"].items())
    lines = [
        f"# CLI fuzz run ({r['date']})",
        "",
        f"`{r['command']}`",
        "",
        f"{r['inputs']} generated inputs ({phases}) in {r['wall_s']} s, driving `specdecode.cli.app.main` in-process "
        "(python " + r["machine"]["python"] + ", torch " + r["machine"]["torch"] + ", CPU, offline).",
        "",
        "Contract: dry runs exit 0 or 2, real runs 0, 1 or 2; a failing run prints exactly one `error:` line (dry runs "
        "nothing else on stderr); never a traceback or an exception out of `main()`; no hang (60 s per run); "
        "successful JSON output parses. An exception only the last-resort handler caught (a generic one-line report) "
        "counts as a crash, and so does a model's own code running without `--trust-remote-code`.",
        "",
        "| phase | inputs | " + " | ".join(f"exit {c}" for c in r["exit_codes"]) + " |",
        "| --- | --- | " + " | ".join("---" for _ in r["exit_codes"]) + " |",
    ]
    for phase, codes in r["exit_codes_per_phase"].items():
        lines.append(f"| {phase} | {r['inputs_per_phase'][phase]} | "
                     + " | ".join(str(codes.get(c, 0)) for c in r["exit_codes"]) + " |")
    lines.append(f"| all | {r['inputs']} | " + " | ".join(str(v) for v in r["exit_codes"].values()) + " |")
    lines += [
        "",
        f"**Crashes: {len(r['crashes'])}.** **Distinct error messages: {r['distinct_error_messages']}** (paths, numbers "
        "and quoted values masked; the 25 most frequent below, all in the JSON file).",
        "",
        "| count | message (masked) |",
        "| --- | --- |",
    ]
    for m in r["error_messages"][:25]:
        lines.append(f"| {m['count']} | `{m['message'][:160].replace('|', '/')}` |")
    if r["crashes"]:
        lines += ["", "## Crashes", ""]
        for c in r["crashes"]:
            lines.append(f"- [{c['phase']}] {c['problem']}: `{' '.join(c.get('args', []))[:300]}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import shutil

    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)  # models, random files, the datasets cache
