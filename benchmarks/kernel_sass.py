"""What a decode kernel executes per weight, read from its SASS on a machine without a GPU.

Triton compiles for a GPU it does not see: given the kernel, the argument types and the
specializations its JIT would apply at launch (16-byte aligned pointers and integers divisible by
16 get `tt.divisibility`, integers equal to 1 become constants), it produces the same TTGIR, PTX
and cubin as on the device, and the nvdisasm Triton ships prints the SASS. This script runs the
product's own launch wrappers (kernels.gemv, nf4.nf4_gemv_fused) on CPU tensors with the kernel
launch intercepted, compiles what they would launch for sm_90, and reports for each product:

* the inner loop (the backward branch over K): instructions per iteration and per weight element
  (one row: the weights a thread multiplies per iteration), and the mix by opcode;
* the global loads' widths (LDG.E.128 = 8 bf16 / 16 bytes a thread; LDG.E.U16 = one element),
  registers and spills (cuobjdump's resource usage), and the layouts of the TTGIR.

Cases: the Qwen2.5 0.5B / 1.5B decode products (qkv with the residual add and norm folded in, o,
gate/up gated, down) at the rows and launch configurations the product uses under PDL
(kernels.gemv_config), in bf16 and NF4. The Triton version matters: the H200 runs 3.6; install it
beside the local one (`pip install --target /tmp/tri36 --no-deps triton==3.6.0`) and run with
PYTHONPATH=/tmp/tri36.

    PYTHONPATH=/tmp/tri36 python3 benchmarks/kernel_sass.py [--models qwen-0.5b] [--rows 1 2] [--nf4] [--lut perm|nibble|pair]
        [--nf4-configs reduce,8,1024,4,2 ...] [--json out.json]

--lut picks the NF4 kernel's code lookup (default perm, the byte permutes, as the wrapper picks on
CUDA for 16-bit weights); the NF4 launches are built as for CUDA tensors (nf4._COMPILE_ONLY).

A measurement of what is compiled, not of time: a loop of 6 instructions per weight is far from
instruction-bound on an H200 (about 33 T thread-instructions a second against ~2 G weights a
microsecond at 4 TB/s of bf16); a kernel whose loads are not 16 bytes wide, or that spills, is
worth a look before device time is spent on it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from specdecode.accel import kernels  # noqa: E402

MODELS = {  # name -> (hidden, intermediate, heads, kv heads, head_dim)
    "qwen-0.5b": (896, 4864, 14, 2, 64),
    "qwen-1.5b": (1536, 8960, 12, 2, 128),
}
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
         torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8", torch.float8_e4m3fn: "fp8e4nv"}
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


class Launch(Exception):
    """Raised by the intercepted launch, carrying what would have been launched."""

    def __init__(self, fn, args, kwargs):
        super().__init__(fn.__name__)
        self.fn, self.args, self.kwargs = fn, args, kwargs


def intercepted(run) -> Launch:
    """Call `run` with every Triton kernel launch replaced by a Launch exception; return it."""
    jit = triton.runtime.jit.JITFunction
    original = jit.__getitem__

    def getitem(self, grid):
        return lambda *a, **kw: (_ for _ in ()).throw(Launch(self, a, kw))

    jit.__getitem__ = getitem
    try:
        run()
    except Launch as launch:
        return launch
    finally:
        jit.__getitem__ = original
    raise RuntimeError("nothing was launched")


def compile_launch(launch: Launch):
    """The launch compiled for sm_90 with the specializations Triton's JIT applies at run time."""
    fn = launch.fn
    names = fn.arg_names
    kwargs = dict(launch.kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "launch_pdl") if k in kwargs}
    given = dict(zip(names, launch.args))
    given.update(kwargs)
    sig, consts, attrs = {}, {}, {}
    for i, name in enumerate(names):
        value = given.get(name, fn.params[i].default if hasattr(fn.params[i], "default") else None)
        if fn.params[i].is_constexpr:
            sig[name] = "constexpr"
            consts[(i,)] = value
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool) or value is None:
            sig[name] = "constexpr"
            consts[(i,)] = value
        elif isinstance(value, int):
            if value == 1:  # Triton specializes ints equal to 1 as constants
                sig[name] = "constexpr"
                consts[(i,)] = 1
                continue
            sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: {type(value).__name__}")
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def disassemble(compiled) -> tuple[str, str]:
    """(SASS, resource usage) of a compiled kernel, from the tools Triton ships."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        sass = subprocess.run([str(BIN / "nvdisasm"), "-c", path], capture_output=True, text=True).stdout
        res = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    return sass, res


def instructions(sass: str) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """(address, instruction) pairs and the address of each label."""
    ins, labels, pending = [], {}, []
    for line in sass.splitlines():
        lab = re.match(r"^(\.L_x_\d+):", line.strip())
        if lab:
            pending.append(lab.group(1))
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            addr = int(m.group(1), 16)
            for p in pending:
                labels[p] = addr
            pending = []
            ins.append((addr, m.group(2)))
    return ins, labels


def opcode(text: str) -> str:
    parts = text.split()
    op = parts[1] if parts[0].startswith("@") else parts[0]
    return op


def loops(ins, labels) -> list[list[str]]:
    """The bodies of backward branches (loops), innermost last."""
    out = []
    for addr, text in ins:
        if "BRA" in opcode(text):
            target = re.search(r"\.L_x_\d+", text)
            if target and labels.get(target.group(0), 1 << 62) < addr:
                start = labels[target.group(0)]
                out.append([t for a, t in ins if start <= a <= addr])
    return out


def analyse(name: str, run, weights_per_iteration) -> dict:
    """`run` launches one product (its launch intercepted and compiled for sm_90); its inner loop's
    instructions per weight, loads, registers and spills."""
    launch = intercepted(run)
    config = {k: launch.kwargs.get(k) for k in ("BLOCK_N", "BLOCK_K", "BLOCK_KH", "num_warps", "num_stages")
              if k in launch.kwargs}
    compiled = compile_launch(launch)
    sass, res = disassemble(compiled)
    ins, labels = instructions(sass)
    body = loops(ins, labels)
    regs = re.search(r"REG:(\d+)", res)
    spill = re.search(r"STACK:(\d+)", res)
    loads = collections.Counter(opcode(t) for _, t in ins if opcode(t).startswith("LDG"))
    row = {"case": name, "kernel": launch.fn.__name__, "config": config, "instructions": len(ins),
           "registers": int(regs.group(1)) if regs else None, "stack": int(spill.group(1)) if spill else None,
           "loads": dict(loads), "layouts": [ln for ln in compiled.asm["ttgir"].splitlines() if ln.startswith("#blocked")]}
    if body:
        loop = body[-1]
        mix = collections.Counter(opcode(t).split(".")[0] for t in loop)
        per = weights_per_iteration(launch.kwargs)
        row.update(loop_instructions=len(loop), weights_per_thread=per,
                   per_weight=len(loop) / per if per else None, mix=dict(mix.most_common(12)))
    return row


def parse_config(text: str) -> tuple:
    """"reduce,8,1024,4,2" -> ("reduce", 8, 1024, 4, 2): a launch configuration on the command line."""
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in text.split(","))


def cases(models: list[str], rows: list[int], nf4: bool, lut: str = "perm", nf4_configs: list[tuple] | None = None):
    from specdecode.accel import nf4 as nf4mod

    for name in models:
        hidden, inter, heads, kv, hd = MODELS[name]
        qkv = (heads + 2 * kv) * hd
        products = [("qkv", qkv, hidden, dict(norm=True, delta=True)), ("o", hidden, heads * hd, {}),
                    ("gate_up", inter, hidden, dict(norm=True, delta=True, act="silu")), ("down", hidden, inter, {})]
        for m in rows:
            for label, n, k, how in products:
                gated = "act" in how
                w = torch.zeros((2 * n if gated else n, k), dtype=torch.bfloat16)
                x = torch.zeros((m, k), dtype=torch.bfloat16)
                nw = torch.zeros(k, dtype=torch.bfloat16)
                kw = dict(norm=nw if how.get("norm") else None, delta=x.clone() if how.get("delta") else None,
                          act=how.get("act"), pdl=True)
                cfg = kernels.gemv_config(m, n, k, gated, bool(how.get("norm")), pdl=True)

                def per_bf16(kwargs, gated=gated):
                    threads = 32 * kwargs["num_warps"]
                    return kwargs["BLOCK_N"] * kwargs["BLOCK_K"] * (2 if gated else 1) / threads

                yield analyse(f"{name} {label} rows {m} bf16", lambda: kernels.gemv(x, w, config=cfg, **kw), per_bf16)
                if nf4:
                    q = nf4mod.quantize_nf4(w.float().normal_(0, 0.02).to(torch.bfloat16), 64, double_quant=True)

                    def per_nf4(kwargs, gated=gated):
                        threads = 32 * kwargs["num_warps"]
                        return kwargs["BLOCK_N"] * 2 * kwargs["BLOCK_KH"] * (2 if gated else 1) / threads

                    default = nf4mod.nf4_gemv_config(m, n, k, gated, bool(how.get("norm")))
                    for cfg4 in nf4_configs or [default]:
                        cfg4 = tuple(cfg4[:5]) + (lut,)
                        nf4mod._COMPILE_ONLY = True  # the wrapper chooses as for CUDA tensors
                        try:
                            yield analyse(f"{name} {label} rows {m} nf4 {lut} {cfg4[:5] if nf4_configs else ''}".strip(),
                                          lambda: nf4mod.nf4_gemv_fused(x, q, config=cfg4, **kw), per_nf4)
                        finally:
                            nf4mod._COMPILE_ONLY = False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["qwen-0.5b"], choices=sorted(MODELS))
    ap.add_argument("--rows", nargs="+", type=int, default=[1])
    ap.add_argument("--nf4", action="store_true", help="also the NF4 kernel (nf4.nf4_gemv_fused)")
    ap.add_argument("--lut", default="perm", choices=["nibble", "pair", "perm"],
                    help="the NF4 kernel's code lookup (on CUDA the wrapper picks perm for bf16 weights)")
    ap.add_argument("--nf4-configs", nargs="+", default=None, metavar="FORM,N,K,WARPS,STAGES",
                    help="with --nf4: these NF4 launch configurations (e.g. reduce,8,1024,4,2) instead of the defaults")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(f"triton {triton.__version__}, sm_90, SASS by {BIN / 'nvdisasm'}")
    rows = []
    configs = [parse_config(c) for c in args.nf4_configs] if args.nf4_configs else None
    for row in cases(args.models, args.rows, args.nf4, args.lut, configs):
        rows.append(row)
        per = row.get("per_weight")
        print(f"{row['case']:32s} {row['kernel']:18s} {row['config']} | regs {row['registers']} stack {row['stack']} | "
              f"loads {row['loads']} | loop {row.get('loop_instructions')} instr, "
              f"{row.get('weights_per_thread')} weights/thread, {per:.1f}/weight" if per else "", flush=True)
        if per:
            print(f"    {row['mix']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
