"""Can one persistent kernel run a draft layer's products faster than one kernel each? (H200)

    python3 benchmarks/persistent_probe.py [--layers 24] [--json FILE]

The draft step's time is latency, not bytes: Qwen2.5 0.5B's 24 layers run ~6 dependent kernels
each, ~22 us a layer against ~6 us of weight bytes. This probe measures the alternative before
anyone builds it: one kernel with one program per SM that runs a layer's four products (qkv,
o, gate/up with SiLU, down: the Qwen2.5 0.5B shapes) as phases separated by grid barriers (an
atomic counter each program bumps and then spins on), `--layers` layers per launch, each
program taking a contiguous slice of the output rows.

Timed (CUDA graphs, 20 replays back to back, median of 15), per layer:
  * the four products as today's kernels (`kernels.gemv`, PDL as the product launches them);
  * the persistent kernel, with and without loading the next phase's weight slice before the
    barrier (weights do not depend on the previous phase, so their latency can hide behind it);
  * the persistent kernel with the products removed (barriers alone: what a barrier costs).
The persistent results are checked against torch's products first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench  # noqa: E402
from specdecode.accel import kernels  # noqa: E402
from specdecode.accel.rounds import capture  # noqa: E402


@triton.jit
def _grid_barrier(BAR, target):
    """Every program of the grid arrives here before any leaves (all must be resident)."""
    tl.debug_barrier()  # this program's stores are issued before its arrival is
    seen = tl.atomic_add(BAR, 1, sem="release", scope="gpu") + 1
    while seen < target:  # plain volatile reads while waiting: no atomic traffic on the counter
        seen = tl.load(BAR, volatile=True)
    tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")  # what the others wrote is visible after this
    tl.debug_barrier()


@triton.jit
def _slice_gemv(X, W, Y, N, K, pid, P, GATED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Y[rows of this program] = W[rows] @ X (GATED: W holds gate rows then up rows, N outputs,
    Y = silu(gate) * up)."""
    per = tl.cdiv(N, P)
    lo = pid * per
    hi = tl.minimum(lo + per, N)
    r = tl.arange(0, BLOCK_R)
    kk = tl.arange(0, BLOCK_K)
    for r0 in range(lo, hi, BLOCK_R):
        rows = r0 + r
        ok = rows < hi
        acc = tl.zeros([BLOCK_R], dtype=tl.float32)
        accu = tl.zeros([BLOCK_R], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + kk
            kok = ks < K
            x = tl.load(X + ks, mask=kok, other=0.0, cache_modifier=".cg").to(tl.float32)
            w = tl.load(W + rows[:, None] * K + ks[None, :], mask=ok[:, None] & kok[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
            if GATED:
                wu = tl.load(W + (rows + N)[:, None] * K + ks[None, :], mask=ok[:, None] & kok[None, :], other=0.0)
                accu += tl.sum(wu.to(tl.float32) * x[None, :], axis=1)
        if GATED:
            acc = acc / (1.0 + tl.exp(-acc)) * accu
        tl.store(Y + rows, acc.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _slice_rows(N, pid, P, BLOCK_R: tl.constexpr):
    """The output rows of program pid's contiguous slice (at most BLOCK_R), and which are real."""
    per = tl.cdiv(N, P)
    r = tl.arange(0, BLOCK_R)
    rows = pid * per + r
    return rows, (r < per) & (rows < N)


@triton.jit
def _prefetched_gemv(X, W, Y, N, K, pid, P, w0, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Y = W @ X for a program whose whole slice (<= BLOCK_R rows, K <= BLOCK_K) is already in w0."""
    rows, ok = _slice_rows(N, pid, P, BLOCK_R)
    kk = tl.arange(0, BLOCK_K)
    x = tl.load(X + kk, mask=kk < K, other=0.0, cache_modifier=".cg").to(tl.float32)
    acc = tl.sum(w0.to(tl.float32) * x[None, :], axis=1)
    tl.store(Y + rows, acc.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _slice_tile(W, N, K, pid, P, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program pid's whole weight slice [BLOCK_R, BLOCK_K] (K <= BLOCK_K), zeros past its rows."""
    rows, ok = _slice_rows(N, pid, P, BLOCK_R)
    kk = tl.arange(0, BLOCK_K)
    return tl.load(W + rows[:, None] * K + kk[None, :], mask=ok[:, None] & (kk < K)[None, :], other=0.0)


@triton.jit
def _layers_kernel(X, QKV, O, A, WQKV, WO, WGU, WD, BAR, LAYERS, NQKV, H, I,
                   PREFETCH: tl.constexpr, PRODUCTS: tl.constexpr,
                   BR_QKV: tl.constexpr, BR_O: tl.constexpr, BR_GU: tl.constexpr, BR_D: tl.constexpr,
                   BK_H: tl.constexpr, BK_I: tl.constexpr):
    """LAYERS x (qkv = Wqkv x; o = Wo qkv[:H]; a = silu(gate) * up of Wgu o; x = Wd a), one grid
    barrier after each product. X [H] is the layer's input and the last product's output."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    n = 0
    w_q = _slice_tile(WQKV, NQKV, H, pid, P, BR_QKV, BK_H)  # (used by the prefetching form only)
    for _ in range(LAYERS):
        if PRODUCTS:
            if PREFETCH:
                _prefetched_gemv(X, WQKV, QKV, NQKV, H, pid, P, w_q, BR_QKV, BK_H)
                w_o = _slice_tile(WO, H, H, pid, P, BR_O, BK_H)  # before the barrier: hides its latency
            else:
                _slice_gemv(X, WQKV, QKV, NQKV, H, pid, P, False, BR_QKV, BK_H)
        n += 1
        _grid_barrier(BAR, n * P)
        if PRODUCTS:
            if PREFETCH:
                _prefetched_gemv(QKV, WO, O, H, H, pid, P, w_o, BR_O, BK_H)
            else:
                _slice_gemv(QKV, WO, O, H, H, pid, P, False, BR_O, BK_H)
        n += 1
        _grid_barrier(BAR, n * P)
        if PRODUCTS:
            _slice_gemv(O, WGU, A, I, H, pid, P, True, BR_GU, BK_H)
        n += 1
        _grid_barrier(BAR, n * P)
        if PRODUCTS:
            _slice_gemv(A, WD, X, H, I, pid, P, False, BR_D, BK_I)
            if PREFETCH:
                w_q = _slice_tile(WQKV, NQKV, H, pid, P, BR_QKV, BK_H)  # the next layer's, likewise
        n += 1
        _grid_barrier(BAR, n * P)


def persistent(x, w, bar, layers, prefetch, products, programs, warps):
    H = x.shape[0]
    I = w["gu"].shape[0] // 2
    qkv = torch.empty(w["qkv"].shape[0], dtype=x.dtype, device=x.device)
    o = torch.empty(H, dtype=x.dtype, device=x.device)
    a = torch.empty(I, dtype=x.dtype, device=x.device)
    per = lambda n: triton.next_power_of_2(-(-n // programs))  # noqa: E731

    def run():
        bar.zero_()
        _layers_kernel[(programs,)](x, qkv, o, a, w["qkv"], w["o"], w["gu"], w["d"], bar, layers,
                                    w["qkv"].shape[0], H, I, PREFETCH=prefetch, PRODUCTS=products,
                                    BR_QKV=per(w["qkv"].shape[0]), BR_O=per(H), BR_GU=8, BR_D=per(H),
                                    BK_H=triton.next_power_of_2(H), BK_I=1024, num_warps=warps)
    return run, (qkv, o, a)


def reference(x, w, layers):
    H = x.shape[0]
    I = w["gu"].shape[0] // 2
    x = x.float()
    for _ in range(layers):
        qkv = (w["qkv"].float() @ x).to(torch.bfloat16).float()
        o = (w["o"].float() @ qkv[:H]).to(torch.bfloat16).float()
        gu = w["gu"].float() @ o
        a = (torch.nn.functional.silu(gu[:I]) * gu[I:]).to(torch.bfloat16).float()
        x = (w["d"].float() @ a).to(torch.bfloat16).float()
    return x


def timed(fn) -> float:
    """ms per replay of `fn` captured as a CUDA graph (gpu_bench.replay_ms)."""
    graph, _ = capture(fn, [], warmups=1)
    return gpu_bench.replay_ms(graph)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--warps", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    H, I, NQKV = 896, 4864, 1152  # Qwen2.5 0.5B
    g = torch.Generator(device=dev).manual_seed(0)
    w = {"qkv": torch.randn(NQKV, H, device=dev, generator=g) * 0.03,
         "o": torch.randn(H, H, device=dev, generator=g) * 0.03,
         "gu": torch.randn(2 * I, H, device=dev, generator=g) * 0.03,
         "d": torch.randn(H, I, device=dev, generator=g) * 0.03}
    w = {k: v.to(torch.bfloat16).contiguous() for k, v in w.items()}
    x0 = (torch.randn(H, device=dev, generator=g)).to(torch.bfloat16)
    bar = torch.zeros(1, dtype=torch.int32, device=dev)
    L = args.layers
    res: dict[str, float] = {"sms": sms, "layers": L}

    # today's kernels, one per product (PDL as the product launches them)
    pdl = kernels.pdl_usable(dev)
    x = x0.clone()

    def separate():
        h = x
        for _ in range(L):
            qkv, _ = kernels.gemv(h[None], w["qkv"], pdl=pdl)
            o, _ = kernels.gemv(qkv[:, :H], w["o"], pdl=pdl)
            a, _ = kernels.gemv(o, w["gu"], act="silu", pdl=pdl)
            h, _ = kernels.gemv(a, w["d"], pdl=pdl)
            h = h[0]
        return h
    res["separate_ms_per_layer"] = timed(separate) / L
    print(f"{sms} SMs; four products as separate kernels: {res['separate_ms_per_layer'] * 1e3:.2f} us a layer")

    want = reference(x0, w, 3)
    for warps in args.warps:
        for prefetch in (False, True):
            x = x0.clone()
            run, _ = persistent(x, w, bar, 3, prefetch, True, sms, warps)
            run()
            torch.cuda.synchronize()
            err = (x.float() - want).abs().max().item() / want.abs().max().item()
            x = x0.clone()
            run, _ = persistent(x, w, bar, L, prefetch, True, sms, warps)
            t = timed(run) / L
            res[f"persistent_w{warps}_prefetch{int(prefetch)}_ms_per_layer"] = t
            res[f"persistent_w{warps}_prefetch{int(prefetch)}_rel_err"] = err
            print(f"persistent, {warps} warps, prefetch {prefetch}: {t * 1e3:.2f} us a layer "
                  f"(max error against torch {err:.1e} of the largest output)")
        run, _ = persistent(x0.clone(), w, bar, L, False, False, sms, warps)
        t = timed(run) / L
        res[f"barriers_only_w{warps}_ms_per_layer"] = t
        print(f"  barriers alone, {warps} warps: {t * 1e3:.2f} us a layer (4 barriers: {t * 1e3 / 4:.2f} us each)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
