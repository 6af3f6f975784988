"""``jaxprune demo --compare``: the pruning methods side by side on the demo's CNN and digits.

Trains the demo's CNN once dense and once per method, with the same initial weights, batches,
augmentation and optimizer, pruning with ``optax.chain(adam, jaxprune.magnitude_pruning(hp))``
along the demo's schedule, and reports test accuracy and the achieved sparsity of each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

import jaxprune
from jaxprune._src import demo


@dataclasses.dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
      name: the table's row label.
      hparams: TF HParams string of the method's own fields (on top of the schedule).
      sparsity: its target, or None for the run's ``--target-sparsity``.
      skip: regex of the kernels it leaves dense, beyond conv1 (see :func:`compare_methods`).
    """

    name: str
    hparams: str
    sparsity: float | None = None
    skip: str | None = None


#: The compared methods. conv1 (144 weights, one input channel) stays dense in every run: N:M
#: groups need an input axis that is a multiple of M. Channel pruning also leaves the classifier
#: (dense2) dense: pruning its output channels would remove classes.
METHODS = (
    Method("TF layer (unstructured)", ""),
    Method("global", "pruning_scope=global"),
    Method("ERK", "sparsity_distribution=erk"),
    Method("2:4 (N:M)", "sparsity_type=2:4", sparsity=0.5),
    Method("channel", "sparsity_type=channel", skip="dense2"),
)


def method_hparams(method: Method, config: demo.DemoConfig) -> jaxprune.PruningHParams:
    """The hyperparameters of one compared method: the demo's schedule, the method's fields."""
    target = config.target_sparsity if method.sparsity is None else method.sparsity
    hp = jaxprune.get_pruning_hparams().replace(
        name="compare", target_sparsity=target, **demo.default_schedule(config.steps)
    )
    return hp.parse(method.hparams) if method.hparams else hp


def method_filter(method: Method):
    """The params filter of one method: every kernel but conv1 (and the method's own skips)."""

    def keep(name: str, leaf: Any) -> bool:
        skipped = "conv1/" in name or (method.skip is not None and method.skip in name)
        return jaxprune.default_prunable(name, leaf) and not skipped

    return keep


def compare_methods(config: demo.DemoConfig, methods=METHODS) -> dict[str, Any]:
    """Trains dense and every method; prints the table and writes ``compare.json`` (and a plot).

    Args:
      config: the demo settings (steps, target sparsity, seed, out, progress, plots).
      methods: the methods to compare.

    Returns:
      ``{"rows": [...], "dense_accuracy": ..., ...}``, also written to ``<out>/compare.json``.
    """
    start = time.perf_counter()
    os.makedirs(config.out, exist_ok=True)
    data = demo.load_data(config.seed)
    print(
        f"jaxprune demo --compare: {len(data[0])} train / {len(data[2])} test digits, "
        f"{config.steps} steps per run, target sparsity {config.target_sparsity:.0%}"
    )
    dense = demo.train("dense", config, data, None)
    rows = [{"method": "dense", "hparams": "", "sparsity": 0.0, "accuracy": dense.accuracy}]
    histories = {"dense": dense.history}
    for method in methods:
        hp = method_hparams(method, config)
        run = demo.train(method.name[:6], config, data, hp, params_filter=method_filter(method))
        zeros, size = _zeros(run.params)
        rows.append(
            {
                "method": method.name,
                "hparams": method.hparams,
                "target": hp.target_sparsity,
                "sparsity": zeros / size,
                "accuracy": run.accuracy,
            }
        )
        histories[method.name] = run.history
    summary = {
        "rows": rows,
        "steps": config.steps,
        "seed": config.seed,
        "target_sparsity": config.target_sparsity,
        "device": str(jax.devices()[0]),
    }
    print()
    print(format_compare(summary))
    if config.plots:
        summary["plots"] = [_plot(config.out, histories, rows)]
    summary["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(config.out, "compare.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"\nwrote compare.json to {os.path.abspath(config.out)} ({summary['wall_seconds']:.0f} s)"
    )
    return summary


def _zeros(params: dict[str, Any]) -> tuple[int, int]:
    """Exact zeros and size over every kernel (conv1 included), the demo's 'all prunable'."""
    leaves = [
        np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if jaxprune.default_prunable(jaxprune.path_name(path), leaf)
    ]
    return int(sum((leaf == 0).sum() for leaf in leaves)), int(sum(leaf.size for leaf in leaves))


def format_compare(summary: dict[str, Any]) -> str:
    """The comparison table: method, sparsity over all kernels, test accuracy vs dense.

    Examples:
      >>> from jaxprune._src.compare import format_compare
      >>> print(format_compare({"rows": [
      ...     {"method": "dense", "sparsity": 0.0, "accuracy": 0.98},
      ...     {"method": "global", "sparsity": 0.8, "accuracy": 0.97}]}))
      method                    sparsity   accuracy   vs dense
      --------------------------------------------------------
      dense                        0.0 %    98.00 %
      global                      80.0 %    97.00 %     -1.00 %
    """
    dense = summary["rows"][0]["accuracy"]
    lines = [f"{'method':<24} {'sparsity':>9} {'accuracy':>10} {'vs dense':>10}"]
    lines.append("-" * len(lines[0]))
    for row in summary["rows"]:
        diff = "" if row["method"] == "dense" else f"{(row['accuracy'] - dense) * 100:+9.2f} %"
        lines.append(
            f"{row['method']:<24} {row['sparsity'] * 100:>7.1f} % {row['accuracy'] * 100:>8.2f} %"
            f" {diff}".rstrip()
        )
    return "\n".join(lines)


def _plot(out: str, histories: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, history in histories.items():
        ax1.plot(history["eval_step"], history["test_accuracy"], label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("test accuracy")
    ax1.set_title("Pruning methods on the digits CNN: test accuracy while training")
    ax1.legend()
    names = [r["method"] for r in rows]
    ax2.barh(names, [r["accuracy"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax2.text(
            r["accuracy"], i, f" {r['accuracy']:.1%} @ {r['sparsity']:.0%} sparse", va="center"
        )
    ax2.set_xlim(0, 1.25)
    ax2.invert_yaxis()
    ax2.set_xlabel("final test accuracy (label: accuracy @ sparsity over all kernels)")
    ax2.set_title("Final accuracy and sparsity per method")
    fig.tight_layout()
    path = os.path.join(out, "compare.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
