"""Runs every jaxprune benchmark figure and prints markdown for benchmarks/README.md.

Usage: python benchmarks/run.py [--quick]

Full mode must stay under 10 minutes on a quiet 2-core machine (the time of each section is
printed as it starts); --quick (a smoke run: small sizes, few rounds) takes a few minutes.
Section 6 needs jaxpruner's own venv (../shared/peers/setup-jaxpruner.sh); without it, only
jaxprune's rows are printed.
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
import peer_jaxpruner
import train_overhead
from common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode")
    args = parser.parse_args()
    t0 = time.perf_counter()
    q = args.quick

    def lap(title: str) -> None:
        print(f"\n[{time.perf_counter() - t0:.0f} s] {title}\n", flush=True)

    print(f"# jaxprune benchmarks ({datetime.date.today()}, {machine()})\n")
    lap("## 1. Train-step overhead: one-line chain and separate mask update vs plain adam")
    if q:
        train_overhead.main(["--models", "mlp", "--rounds", "2"])
    else:
        train_overhead.main(["--rounds", "8", "--methods", "exact,histogram"])
    # The same, with glibc told to keep large freed blocks mapped (no page faults on XLA's
    # per-step temporaries); it must be set before the process starts, hence a subprocess.
    print("\nWith MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=4294967296:\n", flush=True)
    tuned = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
    script = pathlib.Path(__file__).with_name("train_overhead.py")
    models, rounds = ("mlp", "2") if q else ("mlp,cnn", "5")
    subprocess.run(
        [sys.executable, str(script), "--models", models, "--rounds", rounds],
        env={**os.environ, **tuned},
        check=True,
    )
    lap("## 2. Threshold / mask cost (vs a full sort, and in read passes)")
    mask_cost.main(["--sizes", "1M", "--repeats", "2", "--rounds", "3"] if q else [])
    lap("## 3-4. Memory and compile time")
    memory_compile.main(["--layers", "5"] if q else [])
    lap("## 5. GPU: not available in this environment (CPU only).")
    lap("## 6. jaxprune and jaxpruner side by side")
    peer_jaxpruner.main(["--quick"] if q else ["--mask-rounds", "2"])
    lap("## 7. Engine types: global threshold, N:M, channel, output scope")
    engine_cost.main(["--quick"] if q else [])
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
