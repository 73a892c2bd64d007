"""`--k auto` policies replayed on a real pair's agreement traces, against every fixed k (CPU).

    python3 benchmarks/policy_sim.py traces --target DIR --draft DIR --prompts FILE.jsonl [--n 20] --out FILE.json
    python3 benchmarks/policy_sim.py simulate --traces FILE.json [--cost 1.65 0.575] [--max-k 8]
    python3 benchmarks/policy_sim.py overlap --traces FILE.json [--extra 0.27 0.2 0.15 0] [--out FILE.json]
    python3 benchmarks/policy_sim.py hybrid --traces TOP4.json [--min-ngram 1 2 3] [--out FILE.json]
    python3 benchmarks/policy_sim.py staged --traces TOP4.json [--steps 2 3 4 5] [--out FILE.json]
    python3 benchmarks/policy_sim.py draft-probs --traces TOP4.json --draft DIR [--gguf-file NAME] --out PROBS.json
    python3 benchmarks/policy_sim.py draft-probs --traces AGREEMENT.json --prompts FILE.jsonl --draft DIR ... --out PROBS.json
    python3 benchmarks/policy_sim.py confidence --traces TOP4.json|AGREEMENT.json --probs PROBS.json [--out FILE.json]

Under greedy decoding a round's outcome needs no draft run of its own: until the first
mismatch the draft's context is the target's, so the draft's k proposals from position t are
accepted up to the first position j >= t where the draft's prediction, teacher-forced on the
target's own output, differs from the target's token. `traces` generates the target's greedy
answer to each prompt through `specdecode` (drafter none) and runs the draft once over prompt +
answer: `match[j]` says whether the draft's prediction of answer token j is that token.

`simulate` replays rounds on those traces: a round at answer position e with k draft tokens
accepts a = the run of matches from e (at most k) and emits a + 1 tokens; it costs
cost(k) = A + B k ms (default: the Qwen2.5-Coder 0.5B/1.5B pair's rounds on the H200,
benchmarks/results/2026-12-03-h200-stop24-notes.md). Policies see each round's counts one round
late, as the engine's look-ahead does. Prints tokens per ms for every fixed k, `--k auto`'s
policy (and variants: other decays, an acceptance estimate per position), and the best
two-state rule fitted on the traces themselves (an optimistic bound on what adapting k can gain).
This is a model of rounds, not a measurement: the measure of record is `specdecode bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def answers(args, prompts: list[str]):
    """For each prompt (the first args.n): (its token ids, the target's greedy answer through
    `specdecode` with drafter none, fp32 on the CPU, and the draft's logits [len(answer), V] at
    each answer position, teacher-forced on prompt + answer)."""
    import torch
    from transformers import AutoModelForCausalLM

    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    dec = SpeculativeDecoder.from_settings(Settings(target=args.target, drafter="none", device="cpu",
                                                    dtype="float32", max_new_tokens=args.max_new_tokens))
    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    for p in prompts[: args.n]:
        ids = dec.encode_all([p])[0]
        answer = dec.generate([p])[0].token_ids
        with torch.no_grad():
            logits = draft(torch.tensor([ids + answer])).logits[0]
        yield ids, answer, logits[len(ids) - 1 : len(ids) + len(answer) - 1]


def trace_arguments(parser) -> None:
    """The `traces` subcommand's model and length arguments (shared with draft_alternatives.py)."""
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", required=True)


def traces(args) -> None:
    prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    rows = []
    for ids, answer, logits in answers(args, prompts):
        pred = logits.argmax(-1).tolist()
        rows.append({"prompt_tokens": len(ids), "tokens": answer, "match": [int(a == b) for a, b in zip(pred, answer)]})
        print(f"{len(rows)}/{min(args.n, len(prompts))}: {len(answer)} tokens, agreement "
              f"{sum(rows[-1]['match']) / max(1, len(answer)):.3f}", flush=True)
        Path(args.out).write_text(json.dumps({"prompts": args.prompts, "rows": rows}))


def accepted_at(match: list[int], e: int, k: int) -> int:
    """A plain round at answer position e with k draft tokens: how many it accepts (the run of
    matches from e, at most k, within the answer)."""
    a = 0
    while a < k and e + a < len(match) and match[e + a]:
        a += 1
    return a


