"""Int8 weight copies for the draft (specdecode/accel/w8.py): format, kernel, model step, product wiring.

* quantize_int8 / dequantize_int8: per-row symmetric int8, the error of each weight at most half
  its row's step, zero rows, input sizes that are not a whole number of pairing granules;
* gemv8 computes kernels.gemv's folded product on q * s: plain, bias, both norm forms, the
  residual add with and without its own norm (written back), the gated MLP, one and two rows,
  with and without the next tile prefetched (under Triton's interpreter on the CPU);
* FusedModel(int8=True): one- and two-row steps read the int8 copies (the head included) and
  equal the transformers forward of the same model with those weights dequantized, in fp32;
* the product: the draft model's runner gets the copies by default where the kernels run (never
  the target's), --no-draft-int8 turns them off, --draft-int8 where they cannot run is one
  settings error; greedy speculative output stays the target's own.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

w8 = pytest.importorskip("specdecode.accel.w8")
if not w8.AVAILABLE:  # pragma: no cover - triton is in the test extra
    pytest.skip("Triton is not installed", allow_module_level=True)

from test_fused import _model  # noqa: E402
from test_kernels import DEV, SLOW_ON_CPU, _gen, _rms, _t  # noqa: E402

from specdecode.accel.runner import ModelRunner  # noqa: E402


@pytest.mark.parametrize("n, k", [(5, 128), (7, 200), (3, 1000)])
def test_quantize_round_trip(n, k):
    g = _gen(3)
    w = torch.randn(n, k, generator=g) * torch.linspace(0.01, 2.0, n)[:, None]
    w[1] = 0.0  # a zero row: scale 1, codes 0
    q = w8.quantize_int8(w)
    assert q.pairs.dtype == torch.int16 and q.pairs.shape == (n, -(-k // w8.GRAN) * w8.GRAN // 2)
    assert q.shape == (n, k) and q.scale.dtype == torch.float32
    codes = w8.int8_codes(q)
    assert codes.shape == (n, k) and int(codes.abs().max()) <= 127
    assert int(codes[1].abs().max()) == 0 and float(q.scale[1]) == 1.0
    err = (w8.dequantize_int8(q) - w).abs()
    assert bool((err <= q.scale[:, None] / 2 + 1e-7).all())
    # the largest weight of each (nonzero) row is exact: code +-127
    assert bool((codes.abs().amax(dim=1)[[0, *range(2, n)]] == 127).all())
    # padding past k holds code 0 (byte 128) in both bytes of its pairs
    raw = q.pairs.view(torch.uint8).view(n, -1)
    pad = raw.numel() // n - k
    assert pad == 0 or bool((w8.int8_codes(w8.Int8Weight(q.pairs, q.scale, raw.shape[1])).narrow(1, k, pad) == 0).all())


def test_pairs_hold_a_granule_s_two_halves():
    """Pair j of a granule: column j in the low byte, column j + GRAN/2 in the high byte."""
    k = w8.GRAN
    w = torch.arange(k, dtype=torch.float32)[None, :] - 60.0  # codes = column - 60 (scale 67/127)
    w[0, -1] = 127.0  # scale 1: codes are the values themselves
    q = w8.quantize_int8(w)
    raw = q.pairs.view(torch.uint8).view(-1)
    half = k // 2
    assert int(raw[0]) - 128 == -60 and int(raw[1]) - 128 == half - 60
    assert int(raw[2]) - 128 == -59 and int(raw[3]) - 128 == half + 1 - 60


GEMV8_CASES = ["plain", "bias", "norm-llama", "delta-norm", "gated-silu", "gated-gelu"]
GEMV8_GRID = [pytest.param(m, case, form, id=f"{case}-{m}-{form}",
                           marks=() if case in ("gated-gelu", "delta-norm") or (case == "plain" and m == 1) else SLOW_ON_CPU)
              for form in ["reduce", "prefetch"] for m in [1, 2] for case in GEMV8_CASES]


@pytest.mark.parametrize("m, case, form", GEMV8_GRID)
def test_gemv8_matches_torch(m, case, form):
    g = _gen(1)
    k, n = 200, 72  # not a whole number of granules or blocks
    x = _t(m, k, g=g)
    w = torch.randn(2 * n if case.startswith("gated") else n, k, generator=g) * 0.1
    q = w8.quantize_int8(w.to(DEV))
    wd = w8.dequantize_int8(q)
    nw, dn, delta = _t(k, g=g, scale=0.3), _t(k, g=g, scale=0.3), _t(m, k, g=g, scale=2.0)
    kw: dict = {}
    xr = x
    if case == "bias":
        kw["bias"] = _t(n, g=g)
    if case.startswith(("norm", "delta", "gated")):
        kw.update(norm=nw, gemma=case != "norm-llama", eps=1e-6)
    if case.startswith(("delta", "gated")):
        kw["delta"] = delta
        if case in ("delta-norm", "gated-gelu"):
            kw["delta_norm"] = dn
            xr = x + _rms(delta, dn, 1e-6, True)
        else:
            xr = x + delta
    if case.startswith("gated"):
        kw["act"] = "silu" if case == "gated-silu" else "gelu_tanh"
    y, r = w8.gemv8(x, q, config=(form, 8, 256, 4, 2), **kw)
    xin = _rms(xr, nw, 1e-6, kw["gemma"]) if "norm" in kw else xr
    ref = xin @ wd.T
    if "bias" in kw:
        ref = ref + kw["bias"]
    if case.startswith("gated"):
        gate, up = ref[:, :n], ref[:, n:]
        ref = (F.silu(gate) if case == "gated-silu" else F.gelu(gate, approximate="tanh")) * up
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    if "delta" in kw:
        torch.testing.assert_close(r, xr, rtol=1e-5, atol=1e-5)
    else:
        assert r is None


def test_gemv8_checks_its_arguments():
    q = w8.quantize_int8(torch.randn(8, 256).to(DEV))
    with pytest.raises(ValueError, match="takes 256 inputs, x has 128"):
        w8.gemv8(torch.randn(1, 128).to(DEV), q)
    with pytest.raises(ValueError, match="at most 2 rows"):
        w8.gemv8(torch.randn(3, 256).to(DEV), q)
    with pytest.raises(ValueError, match="BLOCK_K must be a power-of-two multiple"):
        w8.gemv8(torch.randn(1, 256).to(DEV), q, config=("reduce", 2, 192, 1, 2))
    assert w8.gemv8_config(1, 4864, 896, gated=True)[2] % (512 * w8.gemv8_config(1, 4864, 896, gated=True)[3]) == 0


def _dequantized_copy(model):
    """`model` with every decoder projection and the head replaced by int8-dequantized weights (the
    input embedding untouched, untied from the head)."""
    ref = copy.deepcopy(model)
    base = ref.model
    with torch.no_grad():
        for layer in base.layers:
            for part, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                ("mlp", ("gate_proj", "up_proj", "down_proj"))):
                for name in names:
                    lin = getattr(getattr(layer, part), name)
                    lin.weight = torch.nn.Parameter(w8.dequantize_int8(w8.quantize_int8(lin.weight)), requires_grad=False)
        head = ref.lm_head.weight
        ref.lm_head.weight = torch.nn.Parameter(w8.dequantize_int8(w8.quantize_int8(head)), requires_grad=False)
    return ref


def _steps(runner, rows: int, prefill=None):
    """Prefill (by `prefill`, default the runner), then one- and two-token steps (batch 1), or
    one-token steps of a batch of 2."""
    gen = torch.Generator().manual_seed(2)
    dev = runner.device
    from test_fused import V

    batch = 1 if rows == 1 else 2
    x = torch.randint(4, V, (batch, 12), generator=gen).to(dev)
    cache = runner.new_cache(batch, 64)
    (prefill or runner).prefill(x, cache, attend_len=12, logits_to_keep=1)
    cache.set_positions(torch.tensor([12, 9][:batch], device=dev))
    out = []
    for q in ((1, 2, 1) if batch == 1 else (1, 1)):
        ids = torch.randint(4, V, (batch, q), generator=gen).to(dev)
        out.append(runner.forward(ids, cache, attend_len=40, logits_to_keep=0).float())
        cache.advance(torch.full((batch,), q, device=dev))
    return out


@pytest.mark.parametrize("arch, rows", [("qwen2", 1), ("gemma3", 2), pytest.param("llama", 2, marks=SLOW_ON_CPU)])
def test_int8_steps_match_the_dequantized_model_fp32(arch, rows, monkeypatch):
    model = _model(arch).to(DEV)
    # the prefill on the model's own weights (as the product's), the steps on the dequantized copies
    reference = _steps(ModelRunner(_dequantized_copy(model), fused=False), rows, prefill=ModelRunner(model, fused=False))
    runner = ModelRunner(model, fused=True, kernels=True, int8=True)
    assert runner.fused.int8 and "int8 weight copies" in runner.describe()
    calls = []
    step = runner.fused._int8_forward
    monkeypatch.setattr(runner.fused, "_kernel_forward", lambda *a: 1 / 0)
    monkeypatch.setattr(runner.fused, "_int8_forward", lambda *a: calls.append(1) or step(*a))
    got = _steps(runner, rows)
    assert len(calls) == len(got)  # every step (one or two rows) on the int8 copies
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    plain = _steps(ModelRunner(model, fused=False), rows)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(plain, got))  # the copies are not the weights


def test_int8_needs_the_kernels():
    runner = ModelRunner(_model("qwen2"), fused=True, kernels=False, int8=True)
    assert not runner.fused.int8 and not runner.fused.weights8 and runner.fused.lm_head8 is None


# ---- the product -------------------------------------------------------------------------------
def _pair_decoder(pair, **kw):
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    s = Settings(target=str(pair.target), draft=str(pair.draft), device="cpu", dtype="float32", chat=False, **kw)
    return SpeculativeDecoder.from_settings(s)


def test_draft_int8_defaults_and_flags(llama_pair):
    import dataclasses

    from specdecode.settings import SettingsError

    dec = _pair_decoder(llama_pair, kernels=True, cuda_graphs=False)
    # the runner choice as on a CUDA device (the tensors stay on this CPU, under the interpreter)
    dec.draft = dataclasses.replace(dec.draft, device=torch.device("cuda"))
    dec.target = dataclasses.replace(dec.target, device=torch.device("cuda"))
    assert dec.runner(dec.draft).fused.int8  # default: the draft's kernel steps read int8 copies
    assert not dec.runner(dec.target).fused.int8  # never the target's
    off = dec.with_settings(draft_int8=False)
    assert not off.runner(off.draft).fused.int8
    cpu = _pair_decoder(llama_pair, draft_int8=True)  # on the CPU the kernels do not run
    with pytest.raises(SettingsError, match="--draft-int8: the int8 draft runs on the Triton kernels"):
        cpu.runner(cpu.draft)
    auto = cpu.with_settings(draft_int8=None)  # default on the CPU: no kernels, no copies, no error
    assert not auto.runner(auto.draft).fused.int8


@pytest.mark.parametrize("batch", [pytest.param(1, marks=SLOW_ON_CPU)])
def test_engine_stays_greedy_exact_with_an_int8_draft(gemma3_pair, batch):
    """The draft's steps on int8 copies change its proposals, never the output."""
    from fixtures import PROMPTS, oracle_greedy
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    prompts = [PROMPTS[0], PROMPTS[7]]
    s = Settings(target=str(gemma3_pair.target), draft=str(gemma3_pair.draft), device=DEV, dtype="float32",
                 chat=False, k=3, batch_size=batch, max_new_tokens=12)
    dec = SpeculativeDecoder.from_settings(s)
    dec.set_runner(dec.draft, ModelRunner(dec.draft.model, graphs=DEV == "cuda", fused=True, kernels=True, int8=True))
    got = [r.token_ids for r in dec.generate(prompts)]
    assert dec.runner(dec.draft).fused.int8 and dec.runner(dec.draft).fused._kernel_shapes
    assert got == oracle_greedy(gemma3_pair.target, prompts, 12)
