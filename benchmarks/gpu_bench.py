"""GPU benchmark (issue 6): specdecode's decode steps on an H200 against floors and Hugging Face.

Random-weight models built from the real architectures' configs (timing does not depend on
weight values; nothing is downloaded), bf16, prompt 128 tokens, 256 new tokens.

In one run it measures:
  * copy bandwidth (device-to-device, bytes read + written) -> floor = weight bytes / bandwidth;
  * our target-only decode (engine with drafter none) per token, eager and CUDA-graph modes;
  * the draft step alone (cost ratio c = draft step / target step);
  * transformers generate() eager, and assisted generation (batch 1) on the same models;
  * speculative decoding with a benchmark-only *oracle drafter* at α in {0.6, 0.8, 0.9}, k = 5:
    it runs the real draft model for its cost, then keeps the target's own next token (known
    from a previous target-only greedy run of the same prompt) with probability α per position
    and substitutes a different token otherwise — speed at a known acceptance;
  * batch 1, 4 and 16;
  * bf16 greedy output match rate of speculative vs target-only.

Writes benchmarks/results/<date>-h200.json and .md (to --out) with a "checks" entry per
issue-6 target. Method: benchmarks/README.md. Run through the device tool:
    python3 benchmarks/gpu_bench.py --out $OUT
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdecode.decoding.cache import ModelRunner  # noqa: E402
from specdecode.decoding.engine import EngineParams, SpeculativeEngine  # noqa: E402
from specdecode.drafters.base import Draft, DraftState  # noqa: E402
from specdecode.drafters.draft_model import ModelDrafter  # noqa: E402
from specdecode.models.loading import LoadedModel  # noqa: E402


# ---------------------------------------------------------------------------- configs
def llama_configs(vocab: int = 128256):
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    common = dict(vocab_size=vocab, max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=128000,
                  eos_token_id=128001, rope_parameters=rope)
    target = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, tie_word_embeddings=False, **common)
    draft = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, tie_word_embeddings=True, **common)
    return target, draft


def gemma_configs(vocab: int = 262208):
    from transformers import Gemma3TextConfig

    def layer_types(n):
        return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]

    rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    common = dict(vocab_size=vocab, head_dim=256, query_pre_attn_scalar=256, max_position_embeddings=32768,
                  bos_token_id=2, eos_token_id=1, pad_token_id=0)
    target = Gemma3TextConfig(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                              num_attention_heads=8, num_key_value_heads=4, sliding_window=1024,
                              layer_types=layer_types(34), rope_parameters=rope, **common)
    draft = Gemma3TextConfig(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                             num_key_value_heads=1, sliding_window=512, layer_types=layer_types(18),
                             rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                              "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                             **common)
    return target, draft


class _Tok:
    def __init__(self, eos):
        self.eos_token_id = eos


def build(config, name: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():  # random but sane: keeps activations finite in bf16
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
        # Peaked next-token distributions: with std-0.02 weights the logits are nearly flat, bf16
        # near-ties flip between [B, 1] and [B, k+1] steps and the oracle's reference goes stale.
        # Scaling the final norm's gain scales the logits (real models are peaked too).
        norm = model.model.norm
        if "Gemma" in type(model).__name__:
            norm.weight.fill_(29.0)  # Gemma's RMSNorm multiplies by (1 + weight)
        else:
            norm.weight.fill_(30.0)
    model.generation_config.eos_token_id = None  # never stop early: fixed token counts
    return LoadedModel(name, model, _Tok(None), torch.device("cuda"), torch.bfloat16)


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


# ---------------------------------------------------------------------------- timing
def sync():
    torch.cuda.synchronize()


def copy_bandwidth(nbytes: int = 4 << 30) -> float:
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(10):
        sync()
        t = time.perf_counter()
        b.copy_(a)
        sync()
        times.append(time.perf_counter() - t)
    del a, b
    return 2 * nbytes / statistics.median(times)  # bytes read + written per second


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, min(vocab, 30000), (batch, length), generator=g).tolist()


def run_engine(target, drafter, batch_prompts, new_tokens, k, runner, repeats=3):
    """Median seconds for one batch, and the generated tokens (last repeat)."""
    times, out = [], None
    for r in range(repeats + 1):  # first = warm-up (captures graphs)
        eng = SpeculativeEngine(target, drafter, EngineParams(k, new_tokens), runner=runner)
        toks = [[] for _ in batch_prompts]
        sync()
        t = time.perf_counter()
        for ev in eng.stream(batch_prompts):
            toks[ev.row].extend(ev.tokens)
        sync()
        if r:
            times.append(time.perf_counter() - t)
        out = (toks, eng.stats)
    return statistics.median(times), out


class OracleDrafter(ModelDrafter):
    """Benchmark only: pays the real draft model's cost, proposes the target's own tokens with prob α."""

    name = "oracle"

    def __init__(self, draft, runner, reference: list[list[int]], prompt_lens: list[int], alpha: float, vocab: int):
        super().__init__(draft, runner=runner)
        self.reference, self.prompt_lens, self.alpha, self.vocab = reference, prompt_lens, alpha, vocab
        self.rng = torch.Generator().manual_seed(1234)
        self.rows = list(range(len(reference)))

    def select_rows(self, rows):
        super().select_rows(rows)
        self.rows = [self.rows[i] for i in rows.tolist()]

    def propose(self, state: DraftState, k: int) -> Draft:
        real = super().propose(state, k)  # the cost of drafting
        toks = []
        for slot, hist in enumerate(state.histories):
            row = self.rows[slot]
            done = len(hist) - self.prompt_lens[row]  # tokens generated so far
            ref = self.reference[row][done : done + k]
            ref += [0] * (k - len(ref))
            keep = (torch.rand(k, generator=self.rng) < self.alpha).tolist()
            toks.append([t if kp else (t + 1) % self.vocab for t, kp in zip(ref, keep)])
        tokens = torch.tensor(toks, dtype=torch.long).to(real.tokens.device, non_blocking=True)
        return Draft(tokens=tokens)


def hf_generate(model, batch_prompts, new_tokens, **kw):
    x = torch.tensor(batch_prompts, device="cuda")
    times = []
    for r in range(2):  # one warm-up, one timed (generate() is slow: the lease is short)
        sync()
        t = time.perf_counter()
        model.generate(x, max_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=0, **kw)
        sync()
        if r:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def step_time(runner: ModelRunner, batch: int, q: int, prompt_len: int) -> float:
    """Median seconds of one decode step of q tokens per row through `runner` (graph replay when on)."""
    cache = runner.new_cache(batch, prompt_len + 300)
    x = torch.randint(10, 1000, (batch, prompt_len), device="cuda")
    runner.prefill(x, cache, attend_len=prompt_len, logits_to_keep=1)
    cache.set_positions(torch.full((batch,), prompt_len, device="cuda"))
    step = torch.randint(10, 1000, (batch, q), device="cuda")
    for _ in range(3):
        runner.forward(step, cache, cache.max_len, logits_to_keep=0 if q > 1 else 1)
    sync()
    times = []
    for _ in range(20):
        t = time.perf_counter()
        runner.forward(step, cache, cache.max_len, logits_to_keep=0 if q > 1 else 1)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------------------- main
def bench_pair(name, tcfg, dcfg, bw, args, results):
    target, draft = build(tcfg, name + "-target"), build(dcfg, name + "-draft")
    vocab = min(tcfg.vocab_size, dcfg.vocab_size)
    tb, db = weight_bytes(target.model), weight_bytes(draft.model)
    floor_t, floor_d = tb / bw, db / bw
    r = results[name] = {"target_weight_bytes": tb, "draft_weight_bytes": db,
                         "floor_ms_target": floor_t * 1e3, "floor_ms_draft": floor_d * 1e3}
    print(f"\n== {name}: target {tb / 1e9:.2f} GB (floor {floor_t * 1e3:.2f} ms), draft {db / 1e9:.2f} GB", flush=True)
    modes = {"eager": ModelRunner(target.model), "graphs": ModelRunner(target.model, graphs=True)}
    dmodes = {"eager": ModelRunner(draft.model), "graphs": ModelRunner(draft.model, graphs=True)}
    if args.compile:
        modes["compiled"] = ModelRunner(target.model, graphs=True, compile=True)
        dmodes["compiled"] = ModelRunner(draft.model, graphs=True, compile=True)
    P, N, K = args.prompt_len, args.new_tokens, 5
    for mode in modes:
        r[f"step_ms_target_{mode}_q1"] = step_time(modes[mode], 1, 1, P) * 1e3
        r[f"step_ms_target_{mode}_q{K + 1}"] = step_time(modes[mode], 1, K + 1, P) * 1e3
        r[f"step_ms_draft_{mode}_q1"] = step_time(dmodes[mode], 1, 1, P) * 1e3
        print(f"{mode}: target step {r[f'step_ms_target_{mode}_q1']:.2f} ms (x{r[f'step_ms_target_{mode}_q1'] / (floor_t * 1e3):.2f} floor), "
              f"verify {K + 1} {r[f'step_ms_target_{mode}_q{K + 1}']:.2f} ms, draft step {r[f'step_ms_draft_{mode}_q1']:.2f} ms", flush=True)
    for batch in args.batches:
        # torch.compile specialises on the batch size: compiled at batch 1 only (compile time)
        best = "compiled" if ("compiled" in modes and batch == 1) else "graphs"
        runner, drunner = modes[best], dmodes[best]
        r[f"b{batch}_mode"] = best
        bp = prompts(batch, P, vocab, seed=batch)
        t_base, (ref, _) = run_engine(target, None, bp, N, 0, runner)
        r[f"b{batch}_target_only_ms_per_token"] = t_base / N * 1e3
        r[f"b{batch}_target_only_tokens_per_s"] = batch * N / t_base
        print(f"batch {batch}: target-only {t_base / N * 1e3:.2f} ms/token ({batch * N / t_base:.0f} tok/s)", flush=True)
        if batch == 1:
            t_eager, _ = run_engine(target, None, bp, N, 0, modes["eager"], repeats=1)
            r["b1_target_only_eager_ms_per_token"] = t_eager / N * 1e3
        alphas = args.alphas if batch == 1 else [0.8]
        for alpha in alphas:
            drafter = OracleDrafter(draft, drunner, ref, [P] * batch, alpha, vocab)
            t_spec, (toks, stats) = run_engine(target, drafter, bp, N, K, runner)
            acc = sum(s.accepted_tokens for s in stats) / max(1, sum(s.draft_tokens for s in stats))
            key = f"b{batch}_spec_a{alpha}"
            r[key + "_ms_per_token"] = t_spec / N * 1e3
            r[key + "_tokens_per_s"] = batch * N / t_spec
            r[key + "_measured_acceptance"] = acc
            r[key + "_match_rate"] = sum(a == b for a, b in zip(toks, ref)) / batch
            tv, td = r[f"step_ms_target_{best}_q{K + 1}"], r[f"step_ms_draft_{best}_q1"]
            tokens_round = (1 - alpha ** (K + 1)) / (1 - alpha)
            predicted_rate = tokens_round / ((K * td + tv) / 1e3)
            r[key + "_predicted_tokens_per_s"] = predicted_rate
            print(f"batch {batch} α={alpha}: {t_spec / N * 1e3:.2f} ms/token, {batch * N / t_spec:.0f} tok/s, "
                  f"acceptance {acc:.2f}, x{(batch * N / t_spec) / (batch / floor_t):.2f} of floor rate, "
                  f"{(N / t_spec) / predicted_rate:.0%} of predicted", flush=True)
    # Hugging Face, batch 1
    bp = prompts(1, P, vocab)
    if args.no_hf:
        return
    r["hf_generate_eager_ms_per_token"] = hf_generate(target.model, bp, N) / N * 1e3
    print(f"HF generate eager: {r['hf_generate_eager_ms_per_token']:.2f} ms/token", flush=True)
    if tcfg.vocab_size == dcfg.vocab_size:
        r["hf_assisted_ms_per_token"] = hf_generate(target.model, bp, N, assistant_model=draft.model) / N * 1e3
        print(f"HF assisted (random draft): {r['hf_assisted_ms_per_token']:.2f} ms/token", flush=True)
    del target, draft, modes, dmodes, runner, drunner
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--pairs", nargs="+", default=["gemma", "llama"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.6, 0.8, 0.9])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers generate() and assisted generation")
    ap.add_argument("--tag", default="h200")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    bw = copy_bandwidth()
    results = {"date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "copy_bandwidth_TBps": bw / 1e12, "args": vars(args)}
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.pairs:
        tcfg, dcfg = gemma_configs() if name == "gemma" else llama_configs()
        if name == "gemma":
            dcfg.vocab_size = tcfg.vocab_size  # same table size, so assisted generation accepts the pair
        bench_pair(name, tcfg, dcfg, bw, args, results)
        # after every pair: a run cut by its time limit keeps what it measured
        (out / f"{results['date']}-h200-partial.json").write_text(json.dumps(results, indent=2))
    checks = {}
    if "llama" in results:
        r = results["llama"]
        checks["llama8b_target_only_le_1.35x_floor"] = r["b1_target_only_ms_per_token"] <= 1.35 * r["floor_ms_target"]
    if "gemma" in results:
        r = results["gemma"]
        mode = r["b1_mode"]
        checks["gemma4b_target_only_le_1.5x_floor"] = r["b1_target_only_ms_per_token"] <= 1.5 * r["floor_ms_target"]
        checks["gemma270m_draft_step_le_0.25x_target_step"] = (
            r[f"step_ms_draft_{mode}_q1"] <= 0.25 * r[f"step_ms_target_{mode}_q1"])
        floor_rate = 1e3 / r["floor_ms_target"]
        for a, need in ((0.9, 1.4), (0.8, 1.1)):
            key = f"b1_spec_a{a}"
            if key + "_tokens_per_s" in r:
                checks[f"gemma_spec_a{a}_ge_{need}x_floor_rate"] = r[key + "_tokens_per_s"] >= need * floor_rate
                checks[f"gemma_spec_a{a}_ge_85pct_predicted"] = (
                    r[key + "_tokens_per_s"] >= 0.85 * r[key + "_predicted_tokens_per_s"])
        if "b16_spec_a0.8_tokens_per_s" in r:
            checks["gemma_b16_a0.8_ge_1.3x_target_only"] = (
                r["b16_spec_a0.8_tokens_per_s"] >= 1.3 * r["b16_target_only_tokens_per_s"])
    results["checks"] = checks
    stem = f"{results['date']}-{args.tag}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    lines = [f"# H200 results {results['date']}", "", f"copy bandwidth {bw / 1e12:.2f} TB/s", ""]
    for name in args.pairs:
        lines += [f"## {name}", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results[name].items()]
        lines.append("")
    lines += ["## checks", "", "| check | pass |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in checks.items()]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(checks) - 2:]))


if __name__ == "__main__":
    main()
