"""jaxpruner's half of ``benchmarks/peer_jaxpruner.py``; runs in jaxpruner's own venv (jax 0.5.3).

It imports only the standard library, jax, optax, numpy and (inside :func:`main`) jaxpruner, so
that it runs with the peer venv's python. The timing harness (everything above ``main``) does
not touch jaxpruner: the driver imports it too, so both libraries are timed by the same code,
each in its own process.

Usage (the driver runs it; see ``peer_jaxpruner.py``)::

    PEER_PYTHON benchmarks/peer_jaxpruner_side.py --data DIR --rounds N --mask-rounds M [--big B]

``DIR`` holds ``mlp.npz`` and ``behaviour.npz`` written by the driver; this writes
``DIR/peer.json`` (timings) and ``DIR/peer_behaviour.npz`` (final masks of the behaviour run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

FREQ = 10  # mask update every FREQ steps; one timed block = FREQ steps = one mask update
TARGET = 0.9
END = 1000  # the sparsity ramp ends at step END (jaxprune's sparsity_function_end_step)
BIG = 4096  # one BIG x BIG weight for the single-weight mask time


# ------------------------------------------------------------------ model (= common.mlp_model)


def mlp_loss(p, x, y):
    """benchmarks/common.py's mlp_model loss: ReLU MLP over ``dense{i}``, MSE."""
    h = x
    depth = len(p)
    for i in range(depth):
        h = h @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"]["bias"]
        if i < depth - 1:
            h = jax.nn.relu(h)
    return jnp.mean((h - y) ** 2)


def save_tree(path: str, params: dict, **extra) -> None:
    """Saves a two-level dict of arrays (``layer/name``) plus extra arrays as one npz."""
    flat = {f"{k}/{n}": np.asarray(v) for k, d in params.items() for n, v in d.items()}
    np.savez(path, **flat, **{k: np.asarray(v) for k, v in extra.items()})


def load_tree(path: str) -> tuple[dict, dict]:
    """Inverse of :func:`save_tree`: (two-level dict of jnp arrays, other arrays)."""
    params, extra = {}, {}
    with np.load(path) as f:
        for key in f.files:
            if "/" in key:
                layer, name = key.split("/")
                params.setdefault(layer, {})[name] = jnp.asarray(f[key])
            else:
                extra[key] = f[key]
    return params, extra


def big_weight(n: int = BIG) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)


# ------------------------------------------------------------------ timing harness (both sides)


