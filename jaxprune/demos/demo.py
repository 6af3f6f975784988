"""The ``jaxprune demo``: a small Flax CNN trained dense and pruned on scikit-learn's digits.

Everything here needs the optional ``examples`` extra (flax, matplotlib,
scikit-learn, tqdm): ``pip install "jaxprune[examples]"``. The command line
lives in :mod:`jaxprune.demos.cli`; this module holds the data, model, training
loop, report and plots, so the notebooks and tests can reuse them.

The data ship with scikit-learn (``sklearn.datasets.load_digits``: 1797 8x8
grey-scale digits), so nothing is downloaded. Both runs use the same seed, so
they start from the same weights and see the same batches; the only difference
is ``jaxprune.magnitude_pruning`` at the end of the optax chain.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxprune

#: Batch size of both runs.
BATCH_SIZE = 128
#: Peak learning rate of Adam (warm-up then cosine decay to 10 % of it).
LEARNING_RATE = 3e-3
#: Training images are shifted by up to this many pixels (random per image and step).
MAX_SHIFT = 1
#: Test accuracy and loss are evaluated every this many steps (and at the last step).
EVAL_EVERY = 50
#: Fraction of the digits held out as the test set (stratified, seeded).
TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (the command-line flags).

    Attributes:
      target_sparsity: The final sparsity of every prunable weight.
      steps: Training steps of each run (dense and pruned).
      block: ``(height, width)`` of the pruning blocks; ``(1, 1)`` is elementwise.
      method: ``"exact"`` or ``"histogram"`` threshold.
      seed: Seed of the data split, initialisation and batches.
      out: Directory for ``summary.json`` and the plots.
      hparams: A TF HParams string applied last, on top of the demo's defaults
        and the other flags, e.g. ``"pruning_frequency=20,threshold_decay=0.5"``.
      progress: Show tqdm progress bars.
      plots: Write the PNG plots.
    """

    target_sparsity: float = 0.9
    steps: int = 1500
    block: tuple[int, int] = (1, 1)
    method: str = "exact"
    seed: int = 0
    out: str = "demo_out"
    hparams: str = ""
    progress: bool = True
    plots: bool = True


