"""Wanda (Sun et al. 2023): scores ``|W| * ||X||`` compared within each output unit.

:func:`wanda_scores` turns :func:`jaxprune.activation_norms` into per-entry scores;
:func:`wanda` is the whole method: every output unit of every weight (a row of the paper's
``(out, d)`` matrix, for any layout) keeps its largest scores.

References:
  Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models" (Wanda), 2023, https://arxiv.org/abs/2306.11695
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import allocation, calibrated, structure
from jaxprune._src import layout as layout_lib
from jaxprune._src import tree as tree_lib


def broadcast_norms(where: str, name: str, w_shape: tuple[int, ...], n: Any) -> jax.Array:
    """Norms reshaped to broadcast against the weight, or a ValueError naming the leaf."""
    n_shape = tuple(np.shape(n))
    if len(n_shape) < len(w_shape):
        ok = n_shape == w_shape[: len(n_shape)]
        n = jnp.reshape(n, n_shape + (1,) * (len(w_shape) - len(n_shape)))
    else:
        ok = len(n_shape) == len(w_shape) and all(
            b in (1, a) for a, b in zip(w_shape, n_shape, strict=True)
        )
    if not ok:
        raise ValueError(
            f"{where}: norms of {name!r} have shape {n_shape}, which is neither a "
            f"leading prefix of the weight's shape {w_shape} nor broadcastable at its rank"
        )
    return jnp.asarray(n, jnp.float32)


def wanda_scores(params: Any, norms: Any) -> Any:
    """Wanda's pruning scores ``|W| * norm``, the input-feature norm broadcast over the weight.

    ``norms`` as returned by :func:`activation_norms`: a norm array of a leading prefix of
    the weight's shape is broadcast over the trailing axes (Dense ``(in, out)`` with
    ``(in,)``: every output unit sees the same input norms); a norm array of the weight's
    rank is broadcast as is (its axes have the weight's size or 1). :func:`jaxprune.wanda`
    prunes with them, comparing the weights of each output unit for any weight layout;
    ``jaxprune.prune(..., scores=..., pruning_scope="output")`` compares along the last axis,
    which is the output axis of flax-style ``(in, out)`` kernels only.

    Args:
      params: the parameter pytree (``nnx.Variable`` boxes allowed; None leaves, as
        ``eqx.filter`` leaves them, stay None).
      norms: a pytree with the same leaf names as the (unboxed) params; a None leaf gives a
        None score.

    Returns:
      A pytree like the (unboxed) params: float32 scores, or None where norms is None.

    Raises:
      ValueError: if names or shapes do not match (the message names the leaf).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.array([[1.0, -2.0], [3.0, 4.0]]), "b": jnp.ones(2)}
      >>> norms = {"w": jnp.array([10.0, 1.0]), "b": None}
      >>> scores = jaxprune.wanda_scores(params, norms)
      >>> scores["w"].tolist(), scores["b"]
      ([[10.0, 20.0], [3.0, 4.0]], None)

    References:
      Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
      Models" (Wanda), 2023, https://arxiv.org/abs/2306.11695
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree_lib.unbox(params))
    names = [tree_lib.path_name(path) for path, _ in flat]
    norm_flat = jax.tree_util.tree_flatten_with_path(
        tree_lib.unbox(norms), is_leaf=lambda x: x is None
    )[0]
    by_name = {tree_lib.path_name(path): n for path, n in norm_flat}
    missing = sorted(set(names) - set(by_name))
    # None entries where params have None leaves (eqx.filter) are not extra weights.
    extra = sorted(k for k in set(by_name) - set(names) if by_name[k] is not None)
    if missing or extra:
        raise ValueError(
            f"wanda_scores: norms do not match params: missing {missing}, unexpected {extra}"
        )
    out: list[jax.Array | None] = []
    for name, (_, w) in zip(names, flat, strict=True):
        n = by_name[name]
        if n is None:
            out.append(None)
            continue
        if not jnp.issubdtype(jnp.result_type(w), jnp.floating):
            raise ValueError(f"wanda_scores: {name!r} is not a floating-point array")
        n = broadcast_norms("wanda_scores", name, tuple(np.shape(w)), n)
        out.append(jnp.abs(w).astype(jnp.float32) * n)
    return jax.tree.unflatten(treedef, out)