def run_prompt(match: list[int], choose, cost) -> tuple[int, float, list[int]]:
    """Rounds over one answer: (tokens emitted after the first, ms, k of every round).
    choose(history) -> k, where history holds (accepted, proposed) of the rounds read so far
    (all but the last one launched: look-ahead)."""
    n = len(match)
    e, ms, ks, done = 1, 0.0, [], []
    while e < n:
        k = choose(done[:-1])
        a = accepted_at(match, e, k)
        ms += cost(k)
        ks.append(k)
        done.append((a, k))
        e += a + 1
    return min(e, n) - 1, ms, ks


def run_overlapped(match: list[int], k: int) -> tuple[int, int]:
    """Overlapped rounds (`--overlap`, decoding/round.py's run_overlapped_round) over one answer:
    (tokens emitted after the first, rounds). Greedy, so exact on the traces: a round with a good
    proposal tests answer positions e .. e+k (e_1 .. e_k and the draft's guess f_1, each drafted on
    the target's own path while the ones before it hold), emits up to its first miss (inclusive)
    and keeps a good proposal only when all k+1 hold; a round without one tests position e alone
    (f_1, drafted from `last`), emits one token, and is followed by a good one when it holds."""
    n = len(match)
    e, rounds, good = 1, 0, False
    while e < n:
        tests = k + 1 if good else 1
        kept = accepted_at(match, e, tests)
        rounds += 1
        good = kept == tests
        e += min(kept + 1, tests) if good else kept + 1
    return min(e, n) - 1, rounds


