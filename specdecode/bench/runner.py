"""Timing: the target-only baseline and speculative decoding on the same prompts.

How a benchmark runs (benchmarks/README.md has the reasoning):

  1. prompts are tokenized once (chat template, --max-length) and cut into batches of
     batch_size; both runs see exactly the same token ids;
  2. warm-up: one short generation of the first batch through each engine (allocator,
     kernels, lazy initialisation), not timed;
  3. the step-time ratio c: a few timed [B, 1] forwards of the draft and of the target on
     a fresh KVCache, median of each (prompt lookup costs no forward: c = 0);
  4. per batch: the baseline (the same engine with the drafter `none`), then speculative
     decoding; the device is synchronised before the clock starts and after the last
     round; each row's time to its first token (the round-0 event) and to its last token
     are taken when the events arrive (each round ends with a host synchronisation);
  5. after each batch its samples are appended to a JSON Lines file and flushed, so Ctrl-C
     or a crash keeps everything measured so far. Ctrl-C ends the loop and the result is
     marked `interrupted`; the caller prints the partial summary and exits 130.

What it does not: print or format (report.py does), or load models (api.py does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .. import metrics
from ..decoding.cache import ModelRunner
from ..decoding.engine import make_generator

__all__ = [
    "BenchResult",
    "Combo",
    "PassRun",
    "SequenceRun",
    "StepTimes",
    "SweepResult",
    "encode_prompts",
    "measure_step_times",
    "results_paths",
    "run_batch",
    "run_benchmark",
    "run_pass",
    "run_sweep",
    "warm_up",
]

WARMUP_TOKENS = 8
STEP_WARMUP = 2
STEP_REPEATS = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class SequenceRun:
    """One prompt through one engine."""

    index: int  # position of the prompt in the benchmark
    prompt_tokens: int
    token_ids: list[int]
    latency_s: float  # batch start -> this row's last token
    ttft_s: float  # batch start -> this row's first token (the round-0 event)
    finish_reason: str | None
    rounds: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    rejected_rounds: int = 0  # rounds that rejected a draft token (for Leviathan's α)
    position_trials: list[int] = field(default_factory=list)
    position_accepts: list[int] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def block_efficiency(self) -> float | None:
        return (self.accepted_tokens + self.rounds) / self.rounds if self.rounds else None

    def to_dict(self, speculative: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "new_tokens": self.new_tokens,
            "latency_s": self.latency_s,
            "ttft_s": self.ttft_s,
            "finish_reason": self.finish_reason,
            "rounds": self.rounds,
        }
        if speculative:
            out.update(
                draft_tokens=self.draft_tokens,
                accepted_tokens=self.accepted_tokens,
                acceptance_rate=self.acceptance_rate,
                block_efficiency=self.block_efficiency,
                rejected_rounds=self.rejected_rounds,
                position_trials=list(self.position_trials),
                position_accepts=list(self.position_accepts),
            )
        return out


@dataclass
class PassRun:
    """One engine over a list of prompts, batch by batch."""

    runs: list[SequenceRun] = field(default_factory=list)
    batch_times: list[float] = field(default_factory=list)

    @property
    def time_s(self) -> float:
        return sum(self.batch_times)

    @property
    def tokens(self) -> int:
        return sum(r.new_tokens for r in self.runs)

    def extend(self, runs: list[SequenceRun], time_s: float) -> None:
        self.runs.extend(runs)
        self.batch_times.append(time_s)


@dataclass(frozen=True)
class StepTimes:
    """The cost ratio c = draft step time / target step time, and how it was obtained."""

    c: float
    method: str  # "measured" | "lookup" (prompt lookup: no forward)
    target_ms: float | None = None
    draft_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"c": self.c, "method": self.method, "target_step_ms": self.target_ms, "draft_step_ms": self.draft_ms}


# ---- building blocks ---------------------------------------------------------------------


def encode_prompts(decoder, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids per prompt (chat template, --max-length); refuses prompts that overflow the context."""
    return decoder.encode_all(prompts)


