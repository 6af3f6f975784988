"""The optax transform: gradual magnitude pruning as one chainable GradientTransformation."""

from __future__ import annotations

import dataclasses
import functools
import numbers
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxprune._src import allocation
from jaxprune._src import tree as tree_lib
from jaxprune._src.hparams import PruningHParams, as_hparams
from jaxprune._src.schedule import sparsity_schedule
from jaxprune._src.state import PruningState

SparsityArg = Callable[[jax.Array], jax.typing.ArrayLike] | float | None


@dataclasses.dataclass(frozen=True)
class _LeafPlan:
    """What is static about one prunable leaf: its resolved rule and its sparsity schedule."""

    rule: allocation.LeafRule
    schedule: Callable[[jax.Array], jax.Array]

    @property
    def name(self) -> str:
        return self.rule.name


class _Pruner:
    """The shared machinery of :func:`magnitude_pruning` and :class:`Pruning`."""

    def __init__(self, hparams: Any, sparsity: SparsityArg, params_filter: Any):
        self.hparams = as_hparams(hparams)
        self.params_filter = params_filter
        hp = self.hparams
        if sparsity is None:
            self.external = False
            self.schedule = sparsity_schedule(hp)
        else:
            self.external = True
            self.schedule = _as_schedule(sparsity)
            if hp.weight_sparsity_map and hp.target_sparsity == 0.0:
                raise ValueError(
                    "With an external sparsity schedule, weight_sparsity_map targets scale the "
                    "schedule by target_w / target_sparsity (as in TF), so target_sparsity must "
                    f"be > 0; got target_sparsity={hp.target_sparsity}"
                )
        if params_filter is not None and not callable(params_filter):
            jax.tree.leaves(params_filter)  # must at least be a pytree

    def plan(self, params: Any):
        """Flattens params and resolves each prunable leaf's rule and schedule (once)."""
        leaves, treedef, names, prunable = tree_lib.leaf_names_and_prunable(
            params, self.params_filter
        )
        rules = allocation.resolve_rules(self.hparams, names, leaves, prunable)
        plans = [None if rule is None else self._leaf_plan(rule) for rule in rules]
        return leaves, treedef, plans

    def _leaf_plan(self, rule: allocation.LeafRule) -> _LeafPlan:
        """The rule's sparsity schedule: TF's polynomial ramp to the weight's own target, or
        (external schedule) TF's scaling of the global schedule by ``target_w / target``."""
        hp = self.hparams
        if rule.scope == "global" or (rule.target == hp.target_sparsity and not rule.fixed):
            return _LeafPlan(rule, self.schedule)
        if not self.external:
            return _LeafPlan(rule, sparsity_schedule(hp, target_sparsity=rule.target))
        if hp.target_sparsity == 0.0:
            raise ValueError(
                f"With an external sparsity schedule, weight {rule.name!r}'s own target "
                f"({rule.target!r}, from weight_sparsity_map or ERK) scales the schedule by "
                "target_w / target_sparsity (as in TF), so target_sparsity must be > 0; got "
                f"target_sparsity={hp.target_sparsity}"
            )
        scale = jnp.float32(rule.target / hp.target_sparsity)

        def schedule(step, _base=self.schedule, _scale=scale):
            return _base(step) * _scale

        return _LeafPlan(rule, schedule)

    def global_sparsity(self, step: jax.Array) -> jax.Array:
        return jnp.asarray(self.schedule(step), jnp.float32)

    def init(self, params: Any) -> PruningState:
        params = tree_lib.unbox(params)
        leaves, treedef, plans = self.plan(params)
        self._warn_unmatched(plans)
        masks = [
            optax.MaskedNode() if plan is None else _all_true_like(leaf)
            for leaf, plan in zip(leaves, plans, strict=True)
        ]
        thresholds = [
            optax.MaskedNode() if plan is None else jnp.zeros((), jnp.float32) for plan in plans
        ]
        # Distinct buffers for every leaf: users donate optimizer states to jit.
        zero = jnp.zeros((), jnp.int32)
        return PruningState(
            count=zero,
            last_update_step=jnp.zeros((), jnp.int32),
            sparsity=self.global_sparsity(zero),
            masks=treedef.unflatten(masks),
            thresholds=treedef.unflatten(thresholds),
        )

    def _warn_unmatched(self, plans) -> None:
        names = [p.name for p in plans if p is not None]
        hp = self.hparams
        for field in ("weight_sparsity_map", "block_dims_map"):
            for entry in getattr(hp, field):
                regex = entry.rsplit(":", 1)[0]
                if not any(re.search(regex, n) for n in names):
                    warnings.warn(
                        f"{field} entry {entry!r} matches no pruned parameter "
                        f"(pruned parameters: {names})",
                        stacklevel=4,
                    )

    def mask_update(
        self,
        params: Any,
        state: PruningState,
        step: jax.Array,
        force: bool,
        updates: list[Any] | None = None,
        return_updates: bool = False,
    ) -> PruningState | tuple[PruningState, list[Any]]:
        """TF's ``mask_update_op`` (force=True) or ``conditional_mask_update_op`` at ``step``.

        With ``updates`` (flat, aligned with params' leaves) the masks are those
        of ``params + updates``; the sum is only formed when masks update.
        With ``return_updates`` the pruned leaves' updates are also returned (a
        list aligned with the pruned leaves), routed through the ``lax.cond``s
        (perf only, values unchanged): a cond reads them anyway, so XLA
        materialises the optimizer's update once, and the caller's
        ``where(mask, u, -p)`` reads that buffer instead of keeping a second
        intermediate of the optimizer alive.

        Each group of leaves (see :func:`_batches`) has its own ``lax.cond``, so
        XLA can apply one layer's update as soon as its gradient is ready and
        only one group's updates need to be materialised at a time.
        """
        params = tree_lib.unbox(params)
        state = tree_lib.unbox(state)
        leaves, treedef, plans = self.plan(params)
        old_masks = treedef.flatten_up_to(state.masks)
        old_thresholds = treedef.flatten_up_to(state.thresholds)
        step = jnp.asarray(step, jnp.int32)
        idx = [i for i, plan in enumerate(plans) if plan is not None]
        should = None if force else self.should_update(step, state.last_update_step)
        masks, thresholds = list(old_masks), list(old_thresholds)
        passed = {}
        for members in _batches(idx, leaves, plans):
            rule = plans[members[0]].rule
            if rule.scope == "global":
                sparsities = [self.global_sparsity(step)]
            else:
                sparsities = [jnp.asarray(plans[i].schedule(step), jnp.float32) for i in members]
            operands = (
                [leaves[i] for i in members],
                [updates[i] for i in members] if updates is not None else None,
                [jnp.asarray(old_thresholds[i], jnp.float32) for i in members],
                [old_masks[i] for i in members],
                sparsities,
            )
            update = functools.partial(self._group_update, rule=rule, passing=return_updates)
            if force:
                new_t, new_m, group_passed = update(operands)
            else:
                new_t, new_m, group_passed = jax.lax.cond(
                    should, update, functools.partial(_keep, passing=return_updates), operands
                )
            for j, i in enumerate(members):
                thresholds[i], masks[i] = new_t[j], new_m[j]
                if return_updates:
                    passed[i] = group_passed[j]
        last = step if force else jnp.where(should, step, state.last_update_step)
        new_state = PruningState(
            count=step,
            last_update_step=jnp.asarray(last, jnp.int32),
            sparsity=self.global_sparsity(step),
            masks=treedef.unflatten(masks),
            thresholds=treedef.unflatten(thresholds),
        )
        return (new_state, [passed[i] for i in idx]) if return_updates else new_state

    def _group_update(self, operands, rule, passing):
        """New thresholds and masks of one group of leaves (the true branch of its cond)."""
        params, updates, thresholds, _, sparsities = operands
        weights = params
        if updates is not None:
            weights = [(p + u).astype(p.dtype) for p, u in zip(params, updates, strict=True)]
        hp = self.hparams
        if rule.scope == "global":
            # One threshold over the whole pool, counted over every weight in place.
            t, new_m = allocation.global_masks(weights, sparsities[0], thresholds[0], hp)
            new_t = [t] * len(weights)
        elif len(weights) == 1:
            t, m = allocation.leaf_mask(weights[0], sparsities[0], thresholds[0], rule, hp)
            new_t, new_m = [t], [m]
        else:
            # Same-shaped small leaves with the same rule share one (vmapped) mask computation:
            # one selection loop to compile instead of one per leaf. Same results leaf by leaf.
            t, m = jax.vmap(lambda w, s, th: allocation.leaf_mask(w, s, th, rule, hp))(
                jnp.stack(weights), jnp.stack(sparsities), jnp.stack(thresholds)
            )
            new_t, new_m = list(t), list(m)
        # The barrier only stops JAX from forwarding the pass-through out of the cond.
        passed = list(jax.lax.optimization_barrier(tuple(updates))) if passing else []
        return new_t, new_m, passed

    def should_update(self, step: jax.Array, last_update_step: jax.Array) -> jax.Array:
        """SPEC §3: in [begin, end] (end -1 = forever) and frequency steps since the last update."""
        hp = self.hparams
        in_range = step >= hp.begin_pruning_step
        if hp.end_pruning_step != -1:
            in_range = in_range & (step <= hp.end_pruning_step)
        return in_range & (last_update_step + hp.pruning_frequency <= step)


