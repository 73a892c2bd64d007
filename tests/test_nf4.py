"""NF4 weights as bitsandbytes stores them, and the GEMV that reads them (specdecode/accel/nf4.py).

* the reference quantizer reproduces bitsandbytes' ``quantize_4bit(..., quant_type="nf4")`` on the
  CPU bit for bit (packed codes, absmax, and with double quantization the uint8 absmax codes, the
  nested scales, the offset and the 8-bit map), and ``dequantize_nf4`` its ``dequantize_4bit``;
  ``NF4Weight`` reads a ``Linear4bit``'s own storage (these need bitsandbytes: skipped without it);
* without bitsandbytes: the quantizer's own invariants (codes of exact map points, error bound);
* ``nf4_gemv`` equals ``dequantize_nf4(w).float() @ x.float().T`` to fp32 summation order for one,
  two and several rows (the tensor-core form), with and without double quantization, fp32 / bf16 /
  fp16 weights and activations, shapes that are not multiples of the tiles or of the quantization
  block, odd N.
* ``nf4_gemv_fused`` folds the residual add (with Gemma's delta norm), the input norm and the gated
  activation as kernels.gemv does; ``merge_nf4`` stacks q/k/v (gate/up) weights, each with its own
  quant state, into one that dequantizes bit for bit as the parts;
* the fused decode layers with bitsandbytes NF4 ``Linear4bit`` projections (``FusedModel(nf4=True)``,
  what ``--quantized`` runs): decode steps of 1, 2 and 6 rows on the NF4 kernels, steps of more rows and
  prefill on per-layer dequantized weights, all equal in fp32 to the same model with each
  ``Linear4bit`` replaced by an ``nn.Linear`` of its dequantized weight; greedy tokens equal;
  ``fused_support`` names what it refuses (FP4, 8-bit, mixed layers, nf4 off).

Without a GPU the kernel runs under Triton's interpreter (conftest sets TRITON_INTERPRET=1); the
grid is marked slow there (`python -m pytest -m slow tests/test_nf4.py`).
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

nf4 = pytest.importorskip("specdecode.accel.nf4")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SLOW_ON_CPU = [pytest.mark.slow] if DEV == "cpu" else []
# the same for a whole test (~8 s each under the interpreter); a no-op marker on a GPU
slow_on_cpu = pytest.mark.slow if DEV == "cpu" else pytest.mark.skipif(False, reason="runs by default on a GPU")
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_bnb = pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
needs_triton = pytest.mark.skipif(not nf4.AVAILABLE, reason="Triton is not installed")


def _w(n, k, *, seed=0, dtype=torch.float32, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * scale
    w[0, :3] = 0.0  # a few exact zeros and a large outlier, as real layers have
    w[-1, -1] = 40 * scale
    return w.to(dtype)


def _x(m, k, *, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g).to(dtype).to(DEV)


def _bnb_quantize(w, blocksize, double_quant):
    import bitsandbytes.functional as F

    return F.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")


# ------------------------------------------------------------------------------ reference vs bitsandbytes

@needs_bnb
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("double_quant", [True, False], ids=["dq", "no-dq"])
def test_quantize_nf4_matches_bitsandbytes_bit_for_bit(double_quant, dtype):
    import bitsandbytes.functional as F

    # 150 x 384: 900 blocks of 64 (more than 256, so several nested scales and a partial last one)
    for shape, bs in [((150, 384), 64), ((33, 256), 128), ((5, 7 * 64 + 32), 32)]:
        w = _w(*shape, dtype=dtype)
        w.view(-1)[3 * bs:4 * bs] = 0.0  # an all-zero block
        packed, qs = _bnb_quantize(w, bs, double_quant)
        ours = nf4.quantize_nf4(w, blocksize=bs, double_quant=double_quant)
        assert torch.equal(ours.packed, packed.view(-1))
        assert torch.equal(ours.absmax, qs.absmax)
        assert ours.nested == double_quant and ours.dtype == dtype and ours.blocksize == bs
        if double_quant:
            assert ours.absmax.dtype == torch.uint8
            assert torch.equal(ours.absmax2, qs.state2.absmax)
            assert torch.equal(ours.code2, qs.state2.code)
            assert torch.equal(ours.offset, qs.offset.reshape(1))
            assert ours.blocksize2 == qs.state2.blocksize == 256
        # and bitsandbytes' dequantization of its own state is ours, bit for bit: where there is
        # a GPU, its CUDA kernel's (what --quantized runs). Its 0.50 CPU dequantizer rounds float16
        # without double quantization differently in rare elements (6 of 57,600 by one ulp at
        # 150 x 384, blocks of 64, on the H200 machine's CPU, where the CUDA kernel agrees with
        # ours everywhere: benchmarks/results/2026-12-03-h200-bnb-fp16-check.txt), so on the CPU
        # that case is held to one ulp.
        if torch.cuda.is_available():
            qs_cuda = copy.deepcopy(qs)
            qs_cuda.to("cuda")  # QuantState.to moves it in place (and returns None)
            expected = F.dequantize_4bit(packed.cuda(), qs_cuda).cpu()
        else:
            expected = F.dequantize_4bit(packed, qs)
        assert expected.dtype == dtype
        for got in (nf4.dequantize_nf4(ours), nf4.dequantize_nf4(nf4.NF4Weight.from_quant_state(packed, qs))):
            if torch.cuda.is_available() or dtype != torch.float16 or double_quant:
                assert torch.equal(got, expected)
            else:
                torch.testing.assert_close(got, expected, rtol=2**-10, atol=0)


@needs_bnb
@slow_on_cpu
def test_blocks_straddling_rows_follow_bitsandbytes_flat_layout():
    """K not a multiple of the block: blocks run over the flattened weight (CUDA and bitsandbytes'
    torch implementation). bitsandbytes 0.50.2's AVX-512 CPU dequantizer indexes absmax per row
    there (wrong for such shapes), so compare with its torch implementation instead."""
    default_ops = pytest.importorskip("bitsandbytes.backends.default.ops")
    w = _w(30, 96)  # 96 % 64 = 32: every other block straddles two rows
    packed, qs = _bnb_quantize(w, 64, True)
    import bitsandbytes.functional as F

    absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    expected = default_ops._dequantize_4bit_compute(packed.view(-1), absmax.float(), qs.code, 64, qs.shape, qs.dtype)
    ours = nf4.quantize_nf4(w, 64, True)
    assert torch.equal(ours.packed, packed.view(-1))
    assert torch.equal(nf4.dequantize_nf4(ours), expected)


@needs_bnb
def test_nested_absmax_quantizer_matches_bitsandbytes():
    """The 8-bit step of double quantization (bitsandbytes' CPU quantize_blockwise: a lookup
    table, not the exact nearest code) on many values, an all-zero block and a partial one."""
    import bitsandbytes.functional as F

    g = torch.Generator().manual_seed(7)
    a = torch.randn(256 * 60 + 17, generator=g) * torch.logspace(-3, 1, 256 * 60 + 17)
    a[256:512] = 0.0
    out, state = F.quantize_blockwise(a, blocksize=256)
    q, absmax = nf4._quantize_blockwise_8bit(a, nf4.dynamic_map(), 256)
    assert torch.equal(absmax, state.absmax)
    assert torch.equal(q, out)
    assert (q[256:512] == 0).all()


@needs_bnb
def test_dynamic_map_is_bitsandbytes():
    import bitsandbytes.functional as F

    assert torch.equal(nf4.dynamic_map(), F.create_dynamic_map().float())
    assert torch.equal(torch.tensor(nf4.NF4_CODE), F.get_4bit_type("nf4", device="cpu"))


@needs_bnb
@needs_triton
def test_linear4bit_storage_through_the_kernel():
    """A bitsandbytes Linear4bit (bf16 weights, double quantization, bias): NF4Weight reads its
    storage as is, and nf4_gemv gives bitsandbytes' dequantize_4bit(...) @ x (+ bias)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    lin = bnb.nn.Linear4bit(256, 48, bias=True, compute_dtype=torch.float32, compress_statistics=True,
                            quant_type="nf4")
    lin.weight = bnb.nn.Params4bit(_w(48, 256, dtype=torch.bfloat16), requires_grad=False,
                                   compress_statistics=True, quant_type="nf4")
    lin = lin.to("cpu")  # quantizes
    w4 = nf4.NF4Weight.from_linear4bit(lin)
    assert w4.shape == (48, 256) and w4.dtype == torch.bfloat16 and w4.nested
    assert w4.packed.data_ptr() == lin.weight.data.data_ptr()  # its storage, not a copy
    deq = F.dequantize_4bit(lin.weight.data, lin.weight.quant_state)
    assert torch.equal(nf4.dequantize_nf4(w4), deq)
    bias = lin.bias.detach().float()
    x = _x(2, 256)
    y = nf4.nf4_gemv(x, w4.to(DEV), bias=bias.to(DEV))
    ref = x.cpu() @ deq.float().T + bias
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=1e-5)
    # (lin(x) itself is not the reference: bitsandbytes' CPU forward computes in bf16 here)



