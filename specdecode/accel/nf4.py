"""bitsandbytes NF4 weights as they are stored, and a Triton GEMV that reads them directly (issue 17).

What is here (groundwork, checked on the CPU only):

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
  code2[q] * absmax2 + offset), fp32 accumulation. The decoded weight is rounded to the weight's
  own dtype (``nf4.dtype``, bf16 for a bf16 model) before the product, as bitsandbytes'
  dequantize-then-matmul does, so the result equals ``dequantize_nf4(nf4).float() @ x.float().T``
  up to summation order. Two forms: "reduce" (elementwise products accumulated in fp32; for one
  or two rows: the draft's steps, target alone) and "mma" (the decoded tile is the left operand of
  a tensor-core product with the rows as the right one, so each weight tile is read and decoded
  once for up to 16 rows: the verify step's k+1 rows).
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
``ModelRunner(nf4=True)``), OFF by default: steps of at most MAX_ROWS rows run on these kernels
around kernels.decode_attention, prefill and larger steps dequantize one layer at a time.

What is not done yet:

- Not reachable from the settings or the CLI (``--quantized`` models still take the transformers
  modules); nothing turns ``nf4=True`` on yet.
- Not run on a GPU: no timing, no launch-config sweep (the configs below are placeholders), no
  CUDA-graph capture test, no programmatic dependent launch for these kernels (attention uses it
  when on). Likely first optimisations once measured: decode the absmax once per block instead
  of once per byte (three gathers per byte with double quantization now), a one-row layout like
  kernels._gemv_kernel's, vectorised byte loads; the merged q/k/v and gate/up weights keeping
  their 8-bit absmax (merge_nf4's doc) instead of float32.
- The bf16 tensor-core operands are not checked on the CPU: Triton's interpreter gets tl.dot on
  bf16 wrong, so there bf16 rows take the fp32-operand path (the same exact products); fp16 and
  fp32 operands are checked. The first GPU run must run tests/test_nf4.py on the device.
- On a GPU Triton may contract code2[q] * absmax2 + offset into an FMA, which can move the decoded
  absmax by one ulp relative to bitsandbytes (the CPU interpreter does not contract; the merged
  weights' absmax is decoded in torch, without contraction).
- Assumes an even K (every real model; rows then start on a byte boundary) and N*K < 2**31.
- Prefill on NF4 layers dequantizes each layer's weights (torch, per call): exact and memory-light
  but slow; a kernel for long prompts is not written.

On CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1), which is how the tests
check it (tests/test_nf4.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .kernels import ACTIVATIONS, gemv_operands, tl, triton  # triton/tl: None without Triton

if triton is not None:
    from .kernels import _acc_results, _acc_zeros, _delta_scale, _gemv_epilogue, _program_tiles  # Triton functions shared with kernels.gemv

__all__ = ["AVAILABLE", "MAX_ROWS", "NF4_CODE", "NF4Weight", "dequantize_nf4", "dynamic_map", "merge_nf4", "nf4_absmax",
           "nf4_nbytes", "nf4_gemv", "nf4_gemv_config", "nf4_gemv_fused", "quantize_nf4"]

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


# ------------------------------------------------------------------------------ kernel

if AVAILABLE:

    @triton.jit
    def _round_bf16(v):
        """fp32 -> the nearest bf16 (ties to even), kept in fp32; finite inputs."""
        u = v.to(tl.uint32, bitcast=True)
        u = u + 0x7FFF + ((u >> 16) & 1)
        return ((u >> 16) << 16).to(tl.float32, bitcast=True)

    @triton.jit
    def _nf4_tiles(W, ABSMAX, CODE, CODE2, ABSMAX2, OFFSET, rn, n_ok, jj, j_ok, K,
                   NESTED: tl.constexpr, BS: tl.constexpr, BS2: tl.constexpr, WROUND: tl.constexpr):
        """Decoded weight tiles [BLOCK_N, BLOCK_KH] (fp32) of the columns 2*jj (high nibbles) and
        2*jj + 1 (low nibbles) of rows rn; zeros where masked."""
        msk = n_ok[:, None] & j_ok[None, :]
        kh = K // 2
        byte = tl.load(W + rn[:, None] * kh + jj[None, :], mask=msk, other=0).to(tl.int32)
        hi = byte >> 4
        lo = byte & 15
        blk = (rn[:, None] * K + 2 * jj[None, :]) // BS  # both nibbles: BS is even
        if NESTED:
            qa = tl.load(ABSMAX + blk, mask=msk, other=0).to(tl.int32)
            s2 = tl.load(ABSMAX2 + blk // BS2, mask=msk, other=0.0)
            off = tl.load(OFFSET)
            amax = tl.load(CODE2 + qa, mask=msk, other=0.0) * s2 + off
        else:
            amax = tl.load(ABSMAX + blk, mask=msk, other=0.0)
        w_hi = tl.load(CODE + hi, mask=msk, other=0.0) * amax
        w_lo = tl.load(CODE + lo, mask=msk, other=0.0) * amax
        if WROUND == 1:  # the weight's dtype: bf16 (rounded to nearest even by hand: Triton's
            w_hi = _round_bf16(w_hi)  # interpreter truncates in .to(tl.bfloat16))
            w_lo = _round_bf16(w_lo)
        elif WROUND == 2:  # fp16
            w_hi = w_hi.to(tl.float16).to(tl.float32)
            w_lo = w_lo.to(tl.float16).to(tl.float32)
        return tl.where(msk, w_hi, 0.0), tl.where(msk, w_lo, 0.0)

    @triton.jit
    def _round_to(v, R: tl.constexpr):
        """fp32 values rounded to the model's dtype (0: fp32, 1: bf16, 2: fp16), kept in fp32."""
        if R == 1:
            v = _round_bf16(v)
        elif R == 2:
            v = v.to(tl.float16).to(tl.float32)
        return v

    @triton.jit
    def _nf4_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, cols, j_ok, rsd, pid,
                   HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
                   XR: tl.constexpr):
        """The input columns `cols` of every row: x' = x (+ norm_d(d)), rounded to x's dtype and
        written to R by program 0; returns (x' in fp32, x' times the norm weight, rounded to x's
        dtype). norm_d (D_NORM): Gemma's (1 + w) RMS norm of the residual delta, rsd its row scale."""
        xm = m_ok[:, None] & j_ok[None, :]
        x = tl.load(X + rm[:, None] * sxm + cols, mask=xm, other=0.0).to(tl.float32)
        if HAS_D:
            d = tl.load(D + rm[:, None] * sdm + cols, mask=xm, other=0.0).to(tl.float32)
            if D_NORM:  # as kernels._input_tile: the delta normed and rounded before the add
                wd = tl.load(WD + (rm * 0)[:, None] + cols, mask=xm, other=0.0).to(tl.float32)
                d = _round_to(d * rsd[:, None] * (1.0 + wd), XR)
            x = _round_to(x + d, XR)
            if pid == 0:
                tl.store(R + rm[:, None] * srm + cols, x.to(R.dtype.element_ty), mask=xm)
        xn = x
        if NORM:  # per-column weight as a [rows, columns] tile (see kernels._input_tile)
            wn = tl.load(WN + (rm * 0)[:, None] + cols, mask=xm, other=0.0).to(tl.float32)
            if GEMMA:
                xn = _round_to(x * (1.0 + wn), XR)
            else:
                xn = _round_to(x * wn, XR)
        return x, xn

    @triton.jit
    def _nf4_gemv_kernel(
        X, sxm, D, sdm, WD, WN, R, srm, W, ABSMAX, CODE, CODE2, ABSMAX2, OFFSET, BIAS, Y, sym,
        M, N, K, eps,
        NESTED: tl.constexpr, BS: tl.constexpr, BS2: tl.constexpr, WROUND: tl.constexpr, XR: tl.constexpr,
        HAS_D: tl.constexpr, D_NORM: tl.constexpr, NORM: tl.constexpr, GEMMA: tl.constexpr,
        GATED: tl.constexpr, ACT: tl.constexpr,
        HAS_BIAS: tl.constexpr, MMA: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr,
    ):
        """Y[M, N] = f(X)[M, K] @ W[N, K]^T (+ bias), W in NF4 (see the module doc); f: x (+ norm_d(D))
        then an RMS norm, folded in as kernels.gemv does (the norm weight on the input tiles, the
        row scale on the accumulator). GATED: W is [2N, K] (gate rows, then up rows, one NF4
        weight) and Y = act(gate) * up, as kernels.gemv's epilogue. Program pid computes columns
        pid*BLOCK_N.. of every row; each step decodes BLOCK_KH bytes (2*BLOCK_KH columns) of its
        BLOCK_N weight rows (and of the matching up rows) once and multiplies them into all rows:
        the even input columns with the high nibbles, the odd ones with the low nibbles.
        MMA=False: elementwise fp32 products in a [BLOCK_M, BLOCK_N, BLOCK_KH] accumulator,
        reduced once after the loop. MMA=True: the decoded tiles are the left operands of
        tensor-core products, [BLOCK_N, BLOCK_KH] x [BLOCK_KH, BLOCK_M], fp32 accumulation."""
        pid, rm, rn, rj, m_ok, n_ok = _program_tiles(M, N, BLOCK_M, BLOCK_N, BLOCK_KH)
        kh = K // 2
        rsd = _delta_scale(D, sdm, rm, m_ok, K, eps, HAS_D, D_NORM, BLOCK_M, BLOCK_KH)
        ss2 = tl.zeros([BLOCK_M, BLOCK_KH], dtype=tl.float32)
        acc_t = _acc_zeros(MMA, False, BLOCK_M, BLOCK_N, BLOCK_KH)
        acc2_t = _acc_zeros(MMA, False, BLOCK_M, BLOCK_N, BLOCK_KH)
        for j0 in range(0, kh, BLOCK_KH):
            jj = j0 + rj
            j_ok = jj < kh
            w_hi, w_lo = _nf4_tiles(W, ABSMAX, CODE, CODE2, ABSMAX2, OFFSET, rn, n_ok, jj, j_ok, K,
                                    NESTED, BS, BS2, WROUND)
            if GATED:  # the up rows of the same output columns
                u_hi, u_lo = _nf4_tiles(W, ABSMAX, CODE, CODE2, ABSMAX2, OFFSET, rn + N, n_ok, jj, j_ok, K,
                                        NESTED, BS, BS2, WROUND)
            ev = 2 * jj[None, :]
            xe, xne = _nf4_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, ev, j_ok, rsd, pid,
                                 HAS_D, D_NORM, NORM, GEMMA, XR)
            xo, xno = _nf4_input(X, sxm, D, sdm, WD, WN, R, srm, rm, m_ok, ev + 1, j_ok, rsd, pid,
                                 HAS_D, D_NORM, NORM, GEMMA, XR)
            if NORM:
                ss2 += xe * xe + xo * xo
            if MMA:
                if IEEE:  # fp32 operands, exact products
                    xte = tl.trans(xne)
                    xto = tl.trans(xno)
                    acc_t += tl.dot(w_hi, xte, input_precision="ieee")
                    acc_t += tl.dot(w_lo, xto, input_precision="ieee")
                    if GATED:
                        acc2_t += tl.dot(u_hi, xte, input_precision="ieee")
                        acc2_t += tl.dot(u_lo, xto, input_precision="ieee")
                else:  # operands in the model's dtype (x's == the weight's: both roundings exact)
                    xdt = X.dtype.element_ty
                    xte = tl.trans(xne.to(xdt))
                    xto = tl.trans(xno.to(xdt))
                    acc_t += tl.dot(w_hi.to(xdt), xte)
                    acc_t += tl.dot(w_lo.to(xdt), xto)
                    if GATED:
                        acc2_t += tl.dot(u_hi.to(xdt), xte)
                        acc2_t += tl.dot(u_lo.to(xdt), xto)
            else:
                acc_t += xne[:, None, :] * w_hi[None, :, :]
                acc_t += xno[:, None, :] * w_lo[None, :, :]
                if GATED:
                    acc2_t += xne[:, None, :] * u_hi[None, :, :]
                    acc2_t += xno[:, None, :] * u_lo[None, :, :]
        acc, acc2 = _acc_results(acc_t, acc2_t, GATED, MMA, False)
        # row scale of the norm, bias (gate's then up's), gated activation, store: kernels.gemv's
        _gemv_epilogue(acc, acc2, tl.sum(ss2, axis=1), K, eps, BIAS, rn, n_ok, N, Y, sym, rm, m_ok,
                       NORM, HAS_BIAS, GATED, ACT)


