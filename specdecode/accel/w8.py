"""Int8 weight-only copies of a draft model's decode products, and the Triton GEMV that reads them.

Why the draft. A draft step at batch 1 reads every weight once, so its time follows its weight
bytes; the draft's proposals only have to be good guesses, since the target verifies every one
(greedy output stays the target's own, sampling keeps the target's distribution whatever q
is). Reading the draft's decode products as int8 halves those bytes at the price of a draft
that agrees slightly less often with itself in bf16. The target's weights are never touched.

Format (``Int8Weight``): symmetric per-output-row quantization, q = round(w / s) in [-127, 127]
with s = max|w_row| / 127, stored as u = q + 128 (uint8). The decode is two integer ops and a
subtraction per weight: the float whose bits are 0x4B000000 | u is 2^23 + u exactly, so
(that float) - (2^23 + 128) = q, with no conversion instruction. Bytes are stored in pairs
(int16) so that a thread's 16-byte load holds 8 pairs, the same count as its 8 bf16 inputs:
within each granule of GRAN columns, pair j holds columns j (low byte) and j + GRAN/2 (high
byte). The input's two halves of each granule are then plain contiguous loads, each in the
register layout of the pair tile (no exchange through shared memory per tile), as the bf16
kernel's input tile is in its weight tile's. Rows are padded with q = 0 to a whole number of
granules.

``gemv8`` computes y = f(x) @ (q * s)^T with kernels.gemv's folding (residual add written
back, the residual's own norm, the input RMS norm, the gated activation) for one or two rows:
the products accumulate in fp32 on q, and the row scale s multiplies the accumulator at the
end. The normed input is rounded to x's dtype as in the bf16 kernels. ``dequantize_int8``
gives q * s (the reference the tests check the kernel against).

Wired into accel/fused.py as ``FusedModel(int8=True)``: the one- and two-row steps (a draft's
steps at batch 1, its first step of a round) read the int8 copies, the head included (the
final norm and last residual add folded into its product); prefill and larger steps keep the
model's own weights. The settings turn it on for the draft model (``--draft-int8``).

On CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1), which is how the tests
check it (tests/test_w8.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import kernels as _k

triton = _k.triton
tl = _k.tl

__all__ = ["AVAILABLE", "GRAN", "Int8Weight", "dequantize_int8", "gemv8", "gemv8_config", "quantize_int8"]

AVAILABLE = _k.AVAILABLE
# columns per pairing granule: pair j of a granule holds its columns j and j + GRAN/2
GRAN = 128
MAX_ROWS = 2
_MAGIC = 8388736.0  # 2^23 + 128: float(0x4B000000 | u) - _MAGIC == u - 128


@dataclass(frozen=True)
class Int8Weight:
    """An [n, k] weight as int8 with one float32 scale per row (see the module doc)."""

    pairs: Tensor  # int16 [n, kp / 2]: u = q + 128 paired within granules of GRAN columns
    scale: Tensor  # float32 [n]
    k: int  # real input size (kp = k rounded up to GRAN)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.pairs.shape[0], self.k)

    @property
    def nbytes(self) -> int:
        return self.pairs.numel() * 2 + self.scale.numel() * 4


def quantize_int8(weight: Tensor) -> Int8Weight:
    """Symmetric per-row int8 of a floating-point [n, k] weight (zero rows get scale 1)."""
    if weight.dim() != 2:
        raise ValueError(f"quantize_int8 takes a 2-D weight, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    with torch.no_grad():
        w = weight.detach().float()
        amax = w.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(w / scale[:, None]).clamp_(-127, 127)
        kp = -(-k // GRAN) * GRAN
        u = torch.full((n, kp), 128, dtype=torch.uint8, device=weight.device)
        u[:, :k] = (q + 128).to(torch.uint8)
        # [n, granules, 2 halves, GRAN/2] -> [n, granules, GRAN/2, 2]: byte 0 (low) = first half
        pairs = u.view(n, kp // GRAN, 2, GRAN // 2).transpose(2, 3).contiguous().view(torch.int16).view(n, kp // 2)
    return Int8Weight(pairs=pairs, scale=scale.contiguous(), k=k)


def int8_codes(w: Int8Weight) -> Tensor:
    """The stored q [n, k] (int16 values in [-127, 127]), unpaired."""
    n = w.pairs.shape[0]
    kp = w.pairs.shape[1] * 2
    u = w.pairs.view(torch.uint8).view(n, kp // GRAN, GRAN // 2, 2).transpose(2, 3).reshape(n, kp)
    return u[:, : w.k].to(torch.int16) - 128


def dequantize_int8(w: Int8Weight, dtype: torch.dtype = torch.float32) -> Tensor:
    """q * s as an [n, k] tensor of `dtype` (computed in float32)."""
    return (int8_codes(w).float() * w.scale[:, None]).to(dtype)


def gemv8_config(m: int, n: int, k: int, gated: bool, norm: bool = False,
                 pdl: bool = False) -> tuple[str, int, int, int, int]:
    """(form, BLOCK_N, BLOCK_K, num_warps, num_stages) for gemv8; form "reduce" or "prefetch" (the
    next tile's pairs loaded before this one's arithmetic). BLOCK_K (columns) is a multiple of
    512 x warps: a warp's pair tile row then holds 256 x warps pairs, the input half-tiles'
    layout (see the module doc). Start values for the Qwen2.5 0.5B draft shapes, pending the
    H200 sweep (benchmarks/kernel_bench.py --int8)."""
    form = "prefetch" if pdl else "reduce"
    if k > 2048:  # long rows (down projections): wide programs, one output row each
        return (form, 1, 4096, 8, 2)
    if gated:
        return (form, 2, 512, 1, 2)
    if n > 16384:  # a vocabulary head
        return (form, 8, 1024, 2, 2)
    return (form, 4 if norm else 2, 1024, 2, 2)


if AVAILABLE:

    @triton.jit
    def _decode8(p):
        """int16 pair tile -> (low columns, high columns) as float32 q values."""
        v = p.to(tl.int32)
        lo = ((v & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
        hi = (((v >> 8) & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
        return lo, hi

    @triton.jit
    def _pair_tiles(w_rows, w2_rows, n_ok, pk, lo_ok, GATED: tl.constexpr):
        """The pair tiles [BLOCK_N, BLOCK_K / 2] at pair columns pk (gate and up rows when GATED)."""
        wmask = n_ok[:, None] & lo_ok[None, :]
        w = tl.load(w_rows + pk[None, :], mask=wmask, other=0)
        w2 = w
        if GATED:
            w2 = tl.load(w2_rows + pk[None, :], mask=wmask, other=0)
        return w, w2

    @triton.jit
    def _half_columns(k0, rp, GRAN_: tl.constexpr):
        """The columns of a tile's low and high bytes: pair rp of the tile at column k0."""
        half: tl.constexpr = GRAN_ // 2
        lo = k0 + (rp // half) * GRAN_ + rp % half
        return lo, lo + half

    @triton.jit
    def _row8(X, sxm, D, sdm, WD, WN, R, srm, Y, row, r_ok, lo, hi, K, rsd, pid,
              HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
              WRITE_R: tl.constexpr):
        """One row's input half-tiles at columns lo and hi: (x' lo, x' hi in fp32, normed inputs
        rounded to x's dtype as [1, BLOCK_K / 2] fp32 tiles in the pair tile's layout)."""
        xf_l, xn_l = _k._input_tile(X, sxm, D, sdm, WD, WN, R, srm, row, r_ok, lo, lo < K, rsd, pid,
                                    HAS_D, D_NORM, NORM, GEMMA, WRITE_R)
        xf_h, xn_h = _k._input_tile(X, sxm, D, sdm, WD, WN, R, srm, row, r_ok, hi, hi < K, rsd, pid,
                                    HAS_D, D_NORM, NORM, GEMMA, WRITE_R)
        xdt = Y.dtype.element_ty
        xl = tl.sum(xn_l.to(xdt).to(tl.float32), axis=0)[None, :]  # the pair tile's layout decides
        xh = tl.sum(xn_h.to(xdt).to(tl.float32), axis=0)[None, :]
        return xf_l, xf_h, xl, xh

    @triton.jit
    def _gemv8_kernel(
        X, sxm, D, sdm, WD, WN, W, swn, WS, BIAS, Y, sym, R, srm,
        M, N, K, eps,
        HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
        GATED: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_R: tl.constexpr,
        PREFETCH: tl.constexpr, PDL: tl.constexpr, TWO: tl.constexpr, GRAN_: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """Y[M, N] = f(X)[M, K] @ (q * s)[N, K]^T (+ bias) for M <= 2 (TWO: a second row), W the
        int16 pair matrix ([2N, kp/2] gate rows then up rows when GATED), WS the row scales.
        Each pair tile is loaded once and decoded once for both rows; each row's products
        accumulate in [BLOCK_N, BLOCK_K / 16] fp32 tiles (8 contiguous pairs a thread summed in
        place, reduced across threads once after the loop)."""
        HALF: tl.constexpr = BLOCK_K // 2
        pid = tl.program_id(0)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rp = tl.arange(0, HALF)
        rowa = tl.arange(0, 1)
        rowb = rowa + 1
        a_ok = rowa < M
        b_ok = rowb < M
        w_rows = W + rn[:, None] * swn
        w2_rows = W + (rn + N)[:, None] * swn
        lo0, _ = _half_columns(0, rp, GRAN_)
        w_nx, w2_nx = w_rows, w2_rows
        if PREFETCH:
            w_nx, w2_nx = _pair_tiles(w_rows, w2_rows, n_ok, rp, lo0 < K, GATED)
        _k._pdl_enter(PDL)
        rsd_a = _k._delta_scale(D, sdm, rowa, a_ok, K, eps, HAS_D, D_NORM, 1, BLOCK_K)
        rsd_b = rsd_a
        if TWO:
            rsd_b = _k._delta_scale(D, sdm, rowb, b_ok, K, eps, HAS_D, D_NORM, 1, BLOCK_K)
        ss_a = tl.zeros([1, HALF], dtype=tl.float32)
        ss_b = tl.zeros([1, HALF], dtype=tl.float32)
        acc_a = tl.zeros([BLOCK_N, HALF // 8], dtype=tl.float32)
        acc2_a = tl.zeros([BLOCK_N, HALF // 8], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_N, HALF // 8], dtype=tl.float32)
        acc2_b = tl.zeros([BLOCK_N, HALF // 8], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            pk = k0 // 2 + rp
            lo, hi = _half_columns(k0, rp, GRAN_)
            if PREFETCH:
                w, w2 = w_nx, w2_nx
                lo_n, _ = _half_columns(k0 + BLOCK_K, rp, GRAN_)
                w_nx, w2_nx = _pair_tiles(w_rows, w2_rows, n_ok, pk + HALF, lo_n < K, GATED)
            else:
                w, w2 = _pair_tiles(w_rows, w2_rows, n_ok, pk, lo < K, GATED)
            wl, wh = _decode8(w)
            w2l, w2h = wl, wh
            if GATED:
                w2l, w2h = _decode8(w2)
            xfl, xfh, xl, xh = _row8(X, sxm, D, sdm, WD, WN, R, srm, Y, rowa, a_ok, lo, hi, K, rsd_a, pid,
                                     HAS_D, D_NORM, NORM, GEMMA, WRITE_R)
            if NORM:
                ss_a += xfl * xfl + xfh * xfh
            acc_a += _k._row_partial(xl, wl, BLOCK_N, HALF) + _k._row_partial(xh, wh, BLOCK_N, HALF)
            if GATED:
                acc2_a += _k._row_partial(xl, w2l, BLOCK_N, HALF) + _k._row_partial(xh, w2h, BLOCK_N, HALF)
            if TWO:
                xfl, xfh, xl, xh = _row8(X, sxm, D, sdm, WD, WN, R, srm, Y, rowb, b_ok, lo, hi, K, rsd_b, pid,
                                         HAS_D, D_NORM, NORM, GEMMA, WRITE_R)
                if NORM:
                    ss_b += xfl * xfl + xfh * xfh
                acc_b += _k._row_partial(xl, wl, BLOCK_N, HALF) + _k._row_partial(xh, wh, BLOCK_N, HALF)
                if GATED:
                    acc2_b += _k._row_partial(xl, w2l, BLOCK_N, HALF) + _k._row_partial(xh, w2h, BLOCK_N, HALF)
        s1 = tl.load(WS + rn, mask=n_ok, other=0.0)[None, :]
        s2 = s1
        if GATED:
            s2 = tl.load(WS + N + rn, mask=n_ok, other=0.0)[None, :]
        out, up = _k._acc_results(acc_a, acc2_a, GATED, False, True)
        _k._gemv_epilogue(out * s1, up * s2, tl.sum(ss_a, axis=1), K, eps, BIAS, rn, n_ok, N, Y, sym, rowa, a_ok,
                          NORM, HAS_BIAS, GATED, ACT)
        if TWO:
            out, up = _k._acc_results(acc_b, acc2_b, GATED, False, True)
            _k._gemv_epilogue(out * s1, up * s2, tl.sum(ss_b, axis=1), K, eps, BIAS, rn, n_ok, N, Y, sym, rowb,
                              b_ok, NORM, HAS_BIAS, GATED, ACT)


def gemv8(x: Tensor, weight: Int8Weight, *, bias: Tensor | None = None, norm: Tensor | None = None,
          gemma: bool = False, eps: float = 1e-6, delta: Tensor | None = None,
          delta_norm: Tensor | None = None, act: str | None = None,
          config: tuple[str, int, int, int, int] | None = None, pdl: bool = False) -> tuple[Tensor, Tensor | None]:
    """kernels.gemv's product and folding (same arguments) on an int8 weight, for at most two rows."""
    lead = x.shape[:-1]
    k = x.shape[-1]
    if weight.k != k:
        raise ValueError(f"gemv8: the weight takes {weight.k} inputs, x has {k}")
    n = weight.pairs.shape[0] // 2 if act is not None else weight.pairs.shape[0]
    x2, y, d2, r = _k.gemv_operands(x, n, delta, MAX_ROWS, "gemv8")
    m = x2.shape[0]
    if config is None:
        config = gemv8_config(m, n, k, act is not None, norm is not None, pdl)
        if not x.is_cuda:  # Triton's interpreter runs program after program: few, wide ones
            config = _k.interpreted(config)
    form, block_n, block_k, warps, stages = config
    if form not in ("reduce", "prefetch"):
        raise ValueError(f"unknown gemv8 form {form!r} (reduce, prefetch)")
    if block_k % GRAN or block_k & (block_k - 1):
        raise ValueError(f"gemv8: BLOCK_K must be a power-of-two multiple of {GRAN}, got {block_k}")
    if pdl:
        form = "prefetch"
    block_n = max(1, min(block_n, triton.next_power_of_2(n)))
    grid = (triton.cdiv(n, block_n),)
    _gemv8_kernel[grid](
        x2, x2.stride(0), d2, d2.stride(0),
        delta_norm if delta_norm is not None else x2, norm if norm is not None else x2,
        weight.pairs, weight.pairs.stride(0), weight.scale, bias if bias is not None else x2,
        y, y.stride(0), r, r.stride(0), m, n, k, float(eps),
        HAS_D=delta is not None, D_NORM=delta_norm is not None, NORM=norm is not None, GEMMA=bool(gemma),
        GATED=act is not None, ACT=_k.ACTIVATIONS[act] if act is not None else 0, HAS_BIAS=bias is not None,
        WRITE_R=delta is not None, PREFETCH=form == "prefetch", TWO=m == 2, GRAN_=GRAN,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages, **_k._pdl_args(pdl),
    )
    return y.view(*lead, n), (r.view(*lead, k) if delta is not None else None)