@pytest.mark.parametrize("n, k, blocksize, double_quant, dtype", [
    (48, 256, 64, True, torch.bfloat16), (37, 200, 64, False, torch.float32),  # blocks straddle rows
    (17, 1030, 128, True, torch.float16), (64, 512, 256, False, torch.bfloat16)])
def test_fast_dequantize_is_the_reference_bit_for_bit(n, k, blocksize, double_quant, dtype):
    """dequantize_nf4_fast (one Triton kernel: prefill and the steps off the GEMV) decodes exactly
    what dequantize_nf4 (bitsandbytes' dequantize_4bit) does, nested absmax and rounding included."""
    w4 = nf4.quantize_nf4(_w(n, k, dtype=dtype), blocksize=blocksize, double_quant=double_quant)
    ref = nf4.dequantize_nf4(w4)
    got = nf4.dequantize_nf4_fast(w4.to(DEV), kernel=True)
    assert got.dtype == ref.dtype == dtype and got.shape == (n, k)
    assert torch.equal(got.cpu(), ref)
    assert torch.equal(nf4.dequantize_nf4_fast(w4.to(DEV), torch.float32, kernel=True).cpu(), ref.float())


# ------------------------------------------------------------------------------ reference alone

def test_quantize_nf4_invariants():
    """Exact map points times a block's absmax come back exactly; everything else lands within
    half the widest gap of the map (0.16) times its block's absmax."""
    code = torch.tensor(nf4.NF4_CODE)
    blocks = 8
    scales = torch.linspace(0.5, 4.0, blocks)
    # block b: every code once, at scale b (so absmax = scales[b]), x4 to fill 64 elements
    w = (code.repeat(4)[None, :] * scales[:, None]).reshape(4, 128)
    q = nf4.quantize_nf4(w, blocksize=64, double_quant=False)
    assert torch.equal(q.absmax, scales)
    assert torch.equal(nf4.dequantize_nf4(q), w)
    first = torch.tensor([(q.packed[0] >> 4).item(), (q.packed[0] & 15).item()])
    assert first.tolist() == [0, 1]  # the first element in the high nibble

    w = _w(64, 320, seed=3)
    for dq in (False, True):
        q = nf4.quantize_nf4(w, blocksize=64, double_quant=dq)
        err = (nf4.dequantize_nf4(q) - w).abs().reshape(-1, 64)
        absmax = w.reshape(-1, 64).abs().amax(dim=1)
        decoded = nf4.nf4_absmax(q)  # == absmax without double quantization
        if not dq:
            assert torch.equal(decoded, absmax)
        # w = s * absmax with |s| <= 1, decoded as c * decoded with c the code nearest s
        bound = 0.5 * (code[1:] - code[:-1]).max() * decoded + (decoded - absmax).abs()
        assert (err <= bound[:, None] * (1 + 1e-5)).all()
        assert (err.amax(dim=1) > 0).all()  # not trivially: every block loses something
    # bytes a product reads: half a byte per weight, a byte per block of 64, 4 per 256 blocks, maps
    q = nf4.quantize_nf4(w, double_quant=True)
    assert q.nbytes == w.numel() // 2 + q.blocks + 4 * -(-q.blocks // 256) + 4 + 16 * 4 + 256 * 4


@needs_triton
def test_nf4_gemv_refuses_what_it_does_not_take():
    w4 = nf4.quantize_nf4(_w(16, 64)).to(DEV)
    with pytest.raises(ValueError, match="at most"):
        nf4.nf4_gemv(_x(nf4.MAX_ROWS + 1, 64), w4)
    with pytest.raises(ValueError, match="columns"):
        nf4.nf4_gemv(_x(1, 32), w4)
    with pytest.raises(ValueError, match="even K"):
        nf4.nf4_gemv(_x(1, 63), nf4.quantize_nf4(_w(16, 63)).to(DEV))
    with pytest.raises(ValueError, match="unknown nf4_gemv form"):
        nf4.nf4_gemv(_x(1, 64), w4, config=("fast", 8, 64, 4, 2))
    with pytest.raises(ValueError, match="unknown nf4_gemv lut"):
        nf4.nf4_gemv(_x(1, 64), w4, config=("reduce", 8, 64, 4, 2, "octet"))