def _keep(operands, passing):
    """The false branch of a group's cond: the old thresholds and masks."""
    _, updates, thresholds, masks, _ = operands
    return thresholds, masks, (updates if passing else [])


# Same-shaped leaves are masked in one batch of at most this many elements in all.
_BATCH_MAX_ELEMENTS = 1 << 20


def _batches(idx: list[int], leaves: list[Any], plans: list[Any]) -> list[list[int]]:
    """Groups pruned leaves into batches that share one vmapped mask computation.

    A batch holds leaves of one shape, dtype and rule (structure and scope), at
    most ``_BATCH_MAX_ELEMENTS`` elements in all (a larger leaf, or one sharded
    over explicit mesh axes, is a batch of its own). The weights of a global
    scope form one batch: they share one threshold.
    """
    groups: dict[Any, list[list[int]]] = {}
    pool = [i for i in idx if plans[i].rule.scope == "global"]
    for i in idx:
        if plans[i].rule.scope == "global":
            continue
        w = leaves[i]
        sharding = getattr(jax.typeof(w), "sharding", None)
        explicit = sharding is not None and bool(getattr(sharding.mesh, "explicit_axes", ()))
        rule = plans[i].rule
        key = ("single", i) if explicit else (w.shape, w.dtype, rule.structure, rule.scope)
        batches = groups.setdefault(key, [[]])
        if batches[-1] and (len(batches[-1]) + 1) * w.size > _BATCH_MAX_ELEMENTS:
            batches.append([])
        batches[-1].append(i)
    return [batch for batches in groups.values() for batch in batches] + ([pool] if pool else [])


