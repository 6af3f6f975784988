"""The gradual sparsity schedule of Zhu & Gupta (2017), as in TF r1.15's code."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import floatops
from jaxprune._src.hparams import PruningHParams

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def sparsity_schedule(hparams: PruningHParams, *, target_sparsity: float | None = None) -> Schedule:
    """Returns the polynomial sparsity schedule ``step -> sparsity`` of ``hparams``.

    Computed in float32 exactly as TF r1.15's ``Pruning._setup_sparsity``::

        p(t) = clip((t - begin) / (end - begin), 0, 1)
        s(t) = (initial - target) * (1 - p(t)) ** exponent + target

    where begin/end are ``sparsity_function_{begin,end}_step``. (The formula in
    TF's docstring, with ``num_steps`` and ``pruning_frequency``, is not what
    TF's code computes; this follows the code.)

    Args:
      hparams: the pruning hyperparameters.
      target_sparsity: optional override of ``hparams.target_sparsity``; used for
        weights with their own target in ``weight_sparsity_map``.

    Returns:
      A jit-safe callable mapping an integer step (Python int or traced array)
      to a float32 scalar sparsity.

    Examples:
      >>> import jaxprune
      >>> s = jaxprune.sparsity_schedule(jaxprune.get_pruning_hparams())
      >>> [round(float(s(t)), 4) for t in (0, 10, 50, 100, 150)]
      [0.0, 0.1355, 0.4375, 0.5, 0.5]

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878
    """
    begin = hparams.sparsity_function_begin_step
    end = hparams.sparsity_function_end_step
    initial = hparams.initial_sparsity
    target = hparams.target_sparsity if target_sparsity is None else float(target_sparsity)
    exponent = hparams.sparsity_function_exponent

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step)
        # A true float32 division (XLA would multiply by an inexact reciprocal of a constant).
        span = floatops.rounded(jnp.float32(end - begin), token=step)
        progress = jnp.asarray(step - begin, jnp.float32) / span
        progress = jnp.minimum(jnp.float32(1.0), jnp.maximum(jnp.float32(0.0), progress))
        base = jnp.float32(1.0) - progress
        if float(exponent).is_integer() and exponent <= 64:
            ramp = floatops.integer_power(base, int(exponent))  # correctly rounded, like powf
        else:
            ramp = jnp.power(base, jnp.float32(exponent))
        # Product and sum rounded separately, as TF's mul and add ops do (no FMA).
        return floatops.rounded(jnp.float32(initial - target) * ramp) + jnp.float32(target)

    return schedule


# The largest float32 below 1: sparsities are clamped into [0, 1) with this as the top.
_BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def sanitize_sparsity(
    sparsity: jax.typing.ArrayLike, previous: jax.typing.ArrayLike = 0.0
) -> jax.Array:
    """Defines a sparsity outside ``[0, 1)``: NaN becomes ``previous``, the rest is clamped.

    External schedules (``magnitude_pruning(sparsity=...)``) can return anything.
    Both threshold methods then see the same sparsity: NaN is replaced by
    ``previous`` (the transform passes the last scheduled sparsity, so a NaN
    keeps the pruning level), values below 0 become 0 and values >= 1 (and
    +Inf) become the largest float32 below 1 (at least the largest weight is
    kept, as with ``k >= 1``). Values in ``[0, 1)`` are returned unchanged.

    Args:
      sparsity: a float scalar (may be traced).
      previous: the value that replaces NaN (itself in ``[0, 1)``).

    Returns:
      A float32 scalar in ``[0, 1)``.
    """
    sparsity = jnp.asarray(sparsity, jnp.float32)
    if sparsity.ndim != 0:
        raise ValueError(f"a sparsity must be a scalar, got shape {sparsity.shape}")
    sparsity = jnp.where(jnp.isnan(sparsity), jnp.asarray(previous, jnp.float32), sparsity)
    return jnp.clip(sparsity, jnp.float32(0.0), jnp.float32(_BELOW_ONE))