# ------------------------------------------------------------------------------ the kernel

def _check_gemv(m, n, k, *, wdtype, xdtype, double_quant, blocksize=64, bias=False, config=None):
    w = _w(n, k, dtype=wdtype, seed=n + k)
    w4 = nf4.quantize_nf4(w, blocksize=blocksize, double_quant=double_quant)
    x = _x(m, k, dtype=xdtype)
    b = (torch.randn(n, generator=torch.Generator().manual_seed(5)) * 0.1).to(DEV) if bias else None
    y = nf4.nf4_gemv(x, w4.to(DEV), bias=b, config=config)
    assert y.shape == (m, n) and y.dtype == xdtype
    ref = x.float() @ nf4.dequantize_nf4(w4).float().to(DEV).T
    if bias:
        ref = ref + b
    if xdtype == torch.float32:  # summation order only
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    else:  # + the output's rounding (the interpreter truncates to bf16: up to one ulp)
        ulp = 2.0 ** -7 if xdtype == torch.bfloat16 else 2.0 ** -10
        assert ((y.float() - ref).abs() <= ulp * ref.abs() + 1e-4).all()


@needs_triton
@pytest.mark.parametrize("m, n, k, wdtype, xdtype, dq, cfg", [
    # one row, the reduce form: bf16 weights with fp32 activations pins the in-kernel bf16 rounding
    pytest.param(1, 37, 200, torch.bfloat16, torch.float32, True, ("reduce", 8, 64, 4, 2), id="m1-reduce-dq"),
    # two rows, bf16 model, no double quantization, default config
    pytest.param(2, 24, 128, torch.bfloat16, torch.bfloat16, False, None, id="m2-bf16-nodq"),
    # verify rows through the tensor-core form, blocks straddling rows, bias
    pytest.param(6, 40, 160, torch.float32, torch.float32, True, ("mma", 16, 64, 4, 2), id="m6-mma-dq"),
])
def test_nf4_gemv_matches_dequantized_product(m, n, k, wdtype, xdtype, dq, cfg):
    _check_gemv(m, n, k, wdtype=wdtype, xdtype=xdtype, double_quant=dq, bias=m == 6, config=cfg)


GRID = [
    pytest.param(m, n, k, wdt, xdt, dq, bs, form,
                 id=f"m{m}-{n}x{k}-w{str(wdt)[6:]}-x{str(xdt)[6:]}-{'dq' if dq else 'nodq'}-bs{bs}-{form}",
                 marks=SLOW_ON_CPU)
    for (m, form) in [(1, "reduce"), (2, "reduce"), (5, "mma"), (16, "mma"), (3, "reduce")]
    for (n, k) in [(37, 200), (64, 256), (17, 1030)]
    for (wdt, xdt) in [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                       (torch.bfloat16, torch.float32), (torch.float16, torch.float16)]
    for dq in (True, False)
    for bs in (64, 128)
    if not (bs == 128 and wdt != torch.bfloat16)
]


@needs_triton
@pytest.mark.parametrize("m, n, k, wdtype, xdtype, dq, bs, form", GRID)
def test_nf4_gemv_grid(m, n, k, wdtype, xdtype, dq, bs, form):
    cfg = ("mma", 16, 128, 4, 2) if form == "mma" else ("reduce", 8, 128, 4, 2)
    _check_gemv(m, n, k, wdtype=wdtype, xdtype=xdtype, double_quant=dq, blocksize=bs, bias=m == 2, config=cfg)


@needs_triton
@pytest.mark.parametrize("m, k, bs, dq, cfg", [
    # K a multiple of the block, tiles of whole blocks: the absmax once per block (ALIGNED)
    pytest.param(1, 256, 64, True, ("reduce", 4, 128, 4, 2), id="aligned-m1-reduce-dq"),
    pytest.param(2, 256, 64, False, ("reduce", 4, 256, 2, 2), id="aligned-m2-reduce-nodq"),
    pytest.param(6, 384, 128, True, ("mma", 16, 256, 4, 2), id="aligned-m6-mma-dq-bs128"),
    # the same K with tiles smaller than a block, and K not a multiple of it: per-byte absmax
    pytest.param(1, 256, 64, True, ("reduce", 4, 32, 4, 2), id="general-small-tile-m1-dq"),
    pytest.param(1, 224, 64, True, ("reduce", 4, 128, 4, 2), id="general-straddling-m1-dq"),
    pytest.param(6, 224, 64, False, ("mma", 16, 128, 4, 2), id="general-straddling-m6-mma-nodq"),
    # the 256-entry pair table instead of two nibble lookups, both forms, both paths
    pytest.param(1, 256, 64, True, ("reduce", 4, 128, 4, 2, "pair"), id="pair-aligned-m1-dq"),
    pytest.param(2, 224, 64, False, ("reduce", 4, 128, 4, 2, "pair"), id="pair-general-m2-nodq"),
    pytest.param(6, 256, 64, True, ("mma", 16, 128, 4, 2, "pair"), id="pair-aligned-m6-mma-dq"),
])
def test_nf4_gemv_absmax_paths_and_lookups(m, k, bs, dq, cfg):
    """Every decode path equals the reference product (bf16 weights, fp32 activations: the
    in-kernel rounding of the decoded weight is pinned), with a bias."""
    _check_gemv(m, 24, k, wdtype=torch.bfloat16, xdtype=torch.float32, double_quant=dq, blocksize=bs, bias=True,
                config=cfg)


