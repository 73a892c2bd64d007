"""Issue 17's random-weight targets: the target alone, bf16 against NF4 (--quantized), per token.

    python3 benchmarks/nf4_bench.py --pairs qwen gemma llama --out $OUT     # the H200 (bitsandbytes carried)
    python3 benchmarks/nf4_bench.py --pairs tiny --device cpu --out /tmp/x  # the CPU smoke run (tests)

For each pair's target (random weights of the real configs, gpu_bench.CONFIGS), in one process:

* bf16: the product's decode step (fused layers, compiled, Triton kernels, captured);
* NF4 on the transformers modules: every q/k/v/o/gate/up/down projection replaced by a
  bitsandbytes Linear4bit (NF4, double quantization, blocks of 64, bf16 compute: what
  `--quantized` loads), the step captured over the transformers modules (the path `--quantized`
  runs today);
* NF4 on the fused kernels: the same quantized modules through `ModelRunner(nf4=True)`.

Before the steps (CUDA; --no-sweep skips it), a launch-configuration sweep of the NF4 kernel: for
each distinct NF4 product of the target (qkv with the residual add and norms folded, o, gate/up
gated, down) at 1, 2 and 6 rows (the target's step, a draft's two-row step, the verify of k=5),
a small grid of configurations (SWEEP_GRID, <= 12 each; compiled first in parallel processes)
with the product's real fused arguments, each timed as benchmarks/kernel_bench.py times kernels
(many copies of the weights, > the L2, replayed as one CUDA graph); the best per product goes
into nf4.NF4_GEMV_CONFIG for the step timings that follow, and the sweep (default and best
config, times, GB/s of weight bytes) into the JSON/MD. Bounded by --sweep-budget seconds.
With --verify-rows (default 6) the bf16 and NF4-kernel steps are also timed at that many rows.

Each is a one-token step after a 128-token prompt, timed as gpu_bench.step_time does (captured
step replayed, device synchronised, median of 20 after 3 warm-ups). Floors: the bytes a step
reads (gpu_bench.weight_bytes; for NF4 the projections at nf4.nf4_nbytes, the rest in bf16) over the copy bandwidth measured in the same run. The checks are the issue's: NF4 on the
kernels at most 0.75x the bf16 time on Qwen2.5 1.5B and 0.6x on Gemma 3 4B and Llama 3.1 8B, and
at most 1.6x its NF4 floor. Writes <out>/<date>-<device>-nf4.json (+ .md) after every model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench  # noqa: E402
from specdecode.accel import kernels, nf4  # noqa: E402
from specdecode.accel.runner import ModelRunner  # noqa: E402

PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))
# the bound on NF4-on-kernels time over bf16 time, per pair
RATIO_TARGET = {"qwen": 0.75, "gemma": 0.6, "llama": 0.6, "tiny": 0.75}
FLOOR_TARGET = 1.6


def tiny_configs():
    """A small Qwen2-shaped target and draft: the CPU smoke run."""
    from transformers import Qwen2Config

    common = dict(vocab_size=512, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return (Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, **common),
            Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, **common))


CONFIGS = {**gpu_bench.CONFIGS, "tiny": tiny_configs}


def quantize_(model) -> dict[int, int]:
    """Every decoder projection replaced in place by a bitsandbytes NF4 Linear4bit (double
    quantization, bf16 compute), as `--quantized` loads a model; returns the bytes of each packed
    weight by id() (gpu_bench.weight_bytes's `sizes`)."""
    import bitsandbytes as bnb

    sizes = {}
    for layer in model.model.layers:
        for part, attr in PROJECTIONS:
            parent = getattr(layer, part)
            lin = getattr(parent, attr)
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                  compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(lin.weight.detach().to("cpu"), requires_grad=False,
                                         compress_statistics=True, quant_type="nf4", blocksize=64)
            if lin.bias is not None:
                q.bias = torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
            q = q.to(lin.weight.device)  # quantizes
            setattr(parent, attr, q)
            sizes[id(q.weight)] = nf4.nf4_nbytes(lin.in_features * lin.out_features)
            del lin
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return sizes


# ------------------------------------------------------------------------------ launch-config sweep

SWEEP_ROWS = (1, 2, 6)  # the target's (and draft's) step, a draft's two-row step, the verify of k=5
COLD_BYTES = 192 << 20  # weight copies cycled through per timing: several times the H200's 50 MB L2


def sweep_grid(m: int) -> list[tuple]:
    """Configurations timed per product kind at m rows (<= 12). One row: the reduction form on
    the byte-permute lookup (the default on CUDA) over tile shapes, one with the input read as
    pairs, one on the map loads (stop 28's lookup), and the tensor-core form on the permutes, with
    and without K in slices. Two rows: the reduction
    form with 16 packed bytes per thread a weight tile (BLOCK_N x BLOCK_K / 2 = 16 x 32 x warps)
    from 1 to 8 weight rows a program, one 32-byte variant, the pair-table lookup once, and the
    tensor-core form (its products cost no ALU; the decoded tile is its left operand). More rows:
    the tensor-core form around stop 30's bests (K in 4 slices for q/k/v, gate/up and down; o
    whole): the same tiles in 2 and 8 slices, neighbouring tiles in 4, and unsliced forms."""
    if m == 1:  # the byte permutes (the default lookup here) against the map loads of stop 28, the
        # plain products' input read as pairs against split from the contiguous tile (the default),
        # and the tensor-core form on the permutes. First, tiles of BLOCK_N x blocks = threads, where
        # each thread holds a whole quantization block and builds its 16 decoded values once per 64
        # weights, not 32: 8.0-9.0 instructions a weight in SASS against 9.7-11.8 for the defaults
        # (benchmarks/results/2026-12-04-cpu-kernel-sass-nf4-whole-block.txt; not yet timed)
        return [("reduce", 8, 1024, 4, 2), ("reduce", 8, 512, 2, 2), ("reduce", 16, 512, 4, 2), ("reduce", 8, 256, 1, 2),
                ("reduce", 2, 1024, 2, 2), ("reduce", 2, 2048, 4, 2), ("reduce", 4, 1024, 4, 2),
                ("reduce", 8, 512, 4, 2), ("reduce", 8, 1024, 8, 2), ("reduce", 4, 2048, 4, 2),
                ("reduce", 8, 1024, 8, 2, "perm", "pairs"), ("reduce", 2, 2048, 4, 2, "nibble"),
                ("mma", 32, 256, 4, 2), ("mma", 64, 256, 8, 2),  # K in slices: more programs than columns give
                ("mma", 64, 128, 4, 3, None, None, 4), ("mma", 32, 256, 4, 2, None, None, 4)]
    if m <= 2:  # first the byte permutes at two rows (stop 30, not yet timed: 9.4-11.6 instructions a
        # weight in SASS against 16-18 on the map loads, benchmarks/results/2026-12-04-cpu-kernel-sass-nf4-2rows-perm.txt)
        return [("reduce", 8, 1024, 4, 2, "perm"), ("reduce", 8, 512, 4, 2, "perm"), ("reduce", 4, 512, 2, 2, "perm"),
                ("reduce", 8, 256, 1, 2, "perm"),
                ("reduce", 1, 2048, 4, 2), ("reduce", 2, 1024, 2, 2), ("reduce", 2, 2048, 4, 2),
                ("reduce", 4, 1024, 4, 2), ("reduce", 4, 512, 2, 2), ("reduce", 8, 512, 4, 2),
                ("reduce", 8, 1024, 8, 2), ("reduce", 4, 2048, 4, 2),  # 32 bytes a thread
                ("reduce", 4, 1024, 4, 2, "pair"),
                ("mma", 16, 256, 4, 2), ("mma", 32, 256, 4, 3), ("mma", 16, 512, 8, 2)]
    s = lambda *cfg, k: (*cfg, None, None, k)  # noqa: E731  (K in k slices)
    return [s("mma", 64, 128, 4, 3, k=4), s("mma", 64, 128, 4, 3, k=2), s("mma", 64, 128, 4, 3, k=8),
            s("mma", 32, 128, 4, 3, k=4), s("mma", 32, 256, 4, 2, k=4), s("mma", 64, 256, 8, 2, k=4),
            s("mma", 16, 512, 4, 2, k=4), s("mma", 16, 512, 4, 2, k=8), s("mma", 16, 256, 4, 2, k=8),
            s("mma", 32, 512, 8, 2, k=2), ("mma", 32, 512, 8, 2), ("mma", 16, 512, 4, 2), ("mma", 64, 128, 4, 3)]


def model_products(tcfg) -> list[dict]:
    """The target's distinct NF4 products as the fused decode step runs them (fused.py
    _layers_on_kernels): qkv (merged, float32 absmax; the previous layer's residual delta, its
    post-norm for Gemma, and the input norm folded in; Qwen2's bias), o (as stored:
    double-quantized), gate/up (merged; the attention's delta, its post-norm for Gemma, the
    pre-FF norm, the activation), down (as stored)."""
    tc = getattr(tcfg, "text_config", tcfg)
    e, inter = tc.hidden_size, tc.intermediate_size
    heads, kv = tc.num_attention_heads, tc.num_key_value_heads
    hd = getattr(tc, "head_dim", None) or e // heads
    gemma = "gemma" in type(tc).__name__.lower()
    qkv_bias = "qwen2" in type(tc).__name__.lower()
    act = "gelu_tanh" if gemma else "silu"
    return [
        dict(kind="qkv", n=(heads + 2 * kv) * hd, k=e, merged=True, norm=True, delta=True, dnorm=gemma, gemma=gemma,
             bias=qkv_bias, act=None),
        dict(kind="o", n=e, k=heads * hd, merged=False, norm=False, delta=False, dnorm=False, gemma=gemma, bias=False,
             act=None),
        dict(kind="gate_up", n=inter, k=e, merged=True, norm=True, delta=True, dnorm=gemma, gemma=gemma, bias=False,
             act=act),
        dict(kind="down", n=e, k=inter, merged=False, norm=False, delta=False, dnorm=False, gemma=gemma, bias=False,
             act=None),
    ]


def random_nf4(rows: int, k: int, merged: bool, device) -> nf4.NF4Weight:
    """An NF4 weight of random codes as the step holds it: merged (q/k/v, gate/up: float32
    absmax, nf4.merge_nf4) or as stored (double-quantized: uint8 absmax codes, nested scales)."""
    blocks = rows * k // 64
    packed = torch.randint(0, 256, (rows * k // 2,), dtype=torch.uint8, device=device)
    code = torch.tensor(nf4.NF4_CODE, device=device)
    if merged:
        absmax = torch.rand(blocks, device=device) * 0.1 + 0.01
        return nf4.NF4Weight(packed=packed, absmax=absmax, code=code, shape=(rows, k), dtype=torch.bfloat16)
    return nf4.NF4Weight(packed=packed, absmax=torch.randint(0, 256, (blocks,), dtype=torch.uint8, device=device),
                         code=code, shape=(rows, k), dtype=torch.bfloat16,
                         absmax2=torch.rand(-(-blocks // 256), device=device) * 0.1,
                         code2=nf4.dynamic_map().to(device), offset=torch.full((1,), 0.03, device=device))


def product_call(p: dict, m: int, device, copies: int = 1):
    """(weights, fn(cfg, pdl, weight) running the product once): the product's real arguments."""
    rows = 2 * p["n"] if p["act"] else p["n"]
    k = p["k"]
    g = torch.Generator(device=device).manual_seed(0)
    ws = [random_nf4(rows, k, p["merged"], device) for _ in range(copies)]
    x = torch.randn(m, k, generator=g, device=device).to(torch.bfloat16)
    d = torch.randn(m, k, generator=g, device=device).to(torch.bfloat16) if p["delta"] else None
    nw = (torch.randn(k, generator=g, device=device) * 0.1).to(torch.bfloat16)
    bias = (torch.randn(rows, generator=g, device=device) * 0.1).to(torch.bfloat16) if p["bias"] else None

    def run(cfg, pdl, w):
        return nf4.nf4_gemv_fused(x, w, bias=bias, norm=nw if p["norm"] else None, gemma=p["gemma"], delta=d,
                                  delta_norm=nw if p["dnorm"] else None, act=p["act"], config=cfg, pdl=pdl)
    return ws, run


def _compile_job(job) -> bool:
    """In a worker process: run one product once at one config (compiles it into Triton's on-disk
    cache, which the timing process then loads); False if it does not compile or launch."""
    p, m, cfg, pdl = job
    try:
        ws, run = product_call(p, m, "cuda")
        run(cfg, pdl, ws[0])
        torch.cuda.synchronize()
        return True
    except Exception:
        return False


def precompile(jobs: list) -> list[bool]:
    """Compile the sweep's kernels in parallel processes (kernel_bench.precompile: a compiler
    that aborts its process costs only its own configuration)."""
    import kernel_bench

    return kernel_bench.precompile(jobs, _compile_job, workers=14, force=True)


def time_product(run, ws, cfg, pdl: bool, reps: int = 3) -> float:
    """Seconds per product: all copies launched back to back in one CUDA graph (cold weights, the
    launch gaps of a step's graph included), replayed; the best of `reps` timings of a few replays."""
    run(cfg, pdl, ws[0])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            for w in ws:
                run(cfg, pdl, w)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = math.inf
    for _ in range(reps):
        start.record()
        for _ in range(4):
            graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e-3 / (4 * len(ws)))
    del graph
    return best


def sweep(name: str, tcfg, args, budget: float) -> list[dict]:
    """Sweep the target's NF4 products (see the module doc); installs the best of each in
    nf4.NF4_GEMV_CONFIG and returns one record per (product, rows)."""
    cuda = gpu_bench.DEV == "cuda"
    pdl = cuda and kernels.pdl_usable(torch.device("cuda")) and not args.no_pdl
    prods = model_products(tcfg)
    t0 = time.perf_counter()
    rows_swept = tuple(args.sweep_rows) if getattr(args, "sweep_rows", None) else SWEEP_ROWS
    grids = {(p["kind"], m): (sweep_grid(m) if cuda else sweep_grid(m)[:1]) for p in prods for m in rows_swept}
    if cuda:
        jobs = [(p, m, cfg, pdl) for p in prods for m in rows_swept for cfg in grids[(p["kind"], m)]]
        ok = precompile(jobs)
        good = {(j[0]["kind"], j[1], j[2]) for j, o in zip(jobs, ok) if o}
        print(f"{name}: compiled {sum(ok)}/{len(jobs)} configs in {time.perf_counter() - t0:.1f} s", flush=True)
    deadline = time.perf_counter() + budget  # the timings' budget (compiling is not counted)
    out = []
    for p in prods:
        rows = 2 * p["n"] if p["act"] else p["n"]
        nbytes = nf4.nf4_nbytes(rows * p["k"]) if not p["merged"] else rows * p["k"] // 2 + 4 * rows * p["k"] // 64
        copies = max(1, min(256, math.ceil(COLD_BYTES / nbytes))) if cuda else 1
        ws, run = product_call(p, 1, gpu_bench.DEV, copies)
        for m in rows_swept:
            ws_m, run_m = ws, product_call(p, m, gpu_bench.DEV, 0)[1]
            default = nf4.nf4_gemv_config(m, p["n"], p["k"], p["act"] is not None, p["norm"])
            rec = dict(kind=p["kind"], rows=m, n=p["n"], k=p["k"], mb=nbytes / 1e6, default_config=list(default))
            if not cuda:  # the CPU smoke run: one config, run once, nothing timed
                run_m(grids[(p["kind"], m)][0], False, ws_m[0])
                rec.update(default_us=0.0, best_config=list(default), best_us=0.0, gb_s=0.0, tried=1)
                out.append(rec)
                continue
            t_def = time_product(run_m, ws_m, default, pdl)
            best = (t_def, default)
            tried = 0
            timed = [{"config": list(default), "us": t_def * 1e6}]  # every config timed, for comparisons
            for cfg in grids[(p["kind"], m)]:
                if time.perf_counter() > deadline:
                    break
                if (p["kind"], m, cfg) not in good or tuple(cfg) == tuple(default):
                    continue
                try:
                    t = time_product(run_m, ws_m, cfg, pdl)
                except Exception as e:  # out of resources for this config
                    print(f"  {cfg}: {type(e).__name__}", flush=True)
                    continue
                tried += 1
                timed.append({"config": list(cfg), "us": t * 1e6})
                if t < best[0]:
                    best = (t, cfg)
            nf4.NF4_GEMV_CONFIG[nf4.nf4_config_key(m, p["n"], p["k"], p["act"] is not None, p["norm"])] = tuple(best[1])
            rec.update(default_us=t_def * 1e6, best_config=list(best[1]), best_us=best[0] * 1e6,
                       gb_s=nbytes / best[0] / 1e9, default_gb_s=nbytes / t_def / 1e9, tried=tried, timed=timed)
            print(f"{name:6s} {p['kind']:8s} M={m} N={p['n']:6d} K={p['k']:5d} {nbytes / 1e6:6.1f} MB | default "
                  f"{t_def * 1e6:7.2f} us | best {best[0] * 1e6:7.2f} us {rec['gb_s']:6.0f} GB/s {best[1]} "
                  f"({tried} tried)", flush=True)
            out.append(rec)
        del ws
    print(f"{name}: sweep {time.perf_counter() - t0:.1f} s (pdl {pdl})", flush=True)
    return out


def measure(runner: ModelRunner, args, q: int = 1) -> float:
    return gpu_bench.step_time(runner, 1, q, args.prompt_len, repeats=args.repeats)


def bench_target(name: str, args, bw: float) -> dict:
    tcfg, _ = CONFIGS[name]()
    cuda = gpu_bench.DEV == "cuda"
    row: dict = {"pair": name, "config": type(tcfg).__name__}
    if not args.no_sweep:  # first, on an idle device: the best configs are then installed for the steps
        row["sweep"] = sweep(name, tcfg, args, args.sweep_budget / max(1, len(args.pairs)))
    loaded = gpu_bench.build(tcfg, f"{name}-target")
    model = loaded.model
    bf16_bytes = gpu_bench.weight_bytes(model)
    runner = ModelRunner(model, graphs=cuda, compile=cuda)
    row["bf16_path"] = runner.describe()
    row["bf16_ms"] = measure(runner, args) * 1e3
    if args.verify_rows:
        row[f"bf16_q{args.verify_rows}_ms"] = measure(runner, args, args.verify_rows) * 1e3
    del runner
    nbytes = gpu_bench.weight_bytes(model, quantize_(model))
    row.update(bf16_floor_ms=bf16_bytes / bw * 1e3, nf4_floor_ms=nbytes / bw * 1e3,
               bf16_bytes=bf16_bytes, nf4_bytes=nbytes)
    modules = ModelRunner(model, graphs=cuda, fused=False)
    row["nf4_modules_path"] = modules.describe()
    row["nf4_modules_ms"] = measure(modules, args) * 1e3
    del modules
    fused = ModelRunner(model, graphs=cuda, compile=cuda, fused=True, kernels=True, nf4=True,
                        nf4_kernel_rows=args.nf4_kernel_rows)
    row["nf4_kernels_path"] = fused.describe()
    if "fused NF4 kernels" not in row["nf4_kernels_path"]:  # a fallback would measure something else
        raise SystemExit(f"{name}: the NF4 step is not on the kernels: {row['nf4_kernels_path']}")
    row["nf4_kernels_ms"] = measure(fused, args) * 1e3
    if args.verify_rows:
        row[f"nf4_kernels_q{args.verify_rows}_ms"] = measure(fused, args, args.verify_rows) * 1e3
    row["nf4_kernels_over_bf16"] = row["nf4_kernels_ms"] / row["bf16_ms"]
    row["nf4_kernels_over_floor"] = row["nf4_kernels_ms"] / row["nf4_floor_ms"]
    row["nf4_modules_over_bf16"] = row["nf4_modules_ms"] / row["bf16_ms"]
    del fused, model, loaded
    if cuda:
        torch.cuda.empty_cache()
    return row


def checks(rows: list[dict]) -> dict[str, bool]:
    out = {}
    for r in rows:
        p = r["pair"]
        out[f"{p}_nf4_le_{RATIO_TARGET[p]}x_bf16"] = r["nf4_kernels_over_bf16"] <= RATIO_TARGET[p]
        out[f"{p}_nf4_le_{FLOOR_TARGET}x_nf4_floor"] = r["nf4_kernels_over_floor"] <= FLOOR_TARGET
    return out


def write(out: Path, tag: str, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# {tag}", "", results["machine"], "",
             "| target | bf16 | NF4, transformers modules | NF4, fused kernels | kernels / bf16 | bf16 floor | NF4 floor "
             "| kernels / NF4 floor |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["rows"]:
        lines.append(f"| {r['pair']} | {r['bf16_ms']:.3f} ms | {r['nf4_modules_ms']:.3f} ms | {r['nf4_kernels_ms']:.3f} ms "
                     f"| {r['nf4_kernels_over_bf16']:.2f}x | {r['bf16_floor_ms']:.3f} ms | {r['nf4_floor_ms']:.3f} ms "
                     f"| {r['nf4_kernels_over_floor']:.2f}x |")
    for r in results["rows"]:
        q = [k for k in r if k.startswith("nf4_kernels_q")]
        if q:
            rows = q[0][len("nf4_kernels_q"):-3]
            lines += ["", f"{r['pair']}: {rows}-row step (the verify): bf16 {r[f'bf16_q{rows}_ms']:.3f} ms, "
                      f"NF4 kernels {r[q[0]]:.3f} ms ({r[q[0]] / r[f'bf16_q{rows}_ms']:.2f}x)"]
        if r.get("sweep"):
            lines += ["", f"### {r['pair']}: NF4 launch-config sweep", "",
                      "| product | rows | N x K | MB | default | us | best | us | GB/s |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for s in r["sweep"]:
                lines.append(f"| {s['kind']} | {s['rows']} | {s['n']} x {s['k']} | {s['mb']:.1f} | "
                             f"{tuple(s['default_config'])} | {s['default_us']:.2f} | {tuple(s['best_config'])} | "
                             f"{s['best_us']:.2f} | {s['gb_s']:.0f} |")
    lines += ["", "## Checks", ""] + [f"- {k}: {str(v).lower()}" for k, v in results["checks"].items()]
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=["qwen", "gemma", "llama"], choices=sorted(CONFIGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20, help="timings per step (median); the smoke run uses 1")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-sweep", action="store_true", help="skip the NF4 launch-config sweep (nf4_gemv_config's defaults)")
    ap.add_argument("--sweep-budget", type=float, default=90.0,
                    help="seconds of config timing in all (split over the pairs; compiling not counted)")
    ap.add_argument("--no-pdl", action="store_true", help="sweep without programmatic dependent launch")
    ap.add_argument("--sweep-rows", nargs="+", type=int, default=None,
                    help=f"the rows the sweep times (default {' '.join(map(str, SWEEP_ROWS))})")
    ap.add_argument("--verify-rows", type=int, default=6, help="also time the steps at this many rows (0: not)")
    ap.add_argument("--nf4-kernel-rows", type=int, default=None,
                    help="NF4 steps of at most this many rows wholly on the NF4 kernels (default: fused.NF4_KERNEL_ROWS)")
    args = ap.parse_args()
    gpu_bench.DEV = args.device
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        machine = f"{args.device}, torch {torch.__version__}"
    import bitsandbytes as bnb

    machine += f", bitsandbytes {bnb.__version__}; bf16 compute, batch 1, one-token step after {args.prompt_len} tokens"
    bw = gpu_bench.copy_bandwidth(4 << 30 if args.device == "cuda" else 64 << 20)
    tag = f"{time.strftime('%Y-%m-%d', time.gmtime())}-{'h200' if args.device == 'cuda' else args.device}-nf4"
    results: dict = {"machine": machine, "copy_bandwidth_gb_s": bw / 1e9, "rows": [], "checks": {}}
    for name in args.pairs:
        row = bench_target(name, args, bw)
        print(json.dumps(row), flush=True)
        results["rows"].append(row)
        results["checks"] = checks(results["rows"])
        write(Path(args.out), tag, results)
    print(json.dumps(results["checks"], indent=1))


if __name__ == "__main__":
    main()
