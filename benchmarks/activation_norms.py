"""Cost of ``jaxprune.activation_norms`` over N calibration batches vs N forward passes.

For each model (the MLP and the CNN of ``common.py``) and N in {4, 16}:

* ``forward``: N calls of the jitted model function ``fn(params, batch)`` (the loss), results
  blocked at the end;
* ``norms``: ``jaxprune.activation_norms(fn, params, batches)`` on the same N batches, warm
  (the traced graph and the compiled step are cached from a warm-up call);
* ``norms cold``: the first call, with tracing and compilation (reported once).

The two alternate ``--repeats`` times (order flipped every round); medians and the ratio
norms / forward are reported (issue 11's target: at most about 1.5).

Memory: the compiled accumulation step's ``memory_analysis()`` (temp + output bytes; the same
program runs for every batch), and the peak of the bytes of all live jax arrays sampled while
activation_norms consumes a generator that makes each batch on demand: it must not grow with
N. On GPU, the device's ``peak_bytes_in_use`` is printed too.

Usage: python benchmarks/activation_norms.py [--ns 4,16] [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from common import cnn_model, machine, mlp_model

import jaxprune
from jaxprune._src import calibration


def make_case(name: str, quick: bool):
    if name == "mlp":
        params, (x, y), loss_fn = mlp_model(width=64, depth=2, batch=8) if quick else mlp_model()
        label = "MLP 2x(64x64), batch 8" if quick else "MLP 4x(1024x1024), batch 256"
    else:
        params, (x, y), loss_fn = cnn_model(batch=4 if quick else 64)
        label = "CNN conv32-conv64-dense256-dense10, 32x32x3, b" + ("4" if quick else "64")

    def fn(p, batch):
        return loss_fn(p, *batch)

    def batch_maker(i):
        k = jax.random.key(100 + i)
        return (x + 0.01 * jax.random.normal(k, x.shape, x.dtype), y)

    return label, params, fn, batch_maker


def live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def measure(name: str, ns: list[int], repeats: int, quick: bool) -> list[dict]:
    label, params, fn, batch_maker = make_case(name, quick)
    jfn = jax.jit(fn)
    rows = []
    for n in ns:
        batches = [batch_maker(i) for i in range(n)]
        jax.block_until_ready(batches)

        def forward(batches=batches):
            t0 = time.perf_counter()
            outs = [jfn(params, b) for b in batches]
            jax.block_until_ready(outs)
            return time.perf_counter() - t0

        def norms(batches=batches):
            t0 = time.perf_counter()
            jax.block_until_ready(jaxprune.activation_norms(fn, params, batches))
            return time.perf_counter() - t0

        cold = norms() if n == ns[0] else float("nan")
        forward()  # warm-up (compile)
        times = {"forward": [], "norms": []}
        for r in range(repeats):
            order = ("forward", "norms") if r % 2 == 0 else ("norms", "forward")
            for what in order:
                times[what].append(forward() if what == "forward" else norms())
        fwd, nrm = np.median(times["forward"]), np.median(times["norms"])

        # Memory: batches made on demand, live bytes sampled before each is handed over.
        del batches, forward, norms
        peak = [0]

        def generated(n=n, peak=peak):
            for i in range(n):
                b = batch_maker(i)
                jax.block_until_ready(b)
                peak[0] = max(peak[0], live_bytes())
                yield b

        jax.block_until_ready(jaxprune.activation_norms(fn, params, generated()))
        rows.append(
            dict(
                model=label,
                n=n,
                forward_ms=fwd * 1e3,
                norms_ms=nrm * 1e3,
                cold_ms=cold * 1e3,
                ratio=nrm / fwd,
                live_peak=peak[0],
            )
        )
        print(row_line(rows[-1]), flush=True)
    step_memory(fn, params, batch_maker(0), label)
    return rows


def step_memory(fn, params, batch, label: str) -> None:
    (steps,) = calibration.steps_of(fn)
    plan = next(iter(steps.plans.values()))
    ma = steps.step.lower(plan.zeros(), params, (batch,)).compile().memory_analysis()
    dev = jax.devices()[0].memory_stats() or {}
    peak = dev.get("peak_bytes_in_use")
    print(
        f"{label}: accumulation step temp {ma.temp_size_in_bytes / 2**20:.2f} MiB, "
        f"output {ma.output_size_in_bytes / 2**20:.3f} MiB"
        + (f"; device peak_bytes_in_use {peak / 2**20:.1f} MiB" if peak else ""),
        flush=True,
    )


HEADER = (
    "| model | N | N forward passes ms | activation_norms ms | norms / forward "
    "| first call ms (trace + compile) | peak live MiB |\n|---|---|---|---|---|---|---|"
)


def row_line(r: dict) -> str:
    cold = "" if np.isnan(r["cold_ms"]) else f"{r['cold_ms']:.0f}"
    return (
        f"| {r['model']} | {r['n']} | {r['forward_ms']:.1f} | {r['norms_ms']:.1f} "
        f"| **{r['ratio']:.2f}** | {cold} | {r['live_peak'] / 2**20:.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="4,16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (smoke run)")
    args = ap.parse_args()
    repeats = 2 if args.quick else args.repeats
    ns = [int(n) for n in args.ns.split(",")]
    print(machine())
    print(HEADER)
    for name in args.models.split(","):
        measure(name, ns, repeats, args.quick)


if __name__ == "__main__":
    main()
