"""``jaxprune demo-wanda``: one-shot pruning of a small language model, magnitude vs Wanda.

Trains (or loads from ``--out``) the byte-level transformer LM of :mod:`jaxprune.demos.lm` on
Python's standard-library sources, then prunes every linear layer of its blocks once (the
embeddings and the LM head stay dense, as in the Wanda paper), with no weight update:

* magnitude, layer scope: every weight keeps its largest ``|w|`` (Wanda's magnitude baseline);
* magnitude, output scope: every output unit keeps its largest ``|w|``;
* Wanda: scores ``|w| * ||x||`` from :func:`jaxprune.activation_norms` over a few calibration
  batches of the training split (:func:`jaxprune.wanda_scores`), output scope;
* the same Wanda scores with layer scope (the paper's comparison-group ablation);

at 50 % unstructured and at 2:4 (magnitude 2:4 vs Wanda 2:4). It also prunes one block at a time
(that block's linear layers, the rest dense). It prints the held-out perplexity table and writes
``wanda.json`` and ``wanda.png`` to ``--out`` (and the trained model, ``lm_checkpoint.npz``,
reused by later runs with the same settings).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

import jaxprune
from jaxprune.demos import lm

CHECKPOINT = "lm_checkpoint.npz"
#: Short names of the methods (per-block table and plot), in the order of METHODS.
BLOCK_LABELS = ("mag layer", "mag output", "Wanda output", "Wanda layer", "mag 2:4", "Wanda 2:4")


@dataclasses.dataclass(frozen=True)
class Method:
    """One pruning method of the table.

    Attributes:
      key: its key in ``wanda.json``.
      label: its name in the table.
      scope: ``pruning_scope``.
      sparsity_type: ``"unstructured"`` (at 50 %) or ``"2:4"``.
      wanda: rank by Wanda's scores rather than ``|w|``.
    """

    key: str
    label: str
    scope: str
    sparsity_type: str
    wanda: bool

    def hparams(self) -> jaxprune.PruningHParams:
        """The method's hyperparameters (target 50 %)."""
        return jaxprune.get_pruning_hparams().replace(
            name="wanda_demo",
            target_sparsity=0.5,
            pruning_scope=self.scope,
            sparsity_type=self.sparsity_type,
        )


#: The compared methods. Wanda proper compares weights within each output unit; "Wanda, layer
#: scope" (the same scores compared over the whole weight) is the paper's comparison-group
#: ablation. With 2:4 the scope does not matter (every group of 4 lies inside one output unit).
METHODS = (
    Method("magnitude_layer", "magnitude", "layer", "unstructured", False),
    Method("magnitude_output", "magnitude", "output", "unstructured", False),
    Method("wanda", "Wanda", "output", "unstructured", True),
    Method("wanda_layer", "Wanda", "layer", "unstructured", True),
    Method("magnitude_2:4", "magnitude", "output", "2:4", False),
    Method("wanda_2:4", "Wanda", "output", "2:4", True),
)


@dataclasses.dataclass(frozen=True)
class WandaDemoConfig:
    """Settings of ``jaxprune demo-wanda``.

    Attributes:
      model: the language model's shape.
      steps: training steps (batch ``batch_size`` windows of ``model.seq_len + 1`` bytes).
      batch_size: training windows per step.
      learning_rate: peak learning rate.
      seed: seed of the initialisation, the training batches and the calibration batches.
      calibration_batches: calibration batches (of the training split) for the norms.
      calibration_batch_size: windows of ``model.seq_len`` bytes per calibration batch.
      eval_windows: held-out windows evaluated (evenly spaced over the held-out split).
      out: directory for ``wanda.json``, ``wanda.png`` and the checkpoint.
      retrain: train even if a matching checkpoint is in ``out``.
      progress: show a progress bar while training.
      plots: write ``wanda.png``.
    """

    model: lm.LMConfig = dataclasses.field(default_factory=lm.LMConfig)
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0
    calibration_batches: int = 8
    calibration_batch_size: int = 16
    eval_windows: int = 512
    out: str = "demo_wanda_out"
    retrain: bool = False
    progress: bool = True
    plots: bool = True

    def train_config(self) -> lm.TrainConfig:
        """The :class:`lm.TrainConfig` of the run."""
        return lm.TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=0.0,
            seed=self.seed,
        )


# -- model: train or load -------------------------------------------------------------------------


def _checkpoint_key(config: WandaDemoConfig, corpus: lm.Corpus) -> dict[str, Any]:
    """What identifies a trained model: its shape, its training and its corpus."""
    return {
        "model": dataclasses.asdict(config.model),
        "train": dataclasses.asdict(config.train_config()),
        "corpus_sha256": corpus.digest,
        "jax": jax.__version__,
    }


