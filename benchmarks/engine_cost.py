"""Cost of the engine's pruning types: global threshold, N:M, channel, per-output, and train steps.

Three measurements, each interleaved with its baseline in this one process (subject and baseline
alternate, the order flips every round, so machine noise hits both alike):

1. ``global``: ``allocation.global_masks`` (one exact threshold over all pooled kernels, counted
   over every kernel in place, and every mask) vs the per-layer exact threshold and mask of each
   of the same kernels (``masks._weight_mask`` per kernel, all in one jitted call), and vs one
   read pass over all kernels. Models: 4x(1024x1024) plus three smaller kernels (4.85M), and
   3x(2048x2048) + 4x(1024x1024) (16.7M). Also the compiled temp bytes
   (``memory_analysis().temp_size_in_bytes``) of both, over the kernels' bytes: the global
   threshold must add no full-size temporary (no concatenated copy). Checks the global threshold
   and masks against a NumPy reference (concatenate, np.partition).
2. ``weight``: the masks of one 4096x4096 float32 weight (``allocation.leaf_mask``, the function
   the transform and ``prune`` call) for 2:4 and 1:4 (sparsity 0.5 / 0.75, along the input axis
   -2), channel (0.5, output axis -1), output scope (0.5) and TF's layer exact (0.5, for scale),
   each vs one read pass ``jnp.sum(jnp.abs(w))``; also temp bytes over the weight's bytes. Checks
   the exact counts (N per group, pruned channels) and the output-scope and layer masks against
   NumPy (np.partition).
3. ``train``: the train-step overhead of each type vs plain adam on the 4x(1024x1024) MLP of
   ``train_overhead.py`` (same helpers: donated jitted step, blocks of 10 steps alternating,
   masks every 10 steps, sparsity ramping over 1000 steps): layer (TF default), global, ERK, 2:4,
   channel, output. On this MLP ERK gives every kernel exactly the target 0.9 (four equal
   shapes), so its row runs the same masks as the layer row: it checks ERK adds no step cost.

Timings are medians over repeats with [min-max]; ratios are subject / baseline.

Usage: python benchmarks/engine_cost.py [--quick] [--repeats 9] [--rounds 10]
                                        [--sections global,weight,train]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import Runner, copy_tree, interleaved, machine, make_step, median_ms, mlp_model
from train_overhead import FREQ, pruning_hparams

import jaxprune
from jaxprune._src import allocation, structure
from jaxprune._src import masks as masks_lib

HP = jaxprune.get_pruning_hparams()

# ------------------------------------------------------------------------ timing helpers


def _once(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) * 1e3


def paired(subjects: dict, repeats: int) -> dict[str, list[float]]:
    """Times every ``(fn, args)`` of ``subjects`` once per round, ``repeats`` rounds.

    Each function is run once first (warm-up); the order is reversed every round.
    """
    for fn, args in subjects.values():
        jax.block_until_ready(fn(*args))
    names = list(subjects)
    out = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, args = subjects[name]
            out[name].append(_once(fn, *args))
    return out


def spread(ms: list[float]) -> str:
    """``median [min-max]`` in ms."""
    a = np.asarray(ms)
    digits = 2 if np.median(a) < 10 else 1
    return f"{np.median(a):.{digits}f} [{a.min():.{digits}f}-{a.max():.{digits}f}]"


def ratio(num: list[float], den: list[float]) -> str:
    """Ratio of the medians, with the range of the per-round ratios."""
    r = np.asarray(num) / np.asarray(den)
    return f"**{np.median(num) / np.median(den):.2f}** [{r.min():.2f}-{r.max():.2f}]"


def compiled(fn, *args):
    """``(executable, temp bytes)``: compiled once, timed and measured as the same executable."""
    exe = fn.lower(*args).compile()
    return exe, int(exe.memory_analysis().temp_size_in_bytes)


# ------------------------------------------------------------------------ 1. global threshold

GLOBAL_MODELS = {
    "4x(1024²) + 1024x512 + 512x256 + 256x10": [(1024, 1024)] * 4
    + [(1024, 512), (512, 256), (256, 10)],
    "3x(2048²) + 4x(1024²)": [(2048, 2048)] * 3 + [(1024, 1024)] * 4,
}
GLOBAL_QUICK = {"2x(128²) + 64x32": [(128, 128)] * 2 + [(64, 32)]}  # 2 shapes: 2 compiles


@jax.jit
def global_fn(ws, s):
    return allocation.global_masks(ws, s, jnp.float32(0.0), HP)


@jax.jit
def per_layer_fn(ws, s):
    return [masks_lib._weight_mask(w, s, jnp.float32(0.0), HP, (1, 1)) for w in ws]


@jax.jit
def read_all_fn(ws):
    return sum(jnp.sum(jnp.abs(w)) for w in ws)


def _check_global(ws, s: float, thr, masks) -> None:
    a = np.concatenate([np.abs(np.asarray(w)).ravel() for w in ws])
    n = a.size
    k = int(masks_lib.num_kept(n, s))
    ref = np.partition(a, n - k)[n - k]
    if np.asarray(thr).tobytes() != np.float32(ref).tobytes():
        raise SystemExit(f"MISMATCH global threshold at n={n}: {thr} vs NumPy {ref}")
    for w, m in zip(ws, masks, strict=True):
        if not np.array_equal(np.asarray(m), np.abs(np.asarray(w)) >= ref):
            raise SystemExit(f"MISMATCH global mask of a {w.shape} kernel at n={n}")


def measure_global(models: dict, repeats: int, sparsity: float = 0.9) -> list[dict]:
    rows = []
    s = jnp.float32(sparsity)
    for name, shapes in models.items():
        keys = jax.random.split(jax.random.key(0), len(shapes))
        ws = [
            jax.random.normal(k, shape, jnp.float32) / np.sqrt(shape[0])
            for k, shape in zip(keys, shapes, strict=True)
        ]
        n = sum(w.size for w in ws)
        glob, temp_global = compiled(global_fn, ws, s)
        layer, temp_layer = compiled(per_layer_fn, ws, s)
        read, _ = compiled(read_all_fn, ws)
        times = paired(
            {"global": (glob, (ws, s)), "layer": (layer, (ws, s)), "read": (read, (ws,))},
            repeats,
        )
        thr, masks = glob(ws, s)
        _check_global(ws, sparsity, thr, masks)
        weight_bytes = 4 * n
        rows.append(
            dict(
                name=name,
                n=n,
                times=times,
                temp_global=temp_global / weight_bytes,
                temp_layer=temp_layer / weight_bytes,
            )
        )
        print(global_line(rows[-1]), flush=True)
    return rows


GLOBAL_HEADER = (
    "| kernels | n | global ms | per-layer ms | read ms | global/per-layer | global/read "
    "| global temp/weights | per-layer temp/weights |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def global_line(r: dict) -> str:
    t = r["times"]
    return (
        f"| {r['name']} | {r['n']:,} | {spread(t['global'])} | {spread(t['layer'])} "
        f"| {spread(t['read'])} | {ratio(t['global'], t['layer'])} "
        f"| {ratio(t['global'], t['read'])} | {r['temp_global']:.4f} | {r['temp_layer']:.4f} |"
    )


# ------------------------------------------------------------------------ 2. one weight's masks


def _rule(kind: structure.Structure, scope: str = "layer") -> allocation.LeafRule:
    return allocation.LeafRule("w", 0.0, False, kind, scope)


# (label, sparsity, rule): the rule's structure axis is already normalised for a 2-D weight.
WEIGHT_CASES = [
    ("2:4 (axis -2)", 0.5, _rule(structure.NByM(2, 4, 0))),
    ("1:4 (axis -2)", 0.75, _rule(structure.NByM(1, 4, 0))),
    ("channel (axis -1)", 0.5, _rule(structure.Channel(1))),
    ("output scope", 0.5, _rule(structure.Unstructured(), "output")),
    ("layer exact (TF)", 0.5, _rule(structure.Unstructured())),
]


def _leaf_mask_fn(rule: allocation.LeafRule):
    @jax.jit
    def fn(w, s):
        return allocation.leaf_mask(w, s, jnp.float32(0.0), rule, HP)[1]

    return fn


@jax.jit
def read_fn(w):
    return jnp.sum(jnp.abs(w))


def _check_weight(label: str, rule: allocation.LeafRule, w, s: float, mask) -> None:
    m = np.asarray(mask)
    kind = rule.structure
    if isinstance(kind, structure.NByM):
        keep = int(structure.nm_keep(kind.m, kind.n, s))
        per_group = m.reshape(-1, kind.m, m.shape[1]).sum(axis=1)
        ok = keep == kind.n and bool(np.all(per_group == kind.n))
    elif isinstance(kind, structure.Channel):
        pruned = int(structure.channels_pruned(m.shape[1], s))
        ok = bool(np.all(m.all(axis=0) | ~m.any(axis=0))) and int((~m.any(axis=0)).sum()) == (
            pruned
        )
    elif rule.scope == "output":  # each column keeps |w| >= its k-th largest (ties kept)
        a = np.abs(np.asarray(w))
        k = int(masks_lib.num_kept(a.shape[0], s))
        ok = np.array_equal(m, a >= np.partition(a, a.shape[0] - k, axis=0)[a.shape[0] - k])
    else:
        a = np.abs(np.asarray(w)).ravel()
        k = int(masks_lib.num_kept(a.size, s))
        ok = np.array_equal(m.ravel(), a >= np.partition(a, a.size - k)[a.size - k])
    if not ok:
        raise SystemExit(f"MISMATCH {label}: wrong kept counts for shape {m.shape}")


def measure_weight(size: int, repeats: int) -> list[dict]:
    w = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    rows = []
    weight_bytes = 4 * w.size
    read, _ = compiled(read_fn, w)
    for label, sparsity, rule in WEIGHT_CASES:
        s = jnp.float32(sparsity)
        fn, temp = compiled(_leaf_mask_fn(rule), w, s)
        times = paired({"mask": (fn, (w, s)), "read": (read, (w,))}, repeats)
        _check_weight(label, rule, w, sparsity, fn(w, s))
        rows.append(
            dict(
                label=label,
                shape=w.shape,
                sparsity=sparsity,
                times=times,
                temp=temp / weight_bytes,
            )
        )
        print(weight_line(rows[-1]), flush=True)
    return rows


WEIGHT_HEADER = (
    "| weight | mask | sparsity | mask ms | read ms | mask/read | temp/weight |\n"
    "|---|---|---|---|---|---|---|"
)


def weight_line(r: dict) -> str:
    t = r["times"]
    return (
        f"| {r['shape'][0]}x{r['shape'][1]} f32 | {r['label']} | {r['sparsity']} "
        f"| {spread(t['mask'])} | {spread(t['read'])} | {ratio(t['mask'], t['read'])} "
        f"| {r['temp']:.3f} |"
    )


# ------------------------------------------------------------------------ 3. train-step overhead


def train_variants() -> dict[str, jaxprune.PruningHParams]:
    hp = pruning_hparams("exact")
    return {
        "layer (TF)": hp,
        "global": hp.replace(pruning_scope="global"),
        "erk": hp.replace(sparsity_distribution="erk"),
        "2:4": hp.replace(sparsity_type="2:4", target_sparsity=0.5),
        "channel": hp.replace(sparsity_type="channel"),
        "output": hp.replace(pruning_scope="output"),
    }


def measure_train(model: dict, rounds: int, lr: float = 1e-3) -> list[dict]:
    params, batch, loss_fn = mlp_model(**model)
    txs = {"plain": optax.adam(lr)}
    for name, hp in train_variants().items():
        txs[name] = optax.chain(optax.adam(lr), jaxprune.magnitude_pruning(hp))
    runners = {}
    for name, tx in txs.items():
        p = copy_tree(params)
        runners[name] = Runner(make_step(loss_fn, tx), p, copy_tree(tx.init(p)), batch)
    interleaved(runners, FREQ, 2)  # warm-up: compile, 2 mask updates each
    res = interleaved(runners, FREQ, rounds)
    plain_blocks = [sum(t for _, t in blk) for blk in res["plain"]]
    plain_steps = [t for blk in res["plain"] for _, t in blk]
    rows = []
    for name in txs:
        if name == "plain":
            continue
        blocks = [sum(t for _, t in blk) for blk in res[name]]
        upd = [t for blk in res[name] for s, t in blk if s % FREQ == 0]
        non = [t for blk in res[name] for s, t in blk if s % FREQ != 0]
        per_round = np.asarray(blocks) / np.asarray(plain_blocks)
        rows.append(
            dict(
                type=name,
                plain_ms=median_ms(plain_steps),
                non_update_ms=median_ms(non),
                update_ms=median_ms(upd),
                amortised=float(np.median(blocks) / np.median(plain_blocks)),
                amortised_range=(float(per_round.min()), float(per_round.max())),
                non_update=median_ms(non) / median_ms(plain_steps),
                update=median_ms(upd) / median_ms(plain_steps),
                steps=len(plain_steps),
            )
        )
    return rows


TRAIN_HEADER = (
    "| type | plain step ms | non-update ms | update ms | amortised ratio [per-round range] "
    "| non-update ratio | update ratio | steps each |\n"
    "|---|---|---|---|---|---|---|---|"
)


def train_line(r: dict) -> str:
    lo, hi = r["amortised_range"]
    return (
        f"| {r['type']} | {r['plain_ms']:.2f} | {r['non_update_ms']:.2f} | {r['update_ms']:.2f} "
        f"| **{r['amortised']:.3f}** [{lo:.3f}-{hi:.3f}] | {r['non_update']:.3f} "
        f"| {r['update']:.3f} | {r['steps']} |"
    )


# ------------------------------------------------------------------------ main


def main(argv=None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of sections 1-2")
    parser.add_argument("--rounds", type=int, default=None, help="10-step rounds of section 3")
    parser.add_argument("--sections", default="global,weight,train")
    args = parser.parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 9)
    rounds = args.rounds or (2 if quick else 10)
    sections = args.sections.split(",")
    t0 = time.perf_counter()
    print(machine())
    out: dict[str, list[dict]] = {}
    if "global" in sections:
        print("\nGlobal threshold (sparsity 0.9) vs per-layer exact thresholds, same kernels\n")
        print(GLOBAL_HEADER)
        out["global"] = measure_global(GLOBAL_QUICK if quick else GLOBAL_MODELS, repeats)
        print("global threshold and masks == NumPy (concatenate, partition): verified.")
        print(f"({time.perf_counter() - t0:.0f} s so far)")
    if "weight" in sections:
        print("\nMasks of one weight vs one read pass sum(|w|)\n")
        print(WEIGHT_HEADER)
        out["weight"] = measure_weight(256 if quick else 4096, repeats)
        print("N:M and channel kept counts, output and layer masks == NumPy: verified.")
        print(f"({time.perf_counter() - t0:.0f} s so far)")
    if "train" in sections:
        model = dict(width=128, depth=4, batch=32) if quick else dict()
        width = model.get("width", 1024)
        print(
            f"\nTrain-step overhead vs plain adam, MLP 4x({width}x{width}), masks every {FREQ} "
            "steps, sparsity 0 -> 0.9 (2:4: 0.5) over 1000 steps\n"
        )
        print(TRAIN_HEADER, flush=True)
        out["train"] = measure_train(model, rounds)
        print("\n".join(train_line(r) for r in out["train"]))
    print(f"\nengine_cost total {time.perf_counter() - t0:.0f} s")
    return out


if __name__ == "__main__":
    main()
