"""The Triton kernels compile for Hopper (sm_90), checked without a GPU.

The interpreter tests (test_kernels.py, test_nf4.py) run the kernels' Python on CPU tensors, so
they cannot see what only the compiler rejects: a jit helper whose returns differ in type, an
operand Triton cannot lower, a layout the backend cannot build. This compiles every kernel, in
each of its forms, for an H100/H200 target (Triton's frontend, its MLIR passes and ptxas, all of
which run on a CPU machine) so that such an error fails here, not on the device.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest

INTS = {"M", "N", "K", "KH", "Q", "HKV"}  # upper-case arguments that are sizes, not pointers
FOLDED = dict(HAS_D=True, D_NORM=True, NORM=True, GEMMA=False, GATED=True, ACT=0, HAS_BIAS=True, WRITE_R=True)
NF4_TYPES = dict(W="*u8", CODE="*fp32", PAIR="*i64", CODE2="*fp32", ABSMAX2="*fp32", OFFSET="*fp32")


def forms() -> dict[str, tuple[str, str, dict, dict]]:
    """name -> (module, kernel, constexprs, argument types) of every kernel form to compile."""
    out = {}
    for mma, rows, prefetch, pdl, split in [(True, 16, False, True, 1),  # the verify's tensor-core form
                                            (True, 16, False, True, 4),  # ... with K in 4 slices
                                            (False, 1, True, True, 1),  # one row under PDL (the draft's step)
                                            (False, 1, False, False, 1), (False, 8, False, False, 1)]:
        out[f"gemv-mma{int(mma)}-rows{rows}-prefetch{int(prefetch)}-pdl{int(pdl)}{f'-split{split}' if split > 1 else ''}"] = (
            "kernels", "_gemv_kernel", dict(FOLDED, IEEE=False, MMA=mma, PREFETCH=prefetch, PDL=pdl, BLOCK_M=rows,
                                            BLOCK_N=64 if mma else 4, BLOCK_K=64 if mma else 256, SPLIT_K=split),
            dict(P="*fp32", CNT="*i32"))
    # the gated MLP as one kernel (mlp: gate/up, then its share of the down projection by atomic
    # adds): one and two rows, the first down tile before the wait or not, biases and folds
    for rows, early, bias in ((1, True, False), (1, False, True), (2, True, True)):
        out[f"mlp-rows{rows}-early{int(early)}-bias{int(bias)}"] = (
            "kernels", "_mlp_kernel", dict(HAS_D=True, D_NORM=True, NORM=True, GEMMA=False, ACT=0, HAS_BIAS=bias,
                                           HAS_BIAS_O=bias, WRITE_R=True, IEEE=False, PREFETCH=True, O_EARLY=early,
                                           PDL=True, BLOCK_M=rows, BLOCK_N=16, BLOCK_K=512, BLOCK_H=512),
            dict(OUT="*fp32"))
    out["gemv2"] = ("kernels", "_gemv2_kernel", dict(FOLDED, PREFETCH=True, PDL=True, BLOCK_N=2, BLOCK_K=256), {})
    # fold: the last split merges (atomics); apart: the new tokens on a split of their own (the default)
    # tree: the last new token a token tree's sibling (its twin's position, its own slot)
    for splits, fold, apart, tree in ((1, False, False, False), (8, False, True, False), (8, True, True, False),
                                      (8, False, False, False), (8, False, True, True), (1, False, False, True)):
        name = (f"attention-splits{splits}{'-folded' if fold else ''}{'-together' if splits > 1 and not apart else ''}"
                f"{'-tree' if tree else ''}")
        out[name] = (
            "kernels", "_attention_kernel", dict(G=7, D=64, QK_NORM=True, GEMMA=False, WINDOW=True, SPLITS=splits,
                                                 FOLD=fold, APART=apart, IEEE=False, PDL=True, BLOCK_R=16, BLOCK_Q=16,
                                                 BLOCK_S=64, TREE=tree),
            dict(POS="*i64", PM="*fp32", PA="*fp32", CNT="*i32", SIB="*i64"))
    out["combine"] = ("kernels", "_combine_kernel", dict(G=7, D=64, SPLITS=8, BLOCK_R=16, PDL=True),
                      dict(PM="*fp32", PA="*fp32"))
    # NF4: both forms; the per-block absmax (ALIGNED) and the per-byte one; both code lookups (LUT
    # 0: the 16-entry map, 1: the 256-entry pair table); double-quantized (uint8 absmax) and merged
    # (float32 absmax) weights; PDL on and off; gated + every fold, and plain (o, down)
    for mma, rows, aligned, lut, nested, pdl, folded in [
            (False, 1, True, 0, True, True, True), (False, 1, False, 1, False, False, True),
            (False, 1, True, 1, True, True, False), (False, 2, True, 0, False, True, True),
            (True, 16, True, 0, True, True, True), (True, 16, False, 1, False, False, True),
            (True, 16, True, 1, False, True, False)]:
        flags = (dict(HAS_D=True, D_NORM=True, NORM=True, GEMMA=False, GATED=True, ACT=0) if folded else
                 dict(HAS_D=False, D_NORM=False, NORM=False, GEMMA=False, GATED=False, ACT=0))
        out[f"nf4-mma{int(mma)}-rows{rows}-aligned{int(aligned)}-lut{lut}-nested{int(nested)}-pdl{int(pdl)}"
            f"-{'folded' if folded else 'plain'}"] = (
            "nf4", "_nf4_gemv_kernel",
            dict(flags, NESTED=nested, ALIGNED=aligned, LUT=lut, HW=True, XPAIRS=False, BS=64, BS2=256, WROUND=1,
                 XR=1, HAS_BIAS=not folded, IEEE=False, MMA=mma, PDL=pdl, BLOCK_M=rows, BLOCK_N=32 if mma else 4,
                 BLOCK_KH=128 if mma else 512),
            dict(NF4_TYPES, ABSMAX="*u8" if nested else "*fp32", P="*fp32", CNT="*i32"))
    # K in slices (tensor cores), on the map loads and on the permutes, gated with every fold
    for lut in (0, 2):
        out[f"nf4-mma1-lut{lut}-split3-folded"] = (
            "nf4", "_nf4_gemv_kernel",
            dict(HAS_D=True, D_NORM=True, NORM=True, GEMMA=False, GATED=True, ACT=0, NESTED=True, ALIGNED=True,
                 LUT=lut, HW=True, XPAIRS=False, BS=64, BS2=256, WROUND=1, XR=1, HAS_BIAS=False, IEEE=False, MMA=True,
                 PDL=True, BLOCK_M=16, BLOCK_N=32, BLOCK_KH=128, SPLIT_K=3),
            dict(NF4_TYPES, ABSMAX="*u8", W="*i32" if lut == 2 else "*u8", X32="*i32", P="*fp32", CNT="*i32"))
    # LUT 2, the byte permutes (ALIGNED, words of codes): one row on the reduce form and 16 on the
    # tensor-core form; folded (the input tile split) and plain with the input read as bf16 pairs
    # (XPAIRS, one row); bf16 and fp16 weights; the one-row byte form with pairs too
    for lut, folded, xpairs, wround in ((2, True, False, 1), (2, False, True, 1), (2, False, False, 2),
                                        (0, False, True, 1)):
        for mma in ((False, True) if not xpairs else (False,)):
            flags = (dict(HAS_D=True, D_NORM=True, NORM=True, GEMMA=False, GATED=True, ACT=0) if folded else
                     dict(HAS_D=False, D_NORM=False, NORM=False, GEMMA=False, GATED=False, ACT=0))
            out[f"nf4-lut{lut}-{'folded' if folded else 'plain'}-xpairs{int(xpairs)}-wround{wround}-mma{int(mma)}"] = (
                "nf4", "_nf4_gemv_kernel",
                dict(flags, NESTED=True, ALIGNED=True, LUT=lut, HW=True, XPAIRS=xpairs, BS=64, BS2=256, WROUND=wround,
                     XR=wround, HAS_BIAS=not folded, IEEE=False, MMA=mma, PDL=True, BLOCK_M=16 if mma else 1,
                     BLOCK_N=32 if mma else 4, BLOCK_KH=128 if mma else 512),
                dict(NF4_TYPES, ABSMAX="*u8", W="*i32" if lut == 2 else "*u8", X32="*i32", P="*fp32", CNT="*i32",
                     X="*fp16" if wround == 2 else "*bf16"))  # (the mma form: the input in the weights' dtype)
    # the permutes' reduction form at two rows (each decoded word tile into both rows), folded and gated
    out["nf4-lut2-folded-rows2"] = (
        "nf4", "_nf4_gemv_kernel",
        dict(HAS_D=True, D_NORM=True, NORM=True, GEMMA=False, GATED=True, ACT=0, NESTED=True, ALIGNED=True, LUT=2,
             HW=True, XPAIRS=False, BS=64, BS2=256, WROUND=1, XR=1, HAS_BIAS=False, IEEE=False, MMA=False, PDL=True,
             BLOCK_M=2, BLOCK_N=4, BLOCK_KH=256),
        dict(NF4_TYPES, ABSMAX="*u8", W="*i32", X32="*i32", P="*fp32", CNT="*i32"))
    # the decoded weight (dequantize_nf4_fast): int32 pair stores for 16-bit weights, joined fp32 otherwise
    for nested, aligned, pairs in ((True, True, True), (False, False, True), (True, True, False)):
        out[f"nf4-dequantize-nested{int(nested)}-aligned{int(aligned)}-pairs{int(pairs)}"] = (
            "nf4", "_nf4_dequantize_kernel", dict(NESTED=nested, ALIGNED=aligned, BS=64, BS2=256,
                                                  WROUND=1 if pairs else 0, HW=True, PAIRS=pairs,
                                                  BLOCK_N=8 if pairs else 16, BLOCK_KH=256 if pairs else 128),
            dict(NF4_TYPES, ABSMAX="*u8" if nested else "*fp32", Y="*bf16" if pairs else "*fp32", Y32="*i32"))
    # a round's glue (accel/glue.py): the commit, greedy and sampling, counts per row or one for all;
    # the argmax over a vocabulary (its last program reduces: atomics)
    ids = {name: "*i64" for name in ("VIN", "TT", "NACC", "NXT", "NUM", "LAST", "PREV", "ALIVE", "POS", "OUT")}
    for greedy, has_num in ((True, False), (True, True), (False, True)):
        out[f"commit-greedy{int(greedy)}-num{int(has_num)}"] = (
            "glue", "_commit_kernel", dict(W=5, BLOCK=8, GREEDY=greedy, HAS_NUM=has_num), ids)
    # an overlapped round's acceptance and commit, greedy and sampling
    over = {name: "*i64" for name in ("AHEAD", "OK", "F", "TT", "NACC", "NXT", "LAST", "PREV", "ALIVE", "POS", "OUT")}
    for greedy in (True, False):
        out[f"accept-overlapped-greedy{int(greedy)}"] = (
            "glue", "_overlapped_kernel", dict(K=3, BLOCK=4, GREEDY=greedy), over)
    for exc in (False, True):  # exc: the second choice (each row's first pick excluded)
        out[f"argmax{'-exclude' if exc else ''}"] = (
            "glue", "_argmax_kernel", dict(S=38, SB=64, CHUNK=4096, BLOCK=1024, HAS_EXC=exc),
            dict(V="i32", PV="*fp32", PI="*i32", CNT="*i32", OUT="*i64", EXC="*i64"))
    return out


def _compile_all() -> dict[str, str | None]:
    """In a process without the interpreter: compile every form for sm_90; name -> error or None."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from specdecode.accel import glue, kernels, nf4

    modules = {"kernels": kernels, "nf4": nf4, "glue": glue}
    results = {}
    for name, (module, kernel, consts, types) in forms().items():
        fn = getattr(modules[module], kernel)
        sig = inspect.signature(fn.fn).parameters
        params = list(sig)
        signature, constexprs = {}, {}
        for i, p in enumerate(params):
            if p in consts or sig[p].default is not inspect.Parameter.empty:  # given, or its default
                signature[p] = "constexpr"
                constexprs[(i,)] = consts.get(p, sig[p].default)
            elif p in types:
                signature[p] = types[p]
            elif p[0].isupper() and p not in INTS:  # (a pointer's element type defaults to bf16)
                signature[p] = "*bf16"
            else:
                signature[p] = "fp32" if p in ("eps", "scaling") else "i32"
        try:
            unknown = set(consts) - set(params)
            if unknown:
                raise ValueError(f"no such constexpr: {sorted(unknown)}")
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32))
            results[name] = None if compiled.asm.get("cubin") else "no cubin"
        except Exception as e:  # the compiler's message is the test's failure message
            results[name] = f"{type(e).__name__}: {e}; cause: {e.__cause__!r}"[-4000:]
    return results


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="0",  # the tests' conftest turns the interpreter on
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.slow  # ~1 minute uncached: the slow layer