@needs_triton
@pytest.mark.parametrize("cfg, dq", [
    pytest.param(("reduce", 4, 128, 4, 2), True, id="reduce-aligned-dq"),
    pytest.param(("reduce", 4, 32, 4, 2, "pair"), False, id="reduce-general-pair-nodq"),
    pytest.param(("mma", 16, 128, 4, 2), True, id="mma-aligned-dq"),
    pytest.param(("mma", 16, 128, 4, 2, "pair"), True, id="mma-aligned-pair-dq"),
])
def test_nf4_gemv_decodes_bit_for_bit(cfg, dq):
    """Unit rows pick single weight columns: y == dequantize_nf4(w) exactly (the decoded value
    rounded to bf16 to nearest even, the nested absmax as code2[q] * absmax2 then + offset, no
    FMA contraction). On the CPU the interpreter's rounding by hand; on a GPU the hardware's."""
    n, k = 40, 256
    w4 = nf4.quantize_nf4(_w(n, k, dtype=torch.bfloat16, seed=9), double_quant=dq)
    cols = [0, 1, 63, 64, 127, 130, 200, 255] if cfg[0] == "reduce" else list(range(0, 256, 16))
    x = torch.zeros(len(cols), k)
    x[torch.arange(len(cols)), torch.tensor(cols)] = 1.0
    deq = nf4.dequantize_nf4(w4).float()
    if cfg[0] == "reduce":  # one row at a time: the one-row form
        y = torch.cat([nf4.nf4_gemv(x[i:i + 1].to(DEV), w4.to(DEV), config=cfg).cpu() for i in range(len(cols))])
    else:
        y = nf4.nf4_gemv(x.to(DEV), w4.to(DEV), config=cfg).cpu()
    assert torch.equal(y, deq[:, cols].T)


def test_pair_table_holds_both_codes_of_each_byte():
    code = torch.tensor(nf4.NF4_CODE)
    table = nf4._pair_table(code)
    assert table is nf4._pair_table(code)  # built once per code map
    hi = (table >> 32).to(torch.int32).view(torch.float32)
    lo = (table & 0xFFFFFFFF).to(torch.int32).view(torch.float32)
    b = torch.arange(256)
    assert torch.equal(hi, code[b >> 4]) and torch.equal(lo, code[b & 15])


@needs_triton
@pytest.mark.skipif(DEV != "cuda", reason="programmatic dependent launch: CUDA (sm_90+) only")
@pytest.mark.parametrize("cfg", [("reduce", 4, 1024, 4, 2), ("mma", 16, 256, 4, 2)], ids=["reduce", "mma"])
def test_nf4_gemv_pdl_is_the_same_product(cfg):
    from specdecode.accel import kernels

    if not kernels.pdl_usable(torch.device("cuda")):
        pytest.skip("no programmatic dependent launch on this device")
    w4 = nf4.quantize_nf4(_w(96, 512, dtype=torch.bfloat16), double_quant=True).to(DEV)
    x = _x(2 if cfg[0] == "reduce" else 6, 512, dtype=torch.bfloat16)
    d = _x(x.shape[0], 512, dtype=torch.bfloat16, seed=4)
    nw = _x(1, 512, dtype=torch.bfloat16, seed=5)[0]
    y0, r0 = nf4.nf4_gemv_fused(x, w4, norm=nw, delta=d, config=cfg)
    y1, r1 = nf4.nf4_gemv_fused(x, w4, norm=nw, delta=d, config=cfg, pdl=True)
    assert torch.equal(y0, y1) and torch.equal(r0, r1)


# ------------------------------------------------------------------------------ folded norm / residual

def _fused_reference(x, w4, *, norm, gemma, delta, bias, eps=1e-6):
    """What nf4_gemv_fused computes, in torch: x' = x + delta (in x's dtype), the norm weight
    applied before rounding to x's dtype and the row scale after the product (kernels.gemv's
    numerics); fp32 products."""
    xr = (x.float() + delta.float()).to(x.dtype) if delta is not None else x
    xin = xr.float()
    if norm is not None:
        wn = (1.0 + norm.float()) if gemma else norm.float()
        xin = (xr.float() * wn).to(x.dtype).float()
    ref = xin @ nf4.dequantize_nf4(w4).float().to(x.device).T
    if norm is not None:
        ref = ref * torch.rsqrt(xr.float().pow(2).mean(-1, keepdim=True) + eps)
    if bias is not None:
        ref = ref + bias
    return ref, xr


# the byte-permute lookup (LUT "perm", the CUDA default for one row of 16-bit weights): words of
# codes, 8 decoded tiles, the input split from the contiguous tile (or, "pairs", read as bf16 pairs
# in the weight tile's layout for plain products; also with the map lookup). Under Triton's interpreter the permutes (PTX)
# are stood in for by map loads of the same values (tests/test_nf4_perm.py runs the PTX itself);
# everything else is the kernel's own path.
@needs_triton
@pytest.mark.parametrize("m, wdtype, xdtype, dq, bs, cfg", [
    pytest.param(1, torch.bfloat16, torch.bfloat16, True, 64, ("reduce", 4, 256, 4, 2, "perm", "pairs"), id="bf16-pairs-dq"),
    pytest.param(1, torch.bfloat16, torch.bfloat16, True, 64, ("reduce", 4, 256, 4, 2, "perm"), id="bf16-tile-dq"),
    pytest.param(1, torch.bfloat16, torch.bfloat16, False, 64, ("reduce", 4, 256, 4, 2, "nibble", "pairs"),
                 id="bf16-nibble-pairs-nodq"),
    pytest.param(1, torch.bfloat16, torch.float32, False, 128, ("reduce", 2, 256, 2, 2, "perm"), id="bf16-x32-nodq-bs128"),
    pytest.param(1, torch.float16, torch.float16, True, 64, ("reduce", 8, 128, 4, 2, "perm"), id="fp16-dq"),
    # two rows on the reduction form: each decoded word tile multiplied into both rows
    pytest.param(2, torch.bfloat16, torch.bfloat16, True, 64, ("reduce", 4, 256, 4, 2, "perm"), id="m2-bf16-tile-dq"),
    pytest.param(2, torch.bfloat16, torch.float32, False, 128, ("reduce", 2, 256, 2, 2, "perm"),
                 id="m2-bf16-x32-nodq-bs128"),
    # the tensor-core form: the decoded tile assembled in column order as the left operand
    pytest.param(1, torch.bfloat16, torch.bfloat16, True, 64, ("mma", 16, 128, 4, 2, "perm"), id="mma-m1-bf16-dq"),
    pytest.param(6, torch.bfloat16, torch.bfloat16, True, 64, ("mma", 16, 128, 4, 2, "perm"), id="mma-m6-bf16-dq"),
    pytest.param(6, torch.float16, torch.float16, False, 128, ("mma", 32, 256, 4, 2, "perm"), id="mma-m6-fp16-nodq-bs128"),
])
def test_nf4_gemv_permute_lookup_matches_dequantized_product(m, wdtype, xdtype, dq, bs, cfg):
    _check_gemv(m, 37, 512, wdtype=wdtype, xdtype=xdtype, double_quant=dq, blocksize=bs, bias=True, config=cfg)


