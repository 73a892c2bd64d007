"""How a model's decode steps run on a device, decided once where settings meet the device.

`resolve_execution(settings, model, device)` turns the four three-way settings
(`cuda_graphs`, `fused`, `compile`, `kernels`: on, off, or None = the default for this model
and device) into one `Execution`, each choice with the reason for it. The decoder builds its
runners and rounds from it; nothing below reads settings, environment variables or module
globals to decide behaviour.

Defaults: the fused layers wherever the architecture is supported (CPU too); on CUDA,
compiled fused layers, the Triton kernels inside captured steps where they can run, and
rounds captured as CUDA graphs. Asking for what cannot run is a SettingsError naming why.

What it does not: load models or build runners (api.py), or run anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import SettingsError
from .fused import fused_support

__all__ = ["Execution", "resolve_execution"]


@dataclass(frozen=True)
class Execution:
    graphs: bool
    fused: bool
    compile: bool
    kernels: bool | None  # None: the runner's default (on for captured fused steps that the kernels can run)
    reasons: tuple[str, ...] = ()  # one line per choice that was not asked for explicitly

    def key(self) -> tuple:
        return (self.graphs, self.fused, self.compile, self.kernels)


def split_reason(model) -> str | None:
    """Why rounds of a model split across devices are not captured (None: one device, plain)."""
    from ..models.placement import is_sharded

    if is_sharded(model):
        return "a tensor-parallel target's rounds run eagerly (its collectives are not captured as CUDA graphs)"
    if getattr(model, "hf_device_map", None) and len(set(map(str, model.hf_device_map.values()))) > 1:
        return "a device-mapped target's rounds run eagerly (accelerate's hooks move weights and activations between devices)"
    return None


def resolve_execution(settings, model, device: torch.device) -> Execution:
    cuda = device.type == "cuda"
    reasons: list[str] = []
    unsupported = fused_support(model)
    if settings.fused and unsupported is not None:
        raise SettingsError(f"--fused: {unsupported}")
    fused = unsupported is None and settings.fused is not False
    if unsupported is not None:
        reasons.append(f"transformers modules: {unsupported}")
    # by default only the fused layers are compiled: torch.compile over arbitrary transformers
    # modules and this cache is not something to turn on unasked
    compile = cuda and (settings.compile if settings.compile is not None else fused)
    if settings.kernels and cuda and not fused:
        raise SettingsError(f"--kernels: the kernels run the fused layers, and {unsupported or '--no-fused was given'}")
    kernels = settings.kernels if cuda else False
    split = split_reason(model)
    if split is not None and settings.cuda_graphs:
        raise SettingsError(f"--cuda-graphs: {split}")
    graphs = cuda and split is None and (settings.cuda_graphs if settings.cuda_graphs is not None else True)
    if cuda and split is not None:
        reasons.append(f"eager rounds: {split}")
    if not cuda:
        reasons.append(f"eager rounds: CUDA graphs and torch.compile need a CUDA device (this is {device.type})")
    return Execution(graphs=graphs, fused=fused, compile=compile, kernels=kernels, reasons=tuple(reasons))
