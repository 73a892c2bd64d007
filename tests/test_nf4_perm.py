"""The NF4 kernels' byte-permute lookup (accel/nf4.py, LUT "perm"), checked on the CPU.

The lookup is inline PTX, which only a GPU runs (the H200 runs it through tests/test_nf4.py, where
it is the default for bf16 weights). Here the PTX text the kernel is compiled with is executed by
a small interpreter of the instructions it uses (and, shr, shl, lop3, prmt, mul.rn, the paired
conversions, cvt.f32.f16), with PTX's semantics written out from the ISA manual, over every
16-bit pattern of codes and absmax values of many magnitudes: each decoded value must be
bitsandbytes' round(code[q] * absmax), bit for bit.
"""

from __future__ import annotations

import re

import pytest
import torch

from specdecode.accel import nf4

M32 = 0xFFFFFFFF


def _f32_bits(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float32).view(torch.int32).to(torch.int64) & M32


def _bits_f32(b: torch.Tensor) -> torch.Tensor:
    return (b & M32).to(torch.int64).to(torch.int32).view(torch.float32)  # low 32 bits, two's complement


def _half_bits(v: torch.Tensor, f16: bool) -> torch.Tensor:
    """float32 -> bf16/fp16 bits, round to nearest even (torch's CPU conversion does that)."""
    return v.to(torch.float16 if f16 else torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF


def _lop3(a, b, c, imm: int):
    out = torch.zeros_like(a)
    for i in range(8):
        if imm >> i & 1:
            out |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
    return out & M32


def _prmt(a, b, c):
    """prmt.b32 (default mode): byte k of the result is byte (c's nibble k & 7) of {b, a}; with the
    nibble's bit 3 set, that byte's sign replicated (0x00 or 0xFF)."""
    src = (a & M32) | ((b & M32) << 32)
    out = torch.zeros_like(a)
    for k in range(4):
        sel = (c >> (4 * k)) & 0xF
        byte = (src >> (8 * (sel & 7))) & 0xFF
        byte = torch.where((sel & 8) != 0, torch.where((byte & 0x80) != 0, 0xFF, 0), byte)
        out |= byte << (8 * k)
    return out


def run_ptx(asm: str, inputs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Execute the PTX of accel/nf4.py's permute lookup on int64 tensors holding 32-bit patterns;
    inputs by operand number ($n), returns every operand written."""
    regs: dict[str, torch.Tensor] = {f"${i}": v & M32 for i, v in inputs.items()}
    shape = next(iter(inputs.values())).shape

    def val(tok: str) -> torch.Tensor:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        if re.fullmatch(r"0x[0-9A-Fa-f]+|\d+", tok):
            return torch.full(shape, int(tok, 0), dtype=torch.int64)
        raise KeyError(f"unknown operand {tok!r}")

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        if op == "mov.b32":  # mov.b32 {lo, hi}, r
            m = re.fullmatch(r"\{(\w+),\s*(\w+)\},\s*(\S+)", rest)
            assert m, line
            r = val(m.group(3))
            regs[m.group(1)], regs[m.group(2)] = r & 0xFFFF, (r >> 16) & 0xFFFF
            continue
        d, *args = [t.strip() for t in rest.split(",")]
        a = [val(t) for t in args]
        if op == "and.b32":
            out = a[0] & a[1]
        elif op == "shr.b32":
            out = (a[0] & M32) >> a[1]
        elif op == "shl.b32":
            out = (a[0] << a[1]) & M32
        elif op == "lop3.b32":
            out = _lop3(a[0], a[1], a[2], int(args[3], 0))
        elif op == "prmt.b32":
            out = _prmt(a[0], a[1], a[2])
        elif op == "mul.rn.f32":
            out = _f32_bits(_bits_f32(a[0]) * _bits_f32(a[1]))
        elif op in ("cvt.rn.bf16x2.f32", "cvt.rn.f16x2.f32"):  # d = {cvt(a) high, cvt(b) low}
            f16 = op == "cvt.rn.f16x2.f32"
            out = (_half_bits(_bits_f32(a[0]), f16) << 16) | _half_bits(_bits_f32(a[1]), f16)
        elif op == "cvt.f32.f16":
            out = _f32_bits((a[0] & 0xFFFF).to(torch.int16).view(torch.float16).float())
        else:
            raise NotImplementedError(f"instruction {op} in the permute lookup's PTX")
        regs[d] = out & M32
    return regs


def _decode(words: torch.Tensor, absmax: torch.Tensor, f16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The two asm blocks as the kernel runs them: the block's planes from its absmax and the
    map, then each word's 8 values. words, absmax: int64 [n] (absmax as float32 bits)."""
    code = torch.tensor(nf4.NF4_CODE, dtype=torch.float32)
    ins = {8: absmax} | {9 + v: torch.full_like(absmax, int(_f32_bits(code[v]))) for v in range(16)}
    planes = run_ptx(nf4.planes_asm(f16), ins)
    out = run_ptx(nf4.lookup_asm(f16), {8: words} | {9 + j: planes[f"${j}"] for j in range(8)})
    hi = torch.stack([out[f"${i}"] for i in range(4)], dim=1)  # [n, byte]: the high nibbles' values
    lo = torch.stack([out[f"${4 + i}"] for i in range(4)], dim=1)
    return hi, lo


def _expected(words: torch.Tensor, absmax: torch.Tensor, f16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    code = torch.tensor(nf4.NF4_CODE, dtype=torch.float32)
    a = _bits_f32(absmax)[:, None]
    byte = torch.stack([(words >> (8 * i)) & 0xFF for i in range(4)], dim=1)
    dt = torch.float16 if f16 else torch.bfloat16
    hi = (code[byte >> 4] * a).to(dt).float()
    lo = (code[byte & 15] * a).to(dt).float()
    return _f32_bits(hi), _f32_bits(lo)


@pytest.mark.parametrize("f16", [False, True], ids=["bf16", "fp16"])
def test_permute_lookup_decodes_every_code_pattern_bit_for_bit(f16):
    g = torch.Generator().manual_seed(0)
    low = torch.arange(1 << 16, dtype=torch.int64)  # every pattern of two bytes (four codes)
    high = torch.randint(0, 1 << 16, (1 << 16,), generator=g, dtype=torch.int64)
    words = low | (high << 16)
    words = torch.cat([words, ((low << 16) | low.flip(0))])  # every pattern in the high half too
    # absmax over many magnitudes (as stored: positive float32), one per word
    mag = torch.exp(torch.empty(words.numel()).uniform_(-12, 6, generator=g))
    if f16:
        mag = mag.clamp(max=60.0)  # code * absmax within fp16's range, as a real fp16 weight is
    absmax = _f32_bits(mag)
    hi, lo = _decode(words, absmax, f16)
    ehi, elo = _expected(words, absmax, f16)
    assert torch.equal(hi, ehi)
    assert torch.equal(lo, elo)


def test_permute_lookup_with_zero_and_tie_absmax():
    """A zero absmax (masked or all-zero blocks) gives zeros; absmax values whose products land
    on bf16 rounding ties round to even, as the hardware conversion does."""
    words = torch.tensor([0x01234567, 0x89ABCDEF, 0xFEDCBA98, 0x76543210] * 3, dtype=torch.int64)
    ties = torch.tensor([1.0 + 2**-8, 3.0 * (1.0 + 2**-8)], dtype=torch.float32)
    absmax = _f32_bits(torch.cat([torch.zeros(4), ties.repeat(2), torch.tensor([1.0, 0.5, 2.0, 1e-30])]))
    hi, lo = _decode(words, absmax, False)
    ehi, elo = _expected(words, absmax, False)
    assert torch.equal(hi, ehi) and torch.equal(lo, elo)
    assert bool((_bits_f32(hi[:4]) == 0).all()) and bool((_bits_f32(lo[:4]) == 0).all())  # +-0


def test_permute_lookup_reads_only_what_the_kernel_passes():
    """The asm blocks' operand counts match their constraint strings (8 outputs; 17 and 9 inputs),
    and the interpreter knows every instruction in them (else the tests above prove nothing)."""
    for asm, cons in ((nf4.PLANES_ASM_BF16, nf4.PLANES_CONSTRAINTS), (nf4.LOOKUP_ASM_BF16, nf4.LOOKUP_CONSTRAINTS),
                      (nf4.PLANES_ASM_F16, nf4.PLANES_CONSTRAINTS), (nf4.LOOKUP_ASM_F16, nf4.LOOKUP_CONSTRAINTS)):
        used = {int(n) for n in re.findall(r"\$(\d+)", asm)}
        n_ops = len(cons.split(","))
        assert max(used) == n_ops - 1
        assert {0, 1, 2, 3, 4, 5, 6, 7} <= used
    with pytest.raises(NotImplementedError):
        run_ptx("add.s32 $0, $8, 1;", {8: torch.zeros(1, dtype=torch.int64)})
