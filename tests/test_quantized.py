"""bitsandbytes-quantized models and the decode path generation picks for them (issue 17, the wiring).

* `resolve_execution`: a model with NF4 `Linear4bit` projections (what `--quantized` loads, or a
  pre-quantized NF4 checkpoint) runs on the fused layers by default (`Execution.nf4`), with the same
  settings semantics as floating-point weights; 8-bit (LLM.int8) and 4-bit FP4 weights keep the
  transformers modules with a one-line reason, and `--fused` / `--kernels` on them is a
  SettingsError naming why; a plain model is unchanged.
* end to end on the CPU: `--quantized` (bitsandbytes NF4, double quantization, float32 compute)
  target and draft run through the fused NF4 layers, and the greedy output equals the transformers
  NF4 model's own greedy generation (the same quantized weights); bench's decode_steps and table
  say so.
* `inspect --quantized`: the decode step ("fused NF4"), the bytes a step reads with the NF4
  projections at nf4.nf4_nbytes (head and embeddings in the dtype), and c from those bytes.

Needs bitsandbytes (>= 0.46 quantizes on the CPU): skipped without it.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fixtures import PROMPTS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason="bitsandbytes is not installed")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # resolve_execution only reads the device's type
_PROJ = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
         ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread (a busy 2-core machine makes OpenMP erratic)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny():
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


def _quantize(model, kind="nf4"):
    """Every decoder projection replaced by a bitsandbytes layer quantized on the CPU: Linear4bit
    ("nf4", "fp4"; double quantization) or Linear8bitLt ("int8")."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for part, attr in _PROJ:
            parent = getattr(layer, part)
            lin = getattr(parent, attr)
            w = lin.weight.detach().clone()
            if kind == "int8":
                q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False)
                q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
            else:
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.float32,
                                      compress_statistics=True, quant_type=kind)
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type=kind)
            setattr(parent, attr, q.to("cpu"))  # quantizes
    return model


def _settings(**kw):
    from specdecode.settings import Settings

    return Settings(target="t", drafter="none", **kw)


# ------------------------------------------------------------------------------ resolve_execution

def test_nf4_weights_run_on_the_fused_layers_by_default():
    from specdecode.accel.execution import quantized_weights, resolve_execution

    model = _quantize(_tiny())
    assert quantized_weights(model) == (True, None)
    ex = resolve_execution(_settings(), model, CPU)
    assert ex.fused and ex.nf4 and not ex.graphs and not ex.compile and ex.kernels is False
    assert any(r.startswith("fused NF4 layers: ") and "dequantized one layer at a time" in r for r in ex.reasons)
    # CUDA: the bf16 defaults (compiled, captured, the runner's kernels default), on NF4 weights
    ex = resolve_execution(_settings(), model, CUDA)
    assert (ex.fused, ex.nf4, ex.compile, ex.graphs, ex.kernels) == (True, True, True, True, None)
    assert any(r.startswith("fused NF4 layers: ") and "on the NF4 kernels in steps of <= 16 rows" in r
               for r in ex.reasons)
    ex = resolve_execution(_settings(kernels=False), model, CUDA)
    assert ex.nf4 and any("dequantized one layer at a time (--no-kernels)" in r for r in ex.reasons)
    # the same settings semantics: --fused asks for it (no reason needed), --no-fused turns it off
    ex = resolve_execution(_settings(fused=True, kernels=True), model, CUDA)
    assert ex.fused and ex.nf4 and ex.kernels is True and not any(r.startswith("fused NF4") for r in ex.reasons)
    off = resolve_execution(_settings(fused=False), model, CUDA)
    assert not off.fused and not off.nf4 and not off.compile
    assert off.key() != ex.key()


@pytest.mark.parametrize("kind, why", [("int8", "8-bit weights (LLM.int8) run on bitsandbytes' own layers"),
                                       ("fp4", "4-bit FP4 weights run on bitsandbytes' own layers")])
