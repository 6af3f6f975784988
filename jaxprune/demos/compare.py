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
      ``{"rows": [...], "history": {...}, "shrink": {...}, ...}``, also written to
      ``<out>/compare.json``: per method its test accuracy and sparsity, and the test accuracy
      every ``demo.EVAL_EVERY`` steps; the schedule, versions and device of the run.
    """
    start = time.perf_counter()
    os.makedirs(config.out, exist_ok=True)
    data = demo.load_data(config.seed)
    print(
        f"jaxprune demo --compare: {len(data[0])} train / {len(data[2])} test digits, "
        f"{config.steps} steps per run, target sparsity {config.target_sparsity:.0%}"
    )
    width = max(len("dense"), *(len(m.name) for m in methods))  # the progress bars' labels
    dense = demo.train(f"{'dense':>{width}}", config, data, None)
    rows = [{"method": "dense", "hparams": "", "sparsity": 0.0, "accuracy": dense.accuracy}]
    histories = {"dense": dense.history}
    for method in methods:
        hp = method_hparams(method, config)
        run = demo.train(
            f"{method.name:>{width}}", config, data, hp, params_filter=method_filter(method)
        )
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
        "history": {
            name: {k: h[k] for k in ("eval_step", "test_accuracy")} for name, h in histories.items()
        },
        "schedule": demo.default_schedule(config.steps),
        "steps": config.steps,
        "seed": config.seed,
        "target_sparsity": config.target_sparsity,
        "test_digits": len(data[2]),
        "device": str(jax.devices()[0]),
        "versions": {"jaxprune": jaxprune.__version__, "jax": jax.__version__},
    }
    if "shrunk" in locals():
        summary["shrink"] = shrunk
    print()
    print(format_compare(summary))
    if "shrink" in summary:
        print()
        print(format_shrink(summary["shrink"]))
    if config.plots:
        summary["plots"] = [os.path.basename(write_plot(config.out, summary))]
    summary["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(config.out, "compare.json"), "w") as f:
        json.dump(summary, f, indent=2)
    written = ", ".join(["compare.json", *summary.get("plots", [])])
    print(f"\nwrote {written} to {os.path.abspath(config.out)} ({summary['wall_seconds']:.0f} s)")
    return summary


def shrink_story(model: Any, data: tuple[np.ndarray, ...], repeats: int = 15) -> dict[str, Any]:
    """Takes the pruned channels out of a channel-pruned demo CNN and measures what it buys.

    The trained model (every variable: params and BatchNorm statistics) is split with
    ``nnx.split`` and :func:`jaxprune.shrink` traces ``fn(variables, x)`` on the test images.
    Returns the sizes, the per-array report, the test accuracy and the inference time (the
    whole test set as one batch, jitted, interleaved, median of ``repeats``) of the model
    before (``"pruned"``: channel-pruned, the pruned channels still in its arrays as zeros) and
    after shrinking (``"shrunk"``).

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
    pruned_fn, small_jit = jax.jit(fn), jax.jit(small_fn)
    outputs = {
        "pruned": np.asarray(pruned_fn(variables, x_test)),
        "shrunk": np.asarray(small_jit(small_variables, x_test)),
    }
    times: dict[str, list[float]] = {"pruned": [], "shrunk": []}
    for _ in range(repeats):  # interleaved, so that load on the machine hits both alike
        for name, f, v in (
            ("pruned", pruned_fn, variables),
            ("shrunk", small_jit, small_variables),
        ):
            start = time.perf_counter()
            jax.block_until_ready(f(v, x_test))
            times[name].append(time.perf_counter() - start)
    sizes = {
        "pruned": _count(nnx.to_pure_dict(variables)),
        "shrunk": _count(small_variables),
    }
    return {
        "parameters": {k: v[0] for k, v in sizes.items()},
        "bytes": {k: v[1] for k, v in sizes.items()},
        "accuracy": {k: float(np.mean(o.argmax(-1) == y_test)) for k, o in outputs.items()},
        "max_abs_logit_difference": float(np.max(np.abs(outputs["pruned"] - outputs["shrunk"]))),
        "milliseconds": {k: 1e3 * float(np.median(t)) for k, t in times.items()},
        "batch": int(x_test.shape[0]),
        "report": jaxprune.format_report(small_fn.report),
    }


def _count(tree: Any) -> tuple[int, int]:
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return int(sum(x.size for x in leaves)), int(sum(x.nbytes for x in leaves))


