"""Shared test helpers: a SpeculativeDecoder on CPU (float32, no chat template, from saved
fixture dirs), and a spy on a runner's decode steps."""

from __future__ import annotations

from specdecode.api import SpeculativeDecoder
from specdecode.settings import Settings


def cpu_decoder(target, draft=None, *, max_new_tokens: int = 40, **kw) -> SpeculativeDecoder:
    """drafter defaults to "model" with a draft and "none" without; other settings pass through."""
    s = Settings(
        target=str(target),
        draft=str(draft) if draft else None,
        drafter=kw.pop("drafter", "model" if draft else "none"),
        device="cpu",
        dtype="float32",
        chat=False,
        max_new_tokens=max_new_tokens,
        **kw,
    )
    return SpeculativeDecoder.from_settings(s)


def record_step_widths(runner) -> list[int]:
    """Wrap `runner.forward` (decode steps, not prefill) to record each step's query width
    (tokens per row); returns the list it appends to."""
    widths: list[int] = []
    forward = runner.forward

    def spy(input_ids, *args, **kwargs):
        widths.append(input_ids.shape[1])
        return forward(input_ids, *args, **kwargs)

    runner.forward = spy
    return widths
