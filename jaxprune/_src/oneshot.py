"""One-shot pruning of a trained model, and the transform that keeps its masks while fine-tuning."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune._src import allocation
from jaxprune._src import tree as tree_lib
from jaxprune._src.hparams import PruningHParams, as_hparams


def prune(
    params: Any,
    hparams: PruningHParams | None = None,
    *,
    sparsity: float | None = None,
    scores: Any = None,
    params_filter: Any = None,
) -> tuple[Any, Any]:
    """Prunes ``params`` once, now, to ``sparsity`` (no schedule, no optimizer).

    Every option of the hyperparameters applies: ``pruning_scope`` (``"layer"``, ``"global"``,
    ``"output"``), ``sparsity_distribution`` (``"uniform"``, ``"erk"``), ``sparsity_type``
    (unstructured or TF blocks, ``"N:M"``, ``"channel"``) and ``weight_sparsity_map`` (fixed
    per-weight targets). A weight keeps its ``k = round(n * (1 - s))`` largest scores (at least
    1; ties at the threshold are kept, as in TF); N:M groups and channels keep exact counts, ties
    going to the lower index.

    Args:
      params: a params pytree (Flax ``nnx.Variable`` boxes are unboxed).
      hparams: the hyperparameters (:func:`get_pruning_hparams`, a dict or a TF HParams string);
        None means TF's defaults.
      sparsity: the overall target, a Python number in ``[0, 1)``; default
        ``hparams.target_sparsity``. ``weight_sparsity_map`` entries keep their own targets.
      scores: optional pytree like ``params`` of scores that replace ``|w|`` (``None`` leaves
        mean ``|w|``): saliency ``|w * g|``, :func:`wanda_scores`, anything. Ranked by magnitude;
        NaN ranks as 0 and is never kept.
      params_filter: which leaves are pruned: a callable ``(name, leaf) -> bool`` or a pytree of
        bools; default floating-point leaves with ``ndim >= 2``.

    Returns:
      ``(pruned_params, masks)``: ``pruned_params`` has the pruned weights set to exactly 0;
      ``masks`` has the structure of ``params`` with a bool array (True = keep) for each pruned
      leaf and ``None`` for every other leaf. On sharded params the masks are sharded like them.

    Raises:
      ValueError: before any computation, for bad hyperparameters, ``sparsity`` or ``scores``,
        naming the field, the weight and the value.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w": jnp.array([[1., -4.], [3., 2.]]), "b": jnp.ones(2)}
      >>> pruned, masks = jaxprune.prune(params, sparsity=0.5)
      >>> pruned["w"].tolist(), masks["b"]
      ([[0.0, -4.0], [3.0, 0.0]], None)
      >>> hp = jaxprune.get_pruning_hparams().replace(sparsity_type="channel")
      >>> jaxprune.prune(params, hp, sparsity=0.5)[0]["w"].tolist()
      [[0.0, -4.0], [0.0, 2.0]]

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878;
      Evci et al., "Rigging the Lottery", 2020, https://arxiv.org/abs/1911.11134;
      Mishra et al., "Accelerating Sparse Deep Neural Networks" (2:4), 2021,
      https://arxiv.org/abs/2104.08378
    """
    hp = as_hparams(hparams)
    sparsity = _static_sparsity(sparsity)
    params = tree_lib.unbox(params)
    leaves, treedef, names, prunable = tree_lib.leaf_names_and_prunable(params, params_filter)
    rules = allocation.resolve_rules(hp, names, leaves, prunable, sparsity)
    values = _ranked_values(treedef, scores, leaves, names, rules)
    out, masks = _prune_leaves(leaves, values, tuple(rules), hp.replace(threshold_decay=0.0))
    return treedef.unflatten(out), treedef.unflatten(masks)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _prune_leaves(leaves, values, rules, hparams):
    masks: list[Any] = [None] * len(leaves)
    pool = [i for i, rule in enumerate(rules) if rule is not None and rule.scope == "global"]
    if pool:
        target = jnp.float32(rules[pool[0]].target)
        _, pooled = allocation.global_masks([values[i] for i in pool], target, 0.0, hparams)
        for i, mask in zip(pool, pooled, strict=True):
            masks[i] = mask
    for i, rule in enumerate(rules):
        if rule is not None and rule.scope != "global":
            _, masks[i] = allocation.leaf_mask(
                values[i], jnp.float32(rule.target), jnp.float32(0.0), rule, hparams
            )
    out = [
        leaf if mask is None else jnp.where(mask, leaf, jnp.zeros_like(leaf))
        for leaf, mask in zip(leaves, masks, strict=True)
    ]
    return out, masks


def _static_sparsity(sparsity: Any) -> float | None:
    if sparsity is None:
        return None
    if isinstance(sparsity, jax.core.Tracer):
        raise ValueError(
            "prune(sparsity=...) must be a Python number (it fixes shapes of the selection and "
            "ERK's per-weight targets); got a traced value"
        )
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(
            f"prune(sparsity=...) must be a number in [0, 1), got {sparsity!r}"
        ) from None
    if isinstance(sparsity, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"prune(sparsity=...) must be a number in [0, 1), got {sparsity!r}")
    return value


def _ranked_values(treedef, scores, leaves, names, rules) -> list[Any]:
    """What each pruned leaf is ranked by: its user score, else the weight itself (``|w|``)."""
    if scores is None:
        return [
            leaf if rule is not None else None for leaf, rule in zip(leaves, rules, strict=True)
        ]
    scores = tree_lib.unbox(scores)
    try:
        score_leaves = treedef.flatten_up_to(scores)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"scores must be a pytree with the structure of params (None leaves for |w|): {e}"
        ) from None
    values = []
    for leaf, score, name, rule in zip(leaves, score_leaves, names, rules, strict=True):
        if rule is None or score is None:
            values.append(leaf if rule is not None else None)
            continue
        shape = getattr(score, "shape", None)
        dtype = getattr(score, "dtype", None)
        if shape is None or tuple(shape) != tuple(leaf.shape):
            raise ValueError(
                f"scores for weight {name!r} must have the weight's shape {tuple(leaf.shape)}, "
                f"got {shape if shape is not None else type(score).__name__}"
            )
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"scores for weight {name!r} must be floating-point, got {dtype}")
        values.append(score)
    return values


class FixedMasksState(NamedTuple):
    """State of :func:`fixed_masks`.

    Attributes:
      masks: the masks, structured like params: a bool array for each masked leaf, None for the
        others.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxprune
      >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]]), "b": jnp.ones(2)}
      >>> _, masks = jaxprune.prune(params, sparsity=0.5)
      >>> state = optax.chain(optax.sgd(0.1), jaxprune.fixed_masks(masks)).init(params)
      >>> state[1].masks["w"], state[1].masks["b"]
      (Array([[False,  True],
             [False,  True]], dtype=bool), None)
    """

    masks: Any


def fixed_masks(masks: Any) -> optax.GradientTransformationExtraArgs:
    """Keeps pruned weights at exactly 0 while fine-tuning, with masks that never change.

    Put it last in the chain, after the optimizer (``optax.chain(optax.adam(1e-4),
    jaxprune.fixed_masks(masks))``), with the masks from :func:`prune`. Its ``update`` returns
    updates such that ``params + updates`` keeps every kept weight's update unchanged and sets
    every pruned weight to exactly 0 (so params that were not yet masked become masked at the
    first step). torch's ``prune.custom_from_mask``; jaxpruner's static sparsity.

    Args:
      masks: a pytree with the structure of params: a bool array (True = keep) shaped like the
        leaf for each masked leaf, None for the others.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params``.

    Raises:
      ValueError: in ``init``, if the masks do not fit the params (naming the leaf and shapes);
        in ``update``, if ``params`` is not given.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxprune
      >>> params = {"w": jnp.array([[1., -4.], [3., 2.]])}
      >>> params, masks = jaxprune.prune(params, sparsity=0.5)
      >>> tx = optax.chain(optax.sgd(0.1), jaxprune.fixed_masks(masks))
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.ones((2, 2))}
      >>> updates, state = tx.update(grads, state, params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [[0.0, -4.099999904632568], [2.9000000953674316, 0.0]]

    References:
      PyTorch ``torch.nn.utils.prune.custom_from_mask``,
      https://pytorch.org/docs/stable/generated/torch.nn.utils.prune.custom_from_mask.html
    """

    def init_fn(params):
        params = tree_lib.unbox(params)
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        try:
            mask_leaves = tree_lib.flatten_up_to(treedef, tree_lib.unbox(masks))
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"fixed_masks: masks must have the structure of params (None for unmasked "
                f"leaves): {e}"
            ) from None
        out: list[jax.Array | None] = []
        for (path, leaf), mask in zip(flat, mask_leaves, strict=True):
            if mask is None:
                out.append(None)
                continue
            name = tree_lib.path_name(path)
            if (
                tuple(getattr(mask, "shape", ())) != tuple(leaf.shape)
                or getattr(mask, "dtype", None) != jnp.bool_
            ):
                raise ValueError(
                    f"fixed_masks: the mask of {name!r} must be a bool array of the param's shape "
                    f"{tuple(leaf.shape)}, got {getattr(mask, 'dtype', type(mask).__name__)} "
                    f"{tuple(getattr(mask, 'shape', ()))}"
                )
            # A copy, so that donating the optimizer state never deletes the caller's masks.
            out.append(jnp.array(mask, copy=True))
        return FixedMasksState(masks=jax.tree.unflatten(treedef, out))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "jaxprune.fixed_masks needs the current params: call "
                "tx.update(updates, opt_state, params)"
            )
        return _masked_updates(updates, state, params), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@jax.jit
def _masked_updates(updates, state, params):
    params = tree_lib.unbox(params)
    updates = tree_lib.unbox(updates)
    leaves, treedef = jax.tree.flatten(params)
    update_leaves = tree_lib.flatten_up_to(treedef, updates)
    mask_leaves = tree_lib.flatten_up_to(treedef, state.masks)
    out = [
        u if m is None else jnp.where(m, u, -p.astype(u.dtype))
        for p, u, m in zip(leaves, update_leaves, mask_leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)
