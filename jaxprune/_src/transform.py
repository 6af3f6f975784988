"""The optax transform: gradual magnitude pruning as one chainable GradientTransformation."""

from __future__ import annotations

import copy
import dataclasses
import functools
import numbers
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import allocation, diagnostics, structure
from jaxprune._src import masks as masks_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.hparams import PruningHParams, as_hparams
from jaxprune._src.schedule import sanitize_sparsity as _sanitize_sparsity
from jaxprune._src.schedule import sparsity_schedule
from jaxprune._src.state import PruningState

SparsityArg = Callable[[jax.Array], jax.typing.ArrayLike] | float | jax.typing.ArrayLike | None


@dataclasses.dataclass(frozen=True)
class _LeafPlan:
    """What is static about one prunable leaf: its resolved rule (target, structure, scope)."""

    rule: allocation.LeafRule

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def block_dims(self) -> tuple[int, int]:
        kind = self.rule.structure
        return kind.block_dims if isinstance(kind, structure.Unstructured) else (1, 1)


class _Identity:
    """Hashes and compares an unhashable object (a pytree params_filter) by identity."""

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def _static_key(obj: Any) -> Any:
    try:
        hash(obj)
    except TypeError:
        return _Identity(obj)
    return obj


class _Pruner:
    """The shared machinery of :func:`magnitude_pruning` and :class:`Pruning`.

    Hashable by its static configuration (hparams, params_filter, kind of
    schedule), not by a constant sparsity's value, which is passed to the
    compiled update as an argument (see :meth:`bind`): rebuilding the transform
    with another sparsity (``optax.inject_hyperparams`` does, on every update)
    reuses the compiled update.
    """

    def __init__(self, hparams: Any, sparsity: SparsityArg, params_filter: Any):
        self.hparams = as_hparams(hparams)
        self.params_filter = params_filter
        hp = self.hparams
        self.base: Callable[[jax.Array], jax.typing.ArrayLike] | None = None
        self.constant: Any = None
        self.external = sparsity is not None
        if callable(sparsity):
            self.base = sparsity
        elif sparsity is not None:
            self.constant = _as_constant_sparsity(sparsity)
        if self.external and hp.weight_sparsity_map and hp.target_sparsity == 0.0:
            raise ValueError(
                "With an external sparsity schedule, weight_sparsity_map targets scale the "
                "schedule by target_w / target_sparsity (as in TF), so target_sparsity must "
                f"be > 0; got target_sparsity={hp.target_sparsity}"
            )
        if params_filter is not None and not callable(params_filter):
            jax.tree.leaves(params_filter)  # must at least be a pytree

    def _key(self) -> tuple:
        kind = "builtin" if not self.external else ("constant" if self.base is None else self.base)
        return (self.hparams, _static_key(self.params_filter), _static_key(kind))

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Pruner) and self._key() == other._key()

    def bind(self, constant: Any) -> _Pruner:
        """A copy whose constant sparsity is ``constant`` (e.g. a traced argument)."""
        bound = copy.copy(self)
        bound.constant = constant
        return bound

    def plan(self, params: Any):
        """Flattens params and resolves each prunable leaf's rule and schedule (once)."""
        leaves, treedef, names, prunable = tree_lib.leaf_names_and_prunable(
            params, self.params_filter
        )
        rules = allocation.resolve_rules(self.hparams, names, leaves, prunable)
        plans = [None if rule is None else self._leaf_plan(rule) for rule in rules]
        return leaves, treedef, names, plans

    def _leaf_plan(self, rule: allocation.LeafRule) -> _LeafPlan:
        """The rule's sparsity schedule: TF's polynomial ramp to the weight's own target, or
        (external schedule) TF's scaling of the global schedule by ``target_w / target``."""
        hp = self.hparams
        if self.external and hp.target_sparsity == 0.0 and self._own_target(rule):
            raise ValueError(
                f"With an external sparsity schedule, weight {rule.name!r}'s own target "
                f"({rule.target!r}, from weight_sparsity_map or ERK) scales the schedule by "
                "target_w / target_sparsity (as in TF), so target_sparsity must be > 0; got "
                f"target_sparsity={hp.target_sparsity}"
            )
        return _LeafPlan(rule)

    def _own_target(self, rule: allocation.LeafRule) -> bool:
        """Whether the weight follows its own target rather than the global sparsity."""
        return rule.scope != "global" and (
            rule.fixed or rule.target != self.hparams.target_sparsity
        )

    def global_sparsity(self, step: jax.Array, previous: jax.typing.ArrayLike = 0.0) -> jax.Array:
        """The scheduled global sparsity at ``step`` (an external one sanitized, see below)."""
        if not self.external:
            return jnp.asarray(sparsity_schedule(self.hparams)(step), jnp.float32)
        raw = self.constant if self.base is None else self.base(step)
        return _sanitize_sparsity(raw, previous)

    def leaf_sparsity(self, plan: _LeafPlan, step: jax.Array, global_s: jax.Array) -> jax.Array:
        """One leaf's sparsity at ``step``, given the global one."""
        hp, rule = self.hparams, plan.rule
        if not self._own_target(rule):
            return global_s
        if not self.external:
            return sparsity_schedule(hp, target_sparsity=rule.target)(step)
        # TF's scaling by target_w / target_sparsity can exceed 1: clamp it like the schedule.
        return _sanitize_sparsity(global_s * jnp.float32(rule.target / hp.target_sparsity))

    def init(self, params: Any) -> PruningState:
        boxed = params
        params = tree_lib.unbox(params)
        leaves, treedef, _, plans = self.plan(params)
        self._warn_unmatched(plans)
        self._warn_unusable_block_dims(leaves, plans)
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
            # A linen-boxed param's mask keeps the box (same shape, same partitioning); the
            # scalar thresholds are never boxed, so nn.get_partition_spec fits every leaf.
            masks=tree_lib.rebox(boxed, treedef.unflatten(masks)),
            thresholds=treedef.unflatten(thresholds),
        )

    def _warn_unmatched(self, plans) -> None:
        names = [p.name for p in plans if p is not None]
        hp = self.hparams
        for field in ("weight_sparsity_map", "block_dims_map"):
            for entry in getattr(hp, field):
                regex = entry.rsplit(":", 1)[0]
                if not any(re.search(regex, n) for n in names):
                    diagnostics.warn(
                        f"{field} entry {entry!r} matches no pruned parameter "
                        f"(pruned parameters: {names})"
                    )

    def _warn_unusable_block_dims(self, leaves, plans) -> None:
        """Warns when block dims match weights that are not 2-D after squeezing (TF's rule)."""
        _warn_unusable_block_dims(self.hparams, leaves, plans)

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
        boxed_masks = state.masks
        state = tree_lib.unbox(state)
        leaves, treedef, names, plans = self.plan(params)
        old_masks, old_thresholds = _check_state(state, treedef, leaves, names, plans)
        step = jnp.asarray(step, jnp.int32)
        idx = [i for i, plan in enumerate(plans) if plan is not None]
        should = None if force else self.should_update(step, state.last_update_step)
        global_s = self.global_sparsity(step, state.sparsity)
        masks, thresholds = list(old_masks), list(old_thresholds)
        passed = {}
        flagged: list[tuple[str, jax.Array]] = []
        # The sparsities of the previous mask update (0 before any), for _pruned_not_zero.
        last = jnp.asarray(state.last_update_step, jnp.int32)
        old_global = jnp.where(last > 0, self.global_sparsity(last, state.sparsity), 0.0)
        for members in _batches(idx, leaves, plans):
            rule = plans[members[0]].rule
            sparsities = [self.leaf_sparsity(plans[i], step, global_s) for i in members]
            operands = (
                [leaves[i] for i in members],
                [updates[i] for i in members] if updates is not None else None,
                [jnp.asarray(old_thresholds[i], jnp.float32) for i in members],
                [old_masks[i] for i in members],
                sparsities,
                [self.leaf_sparsity(plans[i], last, old_global) for i in members],
            )
            update = functools.partial(self._group_update, rule=rule, passing=return_updates)
            if force:
                new_t, new_m, group_passed, flags = update(operands)
            else:
                new_t, new_m, group_passed, flags = jax.lax.cond(
                    should, update, functools.partial(_keep, passing=return_updates), operands
                )
            if updates is not None:
                flagged += [(names[i], flags[j]) for j, i in enumerate(members)]
            for j, i in enumerate(members):
                thresholds[i], masks[i] = new_t[j], new_m[j]
                if return_updates:
                    passed[i] = group_passed[j]
        if flagged:
            _warn_if_not_last([n for n, _ in flagged], jnp.stack([f for _, f in flagged]), step)
        last = step if force else jnp.where(should, step, state.last_update_step)
        new_state = PruningState(
            count=step,
            last_update_step=jnp.asarray(last, jnp.int32),
            sparsity=global_s,
            masks=tree_lib.rebox(boxed_masks, treedef.unflatten(masks)),
            thresholds=treedef.unflatten(thresholds),
        )
        return (new_state, [passed[i] for i in idx]) if return_updates else new_state

    def _group_update(self, operands, rule, passing):
        """New thresholds and masks of one group of leaves (the true branch of its cond)."""
        params, updates, thresholds, _, sparsities, old_sparsities = operands
        weights, flags = params, jnp.zeros(len(params), bool)
        if updates is not None:
            if self.hparams.threshold_decay == 0.0:
                # The transform's incoming params are the previous step's masked weights.
                flags = _pruned_not_zero(params, thresholds, old_sparsities)
            weights = [(p + u).astype(p.dtype) for p, u in zip(params, updates, strict=True)]
        hp = self.hparams
        if rule.scope == "global":
            # One threshold over the whole pool, counted over every weight in place.
            t, new_m = allocation.global_masks(weights, sparsities[0], thresholds[0], hp)
            new_t = [t] * len(weights)
        elif len(weights) == 1:
            t, m = allocation.leaf_mask(weights[0], sparsities[0], thresholds[0], rule, hp)
            new_t, new_m = [t], [m]
        elif _elementwise(rule, weights[0].shape):
            # TF's per-weight thresholds of leaves of any shapes, in one selection loop: one
            # loop to compile instead of one per kernel shape. Same results leaf by leaf.
            new_t, new_m = masks_lib.thresholds_and_masks_each(weights, sparsities, thresholds, hp)
        else:
            # Same-shaped small leaves with the same rule share one (vmapped) mask computation:
            # one selection loop to compile instead of one per leaf. Same results leaf by leaf.
            t, m = jax.vmap(lambda w, s, th: allocation.leaf_mask(w, s, th, rule, hp))(
                jnp.stack(weights), jnp.stack(sparsities), jnp.stack(thresholds)
            )
            new_t, new_m = list(t), list(m)
        # The barrier only stops JAX from forwarding the pass-through out of the cond.
        passed = list(jax.lax.optimization_barrier(tuple(updates))) if passing else []
        return new_t, new_m, passed, flags

    def should_update(self, step: jax.Array, last_update_step: jax.Array) -> jax.Array:
        """SPEC §3: in [begin, end] (end -1 = forever) and frequency steps since the last update."""
        hp = self.hparams
        in_range = step >= hp.begin_pruning_step
        if hp.end_pruning_step != -1:
            in_range = in_range & (step <= hp.end_pruning_step)
        # step - last, not last + frequency: the sum could overflow int32 near its maximum.
        return in_range & (step - last_update_step >= hp.pruning_frequency)