def new_generator(decoder) -> torch.Generator | None:
    """One random stream per pass (seeded: reproducible), shared by its batches; None when greedy."""
    s = decoder.settings
    return None if s.greedy else make_generator(decoder.target.device, s.seed)


def batches(ids: list[list[int]], batch_size: int) -> list[tuple[int, list[list[int]]]]:
    return [(i, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


def run_batch(decoder, batch: list[list[int]], start: int,
              generator: torch.Generator | None = None) -> tuple[list[SequenceRun], float]:
    """Generate one batch through `decoder`'s engine; (per-row runs, device-synchronised wall time)."""
    engine = decoder.engine(generator=generator)
    n = len(batch)
    tokens: list[list[int]] = [[] for _ in range(n)]
    ttft = [0.0] * n
    done = [0.0] * n
    reasons: list[str | None] = [None] * n
    rejections = [0] * n
    device = decoder.target.device
    _sync(device)
    t0 = time.perf_counter()
    for ev in engine.stream(batch):
        now = time.perf_counter() - t0  # events follow the round's host synchronisation
        tokens[ev.row].extend(ev.tokens)
        if ev.round == 0:
            ttft[ev.row] = now
        elif ev.num_accepted < ev.proposed:
            rejections[ev.row] += 1
        if ev.finished:
            done[ev.row] = now
            reasons[ev.row] = ev.finish_reason
    _sync(device)
    wall = time.perf_counter() - t0
    runs = []
    for i in range(n):
        s = engine.stats[i]
        runs.append(
            SequenceRun(
                index=start + i,
                prompt_tokens=len(batch[i]),
                token_ids=tokens[i],
                latency_s=done[i] or wall,
                ttft_s=ttft[i],
                finish_reason=reasons[i],
                rounds=s.rounds,
                draft_tokens=s.draft_tokens,
                accepted_tokens=s.accepted_tokens,
                rejected_rounds=rejections[i],
                position_trials=list(s.position_trials),
                position_accepts=list(s.position_accepts),
            )
        )
    return runs, wall


def run_pass(decoder, ids: list[list[int]], on_batch: Callable[[PassRun], None] | None = None,
             into: PassRun | None = None) -> PassRun:
    """All prompts through one engine, in batches of the decoder's batch_size."""
    out = into if into is not None else PassRun()
    generator = new_generator(decoder)
    for start, batch in batches(ids, decoder.settings.batch_size):
        runs, wall = run_batch(decoder, batch, start, generator)
        out.extend(runs, wall)
        if on_batch is not None:
            on_batch(out)
    return out


def warm_up(decoder, ids: list[list[int]]) -> None:
    """One short, untimed generation of the first batch."""
    if not ids:
        return
    short = decoder.with_settings(max_new_tokens=min(WARMUP_TOKENS, decoder.settings.max_new_tokens))
    for _ in short.engine().stream(ids[: decoder.settings.batch_size]):
        pass


@torch.inference_mode()
def step_time_ms(loaded, prompt: list[int], batch_size: int, repeats: int = STEP_REPEATS) -> float:
    """Median wall time (ms) of a [B, 1] forward of `loaded` after prefilling `prompt` on a fresh KVCache."""
    runner = ModelRunner(loaded.model)
    device = runner.device
    ctx = len(prompt)
    max_len = ctx + STEP_WARMUP + repeats + 2
    cache = runner.new_cache(batch_size, max_len)
    rows = int(loaded.model.get_output_embeddings().weight.shape[0])
    x = torch.tensor([prompt] * batch_size, dtype=torch.long, device=device).clamp_(max=rows - 1)
    logits = runner.forward(x, cache, attend_len=ctx, logits_to_keep=1)
    cache.set_positions(torch.full((batch_size,), ctx, dtype=torch.long, device=device))
    tok = logits[:, -1].argmax(dim=-1, keepdim=True)  # [B, 1]
    one = torch.ones(batch_size, dtype=torch.long, device=device)
    times = []
    for i in range(STEP_WARMUP + repeats):
        _sync(device)
        t0 = time.perf_counter()
        logits = runner.forward(tok, cache, attend_len=max_len, logits_to_keep=1)
        tok = logits[:, -1].argmax(dim=-1, keepdim=True)
        _sync(device)
        if i >= STEP_WARMUP:
            times.append(time.perf_counter() - t0)
        cache.advance(one)
    return 1000.0 * metrics.median(times)


def measure_step_times(decoder, ids: list[list[int]]) -> StepTimes | None:
    """c for Leviathan's prediction: median draft step / median target step, both [B, 1] forwards."""
    s = decoder.settings
    if s.drafter == "none" or not ids:
        return None
    batch = s.batch_size
    prompt = ids[0]
    target_ms = step_time_ms(decoder.target, prompt, batch)
    if s.drafter == "ngram":
        return StepTimes(c=0.0, method="lookup", target_ms=target_ms, draft_ms=0.0)
    drafter = decoder.engine().drafter
    draft_loaded = getattr(drafter, "draft", None)  # ModelDrafter and EarlyExitDrafter hold a LoadedModel
    if draft_loaded is None:
        return None
    draft_ms = step_time_ms(draft_loaded, prompt, batch)
    return StepTimes(c=draft_ms / target_ms, method="measured", target_ms=target_ms, draft_ms=draft_ms)


# ---- results files -----------------------------------------------------------------------


def results_paths(summary_file_name: str | None, results_dir: str | Path, prefix: str = "bench") -> tuple[Path, Path]:
    """(samples .jsonl, summary .json). `summary_file_name` (the seed's setting) names them;
    a bare name goes into results_dir, a path is used as it is; default: a timestamp."""
    if summary_file_name:
        p = Path(summary_file_name).expanduser()
        if p.parent == Path("."):
            p = Path(results_dir) / p.name
    else:
        p = Path(results_dir) / f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    stem = p.with_suffix("") if p.suffix in (".json", ".jsonl", ".csv", ".txt") else p
    return stem.with_name(stem.name + ".jsonl"), stem.with_name(stem.name + ".json")


# ---- bench --------------------------------------------------------------------------------


@dataclass
class BenchResult:
    settings: Any  # Settings
    prompts: list[str]
    baseline: PassRun = field(default_factory=PassRun)
    speculative: PassRun = field(default_factory=PassRun)
    step: StepTimes | None = None
    interrupted: bool = False
    samples_path: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    texts: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (baseline text, speculative text)
    data: dict[str, Any] | None = None  # PromptSet.to_dict()

    @property
    def completed(self) -> int:
        return len(self.speculative.runs)


def sample_record(result: BenchResult, base: SequenceRun, spec: SequenceRun) -> dict[str, Any]:
    greedy = result.settings.temperature == 0
    base_text, spec_text = result.texts.get(spec.index, ("", ""))
    match = base.token_ids == spec.token_ids if greedy else None
    rec: dict[str, Any] = {
        "index": spec.index,
        "prompt": result.prompts[spec.index],
        "prompt_tokens": spec.prompt_tokens,
        "output": spec_text,
        "match": match,
        "first_mismatch": metrics.first_mismatch(base.token_ids, spec.token_ids) if greedy else None,
        "baseline": base.to_dict(speculative=False),
        "speculative": spec.to_dict(speculative=True),
    }
    if greedy and not match:
        rec["baseline_output"] = base_text
    return rec


def run_benchmark(
    decoder,
    prompts: Sequence[str],
    *,
    samples_path: str | Path | None = None,
    on_batch: Callable[[BenchResult], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    warmup: bool = True,
    data: dict[str, Any] | None = None,
) -> BenchResult:
    """Baseline and speculative decoding, batch by batch, on the same prompts.

    Returns what was measured; on Ctrl-C the result is marked `interrupted` and holds the
    batches that completed (the samples file has the same ones).
    """
    settings = decoder.settings
    baseline = decoder.with_settings(drafter="none")
    result = BenchResult(
        settings=settings,
        prompts=list(prompts),
        device=str(decoder.target.device),
        dtype=str(decoder.target.dtype).removeprefix("torch."),
        data=data,
    )
    if samples_path is not None:
        result.samples_path = Path(samples_path)
        result.samples_path.parent.mkdir(parents=True, exist_ok=True)
        result.samples_path.write_text("")  # a fresh file for this run
    phase = on_phase or (lambda _: None)
    try:
        ids = encode_prompts(decoder, prompts)
        if warmup:
            phase("warm-up")
            warm_up(baseline, ids)
            warm_up(decoder, ids)
        phase("step times")
        result.step = measure_step_times(decoder, ids)
        phase("measuring")
        base_gen, spec_gen = new_generator(baseline), new_generator(decoder)
        for start, batch in batches(ids, settings.batch_size):
            base_runs, base_wall = run_batch(baseline, batch, start, base_gen)
            spec_runs, spec_wall = run_batch(decoder, batch, start, spec_gen)
            for b, s in zip(base_runs, spec_runs):
                result.texts[s.index] = (decoder.decode(b.token_ids), decoder.decode(s.token_ids))
            # both runs of a batch are kept together, so every sample has both numbers
            result.baseline.extend(base_runs, base_wall)
            result.speculative.extend(spec_runs, spec_wall)
            if result.samples_path is not None:
                with result.samples_path.open("a", encoding="utf-8") as f:
                    for b, s in zip(base_runs, spec_runs):
                        f.write(json.dumps(sample_record(result, b, s), ensure_ascii=False) + "\n")
                    f.flush()
            if on_batch is not None:
                on_batch(result)
    except KeyboardInterrupt:
        result.interrupted = True
    return result


# ---- compare -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Combo:
    """One row of a sweep."""

    drafter: str
    k: int | str
    batch_size: int
    temperature: float

    def to_dict(self) -> dict[str, Any]:
        return {"drafter": self.drafter, "k": self.k, "batch_size": self.batch_size, "temperature": self.temperature}


@dataclass
class SweepResult:
    rows: list[tuple[Combo, PassRun, PassRun, StepTimes | None]] = field(default_factory=list)  # combo, baseline, spec, c
    interrupted: bool = False


def run_sweep(
    decoder,
    prompts: Sequence[str],
    combos: Sequence[Combo],
    *,
    on_row: Callable[[SweepResult], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    warmup: bool = True,
) -> SweepResult:
    """One speculative run per combination; the baseline is measured once per batch size and
    temperature (it does not depend on the drafter or k) and reused for every row."""
    result = SweepResult()
    baselines: dict[tuple[int, float], PassRun] = {}
    steps: dict[tuple[str, int], StepTimes | None] = {}  # c depends on the drafter and batch size, not k
    phase = on_phase or (lambda _: None)
    try:
        ids = encode_prompts(decoder, prompts)
        for combo in combos:
            key = (combo.batch_size, combo.temperature)
            if key not in baselines:
                base = decoder.with_settings(drafter="none", batch_size=combo.batch_size, temperature=combo.temperature)
                phase(f"baseline (batch {combo.batch_size}, temperature {combo.temperature:g})")
                if warmup:
                    warm_up(base, ids)
                baselines[key] = run_pass(base, ids)
            dec = decoder.with_settings(
                drafter=combo.drafter, k=combo.k, batch_size=combo.batch_size, temperature=combo.temperature
            )
            phase(f"{combo.drafter} k={combo.k} batch {combo.batch_size} temperature {combo.temperature:g}")
            if warmup:
                warm_up(dec, ids)
            skey = (combo.drafter, combo.batch_size)
            if skey not in steps:
                steps[skey] = measure_step_times(dec, ids)
            spec = run_pass(dec, ids)
            result.rows.append((combo, baselines[key], spec, steps[skey]))
            if on_row is not None:
                on_row(result)
    except KeyboardInterrupt:
        result.interrupted = True
    return result
