"""Seeing inside a user's model function: which parameters are matmul / conv weights, and where.

A model function ``fn(params, *args)`` (a linen ``model.apply``, an nnx module through
``nnx.split`` / ``nnx.merge``, or plain JAX) is traced once to a jaxpr. This module then

1. walks the jaxpr with a generic equation visitor (:func:`walk`, :class:`Visitor`): calls
   (``jit``, ``remat``/``checkpoint``, ``custom_jvp_call``, ``custom_vjp_call``, ...) are
   inlined, and ``scan`` / ``cond`` / ``while`` bodies are entered with their operands mapped
   onto the body's inputs (a fixpoint over loop carries);
2. finds every use of a parameter leaf as an operand of ``dot_general`` or
   ``conv_general_dilated`` (:func:`trace` -> :class:`ModelGraph` with :class:`ParamUse` and
   :class:`UnresolvedUse` records), following the leaf through layout-preserving operations
   (dtype conversion, copies, transposes, reshapes whose axis correspondence is exact, static
   slices, size-1 broadcasts) and into nested jaxprs, including ``scan`` over stacked
   per-layer weights (the stacked axis becomes a *scan axis* of the use). A use that cannot be
   resolved exactly (a gather, arithmetic on the weight, a reshape that mixes axes, a body that
   is not followed) is recorded as unresolved with the reason -- never guessed;
3. evaluates the traced jaxpr with a hook that sees every recorded use's activation operand
   (:func:`interpret`), usable inside ``jax.jit``: the hook's per-call results are summed over
   loop iterations and stacked over scanned weight slices.

Axis bookkeeping (:class:`WeightView`): the weight operand that a primitive sees is the leaf
after a chain of layout operations. The view records it as *blocks* ``(lx, ox)``: the leaf axes
``lx`` (read row-major in that order) hold exactly the elements of the operand axes ``ox`` (read
row-major in that order). ``((0,), (1,))`` is a plain axis rename, ``((0, 1), (0,))`` a merge
of two leaf axes into one operand axis, ``((0,), (0, 1))`` a split, ``((), (2,))`` an inserted
size-1 axis and ``((1,), ())`` a removed size-1 leaf axis. Static slices of leaf axes and leaf
axes consumed by enclosing scans are recorded separately. All axis numbers a
:class:`ParamUse` reports as ``*_axes`` are the leaf's own; ``*_dims`` are the operand's.

This module is generic on purpose: the Wanda statistics live in ``calibration.py``, and the
channel-coupling pass of ``shrink`` can be written as another :class:`Visitor`.

References:
  Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models" (Wanda), 2023, https://arxiv.org/abs/2306.11695
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from jaxprune._src import tree as tree_lib

Path = tuple[int, ...]
"""Where an equation is: ``(i,)`` is equation ``i`` of the top-level jaxpr; ``p + (s, j)`` is
equation ``j`` of sub-jaxpr ``s`` of the equation at ``p``. Sub-jaxpr numbers: 0 for calls and
scan bodies, the branch index for ``cond``, 0 (condition) and 1 (body) for ``while``."""

Block = tuple[tuple[int, ...], tuple[int, ...]]

CALL_PRIMITIVES = frozenset(
    {
        "jit",
        "pjit",
        "closed_call",
        "core_call",
        "remat",
        "remat2",
        "checkpoint",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
    }
)
"""Primitives whose single body is inlined by :func:`walk` and :func:`interpret` (forward
semantics only: custom derivative rules and remat policies do not matter for a forward pass)."""

MATMUL_PRIMITIVES = frozenset({"dot_general", "conv_general_dilated"})

IDENTITY_PRIMITIVES = frozenset(
    {
        "convert_element_type",
        "copy",
        "copy_p",
        "reduce_precision",
        "sharding_constraint",
        "stop_gradient",
        "optimization_barrier",
        "device_put",
        "mesh_cast",
        "reshard",
    }
)
"""Primitives whose outputs are their inputs, element for element (output ``i`` = input ``i``)."""

LAYOUT_PRIMITIVES = IDENTITY_PRIMITIVES | {
    "split",
    "transpose",
    "reshape",
    "squeeze",
    "broadcast_in_dim",
    "slice",
}
"""Primitives a :class:`WeightView` is followed through (when the axis mapping is exact)."""

_MAX_FIXPOINT_ITERATIONS = 16


# ----------------------------------------------------------------------------- structure


def _closed(j: Any) -> ClosedJaxpr | None:
    if isinstance(j, ClosedJaxpr):
        return j
    if isinstance(j, Jaxpr) and not j.constvars:
        return ClosedJaxpr(j, [])
    return None


def call_body(eqn: Any) -> ClosedJaxpr | None:
    """The body of a call-like equation (see :data:`CALL_PRIMITIVES`), or None."""
    if eqn.primitive.name not in CALL_PRIMITIVES:
        return None
    body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    body = _closed(body)
    if body is None or len(body.jaxpr.invars) != len(eqn.invars):
        return None
    return body


def sub_jaxprs(eqn: Any) -> list[Any]:
    """Every jaxpr (open or closed) found in an equation's params."""
    out: list[Any] = []
    for value in eqn.params.values():
        items = value if isinstance(value, tuple | list) else (value,)
        out.extend(v for v in items if isinstance(v, ClosedJaxpr | Jaxpr))
    return out