def overlap(args) -> None:
    """Overlapped against plain rounds on the traces, priced by a draft step's extra cost beside
    the verify (x): an overlapped round at k costs max(verify(k+1) + x (k+1), (k+1) draft steps)."""
    from specdecode import metrics

    rows = json.loads(Path(args.traces).read_text())["rows"]
    verify = dict(zip(range(2, 2 + len(args.verify)), args.verify))  # rows -> ms
    D, T = args.draft_step, args.target_step
    accepted = sum(sum(r["match"][1:]) for r in rows)
    out = {"traces": args.traces, "answers": len(rows), "verify_ms": verify, "draft_step_ms": D,
           "target_step_ms": T, "plain": {}, "overlapped": {}}
    # α as bench estimates it, from plain rounds at k 5: accepted / (accepted + rounds with a rejection)
    acc = rej = 0
    for r in rows:
        m, e = r["match"], 1
        while e < len(m):
            a = accepted_at(m, e, 5)
            acc, rej = acc + a, rej + (a < 5 and e + a < len(m))
            e += a + 1
    alpha = acc / (acc + rej)
    out["alpha_k5"] = alpha
    print(f"{len(rows)} answers; α at k 5 {alpha:.3f}; matches {accepted}; target step {T} ms, draft step {D} ms")
    for k in sorted(r - 1 for r in verify):
        tokens = rounds = 0
        for r in rows:  # plain rounds at k: k draft steps, then the verify of k+1 rows
            t, _, ks = run_prompt(r["match"], lambda hist, k=k: k, lambda k: 0.0)
            tokens, rounds = tokens + t, rounds + len(ks)
        ms = rounds * (k * D + verify[k + 1])
        out["plain"][k] = {"tokens_per_round": tokens / rounds, "tokens_per_ms": tokens / ms,
                           "speedup": tokens / ms * T}
        tokens = rounds = 0
        for r in rows:
            t, n_rounds = run_overlapped(r["match"], k)
            tokens, rounds = tokens + t, rounds + n_rounds
        row = {"tokens_per_round": tokens / rounds,
               "tokens_per_round_iid": metrics.overlapped_tokens_per_round(alpha, k)}
        for x in args.extra:
            cost = max(verify[k + 1] + x * (k + 1), (k + 1) * D)
            row[f"x{x}"] = {"round_ms": cost, "tokens_per_ms": tokens / (rounds * cost),
                            "speedup": tokens / (rounds * cost) * T}
        out["overlapped"][k] = row
        p = out["plain"][k]
        print(f"k {k}: plain {p['tokens_per_round']:.2f} tokens/round, {p['tokens_per_ms']:.3f} tokens/ms "
              f"({p['speedup']:.2f}x) | overlapped {row['tokens_per_round']:.2f} tokens/round (i.i.d. model "
              f"{row['tokens_per_round_iid']:.2f}); " + "; ".join(
                  f"x {x}: {row[f'x{x}']['tokens_per_ms']:.3f} tokens/ms ({row[f'x{x}']['speedup']:.2f}x)"
                  for x in args.extra))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def hybrid(args) -> None:
    """Prompt lookup where it finds a match, the draft model elsewhere (a candidate drafter, priced
    here before anything is built): per round, the n-gram lookup of `drafters/ngram.py` over the
    prompt and the answer so far; a match of at least --min-ngram tokens makes an n-gram round (its
    proposal of up to --ngram-k tokens verified alone: no draft steps, then one draft forward over
    the emitted tokens so the draft's cache catches up), otherwise a plain model round at k. Greedy,
    so exact on traces that hold the prompt's token ids (`prompt`) and the draft's choices (`match`,
    or `top`: its top tokens, the first being its choice). A round costs its steps plus --glue ms."""
    from specdecode.drafters.ngram import NgramIndex

    rows = json.loads(Path(args.traces).read_text())["rows"]
    verify, v = verify_costs(args)  # past the measured rows: the last one's cost (a small underestimate)

    D, T, G = args.draft_step, args.target_step, args.glue
    out = {"traces": args.traces, "answers": len(rows), "verify_ms": verify, "draft_step_ms": D, "target_step_ms": T,
           "glue_ms": G, "catch_up_ms": args.catch_up, "k": args.k, "runs": {}}
    for policy in ("model", "ngram", "hybrid"):
        for min_n in ([1] if policy == "model" else args.min_ngram):
            tokens = ms = 0.0
            count = {"model": 0, "ngram": 0}
            ngram_tokens = 0
            for r in rows:
                prompt, toks = r["prompt"], r["tokens"]
                match = r.get("match") or [int(t[0] == x) for t, x in zip(r["top"], toks)]
                index = NgramIndex(min_n, max(3, min_n))
                e = 0
                while e < len(toks):
                    proposal = []
                    if policy != "model":
                        index.sync(prompt + toks[:e])
                        proposal = index.propose(args.ngram_k, 1 << 62)
                    if policy == "ngram" or (policy == "hybrid" and proposal):
                        a = 0
                        while a < len(proposal) and e + a < len(toks) and proposal[a] == toks[e + a]:
                            a += 1
                        cost = v(len(proposal) + 1) + G + (args.catch_up if policy == "hybrid" else 0.0)
                        count["ngram"] += 1
                        ngram_tokens += min(a + 1, len(toks) - e)
                    else:
                        a = accepted_at(match, e, args.k)
                        cost = args.k * D + v(args.k + 1) + G
                        count["model"] += 1
                    emitted = min(a + 1, len(toks) - e)
                    tokens, ms, e = tokens + emitted, ms + cost, e + emitted
            name = policy if policy == "model" else f"{policy}_min{min_n}"
            row = {"tokens_per_ms": tokens / ms, "speedup": tokens / ms * T, "rounds": count,
                   "ngram_tokens_per_round": ngram_tokens / count["ngram"] if count["ngram"] else None}
            out["runs"][name] = row
            per = row["ngram_tokens_per_round"]
            print(f"{name:14s} {row['tokens_per_ms']:.3f} tokens/ms ({row['speedup']:.2f}x), rounds {count}"
                  + (f", {per:.2f} tokens an n-gram round" if per is not None else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def staged(args) -> None:
    """Staged drafting (a candidate, priced here before anything is built): prompt lookup
    speculates for the draft model the way the draft speculates for the target. After a round's
    first draft step ([prev, last], two rows already), each of its --steps draft steps runs two
    rows, the draft's newest token and the lookup's guess of the token after it; when the
    draft's own choice there equals the guess, the step has drafted two tokens instead of one.
    A round of S steps so drafts S to 2S - 1 tokens and verifies a fixed 2S rows (one captured
    shape; the rows past a round's proposal are masked). Against plain rounds of k draft tokens
    (first step two rows, the rest one) on the same traces and step costs. Greedy, exact on the
    draft-top4 traces (`prompt`, `top`): until the first mismatch the draft's context is the
    target's, and after it nothing the round drafts is accepted."""
    from specdecode.drafters.ngram import NgramIndex

    rows = json.loads(Path(args.traces).read_text())["rows"]
    verify, v = verify_costs(args)  # past the measured rows: the last one's cost (a small underestimate)

    one, two, G = args.draft_step, args.two_row_step, args.glue
    out = {"traces": args.traces, "answers": len(rows), "verify_ms": verify, "draft_step_ms": one,
           "two_row_step_ms": two, "target_step_ms": args.target_step, "glue_ms": G, "runs": {}}

    def replay(steps: int, guess: bool, k: int) -> dict:
        tokens = ms = 0.0
        hits = tries = drafted_total = rounds = 0
        for r in rows:
            prompt, toks, top = r["prompt"], r["tokens"], r["top"]
            index = NgramIndex(args.min_ngram, max(3, args.min_ngram))
            e = 0
            while e < len(toks):
                if guess:
                    drafted, p, cost = 1, e + 1, two  # step 1 drafts position e
                    for _ in range(steps - 1):
                        cost += two
                        if p - 1 >= len(toks) or top[p - 1][0] != toks[p - 1]:
                            drafted += 1  # the round is decided: what it drafts now is rejected
                            p += 1
                            continue
                        index.sync(prompt + toks[:p])
                        g = index.propose(1, 1 << 62)
                        tries += 1
                        if g and p < len(toks) and g[0] == top[p][0]:  # the draft chose the guess
                            hits += 1
                            drafted, p = drafted + 2, p + 2
                        else:
                            drafted, p = drafted + 1, p + 1
                    cost += v(2 * steps) + G
                else:
                    drafted = k
                    cost = two + (k - 1) * one + v(k + 1) + G
                a = 0
                while a < drafted and e + a < len(toks) and top[e + a][0] == toks[e + a]:
                    a += 1
                emitted = min(a + 1, len(toks) - e)
                tokens, ms, e = tokens + emitted, ms + cost, e + emitted
                drafted_total, rounds = drafted_total + drafted, rounds + 1
        return {"tokens_per_ms": tokens / ms, "speedup": tokens / ms * args.target_step,
                "drafted_per_round": drafted_total / rounds, "tokens_per_round": tokens / rounds,
                "guess_taken": hits / tries if tries else None}

    for k in range(1, max(args.steps) * 2):
        out["runs"][f"plain_k{k}"] = replay(0, False, k)
    for steps in args.steps:
        out["runs"][f"staged_{steps}_steps"] = replay(steps, True, 0)
    best = max((v_["tokens_per_ms"], name) for name, v_ in out["runs"].items() if name.startswith("plain"))
    for name, row in out["runs"].items():
        taken = row["guess_taken"]
        print(f"{name:16s} {row['tokens_per_ms']:.3f} tokens/ms ({row['speedup']:.2f}x, {row['tokens_per_ms'] / best[0]:.3f} "
              f"of the best plain k), {row['drafted_per_round']:.2f} drafted and {row['tokens_per_round']:.2f} emitted a round"
              + (f", guesses taken {taken:.2f}" if taken is not None else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def trace_choices(row: dict) -> list[int]:
    """The draft's greedy choice at each answer position of a trace row: its top token (draft-top4
    traces), or, for agreement traces, the target's token where they agree (-1 where not)."""
    if "top" in row:
        return [t[0] for t in row["top"]]
    return [x if m else -1 for x, m in zip(row["tokens"], row["match"])]


def draft_probs(args) -> None:
    """The draft's top probability at every answer position of a trace file, teacher-forced on
    prompt + answer (fp32, CPU): what `confidence` replays the stop with. Checks that the draft's
    top token there is the trace's (`top[j][0]`) and says how often it is."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = json.loads(Path(args.traces).read_text())["rows"]
    extra = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32, **extra).eval()
    encode = None
    if rows and "prompt" not in rows[0]:  # agreement traces keep only the prompt's length: encode it again
        if not args.prompts:
            raise SystemExit("these traces hold no prompt ids: give --prompts, the file they were made from")
        from specdecode.api import SpeculativeDecoder
        from specdecode.settings import Settings

        # the draft's own tokenizer and chat template (the pair shares them); only encode() is used
        dec = SpeculativeDecoder.from_settings(Settings(target=args.draft, gguf_file=args.gguf_file, drafter="none",
                                                        device="cpu", dtype="float32"))
        prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        encode = dec.encode
    out, same, total = [], 0, 0
    for i, r in enumerate(rows):
        prompt = r["prompt"] if encode is None else encode(prompts[i])
        if encode is not None and len(prompt) != r["prompt_tokens"]:
            raise SystemExit(f"prompt {i} encodes to {len(prompt)} tokens, the trace says {r['prompt_tokens']}")
        ids = prompt + r["tokens"]
        with torch.no_grad():
            logits = draft(torch.tensor([ids])).logits[0, len(prompt) - 1 : len(ids) - 1].float()
        top = logits.softmax(-1).topk(2, dim=-1)
        first = top.indices[:, 0].tolist()
        out.append({"top1": first, "p1": [round(p, 5) for p in top.values[:, 0].tolist()],
                    "top2": top.indices[:, 1].tolist()})
        if "top" in r:
            same += sum(int(a == t[0]) for a, t in zip(first, r["top"]))
        else:  # agreement traces: whether the draft's choice is the target's token
            same += sum(int((a == x) == bool(m)) for a, x, m in zip(first, r["tokens"], r["match"]))
        total += len(r["tokens"])
    print(f"{len(rows)} answers: the draft's choice agrees with the trace at {same} of {total} positions")
    Path(args.out).write_text(json.dumps({"traces": args.traces, "draft": args.draft, "rows": out}))


def confidence(args) -> None:
    """`--k auto`'s confidence stop in captured rounds (a round stops drafting after a token the
    draft gave less than tau, its remaining draft steps skipped on the device by CUDA graph IF
    nodes, the verify at its full k + 1 rows), against plain rounds of the same k. `--sibling`: the
    verify also tests the draft's second choice at the last proposed position in one more row
    (a token tree; where the target rejects the last token and takes that one, the round gains
    it and the target's token after it). Greedy, exact on
    the traces (`top`: the draft's choices) with the draft's probabilities from `draft-probs`. A
    round's cost: its first step (two rows), each further step run plus --if-cost, each skipped
    step --skip-cost, the verify of k + 1 rows and --glue."""
    from specdecode.decoding.policy import AdaptiveK

    rows = json.loads(Path(args.traces).read_text())["rows"]
    probs = json.loads(Path(args.probs).read_text())["rows"]
    verify, v = verify_costs(args, slope=0.02)  # past the measured rows: the tensor-core verify's slope

    one, two, G = args.draft_step, args.two_row_step, args.glue
    out = {"traces": args.traces, "probs": args.probs, "verify_ms": verify, "draft_step_ms": one,
           "two_row_step_ms": two, "if_cost_ms": args.if_cost, "skip_cost_ms": args.skip_cost, "glue_ms": G,
           "auto_width": args.auto_width, "stop_aware": args.stop_aware, "sibling": args.sibling,
           "sibling_step_cost_ms": args.sibling_step_cost, "sibling_round_cost_ms": args.sibling_round_cost, "runs": {}}

    def verify_rows(k: int, cap: int, auto: bool) -> int:  # the verify's rows: --k auto's rounds may verify max_k
        return (cap + 1 if auto and args.auto_width == "max" else k + 1) + args.sibling

    def tree_cost(steps: int) -> float:  # --sibling's own costs in a round of `steps` draft steps run
        return (steps * args.sibling_step_cost + args.sibling_round_cost) if args.sibling else 0.0

    def full_cost(k: int, cap: int, extra: float = 0.0) -> float:
        """A round running every draft step (what --k auto's policy is given; `extra`: a step's IF node)."""
        return two + (k - 1) * (one + extra) + v(verify_rows(k, cap, True)) + G + tree_cost(k)

    def shortest_cost(k: int, cap: int) -> float:  # the same round when the stop fires after its first step
        return two + (k - 1) * args.skip_cost + v(verify_rows(k, cap, True)) + G + tree_cost(1)

    def replay(k: int, tau: float | None, auto: bool = False) -> dict:
        """tau None: the oracle (every round stops right after the draft's first wrong token).
        auto: `--k auto`'s policy (AdaptiveK, max_k = k, given the full rounds' costs) picks each
        round's k, seeing each round one round late as the engine's look-ahead does."""
        tokens = ms = steps_run = rounds = 0.0
        cap = k
        for r, p in zip(rows, probs):
            match = [int(t == x) for t, x in zip(trace_choices(r), r["tokens"])]
            conf = p["p1"]
            second = [int(t == x) for t, x in zip(p.get("top2") or [], r["tokens"])]
            if args.sibling and len(second) != len(match):
                raise SystemExit("--sibling needs draft-probs with the draft's second choices (top2)")
            policy, seen = None, []
            if auto:
                aware = args.stop_aware and tau is not None and tau > 0
                policy = AdaptiveK(max_k=cap, stop=aware)
                if aware:  # the product times both (CapturedRounds.prepare)
                    policy.set_costs({i: full_cost(i, cap, args.if_cost) for i in range(1, cap + 1)},
                                     shortest={i: shortest_cost(i, cap) for i in range(1, cap + 1)})
                else:
                    policy.set_costs({i: full_cost(i, cap) for i in range(1, cap + 1)})
            e = 0
            while e < len(match):
                k = policy.k if policy is not None else cap
                proposed = 0
                for j in range(k):
                    proposed += 1
                    low = not match[e + j] if tau is None else conf[e + j] < tau
                    if e + j + 1 >= len(match) or (j < k - 1 and low):
                        break
                a = 0
                while a < proposed and e + a < len(match) and match[e + a]:
                    a += 1
                extra = args.if_cost if tau is None or tau > 0 else 0.0
                cost = two + (proposed - 1) * (one + extra) + (k - proposed) * args.skip_cost + v(verify_rows(k, cap, auto)) + G
                if args.sibling:  # the second pick of each step run, the move and the commit's extra kernels
                    cost += proposed * args.sibling_step_cost + args.sibling_round_cost
                emitted = min(a + 1, len(match) - e)
                if args.sibling and a == proposed - 1 and e + a + 1 < len(match) and second[e + a]:
                    emitted = min(a + 2, len(match) - e)  # the sibling kept, and the target's token after it
                tokens, ms, e = tokens + emitted, ms + cost, e + emitted
                steps_run, rounds = steps_run + proposed, rounds + 1
                if policy is not None:
                    seen.append((a, proposed, k))
                    if len(seen) > 1:
                        a_, p_, k_ = seen.pop(0)
                        policy.update([a_], [p_], k=k_)
        return {"tokens_per_ms": tokens / ms, "speedup": tokens / ms * args.target_step,
                "steps_per_round": steps_run / rounds, "tokens_per_round": tokens / rounds}

    for k in args.ks:
        base = out["runs"][f"k{k}"] = replay(k, 0.0)
        line = [f"k {k}: {base['speedup']:.3f}x"]
        for tau in args.taus:
            row = out["runs"][f"k{k}_tau{tau}"] = replay(k, tau)
            line.append(f"tau {tau} {row['speedup']:.3f}x ({row['tokens_per_ms'] / base['tokens_per_ms']:.3f}, "
                        f"{row['steps_per_round']:.1f} steps)")
        row = out["runs"][f"k{k}_oracle"] = replay(k, None)
        line.append(f"oracle {row['speedup']:.3f}x")
        print(", ".join(line))
    line = [f"k auto (max_k {args.auto_max_k}): {replay(args.auto_max_k, 0.0, auto=True)['speedup']:.3f}x"]
    out["runs"]["auto"] = replay(args.auto_max_k, 0.0, auto=True)
    for tau in args.taus:
        row = out["runs"][f"auto_tau{tau}"] = replay(args.auto_max_k, tau, auto=True)
        line.append(f"tau {tau} {row['speedup']:.3f}x ({row['steps_per_round']:.1f} steps)")
    print(", ".join(line))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def positional_policy(base):
    """AdaptiveK with an acceptance estimate per draft position (a candidate, simulated only): the
    chance that position j is accepted once 1..j-1 were, from decayed counts of the rounds that
    reached it, shrunk to the pooled α̂ (two tokens' weight); positions no round reached take
    the deepest estimate. Expected tokens of k: 1 + sum over i <= k of the product of α_1..α_i."""

    class Positional(base):
        def __init__(self, max_k=8, **kw):
            self.tried = [0.0] * (max_k + 1)  # before the base class chooses its first k
            self.kept = [0.0] * (max_k + 1)
            super().__init__(max_k=max_k, **kw)

        def update(self, num_accepted, proposed, k=None):
            for a, p in zip(num_accepted, proposed):
                for j in range(1, min(a + 1, p) + 1):
                    self.tried[j] += 1
                    self.kept[j] += j <= a
            self.tried = [t * self.decay for t in self.tried]
            self.kept = [t * self.decay for t in self.kept]
            return super().update(num_accepted, proposed, k=k)

        def expected_rate(self, k):
            pooled, reach, tokens, last = self.alpha, 1.0, 1.0, None
            for j in range(1, k + 1):
                if self.tried[j] > 0.5:
                    last = (self.kept[j] + 2 * pooled) / (self.tried[j] + 2)
                reach *= last if last is not None else pooled
                tokens += reach
            return tokens / self.cost(k)

    return Positional


def simulate(args) -> None:
    from specdecode.decoding.policy import AdaptiveK

    rows = json.loads(Path(args.traces).read_text())["rows"]
    A, B = args.cost
    cost = lambda k: A + B * k  # noqa: E731
    results = {}

    def total(make):
        tokens = ms = 0.0
        ks = []
        for r in rows:
            choose = make()
            t, m, k = run_prompt(r["match"], choose, cost)
            tokens, ms, ks = tokens + t, ms + m, ks + k
        return tokens / ms, sum(ks) / len(ks)

    for k in range(1, args.max_k + 1):
        results[f"k{k}"] = total(lambda k=k: (lambda hist: k))

    def policy_factory(cls=AdaptiveK, gap=0.0, learn=False, **kw):
        """`gap`: the policy is told each round's cost minus this (its graph's device time);
        `learn`: it is told each round's wall time too, as the engine does, into one window for
        every answer (a decoder's, kept across its batches)."""
        if learn:
            from specdecode.decoding.policy import round_gaps

            kw["gaps"] = round_gaps()

        def make():
            pol = cls(max_k=args.max_k, **kw)
            pol.set_costs({k: cost(k) - gap for k in range(1, args.max_k + 1)})
            seen = [0]

            def choose(hist):
                for a, p in hist[seen[0]:]:
                    pol.update([a], [p])
                    if learn:
                        pol.observe_time(p, cost(p))
                seen[0] = len(hist)
                return pol.k
            return choose
        return make

    results["auto"] = total(policy_factory())
    if args.gap:
        results[f"auto_told_costs_less_{args.gap}"] = total(policy_factory(gap=args.gap))
        results[f"auto_learns_the_{args.gap}_gap"] = total(policy_factory(gap=args.gap, learn=True))
    for decay in (0.8, 0.95, 1.0):
        results[f"auto_decay{decay}"] = total(policy_factory(decay=decay))
    for decay in (0.9, 0.95, 1.0):
        results[f"positional_decay{decay}"] = total(policy_factory(positional_policy(AdaptiveK), decay=decay))
    # an optimistic bound on adapting k at all: the best two-state rule (k_hi after a round that kept
    # its whole block, as far as the look-ahead lets the policy know, else k_lo), fitted on these traces
    grid = []
    for lo in range(1, args.max_k + 1):
        for hi in range(1, args.max_k + 1):
            rule = lambda hist, lo=lo, hi=hi: (hi if hist[-1][0] >= hist[-1][1] else lo) if hist else 5  # noqa: E731
            grid.append((total(lambda rule=rule: rule), lo, hi))
    (rate, mk), lo, hi = max(grid, key=lambda g: g[0][0])
    results[f"two_state_fitted_lo{lo}_hi{hi}"] = (rate, mk)
    best = max((v[0], name) for name, v in results.items() if name.startswith("k") and name[1:].isdigit())
    print(f"{len(rows)} answers, cost {A} + {B} k ms a round; best fixed: {best[1]}")
    for name, (rate, mean_k) in results.items():
        print(f"{name:16s} {rate:.4f} tokens/ms ({rate / best[0]:.3f} of the best fixed k), mean k {mean_k:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"cost": [A, B], "answers": len(rows), "traces": args.traces,
                                              "results": {k: {"tokens_per_ms": v[0], "mean_k": v[1]}
                                                          for k, v in results.items()}}, indent=1))


def verify_costs(args, slope: float = 0.0):
    """(the verify's ms by rows from --target-step and --verify, a function of the rows that goes
    past the measured ones at `slope` ms a row from the last)."""
    verify = {1: args.target_step, **dict(zip(range(2, 2 + len(args.verify)), args.verify))}
    last = max(verify)
    return verify, lambda n_rows: verify.get(n_rows, verify[last] + slope * (n_rows - last))


def step_cost_arguments(parser, draft_step: float) -> None:
    """The H200 step costs the `overlap` and `hybrid` replays price rounds with (defaults: the real
    Qwen2.5-Coder 0.5B -> 1.5B pair, stop 30)."""
    parser.add_argument("--verify", nargs="+", type=float, default=[1.33, 1.41, 1.47, 1.49, 1.51],
                        help="the verify's ms at 2, 3, ... rows (default: the Qwen2.5-Coder 1.5B target on the H200)")
    parser.add_argument("--draft-step", type=float, default=draft_step, help="a draft step alone, ms")
    parser.add_argument("--target-step", type=float, default=1.209, help="the target alone, ms a token")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("traces")
    trace_arguments(t)
    t.add_argument("--prompts", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("--traces", required=True)
    s.add_argument("--cost", nargs=2, type=float, default=[1.65, 0.575], metavar=("A", "B"))
    s.add_argument("--max-k", type=int, default=8)
    s.add_argument("--gap", type=float, default=0.0,
                   help="ms of each round's wall time (--cost) that the measured round costs leave out: --k auto "
                        "is told --cost minus this, and, as the product does since stop 37, learns it from the "
                        "rounds' wall times (AdaptiveK.observe_time)")
    s.add_argument("--out", default=None)
    o = sub.add_parser("overlap")
    o.add_argument("--traces", required=True)
    step_cost_arguments(o, draft_step=0.54)
    o.add_argument("--extra", nargs="+", type=float, default=[0.27, 0.2, 0.15, 0.0],
                   help="a draft step's extra cost beside the verify, ms (stop 24: 0.26-0.28)")
    o.add_argument("--out", default=None)
    h = sub.add_parser("hybrid")
    h.add_argument("--traces", required=True, help="traces with the prompts' ids (`prompt`): the draft-top4 traces")
    h.add_argument("--k", type=int, default=5, help="draft tokens of a model round")
    h.add_argument("--ngram-k", type=int, default=8, help="tokens an n-gram round proposes at most")
    h.add_argument("--min-ngram", nargs="+", type=int, default=[1, 2, 3], help="the shortest match that makes an n-gram round")
    step_cost_arguments(h, draft_step=0.55)
    h.add_argument("--glue", type=float, default=0.2, help="a round's cost beyond its steps, ms (stop 30: 4.47 "
                   "ms a k 5 round measured against 4.27 of steps)")
    h.add_argument("--catch-up", type=float, default=0.8, help="the draft's forward over an n-gram round's tokens, ms "
                   "(a two-row draft step: 0.75)")
    h.add_argument("--out", default=None)
    g = sub.add_parser("staged")
    g.add_argument("--traces", required=True, help="traces with the prompts' ids (`prompt`): the draft-top4 traces")
    g.add_argument("--steps", nargs="+", type=int, default=[2, 3, 4, 5], help="draft steps of a staged round")
    g.add_argument("--min-ngram", type=int, default=1, help="the shortest match that makes a guess")
    step_cost_arguments(g, draft_step=0.539)
    g.add_argument("--two-row-step", type=float, default=0.616, help="a two-row draft step, ms (stop 34: 0.616 "
                   "against 0.539 for one row, 2026-12-05-h200-l2-prefetch-probe.txt)")
    g.add_argument("--glue", type=float, default=0.1, help="a round's cost beyond its steps, ms")
    g.add_argument("--out", default=None)
    d = sub.add_parser("draft-probs")
    d.add_argument("--traces", required=True, help="the draft-top4 traces (`prompt`, `tokens`, `top`)")
    d.add_argument("--draft", required=True, help="the draft model: a directory (or one holding --gguf-file)")
    d.add_argument("--gguf-file", default=None)
    d.add_argument("--prompts", default=None, help="agreement traces: the prompts file they were made from")
    d.add_argument("--out", required=True)
    c = sub.add_parser("confidence")
    c.add_argument("--traces", required=True, help="the draft-top4 traces")
    c.add_argument("--probs", required=True, help="draft-probs' output for the same traces")
    c.add_argument("--ks", nargs="+", type=int, default=[3, 4, 5, 6, 8])
    c.add_argument("--auto-max-k", type=int, default=8, help="--k auto's max_k (the settings' default: 8)")
    c.add_argument("--stop-aware", action=argparse.BooleanOptionalAction, default=True,
                   help="--k auto's policy prices the stop's skipped steps and shorter proposals (stop 36)")
    c.add_argument("--sibling", action="store_true",
                   help="a token tree of one sibling: the draft's second choice at its last proposed position, "
                        "verified in one more row (greedy; not built)")
    c.add_argument("--sibling-step-cost", type=float, default=0.006,
                   help="--sibling: the second pick's ms per draft step run (a scatter and an argmax; a guess)")
    c.add_argument("--sibling-round-cost", type=float, default=0.03,
                   help="--sibling: its ms per round beyond the verify's row (the move, the acceptance's kernels; a guess)")
    c.add_argument("--auto-width", choices=["k", "max"], default="k",
                   help="--k auto's verify: k + 1 rows, or max_k + 1 whatever k (captured rounds before stop 36)")
    c.add_argument("--taus", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    step_cost_arguments(c, draft_step=0.539)
    c.add_argument("--two-row-step", type=float, default=0.616, help="a two-row draft step, ms")
    c.add_argument("--if-cost", type=float, default=0.005, help="a step run inside an IF node: its extra ms (a guess)")
    c.add_argument("--skip-cost", type=float, default=0.01, help="a skipped step's ms (a guess)")
    c.add_argument("--glue", type=float, default=0.1, help="a round's cost beyond its steps, ms")
    c.add_argument("--out", default=None)
    args = ap.parse_args()
    {"traces": traces, "simulate": simulate, "overlap": overlap, "hybrid": hybrid, "staged": staged,
     "draft-probs": draft_probs, "confidence": confidence}[args.cmd](args)


if __name__ == "__main__":
    main()
