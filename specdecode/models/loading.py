"""Load target and draft models: hub id, local directory or GGUF file; dtype, device, 4-bit, attention.

What it does: resolves `device`/`dtype`/`attention` from Settings, loads tokenizer and
model with transformers' Auto classes, and turns the usual failures (missing path,
offline, gated, not a causal LM, custom code without --trust-remote-code, missing extras)
into one-line `ModelLoadError`s that the CLI prints with exit code 1.

Untrusted checkpoints: `trust_remote_code` is passed through as given (off by default), so
a model's own Python files never run unless asked; safetensors weights are loaded whenever
a checkpoint has them (`use_safetensors=True`), and a checkpoint with only pickle weights
(pytorch_model.bin) loads with a note in `LoadedModel.notes`, which the CLI prints.

GGUF files (llama.cpp and Ollama exports) load through transformers' own GGUF support: it
dequantizes the weights (float32, then cast to the resolved dtype) and builds the tokenizer
from the same file. `ModelSource` says where a name's files are; `gguf_info` reads a GGUF
file's architecture and quantization without loading its tensors.

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
    "ModelSource",
    "apply_threads",
    "check_model_config",
    "check_source",
    "gguf_info",
    "load_model",
    "resolve_attention",
    "resolve_device",
    "resolve_model_path",
    "resolve_dtype",
    "translate_error",
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


GGUF_SUFFIX = ".gguf"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: `path` (hub id or local directory) for from_pretrained, and the
    GGUF file inside it when the model is one. `name` is what the user typed, for messages."""

    name: str
    path: str
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def gguf_path(self) -> Path | None:
        """The local GGUF file (None for a hub id or a non-GGUF model)."""
        if self.gguf_file is None:
            return None
        p = Path(self.path).expanduser() / self.gguf_file
        return p if p.is_file() else None

    @property
    def label(self) -> str:
        """How messages name it: the GGUF file's path for a GGUF model, else the name given."""
        if self.gguf_file is None or self.name.lower().endswith(GGUF_SUFFIX):
            return self.name
        return f"{self.path.rstrip('/')}/{self.gguf_file}"

    def pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def model_source(name: str, gguf_file: str | None = None) -> ModelSource:
    """`x.gguf` -> (its directory, its file name); a directory or hub id plus `gguf_file` (the
    --gguf-file option) -> that file inside it, unless the directory is a transformers checkpoint
    (config.json), which --gguf-file does not concern (it may name the other model's file)."""
    name = resolve_model_path(name)
    p = Path(name).expanduser()
    if name.lower().endswith(GGUF_SUFFIX) and not p.is_dir():
        return ModelSource(name, str(p.parent), p.name)
    if gguf_file and not (p.is_dir() and (p / "config.json").is_file()):
        return ModelSource(name, name, gguf_file)
    return ModelSource(name, name)


