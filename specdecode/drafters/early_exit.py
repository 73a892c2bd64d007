"""Early-exit self-speculation: the target's own first N layers, final norm and LM head draft.

No extra weights (the idea of LayerSkip, Elhoushi et al. 2024, and Draft & Verify, Zhang
et al. 2023, without their training): `shallow_view` builds a second model object that
shares every module of the target but runs only its first N decoder layers, then the
target's final norm and LM head. It is driven exactly like a draft model (ModelDrafter):
its own KVCache holds those N layers' keys and values for the accepted prefix, rewritten
each round from the target's position P by the [prev, last] first step, so it always
matches what the target verified.

The view is made of shallow copies of the modules on the path from the CausalLM to its
`layers` list (each with its own child dict, so the target is never modified), with a
config copy whose num_hidden_layers = N and layer_types cut to N: transformers' decoder
stacks loop over `layers[: config.num_hidden_layers]` and pick each layer's mask from
`layer_types`, so sliding-window layers (Gemma 3) keep their windows.

What it does not: share the target's KV cache or reuse its first-N-layer activations
during verification (LayerSkip does; here the target recomputes them), or train an exit
head. Acceptance depends on how much the remaining layers change the argmax.
"""

from __future__ import annotations

import copy

from torch import nn

from ..models.loading import LoadedModel
from .draft_model import ModelDrafter

__all__ = ["EarlyExitDrafter", "exit_view", "shallow_view"]


def _find_layers(model: nn.Module) -> list[str]:
    """Attribute path from the CausalLM to the module that owns the decoder `layers` list."""
    candidates = [
        ["model"],  # Llama, Qwen2, Mistral, Gemma 3 text (…ForCausalLM.model.layers)
        ["model", "language_model"],  # multimodal wrappers (Gemma 3 4B+: …ForConditionalGeneration)
    ]
    for path in candidates:
        mod = model
        for name in path:
            mod = getattr(mod, name, None)
            if mod is None:
                break
        if isinstance(getattr(mod, "layers", None), nn.ModuleList):
            return path
    raise ValueError(
        f"early exit needs a decoder stack with a `layers` list; {type(model).__name__} has none where expected"
    )


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of `module` sharing its parameters and children, with its own child dict."""
    view = copy.copy(module)
    view._modules = dict(module._modules)
    return view


def shallow_view(model: nn.Module, exit_layer: int) -> nn.Module:
    """A model object that runs `model`'s first `exit_layer` decoder layers, final norm and LM head."""
    path = _find_layers(model)
    config = model.config
    new_config = copy.deepcopy(config)
    text, new_text = config.get_text_config(), new_config.get_text_config()
    new_text.num_hidden_layers = exit_layer
    if getattr(new_text, "layer_types", None) is not None:
        new_text.layer_types = list(new_text.layer_types[:exit_layer])
    swap = {id(config): new_config, id(text): new_text}

    root = _shallow(model)
    root.config = new_config
    parent = root
    for name in path:
        child = _shallow(parent._modules[name])
        if id(getattr(child, "config", None)) in swap:
            child.config = swap[id(child.config)]
        parent._modules[name] = child
        parent = child
    parent._modules["layers"] = nn.ModuleList(list(parent._modules["layers"])[:exit_layer])
    return root


def _check_exit_layer(target: LoadedModel, exit_layer: int) -> None:
    n = target.num_layers
    if not isinstance(exit_layer, int) or not 1 <= exit_layer < n:
        raise ValueError(f"exit_layer must be between 1 and {n - 1} (the target has {n} layers), got {exit_layer!r}")


def exit_view(target: LoadedModel, exit_layer: int) -> LoadedModel:
    """The target's first `exit_layer` layers (with its final norm and head) as a LoadedModel
    sharing the target's modules."""
    _check_exit_layer(target, exit_layer)
    return LoadedModel(
        name=f"{target.name} (first {exit_layer} of {target.num_layers} layers)",
        model=shallow_view(target.model, exit_layer),
        tokenizer=target.tokenizer,
        device=target.device,
        dtype=target.dtype,
    )


class EarlyExitDrafter(ModelDrafter):
    name = "early-exit"

    def __init__(self, target: LoadedModel, exit_layer: int, stop_below: float | None = None,
                 view: LoadedModel | None = None, runner=None, conditional=None) -> None:
        """`view`/`runner`: a prebuilt shallow view of the target and its runner (the decoder keeps
        one per exit layer, so captured steps are reused across batches); built here otherwise.
        `stop_below`, `conditional`: ModelDrafter's confidence stop."""
        if view is None:
            view = exit_view(target, exit_layer)
        else:
            _check_exit_layer(target, exit_layer)
        self.exit_layer = exit_layer
        super().__init__(view, runner=runner, stop_below=stop_below, conditional=conditional)
