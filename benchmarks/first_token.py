"""Time from launching `specdecode generate PROMPT` (stdout piped) to its first byte on stdout,
and to its exit: what a new user waits before the first streamed token.

    python benchmarks/first_token.py ["def fibonacci(n):"] [extra generate flags ...]

Three fresh processes; prints one line each with the load average (the machine is shared).
What it does not: warm anything up (the point is the cold start) or write a results file.
"""

import os
import subprocess
import sys
import time


def main() -> None:
    prompt = sys.argv[1] if len(sys.argv) > 1 else "def fibonacci(n):"
    extra = sys.argv[2:]
    for i in range(3):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "specdecode", "generate", prompt, *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.read(1)
        t1 = time.perf_counter()
        p.stdout.read()
        err = p.stderr.read().decode()
        p.wait()
        t2 = time.perf_counter()
        last = err.strip().splitlines()[-1] if err.strip() else ""
        print(f"run {i}: first streamed byte {t1 - t0:.2f} s, exit {t2 - t0:.2f} s, rc {p.returncode}, "
              f"load {os.getloadavg()[0]:.2f}; {last}", flush=True)


if __name__ == "__main__":
    main()