def _contains_matmul(j: Any) -> bool:
    jaxpr = j.jaxpr if isinstance(j, ClosedJaxpr) else j
    return any(
        e.primitive.name in MATMUL_PRIMITIVES or any(_contains_matmul(s) for s in sub_jaxprs(e))
        for e in jaxpr.eqns
    )


# ----------------------------------------------------------------------------- walker


@dataclasses.dataclass(frozen=True)
class Region:
    """A control-flow region an equation sits in.

    Attributes:
      kind: ``"scan"`` (a scan body), ``"cond"`` (one branch), ``"while_cond"`` or
        ``"while_body"``.
      path: the path of the scan / cond / while equation.
      eqn: that equation.
      branch: the branch index for ``"cond"``, else 0.
    """

    kind: str
    path: Path
    eqn: Any = dataclasses.field(compare=False, repr=False)
    branch: int = 0


@dataclasses.dataclass(frozen=True)
class EqnContext:
    """What :class:`Visitor` methods are told about the equation at hand.

    Attributes:
      eqn: the ``JaxprEqn`` (``eqn.primitive``, ``eqn.params``, ``eqn.invars[i].aval``, ...).
      path: its :data:`Path`.
      regions: the enclosing control-flow regions, outermost first (inlined calls are not
        regions).
    """

    eqn: Any = dataclasses.field(repr=False)
    path: Path
    regions: tuple[Region, ...]


class Visitor:
    """Hooks of :func:`walk`, a forward abstract interpretation over a jaxpr.

    Every value of the program carries a *fact* (any Python object the visitor chooses,
    comparable with ``==``). :func:`walk` inlines calls and enters control flow itself; the
    visitor sees every other equation through :meth:`equation`, including higher-order
    primitives that :func:`walk` does not follow (``shard_map``, ``pallas_call``, ...).

    An equation inside a loop body can be visited several times (until the loop-carry facts
    are stable), so record per-equation results keyed by ``ctx.path`` and let later visits
    overwrite earlier ones; :meth:`join` must be monotone over a lattice of finite height.
    """

    def literal(self, value: Any) -> Any:
        """The fact of a literal operand. Default: None."""
        del value

    def constant(self, value: Any) -> Any:
        """The fact of a constant closed over by a jaxpr. Default: None."""
        del value

    def equation(self, ctx: EqnContext, facts: list[Any]) -> list[Any]:
        """Facts of ``ctx.eqn``'s outputs from those of its inputs (one per outvar)."""
        raise NotImplementedError

    def scan_slice(self, ctx: EqnContext, fact: Any) -> Any:
        """Fact of one iteration's slice of a scanned operand (``xs``), from the stacked one."""
        del ctx
        return fact

    def scan_stack(self, ctx: EqnContext, fact: Any) -> Any:
        """Fact of a scan's stacked output (``ys``) from the per-iteration body output."""
        del ctx
        return fact

    def join(self, facts: Sequence[Any]) -> Any:
        """Fact of a value that may be any of ``facts`` (cond outputs, loop carries)."""
        first = facts[0]
        if all(f == first for f in facts[1:]):
            return first
        raise NotImplementedError("Visitor.join: facts differ; override join")


