#!/usr/bin/env bash
# One device lease for issue 14's measure of record (the real Qwen2.5-Coder pair through
# `specdecode bench`, benchmarks/real_pair.py) and the GPU checks that go with it, as a sequence of
# back-to-back device calls. Kept in the repository because a session's checkout may be new: the
# wheels and checkpoint pieces are rebuilt here by `prepare`, the rest lives in this script.
#
# Here (no GPU), once per checkout:
#   bash benchmarks/lease.sh prepare [MB]   # .whl/ (pinned wheels), .carry/pNN (GGUF pieces of MB,
#                                           # default 60), .carry/prompts; both folders git-excluded
# Then on the device, back to back (a machine is given back 30 s after a call ends):
#   1. run("bash benchmarks/lease.sh setup", carry=[".whl", ".carry/prompts"])
#        installs the wheels, prints the card, torch and IF-node support, and starts in the
#        background (its own process session) the GPU tests of the newest round code, then
#        `h200.sh gemma-decode` (issue 6's alpha checks on the product path, ~330 s)
#   2. run("bash benchmarks/lease.sh piece NN", carry=[".carry/pNN"]) for each piece prepare listed;
#        a piece of 60 MB and the checkout (~30 MB, 25 of them specdecode/assets) exceed the 64 MiB a
#        call carries, so move specdecode/assets out of the checkout for these calls (`mv
#        specdecode/assets /tmp/assets_stash`; back before anything is committed or run on the demo)
#   3. run("bash benchmarks/lease.sh convert")   # joins the pieces, converts to bf16 (~140 s)
#   4. run("bash benchmarks/lease.sh real TAG STEP...")  # real_pair.py run in the background; polls
#        ~540 s, then returns what is done: the JSON, Markdown, logs come back through $OUT
#   5. run("bash benchmarks/lease.sh poll 540") until the output says REAL-DONE
# The real pair waits for the background checks (BG-DONE) so that nothing else shares the GPU.
# LEASE_STATE moves /root/lease elsewhere: `piece` and `convert` also run here, as a dry run (with
# .whl moved aside: its wheels are for the device's Python 3.12).
# A suggested order (the cold figure right after an emptied inductor cache; the --k auto check
# before batch 4 and the transformers baselines, in case the lease ends first):
#   real -stopNN clear-cache k5_cold k_auto k4 k3 k5_warm k3_batch4 hf
set -euo pipefail
cmd=${1:?usage: bash benchmarks/lease.sh prepare [MB] | setup | piece NN | convert | real TAG STEP... | poll SECONDS}
shift
STATE=${LEASE_STATE:-/root/lease}  # on the device machine: everything outside the checkout, while it is held
DRAFT=qwen2.5-coder-0.5b-instruct
TARGET=qwen2.5-coder-1.5b-instruct

site() { source benchmarks/device_site.sh; }  # the carried wheels

results() {  # $STATE/out's files (JSON, Markdown, logs) back through $OUT: at most 8 files come back
    [ -n "${OUT:-}" ] || return 0
    local n=0
    for f in $(ls -t "$STATE/out" 2>/dev/null); do
        [ -f "$STATE/out/$f" ] || continue
        n=$((n + 1)); [ "$n" -le 8 ] || break
        cp "$STATE/out/$f" "$OUT/"
    done
}

show_real() {  # show_real SECONDS: wait up to SECONDS for the real pair, then its log and results
    wait_for REAL-DONE "$STATE/out/real-log.txt" "$1" || true
    grep -v "Warning\|warn(" "$STATE/out/real-log.txt" | tail -40
    results
}

wait_for() {  # wait_for MARKER FILE SECONDS: 0 once MARKER is in FILE, 1 when SECONDS pass first
    local end=$((SECONDS + $3))
    while [ "$SECONDS" -lt "$end" ]; do
        grep -q "$1" "$2" 2>/dev/null && return 0
        sleep 5
    done
    return 1
}