# ------------------------------------------------------------------------------ launch

# (form, BLOCK_N, BLOCK_K (columns; BLOCK_K / 2 bytes), num_warps, num_stages) by (m, n, k);
# overridable for sweeps. Not measured yet: the defaults below are placeholders.
NF4_GEMV_CONFIG: dict[tuple[int, int, int], tuple[str, int, int, int, int]] = {}
FORMS = ("reduce", "mma")
_WROUND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def nf4_gemv_config(m: int, n: int, k: int) -> tuple[str, int, int, int, int]:
    """(form, BLOCK_N, BLOCK_K, num_warps, num_stages) for an [m, k] x NF4 [n, k]^T product."""
    found = NF4_GEMV_CONFIG.get((m, n, k))
    if found is not None:
        return found
    if m <= 2:
        return ("reduce", 4, 512, 4, 2)
    return ("mma", 64, 128, 4, 3)


def nf4_gemv(x: Tensor, nf4: NF4Weight, bias: Tensor | None = None,
             config: tuple[str, int, int, int, int] | None = None) -> Tensor:
    """y = x @ W^T (+ bias) for x [..., K] with at most MAX_ROWS rows, W [N, K] in NF4; y in x's
    dtype, accumulated in fp32 (see the module doc for the numerics)."""
    return nf4_gemv_fused(x, nf4, bias=bias, config=config)[0]


