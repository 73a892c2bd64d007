"""The public Python API: load a pair from Settings, generate, stream round events.

    from specdecode import Settings, SpeculativeDecoder
    dec = SpeculativeDecoder.from_settings(Settings(target="Qwen/Qwen2.5-7B-Instruct",
                                                     draft="Qwen/Qwen2.5-0.5B-Instruct", k=5))
    for result in dec.generate(["Explain speculative decoding."]):
        print(result.text, result.stats.acceptance_rate)

Every command of the CLI goes through this module. It tokenizes (chat template,
truncation to max_length), batches prompts by batch_size, runs the engine and decodes.

What it does not: print (the CLI renders events), or time for benchmarks (bench/).
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .decoding.engine import EngineParams, RoundEvent, RowStats, SpeculativeEngine, make_generator
from .decoding.sampling import SamplingParams
from .metrics import cost_ratio, round_counts
from .models.loading import (
    LoadedModel,
    ModelLoadError,
    apply_threads,
    check_source,
    decode_weights,
    load_model,
    load_tokenizer,
    model_source,
    resolve_attention,
    resolve_device,
    resolve_dtype,
)
from .models.pairing import PairReport, check_pair
from .models.placement import init_tensor_parallel, shared_seed
from .models.placement import world as _world
from .results import batches, collect_batch
from .settings import Settings, SettingsError

__all__ = ["GenerationResult", "GenerationStats", "SpeculativeDecoder", "load_pair"]


@dataclass
class GenerationStats:
    new_tokens: int
    rounds: int
    draft_tokens: int
    accepted_tokens: int
    acceptance_rate: float | None
    block_efficiency: float | None
    time_s: float
    tokens_per_s: float
    position_trials: list[int] = field(default_factory=list)
    position_accepts: list[int] = field(default_factory=list)

    @classmethod
    def from_row(cls, s: RowStats, time_s: float) -> GenerationStats:
        return cls(new_tokens=s.new_tokens, acceptance_rate=s.acceptance_rate, block_efficiency=s.block_efficiency,
                   time_s=time_s, tokens_per_s=s.new_tokens / time_s if time_s > 0 else 0.0, **s.counters())

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of `generate --json` (DESIGN.md)."""
        return {
            "new_tokens": self.new_tokens,
            **round_counts(self),
            "acceptance_rate": self.acceptance_rate,
            "block_efficiency": self.block_efficiency,
            "time_s": self.time_s,
            "tokens_per_s": self.tokens_per_s,
        }


@dataclass
class GenerationResult:
    prompt: str
    text: str
    token_ids: list[int]  # generated ids only, ending with EOS when generation stopped on it
    finish_reason: str | None
    stats: GenerationStats
    events: list[RoundEvent] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "text": self.text, "token_ids": self.token_ids, "stats": self.stats.to_dict()}


