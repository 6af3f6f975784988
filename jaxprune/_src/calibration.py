"""Calibration statistics for one-shot pruning: input-feature norms (Wanda) and Wanda scores."""

from __future__ import annotations

import collections
import itertools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import jaxpr as mg
from jaxprune._src import tree as tree_lib

_STEP_CACHE_SIZE = 8
# (fn, params structure, leaf names, prunable flags) -> _Steps; least recently used first.
_STEP_CACHE: collections.OrderedDict = collections.OrderedDict()


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _sumsq_hook(use: mg.ParamUse, act: jax.Array, weight: jax.Array) -> jax.Array:
    """Sum over tokens of act**2 per weight entry's input, in the leaf's keepdims layout."""
    x2 = jnp.square(act.astype(jnp.float32))
    if use.primitive == "dot_general":
        keep = use.activation_batch_dims + use.activation_contracting_dims
        sorted_keep = sorted(keep)
        s = jnp.sum(x2, axis=tuple(d for d in range(x2.ndim) if d not in keep))
        s = jnp.transpose(s, [sorted_keep.index(d) for d in keep])
        return use.to_leaf_layout(s, use.weight_batch_dims + use.weight_contracting_dims)
    # Convolution: the weight-gradient of sum(conv(act**2, w)) is, for every kernel entry,
    # the sum of the squared input entries it multiplies (exact for any stride, padding,
    # dilation and feature grouping). With one group, it does not depend on the output
    # feature: transpose a one-output-feature conv instead.
    p = use.params
    out_dim = p["dimension_numbers"].rhs_spec[0]
    grouped = p["feature_group_count"] != 1
    w_shape = list(weight.shape)
    if not grouped:
        w_shape[out_dim] = 1

    def conv(w):
        return jax.lax.conv_general_dilated(
            x2,
            w,
            window_strides=p["window_strides"],
            padding=p["padding"],
            lhs_dilation=p["lhs_dilation"],
            rhs_dilation=p["rhs_dilation"],
            dimension_numbers=p["dimension_numbers"],
            feature_group_count=p["feature_group_count"],
            batch_group_count=p["batch_group_count"],
            precision=jax.lax.Precision.HIGHEST,
            preferred_element_type=jnp.float32,
        )

    w_aval = jax.ShapeDtypeStruct(tuple(w_shape), jnp.float32)
    out_aval = jax.eval_shape(conv, w_aval)
    (s,) = jax.linear_transpose(conv, w_aval)(jnp.ones(out_aval.shape, jnp.float32))
    if grouped:
        return use.to_leaf_layout(s, range(s.ndim))
    dims = tuple(d for d in range(s.ndim) if d != out_dim)
    return use.to_leaf_layout(jnp.squeeze(s, out_dim), dims)


def _input_axes(use: mg.ParamUse) -> set[int]:
    """Leaf axes on which ``use``'s statistics have the leaf's size (the others are 1)."""
    if use.primitive == "conv_general_dilated" and use.params["feature_group_count"] != 1:
        return set(range(len(use.view.leaf_shape)))
    sliced = tuple(a for a, *_ in use.view.slices)
    return set(use.contracting_axes + use.batch_axes + use.mixed_axes + use.scan_axes + sliced)


class _Plan:
    """Which leaves get norms for one traced graph, and the shapes of their sums of squares."""

    def __init__(self, graph: mg.ModelGraph, prunable: list[bool]):
        self.graph = graph
        bad = {u.leaf for u in graph.unresolved if prunable[u.leaf]}
        self.unresolved = [u for u in graph.unresolved if prunable[u.leaf]]
        self.uses = [u for u in graph.uses if prunable[u.leaf] and u.leaf not in bad]
        axes: dict[int, set[int]] = {}
        for u in self.uses:
            axes.setdefault(u.leaf, set()).update(_input_axes(u))
        self.axes = axes
        self.shapes = {
            leaf: tuple(n if a in ax else 1 for a, n in enumerate(graph.param_avals[leaf].shape))
            for leaf, ax in axes.items()
        }

    def sums_of_squares(self, params: Any, batch: Any) -> dict[int, jax.Array]:
        _, stats = mg.interpret(self.graph, _sumsq_hook, params, batch)
        out = {leaf: jnp.zeros(shape, jnp.float32) for leaf, shape in self.shapes.items()}
        for u in self.uses:
            out[u.leaf] = out[u.leaf] + mg.leaf_layout_stats(u, stats[u.key])
        return out


def _signature(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        (tuple(np.shape(x)), str(x.dtype if hasattr(x, "dtype") else jnp.result_type(x)))
        for x in leaves
    )


