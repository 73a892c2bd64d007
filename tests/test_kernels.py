"""The Triton decode kernels (specdecode/accel/kernels.py) compute what torch computes.

Without a GPU they run under Triton's interpreter (conftest sets TRITON_INTERPRET=1), which
executes the same kernel code on CPU tensors; on the device the same tests run compiled.

* gemv: plain, bias, RMS norm (Llama and Gemma forms) folded into the product, the residual
  add with and without its own norm (written back as the new residual), the gated MLP
  (SiLU and tanh-GELU); one row and several; sizes that are not multiples of the blocks;
* decode_attention: q/k norms, rotary, cache write and attention over ragged per-row positions,
  1-6 query tokens, grouped queries, sliding windows, one split and several;
* the model step through the kernels equals the transformers forward, for Llama, Mistral,
  Qwen2, Qwen3 and Gemma 3, and the engine stays greedy-exact on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

kernels = pytest.importorskip("specdecode.accel.kernels")
if not kernels.AVAILABLE:  # pragma: no cover - triton is in the test extra
    pytest.skip("Triton is not installed", allow_module_level=True)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# Under the interpreter (no GPU) a kernel launch costs milliseconds: the long tests and most of
# the gemv grid are marked slow there (`python -m pytest -m slow`); compiled on a GPU they are
# quick and stay in the default run.
SLOW_ON_CPU = [pytest.mark.slow] if DEV == "cpu" else []


def _rms(x, w, eps, gemma):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        return (xf * (1.0 + w.float())).to(x.dtype)
    return w * xf.to(x.dtype)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _t(*shape, g, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEV)


GEMV_CASES = ["plain", "bias", "norm-llama", "norm-gemma", "delta", "delta-norm", "gated-silu", "gated-gelu"]
# fast layer: every case in one form and row count, and every form and row count in one case
# (the gated MLP: norm, residual delta and activation at once); the rest of the grid is slow
GEMV_GRID = [pytest.param(m, case, form, id=f"{case}-{m}-{form}",
                          marks=() if (form == "reduce" and m == 2) or case == "gated-silu" else SLOW_ON_CPU)
             for form in ["reduce", "prefetch", "mma"] for m in [1, 2, 5] for case in GEMV_CASES]
# the tensor-core form past 16 rows (the verify of k 5 at batch 4: 24 rows, BLOCK_M 32)
GEMV_GRID += [pytest.param(24, case, "mma", id=f"{case}-24-mma", marks=() if case == "gated-silu" else SLOW_ON_CPU)
              for case in ("plain", "delta-norm", "gated-silu")]


def _gemv_problem(case: str, m: int, seed: int, k: int = 200, n: int = 72):
    """A kernels.gemv case (GEMV_CASES; K and N multiples of no block) and its torch reference:
    (x, w, the keyword arguments, the residual stream after the add, the expected output)."""
    g = _gen(seed)
    x = _t(m, k, g=g)
    w = _t(2 * n if case.startswith("gated") else n, k, g=g, scale=0.1)
    nw = _t(k, g=g, scale=0.3)
    dn = _t(k, g=g, scale=0.3)
    delta = _t(m, k, g=g, scale=2.0)
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
    xin = _rms(xr, nw, 1e-6, kw["gemma"]) if "norm" in kw else xr
    ref = xin @ w.T
    if "bias" in kw:
        ref = ref + kw["bias"]
    if case.startswith("gated"):
        gate, up = ref[:, :n], ref[:, n:]
        ref = (F.silu(gate) if case == "gated-silu" else F.gelu(gate, approximate="tanh")) * up
    return x, w, kw, xr, ref


def _check_gemv_result(y, r, kw, xr, ref):
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    if "delta" in kw:
        torch.testing.assert_close(r, xr, rtol=1e-5, atol=1e-5)
    else:
        assert r is None


@pytest.mark.parametrize("m, case, form", GEMV_GRID)
def test_gemv_matches_torch(m, case, form):
    x, w, kw, xr, ref = _gemv_problem(case, m, seed=1)
    config = (form, 8, 64, 4, 2) if form != "mma" else ("mma", 32, 64, 4, 2)
    y, r = kernels.gemv(x, w, config=config, **kw)
    _check_gemv_result(y, r, kw, xr, ref)


@pytest.mark.parametrize("case, split_k", [("gated-gelu", 3), pytest.param("delta-norm", 2, marks=SLOW_ON_CPU),
                                           pytest.param("plain", 4, marks=SLOW_ON_CPU)])
def test_gemv_split_k_matches_torch(case, split_k):
    """The tensor-core form with K cut into slices (program (tile, s) takes slice s; the last to
    finish sums the partials in slice order): the same products, norms (whose sums of squares
    are split too), residual write and activation; slices past K (3 slices of 200 columns in
    tiles of 64: [0, 128), [128, 200), none) count as zeros; the counters are left zero, and a
    second call gives the same bits whichever program finished last."""
    x, w, kw, xr, ref = _gemv_problem(case, 5, seed=7)
    config = ("mma", 32, 64, 4, 2, split_k)
    y, r = kernels.gemv(x, w, config=config, **kw)
    _check_gemv_result(y, r, kw, xr, ref)
    counters = kernels.scratch(x.device, "gemv split counters", 1, torch.int32)
    assert int(counters.abs().sum()) == 0
    again, _ = kernels.gemv(x, w, config=config, **kw)
    assert torch.equal(again, y)
    with pytest.raises(ValueError, match="splits K only"):
        kernels.gemv(x, w, config=("reduce", 8, 64, 4, 2, 2))


MLP_CASES = [  # (rows, activation, Gemma's norms (delta norm, (1 + w)), biases, down stored transposed, O_EARLY)
    pytest.param(1, "silu", False, False, False, True, id="1-silu"),
    pytest.param(2, "gelu_tanh", True, True, True, False, id="2-gelu-gemma-bias-transposed"),
    pytest.param(1, "gelu_tanh", True, False, True, True, id="1-gelu-gemma-transposed", marks=SLOW_ON_CPU),
    pytest.param(2, "silu", False, True, False, True, id="2-silu-bias", marks=SLOW_ON_CPU),
]


@pytest.mark.parametrize("m, act, gemma, bias, transposed, early", MLP_CASES)
def test_mlp_is_gate_up_then_down(m, act, gemma, bias, transposed, early):
    """kernels.mlp (gate/up and the down projection in one kernel, meeting by atomic adds): the
    gated MLP of the residual stream after the add, with every fold gemv has, added to what the
    output held; the new residual returned; the down weight as stored or as a transposed copy's
    view; sizes no block divides (N 72 in programs of 16, K 200 in tiles of 64)."""
    g = _gen(11)
    k, n = 200, 72
    x, delta = _t(m, k, g=g), _t(m, k, g=g, scale=2.0)
    w, wd = _t(2 * n, k, g=g, scale=0.1), _t(k, n, g=g, scale=0.1)
    nw, dn = _t(k, g=g, scale=0.3), _t(k, g=g, scale=0.3)
    b, bd = _t(2 * n, g=g), _t(k, g=g)
    kw = dict(norm=nw, gemma=gemma, eps=1e-6, delta=delta, delta_norm=dn if gemma else None, act=act)
    xr = x + (_rms(delta, dn, 1e-6, True) if gemma else delta)
    h = _rms(xr, nw, 1e-6, gemma) @ w.T + (b if bias else 0)
    gate, up = h[:, :n], h[:, n:]
    a = (F.silu(gate) if act == "silu" else F.gelu(gate, approximate="tanh")) * up
    start = _t(m, k, g=g)
    ref = start + a @ wd.T + (bd if bias else 0)
    out = start.clone()
    down = wd.t().contiguous().t() if transposed else wd
    r = kernels.mlp(x, w, down, out, bias=b if bias else None, down_bias=bd if bias else None,
                    config=(16, 64, 4, 2, 64, early), **kw)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r, xr, rtol=1e-5, atol=1e-5)


def test_mlp_refuses_what_it_cannot_sum():
    g = _gen(12)
    x, w, wd = _t(1, 64, g=g), _t(32, 64, g=g), _t(64, 16, g=g)
    with pytest.raises(ValueError, match="down projection must be"):
        kernels.mlp(x, w, wd.t(), torch.zeros(1, 64, device=DEV))
    with pytest.raises(ValueError, match="fp32 output"):
        kernels.mlp(x, w, wd, torch.zeros(1, 64, device=DEV, dtype=torch.float16))
    with pytest.raises(ValueError, match="at most 2 rows"):
        kernels.mlp(_t(3, 64, g=g), w, wd, torch.zeros(3, 64, device=DEV))


def test_gemv_half_precision_rounds_like_torch():
    g = _gen(2)
    x = _t(3, 256, g=g, dtype=torch.float16)
    w = _t(96, 256, g=g, scale=0.05, dtype=torch.float16)
    nw = _t(256, g=g, scale=0.3, dtype=torch.float16)
    y, _ = kernels.gemv(x, w, norm=nw, gemma=False, eps=1e-6)
    ref = (_rms(x, nw, 1e-6, False).float() @ w.float().T)
    assert y.dtype == torch.float16
    assert (y.float() - ref).abs().max().item() <= 2e-3 * ref.abs().max().item() + 1e-3


@pytest.mark.parametrize("pdl_config", [pytest.param(("reduce", 2, 256, 1, 2), marks=SLOW_ON_CPU),
                                        pytest.param(("prefetch", 1, 2048, 8, 2), marks=SLOW_ON_CPU)])
def test_gemv_pdl_configs_match_torch(pdl_config):
    """The single-row configurations chosen under PDL (one-row programs, a K row wider than K)."""
    g = _gen(4)
    k, n = 300, 40
    x = _t(1, k, g=g)
    w = _t(2 * n, k, g=g, scale=0.05)
    nw = _t(k, g=g, scale=0.3)
    y, _ = kernels.gemv(x, w, norm=nw, act="silu", config=pdl_config)
    h = _rms(x, nw, 1e-6, False).float() @ w.float().T
    ref = F.silu(h[:, :n]) * h[:, n:]
    assert (y - ref).abs().max().item() <= 1e-4 * ref.abs().max().item() + 1e-5
    y, _ = kernels.gemv(x, w[:n], config=pdl_config)
    ref = x.float() @ w[:n].float().T
    assert (y - ref).abs().max().item() <= 1e-4 * ref.abs().max().item() + 1e-5


def test_gemv_configs():
    assert kernels.gemv_config(1, 20480 // 2, 2560, True)[0] == "reduce"  # one row: the swept form
    assert kernels.gemv_config(6, 4096, 2560, False)[0] == "mma"
    # under programmatic dependent launch the swept single-row configurations of small models
    assert kernels.gemv_config(1, 4864, 896, True, True, pdl=True) == ("reduce", 2, 256, 1, 2)
    assert kernels.gemv_config(1, 896, 4864, False, pdl=True) == ("prefetch", 1, 2048, 8, 2)
    assert kernels.gemv_config(1, 896, 4864, False) != kernels.gemv_config(1, 896, 4864, False, pdl=True)
    # two rows under PDL (the draft's [prev, last] step): the Qwen sweep's best, others unchanged
    assert kernels.gemv_config(2, 896, 4864, False, pdl=True) == ("reduce", 1, 2048, 8, 2)
    assert kernels.gemv_config(2, 4864, 896, True, True, pdl=True) == ("reduce", 4, 256, 1, 2)
    assert kernels.gemv_config(2, 4096, 14336, False, pdl=True) == kernels.gemv_config(2, 4096, 14336, False)
    # no default cuts K into slices (measured slower inside the real pair's verify step)
    for shape in ((6, 2048, 1536, False, True), (6, 1536, 8960, False), (6, 4096, 14336, False)):
        assert kernels.splits_k(kernels.gemv_config(*shape, pdl=True)) == 1
    assert kernels.splits_k(("mma", 64, 128, 4, 3, 8)) == 8
    with pytest.raises(ValueError, match="unknown gemv form"):
        kernels.gemv(torch.zeros(1, 32, device=DEV), torch.zeros(16, 32, device=DEV), config=("fast", 8, 32, 4, 2))


def test_gemv_refuses_too_many_rows():
    x = torch.zeros(kernels.MAX_GEMV_ROWS + 1, 32, device=DEV)
    with pytest.raises(ValueError, match="at most"):
        kernels.gemv(x, torch.zeros(16, 32, device=DEV))


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _attention_reference(qkv, pos, kc, vc, cos, sin, H, Hkv, D, scaling, eps, qn, kn, gemma, window, sibling=None):
    """pos: the slots; `sibling` [B]: the last token is a sibling of token sibling[b] (rotated at its
    position, seeing the slots before it and its own slot)."""
    B, q, _ = qkv.shape
    qs, ks, vs = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    qs, ks, vs = qs.view(B, q, H, D), ks.view(B, q, Hkv, D), vs.view(B, q, Hkv, D)
    if qn is not None:
        qs, ks = _rms(qs, qn, eps, gemma), _rms(ks, kn, eps, gemma)
    rope = pos.clone()
    if sibling is not None:
        rope[:, -1] = pos[:, 0] + sibling
    c, s = cos[rope].unsqueeze(2), sin[rope].unsqueeze(2)
    qs = qs * c + _rotate_half(qs) * s
    ks = ks * c + _rotate_half(ks) * s
    kc, vc = kc.clone(), vc.clone()
    for b in range(B):
        kc[b, :, pos[b]] = ks[b].transpose(0, 1)
        vc[b, :, pos[b]] = vs[b].transpose(0, 1)
    S = kc.shape[2]
    slots = torch.arange(S, device=qkv.device)
    vis = slots[None, None, :] <= pos[:, :, None]  # [B, q, S]
    if sibling is not None:
        vis[:, -1] = (slots[None, :] < (pos[:, 0] + sibling)[:, None]) | (slots[None, :] == pos[:, -1:])
    if window:
        vis = vis & (slots[None, None, :] > rope[:, :, None] - window)
    G = H // Hkv
    kr = kc.repeat_interleave(G, dim=1)  # [B, H, S, D]
    vr = vc.repeat_interleave(G, dim=1)
    sc = torch.einsum("bqhd,bhsd->bhqs", qs.float(), kr.float()) * scaling
    sc = sc.masked_fill(~vis[:, None], float("-inf"))
    o = torch.einsum("bhqs,bhsd->bqhd", sc.softmax(-1), vr.float())
    return o.reshape(B, q, H * D).to(qkv.dtype), kc, vc


@pytest.mark.parametrize("q,sibling", [(1, None), (3, None), (6, None), (3, [1, 1]), (6, [4, 1])],
                         ids=["q1", "q3", "q6", "q3-sibling", "q6-sibling"])
@pytest.mark.parametrize("setup", ["llama", "gemma-window", "qwen3-splits", "qwen3-splits-together",
                                   "qwen3-splits-folded", "gemma-window-splits"])
def test_decode_attention_matches_torch(q, sibling, setup):
    """The attention kernel against torch, and with a token tree's sibling as the last token (its
    twin's rotary position, its own slot, the slots before its twin's and its own visible)."""
    g = _gen(3)
    B, S = 2, 96
    H, Hkv, D = (2, 1, 64) if setup.startswith("gemma-window") else (4, 2, 32)
    gemma = setup.startswith("gemma")
    window = 9 if setup.startswith("gemma-window") else None
    splits = 4 if "splits" in setup else 1
    fold = setup.endswith("folded")  # the last split merges (no combine kernel)
    # the step's own tokens on split 0 besides its cached slots, or (default) on a split of their own
    apart = not setup.endswith("together")
    qn = kn = None
    if setup != "llama":
        qn, kn = _t(D, g=g, scale=0.3), _t(D, g=g, scale=0.3)
    qkv = _t(B, q, (H + 2 * Hkv) * D, g=g)
    kc = _t(B, Hkv, S, D, g=g)  # stale contents everywhere: only the visible slots may count
    vc = _t(B, Hkv, S, D, g=g)
    start = torch.tensor([40, 5])
    pos = (start[:, None] + torch.arange(q)).to(DEV)
    ang = torch.arange(S)[:, None] * torch.linspace(0.01, 1.0, D // 2)[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().to(DEV), ang.sin().to(DEV)
    scaling = D ** -0.5
    sib = torch.tensor(sibling, device=DEV) if sibling is not None else None
    ref, kref, vref = _attention_reference(qkv, pos, kc, vc, cos, sin, H, Hkv, D, scaling, 1e-6, qn, kn, gemma, window,
                                           sibling=sib)
    out = kernels.decode_attention(qkv, pos, kc, vc, cos, sin, n_heads=H, n_kv=Hkv, head_dim=D, scaling=scaling,
                                   eps=1e-6, q_norm=qn, k_norm=kn, gemma=gemma, window=window, splits=splits,
                                   block_s=16, fold=fold, apart=apart, sibling=sib)
    torch.testing.assert_close(kc, kref, rtol=1e-5, atol=1e-5)  # the new keys/values were written
    torch.testing.assert_close(vc, vref, rtol=0, atol=0)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    if fold:  # each pair's counter is back at zero, so the next launch merges again
        assert not kernels._split_counters(qkv.device, B * Hkv)[: B * Hkv].any()
        kc.copy_(kref)
        again = kernels.decode_attention(qkv, pos, kc, vc, cos, sin, n_heads=H, n_kv=Hkv, head_dim=D,
                                         scaling=scaling, eps=1e-6, q_norm=qn, k_norm=kn, splits=splits,
                                         block_s=16, fold=True, sibling=sib)
        torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_splits_follow_the_batch():
    assert kernels.attention_splits(1, 4, 512) == 8
    assert kernels.attention_splits(16, 8, 512) == 1
    assert kernels.attention_splits(1, 1, 128) == 2  # never more splits than blocks of slots
    assert kernels.attention_splits(1, 3, 4096) == 8  # a power of two


# ---- the model step ------------------------------------------------------------------------
from test_fused import _model, _run  # noqa: E402  (tiny models and the ragged step sequence)

from specdecode.accel.runner import ModelRunner  # noqa: E402


@pytest.fixture
def multi_row():
    """Route steps of up to 16 rows through the kernels (the product routes single-row steps,
    where they are fastest on the H200; the kernels themselves take up to 16 rows)."""
    return 16


# Llama and Mistral take Qwen2's code path without its q/k/v biases (Mistral's sliding window is
# also Gemma 3's), Qwen3's q/k norms are Gemma 3's too: slow on the CPU interpreter, in the
# default run on a GPU
@pytest.mark.parametrize("arch", [pytest.param("llama", marks=SLOW_ON_CPU), pytest.param("mistral", marks=SLOW_ON_CPU),
                                  "qwen2", pytest.param("qwen3", marks=SLOW_ON_CPU), "gemma3"])
def test_kernel_step_matches_transformers_fp32(arch, multi_row):
    model = _model(arch).to(DEV)
    reference = _run(ModelRunner(model, fused=False))
    runner = ModelRunner(model, fused=True, kernels=True, max_kernel_rows=multi_row)
    assert runner.fused.kernels and "Triton decode kernels" in runner.describe()
    got = _run(runner)
    assert runner.fused._kernel_shapes  # the steps (3 rows x 1-4 tokens) ran on the kernels
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)


def _one_row_steps(runner):
    """Batch 1: a prefill, then steps of 1, 2 and 1 tokens (the draft's step shapes)."""
    from test_fused import V

    gen = torch.Generator().manual_seed(1)
    dev = runner.device
    x = torch.randint(4, V, (1, 12), generator=gen).to(dev)
    cache = runner.new_cache(1, 32)
    out = [runner.prefill(x, cache, attend_len=12, logits_to_keep=0)]
    for q in (1, 2, 1):
        ids = torch.randint(4, V, (1, q), generator=gen).to(dev)
        out.append(runner.forward(ids, cache, attend_len=24, logits_to_keep=0))
        cache.advance(torch.tensor([q], device=dev))
    return [o.float() for o in out]


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", pytest.param("llama", marks=SLOW_ON_CPU)])
def test_kernel_steps_with_the_mlp_as_one_kernel_match_transformers_fp32(arch):
    """mlp_rows (a draft's steps): every layer's gated MLP as kernels.mlp in steps of 1 and 2 rows,
    its fp32 sums the next qkv product's residual delta (Gemma 3: with its post-norm) and the
    last layer's into the final norm; the same logits as the transformers model."""
    model = _model(arch).to(DEV)
    reference = _one_row_steps(ModelRunner(model, fused=False))
    runner = ModelRunner(model, fused=True, kernels=True, mlp_rows=2)
    assert "the gated MLP as one kernel in steps of <= 2 rows" in runner.describe()
    got = _one_row_steps(runner)
    assert sorted(runner.fused._mlp_sums) == [1, 2]  # both step shapes ran it
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="mlp_rows must be in"):
        ModelRunner(model, fused=True, kernels=True, mlp_rows=kernels.MAX_MLP_ROWS + 1)


