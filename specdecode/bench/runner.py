"""Timing: the target-only baseline and speculative decoding on the same prompts.

How a benchmark runs (benchmarks/README.md has the reasoning):

  1. prompts are tokenized once (chat template, --max-length) and cut into batches of
     batch_size; both runs see exactly the same token ids;
  2. warm-up, not timed: caches are sized for the data set's longest prompt, so every batch
     of a size runs the same shapes; before the first batch of each size, every round shape
     the engine can run (each k under --k auto, with and without the draft's `prev` step) is
     compiled and captured, then one short generation warms the rest. Nothing compiles or
     captures inside a timing;
  3. the step-time ratio c: a few timed [B, 1] forwards of the draft and of the target on
     a fresh KVCache, median of each (prompt lookup costs no forward: c = 0);
  4. per batch: the baseline (the same engine with the drafter `none`), then speculative
     decoding; the device is synchronised before the clock starts and after the last
     round; each row's time to its first token (the round-0 event) and to its last token
     are taken when the events arrive (each round ends with a host synchronisation);
  5. after each batch its samples are appended to a JSON Lines file and flushed, so Ctrl-C
     or a crash keeps everything measured so far. Ctrl-C ends the loop and the result is
     marked `interrupted`; the caller prints the partial summary and exits 130. Running out
     of memory (CUDA or host) in a batch ends the loop the same way, with `failure` saying
     which batch size failed; the caller keeps the partial summary and exits 1.
  6. `resume=True` reads the samples file of an earlier run with the same name: samples whose
     prompt index and text match (and whose settings fingerprint is the same) are kept and
     not measured again; the report aggregates them with the new ones. Each record carries
     what that needs: the token ids of both runs and its batch's wall times.

What it does not: print or format (report.py does), or load models (api.py does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .. import metrics
from ..decoding.engine import RowStats
from ..io import atomic_write_text, json_line
from ..results import batches, collect_batch, sync

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
    "read_samples",
    "run_batch",
    "run_benchmark",
    "settings_id",
    "run_pass",
    "run_sweep",
    "warm_up",
]

WARMUP_TOKENS = 8
STEP_WARMUP = 2
STEP_REPEATS = 5
STEP_INNER = 8  # captured steps timed per synchronisation


@dataclass(kw_only=True)
class SequenceRun(RowStats):
    """One prompt through one engine: the engine's per-row counters (RowStats: rounds, draft and
    accepted tokens, per-position trials) plus what the benchmark measures around them."""

    index: int  # position of the prompt in the benchmark
    prompt_tokens: int
    token_ids: list[int]
    latency_s: float  # batch start -> this row's last token
    ttft_s: float  # batch start -> this row's first token (the round-0 event)
    finish_reason: str | None
    rejected_rounds: int = 0  # rounds that rejected a draft token (for Leviathan's α)

    def __post_init__(self) -> None:
        self.new_tokens = len(self.token_ids)

    def to_dict(self, speculative: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "token_ids": list(self.token_ids),
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

    @classmethod
    def from_dict(cls, d: dict[str, Any], index: int, prompt_tokens: int) -> SequenceRun:
        """A run read back from a samples file (resume): the inverse of to_dict."""
        return cls(
            index=index,
            prompt_tokens=prompt_tokens,
            token_ids=[int(t) for t in d["token_ids"]],
            latency_s=float(d["latency_s"]),
            ttft_s=float(d["ttft_s"]),
            finish_reason=d.get("finish_reason"),
            rounds=int(d.get("rounds", 0)),
            draft_tokens=int(d.get("draft_tokens", 0)),
            accepted_tokens=int(d.get("accepted_tokens", 0)),
            rejected_rounds=int(d.get("rejected_rounds", 0)),
            position_trials=[int(x) for x in d.get("position_trials", [])],
            position_accepts=[int(x) for x in d.get("position_accepts", [])],
        )


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
    verify_ms: float | None = None  # the target's step over k+1 tokens (a fixed k only)
    verify_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"c": self.c, "method": self.method, "target_step_ms": self.target_ms, "draft_step_ms": self.draft_ms,
                "verify_step_ms": self.verify_ms, "verify_tokens": self.verify_tokens}


# ---- building blocks ---------------------------------------------------------------------


def encode_prompts(decoder, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids per prompt (chat template, --max-length); refuses prompts that overflow the context."""
    return decoder.encode_all(prompts)


