"""bitsandbytes NF4 weights as they are stored, and a Triton GEMV that reads them directly (issue 17).

What is here (checked on the CPU, and for correctness on an H200):

- ``NF4Weight``: the storage of a ``bnb.nn.Linear4bit`` weight unchanged, without bitsandbytes
  needed to hold it: packed codes (uint8, two 4-bit codes per byte over the row-major flattened
  [N, K] weight, the first element in the high nibble), per-block absmax (``blocksize`` elements a
  block over the flattened weight, so a block may straddle two rows when K is not a multiple of
  it), the 16-entry NF4 code map, and with double quantization the absmax as uint8 codes of
  bitsandbytes' signed dynamic 8-bit map, one float32 scale per 256 blocks and a float32 offset.
  Built from a ``Linear4bit`` (``NF4Weight.from_linear4bit``) or a ``QuantState``.
- ``quantize_nf4`` / ``dequantize_nf4``: a torch reference of bitsandbytes' 4-bit quantizer and
  dequantizer. It reproduces what bitsandbytes 0.50 computes on the CPU, bit for bit (tested
  against bitsandbytes when it is installed): the 4-bit step is its torch implementation (scale by
  the reciprocal of the block's absmax, bucketize on the code map's midpoints); the nested absmax
  is quantized as its C CPU kernel does (a 65536-entry lookup table over [-1, 1], not the exact
  nearest code). Checkpoints quantized on a GPU went through bitsandbytes' CUDA kernels, whose
  codes can differ in rare ties; that does not matter here, since the kernels read whatever codes
  are stored and ``dequantize_nf4`` decodes them exactly as bitsandbytes does. (One exception
  on bitsandbytes' side: its 0.50 AVX-512 CPU dequantizer indexes the absmax per row, wrong when
  K is not a multiple of the block; CUDA and its torch implementation, and this module, use the
  flat blocks. Real layers have K a multiple of 64, where all agree.)
- ``nf4_gemv(x, nf4, bias)``: y = x @ W^T for decode-sized x [M, K] (M <= MAX_ROWS), W decoded in
  registers (code -> map lookup -> * absmax, the double-quantized absmax decoded in the kernel as
  code2[q] * absmax2 + offset, the product rounded on its own: never contracted into an FMA),
  fp32 accumulation. The decoded weight is rounded to the weight's own dtype (``nf4.dtype``, bf16
  for a bf16 model) before the product, as bitsandbytes' dequantize-then-matmul does, so the
  result equals ``dequantize_nf4(nf4).float() @ x.float().T`` up to summation order (each decoded
  weight bit for bit: tested with unit rows). Two forms: "reduce" (elementwise products
  accumulated in fp32, one row's in the decoded tile's own layout, reduced across threads once
  after the loop) and "mma" (the decoded tile is the left operand of a tensor-core product with
  the rows as the right one, so each weight tile is read and decoded once for up to 16 rows).
  Per element the GPU work is kept small: packed bytes loaded 16 a thread where the tile allows;
  the absmax (and its nested decode) once per quantization block when K is a multiple of the
  block and the tile covers whole blocks (``ALIGNED``; the per-byte path otherwise, where blocks
  straddle rows); the bf16 rounding by the hardware conversion on the GPU (round to nearest
  even; the interpreter's truncates, so there it is done by hand, the same result); the next
  tile's bytes and absmax loaded before the current one is decoded; under programmatic
  dependent launch (``pdl=True``) the first weight tiles load before the kernel waits for its
  predecessor. Code lookup by config: byte permutes of each block's decoded values ("perm", the
  default for one row of 16-bit weights on CUDA, and for the tensor-core form; two rows take it
  when asked; see "the permute lookup" below), two gathers of
  the 16-entry map per byte ("nibble", the default elsewhere), or one of a 256-entry table of both
  codes' float32 bits ("pair", built once per code map tensor).
- ``nf4_gemv_fused``: the same product with kernels.gemv's folding: the residual add
  x' = x + delta (written back as the new residual stream), with the residual's own norm first
  (``delta_norm``: Gemma's post-norms), the input RMS norm (Llama's w and Gemma's 1 + w forms),
  the norm weight on the input tiles and the row scale on the accumulator, and the gated
  activation (``act``: W holds gate rows then up rows, y = act(gate) * up, kernels.gemv's
  epilogue), with kernels.gemv's numerics (x' and the normed input rounded to x's dtype, fp32
  products).
- ``merge_nf4``: one NF4Weight of several stacked along the output rows (the fused q/k/v and
  gate/up matrices of accel/fused.py, each part with its own quant state): the packed codes
  concatenated as stored, the absmax decoded to float32 once (see its doc for why and the cost).

Wired into the fused decode layers (accel/fused.py, ``FusedModel(nf4=True)`` /
``ModelRunner(nf4=True)``), which the settings turn on for NF4 models (accel/execution.py:
``--quantized``): steps of at most fused.NF4_KERNEL_ROWS rows (16: the draft's and target's own
steps and the verify) run on these kernels around kernels.decode_attention; prefill and larger
steps take each layer's weights dequantized by one kernel (``dequantize_nf4_fast``: the same
values), then the compiled layers and cuBLAS.

Measured on the H200 (benchmarks/results/2026-12-03-h200-nf4.md, 2026-12-03-h200-nf4-notes.md,
2026-12-04-h200-stop29-notes.md):

- With the map loads ("nibble", stop 28) the one- and two-row forms read NF4 weights at 290-800
  GB/s, far below HBM's ~4.8 TB/s: a target step was 1.2-1.3x the bf16 step on the Qwen2.5
  1.5B, Gemma 3 4B and Llama 3.1 8B shapes, not the 0.6-0.75x the bytes allow. They are bound by
  instructions, not bytes: compiled for sm_90 they issue 14.5-18 instructions a weight, one of
  them a map load (benchmarks/kernel_sass.py, benchmarks/results/2026-12-04-cpu-kernel-sass.txt).
- The byte permutes ("perm", stop 29) issue 9.6-11.8 a weight with 92-128 registers
  (2026-12-04-cpu-kernel-sass-perm.txt). One-row products, best config each, same run: Qwen2.5
  1.5B gate/up 26.4 -> 17.3 us, Llama 3.1 8B gate/up 92.4 -> 58.8 us, down 40.6 -> 37.7 us; the
  one-token step 1.11x bf16 on Qwen2.5 1.5B (1.525 ms -> 1.351 ms), 1.06x on Gemma 3 4B and
  0.92x on Llama 3.1 8B (2026-12-04-h200-nf4-stop29-models.md): faster than bf16 where the
  matrices are large, still far from the 0.6x the issue asks. Stop 26's probe of lookups from
  registers (benchmarks/nf4_decode_probe.py) had not found this: tl.gather of a per-block decoded
  table, and permutes of the map's float32 bytes (four byte planes, the scaling and rounding
  still per weight), were no faster than the map loads.
- A plain product's input read as bf16 pairs in the weight tile's own layout (config input
  "pairs": no exchange through shared memory, more loads) measured slower than the contiguous
  tile split and exchanged (the default) on four of the five plain products compared (1-52%),
  faster on Gemma 3 4B's o projection (5.0 against 6.1 us).
- Until stop 30 the forms at 6 rows read at 48-280 GB/s (the reduction form's accumulator grows
  with the rows; the tensor-core form's decoded operand went through shared memory), so those
  steps dequantized each layer's weights with ``dequantize_nf4_fast`` at ~3.2 TB/s (its stores
  take the loads' layout: the 6-row Qwen2.5 1.5B step 11.6 -> 3.27 ms, 2.17x bf16's).
- nf4_gemv_config's defaults are the sweep's best by kind and size.

Tensor-core forms that read each NF4 tile once for several rows (the verify) measured 2.5-7x
slower than dequantization + cuBLAS on the H200 in every tile shape tried, with K split or not
(benchmarks/nf4_mma_probe.py, benchmarks/results/2026-12-03-h200-stop27-notes.md).

The tensor-core form on the permutes (stop 29): each word's 8 decoded values joined in column
order in registers (so that Triton passes the tile to the products without an exchange; built in
another order, or as 16-bit outputs, it was stored to shared memory one value at a time) issues
4.4-5.5 instructions a weight in SASS, half the reduction form's, for up to 16 rows. Measured at
Qwen2.5 1.5B's shapes (2026-12-04-h200-nf4-stop29-mma.md): at one row it is 2.5-4x slower than the
reduction form (its 32-64-row tiles leave few programs: latency, not instructions, bounds it); at
6 rows it makes qkv 36.8 -> 14.2 us, o 10.0 -> 8.5 us and gate/up 288 -> 36.1 us, but the down
projection (K 8960, N 1536: 24-96 programs) stays on the reduction form at 33.7 us, and the whole
6-row step on the kernels took 3.12 ms against 2.79 ms for the dequantization + bf16 kernels.

K in slices (config entry 8, the tensor-core form: kernels.gemv's scheme and scratch) gives the
narrow and the long-K products more programs (4.4 instructions a weight at one row of gate/up,
157 registers). Measured in stop 30 (2026-12-04-h200-nf4-stop30.md, then -stop30-6rows.md around
the first sweep's bests; Qwen2.5 1.5B, 6 rows): qkv 14.7 -> 6.9 us (8 slices), o 8.6 -> 6.2 us
(8), gate/up 37.4 -> 28.5 us (4), down 36.7 -> 19.4 us (8); the 6-row step on the NF4 kernels
2.45 ms with four slices everywhere (o whole), 2.12 ms with these (bf16 1.50 ms), against the
2.79 ms of the dequantization: NF4_KERNEL_ROWS is 16 since. At one row the sliced form still
loses to the reduction form (gate/up 29.5 against 17.5 us).

The permutes at two rows (stop 30; the default at two rows since stop 33): each decoded word
tile is multiplied into both rows (the input tile's two rows split after one load), 9.4-11.6
instructions a weight in SASS against 16-18 on the map loads
(2026-12-04-cpu-kernel-sass-nf4-2rows-perm.txt). Timed in stop 33 (2026-12-05-h200-nf4-stop33.md,
Qwen2.5 1.5B): the two-row gate/up 32.0 -> 17.7 us (the one-row product's 17.4: the second row
is nearly free), down 15.0 -> 13.5, q/k/v 6.2 -> 5.8, o 4.4 -> 4.1 against the map loads' best.

Not done: a one-row form bound by memory (at one row the products and the input's widening are
about half the reduction form's instructions), keeping the merged
q/k/v and gate/up weights' 8-bit absmax (merge_nf4's doc) instead of float32. The bf16
tensor-core operands are checked on the GPU only (Triton's interpreter gets tl.dot on bf16
wrong, so on the CPU bf16 rows take the fp32-operand path: the same exact products). Assumes an
even K (every real model; rows then start on a byte boundary) and N*K < 2**31.

On CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1), which is how the tests
check it (tests/test_nf4.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .kernels import ACTIVATIONS, gemv_operands, interpreted, split_buffers, tl, triton  # triton/tl: None without Triton

if triton is not None:
    from triton.language.extra import libdevice as _libdevice  # mul_rn: a product never contracted

    from .kernels import _pdl_args  # the PDL flag and launch option, as kernels.gemv passes them
    from .kernels import _delta_scale, _finish, _pdl_enter, _program_tiles, _split_range  # Triton functions shared with kernels.gemv

__all__ = ["AVAILABLE", "MAX_ROWS", "NF4_CODE", "NF4Weight", "dequantize_nf4", "dequantize_nf4_fast", "dynamic_map", "merge_nf4", "nf4_absmax",
           "nf4_nbytes", "nf4_config_key", "nf4_gemv", "nf4_gemv_config", "nf4_gemv_fused", "quantize_nf4"]

AVAILABLE = triton is not None

# nf4_gemv takes up to this many rows (batch x query tokens): the verify step of k <= 15
MAX_ROWS = 16

# bitsandbytes' NF4 map (functional.get_4bit_type("nf4")): quantiles of N(0, 1), sorted
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)

# double quantization: bitsandbytes quantizes the absmax in blocks of 256
NESTED_BLOCKSIZE = 256
_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_LUT_SIZE = 65536  # bitsandbytes' CPU 8-bit quantizer: a lookup table over [-1, 1]


def dynamic_map() -> Tensor:
    """bitsandbytes' signed dynamic 8-bit map (functional.create_dynamic_map(), defaults), float32 [256]."""
    data: list[float] = []
    max_exp, non_sign = 7, 7
    for i in range(max_exp):
        items = int(2 ** (i + non_sign - max_exp) + 1)
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exp - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exp - 1) + i)) * means).tolist()
    data += [0, 1.0]  # additional_items == 0 for these defaults
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def nf4_nbytes(numel: int, blocksize: int = 64) -> int:
    """Bytes of a double-quantized NF4 weight of `numel` elements as NF4Weight holds it (its
    `nbytes`) without quantizing it: packed codes, an 8-bit absmax per block, a float32 scale per
    NESTED_BLOCKSIZE blocks, the offset and the two code maps."""
    blocks = -(-numel // blocksize)
    return (numel + 1) // 2 + blocks + 4 * -(-blocks // NESTED_BLOCKSIZE) + 4 + 16 * 4 + 256 * 4


@dataclass(frozen=True)
class NF4Weight:
    """One Linear4bit weight W [N, K] as bitsandbytes stores it (see the module doc)."""

    packed: Tensor        # uint8 [(N*K + 1) // 2]
    absmax: Tensor        # float32 [blocks], or uint8 [blocks] when nested
    code: Tensor          # float32 [16]
    shape: tuple[int, int]
    dtype: torch.dtype    # the weight's dtype (quant_state.dtype): decoded values are rounded to it
    blocksize: int = 64
    absmax2: Tensor | None = None   # nested: float32 [ceil(blocks / 256)]
    code2: Tensor | None = None     # nested: float32 [256]
    offset: Tensor | None = None    # nested: float32 [1] (a tensor: no host read at launch)
    blocksize2: int = NESTED_BLOCKSIZE

    @property
    def nested(self) -> bool:
        return self.absmax2 is not None

    @property
    def blocks(self) -> int:
        n, k = self.shape
        return -(-(n * k) // self.blocksize)

    @property
    def nbytes(self) -> int:
        """Bytes a product reads for the weight (codes, absmax, nested scales, maps)."""
        parts = [self.packed, self.absmax, self.code, self.absmax2, self.code2, self.offset]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def to(self, device) -> NF4Weight:
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, packed=mv(self.packed), absmax=mv(self.absmax), code=mv(self.code),
                       absmax2=mv(self.absmax2), code2=mv(self.code2), offset=mv(self.offset))

    @classmethod
    def from_quant_state(cls, data: Tensor, quant_state) -> NF4Weight:
        """From a Params4bit's data (any quant_storage dtype) and its bitsandbytes QuantState."""
        qs = quant_state
        if qs.quant_type != "nf4":
            raise ValueError(f"NF4Weight reads nf4 weights, got quant_type {qs.quant_type!r}")
        shape = tuple(int(s) for s in qs.shape)
        if len(shape) != 2:
            raise ValueError(f"NF4Weight needs a 2-D weight, got shape {shape}")
        packed = data.contiguous().view(torch.uint8).reshape(-1)
        n, k = shape
        if packed.numel() != (n * k + 1) // 2:
            raise ValueError(f"packed codes hold {packed.numel()} bytes, a {shape} weight needs {(n * k + 1) // 2}")
        code = qs.code.float().reshape(-1) if qs.code is not None else torch.tensor(NF4_CODE)
        if qs.nested:
            s2 = qs.state2
            offset = torch.as_tensor(qs.offset, dtype=torch.float32, device=packed.device).reshape(1)
            return cls(packed=packed, absmax=qs.absmax.reshape(-1), code=code.to(packed.device), shape=shape,
                       dtype=qs.dtype, blocksize=int(qs.blocksize), absmax2=s2.absmax.float().reshape(-1),
                       code2=s2.code.float().reshape(-1), offset=offset, blocksize2=int(s2.blocksize))
        return cls(packed=packed, absmax=qs.absmax.float().reshape(-1), code=code.to(packed.device), shape=shape,
                   dtype=qs.dtype, blocksize=int(qs.blocksize))

    @classmethod
    def from_linear4bit(cls, module) -> NF4Weight:
        """From a ``bitsandbytes.nn.Linear4bit`` (its weight must be quantized: on a device, or
        loaded from a quantized checkpoint). The bias stays the module's."""
        qs = getattr(module.weight, "quant_state", None)
        if qs is None:
            raise ValueError("the Linear4bit's weight is not quantized yet (no quant_state)")
        return cls.from_quant_state(module.weight.data, qs)


# ------------------------------------------------------------------------------ torch reference

def _quantize_blockwise_8bit(a: Tensor, code: Tensor, blocksize: int) -> tuple[Tensor, Tensor]:
    """bitsandbytes' CPU quantize_blockwise (C kernel quantize_cpu_impl): per block absmax, x *
    (1 / absmax) clamped to [-1, 1], then the code index from a 65536-entry table of the nearest
    code (built from the map's midpoints); an all-zero block gets code 0."""
    a = a.reshape(-1).float()
    n = a.numel()
    blocks = -(-n // blocksize)
    padded = torch.nn.functional.pad(a, (0, blocks * blocksize - n))
    absmax = padded.view(blocks, blocksize).abs().amax(dim=1)
    mid = (code[:-1] + code[1:]) * 0.5
    i = torch.arange(_LUT_SIZE, dtype=torch.float32, device=a.device)
    lut = torch.searchsorted(mid, -1.0 + (2.0 * i) / float(_LUT_SIZE - 1), right=False).to(torch.uint8)
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax)).repeat_interleave(blocksize)[:n]
    x = (a * inv).clamp(-1.0, 1.0)
    idx = ((x + 1.0) * 0.5 * float(_LUT_SIZE - 1) + 0.5).to(torch.int64)
    q = lut[idx]
    q = torch.where(absmax.repeat_interleave(blocksize)[:n] == 0, torch.zeros_like(q), q)
    return q, absmax