@pytest.mark.parametrize("multi_row, arch", [("mixed", "gemma3"), pytest.param("hybrid", "gemma3", marks=SLOW_ON_CPU),
                                             pytest.param("mixed", "llama", marks=SLOW_ON_CPU),
                                             pytest.param("hybrid", "llama", marks=SLOW_ON_CPU)])
def test_multi_row_steps_match_transformers_fp32(multi_row, arch, monkeypatch):
    """Steps of more than MAX_ROWS rows (every step of _run: 3 rows) run as multi_row says. "mixed"
    (the default): the kernels' tensor-core products (norms, residual adds, activation folded in)
    with the down projection on cuBLAS; Gemma 3's post-norm of the down output then rides in the
    next qkv product as a delta norm. "hybrid": the compiled layers' products around the
    attention kernel."""
    model = _model(arch).to(DEV)
    reference = _run(ModelRunner(model, fused=False))
    runner = ModelRunner(model, fused=True, kernels=True, multi_row=None if multi_row == "mixed" else multi_row)
    assert runner.fused.multi_row == multi_row
    used, other = ("_mixed_forward", "_hybrid_forward")[::1 if multi_row == "mixed" else -1]
    calls = []
    monkeypatch.setattr(runner.fused, "_kernel_forward", lambda *a: calls.append("whole") or 1 / 0)
    monkeypatch.setattr(runner.fused, other, lambda *a: calls.append(other) or 1 / 0)
    step = getattr(runner.fused, used)
    monkeypatch.setattr(runner.fused, used, lambda *a: calls.append(used) or step(*a))
    got = _run(runner)
    assert calls == [used] * 4  # the four steps of 3 rows x 1-4 tokens
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)


