"""Overlapped rounds on the GPU (`--overlap`): how well the verify and the draft's steps share it.

    python3 benchmarks/overlap_probe.py --pair qwen --ks 1 2 3 5 [--pdl on/on on/off off/off] --out $OUT

An overlapped round (decoding/round.py's run_overlapped_round) runs the target's verify of k+1
rows on the main stream and k+1 draft steps on a second one (accel/rounds.py's SideBranch),
captured as one graph with two branches. Whether that pays depends on one number this script
measures first: how close the two branches together come to the longer of them alone. The
draft's steps are latency-bound (a 0.5B draft step reads its weights at ~1.8 TB/s), so the GPU
has room beside them, if its block scheduler interleaves the two branches' blocks. Stop 24's
form of this probe (`results/2026-12-03-h200-overlap-probe.json`) found a draft step costing
0.26-0.28 ms beside the verify against 0.54 ms alone, with programmatic dependent launch (PDL)
on in both models: a PDL kernel is resident while it waits for its predecessor, holding SM slots
the other branch could use, so this probe also times the branches with PDL off in the draft
(`--pdl TARGET/DRAFT`).

Random-weight models of the pair's real configs (gpu_bench.py's `build`: step costs do not depend
on weight values), the product's default decode path (fused layers, compiled, Triton kernels,
PDL), bf16, batch 1, prompt 128 tokens. In one run:

  1. steps: the target's one-token step, its verify of k+1 rows, the draft's one-token step;
  2. per PDL variant, branches, each captured as a CUDA graph and replayed back to back (median): the verify
     alone, the k+1 draft steps alone, both one after the other, and both on two streams (the
     draft's at high priority, then at the default one); `overlap_efficiency` = the longer
     branch alone / both on two streams (1.0 = perfect overlap); then per `--green WHO:SMS` one
     branch on a CUDA green context of SMS SMs (`accel/rounds.py`'s green_stream) and the other
     on the whole GPU: "verify:112" leaves the draft 20 SMs of its own (a waiting block of
     either branch holds its SM slots; partitioning keeps the verify's blocks off some), "draft:N"
     confines the draft; that branch alone there, and both (one graph forked onto the green
     stream, or two graphs where the driver refuses the fork in one capture);
  3. the product's engine with gpu_bench's oracle drafter at α (the real draft model's cost, the
     target's own token with probability α per position): target alone, plain rounds at k, and
     overlapped rounds at k, tokens per second over the same prompts, with the speedup
     metrics.overlapped_speedup predicts at the measured step costs.

Writes <date>-h200-overlap-probe.json (+ .md) to --out; method: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench  # noqa: E402
from specdecode import metrics  # noqa: E402
from specdecode.accel import kernels  # noqa: E402
from specdecode.accel.rounds import SideBranch, capture, green_stream  # noqa: E402
from specdecode.accel.runner import ModelRunner  # noqa: E402
from specdecode.drafters.draft_model import ModelDrafter  # noqa: E402


class OverlapOracle(gpu_bench.OracleDrafter):
    """gpu_bench's oracle drafter for overlapped rounds too: `propose_from` pays the real draft
    model's k steps, then proposes the target's own token at each position with probability α."""

    def __init__(self, draft, runner, reference, prompt_lens, alpha, vocab):
        super().__init__(draft, runner, reference, prompt_lens, alpha, vocab)
        # an overlapped round proposes up to 2k + 1 positions ahead, past the reference's end near the
        # end of a generation: continue each row with its last token (the oracle target's greedy
        # continuation repeats it), so that α stays α there
        for i, r in enumerate(reference):
            self.reference[i, len(r):] = r[-1]

    def propose_from(self, tokens, positions, state, k):
        ModelDrafter.propose_from(self, tokens, positions, state, k)  # the cost of drafting
        return self.tokens_after(positions, k)


def _timed(fn, state, name, out) -> None:
    """out[name] = the replay time (ms) of fn captured as the product captures rounds; a variant that
    cannot be captured (a green context this driver refuses) records its error instead."""
    try:
        graph, _ = capture(fn, state, warmups=3)
        out[name] = gpu_bench.replay_ms(graph)
        del graph
    except RuntimeError as e:  # a CUDA error of a launch or capture: recorded, the next variant runs
        out[f"{name}_error"] = str(e).splitlines()[0][:300]
        try:
            torch.cuda.synchronize()
        except RuntimeError:
            pass


def _two_graphs_ms(fn_side, stream, fn_main, state) -> float:
    """Fallback where one capture cannot fork onto a green context's stream: fn_side captured on
    `stream` and fn_main on the current stream as two graphs, replayed concurrently (the side graph
    launched on its stream after the main stream's queue, the main stream joining it)."""
    saved = [t.clone() for t in state]
    main = torch.cuda.current_stream()
    graphs = []
    for fn, s in ((fn_side, stream), (fn_main, main)):
        s.wait_stream(main)
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
                for t, v in zip(state, saved):
                    t.copy_(v)
        main.wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s if s is not main else None):
            fn()
        main.wait_stream(s)
        graphs.append(g)

    class Both:
        def replay(self):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                graphs[0].replay()
            graphs[1].replay()
            main.wait_stream(stream)
    return gpu_bench.replay_ms(Both())


