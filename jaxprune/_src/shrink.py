"""Shrinking channel-pruned models: pruned channels taken out of the arrays.

``shrink(fn, params, *example_args, masks=None)`` traces ``fn(params, *example_args)`` to a
jaxpr (:func:`jaxprune._src.model_graph.trace`) and runs three passes over it with the generic
walker of ``model_graph`` (:func:`~jaxprune._src.model_graph.walk`, which inlines calls and
enters ``scan`` / ``cond`` / ``while``):

1. **Coupling** (:class:`_Coupler`): every axis of every value gets a *dimension*; a union-find
   joins the dimensions that must keep the same channel indexing: the operands of elementwise
   ops, a ``dot_general``'s contracting / batch pairs and its free dims with the output's, a
   convolution's input features with the kernel's input features and its output features with
   the kernel's, reshapes (a merge ``(h, w, c) -> h*w*c`` makes a *composite* dimension whose
   factors stay separate groups, so a Dense after a flatten is sliced by blocks), transposes and
   broadcasts. A group (a union-find class) is *blocked* -- left whole -- when it reaches an
   input or an output of ``fn``, a reduction over it (LayerNorm / RMSNorm statistics, softmax,
   ``argmax``, ...), an ``iota`` along it, a gather, a slice / pad / concatenate along it, a
   grouped convolution, a reshape that regroups it, a constant array of ``fn``, a scanned-over
   axis or any primitive this module does not know. BatchNorm with running statistics is
   elementwise per channel and is sliced.
2. **Constants** (:class:`_Constants`): for every candidate group and channel ``j``, which
   values are a known constant on their slice ``j`` (for all inputs): a zero kernel slice makes
   the matmul's output slice 0, adding a bias makes it ``b[j]``, elementwise ops (activations,
   BatchNorm) are evaluated on those constants, ``0 * anything`` is 0.
3. **Decision**: at every contraction of a group (a ``dot_general`` contracting pair, a
   convolution's input features), channel ``j`` contributes nothing when one side's slice is
   known 0. When the activation side is a known nonzero constant ``c_j`` (a pruned channel with
   a bias: ``act(b_j)``) and the other side is a parameter used as it is, the contribution
   ``c_j * W[j, ...]`` does not depend on the input, and is added back exactly: *folded* into
   the next layer's bias when the matmul's only consumer is ``+ bias`` (a ``dot_general``, or
   a convolution without padding or input dilation); otherwise (no bias, a zero-padded
   convolution, whose constant contribution varies at the borders) ``small_fn`` adds it as a
   constant after that matmul (:attr:`ShrunkFunction.corrections`, computed once from the dense
   weights with the example input shapes), unless ``constants=False``, which keeps such
   channels. In a loop body, or when the other side is not a parameter used as it is, the
   channel is kept. A channel is removed iff it vanishes (or is added back) at every
   contraction of its group; at least one channel of a group is always kept.

``small_fn`` re-evaluates the traced jaxpr on the small arrays (:class:`ShrunkFunction`): each
equation is bound with its shape parameters (``reshape`` / ``broadcast_in_dim`` / ``iota``)
recomputed from the new sizes of its dimensions, and every result's shape is checked. It works
under ``jax.jit`` for inputs of the example shapes (the jaxpr is specialised to them; call
``shrink`` again for other shapes). Calls are inlined (forward semantics: custom derivative
rules are not kept), loops and conditionals are re-expressed with ``lax.scan`` / ``lax.switch``
/ ``lax.while_loop``. ``shrink`` checks ``small_fn`` against the masked dense model on the
example inputs before returning (``check=True``).

References:
  Li et al., "Pruning Filters for Efficient ConvNets", 2017, https://arxiv.org/abs/1608.08710;
  Fang et al., "DepGraph: Towards Any Structural Pruning", 2023,
  https://arxiv.org/abs/2301.12900
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from jaxprune._src import model_graph as mg
from jaxprune._src import tree as tree_lib

Dim = Any  # None (a size-1 axis), an int (an atom), or a tuple of atoms (a merged axis)

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

_REDUCE = frozenset(
    {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or"}
    | {"reduce_xor", "argmax", "argmin"}
)
_CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})
_REDUCE_WINDOW = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min"})
_SHAPE_PARAMS = {"reshape": "new_sizes", "broadcast_in_dim": "shape", "iota": "shape"}


# ----------------------------------------------------------------------------- dimensions


class _Dims:
    """Union-find over atoms (axes that keep one channel indexing), with merged axes."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.expansion: dict[int, tuple[int, ...]] = {}  # root -> factor atoms (row-major)
        self.blocked: dict[int, str] = {}  # root -> why the group is left whole
        self.memo: dict[Any, Dim] = {}

    def new(self, size: int, key: Any = None, blocked: str | None = None) -> Dim:
        if size == 1:
            return None
        if key is not None and key in self.memo:
            return self.memo[key]
        a = len(self.parent)
        self.parent.append(a)
        self.size.append(int(size))
        if blocked:
            self.blocked[a] = blocked
        if key is not None:
            self.memo[key] = a
        return a

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def atoms(self, d: Dim) -> list[int]:
        """The atomic factors of a dimension (roots), outermost first."""
        if d is None:
            return []
        if isinstance(d, tuple):
            return [a for x in d for a in self.atoms(x)]
        r = self.find(d)
        e = self.expansion.get(r)
        return [r] if e is None else self.atoms(e)

    def block(self, d: Dim, reason: str) -> None:
        if d is None:
            return
        roots = [self.find(x) for x in (d if isinstance(d, tuple) else (d,))]
        for r in roots + self.atoms(d):
            self.blocked.setdefault(r, reason)

    def unify(self, d1: Dim, d2: Dim) -> None:
        if d1 is None or d2 is None:
            return
        f1, f2 = self.atoms(d1), self.atoms(d2)
        if len(f1) == 1 and len(f2) == 1:
            self._union(f1[0], f2[0])
            return
        s1, s2 = [self.size[a] for a in f1], [self.size[a] for a in f2]
        if s1 == s2:
            for a, b in zip(f1, f2, strict=True):
                self._union(a, b)
            return
        for f, other in ((f1, f2), (f2, f1)):
            if len(f) == 1 and self.size[f[0]] == math.prod(self.size[a] for a in other):
                self.expansion[f[0]] = tuple(other)  # an axis seen merged elsewhere
                return
        for a in f1 + f2:
            self.blocked.setdefault(a, "a reshape regroups the axis differently")

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # pragma: no cover - a coupling rule is wrong
            self.blocked.setdefault(ra, "axes of different sizes met")
            self.blocked.setdefault(rb, "axes of different sizes met")
            return
        self.parent[rb] = ra
        if rb in self.blocked:
            self.blocked.setdefault(ra, self.blocked.pop(rb))
        ea, eb = self.expansion.pop(ra, None), self.expansion.pop(rb, None)
        if ea is not None:
            self.expansion[ra] = ea
            if eb is not None:
                self.unify(ea, eb)
        elif eb is not None:
            self.expansion[ra] = eb

    def finalize(self) -> None:
        """Propagates blocks from merged axes to their factors (to a fixpoint)."""
        changed = True
        while changed:
            changed = False
            for r, e in list(self.expansion.items()):
                r = self.find(r)
                if r in self.blocked:
                    for a in self.atoms(e):
                        if a not in self.blocked:
                            self.blocked[a] = self.blocked[r]
                            changed = True


