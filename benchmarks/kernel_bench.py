"""The Triton decode kernels against cuBLAS / the compiled layers' attention, shape by shape (H200).

    python3 benchmarks/kernel_bench.py [--pairs gemma llama] [--rows 1 6] [--sweep]

For every matrix of the issue-6 models (Gemma 3 4B + 270M, Llama 3.1 8B + 3.2 1B, bf16) it
times, at 1 and 6 rows:
  * cuBLAS: F.linear(x, W), the plain product (the norms and residual adds it leaves out cost
    extra kernels in the compiled layers);
  * ours: kernels.gemv with what the model step fuses into it (norm, residual + post-norm,
    gated activation), at the default launch configuration and, with --sweep, over a grid of
    (form, BLOCK_N, BLOCK_K, warps, stages) for both forms (elementwise reduction, one row only;
    tensor cores with the weights as the left operand), printing the best.
And decode attention (norms, rotary, cache write, attention, combine) against the matmul +
softmax + matmul the compiled layers run, at 384 visible slots of a 512-slot cache.

Method: weights are cold, as in a decode step: each measurement cycles through enough copies
of the matrix to exceed the 50 MB L2 (at least 256 MB in all), captured as one CUDA graph,
and reports the median of `triton.testing.do_bench_cudagraph` divided by the copies; so the
per-kernel launch gap of a graph is included. Bandwidth = weight bytes / time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdecode.accel import kernels  # noqa: E402

DEV = "cuda"
DT = torch.bfloat16

# pair -> (hidden, intermediate, heads, kv heads, head_dim, vocab) for target, draft; gemma norms?
MODELS = {
    "gemma": [("gemma-4b", 2560, 10240, 8, 4, 256, 262208, True), ("gemma-270m", 640, 2048, 4, 1, 256, 262144, True)],
    "llama": [("llama-8b", 4096, 14336, 32, 8, 128, 128256, False), ("llama-1b", 2048, 8192, 32, 8, 64, 128256, False)],
    "qwen": [("qwen-1.5b", 1536, 8960, 12, 2, 128, 151936, False), ("qwen-0.5b", 896, 4864, 14, 2, 64, 151936, False)],
}
PDL = False  # --pdl: our kernels launch with programmatic dependent launch


COLD_BYTES = 256 << 20  # the copies of a matrix cycled through per measurement (> 5x the L2)


def bench(fn, copies: int) -> float:
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, rep=25, return_mode="median") / copies  # ms per product


def products(model):
    name, E, I, H, Hkv, D, V, gemma = model
    # (label, N out, K in, gated, norm, delta, delta_norm)
    return [
        ("qkv", (H + 2 * Hkv) * D, E, False, True, True, gemma),
        ("o", E, H * D, False, False, False, False),
        ("gate_up", I, E, True, True, True, gemma),
        ("down", E, I, False, False, False, False),
        ("lm_head", V, E, False, True, True, gemma),
    ]


def sweep_grid(m: int, gated: bool) -> list[tuple]:
    """Launch configurations to time. One or two rows: the reduction forms with BLOCK_K a multiple of
    256 x warps, so the weight tile's load layout (8 contiguous bf16 per thread, 32 threads and
    every warp along K) is the layout of the input tile and no tile is shuffled through shared
    memory (Triton's TTGIR shows convert_layout otherwise), at most 64 weight elements per thread
    per tile. More rows: tensor cores within the shared memory (num_stages tiles)."""
    g = 2 if gated else 1
    if m <= 2:  # one row: _gemv_kernel; two: _gemv2_kernel (the same layouts)
        out = []
        for form, bn, w, r in itertools.product(("reduce", "prefetch"), [1, 2, 4, 8], [1, 2, 4, 8], [1, 2]):
            bk = 256 * w * r
            if bk <= 2048 and bn * bk * g <= 64 * 32 * w:
                out.append((form, bn, bk, w, 2))  # num_stages does not change these kernels
        return out
    # K cut into 1-8 slices (SPLIT_K): narrow products get more programs than columns / BLOCK_N
    return [("mma", bn, bk, w, st, sk)
            for bn, bk, w, st, sk in itertools.product([16, 32, 64, 128], [64, 128, 256], [4], [3, 4], [1, 2, 4, 8])
            if st * (bn * bk * 2 * g + bk * 16 * 2) <= 200_000]


def gemv_kwargs(norm_w, dx, gated: bool, norm: bool, delta: bool, dnorm: bool, gemma: bool) -> dict:
    """kernels.gemv's keyword arguments for a product of the model step (see products())."""
    return dict(norm=norm_w if norm else None, gemma=gemma, delta=dx if delta else None,
                delta_norm=norm_w if dnorm else None, act=("gelu_tanh" if gemma else "silu") if gated else None)


def _compile_one(job) -> bool:
    """In a worker process: run gemv once at this shape and config (compiles it into Triton's
    on-disk cache, which the timing process then loads)."""
    wrows, k, m, gated, norm, delta, dnorm, gemma, cfg = job
    try:
        w = torch.zeros(wrows, k, device=DEV, dtype=DT)
        x = torch.zeros(m, k, device=DEV, dtype=DT)
        nw = torch.zeros(k, device=DEV, dtype=DT)
        kernels.gemv(x, w, config=cfg, **gemv_kwargs(nw, x, gated, norm, delta, dnorm, gemma))
        torch.cuda.synchronize()
        return True
    except Exception:  # out of resources for this config
        return False


def precompile(jobs: list, compile_one=None, workers: int = 12, force: bool = False) -> list[bool]:
    """Compile a sweep's kernels in parallel processes (Triton compiles one at a time per
    process; a few hundred configurations would otherwise take minutes of a device call); which
    compiled. A compiler that aborts its process (an LLVM assertion did, for one kernels.mlp
    configuration at two rows) breaks the pool: the jobs it left unanswered then run again one
    process each, and the one that aborts again counts as failed, so the timing process never
    compiles it itself. (`force`: also off CUDA, for the tests.)"""
    if not force and (DEV != "cuda" or len(jobs) < 4):
        return [True] * len(jobs)
    import concurrent.futures as cf
    import multiprocessing as mp
    import os
    from concurrent.futures.process import BrokenProcessPool

    run = compile_one or _compile_one
    ctx = mp.get_context("spawn")
    done: dict[int, bool] = {}
    with cf.ProcessPoolExecutor(max(1, min(workers, (os.cpu_count() or 2) - 2)), mp_context=ctx) as pool:
        futures = {pool.submit(run, job): i for i, job in enumerate(jobs)}
        for fut, i in futures.items():
            try:
                done[i] = bool(fut.result())
            except BrokenProcessPool:
                pass  # answered below, one process each
    for i, job in enumerate(jobs):
        if i not in done:
            with cf.ProcessPoolExecutor(1, mp_context=ctx) as alone:
                try:
                    done[i] = bool(alone.submit(run, job).result())
                except BrokenProcessPool:
                    done[i] = False
    return [done[i] for i in range(len(jobs))]


def gemv_rows(model, rows, sweep, results):
    name, E = model[0], model[1]
    for label, n, k, gated, norm, delta, dnorm in products(model):
        wrows = 2 * n if gated else n
        nbytes = wrows * k * 2
        copies = max(1, math.ceil(COLD_BYTES / nbytes))
        ws = [torch.randn(wrows, k, device=DEV, dtype=DT) * 0.02 for _ in range(copies)]
        nw = torch.randn(k, device=DEV, dtype=DT) * 0.1
        for m in rows:
            x = torch.randn(m, k, device=DEV, dtype=DT)
            dx = torch.randn(m, k, device=DEV, dtype=DT)
            kw = gemv_kwargs(nw, dx, gated, norm, delta, dnorm, model[-1])

            def cublas():
                for w in ws:
                    F.linear(x, w)

            def ours(cfg=None):
                def run():
                    for w in ws:
                        kernels.gemv(x, w, config=cfg, pdl=PDL, **kw)
                return run

            # correctness against torch at this shape (bf16 tolerance)
            y, _ = kernels.gemv(x, ws[0], **kw)
            xr = x
            if delta:
                dd = dx.float()
                if dnorm:
                    dd = (dd * torch.rsqrt(dd.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + nw.float())).to(DT)
                xr = (x.float() + dd.float()).to(DT)
            xin = xr.float()
            if norm:
                xin = xin * torch.rsqrt(xin.pow(2).mean(-1, keepdim=True) + 1e-6)
                xin = xin * ((1 + nw.float()) if model[-1] else nw.float())
            ref = xin.to(DT).float() @ ws[0].float().T
            if gated:
                g, u = ref[:, :n], ref[:, n:]
                ref = (F.gelu(g, approximate="tanh") if model[-1] else F.silu(g)) * u
            err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
            t_cublas = bench(cublas, copies)
            t_ours = bench(ours(), copies)
            best = (t_ours, kernels.gemv_config(m, n, k, gated, norm, PDL))
            if sweep and label != "lm_head":  # the head stays on cuBLAS
                grid = sweep_grid(m, gated)
                ok = precompile([(wrows, k, m, gated, norm, delta, dnorm, model[-1], cfg) for cfg in grid])
                for cfg in [c for c, good in zip(grid, ok) if good]:
                    try:
                        t = bench(ours(cfg), copies)
                    except Exception:  # out of resources for this config
                        continue
                    if t < best[0]:
                        best = (t, cfg)
            gbs = lambda t: nbytes / (t * 1e-3) / 1e12  # noqa: E731
            line = (f"{name:11s} {label:8s} M={m:<2d} N={n:6d} K={k:5d} {nbytes / 1e6:7.1f} MB | cuBLAS "
                    f"{t_cublas * 1e3:7.2f} us {gbs(t_cublas):4.2f} TB/s | ours {t_ours * 1e3:7.2f} us "
                    f"{gbs(t_ours):4.2f} TB/s | best {best[0] * 1e3:7.2f} us {gbs(best[0]):4.2f} TB/s {best[1]} | err {err:.1e}")
            print(line, flush=True)
            results.append(dict(model=name, product=label, rows=m, n=n, k=k, mb=nbytes / 1e6, cublas_us=t_cublas * 1e3,
                                ours_us=t_ours * 1e3, best_us=best[0] * 1e3, best_config=list(best[1]), rel_err=err))
        del ws


def mlp_grid() -> list[tuple]:
    """kernels.mlp configurations to time: (BLOCK_N, BLOCK_K, warps, stages, BLOCK_H, O_EARLY) with
    BLOCK_K a multiple of 256 x warps (the input tile's layout, as sweep_grid) and at most 256
    gate/up weights per thread and tile; the down projection's tiles of 512 or 1024 columns,
    its first tile before the PDL wait or not."""
    out = []
    for w, r, bn in itertools.product([1, 2, 4, 8], [1, 2], [4, 8, 16, 32]):
        bk = min(256 * w * r, 1024)
        if bn * bk * 2 <= 256 * 32 * w and (bk, w, bn) not in {(c[1], c[2], c[0]) for c in out}:
            for bh, early in itertools.product([512, 1024], [False, True]):
                out.append((bn, bk, w, 2, bh, early))
    return out


def _compile_mlp(job) -> bool:
    """In a worker process: run kernels.mlp once at this shape and config (Triton's disk cache)."""
    n, k, m, transposed, gemma, cfg = job
    try:
        w = torch.zeros(2 * n, k, device=DEV, dtype=DT)
        wd = torch.zeros(n, k, device=DEV, dtype=DT).t() if transposed else torch.zeros(k, n, device=DEV, dtype=DT)
        x = torch.zeros(m, k, device=DEV, dtype=DT)
        out = torch.zeros(m, k, device=DEV)
        kernels.mlp(x, w, wd, out, norm=x[0], gemma=gemma, delta=x, delta_norm=x[0] if gemma else None,
                    act="gelu_tanh" if gemma else "silu", config=cfg, pdl=PDL)
        torch.cuda.synchronize()
        return True
    except Exception:  # out of resources for this config
        return False


def mlp_rows(model, rows, sweep, results):
    """A layer's gated MLP as the step runs it (gemv gate/up with the residual add, norm and
    activation folded in, then gemv down) against kernels.mlp (one kernel, atomic adds into fp32
    sums), cold weights, PDL as --pdl; with `sweep`, mlp over mlp_grid() with the down weight as
    stored and as a transposed copy, the best installed in kernels.MLP_TUNED."""
    name, E, I, gemma = model[0], model[1], model[2], model[-1]
    nbytes = 3 * I * E * 2
    copies = max(1, math.ceil(COLD_BYTES / nbytes))
    wgus = [torch.randn(2 * I, E, device=DEV, dtype=DT) * 0.02 for _ in range(copies)]
    wds = [torch.randn(E, I, device=DEV, dtype=DT) * 0.02 for _ in range(copies)]
    wdts = [w.t().contiguous().t() for w in wds]
    nw = torch.randn(E, device=DEV, dtype=DT) * 0.1
    act = "gelu_tanh" if gemma else "silu"
    for m in rows:
        if m > kernels.MAX_MLP_ROWS:
            continue
        x = torch.randn(m, E, device=DEV, dtype=DT)
        dx = torch.randn(m, E, device=DEV, dtype=DT)
        out = torch.zeros(m, E, device=DEV)
        kw = dict(norm=nw, gemma=gemma, delta=dx, delta_norm=nw if gemma else None, act=act)

        def separate():
            for wgu, wd in zip(wgus, wds):
                a, _ = kernels.gemv(x, wgu, pdl=PDL, **kw)
                kernels.gemv(a, wd, pdl=PDL)

        def fused(cfg=None, downs=wds):
            def run():
                for wgu, wd in zip(wgus, downs):
                    kernels.mlp(x, wgu, wd, out, config=cfg, pdl=PDL, **kw)
            return run

        a, _ = kernels.gemv(x, wgus[0], **kw)
        ref, _ = kernels.gemv(a, wds[0])
        out.zero_()
        kernels.mlp(x, wgus[0], wds[0], out, **kw)
        err = ((out - ref.float()).abs().max() / ref.float().abs().max()).item()
        t_sep = bench(separate, copies)
        t_def = bench(fused(), copies)
        best = stored = (t_def, kernels.mlp_config(m, I, E, PDL), "stored")
        timed = []
        if sweep:
            grid = mlp_grid()
            for layout, downs in (("stored", wds), ("transposed", wdts)):
                ok = precompile([(I, E, m, layout == "transposed", gemma, cfg) for cfg in grid], _compile_mlp)
                for cfg in [c for c, good in zip(grid, ok) if good]:
                    try:
                        t = bench(fused(cfg, downs), copies)
                    except Exception:  # out of resources for this config
                        continue
                    timed.append(dict(config=list(cfg), layout=layout, us=t * 1e3))
                    if t < best[0]:
                        best = (t, cfg, layout)
                    if layout == "stored" and t < stored[0]:
                        stored = (t, cfg, layout)
            kernels.MLP_TUNED[(m, I, E, PDL)] = tuple(stored[1])
        gbs = lambda t: nbytes / (t * 1e-3) / 1e12  # noqa: E731
        print(f"{name:11s} mlp      M={m:<2d} I={I:6d} E={E:5d} {nbytes / 1e6:7.1f} MB | gate/up + down "
              f"{t_sep * 1e3:7.2f} us {gbs(t_sep):4.2f} TB/s | mlp {t_def * 1e3:7.2f} us {gbs(t_def):4.2f} TB/s | "
              f"best {best[0] * 1e3:7.2f} us {gbs(best[0]):4.2f} TB/s {best[1]} {best[2]} | best stored "
              f"{stored[0] * 1e3:7.2f} us {stored[1]} | err {err:.1e}", flush=True)
        results.append(dict(model=name, product="mlp", rows=m, n=I, k=E, mb=nbytes / 1e6, separate_us=t_sep * 1e3,
                            ours_us=t_def * 1e3, best_us=best[0] * 1e3, best_config=list(best[1]),
                            best_layout=best[2], stored_us=stored[0] * 1e3, stored_config=list(stored[1]),
                            rel_err=err, timed=timed))
    del wgus, wds, wdts


def attention_rows(model, rows, results, slots=512, visible=384, sweep=True, n_layers=34):
    name, E, I, H, Hkv, D, V, gemma = model
    G = H // Hkv
    kc = [torch.randn(1, Hkv, slots, D, device=DEV, dtype=DT) for _ in range(n_layers)]
    vc = [torch.randn(1, Hkv, slots, D, device=DEV, dtype=DT) for _ in range(n_layers)]
    ang = torch.arange(slots, device=DEV)[:, None] * torch.linspace(0.01, 1, D // 2, device=DEV)[None]
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos().to(DT), ang.sin().to(DT)
    qn = torch.randn(D, device=DEV, dtype=DT) * 0.1 if gemma else None
    for q in rows:
        qkv = torch.randn(1, q, (H + 2 * Hkv) * D, device=DEV, dtype=DT)
        pos = (visible - q + torch.arange(q, device=DEV))[None]
        mask = (torch.arange(slots, device=DEV)[None, None, :] <= pos[:, :, None])[:, None]  # [1,1,q,S]
        fmask = mask.unsqueeze(2).expand(1, 1, G, q, slots).reshape(1, 1, G * q, slots)

        def compiled_style():
            for i in range(n_layers):
                qf = qkv[..., : H * D].view(1, q, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(1, Hkv, G * q, D)
                sc = torch.matmul(qf, kc[i].transpose(-1, -2)).float() * D ** -0.5
                sc = sc.masked_fill(~fmask, float("-inf"))
                torch.matmul(sc.softmax(-1).to(DT), vc[i])

        def ours(splits=None, block_s=32):
            def run():
                for i in range(n_layers):
                    kernels.decode_attention(qkv, pos, kc[i], vc[i], cos, sin, n_heads=H, n_kv=Hkv, head_dim=D,
                                             scaling=D ** -0.5, q_norm=qn, k_norm=qn, gemma=gemma,
                                             splits=splits, block_s=block_s, pdl=PDL)
            return run

        t_ref = bench(compiled_style, n_layers)
        t_def = bench(ours(), n_layers)
        best = (t_def, "default")
        for splits, bs in itertools.product([1, 2, 4, 8, 16, 32], [16, 32, 64]) if sweep else ():
            try:
                t = bench(ours(splits, bs), n_layers)
            except Exception:
                continue
            if t < best[0]:
                best = (t, (splits, bs))
        print(f"{name:11s} attention q={q} slots {visible}/{slots} | matmul+softmax+matmul (no rope/norm/write) "
              f"{t_ref * 1e3:6.2f} us | ours {t_def * 1e3:6.2f} us | best {best[0] * 1e3:6.2f} us {best[1]}", flush=True)
        results.append(dict(model=name, product="attention", rows=q, torch_us=t_ref * 1e3, ours_us=t_def * 1e3,
                            best_us=best[0] * 1e3, best_config=best[1]))


def _smoke(args) -> None:
    """Run every code path of the script on CPU tensors (TRITON_INTERPRET=1 must be set before
    Triton is imported: the caller's environment). Times are not measured (1 us each)."""
    global DEV, DT, COLD_BYTES, bench
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--smoke needs TRITON_INTERPRET=1 in the environment")
    DEV, DT, COLD_BYTES = "cpu", torch.float32, 1
    bench = lambda fn, copies: (fn(), 1e-3)[1]  # noqa: E731
    first = itertools.product

    class _FirstOnly:  # one configuration per form
        @staticmethod
        def product(*axes):
            return list(first(*[a[:1] for a in axes]))

    globals()["itertools"] = _FirstOnly
    # the interpreter's cost is per program: every configuration as wide programs (same code paths)
    def wide(*a, _f=kernels.gemv, config=None, **k):
        return _f(*a, config=kernels.interpreted(config) if config is not None else None, **k)
    kernels.gemv = wide
    tiny = ("tiny", 64, 128, 4, 2, 16, 300, True)
    results: list[dict] = []
    attention_rows(tiny, args.rows, results, slots=64, visible=40, n_layers=2)
    gemv_rows(tiny, args.rows, True, results)
    mlp_rows(tiny, args.rows, True, results)
    bad = [r for r in results if r.get("rel_err", 0.0) > 1e-4]
    print(f"smoke: {len(results)} measurements, {len(bad)} with a wrong result")
    if bad:
        raise SystemExit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=["gemma", "llama"])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 2, 6])
    ap.add_argument("--draft-rows", nargs="+", type=int, default=None,
                    help="rows for each pair's draft model (default: --rows)")
    ap.add_argument("--sweep", action="store_true", help="sweep gemv's launch configurations")
    ap.add_argument("--attention-sweep", action="store_true", help="sweep the attention's splits and slot blocks")
    ap.add_argument("--pdl", action="store_true", help="our kernels with programmatic dependent launch")
    ap.add_argument("--no-attention", action="store_true", help="the products only")
    ap.add_argument("--mlp", action="store_true",
                    help="only the gated MLP: gemv gate/up + down against kernels.mlp (swept with --sweep)")
    ap.add_argument("--models", nargs="+", default=None, help="only these models of the pairs (e.g. qwen-0.5b)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, Triton's interpreter, a tiny model, one config per form, no timing: checks the script")
    args = ap.parse_args()
    if args.smoke:
        _smoke(args)
        return
    global PDL
    PDL = args.pdl
    print(f"torch {torch.__version__}, triton {kernels.triton.__version__}, {torch.cuda.get_device_name()}")
    results: list[dict] = []
    with torch.inference_mode():
        for pair in args.pairs:
            for i, model in enumerate(MODELS[pair]):
                if args.models and model[0] not in args.models:
                    continue
                rows = args.rows if i == 0 or args.draft_rows is None else args.draft_rows
                if args.mlp:
                    mlp_rows(model, rows, args.sweep, results)
                    continue
                if not args.no_attention:
                    attention_rows(model, rows, results, sweep=args.attention_sweep)
                gemv_rows(model, rows, args.sweep, results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