#: The two models of the shrink table: the channel-pruned CNN as trained, then shrunk.
SHRINK_ROWS = {
    "pruned": "channel-pruned (zeros kept)",
    "shrunk": "shrunk (channels taken out)",
}


def format_shrink(story: dict[str, Any]) -> str:
    """The shrink part of the comparison: what was removed, sizes, speed and accuracy.

    Both rows are the channel-pruned model: as trained (the pruned channels are zeros inside
    full-size arrays) and after :func:`jaxprune.shrink` took them out; the dense baseline is
    the comparison table's.

    Args:
      story: what :func:`shrink_story` returns.

    Returns:
      The table as text.

    Examples:
      >>> from jaxprune.demos.compare import format_shrink
      >>> print(format_shrink({"report": "(report)", "parameters": {"pruned": 100, "shrunk": 40},
      ...     "bytes": {"pruned": 400, "shrunk": 160}, "milliseconds": {"pruned": 2.0,
      ...     "shrunk": 1.0}, "accuracy": {"pruned": 0.9, "shrunk": 0.9}, "batch": 360,
      ...     "max_abs_logit_difference": 1e-6}))
      channel-pruned CNN, pruned channels taken out with jaxprune.shrink:
      (report)
      model                        parameters      bytes   ms / batch of 360   test accuracy
      channel-pruned (zeros kept)         100        400               2.000         90.00 %
      shrunk (channels taken out)          40        160               1.000         90.00 %
      shrunk / channel-pruned          0.400x                         0.500x
      (max |logit difference| 1e-06)
    """
    p, b, t, a = (story[k] for k in ("parameters", "bytes", "milliseconds", "accuracy"))
    width = max(len(label) for label in SHRINK_ROWS.values())
    lines = [
        "channel-pruned CNN, pruned channels taken out with jaxprune.shrink:",
        story["report"],
        f"{'model':<{width}} {'parameters':>10} {'bytes':>10} "
        f"{'ms / batch of ' + str(story['batch']):>19} {'test accuracy':>15}",
    ]
    for k, label in SHRINK_ROWS.items():
        lines.append(
            f"{label:<{width}} {p[k]:>10,d} {b[k]:>10,d} {t[k]:>19.3f} {a[k] * 100:>13.2f} %"
        )
    lines.append(
        f"{'shrunk / channel-pruned':<{width}} {p['shrunk'] / p['pruned']:>9.3f}x {'':>10} "
        f"{t['shrunk'] / t['pruned']:>18.3f}x"
    )
    lines.append(f"(max |logit difference| {story['max_abs_logit_difference']:.0e})")
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


def format_compare_markdown(summary: dict[str, Any]) -> str:
    """The comparison table in Markdown, as the README shows it.

    Args:
      summary: what :func:`compare_methods` returns (``rows``).

    Returns:
      The table: method, sparsity over all kernels, test accuracy, and the difference to dense.

    Examples:
      >>> from jaxprune.demos.compare import format_compare_markdown
      >>> print(format_compare_markdown({"rows": [
      ...     {"method": "dense", "sparsity": 0.0, "accuracy": 0.98},
      ...     {"method": "global", "sparsity": 0.8, "accuracy": 0.97}]}))
      | method | sparsity over all kernels | test accuracy | vs dense |
      |---|---|---|---|
      | dense | 0.0 % | 98.00 % | |
      | global | 80.0 % | 97.00 % | -1.00 % |
    """
    dense = summary["rows"][0]["accuracy"]
    lines = [
        "| method | sparsity over all kernels | test accuracy | vs dense |",
        "|---|---|---|---|",
    ]
    for row in summary["rows"]:
        diff = "" if row["method"] == "dense" else f"{(row['accuracy'] - dense) * 100:+.2f} %"
        lines.append(
            f"| {row['method']} | {row['sparsity'] * 100:.1f} % | {row['accuracy'] * 100:.2f} % "
            f"| {diff} |".replace("|  |", "| |")
        )
    return "\n".join(lines)