# ----------------------------------------------------------------------------- pass 1


@dataclasses.dataclass(frozen=True)
class _F:
    """Coupling fact of a value: its dims, its id, and the parameter leaf it is a view of."""

    dims: tuple
    vid: Any = None
    src: int | None = None  # leaf index when the value is the leaf up to layout / broadcasts


_CONST = object()
_VIEW_PRIMITIVES = frozenset(
    {"reshape", "broadcast_in_dim", "convert_element_type", "transpose", "squeeze", "copy"}
)


class _Coupler(mg.Visitor):
    def __init__(self, dims: _Dims):
        self.d = dims
        self.in_dims: dict[mg.Path, list[tuple]] = {}
        self.out_dims: dict[mg.Path, list[tuple]] = {}
        self.consumers: dict[Any, set] = {}
        self.sites: dict[mg.Path, tuple] = {}  # path -> regions, for dot_general / conv
        self.in_srcs: dict[mg.Path, list] = {}  # path -> leaf (or None) of each operand
        self.leaf_uses: dict[int, set] = {}  # leaf -> the (path, operand)s consuming it

    def literal(self, value):
        return _F(())

    def constant(self, value):
        return _CONST

    def join(self, facts):
        first = facts[0]
        for f in facts[1:]:
            for a, b in zip(first.dims, f.dims, strict=True):
                self.d.unify(a, b)
        if all(f == first for f in facts[1:]):
            return first
        vid = first.vid if isinstance(first.vid, tuple) and first.vid[:1] == ("join",) else None
        return _F(first.dims, vid or ("join", first.vid), None)

    def scan_slice(self, ctx, fact):
        self.d.block(fact.dims[0], "the axis is scanned over")
        return _F(fact.dims[1:], ("slice", fact.vid), None)

    def scan_stack(self, ctx, fact):
        n = ctx.eqn.params["length"]
        lead = self.d.new(n, (ctx.path, "stack", fact.dims), "stacked by a scan")
        return _F((lead, *fact.dims), ("stack", fact.vid), None)

    def equation(self, ctx, facts):
        eqn, path, name = ctx.eqn, ctx.path, ctx.eqn.primitive.name
        d = self.d
        ins = []
        for k, (f, v) in enumerate(zip(facts, eqn.invars, strict=True)):
            shape = tuple(v.aval.shape) if hasattr(v.aval, "shape") else ()
            if f is _CONST or len(f.dims) != len(shape):
                reason = "a constant array of the function"
                dims = tuple(d.new(s, (path, "in", k, i), reason) for i, s in enumerate(shape))
                f = _F(dims)
            ins.append(f)
            if f.vid is not None:
                self.consumers.setdefault(f.vid, set()).add((path, k))
        dims_in = [f.dims for f in ins]
        self.in_dims[path] = dims_in
        self.in_srcs[path] = [f.src for f in ins]
        if not (name in _VIEW_PRIMITIVES and len(ins) == 1):
            for k, f in enumerate(ins):
                if f.src is not None:
                    self.leaf_uses.setdefault(f.src, set()).add((path, k))
        outs = self._rule(ctx, name, dims_in)
        for o in outs:
            _block_repeated(d, o, "the same channel axis appears twice in one value")
        self.out_dims[path] = [tuple(o) for o in outs]
        src = ins[0].src if name in _VIEW_PRIMITIVES and len(ins) == 1 else None
        return [_F(tuple(o), (path, i), src) for i, o in enumerate(outs)]

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
        if name in _REDUCE:
            axes = p["axes"]
            for a in axes:
                d.block(dims_in[0][a], f"reduced by {name} (a norm, a softmax, a mean, ...)")
            return [[x for a, x in enumerate(dims_in[0]) if a not in axes]]
        if name in _CUMULATIVE:
            d.block(dims_in[0][p["axis"]], f"{name} along the axis")
            return [list(dims_in[0])]
        if name in _REDUCE_WINDOW:
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
        if name == "concatenate":
            shape, cat = out_shapes[0], p["dimension"]
            out = []
            for a in range(len(shape)):
                if a == cat:
                    for x in dims_in:
                        d.block(x[a], "concatenated along the axis")
                    out.append(d.new(shape[a], (ctx.path, "out", 0, a), "concatenated axis"))
                else:
                    for x in dims_in[1:]:
                        d.unify(dims_in[0][a], x[a])
                    out.append(dims_in[0][a])
            return [out]
        # Anything else: every axis it touches is left whole.
        reason = f"used by {name}, which shrink does not follow"
        for x in dims_in:
            for dd in x:
                d.block(dd, reason)
        return [self._fresh(ctx, i, s, reason) for i, s in enumerate(out_shapes)]

    def _reshape(self, ctx, x, in_shape, out_shape) -> list:
        d = self.d
        out: list = [None] * len(out_shape)
        for go, gn in mg.reshape_groups(in_shape, out_shape):
            factors = [a for o in go for a in d.atoms(x[o])]
            runs = _align([d.size[a] for a in factors], [out_shape[n] for n in gn])
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


def _block_repeated(dims: _Dims, dim_list, reason: str) -> None:
    """Blocks every group that occurs more than once among the dimensions of one array."""
    seen: dict[int, int] = {}
    for dd in dim_list:
        for a in dims.atoms(dd):
            seen[a] = seen.get(a, 0) + 1
    for a, c in seen.items():
        if c > 1:
            dims.block(a, reason)


def _align(sizes: list[int], targets: list[int]) -> list[tuple[int, int]] | None:
    """Splits ``sizes`` into consecutive runs whose products are ``targets``, or None."""
    runs, i = [], 0
    for t in targets:
        start, prod = i, 1
        while prod < t and i < len(sizes):
            prod *= sizes[i]
            i += 1
        if prod != t or i == start:
            return None
        runs.append((start, i))
    return runs if i == len(sizes) else None


