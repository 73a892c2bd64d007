"""Captured rounds: a whole round of speculative decoding as one CUDA graph, one sync per round.

`run_round` (decoding/round.py) is device work only: the draft steps (token choice, cache
advances), the verify forward, the acceptance decision and the commits, on buffers that
stay at fixed addresses. `CapturedRounds` captures it once per shape — (batch, cache size,
k, whether the draft feeds `prev`, sampling) — and from then on a round costs one graph
launch, a small copy of its counts into pinned host memory, and one wait on that copy:
the one host synchronisation the engine needs for streaming and stopping. Nothing is
compiled or captured later than a warm-up (`prepare`) when the caller asks for it.

Capture needs warm-up runs (torch.compile and Triton compile on first use, cuBLAS picks its
kernels); they run on a side stream and their effects on the round's state (cache lengths,
`last`/`prev`, the result buffer) are undone afterwards. Their cache writes land past each
row's length, where nothing reads them. All graphs of one object share one memory pool;
everything a round leaves for later lives in buffers allocated outside the graphs, so any
replay order is safe.

Caches and round buffers are pooled per (batch, cache size): the graphs are bound to them,
and every batch of that shape reuses them.

Each graph is timed once right after its capture (a few replays between CUDA events, the
state restored after each): `measured` gives those round times by k, which `--k auto`'s
policy weighs against the acceptance it sees (decoding/policy.py).

`--k auto`'s confidence stop branches inside the graph: the draft steps after the first sit in
CUDA graph IF nodes (`device_if`) on "some row still drafts", so a round whose draft lost
confidence skips its remaining steps instead of running them to be masked. Rounds are timed
with the stop off (every step run), and where the driver refuses the IF nodes the round is
captured again without them (one warning; the stop is then off).

What it does not: decide k or stops (the engine does), or run on anything but CUDA.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from ..decoding.round import EagerRounds, RoundBuffers, RoundShape
from ..decoding.sampling import SamplingParams
from . import glue, kernels

__all__ = ["CapturedRounds", "Pending", "SideBranch", "capture", "conditional_supported", "device_if", "green_stream",
           "green_share", "time_replays"]

log = logging.getLogger("specdecode")


_IF_REFUSED: set[int] = set()  # CUDA devices whose driver refused a round's IF nodes (CapturedRounds.prepare)


def _index(device: torch.device) -> int:
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def conditional_supported(device: torch.device) -> bool:
    """Whether captured rounds on `device` can hold CUDA graph conditional (IF) nodes: a CUDA device,
    a torch whose CUDAGraph captures them (`begin_capture_to_if_node`) and a CUDA 12.4+ build, and
    no capture with them has failed there in this process."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available() or _index(device) in _IF_REFUSED:
        return False
    graph = getattr(torch.cuda, "CUDAGraph", None)
    if graph is None or not all(hasattr(graph, name) for name in (
            "begin_capture_to_if_node", "end_capture_to_conditional_node", "get_currently_capturing_graph")):
        return False
    version = torch.version.cuda or ""
    try:
        return tuple(int(x) for x in version.split(".")[:2]) >= (12, 4)
    except ValueError:
        return False


def device_if(pred: Tensor, body) -> None:
    """`body()` (device work, no host sync, no random draws) where the 0-d bool CUDA tensor `pred`
    holds when the graph runs: captured, a CUDA graph IF node whose body graph is `body`'s work,
    decided on the device at each replay; uncaptured (a capture's warm-ups), `body()` always runs,
    so every kernel it launches is compiled and warmed before the capture. Callers keep the result
    the same either way (ModelDrafter's device confidence stop: a skipped step's slot is masked)."""
    if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        body()
        return
    graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
    graph.begin_capture_to_if_node(pred)
    try:
        body()
    finally:
        graph.end_capture_to_conditional_node()