def new_generator(decoder) -> torch.Generator | None:
    """One random stream per pass (seeded: reproducible), shared by its batches; None when greedy."""
    return decoder._generator()


def run_batch(decoder, batch: list[list[int]], start: int,
              generator: torch.Generator | None = None,
              indices: Sequence[int] | None = None) -> tuple[list[SequenceRun], float]:
    """Generate one batch through `decoder`'s engine; (per-row runs, device-synchronised wall time).

    Row i is prompt `start + i`, or `indices[i]` when given (a resumed run's batches have gaps)."""
    rows, wall = collect_batch(decoder.engine(generator=generator), batch, decoder.target.device)
    runs = []
    for i, r in enumerate(rows):
        runs.append(SequenceRun(index=indices[i] if indices is not None else start + i, prompt_tokens=len(batch[i]),
                                token_ids=r.tokens, latency_s=r.done_s or wall, ttft_s=r.ttft_s,
                                finish_reason=r.finish_reason, rejected_rounds=r.rejected_rounds,
                                **r.stats.counters()))
    return runs, wall


def run_pass(decoder, ids: list[list[int]], on_batch: Callable[[PassRun], None] | None = None,
             into: PassRun | None = None, warmed: set | None = None) -> PassRun:
    """All prompts through one engine, in batches of the decoder's batch_size. `warmed`: warm up
    (untimed) each batch whose shapes are not in this set yet, and add them."""
    out = into if into is not None else PassRun()
    generator = new_generator(decoder)
    for start, batch in batches(ids, decoder.settings.batch_size):
        if warmed is not None:
            shapes = _step_shapes(decoder, batch) or len(batch)
            if shapes not in warmed:
                warm_up(decoder, batch)
                warmed.add(shapes)
        runs, wall = run_batch(decoder, batch, start, generator)
        out.extend(runs, wall)
        if on_batch is not None:
            on_batch(out)
    return out


def _step_shapes(decoder, batch: list[list[int]]) -> tuple[int, ...] | None:
    """(batch size, pooled cache size, prefill bucket) of the compiled or captured work this batch
    runs; None when everything runs eagerly (nothing to compile or capture)."""
    runner = decoder.runner(decoder.target)
    if not runner.fixed_shapes:
        return None
    longest = max(map(len, batch))
    bucket = runner.prefill_len(longest) if runner.graphs else 0
    return len(batch), runner.pool_len(_cache_len(decoder, longest)), bucket


def _cache_len(decoder, longest_prompt: int) -> int:
    """Cache slots the engine allocates for a batch whose longest prompt has this many tokens."""
    s = decoder.settings
    return s.cache_reserve(max(longest_prompt, decoder.reserved))


def warm_up(decoder, batch: list[list[int]]) -> None:
    """Untimed: compile and capture every round shape this batch's engine can run, then one short
    generation through it (allocator, lazy initialisation). Caches keep the size the timed runs
    use, so the warm-up prepares exactly their shapes."""
    if not batch:
        return
    engine = decoder.engine()
    full = engine.params
    need = _cache_len(decoder, max(map(len, batch)))
    engine.params = dataclasses.replace(full, max_new_tokens=min(WARMUP_TOKENS, full.max_new_tokens),
                                        min_cache_len=max(full.min_cache_len, need))
    engine.prepare(batch)
    for _ in engine.stream(batch):
        pass


