"""Sequential calibration: each weight's statistics taken with the weights before it pruned.

SparseGPT's and llm-compressor's pipeline, on any traced model function. The model's jaxpr
(calls inlined, see :func:`flat_graph`) is cut between the top-level equations where one
weight's uses end and the next weight is first read (its matmul, or a transpose or cast of it
before that: nothing computed from a weight is cached before the weight is pruned). Every
calibration batch's *live values* at the current cut (the activations later equations read:
the residual stream and what travels with it) are cached, and the model is run forward piece
by piece:

1. advance: from the previous cut to the first use of the next group of weights, with the
   weights pruned so far;
2. statistics: from there to the group's last use, with a hook at the group's uses (norms or
   Hessians, :mod:`jaxprune._src.calibration`'s statistics);
3. prune the group (Wanda or SparseGPT) and go on.

A group is one weight, or several whose uses interleave (a weight used again after later
weights, weights inside one ``scan`` / loop), which are calibrated together.

References:
  Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
  ICML 2023, https://arxiv.org/abs/2301.00774;
  llm-compressor's sequential pipeline, https://github.com/vllm-project/llm-compressor
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from jaxprune._src import calibrated, calibration, sparsegpt, wanda
from jaxprune._src import jaxpr as mg
from jaxprune._src import layout as layout_lib
from jaxprune._src import tree as tree_lib

_METHODS = ("sparsegpt", "wanda")
_SEGMENT_CACHE_SIZE = 256
# (segment text, statistic noun, hooked uses) -> jitted function; least recently used first.
_SEGMENT_CACHE: collections.OrderedDict = collections.OrderedDict()


def _no_stats(use, act, weight):
    del use, act, weight
    return ()


def flat_graph(graph: mg.ModelGraph, params: Any, *args: Any) -> mg.ModelGraph:
    """The graph re-traced with every call that holds a matmul use inlined at the top level.

    (``jit``-ed models, nnx's ``merge`` / ``split`` calls, ``custom_jvp`` wrappers: their
    equations become top-level equations, so that cuts can fall between them.)
    """
    return mg.trace(lambda p, *a: mg.interpret(graph, _no_stats, p, *a)[0], params, *args)


@dataclasses.dataclass(frozen=True)
class Group:
    """Weights calibrated together: from the first top-level equation that reads one of them
    to the last that uses one as a matmul weight."""

    first: int
    last: int
    leaves: tuple[int, ...]


def spans(graph: mg.ModelGraph, leaves: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Per weight: the first top-level equation that reads it (or anything computed from it,
    such as its transpose) and the last one that uses it as a matmul weight."""
    leaves = set(leaves)
    jaxpr = graph.jaxpr.jaxpr
    deps: dict[Any, frozenset] = {
        v: frozenset({i}) for i, v in enumerate(jaxpr.invars[: graph.num_params]) if i in leaves
    }
    first: dict[int, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        d = frozenset().union(
            *(deps.get(v, frozenset()) for v in eqn.invars if not isinstance(v, Literal))
        )
        for leaf in d:
            first.setdefault(leaf, i)
        if d:
            for v in eqn.outvars:
                deps[v] = d
    last: dict[int, int] = {}
    for u in graph.uses:
        if u.leaf in leaves:
            last[u.leaf] = max(last.get(u.leaf, -1), u.path[0])
    return {leaf: (first[leaf], last[leaf]) for leaf in last}


def groups_in_order(spans: dict[int, tuple[int, int]]) -> list[Group]:
    """The weights in the order the model first reads them, merged where their spans overlap."""
    groups: list[Group] = []
    for leaf in sorted(spans, key=lambda k: (spans[k][0], k)):
        first, last = spans[leaf]
        if groups and first <= groups[-1].last:
            g = groups[-1]
            groups[-1] = Group(g.first, max(g.last, last), (*g.leaves, leaf))
        else:
            groups.append(Group(first, last, (leaf,)))
    return groups


def _rebase(use: mg.ParamUse, start: int) -> mg.ParamUse:
    """The use as seen from a segment starting at top-level equation ``start``."""

    def path(p):
        return (p[0] - start, *p[1:])

    view = dataclasses.replace(use.view, scans=tuple((path(p), a, n) for p, a, n in use.view.scans))
    regions = tuple(dataclasses.replace(r, path=path(r.path)) for r in use.regions)
    return dataclasses.replace(use, path=path(use.path), view=view, regions=regions)


class Program:
    """The top-level equations of a flat graph, cut into segments that run on cached values."""

    def __init__(self, graph: mg.ModelGraph):
        self.graph = graph
        jaxpr = graph.jaxpr.jaxpr
        n = graph.num_params
        self.eqns = list(jaxpr.eqns)
        self.param_index = {v: i for i, v in enumerate(jaxpr.invars[:n])}
        self.const_index = {v: i for i, v in enumerate(jaxpr.constvars)}
        self.inputs = list(jaxpr.invars[n:])
        self.defined = {v: -1 for v in jaxpr.invars}
        self.last_read: dict[Any, int] = {}
        for i, eqn in enumerate(self.eqns):
            for v in eqn.invars:
                if not isinstance(v, Literal):
                    self.last_read[v] = i
            for v in eqn.outvars:
                self.defined[v] = i
        for v in jaxpr.outvars:
            if not isinstance(v, Literal):
                self.last_read[v] = len(self.eqns)

    def _debug_info(self, n_in: int, n_out: int) -> Any:
        # The traced jaxpr's DebugInfo (a NamedTuple in every supported jax), renamed.
        info = self.graph.jaxpr.jaxpr.debug_info
        if info is None:  # pragma: no cover - older jax
            return None
        return info._replace(
            traced_for="prune_sequential segment",
            arg_names=("",) * n_in,
            result_paths=("",) * n_out,
        )

    def _cached(self, v) -> bool:
        return v not in self.param_index and v not in self.const_index

    def live(self, cut: int) -> list[Any]:
        """The cached values at ``cut``: defined before it and read at or after it."""
        return [
            v
            for v, i in self.defined.items()
            if i < cut and self.last_read.get(v, -1) >= cut and self._cached(v)
        ]

    def segment(self, start: int, stop: int, hooked: Sequence[mg.ParamUse]) -> Segment:
        """Equations ``[start, stop)``: their reads in, the values live at ``stop`` out."""
        eqns = self.eqns[start:stop]
        reads = list(dict.fromkeys(v for e in eqns for v in e.invars if not isinstance(v, Literal)))
        inner = {v for e in eqns for v in e.outvars}
        outer = [v for v in reads if v not in inner]
        params = [v for v in outer if v in self.param_index]
        consts = [v for v in outer if v in self.const_index]
        cached = [v for v in outer if self._cached(v)]
        outs = [v for v in self.live(stop) if v in inner] if not hooked else []
        effects = frozenset().union(*(e.effects for e in eqns))
        ins = params + consts + cached
        jaxpr = Jaxpr([], ins, outs, eqns, effects, self._debug_info(len(ins), len(outs)))
        avals = [v.aval for v in params]
        # The segment's inputs are the params it reads (not all of them), but its uses keep
        # their leaf numbers: param_names / param_avals stay the whole model's.
        graph = mg.ModelGraph(
            jaxpr=ClosedJaxpr(jaxpr, []),
            in_tree=jax.tree.structure((avals, [0] * len(consts), [0] * len(cached))),
            out_tree=jax.tree.structure([0] * len(outs)),
            param_names=self.graph.param_names,
            param_avals=self.graph.param_avals,
            uses=tuple(_rebase(u, start) for u in hooked),
            unresolved=(),
        )
        return Segment(
            graph=graph,
            params=[self.param_index[v] for v in params],
            consts=[self.const_index[v] for v in consts],
            cached=cached,
            outs=outs,
        )


@dataclasses.dataclass
class Segment:
    """A piece of the program: which params, constants and cached values it reads."""

    graph: mg.ModelGraph
    params: list[int]
    consts: list[int]
    cached: list[Any]
    outs: list[Any]

    def args(self, leaves: Sequence[Any], consts: Sequence[Any], env: dict) -> tuple:
        return (
            [leaves[i] for i in self.params],
            [consts[i] for i in self.consts],
            [env[v] for v in self.cached],
        )


def _jitted(segment: Segment, statistic: calibration.Statistic | None, slots: tuple[int, ...]):
    """The segment's jitted function; structurally equal segments share one."""
    key = (
        str(segment.graph.jaxpr),
        statistic.noun if statistic else None,
        tuple((u.path, u.weight_operand) for u in segment.graph.uses),
        slots,
    )
    fn = _SEGMENT_CACHE.pop(key, None)
    if fn is None:
        graph, uses = segment.graph, segment.graph.uses
        if statistic is None:

            def run(params, consts, cached):
                return mg.interpret(graph, _no_stats, params, consts, cached)[0]

            fn = jax.jit(run)
        else:

            def accumulate(totals, params, consts, cached):
                _, stats = mg.interpret(graph, statistic.hook, params, consts, cached)
                totals = list(totals)
                for u, slot in zip(uses, slots, strict=True):
                    totals[slot] = totals[slot] + statistic.to_total(u, stats[u.key])
                return totals

            fn = jax.jit(accumulate, donate_argnums=0)
    _SEGMENT_CACHE[key] = fn
    while len(_SEGMENT_CACHE) > _SEGMENT_CACHE_SIZE:
        _SEGMENT_CACHE.popitem(last=False)
    return fn


def prune_sequential(
    fn: Callable,
    params: Any,
    batches: Iterable[Any],
    hparams: Any = None,
    *,
    method: str = "sparsegpt",
    sparsity: float | None = None,
    params_filter: Any = None,
    block_size: int = 128,
    damping: float = 0.01,
) -> tuple[Any, Any]:
    """Prunes a whole model weight by weight, each from statistics of the model pruned so far.

    ``fn(params, batch)`` is traced once; its weights are pruned in the order the model uses
    them, and each weight's calibration statistic -- Hessian (``method="sparsegpt"``,
    :func:`jaxprune.sparsegpt`) or input norms (``method="wanda"``, :func:`jaxprune.wanda`) --
    is taken over the calibration batches with every earlier weight already pruned (and, for
    SparseGPT, updated), as SparseGPT's and llm-compressor's sequential pipeline do: a weight's
    statistics see the errors of the layers before it. Layouts come from the trace
    (:func:`jaxprune.weight_layouts`). Weights whose uses interleave (used again after later
    weights; inside one ``scan`` or loop) are calibrated together.

    Cost, exactly: the calibration batches' live values at the current cut are cached (the
    activations that later equations read: the residual stream and what travels with it; as
    much memory as SparseGPT's cached layer inputs). For each group of weights, every batch
    runs (1) the equations from the previous cut to the group's first use (with the weights
    pruned so far) and (2) the equations from its first to its last use, with the statistic's
    hook (for a weight used once: its own matmul, whose output is dropped). Over the whole
    model that is one forward pass up to the last pruned weight, in pieces, plus each weight's
    statistic (``rows * d**2`` flops for a Hessian) and its pruning (SparseGPT:
    ``O(out * d**2)``); with ``sparsity_distribution="owl"`` one more full forward pass on the
    dense model, for the norms of OWL's scores. Structurally equal pieces (the blocks of a
    transformer) share one compilation. Only the current group's statistics are held: for a
    7B LLaMA, one 4096 x 4096 float32 Hessian (64 MiB) at a time, 462 MiB for the 11008-wide
    down projection, instead of 27 GiB for all of them.

    Args:
      fn: the model function, called as ``fn(params, batch)``.
      params: the params pytree (``nnx.Variable`` boxes allowed; not modified).
      batches: the calibration batches, all of one shape (they are held in memory).
      hparams: hyperparameters, as for :func:`jaxprune.sparsegpt` / :func:`jaxprune.wanda`.
      method: ``"sparsegpt"`` or ``"wanda"``.
      sparsity: the target; default ``hparams.target_sparsity``.
      params_filter: which leaves are pruned (as :func:`jaxprune.prune`); default
        floating-point leaves with ``ndim >= 2`` that are matmul / conv weights.
      block_size: SparseGPT's column block size.
      damping: SparseGPT's relative dampening.

    Returns:
      ``(pruned_params, masks)`` as :func:`jaxprune.sparsegpt`.

    Raises:
      ValueError: before any computation, for a bad ``method``, hyperparameters that do not
        apply, batches of different shapes, or ``params`` given as an ``nnx.Module``.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"a": jnp.array([[1.0, 2.0], [-1.0, 0.5]]), "b": jnp.array([[1.0], [3.0]])}
      >>> fn = lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"]
      >>> batches = [jnp.array([[1.0, 0.2], [0.3, -1.0], [2.0, 1.0]])]
      >>> pruned, masks = jaxprune.prune_sequential(fn, params, batches, sparsity=0.5)
      >>> masks["a"].tolist(), masks["b"].tolist()
      ([[True, True], [False, False]], [[False], [True]])

    References:
      Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
      One-Shot", ICML 2023, https://arxiv.org/abs/2301.00774;
      Sun et al., "A Simple and Effective Pruning Approach for Large Language Models" (Wanda),
      2023, https://arxiv.org/abs/2306.11695
    """
    where = "prune_sequential"
    if method not in _METHODS:
        raise ValueError(f"{where}: method must be one of {_METHODS}, got {method!r}")
    if not callable(fn):
        raise ValueError(f"{where}: fn must be callable, got {fn!r}")
    calibration.check_params(params, where)
    damping = sparsegpt.check_damping(damping, where)
    statistic = calibration.HESSIANS if method == "sparsegpt" else calibration.NORMS
    first, rest = calibration.first_and_rest(batches, where)
    batch_list = [first, *rest]
    sig = calibration.signature(first)
    for i, b in enumerate(batch_list[1:], 1):
        if calibration.signature(b) != sig:
            raise ValueError(
                f"{where}: calibration batch {i} has another shape or structure than batch 0; "
                "the sequential pipeline runs one traced program (stack or pad the batches)"
            )
    unboxed = tree_lib.unbox(params)
    leaves, treedef, _, prunable = tree_lib.leaf_names_and_prunable(unboxed, params_filter)
    try:
        graph = flat_graph(mg.trace(fn, params, first), params, first)
    except Exception as e:
        raise ValueError(
            f"{where} could not trace fn={calibration.fn_name(fn)} as fn(params, batch) with "
            f"calibration batch 0: {type(e).__name__}: {e}"
        ) from e
    plan = calibration.Plan(graph, prunable, statistic)
    plan.warn(where, 2)
    layouts: list[Any] = [None] * len(leaves)
    for leaf, uses in plan.uses_by_leaf.items():
        lay = layout_lib.layout_of_uses(uses, tuple(leaves[leaf].shape))
        if isinstance(lay, str):  # Wanda only: norms of any use (a grouped conv)
            lay = wanda.layout_from_norms(tuple(leaves[leaf].shape), plan.shapes[leaf])
        layouts[leaf] = lay
    layout_tree = jax.tree.unflatten(treedef, layouts)

    def owl_scores(leaves, stats, lays):
        # OWL's scores: Wanda's, from one pass over the dense model (as OWL).
        del stats
        with warnings.catch_warnings():  # the plan above has warned about these leaves
            warnings.simplefilter("ignore")
            norms = calibration.collect(
                calibration.NORMS, fn, params, batch_list, params_filter, where
            )
        out: list[Any] = []
        for leaf, n, lay in zip(leaves, tree_lib.flatten_up_to(treedef, norms), lays, strict=True):
            if lay is None or n is None:
                out.append(None)
                continue
            n = wanda.broadcast_norms(where, "", tuple(leaf.shape), n)
            out.append(jnp.abs(leaf).astype(jnp.float32) * n)
        return out

    _, _, _, rules = calibrated.resolve(
        where,
        unboxed,
        layout_tree,
        hparams,
        sparsity,
        layout_tree,
        lambda n, leaf, s: s,
        owl_scores,
    )
    nm = next((r.nm for r in rules if r is not None and r.nm is not None), None)
    block_size = sparsegpt.check_block_size(block_size, nm, where)

    program = Program(graph)
    consts = list(graph.jaxpr.consts)
    current = list(leaves)
    masks: list[Any] = [None] * len(leaves)
    envs = [dict(zip(program.inputs, jax.tree.leaves(b), strict=True)) for b in batch_list]
    pos = 0
    for group in groups_in_order(spans(graph, plan.uses_by_leaf)):
        if group.first > pos:
            seg = program.segment(pos, group.first, ())
            run = _jitted(seg, None, ())
            for k, env in enumerate(envs):
                outs = run(*seg.args(current, consts, env))
                live = program.live(group.first)
                kept = {v: env[v] for v in live if v in env}
                kept.update(zip(seg.outs, outs, strict=True))
                envs[k] = kept
            pos = group.first
        hooked = [u for u in plan.uses if u.leaf in group.leaves]
        seg = program.segment(group.first, group.last + 1, hooked)
        slots = tuple(group.leaves.index(u.leaf) for u in hooked)
        accumulate = _jitted(seg, statistic, slots)
        totals = [jnp.zeros(plan.shapes[leaf], jnp.float32) for leaf in group.leaves]
        for env in envs:
            totals = accumulate(totals, *seg.args(current, consts, env))
        for leaf, total in zip(group.leaves, totals, strict=True):
            rule = rules[leaf]
            if rule is None:
                continue
            stat = plan.finish(leaf, total)
            if method == "sparsegpt":
                new, masks[leaf], ok = sparsegpt.prune_leaf(
                    current[leaf], stat, rule.layout, rule.target, rule.nm, block_size, damping
                )
                sparsegpt.check_factor(ok, rule.name, damping, where)
            else:
                norm = wanda.broadcast_norms(where, rule.name, tuple(leaves[leaf].shape), stat)
                new, masks[leaf] = wanda.mask_leaf(
                    current[leaf], norm, rule.layout, rule.target, rule.nm
                )
            current[leaf] = new
    return jax.tree.unflatten(treedef, current), jax.tree.unflatten(treedef, masks)
