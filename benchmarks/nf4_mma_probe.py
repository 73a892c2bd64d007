"""The NF4 verify form: several rows on tensor cores, each NF4 weight read once (issue 17, probe 5).

A verify step of k + 1 rows on NF4 weights runs today on each layer's weights dequantized to
bf16 (``nf4.dequantize_nf4_fast``, ~3.2 TB/s) and cuBLAS: the NF4 bytes are read, 4x as many
bf16 bytes written and read again. Probe 4 (``nf4_decode_probe.py --mma``,
benchmarks/results/2026-12-03-h200-nf4-mma-probe.txt) put the decoded tile of plain 2-D byte
tiles on tensor cores with one program per column tile: 50-640 us where dequantization + cuBLAS
takes 20-154 us. This probe changes the tile's shape and splits K:

- ``kn``: the weight tile loaded already transposed, [BLOCK_K, BLOCK_N], one byte per element
  (each byte loaded twice, the second from L1), its nibble picked by the column's parity; the
  input [BLOCK_M, BLOCK_K] as the left operand of one product per tile. No reshapes.
- ``split``: byte tiles [BLOCK_N, BLOCK_K // 2] as stored, the absmax once per quantization block;
  the high and low nibbles decoded apart and multiplied with the input's even and odd columns
  (two products per tile, the input split in registers).
- ``join``: as ``split``, the two halves joined back into [BLOCK_N, BLOCK_K] for one product.

Every form splits K over SPLIT_K programs per column tile, which add their fp32 partials into a
zeroed output (atomics; the zeroing is inside the timing). Checked against nf4.dequantize_nf4 @
x in fp32; timed as nf4_decode_probe times (every call in one CUDA graph over weight copies larger
than 192 MB, median of 10), against dequantization + cuBLAS and nf4_gemv's default form.

    python3 benchmarks/nf4_mma_probe.py [--rows 6 4] [--json out.json]     # a CUDA device
    TRITON_INTERPRET=1 python3 benchmarks/nf4_mma_probe.py --check           # CPU: correctness only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from specdecode.accel import nf4  # noqa: E402
from specdecode.accel.kernels import tl, triton  # noqa: E402

FORMS = ("kn", "split", "join")
BS = 64

if triton is not None:
    from specdecode.accel.nf4 import _round_bf16  # bf16 rounding by hand: the interpreter's truncates

    @triton.jit
    def _mma_probe_kernel(X, sxm, W, ABSMAX, CODE, Y, sym, M, N, K, KH,
                          FORM: tl.constexpr, F32: tl.constexpr, SPLIT_K: tl.constexpr, BS: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Y [M, N] += X [M, K] @ W^T over this program's share of K (see the module doc)."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        n_ok = rn < N
        m_ok = rm < M
        per = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
        k_lo = pid_k * per
        k_hi = tl.minimum(k_lo + per, K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            if FORM == 0:  # kn: [BLOCK_K, BLOCK_N], a byte per element
                rk = k0 + tl.arange(0, BLOCK_K)
                k_ok = rk < k_hi
                wm = k_ok[:, None] & n_ok[None, :]
                byte = tl.load(W + rn[None, :] * KH + (rk // 2)[:, None], mask=wm, other=0).to(tl.int32)
                q = (byte >> (4 - 4 * (rk % 2))[:, None]) & 15
                a = tl.load(ABSMAX + rn[None, :] * (K // BS) + (rk // BS)[:, None], mask=wm, other=0.0)
                w = tl.load(CODE + q) * a
                x = tl.load(X + rm[:, None] * sxm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
                if F32:
                    acc += tl.dot(x.to(tl.float32), _round_bf16(w), input_precision="ieee")
                else:
                    acc += tl.dot(x, w.to(tl.bfloat16))
            else:  # split / join: byte tiles as stored, the absmax once per block
                rb = tl.arange(0, BLOCK_K // BS)
                re = tl.arange(0, BS // 2)
                jb = k0 // 2 + rb * (BS // 2)
                bm = n_ok[:, None] & (2 * jb < k_hi)[None, :]
                byte = tl.load(W + rn[:, None, None] * KH + jb[None, :, None] + re[None, None, :],
                               mask=bm[:, :, None], other=0).to(tl.int32)
                a = tl.load(ABSMAX + rn[:, None] * (K // BS) + (2 * jb // BS)[None, :], mask=bm, other=0.0)
                w_hi = tl.reshape(tl.load(CODE + (byte >> 4)) * a[:, :, None], [BLOCK_N, BLOCK_K // 2])
                w_lo = tl.reshape(tl.load(CODE + (byte & 15)) * a[:, :, None], [BLOCK_N, BLOCK_K // 2])
                rk = k0 + tl.arange(0, BLOCK_K)
                x = tl.load(X + rm[:, None] * sxm + rk[None, :], mask=m_ok[:, None] & (rk < k_hi)[None, :], other=0.0)
                if FORM == 1:
                    xe, xo = tl.split(tl.reshape(x, [BLOCK_M, BLOCK_K // 2, 2]))
                    if F32:
                        acc += tl.dot(xe.to(tl.float32), tl.trans(_round_bf16(w_hi)),
                                      input_precision="ieee")
                        acc += tl.dot(xo.to(tl.float32), tl.trans(_round_bf16(w_lo)),
                                      input_precision="ieee")
                    else:
                        acc += tl.dot(xe, tl.trans(w_hi.to(tl.bfloat16)))
                        acc += tl.dot(xo, tl.trans(w_lo.to(tl.bfloat16)))
                else:
                    if F32:
                        w = tl.reshape(tl.join(_round_bf16(w_hi), _round_bf16(w_lo)), [BLOCK_N, BLOCK_K])
                        acc += tl.dot(x.to(tl.float32), tl.trans(w), input_precision="ieee")
                    else:
                        w = tl.reshape(tl.join(w_hi.to(tl.bfloat16), w_lo.to(tl.bfloat16)), [BLOCK_N, BLOCK_K])
                        acc += tl.dot(x, tl.trans(w))
        ym = m_ok[:, None] & n_ok[None, :]
        ptr = Y + rm[:, None] * sym + rn[None, :]
        if SPLIT_K == 1:
            tl.store(ptr, acc, mask=ym)
        else:
            tl.atomic_add(ptr, acc, mask=ym, sem="relaxed")


def mma(x: torch.Tensor, q: nf4.NF4Weight, form: str, block_n: int, block_k: int, split_k: int, warps: int,
        stages: int) -> torch.Tensor:
    """x [M, K] (M <= 16) @ W^T in fp32 through the probe kernel (NF4 without double quantization)."""
    n, k = q.shape
    m = x.shape[0]
    y = torch.zeros(m, n, dtype=torch.float32, device=x.device)
    _mma_probe_kernel[(triton.cdiv(n, block_n), split_k)](
        x, x.stride(0), q.packed, q.absmax, q.code, y, y.stride(0), m, n, k, k // 2,
        FORM=FORMS.index(form), F32=not x.is_cuda, SPLIT_K=split_k, BS=q.blocksize, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps, num_stages=stages)
    return y


CONFIGS = (  # (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages)
    (64, 128, 1, 4, 3), (64, 128, 2, 4, 3), (32, 128, 2, 4, 3), (32, 256, 1, 4, 3), (16, 256, 1, 4, 3),
    (16, 128, 2, 2, 3), (32, 128, 4, 4, 3), (64, 64, 4, 4, 4), (16, 256, 4, 2, 3), (32, 256, 8, 4, 2),
    (64, 256, 8, 8, 2), (16, 512, 8, 4, 2),
)


def check() -> None:
    """Each form against the dense product on the CPU (Triton's interpreter), small shapes."""
    torch.manual_seed(0)
    for n, k in ((96, 256), (40, 384)):
        w = (torch.randn(n, k) * 0.02).to(torch.bfloat16)
        q = nf4.quantize_nf4(w, BS, double_quant=False)
        ref = nf4.dequantize_nf4(q).float()
        for m in (1, 6):
            x = torch.randn(m, k).to(torch.bfloat16)
            yref = x.float() @ ref.T
            for form in FORMS:
                for cfg in ((32, 128, 1, 4, 2), (16, 64, 2, 4, 2), (64, 128, 4, 4, 2)):
                    y = mma(x, q, form, *cfg)
                    err = float((y - yref).abs().max() / yref.abs().max())
                    assert err < 1e-5, (form, n, k, m, cfg, err)
        print(f"{n}x{k}: every form matches the dense product")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="+", type=int, default=[6])
    ap.add_argument("--shapes", nargs="+", default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--check", action="store_true", help="correctness on the CPU under TRITON_INTERPRET=1")
    args = ap.parse_args()
    if args.check:
        check()
        return
    import nf4_decode_probe as p4

    torch.manual_seed(0)
    dev = torch.device("cuda")
    out: dict = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": []}
    for name, (n, k) in p4.SHAPES.items():
        if args.shapes and name not in args.shapes:
            continue
        q, ref, _, _, qs = p4._weights(n, k, dev)
        row: dict = {"weight": name, "shape": [n, k], "nf4_mb": q.nbytes / 1e6, "by_rows": {}}
        out["rows"].append(row)
        print(f"{name} {n}x{k} NF4 {q.nbytes / 1e6:.1f} MB", flush=True)
        for m in args.rows:
            xm = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            yref = xm.float() @ ref.float().T
            res: dict = {"dequant_cublas_us": p4.timed([lambda c=c: torch.nn.functional.linear(xm, nf4.dequantize_nf4_fast(c))
                                                        for c in qs]),
                         "nf4_gemv_one_row_us": p4.timed([lambda c=c: nf4.nf4_gemv(xm[:1], c) for c in qs]),
                         "forms": []}
            print(f"  rows {m}: dequantize + cuBLAS {res['dequant_cublas_us']:.1f} us | one-row nf4_gemv "
                  f"{res['nf4_gemv_one_row_us']:.1f} us", flush=True)
            p4._sweep(f"rows {m}", lambda c, f, *cfg: mma(xm, c, FORMS[f], *cfg), CONFIGS, q, qs, yref,
                      res["forms"], variants=tuple(range(len(FORMS))), names=FORMS)
            row["by_rows"][m] = res
            if args.json:  # after every row count: a run cut short keeps what it measured
                args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