def test_mixed_steps_with_k_slices_match_transformers_fp32(monkeypatch):
    """Where gemv_config cuts K into slices for a several-row product (the verify's qkv and down
    projection at the Qwen2.5 1.5B shape under PDL), the mixed step runs its down projection on
    the kernel instead of cuBLAS: here every several-row product in 3 slices, the same values."""
    from specdecode.accel import fused as fused_mod

    model = _model("gemma3").to(DEV)
    reference = _run(ModelRunner(model, fused=False))
    runner = ModelRunner(model, fused=True, kernels=True)
    sliced = lambda m, n, k, gated, norm=False, pdl=False: ("mma", 32, 64, 4, 2, 3)  # noqa: E731
    plain = kernels.gemv_config
    monkeypatch.setattr(kernels, "gemv_config", lambda m, *a, **kw: sliced(m, *a, **kw) if m > 2 else plain(m, *a, **kw))
    monkeypatch.setattr(fused_mod, "_cublas_product", lambda *a, **kw: 1 / 0)
    got = _run(runner)
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)


def test_fp8_head_is_the_head_within_e4m3_rounding():
    """quantize_head_fp8 + the fp8 head (a draft's kernel steps): one scale for the matrix, one for
    the step's rows, rows padded to 16 for the fp8 product; logits within e4m3's rounding of the
    bf16-free product, the clear winner of each row kept, softcapping applied after."""
    from specdecode.accel import fused as fused_mod

    g = _gen(9)
    vocab, hidden = 300, 64
    w = _t(vocab, hidden, g=g, scale=0.05)
    x = _t(3, 2, hidden, g=g)
    w[7] = x[0, 0] / x[0, 0].norm() * 0.3  # a clear winner for one row
    w8, scale = fused_mod.quantize_head_fp8(w, chunk=128)
    assert w8.dtype == torch.float8_e4m3fn and scale.dim() == 0
    assert w8.shape == (304, hidden) and not w8[vocab:].float().any()  # zero rows pad V to a multiple of 16
    assert float((w8.float() * scale).abs().max()) <= float(w.abs().max()) * 1.0001
    head8 = fused_mod._make_head_fp8(None, vocab)
    got = head8(x, w8, scale)
    ref = x @ w.T
    assert got.shape == ref.shape and got.dtype == x.dtype
    assert float((got - ref).abs().max() / ref.abs().max()) < 0.08
    assert int(got[0, 0].argmax()) == 7
    capped = fused_mod._make_head_fp8(30.0, vocab)(x, w8, scale)
    torch.testing.assert_close(capped, torch.tanh(got / 30.0) * 30.0)


