"""How long the NF4 layers' dense fallback takes per weight (prefill, and steps past
fused.NF4_KERNEL_ROWS): nf4.dequantize_nf4 (torch reference) against nf4.dequantize_nf4_fast
(one Triton kernel), then the 6-row product on cuBLAS, for the Qwen2.5 1.5B layer's weights.

    python3 benchmarks/nf4_dequant_bench.py        # a CUDA device; no bitsandbytes needed

Weights are quantized with the torch reference (nf4.quantize_nf4: bitsandbytes' format, double
quantization, blocks of 64); each timing is a CUDA graph of 20 back-to-back calls, replayed 10
times after 3 warm-ups, median; bytes are those read and written by the dequantization.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdecode.accel import nf4  # noqa: E402

SHAPES = {"qkv": (2048, 1536), "o": (1536, 1536), "gate_up": (17920, 1536), "down": (1536, 8960)}


def timed(fn, reps=20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(10):
        torch.cuda.synchronize()
        t = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / reps)
    return statistics.median(times) * 1e6


def main() -> None:
    torch.manual_seed(0)
    print("weight | N x K | torch reference us | Triton us | GB/s (Triton) | cuBLAS 6 rows us")
    for name, (n, k) in SHAPES.items():
        w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
        q = nf4.quantize_nf4(w, 64, True)
        assert torch.equal(nf4.dequantize_nf4_fast(q), nf4.dequantize_nf4(q))
        x = torch.randn(6, k, device="cuda", dtype=torch.bfloat16)
        dense = nf4.dequantize_nf4(q)
        t_ref = timed(lambda: nf4.dequantize_nf4(q))
        t_fast = timed(lambda: nf4.dequantize_nf4_fast(q))
        t_mm = timed(lambda: F.linear(x, dense))
        moved = q.nbytes + n * k * 2
        print(f"{name} | {n} x {k} | {t_ref:.1f} | {t_fast:.1f} | {moved / t_fast / 1e3:.0f} | {t_mm:.1f}", flush=True)


if __name__ == "__main__":
    main()