@needs_triton
@pytest.mark.parametrize("m, lut, split_k, dq", [
    pytest.param(6, "perm", 3, True, id="m6-perm-3-slices-dq"),   # 512 columns: 2 tiles of 128 bytes, slices of 1, 1, 0
    pytest.param(1, "perm", 2, False, id="m1-perm-2-slices-nodq"),
    pytest.param(6, "perm", 8, True, id="m6-perm-8-slices-dq"),  # the 6-row defaults' count: 6 of 8 slices empty
    pytest.param(6, "nibble", 4, True, id="m6-nibble-4-slices-dq", marks=SLOW_ON_CPU),
])
def test_nf4_gemv_split_k_matches_dequantized_product(m, lut, split_k, dq):
    """The tensor-core form with K in slices (kernels.gemv's scheme: the last program of a column
    tile sums the partials in slice order): the plain product with a bias, and the gated one with
    the residual add and both norms folded (whose sums of squares are split too); the counters
    are left zero and a second call gives the same bits."""
    from specdecode.accel import kernels

    cfg = ("mma", 16, 256, 4, 2, lut, None, split_k)
    _check_gemv(m, 37, 512, wdtype=torch.bfloat16, xdtype=torch.bfloat16, double_quant=dq, bias=True, config=cfg)
    f, k = 40, 512
    gate = nf4.quantize_nf4(_w(f, k, dtype=torch.bfloat16, seed=31), double_quant=dq)
    up = nf4.quantize_nf4(_w(f, k, dtype=torch.bfloat16, seed=32), double_quant=dq)
    merged = nf4.merge_nf4([gate, up]).to(DEV)
    g = torch.Generator().manual_seed(33)
    x = _x(m, k)
    delta = (torch.randn(m, k, generator=g) * 2).to(DEV)
    dn = (torch.randn(k, generator=g) * 0.3).to(DEV)
    norm = (torch.randn(k, generator=g) * 0.3).to(DEV)
    y, r = nf4.nf4_gemv_fused(x, merged, norm=norm, gemma=True, delta=delta, delta_norm=dn, act="silu", config=cfg)
    xr = x + _rms(delta, dn)
    torch.testing.assert_close(r, xr, rtol=1e-6, atol=1e-6)
    both = _rms(xr, norm) @ nf4.dequantize_nf4(merged).float().T
    torch.testing.assert_close(y, torch.nn.functional.silu(both[:, :f]) * both[:, f:], rtol=2e-5, atol=2e-5)
    counters = kernels.scratch(x.device, "gemv split counters", 1, torch.int32)
    assert int(counters.abs().sum()) == 0
    again, _ = nf4.nf4_gemv_fused(x, merged, norm=norm, gemma=True, delta=delta, delta_norm=dn, act="silu", config=cfg)
    assert torch.equal(again, y)
    with pytest.raises(ValueError, match="splits K"):
        nf4.nf4_gemv(x, merged, config=("reduce", 4, 256, 4, 2, None, None, 2))


@needs_triton
def test_nf4_gemv_permute_lookup_decodes_bit_for_bit():
    n, k = 40, 256
    w4 = nf4.quantize_nf4(_w(n, k, dtype=torch.bfloat16, seed=9), double_quant=True)
    deq = nf4.dequantize_nf4(w4).float()
    for col in (0, 1, 6, 7, 63, 64, 130, 255):  # each byte of a word, both nibbles
        x = torch.zeros(1, k, dtype=torch.bfloat16)
        x[0, col] = 1.0
        y = nf4.nf4_gemv(x.to(DEV), w4.to(DEV), config=("reduce", 4, 128, 4, 2, "perm")).cpu()
        assert torch.equal(y[0].float(), deq[:, col].to(torch.bfloat16).float())
    # two rows on the reduction form: two unit rows, each its own column
    for a, b in ((0, 7), (64, 1), (255, 130)):
        x = torch.zeros(2, k, dtype=torch.bfloat16)
        x[0, a] = x[1, b] = 1.0
        y = nf4.nf4_gemv(x.to(DEV), w4.to(DEV), config=("reduce", 4, 128, 4, 2, "perm")).cpu()
        assert torch.equal(y.float(), deq[:, [a, b]].T.to(torch.bfloat16).float())
    # the tensor-core form: 16 unit rows at once, every column of a word in its place
    cols = [*range(8), 8, 15, 63, 64, 130, 200, 254, 255]  # every place in a word, and across blocks
    x = torch.zeros(len(cols), k, dtype=torch.bfloat16)
    x[torch.arange(len(cols)), torch.tensor(cols)] = 1.0
    y = nf4.nf4_gemv(x.to(DEV), w4.to(DEV), config=("mma", 16, 128, 4, 2, "perm")).cpu()
    assert torch.equal(y.float(), deq[:, cols].T.to(torch.bfloat16).float())


@needs_triton
def test_nf4_gemv_permute_lookup_refuses_what_it_cannot_read():
    w4 = nf4.quantize_nf4(_w(24, 200, dtype=torch.bfloat16, seed=3))  # K not a multiple of the block
    with pytest.raises(ValueError, match="lut 'perm' needs 16-bit weights"):
        nf4.nf4_gemv(_x(1, 200, dtype=torch.bfloat16), w4.to(DEV), config=("reduce", 4, 128, 4, 2, "perm"))
    w4 = nf4.quantize_nf4(_w(24, 256, dtype=torch.bfloat16, seed=3))
    with pytest.raises(ValueError, match="lut 'perm' needs 16-bit weights"):  # three rows on the reduce form
        nf4.nf4_gemv(_x(3, 256, dtype=torch.bfloat16), w4.to(DEV), config=("reduce", 4, 128, 4, 2, "perm"))
    with pytest.raises(ValueError, match="unknown nf4_gemv input read"):
        nf4.nf4_gemv(_x(1, 256, dtype=torch.bfloat16), w4.to(DEV), config=("reduce", 4, 128, 4, 2, "perm", "rows"))
    w32 = nf4.quantize_nf4(_w(24, 256, dtype=torch.float32, seed=3))
    with pytest.raises(ValueError, match="lut 'perm' needs 16-bit weights"):  # fp32 weights: no 16-bit planes
        nf4.nf4_gemv(_x(1, 256), w32.to(DEV), config=("reduce", 4, 128, 4, 2, "perm"))