class _Steps:
    """One jitted accumulation step per (fn, params structure); plans per batch signature."""

    def __init__(self, fn: Callable, prunable: list[bool]):
        self.fn, self.prunable = fn, prunable
        self.plans: dict[tuple, _Plan] = {}
        self.step = jax.jit(self._step, donate_argnums=0)

    def plan(self, params: Any, batch: Any, index: int, params_sig: tuple) -> _Plan:
        key = (params_sig, _signature(batch))
        if key not in self.plans:
            try:
                graph = mg.trace(self.fn, params, batch)
            except Exception as e:
                shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), batch)
                raise ValueError(
                    f"activation_norms could not trace fn={_fn_name(self.fn)} as "
                    f"fn(params, batch) with calibration batch {index} ({shapes}): "
                    f"{type(e).__name__}: {e}"
                ) from e
            self.plans[key] = _Plan(graph, self.prunable)
        return self.plans[key]

    def _step(self, sumsq: dict, params: Any, batch: Any) -> dict:
        plan = self.plans[(_signature(params), _signature(batch))]
        new = plan.sums_of_squares(params, batch)
        return {leaf: sumsq[leaf] + new[leaf] for leaf in sumsq}


def _steps_for(fn: Callable, params: Any, names: list[str], prunable: list[bool]) -> _Steps:
    try:
        key = (fn, jax.tree.structure(params), tuple(names), tuple(prunable))
        hash(key)
    except TypeError:  # an unhashable fn: no caching across calls
        return _Steps(fn, prunable)
    steps = _STEP_CACHE.pop(key, None) or _Steps(fn, prunable)
    _STEP_CACHE[key] = steps
    while len(_STEP_CACHE) > _STEP_CACHE_SIZE:
        _STEP_CACHE.popitem(last=False)
    return steps


def activation_norms(
    fn: Callable,
    params: Any,
    batches: Iterable[Any],
    *,
    params_filter: Any = None,
) -> Any:
    """L2 norm over the calibration tokens of every input feature of every matmul / conv weight.

    ``fn(params, batch)`` is the model (a linen ``model.apply``, an nnx module through
    ``nnx.split`` / ``nnx.merge``, or plain JAX); it is traced to find, with no change to the
    model code, where each prunable leaf is the weight operand of a ``dot_general`` (matmul,
    einsum, ``Dense``, ``DenseGeneral``, attention) or ``conv_general_dilated``, and which
    activation it multiplies (see ``jaxprune._src.jaxpr``). Batches are processed one
    by one by one jitted step that adds float32 sums of squares to running totals (memory
    does not grow with the number of batches; batches of one shape compile once; sharded
    params and batches work as they are); the square root is taken at the end.

    The norm of a weight entry is that of the activation entries it multiplies:

    * Dense ``(in, out)`` -> ``(in,)``; DenseGeneral / attention q, k, v ``(d, heads, hd)``
      contracting ``d`` -> ``(d,)``; attention out ``(heads, hd, d)`` -> ``(heads, hd)``.
      ``dot_general`` batch axes of the weight (e.g. per-head weights in ``'bhd,hde->bhe'``)
      count as input axes.
    * Conv ``(h, w, in, out)`` -> ``(h, w, in)``: each kernel entry's norm over the input
      patch entries it multiplies, honoring stride, padding and dilation. Grouped and
      depthwise convs (``feature_group_count > 1``) get full weight-shaped norms
      ``(h, w, in / groups, out)``, since an entry's inputs depend on its output's group.
    * The input axes of the result are the leaf's axes that its uses contract (plus scan
      axes). When they form a leading prefix of the leaf's axes, the result has the shape of
      that prefix; otherwise (e.g. a tied embedding ``(V, d)`` used as ``x @ E.T``: shape
      ``(1, d)``) it has the leaf's rank, with 1 on the other axes, so that broadcasting it
      against the weight is never ambiguous.
    * A weight used by several matmuls (tied embeddings, weights reused in a loop) sums the
      squares of all its inputs. Stacked weights ``(L, in, out)`` scanned over by
      ``lax.scan`` / ``nn.scan`` get per-layer norms ``(L, in)``. Statically sliced weights
      (a fused qkv kernel cut by ``jnp.split``, ``stack[i]``) count each use only on the
      entries it slices, so a sliced axis has the leaf's size in the result.
    * A weight reshaped so that one leaf axis holds both contracted and output elements gets
      full weight-shaped norms (each entry the norm of the inputs it multiplies).

    Leaves that are not prunable (``params_filter``), or never a weight operand (biases,
    embedding tables only gathered from), get None. A prunable leaf that reaches a matmul
    operand in a way that cannot be resolved exactly (arithmetic on the weight, a gather, a
    body that is not followed) also gets None, with a ``UserWarning`` naming it and the
    reason -- it is never guessed.

    The traced graph and the compiled step are cached for the last few ``fn``s (by equality,
    like ``jax.jit``), so repeated calls with batches of seen shapes do not recompile.

    Args:
      fn: the model function, called as ``fn(params, batch)``.
      params: the parameter pytree (``nnx.Variable`` boxes allowed; not modified).
      batches: an iterable of calibration batches (any pytrees ``fn`` accepts).
      params_filter: which leaves are considered: a callable ``(name, leaf) -> bool`` or a
        pytree of bools shaped like params, as in :func:`jaxprune.magnitude_pruning`.
        Default: floating-point leaves with ``ndim >= 2``.

    Returns:
      A pytree like the (unboxed) params with float32 norms, or None per leaf.

    Raises:
      ValueError: if ``fn`` is not callable, ``batches`` is empty or not iterable,
        ``params_filter`` is invalid, or ``fn`` cannot be traced with a batch (the message
        names ``fn`` and the batch).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> fn = lambda p, x: x @ p["w"] + p["b"]
      >>> batches = [jnp.array([[3.0, 0.0, 1.0]]), jnp.array([[4.0, 1.0, 0.0]])]
      >>> norms = jaxprune.activation_norms(fn, params, batches)
      >>> norms["w"].tolist(), norms["b"]
      ([5.0, 1.0, 1.0], None)

    References:
      Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
      Models" (Wanda), 2023, https://arxiv.org/abs/2306.11695
    """
    if not callable(fn):
        raise ValueError(f"activation_norms: fn must be callable, got {fn!r}")
    unboxed = tree_lib.unbox(params)
    leaves, treedef, names, prunable = tree_lib.leaf_names_and_prunable(unboxed, params_filter)
    try:
        iterator = iter(batches)
    except TypeError:
        raise ValueError(
            f"activation_norms: batches must be an iterable of batches, got {type(batches)}"
        ) from None
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("activation_norms: batches is empty") from None

    steps = _steps_for(fn, params, names, prunable)
    params_sig = _signature(params)
    plan = steps.plan(params, first, 0, params_sig)
    for u in plan.unresolved:
        warnings.warn(
            f"activation_norms: no norms for {u.name!r}: it reaches operand {u.operand} of "
            f"{u.primitive} at {u.path} in a way that is not resolved: {u.reason}",
            stacklevel=2,
        )
    shapes = dict(plan.shapes)
    sumsq = {leaf: jnp.zeros(shape, jnp.float32) for leaf, shape in shapes.items()}
    for index, batch in enumerate(itertools.chain([first], iterator)):
        if index > 0:
            other = steps.plan(params, batch, index, params_sig)
            if other.shapes != shapes:
                raise ValueError(
                    f"activation_norms: calibration batch {index} uses the parameters "
                    f"differently from batch 0 (norm shapes {other.shapes} vs {shapes})"
                )
        if sumsq:
            sumsq = steps.step(sumsq, params, batch)

    out: list[Any] = [None] * len(leaves)
    for leaf, s in sumsq.items():
        norm = jnp.sqrt(s)
        k = _prefix_len(plan.axes[leaf])
        if k is not None:
            norm = jnp.reshape(norm, leaves[leaf].shape[:k])
        out[leaf] = norm
    return jax.tree.unflatten(treedef, out)


