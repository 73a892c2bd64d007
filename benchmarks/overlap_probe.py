"""Does drafting overlap the verify on the GPU? Serial against concurrent draft steps (H200).

    python3 benchmarks/overlap_probe.py [--pair qwen] [--verify-rows 4 6] [--steps 1 2 3 4]

Builds the pair's random-weight models (as gpu_bench.py does; a step's cost does not depend on
the weights), runs both through the product's runners (fused layers, compiled, Triton kernels),
and times captured graphs, 20 replays back to back per timing, median of 15:

  * the target's verify [1, W] and the draft's step [1, 1] alone;
  * serial: the verify, then m draft steps (what a round does today, in the other order);
  * overlapped: the m draft steps on a second stream, forked before the verify and joined after
    it, all in one graph (what a round that drafts during the verify would do).

overlapped - verify is what the m draft steps cost when they run during the verify.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench  # noqa: E402
from specdecode.accel.rounds import capture  # noqa: E402


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", default="qwen", choices=sorted(gpu_bench.CONFIGS))
    ap.add_argument("--verify-rows", nargs="+", type=int, default=[4, 6])
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 2, 3, 4])
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    _, _, tr, dr = gpu_bench.product_pair(args.pair)
    n = args.prompt
    tc, dc = tr.new_cache(1, n + 300), dr.new_cache(1, n + 300)
    x = torch.randint(10, 500, (1, n), device="cuda")
    tr.prefill(x, tc, attend_len=n, logits_to_keep=1)
    dr.prefill(x, dc, attend_len=n, logits_to_keep=1)
    start = torch.full((1,), n, dtype=torch.long, device="cuda")
    tc.set_positions(start)
    dc.set_positions(start)
    one = torch.ones(1, dtype=torch.long, device="cuda")
    tok = torch.randint(10, 500, (1, 1), device="cuda")
    side = torch.cuda.Stream()
    results: dict[str, float] = {}

    def verify(rows: int):
        ids = torch.randint(10, 500, (1, rows), device="cuda")

        def run():
            tc.positions.copy_(start)
            return tr.forward(ids, tc, tc.max_len, logits_to_keep=0).argmax(-1)
        return run

    def drafting(m: int):
        def run():
            dc.positions.copy_(start)
            t = tok
            for _ in range(m):
                logits = dr.forward(t, dc, dc.max_len, logits_to_keep=1)[:, -1]
                dc.advance(one)
                t = logits.argmax(-1, keepdim=True)
            return t
        return run

    def timed(fn) -> float:  # warm-ups on a side stream, one graph, its replays timed
        graph, _ = capture(fn, [tc.positions, dc.positions], warmups=3)
        return gpu_bench.replay_ms(graph)

    def overlapped(v, d):
        def run():
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                out = d()
            res = v()
            main.wait_stream(side)
            return res, out
        return run

    def serial(v, d):
        def run():
            return v(), d()
        return run

    results["draft_step"] = timed(drafting(1))
    print(f"draft step [1, 1]: {results['draft_step']:.3f} ms")
    for rows in args.verify_rows:
        v = verify(rows)
        tv = results[f"verify_{rows}"] = timed(v)
        print(f"\nverify [1, {rows}]: {tv:.3f} ms")
        for m in args.steps:
            d = drafting(m)
            td = results[f"draft_{m}"] = timed(d)
            ts = results[f"serial_{rows}_{m}"] = timed(serial(v, d))
            to = results[f"overlap_{rows}_{m}"] = timed(overlapped(v, d))
            print(f"  m={m}: drafts alone {td:.3f}, serial {ts:.3f}, overlapped {to:.3f} ms "
                  f"(the m steps cost {to - tv:.3f} ms during the verify, {ts - tv:.3f} after it)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