@torch.inference_mode()
def step_time_ms(loaded, prompt: list[int], batch_size: int, repeats: int = STEP_REPEATS,
                 runner=None, cache_len: int = 0, tokens: int = 1) -> float:
    """Median wall time (ms) of a [B, tokens] forward of `loaded` after prefilling `prompt` on a fresh
    cache (tokens = k+1: a verify step).

    `runner`: the decoder's own runner for this model, so the step is timed as generation runs
    it (fused, compiled, and captured as a CUDA graph when rounds are); a plain eager step
    otherwise. `cache_len`: the cache size generation uses (compiled steps are specific to it)."""
    if runner is None:
        from ..decoding.step import ModelStep

        runner = ModelStep(loaded.model)
    device = runner.device
    ctx = len(prompt)
    fixed = getattr(runner, "fixed_shapes", False)
    max_len = max(ctx + STEP_INNER * tokens + 2, cache_len if fixed else 0)
    cache = runner.new_cache(batch_size, max_len)
    rows = int(loaded.model.get_output_embeddings().weight.shape[0])
    x = torch.tensor([prompt] * batch_size, dtype=torch.long, device=device).clamp_(max=rows - 1)
    logits = runner.prefill(x, cache, attend_len=ctx, logits_to_keep=1)
    cache.set_positions(torch.full((batch_size,), ctx, dtype=torch.long, device=device))
    tok = logits[:, -1].argmax(dim=-1, keepdim=True).expand(-1, tokens).contiguous()  # [B, tokens]
    step_len = torch.full((batch_size,), tokens, dtype=torch.long, device=device)

    def step() -> None:
        out = runner.forward(tok, cache, cache.max_len, logits_to_keep=0 if tokens > 1 else 1)
        tok.copy_(out[:, -1].argmax(dim=-1, keepdim=True).expand(-1, tokens))
        cache.advance(step_len)

    inner = 1
    if getattr(runner, "graphs", False):
        # captured: a step inside a round costs its replay, back to back with the next one, so time
        # several replays per synchronisation (the sync's own latency is not a step's cost)
        from ..accel.rounds import capture

        graph, _ = capture(step, [tok, cache.positions])
        step, inner = graph.replay, STEP_INNER
    times = []
    for i in range(STEP_WARMUP + repeats):
        cache.positions.fill_(ctx)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        sync(device)
        if i >= STEP_WARMUP:
            times.append((time.perf_counter() - t0) / inner)
    return 1000.0 * metrics.median(times)


def measure_step_times(decoder, ids: list[list[int]], known: StepTimes | None = None) -> StepTimes | None:
    """c for Leviathan's prediction: median draft step / median target step, both [B, 1] forwards;
    and the target's [B, k+1] verify step, which the prediction prices as one step. `known`: step
    times of the same drafter and batch size at another k, whose one-token steps are reused (only
    the verify depends on k)."""
    s = decoder.settings
    if s.drafter == "none" or not ids:
        return None
    batch = s.batch_size
    prompt = ids[0]
    size = _cache_len(decoder, len(prompt))
    verify_ms = verify_tokens = None
    if isinstance(s.k, int):  # the verify's shape; under --k auto it changes from round to round
        verify_tokens = s.k + 1
        verify_ms = step_time_ms(decoder.target, prompt, batch, runner=decoder.runner(decoder.target), cache_len=size,
                                 tokens=verify_tokens)
    if known is not None:
        return dataclasses.replace(known, verify_ms=verify_ms, verify_tokens=verify_tokens)
    target_ms = step_time_ms(decoder.target, prompt, batch, runner=decoder.runner(decoder.target), cache_len=size)
    if s.drafter == "ngram":
        return StepTimes(c=0.0, method="lookup", target_ms=target_ms, draft_ms=0.0, verify_ms=verify_ms,
                         verify_tokens=verify_tokens)
    found = decoder.draft_model()
    if found is None:
        return None
    draft_ms = step_time_ms(found[0], prompt, batch, runner=found[1], cache_len=size)
    return StepTimes(c=draft_ms / target_ms, method="measured", target_ms=target_ms, draft_ms=draft_ms,
                     verify_ms=verify_ms, verify_tokens=verify_tokens)


# ---- results files -----------------------------------------------------------------------


