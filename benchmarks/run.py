"""Runs every jaxprune benchmark figure and prints markdown for benchmarks/README.md.

Usage: python benchmarks/run.py [--quick]

Full mode takes about 7-8 minutes on 2 CPU cores (section 7, engine_cost.py, about 3 of them);
--quick (a smoke run: small sizes, few rounds) about 2-3 minutes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import subprocess
import sys
import time

import engine_cost
import mask_cost
import memory_compile
import train_overhead
from common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"# jaxprune benchmarks ({datetime.date.today()}, {machine()})\n")
    print("## 1. Train-step overhead\n")
    if args.quick:
        train_overhead.main(["--models", "mlp", "--rounds", "2"])
    else:
        train_overhead.main(["--rounds", "12", "--methods", "exact,histogram"])
    # The same, with glibc told to keep large freed blocks mapped (no page faults on XLA's
    # per-step temporaries); it must be set before the process starts, hence a subprocess.
    print("\nWith MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=4294967296:\n", flush=True)
    tuned = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
    script = pathlib.Path(__file__).with_name("train_overhead.py")
    models, rounds = ("mlp", "2") if args.quick else ("mlp,cnn", "10")
    subprocess.run(
        [sys.executable, str(script), "--models", models, "--rounds", rounds],
        env={**os.environ, **tuned},
        check=True,
    )
    print("\n## 2. Threshold / mask cost\n")
    mask_cost.main(["--sizes", "1M", "--repeats", "2"] if args.quick else [])
    print("\n## 3-4. Memory and compile time\n")
    memory_compile.main(["--layers", "5"] if args.quick else [])
    print("\n## 5. GPU: not available in this environment (CPU only).")
    print("\n## 6. jaxpruner: see benchmarks/README.md (pip install jaxpruner failed here).")
    print("\n## 7. Engine types: global threshold, N:M, channel, output scope\n")
    engine_cost.main(["--quick"] if args.quick else [])
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