# ----------------------------------------------------------------------------- pass 2


@dataclasses.dataclass(frozen=True)
class _Scalar:
    value: Any


@dataclasses.dataclass(frozen=True)
class _C:
    """Per candidate group root: a tuple of per-channel constants (None: unknown)."""

    entries: tuple = ()

    def get(self, g):
        for r, v in self.entries:
            if r == g:
                return v
        return None


_EMPTY = _C()


def _vec(fact, g, n):
    if isinstance(fact, _Scalar):
        return (fact.value,) * n
    v = fact.get(g)
    return v if v is not None else (None,) * n


class _Constants(mg.Visitor):
    """Which channel slices of which values are known constants (for all inputs)."""

    def __init__(self, dims: _Dims, coupler: _Coupler, candidates: set[int]):
        self.d, self.c, self.cand = dims, coupler, candidates
        self.site_facts: dict[mg.Path, list] = {}

    def literal(self, value):
        if np.ndim(value) == 0 and isinstance(np.asarray(value).item(), int | float | bool):
            return _Scalar(np.asarray(value).item())
        return _EMPTY

    def constant(self, value):
        return self.literal(value)

    def join(self, facts):
        first = facts[0]
        if all(f == first for f in facts[1:]):
            return first
        if any(isinstance(f, _Scalar) for f in facts):
            return _EMPTY
        entries = []
        for g, v in first.entries:
            others = [f.get(g) for f in facts[1:]]
            if all(o is not None for o in others):
                vals = tuple(x if all(o[j] == x for o in others) else None for j, x in enumerate(v))
                entries.append((g, vals))
        return _C(tuple(entries))

    def _groups(self, dims) -> list[int]:
        return [a for dd in dims for a in self.d.atoms(dd) if a in self.cand]

    def equation(self, ctx, facts):
        eqn, path, name = ctx.eqn, ctx.path, ctx.eqn.primitive.name
        out_dims = self.c.out_dims[path]
        in_dims = self.c.in_dims[path]
        n_out = len(eqn.outvars)
        facts = [f if isinstance(f, _C | _Scalar) else _EMPTY for f in facts]
        if name in ("dot_general", "conv_general_dilated"):
            self.site_facts[path] = facts[:2]
        if name in ELEMENTWISE and n_out == 1:
            return [self._elementwise(eqn, facts, in_dims, out_dims[0])]
        if name in _VIEW_PRIMITIVES | {"slice", "rev", "reduce_max", "reduce_min"} | {
            "reduce_window_max",
            "reduce_window_min",
        }:
            f = facts[0]
            if isinstance(f, _Scalar):
                return [f]
            keep = set(self._groups(out_dims[0]))
            return [_C(tuple((g, v) for g, v in f.entries if g in keep))]
        if name in ("reduce_sum", "reduce_window_sum"):
            f = facts[0]
            keep = set(self._groups(out_dims[0]))
            if isinstance(f, _Scalar):
                return [_EMPTY]
            zero = tuple((g, tuple(0 if x == 0 else None for x in v)) for g, v in f.entries)
            return [_C(tuple((g, v) for g, v in zero if g in keep))]
        if name == "dot_general":
            return [self._dot(eqn, facts, in_dims, out_dims[0])]
        if name == "conv_general_dilated":
            dn = eqn.params["dimension_numbers"]
            w = facts[1]
            entries = []
            if isinstance(w, _C):
                for g in self._groups([in_dims[1][dn.rhs_spec[0]]]):
                    v = w.get(g)
                    if v is not None:
                        entries.append((g, tuple(0 if x == 0 else None for x in v)))
            return [_C(tuple(entries))]
        return [_EMPTY] * n_out

    def _dot(self, eqn, facts, in_dims, out_dims):
        (lc, rc), (_lb, _rb) = eqn.params["dimension_numbers"]
        entries = []
        for g in self._groups(out_dims):
            vals = []
            for f, dims, contracted in ((facts[0], in_dims[0], lc), (facts[1], in_dims[1], rc)):
                holds = any(
                    g in self.d.atoms(dd) for a, dd in enumerate(dims) if a not in contracted
                )
                if holds and isinstance(f, _C) and f.get(g) is not None:
                    vals.append(f.get(g))
            if vals:
                n = len(vals[0])
                entries.append(
                    (g, tuple(0 if any(v[j] == 0 for v in vals) else None for j in range(n)))
                )
        return _C(tuple(entries))

    def _elementwise(self, eqn, facts, in_dims, out_dims):
        groups = self._groups(out_dims)
        if not groups:
            if all(isinstance(f, _Scalar) for f in facts):
                try:
                    (out,) = _bind_vec(eqn, [np.asarray(f.value) for f in facts])
                    return _Scalar(np.asarray(out).item())
                except Exception:
                    return _EMPTY
            return _EMPTY
        if eqn.primitive.name == "stop_gradient" or eqn.primitive.name in mg.IDENTITY_PRIMITIVES:
            f = facts[0]
            return (
                f
                if isinstance(f, _Scalar)
                else _C(tuple((g, v) for g, v in f.entries if g in groups))
            )
        entries = []
        for g in groups:
            n = self.d.size[g]
            vecs = []
            for f, dims in zip(facts, in_dims, strict=True):
                if isinstance(f, _Scalar) or g in [a for dd in dims for a in self.d.atoms(dd)]:
                    vecs.append(_vec(f, g, n))
                else:
                    vecs.append((None,) * n)  # broadcast along the channel: not per-channel
            vals = self._evaluate(eqn, vecs, n)
            if any(v is not None for v in vals):
                entries.append((g, vals))
        return _C(tuple(entries))

    def _evaluate(self, eqn, vecs, n):
        name = eqn.primitive.name
        known = np.array([all(v[j] is not None for v in vecs) for j in range(n)])
        out: list = [None] * n
        if known.any():
            args = []
            size = max(8, 1 << (n - 1).bit_length())  # a few shapes: compiled ops are reused
            for v, var in zip(vecs, eqn.invars, strict=True):
                arr = np.zeros(size, var.aval.dtype)
                arr[:n] = [0 if x is None else x for x in v]
                args.append(arr)
            try:
                (res,) = _bind_vec(eqn, args)
                res = np.asarray(res)
                for j in np.flatnonzero(known).tolist():
                    x = res[j].item()
                    if not (isinstance(x, float) and math.isnan(x)):
                        out[j] = x
            except Exception:
                pass
        if name == "mul":
            for j in range(n):
                if any(v[j] is not None and v[j] == 0 for v in vecs):
                    out[j] = 0
        if name == "select_n":
            pred, cases = vecs[0], vecs[1:]
            for j in range(n):
                if pred[j] is not None and cases[int(pred[j])][j] is not None:
                    out[j] = cases[int(pred[j])][j]
        return tuple(out)


