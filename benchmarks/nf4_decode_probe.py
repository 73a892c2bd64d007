"""Where the NF4 kernels' time goes: the code lookup, measured alone (issue 17).

The NF4 GEMV and dequantization kernels of accel/nf4.py read NF4 bytes at 0.3-0.8 TB/s where
HBM gives ~4.8. This probe times the same job with one thing changed, the way a 4-bit code
becomes the map's float32 value:

- "ldg": a load of the 16-entry map in global memory per element (accel/nf4.py today);
- "gather": tl.gather from the map held in registers/shared memory by the program;
- "table": the block's 16 decoded values, round(code[q] * absmax), built once per block, then
  tl.gather of the decoded value (no multiply or rounding per element);
- "prmt": the map's bytes as PTX byte-permute (prmt) constants, four lookups an instruction,
  the float32 bits assembled by further permutes (inline PTX: GPU only);
- "copy": the bytes widened without a lookup (the memory floor of the same traffic).

Jobs: the dequantization of a whole weight to bf16 (read NF4, write bf16) and a one-row GEMV
(read NF4, fp32 accumulation), for Qwen2.5 1.5B's gate/up and down and Llama 3.1 8B's gate/up.
Each variant is checked against nf4.dequantize_nf4 (bit for bit for the dequantization; the GEMV
against the dense product in fp32 to 1e-3 relative). Timing: every call in a CUDA graph cycling
through copies of the weight (> 192 MB, several times the L2), replayed 10 times after warm-up,
median.

    python3 benchmarks/nf4_decode_probe.py --json out.json     # a CUDA device

Two further probes of the same jobs (benchmarks/results/2026-12-03-h200-nf4-decode-probe{2,3}.txt):
``--structure`` stores the dequantization's two values per byte as one int32 (the stores then
have the loads' layout) and gives the GEMV two or three tiles in flight; ``--pairs`` reads the
GEMV's input as bf16 pairs in the weight tile's own layout (no exchange of the input tile).
``--mma`` (probe 4, not yet run on a GPU): 1, 4 and 6 rows on tensor cores with each NF4 tile
decoded once in plain 2-D tiles (the verify form issue 17 asks for), against nf4_gemv's default
form and the dequantization + cuBLAS path the verify takes today.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdecode.accel import nf4  # noqa: E402
from specdecode.accel.kernels import tl, triton  # noqa: E402

SHAPES = {"qwen gate_up": (17920, 1536), "qwen down": (1536, 8960), "llama gate_up": (28672, 4096)}
BS = 64
COLD = 192 << 20
VARIANTS = ("ldg", "gather", "table", "prmt", "copy")


def _code_bytes() -> list[int]:
    """The NF4 map's float32 bits as prmt tables: for byte j of the bits, four registers holding
    that byte of codes 0-3, 4-7, 8-11, 12-15."""
    bits = torch.tensor(nf4.NF4_CODE, dtype=torch.float32).view(torch.int32).tolist()
    regs = []
    for j in range(4):
        b = [(v >> (8 * j)) & 0xFF for v in bits]
        for g in range(4):
            regs.append(b[4 * g] | b[4 * g + 1] << 8 | b[4 * g + 2] << 16 | b[4 * g + 3] << 24)
    return regs


def _prmt_asm() -> str:
    """PTX for 4 packed bytes ($8) -> the float32 codes of their high nibbles ($0-$3) and low
    nibbles ($4-$7)."""
    r = _code_bytes()
    lines = ["{", ".reg .b32 t, u, s, s7, m, l, h, r0, r1, r2, r3, xx, yy, zz, ww;"]
    lines += [f".reg .b32 c{i};" for i in range(16)]
    lines += [f"mov.b32 c{i}, {r[i]};" for i in range(16)]

    def decode(sel: str, outs: list[str]) -> None:
        lines.append(f"and.b32 s7, {sel}, 0x7777;")
        # bytes 0xFF where the nibble's bit 3 is set: prmt's sign mode on 0x80 bytes
        lines.append(f"prmt.b32 m, 0x80808080, 0x80808080, {sel};")
        lines.append("xor.b32 m, m, 0x80808080;")
        lines.append("shl.b32 t, m, 1;")
        lines.append("or.b32 m, m, t;")
        for j in range(4):
            a, b, c, d = (f"c{4 * j + g}" for g in range(4))
            lines.append(f"prmt.b32 l, {a}, {b}, s7;")
            lines.append(f"prmt.b32 h, {c}, {d}, s7;")
            lines.append(f"lop3.b32 r{j}, l, h, m, 0xD8;")  # (l & ~m) | (h & m)
        lines.append("prmt.b32 xx, r0, r1, 0x5140;")
        lines.append("prmt.b32 yy, r0, r1, 0x7362;")
        lines.append("prmt.b32 zz, r2, r3, 0x5140;")
        lines.append("prmt.b32 ww, r2, r3, 0x7362;")
        lines.append(f"prmt.b32 {outs[0]}, xx, zz, 0x5410;")
        lines.append(f"prmt.b32 {outs[1]}, xx, zz, 0x7632;")
        lines.append(f"prmt.b32 {outs[2]}, yy, ww, 0x5410;")
        lines.append(f"prmt.b32 {outs[3]}, yy, ww, 0x7632;")

    # high nibbles: h0 | h1 << 4 | h2 << 8 | h3 << 12
    lines += ["shr.b32 t, $8, 4;", "and.b32 t, t, 0x0F0F0F0F;", "shr.b32 u, t, 4;", "or.b32 u, u, t;",
              "prmt.b32 s, u, 0, 0x4420;"]
    decode("s", ["$0", "$1", "$2", "$3"])
    lines += ["and.b32 t, $8, 0x0F0F0F0F;", "shr.b32 u, t, 4;", "or.b32 u, u, t;", "prmt.b32 s, u, 0, 0x4420;"]
    decode("s", ["$4", "$5", "$6", "$7"])
    lines.append("}")
    return "\n".join(lines)


PRMT_ASM = _prmt_asm()


if triton is not None:

    @triton.jit
    def _lookup(byte, CODE, a, V: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr):
        """(high, low) nibbles of a [BLOCK_N, NB, 32] byte tile decoded to round(code * absmax)
        in fp32 (absmax a: [BLOCK_N, NB])."""
        amax = a[:, :, None]
        b = byte.to(tl.int32)
        if V == 0:  # ldg
            c_hi = tl.load(CODE + (b >> 4))
            c_lo = tl.load(CODE + (b & 15))
            w_hi = (c_hi * amax).to(tl.bfloat16).to(tl.float32)
            w_lo = (c_lo * amax).to(tl.bfloat16).to(tl.float32)
        elif V == 1:  # gather from the map
            code = tl.load(CODE + tl.arange(0, 16))
            src = tl.broadcast_to(code[None, None, :], [BLOCK_N, NB, 16])
            c_hi = tl.gather(src, b >> 4, axis=2)
            c_lo = tl.gather(src, b & 15, axis=2)
            w_hi = (c_hi * amax).to(tl.bfloat16).to(tl.float32)
            w_lo = (c_lo * amax).to(tl.bfloat16).to(tl.float32)
        elif V == 2:  # the block's decoded table
            code = tl.load(CODE + tl.arange(0, 16))
            tab = (code[None, None, :] * amax).to(tl.bfloat16).to(tl.float32)
            w_hi = tl.gather(tab, b >> 4, axis=2)
            w_lo = tl.gather(tab, b & 15, axis=2)
        elif V == 3:  # prmt
            c_hi, c_lo = tl.inline_asm_elementwise(PRMT_ASM_C, "=r,=r,=r,=r,=r,=r,=r,=r,r", [byte],
                                                   dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
            w_hi = (c_hi * amax).to(tl.bfloat16).to(tl.float32)
            w_lo = (c_lo * amax).to(tl.bfloat16).to(tl.float32)
        else:  # copy: no lookup
            w_hi = (b >> 4).to(tl.float32) * amax
            w_lo = (b & 15).to(tl.float32) * amax
        return w_hi, w_lo

    @triton.jit
    def _tile(W, ABSMAX, rn, n_ok, j0, KH, K, BLOCK_N: tl.constexpr, NB: tl.constexpr):
        rb = tl.arange(0, NB)
        re = tl.arange(0, 32)
        jb = j0 + rb * 32
        bmask = n_ok[:, None] & (jb < KH)[None, :]
        byte = tl.load(W + rn[:, None, None] * KH + jb[None, :, None] + re[None, None, :],
                       mask=bmask[:, :, None], other=0)
        a = tl.load(ABSMAX + rn[:, None] * (K // 64) + (jb // 32)[None, :], mask=bmask, other=0.0)
        return byte, a

    @triton.jit
    def _dequant_kernel(W, ABSMAX, CODE, Y, N, K, KH, V: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        j0 = tl.program_id(1) * NB * 32
        n_ok = rn < N
        byte, a = _tile(W, ABSMAX, rn, n_ok, j0, KH, K, BLOCK_N, NB)
        w_hi, w_lo = _lookup(byte, CODE, a, V, BLOCK_N, NB)
        w = tl.join(w_hi, w_lo).to(Y.dtype.element_ty)  # [BLOCK_N, NB, 32, 2]
        rb = tl.arange(0, NB)
        re = tl.arange(0, 32)
        pair = tl.arange(0, 2)
        jj = j0 + rb[None, :, None, None] * 32 + re[None, None, :, None]
        msk = n_ok[:, None, None, None] & (jj < KH) & (pair[None, None, None, :] < 2)
        tl.store(Y + rn[:, None, None, None] * K + 2 * jj + pair[None, None, None, :], w, mask=msk)

    @triton.jit
    def _dequant32_kernel(W, ABSMAX, CODE, Y32, N, K, KH, V: tl.constexpr, BLOCK_N: tl.constexpr,
                          NB: tl.constexpr):
        """The dequantization with each byte's two bf16 values stored as one int32 (high nibble's
        value in the low half: the lower address), so the stores have the loads' layout."""
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        j0 = tl.program_id(1) * NB * 32
        n_ok = rn < N
        byte, a = _tile(W, ABSMAX, rn, n_ok, j0, KH, K, BLOCK_N, NB)
        w_hi, w_lo = _lookup(byte, CODE, a, V, BLOCK_N, NB)
        h = w_hi.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        l = w_lo.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        rb = tl.arange(0, NB)
        re = tl.arange(0, 32)
        jb = j0 + rb * 32
        bmask = n_ok[:, None] & (jb < KH)[None, :]
        tl.store(Y32 + rn[:, None, None] * KH + jb[None, :, None] + re[None, None, :], h | (l << 16),
                 mask=bmask[:, :, None])

    @triton.jit
    def _gemv_deep_kernel(X, W, ABSMAX, CODE, Y, N, K, KH, V: tl.constexpr, BLOCK_N: tl.constexpr,
                          NB: tl.constexpr, DEPTH: tl.constexpr):
        """One-row GEMV: BLOCK_N weight rows a program, tiles of NB blocks of 32 bytes, the input's even
        columns against the high nibbles and the odd against the low, an fp32 accumulator in the
        tile's shape reduced once at the end; DEPTH tiles loaded ahead (probe 1: one)."""
        STEP: tl.constexpr = NB * 32
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        acc = tl.zeros([BLOCK_N, NB, 32], dtype=tl.float32)
        b1, a1 = _tile(W, ABSMAX, rn, n_ok, 0, KH, K, BLOCK_N, NB)
        b2, a2 = b1, a1
        b3, a3 = b1, a1
        if DEPTH >= 2:
            b2, a2 = _tile(W, ABSMAX, rn, n_ok, STEP, KH, K, BLOCK_N, NB)
        if DEPTH >= 3:
            b3, a3 = _tile(W, ABSMAX, rn, n_ok, 2 * STEP, KH, K, BLOCK_N, NB)
        for j0 in range(0, KH, STEP):
            byte, a = b1, a1
            if DEPTH == 1:
                b1, a1 = _tile(W, ABSMAX, rn, n_ok, j0 + STEP, KH, K, BLOCK_N, NB)
            elif DEPTH == 2:
                b1, a1 = b2, a2
                b2, a2 = _tile(W, ABSMAX, rn, n_ok, j0 + 2 * STEP, KH, K, BLOCK_N, NB)
            else:
                b1, a1 = b2, a2
                b2, a2 = b3, a3
                b3, a3 = _tile(W, ABSMAX, rn, n_ok, j0 + 3 * STEP, KH, K, BLOCK_N, NB)
            w_hi, w_lo = _lookup(byte, CODE, a, V, BLOCK_N, NB)
            cols = 2 * j0 + tl.arange(0, NB * 64)
            x = tl.load(X + cols, mask=cols < K, other=0.0).to(tl.float32)
            xe, xo = tl.split(tl.reshape(x, [NB * 32, 2]))
            xe = tl.reshape(xe, [1, NB, 32])
            xo = tl.reshape(xo, [1, NB, 32])
            acc += xe * w_hi + xo * w_lo
        y = tl.sum(tl.reshape(acc, [BLOCK_N, NB * 32]), axis=1)
        tl.store(Y + rn, y.to(Y.dtype.element_ty), mask=n_ok)


    @triton.jit
    def _gemv_pair_kernel(X32, W, ABSMAX, CODE, Y, N, K, KH, V: tl.constexpr, BLOCK_N: tl.constexpr,
                          NB: tl.constexpr, DEPTH: tl.constexpr):
        """The one-row GEMV with the input read as bf16 pairs (one int32 per weight byte) in the
        byte tile's own shape (the same address for every row): no exchange of the input tile."""
        STEP: tl.constexpr = NB * 32
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rb = tl.arange(0, NB)
        re = tl.arange(0, 32)
        xoff = (rn * 0)[:, None, None] + (rb * 32)[None, :, None] + re[None, None, :]
        acc = tl.zeros([BLOCK_N, NB, 32], dtype=tl.float32)
        b1, a1 = _tile(W, ABSMAX, rn, n_ok, 0, KH, K, BLOCK_N, NB)
        b2, a2 = b1, a1
        if DEPTH >= 2:
            b2, a2 = _tile(W, ABSMAX, rn, n_ok, STEP, KH, K, BLOCK_N, NB)
        for j0 in range(0, KH, STEP):
            byte, a = b1, a1
            if DEPTH == 1:
                b1, a1 = _tile(W, ABSMAX, rn, n_ok, j0 + STEP, KH, K, BLOCK_N, NB)
            else:
                b1, a1 = b2, a2
                b2, a2 = _tile(W, ABSMAX, rn, n_ok, j0 + 2 * STEP, KH, K, BLOCK_N, NB)
            x32 = tl.load(X32 + j0 + xoff, mask=j0 + xoff < KH, other=0)
            xe = (x32 << 16).to(tl.float32, bitcast=True)
            xo = (x32 & -65536).to(tl.float32, bitcast=True)
            w_hi, w_lo = _lookup(byte, CODE, a, V, BLOCK_N, NB)
            acc += xe * w_hi + xo * w_lo
        y = tl.sum(tl.reshape(acc, [BLOCK_N, NB * 32]), axis=1)
        tl.store(Y + rn, y.to(Y.dtype.element_ty), mask=n_ok)


    @triton.jit
    def _mma_kernel(X, sxm, W, ABSMAX, CODE, Y, sym, M, N, K, KH, V: tl.constexpr, F32: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr):
        """Y [M, N] = X [M, K] @ W^T on tensor cores, each NF4 weight tile read and decoded once
        for all rows (the verify's form), in plain 2-D tiles: bytes [BLOCK_N, BLOCK_KH], the absmax
        of each byte's block (gathered, cached), the decoded high and low nibbles as the left
        operands of two products with the input's even and odd columns, loaded already transposed
        ([BLOCK_KH, BLOCK_M]). V: the lookup (0: the map in global memory, 4: none, the nibble
        converted). F32: fp32 operands (the CPU interpreter's tl.dot is wrong on bf16)."""
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        n_ok = rn < N
        m_ok = rm < M
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for j0 in range(0, KH, BLOCK_KH):
            jj = j0 + tl.arange(0, BLOCK_KH)
            j_ok = jj < KH
            wm = n_ok[:, None] & j_ok[None, :]
            byte = tl.load(W + rn[:, None] * KH + jj[None, :], mask=wm, other=0)
            a = tl.load(ABSMAX + (rn[:, None] * K + 2 * jj[None, :]) // 64, mask=wm, other=0.0)
            b = byte.to(tl.int32)
            if V == 0:
                c_hi = tl.load(CODE + (b >> 4))
                c_lo = tl.load(CODE + (b & 15))
            else:
                c_hi = (b >> 4).to(tl.float32)
                c_lo = (b & 15).to(tl.float32)
            xm = j_ok[:, None] & m_ok[None, :]
            xe = tl.load(X + rm[None, :] * sxm + 2 * jj[:, None], mask=xm, other=0.0)
            xo = tl.load(X + rm[None, :] * sxm + 2 * jj[:, None] + 1, mask=xm, other=0.0)
            if F32:
                w_hi = (c_hi * a).to(tl.bfloat16).to(tl.float32)
                w_lo = (c_lo * a).to(tl.bfloat16).to(tl.float32)
                acc += tl.dot(w_hi, xe.to(tl.float32), input_precision="ieee")
                acc += tl.dot(w_lo, xo.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot((c_hi * a).to(tl.bfloat16), xe)
                acc += tl.dot((c_lo * a).to(tl.bfloat16), xo)
        tl.store(Y + rm[None, :] * sym + rn[:, None], acc.to(Y.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])

    PRMT_ASM_C = tl.constexpr(PRMT_ASM)


def dequant(q: nf4.NF4Weight, v: int, block_n: int = 16, nb: int = 4, warps: int = 4):
    n, k = q.shape
    y = torch.empty(n, k, dtype=torch.bfloat16, device=q.packed.device)
    _dequant_kernel[(triton.cdiv(n, block_n), triton.cdiv(k // 2, nb * 32))](
        q.packed, q.absmax, q.code, y, n, k, k // 2, V=v, BLOCK_N=block_n, NB=nb, num_warps=warps)
    return y


def gemv(x, q: nf4.NF4Weight, v: int, block_n: int = 4, nb: int = 8, warps: int = 4):
    n, k = q.shape
    y = torch.empty(n, dtype=torch.bfloat16, device=x.device)
    _gemv_deep_kernel[(triton.cdiv(n, block_n),)](x, q.packed, q.absmax, q.code, y, n, k, k // 2, V=v,
                                                 BLOCK_N=block_n, NB=nb, DEPTH=1, num_warps=warps)
    return y


def dequant32(q: nf4.NF4Weight, v: int, block_n: int = 8, nb: int = 8, warps: int = 4):
    n, k = q.shape
    y = torch.empty(n, k, dtype=torch.bfloat16, device=q.packed.device)
    _dequant32_kernel[(triton.cdiv(n, block_n), triton.cdiv(k // 2, nb * 32))](
        q.packed, q.absmax, q.code, y.view(torch.int32), n, k, k // 2, V=v, BLOCK_N=block_n, NB=nb, num_warps=warps)
    return y


def gemv_deep(x, q: nf4.NF4Weight, v: int, block_n: int, nb: int, warps: int, depth: int):
    n, k = q.shape
    y = torch.empty(n, dtype=torch.bfloat16, device=x.device)
    _gemv_deep_kernel[(triton.cdiv(n, block_n),)](x, q.packed, q.absmax, q.code, y, n, k, k // 2, V=v,
                                                 BLOCK_N=block_n, NB=nb, DEPTH=depth, num_warps=warps)
    return y


def gemv_pair(x, q: nf4.NF4Weight, v: int, block_n: int, nb: int, warps: int, depth: int):
    n, k = q.shape
    y = torch.empty(n, dtype=torch.bfloat16, device=x.device)
    _gemv_pair_kernel[(triton.cdiv(n, block_n),)](x.view(torch.int32), q.packed, q.absmax, q.code, y, n, k, k // 2,
                                                 V=v, BLOCK_N=block_n, NB=nb, DEPTH=depth, num_warps=warps)
    return y


def mma(x, q: nf4.NF4Weight, v: int, block_n: int = 64, block_kh: int = 64, warps: int = 4, stages: int = 2):
    """x [M, K] (M <= 16) @ W^T through _mma_kernel."""
    n, k = q.shape
    m = x.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _mma_kernel[(triton.cdiv(n, block_n),)](x, x.stride(0), q.packed, q.absmax, q.code, y, y.stride(0), m, n, k,
                                           k // 2, V=v, F32=not x.is_cuda, BLOCK_M=16, BLOCK_N=block_n,
                                           BLOCK_KH=block_kh, num_warps=warps, num_stages=stages)
    return y


def tensor_cores() -> dict:
    """Probe 4: several rows (the verify's 6, a batch-4 target's 4, one) on tensor cores with each
    NF4 tile decoded once, against today's nf4_gemv forms and the dequantization + cuBLAS path."""
    dev = torch.device("cuda")
    out: dict = {"rows": []}
    for name, (n, k) in SHAPES.items():
        q, ref, _, _, qs = _weights(n, k, dev)
        row: dict = {"weight": name, "shape": [n, k], "nf4_mb": q.nbytes / 1e6, "by_rows": {}}
        print(f"{name} {n}x{k} NF4 {q.nbytes / 1e6:.1f} MB", flush=True)
        for m in (1, 4, 6):
            xm = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            yref = xm.float() @ ref.float().T
            res: dict = {}
            res["dequant_cublas_us"] = timed([lambda c=c: torch.nn.functional.linear(xm, nf4.dequantize_nf4_fast(c))
                                              for c in qs])
            cfg = nf4.nf4_gemv_config(m, n, k)
            res["nf4_gemv_default_us"] = timed([lambda c=c: nf4.nf4_gemv(xm, c) for c in qs])
            res["nf4_gemv_default_config"] = list(cfg)
            print(f"  rows {m}: dequantize + cuBLAS {res['dequant_cublas_us']:.1f} us | nf4_gemv {cfg} "
                  f"{res['nf4_gemv_default_us']:.1f} us", flush=True)
            res["mma"] = []
            _sweep(f"rows {m} mma", lambda c, v, *cfg: mma(xm, c, v, *cfg),
                   ((64, 64, 4, 2), (64, 32, 4, 3), (32, 64, 4, 2), (128, 32, 4, 2), (128, 64, 8, 2), (16, 128, 4, 2),
                    (32, 128, 4, 3), (64, 128, 4, 2)), q, qs, yref, res["mma"], variants=(0, 4))
            row["by_rows"][m] = res
        out["rows"].append(row)
    return out


def _weights(n: int, k: int, dev) -> tuple:
    """(NF4 weight, its dense decode, a bf16 input row, the fp32 product, copies of the weight
    ending with it whose NF4 bytes exceed COLD) for an [n, k] weight of random values."""
    w = (torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16)
    q = nf4.quantize_nf4(w, BS, double_quant=False)
    ref = nf4.dequantize_nf4(q)
    x = torch.randn(k, device=dev, dtype=torch.bfloat16)
    copies = max(1, min(64, math.ceil(COLD / q.nbytes)))
    qs = [nf4.quantize_nf4((torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16), BS, False)
          for _ in range(copies - 1)] + [q]
    return q, ref, x, ref.float() @ x.float(), qs


def _sweep(label: str, run, configs, q: nf4.NF4Weight, qs: list, yref: torch.Tensor, found: list,
           variants: tuple[int, ...] = (0, 2, 4), names: tuple[str, ...] = VARIANTS) -> None:
    """For each variant (indices into `names`, by default the lookups ldg, table, none) and
    config: run(weight, variant, *config) checked against yref, then timed over the weight copies;
    appended to `found` and printed."""
    for v in variants:
        for cfg in configs:
            try:
                y = run(q, v, *cfg).float()
                err = float((y - yref).abs().max() / yref.abs().max())
                t = timed([lambda c=c: run(c, v, *cfg) for c in qs])
            except Exception as e:  # a config that does not compile is a result too
                print(f"  {label} {names[v]} {cfg} failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}",
                      flush=True)
                continue
            found.append({"variant": names[v], "config": list(cfg), "us": t, "rel_err": err})
            print(f"  {label} {names[v]:5s} {cfg} {t:6.1f} us ({q.nbytes / t / 1e6:.2f} TB/s) err {err:.1e}",
                  flush=True)


def pairs() -> dict:
    """Probe 3: the one-row GEMV with the input read as bf16 pairs in the weight tile's layout."""
    dev = torch.device("cuda")
    out: dict = {"rows": []}
    for name, (n, k) in SHAPES.items():
        q, ref, x, yref, qs = _weights(n, k, dev)
        row: dict = {"weight": name, "shape": [n, k], "nf4_mb": q.nbytes / 1e6, "gemv_pair": []}
        print(f"{name} {n}x{k} NF4 {q.nbytes / 1e6:.1f} MB", flush=True)
        _sweep("gemv_pair", lambda c, v, *cfg: gemv_pair(x, c, v, *cfg),
               ((4, 8, 4, 1), (4, 8, 4, 2), (8, 8, 4, 1), (8, 4, 2, 2), (2, 16, 2, 1), (4, 16, 4, 1), (16, 4, 4, 1),
                (4, 4, 1, 2), (8, 8, 8, 2), (2, 8, 1, 2)), q, qs, yref, row["gemv_pair"])
        out["rows"].append(row)
    return out


def structure() -> dict:
    """Probe 2: the dequantization's stores as int32 pairs; the GEMV with tiles loaded further ahead."""
    dev = torch.device("cuda")
    out: dict = {"rows": []}
    for name, (n, k) in SHAPES.items():
        q, ref, x, yref, qs = _weights(n, k, dev)
        moved = q.nbytes + 2 * n * k
        row: dict = {"weight": name, "shape": [n, k], "nf4_mb": q.nbytes / 1e6, "dequant32": [], "gemv_deep": []}
        print(f"{name} {n}x{k} NF4 {q.nbytes / 1e6:.1f} MB", flush=True)
        for v in (0, 2, 4):
            for bn, nb, wp in ((8, 8, 4), (16, 8, 4), (4, 16, 4), (8, 16, 8)):
                try:
                    ok = v == 4 or torch.equal(dequant32(q, v, bn, nb, wp), ref)
                    t = timed([lambda c=c: dequant32(c, v, bn, nb, wp) for c in qs])
                except Exception as e:
                    print(f"  dequant32 {VARIANTS[v]} {(bn, nb, wp)} failed: {type(e).__name__}", flush=True)
                    continue
                row["dequant32"].append({"variant": VARIANTS[v], "config": [bn, nb, wp], "us": t, "exact": ok})
                print(f"  dequant32 {VARIANTS[v]:5s} {(bn, nb, wp)} {t:7.1f} us ({moved / t / 1e6:.2f} TB/s) exact {ok}",
                      flush=True)
        _sweep("gemv_deep", lambda c, v, *cfg: gemv_deep(x, c, v, *cfg),
               ((4, 8, 4, 2), (4, 8, 4, 3), (4, 16, 4, 2), (8, 8, 4, 2), (8, 16, 8, 2), (2, 16, 2, 3), (2, 8, 2, 3),
                (16, 8, 8, 2)), q, qs, yref, row["gemv_deep"])
        out["rows"].append(row)
    return out


def timed(calls) -> float:
    """Microseconds per call: the calls (one per weight copy) as one CUDA graph."""
    for c in calls[:2]:
        c()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    torch.cuda.synchronize()
    out = []
    for _ in range(10):
        t = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / len(calls))
    return statistics.median(out) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--structure", action="store_true", help="probe 2 (see structure())")
    ap.add_argument("--pairs", action="store_true", help="probe 3 (see pairs())")
    ap.add_argument("--mma", action="store_true", help="probe 4 (see tensor_cores())")
    args = ap.parse_args()
    if args.structure or args.pairs or args.mma:
        torch.manual_seed(0)
        res = structure() if args.structure else pairs() if args.pairs else tensor_cores()
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
        return
    torch.manual_seed(0)
    dev = torch.device("cuda")
    results: dict = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": []}
    print(f"{results['device']}, triton {triton.__version__}")
    for name, (n, k) in SHAPES.items():
        q, ref, x, yref, qs = _weights(n, k, dev)
        nf4_bytes = q.nbytes
        t_old_dq = timed([lambda c=c: nf4.dequantize_nf4_fast(c) for c in qs])
        t_old_gemv = timed([lambda c=c: nf4.nf4_gemv(x[None], c) for c in qs])
        row = {"weight": name, "shape": [n, k], "nf4_mb": nf4_bytes / 1e6,
               "current_dequant_us": t_old_dq, "current_gemv_us": t_old_gemv}
        print(f"{name} {n}x{k} NF4 {nf4_bytes / 1e6:.1f} MB | current: dequant {t_old_dq:.1f} us, "
              f"gemv {t_old_gemv:.1f} us ({nf4_bytes / t_old_gemv / 1e6:.2f} TB/s)", flush=True)
        for vname in args.variants:
            v = VARIANTS.index(vname)
            try:
                d = dequant(q, v)
                ok_dq = vname == "copy" or torch.equal(d, ref)
                y = gemv(x, q, v).float()
                err = float((y - yref).abs().max() / yref.abs().max())
                t_dq = timed([lambda c=c: dequant(c, v) for c in qs])
                t_gv = timed([lambda c=c: gemv(x, c, v) for c in qs])
                best = (t_gv, 4, 8, 4)
                for bn, nb, wp in ((2, 8, 2), (8, 4, 4), (4, 16, 4), (8, 8, 4)):
                    t = timed([lambda c=c: gemv(x, c, v, bn, nb, wp) for c in qs])
                    best = min(best, (t, bn, nb, wp))
            except Exception as e:  # a variant that does not compile is a result too
                print(f"  {vname}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                row[vname] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                continue
            row[vname] = {"dequant_us": t_dq, "dequant_exact": ok_dq, "gemv_us": t_gv, "gemv_rel_err": err,
                          "gemv_best_us": best[0], "gemv_best_config": list(best[1:])}
            print(f"  {vname:6s} dequant {t_dq:7.1f} us ({(nf4_bytes + 2 * n * k) / t_dq / 1e6:.2f} TB/s) "
                  f"exact {ok_dq} | gemv {t_gv:6.1f} us, best {best[0]:6.1f} us {best[1:]} "
                  f"({nf4_bytes / best[0] / 1e6:.2f} TB/s) err {err:.1e}", flush=True)
        results["rows"].append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
