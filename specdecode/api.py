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
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .decoding.cache import ModelRunner
from .decoding.native import native_support
from .decoding.engine import EngineParams, RoundEvent, RowStats, SpeculativeEngine, make_generator
from .decoding.sampling import SamplingParams
from .models.loading import LoadedModel, ModelLoadError, load_model, load_tokenizer, resolve_attention, resolve_device, resolve_dtype
from .models.pairing import PairReport, check_pair
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
        return cls(
            new_tokens=s.new_tokens,
            rounds=s.rounds,
            draft_tokens=s.draft_tokens,
            accepted_tokens=s.accepted_tokens,
            acceptance_rate=s.acceptance_rate,
            block_efficiency=s.block_efficiency,
            time_s=time_s,
            tokens_per_s=s.new_tokens / time_s if time_s > 0 else 0.0,
            position_trials=list(s.position_trials),
            position_accepts=list(s.position_accepts),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of `generate --json` (DESIGN.md)."""
        return {
            "new_tokens": self.new_tokens,
            "rounds": self.rounds,
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens,
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
    if not settings.target:
        raise SettingsError("no target model: name one with --target or a --preset")
    if settings.drafter == "model" and not settings.draft:
        raise SettingsError("--drafter model needs a draft model: name one with --draft (or use --drafter ngram/none)")
    device = resolve_device(settings.device)
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
    t_tok = load_tokenizer(settings.target, settings.trust_remote_code)
    report = None
    draft = None
    if settings.drafter == "model":
        d_tok = load_tokenizer(settings.draft, settings.trust_remote_code)
        # tokenizer check first: it is cheap and a mismatch makes loading the weights pointless
        pre = check_pair(t_tok, d_tok, target_rows=0, draft_rows=0)
        if not pre.compatible:
            raise ModelLoadError(f"cannot pair '{settings.draft}' with '{settings.target}': " + "; ".join(pre.reasons))
    kw = dict(device=device, dtype=dtype, attention=attention, quantized=settings.quantized,
              trust_remote_code=settings.trust_remote_code)
    target = load_model(settings.target, tokenizer=t_tok, **kw)
    if settings.drafter == "model":
        draft = load_model(settings.draft, tokenizer=d_tok, **kw)
        report = check_pair(t_tok, d_tok, target.vocab_rows, draft.vocab_rows)
    if settings.drafter == "early-exit" and settings.exit_layer is not None and settings.exit_layer >= target.num_layers:
        raise SettingsError(
            f"--exit-layer {settings.exit_layer} must be below the target's {target.num_layers} layers"
        )
    return target, draft, report


# --k auto: a row stops drafting after a token its draft gave less than this probability
# (Hugging Face's assistant_confidence_threshold default is the same 0.4)
DRAFT_CONFIDENCE = 0.4


def _stop_below(settings: Settings) -> float | None:
    return DRAFT_CONFIDENCE if settings.k == "auto" else None


def build_drafter(settings: Settings, target: LoadedModel, draft: LoadedModel | None, draft_runner=None,
                  decoder: SpeculativeDecoder | None = None):
    if settings.drafter == "none":
        return None
    if settings.drafter == "model":
        from .drafters.draft_model import ModelDrafter

        assert draft is not None
        return ModelDrafter(draft, runner=draft_runner, stop_below=_stop_below(settings))
    if settings.drafter == "ngram":
        from .drafters.ngram import NgramDrafter

        return NgramDrafter()
    if settings.drafter == "early-exit":
        from .drafters.early_exit import EarlyExitDrafter

        if decoder is not None:  # reuse the decoder's view and runner across batches
            view = decoder.early_exit_view(settings.exit_layer)
            return EarlyExitDrafter(target, settings.exit_layer, stop_below=_stop_below(settings),
                                    view=view, runner=decoder.runner(view))
        return EarlyExitDrafter(target, settings.exit_layer, stop_below=_stop_below(settings))
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
        self._runners: dict[tuple, ModelRunner] = {}
        self._views: dict[int, LoadedModel] = {}

    def runner(self, loaded: LoadedModel) -> ModelRunner:
        """One ModelRunner per model and decoder: in graph mode its captured steps serve every batch."""
        s = self.settings
        cuda = loaded.device.type == "cuda"
        key = self._runner_key(loaded)
        graphs = key[1]
        if key not in self._runners:
            reason = native_support(loaded.model)
            if s.fused and reason is not None:
                raise SettingsError(f"--fused: {reason}")
            fused = reason is None and s.fused is not False
            # by default only the fused layers are compiled: torch.compile over arbitrary
            # transformers modules and this cache is not something to turn on unasked
            compile = cuda and (s.compile if s.compile is not None else fused)
            if s.kernels and cuda and not fused:
                raise SettingsError(f"--kernels: the kernels run the fused layers, and {reason or '--no-fused was given'}")
            kernels = s.kernels if cuda else False
            runner = ModelRunner(loaded.model, graphs=graphs, compile=compile, native=fused, kernels=kernels)
            if s.kernels and cuda and runner.native is not None and not runner.native.kernels:
                raise SettingsError(f"--kernels: {runner.native.kernels_unsupported}")
            self._runners[key] = runner
        return self._runners[key]

    def _runner_key(self, loaded: LoadedModel) -> tuple:
        s = self.settings
        graphs = loaded.device.type == "cuda" and (s.cuda_graphs if s.cuda_graphs is not None else True)
        return (id(loaded.model), graphs, s.compile, s.fused, s.kernels)

    def set_runner(self, loaded: LoadedModel, runner: ModelRunner) -> None:
        """Run `loaded` through `runner` under the current settings (tests, benchmarks)."""
        self._runners[self._runner_key(loaded)] = runner

    def early_exit_view(self, exit_layer: int) -> LoadedModel:
        """The target's first `exit_layer` layers as a model (shared modules), one per decoder and
        exit layer, so its runner (and any captured steps) serve every batch."""
        from .drafters.early_exit import exit_view

        found = self._views.get(exit_layer)
        if found is None:
            found = self._views[exit_layer] = exit_view(self.target, exit_layer)
        return found

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeculativeDecoder:
        target, draft, report = load_pair(settings)
        return cls(settings, target, draft, report)

    @property
    def notes(self) -> list[str]:
        """One-line notes from loading the models (e.g. pickle-only weights), target first."""
        notes = [*self.target.notes, *(self.draft.notes if self.draft is not None else [])]
        s = self.settings
        if self.target.device.type == "cuda" and (
            s.compile or (s.compile is None and s.fused is not False and native_support(self.target.model) is None)
        ):
            notes.append("decode steps are compiled on first use of each batch size (tens of seconds; "
                         "torch caches them on disk for later runs; --no-compile skips it)")
        elif self.target.device.type != "cuda" and (s.compile or s.cuda_graphs or s.kernels):
            notes.append("--compile, --cuda-graphs and --kernels apply to CUDA devices; on "
                         f"{self.target.device.type} the decode steps run eagerly")
        return notes

    def with_settings(self, **changes: Any) -> SpeculativeDecoder:
        """Same loaded models, other run settings (k, drafter 'none', sampling, batch size...)."""
        s = self.settings.model_copy(update=changes)
        s = Settings.model_validate(s.model_dump())
        other = SpeculativeDecoder(s, self.target, self.draft, self.report)
        # same models: share their runners (compiled and captured steps) and early-exit views
        other._runners, other._views = self._runners, self._views
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
            ids = ids[-self.settings.max_length :]  # keep the end: generation continues from it
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

            k_policy = AdaptiveK(max_k=s.max_k)
        params = EngineParams(
            num_draft_tokens=s.k if isinstance(s.k, int) else s.max_k,
            max_new_tokens=s.max_new_tokens,
            sampling=SamplingParams(s.temperature, s.top_k, s.top_p),
            eos_token_ids=self.target.eos_token_ids,
            seed=s.seed,
        )
        return SpeculativeEngine(
            self.target, drafter, params, k_policy=k_policy, generator=generator, runner=self.runner(self.target)
        )

    def _generator(self) -> torch.Generator | None:
        """One random stream per call, shared by its batches (seeded: reproducible)."""
        if self.settings.greedy:
            return None
        return make_generator(self.target.device, self.settings.seed)

    def stream(self, prompts: Sequence[str]) -> Iterator[RoundEvent]:
        """Round events for all prompts (batched by batch_size), rows numbered in prompt order."""
        ids = self.encode_all(prompts)
        offset = 0
        generator = self._generator()
        for batch in self._batches(ids):
            for ev in self.engine(generator=generator).stream(batch):
                yield dataclasses.replace(ev, row=offset + ev.row)
            offset += len(batch)

    def _batches(self, ids: list[list[int]]) -> list[list[list[int]]]:
        n = self.settings.batch_size
        return [ids[i : i + n] for i in range(0, len(ids), n)]

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
        offset = 0
        generator = self._generator()
        for batch in self._batches(ids):
            eng = self.engine(generator=generator)
            tokens: list[list[int]] = [[] for _ in batch]
            events: list[list[RoundEvent]] = [[] for _ in batch]
            reasons: list[str | None] = [None] * len(batch)
            done_at: list[float] = [0.0] * len(batch)
            _sync(self.target.device)
            t0 = time.perf_counter()
            for ev in eng.stream(batch):
                tokens[ev.row].extend(ev.tokens)
                events[ev.row].append(ev)
                if on_event is not None:
                    on_event(offset + ev.row, ev)
                if ev.finished:
                    reasons[ev.row] = ev.finish_reason
                    done_at[ev.row] = time.perf_counter() - t0  # events follow a host sync
            results = [
                GenerationResult(
                    prompt=prompts[offset + i],
                    text=self.decode(tokens[i]),
                    token_ids=tokens[i],
                    finish_reason=reasons[i],
                    stats=GenerationStats.from_row(eng.stats[i], done_at[i]),
                    events=events[i],
                )
                for i in range(len(batch))
            ]
            yield offset, results
            offset += len(batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
