"""Shrink's pass 2, constants: which channel slices of which values are known constants."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import jaxpr as mg
from jaxprune._src.shrink.coupling import ELEMENTWISE, VIEW_PRIMITIVES, Coupler
from jaxprune._src.shrink.dims import Dims

# ----------------------------------------------------------------------------- pass 2


@dataclasses.dataclass(frozen=True)
class Scalar:
    value: Any


@dataclasses.dataclass(frozen=True)
class ChannelConstants:
    """Per candidate group root: a tuple of per-channel constants (None: unknown).

    ``sub`` refines this along one other small axis of the value: ``(g, h, table)`` with
    ``table[j][i]`` the constant of the slice where group ``g`` is ``j`` and the axis whose
    (single) dimension is ``h`` is ``i`` (a gemma gating kernel ``(2, D, F)`` whose up half
    alone is zero on unit ``j``). It lives through layout changes and matmuls (the weight's
    zeros) until a slice picks indices of ``h``.
    """

    entries: tuple = ()
    sub: tuple = ()

    def get(self, g):
        for r, v in self.entries:
            if r == g:
                return v
        return None


EMPTY = ChannelConstants()


def vec(fact, g, n):
    if isinstance(fact, Scalar):
        return (fact.value,) * n
    v = fact.get(g)
    return v if v is not None else (None,) * n


class Constants(mg.Visitor):
    """Which channel slices of which values are known constants (for all inputs)."""

    def __init__(self, dims: Dims, coupler: Coupler, candidates: set[int]):
        self.d, self.c, self.cand = dims, coupler, candidates
        self.site_facts: dict[mg.Path, list] = {}

    def literal(self, value):
        if np.ndim(value) == 0 and isinstance(np.asarray(value).item(), int | float | bool):
            return Scalar(np.asarray(value).item())
        return EMPTY

    def constant(self, value):
        return self.literal(value)

    def join(self, facts):
        first = facts[0]
        if all(f == first for f in facts[1:]):
            return first
        if any(isinstance(f, Scalar) for f in facts):
            return EMPTY
        entries = []
        for g, v in first.entries:
            others = [f.get(g) for f in facts[1:]]
            if all(o is not None for o in others):
                vals = tuple(x if all(o[j] == x for o in others) else None for j, x in enumerate(v))
                entries.append((g, vals))
        return ChannelConstants(tuple(entries))

    def _groups(self, dims) -> list[int]:
        return [a for dd in dims for a in self.d.atoms(dd) if a in self.cand]

    def equation(self, ctx, facts):
        eqn, path, name = ctx.eqn, ctx.path, ctx.eqn.primitive.name
        out_dims = self.c.out_dims[path]
        in_dims = self.c.in_dims[path]
        n_out = len(eqn.outvars)
        facts = [f if isinstance(f, ChannelConstants | Scalar) else EMPTY for f in facts]
        if name in ("dot_general", "conv_general_dilated"):
            self.site_facts[path] = facts[:2]
        if name in ELEMENTWISE and n_out == 1:
            return [self._elementwise(eqn, facts, in_dims, out_dims[0])]
        if name in VIEW_PRIMITIVES | {"slice", "rev", "reduce_max", "reduce_min"} | {
            "reduce_window_max",
            "reduce_window_min",
        }:
            f = facts[0]
            if isinstance(f, Scalar):
                return [f]
            keep = set(self._groups(out_dims[0]))
            kept = {g: v for g, v in f.entries if g in keep}
            if name == "slice" and f.sub:
                kept = self._slice_sub(eqn, f, in_dims[0], kept, keep)
            alive = {a for dd in out_dims[0] for a in self.d.atoms(dd)}
            same = name in VIEW_PRIMITIVES or name == "slice"
            sub = tuple(s for s in f.sub if same and s[0] in keep and s[1] in alive)
            return [ChannelConstants(tuple(kept.items()), sub)]
        if name in ("reduce_sum", "reduce_window_sum"):
            f = facts[0]
            keep = set(self._groups(out_dims[0]))
            if isinstance(f, Scalar):
                return [EMPTY]
            zero = tuple((g, tuple(0 if x == 0 else None for x in v)) for g, v in f.entries)
            return [ChannelConstants(tuple((g, v) for g, v in zero if g in keep))]
        if name == "dot_general":
            return [self._dot(eqn, facts, in_dims, out_dims[0])]
        if name == "conv_general_dilated":
            dn = eqn.params["dimension_numbers"]
            w = facts[1]
            entries = []
            if isinstance(w, ChannelConstants):
                for g in self._groups([in_dims[1][dn.rhs_spec[0]]]):
                    v = w.get(g)
                    if v is not None:
                        entries.append((g, tuple(0 if x == 0 else None for x in v)))
            return [ChannelConstants(tuple(entries))]
        return [EMPTY] * n_out

    def _slice_sub(self, eqn, f, x_dims, entries, keep):
        """Channel constants of a slice that picks indices of a ``sub`` entry's axis."""
        p = eqn.params
        in_shape = eqn.invars[0].aval.shape
        strides = p["strides"] or (1,) * len(in_shape)
        entries = dict(entries)
        for g, h, table in f.sub:
            if g not in keep:
                continue
            axes = [a for a, dd in enumerate(x_dims) if self.d.atoms(dd) == [h]]
            if len(axes) != 1:
                continue
            (a,) = axes
            picked = list(range(p["start_indices"][a], p["limit_indices"][a], strides[a]))
            if len(picked) == in_shape[a]:
                continue
            vals = []
            for row in table:
                cs = {row[i] for i in picked}
                vals.append(cs.pop() if len(cs) == 1 else None)
            old = entries.get(g, (None,) * len(vals))
            entries[g] = tuple(o if o is not None else v for o, v in zip(old, vals, strict=True))
        return entries

    def _dot(self, eqn, facts, in_dims, out_dims):
        (lc, rc), (_lb, _rb) = eqn.params["dimension_numbers"]
        entries = []
        for g in self._groups(out_dims):
            vals = []
            for f, dims, contracted in ((facts[0], in_dims[0], lc), (facts[1], in_dims[1], rc)):
                holds = any(
                    g in self.d.atoms(dd) for a, dd in enumerate(dims) if a not in contracted
                )
                if holds and isinstance(f, ChannelConstants) and f.get(g) is not None:
                    vals.append(f.get(g))
            if vals:
                n = len(vals[0])
                entries.append(
                    (g, tuple(0 if any(v[j] == 0 for v in vals) else None for j in range(n)))
                )
        sub = []
        for f, dims, contracted in ((facts[0], in_dims[0], lc), (facts[1], in_dims[1], rc)):
            if not isinstance(f, ChannelConstants):
                continue
            free = {a for b, dd in enumerate(dims) if b not in contracted for a in self.d.atoms(dd)}
            for g, h, table in f.sub:
                if g in free and h in free:
                    zeros = tuple(tuple(0 if x == 0 else None for x in row) for row in table)
                    sub.append((g, h, zeros))
        return ChannelConstants(tuple(entries), tuple(sub))

    def _elementwise(self, eqn, facts, in_dims, out_dims):
        groups = self._groups(out_dims)
        if not groups:
            if all(isinstance(f, Scalar) for f in facts):
                try:
                    (out,) = _bind_vec(eqn, [np.asarray(f.value) for f in facts])
                    return Scalar(np.asarray(out).item())
                except Exception:
                    return EMPTY
            return EMPTY
        if eqn.primitive.name == "stop_gradient" or eqn.primitive.name in mg.IDENTITY_PRIMITIVES:
            f = facts[0]
            return (
                f
                if isinstance(f, Scalar)
                else ChannelConstants(tuple((g, v) for g, v in f.entries if g in groups))
            )
        entries = []
        for g in groups:
            n = self.d.size[g]
            vecs = []
            for f, dims in zip(facts, in_dims, strict=True):
                if isinstance(f, Scalar) or g in [a for dd in dims for a in self.d.atoms(dd)]:
                    vecs.append(vec(f, g, n))
                else:
                    vecs.append((None,) * n)  # broadcast along the channel: not per-channel
            vals = self._evaluate(eqn, vecs, n)
            if any(v is not None for v in vals):
                entries.append((g, vals))
        return ChannelConstants(tuple(entries))

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


