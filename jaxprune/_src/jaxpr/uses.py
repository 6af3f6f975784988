"""Where a model function uses its parameters as matmul / convolution weights.

:func:`trace` traces ``fn(params, *args)`` to a jaxpr and finds every use of a parameter leaf as
an operand of ``dot_general`` or ``conv_general_dilated`` (:class:`ModelGraph` with
:class:`ParamUse` and :class:`UnresolvedUse` records), following the leaf through
layout-preserving operations (:class:`~jaxprune._src.jaxpr.views.WeightView`) and into nested
jaxprs, including ``scan`` over stacked per-layer weights (the stacked axis becomes a *scan
axis* of the use). A use that cannot be resolved exactly (a gather, arithmetic on the weight, a
reshape that mixes axes, a body that is not followed) is recorded as unresolved with the reason
-- never guessed. All axis numbers a :class:`ParamUse` reports as ``*_axes`` are the leaf's own;
``*_dims`` are the operand's.

References:
  Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models" (Wanda), 2023, https://arxiv.org/abs/2306.11695
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr

from jaxprune._src import tree as tree_lib
from jaxprune._src.jaxpr.views import LAYOUT_PRIMITIVES, WeightView
from jaxprune._src.jaxpr.walk import (
    IDENTITY_PRIMITIVES,
    MATMUL_PRIMITIVES,
    Path,
    Region,
    Visitor,
    contains_matmul,
    eqn_at,
    sub_jaxprs,
    walk,
)

# ----------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class ParamUse:
    """A parameter leaf used as the weight operand of a ``dot_general`` / ``conv_general_dilated``.

    Operand numbering (``*_dims``) is that of the operand the primitive sees; leaf numbering
    (``*_axes``) is the parameter leaf's own.

    Attributes:
      leaf: index of the leaf in :attr:`ModelGraph.param_names`.
      name: the leaf's "/"-joined path (as :func:`jaxprune.path_name`).
      primitive: ``"dot_general"`` or ``"conv_general_dilated"``.
      path: the equation's :data:`Path`.
      weight_operand: 0 (lhs) or 1 (rhs): which operand is the weight.
      activation_operand: the other operand.
      view: how the weight operand maps to the leaf (:class:`WeightView`).
      weight_shape, weight_dtype: the weight operand's shape and dtype.
      weight_contracting_dims: the weight operand's contracting dims, in the primitive's
        order (for a conv: the input-feature dim, then the spatial dims).
      weight_batch_dims: the weight operand's ``dot_general`` batch dims (conv: ``()``).
      contracting_axes: leaf axes that hold only contracted elements (sorted).
      batch_axes: leaf axes that hold only batch dims.
      output_axes: leaf axes that hold only output (free) dims.
      mixed_axes: leaf axes in a block whose operand dims have several roles (e.g. a flat
        leaf reshaped to (in, out)).
      scan_axes: leaf axes consumed by enclosing scans (per-layer stacked weights), outermost
        scan first.
      activation_shape, activation_dtype: the activation operand's shape and dtype.
      activation_contracting_dims: the activation's contracting dims, paired one to one with
        ``weight_contracting_dims`` (for a conv, a spatial dim pairs with a kernel window
        dim, not index for index).
      activation_batch_dims: paired with ``weight_batch_dims``.
      params: the equation's params (``dimension_numbers``, conv strides, padding, ...).
      regions: the enclosing control-flow regions.
    """

    leaf: int
    name: str
    primitive: str
    path: Path
    weight_operand: int
    activation_operand: int
    view: WeightView
    weight_shape: tuple[int, ...]
    weight_dtype: Any
    weight_contracting_dims: tuple[int, ...]
    weight_batch_dims: tuple[int, ...]
    contracting_axes: tuple[int, ...]
    batch_axes: tuple[int, ...]
    output_axes: tuple[int, ...]
    mixed_axes: tuple[int, ...]
    scan_axes: tuple[int, ...]
    activation_shape: tuple[int, ...]
    activation_dtype: Any
    activation_contracting_dims: tuple[int, ...]
    activation_batch_dims: tuple[int, ...]
    params: dict = dataclasses.field(compare=False, repr=False)
    regions: tuple[Region, ...] = dataclasses.field(compare=False, repr=False, default=())

    @property
    def key(self) -> tuple[Path, int]:
        """``(path, weight_operand)``: identifies the use (keys of :func:`interpret`'s stats)."""
        return (self.path, self.weight_operand)

    def to_leaf_layout(self, x: jax.Array, dims: Sequence[int]) -> jax.Array:
        """Maps an array indexed by weight-operand dims onto the leaf's axes ("keepdims").

        Args:
          x: an array whose axes are the weight operand's dims ``dims`` (in that order, with
            the operand's sizes).
          dims: weight-operand dim numbers.

        Returns:
          An array with one axis per leaf axis not in :attr:`scan_axes`, in leaf order: the
          leaf's size on axes that ``dims`` cover, 1 on the others. Where a block has some of
          its operand dims in ``dims`` and some not, ``x`` is broadcast over the missing ones
          (so every leaf element gets the value of the operand elements it is). Statically
          sliced leaf axes (:attr:`WeightView.slices`) always have the leaf's size: the values
          (broadcast if the axis is not covered) inside the slice, zeros outside it.
        """
        view, shape, dims = self.view, self.weight_shape, tuple(dims)
        if x.ndim != len(dims) or any(x.shape[k] != shape[d] for k, d in enumerate(dims)):
            raise ValueError(
                f"to_leaf_layout: array of shape {x.shape} does not match weight dims {dims} "
                f"of shape {shape}"
            )
        order = sorted(range(len(dims)), key=lambda k: dims[k])
        x = jnp.transpose(x, order)
        covered = set(dims)
        x = jnp.reshape(x, [shape[o] if o in covered else 1 for o in range(len(shape))])
        full_blocks = [bool(covered & set(ox)) for _, ox in view.blocks]
        target = list(x.shape)
        for (_, ox), full in zip(view.blocks, full_blocks, strict=True):
            if full:
                for o in ox:
                    target[o] = shape[o]
        x = jnp.broadcast_to(x, target)
        x = jnp.transpose(x, [o for _, ox in view.blocks for o in ox])
        leaf_order, sizes = [], []
        for (lx, _), full in zip(view.blocks, full_blocks, strict=True):
            for a in lx:
                leaf_order.append(a)
                sizes.append(view.leaf_axis_size(a) if full else 1)
        x = jnp.reshape(x, sizes)
        x = jnp.transpose(x, sorted(range(len(leaf_order)), key=lambda k: leaf_order[k]))
        kept = sorted(leaf_order)  # the leaf axes of the result, ascending
        for a, start, stop, stride in view.slices:
            # Only the sliced part of the leaf takes part in this use: the leaf's full size,
            # with the values (broadcast if the axis is not covered) inside the slice.
            pos = kept.index(a)
            part = list(x.shape)
            part[pos] = view.leaf_axis_size(a)
            full_shape = list(part)
            full_shape[pos] = view.leaf_shape[a]
            index = (slice(None),) * pos + (slice(start, stop, stride),)
            x = jnp.zeros(full_shape, x.dtype).at[index].set(jnp.broadcast_to(x, part))
        return x


@dataclasses.dataclass(frozen=True)
class UnresolvedUse:
    """A parameter leaf reaches a matmul / conv operand in a way that cannot be resolved exactly.

    Attributes:
      leaf: index of the leaf; name: its "/"-joined path.
      primitive: the consuming primitive (a matmul / conv, or a higher-order primitive whose
        body is not followed and contains one).
      path: the equation's :data:`Path`.
      operand: the operand index the leaf reaches.
      reason: why the use is not resolved.
    """

    leaf: int
    name: str
    primitive: str
    path: Path
    operand: int
    reason: str


@dataclasses.dataclass(frozen=True)
class _Derived:
    """Computed from parameters (and constants) only, but not a pure layout view."""

    leaves: frozenset
    reason: str


@dataclasses.dataclass(frozen=True)
class _Gathered:
    """Indexed out of parameters with data-dependent indices (an embedding lookup, or a
    weight picked per example, as in mixture-of-experts); followed through layout ops only."""

    leaves: frozenset
    reason: str


class _Data:
    def __repr__(self) -> str:
        return "DATA"


DATA = _Data()
"""The fact of a value that depends on a non-parameter input of ``fn``."""


_INDEXING_PRIMITIVES = frozenset({"gather", "dynamic_slice"})


def _leaves_of(fact: Any) -> frozenset:
    if isinstance(fact, WeightView):
        return frozenset({fact.leaf})
    if isinstance(fact, _Derived):
        return fact.leaves
    return frozenset()


def _is_data(fact: Any) -> bool:
    return fact is DATA or isinstance(fact, _Gathered)


class _UseFinder(Visitor):
    """Finds parameter uses. Facts: None (constant), DATA, WeightView, _Derived, _Gathered."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.uses: dict[tuple[Path, int], ParamUse] = {}
        self.unresolved: dict[tuple[Path, int, int], UnresolvedUse] = {}

    def join(self, facts):
        first = facts[0]
        if all(f == first for f in facts[1:]):
            return first
        if any(_is_data(f) for f in facts):
            return DATA
        leaves = frozenset().union(*map(_leaves_of, facts))
        if not leaves:
            return None
        reasons = [f.reason for f in facts if isinstance(f, _Derived)]
        return _Derived(leaves, reasons[0] if reasons else "merged by control flow")

    def scan_slice(self, ctx, fact):
        if isinstance(fact, WeightView):
            out = fact.scan_slice(ctx.path, ctx.eqn.params["length"])
            return _Derived(frozenset({fact.leaf}), f"scan: {out}") if isinstance(out, str) else out
        return fact

    def scan_stack(self, ctx, fact):
        if isinstance(fact, WeightView):
            return _Derived(frozenset({fact.leaf}), "stacked by scan")
        return fact

    def _unresolved(self, ctx, operand, leaf, reason):
        key = (ctx.path, operand, leaf)
        self.unresolved[key] = UnresolvedUse(
            leaf, self.names[leaf], ctx.eqn.primitive.name, ctx.path, operand, reason
        )

    def equation(self, ctx, facts):
        eqn, name = ctx.eqn, ctx.eqn.primitive.name
        n_out = len(eqn.outvars)
        if all(f is None for f in facts):
            return [None] * n_out
        if name in MATMUL_PRIMITIVES:
            self._record(ctx, facts)
        elif sub_jaxprs(eqn) and any(contains_matmul(j) for j in sub_jaxprs(eqn)):
            for k, f in enumerate(facts):
                for leaf in sorted(_leaves_of(f)):
                    self._unresolved(
                        ctx, k, leaf, f"passed into {name}, whose body is not followed"
                    )
        if name in IDENTITY_PRIMITIVES and len(facts) == n_out:
            return list(facts)
        if name == "split" and isinstance(facts[0], WeightView | _Gathered):
            return self._split(eqn, facts[0])
        if (
            isinstance(facts[0], _Gathered)
            and name in LAYOUT_PRIMITIVES
            and n_out == 1
            and all(f is None for f in facts[1:])
        ):
            return [facts[0]]
        if any(_is_data(f) for f in facts):
            if name in _INDEXING_PRIMITIVES and _leaves_of(facts[0]):
                return [_Gathered(_leaves_of(facts[0]), f"{name} with data-dependent indices")]
            return [DATA] * n_out
        if (
            name in LAYOUT_PRIMITIVES
            and isinstance(facts[0], WeightView)
            and n_out == 1
            and all(f is None for f in facts[1:])
        ):
            out = self._layout(eqn, facts[0])
            if isinstance(out, WeightView):
                return [out]
            return [_Derived(frozenset({facts[0].leaf}), out)]
        leaves = frozenset().union(*map(_leaves_of, facts))
        reasons = [f.reason for f in facts if isinstance(f, _Derived)]
        return [_Derived(leaves, reasons[0] if reasons else name)] * n_out

    @staticmethod
    def _split(eqn, fact) -> list[Any]:
        if isinstance(fact, _Gathered):
            return [fact] * len(eqn.outvars)
        in_shape = tuple(eqn.invars[0].aval.shape)
        axis, outs, start = eqn.params["axis"], [], 0
        for v in eqn.outvars:
            size = v.aval.shape[axis]
            starts = [0] * len(in_shape)
            limits = list(in_shape)
            starts[axis], limits[axis] = start, start + size
            out = fact.slice(in_shape, starts, limits, None)
            outs.append(
                out if isinstance(out, WeightView) else _Derived(frozenset({fact.leaf}), out)
            )
            start += size
        return outs

    @staticmethod
    def _layout(eqn, view: WeightView) -> WeightView | str:
        name, p = eqn.primitive.name, eqn.params
        in_shape = tuple(eqn.invars[0].aval.shape)
        out_shape = tuple(eqn.outvars[0].aval.shape)
        if name == "transpose":
            return view.transpose(p["permutation"])
        if name == "broadcast_in_dim":
            return view.broadcast_in_dim(in_shape, out_shape, p["broadcast_dimensions"])
        if name == "reshape":
            if p.get("dimensions") is not None:
                return "reshape with dimensions"
            return view.reshape(in_shape, out_shape)
        if name == "squeeze":
            return view.reshape(in_shape, out_shape)
        if name == "slice":
            return view.slice(in_shape, p["start_indices"], p["limit_indices"], p["strides"])
        return name

    def _record(self, ctx, facts):
        eqn, name = ctx.eqn, ctx.eqn.primitive.name
        for k in (0, 1):
            if isinstance(facts[k], _Derived):
                for leaf in sorted(facts[k].leaves):
                    self._unresolved(
                        ctx,
                        k,
                        leaf,
                        f"operand {k} is computed from the parameter by {facts[k].reason} "
                        "(not a layout-preserving view)",
                    )
        views = [k for k in (0, 1) if isinstance(facts[k], WeightView)]
        for k in (0, 1):
            if isinstance(facts[k], _Gathered) and not isinstance(facts[1 - k], WeightView):
                for leaf in sorted(facts[k].leaves):
                    self._unresolved(
                        ctx,
                        k,
                        leaf,
                        f"operand {k} is taken from the parameter by {facts[k].reason}, and "
                        "the other operand is not a parameter",
                    )
        if not views:
            return
        if len(views) == 2:
            for k in views:
                self._unresolved(ctx, k, facts[k].leaf, f"both operands of {name} are parameters")
            return
        (k,) = views
        view: WeightView = facts[k]
        if any(r.kind == "while_cond" for r in ctx.regions):
            self._unresolved(ctx, k, view.leaf, "inside a while_loop condition")
            return
        a = 1 - k
        p = eqn.params
        if name == "dot_general":
            (lc, rc), (lb, rb) = p["dimension_numbers"]
            wc, wb, ac, ab = (lc, lb, rc, rb) if k == 0 else (rc, rb, lc, lb)
        else:
            if k == 0:
                self._unresolved(ctx, k, view.leaf, "the parameter is the input of a convolution")
                return
            if p["batch_group_count"] != 1:
                self._unresolved(ctx, k, view.leaf, "convolution with batch_group_count > 1")
                return
            dn = p["dimension_numbers"]
            wc, wb = (dn.rhs_spec[1], *dn.rhs_spec[2:]), ()
            ac, ab = (dn.lhs_spec[1], *dn.lhs_spec[2:]), ()
        role = {d: "contracting" for d in wc} | {d: "batch" for d in wb}
        axes: dict[str, list[int]] = {"contracting": [], "batch": [], "output": [], "mixed": []}
        for lx, ox in view.blocks:
            roles = {role.get(o, "output") for o in ox}
            if len(roles) == 1:
                axes[roles.pop()].extend(lx)
            elif len(roles) > 1:
                axes["mixed"].extend(lx)
        w_aval, a_aval = eqn.invars[k].aval, eqn.invars[a].aval
        self.uses[(ctx.path, k)] = ParamUse(
            leaf=view.leaf,
            name=self.names[view.leaf],
            primitive=name,
            path=ctx.path,
            weight_operand=k,
            activation_operand=a,
            view=view,
            weight_shape=tuple(w_aval.shape),
            weight_dtype=w_aval.dtype,
            weight_contracting_dims=tuple(wc),
            weight_batch_dims=tuple(wb),
            contracting_axes=tuple(sorted(axes["contracting"])),
            batch_axes=tuple(sorted(axes["batch"])),
            output_axes=tuple(sorted(axes["output"])),
            mixed_axes=tuple(sorted(axes["mixed"])),
            scan_axes=view.scan_axes,
            activation_shape=tuple(a_aval.shape),
            activation_dtype=a_aval.dtype,
            activation_contracting_dims=tuple(ac),
            activation_batch_dims=tuple(ab),
            params=dict(p),
            regions=ctx.regions,
        )


# ----------------------------------------------------------------------------- graph


@dataclasses.dataclass(frozen=True)
class ModelGraph:
    """The traced model function and where its parameters are used as weights.

    Attributes:
      jaxpr: the ``ClosedJaxpr`` of ``fn(params, *args)``; its first ``num_params`` inputs
        are the parameter leaves (in ``jax.tree.leaves(params)`` order), the rest the leaves
        of ``args``.
      in_tree: the tree structure of ``(params, *args)``.
      out_tree: the tree structure of ``fn``'s output.
      param_names: "/"-joined paths of the parameter leaves (of the unboxed params).
      param_avals: their abstract values (shape, dtype).
      uses: every resolved use, in program order.
      unresolved: every unresolved use, in program order.
    """

    jaxpr: ClosedJaxpr = dataclasses.field(repr=False)
    in_tree: Any = dataclasses.field(repr=False)
    out_tree: Any = dataclasses.field(repr=False)
    param_names: tuple[str, ...]
    param_avals: tuple[Any, ...] = dataclasses.field(repr=False)
    uses: tuple[ParamUse, ...]
    unresolved: tuple[UnresolvedUse, ...]

    @property
    def num_params(self) -> int:
        return len(self.param_names)

    def _leaf_index(self, leaf: int | str) -> int:
        if isinstance(leaf, str):
            if leaf not in self.param_names:
                raise KeyError(f"no parameter named {leaf!r} (have {list(self.param_names)})")
            return self.param_names.index(leaf)
        return leaf

    def uses_of(self, leaf: int | str) -> tuple[ParamUse, ...]:
        """The resolved uses of a leaf (by index or name)."""
        i = self._leaf_index(leaf)
        return tuple(u for u in self.uses if u.leaf == i)

    def unresolved_of(self, leaf: int | str) -> tuple[UnresolvedUse, ...]:
        """The unresolved uses of a leaf (by index or name)."""
        i = self._leaf_index(leaf)
        return tuple(u for u in self.unresolved if u.leaf == i)

    def eqn(self, path: Path) -> Any:
        """The equation at ``path``."""
        return eqn_at(self.jaxpr, path)

    def summary(self) -> str:
        """One line per use: name, primitive, contracting / output / scan axes (leaf numbering)."""
        lines = []
        for u in self.uses:
            extra = ""
            if u.batch_axes:
                extra += f" batch={u.batch_axes}"
            if u.mixed_axes:
                extra += f" mixed={u.mixed_axes}"
            if u.scan_axes:
                extra += f" scan={u.scan_axes}"
            lines.append(
                f"{u.name}: {u.primitive} contracting={u.contracting_axes} "
                f"output={u.output_axes}{extra}"
            )
        lines.extend(f"{u.name}: UNRESOLVED ({u.primitive}): {u.reason}" for u in self.unresolved)
        return "\n".join(lines)


def trace(fn: Callable, params: Any, *args: Any) -> ModelGraph:
    """Traces ``fn(params, *args)`` and finds every use of a parameter leaf as a matmul weight.

    ``params`` may hold Flax ``nnx.Variable`` boxes (``nnx.split`` state); names are those of
    the unboxed leaves. ``args`` are only used for their shapes and dtypes.

    Args:
      fn: the model function, called as ``fn(params, *args)``.
      params: the parameter pytree.
      *args: example inputs.

    Returns:
      A :class:`ModelGraph`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src import jaxpr
      >>> params = {"w": jnp.ones((3, 4)), "emb": jnp.ones((10, 4))}
      >>> fn = lambda p, x: (x @ p["w"]) @ p["emb"].T
      >>> print(jaxpr.trace(fn, params, jnp.ones((2, 3))).summary())
      w: dot_general contracting=(0,) output=(1,)
      emb: dot_general contracting=(1,) output=(0,)

    References:
      Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
      2023, https://arxiv.org/abs/2306.11695
    """
    names = [
        tree_lib.path_name(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree_lib.unbox(params))[0]
    ]
    n = len(jax.tree.leaves(params))
    if n != len(names):  # pragma: no cover - a box holding several arrays
        raise ValueError(f"params have {n} leaves but {len(names)} after unboxing")
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, *args)
    in_tree = jax.tree.structure((params, *args))
    invars = closed.jaxpr.invars
    facts: list[Any] = [WeightView.of_leaf(i, v.aval.shape) for i, v in enumerate(invars[:n])]
    facts += [DATA] * (len(invars) - n)
    finder = _UseFinder(names)
    walk(closed, facts, finder)
    return ModelGraph(
        jaxpr=closed,
        in_tree=in_tree,
        out_tree=jax.tree.structure(out_shape),
        param_names=tuple(names),
        param_avals=tuple(v.aval for v in invars[:n]),
        uses=tuple(finder.uses.values()),
        unresolved=tuple(finder.unresolved.values()),
    )
