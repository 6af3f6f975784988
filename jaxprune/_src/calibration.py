"""Calibration statistics for one-shot pruning: one traced mechanism, two statistics.

``fn(params, batch)`` is traced once per batch shape (:mod:`jaxprune._src.jaxpr`) to find
every use of a parameter leaf as the weight operand of a ``dot_general`` or
``conv_general_dilated``; one jitted, donated step per batch shape then evaluates the model
from its jaxpr with a hook at every such use and adds the use's statistic of its activation
operand to a float32 running total per weight (memory constant in the number of batches;
sharded params and batches work as they are). A statistic (:class:`Statistic`) says what a
use adds and how totals become results; there are two:

* :data:`NORMS` -- the sum of squares of every input entry a weight entry multiplies; its
  square root is :func:`activation_norms` (Wanda's ``||X_j||``);
* :data:`HESSIANS` -- ``sum x x^T`` over every calibration row of the weight's contracting
  input features, :func:`hessians` (SparseGPT's ``H = X X^T``).

The same plans run over a piece of the model in :mod:`jaxprune._src.sequential`.

References:
  Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models" (Wanda), 2023, https://arxiv.org/abs/2306.11695;
  Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
  ICML 2023, https://arxiv.org/abs/2301.00774
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import jaxpr as mg
from jaxprune._src import layout as layout_lib
from jaxprune._src import tree as tree_lib

_STEP_CACHE_SIZE = 8
# (fn, params structure, leaf names, prunable flags, statistic) -> Steps; least recently used
# first.
_STEP_CACHE: collections.OrderedDict = collections.OrderedDict()
_HIGHEST = jax.lax.Precision.HIGHEST


def fn_name(fn: Callable) -> str:
    """A short name of a function for messages (its qualified name)."""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def check_params(params: Any, where: str) -> None:
    """Raises a ValueError if ``params`` is an ``nnx.Module`` rather than its parameters.

    (A local check until a shared one lands in ``tree.py``.) The message says what to pass.
    """
    nnx = sys.modules.get("flax.nnx")
    module = getattr(nnx, "Module", None) if nnx is not None else None
    if module is not None and isinstance(params, module):
        raise ValueError(
            f"{where}: params is an nnx.Module ({type(params).__name__}), not its parameters: "
            "pass graphdef, state = nnx.split(model) as params=state with "
            "fn=lambda state, batch: nnx.merge(graphdef, state)(batch)"
        )


# ----------------------------------------------------------------------------- statistics


class Statistic:
    """What every use of a weight adds to its running total, and how totals become results.

    Attributes:
      noun: the statistic's name in messages (``"norms"``, ``"Hessian"``).
    """

    noun = ""

    def spec(self, shape: tuple[int, ...], uses: Sequence[mg.ParamUse]) -> tuple[int, ...] | str:
        """The shape of a weight's running total, or why the weight gets none."""
        raise NotImplementedError

    def hook(self, use: mg.ParamUse, act: jax.Array, weight: jax.Array) -> jax.Array:
        """One call of ``use``: its statistic (without the axes of enclosing scans)."""
        raise NotImplementedError

    def to_total(self, use: mg.ParamUse, stat: jax.Array) -> jax.Array:
        """A use's statistic (scan axes leading, from ``interpret``) in the total's layout."""
        raise NotImplementedError

    def finish(self, total: jax.Array, shape: tuple[int, ...], uses) -> jax.Array:
        """The result of a weight from its total over all batches."""
        del shape, uses
        return total


def _input_axes(use: mg.ParamUse) -> set[int]:
    """Leaf axes on which ``use``'s norms have the leaf's size (the others are 1)."""
    if use.primitive == "conv_general_dilated" and use.params["feature_group_count"] != 1:
        return set(range(len(use.view.leaf_shape)))
    sliced = tuple(a for a, *_ in use.view.slices)
    return set(use.contracting_axes + use.batch_axes + use.mixed_axes + use.scan_axes + sliced)


