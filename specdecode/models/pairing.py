"""Can this draft propose tokens for this target? Tokenizer and vocabulary checks.

Speculative decoding verifies token ids, so draft and target must give every token the
same id. Embedding tables of different sizes over one tokenizer are normal (Gemma 3 270M
has 262144 rows and 4B 262208; Qwen2.5 0.5B 151936 and 7B 152064): the engine verifies
over the target's rows and never lets the draft propose an id the target cannot emit.

What it does not: load models, or judge whether the draft is any *good* (that is the
acceptance rate, measured by bench and inspect --measure).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PairReport", "check_pair"]

_SPECIALS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


@dataclass
class PairReport:
    compatible: bool
    target_vocab: int  # tokenizer entries
    draft_vocab: int
    target_rows: int  # output embedding rows
    draft_rows: int
    shared_rows: int  # ids the draft may propose: min of the two tables
    reasons: list[str] = field(default_factory=list)  # why not compatible
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "compatible": self.compatible,
            "target_vocab": self.target_vocab,
            "draft_vocab": self.draft_vocab,
            "target_rows": self.target_rows,
            "draft_rows": self.draft_rows,
            "shared_rows": self.shared_rows,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
        }


def check_pair(target_tok, draft_tok, target_rows: int, draft_rows: int) -> PairReport:
    """Compare two tokenizers token by token (not only sizes) and the two embedding tables."""
    tv = target_tok.get_vocab()
    dv = draft_tok.get_vocab()
    reasons: list[str] = []
    warnings: list[str] = []
    if tv != dv:
        differ = [t for t in dv.keys() & tv.keys() if dv[t] != tv[t]]
        only_d = sorted(dv.keys() - tv.keys(), key=lambda t: dv[t])
        only_t = sorted(tv.keys() - dv.keys(), key=lambda t: tv[t])
        if differ:
            t = sorted(differ, key=lambda t: dv[t])[0]
            reasons.append(
                f"{len(differ)} tokens have different ids (e.g. {t!r} is {tv[t]} in the target, {dv[t]} in the draft)"
            )
        # extra entries past the shared range are harmless when they sit beyond the draft's table
        if only_d:
            reasons.append(f"{len(only_d)} draft tokens are unknown to the target (e.g. {only_d[0]!r})")
        if only_t:
            if len(only_t) <= max(8, len(tv) // 1000) and all(tv[t] >= len(dv) for t in only_t):
                warnings.append(f"target tokenizer adds {len(only_t)} tokens past the draft's (e.g. {only_t[0]!r})")
            else:
                reasons.append(f"{len(only_t)} target tokens are unknown to the draft (e.g. {only_t[0]!r})")
    for attr in _SPECIALS:
        a, b = getattr(target_tok, attr, None), getattr(draft_tok, attr, None)
        if a != b:
            warnings.append(f"{attr.removesuffix('_id')} differs: target {a}, draft {b}")
    if target_rows != draft_rows:
        warnings.append(
            f"embedding tables differ ({draft_rows} draft rows, {target_rows} target rows): "
            f"the draft proposes only ids below {min(target_rows, draft_rows)}"
        )
    if reasons:
        reasons.insert(0, "draft and target tokenizers differ")
    return PairReport(
        compatible=not reasons,
        target_vocab=len(tv),
        draft_vocab=len(dv),
        target_rows=target_rows,
        draft_rows=draft_rows,
        shared_rows=min(target_rows, draft_rows),
        reasons=reasons,
        warnings=warnings,
    )