FUSED = [
    pytest.param(1, "norm", "reduce", torch.float32, id="m1-norm-llama-reduce"),
    pytest.param(2, "delta-norm-gemma", "reduce", torch.float32, id="m2-delta-norm-gemma-reduce"),
    pytest.param(5, "delta-norm", "mma", torch.float32, id="m5-delta-norm-llama-mma"),
    pytest.param(2, "delta", "reduce", torch.float32, id="m2-delta-reduce", marks=SLOW_ON_CPU),
    pytest.param(1, "delta-norm-gemma", "reduce", torch.bfloat16, id="m1-delta-norm-gemma-bf16", marks=SLOW_ON_CPU),
    pytest.param(6, "delta-norm", "mma", torch.bfloat16, id="m6-delta-norm-llama-mma-bf16", marks=SLOW_ON_CPU),
    pytest.param(16, "norm-gemma", "mma", torch.float32, id="m16-norm-gemma-mma", marks=SLOW_ON_CPU),
    # the permute lookup with the folds (the input split from the contiguous tile)
    pytest.param(1, "delta-norm", "perm", torch.bfloat16, id="m1-delta-norm-llama-perm-bf16"),
    pytest.param(2, "delta-norm-gemma", "perm", torch.bfloat16, id="m2-delta-norm-gemma-perm-bf16"),
    pytest.param(6, "delta-norm-gemma", "mma-perm", torch.bfloat16, id="m6-delta-norm-gemma-mma-perm-bf16"),
]


@needs_triton
@pytest.mark.parametrize("m, case, form, dtype", FUSED)
def test_nf4_gemv_fused_norm_and_residual(m, case, form, dtype):
    n, k = 40, 200 if "perm" not in form else 256  # (200: no multiple of the tiles; blocks of 64 straddle rows)
    w4 = nf4.quantize_nf4(_w(n, k, dtype=dtype, seed=11), double_quant=True)
    g = torch.Generator().manual_seed(12)
    x = _x(m, k, dtype=dtype)
    delta = (torch.randn(m, k, generator=g) * 2).to(dtype).to(DEV) if "delta" in case else None
    norm = (torch.randn(k, generator=g) * 0.3).to(dtype).to(DEV) if "norm" in case else None
    bias = (torch.randn(n, generator=g) * 0.1).to(DEV) if m == 5 else None
    gemma = "gemma" in case
    cfg = {"mma": ("mma", 16, 64, 4, 2), "reduce": ("reduce", 8, 64, 4, 2), "perm": ("reduce", 4, 128, 4, 2, "perm"),
           "mma-perm": ("mma", 16, 128, 4, 2, "perm")}[form]
    y, r = nf4.nf4_gemv_fused(x, w4.to(DEV), bias=bias, norm=norm, gemma=gemma, eps=1e-6, delta=delta, config=cfg)
    ref, xr = _fused_reference(x, w4, norm=norm, gemma=gemma, delta=delta, bias=bias)
    if delta is None:
        assert r is None
    else:
        assert r.dtype == dtype and torch.equal(r, xr)  # the residual stream after the add, exactly
    if dtype == torch.float32:
        torch.testing.assert_close(y, ref, rtol=2e-5, atol=2e-5)
    else:
        assert ((y.float() - ref).abs() <= 2.0 ** -7 * ref.abs() + 1e-3).all()


# ------------------------------------------------------------------------------ gated, delta norm, merged

def _rms(v, w, eps=1e-6):
    return v.float() * torch.rsqrt(v.float().pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w.float())


@needs_triton
@pytest.mark.parametrize("m, form, act, dq", [
    pytest.param(1, "reduce", "silu", True, id="m1-silu-dq-reduce"),
    pytest.param(6, "mma", "gelu_tanh", False, id="m6-gelu-nodq-mma"),
    pytest.param(1, "perm", "silu", True, id="m1-silu-dq-perm"),
    pytest.param(2, "perm", "gelu_tanh", True, id="m2-gelu-dq-perm"),
    pytest.param(6, "mma-perm", "gelu_tanh", True, id="m6-gelu-dq-mma-perm"),
])
def test_nf4_gemv_fused_gated_with_delta_norm(m, form, act, dq):
    """Gate and up quantized separately (their own quant states), merged, one product: act(gate) * up,
    with the residual's own (Gemma) norm before the add, the input norm, a bias of both halves."""
    f, k = 40, 192  # 40 * 192 = 120 blocks of 64: whole blocks, nested blocks of 256 straddle the seam
    gate = nf4.quantize_nf4(_w(f, k, seed=21), double_quant=dq)
    up = nf4.quantize_nf4(_w(f, k, seed=22), double_quant=dq)
    merged = nf4.merge_nf4([gate, up])
    assert merged.shape == (2 * f, k) and not merged.nested
    assert torch.equal(nf4.dequantize_nf4(merged), torch.cat([nf4.dequantize_nf4(gate), nf4.dequantize_nf4(up)]))
    g = torch.Generator().manual_seed(23)
    x = _x(m, k)
    delta = (torch.randn(m, k, generator=g) * 2).to(DEV)
    dn = (torch.randn(k, generator=g) * 0.3).to(DEV)
    norm = (torch.randn(k, generator=g) * 0.3).to(DEV)
    bias = (torch.randn(2 * f, generator=g) * 0.1).to(DEV)
    cfg = {"mma": ("mma", 16, 64, 4, 2), "reduce": ("reduce", 8, 64, 4, 2), "perm": ("reduce", 4, 128, 4, 2, "perm"),
           "mma-perm": ("mma", 16, 128, 4, 2, "perm")}[form]
    if "perm" in form:  # 16-bit weights (the permute lookup's planes)
        gate, up = (nf4.quantize_nf4(_w(f, k, dtype=torch.bfloat16, seed=s), double_quant=dq) for s in (21, 22))
        merged = nf4.merge_nf4([gate, up])
    y, r = nf4.nf4_gemv_fused(x, merged.to(DEV), bias=bias, norm=norm, gemma=True, delta=delta, delta_norm=dn,
                              act=act, config=cfg)
    xr = x + _rms(delta, dn)
    torch.testing.assert_close(r, xr, rtol=1e-6, atol=1e-6)
    both = _rms(xr, norm) @ nf4.dequantize_nf4(merged).float().to(DEV).T + bias
    a, b = both[:, :f], both[:, f:]
    fn = torch.nn.functional.silu if act == "silu" else (lambda v: torch.nn.functional.gelu(v, approximate="tanh"))
    assert y.shape == (m, f)
    torch.testing.assert_close(y, fn(a) * b, rtol=2e-5, atol=2e-5)