def _prefix_len(axes: set[int]) -> int | None:
    """``k`` if ``axes == {0, ..., k-1}``, else None."""
    return len(axes) if axes == set(range(len(axes))) else None


class _Norms(Statistic):
    noun = "norms"

    def spec(self, shape, uses):
        axes = set().union(*(_input_axes(u) for u in uses))
        return tuple(n if a in axes else 1 for a, n in enumerate(shape))

    def hook(self, use, act, weight):
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
                precision=_HIGHEST,
                preferred_element_type=jnp.float32,
            )

        w_aval = jax.ShapeDtypeStruct(tuple(w_shape), jnp.float32)
        out_aval = jax.eval_shape(conv, w_aval)
        (s,) = jax.linear_transpose(conv, w_aval)(jnp.ones(out_aval.shape, jnp.float32))
        if grouped:
            return use.to_leaf_layout(s, range(s.ndim))
        dims = tuple(d for d in range(s.ndim) if d != out_dim)
        return use.to_leaf_layout(jnp.squeeze(s, out_dim), dims)

    def to_total(self, use, stat):
        return mg.leaf_layout_stats(use, stat)

    def finish(self, total, shape, uses):
        norm = jnp.sqrt(total)
        k = _prefix_len(set().union(*(_input_axes(u) for u in uses)))
        return norm if k is None else jnp.reshape(norm, shape[:k])


def _conv_patches(use: mg.ParamUse, x: jax.Array) -> jax.Array:
    """``(rows, *contracting sizes)``: the input entries every kernel entry multiplies, per output
    position (a convolution with an identity kernel, with the use's exact conv parameters)."""
    p = use.params
    dn = p["dimension_numbers"]
    wc = use.weight_contracting_dims
    sizes = [use.weight_shape[d] for d in wc]
    n = math.prod(sizes)
    eye = jnp.eye(n, dtype=jnp.float32).reshape((n, *sizes))
    kernel = jnp.transpose(eye, [int(a) for a in np.argsort([dn.rhs_spec[0], *wc])])
    out = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=p["window_strides"],
        padding=p["padding"],
        lhs_dilation=p["lhs_dilation"],
        rhs_dilation=p["rhs_dilation"],
        dimension_numbers=dn,
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return jnp.moveaxis(out, dn.out_spec[1], -1).reshape((-1, *sizes))


def _group_axes(use: mg.ParamUse, with_scans: bool) -> list[int]:
    roles = set(use.contracting_axes) | set(use.output_axes)
    if not with_scans:
        roles |= set(use.scan_axes)
    return [a for a in range(len(use.view.leaf_shape)) if a not in roles]


class _Hessians(Statistic):
    noun = "Hessian"

    def spec(self, shape, uses):
        layout = layout_lib.layout_of_uses(uses, shape)
        if isinstance(layout, str):
            return layout
        return (*layout.group_shape, layout.d, layout.d)

    def hook(self, use, act, weight):
        """``sum_t f_t f_t^T`` per group, ``f_t`` the use's input features of row ``t``."""
        del weight
        x = act.astype(jnp.float32)
        if use.primitive == "dot_general":
            ac, ab = use.activation_contracting_dims, use.activation_batch_dims
            free = [d for d in range(x.ndim) if d not in ac and d not in ab]
            x = jnp.transpose(x, [*free, *ab, *ac])
            x = x.reshape((-1, *x.shape[len(free) :]))
            dims = use.weight_batch_dims + use.weight_contracting_dims
        else:
            x = _conv_patches(use, x)
            dims = use.weight_contracting_dims
        # (rows, leaf axes but the scanned ones): features on the contracted leaf axes in leaf
        # order (zeros outside a static slice), group axes at full size, output axes size 1.
        f = jax.vmap(lambda v: use.to_leaf_layout(v, dims))(x)
        kept = [a for a in range(len(use.view.leaf_shape)) if a not in use.scan_axes]
        groups = _group_axes(use, with_scans=False)
        perm = [0] + [1 + kept.index(a) for a in (*groups, *use.contracting_axes, *use.output_axes)]
        f = jnp.transpose(f, perm)
        group_shape = f.shape[1 : 1 + len(groups)]
        f = f.reshape(f.shape[0], math.prod(group_shape), -1)
        h = jnp.einsum("tgi,tgj->gij", f, f, precision=_HIGHEST)
        return h.reshape((*group_shape, *h.shape[1:]))

    def to_total(self, use, stat):
        # stat: (*scans (use.scan_axes order), *other groups (ascending), d, d).
        order = [*use.scan_axes, *_group_axes(use, with_scans=False)]
        perm = sorted(range(len(order)), key=lambda i: order[i])
        return jnp.transpose(stat, [*perm, len(order), len(order) + 1])