def layout_from_norms(
    shape: tuple[int, ...], norm_shape: tuple[int, ...]
) -> layout_lib.WeightLayout:
    """The layout the norms' shape shows: their covered axes are the inputs, the rest outputs.

    Norms of a leading prefix cover that prefix; norms at the weight's rank cover the axes of
    the weight's size (above 1). Norms that cover every axis (grouped convs) leave the last
    axis as the output (flax's convention). Stacked and per-head axes cannot be told from
    inputs this way: pass :func:`jaxprune.weight_layouts` for those.
    """
    if len(norm_shape) < len(shape):
        inputs = tuple(range(len(norm_shape)))
    else:
        inputs = tuple(
            a for a, (n, k) in enumerate(zip(shape, norm_shape, strict=True)) if k == n > 1
        )
    if len(inputs) == len(shape) or not inputs:
        inputs = tuple(range(len(shape) - 1))
    return layout_lib.WeightLayout(shape, inputs)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def mask_leaf(
    leaf: jax.Array,
    norm: jax.Array,
    layout: layout_lib.WeightLayout,
    target: float,
    nm: tuple[int, int] | None,
) -> tuple[jax.Array, jax.Array]:
    """Wanda on one weight: ``(pruned_leaf, keep)`` from its norms (broadcastable to it).

    Each output unit (a row of every ``(out, d)`` matrix of the layout) keeps its
    ``num_kept(d, s)`` largest scores ``|w| * norm`` (ties at its threshold kept, as
    ``pruning_scope="output"``); N:M keeps the ``n`` largest of every ``m`` consecutive input
    features of an output unit (ties to the lower index).
    """
    scores = layout.to_matrix(jnp.abs(leaf).astype(jnp.float32) * norm)  # (groups, out, d)
    if nm is not None:
        mask = structure.nm_mask(scores, nm[1], nm[0], axis=2)
    else:
        rows = scores.reshape(-1, layout.d)
        mask = allocation.output_mask(rows.T, target).T.reshape(scores.shape)
    keep = layout.from_matrix(mask)
    return jnp.where(keep, leaf, jnp.zeros_like(leaf)), keep


def wanda(
    params: Any,
    norms: Any,
    hparams: Any = None,
    *,
    sparsity: float | None = None,
    layouts: Any = None,
) -> tuple[Any, Any]:
    """Wanda: prunes every weight with norms, comparing ``|W| * ||X||`` within each output unit.

    The rule (Sun et al. 2023): the score of weight entry ``W[i, j]`` (output unit ``i``, input
    feature ``j``) is ``|W[i, j]| * ||X_j||``, the norm over all calibration tokens of the
    input it multiplies (:func:`jaxprune.activation_norms`); every output unit keeps its
    ``k = round(d * (1 - s))`` largest scores (ties at its threshold kept), or with N:M
    (``sparsity_type="2:4"``) the ``n`` largest of every ``m`` consecutive input features. The
    output units are those of the weight's :class:`jaxprune.WeightLayout` -- the rows of the
    paper's ``(out, d)`` matrix whatever the weight's layout -- taken from ``layouts`` or, by
    default, from the norms' shape (the axes the norms cover are the inputs: right for
    ``(in, out)``, ``(out, in)``, convs and einsum kernels; stacked ``(L, in, out)`` and
    per-head weights need ``layouts=jaxprune.weight_layouts(fn, params, batch)``). No weight is
    updated. The targets: ``sparsity`` (default ``hparams.target_sparsity``),
    ``weight_sparsity_map`` entries, or the ERK or OWL shares (``sparsity_distribution="erk"``,
    ``"owl"``: OWL's outlier ratios of these scores, ``owl_m``, ``owl_lambda``, ``owl_groups``).

    Args:
      params: the params pytree (``nnx.Variable`` boxes allowed; not modified).
      norms: :func:`jaxprune.activation_norms` of the weights to prune (None leaves are left
        alone).
      hparams: hyperparameters (:func:`jaxprune.get_pruning_hparams`, a dict or a TF HParams
        string); ``pruning_scope`` may be ``"layer"`` or ``"output"`` (both mean Wanda's
        per-output-unit comparison), not ``"global"``; no channels, blocks or histogram.
      sparsity: the target, a Python number in ``[0, 1)``; default ``hparams.target_sparsity``.
      layouts: optional pytree like params of :class:`jaxprune.WeightLayout` (None leaves: the
        default above).

    Returns:
      ``(pruned_params, masks)``: pruned weights exactly 0; a bool mask (True = keep) per pruned
      weight, None for every other leaf.

    Raises:
      ValueError: before any computation, for hyperparameters that do not apply, a bad
        ``sparsity``, norms or layouts that do not fit the weights (naming the weight).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.array([[1.0, -2.0], [3.0, 4.0]])}  # (in, out)
      >>> norms = {"w": jnp.array([10.0, 1.0])}
      >>> pruned, masks = jaxprune.wanda(params, norms, sparsity=0.5)
      >>> pruned["w"].tolist()  # each output (column) keeps its larger |w| * norm
      [[1.0, -2.0], [0.0, 0.0]]

    References:
      Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
      Models" (Wanda), 2023, https://arxiv.org/abs/2306.11695
    """

    def default_layout(name, leaf, norm):
        del name
        return layout_from_norms(tuple(np.shape(leaf)), tuple(np.shape(norm)))

    def owl_scores(leaves, norm_leaves, lays):
        return [
            None
            if lay is None
            else jnp.abs(leaf).astype(jnp.float32)
            * broadcast_norms("wanda", "", tuple(np.shape(leaf)), n)
            for leaf, n, lay in zip(leaves, norm_leaves, lays, strict=True)
        ]

    leaves, treedef, norm_leaves, rules = calibrated.resolve(
        "wanda", params, norms, hparams, sparsity, layouts, default_layout, owl_scores
    )
    out: list[Any] = list(leaves)
    masks: list[Any] = [None] * len(leaves)
    for i, (n, rule) in enumerate(zip(norm_leaves, rules, strict=True)):
        if rule is None:
            continue
        n = broadcast_norms("wanda", rule.name, tuple(np.shape(leaves[i])), n)
        out[i], masks[i] = mask_leaf(leaves[i], n, rule.layout, rule.target, rule.nm)
    return jax.tree.unflatten(treedef, out), jax.tree.unflatten(treedef, masks)