def load_pair(settings: Settings) -> tuple[LoadedModel, LoadedModel | None, PairReport | None]:
    """Load the target, and the draft when the drafter needs one; check that they pair up."""
    check_models_named(settings)
    if settings.tp > 1 or world_size() > 1:
        # torchrun: join the process group; this rank's GPU (or the CPU, gloo)
        device = init_tensor_parallel(settings.tp, settings.device)
    else:
        device = resolve_device(settings.device)
    apply_threads(settings.threads, device)
    dtype = resolve_dtype(settings.dtype, device)
    attention = resolve_attention(settings.attention, device)
    if settings.quantized and device.type != "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ModelLoadError(
                f"quantized (4-bit) loading needs bitsandbytes and a CUDA GPU; the device is {device.type}: "
                "use --no-quantized"
            ) from None
    gguf = settings.gguf_file
    t_tok = load_tokenizer(settings.target, settings.trust_remote_code, gguf)
    report = None
    draft = None
    if settings.drafter == "model":
        d_tok = load_tokenizer(settings.draft, settings.trust_remote_code, gguf)
        # tokenizer check first: it is cheap and a mismatch makes loading the weights pointless
        pre = check_pair(t_tok, d_tok, target_rows=0, draft_rows=0)
        if not pre.compatible:
            raise ModelLoadError(f"cannot pair '{settings.draft}' with '{settings.target}': " + "; ".join(pre.reasons))
    kw = dict(device=device, dtype=dtype, attention=attention, quantized=settings.quantized,
              trust_remote_code=settings.trust_remote_code)
    # the target alone is split (tensor parallel or accelerate's device map); the draft is small
    # and loads whole: on every rank, or on the device the device-mapped target takes inputs on
    target = load_model(settings.target, tokenizer=t_tok, gguf_file=gguf, tp=settings.tp,
                        device_map=settings.device_map, max_memory=settings.max_memory,
                        offload_folder=settings.offload_folder, **kw)
    kw["device"] = target.device
    if settings.tp > 1 and not settings.greedy and settings.seed is None:
        settings.seed = shared_seed(device)  # every rank must draw the same numbers
    if settings.drafter == "model":
        # --no-quantize-draft: a 4-bit target with the (small) draft in the compute dtype
        kw["quantized"] = settings.quantized and settings.quantize_draft
        draft = load_model(settings.draft, tokenizer=d_tok, gguf_file=gguf, **kw)
        report = check_pair(t_tok, d_tok, target.vocab_rows, draft.vocab_rows)
    if settings.drafter == "early-exit" and settings.exit_layer is not None and settings.exit_layer >= target.num_layers:
        raise SettingsError(
            f"--exit-layer {settings.exit_layer} must be below the target's {target.num_layers} layers"
        )
    return target, draft, report


def world_size() -> int:
    """Processes torchrun started (1 in a plain process)."""
    return _world()[2]


def check_models_named(settings: Settings) -> None:
    """A target, and a draft when the drafter is a model. The target's own path problem comes
    first: `--target /typo` must report the typo, not the draft it lacks. A draft is never
    taken from another pair: naming --target drops the default (demo) preset's draft."""
    if not settings.target:
        raise SettingsError("no target model: name one with --target or a --preset")
    if settings.drafter == "model" and not settings.draft:
        check_source(model_source(settings.target, settings.gguf_file))
        raise SettingsError(
            f"--target {settings.target} has no draft model to pair with: name one with --draft ID|PATH, "
            "or draft without one: --drafter ngram, --drafter early-exit --exit-layer N, or --drafter none"
        )


# prompts already reported as truncated, per loaded target model
_TRUNCATION_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# --k auto: a row stops drafting after a token its draft gave less than this probability
# (Hugging Face's assistant_confidence_threshold default is the same 0.4)
DRAFT_CONFIDENCE = 0.4
# ... in captured rounds, where the stop skips the remaining draft steps on the device (CUDA graph
# IF nodes) and --k auto's policy prices what it skips: priced on the real Qwen2.5-Coder 0.5B ->
# 1.5B pair's traces (coding, mixed Spec-Bench, GSM8K) with the draft's own probabilities and the
# H200's step costs, 0.7 gave the most tokens per ms on all three (1.339 / 1.167 / 1.394x the
# target alone, against 1.333 / 1.166 / 1.369x at 0.6 and 1.299 / 1.136 / 1.337x at 0.4), and at
# four times the guessed IF-node costs on two of them. To be confirmed on the device:
# benchmarks/policy_sim.py confidence, benchmarks/results/2026-12-05-cpu-confidence-sim-stop36-*.json
CAPTURED_DRAFT_CONFIDENCE = 0.7


def _conditional(runner):
    """How a captured round's draft decides on the device whether to run a step (accel/rounds.py's
    device_if), where its runner's steps are captured and CUDA graphs can branch; else None."""
    if runner is None or not getattr(runner, "graphs", False):
        return None
    from .accel.rounds import conditional_supported, device_if  # noqa: PLC0415 (CUDA tier, imported on use)

    return device_if if conditional_supported(runner.device) else None


