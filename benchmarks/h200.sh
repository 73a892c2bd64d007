#!/usr/bin/env bash
# The H200 runs of issue 6, one device call each (a call may run 10 minutes; each step fits).
#
#   bash benchmarks/h200.sh tests     # GPU tests: fp32 exactness on the compiled default and captured rounds
#                                     # (test_gpu.py, test_gpu_rounds.py, test_kernels.py, test_nf4.py), ~4 min
#   bash benchmarks/h200.sh llama     # Llama 3.1 8B + 3.2 1B: all modes, batches 1 4 16, transformers
#   bash benchmarks/h200.sh gemma     # Gemma 3 4B + 270M: the same
#   bash benchmarks/h200.sh profile   # kernel profile of the Gemma steps, Triton kernels on and off
#   bash benchmarks/h200.sh profile-qwen  # the real pair's shapes (random weights): captured steps, PDL on and off
#   bash benchmarks/h200.sh kernels   # kernels.py against cuBLAS per matrix, with the config sweep (~5 min)
#   bash benchmarks/h200.sh gemma-decode | llama-decode   # the product default only, batches 1 16,
#                                     # no transformers baselines (~4 / ~2 min): the issue-6 checks
#   bash benchmarks/h200.sh nf4       # issue 17: target alone, bf16 against NF4 (transformers modules and
#                                     # the fused NF4 kernels), Qwen2.5 1.5B, Gemma 3 4B, Llama 3.1 8B shapes
#   bash benchmarks/h200.sh overlap   # overlapped rounds (--overlap): their GPU tests, then overlap_probe.py on
#                                     # the real pair's shapes (branches with PDL on/off, stream priorities,
#                                     # a branch on a green context's share of the SMs; the oracle engine)
#
# The NF4 steps need bitsandbytes, which the device lacks: its wheel (43 MB, manylinux x86_64) goes in
# .whl/ too; with the other wheels that is ~63 MB, so move specdecode/assets aside for that call
# (the carry limit is 64 MiB with the checkout), or carry the wheel alone in an earlier call.
#
# Through the device tool, with the wheels of the pinned versions carried in .whl/ (see the
# device README: transformers, pydantic, pydantic-core, annotated-types, typing-inspection,
# typer, annotated-doc): run(command="bash benchmarks/h200.sh gemma", carry=[".whl"]).
# Results land in $OUT (JSON, Markdown, log); commit them to benchmarks/results/.
#
# The measure of record is the real pair through `specdecode bench`: benchmarks/real_pair.py
# (its docstring and benchmarks/results/2026-12-02-h200-real-pair-notes.md say how the GGUF
# pieces travel, how they are converted and which steps were run).
set -euo pipefail
step=${1:?usage: bash benchmarks/h200.sh tests|llama|gemma|profile|profile-qwen|kernels|gemma-decode|llama-decode|nf4|overlap [extra args]}
shift
# extra arguments go to the step's script (argparse: a repeated option's last value wins),
# e.g. bash benchmarks/h200.sh gemma-decode --batches 1
out=${OUT:-benchmarks/results}
limit=${H200_TIMEOUT:-560}  # seconds for the step's script (a device call may run 600)
case "$step" in tests|llama|gemma|profile|profile-qwen|kernels|gemma-decode|llama-decode|nf4|overlap) ;;
    *) echo "unknown step '$step' (tests|llama|gemma|profile|profile-qwen|kernels|gemma-decode|llama-decode|nf4|overlap)" >&2
       exit 2 ;; esac
source benchmarks/device_site.sh  # the carried wheels
quiet() { grep -v "Warning\|warn(\|^\[transformers" || true; }
# the results' names say which card measured them (the lease may give an H100 for an H200)
card=$(python3 -c "import sys, torch; sys.path.insert(0, 'benchmarks'); import real_pair; print(real_pair.card(torch.cuda.get_device_name()))" 2>/dev/null || echo h200)
case "$step" in
    tests)
        { timeout "$limit" python3 -m pytest -q -m "" tests/test_gpu_rounds.py tests/test_gpu.py tests/test_kernels.py \
              tests/test_nf4.py -p no:cacheprovider 2>&1
          timeout 100 python3 -m pytest -q -m gpu tests/test_verify.py -p no:cacheprovider 2>&1; } \
            | tee "$out/gpu-tests-log.txt" ;;
    llama|gemma)
        timeout "$limit" python3 benchmarks/gpu_bench.py --pairs "$step" --modes eager graphs compiled \
            --batches 1 4 16 --out "$out" --tag "$card-$step" 2>&1 | quiet | tee "$out/$card-$step-log.txt" ;;
    gemma-decode|llama-decode)
        pair=${step%-decode}
        timeout "$limit" python3 benchmarks/gpu_bench.py --pairs "$pair" --modes compiled --batches 1 16 --no-hf \
            --out "$out" --tag "$card-$step" "$@" 2>&1 | quiet | tee "$out/$card-$step-log.txt" ;;
    profile)
        timeout 400 python3 benchmarks/profile_step.py --pair gemma 2>&1 | quiet | tee "$out/h200-profile.txt" ;;
    profile-qwen)
        timeout 400 python3 benchmarks/profile_step.py --pair qwen --kernels on --pdl both "$@" 2>&1 | quiet \
            | tee "$out/h200-profile-qwen.txt" ;;
    nf4)
        timeout "$limit" python3 benchmarks/nf4_bench.py --pairs qwen gemma llama --out "$out" "$@" 2>&1 | quiet \
            | tee "$out/h200-nf4-log.txt" ;;
    overlap)
        { timeout 150 python3 -m pytest -q -m "" tests/test_gpu_rounds.py -k overlap -p no:cacheprovider 2>&1
          timeout $((limit - 150)) python3 benchmarks/overlap_probe.py --pair qwen --ks 2 3 \
              --pdl on/off off/off on/on --out "$out" "$@" 2>&1 | quiet; } | tee "$out/h200-overlap-log.txt" ;;
    kernels)
        timeout "$limit" python3 benchmarks/kernel_bench.py --pairs gemma --rows 1 2 6 --draft-rows 1 --sweep \
            --out "$out/h200-kernels.json" "$@" 2>&1 \
            | quiet | tee "$out/h200-kernels.txt" ;;
esac
