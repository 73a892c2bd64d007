"""How a model's decode steps run on a device, decided once where settings meet the device.

`resolve_execution(settings, model, device)` turns the four three-way settings
(`cuda_graphs`, `fused`, `compile`, `kernels`: on, off, or None = the default for this model
and device) into one `Execution`, each choice with the reason for it. The decoder builds its
runners and rounds from it; nothing below reads settings, environment variables or module
globals to decide behaviour.

Defaults: the fused layers wherever the architecture is supported (CPU too); on CUDA,
compiled fused layers, the Triton kernels inside captured steps where they can run, and
rounds captured as CUDA graphs. Asking for what cannot run is a SettingsError naming why.

Quantized models: bitsandbytes NF4 `Linear4bit` projections (what `--quantized` loads, or a
pre-quantized NF4 checkpoint) run on the fused layers too, by default, with the same settings
(`Execution.nf4`: the NF4 kernels of accel/nf4.py for captured steps of at most fused.NF4_KERNEL_ROWS
rows, one layer's weights dequantized at a time elsewhere). Other bitsandbytes weights (8-bit
LLM.int8, 4-bit FP4) keep the transformers modules, with the reason.

What it does not: load models or build runners (api.py), or run anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import SettingsError
from .fused import fused_support

__all__ = ["Execution", "quantized_weights", "resolve_execution"]


@dataclass(frozen=True)
class Execution:
    graphs: bool
    fused: bool
    compile: bool
    kernels: bool | None  # None: the runner's default (on for captured fused steps that the kernels can run)
    nf4: bool = False  # the fused layers run bitsandbytes NF4 Linear4bit weights (ModelRunner's nf4)
    reasons: tuple[str, ...] = ()  # one line per choice that was not asked for explicitly

    def key(self) -> tuple:
        return (self.graphs, self.fused, self.compile, self.kernels, self.nf4)


def split_reason(model) -> str | None:
    """Why rounds of a model split across devices are not captured (None: one device, plain)."""
    from ..models.placement import is_sharded

    if is_sharded(model):
        return "a tensor-parallel target's rounds run eagerly (its collectives are not captured as CUDA graphs)"
    if getattr(model, "hf_device_map", None) and len(set(map(str, model.hf_device_map.values()))) > 1:
        return "a device-mapped target's rounds run eagerly (accelerate's hooks move weights and activations between devices)"
    return None


def quantized_weights(model) -> tuple[bool, str | None]:
    """(the model holds bitsandbytes NF4 Linear4bit weights, why its bitsandbytes weights cannot run
    on the fused layers: 8-bit or FP4; None when they can or there are none). Reads the modules'
    classes by name: a model without bitsandbytes layers never imports bitsandbytes."""
    nf4 = False
    for m in model.modules():
        if not type(m).__module__.startswith("bitsandbytes"):
            continue
        names = {c.__name__ for c in type(m).__mro__}
        if "Linear8bitLt" in names:
            return nf4, "8-bit weights (LLM.int8) run on bitsandbytes' own layers"
        if "Linear4bit" in names:
            state = getattr(m.weight, "quant_state", None)
            kind = str(getattr(state, "quant_type", None) or getattr(m.weight, "quant_type", "nf4"))
            if kind != "nf4":
                return nf4, (f"4-bit {kind.upper()} weights run on bitsandbytes' own layers "
                             "(the fused layers read NF4 weights)")
            nf4 = True
    return nf4, None


def resolve_execution(settings, model, device: torch.device) -> Execution:
    cuda = device.type == "cuda"
    reasons: list[str] = []
    nf4, unsupported = quantized_weights(model)
    if unsupported is None:
        unsupported = fused_support(model, nf4=nf4)
    if settings.fused and unsupported is not None:
        raise SettingsError(f"--fused: {unsupported}")
    fused = unsupported is None and settings.fused is not False
    nf4 = nf4 and fused
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
    if nf4 and settings.fused is None:
        from .fused import NF4_KERNEL_ROWS  # noqa: PLC0415

        # the runner's kernels default: on for captured steps (ModelRunner)
        if kernels or (kernels is None and graphs):
            reasons.append(f"fused NF4 layers: bitsandbytes NF4 weights, on the NF4 kernels in steps of <= {NF4_KERNEL_ROWS} "
                           "rows, dequantized one layer at a time in larger steps and prefill")
        else:
            why = "--no-kernels" if cuda and settings.kernels is False else (
                "uncaptured steps" if cuda else "the NF4 kernels run in captured steps on CUDA")
            reasons.append(f"fused NF4 layers: bitsandbytes NF4 weights, dequantized one layer at a time ({why})")
    return Execution(graphs=graphs, fused=fused, compile=compile, kernels=kernels, nf4=nf4, reasons=tuple(reasons))
