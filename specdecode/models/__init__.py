"""Model loading and draft/target pair checks."""

from .loading import LoadedModel, ModelLoadError, load_model, load_tokenizer, resolve_attention, resolve_device, resolve_dtype
from .pairing import PairReport, check_pair

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "PairReport",
    "check_pair",
    "load_model",
    "load_tokenizer",
    "resolve_attention",
    "resolve_device",
    "resolve_dtype",
]
