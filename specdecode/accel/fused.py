"""Fused decode steps for the common decoder-only architectures, over the engine's KVCache.

transformers' modules are written for every use at once: each decoder layer of a Llama runs
about 40 small kernels per token (separate q/k/v projections, norms in several pieces,
rotary embedding in several more), and a Gemma 3 layer about 80. On a GPU that is most of a
decode step, even replayed as a CUDA graph. This module runs the same computation
functionally, from the same weights:

* q/k/v and gate/up projections are fused into one matrix each. The fused matrix is built
  once and the model's own `nn.Linear` weights are re-pointed at views of it, so no weight
  memory is duplicated and the transformers modules (used for prefill) keep working;
* rotary tables come from the model's own rotary module (whatever its scaling), computed
  once per cache size;
* grouped-query attention runs without repeating keys and values: the query heads of a group
  are folded into the query length, so each KV head is read once;
* each layer is one function of tensors, compiled once with torch.compile and reused by
  every layer (regional compilation: compile time does not grow with depth); the caller
  captures the whole step as a CUDA graph.

Supported: Llama, Mistral, Qwen2, Qwen3 and Gemma 3 (text, and the text decoder of the
multimodal 4B+ checkpoints, which run text-only prompts here) — plain floating-point
`nn.Linear` weights, no attention soft-capping, rotary embedding over the whole head.
`fused_support(model)` says why a model is not supported; the runner then keeps using the
transformers modules. Exactness against transformers' forward is tested in fp32.

With `nf4=True` (what the settings choose for NF4 models: `--quantized`) the layers may also
hold bitsandbytes NF4 `Linear4bit` projections, run through accel/nf4.py (see FusedModel).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels as _kernels
from . import nf4 as _nf4

__all__ = ["FusedModel", "FusedUnsupported", "KernelFailure", "LayerWeights", "fused_support"]


class FusedUnsupported(ValueError):
    """The fused step cannot run this model; the message says why."""


class KernelFailure(RuntimeError):
    """The Triton decode kernels could not be built or run here (the runner falls back)."""

# model class name -> family
_FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # the 4B+ checkpoints: text decoding only
}


def _text_parts(model) -> tuple[nn.Module, object]:
    """(decoder stack, text config)."""
    base = model.model
    if hasattr(base, "language_model"):
        base = base.language_model
    config = model.config
    config = getattr(config, "get_text_config", lambda: config)()
    return base, config


# the decoder layers' projections, as (sub-module, attribute): what an NF4 model quantizes
_PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
                ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def _linear4bit_class():
    """bitsandbytes.nn.Linear4bit, or None without bitsandbytes."""
    try:
        import bitsandbytes as bnb  # noqa: PLC0415 - optional
    except Exception:  # ImportError, or a broken install
        return None
    return bnb.nn.Linear4bit


def _nf4_layers(base) -> tuple[str | None, list[nn.Module]]:
    """(why the layers cannot run as NF4 layers, their Linear4bit projections). The layers are NF4
    layers when any projection is a bitsandbytes Linear4bit; then every q/k/v/o/gate/up/down
    projection of every layer must be one, with an NF4 quant state. No Linear4bit: (None, [])."""
    lin4 = _linear4bit_class()
    if lin4 is None:
        return None, []
    found = [(f"layers.{i}.{part}.{attr}", getattr(getattr(layer, part, None), attr, None))
             for i, layer in enumerate(base.layers) for part, attr in _PROJECTIONS]
    if not any(isinstance(m, lin4) for _, m in found):
        return None, []
    modules = []
    for name, m in found:
        if not isinstance(m, lin4):
            return (f"the fused NF4 step needs every q/k/v/o/gate/up/down projection to be a bitsandbytes Linear4bit "
                    f"({name} is {type(m).__name__})"), []
        qs = getattr(m.weight, "quant_state", None)
        if qs is None:
            return f"{name} is not quantized yet (a Linear4bit without a quant state)", []
        if qs.quant_type != "nf4":
            return f"the fused NF4 step reads NF4 weights; {name} is 4-bit {qs.quant_type}", []
        n, k = (int(d) for d in qs.shape)
        if k % 2 or int(qs.blocksize) % 2:
            return f"{name}: the NF4 kernel needs an even input size and block size (got {k}, {qs.blocksize})", []
        if (n * k) % int(qs.blocksize) and not name.endswith(("v_proj", "up_proj", "o_proj", "down_proj")):
            # q, k (gate) are merged with what follows them: their blocks must not straddle the seam
            return f"{name}: {n} x {k} is not a whole number of NF4 blocks of {qs.blocksize}; it cannot be merged", []
        modules.append(m)
    for i in range(len(base.layers)):  # the merged q/k/v and gate/up matrices, indexed in int32 by the kernel
        qkv, o, gate, up, down = modules[7 * i:7 * i + 3], *modules[7 * i + 3:7 * i + 7]
        for group in (qkv, [o], [gate, up], [down]):
            shapes = [tuple(int(d) for d in m.weight.quant_state.shape) for m in group]
            if len({k for _, k in shapes}) != 1 or sum(n for n, _ in shapes) * shapes[0][1] >= 2**31:
                return f"layer {i}: NF4 projections of shapes {shapes} cannot be merged for the kernel", []
    blocksizes = {int(m.weight.quant_state.blocksize) for m in modules}
    if len(blocksizes) != 1:
        return f"the NF4 layers mix block sizes {sorted(blocksizes)}", []
    return None, modules


def fused_support(model, nf4: bool = False) -> str | None:
    """None when the fused path can run `model`; otherwise the reason it cannot (one line).
    nf4: also accept decoder layers whose q/k/v/o/gate/up/down projections are all bitsandbytes
    NF4 `Linear4bit` modules (with or without double quantization; the embeddings, norms and
    lm_head stay floating point), which FusedModel(nf4=True) runs through accel/nf4.py."""
    from ..models.placement import is_sharded

    if is_sharded(model):
        # the fused layers read whole weight matrices and know no collectives
        return "the weights are sharded (tensor parallel, DTensor); the fused step needs whole weights on one device"
    name = type(model).__name__
    family = _FAMILIES.get(name)
    if family is None:
        return f"no fused decode step for {name} (supported: {', '.join(sorted(set(_FAMILIES)))})"
    base, config = _text_parts(model)
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping is not supported by the fused step"
    if getattr(config, "use_bidirectional_attention", False):
        return "bidirectional attention is not supported by the fused step"
    if not hasattr(model, "lm_head") or not isinstance(model.lm_head, nn.Linear):
        return "the model has no plain lm_head"
    quantized: list[nn.Module] = []
    if nf4:
        reason, quantized = _nf4_layers(base)
        if reason is not None:
            return reason
        if type(model.lm_head) is not nn.Linear:  # the head stays on cuBLAS, in floating point
            return f"the fused NF4 step needs a plain floating-point lm_head (found {type(model.lm_head).__name__})"
    packed = {id(m.weight) for m in quantized}  # NF4 codes (uint8): checked by _nf4_layers
    # only the text decoder and the head run in a decode step (a vision tower may differ)
    params = [p for p in [*base.parameters(), *model.lm_head.parameters()] if id(p) not in packed]
    dtypes = {p.dtype for p in params}
    if not dtypes <= {torch.float32, torch.float16, torch.bfloat16} or len(dtypes) != 1:
        return f"the fused step needs one floating-point dtype for all weights (found {sorted(map(str, dtypes))})"
    if len({p.device for p in params}) != 1:
        return "the fused step needs the whole model on one device"
    if hasattr(model, "_hf_hook"):
        return "the model has accelerate hooks (offloading or a device map); the fused step needs plain modules"
    allowed = {id(m) for m in quantized}
    for module in [*base.modules(), model.lm_head]:
        if hasattr(module, "_hf_hook"):
            return "the model has accelerate hooks (offloading or a device map); the fused step needs plain modules"
        if isinstance(module, nn.Linear) and type(module) is not nn.Linear and id(module) not in allowed:
            if nf4:
                return (f"the fused step needs plain nn.Linear layers, or NF4 Linear4bit projections "
                        f"(found {type(module).__name__})")
            return f"the fused step needs plain nn.Linear layers (found {type(module).__name__})"
    layer = base.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    for attr in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if not isinstance(getattr(attn, attr, None), nn.Linear):
            return f"the attention layers have no {attr}"
    for attr in ("gate_proj", "up_proj", "down_proj", "act_fn"):
        if getattr(mlp, attr, None) is None:
            return f"the MLP layers have no {attr}"
    if any(type(lyr.mlp.act_fn) is not type(mlp.act_fn) for lyr in base.layers):
        return "the layers use different activations"
    head_dim = getattr(attn, "head_dim", None)
    if head_dim is None:
        return "the attention layers do not declare head_dim"
    try:
        sig = inspect.signature(base.rotary_emb.forward).parameters
    except AttributeError:
        return "the model has no rotary embedding module"
    rope_types = getattr(base.rotary_emb, "rope_type", None)
    rope_types = set(rope_types.values()) if isinstance(rope_types, dict) else {rope_types}
    if rope_types & {"dynamic", "longrope"}:
        # their frequencies depend on the sequence length of each call: no fixed table
        return f"rotary embedding type {sorted(rope_types & {'dynamic', 'longrope'})[0]!r} is not supported by the fused step"
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    probe = torch.zeros(1, 1, dtype=params[0].dtype, device=params[0].device)
    for kind in kinds if "layer_type" in sig else [None]:
        args = (kind,) if kind is not None else ()
        with torch.no_grad():
            cos, _ = base.rotary_emb(probe, torch.zeros(1, 1, dtype=torch.long, device=probe.device), *args)
        if cos.shape[-1] != head_dim:
            return "partial rotary embeddings are not supported by the fused step"
    return None


# ------------------------------------------------------------------------------------ math
def _rms_llama(x: Tensor, w: Tensor, eps: float) -> Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rms_gemma(x: Tensor, w: Tensor, eps: float) -> Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * (1.0 + w.float())).to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass(frozen=True)
class _Shape:
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float
    scaling: float
    gemma: bool  # Gemma norms ((1 + w), in fp32) and the four-norm "sandwich" layer
    qk_norm: bool


class LayerWeights(NamedTuple):
    """One decoder layer's weights as the fused step reads them (None: the layer has no such part).
    In NF4 layers (FusedModel.nf4) wqkv, wo, wgu and wd are nf4.NF4Weight instead of tensors."""

    wqkv: Tensor  # q, k and v projections as one matrix [(H + 2 Hkv) D, E]
    bqkv: Tensor | None
    q_norm: Tensor | None  # Qwen3 / Gemma 3 per-head norms
    k_norm: Tensor | None
    wo: Tensor  # output projection
    bo: Tensor | None
    post_attn: Tensor | None  # Gemma 3's norm of the attention output
    pre_ff: Tensor  # the norm before the MLP
    post_ff: Tensor | None  # Gemma 3's norm of the MLP output
    wgu: Tensor  # gate and up projections as one matrix [2 F, E]
    bgu: Tensor | None
    wd: Tensor  # down projection
    bd: Tensor | None


def _attend(qf: Tensor, k_buf: Tensor, v_buf: Tensor, mask: Tensor, scaling: float, how: str) -> Tensor:
    """qf [B, Hkv, R, D] (R = G*q query rows per KV head), k/v [B, Hkv, S, D], mask [B, 1, R, S]."""
    if how == "sdpa":
        return F.scaled_dot_product_attention(qf, k_buf, v_buf, attn_mask=mask, scale=scaling)
    # explicit: two batched matmuls around a masked fp32 softmax (few query rows: better spread
    # over the GPU than a fused attention kernel that parallelises over query blocks)
    scores = torch.matmul(qf, k_buf.transpose(-1, -2)).float() * scaling
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1).to(v_buf.dtype), v_buf)


# Attention for decode-sized steps, by device type: on CUDA two matmuls around a masked softmax
# (sdpa's masked kernel spreads a few query rows badly over the GPU), on CPU sdpa. The
# measurements behind this rule: benchmarks/results/2026-12-02-rules.md.
DEFAULT_ATTENTION = {"cuda": "matmul"}  # device type -> "matmul" | "sdpa"; others: sdpa

# inductor options for the compiled layers: coordinate-descent tuning turns the [B, 1] matrix-vector
# products into tuned Triton reductions fused with the norms around them, at some extra compile time.
DEFAULT_INDUCTOR_OPTIONS = {"coordinate_descent_tuning": True}


def _make_layer(shape: _Shape, act: Callable[[Tensor], Tensor], how: str) -> Callable:
    H, Hkv, D = shape.n_heads, shape.n_kv, shape.head_dim
    G = H // Hkv
    eps, scaling = shape.eps, shape.scaling
    norm = _rms_gemma if shape.gemma else _rms_llama
    split = [H * D, Hkv * D, Hkv * D]
    post = _make_post(shape, act)

    def layer(h, x, w, k_buf, v_buf, rows, slots, pos, mask, cos, sin, next_norm):
        """One decoder layer on q tokens per row.

        h: residual [B, q, E]; x: h after this layer's input norm; w: the layer's weights;
        k_buf/v_buf: [B, Hkv, S, D] cache buffers, written at (rows, slots) [B, q]; pos [B, q]:
        the rotary positions (the slots, but a token tree's sibling: KVCache.rope_positions);
        mask: [B, 1, G*q, S] boolean; cos/sin: [S_max, D] rotary tables.
        Returns (h', next_norm(h')) so the next layer's input norm fuses with this residual add.
        """
        B, q, _ = h.shape
        qkv = F.linear(x, w.wqkv, w.bqkv)
        qs, ks, vs = qkv.split(split, dim=-1)
        qs = qs.view(B, q, H, D)
        ks = ks.view(B, q, Hkv, D)
        vs = vs.view(B, q, Hkv, D)
        if w.q_norm is not None:
            qs = norm(qs, w.q_norm, eps)
            ks = norm(ks, w.k_norm, eps)
        c = cos[pos].unsqueeze(2)  # [B, q, 1, D]
        s = sin[pos].unsqueeze(2)
        qs = qs * c + _rotate_half(qs) * s
        ks = ks * c + _rotate_half(ks) * s
        k_buf[rows, :, slots] = ks
        v_buf[rows, :, slots] = vs
        # grouped-query attention with the G query heads of a KV head folded into the query length
        qf = qs.view(B, q, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * q, D)
        o = _attend(qf, k_buf, v_buf, mask, scaling, how)
        o = o.view(B, Hkv, G, q, D).permute(0, 3, 1, 2, 4).reshape(B, q, H * D)
        return post(h, o, w, next_norm)

    return layer


def _make_post(shape: _Shape, act: Callable[[Tensor], Tensor]) -> Callable:
    """The layer after attention: output projection, residual adds, norms and the MLP."""
    eps = shape.eps
    norm = _rms_gemma if shape.gemma else _rms_llama

    def post(h, o, w, next_norm):
        """h: residual [B, q, E]; o: attention output [B, q, H*D]. Returns (h', next_norm(h'))."""
        o = F.linear(o, w.wo, w.bo)
        if w.post_attn is not None:
            o = norm(o, w.post_attn, eps)
        h = h + o
        y = norm(h, w.pre_ff, eps)
        gate, up = F.linear(y, w.wgu, w.bgu).chunk(2, dim=-1)
        y = F.linear(act(gate) * up, w.wd, w.bd)
        if w.post_ff is not None:
            y = norm(y, w.post_ff, eps)
        h = h + y
        return h, norm(h, next_norm, eps)

    return post


def _make_head(gemma: bool, eps: float, softcap: float | None) -> Callable:
    norm = _rms_gemma if gemma else _rms_llama

    def first_norm(h, w):
        return norm(h, w, eps)

    def last_norm(h, d, d_norm, w):
        """The last layer's residual add (with its post-norm, Gemma) and the final norm."""
        d = d.to(h.dtype)  # (kernels.mlp's fp32 sums: rounded as a separate product's output)
        if d_norm is not None:
            d = norm(d, d_norm, eps)
        return norm(h + d, w, eps)

    def head(x, lm_head):
        return _softcap(F.linear(x, lm_head), softcap)

    return first_norm, head, last_norm


