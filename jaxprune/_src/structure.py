"""What a mask keeps: elementwise (TF's blocks), N:M groups along an axis, or whole channels.

Each structure is a small typed value, parsed once from the hyperparameters, and each has one
pure, jit-safe function that turns a weight's scores and its sparsity into a mask. Scores are
non-negative and ranked as float32 (NaN ranks as 0 and is never kept); ties are broken toward the
lower index, so every count below is exact.
"""

from __future__ import annotations

import dataclasses
import re
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import select

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Unstructured:
    """Elementwise pruning, or TF's block pruning when ``block_dims`` is not 1x1.

    Attributes:
      block_dims: (height, width) of TF's pooling blocks; ``-1`` is the whole dimension.
    """

    block_dims: tuple[int, int] = (1, 1)


@dataclasses.dataclass(frozen=True)
class NByM:
    """Keep the ``n`` largest scores in every group of ``m`` consecutive entries along ``axis``.

    Attributes:
      n: entries kept per group at the end of the schedule.
      m: group size.
      axis: the axis the groups run along (``-2``: the input axis of Dense/Conv kernels).
    """

    n: int
    m: int
    axis: int = -2

    @property
    def sparsity(self) -> float:
        """The end sparsity ``(m - n) / m``."""
        return (self.m - self.n) / self.m


@dataclasses.dataclass(frozen=True)
class Channel:
    """Prune whole slices along ``axis`` (``-1``: output channels), scored by their L2 norm.

    Attributes:
      axis: the channel axis.
    """

    axis: int = -1


Structure = Unstructured | NByM | Channel


def parse_sparsity_type(
    sparsity_type: str, axis: int | None = None, block_dims: tuple[int, int] = (1, 1)
) -> Structure:
    """Parses ``sparsity_type`` (``"unstructured"``, ``"N:M"`` or ``"channel"``) into a structure.

    Args:
      sparsity_type: the hparam value.
      axis: ``sparsity_axis``; None gives the type's default axis.
      block_dims: TF's block dims, used by ``"unstructured"``.

    Returns:
      An :class:`Unstructured`, :class:`NByM` or :class:`Channel`.

    Raises:
      ValueError: for an unknown type or an N:M string that is not ``1 <= N < M``.

    Examples:
      >>> from jaxprune._src.structure import parse_sparsity_type
      >>> parse_sparsity_type("2:4")
      NByM(n=2, m=4, axis=-2)
    """
    if not isinstance(sparsity_type, str):
        raise ValueError(f"hparam sparsity_type must be a string, got {sparsity_type!r}")
    if sparsity_type == "unstructured":
        return Unstructured(cast(tuple[int, int], tuple(block_dims)))
    if sparsity_type == "channel":
        return Channel(-1 if axis is None else axis)
    match = _NM_RE.match(sparsity_type)
    if match is None:
        raise ValueError(
            "hparam sparsity_type must be 'unstructured', 'channel' or an N:M string such as "
            f"'2:4', got {sparsity_type!r}"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise ValueError(f"hparam sparsity_type {sparsity_type!r}: N:M needs 1 <= N < M")
    return NByM(n, m, -2 if axis is None else axis)


def normalize_axis(axis: int, ndim: int, name: str) -> int:
    """``axis`` as an index in ``[0, ndim)``, or a ValueError naming the weight."""
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"hparam sparsity_axis={axis} is out of range for weight {name!r} of rank {ndim}"
        )
    return axis % ndim


def _ranked(scores: jax.Array) -> jax.Array:
    """Scores as the float32 values that are ranked: NaN as 0 (it is never kept)."""
    scores = jnp.abs(jnp.asarray(scores)).astype(jnp.float32)
    return jnp.where(jnp.isnan(scores), jnp.float32(0), scores)


def nm_keep(m: int, n: int, sparsity: jax.typing.ArrayLike) -> jax.Array:
    """Entries kept per group of ``m`` at ``sparsity``: ``m - clip(round(m * s), 0, m - n)``.

    The number of zeros per group, ``round_half_even(float32(m) * s)`` clipped to ``[0, m - n]``,
    rises monotonically with the scheduled sparsity and is exactly ``m - n`` at the end target
    ``(m - n) / m``.

    Args:
      m: group size.
      n: entries kept at the end target.
      sparsity: the scheduled sparsity (may be traced).

    Returns:
      An int32 scalar.

    Examples:
      >>> from jaxprune._src.structure import nm_keep
      >>> [int(nm_keep(4, 2, s)) for s in (0.0, 0.1, 0.2, 0.4, 0.5)]
      [4, 4, 3, 2, 2]
    """
    zeros = jnp.round(jnp.float32(m) * jnp.asarray(sparsity, jnp.float32))
    return (m - jnp.clip(zeros, 0, m - n)).astype(jnp.int32)


