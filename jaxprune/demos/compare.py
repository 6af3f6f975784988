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
import jax.numpy as jnp
import numpy as np

import jaxprune
from jaxprune.demos import demo


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
        if isinstance(hp.sparsity_type, str) and hp.sparsity_type == "channel":
            shrunk = shrink_story(run.model, data)
    summary: dict[str, Any] = {
        "rows": rows,
        "steps": config.steps,
        "seed": config.seed,
        "target_sparsity": config.target_sparsity,
        "device": str(jax.devices()[0]),
    }
    if "shrunk" in locals():
        summary["shrink"] = shrunk
    print()
    print(format_compare(summary))
    if "shrink" in summary:
        print()
        print(format_shrink(summary["shrink"]))
    if config.plots:
        summary["plots"] = [_plot(config.out, histories, rows)]
    summary["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(config.out, "compare.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"\nwrote compare.json to {os.path.abspath(config.out)} ({summary['wall_seconds']:.0f} s)"
    )
    return summary


def shrink_story(model: Any, data: tuple[np.ndarray, ...], repeats: int = 15) -> dict[str, Any]:
    """Takes the pruned channels out of a channel-pruned demo CNN and measures what it buys.

    The trained model (every variable: params and BatchNorm statistics) is split with
    ``nnx.split`` and :func:`jaxprune.shrink` traces ``fn(variables, x)`` on the test images.
    Returns the sizes, the per-array report, both models' test accuracy and the inference time
    of both (the whole test set as one batch, jitted, interleaved, median of ``repeats``).

    Args:
      model: the trained ``nnx`` CNN of a channel-pruned run.
      data: ``(x_train, y_train, x_test, y_test)``.
      repeats: timed calls of each model.

    Returns:
      A dict for ``compare.json`` (and :func:`format_shrink`).
    """
    from flax import nnx

    x_test, y_test = jnp.asarray(data[2]), np.asarray(data[3])
    graphdef, variables = nnx.split(model)

    def fn(variables, x):
        return nnx.merge(graphdef, variables)(x, train=False)

    small_variables, small_fn = jaxprune.shrink(fn, variables, x_test)
    dense_fn, small_jit = jax.jit(fn), jax.jit(small_fn)
    outputs = {
        "dense": np.asarray(dense_fn(variables, x_test)),
        "shrunk": np.asarray(small_jit(small_variables, x_test)),
    }
    times: dict[str, list[float]] = {"dense": [], "shrunk": []}
    for _ in range(repeats):  # interleaved, so that load on the machine hits both alike
        for name, f, v in (("dense", dense_fn, variables), ("shrunk", small_jit, small_variables)):
            start = time.perf_counter()
            jax.block_until_ready(f(v, x_test))
            times[name].append(time.perf_counter() - start)
    sizes = {
        "dense": _count(nnx.to_pure_dict(variables)),
        "shrunk": _count(small_variables),
    }
    return {
        "parameters": {k: v[0] for k, v in sizes.items()},
        "bytes": {k: v[1] for k, v in sizes.items()},
        "accuracy": {k: float(np.mean(o.argmax(-1) == y_test)) for k, o in outputs.items()},
        "max_abs_logit_difference": float(np.max(np.abs(outputs["dense"] - outputs["shrunk"]))),
        "milliseconds": {k: 1e3 * float(np.median(t)) for k, t in times.items()},
        "batch": int(x_test.shape[0]),
        "report": jaxprune.format_report(small_fn.report),
    }


def _count(tree: Any) -> tuple[int, int]:
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return int(sum(x.size for x in leaves)), int(sum(x.nbytes for x in leaves))


def format_shrink(story: dict[str, Any]) -> str:
    """The shrink part of the comparison: what was removed, sizes, speed and accuracy.

    Examples:
      >>> from jaxprune.demos.compare import format_shrink
      >>> print(format_shrink({"report": "(report)", "parameters": {"dense": 100, "shrunk": 40},
      ...     "bytes": {"dense": 400, "shrunk": 160}, "milliseconds": {"dense": 2.0, "shrunk": 1.0},
      ...     "accuracy": {"dense": 0.9, "shrunk": 0.9}, "batch": 360,
      ...     "max_abs_logit_difference": 1e-6}))
      channel-pruned CNN, pruned channels taken out with jaxprune.shrink:
      (report)
      model      parameters      bytes   ms / batch of 360   test accuracy
      dense             100        400               2.000          90.00 %
      shrunk             40        160               1.000          90.00 %
      shrunk / dense  0.400x                        0.500x   (max |logit difference| 1e-06)
    """
    p, b, t, a = (story[k] for k in ("parameters", "bytes", "milliseconds", "accuracy"))
    lines = [
        "channel-pruned CNN, pruned channels taken out with jaxprune.shrink:",
        story["report"],
        f"{'model':<10} {'parameters':>10} {'bytes':>10} "
        f"{'ms / batch of ' + str(story['batch']):>19} {'test accuracy':>15}",
    ]
    for k in ("dense", "shrunk"):
        lines.append(f"{k:<10} {p[k]:>10,d} {b[k]:>10,d} {t[k]:>19.3f} {a[k] * 100:>13.2f} %")
    lines.append(
        f"{'shrunk / dense':<14} {p['shrunk'] / p['dense']:>6.3f}x {'':>10} "
        f"{t['shrunk'] / t['dense']:>19.3f}x   "
        f"(max |logit difference| {story['max_abs_logit_difference']:.0e})"
    )
    return "\n".join(lines)


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
      >>> from jaxprune.demos.compare import format_compare
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