def test_kernel_steps_read_the_fp8_head(monkeypatch):
    """FusedModel(head_fp8=True): the kernel steps' logits come from the e4m3 head (close to the
    model's, not equal), prefill keeps the model's head; without the kernels it is not built."""
    model = _model("qwen2").to(DEV)
    reference = _run(ModelRunner(model, fused=False))
    runner = ModelRunner(model, fused=True, kernels=True, max_kernel_rows=16, head_fp8=True)
    assert runner.fused.head_fp8 is not None and "e4m3 (fp8) vocabulary head" in runner.describe()
    got = _run(runner)
    torch.testing.assert_close(got[0], reference[0], rtol=2e-5, atol=2e-5)  # prefill: the model's head
    for a, b in zip(reference[1:], got[1:]):
        assert not torch.equal(a, b)
        assert float((b - a).abs().max().detach() / a.abs().max().detach()) < 0.1
    assert ModelRunner(model, fused=True, kernels=False, head_fp8=True).fused.head_fp8 is None


def test_draft_fp8_head_setting(llama_pair):
    """--draft-fp8-head: off by default, a SettingsError naming why when asked for without fp8
    tensor cores; the target never reads its head in fp8."""
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings, SettingsError

    s = Settings(target=str(llama_pair.target), draft=str(llama_pair.draft), device="cpu", dtype="float32",
                 chat=False)
    dec = SpeculativeDecoder.from_settings(s)
    assert not dec.draft_fp8_head(dec.draft)
    assert dec.runner(dec.draft).fused is None or dec.runner(dec.draft).fused.head_fp8 is None
    on = dec.with_settings(draft_fp8_head=True)
    with pytest.raises(SettingsError, match="--draft-fp8-head: fp8 tensor cores need a CUDA GPU of compute capability"):
        on.runner(on.draft)
    assert on.runner(on.target) is not None  # the target's runner ignores it
    assert not any("--draft-fp8-head" in n for n in on.notes)
    lookup = dec.with_settings(draft_fp8_head=True, drafter="ngram")
    assert any("--draft-fp8-head applies to a draft model" in n for n in lookup.notes)


