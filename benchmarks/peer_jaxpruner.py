"""jaxprune and jaxpruner (google-research/jaxpruner, the JAX peer) side by side, one table.

Model: benchmarks/common.py's MLP 4x(1024x1024), batch 256, MSE, adam(1e-3); gradual magnitude
pruning 0 -> 0.9 (cubic) over 1000 steps, masks every 10 steps, uniform per-layer sparsity;
also global (one ranking over every kernel) and 2:4 (groups along the last axis, as jaxpruner).

Each library is measured in its own process, on its own jax (jaxprune here, jax 0.10.2;
jaxpruner in its venv, jax 0.5.3, run by ``peer_jaxpruner_side.py``), by the same harness
(``peer_jaxpruner_side.time_training`` / ``time_calls``), against its own plain adam step:

* train step: blocks of 10 steps (one mask update each) of plain adam and of every pruned
  variant alternate, every step timed with ``block_until_ready``, order flipped every round;
  per round, amortised = pruned block / plain block, non-update = median pruned non-update
  step / median plain step, update = the mask-update step / median plain step.
* mask update: the whole model's masks at sparsity 0.9 as one jitted call (jaxprune:
  ``Pruning(hp).mask_update``; jaxpruner: ``update_state``), and one 4096x4096 float32 weight at
  0.9 (``weight_mask``; jaxpruner's ``topk_fn(calculate_scores(w))``), each interleaved with a
  read pass ``sum(|w|)`` over the same weights; the ratio is taken per round.

Figures are median [min-max] over rounds. jaxprune runs the one-line chain
``optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(hp))``; jaxpruner runs
``wrap_optax(adam)`` plus ``post_gradient_update`` on the params each step, as its colabs do, with
``PolynomialSchedule(update_start_step=1, update_end_step=1001)`` so that its masks get the same
sparsities from the same weights (see the ``+1`` note in ``peer_jaxpruner_side.main``).

It then compares behaviour on a small MLP (final per-layer sparsities, masks after training,
one-shot masks of the same weights, ties, the schedule).

Set up the peer once, from the project root (not a dependency of jaxprune)::

    bash ../shared/peers/setup-jaxpruner.sh ../.peer-venvs/jaxpruner

Usage: python benchmarks/peer_jaxpruner.py [--rounds 5] [--mask-rounds 3] [--peer-python PATH]
       python benchmarks/peer_jaxpruner.py --quick    # smoke run: small sizes, 1 round
Without the peer venv it prints jaxprune's rows only and says how to create it (exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peer_jaxpruner_side as side
from common import machine, mlp_model

import jaxprune

FREQ, TARGET, END = side.FREQ, side.TARGET, side.END
ROOT = pathlib.Path(__file__).resolve().parent.parent
SETUP = "bash ../shared/peers/setup-jaxpruner.sh ../.peer-venvs/jaxpruner"


def hparams(**kw) -> jaxprune.PruningHParams:
    base = dict(
        begin_pruning_step=0,
        pruning_frequency=FREQ,
        target_sparsity=TARGET,
        sparsity_function_begin_step=0,
        sparsity_function_end_step=END,
    )
    return jaxprune.get_pruning_hparams().replace(**{**base, **kw})


# The rows, per library: name -> jaxprune hparams (jaxpruner's are in peer_jaxpruner_side.main).
VARIANTS = {
    "uniform": hparams(),
    "global": hparams(pruning_scope="global"),
    "2:4": hparams(sparsity_type="2:4", target_sparsity=0.5, sparsity_axis=-1),
    # The TF-shaped separate update (Pruning.masks_transform + update_masks) is not a row
    # here: train_overhead.py measures it against plain adam on this same MLP (section 1).
}
LABELS = {
    "uniform": ("chain(adam, magnitude_pruning)", "wrap_optax + post_gradient_update"),
    "global": ("pruning_scope='global'", "GlobalMagnitudePruning (L2-normalised)"),
    "2:4": ("sparsity_type='2:4', axis -1", "NByM(2, 4)"),
}


def find_peer_python(given: str | None) -> pathlib.Path | None:
    """--peer-python, else ``.peer-venvs/jaxpruner/bin/python`` beside the root or above it."""
    if given:
        return pathlib.Path(given)
    for parent in ROOT.parents:
        candidate = parent / ".peer-venvs" / "jaxpruner" / "bin" / "python"
        if candidate.exists():
            return candidate
    return None


# ------------------------------------------------------------------ jaxprune (this process)


def measure_jaxprune(params, batch, loss_fn, rounds: int, mask_rounds: int, big: int) -> dict:
    t_start = time.perf_counter()
    variants = {"plain": (side.make_step(loss_fn, optax.adam(1e-3)), optax.adam(1e-3), None)}
    for name, hp in VARIANTS.items():
        tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(hp))
        variants[name] = (side.make_step(loss_fn, tx), tx, lambda n: n % FREQ == 0)
    runs = {
        name: (step, side.copy_tree(params), side.copy_tree(tx.init(params)), upd or (lambda n: 0))
        for name, (step, tx, upd) in variants.items()
    }
    train = side.time_training(runs, batch, rounds)
    t_train = time.perf_counter() - t_start

    calls = {"model_read": (jax.jit(side.model_read_pass), (params,))}
    for name, hp in VARIANTS.items():
        pruning = jaxprune.Pruning(hp)
        calls[name] = (pruning.mask_update, (params, pruning.init(params), END))
    w = jnp.asarray(side.big_weight(big))
    hp = VARIANTS["uniform"]
    big_fn = jax.jit(lambda w, s: jaxprune.weight_mask(w, s, hparams=hp)[1])
    calls["big"] = (big_fn, (w, TARGET))
    calls["big_read"] = (jax.jit(side.big_read_pass), (w,))
    times, first = side.time_calls(calls, mask_rounds)
    kept = {
        name: side.check_masks(name, first[name].masks, params, ties_kept=True) for name in VARIANTS
    }
    side.check_masks(
        "uniform", {"big": {"kernel": first["big"]}}, {"big": {"kernel": w}}, ties_kept=True
    )
    return {
        "library": f"jaxprune (jax {jax.__version__})",
        "train": train,
        "masks": {name: side.mask_stats(times, name, "model_read") for name in VARIANTS},
        "kept": kept,
        "big": side.mask_stats(times, "big", "big_read"),
        "seconds": {
            "train": t_train,
            "masks": time.perf_counter() - t_start - t_train,
            "total": time.perf_counter() - t_start,
        },
    }


# ------------------------------------------------------------------ behaviour


def small_mlp(seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(32, 64), (64, 64), (64, 16)]
    params = {
        f"dense{i}": {
            "kernel": (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32),
            "bias": np.zeros(s[1], np.float32),
        }
        for i, s in enumerate(sizes)
    }
    x = rng.standard_normal((64, 32)).astype(np.float32)
    y = rng.standard_normal((64, 16)).astype(np.float32)
    return params, x, y


def behaviour_jaxprune(small, x, y, ties, end: int, steps: int) -> dict:
    """The same runs as the peer's behaviour part, with jaxprune."""
    small = jax.tree.map(jnp.asarray, small)
    hp = hparams(sparsity_function_end_step=end)
    tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(hp))
    step = side.make_step(side.mlp_loss, tx)
    p, s = side.copy_tree(small), tx.init(small)
    for _ in range(steps):
        p, s, _ = step(p, s, jnp.asarray(x), jnp.asarray(y))
    masks = jaxprune.get_pruning_state(s).masks
    out = {}
    for layer in p:
        out[f"trained_{layer}"] = np.asarray(p[layer]["kernel"])
        out[f"trained_mask_{layer}"] = np.asarray(masks[layer]["kernel"])
    one_shot = {
        "oneshot": (hp, TARGET),
        "oneshot_global": (hp.replace(pruning_scope="global"), TARGET),
        "oneshot_24": (VARIANTS["2:4"], None),
    }
    for key, (h, sparsity) in one_shot.items():
        _, m = jaxprune.prune(small, h, sparsity=sparsity)
        for layer in small:
            out[f"{key}_{layer}"] = np.asarray(m[layer]["kernel"])
    _, m = jaxprune.prune({"w": jnp.asarray(ties)}, hp, sparsity=0.5)
    out["ties_mask"] = np.asarray(m["w"])
    schedule = jaxprune.sparsity_schedule(hp)
    out["schedule"] = np.array([float(schedule(c)) for c in range(0, end + 1, FREQ)], np.float32)
    return out