def _bind_vec(eqn, args):
    with jax.ensure_compile_time_eval():
        return mg.bind_equation(eqn, [jnp.asarray(a) for a in args])


def _slice_constants(x: np.ndarray, axis: int, factor_sizes, pos: int) -> tuple:
    """Per index of factor ``pos`` of ``axis``: the slice's common value, or None."""
    shape = list(x.shape)
    x = np.reshape(x, shape[:axis] + list(factor_sizes) + shape[axis + 1 :])
    x = np.moveaxis(x, axis + pos, 0)
    x = np.reshape(x, (x.shape[0], -1))
    if x.shape[1] == 0:
        return (None,) * x.shape[0]
    lo, hi = x.min(axis=1), x.max(axis=1)
    return tuple(
        lo[j].item() if lo[j] == hi[j] and np.isfinite(lo[j]) else None for j in range(len(lo))
    )


# ----------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class ShrinkReport:
    """What :func:`shrink` removed, and what it left whole and why.

    Attributes:
      arrays: ``{path: {"axis": a, "kept": n, "removed": m}}`` for every parameter that got
        smaller ("/"-joined paths as :func:`jaxprune.path_name`). When several axes of one
        array shrink (an attention kernel's heads and head dims), ``axis``, ``kept`` and
        ``removed`` are tuples, one entry per axis.
      whole: groups left whole although a member has an all-zero slice: dicts with
        ``members`` (``"path:axis"`` strings), ``zero`` (how many channels) and ``reason``.
      kept: channels with an all-zero slice in a member that were kept: dicts with
        ``members``, ``channels`` (indices) and ``reason``.
      folded: removed channels whose activation is a nonzero constant (``act(b_j)``): their
        contribution through the next matmul is added back exactly: dicts with ``weight``
        (that matmul's parameter), ``channels`` (how many) and ``bias`` (the bias leaf it was
        folded into, or None: added by ``small_fn`` as a constant, see
        :attr:`ShrunkFunction.corrections`).
      params_before, params_after: total parameter counts (elements).
    """

    arrays: dict
    whole: tuple = ()
    kept: tuple = ()
    folded: tuple = ()
    params_before: int = 0
    params_after: int = 0


def format_report(report: ShrinkReport) -> str:
    """A readable table of a :class:`ShrinkReport`.

    Args:
      report: ``small_fn.report`` from :func:`shrink`.

    Returns:
      One row per shrunk array axis, then the groups left whole and the kept channels.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w1": jnp.array([[1., 0., 2.]]), "w2": jnp.ones((3, 1))}
      >>> fn = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> small, small_fn = jaxprune.shrink(fn, params, jnp.ones((1, 1)))
      >>> print(jaxprune.format_report(small_fn.report))
      array  axis  kept  removed
      w1        1     2        1
      w2        0     2        1
      parameters: 6 -> 4 (0.667x)

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710
    """
    rows = [("array", "axis", "kept", "removed")]
    for path, r in report.arrays.items():
        axes = r["axis"] if isinstance(r["axis"], tuple) else (r["axis"],)
        kept = r["kept"] if isinstance(r["kept"], tuple) else (r["kept"],)
        rem = r["removed"] if isinstance(r["removed"], tuple) else (r["removed"],)
        for a, k, m in zip(axes, kept, rem, strict=True):
            rows.append((path, str(a), str(k), str(m)))
    w0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[i]) for r in rows) for i in range(1, 4)]
    lines = [
        f"{r[0]:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:], widths, strict=True))
        for r in rows
    ]
    lines[0] = lines[0].rstrip()
    before, after = report.params_before, report.params_after
    ratio = after / before if before else 1.0
    lines.append(f"parameters: {before} -> {after} ({ratio:.3f}x)")
    for g in report.whole:
        lines.append(
            f"left whole ({g['zero']} zero channels): {', '.join(g['members'])}: {g['reason']}"
        )
    for g in report.kept:
        lines.append(
            f"kept {len(g['channels'])} zero channels of {', '.join(g['members'])}: {g['reason']}"
        )
    for f in report.folded:
        into = f["bias"] or "a constant of small_fn"
        lines.append(f"folded {f['channels']} constant channels through {f['weight']} into {into}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- small fn


def _bind(eqn, ins, params):
    return mg.bind_equation(eqn, ins, params)


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
        outs = _bind(eqn, ins, params)
        if path in self.corrections:
            outs[0] = outs[0] + self.corrections[path].astype(outs[0].dtype)
        for x, dims in zip(outs, out_dims, strict=True):
            if tuple(np.shape(x)) != self._shape(dims):  # pragma: no cover - a bug
                raise AssertionError(
                    f"shrink: {name} at {path} gave shape {np.shape(x)}, expected "
                    f"{self._shape(dims)}"
                )
        return outs


# ----------------------------------------------------------------------------- shrink


def _masked(params, masks):
    if masks is None:
        return params
    plain = tree_lib.unbox(params)
    try:
        masked = jax.tree.map(
            lambda w, m: w if m is None else jnp.asarray(np.where(m, w, np.zeros((), w.dtype))),
            plain,
            tree_lib.unbox(masks),
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"shrink: masks must have the structure of params (None for unmasked leaves): {e}"
        ) from None
    return jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(masked))


