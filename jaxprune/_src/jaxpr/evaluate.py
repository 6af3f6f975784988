"""Evaluating a traced model function with a hook at every parameter use.

:func:`interpret` evaluates the traced jaxpr of a :class:`~jaxprune._src.jaxpr.uses.ModelGraph`
with a hook that sees every recorded use's activation operand, usable inside ``jax.jit``: the
hook's per-call results are summed over loop iterations and stacked over scanned weight slices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Literal

from jaxprune._src.jaxpr.uses import ModelGraph, ParamUse
from jaxprune._src.jaxpr.walk import Path, call_body

# ----------------------------------------------------------------------------- interpreter

Hook = Callable[[ParamUse, jax.Array, jax.Array], Any]


def bind_equation(eqn, ins, params=None):
    """Binds ``eqn``'s primitive to ``ins`` with ``params`` (default: the equation's own).

    ``Primitive.get_bind_params`` returns the params (jax >= 0.8) or ``(subfuns, params)``
    (older jax, e.g. 0.7.1); both are handled.
    """
    bind_params = eqn.primitive.get_bind_params(eqn.params if params is None else params)
    subfuns: tuple = ()
    if isinstance(bind_params, tuple):
        subfuns, bind_params = bind_params
    manager = getattr(getattr(eqn, "ctx", None), "manager", None) or contextlib.nullcontext()
    with manager:
        ans = eqn.primitive.bind(*subfuns, *ins, **bind_params)
    return list(ans) if eqn.primitive.multiple_results else [ans]


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


class Evaluator:
    """Evaluates a closed jaxpr equation by equation, threading per-key statistics.

    One evaluation loop for every consumer (the use interpreter of :func:`interpret`, the
    shrunk function of ``shrink``): calls are inlined (forward semantics; custom derivative
    rules and remat policies are not kept), ``scan`` / ``cond`` / ``while`` are re-expressed
    with ``lax.scan`` / ``lax.switch`` / ``lax.while_loop`` whose bodies are evaluated by this
    evaluator again, and every other equation goes to :meth:`primitive`. Statistics are a
    dict per key: summed over loop iterations, zeros for a branch not taken, and stacked over
    the scans that :meth:`stacked` names.

    Subclasses override :meth:`primitive` (bind the equation, maybe with other params, and
    return statistics) and, when they keep statistics, :meth:`keys_under`, :meth:`zeros` and
    :meth:`stacked`; :meth:`enters` says which structured equations to evaluate piece by piece
    (the others are bound whole).
    """

    def primitive(self, eqn: Any, path: Path, ins: list[Any]) -> tuple[list[Any], dict]:
        """Outputs of a non-structured equation and the statistics it yields."""
        del path
        return bind_equation(eqn, ins), {}

    def enters(self, path: Path) -> bool:
        """Whether the call / control-flow equation at ``path`` is evaluated piece by piece."""
        del path
        return True

    def keys_under(self, prefix: Path) -> list[Any]:
        """The statistics keys produced by equations under ``prefix``."""
        del prefix
        return []

    def zeros(self, key: Any, scope: Path) -> Any:
        """Zero statistics of ``key`` as seen from the jaxpr at ``scope``."""
        raise NotImplementedError

    def stacked(self, key: Any, scan_path: Path) -> bool:
        """Whether the scan at ``scan_path`` stacks (rather than sums) ``key``'s statistics."""
        del key, scan_path
        return False

    def eval(self, closed: ClosedJaxpr, args: Sequence[Any], prefix: Path = ()):
        """``(outputs, statistics)`` of ``closed`` on ``args`` (equations at ``prefix + (i,)``)."""
        jaxpr = closed.jaxpr
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, closed.consts, strict=True):
            env[v] = c
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a

        def read(atom):
            return atom.val if isinstance(atom, Literal) else env[atom]

        acc: dict[Any, Any] = {}
        for i, eqn in enumerate(jaxpr.eqns):
            path = (*prefix, i)
            ins = [read(a) for a in eqn.invars]
            structured = call_body(eqn) is not None or eqn.primitive.name in (
                "scan",
                "cond",
                "while",
            )
            if structured and self.enters(path):
                outs, sub = self.structured(eqn, path, ins)
            else:
                outs, sub = self.primitive(eqn, path, ins)
            acc.update(sub)
            for v, x in zip(eqn.outvars, outs, strict=True):
                env[v] = x
        return [read(a) for a in jaxpr.outvars], acc

    def structured(self, eqn, path: Path, ins: list[Any]):
        body = call_body(eqn)
        name, p = eqn.primitive.name, eqn.params
        if body is not None:
            return self.eval(body, ins, (*path, 0))
        if name == "scan":
            nc, nk = p["num_consts"], p["num_carry"]
            consts, init, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]
            scope = (*path, 0)
            keys = self.keys_under(scope)
            stacked = {k for k in keys if self.stacked(k, path)}
            summed0 = {k: self.zeros(k, scope) for k in keys if k not in stacked}

            def step(carry, x):
                c, s = carry
                outs, acc = self.eval(p["jaxpr"], [*consts, *c, *x], scope)
                s = {k: _add(v, acc[k]) for k, v in s.items()}
                return (outs[:nk], s), (outs[nk:], {k: acc[k] for k in stacked})

            (c, s), (ys, st) = jax.lax.scan(
                step,
                (list(init), summed0),
                list(xs),
                length=p["length"],
                reverse=p["reverse"],
                unroll=p["unroll"],
            )
            return [*c, *ys], {**s, **st}
        if name == "cond":
            keys = self.keys_under(path)
            branches = p["branches"]

            def make(b):
                def branch(*ops):
                    outs, acc = self.eval(branches[b], list(ops), (*path, b))
                    return outs, {k: acc[k] if k in acc else self.zeros(k, path) for k in keys}

                return branch

            outs, acc = jax.lax.switch(ins[0], [make(b) for b in range(len(branches))], *ins[1:])
            return list(outs), acc
        if name == "while":
            cn, bn = p["cond_nconsts"], p["body_nconsts"]
            cconsts, bconsts, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
            scope = (*path, 1)
            s0 = {k: self.zeros(k, scope) for k in self.keys_under(scope)}

            def cond_fun(carry):
                return self.eval(p["cond_jaxpr"], [*cconsts, *carry[0]], (*path, 0))[0][0]

            def body_fun(carry):
                c, s = carry
                outs, acc = self.eval(p["body_jaxpr"], [*bconsts, *c], scope)
                return outs, {k: _add(v, acc[k]) for k, v in s.items()}

            c, s = jax.lax.while_loop(cond_fun, body_fun, (list(init), s0))
            return list(c), s
        raise AssertionError(f"structured: {name} at {path}")  # pragma: no cover