def _softcap(logits: Tensor, softcap: float | None) -> Tensor:
    """Gemma's final logit soft-capping (none: the logits as they are)."""
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


# e4m3's largest finite value: a tensor's largest magnitude maps to it
E4M3_MAX = 448.0


def quantize_head_fp8(lm_head: Tensor, chunk: int = 16384) -> tuple[Tensor, Tensor]:
    """(e4m3 copy of the [V, H] head, its fp32 scale as a 0-dim tensor): one scale for the whole
    matrix (its largest magnitude maps to 448), so torch._scaled_mm takes it as it is; rows of
    zeros pad V to a multiple of 16 (cuBLASLt's fp8 products need it); converted a block of rows
    at a time (no fp32 copy of a vocabulary-sized matrix)."""
    vocab, hidden = lm_head.shape
    amax = lm_head.detach().abs().amax().float().clamp(min=1e-12)
    scale = (amax / E4M3_MAX).reshape(())
    out = torch.zeros((vocab + -vocab % 16, hidden), dtype=torch.float8_e4m3fn, device=lm_head.device)
    for i in range(0, vocab, chunk):
        j = min(i + chunk, vocab)
        out[i:j] = (lm_head[i:j].float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return out, scale


def head_fp8_unsupported(lm_head: Tensor) -> str | None:
    """Why a head cannot be read in fp8 on this device (None: it can)."""
    if lm_head.device.type != "cuda" or torch.cuda.get_device_capability(lm_head.device) < (8, 9):
        return "fp8 tensor cores need a CUDA GPU of compute capability 8.9+"
    if lm_head.shape[1] % 16:
        return f"the hidden size ({lm_head.shape[1]}) is not a multiple of 16"
    return None


def _make_head_fp8(softcap: float | None, vocab: int) -> Callable:
    """The head on an e4m3 copy (quantize_head_fp8): the step's rows quantized with one scale of
    their own (their largest magnitude), padded to 16 rows (cuBLASLt's fp8 products take
    multiples of 16), one fp8 tensor-core product with fp32 accumulation, the first `vocab`
    logits in x's dtype."""

    def head_fp8(x, w8, w_scale):
        lead, hidden = x.shape[:-1], x.shape[-1]
        xf = x.reshape(-1, hidden).float()
        m = xf.shape[0]
        x_scale = (xf.abs().amax().clamp(min=1e-12) / E4M3_MAX).reshape(())
        xq = F.pad(xf / x_scale, (0, 0, 0, -m % 16)).to(torch.float8_e4m3fn)
        logits = torch._scaled_mm(xq, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype,
                                  use_fast_accum=True)[:m, :vocab]
        return _softcap(logits, softcap).reshape(*lead, vocab)

    return head_fp8


def _activation_name(act: nn.Module) -> str | None:
    """Which of the kernels' activations `act` computes (checked numerically), or None."""
    x = torch.linspace(-6.0, 6.0, 241, dtype=torch.float32)
    try:
        with torch.no_grad():
            y = act(x)
    except Exception:  # an activation that cannot run on a CPU tensor: not one we know
        return None
    refs = {"silu": F.silu(x), "gelu_tanh": F.gelu(x, approximate="tanh")}
    for name, ref in refs.items():
        if y.shape == ref.shape and torch.allclose(y, ref, atol=1e-5, rtol=1e-5):
            return name
    return None


def _fuse(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """Concatenate the weights (and biases) of `linears` along the output dimension and re-point
    each module at its view of the result: one matrix, no extra memory."""
    done = getattr(linears[0], "_specdecode_fused", None)
    if done is not None:  # fused by an earlier runner on the same modules: reuse it if still in place
        fused_w, fused_b, ptrs = done
        if tuple(lin.weight.data_ptr() for lin in linears) == ptrs:
            return fused_w, fused_b
    with torch.no_grad():
        fused_w = torch.cat([lin.weight.detach() for lin in linears], dim=0)
        fused_b = None
        if any(lin.bias is not None for lin in linears):
            fused_b = torch.cat([
                lin.bias.detach() if lin.bias is not None
                else torch.zeros(lin.weight.shape[0], dtype=fused_w.dtype, device=fused_w.device)
                for lin in linears
            ])
    offset = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused_w[offset : offset + n], requires_grad=False)
        if fused_b is not None and lin.bias is not None:
            lin.bias = nn.Parameter(fused_b[offset : offset + n], requires_grad=False)
        offset += n
    linears[0]._specdecode_fused = (fused_w, fused_b, tuple(lin.weight.data_ptr() for lin in linears))
    return fused_w, fused_b


def _fuse_nf4(linears: list[nn.Module]) -> tuple[_nf4.NF4Weight, Tensor | None]:
    """`_fuse` for bitsandbytes NF4 Linear4bit modules: one NF4 weight of their rows (nf4.merge_nf4:
    the packed codes concatenated, the absmax decoded to float32 when double-quantized) and one
    bias. Each module's packed codes are re-pointed at its slice of the merged codes (its quant
    state is untouched), so the codes are not held twice and the modules keep working."""
    done = getattr(linears[0], "_specdecode_fused_nf4", None)
    if done is not None:  # merged by an earlier runner on the same modules: reuse it if still in place
        merged, fused_b, ptrs = done
        if tuple(lin.weight.data_ptr() for lin in linears) == ptrs:
            return merged, fused_b
    parts = [_nf4.NF4Weight.from_linear4bit(lin) for lin in linears]
    merged = _nf4.merge_nf4(parts)
    with torch.no_grad():
        offset = 0
        for lin, part in zip(linears, parts):
            data = lin.weight.data
            size = part.packed.numel()
            lin.weight.data = merged.packed[offset:offset + size].view(data.dtype).view(data.shape)
            offset += size
        fused_b = None
        if any(lin.bias is not None for lin in linears):
            dtype = next(lin.bias.dtype for lin in linears if lin.bias is not None)
            fused_b = torch.cat([
                lin.bias.detach() if lin.bias is not None
                else torch.zeros(part.shape[0], dtype=dtype, device=merged.packed.device)
                for lin, part in zip(linears, parts)
            ])
    linears[0]._specdecode_fused_nf4 = (merged, fused_b, tuple(lin.weight.data_ptr() for lin in linears))
    return merged, fused_b


class FusedModel:
    """The fused decode step of one model. `forward(input_ids, cache, masks, logits_to_keep)`."""

    def __init__(self, model, kinds: tuple[str, ...], compile: bool = False, compile_backend: str = "inductor",
                 kernels: bool | None = None, attention: str | None = None, max_kernel_rows: int | None = None,
                 inductor_options: dict | None = None, pdl: bool | None = None, nf4: bool = False,
                 multi_row: str | None = None, fold_combine: bool = False,
                 max_mixed_rows: int | None = None, nf4_kernel_rows: int | None = None,
                 compile_prefill: bool = False, head_fp8: bool = False, mlp_rows: int = 0) -> None:
        """kinds: the attention kind of each layer ("full_attention" / "sliding_attention"), the
        keys of the masks `forward` receives. kernels: run steps of at most `max_kernel_rows`
        rows (default kernels.MAX_ROWS) through the Triton kernels of kernels.py (None: when
        compiling on a device they run on; they are part of the compiled path). attention:
        "matmul" or "sdpa" for compiled steps (None: DEFAULT_ATTENTION for the device);
        inductor_options: for torch.compile (None: DEFAULT_INDUCTOR_OPTIONS); pdl: launch the
        kernels with programmatic dependent launch (None: where the device supports it).
        multi_row: how kernel steps of more than
        max_kernel_rows rows (the verify) run: "hybrid" (cuBLAS's products, the compiled norms,
        the attention kernel) or "mixed" (the kernels' tensor-core products with the norms and
        residual adds folded in, the down projection on cuBLAS); None: DEFAULT_MULTI_ROW.
        max_mixed_rows: "mixed" takes steps of at most this many rows (None: MAX_MIXED_ROWS; at
        most kernels.MAX_GEMV_ROWS), larger ones run "hybrid".
        fold_combine: the attention kernel's last split merges the splits (no combine kernel;
        kernels.decode_attention's fold); off until measured on the H200.
        nf4: accept bitsandbytes NF4 Linear4bit projections (see fused_support); the settings turn
        it on for NF4 models (accel/execution.py). nf4_kernel_rows: NF4 steps of at most this many
        rows run on the NF4 kernels (None: NF4_KERNEL_ROWS; at most nf4.MAX_ROWS).
        compile_prefill: with `compile`, the prefill's layer function is compiled too (one compile
        per prompt shape: for callers that pad prompts to a few buckets, as a runner whose prefills
        are captured does). Uncompiled, a prefill layer runs ~45 small kernels besides its products.
        head_fp8: the steps on the kernels read the vocabulary head as an e4m3 copy (half the
        bytes; quantize_head_fp8, _make_head_fp8), for a draft model, whose logits only choose
        proposals the target verifies; prefill and the other steps keep the model's head. Needs
        the kernels (off without them) and fp8 tensor cores on CUDA (head_fp8_unsupported; the
        caller checks). Off by default: on the real Qwen2.5-Coder pair it made the draft step
        4.3% cheaper and acceptance 0.8% lower, a wash (2026-12-04-h200-real-pair-stop28.json).
        mlp_rows: kernel steps of at most this many rows (at most kernels.MAX_MLP_ROWS) run each
        layer's gated MLP as one kernel (kernels.mlp: gate/up and the down projection, whose sums
        meet by atomic adds in an fp32 buffer the next layer's qkv product reads as its residual
        delta) instead of two; bf16 weights only. Its sums' order varies from run to run, so the
        logits may differ in their last bits between identical steps (fit for a draft model, whose
        logits only choose proposals the target verifies). Off (0): on the H200 at the Qwen2.5
        0.5B draft's shapes under PDL the one kernel took 13.6 us against 11.5 us for the two
        (benchmarks/results/2026-12-04-h200-kernels-mlp-stop30.txt).

        NF4 layers (`self.nf4`): q/k/v and gate/up are merged into one NF4 weight each
        (nf4.merge_nf4), o and down are read as stored. Steps of at most nf4_kernel_rows rows run
        on nf4.nf4_gemv_fused (the same folding as the bf16 kernels: residual adds and norms in
        the products, the gated activation in gate/up's epilogue) around kernels.decode_attention.
        Steps of more rows up to max_mixed_rows (the verify; multi_row "mixed") run the bf16
        kernels' mixed step over each layer's weights dequantized by one kernel just before it
        (_nf4_mixed_forward). Everything else (prefill, steps of more rows, steps without the
        kernels) runs the uncompiled-or-compiled torch layers on weights dequantized one layer at
        a time (nf4.dequantize_nf4_fast): exact, and never more than one layer's dense weights
        held."""
        reason = fused_support(model, nf4=nf4)
        if reason is not None:
            raise FusedUnsupported(reason)
        base, config = _text_parts(model)
        self.nf4 = bool(nf4) and bool(_nf4_layers(base)[1])  # the layers hold NF4 weights
        self.family = _FAMILIES[type(model).__name__]
        gemma = self.family == "gemma3"
        attn0 = base.layers[0].self_attn
        self.shape = _Shape(
            n_heads=config.num_attention_heads,
            n_kv=config.num_key_value_heads,
            head_dim=attn0.head_dim,
            eps=float(config.rms_norm_eps),
            scaling=float(attn0.scaling),
            gemma=gemma,
            qk_norm=hasattr(attn0, "q_norm"),
        )
        self.kinds = tuple(kinds)
        if len(self.kinds) != len(base.layers):
            raise FusedUnsupported(f"{len(self.kinds)} layer kinds for {len(base.layers)} layers")
        self.rotary = base.rotary_emb
        self._rotary_per_kind = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self.embed = base.embed_tokens
        self.embed_scale = getattr(base.embed_tokens, "embed_scale", None)
        self.dtype = model.lm_head.weight.dtype
        self.device = model.lm_head.weight.device
        self.lm_head = model.lm_head.weight
        self.final_norm = base.norm.weight
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.weights: list[LayerWeights] = []
        self.in_norms: list[Tensor] = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            if self.nf4:
                wqkv, bqkv = _fuse_nf4([a.q_proj, a.k_proj, a.v_proj])
                wgu, bgu = _fuse_nf4([m.gate_proj, m.up_proj])
                wo, wd = _nf4.NF4Weight.from_linear4bit(a.o_proj), _nf4.NF4Weight.from_linear4bit(m.down_proj)
            else:
                wqkv, bqkv = _fuse([a.q_proj, a.k_proj, a.v_proj])
                wgu, bgu = _fuse([m.gate_proj, m.up_proj])
                wo, wd = a.o_proj.weight, m.down_proj.weight
            if gemma:
                post_attn, pre_ff, post_ff = (
                    layer.post_attention_layernorm.weight,
                    layer.pre_feedforward_layernorm.weight,
                    layer.post_feedforward_layernorm.weight,
                )
            else:  # in Llama-style layers "post_attention_layernorm" is the norm before the MLP
                post_attn, pre_ff, post_ff = None, layer.post_attention_layernorm.weight, None
            self.weights.append(LayerWeights(
                wqkv, bqkv,
                a.q_norm.weight if self.shape.qk_norm else None,
                a.k_norm.weight if self.shape.qk_norm else None,
                wo, a.o_proj.bias,
                post_attn, pre_ff, post_ff,
                wgu, bgu, wd, m.down_proj.bias,
            ))
            self.in_norms.append(layer.input_layernorm.weight)
        # the norm after layer i: the next layer's input norm, the final norm after the last
        self.next_norms = [*self.in_norms[1:], self.final_norm]
        act = base.layers[0].mlp.act_fn
        self.window = getattr(config, "sliding_window", None) if "sliding_attention" in self.kinds else None
        self.act_name = _activation_name(act)
        self.kernels_unsupported = self._kernel_support(model)
        if kernels is None:
            kernels = compile and _kernels.usable_on(self.device) and self.kernels_unsupported is None
        elif kernels and self.kernels_unsupported is not None:
            kernels = False  # asked for but not possible: `kernels_unsupported` says why
        self.kernels = bool(kernels)
        self.pdl = self.kernels and (_kernels.pdl_usable(self.device) if pdl is None else bool(pdl))
        self.kernel_error: str | None = None
        self._kernel_shapes: set[tuple] = set()
        self.max_kernel_rows = _kernels.MAX_ROWS if max_kernel_rows is None else int(max_kernel_rows)
        self.multi_row = DEFAULT_MULTI_ROW if multi_row is None else multi_row
        self.fold_combine = bool(fold_combine)
        self.nf4_kernel_rows = NF4_KERNEL_ROWS if nf4_kernel_rows is None else int(nf4_kernel_rows)
        if not 0 <= self.nf4_kernel_rows <= _nf4.MAX_ROWS:
            raise ValueError(f"nf4_kernel_rows must be in [0, {_nf4.MAX_ROWS}], got {self.nf4_kernel_rows}")
        self.max_mixed_rows = MAX_MIXED_ROWS if max_mixed_rows is None else int(max_mixed_rows)
        if not 0 <= int(mlp_rows) <= _kernels.MAX_MLP_ROWS:
            raise ValueError(f"mlp_rows must be in [0, {_kernels.MAX_MLP_ROWS}], got {mlp_rows}")
        self.mlp_rows = 0 if self.nf4 or self.act_name is None else int(mlp_rows)
        self._mlp_sums: dict[int, Tensor] = {}  # rows -> [layers, rows, hidden] fp32 (kernels.mlp's sums)
        if not 0 <= self.max_mixed_rows <= _kernels.MAX_GEMV_ROWS:
            raise ValueError(f"max_mixed_rows must be in [0, {_kernels.MAX_GEMV_ROWS}], got {self.max_mixed_rows}")
        if self.multi_row not in MULTI_ROW:
            raise ValueError(f"multi_row must be one of {', '.join(MULTI_ROW)}, got {self.multi_row!r}")
        how = attention or DEFAULT_ATTENTION.get(self.device.type, "sdpa")
        layer_fn = _make_layer(self.shape, act, how)
        first_norm, head, last_norm = _make_head(gemma, self.shape.eps, self.softcap)
        self.head_fp8 = quantize_head_fp8(self.lm_head) if head_fp8 and self.kernels else None
        head8 = _make_head_fp8(self.softcap, self.lm_head.shape[0]) if self.head_fp8 is not None else None
        post = _make_post(self.shape, act)
        self._uncompiled = (layer_fn, first_norm, head, head8)
        # variable-length forwards (prefill) run uncompiled (one compile per prompt length would cost
        # more than it saves) and through sdpa, whose memory does not grow with prompt x cache
        # length (the explicit scores of "matmul" would be [B, Hkv, G*q, S] floats)
        self._prefill = (layer_fn if how == "sdpa" else _make_layer(self.shape, act, "sdpa"), first_norm, head)
        self._prefill_uncompiled = self._prefill
        if compile:
            _raise_recompile_limit()
            opts = dict(dynamic=False, fullgraph=True, backend=compile_backend)
            if compile_backend == "inductor":
                opts["options"] = dict(DEFAULT_INDUCTOR_OPTIONS if inductor_options is None else inductor_options)
            layer_fn = torch.compile(layer_fn, **opts)
            first_norm = torch.compile(first_norm, **opts)
            head = torch.compile(head, **opts)
            last_norm = torch.compile(last_norm, **opts)
            head8 = torch.compile(head8, **opts) if head8 is not None else None
            post = torch.compile(post, **opts)
            if compile_prefill:
                # no coordinate-descent tuning: prompt-sized products are cuBLAS's, and the elementwise
                # kernels it would tune are few per layer once fused
                pre = dict(opts, options={}) if compile_backend == "inductor" else opts
                self._prefill = (torch.compile(self._prefill[0], **pre), *self._prefill[1:])
        self._last_norm, self._post, self._head8 = last_norm, post, head8
        self._layer, self._first_norm, self._head = layer_fn, first_norm, head
        self._tables: dict[int, dict[str, tuple[Tensor, Tensor]]] = {}

    def uncompile(self) -> None:
        """Use the uncompiled functions from now on (torch.compile could not build them)."""
        self._layer, self._first_norm, self._head, self._head8 = self._uncompiled
        self._prefill = self._prefill_uncompiled
        self.kernels = False

    def _kernel_support(self, model) -> str | None:
        """None when the Triton decode kernels can run this model, else why not."""
        if not _kernels.AVAILABLE:
            return "Triton is not installed"
        if self.act_name is None:
            return "the MLP activation is neither SiLU nor tanh-approximated GELU"
        d = self.shape.head_dim
        if d & (d - 1) or d < 16:
            return f"head_dim {d} is not a power of two of at least 16"
        if self.shape.n_heads % self.shape.n_kv:
            return "query heads are not a multiple of key/value heads"
        if self.nf4:  # NF4 weights have no cuBLAS alternative: the hidden-size rule does not apply
            return None if _nf4.AVAILABLE else "Triton is not installed"
        hidden = self.lm_head.shape[1]
        if hidden > _kernels.MAX_HIDDEN:
            return (f"hidden size {hidden} > {_kernels.MAX_HIDDEN}: cuBLAS streams matrices this large faster "
                    "than the kernels")
        return None

    def disable_kernels(self, error: BaseException) -> None:
        """Stop using the Triton kernels (they failed to build or run here)."""
        self.kernels = False
        text = str(error).strip().splitlines()
        self.kernel_error = f"{type(error).__name__}: {text[0] if text else ''}"[:300]

    def _embed(self, input_ids: Tensor) -> Tensor:
        h = F.embedding(input_ids, self.embed.weight)
        if self.embed_scale is not None:
            h = h * self.embed_scale.to(h.dtype)
        return h

    @staticmethod
    def _keep(t: Tensor, logits_to_keep: Tensor | int) -> Tensor:
        """The query positions [B, q, ...] whose logits the caller wants (0: all; a [B, n] tensor:
        n positions per row)."""
        if isinstance(logits_to_keep, int):
            return t[:, -logits_to_keep:] if logits_to_keep else t
        if logits_to_keep.dim() == 2:
            return t.gather(1, logits_to_keep[..., None].expand(-1, -1, t.shape[-1]))
        return t[:, logits_to_keep]

    # ---- rotary tables: the model's own rotary module, evaluated once per cache size --------
    def tables(self, length: int) -> dict[str, tuple[Tensor, Tensor]]:
        found = self._tables.get(length)
        if found is None:
            pos = torch.arange(length, device=self.device)[None]
            probe = torch.zeros(1, 1, dtype=self.dtype, device=self.device)
            found = {}
            with torch.no_grad():
                for kind in set(self.kinds):
                    args = (kind,) if self._rotary_per_kind else ()  # Gemma 3: one rope per kind
                    cos, sin = self.rotary(probe, pos, *args)
                    found[kind] = (cos[0].contiguous(), sin[0].contiguous())
            self._tables[length] = found
        return found

    def _buffers(self, cache, i: int, batch: int) -> tuple[Tensor, Tensor]:
        d = self.shape.head_dim
        return cache.layer(i, self.shape.n_kv, d, d, self.dtype)

    def on_kernels(self, rows: int) -> bool:
        """Whether a decode step of `rows` rows (batch x tokens) runs on the Triton kernels, which mask
        from the positions themselves (no mask needed); NF4 layers take at most nf4_kernel_rows on
        the NF4 kernels, and (multi_row "mixed") up to max_mixed_rows on dequantized weights."""
        if self.nf4 and rows > self.nf4_kernel_rows:
            return self.kernels and self._mixed(rows)
        return self.kernels

    def _mixed(self, rows: int) -> bool:
        """Whether a step of `rows` rows, past the one-step kernels, runs as _mixed_forward."""
        return self.multi_row == "mixed" and rows <= self.max_mixed_rows

    @torch.no_grad()
    def forward(self, input_ids: Tensor, cache, position_ids: Tensor, masks: dict[str, Tensor],
                attend_len: int, logits_to_keep: Tensor | int = 0, eager: bool = False) -> Tensor:
        """input_ids/position_ids [B, q] (the slots they are written at: KVCache.prepare, whose
        `sibling` the step reads); masks {kind: bool [B, 1, q, attend_len]}; the step attends to the
        first attend_len slots of the cache (all of them in a captured step).
        `eager`: the uncompiled sdpa functions, for variable-length forwards (prefill)."""
        B, q = input_ids.shape
        if not eager and self.on_kernels(B * q):
            if self.nf4:  # NF4: steps of at most nf4_kernel_rows rows wholly on the NF4 kernels
                step = self._nf4_forward if B * q <= self.nf4_kernel_rows else self._nf4_mixed_forward
            else:  # one- and two-row steps wholly on the kernels, larger ones as multi_row says
                if B * q <= self.max_kernel_rows:
                    step = self._kernel_forward
                else:
                    step = self._mixed_forward if self._mixed(B * q) else self._hybrid_forward
            shape = (B, q, cache.max_len)
            if shape in self._kernel_shapes:
                return step(input_ids, cache, position_ids, logits_to_keep)
            try:  # first use of a shape: Triton compiles here; a failure falls back (KernelFailure)
                out = step(input_ids, cache, position_ids, logits_to_keep)
            except torch._dynamo.exc.TorchDynamoException:
                raise  # torch.compile's own failure (the compiled parts): the runner handles it
            except Exception as e:
                if not self.pdl:
                    raise KernelFailure(str(e)) from e
                self.pdl = False  # the launch option may be what failed: once more without it
                return self.forward(input_ids, cache, position_ids, masks, attend_len, logits_to_keep)
            self._kernel_shapes.add(shape)
            return out
        layer_fn, first_norm, head = self._prefill if eager else (self._layer, self._first_norm, self._head)
        G = self.shape.n_heads // self.shape.n_kv
        # the G query heads of a group become G*q query rows: repeat the mask rows to match
        folded = {kind: m.expand(B, 1, q, m.shape[-1]).unsqueeze(2).expand(B, 1, G, q, m.shape[-1])
                  .reshape(B, 1, G * q, m.shape[-1]) for kind, m in masks.items()}
        tables = self.tables(cache.max_len)
        rows = torch.arange(B, device=input_ids.device)[:, None].expand(B, q)
        rope = cache.rope_positions(position_ids)
        h = self._embed(input_ids)
        x = first_norm(h, self.in_norms[0])
        for i, w in enumerate(self.weights):
            kind = self.kinds[i]
            k_buf, v_buf = self._buffers(cache, i, B)
            if attend_len < cache.max_len:  # views: the step's writes land in the buffers
                k_buf, v_buf = k_buf[:, :, :attend_len], v_buf[:, :, :attend_len]
            cos, sin = tables[kind]
            if self.nf4:  # this layer's weights dequantized (one layer's dense weights at a time)
                w = self._dense(w)
            h, x = layer_fn(h, x, w, k_buf, v_buf, rows, position_ids, rope, folded[kind], cos, sin,
                            self.next_norms[i])
        return head(self._keep(x, logits_to_keep), self.lm_head)

    def _kernel_forward(self, input_ids: Tensor, cache, position_ids: Tensor,
                        logits_to_keep: Tensor | int) -> Tensor:
        """The step as five Triton kernels per layer (kernels.py): the residual adds and every
        norm ride inside the matrix-vector products, attention writes the cache itself."""
        rows = input_ids.numel()
        mlp = partial(_kernels.mlp, pdl=self.pdl) if rows <= self.mlp_rows else None
        return self._layers_on_kernels(partial(_kernels.gemv, pdl=self.pdl), input_ids, cache, position_ids,
                                       logits_to_keep, mlp=mlp)

    def _mixed_forward(self, input_ids: Tensor, cache, position_ids: Tensor,
                       logits_to_keep: Tensor | int, dense: bool = False) -> Tensor:
        """Steps of several rows (the verify) on the kernels' tensor-core products, which fold the
        norms, residual adds and activation in. The down projection's long K leaves the
        tensor-core form few programs, so it runs on cuBLAS, which splits K itself (its output is
        the residual delta the next qkv product adds, as in _kernel_forward), unless gemv_config
        cuts K into slices at this shape (no default does: measured slower in the step, stop 28).
        dense: see _layers_on_kernels."""
        gemv = partial(_kernels.gemv, pdl=self.pdl)
        rows = input_ids.numel()
        inter, hidden = self.weights[0].wd.shape[1], self.weights[0].wd.shape[0]
        split = _kernels.splits_k(_kernels.gemv_config(rows, hidden, inter, False, False, self.pdl)) > 1
        return self._layers_on_kernels(gemv, input_ids, cache, position_ids, logits_to_keep,
                                       down=None if split else _cublas_product, dense=dense)

    def _nf4_forward(self, input_ids: Tensor, cache, position_ids: Tensor,
                     logits_to_keep: Tensor | int) -> Tensor:
        """_kernel_forward with NF4 weights, for steps of up to nf4_kernel_rows rows (nf4_gemv_config:
        the reduction form for one or two rows, the tensor-core form for more): the same five
        kernels per layer, the residual adds and every norm folded into the NF4 products."""
        return self._layers_on_kernels(partial(_nf4.nf4_gemv_fused, pdl=self.pdl), input_ids, cache, position_ids,
                                       logits_to_keep)

    def _nf4_mixed_forward(self, input_ids: Tensor, cache, position_ids: Tensor,
                           logits_to_keep: Tensor | int) -> Tensor:
        """NF4 steps past nf4_kernel_rows and up to max_mixed_rows (none by default, where both are
        16) as _mixed_forward on each layer's weights dequantized by one kernel
        (nf4.dequantize_nf4_fast) just before the layer runs: the norms, residual adds and
        activation stay folded into the products and attention stays the Triton kernel, where the
        compiled layers' path (prefill, steps past max_mixed_rows) runs them apart."""
        return self._mixed_forward(input_ids, cache, position_ids, logits_to_keep, dense=True)

    def _layers_on_kernels(self, gemv: Callable, input_ids: Tensor, cache, position_ids: Tensor,
                           logits_to_keep: Tensor | int, down: Callable | None = None, dense: bool = False,
                           mlp: Callable | None = None) -> Tensor:
        """Every layer as gemv (qkv, with the previous residual add and the input norm) ->
        attention kernel -> gemv (o) -> gemv (gate/up, with the residual add, the norm and the
        activation) -> down (default gemv); `gemv` is kernels.gemv or nf4.nf4_gemv_fused.
        dense: NF4 layers' weights dequantized (_dense) as each layer starts. mlp (kernels.mlp):
        gate/up and down as one kernel per layer, into this step's zeroed fp32 sums."""
        down = down or gemv
        sums = None
        if mlp is not None:
            sums = self._mlp_buffer(input_ids.shape, self.weights[0].wd.shape[0], input_ids.device)
            sums.zero_()  # one memset a step: every layer's sums start from zero
        sh = self.shape
        gemma = sh.gemma
        eps = sh.eps
        tables = self.tables(cache.max_len)
        h = self._embed(input_ids)
        d = None
        d_norm = None
        for i, w in enumerate(self.weights):
            if dense:
                w = self._dense(w)
            qkv, h_new = gemv(h, w.wqkv, bias=w.bqkv, norm=self.in_norms[i], gemma=gemma, eps=eps,
                              delta=d, delta_norm=d_norm)
            if h_new is not None:
                h = h_new
            o = self._attention(i, qkv, cache, position_ids, tables)
            o, _ = gemv(o, w.wo, bias=w.bo)
            if sums is not None:
                d = sums[i]
                h = mlp(h, w.wgu, w.wd, d, bias=w.bgu, down_bias=w.bd, norm=w.pre_ff, gemma=gemma, eps=eps,
                        delta=o, delta_norm=w.post_attn, act=self.act_name)
            else:
                a, h = gemv(h, w.wgu, bias=w.bgu, norm=w.pre_ff, gemma=gemma, eps=eps, delta=o,
                            delta_norm=w.post_attn, act=self.act_name)
                d, _ = down(a, w.wd, bias=w.bd)
            d_norm = w.post_ff
        h, d = self._keep(h, logits_to_keep), self._keep(d, logits_to_keep)
        # the head stays on cuBLAS (it streams a vocabulary-sized matrix faster than the kernel:
        # benchmarks/results/2026-12-02-rules.md), or cuBLASLt's fp8 product on its e4m3 copy
        # (head_fp8); the last residual add and the final norm run as one compiled function before it
        x = self._last_norm(h, d, d_norm, self.final_norm)
        if self.head_fp8 is not None:
            return self._head8(x, *self.head_fp8)
        return self._head(x, self.lm_head)

    def _mlp_buffer(self, shape: torch.Size, hidden: int, device: torch.device) -> Tensor:
        """The fp32 sums kernels.mlp adds into for steps of this [B, q] shape: [layers, B, q, hidden],
        allocated at the shape's first (uncaptured) run and kept, as captured graphs point to it."""
        rows = shape[0] * shape[1]
        found = self._mlp_sums.get(rows)
        if found is None:
            found = self._mlp_sums[rows] = torch.zeros(len(self.weights), rows, hidden, dtype=torch.float32,
                                                       device=device)
        return found.view(len(self.weights), *shape, hidden)

    def _dense(self, w: LayerWeights) -> LayerWeights:
        """An NF4 layer's weights dequantized to the model's dtype (prefill and the other steps
        that do not run on the NF4 kernel)."""
        deq = lambda t: _nf4.dequantize_nf4_fast(t, self.dtype)  # noqa: E731
        return w._replace(wqkv=deq(w.wqkv), wo=deq(w.wo), wgu=deq(w.wgu), wd=deq(w.wd))

    def _attention(self, i: int, qkv: Tensor, cache, position_ids: Tensor, tables) -> Tensor:
        sh = self.shape
        w = self.weights[i]
        kind = self.kinds[i]
        k_buf, v_buf = self._buffers(cache, i, qkv.shape[0])
        cos, sin = tables[kind]
        return _kernels.decode_attention(
            qkv, position_ids, k_buf, v_buf, cos, sin, n_heads=sh.n_heads, n_kv=sh.n_kv,
            head_dim=sh.head_dim, scaling=sh.scaling, eps=sh.eps, q_norm=w.q_norm, k_norm=w.k_norm,
            gemma=sh.gemma, window=self.window if kind == "sliding_attention" else None, pdl=self.pdl,
            fold=self.fold_combine, sibling=cache.sibling)

    def _hybrid_forward(self, input_ids: Tensor, cache, position_ids: Tensor,
                        logits_to_keep: Tensor | int) -> Tensor:
        """Steps of several rows: the matrix products stay on cuBLAS (the compiled layers'
        `post`), attention (q/k norms, rotary, cache write) runs as the Triton kernel."""
        h = self._embed(input_ids)
        x = self._first_norm(h, self.in_norms[0])
        tables = self.tables(cache.max_len)
        for i, w in enumerate(self.weights):
            qkv = F.linear(x, w.wqkv, w.bqkv)
            o = self._attention(i, qkv, cache, position_ids, tables)
            h, x = self._post(h, o, w, self.next_norms[i])
        return self._head(self._keep(x, logits_to_keep), self.lm_head)


def _cublas_product(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, None]:
    """A plain product on cuBLAS, in gemv's calling form (nothing folded in)."""
    return F.linear(x, weight, bias), None


# how kernel steps of more rows than max_kernel_rows run (FusedModel's multi_row)
MULTI_ROW = ("hybrid", "mixed")
# mixed: the H200, random weights of Qwen2.5-Coder 1.5B, verify [1, 6] 1.51 ms against 1.70 hybrid
# (benchmarks/results/2026-12-02-h200-profile-qwen-prefetch-mixed.txt)
DEFAULT_MULTI_ROW = "mixed"
# ... for steps of at most this many rows: the verify of k 5 at batch 4 (24 rows) measured slower
# on it than hybrid through `specdecode bench` on the real pair (0.89x against 0.97x:
# benchmarks/results/2026-12-03-h200-real-pair-mixed{16,32}.md)
MAX_MIXED_ROWS = 16
# NF4 layers run steps of at most this many rows on the NF4 GEMV (the draft's and the target's
# own steps and the verify of k up to 15 at batch 1); larger ones take the layer's weights
# dequantized by one kernel (nf4.dequantize_nf4_fast, ~3.2 TB/s) and, up to max_mixed_rows, the
# bf16 kernels' mixed step (_nf4_mixed_forward), else the compiled layers on cuBLAS. On the H200
# at Qwen2.5 1.5B's shapes the 6-row step on the NF4 tensor-core form with K in slices took 2.45
# ms (benchmarks/results/2026-12-04-h200-nf4-stop30.md) against 2.79 ms dequantized (stop 29;
# 3.12 ms on the NF4 kernels before K was sliced), bf16 1.53 ms
NF4_KERNEL_ROWS = 16

def _raise_recompile_limit(limit: int = 64) -> None:
    """Each (batch, q) step shape compiles once per model; the default limit (8) is too low for a
    draft/target pair over several batch sizes, and hitting it silently falls back to eager."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)
