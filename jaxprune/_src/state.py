"""The pruning state and the pure functions that read it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._src import tree as tree_lib


class PruningState(NamedTuple):
    """State of :func:`magnitude_pruning` (TF's mask, threshold and step variables).

    Attributes:
      count: int32 global step: the number of updates applied so far.
      last_update_step: int32 step of the last mask update (0 before any).
      sparsity: float32 scheduled (global) sparsity at ``count``.
      masks: a pytree shaped like params: a bool array (True = keep) for each
        pruned leaf, ``optax.MaskedNode()`` for every other leaf. TF kept
        float32 masks; these take one byte per parameter.
      thresholds: like ``masks``, with a float32 scalar threshold per pruned
        leaf (in pooled units for block-pruned leaves).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> state = jaxprune.magnitude_pruning().init({"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
      >>> state.masks["w"].dtype, state.masks["b"]
      (dtype('bool'), MaskedNode())
    """

    count: jax.Array
    last_update_step: jax.Array
    sparsity: jax.Array
    masks: Any
    thresholds: Any


def _is_state(x: Any) -> bool:
    return isinstance(x, PruningState)


def get_pruning_state(opt_state: Any) -> PruningState:
    """Finds the :class:`PruningState` inside any optax state.

    Searches chains, ``optax.inject_hyperparams``/``masked``/``MultiSteps``
    states, Flax ``TrainState.opt_state`` and ``nnx.Optimizer.opt_state``
    (whose boxed arrays are unboxed).

    Args:
      opt_state: an optimizer state, or a :class:`PruningState` itself.

    Returns:
      The single :class:`PruningState` in ``opt_state``.

    Raises:
      ValueError: if there is none, or more than one.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxprune
      >>> tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning())
      >>> state = jaxprune.get_pruning_state(tx.init({"w": jnp.ones((2, 2))}))
      >>> int(state.count)
      0
    """
    found = [
        x for x in jax.tree.leaves(opt_state, is_leaf=_is_state) if isinstance(x, PruningState)
    ]
    if not found:
        raise ValueError(
            "No PruningState found in the optimizer state: is jaxprune.magnitude_pruning "
            "part of the optax chain?"
        )
    if len(found) > 1:
        raise ValueError(
            f"Found {len(found)} PruningStates in the optimizer state; pass the one you mean"
        )
    return tree_lib.unbox(found[0])


def _masks_of(state_or_masks: Any) -> Any:
    """The masks tree of a PruningState, of an optimizer state holding one, or a masks pytree.

    A masks pytree (as :func:`jaxprune.prune` returns) holds only bool arrays and ``None``.
    """
    if isinstance(state_or_masks, PruningState):
        return state_or_masks.masks
    try:
        return get_pruning_state(state_or_masks).masks
    except ValueError:
        leaves = jax.tree.leaves(tree_lib.unbox(state_or_masks))
        if leaves and all(getattr(x, "dtype", None) == jnp.bool_ for x in leaves):
            return state_or_masks
        raise


def _masked_leaves(params: Any, state: Any):
    """Pairs each leaf of ``params`` with its mask (or None), matching them by tree path.

    Matching by path (the path's parts, e.g. ``("Dense_0", "kernel")``) rather than by tree
    structure lets a mask tree built from one container type (e.g. Flax's ``nnx.State``) apply
    to params held in another (a plain dict). Unlike the "/"-joined name, the parts are never
    ambiguous: ``{"x/w": a}`` and ``{"x": {"w": b}}`` get different masks.
    """
    params = tree_lib.unbox(params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    masks_by_path = {
        tree_lib.path_parts(path): mask
        for path, mask in jax.tree_util.tree_flatten_with_path(tree_lib.unbox(_masks_of(state)))[0]
    }
    paths = [tree_lib.path_parts(path) for path, _ in flat]
    missing = sorted("/".join(p) for p in set(masks_by_path) - set(paths))
    if missing:
        raise ValueError(
            f"params do not match the pruning masks: no parameter named {missing} "
            f"(params have {['/'.join(p) for p in paths]})"
        )
    masks = [masks_by_path.get(p) for p in paths]
    for path, leaf, mask in zip(paths, (leaf for _, leaf in flat), masks, strict=True):
        if mask is not None and jnp.shape(mask) != jnp.shape(leaf):
            raise ValueError(
                f"Parameter {'/'.join(path)!r} (path {path}) has shape {jnp.shape(leaf)}, but "
                "its pruning mask "
                f"has shape {jnp.shape(mask)}: the params and the pruning state do not belong "
                "together (a mask is never broadcast onto a parameter of another shape)"
            )
    return [leaf for _, leaf in flat], treedef, masks


def apply_masks(params: Any, state: Any) -> Any:
    """Zeroes the pruned weights of ``params`` (TF's ``apply_mask``), jit-safe.

    Uses ``where``, not a multiply, so a NaN or Inf in a pruned position
    becomes an exact 0. Leaves without a mask are returned unchanged.

    Args:
      params: a params pytree (``nnx.Variable`` boxes are unboxed).
      state: a :class:`PruningState`, any optimizer state containing one, or a
        masks pytree (bool arrays and None, as :func:`prune` returns).

    Returns:
      The masked params (a new pytree; ``params`` is not modified).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.array([[1., -3.], [0.5, 2.]])}
      >>> p = jaxprune.Pruning()
      >>> state = p.mask_update(params, p.init(params), step=100)  # s(100) = 0.5
      >>> jaxprune.apply_masks(params, state)["w"].tolist()
      [[0.0, -3.0], [0.0, 2.0]]
    """
    leaves, treedef, masks = _masked_leaves(params, state)
    out = [
        leaf if m is None else jnp.where(m, leaf, jnp.zeros_like(leaf))
        for leaf, m in zip(leaves, masks, strict=True)
    ]
    return treedef.unflatten(out)


def strip_pruning(params: Any, state: Any) -> Any:
    """Returns plain dense params with the masks applied and no pruning artefact left.

    TF's ``strip_pruning_vars``: the result is the same pytree of ordinary
    arrays as ``params`` (Flax boxes removed), pruned entries exactly 0, ready
    to save or serve without jaxprune installed.

    Args:
      params: the trained params.
      state: a :class:`PruningState`, any optimizer state containing one, or a
        masks pytree (as :func:`prune` and :func:`fixed_masks` use).

    Returns:
      The stripped params.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.array([[1., -3.], [0.5, 2.]]), "b": jnp.ones(2)}
      >>> p = jaxprune.Pruning(jaxprune.get_pruning_hparams())
      >>> state = p.mask_update(params, p.init(params), step=100)
      >>> jaxprune.strip_pruning(params, state)["w"].tolist()
      [[0.0, -3.0], [0.0, 2.0]]
    """
    return jax.tree.map(jnp.asarray, apply_masks(params, state))


def summaries(state: Any, *, name: str = "model_pruning") -> dict[str, jax.Array]:
    """Scalar summaries of the pruning state (TF's ``add_pruning_summaries``).

    Args:
      state: a :class:`PruningState`, or any optimizer state containing one.
      name: the summary prefix; pass ``hparams.name`` (TF used the spec's name).

    Returns:
      ``{"<name>/sparsity": scheduled global sparsity,
      "<name>/last_mask_update_step": ...,
      "<param name>/sparsity": fraction of the parameter's mask that is 0,
      "<param name>/threshold": its threshold}``, all scalar arrays.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxprune
      >>> tx = jaxprune.magnitude_pruning()
      >>> for key in sorted(jaxprune.summaries(tx.init({"dense": {"kernel": jnp.ones((2, 2))}}))):
      ...     print(key)
      dense/kernel/sparsity
      dense/kernel/threshold
      model_pruning/last_mask_update_step
      model_pruning/sparsity
    """
    if not isinstance(state, PruningState):
        state = get_pruning_state(state)
    state = tree_lib.unbox(state)
    out = {
        f"{name}/sparsity": jnp.asarray(state.sparsity),
        f"{name}/last_mask_update_step": jnp.asarray(state.last_update_step),
    }
    for path, mask in jax.tree_util.tree_flatten_with_path(state.masks)[0]:
        sparsity = 1.0 - jnp.mean(mask.astype(jnp.float32))
        _add_summary(out, f"{tree_lib.path_name(path)}/sparsity", path, sparsity)
    for path, threshold in jax.tree_util.tree_flatten_with_path(state.thresholds)[0]:
        _add_summary(out, f"{tree_lib.path_name(path)}/threshold", path, jnp.asarray(threshold))
    return out


def _add_summary(out: dict[str, jax.Array], key: str, path: tuple, value: jax.Array) -> None:
    if key in out:
        raise ValueError(
            f"Two pruning state entries have the summary name {key!r} (the second at "
            f"{jax.tree_util.keystr(path)}): their '/'-joined parameter names collide"
        )
    out[key] = value