def walk(
    closed_jaxpr: ClosedJaxpr,
    facts: Sequence[Any],
    visitor: Visitor,
    *,
    path: Path = (),
    regions: tuple[Region, ...] = (),
) -> list[Any]:
    """Walks a closed jaxpr in program order with ``visitor``; returns the output facts.

    Args:
      closed_jaxpr: the program (e.g. :attr:`ModelGraph.jaxpr`).
      facts: one fact per input variable of the jaxpr.
      visitor: a :class:`Visitor`.
      path: the path prefix of this jaxpr's equations (``()`` at the top level).
      regions: the enclosing regions (``()`` at the top level).

    Returns:
      The facts of the jaxpr's outputs.
    """
    jaxpr = closed_jaxpr.jaxpr
    if len(facts) != len(jaxpr.invars):
        raise ValueError(f"walk: {len(jaxpr.invars)} input facts needed, got {len(facts)}")
    env: dict[Any, Any] = {}
    for v, c in zip(jaxpr.constvars, closed_jaxpr.consts, strict=True):
        env[v] = visitor.constant(c)
    for v, f in zip(jaxpr.invars, facts, strict=True):
        env[v] = f

    def read(atom):
        return visitor.literal(atom.val) if isinstance(atom, Literal) else env[atom]

    for i, eqn in enumerate(jaxpr.eqns):
        ctx = EqnContext(eqn, (*path, i), regions)
        outs = _walk_eqn(ctx, [read(a) for a in eqn.invars], visitor)
        if len(outs) != len(eqn.outvars):
            raise ValueError(
                f"visitor returned {len(outs)} facts for {eqn.primitive.name} at {ctx.path}, "
                f"which has {len(eqn.outvars)} outputs"
            )
        for v, f in zip(eqn.outvars, outs, strict=True):
            env[v] = f
    return [read(a) for a in jaxpr.outvars]


def _fixpoint(carry: list[Any], run: Callable[[list[Any]], list[Any]], visitor, ctx) -> list:
    """Runs ``run(carry) -> carry_out`` until ``join(carry, carry_out) == carry``."""
    for _ in range(_MAX_FIXPOINT_ITERATIONS):
        out = run(carry)
        new = [visitor.join([c, o]) for c, o in zip(carry, out, strict=True)]
        if new == carry:
            return carry
        carry = new
    raise RuntimeError(
        f"walk: loop-carry facts of {ctx.eqn.primitive.name} at {ctx.path} did not converge"
    )


def _walk_eqn(ctx: EqnContext, ins: list[Any], visitor: Visitor) -> list[Any]:
    eqn, name = ctx.eqn, ctx.eqn.primitive.name
    body = call_body(eqn)
    if body is not None:
        return walk(body, ins, visitor, path=(*ctx.path, 0), regions=ctx.regions)
    if name == "scan":
        p = eqn.params
        nc, nk = p["num_consts"], p["num_carry"]
        consts, init, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]
        sliced = [visitor.scan_slice(ctx, f) for f in xs]
        region = (*ctx.regions, Region("scan", ctx.path, eqn))
        outs: list[Any] = []

        def run(carry):
            outs[:] = walk(
                p["jaxpr"], consts + carry + sliced, visitor, path=(*ctx.path, 0), regions=region
            )
            return outs[:nk]

        carry = _fixpoint(list(init), run, visitor, ctx)
        return carry + [visitor.scan_stack(ctx, f) for f in outs[nk:]]
    if name == "cond":
        branch_outs = [
            walk(
                br,
                ins[1:],
                visitor,
                path=(*ctx.path, b),
                regions=(*ctx.regions, Region("cond", ctx.path, eqn, b)),
            )
            for b, br in enumerate(eqn.params["branches"])
        ]
        return [visitor.join(list(col)) for col in zip(*branch_outs, strict=True)]
    if name == "while":
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]

        def run(carry):
            return walk(
                p["body_jaxpr"],
                bconsts + carry,
                visitor,
                path=(*ctx.path, 1),
                regions=(*ctx.regions, Region("while_body", ctx.path, eqn)),
            )

        carry = _fixpoint(list(init), run, visitor, ctx)
        walk(
            p["cond_jaxpr"],
            cconsts + carry,
            visitor,
            path=(*ctx.path, 0),
            regions=(*ctx.regions, Region("while_cond", ctx.path, eqn)),
        )
        return carry
    return list(visitor.equation(ctx, ins))


