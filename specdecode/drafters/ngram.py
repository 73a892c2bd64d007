"""Prompt lookup decoding: the n-gram drafter (no model).

Per row, take the last n tokens of the row's history (prompt + tokens emitted so far, the
newest token `last` included), for n from `max_ngram` down to `min_ngram`, and find the
MOST RECENT earlier occurrence of that n-gram in the same history. Propose the up to k
tokens that followed it. When the continuation runs into the end of the history, it keeps
copying from the tokens it has just proposed, so a repeating pattern continues with its
period (a loop "a b c a b c" proposes "a b c a ..." rather than stopping at the end).
A row with no match proposes nothing (`num_proposed[b] = 0`); the round then costs one
ordinary target step for it. This is the idea of Saxena's prompt lookup decoding (Hugging
Face's `prompt_lookup_num_tokens`), batched: each row looks up its own context.

The lookup is host-side and incremental: per row and n, a dict maps each n-gram to the
newest position where it starts, updated only with the tokens added since the last round,
so a round costs O(new tokens) per row, not O(history).

The draft is deterministic, so `Draft.probs` is None and sampling treats it as one-hot q
(exact: verify.py). Ids the target cannot emit (>= target_rows, e.g. added tokenizer
tokens) end a proposal. The proposal width is the longest proposal in the batch (at
most k), so a round where no row matched verifies one position, like plain decoding.

What it does not: run a model, choose k, or look outside the row's own history.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..decoding.drafting import Draft, DraftState

__all__ = ["NgramDrafter", "NgramIndex", "lookup"]


class NgramIndex:
    """n-gram -> newest start position, for one growing history (n = min_ngram .. max_ngram).

    Only n-grams that end before the history's final token are indexed, so a lookup of the
    history's own suffix finds an *earlier* occurrence, never itself.
    """

    def __init__(self, min_ngram: int, max_ngram: int) -> None:
        self.min_ngram = min_ngram
        self.max_ngram = max_ngram
        self._reset(None)

    def _reset(self, history: list[int] | None) -> None:
        self.tables: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(self.min_ngram, self.max_ngram + 1)}
        self.next_start: dict[int, int] = {n: 0 for n in self.tables}  # first start not yet indexed
        self.history = history  # the list this index follows (the engine appends to it in place)
        self.indexed_len = 0

    def sync(self, history: list[int]) -> None:
        """Index the tokens added since the last call (rebuild if the history is another list or shrank)."""
        if history is not self.history or len(history) < self.indexed_len:
            self._reset(history)
        length = len(history)
        for n, table in self.tables.items():
            # n-grams starting at s <= length - n - 1 end before the final token
            for s in range(self.next_start[n], length - n):
                table[tuple(history[s : s + n])] = s
            self.next_start[n] = max(self.next_start[n], length - n)
        self.indexed_len = length

    def propose(self, k: int, limit: int) -> list[int]:
        """Up to k tokens that followed the newest earlier occurrence of the longest matching suffix."""
        h = self.history
        if h is None or k <= 0:
            return []
        length = len(h)
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if length < n + 1:
                continue
            start = self.tables[n].get(tuple(h[length - n :]))
            if start is None:
                continue
            out: list[int] = []
            src = start + n  # < length: the match ends before the final token
            for j in range(k):
                i = src + j
                tok = h[i] if i < length else out[i - length]  # past the end: copy the proposal (period)
                if tok < 0 or tok >= limit:
                    break
                out.append(tok)
            return out
        return []


def lookup(history: list[int], k: int, max_ngram: int = 3, min_ngram: int = 1, limit: int | None = None) -> list[int]:
    """One-shot prompt lookup on a history (for tests and `inspect`): the tokens NgramDrafter proposes."""
    index = NgramIndex(min_ngram, max_ngram)
    index.sync(history)
    return index.propose(k, limit if limit is not None else 1 << 62)


class NgramDrafter:
    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.indexes: list[NgramIndex] = []

    on_device = False  # the lookup reads the host-side histories

    def prefill(self, input_ids: Tensor, lengths: Tensor, max_len: int) -> None:
        # histories arrive with every propose(); only the per-row indexes need a fresh start
        self.indexes = [NgramIndex(self.min_ngram, self.max_ngram) for _ in range(input_ids.shape[0])]

    def propose(self, state: DraftState, k: int) -> Draft:
        rows = len(state.histories)
        if len(self.indexes) != rows:
            self.indexes = [NgramIndex(self.min_ngram, self.max_ngram) for _ in range(rows)]
        proposals: list[list[int]] = []
        for index, history in zip(self.indexes, state.histories):
            index.sync(history)
            proposals.append(index.propose(k, state.target_rows))
        width = max((len(p) for p in proposals), default=0)
        # padding: any valid id (never accepted past num_proposed)
        tokens = [p + [0] * (width - len(p)) for p in proposals]
        # host tensors: the engine moves them into the round's device buffers without a sync
        return Draft(
            tokens=torch.tensor(tokens, dtype=torch.long).reshape(rows, width),  # [B, <=k]
            probs=None,
            num_proposed=torch.tensor([len(p) for p in proposals], dtype=torch.long),  # [B]
        )

    def observe(self, num_accepted: Tensor) -> None:
        """Nothing to do: the next history already holds what was emitted."""

    def select_rows(self, rows: Tensor) -> None:
        if self.indexes:
            self.indexes = [self.indexes[i] for i in rows.tolist()]
