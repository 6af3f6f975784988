"""The coupling analysis of a traced model: channel groups, their members and contractions.

:func:`couple` runs shrink's pass 1 (:class:`~jaxprune._src.shrink.coupling.Coupler`) over a
:class:`~jaxprune._src.jaxpr.ModelGraph` and returns a :class:`Coupling`: every parameter
axis's dimension, the groups (union-find classes of axes that keep one channel indexing), the
contractions that sum over each group, and why a group is left whole. It reads no parameter
value, so it serves both ``shrink`` (which then decides from the values which channels vanish)
and structured pruning, which scores and removes whole groups.

:func:`channel_groups_of` lists the groups as :class:`ChannelGroup` records: members as
``(name, axis)`` with the factor a member holds when an axis is a merge of several groups
(a query kernel's head axis is (KV head, query head in the group) in grouped-query
attention), the group's size, whether it reaches the model's outputs, and which weights
produce it (an output axis of a matmul weight) and consume it (a contracting axis).
:func:`weight_axes` gives each weight's contracting (input) and output axes over its uses, for
any layout (``(in, out)`` kernels, equinox's and torch's ``(out, in)``, einsum kernels);
:func:`reaches_output` says whether a parameter axis is an axis of the model's outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxprune._src import jaxpr as mg
from jaxprune._src.shrink.coupling import Coupler, CouplingFact
from jaxprune._src.shrink.dims import Dims, block_repeated


@dataclasses.dataclass(frozen=True)
class Member:
    """One parameter axis (or one factor of it) in a channel group.

    Attributes:
      leaf: index of the parameter leaf (into :attr:`ModelGraph.param_names`).
      name: the leaf's "/"-joined name.
      axis: the leaf axis.
      factor: which factor of the axis the group is (0 when the axis is not merged).
      factor_sizes: the sizes of the axis's factors, outermost first (``(n,)`` when the axis
        is one group); channel ``j`` of the group is every index of the axis whose row-major
        digit ``factor`` is ``j``.
    """

    leaf: int
    name: str
    axis: int
    factor: int = 0
    factor_sizes: tuple[int, ...] = ()

    @property
    def unit(self) -> int:
        """How many consecutive indices of the axis one channel of the group spans."""
        out = 1
        for s in self.factor_sizes[self.factor + 1 :]:
            out *= s
        return out


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Axes that must keep one channel indexing: removing channel ``j`` removes it from all.

    Attributes:
      root: the group's id in its :class:`Coupling`.
      size: the number of channels.
      members: the parameter axes of the group.
      blocked: why the group cannot be removed (``None`` when it can).
      reaches_output: whether the group is an axis of one of ``fn``'s outputs.
      contractions: the :data:`~jaxprune._src.jaxpr.Path` of every matmul / convolution that
        sums over the group (where a channel's contribution vanishes or not).
      producers: ``(name, axis)`` of the weights whose output axis is the group.
      consumers: ``(name, axis)`` of the weights whose contracting axis is the group.
    """

    root: int
    size: int
    members: tuple[Member, ...]
    blocked: str | None
    reaches_output: bool
    contractions: tuple[mg.Path, ...] = ()
    producers: tuple[tuple[str, int], ...] = ()
    consumers: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass
class Coupling:
    """Pass 1 over a traced model.

    Attributes:
      graph: the traced model.
      dims: the union-find of dimensions.
      coupler: the visitor (per equation: input / output dimensions, consumers, sites).
      param_dims: per parameter leaf, the dimension of each axis.
      members: per group root, its ``(leaf, axis, factor, factor sizes)`` members.
      sites_of: per group root, the contractions that sum over it.
      candidates: the groups that may be removed (not blocked, not merged, size > 1).
    """

    graph: mg.ModelGraph
    dims: Dims
    coupler: Coupler
    param_dims: list[tuple]
    members: dict[int, list]
    sites_of: dict[int, list]
    candidates: set[int]