NORMS: Statistic = _Norms()
"""Sums of squares of the input entries each weight entry multiplies (Wanda's norms)."""

HESSIANS: Statistic = _Hessians()
"""``sum x x^T`` over the weight's input features, per group (SparseGPT's ``H``)."""


# ----------------------------------------------------------------------------- plans and steps


class Plan:
    """Which leaves of one traced graph get a statistic, and the shapes of their totals.

    Attributes:
      graph: the traced graph.
      statistic: the :class:`Statistic`.
      uses: the uses that contribute (prunable leaves with a total).
      unresolved: the unresolved uses of prunable leaves (those leaves get no total).
      unsupported: ``{leaf: reason}`` for prunable leaves whose uses the statistic rejects.
      shapes: ``{leaf: shape of its total}``.
    """

    def __init__(self, graph: mg.ModelGraph, prunable: Sequence[bool], statistic: Statistic):
        self.graph, self.statistic = graph, statistic
        bad = {u.leaf for u in graph.unresolved if prunable[u.leaf]}
        self.unresolved = [u for u in graph.unresolved if prunable[u.leaf]]
        by_leaf: dict[int, list[mg.ParamUse]] = {}
        for u in graph.uses:
            if prunable[u.leaf] and u.leaf not in bad:
                by_leaf.setdefault(u.leaf, []).append(u)
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.unsupported: dict[int, str] = {}
        for leaf, uses in by_leaf.items():
            spec = statistic.spec(tuple(graph.param_avals[leaf].shape), uses)
            if isinstance(spec, str):
                self.unsupported[leaf] = spec
            else:
                self.shapes[leaf] = spec
        self.uses = [u for u in graph.uses if u.leaf in self.shapes]
        self.uses_by_leaf = {leaf: by_leaf[leaf] for leaf in self.shapes}
        # The hook runs at the contributing uses only.
        self._hooked = dataclasses.replace(graph, uses=tuple(self.uses))

    def zeros(self) -> dict[int, jax.Array]:
        """Zero totals."""
        return {leaf: jnp.zeros(shape, jnp.float32) for leaf, shape in self.shapes.items()}

    def add(self, totals: dict[int, jax.Array], params: Any, *args: Any) -> dict[int, jax.Array]:
        """``totals`` plus the statistic of one evaluation of the graph (traceable)."""
        _, stats = mg.interpret(self._hooked, self.statistic.hook, params, *args)
        out = dict(totals)
        for u in self.uses:
            out[u.leaf] = out[u.leaf] + self.statistic.to_total(u, stats[u.key])
        return out

    def finish(self, leaf: int, total: jax.Array) -> jax.Array:
        """The result of ``leaf`` from its total."""
        shape = tuple(self.graph.param_avals[leaf].shape)
        return self.statistic.finish(total, shape, self.uses_by_leaf[leaf])

    def warn(self, where: str, stacklevel: int) -> None:
        """One UserWarning per leaf that gets no result, naming it and the reason."""
        noun = self.statistic.noun
        for u in self.unresolved:
            warnings.warn(
                f"{where}: no {noun} for {u.name!r}: it reaches operand {u.operand} of "
                f"{u.primitive} at {u.path} in a way that is not resolved: {u.reason}",
                stacklevel=stacklevel + 1,
            )
        for leaf, reason in self.unsupported.items():
            warnings.warn(
                f"{where}: no {noun} for {self.graph.param_names[leaf]!r}: {reason}",
                stacklevel=stacklevel + 1,
            )


