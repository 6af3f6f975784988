"""The frame of the calibrated one-shot methods (Wanda, SparseGPT): which weights, at what target.

:func:`jaxprune.wanda` and :func:`jaxprune.sparsegpt` each take ``params``, one calibration
statistic per weight (norms or Hessians: None leaves are not pruned), the hyperparameters and
optional layouts. This module resolves, once, every pruned weight's :class:`MethodRule`: its
end target (``weight_sparsity_map``, the ERK or OWL share -- OWL's from the method's scores,
Wanda's ``|W| * ||X||`` --, or ``sparsity``), its N:M structure and its
:class:`jaxprune.WeightLayout`, and rejects the hyperparameters that have no meaning for these
methods, naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune._src import allocation, oneshot, structure
from jaxprune._src import layout as layout_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.hparams import PruningHParams, as_hparams


@dataclasses.dataclass(frozen=True)
class MethodRule:
    """How one weight is pruned by a calibrated method.

    Attributes:
      name: the weight's "/"-joined path.
      target: its sparsity (the fraction of its entries pruned).
      nm: ``(n, m)`` for N:M (keep ``n`` of every ``m`` consecutive input features of an output
        unit), else None (unstructured).
      layout: the weight as ``(groups, out, d)`` matrices.
      fixed: whether ``target`` comes from ``weight_sparsity_map``.
    """

    name: str
    target: float
    nm: tuple[int, int] | None
    layout: layout_lib.WeightLayout
    fixed: bool = False


def check_hparams(hp: PruningHParams, where: str) -> structure.NByM | None:
    """The N:M structure of ``hp`` (None: unstructured); ValueError for what does not apply."""
    kind = structure.parse_sparsity_type(hp.sparsity_type, hp.sparsity_axis)
    if isinstance(kind, structure.Channel):
        raise ValueError(
            f"{where}: sparsity_type='channel' does not apply (it prunes whole output units; "
            "use jaxprune.prune); use 'unstructured' or an N:M type such as '2:4'"
        )
    if hp.pruning_scope == "global":
        raise ValueError(
            f"{where}: pruning_scope='global' does not apply: every weight is pruned to its own "
            "target (use sparsity_distribution='owl' or 'erk' to vary the targets)"
        )
    if hp.threshold_method != "exact":
        raise ValueError(
            f"{where}: threshold_method={hp.threshold_method!r} does not apply: the selection "
            "is exact; use 'exact'"
        )
    if isinstance(kind, structure.NByM):
        if hp.sparsity_axis is not None:
            raise ValueError(
                f"{where}: sparsity_axis={hp.sparsity_axis} does not apply: N:M groups run "
                "along each weight's input features (its WeightLayout); leave it None"
            )
        return kind
    return None


def resolve(
    where: str,
    params: Any,
    stats: Any,
    hparams: Any,
    sparsity: Any,
    layouts: Any,
    default_layout: Callable[[str, Any, Any], layout_lib.WeightLayout | str],
    owl_scores: Callable[[list[Any], list[Any], list[Any]], list[Any]] | None = None,
) -> tuple[list[Any], Any, list[Any], list[MethodRule | None]]:
    """Flattens params and stats and resolves the rule of every weight with a statistic.

    Args:
      where: the calling function's name, for messages.
      params: the params pytree (boxes allowed).
      stats: a pytree with the structure of params: one statistic per pruned weight, None
        for the other leaves.
      hparams: hyperparameters (anything :func:`jaxprune.prune` accepts).
      sparsity: the overall target (default ``hparams.target_sparsity``).
      layouts: None, or a pytree like params of :class:`jaxprune.WeightLayout` (None leaves
        take the default).
      default_layout: ``(name, leaf, stat) -> WeightLayout or reason`` when no layout is given.
      owl_scores: for ``sparsity_distribution="owl"``: ``(leaves, stats, layouts) -> scores``
        (one array per pruned leaf, None for the others), whose outliers set OWL's targets.

    Returns:
      ``(leaves, treedef, stat_leaves, rules)``, rules None for the leaves left alone.
    """
    hp = as_hparams(hparams)
    overall = oneshot.static_sparsity(sparsity, where)
    nm = check_hparams(hp, where)
    params = tree_lib.unbox(params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [tree_lib.path_name(p) for p, _ in flat]
    leaves = [leaf for _, leaf in flat]
    stat_leaves = _flatten_like(treedef, stats, where, "the statistics")
    layout_leaves = (
        [None] * len(leaves)
        if layouts is None
        else _flatten_like(treedef, layouts, where, "layouts")
    )
    pruned = [s is not None for s in stat_leaves]
    for name, leaf, p in zip(names, leaves, pruned, strict=True):
        if not p:
            continue
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(f"{where}: weight {name!r} is not a floating-point array")
        if hp.block_dims_for(name) != (1, 1):
            raise ValueError(
                f"{where}: TF's block pruning (block dims {hp.block_dims_for(name)} for weight "
                f"{name!r}) does not apply; use 1x1 blocks"
            )
    if (
        nm is not None
        and overall is not None
        and not math.isclose(overall, nm.sparsity, rel_tol=0.0, abs_tol=1e-6)
    ):
        raise ValueError(
            f"{where}: sparsity={overall!r} does not match sparsity_type={hp.sparsity_type!r}: "
            f"N:M prunes exactly (M-N)/M = {nm.sparsity!r}"
        )
    lays: list[layout_lib.WeightLayout | None] = [None] * len(leaves)
    for i, p in enumerate(pruned):
        if not p or not getattr(leaves[i], "size", 0):
            continue
        given = layout_leaves[i]
        if given is not None:
            if not isinstance(given, layout_lib.WeightLayout) or given.shape != tuple(
                leaves[i].shape
            ):
                raise ValueError(
                    f"{where}: the layout of {names[i]!r} must be a WeightLayout of shape "
                    f"{tuple(leaves[i].shape)}, got {given!r}"
                )
            lay: layout_lib.WeightLayout | str = given
        else:
            lay = default_layout(names[i], leaves[i], stat_leaves[i])
        if isinstance(lay, str):
            raise ValueError(f"{where}: weight {names[i]!r}: {lay}")
        if nm is not None and lay.d % nm.m:
            raise ValueError(
                f"{where}: sparsity_type={hp.sparsity_type!r}: weight {names[i]!r} has "
                f"{lay.d} input features (axes {lay.input_axes} of {lay.shape}), not a "
                f"multiple of M={nm.m}; leave it out (None statistic)"
            )
        lays[i] = lay
    unstructured = hp.replace(
        sparsity_type="unstructured", target_sparsity=nm.sparsity if nm else hp.target_sparsity
    )
    values = None
    if hp.sparsity_distribution == "owl" and owl_scores is not None:
        values = owl_scores(leaves, stat_leaves, lays)
    base = allocation.resolve_rules(unstructured, names, leaves, pruned, overall, values)
    rules: list[MethodRule | None] = [None] * len(leaves)
    for i, rule in enumerate(base):
        chosen = lays[i]
        if rule is not None and chosen is not None:
            pair = None if nm is None else (nm.n, nm.m)
            rules[i] = MethodRule(rule.name, rule.target, pair, chosen, rule.fixed)
    return leaves, treedef, stat_leaves, rules


def _flatten_like(treedef: Any, tree: Any, where: str, what: str) -> list[Any]:
    try:
        return tree_lib.flatten_up_to(treedef, tree_lib.unbox(tree))
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{where}: {what} must be a pytree with the structure of params (None leaves for "
            f"the weights left alone): {e}"
        ) from None


def num_pruned(numel: int, sparsity: float) -> int:
    """``floor(numel * sparsity)`` in float64 (as SparseGPT's ``int(numel * sparsity)``)."""
    return math.floor(numel * sparsity)
