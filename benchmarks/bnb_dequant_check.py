"""bitsandbytes' own dequantization (CPU and CUDA) against nf4.dequantize_nf4, the reference the
NF4 kernels are tested against (issue 17).

    python3 benchmarks/bnb_dequant_check.py       # bitsandbytes and a CUDA device

Weights as tests/test_nf4.py builds them (an all-zero block, exact zeros, an outlier), each dtype,
with and without double quantization, three shapes and block sizes. For the CPU column the weight
is quantized and dequantized by bitsandbytes on the CPU; for the CUDA column on CUDA. Prints, per
case, whether our decode of bitsandbytes' state equals bitsandbytes' dequantization bit for bit.
Result of record: benchmarks/results/2026-12-03-h200-bnb-fp16-check.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bitsandbytes.functional as F  # noqa: E402

from specdecode.accel import nf4  # noqa: E402


def main() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for dq in (True, False):
            for shape, bs in [((150, 384), 64), ((33, 256), 128), ((5, 7 * 64 + 32), 32)]:
                g = torch.Generator().manual_seed(0)
                w = torch.randn(*shape, generator=g) * 0.05
                w[0, :3] = 0
                w[-1, -1] = 2.0
                w = w.to(dtype)
                w.view(-1)[3 * bs:4 * bs] = 0.0
                packed, qs = F.quantize_4bit(w, blocksize=bs, compress_statistics=dq, quant_type="nf4")
                ours = nf4.dequantize_nf4(nf4.NF4Weight.from_quant_state(packed, qs))
                cpu = F.dequantize_4bit(packed, qs)
                pc, qsc = F.quantize_4bit(w.cuda(), blocksize=bs, compress_statistics=dq, quant_type="nf4")
                cuda = F.dequantize_4bit(pc, qsc).cpu()
                ours_c = nf4.dequantize_nf4(nf4.NF4Weight.from_quant_state(pc, qsc)).cpu()
                diff = (ours.float() - cpu.float()).abs().max().item()
                print(f"{str(dtype):15s} dq={dq!s:5s} {shape} bs {bs}: ours vs bnb CPU equal {torch.equal(ours, cpu)} "
                      f"({int((ours != cpu).sum())} differ, max {diff:.2e}); ours vs bnb CUDA (CUDA-quantized) equal "
                      f"{torch.equal(ours_c, cuda)}", flush=True)


if __name__ == "__main__":
    main()
