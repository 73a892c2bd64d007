"""The first hour of a new user (issue 16): threads, status and warning lines, empty prompts,
a target without a draft, --version, help text, validation without torch, the stats line
when piped, compare's results file, bench's interrupt edges, quiet loading in the Python API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import PROMPTS
from specdecode.cli.app import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def pair_args(pair, *extra: str) -> list[str]:
    return ["--target", str(pair.target), "--draft", str(pair.draft), "--device", "cpu", "--dtype", "float32",
            "--no-chat", *extra]


def python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=REPO,
                          timeout=120)


# ---- 9: --version; 6: help -----------------------------------------------------------------


def test_version(capsys):
    from importlib.metadata import version

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"specdecode {version('specdecode')}"


@pytest.mark.parametrize("command", ["generate", "bench", "compare", "inspect"])
def test_help_has_no_type_tags_and_shows_defaults(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert not re.search(r"<(bool|str|int|float|list\[\w+\])>", out), out
    for line in out.splitlines():
        if re.match(r"│ (--debug|--dry-run|--quantized|--help)\b", line):
            assert not re.search(r"\b(BOOLEAN|TEXT)\b", line), line  # switches: no type at all
    assert "--max-new-tokens" in out and "(default 128)" in out
    assert "the flat YAML format" in out and "seed" not in out.replace("--seed", "").replace("random seed", "").replace("same seed", "")
    if command != "compare":  # compare sweeps its own --k
        assert "(default 5; demo preset: auto)" in out


# ---- 7: validation without torch ------------------------------------------------------------


@pytest.mark.parametrize("args, code", [
    (["generate", "--k", "0", "x"], 2),
    (["generate", "--dry-run"], 0),
    (["bench", "--threads", "0", "--dry-run"], 2),
    (["presets"], 0),
    (["generate", ""], 2),
])
def test_validation_does_not_import_torch(args, code):
    out = python(
        "import sys\n"
        "from specdecode.cli.app import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    code = e.code\n"
        "sys.stderr.write(f'\\nexit={code} torch={\"torch\" in sys.modules}\\n')\n"
    )
    assert f"exit={code} torch=False" in out.stderr, out.stderr
    if code == 2:
        assert out.stderr.count("error:") == 1


# ---- 5: empty prompt; 4: --target without --draft -------------------------------------------


def test_empty_prompt_is_refused(capsys):
    code, out, err = run(capsys, "generate", "   ")
    assert code == 2
    assert err.strip() == "error: the prompt is empty: give the text to continue (or use --prompts-file)"
    code, _, err = run(capsys, "generate", "ok", "", "--dry-run")
    assert code == 0  # --dry-run loads nothing and looks at no prompt
    code, _, err = run(capsys, "generate", "ok", "")
    assert code == 2 and "prompt 2 is empty" in err


def test_api_refuses_an_empty_prompt(llama_pair):
    from helpers import cpu_decoder
    from specdecode.settings import SettingsError

    dec = cpu_decoder(llama_pair.target, llama_pair.draft, max_new_tokens=4)
    with pytest.raises(SettingsError, match="empty"):
        dec.generate([""])


def test_missing_target_reports_its_path_not_the_missing_draft(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "x", "--target", str(tmp_path / "nope"))
    assert code == 1
    assert err.strip() == f"error: model path '{tmp_path / 'nope'}' does not exist"


def test_target_without_draft_says_what_to_pass(capsys, llama_pair):
    code, _, err = run(capsys, "generate", "x", "--target", str(llama_pair.target))
    assert code == 2
    assert err.count("\n") == 1
    assert "--draft" in err and "--drafter ngram" in err and "--drafter none" in err
    # a named draft keeps the model drafter; another drafter needs none
    code, out, err = run(capsys, "generate", "the cat", *pair_args(llama_pair, "--max-new-tokens", "3"))
    assert code == 0, err
    code, out, err = run(capsys, "generate", "the cat", "--target", str(llama_pair.target), "--drafter", "ngram",
                         "--max-new-tokens", "3", "--device", "cpu", "--no-chat")
    assert code == 0, err


# ---- 3: truncation; 9: stats line when piped -------------------------------------------------


def test_truncated_prompt_warns_once_with_the_count(capsys, llama_pair):
    long = " ".join(["the cat saw the dog"] * 10)  # 50 words + <bos>
    code, out, err = run(capsys, "generate", long, *pair_args(llama_pair, "--max-length", "8",
                                                              "--max-new-tokens", "3", "--json"))
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: a prompt of 51 tokens was cut to its last 8 (--max-length): "
                        "43 tokens dropped from its start"]
    code, out, err = run(capsys, "generate", "the cat saw", *pair_args(llama_pair, "--max-new-tokens", "3"))
    assert "warning" not in err


def test_piped_generate_prints_the_text_on_stdout_and_stats_on_stderr(capsys, llama_pair):
    code, out, err = run(capsys, "generate", PROMPTS[0], *pair_args(llama_pair, "--max-new-tokens", "6"))
    assert code == 0, err
    assert "tokens/s" not in out
    stats = [line for line in err.splitlines() if "tokens/s" in line]
    assert len(stats) == 1 and re.match(r"\d+ tokens · \d+ rounds · acceptance [\d.]+% · block efficiency", stats[0])
    code, out, err = run(capsys, "generate", PROMPTS[0], PROMPTS[1], *pair_args(llama_pair, "--max-new-tokens", "4"))
    assert [line.split(":")[0] for line in err.splitlines() if "tokens/s" in line] == ["prompt 1", "prompt 2"]


def test_status_line_only_on_a_terminal(monkeypatch):
    from specdecode.cli import render

    shown = []

    class FakeStatus:
        def __init__(self, message):
            shown.append(message)

        def start(self):
            shown.append("start")

        def update(self, message):
            shown.append(message)

        def stop(self):
            shown.append("stop")

    class FakeConsole:
        is_terminal = True

        def __init__(self, **kw):
            assert kw == {"stderr": True}

        def status(self, message):
            return FakeStatus(message)

    monkeypatch.setattr(render, "Console", FakeConsole)
    with render.Status("loading a + b …") as st:
        st.update("generating …")
        st.stop()
    assert shown == ["loading a + b …", "start", "generating …", "stop"]  # stopped once
    FakeConsole.is_terminal = False
    shown.clear()
    with render.Status("loading …") as st:
        st.update("x")
    assert shown == []


# ---- 1: threads ------------------------------------------------------------------------------


def test_threads_setting(capsys, llama_pair):
    import torch

    before = torch.get_num_threads()
    try:
        code, _, err = run(capsys, "generate", "the cat", *pair_args(llama_pair, "--threads", "1",
                                                                    "--max-new-tokens", "2"))
        assert code == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    code, _, err = run(capsys, "generate", "x", "--threads", "0")
    assert code == 2 and err.startswith("error: --threads:")
    code, _, err = run(capsys, "generate", "x", "--threads", "many")
    assert code == 2 and "--threads" in err


def test_threads_auto_is_half_the_usable_cores(monkeypatch):
    import torch

    from specdecode.models.loading import apply_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        for cores, expected in ((1, 1), (2, 1), (8, 4), (3, 1)):
            monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
            assert apply_threads("auto", torch.device("cpu")) == expected
            assert torch.get_num_threads() == expected
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own choice wins
        assert apply_threads("auto", torch.device("cpu")) == 2
        assert apply_threads(1, torch.device("cpu")) == 1
    finally:
        torch.set_num_threads(before)


# ---- 9: compare's results file; 8: bench's edges and the prediction line --------------------


def test_compare_writes_a_results_file(capsys, llama_pair, tmp_path):
    data = tmp_path / "p.txt"
    data.write_text("the cat saw\nhello , how are you ?\n")
    results = tmp_path / "res"
    code, out, err = run(capsys, "compare", "--k", "1", "2", *pair_args(llama_pair, "--max-new-tokens", "4"),
                         "--dataset", str(data), "--num-samples", "1", "--no-warmup", "--format", "json",
                         "--results-dir", str(results))
    assert code == 0, err
    files = list(results.glob("compare-*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text()) == json.loads(out)
    assert f"report written to {files[0]}" in err
    code, out, err = run(capsys, "compare", "--k", "1", *pair_args(llama_pair, "--max-new-tokens", "3"),
                         "--dataset", str(data), "--num-samples", "1", "--no-warmup", "--results-dir", str(results),
                         "--name", "mine")
    assert code == 0, err
    assert [r["k"] for r in json.loads((results / "mine.json").read_text())["rows"]] == [1]


def _interrupt_after(monkeypatch, calls: int) -> None:
    """Ctrl-C at the `calls`-th batch run (baseline and speculative each count)."""
    from specdecode.bench import runner

    real = runner.run_batch
    seen = {"n": 0}

    def run_batch(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] > calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_batch", run_batch)


def bench_args(pair, tmp_path, *extra: str) -> list[str]:
    data = tmp_path / "p.txt"
    data.write_text("\n".join(PROMPTS[:3]) + "\n")
    return ["bench", *pair_args(pair, "--max-new-tokens", "6"), "--dataset", str(data), "--no-warmup",
            "--results-dir", str(tmp_path / "res"), *extra]


def test_bench_interrupted_before_the_first_sample_leaves_no_files(capsys, monkeypatch, llama_pair, tmp_path):
    _interrupt_after(monkeypatch, 0)
    code, out, err = run(capsys, *bench_args(llama_pair, tmp_path))
    assert code == 130
    assert "nothing measured" in err
    assert list((tmp_path / "res").glob("*")) == []


def test_bench_interrupted_says_how_to_resume(capsys, monkeypatch, llama_pair, tmp_path):
    _interrupt_after(monkeypatch, 2)  # one batch of one sample measured
    code, out, err = run(capsys, *bench_args(llama_pair, tmp_path))
    assert code == 130
    samples = list((tmp_path / "res").glob("bench-*.jsonl"))
    assert len(samples) == 1 and len(samples[0].read_text().splitlines()) == 1
    assert f"1 of 3 samples measured, kept in {samples[0]}" in err
    assert f"--results-dir {tmp_path / 'res'} --name {samples[0].stem} --resume" in err
    monkeypatch.undo()
    code, out, err = run(capsys, *bench_args(llama_pair, tmp_path, "--name", samples[0].stem, "--resume"))
    assert code == 0, err
    assert len(samples[0].read_text().splitlines()) == 3


def test_prediction_lines_round_k_and_do_not_wrap(capsys, llama_pair, tmp_path):
    code, out, err = run(capsys, *bench_args(llama_pair, tmp_path, "--k", "auto", "--num-samples", "2"))
    assert code == 0, err
    lines = [line for line in out.splitlines() if "speedup" in line and "tokens/round" in line]
    assert len(lines) == 2, out
    # k auto: the mean proposed, to two decimals unless every round drafted the same k
    assert re.search(r"k=(\d+\.\d\d \(mean proposed\)|\d+,)", lines[0]), lines[0]
    assert lines[1].startswith("measured  speedup")
    # --k auto: the verify's length changes by round, so no line prices it
    assert "at the measured round costs" not in out
    code, out, err = run(capsys, *bench_args(llama_pair, tmp_path, "--k", "3", "--num-samples", "2"))
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("at the measured round costs"))
    assert re.fullmatch(r"at the measured round costs \(verify of 4 tokens = \d+\.\d\d target steps\): \d+\.\d\dx", line), line
    assert len(line) <= 100


# ---- 8: inspect's dtype; issue 15: the computation outside the CLI ---------------------------


def test_inspect_dtype_and_domain_module(capsys, llama_pair):
    code, out, err = run(capsys, "inspect", *pair_args(llama_pair))
    assert code == 0, err
    assert re.search(r"dtype\s+│ float32\s+│ float32", out), out  # stored float32: said once
    from specdecode.inspect import inspect_pair
    from specdecode.settings import Settings

    report = inspect_pair(Settings(target=str(llama_pair.target), draft=str(llama_pair.draft), device="cpu"))
    assert report["target"]["format"] == "transformers" and report["compatible"]
    out = python("import sys, specdecode.inspect; print('rich' in sys.modules)")
    assert out.stdout.strip() == "False"


# ---- 9: the Python API loads quietly ---------------------------------------------------------


@pytest.mark.slow  # a fresh Python process loading torch and transformers: ~9 s on two cores
def test_python_api_prints_no_loading_bars(llama_pair):
    out = python(
        "from specdecode import Settings, SpeculativeDecoder\n"
        f"d = SpeculativeDecoder.from_settings(Settings(target={str(llama_pair.target)!r}, "
        f"draft={str(llama_pair.draft)!r}, device='cpu', max_new_tokens=2, chat=False))\n"
        "print(d.generate(['the cat'])[0].stats.new_tokens)\n",
        env={"TRANSFORMERS_VERBOSITY": ""},
    )
    assert out.returncode == 0, out.stderr
    assert "Loading weights" not in out.stderr and "it/s" not in out.stderr, out.stderr
