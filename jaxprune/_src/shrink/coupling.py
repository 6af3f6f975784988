"""Shrink's pass 1, coupling: which axes of which values must keep one channel indexing.

Every axis of every value gets a dimension (:class:`~jaxprune._src.shrink.dims.Dims`); the
:class:`Coupler` visitor joins the dimensions that must keep the same channel indexing and
*blocks* (leaves whole) the groups it cannot follow (see :mod:`jaxprune._src.shrink`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxprune._src import jaxpr as mg
from jaxprune._src.shrink.dims import Dims, align, block_repeated

ELEMENTWISE = frozenset(
    [
        "abs",
        "acos",
        "acosh",
        "add",
        "and",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "clamp",
        "conj",
        "copy",
        "copy_p",
        "cos",
        "cosh",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "erfc",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "imag",
        "integer_pow",
        "is_finite",
        "le",
        "lgamma",
        "digamma",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "pow",
        "real",
        "reduce_precision",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "square",
        "stop_gradient",
        "sub",
        "tan",
        "tanh",
        "xor",
        "convert_element_type",
        "optimization_barrier",
        "sharding_constraint",
        "device_put",
    ]
)
"""Primitives that act element by element (operands of the output's shape, or broadcastable:
rank 0 or size 1 on an axis)."""

REDUCE = frozenset(
    {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or"}
    | {"reduce_xor", "argmax", "argmin"}
)
CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})
REDUCE_WINDOW = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min"})

# ----------------------------------------------------------------------------- pass 1


@dataclasses.dataclass(frozen=True)
class CouplingFact:
    """Coupling fact of a value: its dims, its id, and the parameter leaf it is a view of."""

    dims: tuple
    vid: Any = None
    src: int | None = None  # leaf index when the value is the leaf up to layout / broadcasts


CONST = object()
VIEW_PRIMITIVES = frozenset(
    {"reshape", "broadcast_in_dim", "convert_element_type", "transpose", "squeeze", "copy"}
)


class Coupler(mg.Visitor):
    def __init__(self, dims: Dims):
        self.d = dims
        self.in_dims: dict[mg.Path, list[tuple]] = {}
        self.out_dims: dict[mg.Path, list[tuple]] = {}
        self.consumers: dict[Any, set] = {}
        self.sites: dict[mg.Path, tuple] = {}  # path -> regions, for dot_general / conv
        self.in_srcs: dict[mg.Path, list] = {}  # path -> leaf (or None) of each operand
        self.leaf_uses: dict[int, set] = {}  # leaf -> the (path, operand)s consuming it

    def literal(self, value):
        return CouplingFact(())

    def constant(self, value):
        return CONST

    def join(self, facts):
        first = facts[0]
        for f in facts[1:]:
            for a, b in zip(first.dims, f.dims, strict=True):
                self.d.unify(a, b)
        if all(f == first for f in facts[1:]):
            return first
        vid = first.vid if isinstance(first.vid, tuple) and first.vid[:1] == ("join",) else None
        return CouplingFact(first.dims, vid or ("join", first.vid), None)

    def scan_slice(self, ctx, fact):
        self.d.block(fact.dims[0], "the axis is scanned over")
        return CouplingFact(fact.dims[1:], ("slice", fact.vid), None)

    def scan_stack(self, ctx, fact):
        n = ctx.eqn.params["length"]
        lead = self.d.new(n, (ctx.path, "stack", fact.dims), "stacked by a scan")
        return CouplingFact((lead, *fact.dims), ("stack", fact.vid), None)

    def equation(self, ctx, facts):
        eqn, path, name = ctx.eqn, ctx.path, ctx.eqn.primitive.name
        d = self.d
        ins = []
        for k, (f, v) in enumerate(zip(facts, eqn.invars, strict=True)):
            shape = tuple(v.aval.shape) if hasattr(v.aval, "shape") else ()
            if f is CONST or len(f.dims) != len(shape):
                reason = "a constant array of the function"
                dims = tuple(d.new(s, (path, "in", k, i), reason) for i, s in enumerate(shape))
                f = CouplingFact(dims)
            ins.append(f)
            if f.vid is not None:
                self.consumers.setdefault(f.vid, set()).add((path, k))
        dims_in = [f.dims for f in ins]
        self.in_dims[path] = dims_in
        self.in_srcs[path] = [f.src for f in ins]
        if not (name in VIEW_PRIMITIVES and len(ins) == 1):
            for k, f in enumerate(ins):
                if f.src is not None:
                    self.leaf_uses.setdefault(f.src, set()).add((path, k))
        outs = self._rule(ctx, name, dims_in)
        for o in outs:
            block_repeated(d, o, "the same channel axis appears twice in one value")
        self.out_dims[path] = [tuple(o) for o in outs]
        src = ins[0].src if name in VIEW_PRIMITIVES and len(ins) == 1 else None
        return [CouplingFact(tuple(o), (path, i), src) for i, o in enumerate(outs)]

    def _fresh(self, ctx, i, shape, reason="", skip=()):
        return [
            self.d.new(s, (ctx.path, "out", i, a), reason or None) if a not in skip else None
            for a, s in enumerate(shape)
        ]

    def _rule(self, ctx, name, dims_in) -> list[list]:
        eqn, p, d = ctx.eqn, ctx.eqn.params, self.d
        out_shapes = [tuple(v.aval.shape) if hasattr(v.aval, "shape") else () for v in eqn.outvars]
        if name in ELEMENTWISE and len(eqn.outvars) == 1:
            shape = out_shapes[0]
            out = []
            for a in range(len(shape)):
                cands = [x[a] for x in dims_in if len(x) == len(shape) and x[a] is not None]
                for c in cands[1:]:
                    d.unify(cands[0], c)
                out.append(cands[0] if cands else d.new(shape[a], (ctx.path, "out", 0, a)))
            return [out]
        if name == "transpose":
            return [[dims_in[0][i] for i in p["permutation"]]]
        if name == "broadcast_in_dim":
            (x, *_), shape = dims_in, out_shapes[0]
            in_shape = eqn.invars[0].aval.shape
            out = self._fresh(ctx, 0, shape)
            for j, o in enumerate(p["broadcast_dimensions"]):
                if in_shape[j] == shape[o]:
                    out[o] = x[j]
            return [out]
        if name == "squeeze" or (name == "reshape" and p.get("dimensions") is None):
            return [self._reshape(ctx, dims_in[0], eqn.invars[0].aval.shape, out_shapes[0])]
        if name == "dot_general":
            return [self._dot(ctx, *dims_in)]
        if name == "conv_general_dilated":
            return [self._conv(ctx, *dims_in)]
        if name in REDUCE:
            axes = p["axes"]
            for a in axes:
                d.block(dims_in[0][a], f"reduced by {name} (a norm, a softmax, a mean, ...)")
            return [[x for a, x in enumerate(dims_in[0]) if a not in axes]]
        if name in CUMULATIVE:
            d.block(dims_in[0][p["axis"]], f"{name} along the axis")
            return [list(dims_in[0])]
        if name in REDUCE_WINDOW:
            x, shape = dims_in[0], out_shapes[0]
            out = []
            for a in range(len(shape)):
                plain = (
                    p["window_dimensions"][a] == 1
                    and p["window_strides"][a] == 1
                    and tuple(p["padding"][a]) == (0, 0)
                    and p["base_dilation"][a] == 1
                    and p["window_dilation"][a] == 1
                )
                if plain:
                    out.append(x[a])
                else:
                    d.block(x[a], f"{name} window along the axis")
                    out.append(d.new(shape[a], (ctx.path, "out", 0, a), "pooled axis"))
            return [out]
        if name == "iota":
            out = self._fresh(ctx, 0, out_shapes[0])
            d.block(out[p["dimension"]], "an iota (positions) along the axis")
            return [out]
        if name in ("slice", "pad", "rev"):
            x, shape = dims_in[0], out_shapes[0]
            in_shape = eqn.invars[0].aval.shape
            out = []
            for a in range(len(shape)):
                if name == "slice":
                    st = p["strides"][a] if p["strides"] else 1
                    plain = (p["start_indices"][a], p["limit_indices"][a], st) == (
                        0,
                        in_shape[a],
                        1,
                    )
                elif name == "pad":
                    plain = tuple(p["padding_config"][a]) == (0, 0, 0)
                else:
                    plain = a not in p["dimensions"]
                if plain:
                    out.append(x[a])
                else:
                    d.block(x[a], f"{name} along the axis")
                    out.append(d.new(shape[a], (ctx.path, "out", 0, a), f"{name} along it"))
            return [out]
        if name == "split":
            return self._split(ctx, dims_in[0])
        if name == "concatenate":
            return [self._concatenate(ctx, dims_in, out_shapes[0])]
        if name == "dynamic_slice":
            x, shape = dims_in[0], out_shapes[0]
            in_shape = eqn.invars[0].aval.shape
            out = []
            for a in range(len(shape)):
                if shape[a] == in_shape[a]:
                    out.append(x[a])
                else:
                    d.block(x[a], "dynamic_slice along the axis")
                    out.append(d.new(shape[a], (ctx.path, "out", 0, a), "dynamic_slice"))
            return [out]
        if name == "dynamic_update_slice":
            x, u = dims_in[0], dims_in[1]
            in_shape, u_shape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            for a in range(len(in_shape)):
                if u_shape[a] == in_shape[a]:
                    d.unify(x[a], u[a])
                else:
                    d.block(x[a], "dynamic_update_slice along the axis")
                    d.block(u[a], "dynamic_update_slice along the axis")
            return [list(x)]
        if name == "gather":
            return [self._gather(ctx, dims_in, out_shapes[0])]
        # Anything else: every axis it touches is left whole.
        reason = f"used by {name}, which shrink does not follow"
        for x in dims_in:
            for dd in x:
                d.block(dd, reason)
        return [self._fresh(ctx, i, s, reason) for i, s in enumerate(out_shapes)]

    def _pieces(self, ctx, dim, n: int, size: int, reason: str):
        """``dim`` (an axis of ``n * size`` elements) as ``n`` row-major pieces of ``size``:
        the dimension of one piece (the piece index itself is blocked), or None when the
        axis is already merged in another way (then it is blocked)."""
        d = self.d
        atoms = d.atoms(dim)
        runs = align([d.size[a] for a in atoms], [n, size]) if atoms else None
        if runs is not None:
            (p0, p1), (w0, w1) = runs
            for a in atoms[p0:p1]:
                d.block(a, reason)
            within = tuple(atoms[w0:w1])
            return within[0] if len(within) == 1 else within
        if len(atoms) == 1:
            piece = d.new(n, (ctx.path, "piece"), reason)
            within = d.new(size, (ctx.path, "within"))
            d.expansion[atoms[0]] = tuple(x for x in (piece, within) if x is not None)
            return within
        d.block(dim, reason)
        return None

    def _split(self, ctx, x) -> list[list]:
        p, d = ctx.eqn.params, self.d
        axis, sizes = p["axis"], [int(s) for s in p["sizes"]]
        outs = [list(x) for _ in sizes]
        if len(sizes) == 1:
            return outs
        reason = "split into pieces of different sizes along the axis"
        if len(set(sizes)) == 1 and x[axis] is not None:
            within = self._pieces(ctx, x[axis], len(sizes), sizes[0], "split along the axis")
            if within is not None or sizes[0] == 1:
                for o in outs:
                    o[axis] = within
                return outs
            reason = "split along an axis merged in another way"
        d.block(x[axis], reason)
        for i, (o, s) in enumerate(zip(outs, sizes, strict=True)):
            o[axis] = d.new(s, (ctx.path, "out", i, axis), reason)
        return outs

    def _concatenate(self, ctx, dims_in, shape) -> list:
        p, d = ctx.eqn.params, self.d
        cat = p["dimension"]
        out: list = []
        for a in range(len(shape)):
            if a != cat:
                for x in dims_in[1:]:
                    d.unify(dims_in[0][a], x[a])
                out.append(dims_in[0][a])
        sizes = [v.aval.shape[cat] for v in ctx.eqn.invars]
        if len(sizes) == 1:
            out.insert(cat, dims_in[0][cat])
            return out
        if len(set(sizes)) == 1:
            # Equal pieces map back: the axis is (piece, within), the pieces share `within`.
            for x in dims_in[1:]:
                d.unify(dims_in[0][cat], x[cat])
            piece = d.new(len(sizes), (ctx.path, "piece"), "concatenated pieces along the axis")
            within = dims_in[0][cat]
            merged = tuple(x for x in (piece, within) if x is not None)
            out.insert(cat, merged[0] if len(merged) == 1 else merged)
            return out
        for x in dims_in:
            d.block(x[cat], "concatenated with pieces of other sizes along the axis")
        out.insert(cat, d.new(shape[cat], (ctx.path, "out", 0, cat), "concatenated axis"))
        return out

    def _gather(self, ctx, dims_in, shape) -> list:
        """Operand axes taken whole (an embedding's feature axis) pass through; the output's
        batch axes are the indices' axes; every other operand axis is left whole."""
        p, d = ctx.eqn.params, self.d
        x, idx = dims_in[0], dims_in[1]
        dn = p["dimension_numbers"]
        in_shape = ctx.eqn.invars[0].aval.shape
        batching = tuple(getattr(dn, "operand_batching_dims", ()))
        offset_src = [
            a
            for a in range(len(in_shape))
            if a not in dn.collapsed_slice_dims and a not in batching
        ]
        out: list = [None] * len(shape)
        for o, a in zip(dn.offset_dims, offset_src, strict=True):
            if p["slice_sizes"][a] == in_shape[a] and a not in dn.start_index_map:
                out[o] = x[a]
            else:
                d.block(x[a], "gathered along the axis")
                out[o] = d.new(shape[o], (ctx.path, "out", 0, o), "gathered along the axis")
        for a in range(len(in_shape)):
            if a not in offset_src:
                d.block(x[a], "gathered along the axis")
        batch_out = [o for o in range(len(shape)) if o not in dn.offset_dims]
        paired = len(batch_out) == len(idx) - 1
        for k, o in enumerate(batch_out):
            out[o] = idx[k] if paired else None
            if out[o] is None:
                out[o] = d.new(shape[o], (ctx.path, "out", 0, o), "gathered along the axis")
        return out

    def _reshape(self, ctx, x, in_shape, out_shape) -> list:
        d = self.d
        out: list = [None] * len(out_shape)
        for go, gn in mg.reshape_groups(in_shape, out_shape):
            factors = [a for o in go for a in d.atoms(x[o])]
            runs = align([d.size[a] for a in factors], [out_shape[n] for n in gn])
            if runs is not None:
                for n, (s0, s1) in zip(gn, runs, strict=True):
                    run = tuple(factors[s0:s1])
                    out[n] = run[0] if len(run) == 1 else run
            elif len(factors) == 1:
                parts = tuple(d.new(out_shape[n], (ctx.path, "out", 0, n)) for n in gn)
                d.expansion[factors[0]] = parts
                for n, part in zip(gn, parts, strict=True):
                    out[n] = part
            else:
                for a in factors:
                    d.blocked.setdefault(a, "a reshape regroups the axis")
                for n in gn:
                    out[n] = d.new(out_shape[n], (ctx.path, "out", 0, n), "regrouped by reshape")
        return out

    def _dot(self, ctx, x, y) -> list:
        (lc, rc), (lb, rb) = ctx.eqn.params["dimension_numbers"]
        for a, b in zip(lc, rc, strict=True):
            self.d.unify(x[a], y[b])
        for a, b in zip(lb, rb, strict=True):
            self.d.unify(x[a], y[b])
        self.sites[ctx.path] = ctx.regions
        return (
            [x[a] for a in lb]
            + [x[a] for a in range(len(x)) if a not in lc and a not in lb]
            + [y[b] for b in range(len(y)) if b not in rc and b not in rb]
        )

    def _conv(self, ctx, x, w) -> list:
        p, d = ctx.eqn.params, self.d
        dn = p["dimension_numbers"]
        shape = ctx.eqn.outvars[0].aval.shape
        out: list = [None] * len(shape)
        out[dn.out_spec[0]] = x[dn.lhs_spec[0]]
        for a in dn.lhs_spec[2:]:
            d.block(x[a], "a convolution's spatial axis")
        for a in dn.rhs_spec[2:]:
            d.block(w[a], "a convolution's window axis")
        for a in dn.out_spec[2:]:
            out[a] = d.new(shape[a], (ctx.path, "out", 0, a), "a convolution's spatial axis")
        if p["feature_group_count"] == 1 and p["batch_group_count"] == 1:
            d.unify(x[dn.lhs_spec[1]], w[dn.rhs_spec[1]])
            out[dn.out_spec[1]] = w[dn.rhs_spec[0]]
            self.sites[ctx.path] = ctx.regions
        else:
            why = "a grouped convolution"
            for dd in (x[dn.lhs_spec[1]], w[dn.rhs_spec[1]], w[dn.rhs_spec[0]], x[dn.lhs_spec[0]]):
                d.block(dd, why)
            out[dn.out_spec[1]] = d.new(shape[dn.out_spec[1]], (ctx.path, "out", 0, -1), why)
            out[dn.out_spec[0]] = x[dn.lhs_spec[0]]
        return out
