"""bench, compare and inspect end to end on tiny local models and a local JSONL dataset.

Through Typer's CliRunner (or `main()`, which rewrites `--k 1 3` sweeps): exit codes, the
JSON contracts of DESIGN.md, the results files, Ctrl-C (exit 130 with what was measured
kept), and one-line errors for bad input. Timing is never asserted; greedy float32 output
must match the baseline exactly.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from typer.testing import CliRunner

from fixtures import PROMPTS, build_model, build_tokenizer
from specdecode.cli.app import app, main

K = 3
MAX_NEW = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    barriers make each step 10-100x slower at random: keep these tests fast and steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = [{"prompt": PROMPTS[0]}, {"prompt": ""}, {"prompt": PROMPTS[7]}, {"prompt": PROMPTS[2]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def models(pair, k=K) -> list[str]:
    return ["--target", str(pair.target), "--draft", str(pair.draft), "--device", "cpu", "--dtype", "float32",
            "--no-chat", "--max-new-tokens", str(MAX_NEW), "--k", str(k)]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run_main(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def one_line_error(result) -> str:
    """The single `error:` line (notes such as skipped rows may precede it); no traceback."""
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ---- bench -------------------------------------------------------------------------------


def test_bench_overlap_is_lossless_and_predicts_overlapped_rounds(llama_pair, prompts_file, tmp_path):
    """`bench --overlap`: the same tokens as the baseline, and the prediction priced for overlapped
    rounds (the longer of the verify and k + 1 draft steps, metrics.overlapped_speedup)."""
    from specdecode import metrics

    res = cli("bench", "--target", llama_pair.target, "--draft", llama_pair.draft, "--k", K, "--overlap",
              "--max-new-tokens", MAX_NEW, "--num-samples", 3, "--device", "cpu", "--dtype", "float32", "--no-chat",
              "--dataset", prompts_file, "--format", "json", "--results-dir", tmp_path / "results")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["settings"]["overlap"] is True
    assert report["output_match_rate"] == 1.0
    pred = report["prediction"]
    assert pred["model"].startswith("overlapped rounds")
    assert pred["tokens_per_round"] == pytest.approx(metrics.overlapped_tokens_per_round(pred["alpha"], K))
    assert pred["speedup"] == pytest.approx(metrics.overlapped_speedup(pred["alpha"], K, pred["c"]))
    # the table names the model that predicted: overlapped rounds, not Leviathan et al.'s plain ones
    res = cli("bench", "--target", llama_pair.target, "--draft", llama_pair.draft, "--k", K, "--overlap",
              "--max-new-tokens", MAX_NEW, "--num-samples", 2, "--device", "cpu", "--dtype", "float32", "--no-chat",
              "--dataset", prompts_file, "--results-dir", tmp_path / "results")
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stdout.splitlines() if x.startswith("predicted speedup"))
    assert "(overlapped rounds, perfect overlap: α=" in line and "Leviathan" not in line
    assert re.search(r"warm-up, untimed: baseline \d+\.\d s, speculative \d+\.\d s", res.stdout)


def test_bench_json_contract_greedy_ragged_batch(llama_pair, prompts_file, tmp_path):
    # the seed's flat YAML, with summary_file_name naming the results files
    config = tmp_path / "seed.yaml"
    config.write_text(
        f"target_model: {llama_pair.target}\ndraft_model: {llama_pair.draft}\nk: {K}\n"
        f"max_new_tokens: {MAX_NEW}\nnum_samples: 3\nbatch_size: 2\ndevice: cpu\nquantized: false\n"
        f"dataset: {{path: {prompts_file}}}\nsummary_file_name: run1.json\n",
        encoding="utf-8",
    )
    res = cli("bench", "--config", config, "--dtype", "float32", "--no-chat", "--format", "json",
              "--results-dir", tmp_path / "results")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    for key in ("settings", "baseline", "speculative", "speedup", "acceptance_rate", "block_efficiency",
                "output_match_rate", "samples", "acceptance_per_position", "predicted_speedup", "prediction"):
        assert key in report, key
    for run in ("baseline", "speculative"):
        for key in ("time_s", "tokens", "tokens_per_s", "ms_per_token", "latency_s", "ttft_s"):
            assert key in report[run], (run, key)
        assert set(report[run]["latency_s"]) == {"mean", "p50", "p90"}
        assert report[run]["time_s"] > 0 and report[run]["ttft_s"]["mean"] > 0
    assert report["settings"]["k"] == K and report["settings"]["batch_size"] == 2
    assert report["interrupted"] is False and report["num_samples"] == 3
    assert report["data"]["skipped"] == 1  # the empty prompt
    # how the steps ran (CPU: fused layers, no compile, no graphs)
    assert report["decode_steps"] == {"target": "fused layers, eager", "draft": "fused layers, eager"}
    # the untimed warm-up of each pass, reported apart from the timings
    assert set(report["warm_up_s"]) == {"baseline", "speculative"}
    assert all(v > 0 for v in report["warm_up_s"].values())
    # lossless: greedy float32 speculative output == the baseline's
    assert report["output_match_rate"] == 1.0
    assert report["baseline"]["tokens"] == report["speculative"]["tokens"] == 3 * MAX_NEW
    assert 0.0 <= report["acceptance_rate"] <= 1.0
    assert 1.0 <= report["block_efficiency"] <= K + 1
    assert len(report["acceptance_per_position"]) == K
    assert all(0.0 <= a <= 1.0 for a in report["acceptance_per_position"])
    assert report["speedup"] > 0 and report["predicted_speedup"] > 0
    pred = report["prediction"]
    assert pred["c_method"] == "measured" and pred["c"] > 0 and pred["k"] == K
    assert 0.0 <= pred["alpha"] <= 1.0
    # the verify step measured at its own length, and the prediction at the round's measured costs
    rc = pred["round_costs"]
    assert rc["verify_tokens"] == K + 1 and rc["verify_step_ms"] > 0
    assert rc["verify_over_target_step"] == pytest.approx(rc["verify_step_ms"] / pred["target_step_ms"])
    assert rc["speedup_at_round_costs"] == pytest.approx(
        pred["tokens_per_round"] / (K * pred["c"] + rc["verify_over_target_step"]))
    assert rc["realised_at_round_costs"] == pytest.approx(report["speedup"] / rc["speedup_at_round_costs"])
    assert len(report["samples"]) == 3 and all(s["match"] is True for s in report["samples"])
    assert report["samples"][1]["prompt"] == PROMPTS[7]
    # results files: per-sample JSONL and the summary, named by summary_file_name
    lines = (tmp_path / "results" / "run1.jsonl").read_text().splitlines()
    assert [json.loads(l)["index"] for l in lines] == [0, 1, 2]
    saved = json.loads((tmp_path / "results" / "run1.json").read_text())
    assert saved["output_match_rate"] == 1.0 and len(saved["samples"]) == 3


def test_bench_table_under_sampling_and_output_file(llama_pair, prompts_file, tmp_path):
    out = tmp_path / "report.json"
    res = cli("bench", *models(llama_pair), "--dataset", prompts_file, "--num-samples", 2, "--temperature", 0.8,
              "--seed", 1, "--no-warmup", "--results-dir", tmp_path, "--output", out)
    assert res.exit_code == 0, res.output
    for text in ("Baseline Run", "Speculative Run", "Speedup", "Acceptance rate", "Block efficiency",
                 "n/a (sampling)", "predicted speedup"):
        assert text in res.stdout, text
    assert "warm-up, untimed" not in res.stdout  # --no-warmup: nothing to report
    report = json.loads(out.read_text())
    assert report["output_match_rate"] is None and report["settings"]["temperature"] == 0.8
    assert report["warm_up_s"] == {"baseline": 0.0, "speculative": 0.0}
    assert all(s["match"] is None for s in report["samples"])


def test_bench_csv(llama_pair, prompts_file, tmp_path):
    res = cli("bench", *models(llama_pair), "--dataset", prompts_file, "--num-samples", 1, "--no-warmup",
              "--format", "csv", "--results-dir", tmp_path)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 1
    assert float(rows[0]["output_match_rate"]) == 1.0
    assert float(rows[0]["baseline_tokens"]) == MAX_NEW
    assert 0.0 <= float(rows[0]["acceptance_rate"]) <= 1.0


def test_bench_ctrl_c_keeps_measured_samples(llama_pair, prompts_file, tmp_path, monkeypatch):
    from specdecode.decoding.engine import SpeculativeEngine

    original = SpeculativeEngine.stream
    calls = {"n": 0}

    def stream(self, prompts):
        # batch size 1, no warm-up: calls 2i+1 / 2i+2 are sample i's baseline / speculative runs
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        yield from original(self, prompts)

    monkeypatch.setattr(SpeculativeEngine, "stream", stream)
    res = cli("bench", *models(llama_pair), "--dataset", prompts_file, "--no-warmup", "--format", "json",
              "--results-dir", tmp_path, "--output", tmp_path / "partial.json")
    assert res.exit_code == 130, res.output
    report = json.loads(res.stdout)
    assert report["interrupted"] is True and report["num_samples"] == 2 and report["requested_samples"] == 3
    assert report["output_match_rate"] == 1.0
    samples = sorted(tmp_path.glob("bench-*.jsonl"))
    assert len(samples) == 1 and len(samples[0].read_text().splitlines()) == 2
    assert json.loads((tmp_path / "partial.json").read_text())["interrupted"] is True
    assert "interrupted" in res.stderr


# ---- compare -----------------------------------------------------------------------------


def test_compare_sweep_json_rows(llama_pair, prompts_file, capsys):
    code, out, err = run_main(
        capsys, "compare", *models(llama_pair)[:-2], "--k", 1, 3, "--drafter", "model", "ngram",
        "--dataset", prompts_file, "--num-samples", 2, "--no-warmup", "--format", "json",
    )
    assert code == 0, err
    report = json.loads(out)
    rows = report["rows"]
    assert len(rows) == 4
    assert {(r["drafter"], r["k"]) for r in rows} == {("model", 1), ("model", 3), ("ngram", 1), ("ngram", 3)}
    for r in rows:
        for key in ("k", "speedup", "acceptance_rate", "block_efficiency", "tokens_per_s", "output_match_rate"):
            assert key in r
        assert r["output_match_rate"] == 1.0
        assert r["acceptance_rate"] is None or 0.0 <= r["acceptance_rate"] <= 1.0
    # one baseline (batch 1, greedy), reused by every row
    assert len({r["baseline_time_s"] for r in rows}) == 1
    assert sum(r["best"] for r in rows) == 1 and rows[report["best"]]["best"]
    assert set(report["swept"]) == {"k", "drafter"}


def test_compare_repeated_option_table(llama_pair, prompts_file):
    res = cli("compare", *models(llama_pair)[:-2], "--k", 1, "--k", 2, "--dataset", prompts_file,
              "--num-samples", 1, "--no-warmup")
    assert res.exit_code == 0, res.output
    assert "best (*)" in res.stdout and "speedup" in res.stdout
    assert "overlapped rounds" not in res.stdout
    res = cli("compare", *models(llama_pair)[:-2], "--k", 1, "--k", 2, "--overlap", "--dataset", prompts_file,
              "--num-samples", 1, "--no-warmup")
    assert res.exit_code == 0, res.output
    assert "swept k, overlapped rounds" in res.stdout


def test_compare_k_zero_is_exit_2(llama_pair, capsys):
    code, out, err = run_main(capsys, "compare", *models(llama_pair)[:-2], "--k", 2, 0)
    assert code == 2 and "--k" in err and len(err.strip().splitlines()) == 1


def test_compare_plot_without_matplotlib(llama_pair, prompts_file, tmp_path):
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed")
    res = cli("compare", *models(llama_pair), "--dataset", prompts_file, "--plot", tmp_path / "p.png")
    assert res.exit_code == 1
    assert "matplotlib" in one_line_error(res)


def test_plot_compare_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from specdecode.bench.report import plot_compare

    rows = [
        {"k": k, "drafter": d, "batch_size": 1, "temperature": 0.0, "speedup": 1.0 + k / 10,
         "predicted_speedup": 1.1 + k / 10, "acceptance_rate": 0.5}
        for d in ("model", "ngram") for k in (1, 2, 3)
    ]
    for swept in (["k", "drafter"], ["drafter"]):
        path = plot_compare({"rows": rows, "swept": swept, "num_samples": 2}, tmp_path / f"{len(swept)}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- inspect -----------------------------------------------------------------------------


def test_inspect_json(llama_pair):
    res = cli("inspect", *models(llama_pair), "--format", "json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    t, d = report["target"], report["draft"]
    for m in (t, d):
        for key in ("params", "vocab_size", "num_layers", "hidden_size", "dtype", "memory_bytes", "kv_bytes_per_token",
                    "architecture"):
            assert key in m, key
    assert (t["num_layers"], d["num_layers"]) == (4, 1)
    assert t["params"] > d["params"] > 0 and t["architecture"] == "LlamaForCausalLM"
    assert t["vocab_size"] == 112 and t["memory_bytes"] == 4 * t["params"]
    # KV cache: keys and values, per layer, kv heads x head dim, float32
    assert t["kv_bytes_per_token"] == 2 * 4 * t["num_key_value_heads"] * t["head_dim"] * 4
    assert report["compatible"] is True and isinstance(report["warnings"], list)
    pred = report["predicted_speedup"]
    assert 0 < pred["c"] < 1 and len(pred["speedup"]) == 5 and all(len(r) == 8 for r in pred["speedup"])
    assert report["measure"] is None


def test_inspect_table_and_measure(llama_pair, prompts_file):
    res = cli("inspect", *models(llama_pair), "--measure", 2, "--dataset", prompts_file)
    assert res.exit_code == 0, res.output
    for text in ("parameters", "KV cache per token", "compatible", "predicted speedup", "token trace",
                 "measured step costs", "target steps"):
        assert text in res.stdout, text
    res = cli("inspect", *models(llama_pair), "--measure", 2, "--dataset", prompts_file, "--format", "json")
    m = json.loads(res.stdout)["measure"]
    assert m["samples"] == 2 and 0.0 <= m["acceptance_rate"] <= 1.0 and len(m["acceptance_per_position"]) == K
    assert m["trace"]["rounds"] and {"accepted", "rejected", "token"} <= set(m["trace"]["rounds"][0])
    # what a round costs here, timed as bench times it, and what that and the measured α predict
    costs = m["step_costs"]
    assert costs["method"] == "measured" and costs["target_step_ms"] > 0 and costs["draft_step_ms"] > 0
    assert costs["c"] == pytest.approx(costs["draft_step_ms"] / costs["target_step_ms"])
    assert costs["verify_tokens"] == K + 1 and costs["verify_step_ms"] > 0
    assert costs["verify_over_target_step"] == pytest.approx(costs["verify_step_ms"] / costs["target_step_ms"])
    from specdecode import metrics

    assert costs["speedup_at_round_costs"] == pytest.approx(
        metrics.speedup_at_round_costs(m["alpha"], K, costs["c"], costs["verify_over_target_step"]))


def test_inspect_predicts_overlapped_rounds_with_overlap(llama_pair, prompts_file):
    """inspect --overlap prices the rounds bench would run: overlapped ones (perfect overlap: a
    round costs the longer of the verify and k + 1 draft steps), its best k and tokens per round
    theirs; without --overlap, Leviathan et al.'s plain rounds."""
    from specdecode import metrics

    plain = json.loads(cli("inspect", *models(llama_pair), "--format", "json").stdout)["predicted_speedup"]
    res = cli("inspect", *models(llama_pair), "--overlap", "--k", 2, "--format", "json")
    assert res.exit_code == 0, res.output
    pred = json.loads(res.stdout)["predicted_speedup"]
    assert plain["model"] == "Leviathan et al." and pred["model"] == "overlapped rounds, perfect overlap"
    c = pred["c"]
    assert c == plain["c"]
    for i, a in enumerate(pred["alpha"]):
        assert pred["speedup"][i] == pytest.approx([metrics.overlapped_speedup(a, k, c) for k in pred["k"]])
        assert plain["speedup"][i] == pytest.approx([metrics.predicted_speedup(a, k, c) for k in plain["k"]])
        assert pred["tokens_per_round"][i] == pytest.approx([metrics.overlapped_tokens_per_round(a, k) for k in pred["k"]])
        best = pred["best_k"][str(a)]
        assert pred["speedup"][i][pred["k"].index(best)] == max(pred["speedup"][i])
    assert pred["speedup"] != plain["speedup"]
    table = cli("inspect", *models(llama_pair), "--overlap", "--k", 2)
    assert "predicted speedup (overlapped rounds, perfect overlap)" in table.stdout
    m = json.loads(cli("inspect", *models(llama_pair), "--overlap", "--k", 2, "--measure", 2, "--dataset",
                       prompts_file, "--format", "json").stdout)["measure"]
    assert m["prediction_model"] == "overlapped rounds, perfect overlap"
    assert m["alpha"] is not None
    assert m["predicted_speedup"]["3"] == pytest.approx(metrics.overlapped_speedup(m["alpha"], 3, c))
    costs = m["step_costs"]
    assert costs["speedup_at_round_costs"] == pytest.approx(
        metrics.overlapped_speedup(m["alpha"], 2, costs["c"], costs["verify_over_target_step"]))


