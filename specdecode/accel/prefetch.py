"""Weights pulled into the L2 cache ahead of the decode kernels that read them, on a side branch.

A one-row decode step is bound by latency, not bandwidth: the Qwen2.5 0.5B draft reads ~30 MB
of weights a layer in ~20 us where the memory system could deliver them in ~6, because each of a
layer's five kernels waits for the one before it and the small ones (q/k/v, attention, o) leave
the memory bus idle. The weights do not depend on the step's activations, so they can be read
before they are needed. `WeightPrefetch` forks a second stream from the step's stream before each
of a layer's kernels and has it issue Hopper's bulk L2 prefetches (`cp.async.bulk.prefetch.L2`,
fire and forget: nothing waits for them) for the next `window` bytes of the weights the following
kernels will read, in the order they read them; the step's stream joins it once, at the end of
the step. Captured in a CUDA graph, each fork is a graph edge from the kernel before it, so the
prefetch runs beside the chain instead of inside it (a prefetch *in* the chain made the chain
wait for it to drain: benchmarks/results/2026-12-03-h200-verify-notes.md).

Nothing the step computes changes: a prefetch only moves bytes into the cache. The plan (which
bytes at which kernel) is pure Python and tested on the CPU; the kernel runs on CUDA devices of
compute capability 9.0 or later (`usable`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import kernels as _kernels

triton, tl = _kernels.triton, _kernels.tl

__all__ = ["CHUNK", "LANES", "Region", "WeightPrefetch", "plan", "regions", "usable"]

# bytes per bulk prefetch (one lane's), and lanes (one warp) per program
CHUNK = 16384
LANES = 32

# the bulk prefetch instruction wants 16-byte aligned addresses and sizes
_ALIGN = 16


def usable(device: torch.device) -> bool:
    """Whether the bulk L2 prefetch can run on `device`: CUDA, compute capability 9.0+, Triton."""
    if not (_kernels.AVAILABLE and device.type == "cuda"):
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (9, 0)


@dataclass(frozen=True)
class Region:
    """`nbytes` bytes of device memory from address `ptr`."""

    ptr: int
    nbytes: int


def regions(weight) -> list[Region]:
    """The memory a product reads for `weight`: a tensor's storage, or an NF4 weight's packed
    codes and block scales (nf4.NF4Weight; its 16-entry code maps are too small to matter)."""
    parts = [weight] if isinstance(weight, Tensor) else [getattr(weight, "packed", None), getattr(weight, "absmax", None)]
    return [Region(t.data_ptr(), t.numel() * t.element_size()) for t in parts if isinstance(t, Tensor) and t.numel()]


def plan(kernels: list[list[Region]], window: int) -> list[list[Region]]:
    """What to prefetch at the fork before each kernel of a step.

    kernels: the regions each kernel of the step reads, in launch order (an empty list for a
    kernel without weights, e.g. attention). Reading the kernels' regions one after another
    as one stream of bytes, the fork before kernel j asks for the bytes after kernel j's own
    (it is launched right after the fork: a prefetch cannot get ahead of it) up to `window`
    bytes past them, minus what earlier forks asked for. A region cut between two forks is asked for in two
    pieces rounded out to 16-byte boundaries (the instruction's alignment): together they cover
    it, overlapping by at most 16 bytes."""
    if window <= 0:
        return [[] for _ in kernels]
    flat: list[tuple[int, Region]] = []  # (stream offset of the region's first byte, region)
    ends = []  # stream offset just past each kernel's regions
    offset = 0
    for regs in kernels:
        for r in regs:
            flat.append((offset, r))
            offset += r.nbytes
        ends.append(offset)
    cursor = 0
    out: list[list[Region]] = []
    for end in ends:
        lo, hi = max(cursor, end), min(offset, end + window)
        picks: list[Region] = []
        if hi > lo:
            for start, r in flat:
                a, b = max(lo, start), min(hi, start + r.nbytes)
                if a >= b:
                    continue
                # aligned within the region: the first piece's start down, the last piece's end up
                a_rel = (a - start) // _ALIGN * _ALIGN
                b_rel = min(r.nbytes, -(-(b - start) // _ALIGN) * _ALIGN)
                picks.append(Region(r.ptr + a_rel, b_rel - a_rel))
            cursor = hi
        out.append(picks)
    return out


if _kernels.AVAILABLE:

    @triton.jit
    def _l2_prefetch_kernel(base, nbytes, SINK, CHUNK: tl.constexpr, LANES: tl.constexpr):
        """Each lane of each program asks for one CHUNK of [base, base + nbytes) (the last one
        shorter) with a bulk L2 prefetch; lanes past the end ask for nothing. The asm's result is
        always 0; the store it guards never runs but keeps the compiler from dropping the asm."""
        lane = tl.arange(0, LANES)
        off = (tl.program_id(0) * LANES + lane).to(tl.int64) * CHUNK
        size = tl.maximum(tl.minimum(nbytes - off, CHUNK), 0).to(tl.int32)
        addr = base + off
        done = tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1)
        tl.store(SINK + lane, done, mask=done != 0)


def launch(region: Region, sink: Tensor, chunk: int = CHUNK, lanes: int = LANES) -> None:
    """Prefetch `region` into L2 on the current stream (sink: a device int32 tensor of >= lanes)."""
    grid = (triton.cdiv(region.nbytes, chunk * lanes),)
    _l2_prefetch_kernel[grid](region.ptr, region.nbytes, sink, CHUNK=chunk, LANES=lanes, num_warps=1)


class WeightPrefetch:
    """The forks of one step's prefetches (see the module doc). `at(j)` before the step's kernel
    j, `join()` once at the end of the step. Built once per model: the plan holds the weights'
    addresses, which do not move."""

    def __init__(self, kernels: list[list[Region]], window: int, device: torch.device,
                 chunk: int = CHUNK, lanes: int = LANES) -> None:
        if chunk % _ALIGN or chunk <= 0:
            raise ValueError(f"the prefetch chunk must be a positive multiple of {_ALIGN} bytes, got {chunk}")
        self.window = int(window)
        self.chunk, self.lanes = int(chunk), int(lanes)
        self.plan = plan(kernels, self.window)
        self.bytes = sum(r.nbytes for picks in self.plan for r in picks)
        self.device = device
        # made here, not at the first fork, which may be inside a capture
        cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if cuda else None
        self._sink = torch.zeros(self.lanes, dtype=torch.int32, device=device) if cuda else None
        self._forked = False

    def at(self, j: int) -> None:
        """Fork the prefetches planned before the step's kernel j (none planned: nothing)."""
        picks = self.plan[j] if j < len(self.plan) else ()
        if not picks:
            return
        main = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            for region in picks:
                launch(region, self._sink, self.chunk, self.lanes)
        self._forked = True

    def join(self) -> None:
        """The step's stream waits for the forks (a captured graph must end joined)."""
        if self._forked:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
            self._forked = False
