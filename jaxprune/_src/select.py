"""Exact, sort-free order statistics and histograms for magnitude pruning.

`kth_largest` returns exactly the value a full descending sort (TF's ``top_k``) would put at
position ``k``, without sorting. It works on the integer bit patterns of the (non-negative)
magnitudes, whose order equals the order of the values, and narrows an interval of bit patterns
known to contain the answer with a few *counting passes*. Each pass reads the data once and counts,
for a handful of pivots at once, how many elements are ``>=`` each pivot (plus the smallest and
largest element between the two pivots nearest the expected answer, which snaps the interval to
the data actually in it). Pivots come from a small strided sample in the first pass and from
interpolation (in value space) inside the current interval afterwards, so a typical input needs
only 3-4 passes; two evenly spaced pivots per pass guarantee that the interval shrinks at least
threefold per pass, so any input finishes in a bounded number of passes.

Why counting passes: they are reductions (sums/mins), which fuse into one multi-output
("variadic") reduce on XLA:CPU, vectorize, never materialise a copy of the data, and partition
across devices under GSPMD into local reductions plus an all-reduce of a few scalars. A histogram
pass (``bincount``, a scatter-add) is several times slower on CPU, and sorting or compacting
candidates would gather data onto one device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "bin_counts",
    "kth_largest",
    "kth_largest_and_max",
    "kth_largest_each",
    "kth_largest_each_and_max",
    "largest_finite",
]

# Pivots per counting pass. XLA:CPU keeps a variadic reduce of up to ~16 outputs in registers;
# 9 pivots (+ min + max) cost about 2.5 read passes on a 2-core CPU.
_NUM_PIVOTS = 9
# Number of elements in the strided sample used to place the first pass's pivots.
_SAMPLE_SIZE = 4096
# Row length of the packed keys of many small arrays (kth_largest_each).
_PACKED_ROW = 128
# Preferred row length when the data is viewed as [rows, cols] for row-wise reductions.
_ROW = 1024
# Offsets (in standard deviations of the sampled rank) of the sample-based pivots.
_SAMPLE_OFFSETS = (-3.0, -1.5, -0.5, 0.0, 0.5, 1.5, 3.0)
# Offsets (in standard deviations of the interpolated rank) of the interpolation pivots.
_INTERP_OFFSETS = (-2.0, -0.6, 0.0, 0.6, 2.0)
# The interpolation pivots between which the data's extent is measured (-0.6 and +0.6).
_PIN = (1, 3)


def _rows_view(x: jax.Array) -> list[jax.Array]:
    """Views `x` as one or two 2-D blocks whose rows are reduced with vectorised code.

    Keeps the leading (typically sharded) dimensions of >= 2-D inputs intact when the last
    dimension is long enough, so GSPMD never needs to reshard the data.
    """
    if x.ndim >= 2 and 128 <= x.shape[-1] <= 65536:
        return [x.reshape(-1, x.shape[-1])]
    flat = x.reshape(-1)
    n = flat.shape[0]
    for cols in (_ROW, 512, 256, 128):
        if n % cols == 0:
            return [flat.reshape(-1, cols)]
    head = (n // _ROW) * _ROW
    if head == 0:
        return [flat.reshape(1, n)]
    return [flat[:head].reshape(-1, _ROW), flat[head:].reshape(1, n - head)]


def _sample(parts: Sequence[jax.Array], size: int) -> jax.Array:
    """A strided sample of roughly `size` elements (static shapes, no gather of the data)."""
    x = parts[0]
    rows, cols = x.shape
    row_stride = max(1, rows // max(1, int(math.sqrt(size))))
    n_rows = -(-rows // row_stride)
    col_stride = max(1, cols // max(1, size // n_rows))
    return x[::row_stride, ::col_stride].reshape(-1)


def _key_dtypes(dtype: np.dtype) -> tuple[np.dtype, np.dtype]:
    """(float dtype the search runs in, signed integer dtype of the same width)."""
    if dtype == jnp.float64:
        return jnp.dtype(jnp.float64), jnp.dtype(jnp.int64)
    return jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)


def _inf_key(fdtype: np.dtype, idtype: np.dtype) -> np.integer:
    """The key (bit pattern read as a signed integer) of +inf."""
    return idtype.type(np.array(np.inf, fdtype).view(idtype))


def _keys(x: jax.Array, fdtype: np.dtype, idtype: np.dtype, magnitude: bool = False) -> jax.Array:
    # Non-negative IEEE floats order like their bit patterns read as signed integers. Negative
    # inputs (which callers never pass; -0.0 is the only plausible one) get negative keys, i.e.
    # rank below +0.0, and the search never reports a key below 0. With ``magnitude`` the keys
    # are those of ``where(isnan(x), 0, |x|)``: the sign bit is cleared and NaN keys (above
    # Inf's) become 0. Inside the search loop these ops run after the loop-variant barrier, so
    # XLA recomputes them on every pass instead of materialising a full-size copy of the data
    # (a fresh buffer's page faults cost more than the two integer ops per element).
    k = lax.bitcast_convert_type(x.astype(fdtype), idtype)
    if magnitude:
        k = k & idtype.type(np.iinfo(idtype).max)
        k = jnp.where(k > _inf_key(fdtype, idtype), idtype.type(0), k)
    return k


def _count_pass(
    parts: Sequence[jax.Array],
    pivots: jax.Array,
    lo: jax.typing.ArrayLike,
    hi: jax.typing.ArrayLike,
    fdtype: np.dtype,
    idtype: np.dtype,
    magnitude: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One read of the data: counts of keys >= each pivot, min key >= lo, max key < hi.

    The min is ``big`` (the integer maximum) and the max is -1 where no key qualifies. Pivots,
    ``lo`` and ``hi`` must be non-negative keys; negative keys (only from ``-0.0`` or negative
    inputs without ``magnitude``) are never counted and never reported by the min or max.

    The pass is one variadic row reduction that XLA:CPU emits as a single vectorised loop,
    split over the cores. Per vector of keys it costs two instructions per pivot and two
    for each of the min and max:

    * ``key >= p`` is counted as ``key > p - 1`` (a compare whose all-ones mask is subtracted
      from the count);
    * the min key ``>= lo`` is ``lo + min(key - lo)`` in *unsigned* arithmetic: keys below
      ``lo`` wrap around to values ``>= 2**31``, above every key in ``[lo, 2**31)``;
    * the max key ``< hi`` is ``hi - 1 - min(hi - 1 - key)``, unsigned, likewise.

    A compare-and-select form (``where(key >= lo, key, big)``) costs three instructions each.
    """
    num = pivots.shape[0]
    big = np.iinfo(idtype).max
    bits = np.iinfo(idtype).bits
    udtype = jnp.dtype(f"uint{bits}")
    half = udtype.type(1 << (bits - 1))
    ulo = jnp.asarray(lo, idtype).astype(udtype)
    uhi1 = (jnp.asarray(hi, idtype) - 1).astype(udtype)
    below = pivots.astype(idtype) - 1
    counts, mins, maxs = [], [], []
    for x in parts:
        k = _keys(x, fdtype, idtype, magnitude)
        uk = k.astype(udtype)
        operands = tuple((k > below[i]).astype(jnp.int32) for i in range(num))
        operands += (uk - ulo, uhi1 - uk)
        inits = (np.int32(0),) * num + (udtype.type(np.iinfo(udtype).max),) * 2

        def combine(a, b):
            sums = tuple(a[i] + b[i] for i in range(num))
            return (*sums, jnp.minimum(a[num], b[num]), jnp.minimum(a[num + 1], b[num + 1]))

        # A single variadic row-reduce keeps everything in one fused, vectorised loop.
        out = lax.reduce(operands, inits, combine, (1,))
        counts.append(jnp.sum(jnp.stack(out[:num]), axis=1, dtype=jnp.int32))
        mins.append(jnp.min(out[num]))
        maxs.append(jnp.min(out[num + 1]))
    dmin = functools.reduce(jnp.minimum, mins)
    dmax = functools.reduce(jnp.minimum, maxs)
    # Offsets >= 2**31 come from keys outside [lo, 2**31) resp. [0, hi): none qualified.
    mn = jnp.where(dmin < half, (ulo + dmin).astype(idtype), idtype.type(big))
    mx = jnp.where(dmax < half, (uhi1 - dmax).astype(idtype), idtype.type(-1))
    return functools.reduce(jnp.add, counts), mn, mx