def compare_behaviour(ours: dict, peer: dict | None, end: int, steps: int) -> list[str]:
    layers = sorted(k.removeprefix("trained_mask_") for k in ours if k.startswith("trained_mask_"))

    def sparsities(d):
        return ", ".join(f"{float(np.mean(d[f'trained_{k}'] == 0)):.4f}" for k in layers)

    sizes = [ours[f"trained_{k}"].size for k in layers]
    expect = ", ".join(f"{1 - round(n * (1 - TARGET)) / n:.4f}" for n in sizes)
    lines = [
        f"Behaviour, small MLP 32-64-64-16 ({'/'.join(map(str, sizes))} kernel entries), "
        f"adam(1e-3), 0 -> {TARGET} over {end} steps, masks every {FREQ}, {steps} steps:",
        f"- final kernel sparsity (target: keep round({1 - TARGET:.1f} n), i.e. {expect}): "
        f"jaxprune {sparsities(ours)}" + (f"; jaxpruner {sparsities(peer)}" if peer else ""),
    ]
    if peer is None:
        return lines
    shared = [int(np.sum(ours[f"trained_mask_{k}"] & peer[f"trained_mask_{k}"])) for k in layers]
    kept = [int(np.sum(ours[f"trained_mask_{k}"])) for k in layers]
    lines.append(
        "- masks after training: kept entries in common "
        + ", ".join(f"{s}/{k}" for s, k in zip(shared, kept, strict=True))
        + " (the runs diverge: jaxpruner applies the masks it computes at count c from step c+1 "
        "on, jaxprune from step c itself, and the jax versions round differently)"
    )

    def diff(key, peer_key=None):
        return sum(
            int(np.sum(ours[f"{key}_{k}"] != peer[f"{peer_key or key}_{k}"])) for k in layers
        )

    lines.append(
        "- one-shot masks of the same weights, entries that differ: "
        f"uniform 0.9: {diff('oneshot')}; global 0.9, raw |w|: {diff('oneshot_global')}; "
        f"global 0.9 vs jaxpruner's default L2-normalised ranking: "
        f"{diff('oneshot_global', 'oneshot_global_normalized')}; "
        f"2:4 along the last axis: {diff('oneshot_24')}"
    )
    ties_ours, ties_peer = int(ours["ties_mask"].sum()), int(peer["ties_mask"].sum())
    n_ties = ours["ties_mask"].size
    lines.append(
        f"- ties (a {n_ties}-entry weight rounded to 0.1, sparsity 0.5): jaxprune keeps "
        f"{ties_ours} (every entry tied at the threshold, TF's rule), jaxpruner {ties_peer} "
        "(exactly round(n/2), the lowest flat indices among the tied)"
    )
    counts = peer["counts"]
    aligned = float(np.max(np.abs(ours["schedule"] - peer["schedule_aligned"])))
    first = [int(c) for c in counts[peer["updates_default"]]][:2]
    lines.append(
        f"- schedule: jaxprune updates at steps {FREQ}, {2 * FREQ}, ... with s(step) from the "
        "weights after that step; jaxpruner (start=1, end=end+1, as run here) at counts "
        f"{FREQ}, {2 * FREQ}, ... from the same weights, max |sparsity difference| {aligned:.1e}. "
        f"With its plain start=0, end={end}, it updates at counts {first[0]}, {first[1]}, ... "
        f"with s(c+1): {float(peer['schedule_default'][0]):.4f} already at count 0, "
        f"{float(peer['schedule_default'][1]):.4f} vs {float(ours['schedule'][1]):.4f} at "
        f"count {FREQ}"
    )
    return lines


