"""Parameter names, unboxing of Flax variables, and the choice of prunable leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

ParamsFilter = Callable[[str, Any], bool] | Any  # a callable, or a pytree of bools


def path_name(path: tuple) -> str:
    """Joins a pytree key path with "/", e.g. ``params/Dense_0/kernel``.

    Args:
      path: a key path from ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The parameter's name as matched by ``weight_sparsity_map`` and
      ``block_dims_map`` and used in :func:`summaries`.

    Examples:
      >>> import jax, jaxprune
      >>> [(p, _)] = jax.tree_util.tree_flatten_with_path({"Dense_0": {"kernel": 1}})[0]
      >>> jaxprune.path_name(p)
      'Dense_0/kernel'
    """
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(str(key.name))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:  # pragma: no cover - future key types
            parts.append(str(key))
    return "/".join(parts)


def _is_boxed(x: Any) -> bool:
    # flax.nnx.Variable (Param, OptState, ...): a pytree node holding one value.
    # flax < 0.12.1 has no get_value(): its nnx.Variable holds it in .value.
    module = type(x).__module__
    return module.startswith("flax.") and (
        hasattr(x, "get_value") or (module.startswith("flax.nnx") and hasattr(x, "value"))
    )


def unbox(tree: Any) -> Any:
    """Replaces Flax ``nnx.Variable`` boxes in ``tree`` by the arrays they hold."""
    get = lambda x: x.get_value() if hasattr(x, "get_value") else x.value  # flax < 0.12.1
    return jax.tree.map(lambda x: get(x) if _is_boxed(x) else x, tree, is_leaf=_is_boxed)


def _is_float_array(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def default_prunable(name: str, leaf: Any) -> bool:
    """The default filter: floating-point arrays with ``ndim >= 2`` (kernels, embeddings).

    Biases, norm scales and every other 0-D or 1-D leaf are left dense, as are
    integer and boolean leaves.

    Args:
      name: the parameter's name (unused by the default).
      leaf: the parameter.

    Returns:
      Whether the leaf is pruned.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> jaxprune.default_prunable("w", jnp.ones((3, 4)))
      True
      >>> jaxprune.default_prunable("b", jnp.ones(4))
      False
    """
    del name
    return _is_float_array(leaf) and getattr(leaf, "ndim", 0) >= 2


def leaf_names_and_prunable(
    params: Any, params_filter: ParamsFilter | None
) -> tuple[list[Any], jax.tree_util.PyTreeDef, list[str], list[bool]]:
    """Flattens (unboxed) params; returns leaves, treedef, names and which leaves are pruned."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [path_name(path) for path, _ in flat]
    leaves = [leaf for _, leaf in flat]
    if params_filter is None:
        prunable = [default_prunable(n, leaf) for n, leaf in zip(names, leaves, strict=True)]
    elif callable(params_filter):
        prunable = [bool(params_filter(n, leaf)) for n, leaf in zip(names, leaves, strict=True)]
    else:
        try:
            flags = treedef.flatten_up_to(params_filter)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "params_filter must be a callable (name, leaf) -> bool or a pytree of bools "
                f"with the structure of params; got a mismatching tree: {e}"
            ) from None
        prunable = [bool(f) for f in flags]
    for n, leaf, p in zip(names, leaves, prunable, strict=True):
        if p and not _is_float_array(leaf):
            raise ValueError(
                f"params_filter selects {n!r} for pruning, but it is not a floating-point "
                f"array (dtype {getattr(leaf, 'dtype', type(leaf).__name__)})"
            )
    return leaves, treedef, names, prunable
