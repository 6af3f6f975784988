"""Who competes with whom, and at what target: per weight (TF), ERK, global, per output unit.

Every fact about a pruned weight that does not change while training -- its end target, its
structure (with its block dims and axis resolved) and its comparison scope -- is resolved once,
here, into a :class:`LeafRule`. The transform and the one-shot :func:`jaxprune.prune` both read
the rules; nothing else re-parses the hyperparameter maps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune._src import masks as masks_lib
from jaxprune._src import owl, select, structure
from jaxprune._src.hparams import PruningHParams


@dataclasses.dataclass(frozen=True)
class LeafRule:
    """The resolved pruning rule of one weight.

    Attributes:
      name: the weight's "/"-joined path.
      target: its end sparsity.
      fixed: whether ``target`` comes from ``weight_sparsity_map`` (a fixed override).
      structure: what its mask keeps, with block dims / axis resolved for this weight.
      scope: ``"layer"``, ``"global"`` (shares one threshold with the pool) or ``"output"``.
    """

    name: str
    target: float
    fixed: bool
    structure: structure.Structure
    scope: str


def erk_targets(shapes: Sequence[tuple[int, ...]], sparsity: float) -> list[float]:
    """Per-weight sparsities of the Erdos-Renyi-Kernel distribution.

    The density of weight ``l`` is ``eps * sum(shape_l) / prod(shape_l)``, with ``eps`` such that
    the kept count over all weights is ``(1 - sparsity) * total``. A weight whose density would
    exceed 1 is kept dense and ``eps`` is recomputed over the others, until none exceeds 1.

    Args:
      shapes: the weights' shapes.
      sparsity: the overall target sparsity in ``[0, 1)``.

    Returns:
      The sparsity of each weight (0.0 for the dense ones).

    Examples:
      >>> from jaxprune._src.allocation import erk_targets
      >>> [round(s, 4) for s in erk_targets([(100, 100), (100, 10)], 0.9)]
      [0.929, 0.6097]

    References:
      Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020,
      https://arxiv.org/abs/1911.11134
    """
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / n if n else 0.0 for s, n in zip(shapes, sizes, strict=True)]
    dense: set[int] = set()
    while True:
        budget = (1.0 - sparsity) * sum(sizes) - sum(sizes[i] for i in dense)
        denom = sum(raw[i] * sizes[i] for i in range(len(sizes)) if i not in dense)
        eps = budget / denom if denom > 0 else 0.0
        over = {i for i in range(len(sizes)) if i not in dense and eps * raw[i] > 1.0}
        if not over:
            break
        dense |= over
    return [0.0 if i in dense else max(0.0, 1.0 - eps * raw[i]) for i in range(len(sizes))]


def resolve_rules(
    hparams: PruningHParams,
    names: Sequence[str],
    leaves: Sequence[jax.Array],
    prunable: Sequence[bool],
    sparsity: float | None = None,
    owl_values: Sequence[Any] | None = None,
) -> list[LeafRule | None]:
    """Resolves every pruned leaf's rule (target, structure, scope); None for the others.

    The one place a weight's target is decided: its ``weight_sparsity_map`` entry if one matches
    (a fixed override), else its ERK share of ``sparsity`` (``sparsity_distribution="erk"``) or
    its OWL share (``"owl"``, from ``owl_values``), else ``sparsity`` itself. ``sparsity``
    defaults to ``hparams.target_sparsity``.

    Args:
      hparams: the pruning hyperparameters.
      names: the leaves' path names.
      leaves: the leaves (arrays or shape-dtype structs).
      prunable: which leaves are pruned.
      sparsity: the overall target, if not ``hparams.target_sparsity``.
      owl_values: for ``sparsity_distribution="owl"``: the scores ranked for each leaf (aligned
        with ``leaves``; only the pruned leaves' are read).

    Returns:
      A list aligned with ``leaves``.

    Raises:
      ValueError: naming the weight, for an axis out of range or an N:M group axis whose length is
        not a multiple of M, or an N:M ``sparsity`` other than (M-N)/M; for OWL without
        scores (naming ``sparsity_distribution``) or a group sparsity outside ``[0, 1)``.
    """
    hp = hparams
    overall = hp.target_sparsity if sparsity is None else float(sparsity)
    kind = structure.parse_sparsity_type(hp.sparsity_type, hp.sparsity_axis)
    if isinstance(kind, structure.NByM) and not math.isclose(
        overall, kind.sparsity, rel_tol=0.0, abs_tol=1e-6
    ):
        raise ValueError(
            f"sparsity={overall!r} does not match sparsity_type={hp.sparsity_type!r}: N:M "
            f"prunes exactly (M-N)/M = {kind.sparsity!r}"
        )
    pruned = [i for i, keep in enumerate(prunable) if keep and getattr(leaves[i], "size", 0) > 0]
    fixed = {i: hp.sparsity_for(names[i]) for i in pruned}
    free = [i for i in pruned if fixed[i] is None]
    if hp.sparsity_distribution == "erk":
        shares = erk_targets([tuple(leaves[i].shape) for i in free], overall)
        targets = dict(zip(free, shares, strict=True))
    elif hp.sparsity_distribution == "owl":
        if owl_values is None:
            raise ValueError(
                "hparam sparsity_distribution='owl' needs scores (OWL's layer sparsities come "
                "from their outliers): use jaxprune.prune(params, hparams, scores=...) (e.g. "
                "jaxprune.wanda_scores), jaxprune.wanda, jaxprune.sparsegpt or "
                "jaxprune.prune_sequential; the training transforms have no scores"
            )
        shares = owl.owl_targets(
            [owl_values[i] for i in free],
            [names[i] for i in free],
            overall,
            m=hp.owl_m,
            lam=hp.owl_lambda,
            groups=hp.owl_groups,
        )
        targets = dict(zip(free, shares, strict=True))
    else:
        targets = dict.fromkeys(free, overall)
    rules: list[LeafRule | None] = [None] * len(leaves)
    for i in pruned:
        name, shape, fixed_target = names[i], tuple(leaves[i].shape), fixed[i]
        target = fixed_target if fixed_target is not None else targets[i]
        scope = (
            hp.pruning_scope if (fixed_target is None or hp.pruning_scope != "global") else "layer"
        )
        rules[i] = LeafRule(
            name, target, fixed_target is not None, _leaf_structure(hp, name, shape), scope
        )
    return rules


def single_weight_rule(hparams: PruningHParams, name: str, shape: tuple[int, ...]) -> LeafRule:
    """The rule of one weight on its own (the scope of one weight is the weight itself)."""
    scope = "output" if hparams.pruning_scope == "output" else "layer"
    structure_ = _leaf_structure(hparams, name, tuple(shape))
    return LeafRule(name, hparams.target_sparsity, False, structure_, scope)


def _leaf_structure(hp: PruningHParams, name: str, shape: tuple[int, ...]) -> structure.Structure:
    kind = structure.parse_sparsity_type(hp.sparsity_type, hp.sparsity_axis)
    if isinstance(kind, structure.Unstructured):
        return structure.Unstructured(hp.block_dims_for(name))
    axis = structure.normalize_axis(kind.axis, len(shape), name)
    if isinstance(kind, structure.NByM):
        if shape[axis] % kind.m:
            raise ValueError(
                f"sparsity_type={hp.sparsity_type!r}: weight {name!r} of shape {shape} has "
                f"length {shape[axis]} along sparsity_axis {kind.axis}, not a multiple of "
                f"M={kind.m}; choose another sparsity_axis or leave the weight out with "
                "params_filter"
            )
        return structure.NByM(kind.n, kind.m, axis)
    return structure.Channel(axis)


def leaf_mask(
    values: jax.Array,
    sparsity: jax.Array,
    threshold: jax.Array,
    rule: LeafRule,
    hparams: PruningHParams,
) -> tuple[jax.Array, jax.Array]:
    """``(threshold, mask)`` of one weight with a layer or output rule, at ``sparsity``.

    ``values`` are the weight (ranked by ``|w|``) or its scores; NaN ranks as 0 and is never
    kept. Unstructured layer rules are TF's (:func:`jaxprune.weight_mask`, bit for bit). The
    threshold of a structured or per-output rule is not used again and is returned as 0.
    """
    kind = rule.structure
    zero = jnp.zeros((), jnp.float32)
    if isinstance(kind, structure.NByM):
        keep = structure.nm_keep(kind.m, kind.n, sparsity)
        return zero, structure.nm_mask(values, kind.m, keep, kind.axis)
    if isinstance(kind, structure.Channel):
        pruned = structure.channels_pruned(values.shape[kind.axis], sparsity)
        return zero, structure.channel_mask(values, pruned, kind.axis)
    if rule.scope == "output":
        return zero, output_mask(values, sparsity)
    return masks_lib._weight_mask(values, sparsity, threshold, hparams, kind.block_dims)


def output_mask(values: jax.Array, sparsity: jax.typing.ArrayLike) -> jax.Array:
    """Each output unit (slice along the last axis) keeps its ``num_kept(n, s)`` largest scores.

    ``n`` is the number of entries per output unit (``size / shape[-1]``); ties at a unit's
    threshold are kept, as in TF. No sort: one exact selection per unit, vectorised.

    Args:
      values: the weight or its scores (ranked by magnitude, NaN as 0), ndim >= 1.
      sparsity: the sparsity of every output unit.

    Returns:
      A bool mask shaped like ``values``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.allocation import output_mask
      >>> w = jnp.array([[1., 8.], [4., 7.], [3., 9.], [2., 6.]])
      >>> output_mask(w, 0.5).astype(int).tolist()
      [[0, 1], [1, 0], [1, 1], [0, 0]]

    References:
      Sun et al., "A Simple and Effective Pruning Approach for Large Language Models" (Wanda),
      2023, https://arxiv.org/abs/2306.11695
    """
    units = values.shape[-1]
    rows = jnp.moveaxis(values, -1, 0).reshape(units, -1)
    k = masks_lib.num_kept(rows.shape[1], sparsity)
    thresholds = jax.vmap(lambda r: select.kth_largest(r, k, magnitude=True))(rows)
    mask = masks_lib._compare_magnitudes(values, thresholds, strict=False)
    return mask & ~jnp.isnan(values)


def global_masks(
    values: Sequence[jax.Array],
    sparsity: jax.Array,
    threshold: jax.typing.ArrayLike,
    hparams: PruningHParams,
) -> tuple[jax.Array, list[jax.Array]]:
    """One exact threshold over several weights together, and each weight's mask.

    ``k = num_kept(total, s)`` over the union of the weights' magnitudes; the threshold is the
    k-th largest of them, found by counting passes over every weight in place (no concatenated
    copy), smoothed by ``threshold_decay`` like TF's per-weight threshold.

    Args:
      values: the pooled weights (or their scores), ranked by magnitude, NaN as 0.
      sparsity: the global sparsity.
      threshold: the previous global threshold.
      hparams: the hyperparameters (``threshold_decay``).

    Returns:
      ``(threshold, masks)``.
    """
    total = sum(int(v.size) for v in values)
    if total >= 2**31:
        raise ValueError(
            f"pruning_scope='global' over {total} weights: the exact selection counts in int32, "
            "so the pool must hold fewer than 2**31 entries"
        )
    k = masks_lib.num_kept(total, sparsity)
    current = select.kth_largest(list(values), k, magnitude=True).astype(jnp.float32)
    smoothed = masks_lib._smooth(
        current, jnp.asarray(threshold, jnp.float32), hparams.threshold_decay
    )
    masks = [
        masks_lib._compare_magnitudes(v, smoothed, strict=False) & ~jnp.isnan(v) for v in values
    ]
    return smoothed, masks
