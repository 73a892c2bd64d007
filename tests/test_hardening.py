"""Hardening: every bad input gets one clear line and the right exit code; interrupted work is kept;
untrusted files stay harmless (issue 8).

Property-based (hypothesis) over the settings model and the command line with `--dry-run`
(random options, valid and invalid values; random YAML documents: wrong types, unknown keys,
nested junk, non-mappings, broken syntax, non-UTF-8 bytes): each run exits 0, or 2 with exactly
one line on stderr naming the culprit; never a traceback, never another code. Then targeted
runs on tiny local models (k > max_new_tokens, an empty or overlong prompt, a non-causal
target, custom code, pickle weights, out of memory in a batch, Ctrl-C and --resume...).

Offline, CPU only; timing is never asserted. The large fuzz run is benchmarks/fuzz_cli.py.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cli_fuzz import cli_args, invoke, settings_dicts, violation, yaml_documents
from fixtures import PROMPTS, build_tokenizer
from specdecode.settings import Settings, SettingsError, load_settings

MAX_NEW = 6
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def offline_quiet_one_thread():
    """No hub access by accident; one torch thread (tiny models; see test_bench_cli.py); and
    transformers as quiet as `specdecode` makes it in its own process (main() sets the env
    variables before transformers is imported; in a test session other tests import it first)."""
    from transformers.utils import logging as tlog

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    before = torch.get_num_threads(), tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    torch.set_num_threads(1)
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    yield
    torch.set_num_threads(before[0])
    tlog.set_verbosity(before[1])
    if before[2]:
        tlog.enable_progress_bar()
    mp.undo()


def ok(o, allowed=(0, 2), strict=True):
    problem = violation(o, allowed, strict)
    assert problem is None, f"{problem}\nargs: {o.args}\nstderr: {o.err[-2000:]}\n{o.crash or ''}"
    return o


def error_line(o) -> str:
    assert len(o.error_lines) == 1, o.err
    return o.error_lines[0]


# ---- property-based: the settings model ------------------------------------------------------


@FUZZ
@given(settings_dicts())
def test_settings_model_accepts_or_raises_validation_error(data):
    try:
        s = Settings.model_validate(data)
    except ValidationError:
        return
    # what validated survives its own JSON form (what --dry-run prints and results files embed)
    assert Settings.model_validate(json.loads(json.dumps(s.to_public_dict()))) == s


@FUZZ
@given(settings_dicts(junk_keys=False))
def test_load_settings_errors_are_one_line_naming_a_key(data):
    flags = {"k": "--k", "temperature": "--temperature", "device": "--device"}
    try:
        load_settings(overrides=data, flag_names=flags)
    except SettingsError as e:
        msg = str(e)
        assert msg and "\n" not in msg
        # the culprit: a flag, a key, or the alias pair
        assert "--" in msg or "'" in msg or "exit layer" in msg, msg


# ---- property-based: the command line, --dry-run --------------------------------------------


@FUZZ
@given(cli_args())
def test_cli_options_dry_run_exit_0_or_2_with_one_line(args):
    o = ok(invoke(args))
    if o.code == 2:
        assert error_line(o).startswith("error: ")
    elif "--format" not in args and "--json" not in args:
        assert o.out.strip()  # the resolved settings table


@pytest.fixture(scope="module")
def config_dir():
    d = Path(tempfile.mkdtemp(prefix="specdecode-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@FUZZ
@given(doc=yaml_documents(), command=st.sampled_from(["generate", "bench", "compare", "inspect"]))
def test_cli_yaml_config_dry_run_exit_0_or_2_naming_the_file(config_dir, doc, command):
    path = config_dir / "config.yaml"
    path.write_bytes(doc)
    fmt = ["--json"] if command == "generate" else ["--format", "json"]
    o = ok(invoke([command, "--config", str(path), "--dry-run", *fmt]))
    if o.code == 2:
        line = error_line(o)
        assert str(path) in line or "exit layer" in line, line
        return
    resolved = json.loads(o.out)
    data = yaml.safe_load(doc.decode("utf-8")) or {}
    for key in ("target", "max_new_tokens", "batch_size"):  # the file's values are what runs
        if key in data:
            assert resolved[key] == data[key]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("k: 3\nk: 7\n", ":2: malformed YAML: key 'k' given twice"),
        ("k: " + "[" * 1000 + "\n", "malformed YAML: nested too deeply"),
        ("temperature: .inf\n", "'temperature': Input should be a finite number"),
        ("k: {a: 1}\n", ":1: 'k': k must be a positive integer"),
        ("seed: -1\n", "'seed'"),
        ("dataset: {path: ''}\n", "'dataset.path': must not be empty"),
        ("dataset: {prompt_field: 'a[[1]'}\n", "cannot parse"),
    ],
    ids=["duplicate-key", "deep-nesting", "inf", "k-mapping", "negative-seed", "empty-path", "bad-field"],
)
def test_yaml_edge_cases_name_file_and_key(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    o = ok(invoke(["bench", "--config", str(p), "--dry-run"]))
    assert o.code == 2 and str(p) in error_line(o) and needle in error_line(o)


def test_config_missing_or_a_directory_is_exit_2(tmp_path):
    o = ok(invoke(["generate", "--config", str(tmp_path / "nope.txt"), "--dry-run"]))
    assert o.code == 2 and "config file not found" in error_line(o)
    o = ok(invoke(["generate", "--config", str(tmp_path), "--dry-run"]))
    assert o.code == 2 and "directory" in error_line(o)


def test_exit_layer_may_come_from_another_layer(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("drafter: early-exit\n", encoding="utf-8")
    o = ok(invoke(["generate", "--config", str(p), "--exit-layer", "2", "--dry-run", "--json"]))
    assert o.code == 0 and json.loads(o.out)["exit_layer"] == 2
    o = ok(invoke(["generate", "--config", str(p), "--dry-run"]))
    assert o.code == 2 and "--exit-layer" in error_line(o)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["presets", "--format", "xml"], "--format"),
        (["bench", "--dataset", "", "--dry-run"], "--dataset: must not be empty"),
        (["bench", "--temperature", "inf", "--dry-run"], "--temperature: Input should be a finite number"),
        (["bench", "--seed", str(2**64), "--dry-run"], "--seed"),
        (["bench", "--prompt-field", "a[[1]", "--dry-run"], "--prompt-field: cannot parse"),
        (["generate", "--config", "bad\nname.yaml", "--dry-run"], "bad\\nname.yaml"),
        (["bench", "--preset", "x\x1ey\u2028z", "--dry-run"], "unknown preset"),
        (["bench", "--resume", "--dry-run"], "--resume needs the name"),
    ],
)
def test_bad_flags_one_line(args, needle):
    o = ok(invoke(args))
    assert o.code == 2 and needle in error_line(o)


# ---- real tiny models: targeted bad inputs ---------------------------------------------------


def pair_args(pair, *extra) -> list[str]:
    return ["--target", str(pair.target), "--draft", str(pair.draft), "--device", "cpu", "--dtype", "float32",
            "--no-chat", "--max-new-tokens", str(MAX_NEW), *map(str, extra)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three prompts (one holding characters str.splitlines() breaks on); a row without the
    field and one with an empty prompt."""
    p = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = [{"prompt": PROMPTS[0]}, {"question": "no prompt field"}, {"prompt": PROMPTS[2]}, {"prompt": ""},
            {"prompt": PROMPTS[3] + "\u2028 and\x85 more"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def generated(o) -> list[list[int]]:
    return [json.loads(line)["token_ids"] for line in o.out.splitlines()]


def test_k_larger_than_max_new_tokens_stops_at_max_new_tokens(llama_pair):
    spec = ok(invoke(["generate", PROMPTS[1], *pair_args(llama_pair, "--k", 20), "--json"]))
    alone = ok(invoke(["generate", PROMPTS[1], *pair_args(llama_pair, "--drafter", "none"), "--json"]))
    assert spec.code == alone.code == 0
    assert generated(spec) == generated(alone) and len(generated(spec)[0]) <= MAX_NEW


def test_max_new_tokens_zero_is_exit_2(llama_pair):
    o = ok(invoke(["generate", "hello", *pair_args(llama_pair), "--max-new-tokens", "0"]))
    assert o.code == 2 and "--max-new-tokens" in error_line(o)


def test_json_lines_stay_one_line_per_prompt(llama_pair):
    prompts = ["the cat\u2028saw", "a dog\x85ran", "the sea\u2029"]
    o = ok(invoke(["generate", *prompts, *pair_args(llama_pair), "--json"]))
    lines = o.out.splitlines()  # what many readers use; it breaks on \x85, \u2028 and \u2029 too
    assert o.code == 0 and [json.loads(line)["prompt"] for line in lines] == prompts


def test_empty_prompt_is_refused_naming_it(llama_pair, tmp_path):
    """Generating from nothing is a mistake (an unset shell variable), not a request (issue 16)."""
    o = ok(invoke(["generate", "", *pair_args(llama_pair), "--json"]))
    assert o.code == 2 and "the prompt is empty" in error_line(o) and o.out == ""
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "the cat"}\n{"prompt": " "}\n')
    o = ok(invoke(["generate", "--prompts-file", str(p), *pair_args(llama_pair), "--json"]))
    assert o.code == 2 and error_line(o) == f"error: {p}:2: the prompt is empty"


def test_prompt_longer_than_the_context(llama_pair):
    long = " ".join(["the cat saw the dog"] * 120)  # 600 tokens; the fixtures' context is 512
    o = ok(invoke(["generate", long, *pair_args(llama_pair), "--max-length", "32", "--json"]))
    assert o.code == 0  # truncated from the left to --max-length
    o = ok(invoke(["generate", long, *pair_args(llama_pair), "--json"]))
    assert o.code == 2 and "context" in error_line(o) and "--max-length" in error_line(o)


def test_non_utf8_prompts_and_datasets_are_exit_2_naming_the_file(llama_pair, tmp_path):
    for name in ("prompts.txt", "prompts.jsonl"):
        p = tmp_path / name
        p.write_bytes(b'{"prompt": "the cat \xff saw"}\n' if name.endswith("jsonl") else b"the cat \xfe\xff\n")
        o = ok(invoke(["generate", "--prompts-file", str(p), *pair_args(llama_pair)]))
        assert o.code == 2 and str(p) in error_line(o) and "UTF-8" in error_line(o)
        o = ok(invoke(["bench", *pair_args(llama_pair), "--dataset", str(p), "--no-warmup",
                       "--results-dir", str(tmp_path / "r")]), strict=False)
        assert o.code == 2 and str(p) in error_line(o) and "UTF-8" in error_line(o)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    o = ok(invoke(["bench", *pair_args(llama_pair), "--dataset", str(empty), "--results-dir", str(tmp_path / "r")]))
    assert o.code == 2 and "empty" in error_line(o)


def test_missing_fields_skipped_and_batch_larger_than_dataset(llama_pair, dataset, tmp_path):
    o = ok(invoke(["bench", *pair_args(llama_pair, "--k", 2), "--dataset", str(dataset), "--batch-size", 16,
                   "--no-warmup", "--format", "json", "--results-dir", str(tmp_path)]), strict=False)
    assert o.code == 0, o.err
    report = json.loads(o.out)
    assert report["num_samples"] == 3 and report["data"]["skipped"] == 2 and report["baseline"]["batches"] == 1
    assert report["output_match_rate"] == 1.0
    assert "skipped 2 of 5 rows" in o.err


def test_draft_with_another_tokenizer_is_exit_1(llama_pair, qwen2_pair, dataset, tmp_path):
    o = ok(invoke(["bench", "--target", str(llama_pair.target), "--draft", str(qwen2_pair.draft), "--device", "cpu",
                   "--dataset", str(dataset), "--results-dir", str(tmp_path)]), allowed=(1,), strict=False)
    assert "tokenizers differ" in error_line(o)


def _not_causal_dirs(root: Path) -> list[Path]:
    from transformers import BertConfig, BertForMaskedLM, BertModel, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    bert = BertConfig(vocab_size=112, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    t5 = T5Config(vocab_size=112, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    dirs = []
    for name, model in (("bert_mlm", BertForMaskedLM(bert)), ("bert", BertModel(bert)),
                        ("t5", T5ForConditionalGeneration(t5))):
        model.save_pretrained(root / name)
        build_tokenizer(root / name)
        dirs.append(root / name)
    return dirs


def test_a_target_that_is_not_a_causal_lm_is_exit_1(llama_pair, tmp_path):
    for d in _not_causal_dirs(tmp_path):
        for command in (["generate", "hello"], ["inspect"]):
            o = ok(invoke([*command, "--target", str(d), "--drafter", "none", "--device", "cpu"]), allowed=(1,))
            assert "not a causal language model" in error_line(o), o.err
        o = ok(invoke(["generate", "hello", "--target", str(llama_pair.target), "--draft", str(d), "--device", "cpu"]),
               allowed=(1,))
        assert "not a causal language model" in error_line(o)


def test_a_model_with_alibi_from_a_padding_mask_is_exit_1_before_its_weights_load(llama_pair, tmp_path):
    """BLOOM and Falcon with alibi build their position biases from a 2-D padding mask, which the
    engine's per-row masks are not: refused by name from the config (the weights are never read)."""
    from transformers import BloomConfig, FalconConfig

    for name, config in (("bloom", BloomConfig(vocab_size=112, hidden_size=16, n_layer=1, n_head=2)),
                         ("falcon", FalconConfig(vocab_size=112, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, alibi=True))):
        config.architectures = ["BloomForCausalLM" if name == "bloom" else "FalconForCausalLM"]
        config.save_pretrained(tmp_path / name)  # a config alone: loading weights would fail differently
        build_tokenizer(tmp_path / name)
        d = str(tmp_path / name)
        for args in (["generate", "hello", "--target", d, "--drafter", "none"], ["inspect", "--target", d, "--drafter", "none"],
                     ["generate", "hello", "--target", str(llama_pair.target), "--draft", d]):
            o = ok(invoke([*args, "--device", "cpu"]), allowed=(1,))
            assert "ALiBi" in error_line(o) and f"({name})" in error_line(o), o.err


def test_cuda_without_a_gpu_is_exit_1(llama_pair):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    o = ok(invoke(["generate", "hello", *pair_args(llama_pair), "--device", "cuda"]), allowed=(1,))
    assert "CUDA" in error_line(o) and "--device cpu" in error_line(o)


def test_quantized_on_cpu_without_bitsandbytes_is_exit_1(llama_pair, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as where it is not installed: import fails
    o = ok(invoke(["generate", "hello", *pair_args(llama_pair), "--quantized"]), allowed=(1,))
    assert "bitsandbytes" in error_line(o) and "--no-quantized" in error_line(o)


def test_top_k_larger_than_the_vocabulary_just_works(llama_pair):
    o = ok(invoke(["generate", PROMPTS[0], *pair_args(llama_pair, "--temperature", 1, "--seed", 3,
                                                      "--top-k", 10**6), "--json"]))
    assert o.code == 0 and generated(o)[0]


def test_exit_layer_not_below_the_target_layers_is_exit_2(llama_pair, dataset, tmp_path):
    for command in (["generate", "hello"], ["bench", "--dataset", str(dataset), "--results-dir", str(tmp_path)]):
        o = ok(invoke([*command, "--target", str(llama_pair.target), "--drafter", "early-exit", "--exit-layer", "4",
                       "--device", "cpu"]), strict=False)
        assert o.code == 2 and "--exit-layer 4" in error_line(o)


def test_unwritable_output_is_refused_before_loading(llama_pair, dataset, tmp_path):
    # a target that does not exist would be exit 1: exit 2 shows the output was checked first
    o = ok(invoke(["bench", "--target", str(tmp_path / "no-model"), "--drafter", "none", "--dataset", str(dataset),
                   "--output", str(tmp_path), "--results-dir", str(tmp_path)]))
    assert o.code == 2 and "--output" in error_line(o) and "directory" in error_line(o)
    (tmp_path / "file").write_text("x")
    o = ok(invoke(["bench", "--target", str(tmp_path / "no-model"), "--drafter", "none", "--dataset", str(dataset),
                   "--results-dir", str(tmp_path / "file")]))
    assert o.code == 2 and "--results-dir" in error_line(o)


# ---- untrusted files -------------------------------------------------------------------------


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _with_custom_code(src: Path, dst: Path, model_type: str, marker: Path) -> Path:
    d = _copy_model(src, dst)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = model_type
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        f"class EvilConfig(LlamaConfig):\n    model_type = {model_type!r}\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    return d


def test_custom_code_never_runs_without_trust_remote_code(llama_pair, tmp_path):
    marker = tmp_path / "code-ran"
    custom = _with_custom_code(llama_pair.draft, tmp_path / "custom", "specdecode_custom", marker)
    for command in (["generate", "hello"], ["inspect"]):
        o = ok(invoke([*command, "--target", str(custom), "--drafter", "none", "--device", "cpu"]), allowed=(1,))
        assert "--trust-remote-code" in error_line(o)
    assert not marker.exists()
    # a known architecture that also ships code: transformers' own class, a warning, no code run
    known = _with_custom_code(llama_pair.draft, tmp_path / "known", "llama", marker)
    o = ok(invoke(["generate", "hello", "--target", str(known), "--drafter", "none", "--device", "cpu", "--no-chat",
                   "--max-new-tokens", "2", "--json"]))
    assert o.code == 0 and not marker.exists()
    warnings = [line for line in o.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--trust-remote-code" in warnings[0]


def test_safetensors_preferred_and_pickle_only_warned(llama_pair, tmp_path):
    from safetensors.torch import load_file

    def tokens(model_dir):
        o = ok(invoke(["generate", PROMPTS[2], "--target", str(model_dir), "--drafter", "none", "--device", "cpu",
                       "--no-chat", "--max-new-tokens", str(MAX_NEW), "--json"]))
        assert o.code == 0, o.err
        return generated(o), [line for line in o.err.splitlines() if line.startswith("warning:")]

    reference, warned = tokens(llama_pair.draft)
    assert not warned
    both = _copy_model(llama_pair.draft, tmp_path / "both")
    (both / "pytorch_model.bin").write_bytes(b"not a pickle: loading this file would fail")
    assert tokens(both) == (reference, [])
    pickle_only = _copy_model(llama_pair.draft, tmp_path / "pickle")
    torch.save(load_file(pickle_only / "model.safetensors"), pickle_only / "pytorch_model.bin")
    (pickle_only / "model.safetensors").unlink()
    got, warned = tokens(pickle_only)
    assert got == reference and len(warned) == 1 and "pickle" in warned[0]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    import specdecode.io as sio

    p = tmp_path / "report.json"
    sio.atomic_write_text(p, '{"old": true}\n')
    assert p.read_text() == '{"old": true}\n'

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sio.os, "replace", boom)
    with pytest.raises(OSError):
        sio.atomic_write_text(p, '{"new": "half written')
    assert p.read_text() == '{"old": true}\n' and [f.name for f in tmp_path.iterdir()] == ["report.json"]


# ---- out of memory, Ctrl-C and --resume ------------------------------------------------------


def fail_stream_at(monkeypatch, n: int, exc: BaseException):
    """Make the n-th engine run (one batch of one pass) raise `exc`; count the runs."""
    from specdecode.decoding.engine import SpeculativeEngine

    original = SpeculativeEngine.stream
    calls = {"n": 0}

    def stream(self, prompts):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        yield from original(self, prompts)

    monkeypatch.setattr(SpeculativeEngine, "stream", stream)
    return calls


def test_bench_out_of_memory_keeps_samples_and_exits_1(llama_pair, dataset, tmp_path, monkeypatch):
    import specdecode.io as sio

    written = []
    real = sio.atomic_write_text
    monkeypatch.setattr(sio, "atomic_write_text", lambda p, t, *a: written.append(Path(p)) or real(p, t, *a))
    # 4 built-in prompts in batches of 2, no warm-up: runs 1-2 are batch 0 (baseline, speculative); run 3 fails
    fail_stream_at(monkeypatch, 3, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    o = ok(invoke(["bench", *pair_args(llama_pair, "--k", 2), "--num-samples", 4, "--batch-size", 2,
                   "--no-warmup", "--format", "json", "--name", "oom", "--results-dir", str(tmp_path),
                   "--output", str(tmp_path / "out.json")]), allowed=(1,), strict=False)
    line = error_line(o)
    assert "out of memory" in line and "batch of 2" in line and "--batch-size 1" in line and "oom.jsonl" in line
    samples = (tmp_path / "oom.jsonl").read_text().splitlines()
    assert [json.loads(s)["index"] for s in samples] == [0, 1]
    for report in (json.loads(o.out), json.loads((tmp_path / "oom.json").read_text()),
                   json.loads((tmp_path / "out.json").read_text())):
        assert report["num_samples"] == 2 and report["requested_samples"] == 4 and "out of memory" in report["failure"]
        assert report["output_match_rate"] == 1.0
    assert {tmp_path / "oom.json", tmp_path / "out.json"} <= set(written)  # summaries written atomically


def test_compare_out_of_memory_and_ctrl_c_keep_the_rows(llama_pair, dataset, tmp_path, monkeypatch):
    base = ["compare", *pair_args(llama_pair), "--k", "1", "2", "--dataset", str(dataset), "--num-samples", "2",
            "--no-warmup", "--format", "json"]
    # batch 1: runs 1-2 baseline, 3-4 k=1, run 5 is the k=2 row's first batch
    for exc, code in ((MemoryError(), 1), (KeyboardInterrupt(), 130)):
        out = tmp_path / f"compare-{code}.json"
        with monkeypatch.context() as m:
            fail_stream_at(m, 5, exc)
            o = ok(invoke([*base, "--output", str(out)]), allowed=(code,), strict=False)
        for report in (json.loads(o.out), json.loads(out.read_text())):
            assert [r["k"] for r in report["rows"]] == [1] and report["rows"][0]["output_match_rate"] == 1.0
        if code == 1:
            line = error_line(o)
            assert "out of memory" in line and "k=2" in line and "1 of 2 combinations" in line
            assert "--max-new-tokens" in line  # batch size 1: nothing smaller to suggest
        else:
            assert json.loads(out.read_text())["interrupted"] is True and "interrupted" in o.err


def test_bench_resume_skips_measured_samples(llama_pair, dataset, tmp_path, monkeypatch):
    run = ["bench", *pair_args(llama_pair, "--k", 2), "--dataset", str(dataset), "--no-warmup", "--format", "json",
           "--name", "run1", "--results-dir", str(tmp_path)]
    samples = tmp_path / "run1.jsonl"
    with monkeypatch.context() as m:
        fail_stream_at(m, 3, KeyboardInterrupt())  # sample 0 measured, then Ctrl-C
        o = ok(invoke(run), allowed=(130,), strict=False)
    assert json.loads(o.out)["num_samples"] == 1 and len(samples.read_text().splitlines()) == 1
    first = json.loads(samples.read_text())

    with monkeypatch.context() as m:
        calls = fail_stream_at(m, 0, RuntimeError("never"))
        o = ok(invoke([*run, "--resume"]), strict=False)
    assert o.code == 0 and calls["n"] == 4  # 2 remaining samples x (baseline + speculative)
    report = json.loads(o.out)
    assert report["num_samples"] == 3 and report["resumed_samples"] == 1 and report["output_match_rate"] == 1.0
    assert [s["index"] for s in report["samples"]] == [0, 1, 2]
    assert report["baseline"]["batches"] == report["speculative"]["batches"] == 3
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2] and lines[0] == first
    assert "resumed 1 sample" in o.err

    # a crash mid-line leaves a partial last line: dropped; nothing left to measure
    with samples.open("a") as f:
        f.write('{"index": 2, "prompt": "the ol')
    with monkeypatch.context() as m:
        calls = fail_stream_at(m, 0, RuntimeError("never"))
        o = ok(invoke([*run, "--resume"]), strict=False)
    assert o.code == 0 and calls["n"] == 0 and json.loads(o.out)["num_samples"] == 3
    assert len(samples.read_text().splitlines()) == 3

    # other settings must not be mixed into the same results
    o = ok(invoke([*run, "--resume", "--k", "3"]), strict=False)
    assert o.code == 2 and "other settings" in error_line(o) and "run1.jsonl:1" in error_line(o)