def signature(tree: Any) -> tuple:
    """The tree structure and the leaves' shapes and dtypes (what a trace depends on)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        (tuple(np.shape(x)), str(x.dtype if hasattr(x, "dtype") else jnp.result_type(x)))
        for x in leaves
    )


class Steps:
    """One jitted, donated accumulation step; one :class:`Plan` per input signature.

    ``make_graph(params, args)`` traces the graph for new input shapes (``args`` a tuple).
    """

    def __init__(
        self,
        make_graph: Callable[[Any, tuple], mg.ModelGraph],
        prunable: Sequence[bool],
        statistic: Statistic,
    ):
        self.make_graph, self.prunable, self.statistic = make_graph, list(prunable), statistic
        self.plans: dict[tuple, Plan] = {}
        self.step = jax.jit(self._step, donate_argnums=0)

    def plan(self, params: Any, args: tuple) -> Plan:
        """The plan of inputs shaped like ``(params, args)`` (traced on first sight)."""
        key = (signature(params), signature(args))
        if key not in self.plans:
            self.plans[key] = Plan(self.make_graph(params, args), self.prunable, self.statistic)
        return self.plans[key]

    def _step(self, totals: dict, params: Any, args: tuple) -> dict:
        return self.plans[(signature(params), signature(args))].add(totals, params, *args)


def _steps_for(
    fn: Callable, params: Any, names: list[str], prunable: list[bool], statistic: Statistic
) -> Steps:
    def make_graph(p, args):
        return mg.trace(fn, p, *args)

    try:
        key = (fn, jax.tree.structure(params), tuple(names), tuple(prunable), statistic.noun)
        hash(key)
    except TypeError:  # an unhashable fn: no caching across calls
        return Steps(make_graph, prunable, statistic)
    steps = _STEP_CACHE.pop(key, None) or Steps(make_graph, prunable, statistic)
    _STEP_CACHE[key] = steps
    while len(_STEP_CACHE) > _STEP_CACHE_SIZE:
        _STEP_CACHE.popitem(last=False)
    return steps


def steps_of(fn: Callable, statistic: Statistic = NORMS) -> list[Steps]:
    """The cached :class:`Steps` of ``fn`` for ``statistic`` (for tests and benchmarks)."""
    return [s for key, s in _STEP_CACHE.items() if key[0] is fn and key[-1] == statistic.noun]


def compiled_steps(fn: Callable, statistic: Statistic = NORMS) -> int:
    """How many accumulation steps are compiled for ``fn`` and ``statistic`` (one per batch
    signature)."""
    return sum(s.step._cache_size() for s in steps_of(fn, statistic))  # type: ignore[attr-defined]


def first_and_rest(batches: Iterable[Any], where: str) -> tuple[Any, Iterable[Any]]:
    try:
        iterator = iter(batches)
    except TypeError:
        raise ValueError(
            f"{where}: batches must be an iterable of batches, got {type(batches)}"
        ) from None
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError(f"{where}: batches is empty") from None
    return first, iterator


def _plan_or_raise(steps: Steps, fn: Callable, params: Any, batch: Any, index: int, where: str):
    try:
        return steps.plan(params, (batch,))
    except Exception as e:
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), batch)
        raise ValueError(
            f"{where} could not trace fn={fn_name(fn)} as fn(params, batch) with calibration "
            f"batch {index} ({shapes}): {type(e).__name__}: {e}"
        ) from e


def collect(
    statistic: Statistic,
    fn: Callable,
    params: Any,
    batches: Iterable[Any],
    params_filter: Any,
    where: str,
    stacklevel: int = 2,
) -> Any:
    """The statistic of every prunable weight of ``fn`` over ``batches``: a params-like pytree.

    The engine of :func:`activation_norms` and :func:`hessians` (see their docs).
    """
    if not callable(fn):
        raise ValueError(f"{where}: fn must be callable, got {fn!r}")
    check_params(params, where)
    unboxed = tree_lib.unbox(params)
    leaves, treedef, names, prunable = tree_lib.leaf_names_and_prunable(unboxed, params_filter)
    first, rest = first_and_rest(batches, where)
    steps = _steps_for(fn, params, names, prunable, statistic)
    plan = _plan_or_raise(steps, fn, params, first, 0, where)
    plan.warn(where, stacklevel + 1)
    shapes = dict(plan.shapes)
    totals = plan.zeros()
    for index, batch in enumerate(itertools.chain([first], rest)):
        if index > 0:
            other = _plan_or_raise(steps, fn, params, batch, index, where)
            if other.shapes != shapes:
                raise ValueError(
                    f"{where}: calibration batch {index} uses the parameters differently from "
                    f"batch 0 ({statistic.noun} shapes {other.shapes} vs {shapes})"
                )
        if totals:
            totals = steps.step(totals, params, (batch,))
    out: list[Any] = [None] * len(leaves)
    for leaf, total in totals.items():
        out[leaf] = plan.finish(leaf, total)
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- public


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
        ``params_filter`` is invalid, ``params`` is an ``nnx.Module`` rather than its state, or
        ``fn`` cannot be traced with a batch (the message names ``fn`` and the batch).

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
    return collect(NORMS, fn, params, batches, params_filter, "activation_norms")


def hessians(
    fn: Callable,
    params: Any,
    batches: Iterable[Any],
    *,
    params_filter: Any = None,
) -> Any:
    """SparseGPT's ``H = sum x x^T`` of every matmul / conv weight over the calibration data.

    The same traced mechanism as :func:`activation_norms` (one jitted, donated step per batch
    shape, float32 running totals, memory constant in the number of batches, sharded params
    and batches as they are), with another statistic: for every weight, the sum over every
    calibration row (every batch, every position) of the outer product of the row's input
    features, ``H[i, j] = sum_rows x_i x_j``.

    The input features of a weight are the entries of the activation its matmul contracts,
    numbered row-major over the weight's contracted axes in the weight's own axis order (see
    :class:`jaxprune.WeightLayout`): Dense ``(in, out)`` -> ``d = in``; ``x @ W.T`` with ``W``
    ``(out, in)`` -> ``d = in``; DenseGeneral ``(D, heads, hd)`` contracting ``D`` -> ``d = D``;
    attention out ``(heads, hd, D)`` -> ``d = heads * hd``; Conv ``(h, w, in, out)`` ->
    ``d = h * w * in``, the rows being every output position's input patch (honoring stride,
    padding and dilation). A weight used by several matmuls (tied, reused in a loop) sums every
    use's rows; a use of a static slice along an input axis has zeros outside its slice.
    Weights that are several matrices get one Hessian per matrix, on leading axes: stacked
    layers ``(L, in, out)`` scanned over -> ``(L, in, in)``, per-head ``dot_general`` batch axes
    (``'bhd,hde->bhe'`` with ``(h, d, e)``) -> ``(h, d, d)``.

    Leaves that are not prunable, never a weight operand, or unresolved (see
    :func:`activation_norms`) get None; so do weights whose uses share no ``(out, d)`` view
    (grouped / depthwise convs, whose inputs depend on the output's group; weights sliced along
    an output axis; uses contracting different axes; a leaf axis mixing contracted and output
    elements), each with a ``UserWarning`` naming it and the reason.

    Memory: a weight with ``d`` input features holds ``4 * d**2`` bytes (LLaMA-7B: 64 MiB per
    4096-wide projection, 462 MiB for an 11008-wide down projection, 27 GiB for all 224
    weights). :func:`jaxprune.prune_sequential` holds only the Hessians of the weights it is
    about to prune.

    Args:
      fn: the model function, called as ``fn(params, batch)``.
      params: the parameter pytree (``nnx.Variable`` boxes allowed; not modified).
      batches: an iterable of calibration batches (any pytrees ``fn`` accepts).
      params_filter: which leaves are considered, as in :func:`activation_norms`.

    Returns:
      A pytree like the (unboxed) params: float32 ``(*groups, d, d)`` per weight, None for the
      other leaves.

    Raises:
      ValueError: as :func:`activation_norms`, and if ``params`` is an ``nnx.Module``.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.ones((2, 3))}
      >>> fn = lambda p, x: x @ p["w"]
      >>> batches = [jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 0.0], [0.0, 1.0]])]
      >>> jaxprune.hessians(fn, params, batches)["w"].tolist()
      [[10.0, 2.0], [2.0, 5.0]]

    References:
      Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
      One-Shot", ICML 2023, https://arxiv.org/abs/2301.00774;
      Hassibi & Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon",
      NeurIPS 1992
    """
    return collect(HESSIANS, fn, params, batches, params_filter, "hessians")


def weight_layouts(fn: Callable, params: Any, batch: Any, *, params_filter: Any = None) -> Any:
    """Every matmul / conv weight's :class:`jaxprune.WeightLayout`, read from a trace of ``fn``.

    ``fn(params, batch)`` is traced once (with the shapes of ``batch``); a weight's input axes
    are those its ``dot_general`` / ``conv_general_dilated`` uses contract, its group axes the
    stacked-layer (scan), per-head (``dot_general`` batch) and statically indexed axes, its
    outputs the rest. :func:`jaxprune.sparsegpt` and :func:`jaxprune.wanda` need it for weights
    that are not ``(in, out)`` kernels with leading inputs (equinox and ``x @ W.T`` ``(out,
    in)`` weights, einsum kernels such as ``(2, hidden, D)``, stacked layers).

    Args:
      fn: the model function, called as ``fn(params, batch)``.
      params: the parameter pytree (``nnx.Variable`` boxes allowed; not modified).
      batch: one example batch.
      params_filter: which leaves are considered (as in :func:`activation_norms`).

    Returns:
      A pytree like the (unboxed) params with a :class:`jaxprune.WeightLayout` per considered
      weight; None for the other leaves and for weights with no layout (each with a
      ``UserWarning`` naming it and the reason, as in :func:`hessians`).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.ones((4, 3))}  # (out, in), used as x @ w.T
      >>> layouts = jaxprune.weight_layouts(lambda p, x: x @ p["w"].T, params, jnp.ones((2, 3)))
      >>> layouts["w"].input_axes, layouts["w"].output_axes
      ((1,), (0,))

    References:
      Frantar & Alistarh, "SparseGPT", ICML 2023, https://arxiv.org/abs/2301.00774
    """
    where = "weight_layouts"
    if not callable(fn):
        raise ValueError(f"{where}: fn must be callable, got {fn!r}")
    check_params(params, where)
    unboxed = tree_lib.unbox(params)
    leaves, treedef, names, prunable = tree_lib.leaf_names_and_prunable(unboxed, params_filter)
    steps = _steps_for(fn, params, names, prunable, HESSIANS)
    plan = _plan_or_raise(steps, fn, params, batch, 0, where)
    plan.warn(where, 2)
    out: list[Any] = [None] * len(leaves)
    for leaf, uses in plan.uses_by_leaf.items():
        out[leaf] = layout_lib.layout_of_uses(uses, tuple(leaves[leaf].shape))
    return jax.tree.unflatten(treedef, out)