def slice_constants(x: np.ndarray, axis: int, factor_sizes, pos: int) -> tuple:
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


SUB_AXIS_MAX = 16
"""The largest axis along which channel constants are refined (:attr:`ChannelConstants.sub`)."""


def slice_constants_by(
    x: np.ndarray, axis: int, factor_sizes, pos: int, other: int
) -> tuple | None:
    """Per index ``j`` of factor ``pos`` of ``axis`` and index ``i`` of axis ``other``: the
    common value of that slice, or None; None overall when it tells nothing more than
    :func:`slice_constants`."""
    n = factor_sizes[pos]
    shape = list(x.shape)
    y = np.reshape(x, shape[:axis] + list(factor_sizes) + shape[axis + 1 :])
    o = other if other < axis else other + len(factor_sizes) - 1
    y = np.moveaxis(y, [axis + pos, o], [0, 1])
    y = np.reshape(y, (n, shape[other], -1))
    if y.shape[2] == 0:
        return None
    lo, hi = y.min(axis=2), y.max(axis=2)
    known = (lo == hi) & np.isfinite(lo)
    whole = known.all(axis=1) & (lo == lo[:, :1]).all(axis=1)  # what slice_constants knows
    if not (known & ~whole[:, None]).any():
        return None
    return tuple(
        tuple(lo[j, i].item() if known[j, i] else None for i in range(shape[other]))
        for j in range(n)
    )
