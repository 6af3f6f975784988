"""SparseGPT (Frantar & Alistarh 2023): second-order one-shot pruning with weight reconstruction.

Each weight, viewed as the paper's ``(out, d)`` matrix ``W`` (:class:`jaxprune.WeightLayout`),
is pruned column block by column block from the Hessian ``H = X X^T`` of its inputs
(:func:`jaxprune.hessians`), and the weights not pruned are updated (Optimal Brain Surgeon) to
keep ``X W^T`` close to the dense layer's output. The exact rule is in :func:`sparsegpt`.

References:
  Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
  ICML 2023, https://arxiv.org/abs/2301.00774
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import calibrated, structure
from jaxprune._src import layout as layout_lib

_HIGHEST = jax.lax.Precision.HIGHEST


def inverse_hessian_factor(h: jax.Array, damping: float) -> tuple[jax.Array, jax.Array]:
    """``(U, dead)``: the upper Cholesky factor of the damped ``H^-1``, and the dead inputs.

    Dead inputs (``H_jj = 0``) get ``H_jj = 1``; then ``H += damping * mean(diag H) * I``;
    ``U`` is upper triangular with ``H^-1 = U^T U`` (exact zeros below the diagonal).
    """
    d = h.shape[-1]
    diag = jnp.diagonal(h)
    dead = diag == 0
    eye = jnp.eye(d, dtype=jnp.float32)
    h = h + eye * jnp.where(dead, 1.0, 0.0)
    h = h + eye * (damping * jnp.mean(jnp.diagonal(h)))
    lower = jnp.linalg.cholesky(h)
    hinv = jax.scipy.linalg.cho_solve((lower, True), eye)
    hinv = (hinv + hinv.T) / 2
    return jnp.triu(jnp.linalg.cholesky(hinv).T), dead


def _lowest(scores: jax.Array, k: jax.Array) -> jax.Array:
    """Marks the ``k`` smallest entries (ties: the higher flat index goes first)."""
    flat = scores.reshape(-1)
    n = flat.size
    order = n - 1 - jnp.argsort(flat[::-1], stable=True)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return (rank < k).reshape(scores.shape)


def prune_matrix(
    w: jax.Array,
    h: jax.Array,
    target: float,
    nm: tuple[int, int] | None,
    block_size: int,
    damping: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SparseGPT on one ``(out, d)`` matrix: ``(new_w, keep, ok)``, ``ok`` False if ``H^-1``'s
    factor is not finite. See :func:`sparsegpt` for the rule."""
    out, d = w.shape
    w = w.astype(jnp.float32)
    u, dead = inverse_hessian_factor(h.astype(jnp.float32), damping)
    ok = jnp.all(jnp.isfinite(u))
    w = jnp.where(dead[None, :], 0.0, w)
    b = block_size
    blocks = -(-d // b)
    dp = blocks * b
    # Padding: zero weights and an identity factor, which never interact with the real columns;
    # their scores are +inf, so the unstructured selection never picks them.
    w = jnp.pad(w, ((0, 0), (0, dp - d)))
    u = jnp.pad(u, ((0, dp - d), (0, dp - d)))
    u = u + jnp.diag(jnp.where(jnp.arange(dp) < d, 0.0, 1.0))
    valid = jnp.arange(dp) < d
    counts = np.array(
        [calibrated.num_pruned(out * min(b, d - i * b), target) for i in range(blocks)]
    )

    def block(carry, i):
        w, keep = carry
        i1 = i * b
        w1 = jax.lax.dynamic_slice(w, (0, i1), (out, b))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (b, b))
        diag1 = jnp.diagonal(u1)
        if nm is None:
            scores = jnp.square(w1) / jnp.square(diag1)[None, :]
            scores = jnp.where(jax.lax.dynamic_slice(valid, (i1,), (b,))[None, :], scores, jnp.inf)
            pruned = _lowest(scores, jnp.asarray(counts)[i])
        else:
            pruned = jnp.zeros((out, b), bool)

        def column(j, c):
            w1, pruned, err = c
            if nm is not None:
                n, m = nm
                group = jax.lax.dynamic_slice(w1, (0, j), (out, m))
                gdiag = jax.lax.dynamic_slice(diag1, (j,), (m,))
                kept = structure.nm_mask(jnp.square(group) / jnp.square(gdiag)[None, :], m, n, 1)
                new = jax.lax.dynamic_update_slice(pruned, ~kept, (0, j))
                pruned = jnp.where(j % m == 0, new, pruned)
            col = jax.lax.dynamic_index_in_dim(w1, j, axis=1, keepdims=False)
            q = jnp.where(jax.lax.dynamic_index_in_dim(pruned, j, 1, keepdims=False), 0.0, col)
            e = (col - q) / u1[j, j]
            w1 = w1 - e[:, None] * jax.lax.dynamic_index_in_dim(u1, j, 0, keepdims=True)
            w1 = jax.lax.dynamic_update_index_in_dim(w1, q, j, axis=1)
            err = jax.lax.dynamic_update_index_in_dim(err, e, j, axis=1)
            return w1, pruned, err

        w1, pruned, err = jax.lax.fori_loop(
            0, b, column, (w1, pruned, jnp.zeros((out, b), jnp.float32))
        )
        # The lazy batched update of every later column (the factor's rows of this block are
        # zero before it; this block's own columns are overwritten with their final values).
        rows = jax.lax.dynamic_slice(u, (i1, 0), (b, dp))
        w = w - jnp.matmul(err, rows, precision=_HIGHEST)
        w = jax.lax.dynamic_update_slice(w, w1, (0, i1))
        keep = jax.lax.dynamic_update_slice(keep, ~pruned, (0, i1))
        return (w, keep), None

    (w, keep), _ = jax.lax.scan(
        block, (w, jnp.ones((out, dp), bool)), jnp.arange(blocks, dtype=jnp.int32)
    )
    keep = keep[:, :d]
    return jnp.where(keep, w[:, :d], 0.0), keep, ok


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def prune_leaf(
    leaf: jax.Array,
    h: jax.Array,
    layout: layout_lib.WeightLayout,
    target: float,
    nm: tuple[int, int] | None,
    block_size: int,
    damping: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SparseGPT on one weight, matrix by matrix of its layout: ``(new_leaf, keep, ok)``."""
    w = layout.to_matrix(leaf)
    h = jnp.reshape(h, (layout.groups, layout.d, layout.d))
    one = functools.partial(
        prune_matrix, target=target, nm=nm, block_size=block_size, damping=damping
    )
    new, keep, ok = jax.vmap(one)(w, h)
    keep = layout.from_matrix(keep)
    new = jnp.where(keep, layout.from_matrix(new).astype(leaf.dtype), jnp.zeros_like(leaf))
    return new, keep, jnp.all(ok)


def check_factor(ok: Any, name: str, damping: float, where: str) -> None:
    """Raises (outside ``jit``) if a weight's inverse Hessian factor was not finite."""
    if not isinstance(ok, jax.core.Tracer) and not bool(ok):
        raise ValueError(
            f"{where}: the damped Hessian of {name!r} is not positive definite in float32 "
            f"(its inverse's Cholesky factor is not finite); raise damping (now {damping})"
        )


def hessian_layout(name: str, leaf: Any, h: Any) -> layout_lib.WeightLayout | str:
    """The default layout of a weight from its Hessian's shape: groups, then inputs, lead."""
    h_shape, shape = tuple(np.shape(h)), tuple(np.shape(leaf))
    if len(h_shape) < 2 or h_shape[-1] != h_shape[-2]:
        return f"its Hessian must be (*groups, d, d), got shape {h_shape}"
    lay = layout_lib.leading_layout(shape, h_shape[-1], math.prod(h_shape[:-2]))
    if lay is None or lay.group_shape != h_shape[:-2]:
        return (
            f"a Hessian of shape {h_shape} does not fit a weight of shape {shape} whose leading "
            "axes are its inputs; pass layouts=jaxprune.weight_layouts(fn, params, batch)"
        )
    del name
    return lay


def hessian_wanda_scores(leaf: jax.Array, h: jax.Array, layout: layout_lib.WeightLayout):
    """Wanda's scores ``|W| * ||X_j||`` from a Hessian: ``||X_j|| = sqrt(H_jj)``."""
    norms = jnp.sqrt(jnp.diagonal(jnp.reshape(h, (layout.groups, layout.d, layout.d)), 0, 1, 2))
    m = layout.to_matrix(jnp.abs(leaf).astype(jnp.float32)) * norms[:, None, :]
    return layout.from_matrix(m)


def owl_scores(leaves: list[Any], hs: list[Any], lays: list[Any]) -> list[Any]:
    """OWL's scores of :func:`sparsegpt`: Wanda's, from the Hessians (as OWL with SparseGPT)."""
    return [
        None if lay is None else hessian_wanda_scores(leaf, h, lay)
        for leaf, h, lay in zip(leaves, hs, lays, strict=True)
    ]


def check_block_size(block_size: Any, nm: tuple[int, int] | None, where: str) -> int:
    """``block_size`` as a positive int (a multiple of M for N:M), else a ValueError."""
    integral = isinstance(block_size, int | np.integer) and not isinstance(block_size, bool)
    if not integral or block_size < 1:
        raise ValueError(f"{where}(block_size=...) must be a positive integer, got {block_size!r}")
    if nm is not None and block_size % nm[1]:
        raise ValueError(
            f"{where}(block_size={block_size}) must be a multiple of M={nm[1]} for N:M (the "
            "groups of M columns must not straddle blocks)"
        )
    return int(block_size)


def check_damping(damping: Any, where: str) -> float:
    """``damping`` as a finite float > 0, else a ValueError."""
    try:
        value = float(damping)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(damping, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}(damping=...) must be a finite number > 0, got {damping!r}")
    return value


def sparsegpt(
    params: Any,
    hessians: Any,
    hparams: Any = None,
    *,
    sparsity: float | None = None,
    block_size: int = 128,
    damping: float = 0.01,
    layouts: Any = None,
) -> tuple[Any, Any]:
    """SparseGPT: prunes every weight with a Hessian and updates the rest to compensate.

    The rule (Frantar & Alistarh 2023, Algorithm 1 and the reference code), per weight, with
    ``W`` the weight viewed as ``(out, d)`` (its :class:`jaxprune.WeightLayout`: rows are output
    units, columns input features; flax ``(in, out)`` kernels are transposed, conv kernels
    ``(h, w, in, out)`` have ``d = h * w * in``), computed in float32:

    1. dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their weights ``W[:, j] = 0``;
    2. ``H += damping * mean(diag H) * I``;
    3. ``U`` = the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``);
    4. for each block of ``block_size`` columns ``[i1, i2)``, left to right:

       * unstructured: at the block's start, prune the ``floor(numel * s)`` entries of the
         current block (``numel = out * (i2 - i1)``) with the smallest ``W[r, j]^2 / U_jj^2``
         (ties: the higher index first);
       * N:M (``sparsity_type`` e.g. ``"2:4"``): at every M-th column ``j``, within each output
         unit, keep the N entries of columns ``j .. j+M-1`` with the largest
         ``W[r, c]^2 / U_cc^2`` and prune the M-N others (ties: the lower index kept);
       * column by column (``j`` in the block): ``q = W[:, j]`` with its pruned entries set to
         0, ``e = (W[:, j] - q) / U_jj``, then the OBS update ``W[:, j:i2] -= e U[j, j:i2]``
         and ``W[:, j] = q``;
       * the lazy batched update of the later columns: ``W[:, i2:] -= E U[i1:i2, i2:]``, ``E``
         the block's errors ``e``;

    5. pruned weights are exactly 0; the others keep their updated values (cast back to the
       weight's dtype).

    Stacked / per-head weights (Hessians ``(*groups, d, d)``) are pruned matrix by matrix. The
    targets: ``sparsity`` (default ``hparams.target_sparsity``), ``weight_sparsity_map`` entries,
    ERK shares, or OWL shares (``sparsity_distribution="owl"``: from the outliers of Wanda's
    scores ``|W| * sqrt(diag H)``, as OWL with SparseGPT); N:M prunes ``(M-N)/M``.
    jit-compatible (``layouts`` and the options static; OWL needs concrete Hessians),
    deterministic; works on sharded params and Hessians.

    Args:
      params: the params pytree (``nnx.Variable`` boxes allowed; not modified).
      hessians: :func:`jaxprune.hessians` of the weights to prune (None leaves are left alone).
      hparams: hyperparameters (:func:`jaxprune.get_pruning_hparams`, a dict or a TF HParams
        string): ``target_sparsity``, ``sparsity_type`` (``"unstructured"`` or N:M),
        ``sparsity_distribution``, ``weight_sparsity_map``; ``pruning_scope`` ``"layer"`` or
        ``"output"`` (the selection is the paper's per block either way), not ``"global"``.
      sparsity: the target, a Python number in ``[0, 1)``; default ``hparams.target_sparsity``.
      block_size: columns per block (the paper's ``B``, 128); a multiple of M for N:M.
      damping: the relative dampening (the paper's ``lambda``, 1 %).
      layouts: optional pytree like params of :class:`jaxprune.WeightLayout`. By default a
        weight's leading axes are its groups and inputs (the shape of its Hessian tells how
        many): flax ``(in, out)``, ``(h, w, in, out)``, ``(L, in, out)``. Weights in other
        layouts (equinox ``(out, in)``, ``x @ W.T``, einsum kernels) need
        ``layouts=jaxprune.weight_layouts(fn, params, batch)``.

    Returns:
      ``(pruned_params, masks)``: the updated params with pruned weights exactly 0, and a bool
      mask (True = keep) per pruned weight, None for every other leaf.

    Raises:
      ValueError: before any computation, for hyperparameters that do not apply, a bad
        ``sparsity``, ``block_size`` or ``damping``, Hessians or layouts that do not fit the
        weights; after it (outside ``jit``), if a damped Hessian was not positive definite in
        float32 (naming the weight; raise ``damping``).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.array([[1.0, 0.1], [0.3, -2.0]])}  # (in, out)
      >>> x = jnp.array([[1.0, 1.0], [1.0, -1.0], [2.0, 0.5]])
      >>> h = jaxprune.hessians(lambda p, x: x @ p["w"], params, [x])
      >>> pruned, masks = jaxprune.sparsegpt(params, h, sparsity=0.5)
      >>> masks["w"].tolist()
      [[True, False], [False, True]]

    References:
      Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
      One-Shot", ICML 2023, https://arxiv.org/abs/2301.00774
    """
    where = "sparsegpt"
    damping = check_damping(damping, where)
    leaves, treedef, h_leaves, rules = calibrated.resolve(
        where, params, hessians, hparams, sparsity, layouts, hessian_layout, owl_scores
    )
    nm = next((r.nm for r in rules if r is not None and r.nm is not None), None)
    block_size = check_block_size(block_size, nm, where)
    for h, rule in zip(h_leaves, rules, strict=True):
        if rule is None:
            continue
        want = (*rule.layout.group_shape, rule.layout.d, rule.layout.d)
        if tuple(np.shape(h)) != want:
            raise ValueError(
                f"{where}: the Hessian of {rule.name!r} must have shape {want} for its layout "
                f"{rule.layout}, got {tuple(np.shape(h))}"
            )
    out: list[Any] = list(leaves)
    masks: list[Any] = [None] * len(leaves)
    for i, (h, rule) in enumerate(zip(h_leaves, rules, strict=True)):
        if rule is None:
            continue
        out[i], masks[i], ok = prune_leaf(
            leaves[i], h, rule.layout, rule.target, rule.nm, block_size, damping
        )
        check_factor(ok, rule.name, damping, where)
    return jax.tree.unflatten(treedef, out), jax.tree.unflatten(treedef, masks)
