"""The fused decode path (specdecode/accel/fused.py) computes what the transformers modules compute.

* logits of the fused step equal the transformers forward over the same cache, for Llama
  (llama3 rope scaling), Mistral (sliding window), Qwen2 (q/k/v biases), Qwen3 (q/k norms)
  and Gemma 3 (sliding + full layers with their own rope, four norms, final soft-capping):
  ragged per-row positions, steps of 1-4 tokens, rollback between steps; fp32 to 1e-5 and
  bf16 to a few ulps;
* prefill through the fused layers fills the cache as the transformers prefill does;
* q/k/v and gate/up are fused into views of one matrix each: no weight memory is added and
  the transformers modules still give the same logits;
* torch.compile traces each layer as one graph (fullgraph), one compile serving every layer;
* models the fused step cannot run are named with a reason and keep the transformers path;
  asking for it explicitly is a one-line settings error.
Greedy exactness of the whole engine on the fused path is covered by test_engine.py, which
runs on it by default; `fused=False` keeps the transformers path covered here.
"""

from __future__ import annotations

import pytest
import torch

from fixtures import PROMPTS, oracle_greedy
from helpers import record_step_widths
from specdecode.accel.runner import ModelRunner
from specdecode.decoding.step import UnsupportedModelError
from specdecode.accel.fused import fused_support

V = 120
COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def _config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**COMMON, rope_parameters={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0})
    if arch == "llama-dynamic-rope":
        return tf.LlamaConfig(**COMMON, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    if arch == "mistral":
        return tf.MistralConfig(**COMMON, sliding_window=8)
    if arch == "qwen2":
        return tf.Qwen2Config(**COMMON)
    if arch == "qwen3":
        return tf.Qwen3Config(**COMMON, head_dim=32)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**COMMON, head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
                                   layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                   final_logit_softcapping=30.0)
    if arch == "gemma3-softcap":
        return tf.Gemma3TextConfig(**COMMON, head_dim=32, attn_logit_softcapping=50.0)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4)
    raise ValueError(arch)