def confidence_stop(settings: Settings, runner=None) -> float | None:
    """The confidence stop of --k auto. On captured steps it needs CUDA graph IF nodes
    (`_conditional`): without them every round runs all k draft steps and verifies k positions
    anyway, so stopping a row's proposal early saves nothing and only gives away tokens the target
    might have kept. Not on other fixed-shape steps (compiled, uncaptured): stopping there would
    cost a host synchronisation a step."""
    if settings.k != "auto":
        return None
    if getattr(runner, "fixed_shapes", False):
        return CAPTURED_DRAFT_CONFIDENCE if _conditional(runner) is not None else None
    return DRAFT_CONFIDENCE


def _step_params(model) -> int:
    """Parameters one decoding step reads (models.loading.decode_weights)."""
    return sum(p.numel() for _, p, read in decode_weights(model) if read)


def build_drafter(settings: Settings, target: LoadedModel, draft: LoadedModel | None, draft_runner=None,
                  decoder: SpeculativeDecoder | None = None):
    if settings.drafter == "none":
        return None
    if settings.drafter == "model":
        from .drafters.draft_model import ModelDrafter

        assert draft is not None
        return ModelDrafter(draft, runner=draft_runner, stop_below=confidence_stop(settings, draft_runner),
                            conditional=_conditional(draft_runner))
    if settings.drafter == "ngram":
        from .drafters.ngram import NgramDrafter

        return NgramDrafter()
    if settings.drafter == "early-exit":
        from .drafters.early_exit import EarlyExitDrafter

        if decoder is not None:  # reuse the decoder's view and runner across batches
            view = decoder.early_exit_view(settings.exit_layer)
            runner = decoder.runner(view)
            return EarlyExitDrafter(target, settings.exit_layer, stop_below=confidence_stop(settings, runner),
                                    view=view, runner=runner, conditional=_conditional(runner))
        return EarlyExitDrafter(target, settings.exit_layer, stop_below=confidence_stop(settings))
    raise SettingsError(f"unknown drafter '{settings.drafter}'")