def results_paths(summary_file_name: str | None, results_dir: str | Path, prefix: str = "bench") -> tuple[Path, Path]:
    """(samples .jsonl, summary .json). `summary_file_name` (a key of the flat YAML format) names them;
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


def settings_id(settings) -> str:
    """A short fingerprint of the settings that change what a sample measures (not the data or
    output options): a resumed run only reuses samples measured under the same ones."""
    skip = {"dataset", "num_samples", "format", "output", "summary_file_name"}
    data = {k: v for k, v in settings.to_public_dict().items() if k not in skip}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class BenchResult:
    settings: Any  # Settings
    prompts: list[str]
    baseline: PassRun = field(default_factory=PassRun)
    speculative: PassRun = field(default_factory=PassRun)
    step: StepTimes | None = None
    interrupted: bool = False
    failure: str | None = None  # why the loop stopped early (out of memory), None otherwise
    failed_batch_size: int | None = None
    resumed: int = 0  # samples read back from an earlier run's file (--resume)
    samples_path: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    texts: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (baseline text, speculative text)
    data: dict[str, Any] | None = None  # PromptSet.to_dict()
    decode_steps: dict[str, str] = field(default_factory=dict)  # role -> ModelRunner.describe()
    # untimed warm-up seconds by pass (compiles and captures of every round shape, then a short run)
    warm_up_s: dict[str, float] = field(default_factory=lambda: {"baseline": 0.0, "speculative": 0.0})

    @property
    def completed(self) -> int:
        return len(self.speculative.runs)


def sample_record(result: BenchResult, base: SequenceRun, spec: SequenceRun,
                  batch: dict[str, Any] | None = None) -> dict[str, Any]:
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
    if batch is not None:  # in the samples file: what --resume needs to rebuild the pass timings
        rec["batch"] = batch
        rec["settings_id"] = settings_id(result.settings)
    return rec


def read_samples(path: Path, prompts: Sequence[str], settings) -> tuple[list[dict[str, Any]], int]:
    """The records of an earlier run to keep when resuming: (records, lines dropped).

    A record is kept when its prompt index and text match this run's prompts. A last line cut
    short by a crash is dropped; a record measured under other settings, for another prompt at
    that index, or written without what resuming needs, is a SettingsError naming file and line.
    """
    from ..settings import SettingsError

    if not path.is_file():
        return [], 0
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # JSON Lines: "\n" only
        if lines and not lines[-1]:
            lines.pop()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"--resume: cannot read {path}: {e}") from None
    want = settings_id(settings)
    kept: dict[int, dict[str, Any]] = {}
    dropped = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the line being written when the run died
                dropped += 1
                continue
            raise SettingsError(f"--resume: {path}:{n} is not valid JSON; move the file away to start afresh") from None
        if not isinstance(rec, dict) or "batch" not in rec or "token_ids" not in rec.get("speculative", {}):
            raise SettingsError(
                f"--resume: {path}:{n} has no batch timings or token ids (written by an older specdecode): "
                "rerun without --resume"
            )
        if rec.get("settings_id") != want:
            raise SettingsError(
                f"--resume: {path}:{n} was measured with other settings (models, k, sampling, batch size, "
                "lengths...): rerun with the same settings or another summary_file_name"
            )
        i = rec.get("index")
        if not isinstance(i, int) or not 0 <= i < len(prompts) or prompts[i] != rec.get("prompt"):
            raise SettingsError(
                f"--resume: {path}:{n} holds prompt #{i}, which is not prompt #{i} of this dataset: "
                "use the same --dataset and --num-samples, or another summary_file_name"
            )
        kept[i] = rec
    return [kept[i] for i in sorted(kept)], dropped


def _restore(result: BenchResult, records: list[dict[str, Any]]) -> None:
    """Put an earlier run's samples into `result`: runs, texts, and each batch's wall times once."""
    seen_batches: set[int] = set()
    for rec in records:
        i = rec["index"]
        base = SequenceRun.from_dict(rec["baseline"], i, rec["prompt_tokens"])
        spec = SequenceRun.from_dict(rec["speculative"], i, rec["prompt_tokens"])
        batch = rec["batch"]
        first = int(batch["first_index"])
        result.baseline.runs.append(base)
        result.speculative.runs.append(spec)
        if first not in seen_batches:
            seen_batches.add(first)
            result.baseline.batch_times.append(float(batch["baseline_time_s"]))
            result.speculative.batch_times.append(float(batch["speculative_time_s"]))
        result.texts[i] = (rec.get("baseline_output", rec["output"]), rec["output"])
    result.resumed = len(records)


def _out_of_memory(decoder, batch_size: int, error: BaseException) -> str:
    """Free what the failed batch held; the failure line that names its size."""
    if decoder.target.device.type == "cuda":
        torch.cuda.empty_cache()
    return f"out of memory with a batch of {batch_size} prompt(s) ({type(error).__name__})"


@contextmanager
def _keeping_what_was_measured(result, on_out_of_memory: Callable[[BaseException], None]):
    """Around a measuring loop: Ctrl-C marks `result` interrupted, out of memory goes to
    `on_out_of_memory`; either way what completed stays in `result`."""
    try:
        yield
    except KeyboardInterrupt:
        result.interrupted = True
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        on_out_of_memory(e)


def run_benchmark(
    decoder,
    prompts: Sequence[str],
    *,
    samples_path: str | Path | None = None,
    on_batch: Callable[[BenchResult], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    warmup: bool = True,
    data: dict[str, Any] | None = None,
    resume: bool = False,
) -> BenchResult:
    """Baseline and speculative decoding, batch by batch, on the same prompts.

    Returns what was measured; on Ctrl-C the result is marked `interrupted`, on out of memory
    it carries a `failure`, and either way it holds the batches that completed (the samples
    file has the same ones). `resume`: keep the matching samples of an earlier run's file
    (see `read_samples`) and measure only the other prompts.
    """
    settings = decoder.settings
    result = BenchResult(
        settings=settings,
        prompts=list(prompts),
        device=str(decoder.target.device),
        dtype=str(decoder.target.dtype).removeprefix("torch."),
        data=data,
    )
    ids = encode_prompts(decoder, prompts)  # refuses prompts that overflow the context before any file is touched
    decoder.reserve(ids)  # one cache size for every batch: no capture or compile per prompt length
    baseline = decoder.with_settings(drafter="none")
    kept: list[dict[str, Any]] = []
    if samples_path is not None:
        result.samples_path = Path(samples_path)
        if resume:
            kept, _ = read_samples(result.samples_path, result.prompts, settings)
        # a fresh file for this run, or the kept records alone (a line cut short by a crash goes)
        atomic_write_text(result.samples_path, "".join(json_line(r) for r in kept))
    _restore(result, kept)
    done = {r["index"] for r in kept}
    todo = [i for i in range(len(ids)) if i not in done]
    phase = on_phase or (lambda _: None)
    size = settings.batch_size
    in_flight = min(size, len(todo)) or size  # prompts in the batch being run (for the out-of-memory message)

    def out_of_memory(e):
        result.failed_batch_size = in_flight
        result.failure = _out_of_memory(decoder, in_flight, e)

    def warm_both(batch):
        for name, dec in (("baseline", baseline), ("speculative", decoder)):
            start = time.perf_counter()
            warm_up(dec, batch)
            result.warm_up_s[name] += time.perf_counter() - start

    with _keeping_what_was_measured(result, out_of_memory):
        first_batch = [ids[i] for i in todo[:size]]
        if warmup and todo:
            phase("warm-up")
            warm_both(first_batch)
        phase("step times")
        result.step = measure_step_times(decoder, first_batch or ids)
        phase("measuring")
        base_gen, spec_gen = new_generator(baseline), new_generator(decoder)
        warmed = {_step_shapes(decoder, first_batch)} if warmup and todo else set()
        for j in range(0, len(todo), size):
            index = todo[j : j + size]
            batch = [ids[i] for i in index]
            in_flight = len(batch)
            shapes = _step_shapes(decoder, batch)
            if warmup and shapes is not None and shapes not in warmed:
                # captured (and compiled) steps are per batch size and cache size: a batch with new
                # ones is warmed up untimed first, so no capture or compile lands inside a timing
                phase("warm-up")
                warm_both(batch)
                warmed.add(shapes)
                phase("measuring")
            base_runs, base_wall = run_batch(baseline, batch, index[0], base_gen, index)
            spec_runs, spec_wall = run_batch(decoder, batch, index[0], spec_gen, index)
            for b, s in zip(base_runs, spec_runs):
                result.texts[s.index] = (decoder.decode(b.token_ids), decoder.decode(s.token_ids))
            # both runs of a batch are kept together, so every sample has both numbers
            result.baseline.extend(base_runs, base_wall)
            result.speculative.extend(spec_runs, spec_wall)
            if result.samples_path is not None:
                info = {"first_index": index[0], "size": len(batch), "baseline_time_s": base_wall,
                        "speculative_time_s": spec_wall}
                with result.samples_path.open("a", encoding="utf-8") as f:
                    for b, s in zip(base_runs, spec_runs):
                        f.write(json_line(sample_record(result, b, s, info)))
                    f.flush()
            if on_batch is not None:
                on_batch(result)
    _sort_by_index(result)
    result.decode_steps = decode_steps(decoder)
    return result


def decode_steps(decoder) -> dict[str, str]:
    """How the target's and the draft model's decode steps ran (fused/compiled/graphs), for
    `--k auto` in captured rounds whether the confidence stop skipped draft steps on the device, and
    whether the verify tested a sibling (--sibling)."""
    from ..api import confidence_stop  # noqa: PLC0415 (api loads the model stack: imported on use)

    out = {"target": decoder.runner(decoder.target).describe()}
    found = decoder.draft_model()
    if found is not None:
        out["draft"] = found[1].describe()
        if getattr(found[1], "fixed_shapes", False):
            tau = confidence_stop(decoder.settings, found[1])
            if tau is not None:
                out["draft"] += f"; --k auto's confidence stop (below {tau:g}) skips draft steps in CUDA graph IF nodes"
        if decoder.settings.sibling:
            out["target"] += "; the verify also tests the draft's second choice at its last token (--sibling)"
    return out


def _sort_by_index(result: BenchResult) -> None:
    """Resumed samples come first in the passes; list every sample in prompt order."""
    order = sorted(range(len(result.speculative.runs)), key=lambda j: result.speculative.runs[j].index)
    result.baseline.runs = [result.baseline.runs[j] for j in order]
    result.speculative.runs = [result.speculative.runs[j] for j in order]


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
    failure: str | None = None  # why the sweep stopped early (out of memory), None otherwise
    failed_combo: Combo | None = None


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
    steps: dict[tuple, StepTimes | None] = {}  # per drafter, batch size and k (the verify's length)
    phase = on_phase or (lambda _: None)
    combo = None

    def out_of_memory(e):
        result.failed_combo = combo
        result.failure = _out_of_memory(decoder, combo.batch_size if combo is not None else decoder.settings.batch_size, e)

    with _keeping_what_was_measured(result, out_of_memory):
        ids = encode_prompts(decoder, prompts)
        decoder.reserve(ids)  # one cache size for every batch and row of the sweep
        for combo in combos:
            key = (combo.batch_size, combo.temperature)
            if key not in baselines:
                base = decoder.with_settings(drafter="none", batch_size=combo.batch_size, temperature=combo.temperature)
                phase(f"baseline (batch {combo.batch_size}, temperature {combo.temperature:g})")
                baselines[key] = run_pass(base, ids, warmed=set() if warmup else None)
            dec = decoder.with_settings(
                drafter=combo.drafter, k=combo.k, batch_size=combo.batch_size, temperature=combo.temperature
            )
            phase(f"{combo.drafter} k={combo.k} batch {combo.batch_size} temperature {combo.temperature:g}")
            warmed = set() if warmup else None
            if warmup:  # before the step times, which use the same compiled steps
                warm_up(dec, ids[: combo.batch_size])
                warmed.add(_step_shapes(dec, ids[: combo.batch_size]) or len(ids[: combo.batch_size]))
            skey = (combo.drafter, combo.batch_size, combo.k)  # the verify's cost depends on k
            if skey not in steps:
                # the one-token steps depend on the drafter and batch size only: measured once
                known = next((v for (d, b, _), v in steps.items()
                              if (d, b) == skey[:2] and v is not None), None)
                steps[skey] = measure_step_times(dec, ids, known)
            spec = run_pass(dec, ids, warmed=warmed)
            result.rows.append((combo, baselines[key], spec, steps[skey]))
            if on_row is not None:
                on_row(result)
    return result