# ------------------------------------------------------------------ table


def fmt(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def table(results: list[dict], big: int) -> str:
    lines = [
        "| library | variant | plain adam step ms | amortised step ratio | non-update step ratio "
        "| mask-update step ratio | mask update, whole model ms | / read pass "
        f"| mask {big}x{big} at {TARGET} ms | / read pass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for which, res in enumerate(results):
        for name, tr in res["train"].items():
            m = res["masks"][name]
            big = res["big"] if name == "uniform" else None
            digits = 1 if m["ms"]["median"] >= 100 else 2
            lines.append(
                f"| {res['library']} | {name}: {LABELS[name][which]} | {tr['plain_step_ms']:.1f} "
                f"| **{fmt(tr['amortised'], 3)}** | {fmt(tr['non_update'], 3)} "
                f"| {fmt(tr['update'])} | {fmt(m['ms'], digits)} | {fmt(m['vs_read'], 1)} "
                + (f"| {fmt(big['ms'], 1)} | {fmt(big['vs_read'], 1)} |" if big else "| - | - |")
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured 10-step blocks")
    parser.add_argument("--mask-rounds", type=int, default=3, help="timed mask updates")
    parser.add_argument("--peer-python", default=None, help="python of jaxpruner's venv")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: MLP 4x256, a 1024x1024 weight, 1 round"
    )
    args = parser.parse_args(argv)
    width, big = (256, 1024) if args.quick else (1024, side.BIG)
    if args.quick:
        args.rounds = args.mask_rounds = 1
    t0 = time.perf_counter()
    print(machine())
    peer_python = find_peer_python(args.peer_python)
    params, batch, loss_fn = mlp_model(width=width)
    small, x, y = small_mlp()
    ties = np.round(np.random.default_rng(1).standard_normal((32, 32)), 1).astype(np.float32)
    end, steps = 100, 101
    with tempfile.TemporaryDirectory() as tmp:
        side.save_tree(os.path.join(tmp, "mlp.npz"), params, x=batch[0], y=batch[1])
        side.save_tree(
            os.path.join(tmp, "behaviour.npz"), small, x=x, y=y, ties=ties, end=end, steps=steps
        )
        ours = measure_jaxprune(params, batch, loss_fn, args.rounds, args.mask_rounds, big)
        ours_b = behaviour_jaxprune(small, x, y, ties, end, steps)
        peer = peer_b = None
        t_peer = 0.0
        if peer_python is None or not peer_python.exists():
            print(
                f"\njaxpruner's venv not found ({peer_python or '.peer-venvs/jaxpruner'}); "
                f"create it from the project root with `{SETUP}` or pass --peer-python. "
                "jaxprune's rows only.\n"
            )
        else:
            cmd = [
                str(peer_python),
                str(pathlib.Path(__file__).with_name("peer_jaxpruner_side.py")),
                "--data",
                tmp,
                "--rounds",
                str(args.rounds),
                "--mask-rounds",
                str(args.mask_rounds),
                "--big",
                str(big),
            ]
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            t_peer = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            t_peer = time.perf_counter() - t_peer
            if proc.returncode != 0:
                print(table([ours], big))
                sys.exit(f"jaxpruner side failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            with open(os.path.join(tmp, "peer.json")) as f:
                peer = json.load(f)
            with np.load(os.path.join(tmp, "peer_behaviour.npz")) as f:
                peer_b = {k: f[k] for k in f.files}
    results = [ours] + ([peer] if peer else [])
    print(
        f"\nMLP 4x({width}x{width}), batch 256, adam(1e-3), magnitude pruning 0 -> {TARGET} "
        f"over {END} steps, masks every {FREQ} steps; median [min-max] over {args.rounds} "
        f"rounds (train) and {args.mask_rounds} (masks); ratios are to the same process's plain "
        "adam step / read pass.\n"
    )
    print(table(results, big))
    print(
        "\nKept entries per kernel in the whole-model mask update (checked against NumPy; "
        "jaxprune keeps magnitudes tied with the k-th largest, jaxpruner breaks ties by index): "
        + "; ".join(
            f"{res['library'].split()[0]} {name} {res['kept'][name]}"
            for res in results
            for name in ("uniform", "global")
        )
    )
    print()
    print("\n".join(compare_behaviour(ours_b, peer_b, end, steps)))

    def secs_of(res):
        s = res["seconds"]
        return f"{s['total']:.0f} s (train {s['train']:.0f}, masks {s['masks']:.0f})"

    secs = f"jaxprune {secs_of(ours)}"
    if peer:
        secs += f", jaxpruner process {t_peer:.0f} s: {secs_of(peer)}, python {peer['python']}"
    print(f"\ntotal {time.perf_counter() - t0:.0f} s ({secs})")


if __name__ == "__main__":
    main()