def test_multi_row_setting_is_checked():
    with pytest.raises(ValueError, match="multi_row must be one of"):
        ModelRunner(_model("llama"), fused=True, kernels=True, multi_row="cublas")
    with pytest.raises(ValueError, match="max_mixed_rows must be in"):
        ModelRunner(_model("llama"), fused=True, kernels=True, max_mixed_rows=kernels.MAX_GEMV_ROWS + 1)


def test_steps_past_max_mixed_rows_run_hybrid(monkeypatch):
    """"mixed" takes steps of at most max_mixed_rows rows; larger ones run "hybrid" (the same
    results: both are checked against transformers above)."""
    model = _model("llama").to(DEV)
    runner = ModelRunner(model, fused=True, kernels=True, max_mixed_rows=3)
    calls = []
    for name in ("_mixed_forward", "_hybrid_forward"):
        step = getattr(runner.fused, name)
        monkeypatch.setattr(runner.fused, name, lambda *a, n=name, s=step: calls.append(n) or s(*a))
    reference = _run(ModelRunner(model, fused=False))
    got = _run(runner)  # steps of 3, 12, 9 and 3 rows
    assert calls == ["_mixed_forward", "_hybrid_forward", "_hybrid_forward", "_mixed_forward"]
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)


def test_kernel_failure_falls_back_with_one_warning(monkeypatch, caplog, multi_row):
    model = _model("gemma3").to(DEV)
    reference = _run(ModelRunner(model, fused=False))
    runner = ModelRunner(model, fused=True, kernels=True, max_kernel_rows=multi_row)

    def broken(*a, **k):
        raise RuntimeError("PTX JIT compilation failed\nmore detail")

    monkeypatch.setattr(kernels, "decode_attention", broken)
    with caplog.at_level("WARNING", logger="specdecode"):
        got = _run(runner)
    assert not runner.fused.kernels
    assert "PTX JIT compilation failed" in runner.describe()
    assert sum("Triton decode kernels could not run" in r.message for r in caplog.records) == 1
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch, head8, mlp_rows", [
    pytest.param(1, False, 0, marks=SLOW_ON_CPU), pytest.param(2, False, 0, marks=SLOW_ON_CPU),
    pytest.param(1, True, 0, marks=SLOW_ON_CPU, id="1-fp8-draft-head"),
    pytest.param(1, False, 2, marks=SLOW_ON_CPU, id="1-draft-mlp-kernel")])