def _model(arch: str, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = _config(arch)
    cfg._attn_implementation = "eager" if "softcap" in arch else "sdpa"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
            elif "bias" in name:
                p.normal_(0.0, 0.1)
            elif p.dim() > 1:
                p.normal_(0.0, 0.1)
    return model.to(dtype)


def _run(runner: ModelRunner, fused_prefill: bool = True):
    """Prefill a ragged batch of 3, then steps of 1, 4, 3 and 1 tokens with rollbacks between them."""
    gen = torch.Generator().manual_seed(1)
    batch, prompt = 3, 20
    dev = runner.device
    x = torch.randint(4, V, (batch, prompt), generator=gen).to(dev)
    cache = runner.new_cache(batch, 64)
    first = runner.prefill(x, cache, attend_len=prompt, logits_to_keep=0)
    cache.set_positions(torch.tensor([20, 13, 7], device=dev))
    out = [first[:, :7]]  # positions every row holds
    for q in (1, 4, 3, 1):
        ids = torch.randint(4, V, (batch, q), generator=gen).to(dev)
        out.append(runner.forward(ids, cache, attend_len=40, logits_to_keep=0))
        cache.advance(torch.tensor([q, max(q - 1, 1), 1], device=dev))  # row 1 and 2 roll part of the step back
    return [o.float() for o in out]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma3"])
def test_fused_step_matches_transformers_fp32(arch):
    model = _model(arch)
    assert fused_support(model) is None
    reference = _run(ModelRunner(model, fused=False))
    fused = ModelRunner(model, fused=True)
    assert fused.fused is not None
    got = _run(fused)
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fused_step_matches_transformers_bf16(arch):
    model = _model(arch, torch.bfloat16)
    reference = _run(ModelRunner(model, fused=False))
    got = _run(ModelRunner(model, fused=True))
    for a, b in zip(reference, got):
        scale = a.abs().max().item()
        assert (a - b).abs().max().item() <= 0.02 * scale  # a few bf16 ulps of the largest logit


@pytest.mark.parametrize("how", ["sdpa", "matmul"])
def test_both_attention_forms_agree(how):
    model = _model("gemma3")
    reference = _run(ModelRunner(model, fused=False))
    got = _run(ModelRunner(model, fused=True, attention=how))
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_fusion_adds_no_weight_memory_and_keeps_the_modules_working():
    model = _model("qwen2")  # q/k/v biases are fused too
    x = torch.randint(4, V, (2, 9))
    before = model(x).logits
    n_before = sum(p.numel() for p in model.parameters())
    ModelRunner(model, fused=True)
    ModelRunner(model, fused=True)  # a second runner reuses the first fusion
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    fused_w = attn.q_proj._specdecode_fused[0]
    assert attn.q_proj.weight.data_ptr() == fused_w.data_ptr()
    assert attn.k_proj.weight.data_ptr() == fused_w.data_ptr() + attn.q_proj.weight.numel() * fused_w.element_size()
    assert attn.v_proj.bias.data_ptr() == attn.q_proj._specdecode_fused[1].data_ptr() + (
        attn.q_proj.bias.numel() + attn.k_proj.bias.numel()) * fused_w.element_size()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == mlp.gate_proj.weight.untyped_storage().data_ptr()
    # storage: the parameters are views, one storage per fused group (no copies kept alive)
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) < sum(1 for _ in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == n_before
    torch.testing.assert_close(model(x).logits, before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_compiled_layers_trace_as_one_graph_and_match(arch):
    """fullgraph=True fails on any graph break; aot_eager runs dynamo and AOTAutograd without a C compiler."""
    torch._dynamo.reset()
    model = _model(arch)
    reference = _run(ModelRunner(model, fused=False))
    runner = ModelRunner(model, compile=True, compile_backend="aot_eager")
    assert runner.fused is not None and runner.compiled
    got = _run(runner)
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_compiled_prefill_traces_as_one_graph_and_matches(arch):
    """Where prefills are captured (CUDA graphs: bucketed prompt shapes) the prefill's layer is
    compiled too; here traced with aot_eager (fullgraph: no graph break) and checked against
    transformers over the prefill and the steps after it. Uncaptured runners never compile it."""
    from specdecode.accel.fused import FusedModel

    torch._dynamo.reset()
    model = _model(arch)
    reference = _run(ModelRunner(model, fused=False))
    runner = ModelRunner(model, compile=True, compile_backend="aot_eager")
    assert runner.fused._prefill[0] is runner.fused._prefill_uncompiled[0]  # no graphs here: not compiled
    runner.fused = FusedModel(model, runner.layout.kinds, compile=True, compile_backend="aot_eager",
                              compile_prefill=True)
    assert runner.fused._prefill[0] is not runner.fused._prefill_uncompiled[0]
    got = _run(runner)
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    runner.uncompile()
    assert runner.fused._prefill[0] is runner.fused._prefill_uncompiled[0]


def test_compile_on_cpu_is_reported_not_silently_ignored(llama_pair):
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    s = Settings(target=str(llama_pair.target), drafter="none", device="cpu", dtype="float32", chat=False,
                 compile=True)
    dec = SpeculativeDecoder.from_settings(s)
    assert any("apply to CUDA devices" in n for n in dec.notes)
    assert not dec.runner(dec.target).compiled
    assert not any("apply to CUDA" in n for n in dec.with_settings(compile=None).notes)


@pytest.mark.parametrize("compile_prefill", [False, True])
def test_a_failing_compile_falls_back_to_the_uncompiled_step(caplog, compile_prefill):
    """No working Triton, an unsupported GPU, a compiler error: one warning, then the same logits
    uncompiled; with the prefill compiled too (captured prefills), the prefill is the first to fail."""
    from specdecode.accel.fused import FusedModel

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no working triton installation")

    torch._dynamo.reset()
    model = _model("llama")
    reference = _run(ModelRunner(model, fused=False))
    runner = ModelRunner(model, compile=True, compile_backend=broken_backend)
    if compile_prefill:
        runner.fused = FusedModel(model, runner.layout.kinds, compile=True, compile_backend=broken_backend,
                                  compile_prefill=True)
    with caplog.at_level("WARNING", logger="specdecode"):
        got = _run(runner)
    assert not runner.compiled and "no working triton installation" in runner.compile_error
    assert sum("running it uncompiled" in r.message for r in caplog.records) == 1
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
