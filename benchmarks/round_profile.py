"""Where a round's time goes: host API calls per round (graph launches, kernel launches, copies,
synchronisations) and wall time per round, with and without torch.profiler.

    python3 benchmarks/round_profile.py --target DIR --draft DIR [--k 5] [--prompts FILE.jsonl] --out FILE.json

Runs the product path (SpeculativeDecoder with the settings' defaults: fused layers, kernels,
compiled, rounds captured as CUDA graphs), warms up on the prompt, then times one generate
unprofiled (median of 3) and profiles one more, counting CUDA runtime calls by name. The
counts say how many times per round the host launched work and waited for the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdecode.api import SpeculativeDecoder  # noqa: E402
from specdecode.settings import Settings  # noqa: E402

CALLS = ("cudaGraphLaunch", "cudaLaunchKernel", "cuLaunchKernel", "cudaMemcpyAsync", "cudaEventSynchronize",
         "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventRecord", "cudaHostAlloc")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft")
    ap.add_argument("--drafter", default="model")
    ap.add_argument("--k", default="5")
    ap.add_argument("--prompts")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    prompt = "Write a Python function that checks whether a string is a palindrome."
    if args.prompts:
        prompt = json.loads(Path(args.prompts).read_text().splitlines()[0])["prompt"]
    k = args.k if args.k == "auto" else int(args.k)
    s = Settings(target=args.target, draft=args.draft, drafter=args.drafter if args.draft or args.drafter != "model"
                 else "none", k=k, max_new_tokens=args.max_new_tokens, device="cuda")
    dec = SpeculativeDecoder.from_settings(s)
    out = {}
    for label, d in (("speculative", dec), ("target_alone", dec.with_settings(drafter="none"))):
        for _ in range(2):  # warm-up: compile, capture
            d.generate([prompt])
        walls = []
        for _ in range(3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            res = d.generate([prompt])[0]
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - t)
        rounds = res.stats.rounds
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            d.generate([prompt])
            torch.cuda.synchronize()
        counts = Counter()
        gpu_us = 0.0
        for e in prof.key_averages():
            if e.key in CALLS:
                counts[e.key] += e.count
            gpu_us += getattr(e, "self_device_time_total", 0.0) or 0.0
        wall = statistics.median(walls)
        # the device's own pace: each captured round graph replayed back to back (no host in between)
        replay_ms = {}
        rounds_obj = d.rounds()
        # a replayed round advances the caches' lengths: put them back before each replay, or 50
        # replays write past the pooled caches (an illegal memory access; one small copy per cache
        # between replays, inside the timing)
        found = d.draft_model()
        runners = [d.runner(d.target)] + ([found[1]] if found is not None else [])
        caches = [c for r in runners for c in getattr(r, "_caches", {}).values()]
        saved = [c.positions.clone() for c in caches]
        for key, (graph, _) in (rounds_obj._graphs.items() if rounds_obj is not None else []):
            shape = key[2]
            if (d.settings.drafter == "none") != (shape.k == 0):
                continue
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(50):
                for c, pos in zip(caches, saved):
                    c.positions.copy_(pos)
                graph.replay()
            torch.cuda.synchronize()
            replay_ms[f"k{shape.k}_w{shape.width}_prev{int(shape.feed_prev)}"] = (time.perf_counter() - t) / 50 * 1e3
        eng = d.engine()
        ids = d.encode_all([prompt])
        lookahead = {}
        for on in (True, False):
            eng = d.engine()
            eng.lookahead = on
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in eng.stream(ids):
                pass
            torch.cuda.synchronize()
            lookahead[f"lookahead_{on}"] = {"s": time.perf_counter() - t, "max_in_flight": eng.max_in_flight}
        out[label] = {
            "replay_ms_per_round": replay_ms, "lookahead": lookahead,
            "wall_s": wall, "rounds": rounds, "new_tokens": res.stats.new_tokens,
            "tokens_per_s": res.stats.new_tokens / wall, "ms_per_round": 1e3 * wall / max(rounds, 1),
            "gpu_ms_per_round": gpu_us / 1e3 / max(rounds, 1),
            "calls": dict(counts), "calls_per_round": {k: v / max(rounds, 1) for k, v in counts.items()},
            "decode_steps": d.runner(d.target).describe(),
        }
        print(label, json.dumps(out[label], indent=1), flush=True)
    # prefill of prompts of new lengths (bench: every prompt has its own), target alone
    lengths = {}
    base = dec.with_settings(drafter="none", max_new_tokens=2)
    for n in (20, 50, 90, 150, 300):
        p = " ".join(["def"] * n)
        torch.cuda.synchronize()
        t = time.perf_counter()
        base.generate([p])
        torch.cuda.synchronize()
        first = time.perf_counter() - t
        t = time.perf_counter()
        base.generate([p])
        torch.cuda.synchronize()
        lengths[n] = {"first_s": first, "again_s": time.perf_counter() - t}
    out["prefill_new_lengths"] = lengths
    print("prefill", json.dumps(lengths), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
