"""Cost of computing a pruning threshold: exact k-th largest vs histogram vs full sort.

Times, for |w| with w ~ N(0, 1) float32 of several sizes (jit-compiled, k traced, after
warm-up, median of several repeats, ``block_until_ready``):

* ``exact``: ``jaxprune._src.select.kth_largest`` (counting-pass radix select),
* ``bin_counts``: ``bin_counts(idx, 256)`` alone on precomputed bin indices,
* ``hist``: the r1.11 "histogram" method's counting step: max, bin index, ``bin_counts`` (256),
  and the same with ``jnp.bincount`` (the scatter-add baseline),
* ``sort``: ``jnp.sort`` of the flattened weights and indexing (TF-equivalent of ``top_k``),
* ``top_k``: ``lax.top_k(x, n)`` (only where cheap enough),
* ``read``: one read pass, ``jnp.sum(jnp.abs(w))``.

and checks that ``exact`` equals the sort result. Prints a markdown table.

Usage: python benchmarks/threshold_cost.py [--sizes 1M,4M,16M,67M] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import timeit

from jaxprune._src.select import _select, bin_counts

SHAPES = {"1M": (1024, 1024), "4M": (2048, 2048), "16M": (4096, 4096), "67M": (8192, 8192)}
# The full sort takes ~7 s at 16.7M elements on 2 CPU cores; at 67M it would take ~30 s per call.
SORT_MAX_N = 4096 * 4096
TOPK_MAX_N = 2048 * 2048


@jax.jit
def exact_fn(w, k):
    return _select(w, k)


@jax.jit
def hist_fn(w):
    a = jnp.abs(w)
    mx = jnp.max(a)
    idx = jnp.clip(jnp.floor(256 * (a / mx)).astype(jnp.int32), 0, 255)
    return bin_counts(idx, 256)


@jax.jit
def bincount_fn(w):  # the baseline scatter-add histogram, for comparison
    a = jnp.abs(w)
    idx = jnp.clip(jnp.floor(256 * (a / jnp.max(a))).astype(jnp.int32), 0, 255)
    return jnp.bincount(idx.ravel(), length=256)


@jax.jit
def bin_counts_fn(idx):  # bin_counts alone, on precomputed bin indices
    return bin_counts(idx, 256)


@jax.jit
def sort_fn(w, k):
    return jnp.sort(jnp.abs(w).ravel())[::-1][k - 1]


@jax.jit
def topk_fn(w, k):
    flat = jnp.abs(w).ravel()
    return lax.top_k(flat, flat.shape[0])[0][k - 1]


@jax.jit
def read_fn(w):
    return jnp.sum(jnp.abs(w))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1M,4M,16M,67M", help="comma list of " + ",".join(SHAPES)
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args()

    print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPU cores")
    print(f"k = ceil((1 - sparsity) * n), sparsity = {args.sparsity}\n")
    header = (
        "| n | exact ms (passes) | bin_counts ms | hist ms | hist w/ jnp.bincount ms "
        "| sort ms | top_k ms | read ms "
        "| sort/exact | exact/read | exact ns/elt | hist/exact |"
    )
    print(header)
    print("|---" * 12 + "|")
    notes = []
    for name in args.sizes.split(","):
        shape = SHAPES[name.strip()]
        n = shape[0] * shape[1]
        w = jax.random.normal(jax.random.key(0), shape, jnp.float32)
        wa = jnp.abs(w)
        k = jnp.int32(int(np.ceil((1.0 - args.sparsity) * n)))
        value, passes, _ = exact_fn(wa, k)
        t_exact = timeit(exact_fn, wa, k, repeats=args.repeats)
        t_hist = timeit(hist_fn, w, repeats=args.repeats)
        t_binc = timeit(bincount_fn, w, repeats=max(1, args.repeats // 2))
        idx = jnp.clip(jnp.floor(256 * (wa / jnp.max(wa))).astype(jnp.int32), 0, 255)
        t_bc = timeit(bin_counts_fn, idx, repeats=args.repeats)
        np.testing.assert_array_equal(
            np.asarray(bin_counts_fn(idx)), np.bincount(np.asarray(idx).ravel(), minlength=256)
        )
        t_read = timeit(read_fn, w, repeats=args.repeats)
        if n <= SORT_MAX_N:
            reps = 1 if n > TOPK_MAX_N else 3
            t_sort = timeit(sort_fn, w, k, repeats=reps)
            ref = sort_fn(w, k)
            ok = np.asarray(ref).tobytes() == np.asarray(value).tobytes()
            sort_s, ratio = f"{t_sort:.0f}", f"{t_sort / t_exact:.0f}x"
        else:
            ref = np.partition(np.asarray(wa).ravel(), n - int(k))[n - int(k)]
            ok = np.asarray(ref).tobytes() == np.asarray(value).tobytes()
            sort_s, ratio = "skipped", "-"
            notes.append(f"{name}: sort skipped (~30 s per call); exact checked vs np.partition")
        if not ok:
            raise SystemExit(f"MISMATCH at n={n}: exact={value} reference={ref}")
        topk_s = f"{timeit(topk_fn, w, k, repeats=1):.0f}" if n <= TOPK_MAX_N else "skipped"
        print(
            f"| {n:,} | {t_exact:.1f} ({int(passes)}) | {t_bc:.1f} | {t_hist:.1f} | {t_binc:.1f} "
            f"| {sort_s} "
            f"| {topk_s} | {t_read:.2f} | {ratio} | {t_exact / t_read:.1f}x "
            f"| {t_exact * 1e6 / n:.2f} | {t_hist / t_exact:.2f} |",
            flush=True,
        )
    print("\nexact == sort result: verified for every size.")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
