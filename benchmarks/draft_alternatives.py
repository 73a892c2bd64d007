"""Two ways past a chain of k draft tokens, replayed on the real pair's greedy traces (CPU, issue 14).

    python3 benchmarks/draft_alternatives.py traces --target DIR --draft DIR [--n 20] --out FILE.json
    python3 benchmarks/draft_alternatives.py simulate --traces FILE.json [--cost 1.65 0.575] [--verify-row 0.012]

Under greedy decoding a round's outcome follows from the target's own answer (policy_sim.py's
argument): until the first mismatch the draft's context is the target's. `traces` generates the
target's greedy answer to each of the 20 Spec-Bench coding prompts (real_pair.py's prompt file,
``specdecode`` with drafter none, fp32 on the CPU), runs the draft once over prompt + answer and
keeps, per answer position, the draft's four most likely tokens, with the prompt's token ids.

`simulate` replays rounds at the H200's measured round costs (a k-token chain costs A + B k ms;
target alone 1.25 ms a token: benchmarks/results/2026-12-03-h200-stop24-notes.md) and prints
each alternative's speedup over the target alone, next to the chain's:

- siblings: each draft position also proposes the draft's next 1-3 most likely tokens, verified
  in the same forward as a token tree (SpecInfer-style; each sibling one more verify row, priced
  at --verify-row ms). When the chain breaks at position i and a sibling there is the target's
  token, the round keeps it and the target's token after it: one token more than the chain.
  The draft's cost is unchanged (the siblings come from the logits it computes anyway).
- n-gram: prompt lookup (the longest suffix of 1-3 tokens found earlier in prompt + answer
  proposes what followed it), free to draft; a round that uses it costs a verify of K + 1 rows
  and no draft steps. Alone, and as a hybrid that uses it when the suffix match is at least n
  tokens long (else the model's chain), deciding with the current round's context (an oracle
  for the engine, whose host sees rounds one late) and one round late.
- chain + n-gram extension: after a round that kept all k draft tokens, the n-gram proposal
  continues from them in the same verify.

A model of rounds, not a measurement: the measure of record is `specdecode bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def coding_prompts() -> list[str]:
    """real_pair.py's 20 coding prompts: Spec-Bench's 10 coding questions, first turn alone and both turns."""
    spec = [json.loads(x) for x in (SHARED / "spec_bench" / "question.jsonl").read_text().splitlines() if x.strip()]
    coding = [q for q in spec if q.get("category") == "coding"]
    return [q["turns"][0] for q in coding] + [q["turns"][0] + "\n\n" + q["turns"][1] for q in coding]


def traces(args) -> None:
    from policy_sim import answers

    rows = []
    for ids, answer, logits in answers(args, coding_prompts()):
        top = logits.topk(4, dim=-1).indices.tolist()
        rows.append({"prompt": ids, "tokens": answer, "top": top})
        agree = sum(t[0] == a for t, a in zip(top, answer)) / max(1, len(answer))
        print(f"{len(rows)}: {len(answer)} tokens, agreement {agree:.3f}", flush=True)
        Path(args.out).write_text(json.dumps({"prompts": "Spec-Bench coding (real_pair.py's 20)", "rows": rows}))


def ngram(ctx: list[int], k: int, longest: int = 3) -> tuple[int, list[int]]:
    """(length of the suffix matched, up to k tokens that followed its latest earlier occurrence)."""
    for n in range(longest, 0, -1):
        if len(ctx) <= n:
            continue
        pat = ctx[-n:]
        for s in range(len(ctx) - n - 1, -1, -1):
            if ctx[s:s + n] == pat:
                return n, ctx[s + n:s + n + k]
    return 0, []


def run(rows, cost, policy: str, k: int = 5, sib: int = 0, K: int = 5, least: int = 2, late: bool = False,
        ext: bool = False, target_ms: float = 1.25, verify_row: float = 0.012) -> float:
    """Speedup over the target alone (tokens after the first, over the rounds' modelled time)."""
    tokens = ms = 0.0
    for r in rows:
        ans, top, prompt = r["tokens"], r["top"], r["prompt"]
        n = len(ans)
        e = prev = 1
        while e < n:
            found, prop = ngram(prompt + ans[:e], K)
            seen = ngram(prompt + ans[:prev], K)[0] if late else found
            if policy == "ngram" or (policy == "hybrid" and seen >= least):
                a = 0
                while a < len(prop) and e + a < n and prop[a] == ans[e + a]:
                    a += 1
                ms += cost_verify(cost, K, verify_row)
            else:
                a = 0
                while a < k and e + a < n:
                    t = top[e + a]
                    if t[0] == ans[e + a]:
                        a += 1
                        continue
                    if any(t[j] == ans[e + a] for j in range(1, 1 + sib)):
                        a += 1  # a sibling kept; the target's token after it is the round's last
                    break
                if ext and a == k:
                    more = ngram(prompt + ans[:e + k], K)[1]
                    x = 0
                    while x < len(more) and e + k + x < n and more[x] == ans[e + k + x]:
                        x += 1
                    a += x
                ms += cost(k) + verify_row * (sib * k + (K if ext else 0))
            prev = e
            e += a + 1
        tokens += n - 1
    return tokens / ms * target_ms


def cost_verify(cost, K: int, verify_row: float) -> float:
    """A round with no draft steps: the chain's fixed cost, less the 5 rows' verify it prices, plus K + 1 rows'."""
    return cost(0) + verify_row * (K - 5)


def simulate(args) -> None:
    rows = json.loads(Path(args.traces).read_text())["rows"]
    A, B = args.cost
    cost = lambda k: A + B * k  # noqa: E731
    out: dict = {"cost": [A, B], "verify_row_ms": args.verify_row, "answers": len(rows), "results": {}}

    def put(name, value):
        out["results"][name] = value
        print(f"{name:44s} {value:.3f}x")

    vr = args.verify_row
    for k in (3, 4, 5, 6, 7):
        put(f"chain k{k}", run(rows, cost, "chain", k=k, verify_row=vr))
        for sib in (1, 2, 3):
            put(f"chain k{k} + {sib} sibling(s) a position", run(rows, cost, "chain", k=k, sib=sib, verify_row=vr))
    for K in (3, 5, 8, 10):
        put(f"n-gram alone, K {K}", run(rows, cost, "ngram", K=K, verify_row=vr))
    for least in (1, 2, 3):
        for K in (5, 8, 10):
            put(f"hybrid (match >= {least}), K {K}", run(rows, cost, "hybrid", K=K, least=least, verify_row=vr))
            put(f"hybrid (match >= {least}), K {K}, one round late",
                run(rows, cost, "hybrid", K=K, least=least, late=True, verify_row=vr))
    for K in (3, 5, 8):
        put(f"chain k5 + n-gram extension K {K}", run(rows, cost, "chain", k=5, K=K, ext=True, verify_row=vr))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    from policy_sim import trace_arguments

    trace_arguments(sub.add_parser("traces"))
    s = sub.add_parser("simulate")
    s.add_argument("--traces", required=True)
    s.add_argument("--cost", nargs=2, type=float, default=[1.65, 0.575], metavar=("A", "B"))
    s.add_argument("--verify-row", type=float, default=0.012, help="ms a verify row adds (tree siblings, n-gram K)")
    s.add_argument("--out", default=None)
    args = ap.parse_args()
    traces(args) if args.cmd == "traces" else simulate(args)


if __name__ == "__main__":
    main()
