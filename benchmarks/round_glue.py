"""What a round's bookkeeping costs on the GPU: captured rounds with the reference commit against
the fused one (accel/glue.py), and the kernels of one round by kind (H200).

    python3 benchmarks/round_glue.py [--pair qwen] [--k 0 5] [--json FILE]

Builds the pair's random-weight models (gpu_bench.build: a round's cost does not depend on the
weights), runs the product's engine pieces (ModelRunner with the defaults: fused layers, compiled,
Triton kernels; ModelDrafter; CapturedRounds) and, per k and first-step shape, captures the round
graph with the reference commit and with the fused commit, then times each: 20 replays, the
round's state restored after each (rounds.time_replays: CUDA events around one replay), median.
k 0 is the target alone's round (one token per round). For the k 5 round it also lists the
kernels of one replay under torch.profiler (graph nodes traced) grouped into the forwards'
kernels and the rest, with counts and device time: the rest is the glue the fused commit and the
cache changes remove.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench  # noqa: E402
from specdecode.accel.rounds import CapturedRounds  # noqa: E402
from specdecode.decoding.engine import EngineParams, SpeculativeEngine  # noqa: E402
from specdecode.decoding.round import RoundShape  # noqa: E402
from specdecode.drafters.draft_model import ModelDrafter  # noqa: E402

# kernels of the forwards (the layers' products, attention, head, norms, embedding); everything
# else in a round is its glue
FORWARD = ("gemv", "attention", "combine", "gemm", "Kernel2", "cutlass", "sm90", "nvjet", "triton_",
           "splitK", "embedding", "index_select", "indexSelect")


def round_engine(target, draft, tr, dr, k: int, fused: bool, prompt: list[int]):
    rounds = CapturedRounds(tr, fused_commit=fused)
    drafter = ModelDrafter(draft, runner=dr) if k else None
    eng = SpeculativeEngine(target, drafter, EngineParams(max(k, 1), 128), runner=tr, rounds=rounds)
    cache, bufs, input_ids, lengths, max_len = eng._open([prompt])
    bufs.last.copy_(eng._prefill(cache, input_ids, lengths))
    if drafter is not None:
        drafter.prefill(input_ids, lengths, max_len)
    return eng, rounds, cache, bufs


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", default="qwen", choices=sorted(gpu_bench.CONFIGS))
    ap.add_argument("--k", nargs="+", type=int, default=[0, 5])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    target, draft, tr, dr = gpu_bench.product_pair(args.pair)
    prompt = torch.randint(10, 500, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    out: dict = {"pair": args.pair, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "method": "10 replays back to back, each after a captured restore of the round's state, "
                           "between CUDA events, minus the restores timed alone; median of "
                           f"{args.repeats} such timings", "rounds": {}, "profile": {}}
    for k in args.k:
        for feed_prev in ((False, True) if k else (False,)):
            for fused in (False, True):
                tr._picks_on_kernel = dr._picks_on_kernel = fused  # the greedy picks on glue.argmax
                eng, rounds, cache, bufs = round_engine(target, draft, tr, dr, k, fused, prompt)
                shape = RoundShape(k, k, feed_prev)
                graph, _ = rounds.prepare(cache, bufs, shape, eng.params.sampling, eng.target_rows)
                state = rounds._state(cache, bufs)
                ms = back_to_back_ms(graph, state, args.repeats)
                label = f"k{k}{'_feed_prev' if feed_prev else ''}_{'fused' if fused else 'reference'}"
                out["rounds"][label] = round(ms, 4)
                print(f"{label}: {ms:.4f} ms", flush=True)
                if k == max(args.k) and not feed_prev:
                    out["profile"][label] = profile(graph, state)
    for k in args.k:
        for fp in ((False, True) if k else (False,)):
            base = f"k{k}{'_feed_prev' if fp else ''}"
            ref, fus = out["rounds"][f"{base}_reference"], out["rounds"][f"{base}_fused"]
            out["rounds"][f"{base}_saved_ms"] = round(ref - fus, 4)
            print(f"{base}: reference {ref:.4f} ms, fused {fus:.4f} ms, saved {ref - fus:.4f} ms ({(ref - fus) / ref:.1%})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def back_to_back_ms(graph, state, repeats: int, reps: int = 10) -> float:
    """Median device ms of one replay among `reps` back to back, each after a captured restore of
    the round's state (the restore's own time, measured alone the same way, subtracted)."""
    saved = [t.clone() for t in state]
    restore = torch.cuda.CUDAGraph()
    with torch.cuda.graph(restore):
        for t, s in zip(state, saved):
            t.copy_(s)

    def timed(fns) -> float:
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                for fn in fns:
                    fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / reps)
        return statistics.median(times)

    timed([restore.replay, graph.replay])  # warm
    both = timed([restore.replay, graph.replay])
    alone = timed([restore.replay])
    restore.replay()
    torch.cuda.synchronize()
    return both - alone


def profile(graph, state) -> dict:
    """Kernels of one replay: the forwards' and the glue's, counts and device ms; glue kernels by name."""
    saved = [t.clone() for t in state]
    from torch.profiler import ProfilerActivity, profile as torch_profile

    graph.replay()
    torch.cuda.synchronize()
    for t, s in zip(state, saved):
        t.copy_(s)
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    for t, s in zip(state, saved):
        t.copy_(s)
    groups = {"forward": [0, 0.0], "glue": [0, 0.0]}
    glue = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        kind = "forward" if any(f in e.name for f in FORWARD) else "glue"
        groups[kind][0] += 1
        groups[kind][1] += us / 1e3
        if kind == "glue":
            glue[e.name[:90]][0] += 1
            glue[e.name[:90]][1] += us / 1e3
    res = {kind: {"kernels": n, "ms": round(ms, 4)} for kind, (n, ms) in groups.items()}
    res["glue_by_name"] = {name: {"kernels": n, "ms": round(ms, 4)}
                           for name, (n, ms) in sorted(glue.items(), key=lambda kv: -kv[1][1])}
    print(json.dumps({k: v for k, v in res.items() if k != "glue_by_name"}))
    for name, v in list(res["glue_by_name"].items())[:25]:
        print(f"  {v['kernels']:3d} {v['ms'] * 1e3:8.1f} us  {name}")
    return res


if __name__ == "__main__":
    main()
