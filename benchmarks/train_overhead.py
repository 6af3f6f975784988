"""Train-step overhead of jaxprune: optax.adam vs optax.chain(adam, magnitude_pruning(hp)).

The same jitted step (value_and_grad, tx.update, apply_updates; params and optimizer state
donated) runs with and without pruning. Variants (``--separate`` methods): the separate,
TF-shaped mask update, ``optax.chain(adam, p.masks_transform())`` in the step and
``jax.jit(p.update_masks, donate_argnums=(0, 1))`` after it, called every step
(``separate``) or only on the update steps (``separate, update steps only``), and both in
one jitted step (``separate, in the step``). Pruning is active throughout: begin_pruning_step=0,
pruning_frequency=10, the sparsity ramps from 0 to 0.9 over 1000 steps, so every 10th step
recomputes all masks (an exact k-th largest per kernel) and the others only apply them.

Timing: blocks of 10 steps of each variant alternate in one process (the order flips every
round), every step is timed with ``block_until_ready``. Reported:

* ``amortised``: ratio of the median 10-step block times (each block holds one mask update),
* ``non-update``: median pruned non-update step / median plain step,
* ``update``: median pruned mask-update step / median plain step.

Each ratio is also given per round (the variant's block, or median step, over plain adam's
in the same round): its median and min-max.

Usage: python benchmarks/train_overhead.py [--models mlp,cnn] [--rounds 15] [--methods exact]
       [--separate exact]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax
from common import (
    Runner,
    cnn_model,
    copy_tree,
    interleaved,
    machine,
    make_step,
    median_ms,
    mlp_model,
)

import jaxprune

FREQ = 10


def pruning_hparams(method: str = "exact") -> jaxprune.PruningHParams:
    return jaxprune.get_pruning_hparams().replace(
        begin_pruning_step=0,
        pruning_frequency=FREQ,
        target_sparsity=0.9,
        sparsity_function_begin_step=0,
        sparsity_function_end_step=1000,
        threshold_method=method,
    )


MODELS = {
    "mlp": ("MLP 4x(1024x1024), batch 256", mlp_model),
    "cnn": ("CNN conv32-conv64-dense256-dense10, 32x32x3, batch 64", cnn_model),
}


def _separate_steps(loss_fn, lr: float, method: str) -> dict[str, tuple]:
    """The separate mask update's variants: name -> (step, tx)."""
    pruning = jaxprune.Pruning(pruning_hparams(method))
    tx = optax.chain(optax.adam(lr), pruning.masks_transform())
    train = make_step(loss_fn, tx)
    update_masks = jax.jit(pruning.update_masks, donate_argnums=(0, 1))

    def every_step(params, opt_state, x, y):
        params, opt_state, loss = train(params, opt_state, x, y)
        params, opt_state = update_masks(params, opt_state)
        return params, opt_state, loss

    count = [0]

    def update_steps_only(params, opt_state, x, y):
        params, opt_state, loss = train(params, opt_state, x, y)
        count[0] += 1
        if count[0] % FREQ == 0:  # begin 0, end -1: the pruning steps
            params, opt_state = update_masks(params, opt_state)
        return params, opt_state, loss

    def in_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        params, opt_state = pruning.update_masks(optax.apply_updates(params, updates), opt_state)
        return params, opt_state, loss

    return {
        f"{method}, separate": (every_step, tx),
        f"{method}, separate, update steps only": (update_steps_only, tx),
        f"{method}, separate, in the step": (jax.jit(in_step, donate_argnums=(0, 1)), tx),
    }


def _spread(values) -> tuple[float, float, float]:
    values = np.asarray(values)
    return float(np.median(values)), float(values.min()), float(values.max())