class _UseInterpreter(Evaluator):
    """The evaluator of :func:`interpret`: the hook's statistics at every recorded use."""

    def __init__(self, graph: ModelGraph, hook: Hook):
        self.hook = hook
        self.uses_at: dict[Path, list[ParamUse]] = {}
        self.prefixes: set[Path] = set()
        self.specs: dict[tuple[Path, int], Any] = {}
        self.by_key: dict[tuple[Path, int], ParamUse] = {}
        for u in graph.uses:
            self.uses_at.setdefault(u.path, []).append(u)
            self.prefixes.update(u.path[:k] for k in range(1, len(u.path)))
            act = jax.ShapeDtypeStruct(u.activation_shape, u.activation_dtype)
            w = jax.ShapeDtypeStruct(u.weight_shape, u.weight_dtype)
            self.specs[u.key] = jax.eval_shape(lambda a, w, u=u: hook(u, a, w), act, w)
            self.by_key[u.key] = u
        self.uses = graph.uses

    def enters(self, path):
        return path in self.prefixes

    def primitive(self, eqn, path, ins):
        acc = {
            u.key: self.hook(u, ins[u.activation_operand], ins[u.weight_operand])
            for u in self.uses_at.get(path, ())
        }
        return bind_equation(eqn, ins), acc

    def keys_under(self, prefix):
        return [u.key for u in self.uses if u.path[: len(prefix)] == prefix]

    def zeros(self, key, scope):
        """Zero stats of a use as seen from the jaxpr at ``scope`` (inner scans stacked)."""
        use = self.by_key[key]
        lead = tuple(n for p, _, n in use.view.scans if p[: len(scope)] == scope)
        return jax.tree.map(lambda s: jnp.zeros(lead + tuple(s.shape), s.dtype), self.specs[key])

    def stacked(self, key, scan_path):
        return any(s[0] == scan_path for s in self.by_key[key].view.scans)


