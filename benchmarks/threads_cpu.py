"""Time `specdecode generate "def fibonacci(n):"` (the demo pair) with 1 and 2 torch threads,
on an idle CPU and with a busy-loop process pinned to core 0.

    python benchmarks/threads_cpu.py [--repeats 2] [--threads-flag]

Each run is a fresh process (wall time from start to exit, imports and loading included) and
its `tokens/s` from `--json` stats (generation only). Threads are set with OMP_NUM_THREADS, or
with `--threads N` when --threads-flag is given (plus a run with neither: the product default).
What it does not: write the results file (copy the printed table into benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PROMPT = "def fibonacci(n):"


def run(threads: int | None, flag: bool) -> tuple[float, float]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "-m", "specdecode", "generate", PROMPT, "--json"]
    if threads is not None:
        if flag:
            cmd += ["--threads", str(threads)]
        else:
            env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{cmd} failed: {out.stderr}")
    stats = json.loads(out.stdout.splitlines()[0])["stats"]
    return wall, stats["time_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads-flag", action="store_true", help="use --threads N (and measure the default)")
    ap.add_argument("--busy-only", action="store_true")
    args = ap.parse_args()
    choices: list[int | None] = [1, 2] + ([None] if args.threads_flag else [])
    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()}")
    for busy in ([True] if args.busy_only else [False, True]):
        hog = None
        if busy:
            hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while 1: pass"])
            time.sleep(1)
        try:
            for threads in choices:
                for r in range(args.repeats):
                    wall, gen = run(threads, args.threads_flag)
                    name = "default" if threads is None else str(threads)
                    print(f"{'busy' if busy else 'idle'}  threads {name:>7}  run {r}  wall {wall:7.2f} s  "
                          f"generation {gen:7.2f} s  load {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()


if __name__ == "__main__":
    main()
