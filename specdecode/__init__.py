"""specdecode: lossless speculative decoding for Hugging Face causal language models.

The public API (`Settings`, `load_settings`, `SpeculativeDecoder`, `load_pair`, `run_benchmark`)
is imported lazily so that `specdecode --help` does not pay for torch and transformers.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Settings": "specdecode.settings",
    "SettingsError": "specdecode.settings",
    "load_settings": "specdecode.settings",
    "SpeculativeDecoder": "specdecode.api",
    "GenerationResult": "specdecode.api",
    "load_pair": "specdecode.api",
    "RoundEvent": "specdecode.decoding.engine",
    "SamplingParams": "specdecode.decoding.sampling",
    "run_benchmark": "specdecode.bench",
    "bench_report": "specdecode.bench",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specdecode' has no attribute {name!r}")
