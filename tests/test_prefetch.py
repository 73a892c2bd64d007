"""L2 prefetch of the step's weights (specdecode/accel/prefetch.py): the plan of which bytes each
fork asks for, and the fused step's forks in the order of its kernels. The prefetch kernel itself
compiles in test_kernel_compile.py and runs in the GPU tests (test_gpu_rounds.py)."""

from __future__ import annotations

import random

import pytest
import torch

from specdecode.accel import prefetch
from specdecode.accel.prefetch import Region, plan


def _stream(kernels):
    """Each region's stream offset (the regions read one after another), and each kernel's end."""
    starts, ends, offset = {}, [], 0
    for regs in kernels:
        for r in regs:
            starts[r.ptr] = offset
            offset += r.nbytes
        ends.append(offset)
    return starts, ends, offset


def test_plan_asks_for_the_next_window_once():
    a, b, c, d = (Region(0x10000, 100 * 1024), Region(0x80000, 50 * 1024), Region(0x100000, 200 * 1024),
                  Region(0x200000, 64 * 1024))
    kernels = [[a], [], [b], [c], [d]]  # qkv, attention, o, gate/up, down
    got = plan(kernels, 120 * 1024)
    # before a: all of b and the first 70 KB of c; before attention: nothing new (b, c's head asked);
    # before b: c's next 50 KB; before c: all of d; before d: nothing left
    assert got == [[b, Region(c.ptr, 70 * 1024)], [], [Region(c.ptr + 70 * 1024, 50 * 1024)], [d], []]
    assert plan(kernels, 0) == [[]] * 5
    # a window past the end: everything after the first kernel, at the first fork
    assert plan(kernels, 10**9) == [[b, c, d], [], [], [], []]


@pytest.mark.parametrize("seed", range(20))
def test_plan_covers_each_window_ahead_and_nothing_behind(seed):
    rng = random.Random(seed)
    kernels, ptr = [], 1 << 20
    for _ in range(rng.randint(1, 12)):
        regs = []
        for _ in range(rng.choice([0, 1, 1, 2])):
            n = rng.randint(1, 5000) * rng.choice([1, 16])
            regs.append(Region(ptr, n))
            ptr += n + -n % 256 + 256  # apart, 256-aligned like the allocator's blocks
        kernels.append(regs)
    window = rng.choice([16, 100, 1000, 4096, 30000])
    got = plan(kernels, window)
    starts, ends, total = _stream(kernels)
    by_ptr = {r.ptr: r for regs in kernels for r in regs}
    asked = set()
    for j, picks in enumerate(got):
        for p in picks:
            owner = max((r for r in by_ptr.values() if r.ptr <= p.ptr), key=lambda r: r.ptr)
            assert p.nbytes > 0 and p.ptr + p.nbytes <= owner.ptr + owner.nbytes  # inside one region
            assert (p.ptr - owner.ptr) % 16 == 0 and (p.nbytes % 16 == 0 or p.ptr + p.nbytes == owner.ptr + owner.nbytes)
            lo = starts[owner.ptr] + p.ptr - owner.ptr
            # never the kernel launched after the fork or one before it; never past the window
            assert lo >= ends[j] - 15 and lo + p.nbytes <= min(total, ends[j] + window + 15)
            asked.update(range(lo, lo + p.nbytes))
    wanted = set()
    for end in ends:
        wanted.update(range(end, min(total, end + window)))
    assert wanted <= asked and len(asked - wanted) <= 32 * len(ends)  # the 16-byte seams at most


def test_chunk_must_be_aligned():
    with pytest.raises(ValueError, match="multiple of 16"):
        prefetch.WeightPrefetch([], 1024, torch.device("cpu"), chunk=1000)


def test_off_where_the_device_cannot_prefetch():
    assert not prefetch.usable(torch.device("cpu"))


def test_fused_step_forks_before_each_kernel_in_the_plans_order(monkeypatch):
    """A kernel step with l2_prefetch forks at 5 points a layer, in order, and joins once; the
    plan's kernels are each layer's q/k/v, attention (no weights), o, gate/up and down matrices:
    so the bytes asked for before a kernel are those the following kernels read. The logits are
    those of the step without prefetch (on the CPU the forks are recorded, not launched)."""
    pytest.importorskip("triton")
    from test_fused import _model
    from test_kernels import _one_row_steps

    from specdecode.accel.runner import ModelRunner

    model = _model("qwen2")
    reference = _one_row_steps(ModelRunner(model, fused=True, kernels=True))
    calls = []
    monkeypatch.setattr(prefetch, "usable", lambda device: True)
    monkeypatch.setattr(prefetch.WeightPrefetch, "at", lambda self, j: calls.append(j))
    monkeypatch.setattr(prefetch.WeightPrefetch, "join", lambda self: calls.append("join"))
    runner = ModelRunner(model, fused=True, kernels=True, l2_prefetch=4096)
    got = _one_row_steps(runner)
    layers = len(runner.fused.weights)
    # three kernel steps (the prefill runs on the compiled layers: no forks)
    assert calls == ([*range(5 * layers), "join"]) * 3
    pf = runner.fused._prefetch
    assert pf.window == 4096 and len(pf.plan) == 5 * layers
    w = runner.fused.weights[1]
    first = Region(w.wqkv.data_ptr(), w.wqkv.numel() * w.wqkv.element_size())
    # the fork before layer 0's down projection asks for what follows it: layer 1's q/k/v first
    assert pf.plan[4][0].ptr == first.ptr
    assert pf.plan[5 + 1] == []  # before layer 1's attention the window is already asked for
    for a, b in zip(reference, got):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="l2_prefetch must be >= 0"):
        ModelRunner(model, fused=True, kernels=True, l2_prefetch=-1)
