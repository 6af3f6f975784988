"""Walking a jaxpr: calls inlined, ``scan`` / ``cond`` / ``while`` bodies entered.

:func:`walk` runs a forward abstract interpretation (a :class:`Visitor` chooses the *facts*
values carry) over a closed jaxpr in program order: calls (``jit``, ``remat``/``checkpoint``,
``custom_jvp_call``, ``custom_vjp_call``, ...) are inlined, and ``scan`` / ``cond`` / ``while``
bodies are entered with their operands mapped onto the body's inputs (a fixpoint over loop
carries). Equations are addressed by :data:`Path` (:func:`eqn_at`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

Path = tuple[int, ...]
"""Where an equation is: ``(i,)`` is equation ``i`` of the top-level jaxpr; ``p + (s, j)`` is
equation ``j`` of sub-jaxpr ``s`` of the equation at ``p``. Sub-jaxpr numbers: 0 for calls and
scan bodies, the branch index for ``cond``, 0 (condition) and 1 (body) for ``while``."""

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


def contains_matmul(j: Any) -> bool:
    jaxpr = j.jaxpr if isinstance(j, ClosedJaxpr) else j
    return any(
        e.primitive.name in MATMUL_PRIMITIVES or any(contains_matmul(s) for s in sub_jaxprs(e))
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