def _check_gguf(source: ModelSource) -> None:
    name = source.name
    if any(sep in str(source.gguf_file) for sep in ("/", "\\", os.sep)):
        raise ModelLoadError(
            f"--gguf-file: give the name of the file inside '{name}', not a path (got '{source.gguf_file}')"
        )
    local = Path(source.path).expanduser()
    if not local.is_dir():
        if source.name.lower().endswith(GGUF_SUFFIX) or local.exists() or source.path.startswith((".", "/", "~")):
            raise ModelLoadError(f"model file '{name}' does not exist")
        _check_hub_reachable(source.path)
        return
    f = local / str(source.gguf_file)
    if not f.exists():
        if name.lower().endswith(GGUF_SUFFIX):
            raise ModelLoadError(f"model file '{name}' does not exist")
        raise ModelLoadError(f"--gguf-file: '{source.gguf_file}' is not in '{name}'")
    if not f.is_file():
        raise ModelLoadError(f"'{f}' is a directory, not a GGUF file")
    try:
        with f.open("rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read '{f}': {e.strerror or e}") from None
    if magic != b"GGUF":
        raise ModelLoadError(f"'{f}' is not a GGUF file (it does not start with the GGUF header)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("reading GGUF files needs the gguf package: pip install gguf") from None


def check_source(source: "ModelSource | str") -> None:
    """Refuse, in one line, a path that does not exist, a file that is no model, or a hub id
    that cannot be reached (instead of minutes of retries)."""
    if isinstance(source, str):
        source = model_source(source)
    if source.is_gguf:
        _check_gguf(source)
        return
    name = source.path
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(
                f"model path '{name}' is a file; point at the directory holding config.json, or at a .gguf file"
            )
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


def translate_error(name: str, err: Exception) -> ModelLoadError:
    """One line saying what to do about a failure to load `name` (a hub id, directory or file)."""
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    # what the checkpoint itself says comes first: with HF_HUB_OFFLINE set, or a path that
    # happens to contain "403", a local directory's real problem must not read as a hub one
    if "trust_remote_code" in low:
        return ModelLoadError(f"'{name}' contains custom code: rerun with --trust-remote-code if you trust it")
    if "unrecognized configuration class" in low or "does not recognize this architecture" in low:
        return ModelLoadError(f"'{name}' is not a causal language model that transformers can load ({err})".splitlines()[0])
    if "ignore_mismatched_sizes" in low or "size mismatch" in low:
        where = "its metadata" if name.lower().endswith(GGUF_SUFFIX) else "its config.json"
        return ModelLoadError(
            f"the weights of '{name}' do not match the shapes in {where} (a corrupt or mixed-up checkpoint)"
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
    if name.lower().endswith(GGUF_SUFFIX):
        return ModelLoadError(
            f"could not read the GGUF file '{name}' (damaged or cut short, or an architecture transformers cannot "
            f"load from GGUF): {first}"
        )
    return ModelLoadError(f"could not load '{name}': {first}")


CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def check_model_config(name: str, config) -> None:
    """Refuse, from its config alone (before any weights load), a checkpoint the engine cannot run:

    - one whose saved architecture is not a causal LM (a BERT encoder, a masked LM):
      AutoModelForCausalLM would build a *different* model around its weights;
    - one with ALiBi position biases that transformers builds from a 2-D padding mask (BLOOM,
      Falcon with ``alibi``): every step here passes an explicit per-row mask over the cache's
      slots with position ids (decoding/step.py), which those models cannot take. (MPT's ALiBi
      depends on the key slots alone and runs.)"""
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
        raise ModelLoadError(f"'{name}' is not a causal language model (architecture: {', '.join(archs)})")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = getattr(text, "model_type", None)
    if kind == "bloom" or (kind == "falcon" and getattr(text, "alibi", False)):
        raise ModelLoadError(
            f"'{name}' uses ALiBi position biases ({kind}), which specdecode does not support: transformers "
            "builds them from a 2-D padding mask, and the engine passes per-row masks over its cache "
            "(models with rotary or learned positions work)"
        )


def decode_weights(model):
    """(name, parameter, read whole by a decoding step) once per distinct parameter: a step reads
    every weight but an untied input embedding table, of which it reads one row per token (tied,
    the table is read whole as the LM head)."""
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    table = emb.weight if emb is not None and (out is None or out.weight is not emb.weight) else None
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        yield name, p, p is not table


SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def gguf_info(path: str | Path) -> dict[str, Any]:
    """Architecture, quantization ('Q4_K_M', from general.file_type) and tensor types (name ->
    count) of a GGUF file, read from its header (no tensor data is loaded)."""
    from collections import Counter

    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError:
        raise ModelLoadError("reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        reader = GGUFReader(str(path), "r")
    except Exception as e:  # noqa: BLE001 - a damaged file is one line
        raise ModelLoadError(f"'{path}' is not a readable GGUF file ({type(e).__name__}: {e})".splitlines()[0]) from None

    def field(key: str):
        f = reader.fields.get(key)
        try:
            return f.contents() if f is not None else None
        except Exception:  # noqa: BLE001 - an odd field: unknown
            return None

    types = Counter(t.tensor_type.name for t in reader.tensors)
    file_type = field("general.file_type")
    quant = None
    if isinstance(file_type, int):
        try:
            quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quant = None
    if quant is None and types:  # no file type recorded: the type most tensors have
        quant = types.most_common(1)[0][0]
    return {
        "file": str(path),
        "architecture": field("general.architecture"),
        "quantization": quant,
        "tensor_types": dict(types.most_common()),
    }


def weights_format(name: str) -> str | None:
    """'gguf' for a .gguf file, 'safetensors' or 'pickle' for a local directory (or a hub id whose
    files are cached); None when unknown."""
    if name.lower().endswith(GGUF_SUFFIX):
        return "gguf"
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


def load_tokenizer(name: str, trust_remote_code: bool = False, gguf_file: str | None = None):
    """The tokenizer of a model directory or hub id, or the one a GGUF file carries."""
    from transformers import AutoTokenizer

    source = model_source(name, gguf_file)
    check_source(source)
    try:
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code,
                                                **source.pretrained_kwargs())
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise translate_error(source.label, e) from e
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
    gguf_file: str | None = None,
    tp: int = 1,
    device_map: str | None = None,
    max_memory: dict[str, str] | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load a causal LM (and its tokenizer unless given) for inference on `device`.

    `tp > 1`: sharded with transformers' tensor-parallel plan over the process group that
    models/placement.py joined (this rank's shard on `device`). `device_map`: placed by
    accelerate within `max_memory` (layers may go to the CPU, or to disk in `offload_folder`);
    the returned `device` is where it takes its inputs."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = model_source(name, gguf_file)
    check_source(source)
    if source.is_gguf and (tp > 1 or device_map is not None):
        raise ModelLoadError(
            f"'{source.label}' is a GGUF file: --tp and --device-map load transformers checkpoints (safetensors)"
        )
    if source.is_gguf:
        return _load_gguf(source, device=device, dtype=dtype, attention=attention, quantized=quantized,
                          trust_remote_code=trust_remote_code, tokenizer=tokenizer)
    name = source.path
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
        raise translate_error(name, e) from e
    check_model_config(name, config)
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
    if tp > 1:
        kwargs.update(_tp_kwargs(name, config, tp, trust_remote_code))
    elif device_map is not None:
        kwargs.update(_device_map_kwargs(device_map, max_memory, offload_folder))
    try:
        try:
            with _quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(name, config=config, **kwargs)
        except ValueError as e:
            if attention != "auto" or "scaled_dot_product_attention" not in str(e):
                raise
            kwargs["attn_implementation"] = "eager"  # an architecture without sdpa support
            with _quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(name, config=config, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ModelLoadError(
                f"'{name}' is not a causal language model (config {type(config).__name__})"
            ) from e
        raise translate_error(name, e) from e
    except Exception as e:  # noqa: BLE001
        raise translate_error(name, e) from e
    if device_map is not None and tp == 1:
        from .placement import execution_device

        where = getattr(model, "hf_device_map", None) or {"": str(device)}
        device = execution_device(where)
        if model.get_input_embeddings().weight.device.type == "meta":
            raise ModelLoadError(
                f"--max-memory leaves no room for the input embedding of '{name}' (all of it went to disk): "
                "give cpu or a GPU at least the embedding's size"
            )
        places = sorted({str(d) for d in where.values()})
        notes.append(f"'{name}' placed by accelerate's device map ({device_map}) on {', '.join(places)}: "
                     "decode steps run on the transformers modules")
    elif tp > 1:
        notes.append(f"'{name}' sharded over {tp} ranks (tensor parallel): decode steps run on the transformers modules")
    elif not quantized:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    tok = tokenizer if tokenizer is not None else load_tokenizer(name, trust_remote_code)
    return LoadedModel(name=name, model=model, tokenizer=tok, device=device, dtype=dtype, notes=notes)


def _tp_kwargs(name: str, config, tp: int, trust_remote_code: bool) -> dict[str, Any]:
    """from_pretrained's arguments for transformers' tensor-parallel plan over `tp` ranks."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not (getattr(text, "base_model_tp_plan", None) or getattr(config, "base_model_tp_plan", None)):
        raise ModelLoadError(
            f"'{name}' ({config.model_type}) has no tensor-parallel plan in transformers: --tp cannot shard it "
            "(use --device-map auto)"
        )
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    for label, n in (("attention heads", heads), ("key/value heads", kv_heads)):
        if isinstance(n, int) and n % tp:
            raise ModelLoadError(f"--tp {tp}: '{name}' has {n} {label}, not divisible by {tp}")
    try:
        from transformers.distributed import DistributedConfig
    except ImportError:  # older transformers: the tp_plan argument itself
        return {"tp_plan": "auto", "tp_size": tp}
    return {"distributed_config": DistributedConfig(tp_size=tp)}


def _device_map_kwargs(device_map: str, max_memory: dict[str, str] | None,
                       offload_folder: str | None) -> dict[str, Any]:
    """from_pretrained's arguments for accelerate's device map."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ModelLoadError("--device-map needs accelerate: pip install accelerate") from None
    from .placement import accelerate_max_memory

    kwargs: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        kwargs["max_memory"] = accelerate_max_memory(max_memory)
    if offload_folder is not None:
        kwargs["offload_folder"] = offload_folder
    return kwargs


def _load_gguf(source: ModelSource, *, device: torch.device, dtype: torch.dtype, attention: str,
               quantized: bool, trust_remote_code: bool, tokenizer) -> LoadedModel:
    """transformers dequantizes a GGUF file's tensors; float32 is its fast path, then one cast."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if quantized:
        raise ModelLoadError(
            f"--quantized loads 4-bit weights with bitsandbytes from safetensors checkpoints; '{source.name}' is a "
            "GGUF file, whose weights are dequantized on load: use --no-quantized (and --dtype bfloat16 to halve memory)"
        )
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(source.path, **source.pretrained_kwargs())
    except Exception as e:  # noqa: BLE001
        raise translate_error(source.label, e) from e
    check_model_config(source.name, config)
    attn = _auto_attention(config) if attention == "auto" else attention
    try:
        with _quiet_transformers(gguf=True):
            model = AutoModelForCausalLM.from_pretrained(
                source.path, dtype=torch.float32, attn_implementation=attn, **source.pretrained_kwargs()
            )
    except Exception as e:  # noqa: BLE001
        raise translate_error(source.label, e) from e
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    tok = tokenizer if tokenizer is not None else load_tokenizer(source.name, trust_remote_code, source.gguf_file)
    return LoadedModel(name=source.name, model=model, tokenizer=tok, device=device, dtype=dtype)


class _quiet_transformers:
    """transformers' own progress bars ("Loading weights", and the GGUF loader's tqdm bar, which
    ignores that switch) off while loading: the CLI draws its own status, and a notebook user of
    the Python API did not ask for them (TRANSFORMERS_VERBOSITY=info keeps them)."""

    def __init__(self, gguf: bool = False) -> None:
        self.gguf = gguf
        self._tqdm = None

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._was = hf_logging.is_progress_bar_enabled()
        if os.environ.get("TRANSFORMERS_VERBOSITY", "").lower() in ("info", "debug"):
            return
        hf_logging.disable_progress_bar()
        if self.gguf:
            from transformers import modeling_gguf_pytorch_utils as gguf_utils

            self._tqdm = getattr(gguf_utils, "tqdm", None)
            if self._tqdm is not None:
                gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable

    def __exit__(self, *exc) -> None:
        from transformers.utils import logging as hf_logging

        if self._was:
            hf_logging.enable_progress_bar()
        if self._tqdm is not None:
            from transformers import modeling_gguf_pytorch_utils as gguf_utils

            gguf_utils.tqdm = self._tqdm


def apply_threads(threads: "int | str", device: torch.device) -> int:
    """Set torch's CPU threads once, where settings meet the device; return the number used.

    `auto`: OMP_NUM_THREADS when the user set it; otherwise half the usable cores, at least one.
    torch's own default (every core) spins its OpenMP workers against any other busy process,
    and a descheduled worker stalls every step: on two cores with one of them busy, decoding
    ran 20-60x slower (benchmarks/results/2026-12-02-threads.md).
    """
    if threads == "auto":
        if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
            return torch.get_num_threads()
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            usable = os.cpu_count() or 1
        threads = max(1, usable // 2)
    n = int(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


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