def load_or_train(
    config: WandaDemoConfig, corpus: lm.Corpus
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Loads the trained LM from ``<out>/lm_checkpoint.npz`` if it matches, else trains and saves.

    A checkpoint matches when it was trained with the same model shape, training settings,
    corpus (SHA-256 of the files) and JAX version.

    Args:
      config: the demo settings.
      corpus: the corpus.

    Returns:
      ``(graphdef, params, info)``; ``info`` has ``loaded`` (bool), ``train_seconds`` and
      ``train_losses`` (the per-step training loss, empty when loaded).
    """
    key = _checkpoint_key(config, corpus)
    path = os.path.join(config.out, CHECKPOINT)
    graphdef, template = lm.init_lm(config.model, config.seed)
    if not config.retrain and os.path.exists(path):
        with np.load(path) as f:
            if json.loads(str(f["__key__"])) == key:
                flat, treedef = jax.tree_util.tree_flatten_with_path(template)
                leaves = [np.asarray(f[jaxprune.path_name(p)]) for p, _ in flat]
                params = jax.tree.unflatten(treedef, [jax.numpy.asarray(x) for x in leaves])
                return graphdef, params, {"loaded": True, "train_seconds": 0.0, "train_losses": []}
    start = time.perf_counter()
    graphdef, params, losses = lm.train_lm(
        config.model, config.train_config(), corpus.train, progress=config.progress
    )
    seconds = time.perf_counter() - start
    arrays = {
        jaxprune.path_name(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    os.makedirs(config.out, exist_ok=True)
    payload: dict[str, Any] = {"__key__": np.array(json.dumps(key)), **arrays}
    np.savez(path, **payload)
    return graphdef, params, {"loaded": False, "train_seconds": seconds, "train_losses": losses}


# -- pruning and evaluation -----------------------------------------------------------------------


def calibration_data(config: WandaDemoConfig, corpus: lm.Corpus) -> list[np.ndarray]:
    """The calibration batches: random windows of the TRAIN split (seeded, not the held-out)."""
    batches = lm.random_windows(
        corpus.train,
        config.model.seq_len,
        config.calibration_batch_size,
        config.calibration_batches,
        seed=config.seed + 1_000_003,
    )
    return [b[:, :-1] for b in batches]


def block_filter(block: int) -> Callable[[str, Any], bool]:
    """The ``params_filter`` of the linear kernels of one block."""

    def keep(name: str, leaf: Any) -> bool:
        return lm.is_block_linear(name, leaf) and name.startswith(f"blocks/{block}/")

    return keep


def prune_method(
    params: Any, method: Method, scores: Any, params_filter: Callable[[str, Any], bool]
) -> Any:
    """Prunes ``params`` once with ``method`` (Wanda scores or ``|w|``): the pruned params."""
    pruned, _ = jaxprune.prune(
        params,
        method.hparams(),
        scores=scores if method.wanda else None,
        params_filter=params_filter,
    )
    return pruned


def pruned_fraction(params: Any, params_filter: Callable[[str, Any], bool]) -> float:
    """Fraction of exact zeros in the leaves selected by ``params_filter``."""
    zeros = size = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if params_filter(jaxprune.path_name(path), leaf):
            zeros += int(np.sum(np.asarray(leaf) == 0))
            size += leaf.size
    return zeros / size


def run_wanda_demo(config: WandaDemoConfig) -> dict[str, Any]:
    """Trains or loads the LM, prunes it with every method, prints the table, writes the outputs.

    Args:
      config: the demo settings.

    Returns:
      The summary, also written to ``<out>/wanda.json``: ``dense`` and ``overall`` (per method:
      ``nll``, ``perplexity``, ``sparsity``), ``per_block`` (per block and method: the held-out
      NLL with only that block pruned), and the settings, corpus, timings and versions.
    """
    start = time.perf_counter()
    os.makedirs(config.out, exist_ok=True)
    corpus = lm.load_corpus()
    mc = config.model
    print(
        f"jaxprune demo-wanda: byte-level transformer LM ({mc.n_layers} blocks, d={mc.d_model}, "
        f"{mc.n_heads} heads, {mc.activation} MLP {mc.d_ff}, context {mc.seq_len}) on "
        f"{len(corpus.files)} standard-library modules of Python {platform.python_version()} "
        f"({len(corpus.train):,} train / {len(corpus.heldout):,} held-out bytes), "
        f"on {jax.devices()[0].platform}"
    )
    graphdef, params, info = load_or_train(config, corpus)
    apply = lm.make_apply(graphdef)
    if info["loaded"]:
        print(f"loaded the trained model from {os.path.join(config.out, CHECKPOINT)}")
    else:
        print(
            f"trained {config.steps} steps x {config.batch_size} windows in "
            f"{info['train_seconds']:.0f} s (final training loss {info['train_losses'][-1]:.3f})"
        )
    heldout = lm.windows(corpus.heldout, mc.seq_len, config.eval_windows)
    # What follows takes about as long as training on a CPU: one bar over all of it.
    evaluations = 1 + len(METHODS) * (1 + mc.n_layers)
    print(
        f"calibrating on {config.calibration_batches} batches, then pruning with "
        f"{len(METHODS)} methods (all blocks, then each of the {mc.n_layers} blocks alone): "
        f"{evaluations} evaluations of {len(heldout)} held-out windows"
    )
    progress = _Progress(1 + evaluations, config.progress)
    dense = lm.mean_nll(apply, params, heldout)
    progress.step("dense")

    t0 = time.perf_counter()
    calibration = calibration_data(config, corpus)
    norms = jaxprune.activation_norms(apply, params, calibration, params_filter=lm.is_block_linear)
    scores = jaxprune.wanda_scores(params, norms)
    jax.block_until_ready(scores)
    norm_seconds = time.perf_counter() - t0
    progress.step("calibrated")

    overall: dict[str, dict[str, float]] = {}
    for method, label in zip(METHODS, BLOCK_LABELS, strict=True):
        pruned = prune_method(params, method, scores, lm.is_block_linear)
        nll = lm.mean_nll(apply, pruned, heldout)
        overall[method.key] = {
            "nll": nll,
            "perplexity": lm.perplexity(nll),
            "sparsity": pruned_fraction(pruned, lm.is_block_linear),
        }
        progress.step(f"all blocks, {label}")
    per_block = []
    for block in range(mc.n_layers):
        row: dict[str, Any] = {"block": block}
        for method, label in zip(METHODS, BLOCK_LABELS, strict=True):
            pruned = prune_method(params, method, scores, block_filter(block))
            row[method.key] = lm.mean_nll(apply, pruned, heldout)
            progress.step(f"block {block}, {label}")
        per_block.append(row)
    progress.close()

    names = [
        jaxprune.path_name(p)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if lm.is_block_linear(jaxprune.path_name(p), x)
    ]
    summary: dict[str, Any] = {
        "dense": {"nll": dense, "perplexity": lm.perplexity(dense)},
        "overall": overall,
        "per_block": per_block,
        "methods": [dataclasses.asdict(m) for m in METHODS],
        "pruned_weights": names,
        "model": dataclasses.asdict(mc),
        "train": dataclasses.asdict(config.train_config()),
        "loaded_checkpoint": info["loaded"],
        "train_seconds": info["train_seconds"],
        "train_losses": info["train_losses"],
        "calibration": {
            "batches": config.calibration_batches,
            "batch_size": config.calibration_batch_size,
            "tokens": config.calibration_batches * config.calibration_batch_size * mc.seq_len,
            "seconds": norm_seconds,
        },
        "eval_windows": len(heldout),
        "eval_tokens": int(heldout.shape[0] * (heldout.shape[1] - 1)),
        "corpus": {
            "files": list(corpus.files),
            "train_bytes": len(corpus.train),
            "heldout_bytes": len(corpus.heldout),
            "sha256": corpus.digest,
        },
        "versions": {
            "python": platform.python_version(),
            "jaxprune": jaxprune.__version__,
            "jax": jax.__version__,
        },
        "device": str(jax.devices()[0]),
    }
    print()
    print(format_table(summary))
    if config.plots:
        summary["plots"] = [os.path.basename(write_plot(config.out, summary))]
    summary["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(config.out, "wanda.json"), "w") as f:
        json.dump(summary, f, indent=2)
    written = ", ".join(["wanda.json", *summary.get("plots", []), CHECKPOINT])
    print(f"\nwrote {written} to {os.path.abspath(config.out)} ({summary['wall_seconds']:.0f} s)")
    return summary


class _Progress:
    """A tqdm bar over the pruning and evaluation steps, its label the step just done."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            desc="prune + evaluate",
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def step(self, done: str) -> None:
        self.bar.set_postfix_str(done, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# -- report ---------------------------------------------------------------------------------------


def format_table(summary: dict[str, Any]) -> str:
    """The printed tables: held-out perplexity per method, then the per-block losses.

    Args:
      summary: the dict written to ``wanda.json``.

    Returns:
      The tables as text (the first is Markdown).
    """
    o, dense = summary["overall"], summary["dense"]

    def cell(key):
        return f"{o[key]['perplexity']:.3f}"

    n = len(summary["pruned_weights"])
    lines = [
        f"Held-out perplexity (per byte) after one-shot pruning of the {n} linear layers of the "
        "blocks (no weight update):",
        "",
        "| method | comparison group | 50 % unstructured | 2:4 |",
        "|---|---|---|---|",
        f"| dense | | {dense['perplexity']:.3f} | |",
        f"| magnitude | layer | {cell('magnitude_layer')} | {cell('magnitude_2:4')} |",
        f"| magnitude | output unit | {cell('magnitude_output')} | {cell('magnitude_2:4')} |",
        f"| Wanda | output unit | {cell('wanda')} | {cell('wanda_2:4')} |",
        f"| Wanda | layer | {cell('wanda_layer')} | {cell('wanda_2:4')} |",
        "",
        "(2:4: every group of 4 inputs lies inside one output unit, so the scope does not matter.)",
        "",
        "One block pruned at a time (its linear layers; the others dense): held-out loss "
        f"increase over dense ({dense['nll']:.4f} nats/byte):",
        "",
        f"{'block':>5}" + "".join(f" {label:>13}" for label in BLOCK_LABELS),
    ]
    for row in summary["per_block"]:
        lines.append(
            f"{row['block']:>5}" + "".join(f" {row[m.key] - dense['nll']:>+13.4f}" for m in METHODS)
        )
    return "\n".join(lines)


#: The plot's colours per method key: magnitude in blues, Wanda in reds (2:4 darker).
PLOT_COLORS = {
    "magnitude_layer": "#1f77b4",
    "magnitude_output": "#6baed6",
    "wanda": "#d62728",
    "wanda_layer": "#f4a582",
    "magnitude_2:4": "#08306b",
    "wanda_2:4": "#67000d",
}


def write_plot(out: str, summary: dict[str, Any]) -> str:
    """Writes ``wanda.png``: what each method costs over dense, all blocks and block by block.

    Left, the held-out perplexity increase over dense with all blocks pruned (bars from 0, each
    labelled with its perplexity), 50 % unstructured and 2:4. Right, one panel per block, each
    on its own scale: the loss increase with only that block pruned.

    Args:
      out: the output directory.
      summary: the dict written to ``wanda.json``.

    Returns:
      The path written.
    """
    from matplotlib.figure import Figure

    o, dense = summary["overall"], summary["dense"]
    blocks = summary["per_block"]
    fig = Figure(figsize=(5.5 + 3.2 * len(blocks), 4.8), layout="constrained")
    axes = fig.subplots(1, 1 + len(blocks), width_ratios=[1.7] + [1] * len(blocks))
    fig.suptitle(
        f"One-shot pruning of the demo LM's {len(summary['pruned_weights'])} block linear "
        f"layers, no weight update (dense: perplexity {dense['perplexity']:.3f}, "
        f"loss {dense['nll']:.4f} nats/byte)",
        fontsize=10,
    )
    labels = dict(zip((m.key for m in METHODS), BLOCK_LABELS, strict=True))

    ax = axes[0]
    groups = {
        "50 % unstructured": ("magnitude_layer", "magnitude_output", "wanda", "wanda_layer"),
        "2:4": ("magnitude_2:4", "wanda_2:4"),
    }
    width = 0.2
    for g, keys in enumerate(groups.values()):
        for i, key in enumerate(keys):
            value = o[key]["perplexity"]
            bar = ax.bar(
                g + (i - (len(keys) - 1) / 2) * width,
                value - dense["perplexity"],
                width,
                color=PLOT_COLORS[key],
                label=labels[key],
            )
            ax.bar_label(bar, [f"{value:.2f}"], fontsize=8)
    ax.set_xticks(range(len(groups)), list(groups))
    top = max(r["perplexity"] for r in o.values()) - dense["perplexity"]
    ax.set(
        ylabel="held-out perplexity increase over dense",
        title="All blocks pruned (labels: perplexity)",
        ylim=(0, top * 1.15),
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)

    method_keys = [m.key for m in METHODS]
    for ax, row in zip(axes[1:], blocks, strict=True):
        increases = [row[key] - dense["nll"] for key in method_keys]
        bars = ax.bar(
            range(len(method_keys)), increases, color=[PLOT_COLORS[k] for k in method_keys]
        )
        ax.bar_label(bars, [f"{v:.3f}" for v in increases], fontsize=7)
        ax.set_xticks(
            range(len(method_keys)), [labels[k] for k in method_keys], rotation=45, ha="right"
        )
        ax.tick_params(axis="x", labelsize=8)
        ax.set(
            ylabel="held-out loss increase (nats/byte)",
            title=f"Only block {row['block']} pruned",
            ylim=(0, max(increases) * 1.15),
        )
        ax.grid(axis="y", alpha=0.3)
    path = os.path.join(out, "wanda.png")
    fig.savefig(path, dpi=110)
    return path


__all__: Sequence[str] = (
    "BLOCK_LABELS",
    "METHODS",
    "PLOT_COLORS",
    "Method",
    "WandaDemoConfig",
    "block_filter",
    "calibration_data",
    "format_table",
    "load_or_train",
    "prune_method",
    "pruned_fraction",
    "run_wanda_demo",
    "write_plot",
)