def test_engine_is_greedy_exact_on_the_kernels(gemma3_pair, multi_row, batch, head8, mlp_rows):
    """Batch 1: the product's routing (one- and two-row draft steps on the kernels, verify on
    the layers); batch 2: every step on the kernels; fp8-draft-head: the draft's head read in
    e4m3 (its proposals change, the output must not); draft-mlp-kernel: the draft's MLPs as one
    kernel each (kernels.mlp). About a minute each under the
    interpreter: slow there; the fast layer keeps the kernel steps against transformers (above)."""
    from fixtures import PROMPTS, oracle_greedy
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    rows = kernels.MAX_ROWS if batch == 1 else multi_row  # batch 1: the product's routing
    prompts = [PROMPTS[0], PROMPTS[7]]
    s = Settings(target=str(gemma3_pair.target), draft=str(gemma3_pair.draft), device=DEV, dtype="float32",
                 chat=False, k=3, batch_size=batch, max_new_tokens=12)
    dec = SpeculativeDecoder.from_settings(s)
    for loaded in (dec.target, dec.draft):
        runner = ModelRunner(loaded.model, graphs=DEV == "cuda", fused=True, kernels=True, max_kernel_rows=rows,
                             head_fp8=head8 and loaded is dec.draft, mlp_rows=mlp_rows if loaded is dec.draft else 0)
        dec.set_runner(loaded, runner)
    got = [r.token_ids for r in dec.generate(prompts)]
    assert dec.runner(dec.draft).fused._kernel_shapes
    assert (dec.runner(dec.draft).fused.head_fp8 is not None) == head8
    assert sorted(dec.runner(dec.draft).fused._mlp_sums) == ([1, 2] if mlp_rows else [])
    assert got == oracle_greedy(gemma3_pair.target, prompts, 12)