def test_other_bitsandbytes_weights_keep_the_transformers_modules(kind, why):
    from specdecode.accel.execution import quantized_weights, resolve_execution
    from specdecode.settings import SettingsError

    model = _quantize(_tiny(), kind)
    assert quantized_weights(model)[0] is False and why in quantized_weights(model)[1]
    for device in (CPU, CUDA):
        ex = resolve_execution(_settings(), model, device)
        assert not ex.fused and not ex.nf4 and not ex.compile
        assert f"transformers modules: {why}" in "\n".join(ex.reasons)
    with pytest.raises(SettingsError) as e:
        resolve_execution(_settings(fused=True), model, CPU)
    assert str(e.value).startswith(f"--fused: {why}") and "\n" not in str(e.value)
    with pytest.raises(SettingsError, match=r"^--kernels: the kernels run the fused layers, and .*own layers"):
        resolve_execution(_settings(kernels=True), model, CUDA)


def test_a_plain_model_resolves_as_before():
    from specdecode.accel.execution import Execution, quantized_weights, resolve_execution

    model = _tiny()
    assert quantized_weights(model) == (False, None)
    ex = resolve_execution(_settings(), model, CUDA)
    assert ex == Execution(graphs=True, fused=True, compile=True, kernels=None, nf4=False, reasons=())
    assert resolve_execution(_settings(), model, CPU).key() == (False, True, False, False, False)


def test_an_nf4_model_the_fused_layers_cannot_take_says_why():
    """NF4 weights in a layout the fused NF4 step refuses (the LM head quantized too): the
    transformers modules, with fused_support's reason."""
    import bitsandbytes as bnb

    from specdecode.accel.execution import resolve_execution
    from specdecode.settings import SettingsError

    model = _quantize(_tiny())
    head = model.lm_head
    q = bnb.nn.Linear4bit(head.in_features, head.out_features, bias=False, compute_dtype=torch.float32,
                          quant_type="nf4")
    q.weight = bnb.nn.Params4bit(head.weight.detach().clone(), requires_grad=False, quant_type="nf4")
    model.lm_head = q.to("cpu")
    ex = resolve_execution(_settings(), model, CPU)
    assert not ex.fused and not ex.nf4 and any(r.startswith("transformers modules: ") for r in ex.reasons)
    with pytest.raises(SettingsError, match="^--fused: "):
        resolve_execution(_settings(fused=True), model, CPU)


# ------------------------------------------------------------------------------ end to end