def _all_true_like(leaf: Any) -> jax.Array:
    """An all-True bool mask shaped and sharded like ``leaf``, also under ``jit``.

    ``jnp.ones_like`` of a traced leaf on an Auto-axes mesh is a constant that GSPMD
    replicates (or puts on one device); deriving the mask elementwise from the leaf lets
    sharding propagation give it the leaf's sharding.
    """
    nan = jnp.isnan(leaf)
    return nan | ~nan


def _as_schedule(sparsity: Any) -> Callable[[jax.Array], jax.typing.ArrayLike]:
    if callable(sparsity):
        return sparsity
    if isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool):
        value = float(sparsity)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        return lambda step: jnp.float32(value)
    raise ValueError(
        f"sparsity must be a schedule (a callable step -> sparsity) or a number, got {sparsity!r}"
    )


def magnitude_pruning(
    hparams: PruningHParams | None = None,
    *,
    sparsity: SparsityArg = None,
    params_filter: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Gradual magnitude pruning (Zhu & Gupta 2017) as a chainable optax transform.

    Put it last in a chain, e.g.
    ``optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(hparams))``. The
    n-th ``update`` acts at global step ``n`` (TF's mask update after the n-th
    training step): when the step is within ``[begin_pruning_step,
    end_pruning_step]`` and at least ``pruning_frequency`` steps after the last
    update, the masks are recomputed from the new weights ``params + updates``
    at the scheduled sparsity (inside a ``lax.cond``; other steps only apply the
    masks). The returned updates make ``params + updates`` the masked new
    weights: pruned weights are exactly 0 after every step, and kept weights
    get exactly the incoming updates.

    Args:
      hparams: pruning hyperparameters (:func:`get_pruning_hparams`); None
        means TF's defaults. A dict or TF HParams string is also accepted.
      sparsity: an external sparsity schedule ``step -> sparsity`` (any optax
        schedule) or a constant, replacing the built-in polynomial schedule
        like TF's ``sparsity`` constructor argument. weight_sparsity_map
        targets then scale it by ``target_w / target_sparsity``.
      params_filter: which leaves are pruned: a callable ``(name, leaf) ->
        bool`` or a pytree of bools shaped like params. Default:
        floating-point leaves with ``ndim >= 2``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`PruningState` and whose ``update`` needs ``params``.

    Raises:
      ValueError: at construction, for invalid hparams or sparsity; in
        ``update``, if ``params`` is not given.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxprune
      >>> hp = jaxprune.get_pruning_hparams().replace(
      ...     target_sparsity=0.75, pruning_frequency=1, sparsity_function_end_step=4)
      >>> tx = optax.chain(optax.sgd(0.0), jaxprune.magnitude_pruning(hp))
      >>> params = {"w": jnp.arange(1., 9.).reshape(2, 4)}
      >>> state = tx.init(params)
      >>> for _ in range(4):
      ...     updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> params["w"].tolist()
      [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 7.0, 8.0]]

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
      for model compression", 2017, https://arxiv.org/abs/1710.01878
    """
    pruner = _Pruner(hparams, sparsity, params_filter)

    def init_fn(params):
        return pruner.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "jaxprune.magnitude_pruning needs the current params: call "
                "tx.update(updates, opt_state, params)"
            )
        return jitted_update(updates, state, params)

    # Compiled once, so that eager calls (outside the user's jit) do not dispatch the mask
    # update op by op; inside the user's jit it is inlined.
    @jax.jit
    def jitted_update(updates, state, params):
        params = tree_lib.unbox(params)
        updates = tree_lib.unbox(updates)
        leaves, treedef, plans = pruner.plan(params)
        update_leaves = treedef.flatten_up_to(updates)
        step = jnp.asarray(state.count, jnp.int32) + 1
        new_state, passed = pruner.mask_update(
            params, state, step, force=False, updates=update_leaves, return_updates=True
        )
        pruned = [i for i, plan in enumerate(plans) if plan is not None]
        for i, u in zip(pruned, passed, strict=True):
            update_leaves[i] = u
        masks = treedef.flatten_up_to(new_state.masks)
        out = [
            u if plan is None else jnp.where(m, u, -leaf.astype(u.dtype))
            for leaf, u, m, plan in zip(leaves, update_leaves, masks, plans, strict=True)
        ]
        return treedef.unflatten(out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