def eqn_at(closed_jaxpr: ClosedJaxpr, path: Path) -> Any:
    """The equation at ``path`` (see :data:`Path`) in ``closed_jaxpr``."""
    jaxpr = closed_jaxpr.jaxpr
    eqn = jaxpr.eqns[path[0]]
    rest = path[1:]
    while rest:
        sub, idx, rest = rest[0], rest[1], rest[2:]
        body = call_body(eqn)
        if body is not None:
            j = body
        elif eqn.primitive.name == "scan":
            j = eqn.params["jaxpr"]
        elif eqn.primitive.name == "cond":
            j = eqn.params["branches"][sub]
        elif eqn.primitive.name == "while":
            j = eqn.params["cond_jaxpr" if sub == 0 else "body_jaxpr"]
        else:
            raise ValueError(f"no sub-jaxpr {sub} in {eqn.primitive.name}")
        eqn = j.jaxpr.eqns[idx]
    return eqn


# ----------------------------------------------------------------------------- weight views


def reshape_groups(
    in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[tuple[list[int], list[int]]]:
    """Pairs the non-size-1 axes of a reshape into the smallest runs of equal element count.

    Each ``(old_axes, new_axes)`` run holds the same elements before and after the reshape
    (row-major): a rename, a merge, a split, or a regrouping (several axes on both sides).

    Examples:
      >>> from jaxprune._src.model_graph import reshape_groups
      >>> reshape_groups((2, 3, 4), (6, 1, 4))
      [([0, 1], [0]), ([2], [2])]
    """
    old = [i for i, s in enumerate(in_shape) if s != 1]
    new = [j for j, s in enumerate(out_shape) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(old):
        go, gn = [old[i]], [new[j]]
        po, pn = in_shape[old[i]], out_shape[new[j]]
        i, j = i + 1, j + 1
        while po != pn:
            if po < pn:
                go.append(old[i])
                po *= in_shape[old[i]]
                i += 1
            else:
                gn.append(new[j])
                pn *= out_shape[new[j]]
                j += 1
        groups.append((go, gn))
    return groups


@dataclasses.dataclass(frozen=True)
class WeightView:
    """A value that is parameter leaf ``leaf`` with only its layout changed (see module doc).

    Attributes:
      leaf: index of the parameter leaf (into :attr:`ModelGraph.param_names`).
      leaf_shape: the leaf's shape.
      blocks: ``(lx, ox)`` pairs: leaf axes ``lx`` hold exactly the elements of operand axes
        ``ox``, both read row-major. Every leaf axis not consumed by a scan is in exactly one
        ``lx``; every axis of the value is in exactly one ``ox``.
      slices: ``(leaf_axis, start, stop, stride)`` static slices applied to leaf axes.
      scans: ``(scan_path, leaf_axis, length)`` for each enclosing ``scan`` that slices the
        leaf along ``leaf_axis`` (stacked per-layer weights), outermost first.
    """

    leaf: int
    leaf_shape: tuple[int, ...]
    blocks: tuple[Block, ...]
    slices: tuple[tuple[int, int, int, int], ...] = ()
    scans: tuple[tuple[Path, int, int], ...] = ()

    @classmethod
    def of_leaf(cls, leaf: int, shape: Sequence[int]) -> WeightView:
        """The leaf itself: one rename block per axis."""
        return cls(leaf, tuple(shape), tuple(((a,), (a,)) for a in range(len(shape))))

    def leaf_axis_size(self, axis: int) -> int:
        """The size of leaf axis ``axis`` in this view (after slicing)."""
        for a, start, stop, stride in self.slices:
            if a == axis:
                return len(range(start, stop, stride))
        return self.leaf_shape[axis]

    def block_of(self, operand_axis: int) -> Block:
        for block in self.blocks:
            if operand_axis in block[1]:
                return block
        raise KeyError(operand_axis)

    @property
    def scan_axes(self) -> tuple[int, ...]:
        return tuple(a for _, a, _ in self.scans)

    def _with_blocks(self, blocks) -> WeightView:
        blocks = tuple((tuple(lx), tuple(ox)) for lx, ox in blocks if lx or ox)
        return dataclasses.replace(self, blocks=blocks)

    # Layout transfer functions: each returns the new view, or a str saying why not.

    def transpose(self, perm: Sequence[int]) -> WeightView:
        new_of = {old: new for new, old in enumerate(perm)}
        return self._with_blocks([(lx, [new_of[o] for o in ox]) for lx, ox in self.blocks])

    def broadcast_in_dim(self, in_shape, out_shape, bdims) -> WeightView | str:
        for j, d in enumerate(bdims):
            if in_shape[j] != out_shape[d]:
                return "broadcast_in_dim expands an axis of the weight"
        new_axes = sorted(set(range(len(out_shape))) - set(bdims))
        if any(out_shape[d] != 1 for d in new_axes):
            return "broadcast_in_dim broadcasts the weight to a larger shape"
        blocks = [(lx, [bdims[o] for o in ox]) for lx, ox in self.blocks]
        return self._with_blocks(blocks + [((), (d,)) for d in new_axes])

    def reshape(self, in_shape, out_shape) -> WeightView | str:
        if 0 in in_shape:
            return "reshape of an empty weight"
        # Size-1 axes carry no elements: drop the old ones, add the new ones as blocks.
        blocks = [(lx, [o for o in ox if in_shape[o] != 1]) for lx, ox in self.blocks]
        blocks = [(lx, ox) for lx, ox in blocks if lx or ox]
        groups = reshape_groups(in_shape, out_shape)
        owner = {o: b for b, (_, ox) in enumerate(blocks) for o in ox}
        replace: dict[int, list[int]] = {}
        merged: list[Block] = []
        gone: set[int] = set()
        for go, gn in groups:
            if len(go) == 1:
                replace[go[0]] = gn  # a rename or a row-major split of one operand axis
                continue
            # Several old axes: they must be whole blocks, each in its row-major order.
            k = 0
            lxs: list[int] = []
            while k < len(go):
                b = owner[go[k]]
                lx, ox = blocks[b]
                if list(go[k : k + len(ox)]) != list(ox):
                    return "reshape mixes axes of the weight"
                lxs.extend(lx)
                gone.add(b)
                k += len(ox)
            merged.append((tuple(lxs), tuple(gn)))
        out: list[tuple[tuple[int, ...], Sequence[int]]] = []
        for b, (lx, ox) in enumerate(blocks):
            if b in gone:
                continue
            out.append((lx, [n for o in ox for n in replace[o]]))
        out += merged
        out += [((), (d,)) for d, s in enumerate(out_shape) if s == 1]
        return self._with_blocks(out)

    def slice(self, in_shape, start, limit, strides) -> WeightView | str:
        strides = strides or (1,) * len(in_shape)
        slices = list(self.slices)
        for d, (s0, s1, st) in enumerate(zip(start, limit, strides, strict=True)):
            if (s0, s1, st) == (0, in_shape[d], 1):
                continue
            lx, ox = self.block_of(d)
            if len(lx) != 1 or len(ox) != 1 or any(a == lx[0] for a, *_ in slices):
                return "slice of a reshaped or already sliced weight axis"
            slices.append((lx[0], s0, s1, st))
        return dataclasses.replace(self, slices=tuple(slices))

    def scan_slice(self, scan_path: Path, length: int) -> WeightView | str:
        lx, ox = self.block_of(0)
        if len(lx) != 1 or ox != (0,) or any(a == lx[0] for a, *_ in self.slices):
            return "scanned over an axis that is not one whole axis of the weight"
        blocks = [(lx2, [o - 1 for o in ox2]) for lx2, ox2 in self.blocks if (lx2, ox2) != (lx, ox)]
        view = self._with_blocks(blocks)
        return dataclasses.replace(view, scans=(*self.scans, (scan_path, lx[0], length)))


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
        elif sub_jaxprs(eqn) and any(_contains_matmul(j) for j in sub_jaxprs(eqn)):
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
      >>> from jaxprune._src import model_graph
      >>> params = {"w": jnp.ones((3, 4)), "emb": jnp.ones((10, 4))}
      >>> fn = lambda p, x: (x @ p["w"]) @ p["emb"].T
      >>> print(model_graph.trace(fn, params, jnp.ones((2, 3))).summary())
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


def _bind(eqn, ins):
    return bind_equation(eqn, ins)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


class _Interpreter:
    def __init__(self, graph: ModelGraph, hook: Hook):
        self.hook = hook
        self.uses_at: dict[Path, list[ParamUse]] = {}
        self.prefixes: set[Path] = set()
        self.specs: dict[tuple[Path, int], Any] = {}
        for u in graph.uses:
            self.uses_at.setdefault(u.path, []).append(u)
            self.prefixes.update(u.path[:k] for k in range(1, len(u.path)))
            act = jax.ShapeDtypeStruct(u.activation_shape, u.activation_dtype)
            w = jax.ShapeDtypeStruct(u.weight_shape, u.weight_dtype)
            self.specs[u.key] = jax.eval_shape(lambda a, w, u=u: hook(u, a, w), act, w)
        self.uses = graph.uses

    def under(self, prefix: Path) -> list[ParamUse]:
        return [u for u in self.uses if u.path[: len(prefix)] == prefix]

    def zeros(self, use: ParamUse, scope: Path) -> Any:
        """Zero stats of ``use`` as seen from the jaxpr at ``scope`` (inner scans stacked)."""
        lead = tuple(n for p, _, n in use.view.scans if p[: len(scope)] == scope)
        return jax.tree.map(
            lambda s: jnp.zeros(lead + tuple(s.shape), s.dtype), self.specs[use.key]
        )

    def eval(self, closed: ClosedJaxpr, args: Sequence[Any], prefix: Path):
        jaxpr = closed.jaxpr
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, closed.consts, strict=True):
            env[v] = c
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a

        def read(atom):
            return atom.val if isinstance(atom, Literal) else env[atom]

        acc: dict[tuple[Path, int], Any] = {}
        for i, eqn in enumerate(jaxpr.eqns):
            path = (*prefix, i)
            ins = [read(a) for a in eqn.invars]
            if path in self.prefixes:
                outs, sub = self.structured(eqn, path, ins)
                acc.update(sub)
            else:
                outs = _bind(eqn, ins)
                for u in self.uses_at.get(path, ()):
                    acc[u.key] = self.hook(u, ins[u.activation_operand], ins[u.weight_operand])
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
            uses = self.under(scope)
            stacked = {u.key for u in uses if any(s[0] == path for s in u.view.scans)}
            summed0 = {u.key: self.zeros(u, scope) for u in uses if u.key not in stacked}

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
            uses = self.under(path)
            branches = p["branches"]

            def make(b):
                def branch(*ops):
                    outs, acc = self.eval(branches[b], list(ops), (*path, b))
                    full = {
                        u.key: acc[u.key] if u.key in acc else self.zeros(u, path) for u in uses
                    }
                    return outs, full

                return branch

            outs, acc = jax.lax.switch(ins[0], [make(b) for b in range(len(branches))], *ins[1:])
            return list(outs), acc
        if name == "while":
            cn, bn = p["cond_nconsts"], p["body_nconsts"]
            cconsts, bconsts, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
            scope = (*path, 1)
            s0 = {u.key: self.zeros(u, scope) for u in self.under(scope)}

            def cond_fun(carry):
                return self.eval(p["cond_jaxpr"], [*cconsts, *carry[0]], (*path, 0))[0][0]

            def body_fun(carry):
                c, s = carry
                outs, acc = self.eval(p["body_jaxpr"], [*bconsts, *c], scope)
                return outs, {k: _add(v, acc[k]) for k, v in s.items()}

            c, s = jax.lax.while_loop(cond_fun, body_fun, (list(init), s0))
            return list(c), s
        raise AssertionError(f"uses inside {name} at {path}")  # pragma: no cover


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
      >>> from jaxprune._src import model_graph
      >>> params = {"w": jnp.ones((3, 2))}
      >>> fn = lambda p, x: x @ p["w"]
      >>> x = jnp.arange(6.0).reshape(2, 3)
      >>> graph = model_graph.trace(fn, params, x)
      >>> hook = lambda use, act, w: jnp.sum(act, axis=0)
      >>> out, stats = jax.jit(lambda p, x: model_graph.interpret(graph, hook, p, x))(params, x)
      >>> stats[graph.uses[0].key].tolist()
      [3.0, 5.0, 7.0]
    """
    flat, in_tree = jax.tree.flatten((params, *args))
    if in_tree != graph.in_tree:
        raise ValueError(
            f"interpret: (params, *args) has structure {in_tree}, the graph was traced with "
            f"{graph.in_tree}"
        )
    for i, (x, v) in enumerate(zip(flat, graph.jaxpr.jaxpr.invars, strict=True)):
        if tuple(np.shape(x)) != tuple(v.aval.shape):
            raise ValueError(
                f"interpret: input leaf {i} has shape {np.shape(x)}, traced with {v.aval.shape}"
            )
    interp = _Interpreter(graph, hook)
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