def _nf4_greedy(model_dir, prompts, max_new_tokens):
    """transformers' own greedy generation on the model bitsandbytes quantizes as --quantized does
    (NF4, double quantization, float32 compute on the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=config,
                                                 device_map={"": "cpu"}).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=True, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=0)
        new = gen[0, ids.shape[1]:].tolist()
        out.append(new[: new.index(2) + 1] if 2 in new else new)  # up to and with EOS
    return out


def test_quantized_pair_decodes_on_the_fused_nf4_layers_and_matches_transformers(llama_pair):
    from specdecode.api import SpeculativeDecoder
    from specdecode.bench.runner import decode_steps
    from specdecode.settings import Settings

    prompts = [PROMPTS[0], PROMPTS[7], PROMPTS[2]]
    s = Settings(target=str(llama_pair.target), draft=str(llama_pair.draft), device="cpu", dtype="float32",
                 chat=False, quantized=True, k=3, batch_size=3, max_new_tokens=16)
    dec = SpeculativeDecoder.from_settings(s)
    for loaded in (dec.target, dec.draft):
        ex = dec.execution(loaded)
        assert ex.fused and ex.nf4
        runner = dec.runner(loaded)
        assert runner.fused is not None and runner.fused.nf4
        assert runner.describe() == "fused layers, NF4 weights dequantized one layer at a time, eager"
    expected = _nf4_greedy(llama_pair.target, prompts, 16)
    assert [r.token_ids for r in dec.generate(prompts)] == expected
    # self-speculation on the same NF4 layers (the view shares the target's Linear4bit modules)
    early = dec.with_settings(drafter="early-exit", exit_layer=2)
    view, runner = early.draft_model()
    assert early.execution(view).nf4 and runner.fused.nf4 and len(runner.fused.weights) == 2
    assert [r.token_ids for r in early.generate(prompts)] == expected
    # bench reports the path (its JSON's decode_steps; test_bench_table_names_the_decode_path: its table)
    steps = decode_steps(dec)
    assert set(steps) == {"target", "draft"} and all("NF4" in v for v in steps.values())


def test_no_quantize_draft_keeps_the_draft_in_the_compute_dtype(llama_pair):
    """--quantized --no-quantize-draft: the target in NF4, the draft as it is (the draft's NF4
    steps cost more than its bf16 ones: stop 29's real pair, 0.90 against 0.55 ms); the output is
    still the NF4 target's own; a note where the flag has nothing to act on."""
    from specdecode.api import SpeculativeDecoder
    from specdecode.bench.runner import decode_steps
    from specdecode.inspect import inspect_pair
    from specdecode.settings import Settings

    prompts = [PROMPTS[0], PROMPTS[7]]
    s = Settings(target=str(llama_pair.target), draft=str(llama_pair.draft), device="cpu", dtype="float32",
                 chat=False, quantized=True, quantize_draft=False, k=3, batch_size=2, max_new_tokens=12)
    dec = SpeculativeDecoder.from_settings(s)
    assert dec.execution(dec.target).nf4 and not dec.execution(dec.draft).nf4
    steps = decode_steps(dec)
    assert "NF4" in steps["target"] and "NF4" not in steps["draft"]
    assert [r.token_ids for r in dec.generate(prompts)] == _nf4_greedy(llama_pair.target, prompts, 12)
    assert not any("--no-quantize-draft" in n for n in dec.notes)
    assert any("--no-quantize-draft applies to a draft model" in n for n in dec.with_settings(drafter="ngram").notes)
    assert any("applies with --quantized" in n for n in dec.with_settings(quantized=False).notes)
    report = inspect_pair(s)
    assert "NF4" in report["target"]["dtype"] and "NF4" not in report["draft"]["dtype"]


def test_bench_table_names_the_decode_path():
    """render_bench prints each role's decode path (ModelRunner.describe()) under the table."""
    from io import StringIO

    from rich.console import Console

    from specdecode.cli.tables import render_bench

    run = {"time_s": 1.0, "tokens": 8, "tokens_per_s": 8.0, "ms_per_token": 125.0, "rounds": 4,
           "latency_s": {"mean": 1.0, "p50": 1.0, "p90": 1.0}, "ttft_s": {"mean": 0.1}}
    report = {"settings": {"drafter": "model", "k": 3, "batch_size": 1, "temperature": 0}, "num_samples": 1,
              "requested_samples": 1, "interrupted": False, "baseline": run, "speculative": run, "speedup": 1.0,
              "acceptance_rate": 0.5, "block_efficiency": 2.0, "acceptance_per_position": [], "output_match_rate": 1.0,
              "prediction": None,
              "decode_steps": {"target": "fused layers, fused NF4 kernels (whole steps of <= 16 rows), compiled",
                               "draft": "transformers modules, eager"}}
    out = StringIO()
    render_bench(report, Console(file=out, width=200))
    text = out.getvalue()
    assert "target decode steps: fused layers, fused NF4 kernels (whole steps of <= 16 rows), compiled" in text
    assert "draft decode steps: transformers modules, eager" in text


# ------------------------------------------------------------------------------ inspect

def test_inspect_quantized_reports_the_nf4_path_and_the_bytes_a_step_reads(llama_pair):
    from transformers import AutoModelForCausalLM

    from specdecode.accel.nf4 import nf4_nbytes
    from specdecode.inspect import describe_model

    plain = describe_model(str(llama_pair.target), None, "bfloat16", False, False)
    quant = describe_model(str(llama_pair.target), None, "bfloat16", True, False)
    assert plain["decode_step"] == "fused" and quant["decode_step"] == "fused NF4"
    assert plain["step_bytes"] == 2 * plain["step_params"] == 2 * quant["step_params"]
    # the step's weights: each decoder nn.Linear as NF4 bytes, the LM head (untied here) in bf16;
    # the input embedding table is not read by a step (one row of it)
    model = AutoModelForCausalLM.from_pretrained(llama_pair.target)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is not emb.weight
    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    ids = {id(w) for w in linear}
    rest = [p for p in model.parameters() if id(p) not in ids and p is not emb.weight]
    assert quant["step_bytes"] == sum(nf4_nbytes(w.numel()) for w in linear) + 2 * sum(p.numel() for p in rest)
    assert quant["step_bytes"] < plain["step_bytes"]


def test_inspect_quantized_json_and_table(llama_pair):
    from typer.testing import CliRunner

    from specdecode.cli.app import app

    args = ["inspect", "--target", str(llama_pair.target), "--draft", str(llama_pair.draft), "--device", "cpu",
            "--dtype", "bfloat16", "--no-chat", "--quantized"]
    res = CliRunner().invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    t, d, cr = report["target"], report["draft"], report["cost_ratio"]
    assert t["decode_step"] == d["decode_step"] == "fused NF4"
    assert cr["source"] == "weight bytes" and cr["c"] == pytest.approx(d["step_bytes"] / t["step_bytes"])
    assert cr["c_params"] == pytest.approx(d["step_params"] / t["step_params"]) != cr["c"]
    assert report["predicted_speedup"]["c"] == cr["c"] and report["predicted_speedup"]["c_source"] == "weight bytes"
    # the NF4 verify's own cost, which the prediction leaves out, is said
    assert any(w.startswith("--quantized: the verify's k + 1 rows cost") for w in report["warnings"]), report["warnings"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())  # the table's title wraps at the runner's width
    for want in ("fused NF4 kernels", "weights read per step", "c = ", "from weight bytes; from parameters"):
        assert want in text, want
    assert "on the transformers modules" not in res.stdout
    # without --quantized: c from parameters, as before
    report = json.loads(CliRunner().invoke(app, [*args[:-1], "--format", "json"]).stdout)
    assert report["cost_ratio"]["source"] == "parameters" and report["target"]["decode_step"] == "fused"
    assert not any(w.startswith("--quantized") for w in report["warnings"])
    assert report["cost_ratio"]["c_bytes"] == pytest.approx(report["cost_ratio"]["c"])


@pytest.mark.slow
def test_quantized_pair_on_the_nf4_kernels_matches_transformers(llama_pair):
    """The kernels' path (what a captured CUDA step runs; here under Triton's interpreter, set on
    the decoder's runners as CUDA would resolve it): the same greedy tokens, and bench names it."""
    from specdecode.accel import nf4
    from specdecode.accel.runner import ModelRunner
    from specdecode.api import SpeculativeDecoder
    from specdecode.bench.runner import decode_steps
    from specdecode.settings import Settings

    if not nf4.AVAILABLE:
        pytest.skip("Triton is not installed")
    if not nf4._INTERPRETED:
        pytest.skip("the kernels on CPU tensors need Triton's interpreter (the CPU test run); on a GPU "
                    "tests/test_nf4.py runs them on the device")
    prompts = [PROMPTS[0]]
    s = Settings(target=str(llama_pair.target), draft=str(llama_pair.draft), device="cpu", dtype="float32",
                 chat=False, quantized=True, k=3, batch_size=1, max_new_tokens=6)
    dec = SpeculativeDecoder.from_settings(s)
    for loaded in (dec.target, dec.draft):
        ex = dec.execution(loaded)
        dec.set_runner(loaded, ModelRunner(loaded.model, fused=ex.fused, kernels=True, nf4=ex.nf4))
    assert [r.token_ids for r in dec.generate(prompts)] == _nf4_greedy(llama_pair.target, prompts, 6)
    steps = decode_steps(dec)
    assert all(v.startswith("fused layers, fused NF4 kernels (whole steps of <= 16 rows") for v in steps.values())
