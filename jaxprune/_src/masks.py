"""Threshold and mask of one weight: exact and histogram methods, block pooling.

Implements SPEC §4-5 (TF r1.15 ``Pruning._update_mask`` and
``_maybe_update_block_mask``; r1.11's histogram threshold) as pure, jit-safe
functions.

Non-finite values, decided here and documented in the README:

* NaN weights never count as large: their magnitude is taken as 0 when the
  threshold is computed, and their mask is always False.
* +/-Inf weights are the largest magnitudes. The exact threshold ranks them
  first; the histogram method bins over the finite magnitudes and puts Inf in
  the last bin, so an Inf weight is always kept.
* A non-finite previous threshold is not carried into the exponential
  smoothing (the current threshold is used alone), so one bad update cannot
  pin the threshold at Inf/NaN for the rest of training.
* All-zero weights: the exact method's threshold is 0 and every weight is
  kept (ties at the threshold are kept); the histogram method's threshold is 0
  and every weight is pruned (its mask is strict). Either way they stay zero.
* Denormal magnitudes rank as their true values, and the mask compares them
  with the threshold in the same integer key domain the selection ranks in
  (XLA:CPU flushes denormals to 0 in float comparisons, which would keep every
  denormal whatever the threshold).
* A sparsity outside ``[0, 1)`` is defined alike for both methods: NaN counts
  as 0, values are clamped into ``[0, 1)`` (the transform replaces NaN by the
  previous scheduled sparsity first).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import floatops, select
from jaxprune._src.hparams import PruningHParams
from jaxprune._src.schedule import sanitize_sparsity


def weight_mask(
    weights: jax.typing.ArrayLike,
    sparsity: jax.typing.ArrayLike,
    threshold: jax.typing.ArrayLike = 0.0,
    *,
    hparams: PruningHParams,
    name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Computes the new threshold and mask of one weight (TF ``_maybe_update_block_mask``).

    With ``threshold_method="exact"`` (TF r1.15) the threshold is the k-th
    largest (pooled) magnitude, ``k = round_half_even(float32(n) * (1 - s))``
    clamped to ``k >= 1``, and the mask keeps magnitudes ``>=`` the smoothed
    threshold. With ``"histogram"`` (TF r1.11) the threshold is read off an
    ``nbins`` histogram of the magnitudes over ``[0, max]`` and the mask keeps
    magnitudes strictly ``>`` it. The threshold is smoothed as
    ``(1 - threshold_decay) * current + threshold_decay * threshold``.

    With ``sparsity_type`` N:M or ``"channel"``, or ``pruning_scope="output"``,
    the mask is that structure's (see :func:`prune`); the returned threshold is
    then 0. Otherwise, if the weight, with its size-1 dimensions squeezed away,
    is 2-D and its block dims are not 1x1, ``|w|`` is first pooled (AVG or MAX) over
    non-overlapping blocks aligned at index 0 (partial blocks at the bottom and
    right edges), the threshold is computed on the pooled matrix (in pooled
    units, ``k`` counting blocks) and the block mask is expanded back. A block
    dim of -1, or larger than the weight's dimension, spans the whole dimension.

    A sparsity outside ``[0, 1)`` is defined alike for both methods: NaN counts
    as 0 and values are clamped into ``[0, 1)``. Magnitudes are compared with
    the threshold as the selection ranks them, so denormals are handled exactly.

    The k-th largest value is found by an O(n) radix selection on the float
    bits, bit-identical to TF's full ``top_k`` sort.

    Args:
      weights: the weight array (any float dtype, any shape).
      sparsity: TF's global sparsity (a float32 scalar, may be traced). If
        ``name`` matches an entry of ``hparams.weight_sparsity_map``, the
        weight's sparsity is ``sparsity * target_w / target_sparsity``, exactly
        as TF's ``_get_sparsity``; otherwise it is used as is.
      threshold: the weight's previous threshold, used by ``threshold_decay``.
      hparams: the pruning hyperparameters (method, pooling, block dims, maps).
      name: the weight's name, matched against ``block_dims_map`` and
        ``weight_sparsity_map``; None uses the defaults.

    Returns:
      ``(new_threshold, mask)``: a float32 scalar and a bool array shaped like
      ``weights`` (True = keep).

    Raises:
      ValueError: if ``name`` matches two weight_sparsity_map entries, or
        matches one while ``target_sparsity`` is 0 (TF's scaling would divide
        by zero).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> hp = jaxprune.get_pruning_hparams()
      >>> thr, mask = jaxprune.weight_mask(jnp.arange(1., 101.), 0.95, hparams=hp)
      >>> float(thr), int(mask.sum())
      (96.0, 5)

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878
    """
    sparsity = jnp.asarray(sparsity, jnp.float32)
    if name is not None:
        target_w = hparams.sparsity_for(name)
        if target_w is not None:
            if hparams.target_sparsity == 0.0:
                raise ValueError(
                    f"weight {name!r} matches weight_sparsity_map, whose sparsity is scaled by "
                    "target_w / target_sparsity, but target_sparsity is 0"
                )
            sparsity = sparsity * jnp.float32(target_w / hparams.target_sparsity)
    if hparams.sparsity_type != "unstructured" or hparams.pruning_scope == "output":
        # N:M, channel or per-output-unit masks: the engine's rule for this one weight (a global
        # scope or ERK over a single weight is the weight's own threshold at ``sparsity``).
        from jaxprune._src import allocation  # allocation builds on this module

        weights = jnp.asarray(weights)
        rule = allocation.single_weight_rule(hparams, name or "weight", weights.shape)
        return _leaf_mask_jit(weights, sparsity, jnp.asarray(threshold, jnp.float32), rule, hparams)
    return _weight_mask_jit(weights, sparsity, threshold, hparams, hparams.block_dims_for(name))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _leaf_mask_jit(weights, sparsity, threshold, rule, hparams):
    from jaxprune._src import allocation

    return allocation.leaf_mask(weights, sparsity, threshold, rule, hparams)