def default_schedule(steps: int) -> dict[str, int]:
    """The demo's pruning schedule for a run of ``steps`` steps.

    A dense warm-up of 10 % of the steps, then the cubic ramp up to 2/3 of the
    steps, then fine-tuning at the target sparsity for the last third (masks
    keep updating every ``pruning_frequency`` steps, as in TF with
    ``end_pruning_step=-1``). ``pruning_frequency`` is 10, or less for short
    runs so that the ramp sees at least 5 mask updates.

    Args:
      steps: the number of training steps (>= 3).

    Returns:
      ``begin_pruning_step``, ``sparsity_function_begin_step``,
      ``sparsity_function_end_step`` and ``pruning_frequency``.

    Examples:
      >>> from jaxprune.demos.demo import default_schedule
      >>> default_schedule(1500)  # doctest: +NORMALIZE_WHITESPACE
      {'begin_pruning_step': 150, 'sparsity_function_begin_step': 150,
       'sparsity_function_end_step': 1000, 'pruning_frequency': 10}
    """
    if steps < 3:
        raise ValueError(f"the demo needs at least 3 steps, got {steps}")
    begin = max(1, round(0.1 * steps))
    end = max(begin + 1, round(2 * steps / 3))
    frequency = max(1, min(10, (end - begin) // 5))
    return {
        "begin_pruning_step": begin,
        "sparsity_function_begin_step": begin,
        "sparsity_function_end_step": end,
        "pruning_frequency": frequency,
    }


def build_hparams(config: DemoConfig) -> jaxprune.PruningHParams:
    """The pruning hyperparameters of a demo run.

    Starts from :func:`jaxprune.get_pruning_hparams`, applies
    :func:`default_schedule`, the ``target_sparsity``, ``block`` and ``method``
    settings and ``name="demo"``, prunes the first conv layer (144 weights, the
    whole input interface) to half the target via
    ``weight_sparsity_map=[conv1/:target/2]`` (a common practice; it changes
    the overall sparsity by < 0.1 %), then parses ``config.hparams`` on top.

    Args:
      config: the demo settings.

    Returns:
      Validated :class:`jaxprune.PruningHParams`.

    Raises:
      ValueError: for invalid values (naming the field), e.g. a target sparsity
        outside ``[0, 1)``.
    """
    height, width = config.block
    hp = jaxprune.get_pruning_hparams().replace(
        name="demo",
        target_sparsity=config.target_sparsity,
        weight_sparsity_map=[f"conv1/:{round(config.target_sparsity / 2, 4)}"],
        block_height=height,
        block_width=width,
        threshold_method=config.method,
        **default_schedule(config.steps),
    )
    if config.hparams:
        hp = hp.parse(config.hparams)
    return hp


# -- data and model -------------------------------------------------------------------------------


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads scikit-learn's bundled 8x8 digits and splits them (stratified, 80/20).

    Args:
      seed: seed of the split.

    Returns:
      ``(x_train, y_train, x_test, y_test)``; images are float32 NHWC in [0, 1]
      of shape ``(n, 8, 8, 1)``, labels int32.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


class CNN(nnx.Module):
    """A small CNN for 8x8 digits: 3x3 conv, BatchNorm, max-pool, 3x3 conv, two dense layers.

    Prunable (``ndim >= 2``) parameters: ``conv1/kernel``, ``conv2/kernel``,
    ``dense1/kernel``, ``dense2/kernel``; biases and the BatchNorm scale and
    bias stay dense.

    Args:
      rngs: Flax random streams for initialisation.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.norm1 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.dense1 = nnx.Linear(4 * 4 * 32, 128, rngs=rngs)
        self.dense2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Returns the logits of a batch of ``(n, 8, 8, 1)`` images.

        Args:
          x: the images.
          train: use (and update) batch statistics rather than the running averages.

        Returns:
          ``(n, 10)`` logits.
        """
        x = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = nnx.relu(self.conv2(x))
        x = nnx.relu(self.dense1(x.reshape(x.shape[0], -1)))
        return self.dense2(x)


def augment(images: jax.Array, shifts: jax.Array) -> jax.Array:
    """Translates each image by its own ``(dy, dx)`` pixels, filling with zeros (augmentation).

    Args:
      images: ``(n, h, w, c)`` images.
      shifts: ``(n, 2)`` integer shifts in ``[-MAX_SHIFT, MAX_SHIFT]``.

    Returns:
      The shifted images, same shape.
    """
    _, h, w, c = images.shape
    pad = MAX_SHIFT
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(image, shift):
        return jax.lax.dynamic_slice(image, (pad - shift[0], pad - shift[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, shifts)


def make_optimizer(steps: int) -> optax.GradientTransformation:
    """Adam with a linear warm-up and cosine decay: the optimizer of both runs.

    Args:
      steps: the length of the run.

    Returns:
      The (unpruned) optax optimizer.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=LEARNING_RATE,
        warmup_steps=max(1, steps // 20),
        decay_steps=steps,
        end_value=LEARNING_RATE / 10,
    )
    return optax.adam(schedule)


# -- training -------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    """What one training run (dense or pruned) produced.

    Attributes:
      name: ``"dense"`` or ``"pruned"``.
      params: final params as a pure dict (for the pruned run: stripped with
        :func:`jaxprune.strip_pruning`).
      history: per-step lists (``loss``, ``scheduled_sparsity``,
        ``achieved_sparsity``, ``last_mask_update_step``) and the evaluations
        (``eval_step``, ``test_accuracy``, ``test_loss``).
      accuracy: final test accuracy of ``params``.
      compiles: how many times the train step was traced (1 = compiled once).
      seconds: wall time of the training loop.
      pruning_state: the final :class:`jaxprune.PruningState` (pruned run only).
      model: the trained ``nnx`` model (its pruned weights are exactly 0).
    """

    name: str
    params: dict[str, Any]
    history: dict[str, list[float]]
    accuracy: float
    compiles: int
    seconds: float
    pruning_state: Any = None
    model: Any = None


def prunable_names(params: dict[str, Any]) -> list[str]:
    """Names of the leaves jaxprune prunes by default (``ndim >= 2`` float arrays).

    Args:
      params: a params pytree.

    Returns:
      Their ``/``-joined path names, in pytree order.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [
        jaxprune.path_name(path)
        for path, leaf in flat
        if jaxprune.default_prunable(jaxprune.path_name(path), leaf)
    ]


def _zeros_and_size(params: Any) -> tuple[jax.Array | int, int]:
    """Number of exactly-zero entries, and the size, of the prunable leaves of ``params``."""
    leaves = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if jaxprune.default_prunable(jaxprune.path_name(path), leaf)
    ]
    zeros = sum(jnp.sum(leaf == 0) for leaf in leaves)
    return zeros, sum(leaf.size for leaf in leaves)


def train(
    name: str,
    config: DemoConfig,
    data: tuple[np.ndarray, ...],
    hparams: jaxprune.PruningHParams | None,
    params_filter: Any = None,
) -> RunResult:
    """Trains the CNN once: dense (``hparams=None``) or pruned with ``hparams``.

    The optimizer is :func:`make_optimizer`, chained with
    ``jaxprune.magnitude_pruning(hparams)`` for the pruned run; Flax's
    ``nnx.Optimizer`` passes the params to optax, as the transform needs.
    The train step is one ``nnx.jit``-ed function that compiles once.

    Args:
      name: the run's name (for the progress bar).
      config: the demo settings (seed, steps, progress).
      data: ``(x_train, y_train, x_test, y_test)`` from :func:`load_data`.
      hparams: pruning hyperparameters, or None for the dense baseline.
      params_filter: which leaves are pruned (``magnitude_pruning``'s argument).

    Returns:
      The :class:`RunResult`.
    """
    from tqdm.auto import tqdm

    x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in data)
    model = CNN(rngs=nnx.Rngs(config.seed))
    tx = make_optimizer(config.steps)
    if hparams is not None:
        tx = optax.chain(tx, jaxprune.magnitude_pruning(hparams, params_filter=params_filter))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    traces = [0]

    @nnx.jit
    def train_step(model, optimizer, x_all, y_all, idx, shifts):
        traces[0] += 1  # runs only while tracing
        x, y = augment(x_all[idx], shifts), y_all[idx]

        def loss_fn(model):
            logits = model(x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        zeros, size = _zeros_and_size(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        metrics = {"loss": loss, "achieved_sparsity": zeros / size}
        if hparams is not None:
            state = jaxprune.get_pruning_state(optimizer.opt_state)
            metrics["scheduled_sparsity"] = state.sparsity
            metrics["last_mask_update_step"] = state.last_update_step
        return metrics

    @nnx.jit
    def evaluate(model, x, y):
        logits = model(x, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return jnp.mean(jnp.argmax(logits, -1) == y), loss

    step_fn = nnx.cached_partial(train_step, model, optimizer)
    eval_fn = nnx.cached_partial(evaluate, model)

    # The same batches for both runs: epochs of a seeded permutation, last partial batch dropped.
    rng = np.random.default_rng(config.seed)
    per_epoch = len(x_train) // BATCH_SIZE
    epochs = math.ceil(config.steps / per_epoch)
    order = np.concatenate(
        [rng.permutation(len(x_train))[: per_epoch * BATCH_SIZE] for _ in range(epochs)]
    )
    batches = list(order[: config.steps * BATCH_SIZE].reshape(config.steps, BATCH_SIZE))
    shifts = list(rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(config.steps, BATCH_SIZE, 2)))

    history: dict[str, list[float]] = {"eval_step": [], "test_accuracy": [], "test_loss": []}
    pending = []
    start = time.perf_counter()
    bar = tqdm(
        range(1, config.steps + 1),
        desc=f"{name:>6}",
        disable=not config.progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    for step in bar:
        pending.append(step_fn(x_train, y_train, batches[step - 1], shifts[step - 1]))
        if step % EVAL_EVERY == 0 or step == config.steps:
            accuracy, loss = eval_fn(x_test, y_test)
            history["eval_step"].append(step)
            history["test_accuracy"].append(float(accuracy))
            history["test_loss"].append(float(loss))
            last = jax.device_get(pending[-1])
            bar.set_postfix(
                loss=f"{float(last['loss']):.3f}",
                sparsity=f"{float(last['achieved_sparsity']):.3f}",
                acc=f"{float(accuracy):.3f}",
            )
    bar.close()
    for key, values in jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *pending)).items():
        history[key] = np.asarray(values).tolist()
    seconds = time.perf_counter() - start

    params = nnx.state(model, nnx.Param)
    pruning_state = None
    if hparams is not None:
        pruning_state = jaxprune.get_pruning_state(optimizer.opt_state)
        # The masks are an nnx.State like the params, so strip before converting to a dict.
        params = jaxprune.strip_pruning(params, pruning_state)
    return RunResult(
        name=name,
        params=nnx.to_pure_dict(params),
        history=history,
        accuracy=history["test_accuracy"][-1],
        compiles=traces[0],
        seconds=seconds,
        pruning_state=pruning_state,
        model=model,
    )


# -- report ---------------------------------------------------------------------------------------


def layer_report(
    params: dict[str, Any], hparams: jaxprune.PruningHParams, last_update_step: int
) -> list[dict[str, Any]]:
    """Per-layer sparsity of the pruned params.

    Args:
      params: the stripped pruned params.
      hparams: the pruning hyperparameters.
      last_update_step: the step of the last mask update.

    Returns:
      One dict per prunable weight: ``name``, ``shape``, ``size``,
      ``target_sparsity`` (its final target), ``scheduled_sparsity`` (its
      schedule at the last mask update), ``achieved_sparsity`` and ``nonzeros``.
    """
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jaxprune.path_name(path)
        if not jaxprune.default_prunable(name, leaf):
            continue
        target = hparams.sparsity_for(name)
        target = hparams.target_sparsity if target is None else target
        schedule = jaxprune.sparsity_schedule(hparams, target_sparsity=target)
        nonzeros = int(np.count_nonzero(np.asarray(leaf)))
        rows.append(
            {
                "name": name,
                "shape": list(leaf.shape),
                "size": int(leaf.size),
                "target_sparsity": float(target),
                "scheduled_sparsity": float(schedule(last_update_step)),
                "achieved_sparsity": 1.0 - nonzeros / leaf.size,
                "nonzeros": nonzeros,
            }
        )
    return rows


def overall_target(layers: Sequence[dict[str, Any]]) -> float:
    """The target sparsity of all prunable weights together: the layers' targets, size-weighted.

    Equal to ``target_sparsity`` unless ``weight_sparsity_map`` gives some layers
    their own targets.

    Args:
      layers: the rows of :func:`layer_report` (``size`` and ``target_sparsity``).

    Returns:
      ``sum(size * target) / sum(size)``.
    """
    total = sum(r["size"] for r in layers)
    return sum(r["size"] * r["target_sparsity"] for r in layers) / total


def method_label(hp: dict[str, Any]) -> str:
    """The pruning method in words, for the plot titles (e.g. ``"exact threshold (TF r1.15)"``).

    Args:
      hp: the hyperparameters as a dict (:meth:`jaxprune.PruningHParams.to_dict`).

    Returns:
      The threshold method, and the block shape and pooling when blocks are not 1x1.
    """
    release = {"exact": "TF r1.15", "histogram": "TF r1.11"}.get(hp["threshold_method"], "")
    label = f"magnitude pruning, {hp['threshold_method']} threshold ({release})"
    if (hp["block_height"], hp["block_width"]) != (1, 1) or hp["block_dims_map"]:
        blocks = f"{hp['block_height']}x{hp['block_width']}".replace("-1", "all")
        label += f", {blocks} blocks ({hp['block_pooling_function']} pooling)"
        if hp["block_dims_map"]:
            label += " + block_dims_map"
    return label


def format_table(summary: dict[str, Any]) -> str:
    """The printed end-of-run table: per-layer sparsity, then dense vs pruned accuracy.

    Args:
      summary: the dict written to ``summary.json``.

    Returns:
      The table as text.
    """
    rows = summary["layers"]
    width = max(len("layer"), *(len(r["name"]) for r in rows))
    lines = [
        f"{'layer':<{width}}  {'shape':<16} {'target':>7} {'achieved':>9} {'nonzeros':>17}",
    ]
    lines.append("-" * len(lines[0]))
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"])
        lines.append(
            f"{r['name']:<{width}}  {shape:<16} {r['target_sparsity']:>7.1%} "
            f"{r['achieved_sparsity']:>9.2%} {r['nonzeros']:>8,d} / {r['size']:<7,d}"
        )
    total = summary["prunable_weights"]
    nonzeros = summary["prunable_nonzeros"]
    # The size-weighted target of the layers' own targets (weight_sparsity_map changes some).
    overall_target = summary.get("overall_target_sparsity", summary["target_sparsity"])
    lines.append("-" * len(lines[0]))
    lines.append(
        f"{'all prunable':<{width}}  {'':<16} {overall_target:>7.1%} "
        f"{summary['sparsity']:>9.2%} {nonzeros:>8,d} / {total:<7,d}"
    )
    lines.append("")
    lines.append(f"test accuracy   dense {summary['dense_accuracy']:.2%}   ")
    lines[-1] += (
        f"pruned {summary['pruned_accuracy']:.2%}   "
        f"(difference {summary['pruned_accuracy'] - summary['dense_accuracy']:+.2%})"
    )
    return "\n".join(lines)


def write_plots(
    out: str, dense: RunResult, pruned: RunResult, summary: dict[str, Any]
) -> list[str]:
    """Writes the three PNG plots into ``out``.

    ``sparsity.png``: scheduled vs achieved sparsity over the steps, mask
    updates marked. ``training.png``: training loss, test loss and test
    accuracy of both runs. ``layers.png``: target vs achieved sparsity per layer.

    Args:
      out: the output directory.
      dense: the dense run.
      pruned: the pruned run.
      summary: the summary dict (for the per-layer figures and the schedule).

    Returns:
      The paths written.
    """
    from matplotlib.figure import Figure

    paths = []
    hist = pruned.history
    steps = np.arange(1, len(hist["loss"]) + 1)

    # 1. Scheduled vs achieved sparsity.
    fig = Figure(figsize=(8.5, 5), layout="constrained")
    ax = fig.add_subplot()
    hp = summary["hparams"]
    method = method_label(hp)
    target = summary.get("overall_target_sparsity", summary["target_sparsity"])
    scheduled = np.asarray(hist["scheduled_sparsity"])
    label = "scheduled s(t)"
    if any(r["target_sparsity"] != summary["target_sparsity"] for r in summary["layers"]):
        # weight_sparsity_map: the layers follow their own schedules; plot their size-weighted
        # mean, which is what the achieved sparsity of all prunable weights follows.
        hparams = jaxprune.PruningHParams.from_dict(hp)
        total = sum(r["size"] for r in summary["layers"])
        scheduled = (
            sum(
                r["size"]
                * np.asarray(
                    jaxprune.sparsity_schedule(hparams, target_sparsity=r["target_sparsity"])(steps)
                )
                for r in summary["layers"]
            )
            / total
        )
        label = "scheduled s(t), size-weighted over the layers' targets"
    achieved = np.asarray(hist["achieved_sparsity"])
    updates = np.asarray(hist["last_mask_update_step"])
    update_steps = steps[(updates == steps) & (steps > 0)]
    begin, end = hp["sparsity_function_begin_step"], hp["sparsity_function_end_step"]

    def draw(ax, band):
        # The schedule as a wide pale band under the achieved steps, so that both show.
        ax.plot(steps, scheduled, color="C0", lw=band, alpha=0.35, solid_capstyle="butt")
        ax.step(steps, achieved, where="post", color="C3", lw=1.2)

    draw(ax, 6)
    ax.plot([], [], color="C0", lw=6, alpha=0.35, label=label)  # legend entries
    ax.plot([], [], color="C3", lw=1.2, label="achieved (all prunable weights)")
    # Mask updates as a rug along the bottom: one tick per update.
    ax.plot(
        update_steps,
        np.full(len(update_steps), 0.0),
        "|",
        color="k",
        ms=7,
        transform=ax.get_xaxis_transform(),
        clip_on=False,
        label=f"mask updates ({len(update_steps)}, every {hp['pruning_frequency']} steps)",
    )
    ax.axhline(target, color="gray", ls=":", lw=1)
    ax.annotate(
        f"target {target:.1%}",
        (steps[-1], target),
        xytext=(-4, 4),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=8,
        color="dimgray",
    )
    # Labels beside the ramp's ends: left of the start (where the curve is still 0), right of
    # the end (below the target, above the zoom).
    left = begin > 0.05 * steps[-1]  # room left of the start line
    for step, text, dx, ha in (
        (begin, "ramp begins", -3 if left else 3, "right" if left else "left"),
        (end, "ramp ends", 3, "left"),
    ):
        if step > steps[-1]:  # a short run: the ramp ends after it
            continue
        ax.axvline(step, color="gray", ls="--", lw=1)
        ax.annotate(
            f"{text} (step {step})",
            (step, 0.7),
            xytext=(dx, 0),
            textcoords="offset points",
            xycoords=("data", "axes fraction"),
            rotation=90,
            ha=ha,
            va="center",
            fontsize=8,
            color="dimgray",
        )
    ax.set(
        xlabel="training step",
        ylabel="sparsity of the prunable weights",
        title=(
            f"Gradual {method}\nto {target:.1%} overall: cubic schedule from step "
            f"{begin} to {end}, every {hp['pruning_frequency']} steps"
        ),
        ylim=(-0.02, 1.0),
        xlim=(0, steps[-1]),
    )
    ax.title.set_fontsize(10)
    fig.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    # A zoom on the first mask updates of the ramp: the achieved sparsity steps up to s(t) at
    # each update and stays there until the next.
    if len(update_steps) >= 2:
        lo = max(0, begin - hp["pruning_frequency"])
        hi = min(steps[-1], begin + 5 * hp["pruning_frequency"])
        inset = ax.inset_axes((0.7, 0.1, 0.28, 0.42))
        draw(inset, 8)
        shown = (steps >= lo) & (steps <= hi)
        top = max(float(np.max(scheduled[shown])), float(np.max(achieved[shown])))
        inset.set(xlim=(lo, hi), ylim=(-0.05 * top - 1e-3, 1.1 * top + 1e-3))
        inset.tick_params(labelsize=7)
        inset.set_title(f"steps {lo} to {hi}", fontsize=8)
        inset.grid(alpha=0.3)
        ax.indicate_inset_zoom(inset, edgecolor="gray")
    paths.append(os.path.join(out, "sparsity.png"))
    fig.savefig(paths[-1], dpi=110)

    # 2. Loss and accuracy of both runs.
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    fig.suptitle(f"Dense vs pruned to {target:.1%} ({method})", fontsize=10)
    ax_loss, ax_acc = fig.subplots(1, 2)
    window = max(1, min(25, len(steps) // 20))
    kernel = np.ones(window) / window
    for run, color in ((dense, "C0"), (pruned, "C3")):
        loss = np.convolve(run.history["loss"], kernel, mode="valid")
        ax_loss.plot(steps[window - 1 :], loss, color=color, lw=1, label=f"{run.name} train")
        ax_loss.plot(
            run.history["eval_step"],
            run.history["test_loss"],
            "o--",
            color=color,
            ms=3,
            label=f"{run.name} test",
        )
        ax_acc.plot(
            run.history["eval_step"],
            run.history["test_accuracy"],
            "o-",
            color=color,
            ms=3,
            label=f"{run.name} (final {run.accuracy:.1%})",
        )
    ax_loss.set(xlabel="training step", ylabel="cross-entropy", yscale="log", title="Loss")
    later = dense.history["test_accuracy"][2:] + pruned.history["test_accuracy"][2:]
    ax_acc.set(
        xlabel="training step",
        ylabel="test accuracy",
        title="Test accuracy",
        ylim=(max(0.0, min([0.8, *later]) - 0.02), 1.005),
    )
    for ax in (ax_loss, ax_acc):
        ax.axvspan(
            hp["sparsity_function_begin_step"],
            hp["sparsity_function_end_step"],
            color="gray",
            alpha=0.1,
            label="sparsity ramp",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    paths.append(os.path.join(out, "training.png"))
    fig.savefig(paths[-1], dpi=110)

    # 3. Per-layer sparsity.
    rows = summary["layers"]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["target_sparsity"] for r in rows], 0.4, label="target", color="C0")
    bars = ax.bar(
        x + 0.2, [r["achieved_sparsity"] for r in rows], 0.4, label="achieved", color="C3"
    )
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(
            f"{r['nonzeros']:,}/{r['size']:,}\nnonzero",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(x, [f"{r['name']}\n{'x'.join(map(str, r['shape']))}" for r in rows], fontsize=8)
    ax.set(
        ylabel="sparsity",
        ylim=(0, 1.15),
        title=f"Per-layer sparsity of the pruned model\n({method})",
    )
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    paths.append(os.path.join(out, "layers.png"))
    fig.savefig(paths[-1], dpi=110)
    return paths


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Trains dense and pruned, prints the report, writes ``summary.json`` and the plots.

    Args:
      config: the demo settings.

    Returns:
      The summary dict (also written to ``<out>/summary.json``): ``dense_accuracy``,
      ``pruned_accuracy``, ``sparsity`` (achieved, over all prunable weights),
      ``target_sparsity``, ``steps``, ``layers`` (per-layer details),
      ``hparams``, ``compiles``, ``wall_seconds`` and more.

    Raises:
      ValueError: for invalid settings.
    """
    start = time.perf_counter()
    hparams = build_hparams(config)
    os.makedirs(config.out, exist_ok=True)
    data = load_data(config.seed)
    print(
        f"jaxprune demo: {len(data[0])} train / {len(data[2])} test digits, {config.steps} steps, "
        f"batch {BATCH_SIZE}, on {jax.devices()[0].platform}; pruning to "
        f"{hparams.target_sparsity:.0%} ({hparams.threshold_method}, blocks "
        f"{hparams.block_height}x{hparams.block_width})"
    )
    dense = train("dense", config, data, None)
    pruned = train("pruned", config, data, hparams)

    state = pruned.pruning_state
    last_update = int(state.last_update_step)
    layers = layer_report(pruned.params, hparams, last_update)
    total = sum(r["size"] for r in layers)
    nonzeros = sum(r["nonzeros"] for r in layers)
    summary: dict[str, Any] = {
        "dense_accuracy": dense.accuracy,
        "pruned_accuracy": pruned.accuracy,
        "sparsity": 1.0 - nonzeros / total,
        "target_sparsity": hparams.target_sparsity,
        "steps": config.steps,
        "scheduled_sparsity": float(state.sparsity),
        "last_mask_update_step": last_update,
        "mask_updates": int(
            np.sum(
                np.asarray(pruned.history["last_mask_update_step"])
                == np.arange(1, config.steps + 1)
            )
        ),
        "overall_target_sparsity": overall_target(layers),
        "prunable_weights": total,
        "prunable_nonzeros": nonzeros,
        "total_params": int(sum(x.size for x in jax.tree.leaves(pruned.params))),
        "layers": layers,
        "seed": config.seed,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "hparams": hparams.to_dict(),
        "compiles": {"dense": dense.compiles, "pruned": pruned.compiles},
        "train_seconds": {"dense": dense.seconds, "pruned": pruned.seconds},
        "device": str(jax.devices()[0]),
        "versions": {"jaxprune": jaxprune.__version__, "jax": jax.__version__},
        "history": {
            "dense": {k: dense.history[k] for k in ("eval_step", "test_accuracy", "test_loss")},
            "pruned": {k: pruned.history[k] for k in ("eval_step", "test_accuracy", "test_loss")},
        },
    }
    print()
    print(format_table(summary))
    if config.plots:
        summary["plots"] = [
            os.path.basename(p) for p in write_plots(config.out, dense, pruned, summary)
        ]
    summary["wall_seconds"] = time.perf_counter() - start
    path = os.path.join(config.out, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    written = ", ".join(["summary.json", *summary.get("plots", [])])
    print(f"\nwrote {written} to {os.path.abspath(config.out)} ({summary['wall_seconds']:.0f} s)")
    return summary


__all__: Sequence[str] = (
    "CNN",
    "DemoConfig",
    "RunResult",
    "build_hparams",
    "default_schedule",
    "format_table",
    "layer_report",
    "load_data",
    "make_optimizer",
    "method_label",
    "overall_target",
    "run_demo",
    "train",
    "write_plots",
)