def measure(
    model: str, methods: list[str], rounds: int, lr: float = 1e-3, separate: tuple = ()
) -> list[dict]:
    """Times plain adam and adam + pruning (one variant per method) on ``model``."""
    params, batch, loss_fn = MODELS[model][1]()
    steps = {"plain": (make_step(loss_fn, optax.adam(lr)), optax.adam(lr))}
    for m in methods:
        tx = optax.chain(optax.adam(lr), jaxprune.magnitude_pruning(pruning_hparams(m)))
        steps[m] = (make_step(loss_fn, tx), tx)
    for m in separate:
        steps.update(_separate_steps(loss_fn, lr, m))
    runners = {}
    for name, (step, tx) in steps.items():
        p = copy_tree(params)
        runners[name] = Runner(step, p, copy_tree(tx.init(p)), batch)
    # Warm-up: compile and run 2 blocks (20 steps, 2 mask updates) of each.
    interleaved(runners, FREQ, 2)
    res = interleaved(runners, FREQ, rounds)
    plain_blocks = [sum(t for _, t in blk) for blk in res["plain"]]
    plain_steps = [t for blk in res["plain"] for _, t in blk]
    rows = []
    for m in [name for name in steps if name != "plain"]:
        blocks = [sum(t for _, t in blk) for blk in res[m]]
        upd = [t for blk in res[m] for s, t in blk if s % FREQ == 0]
        non = [t for blk in res[m] for s, t in blk if s % FREQ != 0]
        per_round = {"amortised": [], "non_update": [], "update": []}
        for blk, plain_blk in zip(res[m], res["plain"], strict=True):
            plain = np.median([t for _, t in plain_blk])
            per_round["amortised"].append(sum(t for _, t in blk) / sum(t for _, t in plain_blk))
            per_round["non_update"].append(np.median([t for s, t in blk if s % FREQ]) / plain)
            per_round["update"].append(np.median([t for s, t in blk if s % FREQ == 0]) / plain)
        rows.append(
            {
                "model": model,
                "method": m,
                "plain_step_ms": median_ms(plain_steps),
                "non_update_ms": median_ms(non),
                "update_ms": median_ms(upd),
                "amortised": float(np.median(blocks) / np.median(plain_blocks)),
                "non_update": median_ms(non) / median_ms(plain_steps),
                "update": median_ms(upd) / median_ms(plain_steps),
                "per_round": {k: _spread(v) for k, v in per_round.items()},
                "steps": len(plain_steps),
            }
        )
    return rows


def traffic(model: str, lr: float = 1e-3) -> list[str]:
    """XLA's cost analysis of each jitted train step: bytes accessed and temp bytes.

    A structural figure, not a timing: it shows whether pruning adds passes over memory.
    """
    params, (x, y), loss_fn = MODELS[model][1]()
    pruning = jaxprune.Pruning(pruning_hparams())
    txs = {
        "plain adam": optax.adam(lr),
        "one-line chain": optax.chain(
            optax.adam(lr), jaxprune.magnitude_pruning(pruning_hparams())
        ),
        "masks_transform (separate)": optax.chain(optax.adam(lr), pruning.masks_transform()),
    }
    lines = []
    base = None
    for name, tx in txs.items():
        compiled = make_step(loss_fn, tx).lower(params, tx.init(params), x, y).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        moved = float(cost.get("bytes accessed", float("nan")))
        base = moved if base is None else base
        temp = compiled.memory_analysis().temp_size_in_bytes
        lines.append(
            f"| {model} | {name} | {moved / 1e6:.1f} | {moved / base:.3f} | {temp / 2**20:.1f} |"
        )
    return lines


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | plain step ms | pruned non-update ms | pruned update ms "
        "| amortised ratio | non-update ratio | update ratio | steps each |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {MODELS[r['model']][0]} | {r['method']} | {r['plain_step_ms']:.2f} "
            f"| {r['non_update_ms']:.2f} | {r['update_ms']:.2f} | **{r['amortised']:.3f}** "
            f"| {r['non_update']:.3f} | {r['update']:.3f} | {r['steps']} |"
        )
    lines += [
        "",
        "Per round (ratio to plain adam in the same round): median [min-max]",
        "",
        "| model | method | amortised | non-update | update |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            "{:.3f} [{:.3f}-{:.3f}]".format(*r["per_round"][k])
            for k in ("amortised", "non_update", "update")
        ]
        lines.append(f"| {r['model']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--methods", default="exact")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--separate", default="exact", help="methods of the separate-update variants ('' for none)"
    )
    args = parser.parse_args(argv)
    separate = tuple(m for m in args.separate.split(",") if m)
    print(machine())
    rows = []
    for model in args.models.split(","):
        rows += measure(model, args.methods.split(","), args.rounds, separate=separate)
    print(table(rows), flush=True)
    lines = [
        "",
        "Train step, XLA cost analysis (bytes accessed per step, ratio to plain adam, temp):",
        "",
        "| model | step | MB accessed | ratio | temp MiB |",
        "|---|---|---|---|---|",
    ]
    for model in args.models.split(","):
        lines += traffic(model)
    print("\n".join(lines), flush=True)
    return rows


if __name__ == "__main__":
    main()