case "$cmd" in
prepare)
    mb=${1:-60}
    for d in /.whl/ /.carry/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
    # the versions pyproject pins (transformers) and the ones this machine resolved for the rest
    v() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "transformers==$(v transformers)" "pydantic==$(v pydantic)" \
        "pydantic-core==$(v pydantic-core)" "annotated-types==$(v annotated-types)" \
        "typing-inspection==$(v typing-inspection)" "typer==$(v typer)" "annotated-doc==$(v annotated-doc)"
    [ -f "/tmp/rc/$TARGET.gguf" ] || bash ../shared/tools/real-checkpoints.sh fetch /tmp/rc
    rm -rf .carry/p[0-9]* .carry/pieces /tmp/rc-pair && mkdir -p /tmp/rc-pair
    for name in "$DRAFT" "$TARGET"; do ln -s "/tmp/rc/$name.gguf" /tmp/rc-pair/; done  # the pair alone
    bash ../shared/tools/real-checkpoints.sh split /tmp/rc-pair .carry/pieces "$mb" > /dev/null
    i=0
    for f in $(ls .carry/pieces); do
        nn=$(printf "%02d" "$i"); mkdir -p ".carry/p$nn"; mv ".carry/pieces/$f" ".carry/p$nn/"; i=$((i + 1))
    done
    rmdir .carry/pieces
    python3 benchmarks/real_pair.py prompts --out .carry/prompts
    echo "wheels: $(du -sh .whl | cut -f1); pieces: p00..p$(printf "%02d" $((i - 1))) ($i calls, ~$mb MB each)"
    ;;
setup)
    site
    mkdir -p "$STATE/out" "$STATE/stash"
    rm -rf "$STATE/prompts" && cp -r .carry/prompts "$STATE/prompts"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 - <<'EOF'
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name())
print("CUDA graph IF nodes (--k auto's device stop):", hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node"))
EOF
    # the GPU tests of the newest round code, then issue 6's checks; own process session: they run on
    # between calls while the machine is held
    setsid nohup bash -c "
        timeout 300 python3 -m pytest -q -m '' tests/test_gpu_rounds.py -p no:cacheprovider > '$STATE/out/gpu-tests.txt' 2>&1
        OUT='$STATE/out' H200_TIMEOUT=330 bash benchmarks/h200.sh gemma-decode
        echo BG-DONE" > "$STATE/out/bg-log.txt" 2>&1 < /dev/null &
    echo "background checks started: $STATE/out/bg-log.txt"
    ;;
piece)
    nn=${1:?piece NN}
    mkdir -p "$STATE/stash"
    cp ".carry/p$nn"/* "$STATE/stash/"
    echo "piece $nn: $(ls "$STATE/stash" | wc -l) pieces, $(du -sh "$STATE/stash" | cut -f1) in the stash"
    ;;
convert)
    site
    mkdir -p "$STATE/gguf"
    for name in "$DRAFT" "$TARGET"; do cat "$STATE/stash/$name".[0-9][0-9] > "$STATE/gguf/$name.gguf"; done
    ls -la "$STATE/gguf"
    python3 benchmarks/real_pair.py convert --gguf "$STATE/gguf" --out "$STATE/models" --parallel
    ls "$STATE/models"/*
    tail -5 "$STATE/out/bg-log.txt" 2>/dev/null || true
    results
    ;;
real)
    site
    tag=${1:?real TAG STEP...}; shift
    [ "$#" -gt 0 ] || { echo "name the steps (benchmarks/real_pair.py's plan, clear-cache, hf)" >&2; exit 2; }
    if [ -f "$STATE/out/bg-log.txt" ] && ! wait_for BG-DONE "$STATE/out/bg-log.txt" 240; then
        echo "the background checks have not finished: call this again once they have" >&2; results; exit 1
    fi
    setsid nohup bash -c "python3 benchmarks/real_pair.py run --models '$STATE/models' --prompts '$STATE/prompts' \
        --out '$STATE/out' --tag='$tag' --hf-samples 5 --steps $* ; echo REAL-DONE" \
        > "$STATE/out/real-log.txt" 2>&1 < /dev/null &
    show_real "${LEASE_POLL:-500}"
    ;;
poll)
    show_real "${1:-500}"
    ;;
*)
    echo "unknown command '$cmd' (prepare | setup | piece NN | convert | real TAG STEP... | poll SECONDS)" >&2
    exit 2
    ;;
esac