def _weight_mask(
    weights: jax.typing.ArrayLike,
    sparsity: jax.Array,
    threshold: jax.typing.ArrayLike,
    hparams: PruningHParams,
    block_dims: tuple[int, int],
) -> tuple[jax.Array, jax.Array]:
    """weight_mask with the weight's own sparsity and block dims already resolved."""
    weights = jnp.asarray(weights)
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        raise ValueError(f"weight_mask needs a floating-point weight, got dtype {weights.dtype}")
    sharding = jax.typeof(weights).sharding
    if sharding.mesh.explicit_axes and jax.sharding.get_abstract_mesh().explicit_axes:
        # Explicit-axes mesh (jax.make_mesh's default): the selection's reshapes and scatters
        # are partitioned by GSPMD as on an Auto mesh; the mask keeps the weight's sharding.
        return jax.sharding.auto_axes(
            lambda w, s, t: _weight_mask(w, s, t, hparams, block_dims),
            out_sharding=(jax.sharding.PartitionSpec(), sharding.spec),
        )(weights, jnp.asarray(sparsity, jnp.float32), jnp.asarray(threshold, jnp.float32))
    threshold = jnp.asarray(threshold, jnp.float32)

    squeezed_shape = tuple(d for d in weights.shape if d != 1)
    if len(squeezed_shape) != 2 or tuple(block_dims) == (1, 1):
        # The selection ranks where(isnan(w), 0, |w|) (in float32: exact for bf16/f16, float64
        # is rounded) straight from the weight: no full-size copy of the magnitudes is made.
        # The mask compare itself never keeps a NaN weight.
        return _threshold_and_mask(weights, sparsity, threshold, hparams, magnitude=True)
    is_nan = jnp.isnan(weights)
    magnitudes = jnp.where(is_nan, 0, jnp.abs(weights)).astype(jnp.float32)
    rows, cols = squeezed_shape
    bh, bw = _effective_block(block_dims, (rows, cols))
    pooled = pool_blocks(magnitudes.reshape(rows, cols), (bh, bw), hparams.block_pooling_function)
    new_threshold, block_mask = _threshold_and_mask(
        pooled, sparsity, threshold, hparams, magnitude=False
    )
    mask = expand_blocks(block_mask, (bh, bw), (rows, cols)).reshape(weights.shape)
    return new_threshold, mask & ~is_nan


