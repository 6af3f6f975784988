"""OWL (Yin et al. 2024): per-layer sparsities from the layers' outlier ratios.

Layers whose scores (Wanda's ``|W| * ||X||``, or any) have more outliers -- entries above
``m`` times their mean -- are pruned less. The closed form, per group of weights (a weight on
its own, or all weights whose name's ``owl_groups`` capture is the same, e.g. one transformer
block):

* ``D_g`` = the fraction of the group's scores above ``m * mean(group's scores)``;
* ``r = (D - min D) / (max D - min D) * 2 * lambda`` (``r = 0`` when every ``D`` is equal);
* ``r = r - mean(r) + (1 - s)`` (the unweighted mean over groups, as OWL's code);
* the group's sparsity is ``1 - r``.

So the sparsities lie in ``[s - lambda, s + lambda]`` around their unweighted mean ``s``.

References:
  Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
  LLMs to High Sparsity", ICML 2024, https://arxiv.org/abs/2310.05175
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def group_keys(names: Sequence[str], groups: str | None) -> list[str]:
    """Each weight's OWL group: its ``groups`` regex capture, else its own name.

    Args:
      names: the weights' "/"-joined names.
      groups: a regex with exactly one capturing group (``re.search``-ed against each name),
        or None (every weight is its own group).

    Returns:
      One key per name (``"capture:<text>"`` or ``"weight:<name>"``).

    Examples:
      >>> from jaxprune._src.owl import group_keys
      >>> group_keys(["layers_0/q", "layers_0/k", "layers_1/q", "head"], r"layers_(\\d+)/")
      ['capture:0', 'capture:0', 'capture:1', 'weight:head']
    """
    if groups is None:
        return [f"weight:{n}" for n in names]
    pattern = re.compile(groups)
    keys = []
    for n in names:
        match = pattern.search(n)
        keys.append(f"capture:{match.group(1)}" if match else f"weight:{n}")
    return keys


def check_groups_regex(groups: str | None, field: str = "owl_groups") -> None:
    """A ValueError naming ``field`` unless ``groups`` is None or a regex with one capture."""
    if groups is None:
        return
    if not isinstance(groups, str) or not groups:
        raise ValueError(f"hparam {field} must be a regex string or None, got {groups!r}")
    try:
        pattern = re.compile(groups)
    except (re.error, RecursionError, OverflowError, ValueError, MemoryError) as e:
        raise ValueError(
            f"hparam {field}={groups!r} does not compile: {type(e).__name__}: {e}"
        ) from None
    if pattern.groups != 1:
        raise ValueError(
            f"hparam {field}={groups!r} must have exactly one capturing group (the group's "
            f"name, e.g. r'layers_(\\d+)/'), it has {pattern.groups}"
        )


def _ranked(scores: jax.Array) -> jax.Array:
    s = jnp.abs(jnp.asarray(scores)).astype(jnp.float32)
    return jnp.where(jnp.isnan(s), jnp.float32(0), s)


def outlier_ratios(
    scores: Sequence[jax.Array], keys: Sequence[str], m: float
) -> dict[str, jax.Array]:
    """``D_g``: per group, the fraction of its scores above ``m`` times their mean.

    Scores are ranked as magnitudes (NaN as 0); the group's mean and count are over all the
    entries of its weights together (as OWL's concatenated metric). Traceable.
    """
    ranked = [_ranked(s) for s in scores]
    out: dict[str, jax.Array] = {}
    for key in dict.fromkeys(keys):
        members = [r for r, k in zip(ranked, keys, strict=True) if k == key]
        size = sum(int(r.size) for r in members)
        mean = jnp.sum(jnp.stack([jnp.sum(r, dtype=jnp.float32) for r in members])) / size
        above = jnp.stack([jnp.sum(r > m * mean, dtype=jnp.int32) for r in members])
        out[key] = jnp.sum(above).astype(jnp.float32) / size
    return out


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> np.ndarray:
    """OWL's group sparsities ``1 - r`` from the groups' outlier ratios (float64 NumPy).

    Args:
      ratios: ``D_g``, one per group.
      sparsity: the target ``s`` (the unweighted mean of the result).
      lam: OWL's ``lambda`` (the sparsities lie within ``s +- lambda``).

    Returns:
      One sparsity per group.

    Examples:
      >>> from jaxprune._src.owl import owl_sparsities
      >>> owl_sparsities([0.01, 0.03, 0.02], 0.7, 0.08).round(4).tolist()
      [0.78, 0.62, 0.7]
    """
    d = np.asarray(ratios, np.float64)
    spread = d.max() - d.min() if d.size else 0.0
    r = (d - d.min()) / spread * 2 * lam if spread > 0 else np.zeros_like(d)
    r = r - r.mean() + (1.0 - sparsity)
    return 1.0 - r


def owl_targets(
    scores: Sequence[jax.Array],
    names: Sequence[str],
    sparsity: float,
    *,
    m: float,
    lam: float,
    groups: str | None,
) -> list[float]:
    """Each weight's OWL sparsity (Python floats), from its scores; ValueError if out of range.

    Args:
      scores: one score array per weight (magnitudes ranked; NaN as 0).
      names: the weights' names (for ``groups`` and messages).
      sparsity: the target ``s``.
      m: OWL's outlier threshold ``M`` (entries above ``m`` times the mean are outliers).
      lam: OWL's ``lambda``.
      groups: the ``owl_groups`` regex, or None.

    Returns:
      One sparsity per weight (the sparsity of its group).

    Raises:
      ValueError: if a group's sparsity falls outside ``[0, 1)`` (naming the group), or the
        scores are traced (the targets fix how many weights each selection keeps).
    """
    keys = group_keys(names, groups)
    ratios = outlier_ratios(scores, keys, m)
    if any(isinstance(r, jax.core.Tracer) for r in ratios.values()):
        raise ValueError(
            "sparsity_distribution='owl' needs concrete scores (the per-weight targets fix how "
            "many weights each selection keeps); call it outside jax.jit"
        )
    order = list(ratios)
    values = owl_sparsities([float(ratios[k]) for k in order], sparsity, lam)
    for key, value in zip(order, values, strict=True):
        if not (0.0 <= value < 1.0) or not math.isfinite(value):
            raise ValueError(
                f"sparsity_distribution='owl': group {key!r} would get sparsity {value:.4f}, "
                f"outside [0, 1) (sparsity {sparsity} +- owl_lambda {lam}); lower owl_lambda"
            )
    by_key = dict(zip(order, values, strict=True))
    return [float(by_key[k]) for k in keys]