def shrink(
    fn: Callable,
    params: Any,
    *example_args: Any,
    masks: Any = None,
    constants: bool = True,
    check: bool = True,
) -> tuple[Any, ShrunkFunction]:
    """Removes pruned channels from a model's arrays: smaller params and a function to run them.

    ``fn(params, *example_args)`` is traced once; the channels (output units, convolution
    filters, attention heads, MLP hidden units) whose weights are pruned are taken out of every
    array they index, when this provably leaves the model's function unchanged (see the module
    documentation for the rules): ``small_fn(small_params, *args)`` equals
    ``fn(params_masked, *args)`` to float tolerance, where ``params_masked`` is ``params`` with
    ``masks`` applied. A pruned channel whose bias is not zero emits the constant ``act(b_j)``;
    its contribution to the next matmul is folded into that layer's bias when the next matmul
    is followed by a bias add (a Dense layer, or an unpadded convolution), else the channel is
    kept. Groups whose coupling cannot be resolved (a reshape that mixes the channel axis, a
    gather, a norm over the channels, an input or output of ``fn``, ...) are left whole. All of
    it is in ``small_fn.report`` (:class:`ShrinkReport`, :func:`format_report`).

    Runs eagerly (it reads parameter values); ``params`` are not modified.

    Args:
      fn: the model function, called as ``fn(params, *args)``: a linen ``model.apply``, an nnx
        module through ``nnx.split`` / ``nnx.merge`` (or :func:`shrink_nnx`), or plain JAX.
      params: the parameter pytree (nnx ``Variable`` boxes allowed).
      *example_args: example inputs; ``small_fn`` takes inputs of these shapes and dtypes.
      masks: optional masks from :func:`jaxprune.prune` (bool arrays, True = keep, None for
        unmasked leaves); without masks, channels whose slices are exactly zero are pruned.
      check: compare ``small_fn`` with the masked dense model on ``example_args`` before
        returning (raises ``RuntimeError`` on a mismatch, which would be a bug).

    Returns:
      ``(small_params, small_fn)``: ``small_params`` has the structure of ``params`` (pruned
      and folded values, smaller arrays); ``small_fn`` is a :class:`ShrunkFunction`.

    Raises:
      ValueError: ``fn`` cannot be traced with the example inputs, or ``masks`` does not match
        ``params``.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w1": jnp.array([[1., 0., 2.]]), "b1": jnp.array([0., 3., 1.]),
      ...           "w2": jnp.array([[1.], [2.], [3.]])}
      >>> fn = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
      >>> small, small_fn = jaxprune.shrink(fn, params, jnp.ones((1, 1)))
      >>> small["w1"].shape, small["w2"].shape
      ((1, 2), (2, 1))
      >>> x = jnp.array([[0.5]])
      >>> bool(jnp.allclose(small_fn(small, x), fn(params, x)))
      True

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710; Fang et al., "DepGraph: Towards Any Structural
      Pruning", 2023, https://arxiv.org/abs/2301.12900
    """
    if not callable(fn):
        raise ValueError(f"shrink: fn must be callable, got {type(fn).__name__}")
    params_masked = _masked(params, masks)
    try:
        graph = mg.trace(fn, params_masked, *example_args)
    except Exception as e:
        raise ValueError(
            f"shrink: fn(params, *example_args) could not be traced with the example inputs "
            f"({type(e).__name__}: {e})"
        ) from e
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree_lib.unbox(params_masked))]
    n = graph.num_params
    invars = graph.jaxpr.jaxpr.invars

    # Pass 1: coupling.
    dims = _Dims()
    coupler = _Coupler(dims)
    facts = []
    for i, v in enumerate(invars):
        shape = v.aval.shape
        if i < n:
            ds = tuple(dims.new(s, ("param", i, a)) for a, s in enumerate(shape))
            facts.append(_F(ds, ("param", i), i))
        else:
            why = "an input of fn"
            ds = tuple(dims.new(s, ("arg", i, a), why) for a, s in enumerate(shape))
            facts.append(_F(ds, ("arg", i)))
    param_dims = [f.dims for f in facts[:n]]
    outs = mg.walk(graph.jaxpr, facts, coupler)
    for f in outs:
        if isinstance(f, _F):
            for dd in f.dims:
                dims.block(dd, "an output of fn")
            if f.vid is not None:
                coupler.consumers.setdefault(f.vid, set()).add(("out",))
            if f.src is not None:
                coupler.leaf_uses.setdefault(f.src, set()).add(("out",))
    for ds in param_dims:
        _block_repeated(dims, ds, "the same channel axis appears twice in one parameter")
    dims.finalize()

    # Members of every group: (leaf, axis, factor position, factor sizes).
    members: dict[int, list] = {}
    for i, ds in enumerate(param_dims):
        for axis, dd in enumerate(ds):
            atoms = dims.atoms(dd)
            sizes = tuple(dims.size[a] for a in atoms)
            for pos, a in enumerate(atoms):
                members.setdefault(a, []).append((i, axis, pos, sizes))
    sites_of: dict[int, list] = {}
    for path in coupler.sites:
        for g in _contracted_groups(graph, coupler, dims, path):
            sites_of.setdefault(g, []).append(path)
    candidates = {
        g for g in members if g not in dims.blocked and g not in dims.expansion and dims.size[g] > 1
    }

    # Pass 2: constants.
    consts = _Constants(dims, coupler, candidates)
    cfacts = []
    for i in range(n):
        entries = []
        for axis, dd in enumerate(param_dims[i]):
            atoms = dims.atoms(dd)
            sizes = tuple(dims.size[a] for a in atoms)
            for pos, a in enumerate(atoms):
                if a in candidates:
                    entries.append((a, _slice_constants(leaves[i], axis, sizes, pos)))
        cfacts.append(_C(tuple(entries)))
    cfacts += [_EMPTY] * (len(invars) - n)
    mg.walk(graph.jaxpr, cfacts, consts)

    # Decision.
    uses = {u.key: u for u in graph.uses}
    plan = _Decision(graph, coupler, dims, consts, uses, leaves, members, param_dims)
    plan.constants = constants
    removed: dict[int, np.ndarray] = {}
    for g in sorted(candidates):
        if g not in sites_of:
            continue
        r = plan.removable(g, sites_of[g])
        if r.size == dims.size[g]:
            r = r[1:]  # keep at least one channel
        if r.size:
            removed[g] = r
    kept = {g: np.setdiff1d(np.arange(dims.size[g]), r) for g, r in removed.items()}
    folds = plan.folds(removed, kept, sites_of)

    # The small arrays.
    new_leaves = [jax.tree.leaves(tree_lib.unbox(params_masked))[i] for i in range(n)]
    for leaf, delta in folds.items():
        x = new_leaves[leaf]
        new_leaves[leaf] = jnp.asarray((np.asarray(x, np.float64) + delta).astype(x.dtype))
    arrays: dict[str, dict] = {}
    for i in range(n):
        old = new_leaves[i].shape
        new_leaves[i] = _take_dims(new_leaves[i], param_dims[i], kept, dims)
        resized = [
            (a, new_leaves[i].shape[a], old[a] - new_leaves[i].shape[a])
            for a in range(len(old))
            if new_leaves[i].shape[a] != old[a]
        ]
        if resized:
            ax, k, m = zip(*resized, strict=True)
            arrays[graph.param_names[i]] = (
                {"axis": ax[0], "kept": k[0], "removed": m[0]}
                if len(resized) == 1
                else {"axis": ax, "kept": k, "removed": m}
            )

    def new_size(d) -> int:
        return math.prod(len(kept[a]) if a in kept else dims.size[a] for a in dims.atoms(d))

    report = ShrinkReport(
        arrays=arrays,
        whole=plan.whole_groups(candidates),
        kept=plan.kept_report(candidates, removed, sites_of),
        folded=tuple(plan.fold_report),
        params_before=int(sum(x.size for x in leaves)),
        params_after=int(sum(math.prod(x.shape) for x in new_leaves)),
    )
    boxed_tree = jax.tree.structure(params)
    small_params = jax.tree.unflatten(boxed_tree, new_leaves)
    arg_avals = [v.aval for v in invars[n:]]
    small_fn = ShrunkFunction(
        graph,
        coupler.out_dims,
        new_size,
        report,
        plan.corrections,
        [tuple(x.shape) for x in new_leaves],
        jax.tree.structure((params, *example_args)),
        arg_avals,
    )
    if check:
        _check(fn, params_masked, small_fn, small_params, example_args)
    return small_params, small_fn


