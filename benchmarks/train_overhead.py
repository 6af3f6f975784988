"""Train-step overhead of jaxprune: optax.adam vs optax.chain(adam, magnitude_pruning(hp)).

The same jitted step (value_and_grad, tx.update, apply_updates; params and optimizer state
donated) runs with and without pruning. Pruning is active throughout: begin_pruning_step=0,
pruning_frequency=10, the sparsity ramps from 0 to 0.9 over 1000 steps, so every 10th step
recomputes all masks (an exact k-th largest per kernel) and the others only apply them.

Timing: blocks of 10 steps of each variant alternate in one process (the order flips every
round), every step is timed with ``block_until_ready``. Reported:

* ``amortised``: ratio of the median 10-step block times (each block holds one mask update),
* ``non-update``: median pruned non-update step / median plain step,
* ``update``: median pruned mask-update step / median plain step.

Usage: python benchmarks/train_overhead.py [--models mlp,cnn] [--rounds 15] [--methods exact]
"""

from __future__ import annotations

import argparse

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


def measure(model: str, methods: list[str], rounds: int, lr: float = 1e-3) -> list[dict]:
    """Times plain adam and adam + pruning (one variant per method) on ``model``."""
    params, batch, loss_fn = MODELS[model][1]()
    txs = {"plain": optax.adam(lr)}
    for m in methods:
        txs[m] = optax.chain(optax.adam(lr), jaxprune.magnitude_pruning(pruning_hparams(m)))
    runners = {}
    for name, tx in txs.items():
        p = copy_tree(params)
        runners[name] = Runner(make_step(loss_fn, tx), p, copy_tree(tx.init(p)), batch)
    # Warm-up: compile and run 2 blocks (20 steps, 2 mask updates) of each.
    interleaved(runners, FREQ, 2)
    res = interleaved(runners, FREQ, rounds)
    plain_blocks = [sum(t for _, t in blk) for blk in res["plain"]]
    plain_steps = [t for blk in res["plain"] for _, t in blk]
    rows = []
    for m in methods:
        blocks = [sum(t for _, t in blk) for blk in res[m]]
        upd = [t for blk in res[m] for s, t in blk if s % FREQ == 0]
        non = [t for blk in res[m] for s, t in blk if s % FREQ != 0]
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
                "steps": len(plain_steps),
            }
        )
    return rows


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
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--methods", default="exact")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print(machine())
    rows = []
    for model in args.models.split(","):
        rows += measure(model, args.methods.split(","), args.rounds)
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