def _effective_block(block_dims: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int]:
    """Block dims on a (rows, cols) weight: -1, or a block larger than the dimension, is all of it.

    A block larger than the weight pools the whole dimension, exactly as if it were padded
    out to the block (partial blocks average over their existing cells), without allocating
    the padding: TF's pooling does not pad past the data either.
    """
    return tuple(  # type: ignore[return-value]
        n if b == -1 else min(b, n) for b, n in zip(block_dims, shape, strict=True)
    )


# Compiled once per (hparams, block dims, shape): called eagerly (e.g. by TF ports), the
# selection loop would otherwise dispatch op by op. Inside an outer jit it is inlined.
_weight_mask_jit = jax.jit(_weight_mask, static_argnums=(3, 4))


def pool_blocks(magnitudes: jax.Array, block: tuple[int, int], pooling: str) -> jax.Array:
    """Pools a 2-D array of magnitudes over non-overlapping blocks.

    Blocks are aligned at index 0; the bottom and right edges may hold partial
    blocks, over whose existing cells AVG takes the mean and MAX the max.

    Args:
      magnitudes: a non-negative 2-D array.
      block: (height, width) of a block, each >= 1.
      pooling: ``"AVG"`` or ``"MAX"``.

    Returns:
      The pooled array of shape ``(ceil(rows / height), ceil(cols / width))``.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> jaxprune.pool_blocks(jnp.arange(6.).reshape(2, 3), (2, 2), "MAX").tolist()
      [[4.0, 5.0]]
    """
    rows, cols = magnitudes.shape
    bh, bw = block
    nr, nc = -(-rows // bh), -(-cols // bw)
    padded = jnp.pad(magnitudes, ((0, nr * bh - rows), (0, nc * bw - cols)))
    blocks = padded.reshape(nr, bh, nc, bw)
    if pooling == "MAX":
        return blocks.max(axis=(1, 3))
    if pooling != "AVG":
        raise ValueError(f"block_pooling_function must be 'AVG' or 'MAX', got {pooling!r}")
    # Number of existing cells in each block (static): partial blocks at the edges.
    row_counts = np.minimum(bh, rows - bh * np.arange(nr))
    col_counts = np.minimum(bw, cols - bw * np.arange(nc))
    counts = (row_counts[:, None] * col_counts[None, :]).astype(np.float32)
    sums = _pairwise_sum(_pairwise_sum(blocks, 3), 1)
    # A true division by the cell counts (XLA would multiply by inexact reciprocals).
    token = jax.lax.bitcast_convert_type(sums[0, 0], jnp.int32)
    return sums / floatops.rounded(jnp.asarray(counts), token=token)


def _pairwise_sum(x: jax.Array, axis: int) -> jax.Array:
    """Sums ``x`` over ``axis`` in a fixed order: repeatedly adds its two halves elementwise.

    XLA's reduce chooses its own (vectorised) order, which changes with the shapes a device
    holds, so a block-pooled weight sharded over a mesh would get slightly different block
    averages than on one device. Elementwise adds fix the order. (Zero padding is exact.)
    """
    n = x.shape[axis]
    while n > 1:
        half = -(-n // 2)
        if 2 * half != n:
            x = jnp.pad(x, [(0, 1) if a == axis else (0, 0) for a in range(x.ndim)])
        x = jax.lax.slice_in_dim(x, 0, half, axis=axis) + jax.lax.slice_in_dim(
            x, half, 2 * half, axis=axis
        )
        n = half
    return jnp.squeeze(x, axis)


def expand_blocks(
    block_mask: jax.Array, block: tuple[int, int], shape: tuple[int, int]
) -> jax.Array:
    """Expands a pooled block mask back over its cells and crops it to ``shape``.

    Args:
      block_mask: the mask of the pooled matrix.
      block: (height, width) of a block.
      shape: the (rows, cols) of the un-pooled matrix.

    Returns:
      An array of ``shape`` in which every cell carries its block's value.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> jaxprune.expand_blocks(jnp.array([[True, False]]), (2, 2), (2, 3)).tolist()
      [[True, True, False], [True, True, False]]
    """
    nr, nc = block_mask.shape
    bh, bw = block
    full = jnp.broadcast_to(block_mask[:, None, :, None], (nr, bh, nc, bw))
    return full.reshape(nr * bh, nc * bw)[: shape[0], : shape[1]]


def _threshold_and_mask(
    values: jax.Array,
    sparsity: jax.Array,
    threshold: jax.Array,
    hparams: PruningHParams,
    magnitude: bool,
) -> tuple[jax.Array, jax.Array]:
    """Threshold and mask of magnitudes, or (``magnitude=True``) of the magnitudes of values."""
    if hparams.threshold_method == "histogram":
        current = _histogram_threshold(values, sparsity, hparams.nbins, magnitude)
    else:
        current = _exact_threshold(values, sparsity, magnitude)
    smoothed = _smooth(current, threshold, hparams.threshold_decay)
    return smoothed, _compare_magnitudes(
        values, smoothed, strict=hparams.threshold_method == "histogram"
    )


def _compare_magnitudes(values: jax.Array, threshold: jax.Array, strict: bool) -> jax.Array:
    """``|values| >= threshold`` (``>`` if strict), compared as the selection ranks them; NaN is
    never kept.

    The comparison is made on the float32 bit patterns of the magnitudes (the keys the
    exact selection ranks), not on floats: XLA:CPU flushes denormals to zero in float
    comparisons, which would keep every denormal weight whatever the threshold (the exact
    threshold is the true k-th largest, denormal or not). For non-NaN magnitudes the order
    of the keys is the IEEE order, so the result is unchanged for normal numbers.

    One unsigned range test per element: the key ``k = bits & 0x7fffffff`` is kept iff
    ``t <= k <= key(inf)``, i.e. ``uint32(k - t) <= key(inf) - t`` (keys below ``t`` wrap
    around to large values; NaN keys lie above Inf's).
    """
    f32, i32 = jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)
    inf_key = int(select._inf_key(f32, i32))
    keys = lax.bitcast_convert_type(jnp.asarray(values).astype(f32), i32) & np.int32(0x7FFFFFFF)
    t = select._keys(jnp.asarray(threshold, f32), f32, i32, magnitude=True)
    if strict:  # k > t  <=>  k >= t + 1
        t = t + 1
    # A threshold above Inf (strict at Inf) keeps nothing: the scalar test fuses into the loop.
    some = t <= inf_key
    t = t.astype(jnp.uint32)
    return (keys.astype(jnp.uint32) - t <= jnp.uint32(inf_key) - t) & some


def _smooth(current: jax.Array, previous: jax.Array, decay: float) -> jax.Array:
    current = current.astype(jnp.float32)
    if decay == 0.0:
        return current
    previous = jnp.where(jnp.isfinite(previous), previous, current)
    # TF's add_n of two products, each rounded to float32 (no FMA contraction).
    return floatops.rounded(current * jnp.float32(1.0 - decay)) + floatops.rounded(
        previous * jnp.float32(decay)
    )


def num_kept(size: int, sparsity: jax.typing.ArrayLike) -> jax.Array:
    """Number of values the exact method keeps: ``round_half_even(float32(n) * (1 - s))``, >= 1.

    Computed in float32 like TF r1.15, then clamped to ``[1, n]`` (TF r1.15
    crashes on ``k = 0``; tfmot clamps, tensorflow/model-optimization#215).

    Args:
      size: the number of values (elements, or blocks after pooling).
      sparsity: the sparsity, a float32 scalar (may be traced).

    Returns:
      An int32 scalar ``k``.

    Examples:
      >>> import jaxprune
      >>> int(jaxprune.num_kept(100, 0.95)), int(jaxprune.num_kept(100, 0.999))
      (5, 1)
    """
    keep = jnp.float32(size) * (jnp.float32(1.0) - jnp.asarray(sparsity, jnp.float32))
    k = jnp.round(keep)  # round half to even, like tf.round
    return jnp.clip(k, 1, size).astype(jnp.int32)


def exact_threshold(magnitudes: jax.Array, sparsity: jax.typing.ArrayLike) -> jax.Array:
    """The k-th largest magnitude, ``k = num_kept(n, sparsity)`` (TF r1.15).

    Bit-identical to sorting the magnitudes and taking the (k-1)-th of the
    descending order (TF's ``top_k``), but found by an O(n) selection.

    Args:
      magnitudes: non-negative values without NaN, any shape.
      sparsity: the target sparsity (may be traced).

    Returns:
      A float32 scalar.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> float(jaxprune.exact_threshold(jnp.arange(1., 101.), 0.5))
      51.0
    """
    return _exact_threshold(magnitudes, sparsity, False)


def _exact_threshold(
    values: jax.Array, sparsity: jax.typing.ArrayLike, magnitude: bool
) -> jax.Array:
    """exact_threshold of ``values`` or (``magnitude``) of ``where(isnan, 0, |values|)``."""
    # Both methods define a sparsity outside [0, 1) alike: NaN -> 0, clamped (README).
    sparsity = sanitize_sparsity(sparsity)
    return _kth_largest_jit(values, num_kept(values.size, sparsity), magnitude=magnitude)


_kth_largest_jit = jax.jit(select.kth_largest, static_argnames="magnitude")
_kth_largest_and_max_jit = jax.jit(select.kth_largest_and_max, static_argnames="magnitude")


def histogram_cdf(values: jax.Array, value_range: tuple, nbins: int) -> jax.Array:
    """Normalized cumulative histogram of ``values`` over ``value_range`` (TF r1.11).

    Like TF's ``compute_cdf_from_histogram``: ``nbins`` equal-width bins over
    ``[lo, hi]``; a value's bin is ``floor((v - lo) / ((hi - lo) / nbins))``,
    computed exactly, then clipped to ``[0, nbins - 1]`` (values below the range
    count in the first bin, values above it in the last). Returns
    ``cumsum(counts) / n``.

    Args:
      values: the values (any shape, no NaN).
      value_range: ``(lo, hi)`` with ``hi > lo`` (may be traced scalars).
      nbins: the number of bins.

    Returns:
      A float32 array of ``nbins`` cumulative fractions ending at 1.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> v = jnp.abs(jnp.array([-1., 0, 1, 1.5, 2, 3, 4, 5, 10, 100]))
      >>> [round(float(c), 2) for c in jaxprune.histogram_cdf(v, (0.0, 5.0), 5)]
      [0.1, 0.4, 0.5, 0.6, 1.0]
    """
    lo = jnp.asarray(value_range[0], jnp.float32)
    hi = jnp.asarray(value_range[1], jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    idx = _bin_index(values - lo, hi - lo, nbins)
    counts = select.bin_counts(idx, nbins)
    return _cdf(counts, values.size)


def histogram_threshold(
    magnitudes: jax.Array, sparsity: jax.typing.ArrayLike, nbins: int
) -> jax.Array:
    """TF r1.11's histogram threshold: ``(#bins with cdf < s) / nbins * max``.

    The histogram spans ``[0, m]`` with ``m`` the largest finite magnitude
    (Inf magnitudes fall in the last bin). All-zero input gives 0.

    Args:
      magnitudes: non-negative values without NaN, any shape.
      sparsity: the target sparsity (may be traced).
      nbins: the number of histogram bins.

    Returns:
      A float32 scalar threshold (compare with ``>``).

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> # 100 values in [0, 1]: 10 per bin, cdf = 0.1, 0.2, ...; 4 bins have cdf < 0.5
      >>> round(float(jaxprune.histogram_threshold(jnp.linspace(0., 1., 100), 0.5, 10)), 6)
      0.4
    """
    return _histogram_threshold(jnp.asarray(magnitudes, jnp.float32), sparsity, nbins, False)


def _histogram_threshold(
    values: jax.Array, sparsity: jax.typing.ArrayLike, nbins: int, magnitude: bool
) -> jax.Array:
    """histogram_threshold of ``values`` or (``magnitude``) of ``where(isnan, 0, |values|)``."""
    n = values.size
    # No histogram is built. The bin index is monotone in the magnitude, so with a_(K) the K-th
    # smallest magnitude and K the smallest count c with float32(c) / n >= s (the cdf test),
    # "cdf[j] < s" <=> "count(bin <= j) < K" <=> "j < bin(a_(K))": the number of bins with
    # cdf < s is bin(a_(K)), exactly. a_(K) comes from the sort-free counting-pass select,
    # which costs less than the scatter-add histogram (select.bin_counts), and whose first
    # pass also yields the largest magnitude: the method costs no more than the exact one.
    sparsity = sanitize_sparsity(sparsity)  # as in _exact_threshold
    token = jax.lax.bitcast_convert_type(sparsity, jnp.int32)
    k_cut = _first_count_reaching(n, sparsity, token)
    # The k_cut-th smallest, and the largest magnitude.
    value, top = _kth_largest_and_max_jit(values, n + 1 - k_cut, magnitude=magnitude)
    # The histogram spans [0, largest finite magnitude]: with an Inf, one more pass finds it.
    m = jax.lax.cond(
        jnp.isfinite(top),
        lambda v: top,
        lambda v: select.largest_finite(v, magnitude=magnitude).astype(jnp.float32),
        values,
    )
    return _histogram_from_cut(value, m, k_cut, n, nbins)


def _histogram_from_cut(
    value: jax.Array, m: jax.Array, k_cut: jax.Array, n: jax.typing.ArrayLike, nbins: int
) -> jax.Array:
    """The histogram threshold from a_(K) (``value``), the span ``m`` and the cut ``K``.

    ``(#bins with cdf < s) / nbins * m``, where that count is ``bin(a_(K))`` (0 if no
    count falls below, ``nbins`` if none reaches ``s``). Scalars or vectors alike.
    """
    safe_m = jnp.where(m > 0, m, jnp.float32(1.0))
    token = jax.lax.bitcast_convert_type(m, jnp.int32)
    below = jnp.where(
        k_cut < 1, 0, jnp.where(k_cut > n, nbins, _bin_index(value, safe_m, nbins))
    ).astype(jnp.float32)
    below = below / floatops.rounded(jnp.float32(nbins), token=token)  # true division
    return jnp.where(m > 0, below * m, jnp.float32(0.0))


def thresholds_and_masks_each(
    weights: list[jax.Array],
    sparsities: list[jax.Array],
    thresholds: list[jax.Array],
    hparams: PruningHParams,
) -> tuple[list[jax.Array], list[jax.Array]]:
    """TF's element-wise ``(threshold, mask)`` of several weights, in ONE selection loop.

    Each weight gets exactly what :func:`weight_mask` gives it on its own with 1x1 blocks
    (exact or histogram method, ``threshold_decay`` smoothing, NaN never kept), but the
    k-th largest magnitudes of all of them are found by one vectorised selection
    (:func:`select.kth_largest_each`): a model with many distinct kernel shapes compiles one
    selection loop instead of one per shape.

    Args:
      weights: floating weights of any shapes (ranked by ``where(isnan(w), 0, |w|)``).
      sparsities: one scalar sparsity per weight.
      thresholds: one previous threshold per weight (for ``threshold_decay``).
      hparams: the hyperparameters (threshold method, nbins, decay).

    Returns:
      ``(thresholds, masks)``, lists aligned with ``weights``.
    """
    sizes = np.array([int(w.size) for w in weights], np.int64)
    s = jnp.stack([sanitize_sparsity(x) for x in sparsities])
    if hparams.threshold_method == "histogram":
        current = _histogram_thresholds_each(weights, s, sizes, hparams.nbins)
    else:
        keep = jnp.asarray(sizes.astype(np.float32)) * (jnp.float32(1.0) - s)
        ks = jnp.clip(jnp.round(keep), 1, jnp.asarray(sizes.astype(np.float32)))
        current = select.kth_largest_each(weights, ks.astype(jnp.int32), magnitude=True)
    previous = jnp.stack([jnp.asarray(t, jnp.float32) for t in thresholds])
    smoothed = _smooth(current, previous, hparams.threshold_decay)
    strict = hparams.threshold_method == "histogram"
    masks = [_compare_magnitudes(w, smoothed[i], strict=strict) for i, w in enumerate(weights)]
    return list(smoothed), masks


def _histogram_thresholds_each(
    weights: list[jax.Array], sparsity: jax.Array, sizes: np.ndarray, nbins: int
) -> jax.Array:
    """:func:`_histogram_threshold` (``magnitude=True``) of each weight, vectorised."""
    n = jnp.asarray(sizes.astype(np.int32))
    token = jax.lax.bitcast_convert_type(sparsity, jnp.int32)
    k_cut = _first_count_reaching(sizes, sparsity, token)
    value, top = select.kth_largest_each_and_max(weights, n + 1 - k_cut, magnitude=True)
    value, top = value.astype(jnp.float32), top.astype(jnp.float32)
    # The histogram spans [0, largest finite magnitude]: with an Inf, one more pass finds it.
    m = jax.lax.cond(
        jnp.all(jnp.isfinite(top)),
        lambda ws: top,
        lambda ws: jnp.where(
            jnp.isfinite(top),
            top,
            jnp.stack([select.largest_finite(w, magnitude=True) for w in ws]).astype(jnp.float32),
        ),
        weights,
    )
    return _histogram_from_cut(value, m, k_cut, n, nbins)


def _first_count_reaching(n: int | np.ndarray, sparsity: jax.Array, token: jax.Array) -> jax.Array:
    """The smallest integer ``c`` in ``[0, n]`` with ``not (float32(c) / n < sparsity)``.

    Evaluates the cdf test exactly as :func:`_cdf` and ``cdf < sparsity`` do (float32
    conversion, true division); both are monotone in ``c``, so a binary search finds the
    cut. Returns ``n + 1`` if no count reaches ``sparsity``. ``n`` may be a vector of
    sizes (with ``sparsity`` and ``token`` alike): one search per entry, in one loop.
    """
    n_arr = np.asarray(n)
    den = floatops.rounded(jnp.asarray(n_arr.astype(np.float32)), token=token)

    def below(c):
        return c.astype(jnp.float32) / den < sparsity

    def body(state):
        lo, hi = state
        mid = lo + (hi - lo) // 2
        active = lo < hi
        go_up = below(mid)
        return jnp.where(active & go_up, mid + 1, lo), jnp.where(active & ~go_up, mid, hi)

    start = (
        jnp.zeros(n_arr.shape, jnp.int32),
        jnp.asarray((n_arr + 1).astype(np.int32)),
    )
    lo, _ = jax.lax.while_loop(lambda st: jnp.any(st[0] < st[1]), body, start)
    return lo


def _cdf(counts: jax.Array, n: int) -> jax.Array:
    """cumsum(counts) / n in float32 with a true division (as TF divides by max(cdf))."""
    cdf = jnp.cumsum(counts)
    return cdf.astype(jnp.float32) / floatops.rounded(jnp.float32(n), token=cdf[-1])


def _bin_index(x: jax.Array, span: jax.Array, nbins: int) -> jax.Array:
    """Exact ``clip(floor(nbins * x / span), 0, nbins - 1)`` for float32 ``x`` and ``span > 0``.

    A float32 quotient can round across an integer, so the candidate bin ``q``
    is corrected by comparing the exact products ``q * span`` and
    ``x * nbins`` (Dekker's error-free two-product and Knuth's two-sum): the
    bin is that of the exact quotient, as TF's double-precision
    ``histogram_fixed_width`` kernel computes it.
    """
    n = jnp.float32(nbins)
    q = jnp.clip(jnp.floor(x * (n / span)), 0, nbins)
    q = jnp.where(jnp.isnan(q), 0, q)
    q = jnp.where(_exceeds(q, span, x, n), q - 1, q)
    q = jnp.where(_exceeds(q + 1, span, x, n), q, q + 1)
    return jnp.clip(q, 0, nbins - 1).astype(jnp.int32)


def _exceeds(q: jax.Array, span: jax.Array, x: jax.Array, n: jax.Array) -> jax.Array:
    """Whether ``q * span > x * n`` in exact arithmetic."""
    p1, e1 = floatops.two_prod(q, span)
    p2, e2 = floatops.two_prod(x, n)
    s, t = floatops.two_sum(p1, -p2)  # s + t == p1 - p2 exactly
    exact = s + (t + (e1 - e2)) > 0
    return jnp.where(jnp.isfinite(s), exact, s > 0)