def _as_constant_sparsity(sparsity: Any) -> Any:
    """A constant ``sparsity`` argument: a number or a scalar array (concrete or traced).

    A concrete value must lie in ``[0, 1)``; a traced one (``optax.inject_hyperparams``
    under ``jit``) cannot be checked and is sanitized like an external schedule's value.
    """
    if isinstance(sparsity, jax.core.Tracer):
        if sparsity.ndim != 0 or not jnp.issubdtype(sparsity.dtype, jnp.number):
            raise ValueError(
                f"sparsity must be a scalar number, got an array of shape {sparsity.shape} "
                f"and dtype {sparsity.dtype}"
            )
        return jnp.asarray(sparsity, jnp.float32)
    ok = isinstance(sparsity, numbers.Real | np.ndarray | np.generic | jax.Array)
    if isinstance(sparsity, bool | np.bool_) or not ok:
        raise ValueError(
            "sparsity must be a schedule (a callable step -> sparsity), a number or a scalar "
            f"array, got {sparsity!r}"
        )
    value = np.asarray(sparsity)
    if value.ndim != 0 or not (
        jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
    ):
        raise ValueError(
            f"sparsity must be a scalar number, got an array of shape {value.shape} and "
            f"dtype {value.dtype}"
        )
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return np.float32(float(value))