def _check(fn, params_masked, small_fn, small_params, args):
    want = jax.tree.leaves(jax.jit(fn)(params_masked, *args))
    got = jax.tree.leaves(jax.jit(small_fn)(small_params, *args))
    for w, g in zip(want, got, strict=True):
        dtype = w.dtype if jnp.issubdtype(w.dtype, jnp.floating) else np.float32
        tol = max(1e-3, 8 * float(jnp.finfo(dtype).eps))  # summation order changes rounding
        w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
        scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
        if w.shape != g.shape or not np.allclose(g, w, rtol=tol, atol=tol * scale):
            raise RuntimeError(  # pragma: no cover - a bug in shrink
                "shrink: the shrunk model differs from the masked model on the example inputs "
                f"(max abs difference {np.max(np.abs(g - w))}); please report this"
            )


def _contracted_groups(graph, coupler, dims, path) -> list[int]:
    eqn = graph.eqn(path)
    x, _w = coupler.in_dims[path][:2]
    if eqn.primitive.name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        return [a for c in lc for a in dims.atoms(x[c])]
    dn = eqn.params["dimension_numbers"]
    return dims.atoms(x[dn.lhs_spec[1]])


class _Decision:
    """Per group and contraction: which channels vanish, and the folds of constant ones."""

    def __init__(self, graph, coupler, dims, consts, uses, leaves, members, param_dims):
        self.graph, self.c, self.d, self.k = graph, coupler, dims, consts
        self.uses, self.leaves, self.members = uses, leaves, members
        self.param_dims = param_dims
        self.constants = True
        self.corrections: dict[mg.Path, jax.Array] = {}
        self.why: dict[tuple[int, int | np.integer], str] = {}
        self.fold_report: list[dict] = []

    def _sides(self, path, g):
        """(lhs constants, rhs constants) of group ``g`` at the contraction at ``path``."""
        facts = self.k.site_facts.get(path, [_EMPTY, _EMPTY])
        n = self.d.size[g]
        return [_vec(f, g, n) if isinstance(f, _Scalar | _C) else (None,) * n for f in facts]

    def _weight(self, path):
        """(weight operand index, ParamUse) when one operand is a leaf used as it is."""
        for k in (0, 1):
            u = self.uses.get((path, k))
            if u is None:
                continue
            v = u.view
            identity = (
                not v.slices
                and not v.scans
                and all(lx == ox and len(lx) == 1 for lx, ox in v.blocks)
                and len(v.blocks) == len(v.leaf_shape)
            )
            if identity:
                return k, u
        return None

    def _fold_target(self, path):
        """(bias leaf, None) when the contraction's only consumer adds a bias leaf, else
        (None, why not)."""
        if self.c.sites[path]:
            return None, "inside a loop or conditional"
        eqn = self.graph.eqn(path)
        if eqn.primitive.name == "conv_general_dilated":
            p = eqn.params
            if any(tuple(x) != (0, 0) for x in p["padding"]) or any(
                x != 1 for x in p["lhs_dilation"]
            ):
                return None, (
                    "the next convolution pads its input (a constant channel's contribution "
                    "varies at the borders)"
                )
        elif eqn.params["dimension_numbers"][1] != ((), ()):
            return None, "the next matmul has batch dimensions"
        if self._weight(path) is None:
            return None, "the other operand of the next matmul is not a parameter used as is"
        cons = self.c.consumers.get((path, 0), set())
        no_bias = "the next matmul has no bias to fold the constant into"
        if len(cons) != 1:
            return None, no_bias
        (use,) = cons
        if use == ("out",) or self.graph.eqn(use[0]).primitive.name != "add":
            return None, no_bias
        cpath, k = use
        leaf = self.c.in_srcs[cpath][1 - k]
        if leaf is None:
            return None, no_bias
        if len(self.c.leaf_uses.get(leaf, ())) != 1:
            return None, "the next matmul's bias is used more than once"
        k, _ = self._weight(path)
        w_dims = self.c.in_dims[path][k]
        if eqn.primitive.name == "dot_general":
            wc = eqn.params["dimension_numbers"][0][k]
            free = [w_dims[b] for b in range(len(w_dims)) if b not in wc]
        else:
            free = [w_dims[eqn.params["dimension_numbers"].rhs_spec[0]]]
        probe = np.zeros([math.prod(self.d.size[t] for t in self.d.atoms(a)) for a in free])
        if _to_bias_layout(probe, free, self.param_dims[leaf], self.d) is None:
            return None, "the bias does not match the next matmul's outputs"
        return leaf, None

    def _const_mode(self, path):
        """How constant channels are made up for at ``path``: ("fold", bias leaf),
        ("correct", None) (a constant of ``small_fn``), or (None, why they are kept)."""
        leaf, reason = self._fold_target(path)
        if leaf is not None:
            return "fold", leaf
        if self.constants and not self.c.sites[path] and self._weight(path) is not None:
            return "correct", None
        return None, reason

    def removable(self, g, sites) -> np.ndarray:
        n = self.d.size[g]
        ok = np.ones(n, bool)
        for path in sites:
            lhs, rhs = self._sides(path, g)
            zero = np.array([lhs[j] == 0 or rhs[j] == 0 for j in range(n)])
            const = np.zeros(n, bool)
            w = self._weight(path)
            if w is not None and not zero.all():
                k, _ = w
                act = (lhs, rhs)[1 - k]
                known = np.array([act[j] is not None for j in range(n)])
                if (known & ~zero).any():
                    mode, reason = self._const_mode(path)
                    if mode is not None:
                        const = known
                    else:
                        for j in np.flatnonzero(known & ~zero):
                            self.why.setdefault((g, j), f"{reason} ({self._name(path)})")
            for j in np.flatnonzero(~zero & ~const):
                self.why.setdefault(
                    (g, j), f"neither side of {self._name(path)} is zero on the channel"
                )
            ok &= zero | const
        return np.flatnonzero(ok)

    def _name(self, path):
        w = self._weight(path)
        if w is not None:
            return f"the matmul with {w[1].name}"
        for k in (0, 1):
            u = self.uses.get((path, k))
            if u is not None:
                return f"the matmul with {u.name}"
        return f"the {self.graph.eqn(path).primitive.name} at {path}"

    def folds(self, removed, kept, sites_of) -> dict[int, np.ndarray]:
        """Bias deltas (full size, float64) for the removed channels with constant values;
        sets :attr:`corrections` where there is no bias to fold into."""
        out: dict[int, np.ndarray] = {}
        paths = sorted({p for g in removed for p in sites_of.get(g, ())})
        for path in paths:
            w = self._weight(path)
            if w is None:
                continue
            k, use = w
            eqn = self.graph.eqn(path)
            x_dims = self.c.in_dims[path][1 - k]
            x_shape = tuple(eqn.invars[1 - k].aval.shape)
            if eqn.primitive.name == "dot_general":
                (lc, rc), _ = eqn.params["dimension_numbers"]
                ac, wc = (rc, lc) if k == 0 else (lc, rc)
            else:
                dn = eqn.params["dimension_numbers"]
                ac, wc = (dn.lhs_spec[1],), (dn.rhs_spec[1],)
            xc = np.zeros([x_shape[a] for a in ac])
            count = 0
            for i, a in enumerate(ac):
                atoms = self.d.atoms(x_dims[a])
                sizes = [self.d.size[t] for t in atoms]
                for pos, g in enumerate(atoms):
                    if g not in removed:
                        continue
                    act = self._sides(path, g)[1 - k]
                    vals = np.full(sizes[pos], np.nan)
                    for j in removed[g]:
                        if act[j] is not None and act[j] != 0:
                            vals[j] = act[j]
                    if np.isnan(vals).all():
                        continue
                    count += int(np.sum(~np.isnan(vals)))
                    stride = math.prod(sizes[pos + 1 :])
                    along = vals[(np.arange(x_shape[a]) // stride) % sizes[pos]]
                    shape = [1] * len(ac)
                    shape[i] = x_shape[a]
                    along = np.broadcast_to(along.reshape(shape), xc.shape)
                    xc = np.where(np.isnan(along), xc, along)
            if not count:
                continue
            mode, leaf = self._const_mode(path)
            if mode == "correct":
                shape = [1] * len(x_shape)
                for a in ac:
                    shape[a] = x_shape[a]
                xfull = np.transpose(xc, np.argsort(ac)).reshape(shape)
                if eqn.primitive.name == "conv_general_dilated":
                    for a in dn.lhs_spec[2:]:
                        shape[a] = x_shape[a]
                    xfull = np.broadcast_to(xfull, shape)
                ops = [jnp.asarray(xfull, eqn.invars[1 - k].aval.dtype), self.leaves[use.leaf]]
                full = _bind(eqn, ops if k == 1 else ops[::-1], eqn.params)[0]
                self.corrections[path] = _take_dims(full, self.c.out_dims[path][0], kept, self.d)
                self.fold_report.append({"bias": None, "weight": use.name, "channels": count})
                continue
            wval = self.leaves[use.leaf].astype(np.float64)
            if eqn.primitive.name == "dot_general":
                corr = np.tensordot(xc, wval, axes=(list(range(len(ac))), list(wc)))
                free = [b for b in range(wval.ndim) if b not in wc]
            else:
                spatial = tuple(dn.rhs_spec[2:])
                wsum = np.moveaxis(wval.sum(axis=spatial), [0, 1], [0, 1])
                # wsum axes: rhs_spec order without the spatial dims, in the leaf's order.
                rest = [b for b in range(wval.ndim) if b not in spatial]
                in_axis, out_axis = rest.index(dn.rhs_spec[1]), rest.index(dn.rhs_spec[0])
                corr = np.tensordot(xc, wsum, axes=([0], [in_axis]))
                del out_axis
                free = [dn.rhs_spec[0]]
            w_dims = [self.c.in_dims[path][k][b] for b in free]
            delta = _to_bias_layout(corr, w_dims, self.param_dims[leaf], self.d)
            if delta is None:  # pragma: no cover - the add's coupling guarantees a layout
                raise AssertionError(f"shrink: bias layout of {self.graph.param_names[leaf]}")
            out[leaf] = out.get(leaf, 0) + delta
            self.fold_report.append(
                {"bias": self.graph.param_names[leaf], "weight": use.name, "channels": count}
            )
        return out

    def whole_groups(self, candidates) -> tuple:
        """Blocked groups where some member has an all-zero slice."""
        out = []
        for g, mem in sorted(self.members.items()):
            if g in candidates or g not in self.d.blocked or self.d.size[g] < 2:
                continue
            zero = np.zeros(self.d.size[g], bool)
            for leaf, axis, pos, sizes in mem:
                if self.leaves[leaf].ndim < 2:
                    continue  # a pruned channel is a zero slice of a kernel
                vals = _slice_constants(self.leaves[leaf], axis, sizes, pos)
                zero |= np.array([v == 0 for v in vals])
            if zero.any():
                out.append(
                    {
                        "members": _member_names(self.graph, mem),
                        "zero": int(zero.sum()),
                        "reason": self.d.blocked[g],
                    }
                )
        return tuple(out)

    def kept_report(self, candidates, removed, sites_of) -> tuple:
        """Channels with an all-zero slice in a member that were kept, with why."""
        out = []
        for g in sorted(candidates):
            mem = self.members[g]
            zero = np.zeros(self.d.size[g], bool)
            for leaf, axis, pos, sizes in mem:
                if self.leaves[leaf].ndim < 2:
                    continue  # a pruned channel is a zero slice of a kernel
                vals = _slice_constants(self.leaves[leaf], axis, sizes, pos)
                zero |= np.array([v == 0 for v in vals])
            gone = set(removed.get(g, np.zeros(0, int)).tolist())
            chans = [j for j in np.flatnonzero(zero) if j not in gone]
            if not chans:
                continue
            if g not in sites_of:
                reasons = {"the channel axis reaches no matmul"}
            else:
                reasons = {self.why.get((g, j), "at least one channel is kept") for j in chans}
            for reason in sorted(reasons):
                js = [
                    int(j)
                    for j in chans
                    if (g not in sites_of)
                    or self.why.get((g, j), "at least one channel is kept") == reason
                ]
                out.append(
                    {"members": _member_names(self.graph, mem), "channels": js, "reason": reason}
                )
        return tuple(out)


def _take_dims(x, dims, kept, d):
    """``x`` with every axis whose dimension has removed channels sliced to the kept ones
    (on the host; the result is a new array on the default device)."""
    if not any(a in kept for dd in dims for a in d.atoms(dd)):
        return x
    x = np.asarray(x)
    for axis, dd in enumerate(dims):
        atoms = d.atoms(dd)
        if x.shape[axis] == 1 or not any(a in kept for a in atoms):
            continue
        grids = [kept.get(a, np.arange(d.size[a])) for a in atoms]
        sizes = [d.size[a] for a in atoms]
        idx = np.ravel_multi_index(np.ix_(*grids), sizes).reshape(-1)
        x = np.take(x, idx, axis=axis)
    return jnp.asarray(x)


def _member_names(graph, mem) -> list[str]:
    return [
        f"{graph.param_names[leaf]}:{axis}" + (f"[{pos}]" if len(sizes) > 1 else "")
        for leaf, axis, pos, sizes in mem
    ]


def _to_bias_layout(corr, w_dims, b_dims, dims) -> np.ndarray | None:
    """``corr`` (axes ``w_dims``) laid out as the bias leaf (axes ``b_dims``), or None."""
    w_roots = [dims.atoms(d) for d in w_dims]
    order, shape = [], []
    for bd in b_dims:
        ba = dims.atoms(bd)
        if not ba:
            shape.append(1)
            continue
        matches = [i for i, wa in enumerate(w_roots) if wa == ba]
        if len(matches) != 1:
            return None
        order.append(matches[0])
        shape.append(corr.shape[matches[0]])
    covered = set(order)
    if any(w_roots[i] and i not in covered for i in range(len(w_roots))):
        return None
    squeeze = tuple(i for i in range(corr.ndim) if i not in covered)
    corr = np.sum(corr, axis=squeeze) if squeeze else corr
    remaining = sorted(covered)
    corr = np.transpose(corr, [remaining.index(i) for i in order])
    return corr.reshape(shape)


def shrink_nnx(model: Any, *example_args: Any, masks: Any = None, check: bool = True):
    """Shrinks a Flax nnx module: a new module whose Variables hold the smaller arrays.

    The module is split (``nnx.split``), shrunk with :func:`shrink` (with
    ``constants=False``: constant channels that cannot be folded into a bias are kept, so
    that the module alone computes the function) and merged back; the common size attributes
    (``in_features`` / ``out_features`` of ``Linear`` and ``Conv``, ``num_features`` of
    norms) are set to the new sizes. The new module is then called on ``example_args`` and
    compared with the masked model: a module whose ``__call__`` hard-codes sizes (e.g. a
    reshape to a stored number of heads) raises ``ValueError``; use :func:`shrink` on
    ``nnx.split`` state with its ``small_fn`` then. ``model`` is not modified.

    Args:
      model: an ``nnx.Module`` whose ``__call__`` takes ``example_args``.
      *example_args: example inputs.
      masks: optional masks of ``nnx.split(model)[1]`` (e.g. from :func:`jaxprune.prune` on
        it); without masks, channels whose slices are exactly zero are pruned.
      check: verify the new module against the masked model on ``example_args``.

    Returns:
      ``(small_model, report)``: the new module and the :class:`ShrinkReport`.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> from flax import nnx
      >>> class MLP(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.a, self.b = nnx.Linear(2, 4, rngs=rngs), nnx.Linear(4, 1, rngs=rngs)
      ...   def __call__(self, x):
      ...     return self.b(nnx.relu(self.a(x)))
      >>> model = MLP(nnx.Rngs(0))
      >>> model.a.kernel[...] = model.a.kernel[...].at[:, :2].set(0.0)
      >>> small, report = jaxprune.shrink_nnx(model, jnp.ones((3, 2)))
      >>> small.a.kernel.shape, small.b.kernel.shape, small.a.out_features
      ((2, 2), (2, 1), 2)

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710
    """
    from flax import nnx

    graphdef, state = nnx.split(model)

    def fn(state, *args):
        return nnx.merge(graphdef, state)(*args)

    small_state, small_fn = shrink(
        fn, state, *example_args, masks=masks, constants=False, check=check
    )
    small_model = nnx.merge(graphdef, small_state)
    # nnx.iter_modules is new in flax 0.12.1; Module.iter_modules before.
    iter_modules = getattr(nnx, "iter_modules", None) or type(small_model).iter_modules
    for _, module in iter_modules(small_model):
        _resize_attributes(module)
    if check:
        want = jax.tree.leaves(fn(_masked(state, masks), *example_args))
        try:
            got = jax.tree.leaves(small_model(*example_args))
            ok = all(
                np.shape(g) == np.shape(w) and np.allclose(g, w, rtol=1e-3, atol=1e-4)
                for g, w in zip(got, want, strict=True)
            )
            why = "its outputs differ from the masked model's"
        except Exception as e:
            ok, why = False, f"calling it fails ({type(e).__name__}: {e})"
        if not ok:
            raise ValueError(
                f"shrink_nnx: the module with smaller arrays does not compute the model: {why}. "
                "Its __call__ probably depends on stored sizes; use jaxprune.shrink(fn, state, "
                "...) with fn = lambda s, *a: nnx.merge(graphdef, s)(*a) and its small_fn"
            )
    return small_model, small_fn.report


def _resize_attributes(module) -> None:
    """Sets the usual size attributes of nnx layers from their (new) arrays."""
    kernel = getattr(module, "kernel", None)
    shape = getattr(kernel, "shape", None)
    name = type(module).__name__
    if name == "Linear" and shape is not None:
        module.in_features, module.out_features = shape[0], shape[-1]
    elif name in ("Conv", "ConvTranspose") and shape is not None:
        module.in_features = shape[-2] * getattr(module, "feature_group_count", 1)
        module.out_features = shape[-1]
        if hasattr(module, "kernel_shape"):
            module.kernel_shape = tuple(shape)
    elif name in ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm") and hasattr(
        module, "num_features"
    ):
        for attr in ("scale", "mean", "bias"):
            arr_shape = getattr(getattr(module, attr, None), "shape", None)
            if arr_shape:
                module.num_features = arr_shape[-1]
                break
