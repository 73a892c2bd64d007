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

from specdecode.accel.rounds import CapturedRounds, capture  # noqa: E402
from specdecode.accel.runner import ModelRunner  # noqa: E402
from specdecode.decoding.engine import EngineParams, SpeculativeEngine  # noqa: E402
from specdecode.decoding.drafting import Draft, DraftState  # noqa: E402
from specdecode.drafters.draft_model import ModelDrafter  # noqa: E402
from specdecode.models.loading import LoadedModel  # noqa: E402


DEV = "cuda"  # --smoke: "cpu", tiny configs (checks the script itself, measures nothing)

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


def qwen_configs(vocab: int = 151936):
    """Qwen2.5(-Coder) 1.5B target and 0.5B draft: the real pair's shapes (q/k/v biases, tied heads)."""
    from transformers import Qwen2Config

    common = dict(vocab_size=vocab, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=True)
    target = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, **common)
    draft = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                        num_key_value_heads=2, **common)
    return target, draft


CONFIGS = {"gemma": gemma_configs, "llama": llama_configs, "qwen": qwen_configs}


class _Tok:
    def __init__(self, eos):
        self.eos_token_id = eos


def build(config, name: str, oracle_target: bool = False) -> LoadedModel:
    """A random-weight model. `oracle_target`: give it one robust greedy continuation.

    With plain random weights the next-token logits are Gaussian over 128k-262k ids: the top two
    are so close that bf16 rounding flips the argmax between a [B, 1] and a [B, k+1] step every
    few tokens, and the oracle drafter's reference (a target-only run) goes stale. So the target's
    embedding is made to dominate its residual stream and its output head is the embedding
    table: the greedy next token is then the current token, by a wide margin, at any precision.
    Step costs do not depend on weight values.
    """
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "sdpa"
    with torch.device(DEV):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    gemma = "Gemma" in type(model).__name__
    with torch.no_grad():
        for p in model.parameters():  # random but sane: keeps activations finite in bf16
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
        if oracle_target:
            emb = model.get_input_embeddings().weight
            emb.normal_(0.0, 1.0 if gemma else 50.0)  # Gemma scales embeddings by sqrt(hidden) ~ 50
            if model.lm_head.weight.data_ptr() != emb.data_ptr():
                model.lm_head.weight.copy_(emb)
    model.generation_config.eos_token_id = None  # never stop early: fixed token counts
    return LoadedModel(name, model, _Tok(None), torch.device(DEV), torch.bfloat16)


