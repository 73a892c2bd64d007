"""specdecode.data: prompts from local files (through `datasets`), the shared prompt sets,
field detection, skipped rows, and the one-line errors (bad field, missing file, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specdecode.data import BUILTIN_PROMPTS, DataError, extract_prompt, load_prompts
from specdecode.settings import DatasetSettings, SettingsError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ds(path, **kw) -> DatasetSettings:
    return DatasetSettings(path=str(path), **kw)


def test_extract_prompt():
    assert extract_prompt("hi") == "hi"
    assert extract_prompt("  ") is None
    assert extract_prompt(None) is None
    assert extract_prompt(["first", "second"]) == "first"
    assert extract_prompt(["first", "second"], 1) == "second"
    assert extract_prompt([], 0) is None
    assert extract_prompt([{"role": "user", "content": "hello"}]) == "hello"
    assert extract_prompt(3) is None


def test_jsonl_detects_prompt_field_and_counts_skipped_rows(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": ""}, {"prompt": None}, {"prompt": "b"}])
    ps = load_prompts(ds(f))
    assert ps.prompts == ["a", "b"]
    assert ps.field == "prompt" and ps.skipped == 2 and ps.rows_read == 4
    assert "skipped 2 of 4" in ps.note()


def test_num_samples_stops_early(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"question": f"q{i}"} for i in range(10)])
    ps = load_prompts(ds(f), num_samples=3)
    assert ps.prompts == ["q0", "q1", "q2"] and ps.field == "question" and ps.rows_read == 3


def test_explicit_field_with_index(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"turns": ["one", "two"], "text": "t"}])
    assert load_prompts(ds(f, prompt_field="turns[1]")).prompts == ["two"]
    assert load_prompts(ds(f, prompt_field="text")).prompts == ["t"]
    # detection prefers turns over text, and takes turns[0]
    assert load_prompts(ds(f)).prompts == ["one"]


def test_bad_field_names_the_field_and_lists_columns(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(SettingsError) as e:
        load_prompts(ds(f, prompt_field="nope"))
    msg = str(e.value)
    assert "--prompt-field" in msg and "'nope'" in msg and "question" in msg and "answer" in msg
    assert "\n" not in msg


def test_undetectable_field_asks_for_prompt_field(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"body": "x"}])
    with pytest.raises(SettingsError, match="--prompt-field"):
        load_prompts(ds(f))


def test_txt_csv_json_parquet(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\n", encoding="utf-8")
    ps = load_prompts(ds(txt))
    assert ps.prompts == ["first prompt", "second prompt"] and ps.field == "text" and ps.skipped == 1

    csv = tmp_path / "p.csv"
    csv.write_text("id,instruction\n1,do this\n2,do that\n", encoding="utf-8")
    assert load_prompts(ds(csv)).prompts == ["do this", "do that"]

    js = tmp_path / "p.json"
    js.write_text(json.dumps([{"prompt": "x"}, {"prompt": "y"}]), encoding="utf-8")
    assert load_prompts(ds(js)).prompts == ["x", "y"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["p1", "p2"]}), tmp_path / "p.parquet")
    assert load_prompts(ds(tmp_path / "p.parquet")).prompts == ["p1", "p2"]


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(SettingsError, match="no such file"):
        load_prompts(ds(tmp_path / "missing.jsonl"))
    with pytest.raises(SettingsError, match="no such file"):
        load_prompts(ds("./nowhere/prompts"))
    odd = tmp_path / "p.xml"
    odd.write_text("<a/>", encoding="utf-8")
    with pytest.raises(SettingsError, match="unsupported file type"):
        load_prompts(ds(odd))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{not json\n', encoding="utf-8")
    with pytest.raises(SettingsError, match="cannot read"):
        load_prompts(ds(bad))


def test_builtin_prompts_when_no_dataset():
    ps = load_prompts(DatasetSettings())
    assert ps.prompts == list(BUILTIN_PROMPTS) and ps.source == "built-in"
    assert len(load_prompts(DatasetSettings(), num_samples=2).prompts) == 2
    assert len(load_prompts(DatasetSettings(), num_samples=len(BUILTIN_PROMPTS) + 3).prompts) == len(BUILTIN_PROMPTS) + 3


def test_offline_hub_dataset_is_a_data_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr("specdecode.data._hub_reachable", lambda timeout=5.0: True)  # no socket in the test
    with pytest.raises(DataError) as e:
        load_prompts(DatasetSettings(path="openai/gsm8k", name="main"))
    msg = str(e.value)
    assert "'openai/gsm8k'" in msg and "local file" in msg and "\n" not in msg


def test_offline_hub_dataset_cli_exit_1(tmp_path):
    """The real thing: HF_HUB_OFFLINE=1 and an uncached dataset id -> one line, exit 1."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = "from specdecode.cli.app import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "bench", "--target", str(tmp_path / "no-model"),
         "--dataset", "someone/uncached-prompts", "--format", "json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "someone/uncached-prompts" in lines[0] and "local file" in lines[0]
    assert "Traceback" not in proc.stderr


@needs_shared
def test_shared_gsm8k_question_field():
    ps = load_prompts(ds(SHARED / "gsm8k" / "test.jsonl"), num_samples=5)
    assert ps.field == "question" and len(ps.prompts) == 5 and ps.prompts[0].startswith("Janet")


@needs_shared
@pytest.mark.parametrize("name", ["mt_bench", "spec_bench"])
def test_shared_turns_field(name):
    ps = load_prompts(ds(SHARED / name / "question.jsonl"), num_samples=4)
    assert ps.field == "turns" and len(ps.prompts) == 4 and all(p.strip() for p in ps.prompts)
    rows = [json.loads(l) for l in (SHARED / name / "question.jsonl").read_text().splitlines()[:4]]
    assert ps.prompts == [r["turns"][0] for r in rows]
    second = load_prompts(ds(SHARED / name / "question.jsonl", prompt_field="turns[1]"), num_samples=1)
    assert second.prompts == [rows[0]["turns"][1]]
