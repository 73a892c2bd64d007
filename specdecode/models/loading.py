"""Load target and draft models: hub id or local directory, dtype, device, 4-bit, attention.

What it does: resolves `device`/`dtype`/`attention` from Settings, loads tokenizer and
model with transformers' Auto classes, and turns the usual failures (missing path,
offline, gated, not a causal LM, custom code without --trust-remote-code, missing extras)
into one-line `ModelLoadError`s that the CLI prints with exit code 1.

Untrusted checkpoints: `trust_remote_code` is passed through as given (off by default), so
a model's own Python files never run unless asked; safetensors weights are loaded whenever
a checkpoint has them (`use_safetensors=True`), and a checkpoint with only pickle weights
(pytorch_model.bin) loads with a note in `LoadedModel.notes`, which the CLI prints.

What it does not: generate, or decide whether two models can pair up (see `pairing.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "check_causal_lm",
    "load_model",
    "resolve_attention",
    "resolve_device",
    "resolve_model_path",
    "resolve_dtype",
    "weights_format",
]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do (exit code 1)."""


@dataclass
class LoadedModel:
    name: str
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    device: torch.device
    dtype: torch.dtype
    notes: list[str] = field(default_factory=list)  # one line each, for the user (e.g. pickle weights)

    @property
    def config(self):
        return self.model.config

    @property
    def vocab_rows(self) -> int:
        """Rows of the output embedding: the ids the model can emit."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def num_layers(self) -> int:
        text = self.model.config.get_text_config()
        return int(text.num_hidden_layers)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """EOS ids as Hugging Face generate() uses them: generation_config first, then the tokenizer."""
        ids: Any = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if ids is None:
            ids = getattr(self.model.config, "eos_token_id", None)
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return ()
        if isinstance(ids, int):
            return (ids,)
        return tuple(int(i) for i in ids)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device '{device}' was asked for but no CUDA GPU is available (use --device cpu)")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ModelLoadError(f"device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' was asked for but MPS is not available (use --device cpu)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def resolve_attention(attention: str, device: torch.device) -> str:
    """The engine drives attention through explicit per-row masks: sdpa or eager.

    `auto` stays `auto` here: load_model picks sdpa, or eager for models that sdpa cannot run
    (attention-logit softcapping, as in Gemma 2; architectures without sdpa support).
    flash_attention_2 cannot take an arbitrary 4D mask, so it is refused rather than allowed
    to produce wrong tokens.
    """
    if attention == "flash_attention_2":
        raise ModelLoadError(
            "attention 'flash_attention_2' cannot take the per-row masks speculative verification needs; "
            "use --attention sdpa (the default)"
        )
    return attention


def _auto_attention(config) -> str:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "attn_logit_softcapping", None):
        return "eager"  # sdpa has no softcap: it would refuse at the first forward
    return "sdpa"


BUILTIN_PREFIX = "builtin:"


def resolve_model_path(name: str) -> str:
    """`builtin:demo/target` -> the model directory shipped inside the package
    (specdecode/assets/demo/target); any other name is returned unchanged."""
    if not name.startswith(BUILTIN_PREFIX):
        return name
    import importlib.resources

    rel = name[len(BUILTIN_PREFIX) :].strip("/")
    entry = importlib.resources.files("specdecode").joinpath("assets", *rel.split("/"))
    if not rel or not entry.is_dir():
        raise ModelLoadError(f"'{name}' is not a model shipped with specdecode (try builtin:demo/target or builtin:demo/draft)")
    return str(entry)


def _check_source(name: str) -> None:
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"model path '{name}' is a file; point at the directory holding config.json")
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"model directory '{name}' has no config.json")
        return
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(os.sep)
    if looks_like_path:
        raise ModelLoadError(f"model path '{name}' does not exist")
    _check_hub_reachable(name)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def _check_hub_reachable(repo_id: str) -> None:
    """A hub id that is not cached needs the network: find out in a second, not after minutes of retries."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an odd id: let transformers produce the real error
        return
    if isinstance(cached, str):
        return  # in the local cache: transformers can load it offline
    if _hub_offline():
        raise ModelLoadError(
            f"'{repo_id}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            "download it first with `hf download` or name a local directory"
        )
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or (443 if endpoint.startswith("https") else 80)
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError:
        raise ModelLoadError(
            f"'{repo_id}' is not in the Hugging Face cache and {host} cannot be reached (no network?): "
            "download it on a connected machine with `hf download` or name a local directory"
        ) from None


