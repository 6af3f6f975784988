"""Cost of one weight's mask update: ``weight_mask`` exact and histogram vs a full sort and a read.

For w ~ N(0, 1) float32 of 1M, 4M, 16.7M and 67M elements, at sparsity 0.5 (jit, traced
sparsity, warm-up, median of repeats):

* ``exact``: ``jaxprune.weight_mask`` with threshold_method="exact" (threshold and mask),
* ``hist``: the same with "histogram" (nbins 256),
* ``hist_scatter``: the previous histogram implementation (bin index + scatter-add
  ``bin_counts``), kept here as the "before" figure,
* ``sort``: what TF / tfmot / jaxpruner do: a full sort of |w|, threshold at rank k, mask,
* ``read``: one read pass, ``jnp.sum(jnp.abs(w))``.

Checks that exact's threshold and mask equal the sort-based ones bit for bit (np.partition
where the sort is skipped), and that hist equals hist_scatter.

Then, for a 4096x4096 weight at sparsity 0.5 and 0.9, the goal figures of issue 13 as ratios
to one read pass timed alongside: ``read`` (``sum(|w|)``), ``threshold`` (the exact threshold
alone), ``exact`` and ``histogram`` ``weight_mask``. Each round times every subject once (plus
a warm call), in an order that alternates each round, and divides by that round's read;
medians and min-max over the rounds are printed, with the number of counting passes.

Usage: python benchmarks/mask_cost.py [--sizes 1M,4M,16M,67M] [--repeats 7]
       python benchmarks/mask_cost.py --ratios-only [--rounds 9] [--clock cpu]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from common import machine, timeit

import jaxprune
from jaxprune._src import masks as masks_lib
from jaxprune._src import select

SHAPES = {"1M": (1024, 1024), "4M": (2048, 2048), "16M": (4096, 4096), "67M": (8192, 8192)}
SORT_MAX_N = 4096 * 4096  # ~7 s per sort at 16.7M on 2 cores; ~30 s at 67M
HP = jaxprune.get_pruning_hparams()


@partial(jax.jit, static_argnames="method")
def mask_fn(w, s, method):
    return jaxprune.weight_mask(w, s, hparams=HP.replace(threshold_method=method))


@jax.jit
def hist_scatter_fn(w, s):
    a = jnp.abs(w)
    m = jnp.max(jnp.where(jnp.isfinite(a), a, 0), initial=0.0)
    safe_m = jnp.where(m > 0, m, 1.0)
    counts = select.bin_counts(masks_lib._bin_index(a, safe_m, 256), 256)
    cdf = masks_lib._cdf(counts, a.size)
    below = jnp.sum(cdf < s).astype(jnp.float32)
    t = jnp.where(m > 0, below / jnp.float32(256) * m, 0.0)
    return t, a > t


@jax.jit
def sort_fn(w, s):
    a = jnp.abs(w)
    k = masks_lib.num_kept(a.size, s)
    t = jnp.sort(a.ravel())[::-1][k - 1]
    return t, a >= t


@jax.jit
def read_fn(w):
    return jnp.sum(jnp.abs(w))


def measure(sizes: list[str], repeats: int, sparsity: float = 0.5) -> list[dict]:
    rows = []
    s = jnp.float32(sparsity)
    for name in sizes:
        shape = SHAPES[name]
        n = shape[0] * shape[1]
        w = jax.random.normal(jax.random.key(0), shape, jnp.float32)
        # Exact and histogram alternate, so that machine noise hits both alike.
        pairs = [
            (
                timeit(mask_fn, w, s, "exact", repeats=1),
                timeit(mask_fn, w, s, "histogram", repeats=1),
            )
            for _ in range(repeats)
        ]
        t_exact = float(np.median([a for a, _ in pairs]))
        t_hist = float(np.median([b for _, b in pairs]))
        t_hs = timeit(hist_scatter_fn, w, s, repeats=repeats)
        t_read = timeit(read_fn, w, repeats=repeats)
        thr, mask = mask_fn(w, s, "exact")
        if n <= SORT_MAX_N:
            t_sort = timeit(sort_fn, w, s, repeats=1)
            ref_t, ref_m = sort_fn(w, s)
        else:
            t_sort = float("nan")
            a = np.abs(np.asarray(w)).ravel()
            k = int(masks_lib.num_kept(n, s))
            ref_t = np.partition(a, n - k)[n - k]
            ref_m = np.abs(np.asarray(w)) >= ref_t
        if np.asarray(thr).tobytes() != np.asarray(ref_t, np.float32).tobytes() or not (
            np.array_equal(np.asarray(mask), np.asarray(ref_m))
        ):
            raise SystemExit(f"MISMATCH exact vs sort at n={n}: {thr} vs {ref_t}")
        ht, hm = mask_fn(w, s, "histogram")
        st, sm = hist_scatter_fn(w, s)
        if float(ht) != float(st) or not np.array_equal(np.asarray(hm), np.asarray(sm)):
            raise SystemExit(f"MISMATCH histogram vs scatter histogram at n={n}: {ht} vs {st}")
        rows.append(
            dict(n=n, exact=t_exact, hist=t_hist, hist_scatter=t_hs, sort=t_sort, read=t_read)
        )
        print(row_line(rows[-1]), flush=True)
    return rows


HEADER = (
    "| n | exact ms | histogram ms | old scatter histogram ms | full sort ms | read ms "
    "| sort/exact | exact/read | hist/exact | old hist/exact | exact ns/elt |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def row_line(r: dict) -> str:
    sort = "skipped" if np.isnan(r["sort"]) else f"{r['sort']:.0f}"
    ratio = "-" if np.isnan(r["sort"]) else f"**{r['sort'] / r['exact']:.0f}x**"
    return (
        f"| {r['n']:,} | {r['exact']:.1f} | {r['hist']:.1f} | {r['hist_scatter']:.1f} | {sort} "
        f"| {r['read']:.2f} | {ratio} | {r['exact'] / r['read']:.1f}x "
        f"| **{r['hist'] / r['exact']:.2f}** | {r['hist_scatter'] / r['exact']:.2f} "
        f"| {r['exact'] * 1e6 / r['n']:.2f} |"
    )


@jax.jit
def threshold_fn(w, s):
    k = masks_lib.num_kept(w.size, s)
    return select._select(w, k, magnitude=True)


RATIO_SUBJECTS = {
    "threshold": lambda w, s: threshold_fn(w, s)[0],
    "exact": lambda w, s: mask_fn(w, s, "exact"),
    "histogram": lambda w, s: mask_fn(w, s, "histogram"),
}


def read_ratios(rounds: int = 9, clock: str = "wall", shape=(4096, 4096)) -> list[dict]:
    """Issue 13's goal 1: each subject as a ratio to a read pass timed in the same round."""
    timer = time.perf_counter if clock == "wall" else time.process_time
    w = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    a = np.abs(np.asarray(w)).ravel()
    out = []
    print(
        f"\n{shape[0]}x{shape[1]} float32, ratios to the read pass `sum(|w|)` of the same round "
        f"({clock} clock, {rounds} rounds: median [min-max])\n"
    )
    print("| sparsity | passes | read ms | threshold | exact weight_mask | histogram weight_mask |")
    print("|---|---|---|---|---|---|")
    for sparsity in (0.5, 0.9):
        s = jnp.float32(sparsity)
        subjects = {"read": lambda w, s: read_fn(w), **RATIO_SUBJECTS}
        for fn in subjects.values():
            jax.block_until_ready(fn(w, s))
        # Exact results: the k-th largest |w| by np.partition, and the mask from it.
        k = int(masks_lib.num_kept(a.size, s))
        ref = np.partition(a, a.size - k)[a.size - k]
        value, passes, _ = threshold_fn(w, s)
        thr, mask = mask_fn(w, s, "exact")
        if np.asarray(value).tobytes() != ref.tobytes() or float(thr) != float(ref):
            raise SystemExit(f"MISMATCH at sparsity {sparsity}: {value} vs {ref}")
        if int(np.asarray(mask).sum()) != int(np.sum(a >= ref)):
            raise SystemExit(f"MASK MISMATCH at sparsity {sparsity}")
        times = {name: [] for name in subjects}
        names = list(subjects)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                t0 = timer()
                jax.block_until_ready(subjects[name](w, s))
                times[name].append(timer() - t0)
        read = np.asarray(times["read"])
        row = dict(sparsity=sparsity, passes=int(passes), read_ms=float(np.median(read)) * 1e3)
        cells = []
        for name in RATIO_SUBJECTS:
            q = np.asarray(times[name]) / read
            row[name] = (float(np.median(q)), float(q.min()), float(q.max()))
            row[name + "_ms"] = float(np.median(times[name])) * 1e3
            cells.append(
                f"{row[name + '_ms']:.1f} ms = **{np.median(q):.1f}x** "
                f"[{q.min():.1f}-{q.max():.1f}]"
            )
        print(
            f"| {sparsity} | {row['passes']} | {row['read_ms']:.2f} | " + " | ".join(cells) + " |",
            flush=True,
        )
        out.append(row)
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,4M,16M,67M")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the read-ratio table")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--ratios-only", action="store_true")
    args = parser.parse_args(argv)
    print(machine())
    rows = []
    if not args.ratios_only:
        print(HEADER)
        rows = measure(args.sizes.split(","), args.repeats)
        print("exact == sort-based threshold and mask, histogram == scatter histogram: verified.")
    read_ratios(args.rounds, args.clock)
    print("exact threshold and mask == np.partition's: verified.")
    return rows


if __name__ == "__main__":
    main()
