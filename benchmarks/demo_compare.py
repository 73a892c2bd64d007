"""The embedded demo pair, side by side in one run: our target-only baseline, our speculative
decoding, transformers generate() and transformers assisted generation (assistant_model=).

Batch 1, greedy, the demo's built-in prompts, the same max_new_tokens everywhere. Each
prompt runs through all four methods before the next prompt (interleaved), after a warm-up
of each; CUDA is synchronised around every timed call. Reported: tokens/s, speedup over
plain generate() and over our baseline, acceptance, and whether every method produced the
same tokens as plain generate().

    python benchmarks/demo_compare.py --device cpu --threads 1      # this machine
    python3 benchmarks/demo_compare.py --device cuda --out $OUT      # through the device tool
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdecode.api import SpeculativeDecoder  # noqa: E402
from specdecode.demo.prompts import PROMPTS  # noqa: E402
from specdecode.settings import load_settings  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-prompts", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", default=None, help="default: the demo preset's k ('auto' works)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    overrides = {"device": args.device, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens}
    if args.k:
        overrides["k"] = args.k
    settings = load_settings(preset="demo", overrides=overrides)
    spec = SpeculativeDecoder.from_settings(settings)
    base = spec.with_settings(drafter="none")
    target, draft = spec.target.model, spec.draft.model
    device = spec.target.device
    eos = list(spec.target.eos_token_ids)
    prompts = PROMPTS[: args.num_prompts]

    def hf(ids: list[int], assisted: bool) -> list[int]:
        x = torch.tensor([ids], device=device)
        kw = {"assistant_model": draft} if assisted else {}
        out = target.generate(x, max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=eos,
                              pad_token_id=spec.tokenizer.pad_token_id, **kw)
        return out[0, len(ids):].tolist()

    methods = {
        "hf_generate": lambda p, ids: hf(ids, False),
        "hf_assisted": lambda p, ids: hf(ids, True),
        "ours_baseline": lambda p, ids: base.generate([p])[0].token_ids,
        "ours_speculative": lambda p, ids: spec.generate([p])[0].token_ids,
    }
    # warm-up: every method once
    for fn in methods.values():
        fn(prompts[0], spec.encode(prompts[0]))
    times = {m: 0.0 for m in methods}
    tokens = {m: 0 for m in methods}
    same = {m: 0 for m in methods}
    accepted = proposed = 0
    for p in prompts:
        ids = spec.encode(p)
        ref = None
        for name, fn in methods.items():
            sync(device)
            t = time.perf_counter()
            out = fn(p, ids)
            sync(device)
            times[name] += time.perf_counter() - t
            tokens[name] += len(out)
            ref = out if ref is None else ref
            same[name] += out == ref
        r = spec.generate([p])[0]  # untimed: acceptance figures
        accepted += r.stats.accepted_tokens
        proposed += r.stats.draft_tokens
    rate = {m: tokens[m] / times[m] for m in methods}
    result = {
        "date": dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "dtype": str(spec.target.dtype),
        "k": settings.k,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "tokens_per_s": rate,
        "time_s": times,
        "tokens": tokens,
        "same_tokens_as_hf_generate": {m: same[m] / len(prompts) for m in methods},
        "acceptance_rate": accepted / max(1, proposed),
        "speedup_vs_hf_generate": {m: rate[m] / rate["hf_generate"] for m in methods},
        "speedup_vs_ours_baseline": {m: rate[m] / rate["ours_baseline"] for m in methods},
    }
    tag = "h200" if device.type == "cuda" else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{result['date']}-demo-{tag}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Demo pair, {tag}, {result['date']}",
        "",
        f"{result['device']}, torch {result['torch']}, {result['dtype']}, threads {result['threads']}, k={settings.k}, "
        f"{len(prompts)} built-in prompts x {args.max_new_tokens} new tokens, batch 1, greedy; "
        f"acceptance {result['acceptance_rate']:.3f}",
        "",
        "| method | tokens/s | vs generate() | vs our baseline | same tokens as generate() |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in methods:
        lines.append(f"| {m} | {rate[m]:.1f} | {result['speedup_vs_hf_generate'][m]:.2f}x | "
                     f"{result['speedup_vs_ours_baseline'][m]:.2f}x | {result['same_tokens_as_hf_generate'][m]:.0%} |")
    text = "\n".join(lines) + "\n"
    (out / f"{result['date']}-demo-{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