def write_plot(out: str, summary: dict[str, Any]) -> str:
    """Writes ``compare.png``: accuracy while training, final accuracy, what shrinking bought.

    Left, the test accuracy of every run during training, the sparsity ramp shaded. Middle,
    each method's final test accuracy on an axis zoomed to the runs' range (one test digit is
    ``1 / test_digits``), dense as a dashed line. Right (when a channel-pruned run was shrunk),
    the shrunk model's parameters, bytes and inference time relative to the channel-pruned one.

    Args:
      out: the output directory.
      summary: what :func:`compare_methods` collected (``rows``, ``history``, ``schedule``,
        ``test_digits`` and ``shrink``, if any).

    Returns:
      The path written.
    """
    from matplotlib.figure import Figure

    rows, story = summary["rows"], summary.get("shrink")
    fig = Figure(figsize=(16 if story else 11.5, 5), layout="constrained")
    axes = fig.subplots(1, 3 if story else 2, width_ratios=[1.25, 1, 0.9] if story else [1.25, 1])
    fig.suptitle(
        f"Pruning methods on the digits CNN: {summary['steps']} steps each, target sparsity "
        f"{summary['target_sparsity']:.0%}, seed {summary['seed']}",
        fontsize=11,
    )

    # 1. Test accuracy while training.
    ax = axes[0]
    lowest = 100.0
    for i, row in enumerate(rows):
        history = summary["history"][row["method"]]
        dense = row["method"] == "dense"
        ax.plot(
            history["eval_step"],
            np.asarray(history["test_accuracy"]) * 100,
            "o-" if dense else ".-",
            color="k" if dense else f"C{i - 1}",
            lw=2.2 if dense else 1.3,
            ms=3,
            label=row["method"],
            zorder=3 if dense else 2,
        )
        lowest = min(lowest, *(a * 100 for a in history["test_accuracy"]))
    schedule = summary["schedule"]
    ax.axvspan(
        schedule["sparsity_function_begin_step"],
        schedule["sparsity_function_end_step"],
        color="gray",
        alpha=0.12,
        label="sparsity ramp",
    )
    ax.set(
        xlabel="training step",
        ylabel="test accuracy (%)",
        title="Test accuracy while training",
        ylim=(max(0.0, lowest - 1.0), 100.3),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8, frameon=False)

    # 2. Final accuracy per method, zoomed to the runs' range.
    ax = axes[1]
    digit = 100.0 / summary.get("test_digits", 360)
    acc = np.asarray([r["accuracy"] for r in rows]) * 100
    y = np.arange(len(rows))
    ax.axvline(acc[0], color="k", ls="--", lw=1)
    ax.hlines(y, acc.min() - 10, acc, color="lightgray", lw=1, zorder=1)
    ax.scatter(acc, y, color=["k", *(f"C{i}" for i in range(len(rows) - 1))], s=45, zorder=3)
    labels = [
        f"{r['method']}\n{a:.2f} % at {r['sparsity']:.1%} sparse"
        for r, a in zip(rows, acc, strict=True)
    ]
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(acc.min() - 2 * digit, acc.max() + 2 * digit)
    ax.set(
        xlabel=f"final test accuracy (%); dashed: dense; one test digit = {digit:.2f} %",
        title="Final test accuracy",
    )
    ax.grid(axis="x", alpha=0.3)

    # 3. What shrinking the channel-pruned model bought.
    if story:
        ax = axes[2]
        p, b, t = (story[k] for k in ("parameters", "bytes", "milliseconds"))
        bars = [
            ("parameters", p["shrunk"] / p["pruned"], f"{p['pruned']:,} -> {p['shrunk']:,}"),
            ("bytes", b["shrunk"] / b["pruned"], f"{b['pruned']:,} -> {b['shrunk']:,}"),
            (
                f"inference time\n(batch of {story['batch']})",
                t["shrunk"] / t["pruned"],
                f"{t['pruned']:.2f} -> {t['shrunk']:.2f} ms",
            ),
        ]
        y = np.arange(len(bars))
        ratios = [r for _, r, _ in bars]
        ax.barh(y, ratios, color=["C4", "C4", "C2"], height=0.55)
        for yi, (_, ratio, text) in enumerate(bars):
            ax.annotate(
                f"{ratio:.3f}x  ({text})",
                (ratio, yi),
                xytext=(5, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.axvline(1.0, color="k", ls="--", lw=1)
        ax.set_yticks(y, [name for name, _, _ in bars], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(2.3, 2.0 * max(ratios)))
        a = story["accuracy"]
        ax.set(
            xlabel="shrunk / channel-pruned (1 = no change)",
            title=(
                "jaxprune.shrink on the channel-pruned model\n"
                f"test accuracy {a['pruned']:.2%} before and {a['shrunk']:.2%} after"
            ),
        )
        ax.title.set_fontsize(10)
        ax.grid(axis="x", alpha=0.3)
    path = os.path.join(out, "compare.png")
    fig.savefig(path, dpi=100)
    return path
