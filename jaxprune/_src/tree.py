"""Parameter names, unboxing of Flax variables, and the choice of prunable leaves."""

from __future__ import annotations

import sys
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
    return "/".join(path_parts(path))


def path_parts(path: tuple) -> tuple[str, ...]:
    """The parts of a key path as strings; unlike the "/"-joined name, never ambiguous.

    ``{"x/w": a}`` and ``{"x": {"w": b}}`` both have the name ``x/w`` but the parts
    ``("x/w",)`` and ``("x", "w")``. Masks are matched to params by these parts.
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
    return tuple(parts)


def _is_boxed(x: Any) -> bool:
    # flax.nnx.Variable (Param, OptState, ...): a pytree node holding one value.
    # flax < 0.12.1 has no get_value(): its nnx.Variable holds it in .value.
    module = type(x).__module__
    return module.startswith("flax.") and (
        hasattr(x, "get_value") or (module.startswith("flax.nnx") and hasattr(x, "value"))
    )


def _is_linen_box(x: Any) -> bool:
    """A linen ``flax.core.meta.AxisMetadata`` box (``nn.Partitioned`` and its subclasses)."""
    meta = sys.modules.get("flax.core.meta")  # flax is optional: only loaded modules can box
    return meta is not None and isinstance(x, meta.AxisMetadata)


def _is_any_box(x: Any) -> bool:
    return _is_boxed(x) or _is_linen_box(x)


def _nnx_value(x: Any) -> Any:
    """The value of an nnx ``Variable`` (flax < 0.12.1 has no ``get_value()``: ``.value``)."""
    return x.get_value() if hasattr(x, "get_value") else x.value


def _unbox_one(x: Any) -> Any:
    if _is_boxed(x):
        return _nnx_value(x)
    if _is_linen_box(x):
        # The raw value: ``Partitioned.unbox()`` would add a sharding constraint.
        return x.value if hasattr(x, "value") else x.unbox()
    return x


def unbox(tree: Any) -> Any:
    """Replaces Flax boxes in ``tree`` by the arrays they hold.

    Both nnx ``Variable`` s and linen's ``flax.core.meta.AxisMetadata`` boxes
    (``nn.Partitioned``, ``nn.with_logical_partitioning``) are unboxed, so a
    parameter has the same name (no trailing ``/value``) however it is boxed.
    """
    return jax.tree.map(_unbox_one, tree, is_leaf=_is_any_box)


def flatten_up_to(treedef: jax.tree_util.PyTreeDef, tree: Any) -> list[Any]:
    """``treedef.flatten_up_to(tree)``: the subtrees of ``tree`` at ``treedef``'s leaves.

    A function rather than the method so that callers type-check: jaxlib ships no
    stub for ``PyTreeDef``, and mypy sees the treedef that ``jax.tree.structure``
    returns as an unresolved type without this method. (Unflatten with
    ``jax.tree.unflatten(treedef, leaves)``, which is ``treedef.unflatten(leaves)``.)
    """
    return treedef.flatten_up_to(tree)


def rebox(template: Any, tree: Any) -> Any:
    """Puts the leaves of ``tree`` (shaped like ``unbox(template)``) into template's linen boxes.

    An optax state or update must keep the structure the user's params have: a
    linen-boxed param (``nn.Partitioned``) gets a boxed mask and a boxed update,
    with the same axis names, so ``nn.get_partition_spec`` fits them. nnx
    ``Variable`` boxes are not restored (nnx passes and takes plain arrays).
    ``optax.MaskedNode()`` entries of ``tree`` stay unboxed.
    """
    template = jax.tree.map(
        lambda x: _nnx_value(x) if _is_boxed(x) else x, template, is_leaf=_is_boxed
    )
    treedef = jax.tree.structure(template, is_leaf=_is_linen_box)
    if not any(_is_linen_box(b) for b in flatten_up_to(treedef, template)):
        return tree
    boxes = flatten_up_to(treedef, template)
    values = flatten_up_to(treedef, tree)
    return jax.tree.unflatten(
        treedef,
        [
            b.replace_boxed(v) if _is_linen_box(b) and hasattr(v, "shape") else v
            for b, v in zip(boxes, values, strict=True)
        ],
    )


def _is_float_array(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def default_prunable(name: str, leaf: Any) -> bool:
    """The default filter: floating-point arrays with ``ndim >= 2`` (kernels, embeddings).

    Biases, norm scales and every other 0-D or 1-D leaf are left dense, as are
    integer and boolean leaves and empty (zero-size) arrays.

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
    return _is_float_array(leaf) and getattr(leaf, "ndim", 0) >= 2 and getattr(leaf, "size", 1) > 0


def leaf_names_and_prunable(
    params: Any, params_filter: ParamsFilter | None
) -> tuple[list[Any], jax.tree_util.PyTreeDef, list[str], list[bool]]:
    """Flattens (unboxed) params; returns leaves, treedef, names and which leaves are pruned.

    A zero-size leaf is never pruned, even if ``params_filter`` selects it (there
    is nothing to prune). Two pruned leaves whose "/"-joined names collide (e.g.
    ``{"x/w": a, "x": {"w": b}}``) are rejected: their summaries and map entries
    could not tell them apart.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [path_name(path) for path, _ in flat]
    leaves = [leaf for _, leaf in flat]
    if params_filter is None:
        prunable = [default_prunable(n, leaf) for n, leaf in zip(names, leaves, strict=True)]
    elif callable(params_filter):
        prunable = [bool(params_filter(n, leaf)) for n, leaf in zip(names, leaves, strict=True)]
    else:
        try:
            flags = flatten_up_to(treedef, params_filter)
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
    prunable = [p and leaf.size > 0 for leaf, p in zip(leaves, prunable, strict=True)]
    _check_unique_names([path for (path, _), p in zip(flat, prunable, strict=True) if p])
    return leaves, treedef, names, prunable


def _check_unique_names(paths: list[tuple]) -> None:
    """Raises if two pruned leaves have the same "/"-joined name, naming both tree paths."""
    seen: dict[str, tuple] = {}
    for path in paths:
        name = path_name(path)
        if name in seen:
            raise ValueError(
                f"Two pruned parameters have the same name {name!r}: "
                f"{jax.tree_util.keystr(seen[name])} and {jax.tree_util.keystr(path)}. "
                "Names (the tree path joined with '/') identify parameters in summaries and "
                "in weight_sparsity_map / block_dims_map; rename one of the keys."
            )
        seen[name] = path