def kth_largest(
    values: jax.Array | Sequence[jax.Array], k: jax.Array | int, *, magnitude: bool = False
) -> jax.Array:
    """Returns the k-th largest element of a non-negative array, exactly, in O(n).

    The result is bit-identical to ``jnp.sort(values.ravel())[::-1][k - 1]`` with IEEE
    ordering (i.e. ``np.sort``), including ties, zeros, ``+inf`` and denormals, but no sort is
    performed: a few counting passes over the data locate the answer's bit pattern (see the
    module docstring). ``k`` may be traced, so one compilation serves every ``k``.

    Args:
      values: Array of any shape with non-negative, non-NaN entries (e.g. ``|w|``), or a list
        of such arrays, ranked together as if concatenated (no copy is made). float32 is
        the main case; bfloat16/float16 are searched as (exactly converted) float32, and float64
        (with ``jax_enable_x64``) is searched on 64-bit keys. Negative entries, including
        ``-0.0``, are treated as ``+0.0``.
      k: Integer scalar, 1-based rank (``k=1`` is the maximum); clamped to ``[1, values.size]``.
      magnitude: If True, ranks ``where(isnan(values), 0, abs(values))`` instead (any signs,
        NaN allowed) without materialising that array.

    Returns:
      A 0-d array with the k-th largest value: float64 for float64 input, else float32.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.5, 2.0, 0.0], [2.0, 1.0, jnp.inf]])
      >>> print(kth_largest(x, 1), kth_largest(x, 2), kth_largest(x, 4), kth_largest(x, 6))
      inf 2.0 1.0 0.0
    """
    return _select(values, k, magnitude=magnitude)[0]