def _prefix_len(axes: set[int]) -> int | None:
    """``k`` if ``axes == {0, ..., k-1}``, else None."""
    return len(axes) if axes == set(range(len(axes))) else None


def wanda_scores(params: Any, norms: Any) -> Any:
    """Wanda's pruning scores ``|W| * norm``, the input-feature norm broadcast over the weight.

    ``norms`` as returned by :func:`activation_norms`: a norm array of a leading prefix of
    the weight's shape is broadcast over the trailing axes (Dense ``(in, out)`` with
    ``(in,)``: every output unit sees the same input norms); a norm array of the weight's
    rank is broadcast as is (its axes have the weight's size or 1). Pass the scores to
    ``jaxprune.prune(..., scores=...)`` with ``pruning_scope="output"`` to compare weights
    within each output unit, as Wanda does.

    Args:
      params: the parameter pytree (``nnx.Variable`` boxes allowed).
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
    missing, extra = sorted(set(names) - set(by_name)), sorted(set(by_name) - set(names))
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
        w_shape, n_shape = tuple(np.shape(w)), tuple(np.shape(n))
        if not jnp.issubdtype(jnp.result_type(w), jnp.floating):
            raise ValueError(f"wanda_scores: {name!r} is not a floating-point array")
        if len(n_shape) < len(w_shape):
            ok = n_shape == w_shape[: len(n_shape)]
            n = jnp.reshape(n, n_shape + (1,) * (len(w_shape) - len(n_shape)))
        else:
            ok = len(n_shape) == len(w_shape) and all(
                b in (1, a) for a, b in zip(w_shape, n_shape, strict=True)
            )
        if not ok:
            raise ValueError(
                f"wanda_scores: norms of {name!r} have shape {n_shape}, which is neither a "
                f"leading prefix of the weight's shape {w_shape} nor broadcastable at its rank"
            )
        out.append(jnp.abs(w).astype(jnp.float32) * jnp.asarray(n, jnp.float32))
    return jax.tree.unflatten(treedef, out)
