"""Where a compiled decode step spends its time: kernel-level profile of captured steps (H200).

    python3 benchmarks/profile_step.py --pair gemma [--attention sdpa|matmul] [--no-tuning]
        [--inductor max_autotune=True ...]

Builds the pair's random-weight models (as gpu_bench.py does), captures the product's default
CUDA step (fused layers, torch.compile, Triton kernels) as a CUDA graph for the target [1, 1],
the verify [1, 6] and the draft [1, 1] and [1, 2], times each (20 replays back to back, median
of 15 such timings), and prints the kernels of one replay grouped by name with their share.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench  # noqa: E402
from specdecode.accel import fused, kernels  # noqa: E402
from specdecode.accel.runner import ModelRunner  # noqa: E402


@torch.inference_mode()
def profile(runner, batch, q, prompt_len, label, top, layers=0):
    cache = runner.new_cache(batch, prompt_len + 300)
    x = torch.randint(10, 500, (batch, prompt_len), device="cuda")
    runner.prefill(x, cache, attend_len=prompt_len, logits_to_keep=1)
    cache.set_positions(torch.full((batch,), prompt_len, device="cuda"))
    step = torch.randint(10, 500, (batch, q), device="cuda")
    keep = 0 if q > 1 else 1
    start = cache.positions.clone()

    def one():  # the step at a fixed position (the cache advance is undone before each replay)
        cache.positions.copy_(start)
        return runner.forward(step, cache, cache.max_len, logits_to_keep=keep)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            one()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one()
    reps = 20  # replays back to back per timing: the step's own pace, not a launch from a drained GPU
    times = []
    for _ in range(15):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / reps)
    med = statistics.median(times) * 1e3
    reps = 5
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    groups = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            name = ev.name
            for pre in ("triton_", "void ", "sm90_", "sm80_"):
                if name.startswith(pre) and pre != "triton_":
                    break
            key = name[:90]
            groups[key][0] += ev.device_time / reps  # us
            groups[key][1] += 1 / reps
    busy = sum(v[0] for v in groups.values())
    n = sum(v[1] for v in groups.values())
    print(f"\n-- {label}: {med:.3f} ms per step (captured step replayed back to back, median); kernels {n:.0f}, "
          f"kernel time {busy / 1e3:.3f} ms (under PDL a kernel's time includes its wait for the one before)")
    for key, (us, cnt) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{us:9.1f} us {us / busy:6.1%} {cnt:5.0f}x {us / cnt:7.2f} us/kernel  {key}")
    if layers:
        by_position(prof, reps, layers)
    return med


def by_position(prof, reps: int, layers: int) -> None:
    """Each kernel name's occurrences per layer told apart by their order (a layer's first gemv is
    its qkv product, the second its o, ...): mean time per (name, ordinal). Without PDL these are
    the kernels' own durations; under PDL they include each one's wait for its predecessor."""
    evs = sorted((ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA),
                 key=lambda ev: ev.time_range.start)
    per_rep = len(evs) // reps
    evs = evs[:per_rep]  # one replay
    count = defaultdict(int)
    for ev in evs:
        count[ev.name[:60]] += 1
    seen = defaultdict(int)
    times = defaultdict(list)
    for ev in evs:
        key = ev.name[:60]
        per_layer = count[key] // layers
        ordinal = seen[key] % per_layer if per_layer else seen[key]
        seen[key] += 1
        times[(key, ordinal, per_layer)].append(ev.device_time)
    print("   by position in a layer (mean us, count):")
    for (key, ordinal, per_layer), ts in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        label = f"#{ordinal}/{per_layer}" if per_layer else "(not per layer)"
        print(f"   {sum(ts) / len(ts):8.2f} us {len(ts):4d}x  {label:16s} {key}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", default="gemma", choices=sorted(gpu_bench.CONFIGS))
    ap.add_argument("--pdl", choices=["on", "off", "both"], default="on",
                    help="programmatic dependent launch of the kernels (default on where supported)")
    ap.add_argument("--max-kernel-rows", nargs="+", type=int, default=[None],
                    help="steps of at most this many rows run wholly on the kernels (default kernels.MAX_ROWS)")
    ap.add_argument("--attention", default="matmul")
    ap.add_argument("--no-tuning", action="store_true", help="without inductor's coordinate-descent tuning")
    ap.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more inductor options for the compiled layers, e.g. max_autotune=True "
                         "max_autotune_gemm_backends=TRITON,ATEN")
    ap.add_argument("--kernels", choices=["on", "off", "both"], default="both",
                    help="Triton decode kernels for steps of <= 16 rows (default: profile with and without)")
    ap.add_argument("--multi-row", nargs="+", default=[None], choices=["hybrid", "mixed"],
                    help="how steps of more than max-kernel-rows rows run (FusedModel's multi_row; default: "
                         "the product's)")
    ap.add_argument("--fold-combine", nargs="+", default=["off"], choices=["off", "on"],
                    help="the attention kernel's last split merges the splits (no combine kernel)")
    ap.add_argument("--max-mixed-rows", nargs="+", type=int, default=[None],
                    help="multi-row mixed takes steps of at most this many rows (default fused.MAX_MIXED_ROWS; "
                         "at most kernels.MAX_GEMV_ROWS), larger ones run hybrid")
    ap.add_argument("--splits", nargs="+", type=int, default=[0],
                    help="the attention's splits of the cached slots per (row, KV head), forced (0: the "
                         "product's kernels.attention_splits)")
    ap.add_argument("--apart", nargs="+", default=["default"], choices=["default", "off", "on"],
                    help="the attention's new tokens on a split of their own (kernels.NEW_TOKENS_APART)")
    ap.add_argument("--mlp-rows", nargs="+", type=int, default=[0],
                    help="steps of at most this many rows run each gated MLP as one kernel (FusedModel's "
                         "mlp_rows, both models here; off in the product)")
    ap.add_argument("--mlp-tuned", default=None, metavar="JSON",
                    help="kernel_bench.py --mlp --sweep --pdl results: their best stored-layout configurations "
                         "installed in kernels.MLP_TUNED")
    ap.add_argument("--prompt-len", type=int, default=128, help="cached tokens before the profiled step")
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--by-position", action="store_true",
                    help="also each kernel's mean time by its position in a layer (qkv, o, gate/up, down...)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1])
    args = ap.parse_args()
    options = {} if args.no_tuning else dict(fused.DEFAULT_INDUCTOR_OPTIONS)
    for item in args.inductor:
        key, _, value = item.partition("=")
        options[key] = {"True": True, "False": False}.get(value, int(value) if value.isdigit() else value)
    if args.mlp_tuned:
        import json

        for r in json.loads(Path(args.mlp_tuned).read_text()):
            if r.get("product") == "mlp":
                kernels.MLP_TUNED[(r["rows"], r["n"], r["k"], True)] = tuple(r["stored_config"])
        print(f"mlp configurations installed: {kernels.MLP_TUNED}")
    product_splits = kernels.attention_splits
    product_apart = kernels.NEW_TOKENS_APART
    tcfg, dcfg = gpu_bench.CONFIGS[args.pair]()
    target = gpu_bench.build(tcfg, "target", oracle_target=True)
    draft = gpu_bench.build(dcfg, "draft")
    bw = gpu_bench.copy_bandwidth()
    print(f"{args.pair}: attention={args.attention} inductor options {options}; floors "
          f"{gpu_bench.weight_bytes(target.model) / bw * 1e3:.3f} / {gpu_bench.weight_bytes(draft.model) / bw * 1e3:.3f} ms")
    summary = []
    # layers per model, for --by-position (0: not asked for)
    depth = lambda c: getattr(getattr(c, "text_config", c), "num_hidden_layers") if args.by_position else 0  # noqa: E731
    tl_, dl_ = depth(tcfg), depth(dcfg)
    pdls = {"on": [True], "off": [False], "both": [False, True]}[args.pdl]
    for kern in ([True, False] if args.kernels == "both" else [args.kernels == "on"]):
        for pdl in pdls if kern else [False]:
            for rows, multi, fold, mixed, splits, apart, mlp in itertools.product(
                    args.max_kernel_rows, args.multi_row, args.fold_combine, args.max_mixed_rows, args.splits,
                    args.apart, args.mlp_rows):
                label = f"kernels {'on' if kern else 'off'}, pdl {'on' if pdl else 'off'}, max rows {rows}"
                label += f", multi-row {multi or 'default'}, fold combine {fold}, max mixed rows {mixed}"
                label += f", splits {splits or 'default'}, new tokens apart {apart}, mlp rows {mlp}"
                kernels.NEW_TOKENS_APART = product_apart if apart == "default" else apart == "on"
                kernels.attention_splits = (product_splits if not splits else
                                            (lambda b, h, n, bs=64, s=splits: 1 << (max(1, min(s, n // bs)).bit_length() - 1)))
                print(f"\n==== {label}")
                opts = dict(attention=args.attention, inductor_options=options, pdl=pdl, max_kernel_rows=rows,
                            multi_row=multi, fold_combine=fold == "on", max_mixed_rows=mixed,
                            mlp_rows=mlp if kern else 0)
                tr = ModelRunner(target.model, graphs=True, compile=True, kernels=kern, **opts)
                dr = ModelRunner(draft.model, graphs=True, compile=True, kernels=kern, **opts)
                print(f"target: {tr.describe()} (pdl {tr.fused.pdl})")
                for b in args.batches:
                    pl = args.prompt_len
                    t1 = profile(tr, b, 1, pl, f"target [{b}, 1]", args.top, tl_)
                    t6 = profile(tr, b, 6, pl, f"target [{b}, 6]", args.top, tl_)
                    d1 = profile(dr, b, 1, pl, f"draft [{b}, 1]", args.top, dl_)
                    d2 = profile(dr, b, 2, pl, f"draft [{b}, 2]", args.top, dl_)
                    print(f"c = {d1 / t1:.3f}")
                    summary.append((label, b, t1, t6, d1, d2))
                del tr, dr
    print("\n==== summary (ms per step: median over 15 timings of 20 back-to-back replays of the captured step)")
    print("setting | batch | target [b,1] | target [b,6] | draft [b,1] | draft [b,2] | c | verify/target")
    for label, b, t1, t6, d1, d2 in summary:
        print(f"{label} | {b} | {t1:.3f} | {t6:.3f} | {d1:.3f} | {d2:.3f} | {d1 / t1:.3f} | {t6 / t1:.2f}")


if __name__ == "__main__":
    main()