def _translate(name: str, err: Exception) -> ModelLoadError:
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    # what the checkpoint itself says comes first: with HF_HUB_OFFLINE set, or a path that
    # happens to contain "403", a local directory's real problem must not read as a hub one
    if "trust_remote_code" in low:
        return ModelLoadError(f"'{name}' contains custom code: rerun with --trust-remote-code if you trust it")
    if "unrecognized configuration class" in low or "does not recognize this architecture" in low:
        return ModelLoadError(f"'{name}' is not a causal language model that transformers can load ({err})".splitlines()[0])
    if "ignore_mismatched_sizes" in low or "size mismatch" in low:
        return ModelLoadError(
            f"the weights of '{name}' do not match the shapes in its config.json (a corrupt or mixed-up checkpoint)"
        )
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return ModelLoadError(f"out of memory loading '{name}': try --quantized, a smaller --dtype or another device")
    local = Path(name).expanduser().is_dir()
    if not local:
        if "gated" in low or "401" in low or "403" in low or "awaiting a review" in low:
            return ModelLoadError(
                f"'{name}' is gated on the Hugging Face hub: accept its licence on its model page, then run `hf auth login`"
            )
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if (
            offline
            or "offline" in low
            or "connection" in low
            or "resolve" in low
            or "couldn't connect" in low
            or "network" in low
            or "localentrynotfound" in low
            or "we couldn't" in low
        ):
            return ModelLoadError(
                f"'{name}' is not a local directory and is not in the Hugging Face cache, and the hub cannot be reached"
                " (offline): download it first with `hf download` or name a local directory"
            )
        if "repository not found" in low or "is not a valid model identifier" in low or "404" in low:
            return ModelLoadError(f"model '{name}' was not found: not a local directory and not a model id on the hub")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelLoadError(f"could not load '{name}': {first}")


CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def check_causal_lm(name: str, config) -> None:
    """Refuse a checkpoint whose saved architecture is not a causal LM (a BERT encoder, a
    masked LM): AutoModelForCausalLM would build a *different* model around its weights."""
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
        raise ModelLoadError(f"'{name}' is not a causal language model (architecture: {', '.join(archs)})")


SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def weights_format(name: str) -> str | None:
    """'safetensors' or 'pickle' for a local directory (or a hub id whose files are cached); None when unknown."""
    p = Path(name).expanduser()

    def have(fname: str) -> bool:
        if p.is_dir():
            return (p / fname).is_file()
        try:
            from huggingface_hub import try_to_load_from_cache

            return isinstance(try_to_load_from_cache(name, fname), str)
        except Exception:  # noqa: BLE001 - an odd id: unknown
            return False

    if any(have(f) for f in SAFETENSORS_FILES):
        return "safetensors"
    if any(have(f) for f in PICKLE_FILES):
        return "pickle"
    return None


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    name = resolve_model_path(name)
    _check_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise _translate(name, e) from e
    if tok.pad_token_id is None:
        # padding is internal (right-padded prompts, masked out); any id works
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


def load_model(
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    attention: str = "auto",
    quantized: bool = False,
    trust_remote_code: bool = False,
    tokenizer=None,
) -> LoadedModel:
    """Load a causal LM (and its tokenizer unless given) for inference on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    name = resolve_model_path(name)
    _check_source(name)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
    }
    if quantized:
        kwargs["quantization_config"] = _bnb_config(dtype, device)
        kwargs["device_map"] = {"": device.index if device.type == "cuda" and device.index is not None else str(device)}
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise _translate(name, e) from e
    check_causal_lm(name, config)
    notes: list[str] = []
    fmt = weights_format(name)
    if fmt == "safetensors":
        kwargs["use_safetensors"] = True  # never the pickle file next to it
    elif fmt == "pickle":
        notes.append(
            f"'{name}' has only pickle weights (pytorch_model.bin), no safetensors: loading them "
            "(transformers restricts what torch.load may build; prefer checkpoints with safetensors)"
        )
    auto_map = getattr(config, "auto_map", None) or {}
    if not trust_remote_code and "AutoModelForCausalLM" in auto_map:
        notes.append(
            f"'{name}' ships its own model code; transformers' built-in '{config.model_type}' model is used "
            "instead (pass --trust-remote-code to run the model's own code, if you trust it)"
        )
    kwargs["attn_implementation"] = _auto_attention(config) if attention == "auto" else attention
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(name, config=config, **kwargs)
        except ValueError as e:
            if attention != "auto" or "scaled_dot_product_attention" not in str(e):
                raise
            kwargs["attn_implementation"] = "eager"  # an architecture without sdpa support
            model = AutoModelForCausalLM.from_pretrained(name, config=config, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ModelLoadError(
                f"'{name}' is not a causal language model (config {type(config).__name__})"
            ) from e
        raise _translate(name, e) from e
    except Exception as e:  # noqa: BLE001
        raise _translate(name, e) from e
    if not quantized:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    tok = tokenizer if tokenizer is not None else load_tokenizer(name, trust_remote_code)
    return LoadedModel(name=name, model=model, tokenizer=tok, device=device, dtype=dtype, notes=notes)


def _bnb_config(dtype: torch.dtype, device: torch.device):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            "--quantized needs bitsandbytes: pip install 'specdecode[quant]'"
        ) from None
    if device.type != "cuda":
        # bitsandbytes >= 0.46 ships a CPU backend for 4-bit; older ones only run on CUDA
        import bitsandbytes as bnb

        major_minor = tuple(int(x) for x in bnb.__version__.split(".")[:2])
        if major_minor < (0, 46):
            raise ModelLoadError(
                f"--quantized on {device.type} needs bitsandbytes >= 0.46 (found {bnb.__version__}); "
                "use a CUDA device or --no-quantized"
            )
    from transformers import BitsAndBytesConfig

    compute = dtype if dtype != torch.float32 or device.type != "cuda" else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=True,
    )