def nm_mask(scores: jax.Array, m: int, keep: jax.typing.ArrayLike, axis: int) -> jax.Array:
    """Keeps the ``keep`` largest scores of every ``m`` consecutive entries along ``axis``.

    Ties go to the lower index, so every group keeps exactly ``keep`` entries. The rank of an
    entry in its group is counted with ``m * m`` comparisons (no sort), which vectorises and
    keeps the weight's layout (and sharding) on every axis but ``axis``.

    Args:
      scores: the weight's scores (``|w|`` or user scores), any shape; NaN counts as 0.
      m: the group size; ``scores.shape[axis]`` must be a multiple of it.
      keep: entries kept per group (may be traced).
      axis: the group axis (non-negative).

    Returns:
      A bool mask shaped like ``scores``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.structure import nm_mask
      >>> nm_mask(jnp.array([[3., 1., 4., 1., 5., 9., 2., 6.]]), 4, 2, axis=1).astype(int).tolist()
      [[1, 0, 1, 0, 0, 1, 0, 1]]
    """
    # Ranked by the float32 bit patterns of the magnitudes (IEEE order, NaN as 0): XLA:CPU
    # would flush denormals to zero in a float comparison.
    s = select._keys(jnp.asarray(scores), jnp.dtype(jnp.float32), jnp.dtype(jnp.int32), True)
    shape = s.shape
    length = shape[axis]
    grouped = s.reshape((*shape[:axis], length // m, m, *shape[axis + 1 :]))
    g = axis + 1  # the within-group axis
    a = jnp.expand_dims(grouped, g + 1)  # entry i at g, j at g + 1
    b = jnp.expand_dims(grouped, g)
    idx = np.arange(m)
    lower = (idx[None, :] < idx[:, None]).reshape((1,) * g + (m, m) + (1,) * (s.ndim - axis - 1))
    beats = (b > a) | ((b == a) & lower)  # j beats i
    rank = jnp.sum(beats, axis=g + 1, dtype=jnp.int32)
    return (rank < jnp.asarray(keep, jnp.int32)).reshape(shape)


def channel_norms(scores: jax.Array, axis: int) -> jax.Array:
    """The L2 norm of each slice of ``scores`` along ``axis`` (float32, NaN as 0).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.structure import channel_norms
      >>> channel_norms(jnp.array([[3., 0.], [4., 1.]]), axis=1).tolist()
      [5.0, 1.0]
    """
    s = _ranked(scores)
    others = tuple(a for a in range(s.ndim) if a != axis)
    return jnp.sqrt(jnp.sum(s * s, axis=others))


def channels_pruned(channels: int, sparsity: jax.typing.ArrayLike) -> jax.Array:
    """Channels pruned at ``sparsity``: ``round_half_even(float32(C) * s)``, at most ``C - 1``.

    Examples:
      >>> from jaxprune._src.structure import channels_pruned
      >>> [int(channels_pruned(10, s)) for s in (0.0, 0.25, 0.35, 0.99)]
      [0, 2, 4, 9]
    """
    pruned = jnp.round(jnp.float32(channels) * jnp.asarray(sparsity, jnp.float32))
    return jnp.clip(pruned, 0, channels - 1).astype(jnp.int32)


def channel_mask(scores: jax.Array, pruned: jax.typing.ArrayLike, axis: int) -> jax.Array:
    """Prunes the ``pruned`` channels (slices along ``axis``) of smallest L2 norm.

    Ties are broken toward keeping the lower index, so exactly ``pruned`` channels are zero.

    Args:
      scores: the weight's scores, any shape.
      pruned: number of channels to prune (may be traced).
      axis: the channel axis (non-negative).

    Returns:
      A bool mask shaped like ``scores``: whole channels True or False.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.structure import channel_mask
      >>> w = jnp.array([[1., -5., 2.], [1., 5., 0.]])
      >>> channel_mask(w, 1, axis=1).astype(int).tolist()
      [[0, 1, 1], [0, 1, 1]]
    """
    norms = channel_norms(scores, axis)
    c = norms.shape[0]
    # A stable sort of C norms (small next to the weight): the kept order is by norm, larger
    # first, and among equal norms by index, lower first.
    order = jnp.argsort(-norms, stable=True)
    rank = jnp.zeros(c, jnp.int32).at[order].set(jnp.arange(c, dtype=jnp.int32))
    keep = rank < c - jnp.asarray(pruned, jnp.int32)
    shape = [1] * scores.ndim
    shape[axis] = c
    return jnp.broadcast_to(keep.reshape(shape), scores.shape)