class SpeculativeDecoder:
    """A loaded pair plus settings: tokenizes, batches, runs the engine, decodes."""

    def __init__(self, settings: Settings, target: LoadedModel, draft: LoadedModel | None = None,
                 report: PairReport | None = None) -> None:
        self.settings = settings
        self.target = target
        self.draft = draft
        self.report = report
        self.tokenizer = target.tokenizer
        self._runners: dict[tuple, object] = {}  # (model, execution) -> accel.runner.ModelRunner
        self._rounds: dict[tuple, object] = {}  # (target runner, verify SMs) -> accel.rounds.CapturedRounds
        if settings.overlap_sms is not None and target.device.type != "cuda":
            raise SettingsError(f"--overlap-sms divides a CUDA GPU between the round's branches; the target is on "
                                f"{target.device.type}")
        self._executions: dict[int, object] = {}  # model -> accel.execution.Execution (these settings)
        self._views: dict[int, LoadedModel] = {}
        self.reserved = 0  # longest prompt the caches are sized for (see reserve)
        self._round_gaps = None  # --k auto: the measured time between rounds, kept across batches

    def execution(self, loaded: LoadedModel):
        """How `loaded`'s decode steps run under these settings (accel.execution.Execution),
        resolved once per model and decoder."""
        found = self._executions.get(id(loaded.model))
        if found is None:
            from .accel.execution import resolve_execution

            found = self._executions[id(loaded.model)] = resolve_execution(self.settings, loaded.model, loaded.device)
        return found

    def runner(self, loaded: LoadedModel):
        """One ModelRunner per model, execution and decoder: its compiled steps and pooled caches
        (and the rounds captured on them) serve every batch."""
        from .accel.runner import ModelRunner

        ex = self.execution(loaded)
        key = self._runner_key(loaded)
        if key not in self._runners:
            head8 = key[-1]
            runner = ModelRunner(loaded.model, graphs=ex.graphs, compile=ex.compile, fused=ex.fused,
                                 kernels=ex.kernels, nf4=ex.nf4, head_fp8=head8)
            if self.settings.kernels and loaded.device.type == "cuda" and runner.fused is not None \
                    and not runner.fused.kernels:
                raise SettingsError(f"--kernels: {runner.fused.kernels_unsupported}")
            if head8 and (runner.fused is None or runner.fused.head_fp8 is None):
                why = runner.fused.kernels_unsupported if runner.fused is not None else runner.fused_unsupported
                raise SettingsError("--draft-fp8-head: the draft's decode steps do not run on the Triton kernels"
                                    + (f" ({why})" if why else ""))
            self._runners[key] = runner
        return self._runners[key]

    def _runner_key(self, loaded: LoadedModel) -> tuple:
        """(model, its execution, whether its head is read in fp8: the draft model's, see
        draft_fp8_head)."""
        return (id(loaded.model), self.execution(loaded).key(), loaded is self.draft and self.draft_fp8_head(loaded))

    def draft_fp8_head(self, loaded: LoadedModel) -> bool:
        """Whether the draft model's kernel steps read an e4m3 copy of its head (--draft-fp8-head,
        off by default). Asked for where it cannot run: a SettingsError naming why."""
        if not self.settings.draft_fp8_head:
            return False
        from .accel.fused import head_fp8_unsupported

        head = getattr(loaded.model, "lm_head", None)
        why = head_fp8_unsupported(head.weight) if head is not None else "the draft has no lm_head"
        if why:
            raise SettingsError(f"--draft-fp8-head: {why}")
        return True

    def set_runner(self, loaded: LoadedModel, runner) -> None:
        """Run `loaded` through `runner` under the current settings (tests, benchmarks)."""
        self._runners[self._runner_key(loaded)] = runner

    def rounds(self):
        """How the target's rounds run: captured as CUDA graphs (one object per target runner, so
        its graphs serve every batch), or None for the reference's eager rounds."""
        runner = self.runner(self.target)
        sms = self.settings.overlap_sms  # (a CUDA target: checked when the decoder was made)
        if sms is not None and not runner.graphs:
            raise SettingsError("--overlap-sms divides a CUDA GPU between the round's branches: it needs CUDA graphs "
                                "(not --no-cuda-graphs)")
        if not runner.graphs:
            return None
        found = self._rounds.get((id(runner), sms))
        if found is None:
            from .accel.rounds import CapturedRounds, green_share

            verify_sms = None
            if sms is not None:
                props = torch.cuda.get_device_properties(runner.device)
                try:  # the draft keeps at least N: the verify's share rounded down to the driver's granularity
                    verify_sms = green_share(props.multi_processor_count, sms, props.major)
                except ValueError as e:
                    raise SettingsError(f"--overlap-sms {sms}: {e}") from e
            try:
                # --no-kernels: no Triton anywhere in the round, its commit included
                found = CapturedRounds(runner, fused_commit=False if self.settings.kernels is False else None,
                                       verify_sms=verify_sms)
            except RuntimeError as e:
                if verify_sms is None:
                    raise
                raise SettingsError(f"--overlap-sms: {e}") from e  # green_stream's one line: no green contexts here
            self._rounds[(id(runner), sms)] = found
        return found

    def reserve(self, ids: Sequence[Sequence[int]]) -> None:
        """Size every later batch's caches for the longest of these prompts, so that prompts of
        other lengths reuse the same compiled and captured shapes (bench sizes from its data set)."""
        self.reserved = max([self.reserved, *map(len, ids)])

    def early_exit_view(self, exit_layer: int) -> LoadedModel:
        """The target's first `exit_layer` layers as a model (shared modules), one per decoder and
        exit layer, so its runner (and any captured steps) serve every batch."""
        from .drafters.early_exit import exit_view

        found = self._views.get(exit_layer)
        if found is None:
            found = self._views[exit_layer] = exit_view(self.target, exit_layer)
        return found

    def draft_model(self) -> tuple[LoadedModel, object] | None:
        """(the model that drafts, its runner) for the model and early-exit drafters; None otherwise."""
        s = self.settings
        if s.drafter == "model" and self.draft is not None:
            return self.draft, self.runner(self.draft)
        if s.drafter == "early-exit":
            view = self.early_exit_view(s.exit_layer)
            return view, self.runner(view)
        return None

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeculativeDecoder:
        target, draft, report = load_pair(settings)
        return cls(settings, target, draft, report)

    @property
    def notes(self) -> list[str]:
        """One-line notes from loading the models (e.g. pickle-only weights), target first."""
        notes = [*self.target.notes, *(self.draft.notes if self.draft is not None else [])]
        s = self.settings
        if self.target.device.type == "cuda" and self.execution(self.target).compile:
            notes.append("decode steps are compiled on first use of each batch size (tens of seconds; "
                         "torch caches them on disk for later runs; --no-compile skips it)")
        elif self.target.device.type != "cuda" and (s.compile or s.cuda_graphs or s.kernels):
            notes.append("--compile, --cuda-graphs and --kernels apply to CUDA devices; on "
                         f"{self.target.device.type} the decode steps run eagerly")
        if s.draft_fp8_head and (s.drafter != "model" or self.draft is None):
            notes.append("--draft-fp8-head applies to a draft model (--drafter model); "
                         f"with --drafter {s.drafter} nothing reads it")
        if not s.quantize_draft and s.drafter != "model":
            notes.append(f"--no-quantize-draft applies to a draft model (--drafter model); with --drafter {s.drafter} "
                         "there is none")
        elif not s.quantize_draft and not s.quantized:
            notes.append("--no-quantize-draft applies with --quantized; without it no model is quantized")
        return notes

    def with_settings(self, **changes: Any) -> SpeculativeDecoder:
        """Same loaded models, other run settings (k, drafter 'none', sampling, batch size...)."""
        s = self.settings.model_copy(update=changes)
        s = Settings.model_validate(s.model_dump())
        other = SpeculativeDecoder(s, self.target, self.draft, self.report)
        # same models: share their runners (compiled steps, pooled caches), captured rounds and views
        other._runners, other._rounds, other._views = self._runners, self._rounds, self._views
        other.reserved = self.reserved
        return other

    # ---- prompts ------------------------------------------------------------------------
    def use_chat(self) -> bool:
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if self.settings.chat is None:
            return has
        if self.settings.chat and not has:
            raise SettingsError("--chat: the target's tokenizer has no chat template (use --no-chat)")
        return self.settings.chat

    def encode(self, prompt: str) -> list[int]:
        if not prompt.strip():
            raise SettingsError("a prompt is empty: give the text to continue")
        tok = self.tokenizer
        if self.use_chat():
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        else:
            ids = tok(prompt, add_special_tokens=True, verbose=False)["input_ids"]
        # verbose=False: the tokenizer's "longer than the maximum sequence length" warning is wrong
        # here, the prompt is cut to --max-length below and checked against the context in encode_all
        if len(ids) > self.settings.max_length:
            dropped = len(ids) - self.settings.max_length
            ids = ids[-self.settings.max_length :]  # keep the end: generation continues from it
            warned = _TRUNCATION_WARNED.setdefault(self.target.model, set())
            if (key := hash(prompt)) not in warned:  # once per prompt and model: bench encodes it for each run
                warned.add(key)
                logging.getLogger("specdecode").warning(
                    "a prompt of %d tokens was cut to its last %d (--max-length): %d tokens dropped from its start",
                    len(ids) + dropped, len(ids), dropped,
                )
        if not ids:
            raise SettingsError("a prompt is empty after tokenization and the tokenizer adds no BOS token")
        return list(ids)

    def encode_all(self, prompts: Sequence[str]) -> list[list[int]]:
        """Tokenize every prompt and check that prompt + max_new_tokens fits the target's context."""
        ids = [self.encode(p) for p in prompts]
        limit = getattr(self.target.config.get_text_config(), "max_position_embeddings", None)
        if ids and limit:
            longest = max(len(x) for x in ids)
            if longest + self.settings.max_new_tokens > limit:
                raise SettingsError(
                    f"a prompt of {longest} tokens plus --max-new-tokens {self.settings.max_new_tokens} exceeds the "
                    f"target's context of {limit} positions: lower --max-new-tokens or --max-length"
                )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- generation ---------------------------------------------------------------------
    def engine(self, k_policy=None, generator: torch.Generator | None = None) -> SpeculativeEngine:
        s = self.settings
        drafter = build_drafter(s, self.target, self.draft, self.runner(self.draft) if self.draft is not None else None,
                                decoder=self)
        if s.k == "auto" and k_policy is None and drafter is not None:
            from .decoding.policy import AdaptiveK

            # a confidence stop decided on the device skips its steps in captured rounds, whose graphs
            # are timed with every step run and with the first alone: there k is a cap, and the policy
            # prices what the stop leaves. Eager rounds keep the plain rule: without measured round
            # costs the verify's extra rows go unpriced, and a longer cap lost on the CPU (the demo
            # pair, k auto: 1.70x against 1.83x; benchmarks/results/2026-12-05-stop36-notes.md)
            k_policy = AdaptiveK(max_k=s.max_k, cost_ratio=self.prior_cost_ratio(),
                                 stop=getattr(drafter, "device_stop", False), gaps=self._round_gaps)
            self._round_gaps = k_policy.gaps  # the next batch's policy starts from this one's window
        k = s.k if isinstance(s.k, int) else s.max_k
        params = EngineParams(
            num_draft_tokens=k,
            max_new_tokens=s.max_new_tokens,
            sampling=SamplingParams(s.temperature, s.top_k, s.top_p),
            eos_token_ids=self.target.eos_token_ids,
            seed=s.seed,
            min_cache_len=s.cache_reserve(self.reserved) if self.reserved else 0,
            overlap=s.overlapped,
            sibling=s.sibling,
        )
        return SpeculativeEngine(self.target, drafter, params, k_policy=k_policy, generator=generator,
                                 runner=self.runner(self.target), rounds=self.rounds())

    def prior_cost_ratio(self) -> float:
        """c for `--k auto` before any round is timed: a draft step's weights over the target's
        (the parameters a step reads), the exit layer's share of the target's layers for
        early exit, 0 for prompt lookup."""
        s = self.settings
        if s.drafter == "model" and self.draft is not None:
            return cost_ratio(_step_params(self.draft.model), _step_params(self.target.model)) or 0.5
        if s.drafter == "early-exit":
            layers = getattr(self.target.config.get_text_config(), "num_hidden_layers", None)
            return min(1.0, s.exit_layer / layers) if layers and s.exit_layer else 0.5
        return 0.0

    def _generator(self) -> torch.Generator | None:
        """One random stream per call, shared by its batches (seeded: reproducible)."""
        if self.settings.greedy:
            return None
        return make_generator(self.target.device, self.settings.seed)

    def stream(self, prompts: Sequence[str]) -> Iterator[RoundEvent]:
        """Round events for all prompts (batched by batch_size), rows numbered in prompt order."""
        ids = self.encode_all(prompts)
        generator = self._generator()
        for offset, batch in batches(ids, self.settings.batch_size):
            for ev in self.engine(generator=generator).stream(batch):
                yield dataclasses.replace(ev, row=offset + ev.row)

    def generate(self, prompts: Sequence[str] | str, on_event=None) -> list[GenerationResult]:
        """Generate for every prompt; results in input order. `on_event(row, event)` sees each round."""
        if isinstance(prompts, str):
            prompts = [prompts]
        out: list[GenerationResult] = []
        for _, results in self.iter_results(prompts, on_event):
            out.extend(results)
        return out

    def iter_results(self, prompts: Sequence[str], on_event=None) -> Iterator[tuple[int, list[GenerationResult]]]:
        """Per batch, as it completes: (index of its first prompt, its results in order)."""
        ids = self.encode_all(prompts)
        generator = self._generator()
        for offset, batch in batches(ids, self.settings.batch_size):
            seen = None if on_event is None else (lambda row, ev, o=offset: on_event(o + row, ev))
            rows, _ = collect_batch(self.engine(generator=generator), batch, self.target.device, seen,
                                    keep_events=True)
            yield offset, [
                GenerationResult(
                    prompt=prompts[offset + i],
                    text=self.decode(r.tokens),
                    token_ids=r.tokens,
                    finish_reason=r.finish_reason,
                    stats=GenerationStats.from_row(r.stats, r.done_s),
                    events=r.events,
                )
                for i, r in enumerate(rows)
            ]