class SideBranch:
    """A second stream for an overlapped round's draft branch (decoding/round.py's
    run_overlapped_round): `run(fn)` runs fn there after everything the current stream has
    queued, `join()` makes the current stream wait for it. Captured, the round's graph forks
    into two branches that the GPU runs concurrently: the draft's latency-bound steps fill the
    time the target's verify leaves the memory system idle. Its kernels take scratch buffers of
    their own lane (kernels.lane): nothing they count in is shared with the main stream's.

    `priority`: the stream's (lower is higher). The default one: with programmatic dependent
    launch in both models (the product's), the two branches together took 5-12% less time at the
    default priority than with the draft's stream at high priority on the H200, at k 2 and 3, for
    the Qwen2.5 1.5B / 0.5B, Gemma 3 4B / 270M and Llama 3.1 8B / 1B shapes
    (benchmarks/results/2026-12-05-h200-overlap-probe*.md). `stream`: run on this stream instead (`green_stream`'s: a
    share of the SMs); `lane`: the scratch lane of the work it runs ("main" for work moved off
    the main stream whole, such as the verify on a green stream)."""

    def __init__(self, device: torch.device, priority: int = 0, stream: torch.cuda.Stream | None = None,
                 lane: str = "side") -> None:
        if stream is None:
            low, high = torch.cuda.Stream.priority_range()
            stream = torch.cuda.Stream(device, priority=max(high, min(low, priority)))
        self.stream = stream
        self.lane = lane

    def run(self, fn):
        main = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream), kernels.lane(self.lane):
            out = fn()
        # the result is read on the main stream after join(): keep the allocator from reusing it early
        values = (out,) if isinstance(out, Tensor) else tuple(vars(out).values()) if hasattr(out, "__dict__") else ()
        for value in values:
            if isinstance(value, Tensor):
                value.record_stream(main)
        return out

    def join(self) -> None:
        torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)


_GREEN: dict[tuple[int, int], tuple[object, torch.cuda.Stream]] = {}  # (device, SMs) -> (context, stream)


