"""The shrunk function: the traced model evaluated on the small parameters."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.extend.core import Literal

from jaxprune._src import jaxpr as mg

_SHAPE_PARAMS = {"reshape": "new_sizes", "broadcast_in_dim": "shape", "iota": "shape"}


# ----------------------------------------------------------------------------- small fn


class ShrunkFunction:
    """``small_fn`` of :func:`shrink`: runs the traced model on the small parameters.

    Call it as ``small_fn(small_params, *args)`` (``args`` of the example shapes and dtypes);
    it can be jitted (it evaluates the traced jaxpr with the new sizes).

    Attributes:
      report: the :class:`ShrinkReport`.
      corrections: ``{equation path: array}``: input-independent constants added after a
        matmul whose removed input channels had a nonzero constant value and no bias to fold
        into (computed from the dense weights at :func:`shrink` time; they stay fixed if
        ``small_params`` are fine-tuned).
      shapes: the pytree of the small parameters' shapes.

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710
    """

    def __init__(
        self, graph, out_dims, new_size, report, corrections, small_shapes, in_tree, arg_avals
    ):
        self._graph = graph
        self.corrections = corrections
        self._out_dims = out_dims
        self._new_size = new_size
        self.report = report
        self._small_shapes = small_shapes
        self._in_tree = in_tree
        self._arg_avals = arg_avals

    @property
    def shapes(self):
        return jax.tree.unflatten(self._in_tree.children()[0], self._small_shapes)

    def __call__(self, small_params, *args):
        flat, tree = jax.tree.flatten((small_params, *args))
        if tree != self._in_tree:
            raise ValueError(
                f"small_fn: (small_params, *args) has structure {tree}, shrink traced "
                f"{self._in_tree}"
            )
        n = len(self._small_shapes)
        names = self._graph.param_names
        for i, (x, s) in enumerate(zip(flat[:n], self._small_shapes, strict=True)):
            if tuple(np.shape(x)) != tuple(s):
                raise ValueError(
                    f"small_fn: small_params leaf {names[i]!r} has shape {np.shape(x)}, "
                    f"expected {tuple(s)}"
                )
        for i, (x, a) in enumerate(zip(flat[n:], self._arg_avals, strict=True)):
            if tuple(np.shape(x)) != tuple(a.shape):
                raise ValueError(
                    f"small_fn: input leaf {i} has shape {np.shape(x)}; the model was traced "
                    f"with {tuple(a.shape)} (call shrink again with example inputs of this "
                    "shape)"
                )
        outs = self._eval(self._graph.jaxpr, flat, ())
        return jax.tree.unflatten(self._graph.out_tree, outs)

    def _shape(self, dims) -> tuple[int, ...]:
        return tuple(self._new_size(d) for d in dims)

    def _eval(self, closed, args, prefix):
        jaxpr = closed.jaxpr
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, closed.consts, strict=True):
            env[v] = c
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a

        def read(atom):
            return atom.val if isinstance(atom, Literal) else env[atom]

        for i, eqn in enumerate(jaxpr.eqns):
            path = (*prefix, i)
            ins = [read(a) for a in eqn.invars]
            outs = self._eqn(eqn, path, ins)
            for v, x in zip(eqn.outvars, outs, strict=True):
                env[v] = x
        return [read(a) for a in jaxpr.outvars]

    def _eqn(self, eqn, path, ins):
        body = mg.call_body(eqn)
        name, p = eqn.primitive.name, eqn.params
        if body is not None:
            return self._eval(body, ins, (*path, 0))
        if name == "scan":
            nc, nk = p["num_consts"], p["num_carry"]
            consts, init, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]

            def step(carry, x):
                outs = self._eval(p["jaxpr"], [*consts, *carry, *x], (*path, 0))
                return outs[:nk], outs[nk:]

            c, ys = jax.lax.scan(
                step, list(init), list(xs), length=p["length"], reverse=p["reverse"]
            )
            return [*c, *ys]
        if name == "cond":
            branches = [
                (lambda *ops, b=b: self._eval(p["branches"][b], list(ops), (*path, b)))
                for b in range(len(p["branches"]))
            ]
            return list(jax.lax.switch(ins[0], branches, *ins[1:]))
        if name == "while":
            cn, bn = p["cond_nconsts"], p["body_nconsts"]
            cconsts, bconsts, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
            c = jax.lax.while_loop(
                lambda c: self._eval(p["cond_jaxpr"], [*cconsts, *c], (*path, 0))[0],
                lambda c: self._eval(p["body_jaxpr"], [*bconsts, *c], (*path, 1)),
                list(init),
            )
            return list(c)
        out_dims = self._out_dims[path]
        params = dict(p)
        if name in _SHAPE_PARAMS:
            params[_SHAPE_PARAMS[name]] = self._shape(out_dims[0])
        outs = mg.bind_equation(eqn, ins, params)
        if path in self.corrections:
            outs[0] = outs[0] + self.corrections[path].astype(outs[0].dtype)
        for x, dims in zip(outs, out_dims, strict=True):
            if tuple(np.shape(x)) != self._shape(dims):  # pragma: no cover - a bug
                raise AssertionError(
                    f"shrink: {name} at {path} gave shape {np.shape(x)}, expected "
                    f"{self._shape(dims)}"
                )
        return outs
