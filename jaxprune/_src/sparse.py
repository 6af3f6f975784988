"""Pruned params as ``jax.experimental.sparse`` BCOO arrays (stored entries only)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from jaxprune._src import tree as tree_lib
from jaxprune._src.state import PruningState, get_pruning_state


def to_bcoo(params: Any, masks: Any = None) -> Any:
    """Converts the pruned leaves of ``params`` to ``jax.experimental.sparse.BCOO`` arrays.

    With ``masks``, every masked leaf becomes a BCOO holding exactly the kept entries (mask
    True), in row-major order: ``nse`` is the number of kept entries, a kept weight that happens
    to be 0 is stored too, and a pruned position holds 0 even if ``params`` has another value
    there (the BCOO is ``where(mask, leaf, 0)``). Without masks, every leaf that
    :func:`default_prunable` selects (floating point, ``ndim >= 2``) and that contains at least
    one exact zero (``+0.0`` or ``-0.0``) becomes a BCOO of its nonzero entries (NaN counts as
    nonzero). Every other leaf is returned unchanged.

    The BCOO arrays work in jitted code (``x @ w``, ``w.todense()``,
    ``jax.experimental.sparse.sparsify``), but ``jax.experimental.sparse`` is documented as an
    experimental reference implementation, not meant for performance-critical code; measure
    before you rely on it (``benchmarks/what_sparsity_buys.py``). On CPU, ``x @ w`` needs
    temporaries of about ``nse x batch`` values. A BCOO stores a 4-byte int32 index per
    dimension per entry next to the value, so a 2-D float32 weight takes less memory as BCOO
    only above 2/3 sparsity. For speed, remove whole channels instead; for small files, save
    the stripped dense params with a compressing checkpointer (with orbax a 90 %-sparse float32
    model takes at most 0.15x the dense bytes, ``tests/test_checkpoint_size.py``).

    ``to_bcoo`` itself is not traceable (``nse``, a shape, depends on the values): call it
    outside ``jax.jit``. The conversion runs on the host: sharded leaves are gathered, and the
    BCOO arrays are put on the default device (shard them yourself if needed).

    Args:
      params: a params pytree (Flax ``nnx.Variable`` boxes are unboxed).
      masks: None; or the masks from :func:`prune` (a pytree like ``params``, a bool array per
        pruned leaf, None for the others); or a :class:`PruningState` or any optimizer state
        containing one (its masks are used). Masks are matched to params by parameter name
        (:func:`path_name`), so masks of an ``nnx.State`` apply to the same params as a dict.

    Returns:
      A pytree with the structure of ``params`` (unboxed) in which each converted leaf is a
      ``BCOO`` of the leaf's shape and dtype with int32 indices (sorted, unique), and every
      other leaf is the original object. ``params`` is not modified.

    Raises:
      ValueError: if called on traced values, if a mask is not a bool array of its leaf's shape
        or names no parameter, or if a mask is given for a 0-D leaf (naming the leaf and the
        value).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.array([[1., -4.], [3., 2.]]), "b": jnp.ones(2)}
      >>> pruned, masks = jaxprune.prune(params, sparsity=0.5)
      >>> sp = jaxprune.to_bcoo(pruned, masks)
      >>> sp["w"]
      BCOO(float32[2, 2], nse=2)
      >>> sp["w"].indices.tolist(), sp["w"].data.tolist()
      ([[0, 1], [1, 0]], [-4.0, 3.0])
      >>> (jnp.array([[1., 1.]]) @ sp["w"] + sp["b"]).tolist()
      [[4.0, -3.0]]
      >>> type(sp["b"]) is type(params["b"])
      True

    References:
      JAX, ``jax.experimental.sparse`` (BCOO),
      https://docs.jax.dev/en/latest/jax.experimental.sparse.html;
      jaxpruner issues #8 and #14 (sparse inference),
      https://github.com/google-research/jaxpruner/issues/8,
      https://github.com/google-research/jaxpruner/issues/14
    """
    params = tree_lib.unbox(params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [tree_lib.path_name(path) for path, _ in flat]
    leaves = [leaf for _, leaf in flat]
    if masks is None:
        leaf_masks = [None] * len(leaves)
        chosen = [tree_lib.default_prunable(n, x) for n, x in zip(names, leaves, strict=True)]
    else:
        leaf_masks = _masks_by_name(masks, names)
        chosen = [m is not None for m in leaf_masks]
    for name, leaf, mask, c in zip(names, leaves, leaf_masks, chosen, strict=True):
        if c:
            _check(name, leaf, mask)
    out = []
    for leaf, mask, c in zip(leaves, leaf_masks, chosen, strict=True):
        if not c:
            out.append(leaf)
            continue
        # On the host: the conversion is a one-off, any sharding is gathered, and nothing
        # compiles per shape or per number of kept entries.
        values = np.asarray(leaf)
        keep = values != 0 if mask is None else np.asarray(mask)
        if mask is None and keep.all():
            out.append(leaf)  # no exact zero: nothing was pruned here
            continue
        indices = np.argwhere(keep).astype(np.int32)  # row-major, as jnp.nonzero
        out.append(
            sparse.BCOO(
                (jnp.asarray(values[keep]), jnp.asarray(indices)),
                shape=tuple(values.shape),
                indices_sorted=True,
                unique_indices=True,
            )
        )
    return jax.tree.unflatten(treedef, out)


def _masks_by_name(masks: Any, names: list[str]) -> list[Any]:
    """One mask (or None) per params leaf, from a masks pytree, a PruningState or an opt state."""
    found = jax.tree.leaves(masks, is_leaf=lambda x: isinstance(x, PruningState))
    if any(isinstance(x, PruningState) for x in found):
        masks = get_pruning_state(masks).masks
    flat = jax.tree_util.tree_flatten_with_path(tree_lib.unbox(masks))[0]
    by_name = {tree_lib.path_name(path): mask for path, mask in flat}
    missing = sorted(set(by_name) - set(names))
    if missing:
        raise ValueError(
            f"to_bcoo: masks name parameters that params do not have: {missing} "
            f"(params have {names})"
        )
    return [by_name.get(n) for n in names]


def _check(name: str, leaf: Any, mask: Any) -> None:
    """Raises a ValueError naming the leaf unless ``leaf`` (and ``mask``) can be converted."""
    for what, x in (("param", leaf), ("mask", mask)):
        if isinstance(x, jax.core.Tracer):
            raise ValueError(
                f"to_bcoo needs concrete arrays (a BCOO's number of stored entries is a shape "
                f"that depends on the values): the {what} {name!r} is traced; call to_bcoo "
                "outside jax.jit / vmap / grad and pass the BCOO arrays into the jitted function"
            )
    shape = getattr(leaf, "shape", None)
    if shape is None or getattr(leaf, "dtype", None) is None:
        raise ValueError(
            f"to_bcoo: the mask of {name!r} belongs to a non-array param ({type(leaf).__name__})"
        )
    if len(shape) == 0:
        raise ValueError(f"to_bcoo: {name!r} is a scalar (shape ()); only arrays can be sparse")
    if mask is None:
        return
    mask_shape = getattr(mask, "shape", None)
    mask_dtype = getattr(mask, "dtype", None)
    if mask_shape is None or tuple(mask_shape) != tuple(shape) or mask_dtype != np.bool_:
        got = (
            f"{mask_dtype} {tuple(mask_shape)}"
            if mask_shape is not None
            else f"{type(mask).__name__} {mask!r}"
        )
        raise ValueError(
            f"to_bcoo: the mask of {name!r} must be a bool array of the param's shape "
            f"{tuple(shape)}, got {got}"
        )