def contracted_groups(graph, coupler, dims, path) -> list[int]:
    """The groups a matmul / convolution at ``path`` sums over (from its first operand)."""
    eqn = graph.eqn(path)
    x, _w = coupler.in_dims[path][:2]
    if eqn.primitive.name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        return [a for c in lc for a in dims.atoms(x[c])]
    dn = eqn.params["dimension_numbers"]
    return dims.atoms(x[dn.lhs_spec[1]])


def couple(graph: mg.ModelGraph, leaf_blocks: dict[int, str] | None = None) -> Coupling:
    """Runs the coupling pass over ``graph``.

    Args:
      graph: from :func:`jaxprune._src.jaxpr.trace`.
      leaf_blocks: leaves whose axes are left whole, with the reason (e.g. PRNG keys).

    Returns:
      A :class:`Coupling`.
    """
    n = graph.num_params
    invars = graph.jaxpr.jaxpr.invars
    dims = Dims()
    coupler = Coupler(dims)
    facts = []
    for i, v in enumerate(invars):
        shape = v.aval.shape
        if i < n:
            why = (leaf_blocks or {}).get(i)
            ds = tuple(dims.new(s, ("param", i, a), why) for a, s in enumerate(shape))
            facts.append(CouplingFact(ds, ("param", i), i))
        else:
            why = "an input of fn"
            ds = tuple(dims.new(s, ("arg", i, a), why) for a, s in enumerate(shape))
            facts.append(CouplingFact(ds, ("arg", i)))
    param_dims = [f.dims for f in facts[:n]]
    outs = mg.walk(graph.jaxpr, facts, coupler)
    for f in outs:
        if isinstance(f, CouplingFact):
            for dd in f.dims:
                dims.mark_output(dd)
            if f.vid is not None:
                coupler.consumers.setdefault(f.vid, set()).add(("out",))
            if f.src is not None:
                coupler.leaf_uses.setdefault(f.src, set()).add(("out",))
    for ds in param_dims:
        block_repeated(dims, ds, "the same channel axis appears twice in one parameter")
    dims.finalize()
    members: dict[int, list] = {}
    for i, ds in enumerate(param_dims):
        for axis, dd in enumerate(ds):
            atoms = dims.atoms(dd)
            sizes = tuple(dims.size[a] for a in atoms)
            for pos, a in enumerate(atoms):
                members.setdefault(a, []).append((i, axis, pos, sizes))
    sites_of: dict[int, list] = {}
    for path in coupler.sites:
        for g in contracted_groups(graph, coupler, dims, path):
            sites_of.setdefault(g, []).append(path)
    candidates = {
        g for g in members if g not in dims.blocked and g not in dims.expansion and dims.size[g] > 1
    }
    return Coupling(graph, dims, coupler, param_dims, members, sites_of, candidates)


