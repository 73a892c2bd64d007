"""Logits -> processed probabilities -> sampled token ids.

What it does:
  * `SamplingParams`: temperature, top-k and top-p, frozen and validated.
  * `process_logits`: the Hugging Face `generate(do_sample=True)` warpers, in the same order
    and with the same semantics (TemperatureLogitsWarper, then TopKLogitsWarper, then
    TopPLogitsWarper), computed in float32. These processed distributions are the p and q
    of the acceptance rule (see verify.py), so target and draft must go through here.
  * `logits_to_probs`: float32 softmax of the processed logits; greedy gives a one-hot argmax.
  * `sample`: one token per row by the exponential race, on device.

What it does not: no model, no cache, no repetition penalties or other logits processors, and
no host synchronisation (`.item()`, `.tolist()`, `nonzero`, branching on tensor values). Every
branch depends on Python parameters or shapes only, so these functions can be captured in a
CUDA graph or compiled with `fullgraph=True`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SamplingParams", "logits_to_probs", "make_generator", "process_logits", "sample"]


@dataclass(frozen=True)
class SamplingParams:
    """How a distribution is shaped before sampling. The defaults mean greedy decoding."""

    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    def __post_init__(self) -> None:
        # Validate here, once, so the tensor functions never have to.
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 <= self.top_p <= 1.0):
            raise ValueError(f"top_p must be in [0, 1] (1 = off), got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def process_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """[..., V] -> float32 [..., V], with -inf at the tokens that top-k / top-p remove.

    Same order and semantics as Hugging Face `generate(do_sample=True)`, which also casts the
    logits to float32 before its warpers. Greedy params return the logits (as float32) unchanged:
    `generate(do_sample=False)` ignores the warpers too.
    """
    logits = logits.float()  # no copy when already float32
    if params.greedy:
        return logits

    # TemperatureLogitsWarper (HF skips it at 1.0; dividing by 1.0 is exact anyway).
    if params.temperature != 1.0:
        logits = logits / params.temperature

    # TopKLogitsWarper: remove logits strictly below the k-th largest, so ties with the
    # k-th value are all kept (more than k tokens may survive, as in HF).
    if params.top_k > 0:
        top_k = min(params.top_k, logits.size(-1))
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth_largest, -math.inf)

    # TopPLogitsWarper: sort ascending, remove the low tail whose cumulative probability is
    # <= 1 - top_p, always keep the largest token (min_tokens_to_keep = 1).
    if params.top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=False)  # [..., V]
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [..., V]
        remove_sorted = cumulative <= (1.0 - params.top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_index, remove_sorted)  # back to vocab order
        logits = logits.masked_fill(remove, -math.inf)

    return logits


def logits_to_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """[..., V] -> float32 [..., V] probabilities of the processed distribution.

    Greedy gives the one-hot of the argmax (first index on ties, as `torch.argmax` and HF do), so
    the sampling acceptance rule degenerates to exact greedy matching.
    """
    processed = process_logits(logits, params)  # float32 [..., V]
    if params.greedy:
        # scatter instead of F.one_hot: one_hot checks index range on the host (a sync on CUDA).
        index = processed.argmax(dim=-1, keepdim=True)  # [..., 1]
        return torch.zeros_like(processed).scatter_(-1, index, 1.0)
    return processed.softmax(dim=-1)


def sample(probs: Tensor, generator: torch.Generator | None = None, race: Tensor | None = None) -> Tensor:
    """[..., V] probabilities (any positive scale) -> int64 [...] token ids.

    `race`: the Exp(1) draws to use, same shape as `probs` (drawn beforehand, e.g. once per round
    into a fixed buffer so a captured round consumes no random state of its own); drawn here from
    `generator` when None.

    The exponential race: argmax(probs / E) with E ~ Exp(1) i.i.d. per entry picks index i with
    probability probs[i] / sum(probs) (the minimum of independent exponentials with rates
    probs[i] is attained at i with that probability), without `torch.multinomial`, which
    synchronises with the host on CUDA. The rows need not be normalised.
    Zero-probability tokens are never chosen unless the whole row is zero (then index 0).
    """
    probs = probs.float()
    if race is None:
        race = torch.empty_like(probs).exponential_(generator=generator)  # [..., V], E ~ Exp(1)
    # Clamp E away from 0 so a (rare) exact zero draw cannot give inf or 0/0 = NaN, which argmax
    # would pick; then pin zero-probability tokens below every live one (scores are >= 0).
    scores = probs / race.clamp_min(torch.finfo(torch.float32).tiny)
    scores = scores.masked_fill(probs <= 0, -1.0)
    return scores.argmax(dim=-1)


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on `device`, seeded when a seed is given, from OS entropy otherwise."""
    g = torch.Generator(device=device)
    if seed is not None:
        g.manual_seed(seed)
    else:
        g.seed()
    return g