def quantize_nf4(w: Tensor, blocksize: int = 64, double_quant: bool = True) -> NF4Weight:
    """bitsandbytes' ``quantize_4bit(w, blocksize, compress_statistics=double_quant,
    quant_type="nf4")`` on the CPU, reproduced in torch (same codes, absmax, nested state)."""
    if w.dim() != 2:
        raise ValueError(f"quantize_nf4 needs a 2-D weight, got {tuple(w.shape)}")
    if blocksize not in _BLOCKSIZES:
        raise ValueError(f"invalid blocksize {blocksize} ({', '.join(map(str, _BLOCKSIZES))})")
    if w.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"quantize_nf4 takes 16/32-bit float weights, got {w.dtype}")
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=w.device)
    a = w.reshape(-1).float()
    n = a.numel()
    rem = n % blocksize
    full = n - rem
    com = a[:full].reshape(-1, blocksize)
    absmax = com.abs().max(dim=-1)[0]
    scaled = torch.clamp(com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = a[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(a[full:] / am, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2, out_int32=True).to(torch.uint8)
    packed = (q[::2] << 4) | q[1::2]
    shape = (int(w.shape[0]), int(w.shape[1]))
    if not double_quant:
        return NF4Weight(packed=packed, absmax=absmax, code=code, shape=shape, dtype=w.dtype, blocksize=blocksize)
    offset = absmax.mean()
    code2 = dynamic_map().to(w.device)
    qabs, absmax2 = _quantize_blockwise_8bit(absmax - offset, code2, NESTED_BLOCKSIZE)
    return NF4Weight(packed=packed, absmax=qabs, code=code, shape=shape, dtype=w.dtype, blocksize=blocksize,
                     absmax2=absmax2, code2=code2, offset=offset.reshape(1))


def nf4_absmax(nf4: NF4Weight) -> Tensor:
    """The per-block absmax in float32 (nested: code2[q] * absmax2 + offset, in that order)."""
    if not nf4.nested:
        return nf4.absmax.float()
    q = nf4.absmax.long()
    scale = nf4.absmax2.repeat_interleave(nf4.blocksize2)[: q.numel()]
    return nf4.code2[q] * scale + nf4.offset


def dequantize_nf4(nf4: NF4Weight, dtype: torch.dtype | None = None) -> Tensor:
    """W [N, K] as bitsandbytes' ``dequantize_4bit`` gives it: code * absmax in float32, then
    rounded to ``nf4.dtype`` (and cast to ``dtype`` when given)."""
    n, k = nf4.shape
    codes = torch.stack([nf4.packed >> 4, nf4.packed & 0xF], dim=1).reshape(-1)[: n * k].long()
    absmax = nf4_absmax(nf4).repeat_interleave(nf4.blocksize)[: n * k]
    w = (nf4.code[codes] * absmax).reshape(n, k).to(nf4.dtype)
    return w if dtype is None else w.to(dtype)


def merge_nf4(parts: list[NF4Weight]) -> NF4Weight:
    """One NF4Weight of `parts` stacked along the output rows (the fused q/k/v and gate/up
    matrices): same K, block size, code map and weight dtype; every part but the last a whole
    number of quantization blocks.

    The packed codes concatenate as stored: blocks run over the row-major flattened weight, so
    with each part a whole number of (even-sized) blocks no block or byte straddles two parts.
    The absmax does not, when double-quantized: each part stores it as 8-bit codes against its
    own nested scales (absmax2) and its own offset, and a nested block of 256 may straddle a
    seam. Choice made here: decode it once, now, to float32 (``nf4_absmax``: what bitsandbytes
    decodes, so the merged weight dequantizes bit for bit as the parts do, and the kernel reads a
    plain absmax with no nested decode). Cost: 4 bytes per block instead of about 1, i.e. 0.5625
    instead of 0.516 bytes a weight at blocks of 64 (+9% bytes read for these matrices), and the
    new absmax is memory of its own (the modules keep their nested state). Not done: keeping the
    8-bit codes with the parts' absmax2 concatenated and the offset stored per nested block
    (exact when every part but the last is a multiple of 256 blocks; a small kernel change)."""
    if not parts:
        raise ValueError("merge_nf4 needs at least one weight")
    first = parts[0]
    k = first.shape[1]
    for i, p in enumerate(parts):
        if p.shape[1] != k or p.blocksize != first.blocksize or p.dtype != first.dtype:
            raise ValueError(f"merge_nf4: part {i} has shape {p.shape}, blocks of {p.blocksize}, {p.dtype}; "
                             f"part 0 {first.shape}, {first.blocksize}, {first.dtype}")
        if not torch.equal(p.code, first.code):
            raise ValueError(f"merge_nf4: part {i} has another code map")
        if i < len(parts) - 1 and (p.shape[0] * k) % p.blocksize:
            raise ValueError(f"merge_nf4: part {i} ({p.shape}) is not a whole number of blocks of {p.blocksize}")
    if len(parts) == 1:
        return first
    packed = torch.cat([p.packed for p in parts])
    absmax = torch.cat([nf4_absmax(p) for p in parts])  # float32 [sum of blocks]
    return NF4Weight(packed=packed, absmax=absmax, code=first.code, shape=(sum(p.shape[0] for p in parts), k),
                     dtype=first.dtype, blocksize=first.blocksize)


# ------------------------------------------------------------------------------ the permute lookup
#
# LUT 2 ("perm"; 16-bit weights, K a multiple of the block; one row on the reduce form, any on the
# tensor-core form; compiled: Triton's interpreter runs a stand-in by map loads of the same
# values): per quantization block the 16
# decoded values round(code[v] * absmax) are computed once (16 products, 8 paired roundings) and
# held as byte planes in 8 registers: L0-L3 the low bytes of values 0-3, 4-7, 8-11, 12-15, H0-H3
# the high bytes. A byte permute (PTX prmt) then looks up four nibbles at once in one plane pair
# (the nibble's low 3 bits pick one of 8 bytes), a bitwise select on the nibble's bit 3 picks
# the pair, and two more permutes and a shift or mask give each weight's float32 bits. About 4
# instructions a weight for the lookup, the scaling, the rounding and the widening together; the
# kernel's loop 9.6-11.8 a weight against 14.5-18 with a map load per nibble
# (benchmarks/results/2026-12-04-cpu-kernel-sass-perm.txt, 2026-12-04-cpu-kernel-sass.txt). The
# codes are read as int32 words (8 codes): on the reduce form one word a thread per tile element
# (tl.max_contiguous: with four, Triton exchanged the 8 decoded tiles through shared memory to
# meet the input pairs' layout, where the input is read that way), on the tensor-core form four
# (the tile's columns then run along a thread's registers, so it needs no exchange either).
# tests/test_nf4_perm.py runs this PTX through an interpreter of its instructions over every
# code pattern.

PLANES_CONSTRAINTS = ",".join(["=r"] * 8 + ["r"] * 17)
LOOKUP_CONSTRAINTS = ",".join(["=r"] * 8 + ["r"] * 9)


def planes_asm(f16: bool = False) -> str:
    """PTX: a block's absmax ($8) and the 16 code values ($9-$24) -> the byte planes of the 16
    decoded values code[v] * absmax (each product rounded on its own, mul.rn, then to bf16 or
    fp16, round to nearest even): $0-$3 the low bytes (L0-L3), $4-$7 the high bytes (H0-H3)."""
    cvt = "cvt.rn.f16x2.f32" if f16 else "cvt.rn.bf16x2.f32"
    lines = ["{", ".reg .f32 f<16>;", ".reg .b32 p<8>;"]
    lines += [f"mul.rn.f32 f{v}, $8, ${9 + v};" for v in range(16)]
    lines += [f"{cvt} p{j}, f{2 * j + 1}, f{2 * j};" for j in range(8)]  # p_j = value 2j (low half), 2j+1
    lines += [f"prmt.b32 ${j}, p{2 * j}, p{2 * j + 1}, 0x6420;" for j in range(4)]      # low bytes
    lines += [f"prmt.b32 ${4 + j}, p{2 * j}, p{2 * j + 1}, 0x7531;" for j in range(4)]  # high bytes
    lines.append("}")
    return "\n".join(lines)


def lookup_asm(f16: bool = False) -> str:
    """PTX: a word of packed codes ($8: byte i in bits 8i..8i+7, each the high nibble's code then
    the low one's) and its block's planes (L0-L3 $9-$12, H0-H3 $13-$16) -> the decoded values in
    float32 of the bytes' high nibbles ($0-$3) and low nibbles ($4-$7). bf16 values widen by a
    shift (or a mask); fp16 ones by a conversion."""
    L = ("$9", "$10", "$11", "$12")
    H = ("$13", "$14", "$15", "$16")
    lines = ["{", ".reg .b32 bm, t, ms, m, s, la, lb, ha, hb, l, h, p, q;", ".reg .b16 e, o;",
             # per nibble: 1000 where its bit 3 is set (prmt's sign mode on a 0x80 byte gives 0xFF),
             # else 0100 (byte 4, 0x00): the select masks, one byte per nibble
             "and.b32 bm, $8, 0x88888888;", "shr.b32 t, bm, 1;", "lop3.b32 ms, bm, t, 0x44444444, 0x56;"]
    for half in range(2):  # bytes 0-1, then 2-3
        if half == 0:
            lines += ["and.b32 s, $8, 0x7777;", "prmt.b32 m, 0x80, 0, ms;"]
        else:
            lines += ["shr.b32 s, $8, 16;", "and.b32 s, s, 0x7777;", "shr.b32 ms, ms, 16;", "prmt.b32 m, 0x80, 0, ms;"]
        # the four nibbles (lo, hi, lo, hi of two bytes) -> their values' low bytes, high bytes
        lines += [f"prmt.b32 la, {L[0]}, {L[1]}, s;", f"prmt.b32 lb, {L[2]}, {L[3]}, s;",
                  "lop3.b32 l, la, lb, m, 0xD8;",  # (la & ~m) | (lb & m)
                  f"prmt.b32 ha, {H[0]}, {H[1]}, s;", f"prmt.b32 hb, {H[2]}, {H[3]}, s;",
                  "lop3.b32 h, ha, hb, m, 0xD8;",
                  "prmt.b32 p, l, h, 0x5140;",  # byte 2*half: the low nibble's value (low half), the high's
                  "prmt.b32 q, l, h, 0x7362;"]  # byte 2*half + 1
        for b, r in ((2 * half, "p"), (2 * half + 1, "q")):
            if f16:
                lines += [f"mov.b32 {{o, e}}, {r};", f"cvt.f32.f16 ${b}, e;", f"cvt.f32.f16 ${4 + b}, o;"]
            else:
                lines += [f"and.b32 ${b}, {r}, 0xFFFF0000;", f"shl.b32 ${4 + b}, {r}, 16;"]
    lines.append("}")
    return "\n".join(lines)


PLANES_ASM_BF16, PLANES_ASM_F16 = planes_asm(False), planes_asm(True)
LOOKUP_ASM_BF16, LOOKUP_ASM_F16 = lookup_asm(False), lookup_asm(True)
if triton is not None:  # the kernels read them as compile-time constants
    _PLANES_BF16, _PLANES_F16 = tl.constexpr(PLANES_ASM_BF16), tl.constexpr(PLANES_ASM_F16)
    _LOOKUP_BF16, _LOOKUP_F16 = tl.constexpr(LOOKUP_ASM_BF16), tl.constexpr(LOOKUP_ASM_F16)
    _PLANES_CONSTRAINTS, _LOOKUP_CONSTRAINTS = tl.constexpr(PLANES_CONSTRAINTS), tl.constexpr(LOOKUP_CONSTRAINTS)


# ------------------------------------------------------------------------------ kernel

if AVAILABLE:

    @triton.jit
    def _round_bf16(v):
        """fp32 -> the nearest bf16 (ties to even), kept in fp32; finite inputs. (Triton's CPU
        interpreter truncates in .to(tl.bfloat16); on the GPU the hardware conversion is used.)"""
        u = v.to(tl.uint32, bitcast=True)
        u = u + 0x7FFF + ((u >> 16) & 1)
        return ((u >> 16) << 16).to(tl.float32, bitcast=True)

    @triton.jit
    def _round_to(v, R: tl.constexpr, HW: tl.constexpr):
        """fp32 values rounded to the dtype R (0: fp32, 1: bf16, 2: fp16), kept in fp32. HW: the
        hardware conversion (CUDA: round to nearest even, one instruction for two values); else
        bf16 by hand (the interpreter's conversion truncates), the same result."""
        if R == 1:
            if HW:
                out = v.to(tl.bfloat16).to(tl.float32)
            else:
                out = _round_bf16(v)
        elif R == 2:
            out = v.to(tl.float16).to(tl.float32)
        else:
            out = v
        return out

    @triton.jit
    def _mul_exact(a, b, HW: tl.constexpr):
        """a * b rounded on its own (never contracted into an FMA with a following add: the nested
        absmax is code2[q] * absmax2, then + offset, two roundings, as bitsandbytes computes it)."""
        if HW:
            out = _libdevice.mul_rn(a, b)
        else:  # the interpreter does not contract
            out = a * b
        return out

    @triton.jit
    def _byte_tile(rn, n_ok, j0, KH, K, ALIGNED: tl.constexpr, BS: tl.constexpr, BLOCK_KH: tl.constexpr):
        """The byte tile at byte columns j0.. of rows rn of a row-major [N, KH] matrix (the packed
        codes; the dequantization's int32 pairs have the same offsets): (offsets, their mask, the
        mask per absmax entry, the absmax index). ALIGNED (K a multiple of BS, BLOCK_KH of BS / 2;
        j0 a multiple of BLOCK_KH): offsets [BLOCK_N, blocks, BS / 2], one absmax per block
        [BLOCK_N, blocks]. Otherwise (blocks may straddle rows): [BLOCK_N, BLOCK_KH], the absmax of
        each byte's block."""
        if ALIGNED:
            rb = tl.arange(0, BLOCK_KH // (BS // 2))
            re = tl.arange(0, BS // 2)
            jb = j0 + rb * (BS // 2)  # first byte of each block
            bmask = n_ok[:, None] & (jb < KH)[None, :]  # whole blocks: K is a multiple of BS
            off = rn[:, None, None] * KH + jb[None, :, None] + re[None, None, :]
            tmask = bmask[:, :, None]
            blk = rn[:, None] * (K // BS) + (jb // (BS // 2))[None, :]
        else:
            jj = j0 + tl.arange(0, BLOCK_KH)
            bmask = n_ok[:, None] & (jj < KH)[None, :]
            off = rn[:, None] * KH + jj[None, :]
            tmask = bmask
            blk = (rn[:, None] * K + 2 * jj[None, :]) // BS  # both nibbles: BS is even
        return off, tmask, bmask, blk

    @triton.jit
    def _word_tile(rn, n_ok, j0, KH, K, BS: tl.constexpr, BLOCK_KH: tl.constexpr, ONE_WORD: tl.constexpr = True):
        """_byte_tile's ALIGNED tile as int32 words of the packed codes (4 bytes, 8 codes):
        offsets [BLOCK_N, blocks, BS / 8] into the codes viewed as int32, their mask, the mask per
        block and the absmax index [BLOCK_N, blocks]."""
        rb = tl.arange(0, BLOCK_KH // (BS // 2))
        re = tl.arange(0, BS // 8)
        jb = j0 + rb * (BS // 2)  # first byte of each block
        bmask = n_ok[:, None] & (jb < KH)[None, :]
        off = rn[:, None, None] * (KH // 4) + (jb // 4)[None, :, None] + re[None, None, :]
        # ONE_WORD (the reduce form): one word a thread, not the four contiguity would give, so
        # that the 8 decoded tiles and the input share a layout (see the permute lookup above)
        if ONE_WORD:
            off = tl.max_contiguous(off, [1, 1, 1])
        blk = rn[:, None] * (K // BS) + (jb // (BS // 2))[None, :]
        return off, bmask[:, :, None], bmask, blk

    @triton.jit
    def _nf4_raw(W, ABSMAX, ABSMAX2, rn, n_ok, j0, KH, K, NESTED: tl.constexpr, ALIGNED: tl.constexpr,
                 BS: tl.constexpr, BS2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr,
                 WORDS: tl.constexpr = False, MMA: tl.constexpr = False, KEND=None):
        """The packed bytes at byte columns j0.. of rows rn and their absmax as stored (uint8 codes
        when NESTED, with their absmax2 scales; float32 otherwise, the scale then a placeholder),
        zeros where masked, in _byte_tile's shapes. All immutable: loaded one tile ahead, the first
        before the kernel waits for its predecessor (PDL). WORDS (ALIGNED; W the codes as int32):
        _word_tile's words instead of bytes. KEND (a slice of K: whole tiles): nothing at or past
        this byte column is loaded."""
        if KEND is not None:  # (a tensor comparison: the interpreter masks with tensors only)
            n_ok = n_ok & ((rn * 0 + j0) < KEND)
        if WORDS:
            off, tmask, bmask, blk = _word_tile(rn, n_ok, j0, KH, K, BS, BLOCK_KH, not MMA)
        else:
            off, tmask, bmask, blk = _byte_tile(rn, n_ok, j0, KH, K, ALIGNED, BS, BLOCK_KH)
        byte = tl.load(W + off, mask=tmask, other=0)
        a = tl.load(ABSMAX + blk, mask=bmask, other=0)
        if NESTED:
            s2 = tl.load(ABSMAX2 + blk // BS2, mask=bmask, other=0.0)
        else:
            s2 = a
        return byte, a, s2

    @triton.jit
    def _nf4_amax(a, s2, CODE2, OFFSET, NESTED: tl.constexpr, HW: tl.constexpr):
        """The absmax as stored -> float32 (nested: code2[q] * absmax2 + offset, bitsandbytes' order)."""
        if NESTED:
            amax = _mul_exact(tl.load(CODE2 + a.to(tl.int32)), s2, HW) + tl.load(OFFSET)
        else:
            amax = a
        return amax

    @triton.jit
    def _word_value(word, SHIFT: tl.constexpr, a3, CODE, WROUND: tl.constexpr, HW: tl.constexpr):
        """The value of the code at bits SHIFT.. of each word, by a map load (the interpreter's
        stand-in for the permutes: the same values)."""
        return _round_to(tl.load(CODE + ((word >> SHIFT) & 15)) * a3, WROUND, HW)

    @triton.jit
    def _perm_decode(word, amax, CODE, WROUND: tl.constexpr, HW: tl.constexpr):
        """LUT 2 (the permute lookup above): a word tile [BLOCK_N, blocks, BS / 8] (int32, 4
        bytes of codes each) and its blocks' absmax [BLOCK_N, blocks] -> the decoded values in
        fp32 as 8 tiles of the word tile's shape: the high then the low nibbles' values of bytes
        0-3 of each word (h0, h1, h2, h3, l0, l1, l2, l3). On CUDA the byte permutes (inline
        PTX, 16-bit weights); under Triton's interpreter (no PTX) the same values by map loads,
        so that the rest of the path runs in the CPU tests."""
        if not HW:
            a3 = amax[:, :, None]
            return (_word_value(word, 4, a3, CODE, WROUND, HW), _word_value(word, 12, a3, CODE, WROUND, HW),
                    _word_value(word, 20, a3, CODE, WROUND, HW), _word_value(word, 28, a3, CODE, WROUND, HW),
                    _word_value(word, 0, a3, CODE, WROUND, HW), _word_value(word, 8, a3, CODE, WROUND, HW),
                    _word_value(word, 16, a3, CODE, WROUND, HW), _word_value(word, 24, a3, CODE, WROUND, HW))
        F16: tl.constexpr = WROUND == 2
        c0 = tl.load(CODE + 0)
        c1 = tl.load(CODE + 1)
        c2 = tl.load(CODE + 2)
        c3 = tl.load(CODE + 3)
        c4 = tl.load(CODE + 4)
        c5 = tl.load(CODE + 5)
        c6 = tl.load(CODE + 6)
        c7 = tl.load(CODE + 7)
        c8 = tl.load(CODE + 8)
        c9 = tl.load(CODE + 9)
        c10 = tl.load(CODE + 10)
        c11 = tl.load(CODE + 11)
        c12 = tl.load(CODE + 12)
        c13 = tl.load(CODE + 13)
        c14 = tl.load(CODE + 14)
        c15 = tl.load(CODE + 15)
        codes = [amax, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15]
        i32 = tl.int32
        f32 = tl.float32
        p0, p1, p2, p3, p4, p5, p6, p7 = tl.inline_asm_elementwise(
            _PLANES_F16 if F16 else _PLANES_BF16, _PLANES_CONSTRAINTS, codes,
            dtype=(i32, i32, i32, i32, i32, i32, i32, i32), is_pure=True, pack=1)
        args = [word, p0[:, :, None], p1[:, :, None], p2[:, :, None], p3[:, :, None],
                p4[:, :, None], p5[:, :, None], p6[:, :, None], p7[:, :, None]]
        return tl.inline_asm_elementwise(_LOOKUP_F16 if F16 else _LOOKUP_BF16, _LOOKUP_CONSTRAINTS, args,
                                         dtype=(f32, f32, f32, f32, f32, f32, f32, f32), is_pure=True, pack=1)

    @triton.jit
    def _split4(v, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr):
        """[S0, S1, S2, 4] -> its four [S0, S1, S2] slices along the last dimension, in order."""
        a, b = tl.split(tl.reshape(v, [S0, S1, S2, 2, 2]))  # a: elements 0, 2; b: 1, 3
        v0, v2 = tl.split(a)
        v1, v3 = tl.split(b)
        return v0, v1, v2, v3

    @triton.jit
    def _perm_full_tile(word, amax, CODE, WROUND: tl.constexpr, HW: tl.constexpr, F32: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr):
        """The decoded weight tile [BLOCK_N, 2 * BLOCK_KH], columns in order, as the tensor-core
        form's left operand: in the weight's 16-bit dtype, or in fp32 (F32: the interpreter's
        exact fp32 products). A word's 8 values stay in one thread, in registers in column order,
        so the operand needs no exchange."""
        h0, h1, h2, h3, l0, l1, l2, l3 = _perm_decode(word, amax, CODE, WROUND, HW)
        # joins add the fastest register dimension: byte bit 1, then byte bit 0, then the nibble, so
        # that registers follow columns (column = 8 w + 4 b1 + 2 b0 + nibble)
        hh = tl.join(tl.join(h0, h2), tl.join(h1, h3))  # [.., b1, b0]
        ll = tl.join(tl.join(l0, l2), tl.join(l1, l3))
        tile = tl.reshape(tl.join(hh, ll), [BLOCK_N, 2 * BLOCK_KH])  # [.., b1, b0, nibble] flattened
        if not F32:
            tile = tile.to(tl.float16 if WROUND == 2 else tl.bfloat16)
        return tile

    @triton.jit
    def _perm_dot(acc, w, xt, IEEE: tl.constexpr):
        if IEEE:  # fp32 operands, exact products
            acc += tl.dot(w, xt, input_precision="ieee")
        else:
            acc += tl.dot(w, xt)
        return acc

    @triton.jit
    def _perm_fma(acc, xe, xo, h, lo):
        acc += xe * h
        acc += xo * lo
        return acc

    @triton.jit
    def _perm_row_input(xn, NB: tl.constexpr, BS: tl.constexpr):
        """One row's input tile [1, 2 * BLOCK_KH] (or [2 * BLOCK_KH]) as the 8 tiles of the word
        tile's shape the permute products take: the even and odd columns of bytes 0-3 of each word
        ([1, NB, BS / 8] each: e0-e3, o0-o3)."""
        xe4, xo4 = tl.split(tl.reshape(xn, [1, NB, BS // 8, 4, 2]))
        e0, e1, e2, e3 = _split4(xe4, 1, NB, BS // 8)
        o0, o1, o2, o3 = _split4(xo4, 1, NB, BS // 8)
        return e0, e1, e2, e3, o0, o1, o2, o3

    @triton.jit
    def _perm_products(acc, e0, e1, e2, e3, o0, o1, o2, o3, h0, h1, h2, h3, l0, l1, l2, l3):
        """acc plus one row's products with a decoded word tile (_perm_decode's h0-h3, l0-l3)."""
        acc = _perm_fma(acc, e0, o0, h0, l0)
        acc = _perm_fma(acc, e1, o1, h1, l1)
        acc = _perm_fma(acc, e2, o2, h2, l2)
        acc = _perm_fma(acc, e3, o3, h3, l3)
        return acc

    @triton.jit
    def _nf4_decode(byte, a, s2, CODE, PAIR, CODE2, OFFSET, NESTED: tl.constexpr, ALIGNED: tl.constexpr,
                    LUT: tl.constexpr, WROUND: tl.constexpr, HW: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr):
        """_nf4_raw's tile decoded: (high nibbles, low nibbles) in fp32, in the raw tile's shape, each
        round(code[q] * absmax) in the weight's dtype (bitsandbytes' order of operations). Masked
        bytes are 0 and decode to finite values (their inputs are zero). LUT 0: two lookups of the
        16-entry map per byte; LUT 1: one of PAIR, int64 [256], the byte's two codes' float32 bits
        (the high nibble's in the high word). (LUT 2 decodes words: _perm_decode.)"""
        amax = _nf4_amax(a, s2, CODE2, OFFSET, NESTED, HW)  # once per block on the ALIGNED path
        b = byte.to(tl.int32)
        if LUT == 1:
            v = tl.load(PAIR + b)
            c_hi = (v >> 32).to(tl.int32).to(tl.float32, bitcast=True)
            c_lo = v.to(tl.int32).to(tl.float32, bitcast=True)
        else:
            c_hi = tl.load(CODE + (b >> 4))
            c_lo = tl.load(CODE + (b & 15))
        if ALIGNED:
            amax = amax[:, :, None]
        return _round_to(c_hi * amax, WROUND, HW), _round_to(c_lo * amax, WROUND, HW)

    @triton.jit
    def _nf4_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, cols, c_ok, rsd, pid,
                   HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
                   XR: tl.constexpr, HW: tl.constexpr):
        """The input columns `cols` (contiguous) of every row: x' = x (+ norm_d(d)), rounded to x's
        dtype and written to R by program 0; returns (x' in fp32, x' times the norm weight, rounded
        to x's dtype). norm_d (D_NORM): Gemma's (1 + w) RMS norm of the residual delta, rsd its
        row scale."""
        xm = m_ok[:, None] & c_ok[None, :]
        x = tl.load(X + rm[:, None] * sxm + cols[None, :], mask=xm, other=0.0).to(tl.float32)
        if HAS_D:
            d = tl.load(D + rm[:, None] * sdm + cols[None, :], mask=xm, other=0.0).to(tl.float32)
            if D_NORM:  # as kernels._input_tile: the delta normed and rounded before the add
                wd = tl.load(WD + (rm * 0)[:, None] + cols[None, :], mask=xm, other=0.0).to(tl.float32)
                d = _round_to(d * rsd[:, None] * (1.0 + wd), XR, HW)
            x = _round_to(x + d, XR, HW)
            if pid == 0:
                tl.store(R + rm[:, None] * srm + cols[None, :], x.to(R.dtype.element_ty), mask=xm)
        xn = x
        if NORM:  # per-column weight as a [rows, columns] tile (see kernels._input_tile)
            wn = tl.load(WN + (rm * 0)[:, None] + cols[None, :], mask=xm, other=0.0).to(tl.float32)
            if GEMMA:
                xn = _round_to(x * (1.0 + wn), XR, HW)
            else:
                xn = _round_to(x * wn, XR, HW)
        return x, xn

    @triton.jit
    def _nf4_tile_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, cols, K, rsd, pid, ss2,
                        HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
                        XR: tl.constexpr, HW: tl.constexpr):
        """_nf4_input's normed input tile of the columns `cols` (contiguous), and the rows' sums of
        squares ss2 plus this tile's (for the norm's row scale in the epilogue)."""
        xf, xn = _nf4_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, cols, cols < K, rsd, pid,
                            HAS_D, D_NORM, NORM, GEMMA, XR, HW)
        if NORM:
            ss2 += xf * xf
        return xn, ss2

    @triton.jit
    def _bf16_pair(q):
        """An int32 holding two bf16 values (memory order) -> (the first, the second) in fp32."""
        return (q << 16).to(tl.float32, bitcast=True), (q & -65536).to(tl.float32, bitcast=True)

    @triton.jit
    def _nf4_acc(MMA: tl.constexpr, ALIGNED: tl.constexpr, BS: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr, PERM: tl.constexpr = False):
        """The fp32 accumulator: [BLOCK_N, BLOCK_M] for tensor cores; for one row the decoded
        tile's own shape ([BLOCK_N, BLOCK_KH], ALIGNED [BLOCK_N, blocks, BS / 2]: each thread sums
        its own columns, one reduction across threads after the loop); [BLOCK_M, BLOCK_N,
        BLOCK_KH] for several rows' elementwise products. Reduced by _nf4_results."""
        if MMA:
            return tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        elif PERM:  # one row, the word tile's shape
            return tl.zeros([BLOCK_N, BLOCK_KH // (BS // 2), BS // 8], dtype=tl.float32)
        elif BLOCK_M == 1 and ALIGNED:
            return tl.zeros([BLOCK_N, BLOCK_KH // (BS // 2), BS // 2], dtype=tl.float32)
        elif BLOCK_M == 1:
            return tl.zeros([BLOCK_N, BLOCK_KH], dtype=tl.float32)
        else:
            return tl.zeros([BLOCK_M, BLOCK_N, BLOCK_KH], dtype=tl.float32)

    @triton.jit
    def _nf4_product(acc, w_hi, w_lo, xe, xo, X, ALIGNED: tl.constexpr, MMA: tl.constexpr, IEEE: tl.constexpr,
                     BS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr):
        """acc plus the decoded tile's products with the rows: the even input columns xe with the
        high nibbles, the odd ones xo with the low ([BLOCK_M, BLOCK_KH] each). The reduction forms
        multiply in the decoded tile's own shape (ALIGNED: [BLOCK_N, blocks, BS / 2], the inputs
        reshaped to it, which are BLOCK_N times fewer than the weights)."""
        if MMA:
            if ALIGNED:
                w_hi = tl.reshape(w_hi, [BLOCK_N, BLOCK_KH])
                w_lo = tl.reshape(w_lo, [BLOCK_N, BLOCK_KH])
            if IEEE:  # fp32 operands, exact products
                acc += tl.dot(w_hi, tl.trans(xe), input_precision="ieee")
                acc += tl.dot(w_lo, tl.trans(xo), input_precision="ieee")
            else:  # operands in the model's dtype (x's == the weight's: both roundings exact)
                xdt = X.dtype.element_ty
                acc += tl.dot(w_hi.to(xdt), tl.trans(xe.to(xdt)))
                acc += tl.dot(w_lo.to(xdt), tl.trans(xo.to(xdt)))
        elif BLOCK_M == 1:
            if ALIGNED:
                xe = tl.reshape(xe, [1, BLOCK_KH // (BS // 2), BS // 2])
                xo = tl.reshape(xo, [1, BLOCK_KH // (BS // 2), BS // 2])
            acc += xe * w_hi  # [1, ...] against [BLOCK_N, ...]: two FMAs a byte
            acc += xo * w_lo
        else:
            if ALIGNED:
                w_hi = tl.reshape(w_hi, [BLOCK_N, BLOCK_KH])
                w_lo = tl.reshape(w_lo, [BLOCK_N, BLOCK_KH])
            acc += xe[:, None, :] * w_hi[None, :, :] + xo[:, None, :] * w_lo[None, :, :]
        return acc

    @triton.jit
    def _nf4_gemv_kernel(
        X, sxm, X32, D, sdm, WD, WN, R, srm, W, ABSMAX, CODE, PAIR, CODE2, ABSMAX2, OFFSET, BIAS, Y, sym, P, CNT,
        M, N, K, KH, eps,
        NESTED: tl.constexpr, ALIGNED: tl.constexpr, LUT: tl.constexpr, HW: tl.constexpr, XPAIRS: tl.constexpr,
        BS: tl.constexpr, BS2: tl.constexpr, WROUND: tl.constexpr, XR: tl.constexpr,
        HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
        GATED: tl.constexpr, ACT: tl.constexpr,
        HAS_BIAS: tl.constexpr, MMA: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr, SPLIT_K: tl.constexpr = 1,
    ):
        """Y[M, N] = f(X)[M, K] @ W[N, K]^T (+ bias), W in NF4 (see the module doc); f: x (+ norm_d(D))
        then an RMS norm, folded in as kernels.gemv does (the norm weight on the input tiles, the
        row scale on the accumulator). GATED: W is [2N, K] (gate rows, then up rows, one NF4
        weight) and Y = act(gate) * up, as kernels.gemv's epilogue. KH = K / 2 (bytes a row).

        Program pid computes columns pid*BLOCK_N.. of every row; each step decodes BLOCK_KH bytes
        (2*BLOCK_KH columns) of its BLOCK_N weight rows (and of the matching up rows) once and
        multiplies them into all rows: the even input columns with the high nibbles, the odd ones
        with the low (the input tile is loaded contiguously and split). The packed bytes and
        absmax of the next tile are loaded before this tile is decoded (one tile in flight per
        program; the first before _pdl_enter under PDL). ALIGNED: the absmax (and its nested
        decode) once per quantization block instead of once per byte; LUT: the code lookup (see
        _nf4_decode); HW: hardware bf16 rounding (CUDA) instead of the interpreter's by hand.
        MMA=False: elementwise fp32 products (one row: a [BLOCK_N, BLOCK_KH] accumulator, each
        thread its own columns; several: [BLOCK_M, BLOCK_N, BLOCK_KH]), reduced once after the
        loop. MMA=True: the decoded tiles are the left operands of tensor-core products,
        [BLOCK_N, BLOCK_KH] x [BLOCK_KH, BLOCK_M], fp32 accumulation. SPLIT_K > 1 (tensor cores):
        program (pid, s) takes the s-th of SPLIT_K slices of the row's bytes (whole tiles) and the
        last of them to finish sums the partials in slice order and runs the epilogue, as
        kernels.gemv does (kernels._finish: P the partials, CNT a counter per column tile)."""
        pid, rm, rn, rc, m_ok, n_ok = _program_tiles(M, N, BLOCK_M, BLOCK_N, 2 * BLOCK_KH)
        split = tl.program_id(1)
        kh_lo, kh_end = _split_range(split, KH, SPLIT_K, BLOCK_KH)
        # the first tiles (immutable weights) before waiting for the previous kernel's results
        PERM: tl.constexpr = LUT == 2  # words of codes decoded by byte permutes (ALIGNED; one or two rows, or tensor cores)
        NB: tl.constexpr = BLOCK_KH // (BS // 2)  # quantization blocks a row of the tile (ALIGNED)
        b_nx, a_nx, s_nx = _nf4_raw(W, ABSMAX, ABSMAX2, rn, n_ok, kh_lo, KH, K, NESTED, ALIGNED, BS, BS2,
                                    BLOCK_N, BLOCK_KH, PERM, MMA, kh_end)
        ub_nx, ua_nx, us_nx = b_nx, a_nx, s_nx
        if GATED:  # the up rows of the same output columns
            ub_nx, ua_nx, us_nx = _nf4_raw(W, ABSMAX, ABSMAX2, rn + N, n_ok, kh_lo, KH, K, NESTED, ALIGNED, BS,
                                           BS2, BLOCK_N, BLOCK_KH, PERM, MMA, kh_end)
        _pdl_enter(PDL)
        rsd = _delta_scale(D, sdm, rm, m_ok, K, eps, HAS_D, D_NORM, BLOCK_M, 2 * BLOCK_KH)
        ss2 = tl.zeros([BLOCK_M, 2 * BLOCK_KH], dtype=tl.float32)
        acc_t = _nf4_acc(MMA, ALIGNED, BS, BLOCK_M, BLOCK_N, BLOCK_KH, PERM)
        acc2_t = _nf4_acc(MMA, ALIGNED, BS, BLOCK_M, BLOCK_N, BLOCK_KH, PERM)
        # the permutes' reduction form at two rows: the second row's sums apart, each decoded word
        # tile multiplied into both rows (one row: placeholders the loop never touches)
        TWO: tl.constexpr = PERM and not MMA and BLOCK_M == 2
        acc_b, acc2_b = acc_t, acc2_t
        if TWO:
            acc_b = _nf4_acc(MMA, ALIGNED, BS, BLOCK_M, BLOCK_N, BLOCK_KH, PERM)
            acc2_b = _nf4_acc(MMA, ALIGNED, BS, BLOCK_M, BLOCK_N, BLOCK_KH, PERM)
        for j0 in range(kh_lo, kh_end, BLOCK_KH):
            byte, a, s2 = b_nx, a_nx, s_nx
            ubyte, ua, us2 = ub_nx, ua_nx, us_nx
            # the next tile's loads first (past the slice's end: all masked, no memory traffic)
            b_nx, a_nx, s_nx = _nf4_raw(W, ABSMAX, ABSMAX2, rn, n_ok, j0 + BLOCK_KH, KH, K, NESTED, ALIGNED,
                                        BS, BS2, BLOCK_N, BLOCK_KH, PERM, MMA, kh_end)
            if GATED:
                ub_nx, ua_nx, us_nx = _nf4_raw(W, ABSMAX, ABSMAX2, rn + N, n_ok, j0 + BLOCK_KH, KH, K, NESTED,
                                               ALIGNED, BS, BS2, BLOCK_N, BLOCK_KH, PERM, MMA, kh_end)
            if PERM and MMA:  # the decoded tile, columns in order, the left operand of tensor-core products
                xn, ss2 = _nf4_tile_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, 2 * j0 + rc, K, rsd, pid, ss2,
                                          HAS_D, D_NORM, NORM, GEMMA, XR, HW)
                xt = tl.trans(xn) if IEEE else tl.trans(xn.to(X.dtype.element_ty))
                wt = _perm_full_tile(byte, _nf4_amax(a, s2, CODE2, OFFSET, NESTED, HW), CODE, WROUND, HW, IEEE,
                                     BLOCK_N, BLOCK_KH)
                acc_t = _perm_dot(acc_t, wt, xt, IEEE)
                if GATED:
                    ut = _perm_full_tile(ubyte, _nf4_amax(ua, us2, CODE2, OFFSET, NESTED, HW), CODE, WROUND, HW,
                                         IEEE, BLOCK_N, BLOCK_KH)
                    acc2_t = _perm_dot(acc2_t, ut, xt, IEEE)
            elif PERM:
                # the row's input as 8 tiles of the word tile's shape: the even and odd columns of
                # bytes 0-3 of each word ([1, NB, BS / 8] from the contiguous tile, or bf16 pairs
                # read in the word tile's own layout); two rows: both rows' tiles from one load
                if XPAIRS:
                    xw, xwm, _, _ = _word_tile(rn * 0, n_ok, j0, KH, K, BS, BLOCK_KH)
                    xp = X32 + 4 * xw  # one address, the four pairs at immediate offsets
                    q0 = tl.load(xp, mask=xwm, other=0)
                    q1 = tl.load(xp + 1, mask=xwm, other=0)
                    q2 = tl.load(xp + 2, mask=xwm, other=0)
                    q3 = tl.load(xp + 3, mask=xwm, other=0)
                    e0, o0 = _bf16_pair(q0)
                    e1, o1 = _bf16_pair(q1)
                    e2, o2 = _bf16_pair(q2)
                    e3, o3 = _bf16_pair(q3)
                else:
                    xn, ss2 = _nf4_tile_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, 2 * j0 + rc, K, rsd, pid,
                                              ss2, HAS_D, D_NORM, NORM, GEMMA, XR, HW)
                    if TWO:
                        xa, xb = tl.split(tl.trans(xn))  # [2, C] -> rows a and b, [C] each
                        e0, e1, e2, e3, o0, o1, o2, o3 = _perm_row_input(xa, NB, BS)
                        f0, f1, f2, f3, p0, p1, p2, p3 = _perm_row_input(xb, NB, BS)
                    else:
                        e0, e1, e2, e3, o0, o1, o2, o3 = _perm_row_input(xn, NB, BS)
                h0, h1, h2, h3, l0, l1, l2, l3 = _perm_decode(byte, _nf4_amax(a, s2, CODE2, OFFSET, NESTED, HW),
                                                              CODE, WROUND, HW)
                acc_t = _perm_products(acc_t, e0, e1, e2, e3, o0, o1, o2, o3, h0, h1, h2, h3, l0, l1, l2, l3)
                if TWO:
                    acc_b = _perm_products(acc_b, f0, f1, f2, f3, p0, p1, p2, p3, h0, h1, h2, h3, l0, l1, l2, l3)
                if GATED:
                    h0, h1, h2, h3, l0, l1, l2, l3 = _perm_decode(
                        ubyte, _nf4_amax(ua, us2, CODE2, OFFSET, NESTED, HW), CODE, WROUND, HW)
                    acc2_t = _perm_products(acc2_t, e0, e1, e2, e3, o0, o1, o2, o3, h0, h1, h2, h3, l0, l1, l2, l3)
                    if TWO:
                        acc2_b = _perm_products(acc2_b, f0, f1, f2, f3, p0, p1, p2, p3,
                                                h0, h1, h2, h3, l0, l1, l2, l3)
            else:
                w_hi, w_lo = _nf4_decode(byte, a, s2, CODE, PAIR, CODE2, OFFSET, NESTED, ALIGNED, LUT, WROUND, HW,
                                         BLOCK_N, BLOCK_KH)
                if XPAIRS:  # one bf16 row read as pairs in the byte tile's own layout (no exchange)
                    xoff, xmask, _, _ = _byte_tile(rn * 0, n_ok, j0, KH, K, ALIGNED, BS, BLOCK_KH)
                    xe, xo = _bf16_pair(tl.load(X32 + xoff, mask=xmask, other=0))
                    acc_t += xe * w_hi
                    acc_t += xo * w_lo
                else:
                    xn, ss2 = _nf4_tile_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, 2 * j0 + rc, K, rsd, pid,
                                              ss2, HAS_D, D_NORM, NORM, GEMMA, XR, HW)
                    xe, xo = tl.split(tl.reshape(xn, [BLOCK_M, BLOCK_KH, 2]))
                    acc_t = _nf4_product(acc_t, w_hi, w_lo, xe, xo, X, ALIGNED, MMA, IEEE, BS, BLOCK_M, BLOCK_N,
                                         BLOCK_KH)
                if GATED:
                    u_hi, u_lo = _nf4_decode(ubyte, ua, us2, CODE, PAIR, CODE2, OFFSET, NESTED, ALIGNED, LUT, WROUND,
                                             HW, BLOCK_N, BLOCK_KH)
                    if XPAIRS:
                        acc2_t += xe * u_hi
                        acc2_t += xo * u_lo
                    else:
                        acc2_t = _nf4_product(acc2_t, u_hi, u_lo, xe, xo, X, ALIGNED, MMA, IEEE, BS, BLOCK_M, BLOCK_N,
                                              BLOCK_KH)
        if PERM and not MMA:  # one row's [BLOCK_N, blocks, BS / 8] sums, flattened
            acc_t = tl.reshape(acc_t, [BLOCK_N, BLOCK_KH // 4])
            acc2_t = tl.reshape(acc2_t, [BLOCK_N, BLOCK_KH // 4])
            if TWO:  # both rows' as the several-row form's [2, BLOCK_N, columns] (reduced over the last)
                acc_t = tl.permute(tl.join(acc_t, tl.reshape(acc_b, [BLOCK_N, BLOCK_KH // 4])), [2, 0, 1])
                acc2_t = tl.permute(tl.join(acc2_t, tl.reshape(acc2_b, [BLOCK_N, BLOCK_KH // 4])), [2, 0, 1])
        elif BLOCK_M == 1 and ALIGNED and not MMA:  # one row's [BLOCK_N, blocks, BS / 2] sums, flattened
            acc_t = tl.reshape(acc_t, [BLOCK_N, BLOCK_KH])
            acc2_t = tl.reshape(acc2_t, [BLOCK_N, BLOCK_KH])
        # row scale of the norm, bias (gate's then up's), gated activation, store: kernels.gemv's
        _finish(acc_t, acc2_t, tl.sum(ss2, axis=1), P, CNT, pid, split, K, eps, BIAS, rn, n_ok, N, Y, sym, rm, m_ok,
                NORM, HAS_BIAS, GATED, ACT, MMA, SPLIT_K, BLOCK_M, BLOCK_N)


    @triton.jit
    def _nf4_dequantize_kernel(W, ABSMAX, CODE, CODE2, ABSMAX2, OFFSET, Y, Y32, N, K, KH,
                               NESTED: tl.constexpr, ALIGNED: tl.constexpr, BS: tl.constexpr, BS2: tl.constexpr,
                               WROUND: tl.constexpr, HW: tl.constexpr, PAIRS: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_KH: tl.constexpr):
        """Y [N, K] = the decoded weight (dequantize_nf4's values), one [BLOCK_N, 2*BLOCK_KH] tile a
        program: the steps that do not run on the GEMV (prefill, larger steps) read it once.
        ALIGNED: _nf4_raw's per-block tiles (the absmax decoded once per block). PAIRS (16-bit
        weights): each byte's two values stored as one int32 through Y32 (Y's memory; the high
        nibble's value in the low half, the lower address), so the stores take the loads' layout;
        Triton's layout for two joined halves wrote at ~0.3 TB/s, this at ~3.2
        (benchmarks/results/2026-12-03-h200-nf4-decode-probe2.txt)."""
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        j0 = tl.program_id(1) * BLOCK_KH
        n_ok = rn < N
        byte, a, s2 = _nf4_raw(W, ABSMAX, ABSMAX2, rn, n_ok, j0, KH, K, NESTED, ALIGNED, BS, BS2, BLOCK_N, BLOCK_KH)
        w_hi, w_lo = _nf4_decode(byte, a, s2, CODE, CODE, CODE2, OFFSET, NESTED, ALIGNED, 0, WROUND, HW,
                                 BLOCK_N, BLOCK_KH)
        if PAIRS:
            yt = Y.dtype.element_ty
            h = w_hi.to(yt).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
            lo = w_lo.to(yt).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
            off, tmask, _, _ = _byte_tile(rn, n_ok, j0, KH, K, ALIGNED, BS, BLOCK_KH)  # the bytes' own offsets
            tl.store(Y32 + off, h | (lo << 16), mask=tmask)
            return
        # the two nibbles' values side by side, [.., 2], so each thread stores contiguous elements
        # (two strided stores leave a warp's threads writing 2 bytes apiece across rows)
        w = tl.join(w_hi, w_lo).to(Y.dtype.element_ty)  # [.., 2]: byte b's values at 2b, 2b + 1 of Y
        off, tmask, _, _ = _byte_tile(rn, n_ok, j0, KH, K, ALIGNED, BS, BLOCK_KH)
        pair = tl.arange(0, 2)
        tl.store(Y + 2 * tl.expand_dims(off, -1) + pair, w, mask=tl.expand_dims(tmask, -1) & (pair < 2))

# ------------------------------------------------------------------------------ launch

# (form, BLOCK_N, BLOCK_K (columns; BLOCK_K / 2 bytes), num_warps, num_stages[, lut]) by (m, n, k,
# kind); set by benchmarks/nf4_bench.py's sweep (the best per product), else nf4_gemv_config's
# defaults. lut: "perm" (the default where it runs: byte permutes of each block's decoded values,
# CUDA and 16-bit weights), "nibble" (the default elsewhere: two lookups of the 16-entry map per
# byte) or "pair" (one of a 256-entry table of both codes). input: "tile" (default: the input tile
# loaded contiguously, split and exchanged; the only way for folded products) or "pairs" (a plain
# one-row bf16 product reads its input as bf16 pairs in the weight tile's layout: no exchange, but
# more loads; slower than "tile" on four of the five plain products of stop 29's sweep).
NF4_GEMV_CONFIG: dict[tuple, tuple] = {}
FORMS = ("reduce", "mma")
LUTS = ("nibble", "pair", "perm")
X_READS = ("pairs", "tile")  # a plain one-row product's input: bf16 pairs in the weight tile's layout, or split
_WROUND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_PAIRS: dict[tuple, tuple[Tensor, Tensor]] = {}


def nf4_config_key(m: int, n: int, k: int, gated: bool = False, norm: bool = False) -> tuple:
    """NF4_GEMV_CONFIG's key of a product: rows, output columns (per half when gated), K, and its kind."""
    return (m, n, k, bool(gated), bool(norm))


def nf4_gemv_config(m: int, n: int, k: int, gated: bool = False, norm: bool = False) -> tuple:
    """(form, BLOCK_N, BLOCK_K, num_warps, num_stages[, lut]) for an [m, k] x NF4 [n, k]^T product
    (n: the output columns, per half of a gated weight).

    Defaults: the best of the H200 sweeps (benchmarks/nf4_bench.py; Qwen2.5 1.5B, Gemma 3 4B and
    Llama 3.1 8B shapes; benchmarks/results/2026-12-04-h200-nf4-stop29-models.md for one row,
    2026-12-05-h200-nf4-stop33.md for two, 2026-12-04-h200-nf4-stop30-6rows.md for six) by kind and size:
    the reduction form on the byte permutes at one and two rows, the tensor-core
    form on the permutes with K in slices at more. FusedModel runs steps of more than
    NF4_KERNEL_ROWS rows on dequantized weights."""
    found = NF4_GEMV_CONFIG.get(nf4_config_key(m, n, k, gated, norm))
    if found is None:
        found = NF4_GEMV_CONFIG.get((m, n, k))
    if found is not None:
        return found
    if m == 1:  # the byte-permute lookup's best (stop 29's sweep, benchmarks/results/2026-12-04-h200-nf4-stop29-models.md)
        if gated:
            return ("reduce", 8, 512, 4, 2)
        if norm:  # q/k/v
            return ("reduce", 8, 1024, 8, 2) if k <= 2048 else ("reduce", 4, 1024, 4, 2)
        if k >= 8192:  # down
            return ("reduce", 2, 2048, 4, 2) if k <= 10240 else ("reduce", 8, 1024, 8, 2)
        return ("reduce", 8, 1024, 8, 2)  # o
    if m == 2:  # the byte permutes (stop 33's sweep at Qwen2.5 1.5B's shapes, benchmarks/results/
        # 2026-12-05-h200-nf4-stop33.md; against the map loads' best: gate/up 32.0 -> 17.7 us, down 15.0 ->
        # 13.5, q/k/v 6.2 -> 5.8, o 4.4 -> 4.1)
        return ("reduce", 8, 512, 4, 2) if gated else ("reduce", 8, 1024, 4, 2)
    # more rows (the verify): the tensor-core form on the permutes with K in slices, the best of
    # stop 30's Qwen2.5 1.5B sweeps at 6 rows (benchmarks/results/2026-12-04-h200-nf4-stop30.md and
    # -stop30-6rows.md): qkv 14.7 -> 6.9 us (8 slices), o 8.6 -> 6.2 (8), gate/up 37.4 -> 28.5 (4;
    # 2 and 8 slower), down 36.7 -> 19.4 (8) against stop 29's unsliced defaults
    if gated:
        return ("mma", 64, 128, 4, 3, None, None, 4)
    if k >= 8192:
        return ("mma", 16, 256, 4, 2, None, None, 8)
    return ("mma", 64, 128, 4, 3, None, None, 8)


def _pair_table(code: Tensor) -> Tensor:
    """int64 [256]: for each byte, the float32 bits of code[byte >> 4] (high word) and of
    code[byte & 15] (low word). Built on code's device once per code map tensor (kept alive with
    it, so its address is not reused), without a host read (safe inside a CUDA-graph capture
    once built)."""
    key = (code.device, code.data_ptr())
    found = _PAIRS.get(key)
    if found is not None and found[0] is code:
        return found[1]
    bits = code.float().contiguous().view(torch.int32).to(torch.int64)
    b = torch.arange(256, device=code.device)
    table = (bits[b >> 4] << 32) | (bits[b & 15] & 0xFFFFFFFF)
    _PAIRS[key] = (code, table)
    return table


def nf4_gemv(x: Tensor, nf4: NF4Weight, bias: Tensor | None = None, config: tuple | None = None,
             pdl: bool = False) -> Tensor:
    """y = x @ W^T (+ bias) for x [..., K] with at most MAX_ROWS rows, W [N, K] in NF4; y in x's
    dtype, accumulated in fp32 (see the module doc for the numerics)."""
    return nf4_gemv_fused(x, nf4, bias=bias, config=config, pdl=pdl)[0]


def nf4_gemv_fused(x: Tensor, nf4: NF4Weight, *, bias: Tensor | None = None, norm: Tensor | None = None,
                   gemma: bool = False, eps: float = 1e-6, delta: Tensor | None = None,
                   delta_norm: Tensor | None = None, act: str | None = None,
                   config: tuple | None = None, pdl: bool = False) -> tuple[Tensor, Tensor | None]:
    """kernels.gemv's contract with an NF4 weight: y = f(x) @ W^T (+ bias), where delta gives
    x' = x + norm_delta(delta) (returned as the second result: the residual stream after the
    add; delta_norm: Gemma's (1 + w) RMS norm of the delta first, as kernels.gemv) and norm an
    RMS norm of x' with this weight (Gemma's (1 + w) form when `gemma`). act ("silu" or
    "gelu_tanh"): W is [2N, K], gate rows then up rows (one NF4 weight: see merge_nf4), bias
    [2N], and y = act(gate) * up [.., N]. config: (form, BLOCK_N, BLOCK_K, num_warps,
    num_stages[, lut]) (default nf4_gemv_config). pdl: launch with programmatic dependent launch
    (kernels.pdl_usable): the first weight tiles load before waiting for the previous kernel."""
    if not AVAILABLE:
        raise RuntimeError("nf4_gemv needs Triton")
    n, k = nf4.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} columns, the weight {k}")
    if k % 2:
        raise ValueError(f"nf4_gemv needs an even K (rows start on a byte), got {k}")
    if n * k >= 2**31:
        raise ValueError(f"nf4_gemv indexes the weight in int32; {n} x {k} is too large")
    if nf4.blocksize % 2:
        raise ValueError(f"invalid blocksize {nf4.blocksize}")
    if act is not None:
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r} ({', '.join(ACTIVATIONS)})")
        if n % 2:
            raise ValueError(f"a gated product needs gate and up rows, [2N, K]; got {n} rows")
        n //= 2
    if delta_norm is not None and delta is None:
        raise ValueError("delta_norm needs a delta")
    lead = x.shape[:-1]
    x2, y, d2, r = gemv_operands(x, n, delta, MAX_ROWS, "nf4_gemv")
    m = x2.shape[0]
    cfg = tuple(config or nf4_gemv_config(m, n, k, act is not None, norm is not None))
    if config is None and not x.is_cuda:
        cfg = interpreted(cfg)  # Triton's interpreter: few, wide programs
    if len(cfg) not in (5, 6, 7, 8):
        raise ValueError(f"an nf4_gemv config is (form, BLOCK_N, BLOCK_K, warps, stages[, lut[, input[, K slices]]]), "
                         f"got {cfg}")
    form, block_n, block_k, warps, stages = cfg[:5]
    lut = cfg[5] if len(cfg) >= 6 else None  # None: the default lookup
    x_read = cfg[6] if len(cfg) >= 7 and cfg[6] is not None else "tile"  # contiguous, split (ahead of "pairs")
    split_k = int(cfg[7]) if len(cfg) == 8 else 1
    if split_k < 1 or (split_k > 1 and form != "mma"):
        raise ValueError(f"nf4_gemv splits K (into {split_k}) only in the tensor-core form, into 1 or more slices")
    if x_read not in X_READS:
        raise ValueError(f"unknown nf4_gemv input read {x_read!r} ({', '.join(X_READS)})")
    if form not in FORMS:
        raise ValueError(f"unknown nf4_gemv form {form!r} ({', '.join(FORMS)})")
    if lut is not None and lut not in LUTS:
        raise ValueError(f"unknown nf4_gemv lut {lut!r} ({', '.join(LUTS)})")
    mma = form == "mma"
    least = 16 if mma else 1  # tensor-core operands are at least 16 wide
    block_kh = max(least, min(block_k // 2, triton.next_power_of_2(max(1, k // 2))))
    block_n = max(least, min(block_n, triton.next_power_of_2(n)))
    block_m = max(least, triton.next_power_of_2(m))
    # the absmax once per quantization block: rows of whole blocks, tiles of whole blocks
    aligned = k % nf4.blocksize == 0 and block_kh % (nf4.blocksize // 2) == 0
    # compiled for the GPU (not Triton's interpreter): hardware rounding, uncontracted products
    hw = (x.device.type == "cuda" or _COMPILE_ONLY) and not _INTERPRETED
    # operands of the tensor-core form: the activations' dtype when the weight has it (its
    # rounding then loses nothing), fp32 with exact products otherwise. Triton's CPU interpreter
    # gets tl.dot on bf16 operands wrong (garbage in triton 3.9), so there bf16 goes through fp32:
    # the same products (bf16 x bf16 is exact in fp32), fp32 accumulation either way.
    ieee = not (x.dtype == nf4.dtype and x.dtype in (torch.bfloat16, torch.float16))
    ieee = ieee or (not hw and x.dtype == torch.bfloat16)
    # the byte permutes: 16-bit weights, whole blocks, the codes readable as int32 words, one or two
    # rows on the reduction form or any on tensor cores (fp32 operands where the input is not the
    # weights' dtype); the default where compiled (the interpreter runs their stand-in)
    perm_ok = (aligned and nf4.dtype in (torch.bfloat16, torch.float16) and nf4.packed.data_ptr() % 4 == 0
               and (mma or m <= 2))
    if lut is None:  # the byte permutes where they run, else a map load per nibble
        lut = "perm" if perm_ok and hw else "nibble"
    elif lut == "perm" and not perm_ok:
        raise ValueError("nf4_gemv lut 'perm' needs 16-bit weights, one or two rows on the reduce form (any on mma), "
                         "K a multiple of the block and tiles of whole blocks (rows "
                         f"{m}, form {form}, K {k}, block {nf4.blocksize}, tile {2 * block_kh} columns, {nf4.dtype})")
    nested = nf4.nested
    dummy = nf4.absmax
    tiles = triton.cdiv(n, block_n)
    grid = (tiles, split_k)
    partials, counters = split_buffers(y, tiles, split_k, block_n, block_m)
    # ("pairs") one bf16 row of a product with nothing folded in: the input read as bf16 pairs in the
    # weight tile's layout (an int32 view), not split and exchanged through shared memory
    xpairs = (x_read == "pairs" and m == 1 and aligned and not mma and x2.dtype == torch.bfloat16 and norm is None
              and delta is None and x2.data_ptr() % 4 == 0)
    _nf4_gemv_kernel[grid](
        x2, x2.stride(0), x2.view(torch.int32) if xpairs else x2, d2, d2.stride(0),
        delta_norm if delta_norm is not None else x2,
        norm if norm is not None else x2, r, r.stride(0),
        nf4.packed.view(torch.int32) if lut == "perm" else nf4.packed, nf4.absmax, nf4.code,
        _pair_table(nf4.code) if lut == "pair" else nf4.code,
        nf4.code2 if nested else dummy, nf4.absmax2 if nested else dummy, nf4.offset if nested else dummy,
        bias if bias is not None else y, y, y.stride(0), partials, counters, m, n, k, k // 2, float(eps),
        NESTED=nested, ALIGNED=aligned, LUT=LUTS.index(lut), HW=hw, XPAIRS=xpairs,
        BS=nf4.blocksize, BS2=nf4.blocksize2, WROUND=_WROUND[nf4.dtype], XR=_WROUND[x.dtype],
        HAS_D=delta is not None, D_NORM=delta_norm is not None, NORM=norm is not None, GEMMA=bool(gemma),
        GATED=act is not None, ACT=ACTIVATIONS[act] if act is not None else 0,
        HAS_BIAS=bias is not None, MMA=mma, IEEE=ieee,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_KH=block_kh, SPLIT_K=split_k, num_warps=warps, num_stages=stages,
        **_pdl_args(pdl),
    )
    return y.view(*lead, n), (r.view(*lead, k) if delta is not None else None)


def dequantize_nf4_fast(nf4: NF4Weight, dtype: torch.dtype | None = None, kernel: bool | None = None) -> Tensor:
    """dequantize_nf4's result (the same values, bit for bit) from one Triton kernel: the weight is
    read once and written once, instead of the reference's int64 and float32 intermediates over
    the whole matrix (prefill and the steps past NF4_KERNEL_ROWS dequantize every layer per step).
    kernel: None, the kernel for CUDA tensors and the torch reference otherwise; True, the kernel
    (on CPU tensors under Triton's interpreter: the tests); False, the reference."""
    n, k = nf4.shape
    if kernel is None:
        kernel = nf4.packed.device.type == "cuda"
    if not (kernel and AVAILABLE) or k % 2 or nf4.blocksize % 2 or n * k >= 2**31:
        return dequantize_nf4(nf4, dtype)
    y = torch.empty((n, k), dtype=nf4.dtype, device=nf4.packed.device)
    nested = nf4.nested
    dummy = nf4.absmax
    pairs = y.element_size() == 2  # bf16/fp16: a byte's two values are one int32
    # tiles of 8 rows x 256 bytes (the H200 probe's best for the int32 stores; 16 x 128 before)
    block_n, block_kh = (8, 256) if pairs else (16, 128)
    aligned = k % nf4.blocksize == 0 and block_kh % (nf4.blocksize // 2) == 0
    grid = (triton.cdiv(n, block_n), triton.cdiv(k // 2, block_kh))
    _nf4_dequantize_kernel[grid](
        nf4.packed, nf4.absmax, nf4.code, nf4.code2 if nested else dummy, nf4.absmax2 if nested else dummy,
        nf4.offset if nested else dummy, y, y.view(torch.int32) if pairs else y, n, k, k // 2,
        NESTED=nested, ALIGNED=aligned, BS=nf4.blocksize, BS2=nf4.blocksize2, WROUND=_WROUND[nf4.dtype],
        HW=nf4.packed.device.type == "cuda" and not _INTERPRETED, PAIRS=pairs, BLOCK_N=block_n,
        BLOCK_KH=block_kh, num_warps=4,
    )
    return y if dtype is None else y.to(dtype)


# benchmarks/kernel_sass.py sets this to make the launch wrappers choose as on CUDA for CPU tensors
# (the launch is intercepted and compiled for sm_90, never run)
_COMPILE_ONLY = False

# Triton's CPU interpreter (TRITON_INTERPRET=1 when Triton was imported) runs the kernels as Python
_INTERPRETED = AVAILABLE and "Interpreted" in type(_nf4_gemv_kernel).__name__