def kth_largest_and_max(
    values: jax.Array, k: jax.Array | int, *, magnitude: bool = False
) -> tuple[jax.Array, jax.Array]:
    """``(kth_largest(values, k), largest value)`` in the passes of one selection.

    The largest value ignores NaN and may be ``+inf``; see :func:`kth_largest` for the rest.
    """
    value, _, top = _select(values, k, magnitude=magnitude)
    return value, top


def _select(
    values: jax.Array | Sequence[jax.Array], k: jax.Array | int, *, magnitude: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`kth_largest` that also returns its number of counting passes and the largest value.

    The largest value (NaN excluded, Inf included) comes free from the first pass.
    """
    item: list[jax.Array] = (
        list(values) if isinstance(values, (list, tuple)) else [jnp.asarray(values)]
    )
    value, passes, top = _select_items([item], jnp.reshape(jnp.asarray(k), (1,)), magnitude)
    return value[0], passes, top[0]


def kth_largest_each(
    values: Sequence[jax.Array], ks: jax.typing.ArrayLike, *, magnitude: bool = False
) -> jax.Array:
    """``[kth_largest(v, k) for v, k in zip(values, ks)]`` in ONE selection loop.

    Meant for many small arrays (a model's small kernels): their keys are packed into one
    ``[rows, 128]`` buffer (a copy of their size; each row belongs to one array, padded at
    the array's end) and every counting pass is one segmented reduction over it, with each
    array's own rank ``k`` and bracket. One loop and one reduction to compile, whatever the
    number of arrays and shapes, instead of one selection per shape.

    Args:
      values: a non-empty list of non-empty floating arrays of any shapes (see
        :func:`kth_largest`).
      ks: integer ranks, one per array (a sequence or an int32 vector; may be traced).
      magnitude: rank ``where(isnan(v), 0, |v|)`` (see :func:`kth_largest`).

    Returns:
      A vector with one k-th largest value per array (float64 if any input is float64).

    Examples:
      >>> import jax.numpy as jnp
      >>> kth_largest_each([jnp.array([3.0, 1.0, 2.0]), jnp.arange(10.0)], jnp.array([1, 4]))
      Array([3., 6.], dtype=float32)
    """
    return kth_largest_each_and_max(values, ks, magnitude=magnitude)[0]


def kth_largest_each_and_max(
    values: Sequence[jax.Array], ks: jax.typing.ArrayLike, *, magnitude: bool = False
) -> tuple[jax.Array, jax.Array]:
    """``(kth_largest_each(values, ks), largest value of each array)``, in one loop."""
    arrays = [jnp.asarray(v) for v in values]
    if not arrays:
        raise ValueError("kth_largest_each needs at least one array")
    ks = jnp.asarray(ks)
    if ks.shape != (len(arrays),):
        raise ValueError(f"kth_largest_each: {len(arrays)} arrays but ks of shape {ks.shape}")
    fdtype, idtype = _search_dtypes(arrays)
    sizes = [int(v.size) for v in arrays]
    if min(sizes) == 0:
        raise ValueError("kth_largest of an empty array")
    # Each array's keys, flattened and padded with -1 (below every pivot: never counted, and
    # -1 is the "max key below hi" reduction's own initial value) to whole rows.
    rows = [-(-n // _PACKED_ROW) for n in sizes]
    packed = jnp.concatenate(
        [
            jnp.pad(
                _keys(v.reshape(-1), fdtype, idtype, magnitude),
                (0, r * _PACKED_ROW - n),
                constant_values=idtype.type(-1),
            )
            for v, n, r in zip(arrays, sizes, rows, strict=True)
        ]
    ).reshape(-1, _PACKED_ROW)
    row_item = jnp.asarray(np.repeat(np.arange(len(arrays), dtype=np.int32), rows))
    num = len(arrays)
    big = np.iinfo(idtype).max

    def counter(pivots, lo, hi, it):
        data, _ = lax.optimization_barrier((packed, it))
        row_pivots, row_lo, row_hi = pivots[row_item], lo[row_item], hi[row_item]
        operands = tuple(
            (data >= row_pivots[:, i : i + 1]).astype(jnp.int32) for i in range(pivots.shape[1])
        )
        operands += (
            jnp.where(data >= row_lo[:, None], data, big),
            jnp.where(data < row_hi[:, None], data, idtype.type(-1)),
        )
        p = pivots.shape[1]
        inits = (np.int32(0),) * p + (idtype.type(big), idtype.type(-1))

        def combine(a, b):
            sums = tuple(a[i] + b[i] for i in range(p))
            return (*sums, jnp.minimum(a[p], b[p]), jnp.maximum(a[p + 1], b[p + 1]))

        out = lax.reduce(operands, inits, combine, (1,))

        def segments(op, x):
            return op(x, row_item, num_segments=num, indices_are_sorted=True)

        counts = segments(jax.ops.segment_sum, jnp.stack(out[:p], axis=1))
        return (
            counts,
            segments(jax.ops.segment_min, out[p]),
            segments(jax.ops.segment_max, out[p + 1]),
        )

    # No sample: a strided sample per array would add ops per array (compile time); the
    # first pass places its pivots by interpolation over the whole key range instead.
    value, _, top = _search(counter, None, sizes, ks, fdtype, idtype)
    return value, top


def _search_dtypes(arrays: Sequence[jax.Array]) -> tuple[np.dtype, np.dtype]:
    for v in arrays:
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise TypeError(f"kth_largest expects a floating array, got {v.dtype}")
    wide = any(v.dtype == jnp.float64 for v in arrays)
    return _key_dtypes(jnp.dtype(jnp.float64) if wide else arrays[0].dtype)


def _select_items(
    items: Sequence[Sequence[jax.Array]], ks: jax.Array, magnitude: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``len(items)`` k-th largest values, each over a list of arrays ranked together.

    Item ``i`` is ranked as if its arrays were concatenated (a global threshold), at rank
    ``ks[i]``; each counting pass reads every array in place. Returns (values, number of
    passes, largest value of each item).
    """
    fdtype, idtype = _search_dtypes([jnp.asarray(v) for item in items for v in item])
    items = [[jnp.asarray(v) for v in item if v.size] for item in items]
    sizes = [sum(int(v.size) for v in item) for item in items]
    if min(sizes) == 0:
        raise ValueError("kth_largest of an empty array")
    views = [[_rows_view(v) for v in item] for item in items]
    parts = [[part for view in item_views for part in view] for item_views in views]

    def counter(pivots, lo, hi, it):
        # The barrier keeps XLA from hoisting the (loop-invariant) key computation out of the
        # loop, which would materialise a full-size copy of the data.
        # Tying the data to the loop counter makes the barrier itself loop-variant.
        data, _ = lax.optimization_barrier((tuple(tuple(p) for p in parts), it))
        passes = [
            _count_pass(data[i], pivots[i], lo[i], hi[i], fdtype, idtype, magnitude)
            for i in range(len(items))
        ]
        return (
            jnp.stack([c for c, _, _ in passes]),
            jnp.stack([m for _, m, _ in passes]),
            jnp.stack([m for _, _, m in passes]),
        )

    # Several arrays in one item (a global threshold): each is sampled in proportion to its size.
    samples = []
    for item, item_views, n in zip(items, views, sizes, strict=True):
        lengths = (
            [_SAMPLE_SIZE]
            if len(item) == 1
            else [max(16, _SAMPLE_SIZE * int(v.size) // n) for v in item]
        )
        samples.append(
            jnp.concatenate(
                [
                    _keys(_sample(view, length), fdtype, idtype, magnitude)
                    for view, length in zip(item_views, lengths, strict=True)
                ]
            )
        )
    return _search(counter, samples, sizes, ks, fdtype, idtype)


def _search(
    counter,
    samples: list[jax.Array] | None,
    sizes: list[int],
    ks: jax.Array,
    fdtype,
    idtype,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The counting-pass search of ``len(sizes)`` independent k-th largest keys, one loop.

    ``counter(pivots [L, P], a [L], b [L], it)`` makes one counting pass: per item, the
    counts of keys >= each pivot, the smallest key >= a and the largest key < b (the integer
    maximum resp. -1 if there is none). The loop
    state holds one bracket per item and runs until every item's answer is found. The first
    pass's pivots come from each item's strided sample of keys, or, with ``samples=None``,
    from interpolation over the whole key range.
    """
    num = len(sizes)
    kk = jnp.clip(ks.astype(jnp.int32), 1, jnp.asarray(np.array(sizes, np.int32)))

    # Bracket invariant: count(key >= lo) = c_lo >= k > c_hi = count(key >= hi), so the answer's
    # key lies in [lo, hi). Done when hi == lo + 1.
    inf_key = int(_inf_key(fdtype, idtype))
    lo0, hi0 = idtype.type(0), idtype.type(inf_key + 1)
    start = (
        jnp.full((num,), lo0, idtype),
        jnp.full((num,), hi0, idtype),
        jnp.asarray(np.array(sizes, np.int32)),
        jnp.zeros((num,), jnp.int32),
    )

    tiny = np.finfo(fdtype).tiny

    def interp_pivots(lo, hi, c_lo, c_hi):
        """Pivots [L, P] for the next pass, and the pair (a, b) [L] around the expected answer."""
        lo, hi = lo[:, None], hi[:, None]
        width = (hi - lo).astype(jnp.float32)
        m = (c_lo - c_hi).astype(jnp.float32)[:, None]
        f = ((c_lo - kk).astype(jnp.float32)[:, None] + 0.5) / m  # position inside bracket
        sd = (jnp.sqrt(m * f * (1.0 - f)) + 1.0) / m
        offsets = jnp.asarray(np.array(_INTERP_OFFSETS, np.float32))
        pts = jnp.clip(f + offsets * sd, 0.0, 1.0)
        # Interpolate in value space: across a power of two the keys' density changes by 2x,
        # which key-space interpolation mistakes for a change of the data's density. (Keys
        # are linear in value inside one binade and for denormals: key space is used for
        # brackets reaching below the smallest normal, where float arithmetic flushes.)
        lo_v = lax.bitcast_convert_type(lo, fdtype)
        hi_v = lax.bitcast_convert_type(hi, fdtype)
        span = hi_v - lo_v
        by_value = (lo_v >= tiny) & jnp.isfinite(span)
        by_key = lo + jnp.floor(pts * width).astype(idtype)
        v = lax.bitcast_convert_type(lo_v + pts.astype(fdtype) * span, idtype)
        # Two key-space pivots guarantee that the bracket shrinks at least threefold.
        thirds = lo + jnp.floor(jnp.asarray([1.0 / 3.0, 2.0 / 3.0], jnp.float32) * width)
        out = jnp.concatenate(
            [jnp.where(by_value, v, by_key), thirds.astype(idtype), lo + 1, hi - 1], axis=1
        )  # lo + 1 also guarantees progress when hi - lo == 2
        interp = jnp.clip(out, lo + 1, hi - 1)
        # A narrow bracket is finished off by trying every key in it.
        every = jnp.minimum(lo + 1 + jnp.arange(_NUM_PIVOTS, dtype=idtype), hi - 1)
        narrow = hi - lo <= _NUM_PIVOTS + 1
        pivots = jnp.where(narrow, every, interp)
        # The answer most likely lies between the pivots at -0.6 and +0.6 standard deviations.
        a = jnp.where(narrow[:, 0], lo[:, 0], interp[:, _PIN[0]])
        b = jnp.where(narrow[:, 0], hi[:, 0], interp[:, _PIN[1]])
        return pivots, a, b

    if samples is None:
        first = interp_pivots(*start)[0]
    else:
        first = _sample_pivots(samples, sizes, kk, hi0, idtype)
    # count(key >= 0) < k only if negative inputs (e.g. -0.0) are selected: the last pivot.
    first_pivots = first.at[:, -1].set(lo0)

    def cond(state):
        lo, hi = state[0], state[1]
        return jnp.any(hi - lo > 1)

    def body(state):
        lo, hi, c_lo, c_hi, it, top = state
        ipivots, ia, ib = interp_pivots(lo, hi, c_lo, c_hi)
        first = it == 0
        pivots = jnp.where(first, first_pivots, ipivots)
        # The pass also finds the data's extent in [a, b): the min key >= a, the max key < b.
        # The first pass spans everything (its max is the largest value); later ones the
        # pivots around the expected answer, so that a bracket ending up between them shrinks
        # to the keys actually present.
        a = jnp.where(first, lo, ia)
        b = jnp.where(first, hi, ib)
        counts, mn, mx = counter(pivots, a, b, it)
        ge = counts >= kk[:, None]
        new_lo = jnp.maximum(lo, jnp.max(jnp.where(ge, pivots, lo[:, None]), axis=1))
        new_c_lo = jnp.minimum(c_lo, jnp.min(jnp.where(ge, counts, c_lo[:, None]), axis=1))
        new_hi = jnp.minimum(hi, jnp.min(jnp.where(ge, hi[:, None], pivots), axis=1))
        new_c_hi = jnp.maximum(c_hi, jnp.max(jnp.where(ge, c_hi[:, None], counts), axis=1))
        # No key lies in [a, mn) or (mx, b): a bracket end inside such a gap moves to its edge
        # (the counts are unchanged).
        new_lo = jnp.where((new_lo >= a) & (new_lo < mn), mn, new_lo)
        new_hi = jnp.where((new_hi <= b) & (new_hi > mx + 1), mx + 1, new_hi)
        new_hi = jnp.maximum(new_hi, new_lo + 1)
        # The k-th largest is negative (only -0.0 is plausible): report +0.0.
        negative = (it == 0) & (counts[:, -1] < kk)
        new_lo = jnp.where(negative, lo0, new_lo)
        new_hi = jnp.where(negative, lo0 + 1, new_hi)
        # Items already found keep their bracket (they are still counted until all are done).
        done = hi - lo <= 1
        new_lo, new_hi = jnp.where(done, lo, new_lo), jnp.where(done, hi, new_hi)
        new_c_lo = jnp.where(done, c_lo, new_c_lo)
        new_c_hi = jnp.where(done, c_hi, new_c_hi)
        # The first pass sees every key below Inf's + 1: its max is the largest value.
        top = jnp.where(it == 0, mx, top)
        return new_lo, new_hi, new_c_lo, new_c_hi, it + 1, top

    state = (*start, jnp.int32(0), jnp.full((num,), -1, idtype))
    lo, _, _, _, passes, top = lax.while_loop(cond, body, state)
    return lax.bitcast_convert_type(lo, fdtype), passes, lax.bitcast_convert_type(top, fdtype)


def _sample_pivots(
    samples: list[jax.Array], sizes: list[int], kk: jax.Array, hi0, idtype
) -> jax.Array:
    """First-pass pivots: quantiles of each item's sorted sample around the expected rank.

    The samples of all items are padded to one length with the largest key and sorted
    together (one sort). The last column is a placeholder (the caller sets it).
    """
    big = np.iinfo(idtype).max
    s_len = max(int(s.shape[0]) for s in samples)
    lengths = [s.shape[0] for s in samples]
    sample = jnp.sort(
        jnp.stack([jnp.pad(s, (0, s_len - s.shape[0]), constant_values=big) for s in samples]),
        axis=1,
    )
    s_num = jnp.asarray(np.array(lengths, np.float32))
    n_f = jnp.asarray(np.array(sizes, np.float32))
    frac = (n_f - kk.astype(jnp.float32) + 0.5) / n_f  # ascending quantile of the answer
    centre = frac * s_num - 0.5
    sigma = jnp.sqrt(s_num * frac * (1.0 - frac)) + 1.0
    idx = jnp.stack(
        [jnp.clip(jnp.round(centre + t * sigma), 0, s_num - 1) for t in _SAMPLE_OFFSETS], axis=1
    ).astype(jnp.int32)
    picked = jnp.clip(jnp.take_along_axis(sample, idx, axis=1), 0, hi0)
    middle = picked[:, len(_SAMPLE_OFFSETS) // 2]
    ties = jnp.clip(middle + 1, 0, hi0)[:, None]  # resolves ties at once
    return jnp.concatenate([picked, ties, jnp.zeros_like(ties)], axis=1)


def largest_finite(values: jax.Array, *, magnitude: bool = False) -> jax.Array:
    """The largest finite entry of non-negative ``values`` (``magnitude``: of ``|values|``).

    NaN is ignored; 0.0 if there is no finite entry. One counting pass (its "max key below
    Inf"), with no full-size copy of the data as ``where(isfinite(v), v, 0)`` would make.
    """
    values = jnp.asarray(values)
    fdtype, idtype = _key_dtypes(values.dtype)
    inf_key = _inf_key(fdtype, idtype)
    _, _, mx = _count_pass(
        _rows_view(values), jnp.stack([inf_key]), inf_key, inf_key, fdtype, idtype, magnitude
    )
    return lax.bitcast_convert_type(jnp.maximum(mx, idtype.type(0)), fdtype)


def bin_counts(indices: jax.Array, nbins: int = 256) -> jax.Array:
    """Counts occurrences of each integer in ``[0, nbins)`` (a fast, exact ``bincount``).

    XLA:CPU scatter-adds cost a few ns per update regardless of the number of bins, so groups of
    ``g`` adjacent indices are first packed into one joint index in ``[0, nbins**g)`` (keeping
    the joint table <= 65536 bins, i.e. cache-resident); one scatter-add per group builds the
    joint histogram, whose marginals are summed. For ``nbins=256`` this halves the scatter
    work. Under GSPMD the scatter partitions into local scatters plus an all-reduce of the table.

    Args:
      indices: Integer array of any shape with entries in ``[0, nbins)``; entries outside that
        range are not counted.
      nbins: Static number of bins.

    Returns:
      int32 array of shape ``[nbins]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> bin_counts(jnp.array([0, 3, 3, 1, 3]), 4)
      Array([1, 1, 0, 3], dtype=int32)
    """
    nbins = int(nbins)
    if nbins < 1:
        raise ValueError(f"nbins must be >= 1, got {nbins}")
    x = jnp.asarray(indices).astype(jnp.int32)
    # Rows along the last axis, never a flat view: flattening a column-sharded array would
    # all-gather it, while this keeps a sharded weight's layout for the scatters.
    x = x.reshape(-1, x.shape[-1]) if x.ndim >= 2 and x.shape[-1] > 0 else x.reshape(1, -1)
    # Invalid entries get the extra bin `nbins` (dropped, or their slot of the joint index).
    x = jnp.where((x >= 0) & (x < nbins), x, nbins)
    rows, cols = x.shape
    group = 1
    while nbins ** (group + 1) <= 65536 and group < 4:
        group += 1
    head = (cols // group) * group
    if group == 1 or head == 0:
        return jnp.zeros(nbins, jnp.int32).at[x].add(1, mode="drop")
    base = nbins + 1
    digits = x[:, :head].reshape(rows, head // group, group)
    joint = digits[..., 0]
    for j in range(1, group):
        joint = joint * base + digits[..., j]
    table = jnp.zeros(base**group, jnp.int32).at[joint].add(1, mode="promise_in_bounds")
    table = table.reshape((base,) * group)
    total = jnp.zeros(base, jnp.int32)
    for axis in range(group):
        total = total + jnp.sum(table, axis=tuple(a for a in range(group) if a != axis))
    total = total.at[x[:, head:]].add(1, mode="promise_in_bounds")
    return total[:nbins]