def channel_groups_of(coupling: Coupling) -> list[ChannelGroup]:
    """Every group with a parameter member, in a deterministic order (by first member).

    Args:
      coupling: from :func:`couple`.

    Returns:
      A list of :class:`ChannelGroup`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune._src import jaxpr
      >>> from jaxprune._src.shrink import analysis
      >>> params = {"up": jnp.ones((4, 8)), "down": jnp.ones((8, 4))}
      >>> fn = lambda p, x: jax.nn.relu(x @ p["up"]) @ p["down"]
      >>> coupling = analysis.couple(jaxpr.trace(fn, params, jnp.ones((2, 4))))
      >>> [(g.size, [(m.name, m.axis) for m in g.members], g.blocked)
      ...  for g in analysis.channel_groups_of(coupling) if g.blocked is None]
      [(8, [('down', 0), ('up', 1)], None)]
    """
    graph, d = coupling.graph, coupling.dims
    by_leaf_axis: dict[tuple[int, int], list] = {}
    for u in graph.uses:
        for role, axes in (("consumer", u.contracting_axes), ("producer", u.output_axes)):
            for a in axes:
                by_leaf_axis.setdefault((u.leaf, a), []).append(role)
    out = []
    for g, mem in coupling.members.items():
        if g in d.expansion:
            continue
        members = tuple(
            Member(leaf, graph.param_names[leaf], axis, pos, sizes)
            for leaf, axis, pos, sizes in sorted(mem)
        )
        producers, consumers = [], []
        for m in members:
            roles = by_leaf_axis.get((m.leaf, m.axis), ())
            if "producer" in roles:
                producers.append((m.name, m.axis))
            if "consumer" in roles:
                consumers.append((m.name, m.axis))
        blocked = d.blocked.get(g)
        if blocked is None and d.size[g] < 2:
            blocked = "a single channel"
        out.append(
            ChannelGroup(
                root=g,
                size=d.size[g],
                members=members,
                blocked=blocked,
                reaches_output=d.reaches_output(g),
                contractions=tuple(coupling.sites_of.get(g, ())),
                producers=tuple(producers),
                consumers=tuple(consumers),
            )
        )
    out.sort(key=lambda grp: (grp.members[0].leaf, grp.members[0].axis, grp.members[0].factor))
    return out


@dataclasses.dataclass(frozen=True)
class WeightAxes:
    """How a parameter is used as a matmul / convolution weight, over all its resolved uses.

    Attributes:
      contracting: leaf axes summed over by the matmul (the input units; a convolution's
        input features and window).
      output: leaf axes that index the matmul's output (the output units).
      batch: leaf axes that are ``dot_general`` batch dimensions (an einsum's shared axis).
      uses: how many resolved uses there are.
      consistent: whether every use gives the leaf axes the same roles.
    """

    contracting: tuple[int, ...]
    output: tuple[int, ...]
    batch: tuple[int, ...]
    uses: int
    consistent: bool


def weight_axes(graph: mg.ModelGraph) -> dict[str, WeightAxes]:
    """Per weight (every leaf with a resolved matmul / convolution use), its axes' roles.

    Args:
      graph: from :func:`jaxprune._src.jaxpr.trace`.

    Returns:
      ``{name: WeightAxes}`` (leaves without a resolved use are absent).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src import jaxpr
      >>> from jaxprune._src.shrink import analysis
      >>> params = {"w": jnp.ones((4, 3)), "emb": jnp.ones((10, 4))}  # torch-style, tied
      >>> fn = lambda p, x: (x @ p["w"].T) @ p["emb"].T
      >>> axes = analysis.weight_axes(jaxpr.trace(fn, params, jnp.ones((2, 3))))
      >>> axes["w"].contracting, axes["w"].output, axes["emb"].contracting
      ((1,), (0,), (1,))
    """
    out: dict[str, WeightAxes] = {}
    for name in graph.param_names:
        uses = graph.uses_of(name)
        if not uses:
            continue
        roles = {(u.contracting_axes, u.output_axes, u.batch_axes) for u in uses}
        contracting = tuple(sorted({a for u in uses for a in u.contracting_axes}))
        output = tuple(sorted({a for u in uses for a in u.output_axes}))
        batch = tuple(sorted({a for u in uses for a in u.batch_axes}))
        out[name] = WeightAxes(contracting, output, batch, len(uses), len(roles) == 1)
    return out


def reaches_output(coupling: Coupling, name: str, axis: int) -> bool:
    """Whether parameter ``name``'s axis ``axis`` (any factor of it) is an axis of one of
    ``fn``'s outputs (a classifier's classes, an LM's vocabulary): never a removable unit."""
    leaf = coupling.graph.param_names.index(name)
    d = coupling.dims
    return any(d.reaches_output(a) for a in d.atoms(coupling.param_dims[leaf][axis]))


def describe(value: Any) -> str:
    """A short description of a value for error messages (never a whole model's repr)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return type(value).__name__
