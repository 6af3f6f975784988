"""Abstract optimizer states: restore targets for checkpoints, with shardings.

jaxprune needs no checkpoint library. Restoring an optax state (a :class:`PruningState` with
its ``optax.MaskedNode()`` placeholders, inside a chain) needs a target tree, because a
checkpoint alone stores neither NamedTuple types nor empty nodes (orbax restores a target-less
``MaskedNode`` as ``None`` and a NamedTuple as a dict). :func:`abstract_state` builds that
target from the optimizer and the (possibly sharded, possibly abstract) params.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxprune._src import tree as tree_lib
from jaxprune._src.state import PruningState


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _replicated(params: Any) -> jax.sharding.Sharding | None:
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return NamedSharding(sharding.mesh, PartitionSpec())
        if sharding is not None:
            return sharding
    return None


def abstract_state(tx: optax.GradientTransformation, params: Any) -> Any:
    """The abstract state of ``tx`` for ``params``: a restore target with shardings.

    ``jax.eval_shape(tx.init, params)`` with a sharding on every leaf: a state leaf shaped like
    its parameter (Adam's moments, pruning masks) gets the parameter's sharding, every other
    leaf (counts, thresholds, the scheduled sparsity) is replicated over the params' mesh.
    ``optax.MaskedNode()`` placeholders stay in place, so the restored state has exactly the
    structure ``tx.update`` expects.

    Args:
      tx: the optimizer, e.g. ``optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning())``.
      params: the params: arrays or ``jax.ShapeDtypeStruct`` s, sharded or not (unsharded
        abstract params give leaves without a sharding).

    Returns:
      A pytree of ``jax.ShapeDtypeStruct`` (and ``optax.MaskedNode()``) shaped like
      ``tx.init(params)``, e.g. the target of ``orbax.checkpoint.StandardCheckpointer.restore``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxprune
      >>> from jaxprune._src.checkpoint import abstract_state
      >>> tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning())
      >>> state = abstract_state(tx, {"w": jnp.ones((4, 4)), "b": jnp.ones(4)})
      >>> jaxprune.get_pruning_state(state).masks
      {'b': MaskedNode(), 'w': ShapeDtypeStruct(shape=(4, 4), dtype=bool, ...)}
    """
    params = tree_lib.unbox(params)
    abstract = jax.eval_shape(tx.init, params)
    replicated = _replicated(params)

    def like(leaf, sharding):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    def param_leaf(leaf, param):
        if _is_masked(leaf):
            return leaf
        sharding = getattr(param, "sharding", None)
        if getattr(param, "shape", None) != leaf.shape:
            sharding = replicated
        return like(leaf, sharding)

    def other_leaf(leaf):
        return leaf if _is_masked(leaf) else like(leaf, replicated)

    with warnings.catch_warnings():  # tree_map_params inits tx on a placeholder
        warnings.simplefilter("ignore")
        out = optax.tree_map_params(
            tx, param_leaf, abstract, params, transform_non_params=other_leaf, is_leaf=_is_masked
        )

    # A PruningState's masks are shaped like params, but tree_map_params cannot see it.
    def pruning_state(node):
        if not isinstance(node, PruningState):
            return node
        masks = jax.tree.map(param_leaf, node.masks, params, is_leaf=_is_masked)
        return node._replace(masks=masks)

    return jax.tree.map(pruning_state, out, is_leaf=lambda x: isinstance(x, PruningState))
