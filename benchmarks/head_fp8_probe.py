"""A draft's vocabulary head in e4m3 on cuBLASLt (torch._scaled_mm) against bf16 (H200).

The draft model's head reads the whole [vocab, hidden] matrix every draft step: 272 MB for
Qwen2.5 0.5B (12% of its step), at ~4.4 TB/s on cuBLAS already, so only fewer bytes make it
cheaper. Its proposals need only be good guesses (the target verifies them), so the head could
read e4m3 weights with a scale per vocabulary row, and the step's one row quantized with a scale
of its own: half the bytes. Triton's GEMV on e4m3 weights is not faster than bf16 at these sizes
(2026-12-04-h200-kernels-qwen05-fp8.txt: the per-weight conversion), so this times cuBLASLt's fp8
product, whose operands go to the tensor cores as they are.

Variants, per head shape and rows (1 and 2: the draft's steps):
  * bf16: F.linear(x, W), what the product runs (cuBLAS);
  * fp8 rowwise: x padded to 16 rows and quantized per row (one fused elementwise pass, timed
    with it), torch._scaled_mm with per-row scales on both sides, bf16 out;
  * fp8 rowwise, the product alone (x already quantized);
  * fp8 tensorwise (one scale each), the product alone, for comparison.
Timing: nf4_decode_probe.timed, every call in one CUDA graph over copies of the weight (> 400 MB,
the L2 is 50 MB), median of 10 replays (2026-12-04-h200-head-fp8-probe.json came from commit
ccf6622's own copy of it: 15 timings of 10 replays each). Checks: the fp8 logits' argmax against bf16's on random rows
(agreement), and the largest error relative to the largest logit.

    python3 benchmarks/head_fp8_probe.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nf4_decode_probe import timed  # noqa: E402  (each call in one CUDA graph over the weight copies)

E4M3 = torch.float8_e4m3fn
MAX = 448.0
SHAPES = {"qwen-0.5b head": (151936, 896), "qwen-1.5b head": (151936, 1536)}
COLD = 400 << 20


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 rows, fp32 scale per row) with w ~= q * scale."""
    amax = w.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    scale = amax / MAX
    return (w.float() / scale).to(E4M3), scale


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows_out = []
    for name, (n, k) in SHAPES.items():
        copies = max(2, math.ceil(COLD / (n * k * 2)))
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        q8 = [quantize_rows(w) for w in ws]
        q8 = [(q, s.reshape(1, n).contiguous()) for q, s in q8]
        for m in (1, 2):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            xp = torch.zeros(16, k, device=dev, dtype=torch.bfloat16)
            xq = torch.zeros(16, k, device=dev, dtype=E4M3)
            xs = torch.ones(16, 1, device=dev, dtype=torch.float32)

            def quant():  # the step's rows into the padded fp8 operand (what a captured step would run)
                xp[:m].copy_(x)
                amax = xp.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
                xs.copy_(amax / MAX)
                xq.copy_((xp.float() / xs).to(E4M3))

            def fp8(q, s, fast=True):
                return torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=s, out_dtype=torch.bfloat16,
                                        use_fast_accum=fast)

            quant()
            ref = F.linear(x, ws[0]).float()
            got = fp8(*q8[0])[:m].float()
            agree = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
            err = float((got - ref).abs().max() / ref.abs().max())
            t_bf16 = timed([lambda w=w: F.linear(x, w) for w in ws])
            t_row_q = timed([lambda q=q, s=s: (quant(), fp8(q, s)) for q, s in q8])
            t_row = timed([lambda q=q, s=s: fp8(q, s) for q, s in q8])
            t_row_slow = timed([lambda q=q, s=s: fp8(q, s, False) for q, s in q8])
            one = torch.ones((), device=dev)
            t_tensor = timed([lambda q=q: torch._scaled_mm(xq, q.t(), scale_a=one, scale_b=one,
                                                           out_dtype=torch.bfloat16, use_fast_accum=True)
                              for q, _ in q8])
            row = dict(weight=name, rows=m, n=n, k=k, bf16_us=t_bf16, fp8_rowwise_with_quant_us=t_row_q,
                       fp8_rowwise_us=t_row, fp8_rowwise_exact_accum_us=t_row_slow, fp8_tensorwise_us=t_tensor,
                       argmax_agreement=agree, rel_err=err)
            rows_out.append(row)
            print(f"{name} M={m}: bf16 {t_bf16:6.1f} us ({n * k * 2 / t_bf16 / 1e6:.2f} TB/s) | fp8 rowwise "
                  f"+quant {t_row_q:6.1f} | alone {t_row:6.1f} ({n * k / t_row / 1e6:.2f} TB/s) | exact accum "
                  f"{t_row_slow:6.1f} | tensorwise {t_tensor:6.1f} | argmax agree {agree:.2f} err {err:.1e}",
                  flush=True)
        del ws, q8
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows_out}, f,
                      indent=1)


if __name__ == "__main__":
    main()