def interpret(graph: ModelGraph, hook: Hook, params: Any, *args: Any) -> tuple[Any, dict]:
    """Evaluates ``fn(params, *args)`` from its traced jaxpr, calling ``hook`` at every use.

    ``hook(use, activation, weight)`` is called with the :class:`ParamUse` and the values of
    the activation and weight operands each time the use's equation runs, and returns a
    pytree of arrays (a statistic). Works eagerly and inside ``jax.jit``: loops and
    conditionals are re-expressed with ``lax.scan`` / ``lax.cond`` / ``lax.while_loop`` that
    thread the statistics; calls are inlined (forward semantics; custom derivative rules and
    remat policies are not kept, so do not differentiate through the interpreter).

    Args:
      graph: from :func:`trace` (inputs of the same shapes and dtypes).
      hook: ``(use, activation, weight) -> pytree``.
      params: the parameters (the same structure as traced).
      *args: the inputs.

    Returns:
      ``(out, stats)``: ``fn``'s output, and per use key (:attr:`ParamUse.key`) the hook's
      results summed over loop iterations (a use in a ``cond`` branch not taken adds zeros)
      and stacked over the scans that slice the weight: one leading axis per entry of
      :attr:`ParamUse.scan_axes`, outermost scan first.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune._src import jaxpr
      >>> params = {"w": jnp.ones((3, 2))}
      >>> fn = lambda p, x: x @ p["w"]
      >>> x = jnp.arange(6.0).reshape(2, 3)
      >>> graph = jaxpr.trace(fn, params, x)
      >>> hook = lambda use, act, w: jnp.sum(act, axis=0)
      >>> out, stats = jax.jit(lambda p, x: jaxpr.interpret(graph, hook, p, x))(params, x)
      >>> stats[graph.uses[0].key].tolist()
      [3.0, 5.0, 7.0]
    """
    flat, in_tree = jax.tree.flatten((params, *args))
    if in_tree != graph.in_tree:
        raise ValueError(
            f"interpret: (params, *args) has {len(flat)} leaves in another structure than "
            f"the {len(graph.jaxpr.jaxpr.invars)} leaves the graph was traced with"
        )
    for i, (x, v) in enumerate(zip(flat, graph.jaxpr.jaxpr.invars, strict=True)):
        if tuple(np.shape(x)) != tuple(v.aval.shape):
            raise ValueError(
                f"interpret: input leaf {i} has shape {np.shape(x)}, traced with {v.aval.shape}"
            )
    interp = _UseInterpreter(graph, hook)
    outs, stats = interp.eval(graph.jaxpr, flat, ())
    return jax.tree.unflatten(graph.out_tree, outs), stats


def leaf_layout_stats(use: ParamUse, stats: jax.Array) -> jax.Array:
    """Moves the stacked scan axes of one use's stats (from :func:`interpret`) into place.

    Args:
      use: the use.
      stats: an array whose leading ``len(use.scan_axes)`` axes are the stacked scans and
        whose other axes are in :meth:`ParamUse.to_leaf_layout` layout.

    Returns:
      The array with one axis per leaf axis, in the leaf's order.
    """
    ndim = len(use.view.leaf_shape)
    rest = [a for a in range(ndim) if a not in use.scan_axes]
    order = list(use.scan_axes) + rest  # axis i of stats is leaf axis order[i]
    return jnp.transpose(stats, sorted(range(ndim), key=lambda i: order[i]))