@pytest.mark.parametrize("name", list(forms()))
def test_kernel_compiles_for_hopper(compiled, name):
    assert compiled[name] is None, compiled[name]


def test_decode_products_load_16_bytes_a_thread_and_do_not_spill(tmp_path):
    """benchmarks/kernel_sass.py on the Qwen2.5 0.5B draft's products at one and two rows, as the
    product launches them under PDL (its own wrappers, Triton's run-time specializations): every
    global load is 16 bytes wide (a narrower one would mean the weights stream element by
    element), nothing spills to the stack, and each loop iteration spends a bounded number of
    instructions per weight element (6-15 on Triton 3.6-3.9)."""
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="0",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = tmp_path / "sass.json"
    proc = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "kernel_sass.py"), "--rows", "1", "2",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 8  # qkv, o, gate/up, down at 1 and 2 rows
    for row in rows:
        assert set(row["loads"]) == {"LDG.E.128"}, (row["case"], row["loads"])
        assert row["stack"] == 0, row["case"]
        assert row["loop_instructions"] and 2 <= row["per_weight"] <= 20, (row["case"], row.get("per_weight"))


if __name__ == "__main__":
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as e:
        print(f"no ahead-of-time compile in this Triton: {e}")
        sys.exit(3)
    print(json.dumps(_compile_all()))