@torch.inference_mode()
def branches(tr: ModelRunner, dr: ModelRunner, k: int, prompt_len: int, green: list[str]) -> dict[str, float]:
    """Replay times (ms) of the verify of k+1 rows, k+1 draft steps, both in sequence, both on
    two streams (high and default priority); per `green` spec, both with one branch on a green
    context's share of the SMs ("draft:N": the draft's steps on N SMs, the verify on all of them;
    "verify:N": the verify on N SMs, the draft on all of them at high priority), and that branch
    alone there."""
    dev = torch.device("cuda")
    tcache, dcache = tr.new_cache(1, prompt_len + 300), dr.new_cache(1, prompt_len + 300)
    x = torch.randint(10, 500, (1, prompt_len), device=dev)
    for runner, cache in ((tr, tcache), (dr, dcache)):
        runner.prefill(x, cache, attend_len=prompt_len, logits_to_keep=1)
        cache.set_positions(torch.full((1,), prompt_len, device=dev))
    verify_in = torch.randint(10, 500, (1, k + 1), device=dev)
    tok = torch.randint(10, 500, (1, 1), device=dev)
    t0, d0 = tcache.positions.clone(), dcache.positions.clone()
    state = [tcache.positions, dcache.positions]

    def verify():
        tcache.positions.copy_(t0)
        return tr.forward(verify_in, tcache, tcache.max_len)

    def draft():
        dcache.positions.copy_(d0)
        step = tok
        for _ in range(k + 1):
            logits = dr.forward(step, dcache, dcache.max_len, logits_to_keep=1)[:, -1]
            dcache.advance(1)
            step = dr.argmax(logits)[:, None]
        return step

    def sequential():
        verify()
        return draft()

    def forked(side_draft: SideBranch, side_verify: SideBranch | None = None):
        def both():
            out = side_draft.run(draft)
            if side_verify is None:
                verify()
            else:
                side_verify.run(verify)
                side_verify.join()
            side_draft.join()
            return out
        return both

    def alone(side: SideBranch, fn):
        def run():
            out = side.run(fn)
            side.join()
            return out
        return run

    fns = {"verify": verify, "draft_chain": draft, "sequential": sequential,
           "concurrent_high_priority": forked(SideBranch(dev, priority=-1)),
           "concurrent_default_priority": forked(SideBranch(dev, priority=0))}
    out = {}
    for name, fn in fns.items():
        _timed(fn, state, name, out)  # the product's capture
    nan = float("nan")
    longer = max(out.get("verify", nan), out.get("draft_chain", nan))
    for p in ("high", "default"):
        out[f"overlap_efficiency_{p}_priority"] = longer / out.get(f"concurrent_{p}_priority", nan)
    for spec in green:
        who, sms = spec.split(":")
        name = f"green_{who}_{sms}"
        try:
            stream = green_stream(dev, int(sms))
        except RuntimeError as e:
            out[f"{name}_error"] = str(e)[:300]
            continue
        if who == "draft":
            gside = SideBranch(dev, stream=stream)
            _timed(alone(gside, draft), state, f"{name}_alone", out)
            _timed(forked(gside), state, name, out)
        else:
            gside = SideBranch(dev, stream=stream, lane="main")
            _timed(alone(gside, verify), state, f"{name}_alone", out)
            _timed(forked(SideBranch(dev, priority=-1), gside), state, name, out)
        if name not in out:  # one capture could not fork onto the green stream: two graphs
            try:
                side_fn, main_fn = (draft, verify) if who == "draft" else (verify, draft)
                out[f"{name}_two_graphs"] = _two_graphs_ms(
                    lambda: _in_lane("side" if who == "draft" else "main", side_fn), stream,
                    lambda: _in_lane("main" if who == "draft" else "side", main_fn), state)
            except RuntimeError as e:
                out[f"{name}_two_graphs_error"] = str(e).splitlines()[0][:300]
        best = out.get(name, out.get(f"{name}_two_graphs"))
        if best is not None:
            out[f"{name}_efficiency"] = longer / best
    return out


