"""Shrink's decision: per group and contraction, which channels vanish, and the folds."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import jaxpr as mg
from jaxprune._src.shrink.constants import EMPTY, ChannelConstants, Scalar, slice_constants, vec

_OUTPUT_LAYOUT = frozenset(
    {"transpose", "reshape", "squeeze", "convert_element_type", "copy", "copy_p"}
)
"""Primitives between a matmul and its bias add that a fold is followed through."""


@dataclasses.dataclass(frozen=True)
class CorrectionSpec:
    """An input-independent constant ``small_fn`` adds after a matmul (``constants=True``).

    Attributes:
      weight: index of the weight leaf of that matmul.
      name: its name.
      values: the removed channels' constant activations along the matmul's contracted
        activation axes (zeros elsewhere), in the activation's axis order.
      dense: the (masked) dense value of the weight operand.
    """

    weight: int
    name: str
    values: np.ndarray = dataclasses.field(repr=False)
    dense: np.ndarray = dataclasses.field(repr=False)


def contraction_axes(eqn, k):
    """``(activation contracted dims, weight contracted dims)`` of a matmul whose weight is
    operand ``k``."""
    if eqn.primitive.name == "dot_general":
        (lc, rc), _ = eqn.params["dimension_numbers"]
        return (rc, lc) if k == 0 else (lc, rc)
    dn = eqn.params["dimension_numbers"]
    return (dn.lhs_spec[1],), (dn.rhs_spec[1],)


def correction_value(eqn, k, spec: CorrectionSpec) -> np.ndarray | str:
    """The full-size constant that ``spec``'s channels add to the output of ``eqn``, or why
    it cannot be computed here."""
    x_shape = tuple(eqn.invars[1 - k].aval.shape)
    ac, _ = contraction_axes(eqn, k)
    if tuple(x_shape[a] for a in ac) != spec.values.shape or tuple(
        eqn.invars[k].aval.shape
    ) != tuple(spec.dense.shape):
        return "the matmul's contracted axes have other sizes at these input shapes"
    shape = [1] * len(x_shape)
    for a in ac:
        shape[a] = x_shape[a]
    xfull = np.transpose(spec.values, np.argsort(ac)).reshape(shape)
    if eqn.primitive.name == "conv_general_dilated":
        for a in eqn.params["dimension_numbers"].lhs_spec[2:]:
            shape[a] = x_shape[a]
        xfull = np.broadcast_to(xfull, shape)
    ops = [jnp.asarray(xfull, eqn.invars[1 - k].aval.dtype), jnp.asarray(spec.dense)]
    with jax.ensure_compile_time_eval():
        full = mg.bind_equation(eqn, ops if k == 1 else ops[::-1], eqn.params)[0]
    return np.asarray(full)


class Decision:
    """Per group and contraction: which channels vanish, and the folds of constant ones."""

    def __init__(self, graph, coupler, dims, consts, uses, leaves, members, param_dims):
        self.graph, self.c, self.d, self.k = graph, coupler, dims, consts
        self.uses, self.leaves, self.members = uses, leaves, members
        self.param_dims = param_dims
        self.weight_leaves = {u.leaf for u in graph.uses}
        self.constants = True
        self.corrections: list[CorrectionSpec] = []
        self.why: dict[tuple[int, int | np.integer], str] = {}
        self.fold_report: list[dict] = []

    def _sides(self, path, g):
        """(lhs constants, rhs constants) of group ``g`` at the contraction at ``path``."""
        facts = self.k.site_facts.get(path, [EMPTY, EMPTY])
        n = self.d.size[g]
        return [
            vec(f, g, n) if isinstance(f, Scalar | ChannelConstants) else (None,) * n for f in facts
        ]

    def weight_use(self, path):
        """(weight operand index, ParamUse) when one operand is a whole leaf, up to layout
        (a transpose, a reshape, a dtype conversion)."""
        for k in (0, 1):
            u = self.uses.get((path, k))
            if u is not None and u.view.is_whole:
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
        if self.weight_use(path) is None:
            return None, "the other operand of the next matmul is not a parameter used as is"
        no_bias = "the next matmul has no bias to fold the constant into"
        vid = (path, 0)
        # Follow the matmul's output through layout changes (equinox under vmap transposes
        # it) and additions of other values (torch-style ``x + h @ W.T + b`` adds the
        # residual first) to the add of a parameter: adding the constant there is exact.
        while True:
            cons = self.c.consumers.get(vid, set())
            if len(cons) != 1:
                return None, no_bias
            (use,) = cons
            if use == ("out",):
                return None, no_bias
            name = self.graph.eqn(use[0]).primitive.name
            if name in _OUTPUT_LAYOUT:
                vid = (use[0], 0)
                continue
            if name != "add":
                return None, no_bias
            cpath, k = use
            leaf = self.c.in_srcs[cpath][1 - k]
            if leaf is not None:
                break
            vid = (cpath, 0)
        if len(self.c.leaf_uses.get(leaf, ())) != 1:
            return None, "the next matmul's bias is used more than once"
        k, _ = self.weight_use(path)
        w_dims = self.c.in_dims[path][k]
        if eqn.primitive.name == "dot_general":
            wc = eqn.params["dimension_numbers"][0][k]
            free = [w_dims[b] for b in range(len(w_dims)) if b not in wc]
        else:
            free = [w_dims[eqn.params["dimension_numbers"].rhs_spec[0]]]
        probe = np.zeros([math.prod(self.d.size[t] for t in self.d.atoms(a)) for a in free])
        if to_bias_layout(probe, free, self.param_dims[leaf], self.d) is None:
            return None, "the bias does not match the next matmul's outputs"
        return leaf, None

    def _const_mode(self, path):
        """How constant channels are made up for at ``path``: ("fold", bias leaf),
        ("correct", None) (a constant of ``small_fn``), or (None, why they are kept)."""
        leaf, reason = self._fold_target(path)
        if leaf is not None:
            return "fold", leaf
        if self.constants and not self.c.sites[path] and self.weight_use(path) is not None:
            return "correct", None
        return None, reason

    def removable(self, g, sites) -> np.ndarray:
        n = self.d.size[g]
        ok = np.ones(n, bool)
        for path in sites:
            lhs, rhs = self._sides(path, g)
            zero = np.array([lhs[j] == 0 or rhs[j] == 0 for j in range(n)])
            const = np.zeros(n, bool)
            w = self.weight_use(path)
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
        w = self.weight_use(path)
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
            w = self.weight_use(path)
            if w is None:
                continue
            k, use = w
            eqn = self.graph.eqn(path)
            x_dims = self.c.in_dims[path][1 - k]
            x_shape = tuple(eqn.invars[1 - k].aval.shape)
            ac, wc = contraction_axes(eqn, k)
            dn = eqn.params["dimension_numbers"]
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
            wval = use.view.apply(self.leaves[use.leaf], use.weight_shape)
            if mode == "correct":
                self.corrections.append(CorrectionSpec(use.leaf, use.name, xc, wval))
                self.fold_report.append({"bias": None, "weight": use.name, "channels": count})
                continue
            wval = wval.astype(np.float64)
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
            delta = to_bias_layout(corr, w_dims, self.param_dims[leaf], self.d)
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
                if leaf not in self.weight_leaves or self.leaves[leaf] is None:
                    continue  # a pruned channel is a zero slice of a matmul's weight
                vals = slice_constants(self.leaves[leaf], axis, sizes, pos)
                zero |= np.array([v == 0 for v in vals])
            if zero.any():
                out.append(
                    {
                        "members": member_names(self.graph, mem),
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
                if leaf not in self.weight_leaves or self.leaves[leaf] is None:
                    continue  # a pruned channel is a zero slice of a matmul's weight
                vals = slice_constants(self.leaves[leaf], axis, sizes, pos)
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
                    {"members": member_names(self.graph, mem), "channels": js, "reason": reason}
                )
        return tuple(out)


def take_dims(x, dims, kept, d):
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


def member_names(graph, mem) -> list[str]:
    return [
        f"{graph.param_names[leaf]}:{axis}" + (f"[{pos}]" if len(sizes) > 1 else "")
        for leaf, axis, pos, sizes in mem
    ]


def to_bias_layout(corr, w_dims, b_dims, dims) -> np.ndarray | None:
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