def test_a_compile_failure_in_a_kernel_step_is_reported_as_one(caplog):
    """The multi-row kernel step calls compiled parts: when torch.compile fails there, the runner
    falls back as for any compile failure (one compile warning, no blame on the kernels)."""
    model = _model("gemma3").to(DEV)
    reference = _run(ModelRunner(model, fused=False))

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler here")

    torch._dynamo.reset()
    runner = ModelRunner(model, fused=True, kernels=True, compile=True, compile_backend=broken_backend)
    with caplog.at_level("WARNING", logger="specdecode"):
        got = _run(runner)
    messages = [r.message for r in caplog.records]
    assert sum("torch.compile could not build" in m for m in messages) == 1
    assert not any("Triton decode kernels could not run" in m for m in messages)
    assert not runner.compiled and runner.fused.kernel_error is None
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_sweep_precompile_survives_a_compiler_that_aborts(tmp_path, monkeypatch):
    """benchmarks' precompile (kernel_bench.precompile, nf4_bench's too): a job whose process dies
    (as an LLVM assertion in Triton's compiler did on the H200) breaks the worker pool; the jobs
    it left unanswered run again one process each, the aborting one counts as failed and every
    other keeps its own answer."""
    import sys

    (tmp_path / "abort_job.py").write_text(
        "import os\n\ndef job(x):\n    if x == 2:\n        os.abort()\n    return x % 2 == 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import abort_job
    import kernel_bench

    assert abort_job.job(4) and not abort_job.job(1)  # even: compiles; 2 would too, but its process dies
    assert kernel_bench.precompile(list(range(6)), abort_job.job, workers=2, force=True) == \
        [True, False, False, False, True, False]
    sys.modules.pop("abort_job", None)


@pytest.mark.slow  # a subprocess running every kernel under the interpreter (about 15 s)
@pytest.mark.skipif(torch.cuda.is_available(), reason="the smoke run is the CPU stand-in for the GPU sweep")
def test_kernel_bench_smoke_runs_every_path():
    """benchmarks/kernel_bench.py --smoke: every measurement path of the sweep script on CPU, with
    each kernel's result checked against torch (the script exits 1 on a wrong result)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "kernel_bench.py"), "--smoke"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import re

    found = re.search(r"smoke: (\d+) measurements, 0 with a wrong result", done.stdout)
    assert found and int(found.group(1)) == 6 * 3 + 2  # attention + 5 products at 1, 2, 6 rows; the MLP at 1, 2


def test_kernels_default_to_captured_steps_only(monkeypatch):
    """By default the kernels serve CUDA-graph steps: launched one by one from Python they would
    cost more than they save. (On this CPU there are no graphs; usable_on is forced true.)"""
    monkeypatch.setattr(kernels, "usable_on", lambda device: True)
    model = _model("llama")
    runner = ModelRunner(model, graphs=False, compile=True, compile_backend="aot_eager")
    assert runner.fused is not None and not runner.fused.kernels
    assert ModelRunner(model, graphs=False, fused=True, kernels=True).fused.kernels  # asked for: used


# ---- --kernels / --no-kernels ----------------------------------------------------------------
def _decoder(target_dir, **kw):
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    s = Settings(target=str(target_dir), drafter="none", device="cpu", dtype="float32", chat=False, **kw)
    return SpeculativeDecoder.from_settings(s)


def _as_cuda(loaded):
    """The loaded model as the runner choice sees a CUDA model (the tensors stay on this CPU)."""
    import dataclasses

    return dataclasses.replace(loaded, device=torch.device("cuda"))


def test_kernels_flag_on_cpu_is_a_note(llama_pair):
    dec = _decoder(llama_pair.target, kernels=True)
    assert any("--kernels apply to CUDA devices" in n for n in dec.notes)
    assert not dec.runner(dec.target).fused.kernels


def test_kernels_flag_reaches_the_runner(llama_pair):
    on = _decoder(llama_pair.target, kernels=True, cuda_graphs=False)
    assert on.runner(_as_cuda(on.target)).fused.kernels  # asked for: used even uncaptured
    off = on.with_settings(kernels=False, compile=True)
    assert not off.runner(_as_cuda(off.target)).fused.kernels


def test_kernels_flag_on_a_model_they_cannot_run_is_a_settings_error(tmp_path, tokenizer_dir, llama_pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specdecode.settings import SettingsError

    model = AutoModelForCausalLM.from_pretrained(llama_pair.target)
    model.config.hidden_act = "relu"  # neither SiLU nor tanh-GELU
    relu = AutoModelForCausalLM.from_config(model.config)
    relu.save_pretrained(tmp_path / "relu")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path / "relu")
    dec = _decoder(tmp_path / "relu", kernels=True)
    with pytest.raises(SettingsError, match="--kernels: the MLP activation is neither SiLU nor tanh"):
        dec.runner(_as_cuda(dec.target))
    no_fused = dec.with_settings(fused=False)
    with pytest.raises(SettingsError, match="--kernels: the kernels run the fused layers"):
        no_fused.runner(_as_cuda(no_fused.target))