def test_merge_nf4_refuses_parts_it_cannot_stack():
    a = nf4.quantize_nf4(_w(3, 40))  # 120 elements: not a whole number of blocks of 64
    b = nf4.quantize_nf4(_w(8, 40))
    with pytest.raises(ValueError, match="whole number of blocks"):
        nf4.merge_nf4([a, b])
    nf4.merge_nf4([b, a])  # the last part may end in a partial block
    with pytest.raises(ValueError, match="part 1"):
        nf4.merge_nf4([b, nf4.quantize_nf4(_w(8, 64))])


# ------------------------------------------------------------------------------ the fused layers on NF4 weights

V = 120
_PROJ = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
         ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def _tiny(arch="llama"):
    """A 2-layer model of hidden size 64 (as tests/test_fused.py builds them), fp32, non-trivial norms."""
    import transformers as tf

    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        cfg = tf.LlamaConfig(**common)
    elif arch == "qwen2":  # q/k/v biases
        cfg = tf.Qwen2Config(**common)
    else:  # Gemma 3: four norms (the delta norms), sliding + full layers, soft-capped logits
        cfg = tf.Gemma3TextConfig(**common, head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
                                  layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=30.0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.1)
    return model


def _projections(model):
    for layer in model.model.layers:
        for part, attr in _PROJ:
            yield getattr(layer, part), attr


def _quantize(model, quant_type="nf4", double_quant=True):
    """Every projection replaced by a bitsandbytes Linear4bit, quantized on the CPU."""
    import bitsandbytes as bnb

    for parent, attr in _projections(model):
        lin = getattr(parent, attr)
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=torch.float32, compress_statistics=double_quant, quant_type=quant_type)
        q.weight = bnb.nn.Params4bit(lin.weight.detach().clone(), requires_grad=False,
                                     compress_statistics=double_quant, quant_type=quant_type)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        setattr(parent, attr, q.to("cpu"))  # quantizes
    return model


def _dequantized(quantized, arch):
    """The same model with each Linear4bit replaced by an nn.Linear of its dequantized weight."""
    ref = _tiny(arch)
    for (parent, attr), (qparent, _) in zip(_projections(ref), _projections(quantized)):
        lin4 = getattr(qparent, attr)
        with torch.no_grad():
            getattr(parent, attr).weight.copy_(nf4.dequantize_nf4(nf4.NF4Weight.from_linear4bit(lin4)))
            if lin4.bias is not None:
                getattr(parent, attr).bias.copy_(lin4.bias)
    return ref


@pytest.fixture
def wide_nf4_config(monkeypatch):
    """One- and two-row products in wide programs: the same reduction form, a few programs instead of
    dozens (Triton's interpreter runs programs one by one)."""
    default = nf4.nf4_gemv_config
    monkeypatch.setattr(nf4, "nf4_gemv_config",
                        lambda m, n, k, *kind: ("reduce", 64, 128, 4, 2) if m <= 2 else default(m, n, k, *kind))


def _steps(runner, widths):
    """Prefill 10 tokens, then one step of each width (all of its tokens kept); logits of each."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(4, V, (1, 10), generator=gen)
    cache = runner.new_cache(1, 64)
    out = [runner.prefill(x, cache, attend_len=10, logits_to_keep=0)]
    cache.set_positions(torch.tensor([10]))
    pos = 10
    for q in widths:
        ids = torch.randint(4, V, (1, q), generator=gen)
        out.append(runner.forward(ids, cache, attend_len=pos + q, logits_to_keep=0))
        cache.advance(torch.tensor([q]))
        pos += q
    return out


def _check_steps(arch, double_quant, widths=(1, 2, 6, 17), kernel_rows=16):
    """The NF4 model's fused steps (prefill, then steps of `widths` rows) against the dense fp32
    fused path; returns the NF4 runner."""
    from specdecode.accel.runner import ModelRunner

    model = _quantize(_tiny(arch), double_quant=double_quant)
    ref = _dequantized(model, arch)
    runner = ModelRunner(model, fused=True, kernels=True, nf4=True, nf4_kernel_rows=kernel_rows)
    fused = runner.fused
    assert fused.nf4 and fused.kernels
    assert "fused NF4 kernels" in runner.describe()
    # the merged q/k/v codes are the modules' own storage (re-pointed, not copied)
    w0 = fused.weights[0].wqkv
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.data.data_ptr() == w0.packed.data_ptr()
    assert w0.shape == ((fused.shape.n_heads + 2 * fused.shape.n_kv) * fused.shape.head_dim, 64)
    got = _steps(runner, widths)
    expected = _steps(ModelRunner(ref, fused=True), widths)  # the fp32 fused path on dense weights
    for q, a, b in zip((10, *widths), expected, got):  # prefill, kernel steps, and 17 rows (dequantized)
        assert b.shape == a.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m: f"step of {q} rows: {m}")
    return runner


@needs_bnb
@needs_triton
def test_fused_nf4_steps_match_the_dequantized_model(wide_nf4_config):
    """Llama, double-quantized NF4: steps of 1 and 2 rows (reduction form), 6 (the verify: tensor-core
    form) and 17 (more than the kernel takes: dequantized per layer) equal the dense fp32 fused path."""
    _check_steps("llama", True)


@needs_bnb
@needs_triton
@pytest.mark.skipif(DEV == "cuda", reason="a CPU model on the kernels through Triton's interpreter; on a GPU "
                    "machine (no interpreter) CPU tensors fall back to the compiled layers")
def test_nf4_steps_past_the_kernel_rows_run_dequantized(wide_nf4_config, monkeypatch):
    """By default (fused.NF4_KERNEL_ROWS, 16) steps of 1, 2 and 6 rows (the verify of k 5) run on
    the NF4 GEMV and 17 rows on the compiled layers over weights dequantized one layer at a time
    (nf4.dequantize_nf4_fast); with fewer kernel rows, the steps past them up to max_mixed_rows run
    the bf16 kernels' mixed step over dequantized layers (_nf4_mixed_forward): the same values."""
    from specdecode.accel import fused as fused_mod

    calls = []
    fast = nf4.dequantize_nf4_fast
    monkeypatch.setattr(nf4, "dequantize_nf4_fast", lambda *a, **k: calls.append(1) or fast(*a, **k))
    assert fused_mod.NF4_KERNEL_ROWS == 16
    mixed = []
    step = fused_mod.FusedModel._nf4_mixed_forward
    monkeypatch.setattr(fused_mod.FusedModel, "_nf4_mixed_forward", lambda self, *a: mixed.append(a[0].shape) or step(self, *a))
    runner = _check_steps("llama", True, widths=(1, 2, 6, 17), kernel_rows=None)
    assert calls  # prefill and the 17-row step dequantized through dequantize_nf4_fast (the kernel on CUDA)
    assert mixed == []
    assert {(b, q) for b, q, _ in runner.fused._kernel_shapes} == {(1, 1), (1, 2), (1, 6)}
    _check_steps("llama", True, widths=(1, 6), kernel_rows=2)
    assert mixed == [torch.Size([1, 6])]


