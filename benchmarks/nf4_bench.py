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

Each is a one-token step after a 128-token prompt, timed as gpu_bench.step_time does (captured
step replayed, device synchronised, median of 20 after 3 warm-ups). Floors: the bytes a step
reads (gpu_bench.weight_bytes; for NF4 the projections at nf4.nf4_nbytes, the rest in bf16) over the copy bandwidth measured in the same run. The checks are the issue's: NF4 on the
kernels at most 0.75x the bf16 time on Qwen2.5 1.5B and 0.6x on Gemma 3 4B and Llama 3.1 8B, and
at most 1.6x its NF4 floor. Writes <out>/<date>-<device>-nf4.json (+ .md) after every model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench  # noqa: E402
from specdecode.accel import nf4  # noqa: E402
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


def measure(runner: ModelRunner, args) -> float:
    return gpu_bench.step_time(runner, 1, 1, args.prompt_len, repeats=args.repeats)


def bench_target(name: str, args, bw: float) -> dict:
    tcfg, _ = CONFIGS[name]()
    loaded = gpu_bench.build(tcfg, f"{name}-target")
    model = loaded.model
    cuda = gpu_bench.DEV == "cuda"
    row: dict = {"pair": name, "config": type(tcfg).__name__}
    bf16_bytes = gpu_bench.weight_bytes(model)
    runner = ModelRunner(model, graphs=cuda, compile=cuda)
    row["bf16_path"] = runner.describe()
    row["bf16_ms"] = measure(runner, args) * 1e3
    del runner
    nbytes = gpu_bench.weight_bytes(model, quantize_(model))
    row.update(bf16_floor_ms=bf16_bytes / bw * 1e3, nf4_floor_ms=nbytes / bw * 1e3,
               bf16_bytes=bf16_bytes, nf4_bytes=nbytes)
    modules = ModelRunner(model, graphs=cuda, fused=False)
    row["nf4_modules_path"] = modules.describe()
    row["nf4_modules_ms"] = measure(modules, args) * 1e3
    del modules
    fused = ModelRunner(model, graphs=cuda, compile=cuda, fused=True, kernels=True, nf4=True)
    row["nf4_kernels_path"] = fused.describe()
    if "fused NF4 kernels" not in row["nf4_kernels_path"]:  # a fallback would measure something else
        raise SystemExit(f"{name}: the NF4 step is not on the kernels: {row['nf4_kernels_path']}")
    row["nf4_kernels_ms"] = measure(fused, args) * 1e3
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
    lines += ["", "## Checks", ""] + [f"- {k}: {str(v).lower()}" for k, v in results["checks"].items()]
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=["qwen", "gemma", "llama"], choices=sorted(CONFIGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20, help="timings per step (median); the smoke run uses 1")
    ap.add_argument("--out", required=True)
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