def make_step(loss_fn: Callable, tx, post: Callable | None = None) -> Callable:
    """``step(params, opt_state, x, y) -> (params, opt_state, loss)``, jitted, buffers donated.

    ``post(params, opt_state)`` runs on the new params inside the step (jaxpruner's
    ``post_gradient_update``).
    """

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if post is not None:
            params = post(params, opt_state)
        return params, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def copy_tree(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def summary(values) -> dict:
    v = [float(x) for x in values]
    return {"median": float(np.median(v)), "min": min(v), "max": max(v), "n": len(v)}


def time_training(variants: dict, batch: tuple, rounds: int, warmup: int = 1) -> dict:
    """Interleaved blocks of FREQ single-step timings; returns per-variant train-step ratios.

    Args:
      variants: name -> (step, params, opt_state, is_update), with ``"plain"`` among them;
        ``is_update(n)`` says whether the n-th call (1-based) updates the masks.
      batch: (x, y).
      rounds: measured rounds; each runs one block of every variant, order flipped every round.
      warmup: unmeasured rounds first (compilation; jaxprune's first mask update).

    Returns:
      name -> {amortised, non_update, update: summaries over rounds of the ratio to the plain
      block of the same round; plain_step_ms and step_ms: medians over all steps}.
    """
    live = {name: [v[1], v[2], 0] for name, v in variants.items()}
    names = list(variants)
    blocks: dict[str, list] = {name: [] for name in names}
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            step, is_update = variants[name][0], variants[name][3]
            params, opt_state, n = live[name]
            block = []
            for _ in range(FREQ):
                t0 = time.perf_counter()
                params, opt_state, loss = step(params, opt_state, *batch)
                jax.block_until_ready((params, opt_state, loss))
                dt = time.perf_counter() - t0
                n += 1
                block.append((bool(is_update(n)), dt))
            live[name] = [params, opt_state, n]
            if r >= warmup:
                blocks[name].append(block)
    out = {}
    plain = blocks["plain"]
    plain_steps = [t for blk in plain for _, t in blk]
    for name in names:
        if name == "plain":
            continue
        amortised, non_update, update = [], [], []
        for blk, pblk in zip(blocks[name], plain, strict=True):
            n_upd = sum(u for u, _ in blk)
            if n_upd != 1:  # the protocol needs exactly one mask update per block
                raise RuntimeError(f"{name}: {n_upd} mask updates in a {FREQ}-step block")
            ptimes = [t for _, t in pblk]
            pmed = float(np.median(ptimes))
            amortised.append(sum(t for _, t in blk) / sum(ptimes))
            non_update.append(float(np.median([t for u, t in blk if not u])) / pmed)
            update.append(sum(t for u, t in blk if u) / pmed)
        out[name] = {
            "amortised": summary(amortised),
            "non_update": summary(non_update),
            "update": summary(update),
            "plain_step_ms": 1e3 * float(np.median(plain_steps)),
            "step_ms": 1e3 * float(np.median([t for blk in blocks[name] for _, t in blk])),
        }
    return out


def time_calls(calls: dict, rounds: int) -> tuple[dict, dict]:
    """name -> (fn, args): one warm-up call each, then ``rounds`` interleaved timed calls.

    Returns (name -> list of seconds, one per round, order flipped every round; name -> the
    warm-up call's output, for checks).
    """
    names = list(calls)
    first = {}
    for name in names:
        fn, args = calls[name]
        first[name] = jax.block_until_ready(fn(*args))
    times: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, args = calls[name]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return times, first


def mask_stats(times: dict, subject: str, read: str) -> dict:
    """Summaries of the subject's ms and of its per-round ratio to the read pass."""
    return {
        "ms": summary([1e3 * t for t in times[subject]]),
        "read_ms": summary([1e3 * t for t in times[read]]),
        "vs_read": summary([s / r for s, r in zip(times[subject], times[read], strict=True)]),
    }


def check_masks(variant: str, masks: dict, params: dict, ties_kept: bool) -> list[int]:
    """Raises unless the kernel masks keep what ``variant`` asks for at TARGET; returns the counts.

    uniform keeps k = round(0.1 n) per kernel, global k of all kernels together, 2:4 half of
    each. With ``ties_kept`` (jaxprune, TF's rule) uniform and global also keep every magnitude
    tied with the k-th largest, so the expected count is ``sum(|w| >= k-th largest)`` (NumPy).
    """
    layers = sorted(masks)
    kept = [int(np.sum(np.asarray(masks[layer]["kernel"]))) for layer in layers]
    mags = [np.abs(np.asarray(params[layer]["kernel"])).ravel() for layer in layers]

    def expected(a):
        k = round(a.size * (1 - TARGET))
        return int(np.sum(a >= np.partition(a, a.size - k)[a.size - k])) if ties_kept else k

    if variant == "uniform":
        ok = kept == [expected(a) for a in mags]
    elif variant == "global":
        ok = sum(kept) == expected(np.concatenate(mags))
    else:  # 2:4
        ok = kept == [a.size // 2 for a in mags]
    if not ok:
        raise RuntimeError(f"{variant}: kept {kept} of {[a.size for a in mags]}")
    return kept


def model_read_pass(params):
    """One read pass over every kernel: ``sum(|w|)``."""
    return sum(jnp.sum(jnp.abs(d["kernel"])) for d in params.values())


def big_read_pass(w):
    return jnp.sum(jnp.abs(w))


# ------------------------------------------------------------------ jaxpruner


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mask-rounds", type=int, default=3)
    parser.add_argument("--big", type=int, default=BIG, help="side of the single weight")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # jax.tree_map in jaxpruner

    import functools

    import jaxpruner
    from jaxpruner import sparsity_distributions as sd
    from jaxpruner import sparsity_types as st

    t_start = time.perf_counter()

    # jaxpruner's PolynomialSchedule uses progress (count + 1 - start) / (end - start) and updates
    # when start <= count <= end, count % freq == 0, with the masks computed from the params
    # before this step. start=1, end=END+1 gives the masks at count c the sparsity
    # target * (1 - (1 - c/END)**3), the same value jaxprune (TF) uses for the masks it computes
    # from the same weights (those after c steps), and no update at count 0.
    def schedule(start=1, end=END + 1):
        return jaxpruner.PolynomialSchedule(
            update_freq=FREQ, update_start_step=start, update_end_step=end
        )

    def uniform(sparsity=TARGET, sparsity_type=None, sched=None):
        kw = {} if sparsity_type is None else {"sparsity_type": sparsity_type}
        return jaxpruner.MagnitudePruning(
            sparsity_distribution_fn=functools.partial(sd.uniform, sparsity=sparsity),
            scheduler=sched or schedule(),
            **kw,
        )

    pruners = {
        "uniform": uniform(),
        "global": jaxpruner.GlobalMagnitudePruning(sparsity=TARGET, scheduler=schedule()),
        "2:4": uniform(0.5, st.NByM(2, 4)),
    }

    def is_update(n):  # the n-th call (1-based) runs with count n - 1
        return (n - 1) % FREQ == 0 and 1 <= n - 1 <= END + 1

    def never(n):
        return False

    # ---- train steps
    params, extra = load_tree(os.path.join(args.data, "mlp.npz"))
    batch = (jnp.asarray(extra["x"]), jnp.asarray(extra["y"]))
    tx_plain = optax.adam(1e-3)
    variants = {"plain": (make_step(mlp_loss, tx_plain), None, None, never)}
    for name, pruner in pruners.items():
        tx = pruner.wrap_optax(optax.adam(1e-3))
        variants[name] = (make_step(mlp_loss, tx, pruner.post_gradient_update), None, tx, is_update)
    variants = {
        name: (step, copy_tree(params), copy_tree((tx or tx_plain).init(params)), upd)
        for name, (step, _, tx, upd) in variants.items()
    }
    train = time_training(variants, batch, args.rounds)
    t_train = time.perf_counter() - t_start

    # ---- mask updates: the whole model (at count END: sparsity TARGET) and one BIG x BIG weight
    calls = {"model_read": (jax.jit(model_read_pass), (params,))}
    for name, pruner in pruners.items():
        state = pruner.wrap_optax(optax.identity()).init(params)
        state = state._replace(count=jnp.asarray(END, jnp.int32))
        fn = jax.jit(lambda p, s, pruner=pruner: pruner.update_state(s, p, None).masks)
        calls[name] = (fn, (params, state))
    w = jnp.asarray(big_weight(args.big))
    mp = jaxpruner.MagnitudePruning()  # Unstructured: mask_calculator.topk_mask_calculator
    calls["big"] = (jax.jit(lambda w, s: mp.topk_fn(mp.calculate_scores(w), s)), (w, TARGET))
    calls["big_read"] = (jax.jit(big_read_pass), (w,))
    times, first = time_calls(calls, args.mask_rounds)
    kept = {name: check_masks(name, first[name], params, ties_kept=False) for name in pruners}
    check_masks("uniform", {"big": {"kernel": first["big"]}}, {"big": {"kernel": w}}, False)
    masks = {name: mask_stats(times, name, "model_read") for name in pruners}
    big = mask_stats(times, "big", "big_read")
    t_masks = time.perf_counter() - t_start - t_train

    # ---- behaviour on a small MLP
    small, bextra = load_tree(os.path.join(args.data, "behaviour.npz"))
    sbatch = (jnp.asarray(bextra["x"]), jnp.asarray(bextra["y"]))
    end = int(bextra["end"])
    out_arrays = {}
    pruner = uniform(sched=schedule(1, end + 1))
    tx = pruner.wrap_optax(optax.adam(1e-3))
    step = make_step(mlp_loss, tx, pruner.post_gradient_update)
    p, s = copy_tree(small), tx.init(small)
    for _ in range(int(bextra["steps"])):
        p, s, _ = step(p, s, *sbatch)
    for layer in p:
        out_arrays[f"trained_{layer}"] = np.asarray(p[layer]["kernel"])
        out_arrays[f"trained_mask_{layer}"] = np.asarray(s.masks[layer]["kernel"]).astype(bool)
    one_shot = {
        "oneshot": uniform(),
        "oneshot_global": jaxpruner.GlobalMagnitudePruning(
            sparsity=TARGET, scheduler=schedule(), use_normalization=False
        ),
        "oneshot_global_normalized": jaxpruner.GlobalMagnitudePruning(
            sparsity=TARGET, scheduler=schedule()
        ),
        "oneshot_24": uniform(0.5, st.NByM(2, 4)),
    }
    for key, pr in one_shot.items():
        _, m = pr.instant_sparsify(small)
        for layer in small:
            out_arrays[f"{key}_{layer}"] = np.asarray(m[layer]["kernel"]).astype(bool)
    ties = jnp.asarray(bextra["ties"])
    out_arrays["ties_mask"] = np.asarray(mp.topk_fn(mp.calculate_scores(ties), 0.5)).astype(bool)
    counts = np.arange(0, end + 1, FREQ)
    for key, sched in (("aligned", schedule(1, end + 1)), ("default", schedule(0, end))):
        out_arrays[f"schedule_{key}"] = np.array(
            [float(sched.get_sparsity_at_step(TARGET, jnp.int32(c))) for c in counts], np.float32
        )
        out_arrays[f"updates_{key}"] = np.array(
            [bool(sched.is_mask_update_iter(jnp.int32(c))) for c in counts]
        )
    np.savez(os.path.join(args.data, "peer_behaviour.npz"), counts=counts, **out_arrays)

    result = {
        "library": f"jaxpruner (jax {jax.__version__})",
        "python": sys.version.split()[0],
        "train": train,
        "masks": masks,
        "kept": kept,
        "big": big,
        "seconds": {
            "train": t_train,
            "masks": t_masks,
            "total": time.perf_counter() - t_start,
        },
    }
    with open(os.path.join(args.data, "peer.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