def _in_lane(name, fn):
    with kernels.lane(name):
        return fn()


def engine_rates(target, draft, tr, dr, ks, alphas, prompt_len, new_tokens, batch, rec) -> None:
    vocab = min(target.model.config.vocab_size, draft.model.config.vocab_size)
    bp = gpu_bench.prompts(batch, prompt_len, vocab, seed=batch)
    t_base, _, (ref, _) = gpu_bench.run_engine(target, None, bp, new_tokens, 0, tr)
    rec(f"b{batch}_target_alone_tok_s", batch / t_base, f"batch {batch}: target alone {batch / t_base:.0f} tok/s")
    for alpha in alphas:
        for k in ks:
            for overlap in (False, True):
                drafter = OverlapOracle(draft, dr, ref, [prompt_len] * batch, alpha, vocab)
                t, _, (toks, stats) = gpu_bench.run_engine(target, drafter, bp, new_tokens, k, tr, overlap=overlap)
                acc = sum(s.accepted_tokens for s in stats) / max(1, sum(s.draft_tokens for s in stats))
                per_round = sum(s.accepted_tokens + s.rounds for s in stats) / max(1, sum(s.rounds for s in stats))
                key = f"b{batch}_a{alpha}_k{k}_{'overlap' if overlap else 'plain'}"
                rec(key, {"tok_s": batch / t, "speedup": t_base / t, "acceptance": acc, "tokens_per_round": per_round,
                          "match": sum(a == b for a, b in zip(toks, ref)) / batch},
                    f"batch {batch} α={alpha} k={k} {'overlapped' if overlap else 'plain'}: {batch / t:.0f} tok/s, "
                    f"x{t_base / t:.2f}, acceptance {acc:.3f}, {per_round:.2f} tokens/round")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="qwen", choices=sorted(gpu_bench.CONFIGS))
    ap.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3, 5])
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.9, 0.8])
    ap.add_argument("--batches", nargs="+", type=int, default=[1])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--pdl", nargs="+", default=["on/on", "on/off"], metavar="TARGET/DRAFT",
                    help="programmatic dependent launch in the target's and the draft's kernels, per variant")
    ap.add_argument("--green", nargs="*", default=["verify:112", "verify:96", "draft:32", "draft:64"],
                    metavar="WHO:SMS", help="branches with the draft's or the verify's on a CUDA green context of "
                    "SMS SMs (torch.cuda.green_contexts), the other on the whole GPU")
    ap.add_argument("--no-engine", action="store_true", help="the branch timings only")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="h200-overlap-probe")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{args.tag}"
    results = {"date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "args": vars(args), "pair": args.pair}

    def rec(key, value, msg=None):
        results[key] = value
        (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
        if msg:
            print(msg, flush=True)

    tcfg, dcfg = gpu_bench.CONFIGS[args.pair]()
    target = gpu_bench.build(tcfg, "target", oracle_target=True)
    draft = gpu_bench.build(dcfg, "draft")
    P = args.prompt_len
    runners = {}
    for variant in args.pdl:
        tp, dp = (part == "on" for part in variant.split("/"))
        tr = ModelRunner(target.model, graphs=True, compile=True, pdl=tp)
        dr = ModelRunner(draft.model, graphs=True, compile=True, pdl=dp)
        runners[variant] = (tr, dr)
        rec(f"{variant}_decode_steps", {"target": tr.describe(), "draft": dr.describe()})
        t1 = gpu_bench.step_time(tr, 1, 1, P) * 1e3
        d1 = gpu_bench.step_time(dr, 1, 1, P) * 1e3
        rec(f"{variant}_step_ms", {"target_q1": t1, "draft_q1": d1},
            f"PDL {variant}: target step {t1:.3f} ms, draft step {d1:.3f} ms (c {d1 / t1:.3f})")
        for k in args.ks:
            v = gpu_bench.step_time(tr, 1, k + 1, P) * 1e3
            b = branches(tr, dr, k, P, args.green)
            b["verify_step_ms"] = v
            for alpha in args.alphas:
                b[f"predicted_overlapped_speedup_a{alpha}"] = metrics.overlapped_speedup(alpha, k, d1 / t1, v / t1)
                b[f"predicted_plain_speedup_a{alpha}"] = metrics.speedup_at_round_costs(alpha, k, d1 / t1, v / t1)
            rec(f"{variant}_k{k}_branches", b, f"PDL {variant}, k {k} ({k + 1} draft steps): " + ", ".join(
                f"{key} {value:.3f}" if isinstance(value, float) else f"{key}: {value}" for key, value in b.items()))
    if not args.no_engine:
        # the engine on the variant whose overlapped branches came out fastest at the middle k
        mid = args.ks[len(args.ks) // 2]
        best = min(args.pdl, key=lambda v: results[f"{v}_k{mid}_branches"]["concurrent_high_priority"])
        tr, dr = runners[best]
        rec("engine_pdl_variant", best)
        for batch in args.batches:
            engine_rates(target, draft, tr, dr, args.ks, args.alphas, P, args.new_tokens, batch, rec)
    lines = [f"# {stem}", "", f"{results['device']}, torch {results['torch']}, pair {args.pair} (random weights of the "
             f"real configs), bf16, prompt {P}; ms per captured graph", "",
             "| PDL target/draft | k | verify | k+1 draft steps | in sequence | two streams (high) | two streams (default) "
             "| efficiency (high) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    nan = float("nan")
    for variant in args.pdl:
        for k in args.ks:
            b = results[f"{variant}_k{k}_branches"]
            lines.append(f"| {variant} | {k} | {b.get('verify', nan):.3f} | {b.get('draft_chain', nan):.3f} | "
                         f"{b.get('sequential', nan):.3f} | {b.get('concurrent_high_priority', nan):.3f} | "
                         f"{b.get('concurrent_default_priority', nan):.3f} | "
                         f"{b['overlap_efficiency_high_priority']:.2f} |")
    if args.green:
        lines += ["", "Green contexts (`WHO:SMS`: that branch on SMS SMs, the other on the whole GPU; ms, or the "
                  "error):", "", "| PDL target/draft | k | branch | that branch alone there | both | efficiency |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for variant in args.pdl:
            for k in args.ks:
                b = results[f"{variant}_k{k}_branches"]
                for spec in args.green:
                    name = "green_" + spec.replace(":", "_")
                    both = b.get(name, b.get(f"{name}_two_graphs"))
                    err = b.get(f"{name}_error") or b.get(f"{name}_two_graphs_error")
                    alone = b.get(f"{name}_alone")
                    lines.append(f"| {variant} | {k} | {spec} | {'' if alone is None else f'{alone:.3f}'} | "
                                 f"{f'{both:.3f}' if both is not None else err} | "
                                 f"{'' if both is None else format(b[f'{name}_efficiency'], '.2f')} |")
    rows = [(key, v) for key, v in results.items() if isinstance(v, dict) and "tok_s" in v]
    if rows:
        lines += ["", "| run | tok/s | speedup | acceptance | tokens/round | match |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {key} | {v['tok_s']:.0f} | {v['speedup']:.2f}x | {v['acceptance']:.3f} | "
                  f"{v['tokens_per_round']:.2f} | {v['match']:.2f} |" for key, v in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
