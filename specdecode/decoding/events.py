"""What the engine reports: one `RoundEvent` per round and row, and per-row counters (`RowStats`).

What it does not: run rounds (engine.py) or render them (cli/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..metrics import AcceptanceCounts

__all__ = ["RoundEvent", "RowStats", "TokenKind"]

TokenKind = Literal["first", "recovered", "bonus", "target"]


@dataclass(frozen=True)
class RoundEvent:
    """What one round emitted for one row (round 0 is the prefill's first token)."""

    row: int  # index of the prompt in the call
    round: int
    accepted: tuple[int, ...]  # draft tokens kept and emitted
    rejected: tuple[int, ...]  # draft tokens proposed and discarded
    token: int | None  # the target's own token (first / recovered / bonus / target); None if cut by a stop
    kind: TokenKind
    proposed: int  # draft tokens proposed this round
    num_accepted: int  # verification's decision (may exceed len(accepted) when a stop cut the block)
    finished: bool
    finish_reason: Literal["eos", "length"] | None = None

    @property
    def tokens(self) -> tuple[int, ...]:
        """The ids this round emitted, in order."""
        return self.accepted + ((self.token,) if self.token is not None else ())


@dataclass
class RowStats(AcceptanceCounts):
    new_tokens: int = 0
    rounds: int = 0  # verification rounds (the prefill's first token is not a round)
    draft_tokens: int = 0  # proposed
    accepted_tokens: int = 0  # kept by verification
    position_trials: list[int] = field(default_factory=list)  # per draft position j: rounds that proposed it
    position_accepts: list[int] = field(default_factory=list)  # ... and accepted it

    def counters(self) -> dict[str, Any]:
        """The counters (copies), to build another record from: SequenceRun(**stats.counters(), ...)."""
        return {"rounds": self.rounds, "draft_tokens": self.draft_tokens, "accepted_tokens": self.accepted_tokens,
                "position_trials": list(self.position_trials), "position_accepts": list(self.position_accepts)}

    def record(self, proposed: int, accepted: int) -> None:
        self.rounds += 1
        self.draft_tokens += proposed
        self.accepted_tokens += accepted
        while len(self.position_trials) < proposed:
            self.position_trials.append(0)
            self.position_accepts.append(0)
        for j in range(proposed):
            self.position_trials[j] += 1
            if j < accepted:
                self.position_accepts[j] += 1