def weight_bytes(model, sizes: dict[int, int] | None = None) -> int:
    """Bytes a decode step of one token reads: every weight once, except an input embedding table
    that is not also the output head, of which a step reads one row. `sizes`: bytes by id() of a
    parameter, for weights stored in another format (NF4 codes with their scales)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += (sizes or {}).get(id(p), p.numel() * p.element_size())
    if emb.data_ptr() != head.data_ptr():
        total -= emb.numel() * emb.element_size() - emb.shape[1] * emb.element_size()
    return total


# ---------------------------------------------------------------------------- timing
def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(nbytes: int = 4 << 30) -> float:
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=DEV).normal_()
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


ROUNDS: dict[int, object] = {}  # target runner -> its CapturedRounds (graphs reused across repeats)


def rounds_for(runner):
    if not runner.graphs:
        return None
    if id(runner) not in ROUNDS:
        ROUNDS[id(runner)] = CapturedRounds(runner)
    return ROUNDS[id(runner)]


def run_engine(target, drafter, batch_prompts, new_tokens, k, runner, repeats=3, overlap=False):
    """(decode seconds per token, end-to-end seconds, (tokens, stats) of the last repeat).

    The product's engine and rounds (captured as CUDA graphs when the runner's are). Decode time
    runs from the moment every row has its first token (the prefill's) to the last token, over
    new_tokens - 1 tokens per row, so it includes the first speculative round. End-to-end
    includes prefill. Both are medians over `repeats` runs after one warm-up (captures).
    `overlap`: overlapped rounds (the drafter needs `propose_from`)."""
    decode, e2e, out = [], [], None
    for r in range(repeats + 1):  # first = warm-up (captures graphs)
        eng = SpeculativeEngine(target, drafter, EngineParams(k, new_tokens, overlap=overlap), runner=runner,
                                rounds=rounds_for(runner))
        toks = [[] for _ in batch_prompts]
        sync()
        t = time.perf_counter()
        t_first = None
        firsts = 0
        for ev in eng.stream(batch_prompts):
            if ev.kind == "first":
                firsts += 1
                if firsts == len(batch_prompts):
                    t_first = time.perf_counter()  # every row's first token is out: prefill done
            toks[ev.row].extend(ev.tokens)
        sync()
        t_end = time.perf_counter()
        if r:
            decode.append((t_end - t_first) / (new_tokens - 1))
            e2e.append(t_end - t)
        out = (toks, eng.stats)
    return statistics.median(decode), statistics.median(e2e), out


_ORACLES: list = []  # every oracle built: their captured rounds read their tensors


class OracleDrafter(ModelDrafter):
    """Benchmark only: pays the real draft model's cost, proposes the target's own tokens with prob α.

    Everything after the real drafting runs on the device (no host synchronisation, no
    per-row host work), so the drafter adds only a few small kernels to a round."""

    name = "oracle"

    def __init__(self, draft, runner, reference: list[list[int]], prompt_lens: list[int], alpha: float, vocab: int):
        super().__init__(draft, runner=runner)
        # Its rounds read its own tensors (reference, coins, rows) and α: graphs of its own, and the
        # oracle kept alive as long as they may replay (the script's ROUNDS). Keyed by the runner
        # alone, the α = 0.6 graph replayed for 0.8 and 0.9 on freed tensors (2026-12-05: the same
        # acceptance at every α, then a device-side index assert)
        self.capture_key = id(self)
        _ORACLES.append(self)
        self.alpha, self.vocab = alpha, vocab
        width = max(map(len, reference)) + 64  # room for a round's look-ahead past the end
        ref = torch.zeros((len(reference), width), dtype=torch.long)
        for i, r in enumerate(reference):
            ref[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        self.reference = ref.to(DEV)
        self.prompt_lens = torch.tensor(prompt_lens, dtype=torch.long, device=DEV)
        # one coin per row and position, drawn up front: a captured round draws nothing itself
        rng = torch.Generator(device=DEV).manual_seed(1234)
        self.coins = torch.rand(ref.shape, generator=rng, device=DEV)
        self.rows = torch.arange(len(reference), device=DEV)

    def prefill(self, input_ids, lengths, max_len):
        super().prefill(input_ids, lengths, max_len)
        self.rows = torch.arange(self.reference.shape[0], device=DEV)  # a new batch (run_engine repeats)

    def select_rows(self, rows):
        super().select_rows(rows)
        self.rows = self.rows.index_select(0, rows.to(DEV))

    def propose(self, state: DraftState, k: int) -> Draft:
        super().propose(state, k)  # the cost of drafting
        return self.tokens_after(state.positions, k)

    def tokens_after(self, positions: torch.Tensor, k: int) -> Draft:
        """The proposal of k tokens after the token at `positions` [B]: the reference's own token
        with probability α per position, another one otherwise."""
        # tokens generated so far per row: the token at `positions` is generated
        done = positions + 1 - self.prompt_lens[self.rows]  # [B]
        idx = (done[:, None] + torch.arange(k, device=positions.device)).clamp(0, self.reference.shape[1] - 1)
        ref = self.reference[self.rows].gather(1, idx)  # [B, k]
        keep = self.coins[self.rows].gather(1, idx) < self.alpha
        return Draft(tokens=torch.where(keep, ref, (ref + 1) % self.vocab))


def hf_generate(model, batch_prompts, new_tokens, **kw):
    x = torch.tensor(batch_prompts, device=DEV)
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


@torch.inference_mode()
def step_time(runner: ModelRunner, batch: int, q: int, prompt_len: int, repeats: int = 20) -> float:
    """Median seconds of one decode step of q tokens per row through `runner`, captured as a CUDA
    graph when the runner's rounds are (a step inside a round costs its replay, not its launches);
    `repeats` timings after 3 warm-ups (fewer only for smoke runs)."""
    cache = runner.new_cache(batch, prompt_len + 300)
    x = torch.randint(10, 500, (batch, prompt_len), device=DEV)
    runner.prefill(x, cache, attend_len=prompt_len, logits_to_keep=1)
    cache.set_positions(torch.full((batch,), prompt_len, device=DEV))
    step = torch.randint(10, 500, (batch, q), device=DEV)
    fn = lambda: runner.forward(step, cache, cache.max_len, logits_to_keep=0 if q > 1 else 1)  # noqa: E731
    if runner.graphs:
        graph, _ = capture(fn, [cache.positions])
        fn = graph.replay
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def product_pair(pair: str):
    """(target, draft, target runner, draft runner): the pair's random-weight models on the
    product's default decode path (fused layers, compiled, Triton kernels, captured steps); the
    runners' paths are printed."""
    tcfg, dcfg = CONFIGS[pair]()
    target, draft = build(tcfg, "target"), build(dcfg, "draft")
    tr = ModelRunner(target.model, graphs=True, compile=True)
    dr = ModelRunner(draft.model, graphs=True, compile=True)
    print(f"target: {tr.describe()}\ndraft: {dr.describe()}")
    return target, draft, tr, dr


def replay_ms(graph: torch.cuda.CUDAGraph, reps: int = 20, rounds: int = 15) -> float:
    """Median ms of one replay of a captured graph: `reps` replays back to back per timing (a step's
    own pace inside a round, not a launch onto a drained GPU), the median of `rounds` timings."""
    graph.replay()
    sync()
    times = []
    for _ in range(rounds):
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            graph.replay()
        sync()
        times.append((time.perf_counter() - t) / reps * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------- main
class Recorder:
    """Results dict that is written to disk after every measurement (a run cut by its time limit
    keeps everything it measured)."""

    def __init__(self, path: Path, results: dict):
        self.path, self.results = path, results

    def __call__(self, pair: str, key: str, value, msg: str | None = None):
        self.results.setdefault(pair, {})[key] = value
        self.path.write_text(json.dumps(self.results, indent=2))
        if msg:
            print(msg, flush=True)


def timed_first(fn):
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def bench_pair(name, tcfg, dcfg, bw, args, rec):
    target = build(tcfg, name + "-target", oracle_target=True)
    draft = build(dcfg, name + "-draft")
    vocab = min(tcfg.vocab_size, dcfg.vocab_size)
    tb, db = weight_bytes(target.model), weight_bytes(draft.model)
    floor_t, floor_d = tb / bw, db / bw
    for key, v in {"target_weight_bytes": tb, "draft_weight_bytes": db,
                   "floor_ms_target": floor_t * 1e3, "floor_ms_draft": floor_d * 1e3}.items():
        rec(name, key, v)
    print(f"\n== {name}: target {tb / 1e9:.2f} GB (floor {floor_t * 1e3:.2f} ms), draft {db / 1e9:.2f} GB "
          f"(floor {floor_d * 1e3:.3f} ms)", flush=True)
    P, N, K = args.prompt_len, args.new_tokens, 5
    # eager: transformers modules as they are; graphs: the same modules replayed as CUDA graphs;
    # compiled: the product's default on CUDA (fused layers, torch.compile, CUDA graphs)
    factories = {
        "eager": lambda m: ModelRunner(m, fused=False),
        "graphs": lambda m: ModelRunner(m, graphs=True, fused=False),
        "fused-graphs": lambda m: ModelRunner(m, graphs=True, fused=True),
        "compiled": lambda m: ModelRunner(m, graphs=True, compile=True),
    }
    modes = [m for m in args.modes if m in factories]
    runners = {}
    for mode in modes:
        t0 = time.perf_counter()
        runners[mode] = (factories[mode](target.model), factories[mode](draft.model))
        tr, dr = runners[mode]
        r1 = step_time(tr, 1, 1, P) * 1e3
        first = time.perf_counter() - t0
        rv = step_time(tr, 1, K + 1, P) * 1e3
        rd = step_time(dr, 1, 1, P) * 1e3
        rd2 = step_time(dr, 1, 2, P) * 1e3  # a round's first draft step feeds [prev, last]
        rec(name, f"decode_step_{mode}", tr.describe())  # shows a compile that fell back
        rec(name, f"step_ms_target_{mode}_q1", r1)
        rec(name, f"step_ms_target_{mode}_q{K + 1}", rv)
        rec(name, f"step_ms_draft_{mode}_q1", rd)
        rec(name, f"step_ms_draft_{mode}_q2", rd2)
        rec(name, f"setup_s_{mode}", time.perf_counter() - t0,
            f"{mode}: target step {r1:.3f} ms (x{r1 / (floor_t * 1e3):.2f} floor), verify {K + 1} {rv:.3f} ms, "
            f"draft step {rd:.3f} ms (x{rd / (floor_d * 1e3):.1f} floor, c = {rd / r1:.3f}), 2-token draft step "
            f"{rd2:.3f} ms; "
            f"first target step incl. compile/capture {first:.1f} s, all {time.perf_counter() - t0:.1f} s")
    best = "compiled" if "compiled" in modes else modes[-1]
    runner, drunner = runners[best]
    rec(name, "mode", best)
    for batch in args.batches:
        bp = prompts(batch, P, vocab, seed=batch)
        t_base, e2e, (ref, _) = run_engine(target, None, bp, N, 0, runner)
        rec(name, f"b{batch}_target_only_e2e_ms_per_token", e2e / N * 1e3)
        rec(name, f"b{batch}_target_only_ms_per_token", t_base * 1e3)
        rec(name, f"b{batch}_target_only_tokens_per_s", batch / t_base,
            f"batch {batch}: target-only {t_base * 1e3:.3f} ms/token decode ({batch / t_base:.0f} tok/s, "
            f"x{t_base / floor_t:.2f} floor); end to end with prefill {e2e / N * 1e3:.3f} ms/token")
        constant = all(len(set(r)) == 1 for r in ref)
        rec(name, f"b{batch}_reference_is_constant", constant)
        if batch == 1 and "eager" in runners:
            t_eager, _, _ = run_engine(target, None, bp, N, 0, runners["eager"][0], repeats=1)
            rec(name, "b1_target_only_eager_ms_per_token", t_eager * 1e3,
                f"batch 1: target-only, transformers modules eager {t_eager * 1e3:.2f} ms/token")
        alphas = args.alphas if batch == 1 else [0.8]
        res = rec.results[name]
        tv, td, td2 = (res[f"step_ms_target_{best}_q{K + 1}"], res[f"step_ms_draft_{best}_q1"],
                       res[f"step_ms_draft_{best}_q2"])
        if batch > 1:  # step times at this batch size, for the prediction
            tv = step_time(runner, batch, K + 1, P) * 1e3
            td = step_time(drunner, batch, 1, P) * 1e3
            td2 = step_time(drunner, batch, 2, P) * 1e3
            rec(name, f"b{batch}_step_ms_target_q{K + 1}", tv)
            rec(name, f"b{batch}_step_ms_draft_q1", td)
            rec(name, f"b{batch}_step_ms_draft_q2", td2)
        for alpha in alphas:
            drafter = OracleDrafter(draft, drunner, ref, [P] * batch, alpha, vocab)
            t_spec, e2e, (toks, stats) = run_engine(target, drafter, bp, N, K, runner)
            acc = sum(s.accepted_tokens for s in stats) / max(1, sum(s.draft_tokens for s in stats))
            key = f"b{batch}_spec_a{alpha}"
            tokens_round = (1 - alpha ** (K + 1)) / (1 - alpha)
            # a round: k draft steps, the first of them [B, 2] after a round in which some row
            # accepted all k (the draft has not seen that `prev`: probability 1 - (1 - α^k)^B),
            # [B, 1] otherwise; then one verify
            two = 1 - (1 - alpha ** K) ** batch
            predicted_rate = tokens_round / ((two * td2 + (1 - two) * td + (K - 1) * td + tv) / 1e3)  # per row
            rec(name, key + "_ms_per_token", t_spec * 1e3)
            rec(name, key + "_e2e_ms_per_token", e2e / N * 1e3)
            rec(name, key + "_measured_acceptance", acc)
            rec(name, key + "_match_rate", sum(a == b for a, b in zip(toks, ref)) / batch)
            rec(name, key + "_predicted_tokens_per_s", batch * predicted_rate)
            rec(name, key + "_tokens_per_s", batch / t_spec,
                f"batch {batch} α={alpha}: {t_spec * 1e3:.3f} ms/token, {batch / t_spec:.0f} tok/s, "
                f"acceptance {acc:.3f}, x{floor_t / t_spec:.2f} of floor rate, "
                f"{(1 / t_spec) / predicted_rate:.0%} of predicted, "
                f"x{t_base / t_spec:.2f} over target-only; end to end {e2e / N * 1e3:.3f} ms/token")
        if batch == 1:  # the draft model itself, as transformers assisted generation runs it below
            drafter = ModelDrafter(draft, runner=drunner)
            t_rnd, _, (_, stats) = run_engine(target, drafter, bp, N, K, runner, repeats=1)
            acc = sum(s.accepted_tokens for s in stats) / max(1, sum(s.draft_tokens for s in stats))
            rec(name, "b1_spec_draft_model_ms_per_token", t_rnd * 1e3,
                f"batch 1, the draft model itself (as in HF assisted below; acceptance {acc:.3f}): {t_rnd * 1e3:.2f} ms/token")
    if args.no_hf:
        return
    # Hugging Face, batch 1, same models and prompt
    bp = prompts(1, P, vocab)
    t = hf_generate(target.model, bp, N)
    rec(name, "hf_generate_eager_ms_per_token", t / N * 1e3, f"HF generate eager: {t / N * 1e3:.2f} ms/token")
    if tcfg.vocab_size == dcfg.vocab_size:
        t = hf_generate(target.model, bp, N, assistant_model=draft.model, num_assistant_tokens=K,
                        num_assistant_tokens_schedule="constant")
        rec(name, "hf_assisted_ms_per_token", t / N * 1e3,
            f"HF assisted generation (same draft model, k={K}): {t / N * 1e3:.2f} ms/token")
    t0 = time.perf_counter()
    t = hf_generate(target.model, bp, N, cache_implementation="static")
    rec(name, "hf_generate_static_compiled_ms_per_token", t / N * 1e3,
        f"HF generate(cache_implementation='static') (compiled by transformers): {t / N * 1e3:.2f} ms/token "
        f"(with warm-up/compile {time.perf_counter() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--pairs", nargs="+", default=["gemma", "llama"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.6, 0.8, 0.9])
    ap.add_argument("--modes", nargs="+", default=["eager", "graphs", "fused-graphs", "compiled"])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers generate() and assisted generation")
    ap.add_argument("--tag", default="h200")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny configs, few tokens: exercises the script only")
    args = ap.parse_args()
    global DEV
    if args.smoke:
        DEV = "cpu"
        args.modes = [m for m in args.modes if m != "compiled"] or ["eager"]  # (compiled steps need CUDA)
    torch.backends.cuda.matmul.allow_tf32 = False
    bw = copy_bandwidth(64 << 20 if args.smoke else 4 << 30)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{args.tag}"
    results = {"date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke test)",
               "torch": torch.__version__, "transformers": __import__("transformers").__version__,
               "copy_bandwidth_TBps": bw / 1e12, "args": vars(args)}
    rec = Recorder(out / f"{stem}.json", results)
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    for name in args.pairs:
        tcfg, dcfg = gemma_configs() if name == "gemma" else llama_configs()
        if args.smoke:
            for c in (tcfg, dcfg):
                c.hidden_size, c.intermediate_size, c.num_hidden_layers = 64, 128, 2
                c.num_attention_heads, c.num_key_value_heads, c.vocab_size = 4, 2, 512
                if getattr(c, "layer_types", None):
                    c.layer_types = c.layer_types[:1] + ["full_attention"]
                if name == "gemma":
                    c.head_dim = 16
        if name == "gemma":
            dcfg.vocab_size = tcfg.vocab_size  # same table size, so assisted generation accepts the pair
        try:
            bench_pair(name, tcfg, dcfg, bw, args, rec)
        finally:
            results["checks"] = checks(results)
            rec.path.write_text(json.dumps(results, indent=2))
            write_markdown(out / f"{stem}.md", results, args)
        if DEV == "cuda":
            torch.cuda.empty_cache()
    print("\n".join(f"{k}: {v}" for k, v in results["checks"].items()))


def checks(results: dict) -> dict[str, bool]:
    out = {}
    r = results.get("llama", {})
    if "b1_target_only_ms_per_token" in r:
        out["llama8b_target_only_le_1.35x_floor"] = r["b1_target_only_ms_per_token"] <= 1.35 * r["floor_ms_target"]
    r = results.get("gemma", {})
    if "b1_target_only_ms_per_token" in r:
        mode = r["mode"]
        out["gemma4b_target_only_le_1.5x_floor"] = r["b1_target_only_ms_per_token"] <= 1.5 * r["floor_ms_target"]
        out["gemma270m_draft_step_le_0.25x_target_step"] = (
            r[f"step_ms_draft_{mode}_q1"] <= 0.25 * r[f"step_ms_target_{mode}_q1"])
        floor_rate = 1e3 / r["floor_ms_target"]
        for a, need in ((0.9, 1.4), (0.8, 1.1)):
            key = f"b1_spec_a{a}"
            if key + "_tokens_per_s" in r:
                out[f"gemma_spec_a{a}_ge_{need}x_floor_rate"] = r[key + "_tokens_per_s"] >= need * floor_rate
                out[f"gemma_spec_a{a}_ge_85pct_predicted"] = (
                    r[key + "_tokens_per_s"] >= 0.85 * r[key + "_predicted_tokens_per_s"])
        if "b16_spec_a0.8_tokens_per_s" in r:
            out["gemma_b16_a0.8_ge_1.3x_target_only"] = (
                r["b16_spec_a0.8_tokens_per_s"] >= 1.3 * r["b16_target_only_tokens_per_s"])
    return out


def write_markdown(path: Path, results: dict, args) -> None:
    lines = [f"# H200 results {results['date']}", "",
             f"{results['device']}, torch {results['torch']}, transformers {results['transformers']}, "
             f"copy bandwidth {results['copy_bandwidth_TBps']:.2f} TB/s. Command: "
             f"`python3 benchmarks/gpu_bench.py {' '.join(sys.argv[1:])}`", ""]
    for name in args.pairs:
        if name not in results:
            continue
        lines += [f"## {name}", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results[name].items()]
        lines.append("")
    lines += ["## checks", "", "| check | pass |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in results.get("checks", {}).items()]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