def test_inspect_other_drafters(llama_pair):
    res = cli("inspect", "--target", llama_pair.target, "--drafter", "ngram", "--format", "json")
    report = json.loads(res.stdout)
    assert res.exit_code == 0 and report["draft"] is None and report["compatible"] is True
    assert report["cost_ratio"]["c"] == 0.0 and "lookup" in report["drafter_note"]
    res = cli("inspect", "--target", llama_pair.target, "--drafter", "early-exit", "--exit-layer", 2, "--format", "json")
    report = json.loads(res.stdout)
    assert res.exit_code == 0 and report["draft"]["num_layers"] == 2 and report["draft"]["memory_bytes"] == 0
    assert 0 < report["cost_ratio"]["c"] < 1
    res = cli("inspect", "--target", llama_pair.target, "--drafter", "none", "--format", "json")
    report = json.loads(res.stdout)
    assert res.exit_code == 0 and report["draft"] is None and report["predicted_speedup"] is None
    res = cli("inspect", "--target", llama_pair.target, "--drafter", "early-exit", "--exit-layer", 4)
    assert res.exit_code == 2 and "--exit-layer" in one_line_error(res)


def test_inspect_incompatible_tokenizers(llama_pair, tmp_path):
    words = ["zebra", "yak", "xylophone", "walrus"] + [f"w{i}" for i in range(60)]
    build_tokenizer(tmp_path / "tok", vocab_words=words)
    other = build_model("llama", tmp_path / "other", vocab_size=112, num_layers=1, seed=5, tokenizer_dir=tmp_path / "tok")
    res = cli("inspect", "--target", llama_pair.target, "--draft", other, "--format", "json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["compatible"] is False and report["reasons"]


# ---- bad input: one line, exit 2 (usage) or 1 (runtime), no traceback ----------------------


@pytest.mark.parametrize("command", ["bench", "compare", "inspect"])
def test_unknown_preset_is_exit_2(command):
    res = cli(command, "--preset", "no-such-preset")
    assert res.exit_code == 2
    assert "no-such-preset" in one_line_error(res)


def test_bad_input_exit_codes(llama_pair, prompts_file, tmp_path):
    base = models(llama_pair)
    res = cli("bench", *base, "--dataset", tmp_path / "missing.jsonl")
    assert res.exit_code == 2 and "missing.jsonl" in one_line_error(res)

    res = cli("bench", *base, "--dataset", prompts_file, "--prompt-field", "nope")
    line = one_line_error(res)
    assert res.exit_code == 2 and "'nope'" in line and "prompt" in line

    res = cli("bench", *base[:-2], "--k", 0)
    assert res.exit_code == 2 and "--k" in one_line_error(res)

    bad = tmp_path / "bad.yaml"
    bad.write_text("k: 3\ntarget_model: [unclosed\n", encoding="utf-8")
    res = cli("bench", "--config", bad)
    assert res.exit_code == 2 and "bad.yaml" in one_line_error(res)

    res = cli("bench", "--target", tmp_path / "no-model", "--drafter", "none", "--dataset", prompts_file)
    assert res.exit_code == 1 and "no-model" in one_line_error(res)


def test_dry_run_with_seed_yaml(tmp_path):
    config = tmp_path / "seed.yaml"
    config.write_text(
        "draft_model: google/gemma-3-270m-it\ntarget_model: google/gemma-3-4b-it\nk: 5\nmax_new_tokens: 256\n"
        "max_length: 512\nnum_samples: 100\ndataset: {path: openai/gsm8k, name: main}\nbatch_size: 4\n"
        "device: auto\nquantized: false\nsummary_file_name: summary.json\n",
        encoding="utf-8",
    )
    for command in ("bench", "compare", "inspect"):
        res = cli(command, "--config", config, "--dry-run", "--format", "json")
        assert res.exit_code == 0, res.output
        s = json.loads(res.stdout)
        assert s["target"] == "google/gemma-3-4b-it" and s["k"] == 5 and s["dataset"]["name"] == "main"


def test_bench_with_a_sibling_is_lossless_and_says_so(llama_pair, prompts_file, tmp_path):
    """`bench --sibling`: the baseline is built from the same settings (nothing to branch there),
    the speculative output equals it, and the decode-steps line names the sibling."""
    res = cli("bench", *models(llama_pair), "--dataset", prompts_file, "--num-samples", 2, "--no-warmup",
              "--sibling", "--format", "json", "--results-dir", tmp_path)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["settings"]["sibling"] is True and report["output_match_rate"] == 1.0
    assert report["decode_steps"]["target"].endswith("(--sibling)")
    res = cli("bench", *models(llama_pair), "--dataset", prompts_file, "--sibling", "--temperature", 0.5, "--dry-run")
    assert res.exit_code == 2 and "--temperature 0" in res.output