def _is_empty_node(x: Any) -> bool:
    return x is None or isinstance(x, optax.MaskedNode)


def _check_state(state: PruningState, treedef, leaves, names, plans) -> tuple[list, list]:
    """The state's masks and thresholds, flat and aligned with params' leaves.

    Raises a ValueError naming the parameter when the state does not fit params: a
    kernel whose shape changed since ``init``, or a state made (or restored from a
    checkpoint made) with another model, ``params_filter`` or hparams.
    """
    try:
        masks = treedef.flatten_up_to(state.masks)
        thresholds = treedef.flatten_up_to(state.thresholds)
    except (ValueError, TypeError):
        flat = jax.tree_util.tree_flatten_with_path(state.masks, is_leaf=_is_empty_node)[0]
        in_state = {tree_lib.path_name(path) for path, _ in flat}
        raise ValueError(
            "The pruning state does not match params: it was made by init on another params "
            "tree (or restored into another model). Parameters without an entry in the state: "
            f"{sorted(set(names) - in_state)}; state entries that are no parameter: "
            f"{sorted(in_state - set(names))}. Re-create it with tx.init(params)."
        ) from None
    for name, leaf, plan, mask in zip(names, leaves, plans, masks, strict=True):
        has_mask = hasattr(mask, "shape")
        if plan is not None and not has_mask:
            raise ValueError(
                f"Parameter {name!r} is pruned by this transform, but the pruning state has no "
                "mask for it: the state was made (or restored from a checkpoint made) with "
                "another params_filter, hparams or model. Re-create it with tx.init(params), or "
                "prune the same parameters as the state was made for."
            )
        if plan is None and has_mask:
            raise ValueError(
                f"The pruning state has a mask for {name!r}, which this transform does not "
                "prune: the state was made (or restored from a checkpoint made) with another "
                "params_filter, hparams or model. Re-create it with tx.init(params)."
            )
        if has_mask and tuple(mask.shape) != tuple(leaf.shape):
            raise ValueError(
                f"Parameter {name!r} has shape {tuple(leaf.shape)}, but its pruning mask has "
                f"shape {tuple(mask.shape)}: the parameter changed shape since the state was "
                "made. Re-create the optimizer state with tx.init(params)."
            )
    return masks, thresholds


