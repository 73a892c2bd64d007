"""Triton kernels for decode-sized steps: a few query rows per sequence (draft [B, 1], verify [B, k+1]).

A decode step reads every weight once and does little arithmetic with it, so its speed is the
rate at which the weights stream in; what costs time besides that is the number of kernels
(each one a launch gap and a ramp-up/drain) and the small ones between the matrix products
(norms, residual adds, rotary embedding, softmax). These kernels fold that small work into the
matrix products themselves, so a decoder layer of one or two rows runs as five kernels (steps
of more rows, the verify, run the tensor-core form of the same products but keep cuBLAS for the
down projection: see MAX_ROWS):

    gemv     h' = h + norm_prev(d); qkv = norm_in(h') @ Wqkv       (residual + both norms in)
    attention   q/k norm, rotary, cache write, attention           (one kernel, + a combine)
    gemv     o = attn @ Wo
    gemv     h'' = h' + norm_post(o); a = act(norm_pre(h'') @ Wg) * (norm_pre(h'') @ Wu)
    gemv     d = a @ Wd                                             (its norm and residual go
                                                                     into the next layer's qkv)

How the norms fold in. An RMS norm is y = x * rsqrt(mean(x^2) + eps) * w. The per-column
weight w multiplies x as its tiles are loaded; the per-row scale rsqrt(...) is a scalar that
commutes with the product, so it is applied to the accumulator at the end, and mean(x^2) is
accumulated along the way from the same tiles of x the product loads anyway. One pass, no
separate norm kernel. A residual's own norm (Gemma's post-norms) needs its scale before the sum
h + norm(d) can be formed, so those kernels first reduce d (a few KB, from L2) and then stream.

Numerics: the norm weight is applied before rounding to the weight dtype and the row scale
after the product, so bf16 results differ from transformers' in rounding only (the same
kind of differences as any other kernel choice); fp32 matches to summation order (tested
against the reference layers, and greedy exactness in fp32 is tested on CUDA).

Without Triton (or off CUDA) nothing here is used. On CPU the kernels run under Triton's
interpreter (TRITON_INTERPRET=1), which is how the tests check them against torch.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

try:  # optional: the compiled CUDA path uses these kernels when Triton is importable
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - ImportError, or a broken Triton install
    triton = None
    tl = None

__all__ = ["AVAILABLE", "ACTIVATIONS", "MAX_HIDDEN", "MAX_MLP_ROWS", "MAX_ROWS", "PDL_AVAILABLE", "decode_attention",
           "gemv", "gemv_config", "gemv_operands", "lane", "mlp", "mlp_config", "splits_k", "split_buffers", "pdl_usable", "scratch",
           "usable_on"]

AVAILABLE = triton is not None

# Programmatic dependent launch (Hopper and later, Triton's grid dependency control): a kernel
# launched with it may start while the kernel before it in the stream is still running; it
# loads what no earlier kernel of the step writes (its weights) and then waits for its
# predecessor's results (gdc_wait). In a decode step of ~150 dependent kernels this hides each
# kernel's launch and its first weight loads behind the one before.
try:
    from triton.language.extra.cuda import gdc_launch_dependents as _gdc_launch, gdc_wait as _gdc_wait
    PDL_AVAILABLE = True
except Exception:  # pragma: no cover - Triton without grid dependency control
    _gdc_launch = _gdc_wait = None
    PDL_AVAILABLE = False

# Decode steps of at most this many rows (batch x query tokens) run wholly on the kernels; larger
# ones (the verify) as FusedModel's multi_row says. One row: the draft's steps at batch 1 and
# target-alone decoding; two: a draft round's first step over [prev, last], and batch 2. From
# three rows on only the tensor-core form's cost does not grow with the rows, and it loses to
# cuBLAS on a long down projection (measurements: benchmarks/results/2026-12-02-rules.md and
# 2026-12-02-h200-kernels-qwen.txt).
MAX_ROWS = 2
# ... and models of at most this hidden size: the kernels' matrix-vector products beat cuBLAS on
# small matrices (their fixed costs, and the norm kernels they fold in, weigh most there) and lose
# on large ones (the same file has the step times per model size).
MAX_HIDDEN = 3072
# gemv takes up to this many rows (the tensor-core form; FusedModel's max_mixed_rows says which
# steps use it: tests exercise the multi-row form)
MAX_GEMV_ROWS = 32

# gemv's forms (see _gemv_kernel): elementwise reduction, the same with the next weight tile
# prefetched, tensor cores
FORMS = ("reduce", "prefetch", "mma")

# activation name -> code in the kernel
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}


def usable_on(device: torch.device) -> bool:
    """Whether the compiled path uses the kernels on `device` by default: CUDA with Triton.
    (--no-kernels turns them off. Asked for explicitly they also run on CPU tensors
    under Triton's interpreter, TRITON_INTERPRET=1: that is how the tests check them.)"""
    if not AVAILABLE:
        return False
    return device.type == "cuda"


def pdl_usable(device: torch.device) -> bool:
    """Whether the kernels can launch with programmatic dependent launch on `device` (CUDA compute
    capability 9.0 or later, and a Triton with grid dependency control)."""
    if not (AVAILABLE and PDL_AVAILABLE and device.type == "cuda"):
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (9, 0)


if AVAILABLE:

    @triton.jit
    def _pdl_enter(PDL: tl.constexpr):
        """Under programmatic dependent launch: let the next kernel launch, then wait for the
        previous one's results. Everything a kernel loads before this must be immutable (weights)."""
        if PDL:
            _gdc_launch()
            _gdc_wait()

    @triton.jit
    def _delta_rms(D, sdm, rm, m_ok, K, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        """Per-row RMS scale of the residual delta D [M, K] (its own norm comes before the add)."""
        rk = tl.arange(0, BLOCK_K)
        ssd2 = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            dm = m_ok[:, None] & (kk < K)[None, :]
            dv = tl.load(D + rm[:, None] * sdm + kk[None, :], mask=dm, other=0.0).to(tl.float32)
            ssd2 += dv * dv
        return tl.rsqrt(tl.sum(ssd2, axis=1) / K + eps)

    @triton.jit
    def _program_tiles(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """A GEMV program's (id, row offsets, output columns, K offsets of a tile, row mask,
        column mask): program pid computes the columns pid*BLOCK_N.. of every row."""
        pid = tl.program_id(0)
        rm = tl.arange(0, BLOCK_M)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        return pid, rm, rn, tl.arange(0, BLOCK_K), rm < M, rn < N

    @triton.jit
    def _weight_start(W, swn, rn, n_ok, rk, N, K, GATED: tl.constexpr, PREFETCH: tl.constexpr):
        """The program's weight rows (gate's, and up's N rows further when GATED) and, PREFETCH,
        their first tiles, loaded before the kernel waits for its predecessor (weights are never
        written by a step); without PREFETCH the last two are placeholders the loop carries."""
        w_rows = W + rn[:, None] * swn
        w2_rows = W + (rn + N)[:, None] * swn
        w_nx, w2_nx = w_rows, w2_rows
        if PREFETCH:
            w_nx, w2_nx = _weight_tiles(w_rows, w2_rows, n_ok, rk, K, GATED)
        return w_rows, w2_rows, w_nx, w2_nx

    @triton.jit
    def _delta_scale(D, sdm, rm, m_ok, K, eps, HAS_D: tl.constexpr, D_NORM: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        """Per row, the scale of the residual delta's own RMS norm (1 without one)."""
        rsd = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
        if HAS_D and D_NORM:
            rsd = _delta_rms(D, sdm, rm, m_ok, K, eps, BLOCK_M, BLOCK_K)
        return rsd

    @triton.jit
    def _acc_zeros(MMA: tl.constexpr, ONE_ROW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
        """A GEMV program's fp32 accumulator: [BLOCK_N, BLOCK_M] for tensor cores (the weights are
        the left operand), [BLOCK_N, BLOCK_K / 8] for one row's reduction (the weight tile's own
        layout), [BLOCK_M, BLOCK_N, BLOCK_K] for several rows' elementwise products."""
        if MMA:  # (one return per static branch: Triton checks every return it visits)
            return tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        elif ONE_ROW:
            return tl.zeros([BLOCK_N, BLOCK_K // 8], dtype=tl.float32)
        else:
            return tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)

    @triton.jit
    def _acc_rows(acc, MMA: tl.constexpr, ONE_ROW: tl.constexpr):
        """An _acc_zeros accumulator after the loop, as [BLOCK_M, BLOCK_N] sums."""
        if MMA:
            return tl.trans(acc)
        elif ONE_ROW:
            return tl.sum(acc, axis=1)[None, :]
        else:
            return tl.sum(acc, axis=2)

    @triton.jit
    def _acc_results(acc, acc2, GATED: tl.constexpr, MMA: tl.constexpr, ONE_ROW: tl.constexpr):
        """(the products, the up products when GATED else the products again) as [BLOCK_M, BLOCK_N]."""
        out = _acc_rows(acc, MMA, ONE_ROW)
        up = out
        if GATED:
            up = _acc_rows(acc2, MMA, ONE_ROW)
        return out, up

    @triton.jit
    def _input_tile(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, kk, k_ok, rsd, pid,
                    HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr,
                    GEMMA: tl.constexpr, WRITE_R: tl.constexpr):
        """Columns kk of the product's input: x' = x (+ norm_d(d)), in the residual stream's dtype
        and written to R by program 0; returns (x' in fp32, x' times the norm weight in fp32)."""
        xm = m_ok[:, None] & k_ok[None, :]
        x = tl.load(X + rm[:, None] * sxm + kk[None, :], mask=xm, other=0.0)
        # per-column weights are loaded as [rows, columns] tiles (each row the same) rather than
        # broadcast from a vector: the same register layout as x's tile, so no shuffle per tile
        zero_m = rm * 0
        if HAS_D:
            # (an fp32 delta, mlp's sum, rounded to the stream's dtype as a separate product's output)
            dv = tl.load(D + rm[:, None] * sdm + kk[None, :], mask=xm, other=0.0).to(x.dtype)
            if D_NORM:
                wd = tl.load(WD + zero_m[:, None] + kk[None, :], mask=xm, other=0.0).to(tl.float32)
                dv = (dv.to(tl.float32) * rsd[:, None] * (1.0 + wd)).to(x.dtype)
            x = (x.to(tl.float32) + dv.to(tl.float32)).to(x.dtype)
            if WRITE_R:
                if pid == 0:
                    tl.store(R + rm[:, None] * srm + kk[None, :], x, mask=xm)
        xf = x.to(tl.float32)
        xn = xf
        if NORM:
            wn = tl.load(WN + zero_m[:, None] + kk[None, :], mask=xm, other=0.0).to(tl.float32)
            if GEMMA:
                xn = xf * (1.0 + wn)
            else:
                xn = xf * wn
        return xf, xn

    @triton.jit
    def _weight_tiles(w_rows, w2_rows, n_ok, kk, K, GATED: tl.constexpr):
        """The weight tiles [BLOCK_N, BLOCK_K] at columns kk, zeros past K: the gate and up rows
        when GATED (the second is the first otherwise)."""
        wmask = n_ok[:, None] & (kk < K)[None, :]
        w = tl.load(w_rows + kk[None, :], mask=wmask, other=0.0)
        w2 = w
        if GATED:
            w2 = tl.load(w2_rows + kk[None, :], mask=wmask, other=0.0)
        return w, w2

    @triton.jit
    def _loop_tiles(w_rows, w2_rows, n_ok, kk, K, w_nx, w2_nx, GATED: tl.constexpr, PREFETCH: tl.constexpr,
                    BLOCK_K: tl.constexpr):
        """The weight tiles of this iteration of a K loop (columns kk), and the ones carried to the
        next: with PREFETCH the tiles loaded one iteration ahead are used and the next ones loaded
        now; without, w_nx/w2_nx are passed through untouched (any placeholder of a fixed type)."""
        if PREFETCH:
            w, w2 = w_nx, w2_nx
            w_nx, w2_nx = _weight_tiles(w_rows, w2_rows, n_ok, kk + BLOCK_K, K, GATED)
        else:
            w, w2 = _weight_tiles(w_rows, w2_rows, n_ok, kk, K, GATED)
        return w, w2, w_nx, w2_nx

    @triton.jit
    def _row_partial(x, w, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """x [1, BLOCK_K] (fp32) times the weight tile, summed within each thread's 8 contiguous
        columns: [BLOCK_N, BLOCK_K // 8], no exchange between threads."""
        return tl.sum(tl.reshape(x * w.to(tl.float32), [BLOCK_N, BLOCK_K // 8, 8]), axis=2)

    @triton.jit
    def _gemv_epilogue(acc, acc2, ss, K, eps, BIAS, rn, n_ok, N, Y, sym, rm, m_ok,
                       NORM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr):
        """acc (acc2: the up rows) [M, BLOCK_N]: _gemv_values, stored."""
        acc = _gemv_values(acc, acc2, ss, K, eps, BIAS, rn, n_ok, N, NORM, HAS_BIAS, GATED, ACT)
        ym = m_ok[:, None] & n_ok[None, :]
        tl.store(Y + rm[:, None] * sym + rn[None, :], acc.to(Y.dtype.element_ty), mask=ym)

    @triton.jit
    def _gemv_values(acc, acc2, ss, K, eps, BIAS, rn, n_ok, N, NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
                     GATED: tl.constexpr, ACT: tl.constexpr):
        """acc (acc2: the up rows) [M, BLOCK_N] in fp32 after the row scale of the norm, the bias and
        the gated activation."""
        if NORM:
            rs = tl.rsqrt(ss / K + eps)
            acc = acc * rs[:, None]
            if GATED:
                acc2 = acc2 * rs[:, None]
        if HAS_BIAS:
            acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            if GATED:
                acc2 += tl.load(BIAS + N + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:
            if ACT == 0:  # silu
                acc = acc * tl.sigmoid(acc) * acc2
            else:  # gelu, tanh approximation: 0.5 x (1 + tanh(u)) = x * sigmoid(2u)
                u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
                acc = acc * tl.sigmoid(2.0 * u) * acc2
        return acc

    @triton.jit
    def _gemv_sums(X, sxm, D, sdm, WD, WN, R, srm, w_rows, w2_rows, w_nx, w2_nx, pid, rm, rk, m_ok, n_ok,
                   span, K, eps, HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr,
                   GEMMA: tl.constexpr, GATED: tl.constexpr, WRITE_R: tl.constexpr, IEEE: tl.constexpr,
                   MMA: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
        """A GEMV program's loop over `span` columns of K from rk (its slice): the accumulators
        (_acc_zeros's form; the up rows' in the second when GATED) and the rows' sums of squares
        of x' (for the norm), after the program has waited for its inputs."""
        wdt = w_rows.dtype.element_ty
        rsd = _delta_scale(D, sdm, rm, m_ok, K, eps, HAS_D, D_NORM, BLOCK_M, BLOCK_K)
        ss2 = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        acc_t = _acc_zeros(MMA, BLOCK_M == 1, BLOCK_M, BLOCK_N, BLOCK_K)
        acc2_t = _acc_zeros(MMA, BLOCK_M == 1, BLOCK_M, BLOCK_N, BLOCK_K)
        for k0 in range(0, span, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < K
            w, w2, w_nx, w2_nx = _loop_tiles(w_rows, w2_rows, n_ok, kk, K, w_nx, w2_nx, GATED, PREFETCH, BLOCK_K)
            xf, xn = _input_tile(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, kk, k_ok, rsd, pid,
                                 HAS_D, D_NORM, NORM, GEMMA, WRITE_R)
            if NORM:
                ss2 += xf * xf
            xw = xn.to(wdt)
            if MMA:
                xt = tl.trans(xw)
                acc_t += _dot(w, xt, IEEE)
                if GATED:
                    acc2_t += _dot(w2, xt, IEEE)
            elif BLOCK_M == 1:
                xw1 = tl.sum(xw.to(tl.float32), axis=0)[None, :]  # [BLOCK_K]: w's layout decides
                acc_t += _row_partial(xw1, w, BLOCK_N, BLOCK_K)
                if GATED:
                    acc2_t += _row_partial(xw1, w2, BLOCK_N, BLOCK_K)
            else:
                xw3 = xw.to(tl.float32)[:, None, :]
                acc_t += xw3 * w.to(tl.float32)[None, :, :]
                if GATED:
                    acc2_t += xw3 * w2.to(tl.float32)[None, :, :]
        return acc_t, acc2_t, tl.sum(ss2, axis=1)

    @triton.jit
    def _gemv_kernel(
        X, sxm, D, sdm, WD, WN, W, swn, BIAS, Y, sym, R, srm, P, CNT,
        M, N, K, eps,
        HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
        GATED: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_R: tl.constexpr,
        IEEE: tl.constexpr, MMA: tl.constexpr, PREFETCH: tl.constexpr, PDL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr = 1,
    ):
        """Y[M, N] = f(X)[M, K] @ W[N, K]^T (+ bias), W row-major; GATED: W is [2N, K] (gate rows,
        then up rows) and Y = act(gate) * up. f: x (+ norm_d(D)) then an RMS norm (see module doc).
        Program pid computes the columns pid*BLOCK_N.. of every row (M <= BLOCK_M).

        Two forms. Reduction (MMA=False): products accumulate elementwise in a [BLOCK_M, BLOCK_N,
        BLOCK_K] fp32 tile, reduced over K once after the loop (a reduction across threads in
        every iteration would stall the loads behind it); the arithmetic grows with the rows, so
        it suits one. Tensor cores (MMA=True, BLOCK_M/N/K >= 16): the weight tile is the MMA's
        left operand and the (padded) rows its right one, [BLOCK_N, BLOCK_K] x [BLOCK_K, BLOCK_M]
        ("swap AB", as cuBLAS runs thin products): the weights are read once for up to BLOCK_M
        rows at no extra arithmetic cost. PREFETCH (reduction form): the loads of the next weight
        tile are issued before this tile's arithmetic, so a program keeps two tiles in flight
        (Triton does not pipeline loads that feed no dot). SPLIT_K > 1 (tensor cores): program
        (pid, s) takes the s-th of SPLIT_K slices of K for columns pid*BLOCK_N.. (a narrow product,
        the verify's o or down projection, then has SPLIT_K times the programs), writes its
        partial sums to P and counts itself in CNT[pid]; the last of them to finish adds the
        SPLIT_K partials in slice order (the result does not depend on which finished last), runs
        the epilogue and resets the counter."""
        pid, rm, rn, rk, m_ok, n_ok = _program_tiles(M, N, BLOCK_M, BLOCK_N, BLOCK_K)
        split = tl.program_id(1)
        k_lo, k_hi = _split_range(split, K, SPLIT_K, BLOCK_K)
        rk = rk + k_lo
        # PREFETCH: the first weight tile now; each iteration then loads the next before its arithmetic
        w_rows, w2_rows, w_nx, w2_nx = _weight_start(W, swn, rn, n_ok, rk, N, K, GATED, PREFETCH)
        _pdl_enter(PDL)
        acc_t, acc2_t, ss = _gemv_sums(X, sxm, D, sdm, WD, WN, R, srm, w_rows, w2_rows, w_nx, w2_nx,
                                       pid, rm, rk, m_ok, n_ok, k_hi - k_lo, K, eps,
                                       HAS_D, D_NORM, NORM, GEMMA, GATED, WRITE_R, IEEE, MMA, PREFETCH,
                                       BLOCK_M, BLOCK_N, BLOCK_K)
        _finish(acc_t, acc2_t, ss, P, CNT, pid, split, K, eps, BIAS, rn, n_ok, N, Y, sym, rm, m_ok,
                NORM, HAS_BIAS, GATED, ACT, MMA, SPLIT_K, BLOCK_M, BLOCK_N)

    @triton.jit
    def _down_tile(o_rows, hh, soh, n_ok, K):
        """The down weight's [BLOCK_N, BLOCK_H] tile of the program's intermediate columns (o_rows)
        and hidden columns hh, zeros past either end."""
        return tl.load(o_rows + hh[None, :] * soh, mask=n_ok[:, None] & (hh < K)[None, :], other=0.0)

    @triton.jit
    def _mlp_kernel(
        X, sxm, D, sdm, WD, WN, W, swn, BIAS, WO, soh, soj, BIAS_O, OUT, som, R, srm,
        M, N, K, eps,
        HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
        ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BIAS_O: tl.constexpr, WRITE_R: tl.constexpr,
        IEEE: tl.constexpr, PREFETCH: tl.constexpr, O_EARLY: tl.constexpr, PDL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        """A gated MLP of a few rows as one kernel: OUT[M, K] += a @ Wo^T with a = act(f(X) @ Wg^T)
        * (f(X) @ Wu^T), f as in _gemv_kernel (the residual add, written to R, and the norm), W
        [2N, K] (gate rows, then up rows), Wo [K, N] at strides (soh, soj) (the down projection,
        as stored or transposed). Program pid computes a's columns pid*BLOCK_N.. exactly as the
        gated _gemv_kernel does (reduction form), rounds them to X's dtype as the separate down
        projection's input would be, and adds its share of the down projection, those columns of
        Wo times them, to OUT with atomic adds: one kernel and no round trip of `a` through
        memory instead of two kernels. OUT (fp32) must hold zeros (or what the sum adds to);
        the order of the adds varies, so the result varies within fp32 rounding from run to run.
        O_EARLY: the program's first tile of Wo is loaded before it waits for its inputs."""
        pid, rm, rn, rk, m_ok, n_ok = _program_tiles(M, N, BLOCK_M, BLOCK_N, BLOCK_K)
        w_rows, w2_rows, w_nx, w2_nx = _weight_start(W, swn, rn, n_ok, rk, N, K, True, PREFETCH)
        rh = tl.arange(0, BLOCK_H)
        o_rows = WO + rn[:, None] * soj
        o_nx = tl.zeros([BLOCK_N, BLOCK_H], dtype=WO.dtype.element_ty)
        if O_EARLY:
            o_nx = _down_tile(o_rows, rh, soh, n_ok, K)
        _pdl_enter(PDL)
        acc_t, acc2_t, ss = _gemv_sums(X, sxm, D, sdm, WD, WN, R, srm, w_rows, w2_rows, w_nx, w2_nx,
                                       pid, rm, rk, m_ok, n_ok, K, K, eps,
                                       HAS_D, D_NORM, NORM, GEMMA, True, WRITE_R, IEEE, False, PREFETCH,
                                       BLOCK_M, BLOCK_N, BLOCK_K)
        acc, up = _acc_results(acc_t, acc2_t, True, False, BLOCK_M == 1)
        a = _gemv_values(acc, up, ss, K, eps, BIAS, rn, n_ok, N, NORM, HAS_BIAS, True, ACT)
        a = tl.where(m_ok[:, None] & n_ok[None, :], a.to(X.dtype.element_ty).to(tl.float32), 0.0)
        a3 = tl.trans(a)[:, :, None]  # [BLOCK_N, BLOCK_M, 1]
        for h0 in range(0, K, BLOCK_H):
            hh = h0 + rh
            h_ok = hh < K
            if O_EARLY:
                if h0 == 0:
                    wo = o_nx
                else:
                    wo = _down_tile(o_rows, hh, soh, n_ok, K)
            else:
                wo = _down_tile(o_rows, hh, soh, n_ok, K)
            part = tl.sum(a3 * wo.to(tl.float32)[:, None, :], axis=0)  # [BLOCK_M, BLOCK_H]
            if HAS_BIAS_O:
                first = (pid == 0).to(tl.float32)  # the bias once, from program 0
                part += first * tl.load(BIAS_O + hh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
            tl.atomic_add(OUT + rm[:, None] * som + hh[None, :], part, mask=m_ok[:, None] & h_ok[None, :],
                          sem="relaxed")

    @triton.jit
    def _split_range(split, total, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
        """[lo, hi) of `total` (K, or a row's bytes) that slice `split` of SPLIT_K takes: whole tiles
        of BLOCK, so no tile straddles two programs (all of it when SPLIT_K is 1)."""
        lo = split * 0
        hi = total
        if SPLIT_K > 1:
            per = tl.cdiv(tl.cdiv(total, SPLIT_K), BLOCK) * BLOCK
            lo = split * per
            hi = tl.minimum(lo + per, total)
        return lo, hi

    @triton.jit
    def _finish(acc_t, acc2_t, ss, P, CNT, pid, split, K, eps, BIAS, rn, n_ok, N, Y, sym, rm, m_ok,
                NORM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr,
                MMA: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """A GEMV program's end: its accumulators reduced to [BLOCK_M, BLOCK_N] and _gemv_epilogue
        (row scale of the norm, bias, gated activation, store); with K in slices only in the last
        program of the column tile, on the partials of all of them in slice order (_split_sums)."""
        if SPLIT_K > 1:
            acc_t, acc2_t, ss, last = _split_sums(P, CNT, pid, split, acc_t, acc2_t, ss, rm, GATED, SPLIT_K,
                                                  BLOCK_M, BLOCK_N)
            if last:
                acc, acc2 = _acc_results(acc_t, acc2_t, GATED, MMA, BLOCK_M == 1)
                _gemv_epilogue(acc, acc2, ss, K, eps, BIAS, rn, n_ok, N, Y, sym, rm, m_ok,
                               NORM, HAS_BIAS, GATED, ACT)
        else:
            acc, acc2 = _acc_results(acc_t, acc2_t, GATED, MMA, BLOCK_M == 1)
            _gemv_epilogue(acc, acc2, ss, K, eps, BIAS, rn, n_ok, N, Y, sym, rm, m_ok,
                           NORM, HAS_BIAS, GATED, ACT)

    @triton.jit
    def _split_sums(P, CNT, pid, split, acc_t, acc2_t, ss, rm, GATED: tl.constexpr, SPLIT_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """A split-K program's partial sums (tensor-core accumulators [BLOCK_N, BLOCK_M], and the
        rows' sums of squares) stored to its slot of P; the last program of column tile pid to
        count itself in CNT[pid] gets the SPLIT_K partials summed in slice order and last = True
        (the others: their own sums and False). That program resets the counter."""
        size = 2 * BLOCK_N * BLOCK_M + BLOCK_M  # fp32 values a program's slot holds
        rb = tl.arange(0, BLOCK_N)
        tile = rb[:, None] * BLOCK_M + rm[None, :]
        own = P + (pid * SPLIT_K + split) * size
        tl.store(own + tile, acc_t)
        if GATED:
            tl.store(own + BLOCK_N * BLOCK_M + tile, acc2_t)
        tl.store(own + 2 * BLOCK_N * BLOCK_M + rm, ss)
        tl.debug_barrier()  # every thread's partials are written before the release below
        done = tl.atomic_add(CNT + pid, 1, sem="acq_rel")
        last = done == SPLIT_K - 1
        if last:
            tl.debug_barrier()
            acc_t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            acc2_t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            ss = tl.zeros([BLOCK_M], dtype=tl.float32)
            for s in range(SPLIT_K):  # in slice order: the same sums whichever program is last
                slot = P + (pid * SPLIT_K + s) * size
                acc_t += tl.load(slot + tile, cache_modifier=".cg")
                if GATED:
                    acc2_t += tl.load(slot + BLOCK_N * BLOCK_M + tile, cache_modifier=".cg")
                ss += tl.load(slot + 2 * BLOCK_N * BLOCK_M + rm, cache_modifier=".cg")
            tl.atomic_xchg(CNT + pid, 0)  # ready for the next launch
        return acc_t, acc2_t, ss, last

    @triton.jit
    def _gemv2_kernel(
        X, sxm, D, sdm, WD, WN, W, swn, BIAS, Y, sym, R, srm,
        M, N, K, eps,
        HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
        GATED: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_R: tl.constexpr,
        PREFETCH: tl.constexpr, PDL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """_gemv_kernel's reduction form for two rows (M <= 2): each weight tile is loaded once
        and multiplied into one [BLOCK_N, BLOCK_K / 8] accumulator per row, each row's input
        tile handled as in the one-row form (its own [1, BLOCK_K] tile: no tile crosses
        threads). A draft model's two-token step, or two sequences' one-token steps."""
        pid, ra, rn, rk, a_ok, n_ok = _program_tiles(M, N, 1, BLOCK_N, BLOCK_K)  # row a; row b is a + 1
        rb = ra + 1
        b_ok = rb < M
        wdt = W.dtype.element_ty
        w_rows, w2_rows, w_nx, w2_nx = _weight_start(W, swn, rn, n_ok, rk, N, K, GATED, PREFETCH)
        _pdl_enter(PDL)
        rsd_a = _delta_scale(D, sdm, ra, a_ok, K, eps, HAS_D, D_NORM, 1, BLOCK_K)
        rsd_b = _delta_scale(D, sdm, rb, b_ok, K, eps, HAS_D, D_NORM, 1, BLOCK_K)
        ss_a = tl.zeros([1, BLOCK_K], dtype=tl.float32)
        ss_b = tl.zeros([1, BLOCK_K], dtype=tl.float32)
        acc_a = _acc_zeros(False, True, 1, BLOCK_N, BLOCK_K)
        acc_b = _acc_zeros(False, True, 1, BLOCK_N, BLOCK_K)
        acc2_a = _acc_zeros(False, True, 1, BLOCK_N, BLOCK_K)
        acc2_b = _acc_zeros(False, True, 1, BLOCK_N, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < K
            w, w2, w_nx, w2_nx = _loop_tiles(w_rows, w2_rows, n_ok, kk, K, w_nx, w2_nx, GATED, PREFETCH, BLOCK_K)
            xf_a, xn_a = _input_tile(X, sxm, D, sdm, WD, WN, R, srm, ra, a_ok, kk, k_ok, rsd_a, pid,
                                     HAS_D, D_NORM, NORM, GEMMA, WRITE_R)
            xf_b, xn_b = _input_tile(X, sxm, D, sdm, WD, WN, R, srm, rb, b_ok, kk, k_ok, rsd_b, pid,
                                     HAS_D, D_NORM, NORM, GEMMA, WRITE_R)
            if NORM:
                ss_a += xf_a * xf_a
                ss_b += xf_b * xf_b
            xa = tl.sum(xn_a.to(wdt).to(tl.float32), axis=0)[None, :]
            xb = tl.sum(xn_b.to(wdt).to(tl.float32), axis=0)[None, :]
            acc_a += _row_partial(xa, w, BLOCK_N, BLOCK_K)
            acc_b += _row_partial(xb, w, BLOCK_N, BLOCK_K)
            if GATED:
                acc2_a += _row_partial(xa, w2, BLOCK_N, BLOCK_K)
                acc2_b += _row_partial(xb, w2, BLOCK_N, BLOCK_K)
        out_a, up_a = _acc_results(acc_a, acc2_a, GATED, False, True)
        out_b, up_b = _acc_results(acc_b, acc2_b, GATED, False, True)
        _gemv_epilogue(out_a, up_a, tl.sum(ss_a, axis=1), K, eps, BIAS, rn, n_ok, N, Y, sym, ra, a_ok,
                       NORM, HAS_BIAS, GATED, ACT)
        _gemv_epilogue(out_b, up_b, tl.sum(ss_b, axis=1), K, eps, BIAS, rn, n_ok, N, Y, sym, rb, b_ok,
                       NORM, HAS_BIAS, GATED, ACT)

    @triton.jit
    def _rope_rows(ptr, rows_ok, NORM_W, COS, SIN, pos, eps,
                   QK_NORM: tl.constexpr, GEMMA: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr):
        """Rows [BLOCK_R, D] at ptr (a [BLOCK_R] pointer vector to row starts), RMS-normed per row
        (QK_NORM) and rotated: x*cos + rotate_half(x)*sin, rotate_half(x) = [-x2, x1]. Returns them
        in the input dtype, rounded as transformers rounds (norm, then rotary)."""
        d = tl.arange(0, D)
        half = D // 2
        drot = (d + half) % D
        sign = tl.where(d < half, -1.0, 1.0)
        msk = rows_ok[:, None]
        x = tl.load(ptr[:, None] + d[None, :], mask=msk, other=0.0)
        xr = tl.load(ptr[:, None] + drot[None, :], mask=msk, other=0.0)
        dt = x.dtype
        xf = x.to(tl.float32)
        xrf = xr.to(tl.float32)
        if QK_NORM:
            rs = tl.rsqrt(tl.sum(xf * xf, axis=1) / D + eps)
            wn = tl.load(NORM_W + d).to(tl.float32)
            wr = tl.load(NORM_W + drot).to(tl.float32)
            if GEMMA:
                xf = (xf * rs[:, None] * (1.0 + wn)[None, :]).to(dt).to(tl.float32)
                xrf = (xrf * rs[:, None] * (1.0 + wr)[None, :]).to(dt).to(tl.float32)
            else:
                xf = (wn[None, :] * (xf * rs[:, None]).to(dt).to(tl.float32)).to(dt).to(tl.float32)
                xrf = (wr[None, :] * (xrf * rs[:, None]).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        c = tl.load(COS + pos[:, None] * D + d[None, :], mask=msk, other=0.0).to(tl.float32)
        s = tl.load(SIN + pos[:, None] * D + d[None, :], mask=msk, other=0.0).to(tl.float32)
        return (xf * c + sign[None, :] * xrf * s).to(dt)

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        """a @ b; IEEE: exact fp32 products (fp32 models; Triton would use tf32 otherwise)."""
        if IEEE:
            return tl.dot(a, b, input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _masked_scores(qv, k, key_pos, key_ok, rpos, scaling, window, WINDOW: tl.constexpr, IEEE: tl.constexpr):
        """Scaled scores of queries qv [R, D] (at positions rpos) against keys k [S, D] at key_pos:
        -inf where a key is invalid, in a query's future, or (WINDOW) outside its window."""
        sc = _dot(qv, tl.trans(k), IEEE)
        vis = key_ok[None, :] & (key_pos[None, :] <= rpos[:, None])
        if WINDOW:
            vis = vis & (key_pos[None, :] > rpos[:, None] - window)
        return tl.where(vis, sc * scaling, float("-inf"))

    @triton.jit
    def _softmax_step(m_i, l_i, acc, sc, v, IEEE: tl.constexpr):
        """One online-softmax update with masked scores sc [R, S] (-inf where invisible)."""
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        return m_new, l_i, acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)

    @triton.jit
    def _attention_kernel(
        QKV, sqb, sqq, QN, KN, COS, SIN, POS, spb, KC, VC, scb, sch, scs, O, sob, soq,
        PM, PA, CNT, SIB, Q, HKV, scaling, eps, window,
        G: tl.constexpr, D: tl.constexpr, QK_NORM: tl.constexpr, GEMMA: tl.constexpr,
        WINDOW: tl.constexpr, SPLITS: tl.constexpr, FOLD: tl.constexpr, APART: tl.constexpr, IEEE: tl.constexpr,
        PDL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr,
        TREE: tl.constexpr,
    ):
        """Program (b * HKV + kv head, split): the G query heads of one KV head over q tokens
        (R = G*q rows, row r = g*q + t), attending to this split's share of the cached slots
        before the step's first position, and (split 0) to the step's own q new tokens, whose
        keys and values it holds in registers and writes to the cache for later steps. The
        cache reads never touch this step's slots, so nothing orders the write before them.
        APART (SPLITS > 1): the step's own tokens go to the last split alone and the cached slots
        to the others, so no program does both (split 0 doing both was the kernel's longest
        path).
        TREE: the step's last token is a sibling of its token SIB[b] (a token tree of one sibling):
        it is rotated at that token's position, written at its own (last) slot, and sees the
        step's tokens before its twin and itself, not the twin or the tokens after it."""
        _pdl_enter(PDL)
        bh = tl.program_id(0)
        split = tl.program_id(1)
        b = bh // HKV
        kvh = bh % HKV
        H = HKV * G
        d = tl.arange(0, D)
        first = tl.load(POS + b * spb)
        twin = first  # TREE: the sibling's position, its twin's
        if TREE:
            twin = first + tl.load(SIB + b)
        # ---- queries: norm, rotary ----
        r = tl.arange(0, BLOCK_R)
        r_ok = r < G * Q
        g = r // Q
        rt = r % Q
        rpos = tl.load(POS + b * spb + rt, mask=r_ok, other=0)
        if TREE:
            rpos = tl.where(rt == Q - 1, twin, rpos)
        qptr = QKV + b * sqb + rt * sqq + (kvh * G + g) * D
        qv = _rope_rows(qptr, r_ok, QN, COS, SIN, rpos, eps, QK_NORM, GEMMA, D, BLOCK_R)
        # ---- cached slots [lo, hi) of this split: before the step's first position ----
        lo_all = first * 0
        if WINDOW:
            lo_all = tl.maximum(first - window + 1, 0)
            lo_all = (lo_all // BLOCK_S) * BLOCK_S
        span = first - lo_all
        # the splits that read cached slots: all, or (APART) all but the last, whose lo is >= first
        per = tl.cdiv(tl.cdiv(span, SPLITS - APART), BLOCK_S) * BLOCK_S
        lo = lo_all + split * per
        hi = tl.minimum(lo + per, first)
        m_i = tl.full([BLOCK_R], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
        acc = tl.zeros([BLOCK_R, D], dtype=tl.float32)
        sl = tl.arange(0, BLOCK_S)
        kv_base = b * scb + kvh * sch
        for s0 in range(lo, hi, BLOCK_S):
            slots = s0 + sl
            s_ok = slots < hi
            off = kv_base + slots[:, None] * scs + d[None, :]
            kb = tl.load(KC + off, mask=s_ok[:, None], other=0.0)
            vb = tl.load(VC + off, mask=s_ok[:, None], other=0.0)
            sc = _masked_scores(qv, kb, slots, s_ok, rpos, scaling, window, WINDOW, IEEE)
            m_i, l_i, acc = _softmax_step(m_i, l_i, acc, sc, vb, IEEE)
        # ---- the step's own tokens (split 0, or APART the last): norm, rotary, write, attend ----
        if split == (SPLITS - 1) * APART:
            t = tl.arange(0, BLOCK_Q)
            t_ok = t < Q
            tpos = tl.load(POS + b * spb + t, mask=t_ok, other=0)  # the slots
            kpos = tpos  # the rotary positions
            if TREE:
                kpos = tl.where(t == Q - 1, twin, tpos)
            row_base = QKV + b * sqb + t * sqq
            k_new = _rope_rows(row_base + (H + kvh) * D, t_ok, KN, COS, SIN, kpos, eps, QK_NORM, GEMMA, D, BLOCK_Q)
            v_new = tl.load(row_base[:, None] + ((H + HKV + kvh) * D + d)[None, :], mask=t_ok[:, None], other=0.0)
            cache_off = kv_base + tpos[:, None] * scs + d[None, :]
            tl.store(KC + cache_off, k_new.to(KC.dtype.element_ty), mask=t_ok[:, None])
            tl.store(VC + cache_off, v_new.to(VC.dtype.element_ty), mask=t_ok[:, None])
            if TREE:
                # slots decide who sees whom: every other query sees the slots up to its own (so not
                # the sibling's, the last); the sibling, the slots before its twin's and its own
                sib = (rt == Q - 1)[:, None]
                sees = tl.where(sib, (tpos[None, :] < twin) | (t[None, :] == Q - 1), tpos[None, :] <= rpos[:, None])
                sees = sees & t_ok[None, :]
                if WINDOW:
                    sees = sees & (kpos[None, :] > rpos[:, None] - window)
                sc = tl.where(sees, _dot(qv, tl.trans(k_new), IEEE) * scaling, float("-inf"))
            else:
                sc = _masked_scores(qv, k_new, tpos, t_ok, rpos, scaling, window, WINDOW, IEEE)
            m_i, l_i, acc = _softmax_step(m_i, l_i, acc, sc, v_new, IEEE)
        optr = O + b * sob + rt[:, None] * soq + ((kvh * G + g) * D)[:, None] + d[None, :]
        if SPLITS == 1:
            out = acc / tl.maximum(l_i, 1.0e-30)[:, None]
            tl.store(optr, out.to(O.dtype.element_ty), mask=r_ok[:, None])
        else:
            base = (bh * SPLITS + split) * BLOCK_R
            tl.store(PM + (base + r) * 2, m_i)
            tl.store(PM + (base + r) * 2 + 1, l_i)
            tl.store(PA + (base + r)[:, None] * D + d[None, :], acc)
            if FOLD:  # the last split of this (b, KV head) to finish merges them: no combine kernel
                tl.debug_barrier()  # every thread's partials are written before the release below
                done = tl.atomic_add(CNT + bh, 1, sem="acq_rel")
                if done == SPLITS - 1:
                    tl.debug_barrier()
                    _merge_splits(PM, PA, bh * SPLITS * BLOCK_R, r, d, optr, r_ok, SPLITS, BLOCK_R, D)
                    tl.atomic_xchg(CNT + bh, 0)  # ready for the next step's kernel

    @triton.jit
    def _merge_splits(PM, PA, first, r, d, optr, r_ok, SPLITS: tl.constexpr, BLOCK_R: tl.constexpr, D: tl.constexpr):
        """Merge the SPLITS online-softmax partials of rows r (from slot `first` of PM/PA) into the
        output rows at optr: weights exp(m_s - max m), the sum of weighted accumulators over the sum
        of weighted denominators. The loads bypass L1 (other programs wrote them)."""
        mx = tl.full([BLOCK_R], -1.0e38, dtype=tl.float32)
        for s in range(SPLITS):
            mx = tl.maximum(mx, tl.load(PM + (first + s * BLOCK_R + r) * 2, cache_modifier=".cg"))
        den = tl.zeros([BLOCK_R], dtype=tl.float32)
        out = tl.zeros([BLOCK_R, D], dtype=tl.float32)
        for s in range(SPLITS):
            row = first + s * BLOCK_R + r
            w = tl.exp(tl.load(PM + row * 2, cache_modifier=".cg") - mx)
            den += w * tl.load(PM + row * 2 + 1, cache_modifier=".cg")
            out += w[:, None] * tl.load(PA + row[:, None] * D + d[None, :], cache_modifier=".cg")
        out = out / tl.maximum(den, 1.0e-30)[:, None]
        tl.store(optr, out.to(optr.dtype.element_ty), mask=r_ok[:, None])

    @triton.jit
    def _combine_kernel(PM, PA, O, sob, soq, Q, HKV,
                        G: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr, BLOCK_R: tl.constexpr,
                        PDL: tl.constexpr):
        """Merge the splits' online-softmax partials of one query row of one (b, KV head)."""
        _pdl_enter(PDL)
        bh = tl.program_id(0)
        r = tl.program_id(1)
        b = bh // HKV
        kvh = bh % HKV
        g = r // Q
        rt = r % Q
        s = tl.arange(0, SPLITS)
        d = tl.arange(0, D)
        base = (bh * SPLITS + s) * BLOCK_R + r  # [SPLITS]
        ms = tl.load(PM + base * 2)
        ls = tl.load(PM + base * 2 + 1)
        m = tl.max(ms, axis=0)
        w = tl.exp(ms - m)
        den = tl.sum(w * ls, axis=0)
        acc = tl.sum(w[:, None] * tl.load(PA + base[:, None] * D + d[None, :]), axis=0)
        out = acc / tl.maximum(den, 1.0e-30)
        tl.store(O + b * sob + rt * soq + (kvh * G + g) * D + d, out.to(O.dtype.element_ty))


# ------------------------------------------------------------------------------ launch configs
# (BLOCK_N, BLOCK_K, num_warps, num_stages) by the shape of the product; chosen from the H200
# sweep of benchmarks/kernel_bench.py (benchmarks/results/*-kernels.txt); sweeps pass `config=`.


def gemv_config(m: int, n: int, k: int, gated: bool, norm: bool = False,
                pdl: bool = False) -> tuple:
    """(form, BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K]) for an [m, k] x [k, n] product;
    form is "reduce" (elementwise accumulation) or "mma" (tensor cores, weights as the left
    operand), whose programs may each take a slice of K (SPLIT_K, default 1).
    pdl: the configuration for launches with programmatic dependent launch, where it differs."""
    if m == 1 and pdl:
        # the H200 sweep under PDL at the Qwen2.5 0.5B shapes (2026-12-02-h200-kernels-qwen.txt):
        # narrower programs for the gate/up of small models (6.6 against 7.7 us), one-row programs
        # with the whole K row prefetched for a long down projection (3.7 against 5.4 us)
        if gated and k <= 1024:
            return ("reduce", 2, 256, 1, 2)
        if not gated and not norm and 4096 < k <= 5120:
            return ("prefetch", 1, 2048, 8, 2)
    if m == 2 and pdl:
        # the H200 sweep of two rows under PDL at the Qwen2.5 0.5B and 1.5B shapes
        # (2026-12-03-h200-kernels-qwen-2rows-pdl.txt): the draft's first step of every round
        # with look-ahead ([prev, last]) 22.6 -> 16.6 us of products a layer; larger models keep
        # the sweep without PDL below
        if gated and k <= 1536:
            return ("reduce", 4, 256, 1, 2)
        if norm and k <= 1536:
            return ("reduce", 2, 1024, 2, 2) if k <= 1024 else ("reduce", 4, 1024, 4, 2)
        if not gated and not norm:
            if k <= 1024:
                return ("reduce", 1, 1024, 4, 2)
            if k <= 1536:
                return ("reduce", 4, 2048, 4, 2)
            if 4096 < k <= 10240:
                return ("reduce", 1 if k <= 5120 else 2, 2048, 8, 2)
    if m == 1:
        # the best of the H200 sweep (benchmarks/results/2026-11-29-h200-kernels-sweep.txt: Gemma
        # 3 4B and 270M) by kind: gated (gate/up), normed (qkv), plain (o, down). BLOCK_K is a
        # multiple of 256 x warps: the weight tile then loads in the input tile's register layout
        # (see kernel_bench.sweep_grid); smaller programs fit more of them on an SM at once.
        if gated:
            return ("reduce", 4, 1024, 4, 2) if k <= 1024 else ("reduce", 4, 256, 1, 2)
        if norm:
            return ("reduce", 4, 1024, 2, 2) if k <= 1024 else ("reduce", 8, 1024, 4, 2)
        if k <= 1024 or k > 2048:
            return ("reduce", 2, 1024, 4, 2)
        return ("reduce", 2, 2048, 8, 2) if n <= 1024 else ("reduce", 4, 2048, 4, 2)
    if m == 2:  # the two-row reduction (_gemv2_kernel), from the same sweep at two rows
        if gated:
            return ("prefetch", 2, 256, 1, 2) if k <= 1024 else ("reduce", 4, 512, 2, 2)
        if norm:
            return ("reduce", 4, 1024, 4, 2) if k <= 1024 else ("reduce", 8, 512, 2, 2)
        return ("reduce", 2, 1024, 2, 2) if 1024 < k <= 2048 and n > 1024 else ("reduce", 2, 1024, 4, 2)
    # several rows: tensor cores read the weights once for all of them (the H200 sweep at 6 rows,
    # Qwen2.5 1.5B, the best by kind: 2026-12-02-h200-kernels-qwen.txt). No default cuts K into
    # slices: at the Qwen2.5 1.5B verify's shapes the sweep's best sliced forms (qkv in 4 slices
    # 6.72 -> 5.78 us, the down projection in 8 slices 11.35 us against cuBLAS's 12.01, alone and
    # under PDL: 2026-12-04-h200-kernels-qwen15-6rows-splitk.txt) made the real pair's verify
    # step slower in the step itself, 1.52 -> 1.68 ms (2026-12-04-h200-real-pair-stop28.json)
    if gated:
        return ("mma", 64, 64, 4, 4)
    return ("mma", 64, 256, 4, 3 if norm else 4)


def splits_k(config: tuple) -> int:
    """The K slices of a gemv configuration (1 unless it names more)."""
    return config[5] if len(config) > 5 else 1


def interpreted(config: tuple, block_n_at: int = 1) -> tuple:
    """A default launch configuration as run on CPU tensors, under Triton's interpreter: it runs the
    programs one after another at a cost per program, so programs take at least 64 output columns
    (the results are the same; the tests check the GPU's own configurations explicitly).
    block_n_at: where the configuration holds BLOCK_N (gemv's: after the form; mlp's: first)."""
    return (*config[:block_n_at], max(config[block_n_at], 64), *config[block_n_at + 1:])


def gemv_operands(x: Tensor, n: int, delta: Tensor | None, max_rows: int, name: str):
    """(x2 [M, K], y [M, n], d2, r) for a decode GEMV: the input's rows flattened and row-major,
    the output, and the residual delta [M, K] with the buffer the new residual is written to
    (both x2 when there is no delta, so the kernel's pointers stay valid)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.shape[0] > max_rows:
        raise ValueError(f"{name} takes at most {max_rows} rows, got {x2.shape[0]}")
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    if delta is None:
        return x2, y, x2, x2
    d2 = delta.reshape(-1, k)
    if d2.stride(-1) != 1:
        d2 = d2.contiguous()
    return x2, y, d2, torch.empty_like(x2)


def gemv(x: Tensor, weight: Tensor, *, bias: Tensor | None = None, norm: Tensor | None = None,
         gemma: bool = False, eps: float = 1e-6, delta: Tensor | None = None,
         delta_norm: Tensor | None = None, act: str | None = None,
         config: tuple[str, int, int, int, int] | None = None, pdl: bool = False) -> tuple[Tensor, Tensor | None]:
    """y = f(x) @ weight.T (+ bias) for x [..., K] with at most MAX_ROWS rows (see module doc).

    delta: x' = x + norm_delta(delta) (or x + delta without delta_norm) is formed first and
    returned as the second result (the residual stream after the add); norm: an RMS norm of
    x' with this weight (Gemma's (1 + w) form when `gemma`); act: weight is [2N, K], gate rows
    then up rows, and y = act(gate) * up ("silu" or "gelu_tanh"). pdl: launch with programmatic
    dependent launch (see pdl_usable); the reduction forms then load their first weight tile
    before waiting for the previous kernel (the "prefetch" form)."""
    lead = x.shape[:-1]
    k = x.shape[-1]
    if weight.stride(-1) != 1:
        raise ValueError("gemv needs a row-major weight")
    n = weight.shape[0] // 2 if act is not None else weight.shape[0]
    x2, y, d2, r = gemv_operands(x, n, delta, MAX_GEMV_ROWS, "gemv")
    m = x2.shape[0]
    if config is None:
        config = gemv_config(m, n, k, act is not None, norm is not None, pdl)
        if not x.is_cuda:
            config = interpreted(config)
    form, block_n, block_k, warps, stages = config[:5]
    split_k = splits_k(config)
    if form not in FORMS:
        raise ValueError(f"unknown gemv form {form!r} ({', '.join(FORMS)})")
    if split_k > 1 and form != "mma":
        raise ValueError("gemv splits K only in the tensor-core form")
    if pdl and form == "reduce":
        form = "prefetch"
    mma = form == "mma"
    least = 16 if mma else 1  # tensor-core operands are at least 16 wide
    block_k = max(least, min(block_k, max(16, triton.next_power_of_2(k))))  # small models: no idle lanes
    block_n = max(least, min(block_n, triton.next_power_of_2(n)))
    block_m = max(least, triton.next_power_of_2(m))
    tiles = triton.cdiv(n, block_n)
    grid = (tiles, split_k)
    operands = (x2, x2.stride(0), d2, d2.stride(0),
                delta_norm if delta_norm is not None else x2, norm if norm is not None else x2,
                weight, weight.stride(0), bias if bias is not None else x2, y, y.stride(0), r, r.stride(0))
    sizes = (m, n, k, float(eps))
    flags = dict(HAS_D=delta is not None, D_NORM=delta_norm is not None, NORM=norm is not None,
                 GEMMA=bool(gemma), GATED=act is not None, ACT=ACTIVATIONS[act] if act is not None else 0,
                 HAS_BIAS=bias is not None, WRITE_R=delta is not None, PREFETCH=form == "prefetch",
                 BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages, **_pdl_args(pdl))
    if not mma and m == 2:
        _gemv2_kernel[grid](*operands, *sizes, **flags)
    else:
        partials, counters = split_buffers(x2, tiles, split_k, block_n, block_m)
        _gemv_kernel[grid](*operands, partials, counters, *sizes, IEEE=weight.dtype == torch.float32, MMA=mma,
                           BLOCK_M=block_m, SPLIT_K=split_k, **flags)
    return y.view(*lead, n), (r.view(*lead, k) if delta is not None else None)


# mlp's rows and its configurations: (BLOCK_N, BLOCK_K, num_warps, num_stages, BLOCK_H, O_EARLY)
MAX_MLP_ROWS = 2
# (m, N, K, pdl) -> a configuration that replaces mlp_config's default (kernel_bench.py --mlp's
# sweep installs its best here for the step timings that follow it in the same process)
MLP_TUNED: dict[tuple[int, int, int, bool], tuple] = {}


def mlp_config(m: int, n: int, k: int, pdl: bool = False) -> tuple:
    """mlp's launch configuration for m rows, N intermediate columns and hidden size K: programs
    of 16 intermediate columns, so the atomic adds (K per program) stay a few percent of the
    weights' traffic. First guess, to be replaced by the H200 sweep (kernel_bench.py --mlp)."""
    tuned = MLP_TUNED.get((m, n, k, bool(pdl)))
    if tuned is not None:
        return tuned
    block_k = 512 if k > 512 else 256
    return (16, block_k, 4, 2, 512, pdl)


def mlp(x: Tensor, weight: Tensor, down: Tensor, out: Tensor, *, bias: Tensor | None = None,
        down_bias: Tensor | None = None, norm: Tensor | None = None, gemma: bool = False, eps: float = 1e-6,
        delta: Tensor | None = None, delta_norm: Tensor | None = None, act: str = "silu",
        config: tuple | None = None, pdl: bool = False) -> Tensor | None:
    """out += (act(f(x) @ Wg.T) * (f(x) @ Wu.T)) @ down.T for x [..., K] of at most MAX_MLP_ROWS rows,
    as one kernel (_mlp_kernel): weight [2N, K] (gate rows, then up rows, as gemv's `act` form),
    down [K, N] (the down projection's weight; any strides, e.g. a transposed copy's .t()), out
    fp32 [..., K] holding zeros. f, bias, norm, gemma, eps, delta, delta_norm as gemv's; returns
    the residual stream after the add when `delta` is given (gemv's second result), else None.
    The atomic adds make out's last bits vary from run to run: for steps whose rounding does not
    decide the output (a draft model's), see FusedModel's mlp_rows."""
    k = x.shape[-1]
    n = weight.shape[0] // 2
    if weight.stride(-1) != 1:
        raise ValueError("mlp needs a row-major gate/up weight")
    if down.shape != (k, n):
        raise ValueError(f"mlp: the down projection must be [{k}, {n}], got {list(down.shape)}")
    if out.dtype != torch.float32 or out.shape[-1] != k or not out.is_contiguous():
        raise ValueError("mlp accumulates into a contiguous fp32 output of the hidden size")
    x2, _, d2, r = gemv_operands(x, 0, delta, MAX_MLP_ROWS, "mlp")
    m = x2.shape[0]
    out2 = out.view(-1, k)
    if out2.shape[0] != m:
        raise ValueError(f"mlp: {m} rows in, {out2.shape[0]} rows of output")
    if config is None:
        config = mlp_config(m, n, k, pdl)
        if not x.is_cuda:
            config = interpreted(config, block_n_at=0)
    block_n, block_k, warps, stages, block_h, early = config
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    block_h = min(block_h, max(16, triton.next_power_of_2(k)))
    block_n = min(block_n, triton.next_power_of_2(n))
    grid = (triton.cdiv(n, block_n),)
    _mlp_kernel[grid](
        x2, x2.stride(0), d2, d2.stride(0), delta_norm if delta_norm is not None else x2,
        norm if norm is not None else x2, weight, weight.stride(0), bias if bias is not None else x2,
        down, down.stride(0), down.stride(1), down_bias if down_bias is not None else x2, out2, out2.stride(0),
        r, r.stride(0), m, n, k, float(eps),
        HAS_D=delta is not None, D_NORM=delta_norm is not None, NORM=norm is not None, GEMMA=bool(gemma),
        ACT=ACTIVATIONS[act], HAS_BIAS=bias is not None, HAS_BIAS_O=down_bias is not None,
        WRITE_R=delta is not None, IEEE=weight.dtype == torch.float32, PREFETCH=bool(pdl), O_EARLY=bool(early),
        BLOCK_M=max(1, triton.next_power_of_2(m)), BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_H=block_h,
        num_warps=warps, num_stages=stages, **_pdl_args(pdl))
    return r.view(*x.shape) if delta is not None else None


def split_buffers(dummy: Tensor, tiles: int, split_k: int, block_n: int, block_m: int) -> tuple[Tensor, Tensor]:
    """(partials, counters) of a launch with K in split_k slices (_split_sums): a slot of partial
    sums per program and a counter per column tile (left zero), shared scratch; `dummy` for both
    when K is not sliced (the kernel then never reads them)."""
    if split_k == 1:
        return dummy, dummy
    partials = scratch(dummy.device, "gemv split partials", tiles * split_k * (2 * block_n * block_m + block_m),
                       torch.float32)
    return partials, scratch(dummy.device, "gemv split counters", tiles, torch.int32)


def _pdl_args(pdl: bool) -> dict:
    """The kernels' PDL flag, and Triton's launch option for it when on."""
    return dict(PDL=True, launch_pdl=True) if pdl else dict(PDL=False)


_SCRATCH: dict[tuple[torch.device, str, str], Tensor] = {}
_RETIRED: list[Tensor] = []  # replaced scratch buffers: a captured graph may still point to them
_LANE = ["main"]  # the scratch lane launches take now (see `lane`)


@contextlib.contextmanager
def lane(name: str):
    """Launches inside take their scratch buffers from lane `name`: work that runs concurrently
    with the main stream's (an overlapped round's draft branch) must not share counters or partial
    sums with it. Lanes are fixed per branch, so warm-ups and captures use the same buffers."""
    saved = _LANE[0]
    _LANE[0] = name
    try:
        yield
    finally:
        _LANE[0] = saved


def scratch(device: torch.device, name: str, n: int, dtype: torch.dtype, least: int = 1024) -> Tensor:
    """A zeroed buffer of at least n elements per (device, name, lane), shared by every launch of
    that lane on the device (its kernels run one after another in one stream; `lane`). Kernels
    that count in it leave it zero again. It grows at the first use of a larger size, which is
    uncaptured (the runner and the captured rounds run each shape once before capturing it); the
    buffer it replaces is kept alive, since graphs captured earlier still point to it."""
    key = (device, name, _LANE[0])
    found = _SCRATCH.get(key)
    if found is None or found.numel() < n:
        if found is not None:
            _RETIRED.append(found)
        found = _SCRATCH[key] = torch.zeros(max(n, least), dtype=dtype, device=device)
    return found


def _split_counters(device: torch.device, n: int) -> Tensor:
    """Zeroed int32 counters for decode_attention's folded merge, one per (row, KV head); each
    launch leaves them zero again, so one buffer per device serves every layer and model."""
    return scratch(device, "attention split counters", n, torch.int32)


# decode_attention's default for `apart`: the step's own tokens on a split of their own
NEW_TOKENS_APART = True


def attention_splits(batch: int, n_kv: int, cache_len: int, block_s: int = 64) -> int:
    """Splits of the slot range per (row, KV head), a power of two: about 32 programs in all
    (the H200 sweep of benchmarks/kernel_bench.py: more splits cost more in the combine than
    they gain in spread), never more than the cache has blocks."""
    want = max(1, 32 // max(1, batch * n_kv))
    want = min(want, 16, max(1, cache_len // block_s))
    return 1 << (want.bit_length() - 1)


def decode_attention(qkv: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
                     cos: Tensor, sin: Tensor, *, n_heads: int, n_kv: int, head_dim: int,
                     scaling: float, eps: float = 1e-6, q_norm: Tensor | None = None,
                     k_norm: Tensor | None = None, gemma: bool = False, window: int | None = None,
                     splits: int | None = None, block_s: int = 64, pdl: bool = False,
                     fold: bool = False, apart: bool | None = None, sibling: Tensor | None = None) -> Tensor:
    """Attention of q new tokens per row over the cache, with the new keys/values written.

    qkv [B, q, (H + 2 Hkv) D] (the fused projection); positions [B, q] (slot == position),
    consecutive in each row (the engine's steps are: positions[b] + 0..q-1), with every slot
    before a row's first position holding that row's keys/values; caches [B, Hkv, S, D];
    cos/sin [S', D] rotary tables; q_norm/k_norm: per-head RMS norms. A query at position p
    sees slots <= p (and > p - window on sliding layers). Returns [B, q, H D].
    fold: with several splits, the last split of each (row, KV head) to finish merges them (a
    counter per pair, reset by that program) instead of a separate combine kernel. apart (None:
    NEW_TOKENS_APART): with several splits, the new tokens on a split of their own (the others
    share the cached slots) instead of on split 0 besides its share. sibling [B] int64 (a token
    tree, KVCache.prepare): the last of the q tokens is a sibling of token sibling[b]: rotated at
    its position, written at its own slot, seeing the tokens before its twin and itself."""
    b, q, _ = qkv.shape
    g = n_heads // n_kv
    if head_dim & (head_dim - 1):
        raise ValueError(f"decode_attention needs a power-of-two head_dim, got {head_dim}")
    if qkv.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or k_cache.stride() != v_cache.stride():
        raise ValueError("decode_attention needs contiguous rows")
    cos = cos if cos.is_contiguous() else cos.contiguous()
    sin = sin if sin.is_contiguous() else sin.contiguous()
    out = torch.empty(b, q, n_heads * head_dim, dtype=qkv.dtype, device=qkv.device)
    block_r = max(16, triton.next_power_of_2(g * q))  # tensor-core operands: at least 16 rows
    block_q = max(16, triton.next_power_of_2(q))
    splits = splits or attention_splits(b, n_kv, k_cache.shape[2], block_s)
    if splits > 1:
        pm = torch.empty(b * n_kv * splits * block_r * 2, dtype=torch.float32, device=qkv.device)
        pa = torch.empty(b * n_kv * splits * block_r * head_dim, dtype=torch.float32, device=qkv.device)
    else:
        pm = pa = out
    ieee = qkv.dtype == torch.float32
    pos = positions if positions.stride(-1) == 1 else positions.contiguous()
    warps = 4 if head_dim <= 128 else 8
    fold = fold and splits > 1
    apart = (NEW_TOKENS_APART if apart is None else bool(apart)) and splits > 1
    counters = _split_counters(qkv.device, b * n_kv) if fold else pos
    _attention_kernel[(b * n_kv, splits)](
        qkv, qkv.stride(0), qkv.stride(1),
        q_norm if q_norm is not None else qkv, k_norm if k_norm is not None else qkv,
        cos, sin, pos, pos.stride(0),
        k_cache, v_cache, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out, out.stride(0), out.stride(1), pm, pa, counters, sibling if sibling is not None else pos,
        q, n_kv, float(scaling), float(eps), int(window or 0),
        G=g, D=head_dim, QK_NORM=q_norm is not None, GEMMA=bool(gemma), WINDOW=bool(window),
        SPLITS=splits, FOLD=fold, APART=apart, IEEE=ieee, BLOCK_R=block_r, BLOCK_Q=block_q, BLOCK_S=block_s,
        TREE=sibling is not None, num_warps=warps, num_stages=2, **_pdl_args(pdl),
    )
    if splits > 1 and not fold:
        _combine_kernel[(b * n_kv, g * q)](pm, pa, out, out.stride(0), out.stride(1), q, n_kv,
                                           G=g, D=head_dim, SPLITS=splits, BLOCK_R=block_r, num_warps=4,
                                           **_pdl_args(pdl))
    return out

