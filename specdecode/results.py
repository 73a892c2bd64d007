"""One batch through an engine, collected: per row its tokens, events, stop and times.

Shared by the Python API (`SpeculativeDecoder.generate`) and the benchmark runner, so the
two read a run the same way. The clock starts after a device synchronisation and each
row's times are taken when its events arrive (every round ends with a host
synchronisation, so an event's arrival is when its tokens exist on the host).

What it does not: tokenize, decode text, or print.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .decoding.events import RoundEvent, RowStats

__all__ = ["RowResult", "batches", "collect_batch", "sync"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(ids: list, batch_size: int) -> list[tuple[int, list]]:
    """(index of the first item, items) per batch of batch_size."""
    return [(i, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


@dataclass
class RowResult:
    tokens: list[int] = field(default_factory=list)
    events: list[RoundEvent] = field(default_factory=list)
    finish_reason: str | None = None
    ttft_s: float = 0.0  # batch start -> the row's first token
    done_s: float = 0.0  # batch start -> the row's last token (0: never finished)
    rejected_rounds: int = 0  # rounds that rejected a draft token (for Leviathan's α)
    stats: RowStats = field(default_factory=RowStats)


def collect_batch(engine, batch: Sequence[Sequence[int]], device: torch.device,
                  on_event: Callable[[int, RoundEvent], None] | None = None,
                  keep_events: bool = False) -> tuple[list[RowResult], float]:
    """Run `batch` through `engine`; (per-row results, device-synchronised wall time).
    `on_event(row, event)` sees each event as it arrives."""
    rows = [RowResult() for _ in batch]
    sync(device)
    t0 = time.perf_counter()
    for ev in engine.stream(batch):
        now = time.perf_counter() - t0
        r = rows[ev.row]
        r.tokens.extend(ev.tokens)
        if keep_events:
            r.events.append(ev)
        if on_event is not None:
            on_event(ev.row, ev)
        if ev.round == 0:
            r.ttft_s = now
        elif ev.num_accepted < ev.proposed:
            r.rejected_rounds += 1
        if ev.finished:
            r.done_s = now
            r.finish_reason = ev.finish_reason
    sync(device)
    wall = time.perf_counter() - t0
    for r, s in zip(rows, engine.stats):
        r.stats = s
    return rows, wall