def green_stream(device: torch.device, sms: int) -> torch.cuda.Stream:
    """A stream of a CUDA green context holding `sms` of the device's SMs (rounded up by the driver:
    multiples of 8 on sm_90): kernels launched there run on those SMs only. One context and stream
    per (device, sms), kept for the process's life (graphs captured on the stream refer to them).
    Raises RuntimeError where this torch or driver has no green contexts.

    torch.cuda.green_contexts: torch 2.9-2.13 build it into torch (`SUPPORTED` says whether this
    build has it; `Stream()` from 2.11); 2.14 drives CUDA through the cuda-bindings package and
    refuses when that is missing."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    found = _GREEN.get((index, sms))
    if found is None:
        why = "this PyTorch has no CUDA green contexts (torch.cuda.green_contexts, torch 2.11 or later)"
        try:
            from torch.cuda import green_contexts
        except ImportError as e:
            raise RuntimeError(why) from e
        if getattr(green_contexts, "SUPPORTED", True) is False or not hasattr(green_contexts.GreenContext, "Stream"):
            raise RuntimeError(why)
        try:
            ctx = green_contexts.GreenContext.create(num_sms=sms, device_id=index)
            raw = ctx.Stream()
        except (RuntimeError, ImportError, TypeError, ValueError) as e:  # no driver support, no cuda-bindings
            raise RuntimeError(f"CUDA green contexts are not available here: {str(e).splitlines()[0]}") from e
        stream = raw if isinstance(raw, torch.cuda.Stream) else torch.cuda.Stream(
            stream_id=raw.stream_id, device_index=raw.device_index, device_type=raw.device_type)
        found = _GREEN[(index, sms)] = (ctx, stream)
    return found[1]


def green_share(sms: int, keep: int, major: int) -> int:
    """The SMs a green context may take from `sms` while at least `keep` stay outside it, on a GPU of
    compute capability `major`: rounded down to the driver's granularity (CUDA's guidelines: 8 from
    sm_90 on, 2 on sm_7x/8x), since the driver rounds a request up. Raises ValueError where what is
    left is below the smallest share (8 SMs on sm_90, 4 on sm_8x, 2 on sm_7x)."""
    step, least = (8, 8) if major >= 9 else (2, 4) if major == 8 else (2, 2) if major == 7 else (1, 1)
    share = (sms - keep) // step * step
    if share < least:
        raise ValueError(f"keeping {keep} of {sms} SMs leaves {max(0, sms - keep)}, fewer than a green context's "
                         f"smallest share here ({least})")
    return share


def capture(fn, state: list[Tensor], pool=None, warmups: int = 2):
    """`fn` (device work, no host sync) captured as a CUDA graph; returns (graph, fn's result).

    Runs `fn` `warmups` times first on a side stream (torch.compile and Triton compile there,
    cuBLAS picks its kernels), restoring `state` — the tensors `fn` changes — after each, so
    the capture leaves the state as it found it."""
    saved = [t.clone() for t in state]
    device = state[0].device if state else torch.device("cuda")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmups):
            fn()
            for t, s in zip(state, saved):
                t.copy_(s)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        result = fn()
    return graph, result


def time_replays(graph: torch.cuda.CUDAGraph, state: list[Tensor], repeats: int = 3) -> float:
    """Median device time (ms) of one replay of `graph`, `state` (what it changes) restored after
    each; synchronises (a capture-time cost, never a round's)."""
    saved = [t.clone() for t in state]
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        for t, s in zip(state, saved):
            t.copy_(s)
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@dataclass
class Pending:
    """A launched round: its counts are on their way to pinned host memory."""

    host: Tensor
    done: torch.cuda.Event


class CapturedRounds(EagerRounds):
    captured = True

    def __init__(self, target, fused_commit: bool | None = None, concurrent: bool = True,
                 verify_sms: int | None = None) -> None:
        """`target`: the target's ModelRunner (CUDA, fixed shapes). `fused_commit`: the acceptance
        and commit as one Triton kernel (accel/glue.py); None: wherever Triton runs on the device
        (--no-kernels turns it off with the other kernels). `concurrent`: an overlapped round's
        draft branch runs on a stream of its own (SideBranch); False runs it in line (profiling).
        `verify_sms`: an overlapped round's verify runs on a green context of that many SMs
        (`green_stream`; `--overlap-sms` leaves the rest to the draft branch alone); None: on
        the round's own stream, every SM."""
        super().__init__(target, fixed_shapes=True)
        self.side = SideBranch(target.device) if concurrent else None
        if verify_sms is not None:
            if not concurrent:
                raise ValueError("verify_sms places the verify beside a concurrent draft branch: concurrent=True")
            self.verify_side = SideBranch(target.device, stream=green_stream(target.device, verify_sms), lane="main")
        usable = glue.usable(target.device)
        if fused_commit and not usable:
            raise ValueError("the fused commit needs Triton and a CUDA device")
        self.commit = glue.commit if (usable if fused_commit is None else fused_commit) else None
        self.accept = glue.accept_overlapped if self.commit is not None else None  # overlapped rounds' commit
        self._bufs: dict[tuple, RoundBuffers] = {}
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, int]] = {}
        self._pool = None
        self._host: dict[tuple[int, int], list[Pending]] = {}  # pinned result buffers, a ring per shape
        self._turn = 0
        self.captures = 0  # graphs captured so far (tests and warm-up reports)
        self.round_ms: dict[tuple, float] = {}  # graph key -> its replay's device time, timed at capture
        self.shortest_ms: dict[tuple, float] = {}  # the same, the device confidence stop firing after step 1

    def open(self, drafter, batch: int, max_len: int, width: int, vocab: int, sampling: SamplingParams,
             overlap: bool = False):
        self.drafter = drafter
        cache = self.target.new_cache(batch, max_len)  # pooled: the same buffers every batch of this shape
        key = (batch, cache.max_len, width, vocab, sampling.greedy, overlap)
        bufs = self._bufs.get(key)
        if bufs is None:
            bufs = self._bufs[key] = RoundBuffers.new(batch, width, vocab, sampling, self.target.device,
                                                      overlap=overlap)
        bufs.alive.fill_(1)
        if bufs.ahead_ok is not None:
            bufs.ahead_ok.zero_()  # a new batch has no proposal yet
        return cache, bufs

    def _key(self, cache, bufs: RoundBuffers, shape: RoundShape, sampling: SamplingParams) -> tuple:
        d = self.drafter
        draft_key = None
        if d is not None:
            # the graph is bound to the drafter's runner and pooled cache, not to the Python object;
            # a drafter whose round reads device tensors of its own names them (capture_key)
            draft_key = (d.name, id(getattr(d, "runner", None)), d.on_device, getattr(d, "capture_key", None))
        return (id(cache), id(bufs), shape, sampling, draft_key)

    def prepare(self, cache, bufs: RoundBuffers, shape: RoundShape, sampling: SamplingParams, target_rows: int):
        """Capture the round of this shape now (warm-ups first); the round's state is unchanged."""
        key = self._key(cache, bufs, shape, sampling)
        found = self._graphs.get(key)
        if found is not None:
            return found
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        state = self._state(cache, bufs)
        fn = lambda: self._round(cache, bufs, shape, sampling, cache.max_len, target_rows, False)  # noqa: E731
        try:
            graph, steps = capture(fn, state, pool=self._pool)
        except (RuntimeError, TypeError, ValueError, AttributeError) as e:
            if getattr(self.drafter, "conditional", None) is None:
                raise
            # the driver refused the draft's IF nodes (their bodies' kernels, e.g. programmatic
            # dependent launches), or this torch's conditional capture differs: draft every step,
            # as without the stop
            log.warning("captured rounds cannot skip draft steps on this device (%s); --k auto's confidence "
                        "stop is off", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            _IF_REFUSED.add(_index(self.target.device))  # drafters built from now on draft without the stop
            self.drafter.drop_device_stop()
            graph, steps = capture(fn, state, pool=self._pool)
        self._graphs[key] = (graph, steps)
        full = getattr(self.drafter, "full_rounds", None)  # a device confidence stop: time every draft step
        with full() if full is not None else contextlib.nullcontext():
            self.round_ms[key] = time_replays(graph, state)
        if getattr(self.drafter, "device_stop", False) and shape.k > 1:
            with self.drafter.shortest_rounds():  # and the round that skips every step after the first
                self.shortest_ms[key] = time_replays(graph, state)
        self.captures += 1
        return graph, steps

    def measured(self, cache, bufs: RoundBuffers, sampling: SamplingParams, feed_prev: bool,
                 shortest: bool = False) -> dict[int, float]:
        """The captured rounds' device times (ms) by k, for this batch's cache and buffers, every
        draft step run; `shortest`: the same rounds with the device confidence stop firing after
        the first step (only where the draft decides it on the device)."""
        out = {}
        for key, ms in (self.shortest_ms if shortest else self.round_ms).items():
            c, b, shape, s, draft_key = key
            if (c, b, s) == (id(cache), id(bufs), sampling) and shape.feed_prev == feed_prev and shape.k > 0:
                out[shape.k] = ms
        return out

    def launch(self, cache, bufs: RoundBuffers, shape: RoundShape, sampling: SamplingParams,
               attend_len: int, target_rows: int) -> tuple[int, Pending]:
        graph, steps = self.prepare(cache, bufs, shape, sampling, target_rows)
        graph.replay()
        width = max(shape.width, steps)
        # a ring of pinned buffers and their events: at most two rounds are in flight, each read
        # before its slot comes round again
        ring = self._host.get((bufs.out.shape[0], width))
        if ring is None:
            ring = self._host[(bufs.out.shape[0], width)] = [
                Pending(torch.empty((bufs.out.shape[0], 3 + width), dtype=torch.long, pin_memory=True),
                        torch.cuda.Event()) for _ in range(4)]
        self._turn = (self._turn + 1) % len(ring)
        slot = ring[self._turn]
        slot.host.copy_(bufs.out[:, : 3 + width], non_blocking=True)
        slot.done.record()
        return steps, slot

    def read(self, result: Pending) -> list[list[int]]:
        result.done.synchronize()  # the round's single host synchronisation
        return result.host.tolist()