_NOT_LAST = (
    "jaxprune.magnitude_pruning: at the mask update of step {step}, weights pruned at the "
    "previous mask update are nonzero in {names}. Something changed the updates after "
    "magnitude_pruning (a transform after it in the optax chain, e.g. adam or weight decay), "
    "or the params were changed outside the optimizer (or its updates not applied), so pruned "
    "weights are not zero although "
    "summaries report the target sparsity. Put jaxprune.magnitude_pruning last in the chain: "
    "optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(hparams))."
)


def _pruned_not_zero(params, old_thresholds, old_sparsities) -> jax.Array:
    """Per leaf: do the incoming params show that pruned weights did not stay at 0?

    With the transform last in the chain, ``params + updates`` is the masked weights after
    every step, so every weight the previous mask update pruned is exactly 0 in the
    incoming params. A transform after it (adam, weight decay, ...) changes (in practice)
    all of them: the params then have no exact zero at all, while the weights the previous
    update pruned (about ``old_sparsity * n``) sit, small, below its threshold. Looking at
    a strided sample of at most ~4096 entries, a leaf is flagged when the previous update
    pruned at least 16 of them (``old_sparsity * m >= 16``), the sample holds no exact
    zero, at least half of those ``old_sparsity * m`` are below the old threshold and at
    least half of the others are not (for block-pruned leaves the threshold is in pooled
    units, a rougher guide). With the transform last, the sample holds zeros (the weights
    pruned before) unless the previous update pruned nothing, which needs all weights
    tied at its threshold, or unless the sample misses them all (probability < e**-16):
    no false alarm in practice. A transform after it that leaves zero weights at exactly
    zero (e.g. zero gradients under plain SGD) is not detected. With ``threshold_decay``
    the smoothed threshold may prune much less than the schedule says (nothing, at first),
    so the count cannot be inferred and the check is not made.

    It reads only a sample of the params and scalars, in the mask-update branch of the
    transform's ``lax.cond`` (no cost on other steps). The old masks would say exactly which
    weights were pruned, but reading them there, or anywhere else, made XLA copy the
    (donated, updated in place) masks on every step; full-size reductions over the params
    added a temporary buffer.
    """
    samples = [_sample(p) for p in params]
    sizes = np.array([x.size for x in samples], np.float32)
    t = jax.lax.bitcast_convert_type(
        jnp.stack([jnp.asarray(x, jnp.float32) for x in old_thresholds]), jnp.int32
    )

    def keys_of(x):
        return jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32) & 0x7FFFFFFF

    if len(samples) == 1:
        # One leaf (possibly sharded over explicit mesh axes): reduce its 2-D sample as is.
        k = keys_of(samples[0])
        no_zero = (jnp.min(k) > 0)[None]  # NaN counts as nonzero, a denormal flushed as zero
        below = jnp.sum((k < t[0]) & (k > 0))[None].astype(jnp.float32)
    else:
        # The samples of all leaves, as keys, padded with the largest key (never below a
        # threshold, never the minimum): one fusion for the group, not one per leaf.
        width = int(sizes.max())
        big = np.int32(np.iinfo(np.int32).max)
        keys = jnp.stack(
            [
                jnp.pad(keys_of(x).reshape(-1), (0, width - x.size), constant_values=big)
                for x in samples
            ]
        )
        no_zero = jnp.min(keys, axis=1) > 0
        below = jnp.sum((keys < t[:, None]) & (keys > 0), axis=1).astype(jnp.float32)
    n = jnp.asarray(sizes)
    expected = jnp.stack([jnp.asarray(x, jnp.float32) for x in old_sparsities]) * n
    # Weights that all tie (the previous update then pruned nothing) and drift together
    # fall below the old threshold all at once; kept weights mostly stay above it.
    return (
        (expected >= _MIN_EXPECTED)
        & no_zero
        & (below >= 0.5 * expected)
        & (n - below >= 0.5 * (n - expected))
    )