@needs_bnb
@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("arch, dq", [("llama", False), ("qwen2", True), ("gemma3", True)],
                         ids=["llama-nodq", "qwen2-bias", "gemma3-delta-norms"])
@pytest.mark.parametrize("kernel_rows", [16, None], ids=["nf4-forms", "default-rows"])
def test_fused_nf4_steps_match_the_dequantized_model_more(arch, dq, kernel_rows):
    """The default launch configurations, no double quantization, q/k/v biases, Gemma 3's four norms
    (its residual norms folded into the NF4 products) and soft-capped logits; the 6-row step on the
    NF4 forms, and by default on the bf16 kernels over dequantized layers (_nf4_mixed_forward)."""
    _check_steps(arch, dq, widths=(1, 2, 6), kernel_rows=kernel_rows)


@needs_bnb
@needs_triton
@slow_on_cpu
def test_fused_nf4_greedy_tokens_match_the_dequantized_model(wide_nf4_config):
    from specdecode.accel.runner import ModelRunner

    model = _quantize(_tiny())
    ref = _dequantized(model, "llama")

    def greedy(runner, steps=8):
        x = torch.randint(4, V, (1, 7), generator=torch.Generator().manual_seed(3))
        cache = runner.new_cache(1, 32)
        tok = runner.prefill(x, cache, attend_len=7, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        cache.set_positions(torch.tensor([7]))
        tokens = [tok.item()]
        for i in range(steps - 1):
            tok = runner.forward(tok, cache, attend_len=8 + i)[:, -1].argmax(-1, keepdim=True)
            cache.advance(torch.tensor([1]))
            tokens.append(tok.item())
        return tokens

    runner = ModelRunner(model, fused=True, kernels=True, nf4=True)
    assert runner.fused.nf4 and runner.fused.kernels
    assert greedy(runner) == greedy(ModelRunner(ref, fused=True))


@needs_bnb
def test_fused_support_names_what_it_refuses():
    import bitsandbytes as bnb

    from specdecode.accel.fused import fused_support
    from specdecode.accel.runner import ModelRunner
    from specdecode.decoding.step import UnsupportedModelError

    model = _quantize(_tiny())
    assert fused_support(model, nf4=True) is None
    assert "uint8" in fused_support(model)  # nf4 off (the default): refused as before
    with pytest.raises(UnsupportedModelError):
        ModelRunner(model, fused=True)
    runner = ModelRunner(model, fused=True, nf4=True)  # no kernels: dequantized per layer
    assert runner.fused.nf4 and not runner.fused.kernels
    assert "NF4 weights dequantized one layer at a time" in runner.describe()

    fp4 = _quantize(_tiny(), quant_type="fp4")
    assert "fp4" in fused_support(fp4, nf4=True)
    mixed = _quantize(_tiny())
    mixed.model.layers[1].mlp.down_proj = torch.nn.Linear(96, 64, bias=False)
    assert "layers.1.mlp.down_proj is Linear" in fused_support(mixed, nf4=True)
    eight = _tiny()
    eight.model.layers[0].self_attn.q_proj = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
    assert "Linear8bitLt" in fused_support(eight, nf4=True)
    head = _quantize(_tiny())
    head.lm_head = _quantize_one(head.lm_head)
    assert "Linear4bit" in fused_support(head, nf4=True)
    # a plain model with nf4 allowed: the plain fused path
    plain = ModelRunner(_tiny(), fused=True, nf4=True)
    assert not plain.fused.nf4 and "NF4" not in plain.describe()


def _quantize_one(lin):
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.float32,
                          quant_type="nf4")
    q.weight = bnb.nn.Params4bit(lin.weight.detach().clone(), requires_grad=False, quant_type="nf4")
    return q.to("cpu")


def test_inspect_counts_nf4_weights_as_stored(llama_pair):
    """`inspect`'s weight memory of a --quantized model: each nn.Linear but the LM head as the NF4
    bytes a double-quantized weight holds (NF4Weight.nbytes), everything else in the dtype."""
    from transformers import AutoModelForCausalLM

    from specdecode.inspect import describe_model

    info = describe_model(str(llama_pair.target), None, "bfloat16", True, False)
    model = AutoModelForCausalLM.from_pretrained(llama_pair.target)
    head = model.get_output_embeddings()
    linear = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head}
    expected = sum(nf4.quantize_nf4(w.detach()).nbytes for w in linear.values())
    expected += 2 * sum(p.numel() for p in model.parameters() if id(p) not in linear)
    assert info["memory_bytes"] == expected


@needs_bnb
@needs_triton
@pytest.mark.slow
@pytest.mark.skipif(DEV != "cpu", reason="the CPU stand-in for the H200 run of benchmarks/nf4_bench.py")
def test_nf4_bench_smoke_measures_every_path(tmp_path):
    """benchmarks/nf4_bench.py on a tiny Qwen2 target on the CPU: bf16, NF4 on the transformers
    modules and NF4 on the fused kernels (the script exits if that step falls back), with the
    floors and one check per target of the issue in the JSON it writes."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "nf4_bench.py"), "--pairs", "tiny", "--device",
                           "cpu", "--out", str(tmp_path), "--repeats", "1", "--prompt-len", "8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (found,) = tmp_path.glob("*-cpu-nf4.json")
    results = json.loads(found.read_text())
    (row,) = results["rows"]
    assert "fused NF4 kernels" in row["nf4_kernels_path"]
    assert 0 < row["nf4_bytes"] < row["bf16_bytes"] and row["nf4_floor_ms"] < row["bf16_floor_ms"]
    for key in ("bf16_ms", "nf4_modules_ms", "nf4_kernels_ms"):
        assert row[key] > 0
    assert set(results["checks"]) == {"tiny_nf4_le_0.75x_bf16", "tiny_nf4_le_1.6x_nf4_floor"}
    assert (tmp_path / found.name.replace(".json", ".md")).is_file()
