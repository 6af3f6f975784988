"""The shrunk function: the model re-traced at each input signature, run on the small arrays.

``small_fn(small_params, *args)`` traces the user's ``fn`` with the dense parameters' shapes
and the inputs' shapes (once per input signature: the tree structure, shapes and dtypes of
``args``), runs the coupling pass on that trace and applies the decisions :func:`shrink`
made, as the kept indices of every parameter axis. Before it evaluates anything it proves
them again on this trace: with every removed slice zero (and nothing else known), each
removed channel must vanish at every contraction that sums over it; otherwise (the model
couples its axes differently at these shapes) it raises instead of computing something else.
The trace is then evaluated on the small arrays with every shape-carrying parameter
(``reshape``, ``broadcast_in_dim``, ``iota``, ``slice``, ``split``, ``dynamic_slice``,
``gather``) recomputed from the new sizes and every result's shape checked.

So ``small_fn(small_params, *args)`` is ``fn(small_fn.expand(small_params), *args)`` (the
small arrays put back at their places, zeros at the removed ones), plus the
:attr:`ShrunkFunction.corrections` when ``shrink`` was called with ``constants=True``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import jaxpr as mg
from jaxprune._src.shrink import analysis
from jaxprune._src.shrink.constants import EMPTY, ChannelConstants, Constants
from jaxprune._src.shrink.decision import CorrectionSpec, Decision, correction_value, take_dims

AxisCut = tuple[tuple[int, ...], tuple[Any, ...]]
"""One parameter axis's decision: the sizes of its factors and, per factor, the kept
indices (a sorted int array) or None (kept whole)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The shrunk model at one input signature."""

    graph: mg.ModelGraph
    in_dims: dict
    out_dims: dict
    size: Callable[[Any], int]
    corrections: dict
    run: Callable = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # One jitted evaluation per signature: eager calls compile once instead of
        # dispatching every equation; under an outer jit / vmap it is an inner call.
        def run(flat):
            return _ShrunkEvaluator(self).eval(self.graph.jaxpr, flat)[0]

        object.__setattr__(self, "run", jax.jit(run))


def remap_params(eqn, in_dims, out_dims, size) -> dict:
    """``eqn``'s params with every shape they carry recomputed from the new sizes.

    Args:
      eqn: the equation.
      in_dims, out_dims: the dimensions of its inputs and outputs (from the coupling pass).
      size: ``dimension -> new size``.

    Returns:
      The params to bind the equation with.
    """
    name, params = eqn.primitive.name, dict(eqn.params)

    def shape(dims):
        return tuple(size(x) for x in dims)

    if name == "reshape" and params.get("dimensions") is None:
        params["new_sizes"] = shape(out_dims[0])
    elif name in ("broadcast_in_dim", "iota"):
        params["shape"] = shape(out_dims[0])
    elif name == "slice":
        in_shape = eqn.invars[0].aval.shape
        strides = params["strides"] or (1,) * len(in_shape)
        limits = list(params["limit_indices"])
        for a, (s0, s1, st) in enumerate(
            zip(params["start_indices"], limits, strides, strict=True)
        ):
            if (s0, s1, st) == (0, in_shape[a], 1):
                limits[a] = size(in_dims[0][a])
        params["limit_indices"] = tuple(limits)
    elif name == "split":
        params["sizes"] = tuple(size(o[params["axis"]]) for o in out_dims)
    elif name == "dynamic_slice":
        params["slice_sizes"] = shape(out_dims[0])
    elif name == "gather":
        in_shape = eqn.invars[0].aval.shape
        params["slice_sizes"] = tuple(
            size(in_dims[0][a]) if s == in_shape[a] else s
            for a, s in enumerate(params["slice_sizes"])
        )
    return params


class _ShrunkEvaluator(mg.Evaluator):
    def __init__(self, plan: Plan):
        self.plan = plan

    def primitive(self, eqn, path, ins):
        plan = self.plan
        out_dims = plan.out_dims[path]
        params = remap_params(eqn, plan.in_dims[path], out_dims, plan.size)
        outs = mg.bind_equation(eqn, ins, params)
        if path in plan.corrections:
            outs[0] = outs[0] + jnp.asarray(plan.corrections[path], outs[0].dtype)
        for x, dims in zip(outs, out_dims, strict=True):
            want = tuple(plan.size(d) for d in dims)
            if tuple(np.shape(x)) != want:  # pragma: no cover - a bug
                raise AssertionError(
                    f"shrink: {eqn.primitive.name} at {path} gave shape {np.shape(x)}, "
                    f"expected {want}"
                )
        return outs, {}


def _signature(args) -> tuple:
    structs = jax.eval_shape(lambda *a: a, *args)
    leaves, treedef = jax.tree.flatten(structs)
    key = tuple(
        (tuple(s.shape), str(s.dtype), bool(getattr(s, "weak_type", False))) for s in leaves
    )
    return (treedef, key), structs


class ShrunkFunction:
    """``small_fn`` of :func:`shrink`: the model run on the small parameters, at any inputs.

    Call it as ``small_fn(small_params, *args)``, with inputs of any shapes that ``fn``
    accepts, eagerly or under ``jax.jit`` / ``jax.vmap``. Each new input signature (the
    structure, shapes and dtypes of ``args``) re-traces ``fn`` with the dense parameters'
    shapes and applies the same decisions (which indices of which parameter axes are kept),
    proving again on that trace that every removed channel vanishes; the plan is cached per
    signature. If the model couples its axes differently at some shapes (it branches on
    them in Python, say), the call raises ``ValueError`` instead of computing another model.

    ``small_fn(small_params, *args)`` equals ``fn(small_fn.expand(small_params), *args)``,
    plus :attr:`corrections` (only with ``shrink(..., constants=True)``). When ``shrink``
    folded a removed channel's constant into a bias, the folded bias is in ``small_params``,
    so ``small_params`` in a copy of the model with the smaller widths computes the same.

    Attributes:
      report: the :class:`ShrinkReport`.
      shapes: the pytree of the small parameters' shapes.
      corrections: ``{equation path: array}`` at the example inputs' signature: the
        input-independent constants added after a matmul whose removed input channels had a
        nonzero constant value and no bias to fold into (``constants=True`` only; computed
        from the dense weights, they stay fixed if ``small_params`` are fine-tuned).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxprune
      >>> params = {"w1": jnp.array([[1., 0., 2.]]), "w2": jnp.array([[1.], [5.], [3.]])}
      >>> fn = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
      >>> small, small_fn = jaxprune.shrink(fn, params, jnp.ones((4, 1)))
      >>> small_fn.shapes
      {'w1': (1, 2), 'w2': (2, 1)}
      >>> x = jnp.array([[1.0], [2.0]])  # another batch size than the example's
      >>> jax.jit(small_fn)(small, x).tolist()
      [[7.0], [14.0]]
      >>> small_fn.expand(small)["w2"].tolist()
      [[1.0], [0.0], [3.0]]

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710
    """

    def __init__(
        self,
        fn: Callable,
        dense_structs: Any,
        names: tuple[str, ...],
        cuts: list[tuple[AxisCut, ...]],
        corrections: list[CorrectionSpec],
        report: Any,
        small_shapes: list[tuple[int, ...]],
        leaf_blocks: dict[int, str],
    ):
        self._fn = fn
        self._dense = dense_structs
        self._param_tree: Any = jax.tree.structure(dense_structs)
        self._names = names
        self._cuts = cuts
        self._correction_specs = corrections
        self.report = report
        self._small_shapes = small_shapes
        self._leaf_blocks = leaf_blocks
        self._plans: dict[Any, Plan] = {}
        self._first: Plan | None = None

    @property
    def shapes(self):
        return jax.tree.unflatten(self._param_tree, self._small_shapes)

    @property
    def corrections(self) -> dict:
        return {} if self._first is None else dict(self._first.corrections)

    def prepare(self, *args) -> Plan:
        """The plan at ``args``' signature (built and cached if new)."""
        key, structs = _signature(args)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._build(structs)
        if self._first is None:
            self._first = plan
        return plan

    def _build(self, arg_structs) -> Plan:
        try:
            graph = mg.trace(self._fn, self._dense, *arg_structs)
        except Exception as e:
            raise ValueError(
                "small_fn: fn(params, *args) could not be traced with these inputs "
                f"({type(e).__name__}: {str(e)[:300]})"
            ) from e
        shapes = [tuple(s.shape) for s in jax.tree.leaves(arg_structs)]
        cp = analysis.couple(graph, self._leaf_blocks)
        d = cp.dims
        kept_of: dict[int, Any] = {}
        problems: list[str] = []
        for i, cut in enumerate(self._cuts):
            for axis, (sizes, kepts) in enumerate(cut):
                atoms = d.atoms(cp.param_dims[i][axis])
                if tuple(d.size[a] for a in atoms) != tuple(sizes):
                    if any(k is not None for k in kepts):
                        problems.append(f"{self._names[i]}:{axis} is coupled differently")
                    continue
                for a, k in zip(atoms, kepts, strict=True):
                    if a in kept_of and not _same(kept_of[a], k):
                        problems.append(
                            f"{self._names[i]}:{axis} shares channels with an axis cut differently"
                        )
                    kept_of.setdefault(a, k)
        kept = {a: k for a, k in kept_of.items() if k is not None}
        removed = {a: np.setdiff1d(np.arange(d.size[a]), k) for a, k in kept.items()}
        for a in removed:
            if a in d.blocked:
                problems.append(f"channels of {_group_name(cp, a)} are left whole: {d.blocked[a]}")
            elif a not in cp.sites_of:
                problems.append(f"channels of {_group_name(cp, a)} reach no matmul")
        if not problems:
            problems += self._verify(cp, removed)
        corrections: dict = {}
        if not problems and self._correction_specs:
            decision = Decision(
                graph, cp.coupler, d, None, {u.key: u for u in graph.uses}, None, {}, []
            )
            for spec in self._correction_specs:
                sites = [
                    path
                    for path in cp.coupler.sites
                    if (w := decision.weight_use(path)) is not None and w[1].leaf == spec.weight
                ]
                if len(sites) != 1:
                    problems.append(f"the matmul with {spec.name} is not found once")
                    continue
                (path,) = sites
                k, _ = decision.weight_use(path)
                value = correction_value(graph.eqn(path), k, spec)
                if isinstance(value, str):
                    problems.append(f"{value} ({spec.name})")
                    continue
                corrections[path] = np.asarray(
                    take_dims(value, cp.coupler.out_dims[path][0], kept, d)
                )
        if problems:
            raise ValueError(
                f"small_fn: the shrunk model cannot run at input shapes {shapes}: "
                + "; ".join(sorted(set(problems))[:4])
                + " (call jaxprune.shrink with example inputs of these shapes)"
            )

        def size(dim) -> int:
            return math.prod(len(kept[a]) if a in kept else d.size[a] for a in d.atoms(dim))

        return Plan(graph, cp.coupler.in_dims, cp.coupler.out_dims, size, corrections)

    def _verify(self, cp, removed) -> list[str]:
        """With the removed slices zero and nothing else known, every removed channel must
        vanish at every contraction over its group."""
        d = cp.dims
        n = cp.graph.num_params
        facts = []
        for i in range(n):
            entries: list[tuple[int, tuple]] = []
            for dd in cp.param_dims[i]:
                for a in d.atoms(dd):
                    if a in removed and all(a != e[0] for e in entries):
                        gone = set(removed[a].tolist())
                        entries.append(
                            (a, tuple(0 if j in gone else None for j in range(d.size[a])))
                        )
            facts.append(ChannelConstants(tuple(entries)))
        facts += [EMPTY] * (len(cp.graph.jaxpr.jaxpr.invars) - n)
        consts = Constants(d, cp.coupler, set(removed))
        mg.walk(cp.graph.jaxpr, facts, consts)
        decision = Decision(
            cp.graph,
            cp.coupler,
            d,
            consts,
            {u.key: u for u in cp.graph.uses},
            None,
            cp.members,
            cp.param_dims,
        )
        problems = []
        for g, r in removed.items():
            ok = decision.removable(g, cp.sites_of[g])
            missing = np.setdiff1d(r, ok)
            if missing.size:
                why = decision.why.get((g, int(missing[0])), "it does not vanish")
                problems.append(f"channel {int(missing[0])} of {_group_name(cp, g)}: {why}")
        return problems

    def _check_small(self, small_params) -> list:
        leaves, tree = jax.tree.flatten(small_params)
        if tree != self._param_tree:
            raise ValueError(
                f"small_fn: small_params has {len(leaves)} leaves in another structure than "
                f"the params given to shrink ({len(self._small_shapes)} leaves); pass the "
                "small_params that shrink returned (or a tree of the same structure)"
            )
        for name, x, s in zip(self._names, leaves, self._small_shapes, strict=True):
            if tuple(np.shape(x)) != tuple(s):
                raise ValueError(
                    f"small_fn: small_params leaf {name!r} has shape {tuple(np.shape(x))}, "
                    f"expected {tuple(s)}"
                )
        return leaves

    def __call__(self, small_params, *args):
        leaves = self._check_small(small_params)
        plan = self.prepare(*args)
        outs = plan.run(leaves + jax.tree.leaves(args))
        return jax.tree.unflatten(plan.graph.out_tree, outs)

    def expand(self, small_params) -> Any:
        """The small arrays put back at their places in arrays of the dense shapes (zeros at
        the removed indices): the params with which ``fn`` computes what ``small_fn`` does
        (up to :attr:`corrections`). Works under ``jax.jit``.

        Args:
          small_params: a pytree like the ``small_params`` that :func:`shrink` returned.

        Returns:
          A pytree of the structure of ``params`` with the dense shapes.
        """
        leaves = self._check_small(small_params)
        dense = jax.tree.leaves(self._dense)
        out = []
        for x, s, cut in zip(leaves, dense, self._cuts, strict=True):
            if all(all(k is None for k in kepts) for _, kepts in cut):
                out.append(x)
                continue
            index = []
            for (sizes, kepts), n in zip(cut, s.shape, strict=True):
                grids = [
                    np.arange(size) if k is None else k
                    for size, k in zip(sizes, kepts, strict=True)
                ]
                if not grids:
                    index.append(np.arange(n))
                    continue
                index.append(np.ravel_multi_index(np.ix_(*grids), sizes).reshape(-1))
            full = jnp.zeros(s.shape, x.dtype)
            out.append(full.at[np.ix_(*index)].set(x))
        return jax.tree.unflatten(self._param_tree, out)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


def _group_name(cp, g) -> str:
    mem = cp.members.get(g)
    if not mem:
        return "an axis"
    leaf, axis, pos, sizes = mem[0]
    return f"{cp.graph.param_names[leaf]}:{axis}" + (f"[{pos}]" if len(sizes) > 1 else "")