# At most about _SAMPLE_SIDE**2 entries of each leaf are looked at.
_SAMPLE_SIDE = 64
# With the transform last, a sample expected to hold >= 16 pruned (zero) weights holds none
# with probability below e**-16: the check needs at least that many.
_MIN_EXPECTED = 16.0


def _sample(x: jax.Array) -> jax.Array:
    """A strided sample of at most about ``_SAMPLE_SIDE**2`` entries (static slices)."""
    x = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)
    return x[:: max(1, x.shape[0] // _SAMPLE_SIDE), :: max(1, x.shape[1] // _SAMPLE_SIDE)]


def _warn_if_not_last(names: list[str], flags: jax.Array, step: jax.Array) -> None:
    """Warns, naming the leaves, when :func:`_pruned_not_zero` flagged any (see ``_NOT_LAST``)."""
    diagnostics.warn_if_any(
        flags, step, names, lambda step, hits: _NOT_LAST.format(step=step, names=hits)
    )


def _warn_unusable_block_dims(hp: PruningHParams, leaves, plans) -> None:
    """Warns when block dims match pruned weights that are not 2-D after squeezing.

    TF's rule, kept: blocks apply only to weights that are 2-D once their size-1
    dimensions are squeezed away (dense kernels); conv (4-D) and attention (3-D)
    kernels are pruned element by element whatever their block dims.
    """
    by_source: dict[str, list[str]] = {}
    for leaf, plan in zip(leaves, plans, strict=True):
        if plan is None or tuple(plan.block_dims) == (1, 1):
            continue
        if len([d for d in leaf.shape if d != 1]) == 2:
            continue
        entry = hp._block_dims_entry(plan.name)
        if entry is None:
            source = (
                f"The default block dims (block_height={hp.block_height}, "
                f"block_width={hp.block_width})"
            )
        else:
            source = f"block_dims_map entry {entry!r}"
        by_source.setdefault(source, []).append(f"{plan.name} {tuple(leaf.shape)}")
    for source, weights in by_source.items():
        diagnostics.warn(
            f"{source} apply to {weights}, which are not 2-D after squeezing size-1 dimensions. "
            "As in TF, blocks apply only to 2-D weights, so these are pruned element by element "
            "(unstructured). Narrow the regex or params_filter if that is not what you want."
        )


def _match_sharding(update: Any, param: Any) -> Any:
    """On an explicit-axes mesh, gives a pruned leaf's update its param's sharding.

    Plain optax accepts e.g. replicated gradients for sharded params (``p + u`` is
    sharded like ``p``); the transform's ``where(mask, u, -p)`` needs its cases to be
    sharded alike, so ``u`` is resharded (a local slice for replicated ``u``).
    """
    p_sharding = getattr(jax.typeof(param), "sharding", None)
    u_sharding = getattr(jax.typeof(update), "sharding", None)
    if p_sharding is None or u_sharding is None:
        return update
    if not getattr(p_sharding.mesh, "explicit_axes", ()):
        return update
    if not getattr(u_sharding.mesh, "explicit_axes", ()) or u_sharding.spec == p_sharding.spec:
        return update
    if jnp.shape(update) != jnp.shape(param):
        return update
    return jax.sharding.reshard(update, p_sharding.spec)


def _keep(operands, passing):
    """The false branch of a group's cond: the old thresholds and masks."""
    params, updates, thresholds, masks, _, _ = operands
    return thresholds, masks, (updates if passing else []), jnp.zeros(len(params), bool)


# Same-shaped leaves are masked in one batch of at most this many elements in all.
_BATCH_MAX_ELEMENTS = 1 << 20
# Element-wise (TF layer) leaves of any shapes share one selection loop (and cond), up to this
# many elements in all: a cond's operands (``params + updates``) are live together on every
# step, so a large leaf keeps its own cond (XLA then materialises one update at a time).
_EACH_MAX_ELEMENTS = 1 << 20


def _elementwise(rule: allocation.LeafRule, shape: tuple[int, ...]) -> bool:
    """Whether the leaf gets TF's element-wise per-weight threshold (no blocks, no structure)."""
    kind = rule.structure
    if rule.scope != "layer" or not isinstance(kind, structure.Unstructured):
        return False
    return tuple(kind.block_dims) == (1, 1) or len([d for d in shape if d != 1]) != 2


def _batches(idx: list[int], leaves: list[Any], plans: list[Any]) -> list[list[int]]:
    """Groups pruned leaves into batches that share one mask computation (and one cond).

    Leaves with TF's element-wise per-weight rule (see :func:`_elementwise`) of any shapes
    share one vectorised selection loop, at most ``_EACH_MAX_ELEMENTS`` elements in all.
    Other rules (N:M, channel, output scope, blocks) batch leaves of one shape, dtype and
    rule into one vmapped computation, at most ``_BATCH_MAX_ELEMENTS`` elements in all. A
    larger leaf, or one sharded over explicit mesh axes, is a batch of its own. The weights
    of a global scope form one batch: they share one threshold.
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
        if explicit:
            key: Any = ("single", i)
        elif _elementwise(rule, w.shape):
            # Any shapes: one selection loop over the leaves (no stacked copy).
            key = ("each", jnp.dtype(w.dtype) == jnp.float64)
        else:
            key = (w.shape, w.dtype, rule.structure, rule.scope)
        limit = _EACH_MAX_ELEMENTS if key[0] == "each" else _BATCH_MAX_ELEMENTS
        batches = groups.setdefault(key, [[]])
        size = sum(leaves[j].size for j in batches[-1])
        if batches[-1] and size + w.size > limit:
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


def magnitude_pruning(
    hparams: PruningHParams | None = None,
    *,
    sparsity: SparsityArg = None,
    params_filter: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Gradual magnitude pruning (Zhu & Gupta 2017) as a chainable optax transform.

    Put it last in a chain, e.g.
    ``optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(hparams))``: a
    transform after it would change the updates of pruned weights, which then
    stop being 0. That is detected on mask-update steps (the weights the
    previous update pruned are not zero in the incoming params, judged on a
    sample, see the README) and reported with a warning; ordinary steps pay
    nothing for the check. The
    n-th ``update`` acts at global step ``n`` (TF's mask update after the n-th
    training step): when the step is within ``[begin_pruning_step,
    end_pruning_step]`` and at least ``pruning_frequency`` steps after the last
    update, the masks are recomputed from the new weights ``params + updates``
    at the scheduled sparsity (inside a ``lax.cond``; other steps only apply the
    masks). The returned updates make ``params + updates`` the masked new
    weights: pruned weights are exactly 0 after every step, and kept weights
    get exactly the incoming updates. The step count saturates at ``2**31 - 1``
    like optax's counters.

    Params may be plain arrays, nnx ``Variable`` s or linen boxes
    (``nn.Partitioned``, ``nn.with_logical_partitioning``): boxes are unboxed
    for naming and masking; a boxed param's mask keeps its box (so
    ``nn.get_partition_spec(opt_state)`` fits every state leaf) and returned
    updates keep the boxes of the incoming updates.

    Args:
      hparams: pruning hyperparameters (:func:`get_pruning_hparams`); None
        means TF's defaults. A dict or TF HParams string is also accepted.
      sparsity: an external sparsity schedule ``step -> sparsity`` (any optax
        schedule), a number or a scalar array, replacing the built-in
        polynomial schedule like TF's ``sparsity`` constructor argument.
        weight_sparsity_map targets then scale it by ``target_w /
        target_sparsity``. A traced value is accepted, so
        ``optax.inject_hyperparams(jaxprune.magnitude_pruning,
        static_args=("hparams",))(hparams=hp, sparsity=0.5)`` makes it a
        runtime hyperparameter. Values a schedule (or traced value) gives
        outside ``[0, 1)`` are defined, alike for both threshold methods: NaN
        keeps the previous scheduled sparsity, the rest is clamped into
        ``[0, 1)``.
      params_filter: which leaves are pruned: a callable ``(name, leaf) ->
        bool`` or a pytree of bools shaped like params. Default:
        floating-point leaves with ``ndim >= 2``. Zero-size leaves are never
        pruned.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`PruningState` and whose ``update`` needs ``params``.

    Raises:
      ValueError: at construction, for invalid hparams or a constant sparsity
        outside ``[0, 1)``; at ``init``, if two pruned parameters have the same
        name; in ``update``, if ``params`` is not given or does not fit the
        state (a changed shape, or a state made for other params or another
        ``params_filter``), naming the parameter.

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
    return _chain_element(pruner, _jitted_update, "jaxprune.magnitude_pruning")


def _chain_element(
    pruner: _Pruner, jitted_update: Callable, name: str
) -> optax.GradientTransformationExtraArgs:
    """An optax transform whose state is ``pruner.init(params)`` and whose update is
    ``jitted_update(static pruner, constant sparsity, updates, state, params)``."""
    static = pruner.bind(None)  # the constant sparsity travels as an argument

    def init_fn(params):
        return pruner.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                f"{name} needs the current params: call tx.update(updates, opt_state, params)"
            )
        return jitted_update(static, pruner.constant, updates, state, params)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _flat_updates(treedef, updates: Any) -> list[Any]:
    """The (unboxed) updates' leaves aligned with params'; a ValueError if they do not fit."""
    try:
        return treedef.flatten_up_to(updates)
    except (ValueError, TypeError) as e:
        raise ValueError(f"updates do not have the structure of params: {e}") from None


def _update(pruner: _Pruner, constant: Any, updates: Any, state: Any, params: Any):
    """The transform's update (compiled once per pruner configuration and input shapes)."""
    pruner = pruner.bind(constant)
    boxed_updates = updates
    params = tree_lib.unbox(params)
    updates = tree_lib.unbox(updates)
    leaves, treedef, _, plans = pruner.plan(params)
    update_leaves = _flat_updates(treedef, updates)
    update_leaves = [
        u if plan is None else _match_sharding(u, leaf)
        for leaf, u, plan in zip(leaves, update_leaves, plans, strict=True)
    ]
    # Saturates at the int32 maximum like optax's counters (no wrap to a negative step).
    step = optax.safe_int32_increment(jnp.asarray(state.count, jnp.int32))
    new_state, passed = pruner.mask_update(
        params, state, step, force=False, updates=update_leaves, return_updates=True
    )
    pruned = [i for i, plan in enumerate(plans) if plan is not None]
    for i, u in zip(pruned, passed, strict=True):
        update_leaves[i] = u
    masks = treedef.flatten_up_to(tree_lib.unbox(new_state.masks))
    out = [
        u if plan is None else jnp.where(m, u, -leaf.astype(u.dtype))
        for leaf, u, m, plan in zip(leaves, update_leaves, masks, plans, strict=True)
    ]
    return tree_lib.rebox(boxed_updates, treedef.unflatten(out)), new_state


# Compiled once per configuration, so that eager calls (outside the user's jit) do not dispatch
# the mask update op by op; inside the user's jit it is inlined.
_jitted_update = jax.jit(_update, static_argnums=0)


# ------------------------------------------------------------------ the separate (TF-shaped) API
#
# ``Pruning.masks_transform()`` applies the state's masks inside the optax chain (no cond: XLA
# fuses the ``where`` into the optimizer's elementwise update) and ``Pruning.update_masks`` is
# TF's ``conditional_mask_update_op``, run on the weights after the step.


def _masks_update(pruner: _Pruner, constant: Any, updates: Any, state: Any, params: Any):
    """``masks_transform``'s update: the state's masks applied, ``count`` incremented."""
    pruner = pruner.bind(constant)
    boxed_updates, boxed_masks = updates, state.masks
    params = tree_lib.unbox(params)
    updates = tree_lib.unbox(updates)
    state = tree_lib.unbox(state)
    leaves, treedef, names, plans = pruner.plan(params)
    masks, _ = _check_state(state, treedef, leaves, names, plans)
    update_leaves = _flat_updates(treedef, updates)
    out = [
        u if plan is None else jnp.where(m, _match_sharding(u, p), -p.astype(u.dtype))
        for p, u, m, plan in zip(leaves, update_leaves, masks, plans, strict=True)
    ]
    # Saturates at the int32 maximum like optax's counters (no wrap to a negative step).
    step = optax.safe_int32_increment(jnp.asarray(state.count, jnp.int32))
    new_state = PruningState(
        count=step,
        last_update_step=state.last_update_step,
        sparsity=pruner.global_sparsity(step, state.sparsity),
        masks=boxed_masks,
        thresholds=state.thresholds,
    )
    return tree_lib.rebox(boxed_updates, treedef.unflatten(out)), new_state


_jitted_masks_update = jax.jit(_masks_update, static_argnums=0)


def masks_transform(pruner: _Pruner) -> optax.GradientTransformationExtraArgs:
    """The transform behind :meth:`Pruning.masks_transform` (see there)."""
    return _chain_element(pruner, _jitted_masks_update, "jaxprune.Pruning.masks_transform")


def _is_state(x: Any) -> bool:
    return isinstance(x, PruningState)


def _find_pruning_state(opt_state: Any) -> tuple[list[Any], Any, int]:
    """The leaves (PruningStates as leaves) and treedef of ``opt_state``, and the index of its
    single PruningState; a ValueError naming what was found if there is none or several."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=_is_state)
    where = [i for i, (_, x) in enumerate(flat) if isinstance(x, PruningState)]
    if len(where) == 1:
        return [x for _, x in flat], treedef, where[0]
    if not where:

        def is_named(x):
            return isinstance(x, tuple) and hasattr(x, "_fields")

        named = jax.tree.leaves(opt_state, is_leaf=is_named)
        kinds = sorted({type(x).__name__ for x in named if is_named(x)})
        found = f"the optimizer states {kinds}" if kinds else f"a {type(opt_state).__name__}"
        raise ValueError(
            f"Pruning.update_masks: no PruningState in opt_state (found {found}). Put "
            "pruning.masks_transform() last in the optax chain, e.g. "
            "optax.chain(optax.adam(1e-3), pruning.masks_transform()), and pass the optimizer "
            "state that tx.init / tx.update return (for an nnx.Optimizer, optimizer.opt_state)."
        )
    paths = [jax.tree_util.keystr(flat[i][0]) or "opt_state itself" for i in where]
    raise ValueError(
        f"Pruning.update_masks: opt_state holds {len(where)} PruningStates, at {paths}; it "
        "updates the masks of exactly one. Pass the part of the state that holds the one you "
        "mean (and the params it prunes)."
    )


def _update_masks(pruner: _Pruner, constant: Any, params: Any, opt_state: Any):
    """``Pruning.update_masks``: TF's conditional_mask_update_op on the weights after the step.

    At a pruning step, every mask and threshold is recomputed (the chain's engine,
    unconditionally) and the newly pruned weights zeroed; other steps return the inputs.
    """
    pruner = pruner.bind(constant)
    opt_leaves, opt_treedef, at = _find_pruning_state(opt_state)
    boxed_state = opt_leaves[at]
    state = tree_lib.unbox(boxed_state)
    plain = tree_lib.unbox(params)
    leaves, treedef, names, plans = pruner.plan(plain)
    _check_state(state, treedef, leaves, names, plans)
    idx = [i for i, plan in enumerate(plans) if plan is not None]
    step = jnp.asarray(state.count, jnp.int32)
    should = pruner.should_update(step, state.last_update_step)

    def update(carry):
        _, pruned, state, _ = carry
        weights = list(leaves)
        for i, w in zip(idx, pruned, strict=True):
            weights[i] = w
        new_state = pruner.mask_update(treedef.unflatten(weights), state, step, force=True)
        assert isinstance(new_state, PruningState)
        new_masks = treedef.flatten_up_to(new_state.masks)
        # Weights pruned before that are not 0: something changed them after masks_transform.
        # (The old masks are read from the carry: reading the loop's input copied them.)
        old_masks = treedef.flatten_up_to(state.masks)
        flags = [jnp.any((w != 0) & ~old_masks[i]) for i, w in zip(idx, pruned, strict=True)]
        pruned = [
            jnp.where(new_masks[i], w, jnp.zeros_like(w)) for i, w in zip(idx, pruned, strict=True)
        ]
        flags = jnp.stack(flags) if flags else jnp.zeros(0, bool)
        return jnp.zeros((), bool), pruned, _like(new_state, state), flags

    # A loop that runs once or never, not a lax.cond: XLA gives a cond's pass-through branch
    # (and its result) copies of every operand, while a loop's carry is updated in place, so
    # with donated buffers a step that updates nothing copies nothing.
    init = (should, [leaves[i] for i in idx], state, jnp.zeros(len(idx), bool))
    _, pruned, new_state, flags = jax.lax.while_loop(lambda carry: carry[0], update, init)
    if idx:
        _warn_pruned_changed([names[i] for i in idx], flags, step)
    out = list(leaves)
    for i, w in zip(idx, pruned, strict=True):
        out[i] = w
    # Back into the caller's containers: the boxes (linen boxes, nnx Variables) of params and of
    # the PruningState are kept, the state goes back to its place in opt_state.
    new_params = _refill(params, out)
    opt_leaves = list(opt_leaves)
    opt_leaves[at] = _refill(boxed_state, jax.tree.leaves(new_state))
    return new_params, opt_treedef.unflatten(opt_leaves)


_jitted_update_masks = jax.jit(_update_masks, static_argnums=0)


def _like(new: PruningState, old: PruningState) -> PruningState:
    """``new`` in ``old``'s tree and dtypes: the loop's carry keeps one type."""
    leaves = [
        jnp.asarray(n, jnp.result_type(o))
        for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(old), leaves)


def _refill(template: Any, leaves: list[Any]) -> Any:
    """``template``'s tree (boxes included) with ``leaves`` (those of its unboxed tree)."""
    structure = jax.tree.structure(template)
    if len(jax.tree.leaves(template)) != len(leaves):  # pragma: no cover - one leaf per box
        raise AssertionError("unboxed tree does not have one leaf per box")
    return jax.tree.unflatten(structure, leaves)


_PRUNED_CHANGED = (
    "jaxprune.Pruning.update_masks: at step {step}, weights pruned at the previous mask update "
    "are nonzero in {names}. Something changed them after masks_transform (a transform after "
    "it in the optax chain, e.g. adam or weight decay), or the params were changed outside the "
    "optimizer, so the masks are computed on weights that should be 0. Put "
    "pruning.masks_transform() last in the chain: "
    "optax.chain(optax.adam(1e-3), pruning.masks_transform())."
)


def _warn_pruned_changed(names: list[str], flags: jax.Array, step: jax.Array) -> None:
    """Warns, naming the leaves, when ``update_masks`` found pruned weights that are not 0."""
    diagnostics.warn_if_any(
        flags, step, names, lambda step, hits: _PRUNED_CHANGED.format(step=step, names=hits)
    )