def nf4_gemv_fused(x: Tensor, nf4: NF4Weight, *, bias: Tensor | None = None, norm: Tensor | None = None,
                   gemma: bool = False, eps: float = 1e-6, delta: Tensor | None = None,
                   delta_norm: Tensor | None = None, act: str | None = None,
                   config: tuple[str, int, int, int, int] | None = None) -> tuple[Tensor, Tensor | None]:
    """kernels.gemv's contract with an NF4 weight: y = f(x) @ W^T (+ bias), where delta gives
    x' = x + norm_delta(delta) (returned as the second result: the residual stream after the
    add; delta_norm: Gemma's (1 + w) RMS norm of the delta first, as kernels.gemv) and norm an
    RMS norm of x' with this weight (Gemma's (1 + w) form when `gemma`). act ("silu" or
    "gelu_tanh"): W is [2N, K], gate rows then up rows (one NF4 weight: see merge_nf4), bias
    [2N], and y = act(gate) * up [.., N]."""
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
    form, block_n, block_k, warps, stages = config or nf4_gemv_config(m, n, k)
    if form not in FORMS:
        raise ValueError(f"unknown nf4_gemv form {form!r} ({', '.join(FORMS)})")
    mma = form == "mma"
    least = 16 if mma else 1  # tensor-core operands are at least 16 wide
    block_kh = max(least, min(block_k // 2, triton.next_power_of_2(max(1, k // 2))))
    block_n = max(least, min(block_n, triton.next_power_of_2(n)))
    block_m = max(least, triton.next_power_of_2(m))
    # operands of the tensor-core form: the activations' dtype when the weight has it (its
    # rounding then loses nothing), fp32 with exact products otherwise. Triton's CPU interpreter
    # gets tl.dot on bf16 operands wrong (garbage in triton 3.9), so there bf16 goes through fp32:
    # the same products (bf16 x bf16 is exact in fp32), fp32 accumulation either way.
    ieee = not (x.dtype == nf4.dtype and x.dtype in (torch.bfloat16, torch.float16))
    ieee = ieee or (x.device.type == "cpu" and x.dtype == torch.bfloat16)
    nested = nf4.nested
    dummy = nf4.absmax
    grid = (triton.cdiv(n, block_n),)
    _nf4_gemv_kernel[grid](
        x2, x2.stride(0), d2, d2.stride(0), delta_norm if delta_norm is not None else x2,
        norm if norm is not None else x2, r, r.stride(0),
        nf4.packed, nf4.absmax, nf4.code,
        nf4.code2 if nested else dummy, nf4.absmax2 if nested else dummy, nf4.offset if nested else dummy,
        bias if bias is not None else y, y, y.stride(0), m, n, k, float(eps),
        NESTED=nested, BS=nf4.blocksize, BS2=nf4.blocksize2, WROUND=_WROUND[nf4.dtype], XR=_WROUND[x.dtype],
        HAS_D=delta is not None, D_NORM=delta_norm is not None, NORM=norm is not None, GEMMA=bool(gemma),
        GATED=act is not None, ACT=ACTIVATIONS[act] if act is not None else 0,
        HAS_BIAS=bias is not None, MMA=mma, IEEE=ieee,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_KH=block_kh, num_warps=warps, num_stages=stages,
    )
    return y.view(*lead, n), (r.view(*lead, k) if delta is not None else None)
