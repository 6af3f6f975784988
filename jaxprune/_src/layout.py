"""A weight as the matrices of the pruning papers: ``(out, d)`` per group, from its traced uses.

SparseGPT, Wanda and OWL describe a linear layer's weight as a matrix ``W`` of shape
``(out, d)``: one row per output unit, one column per input feature (``y = W x``). A JAX
parameter leaf is that matrix in some layout: flax kernels are ``(in, out)``, equinox and
``x @ W.T`` weights ``(out, in)``, conv kernels ``(h, w, in, out)`` (``d = h * w * in``), einsum
kernels such as ``(2, hidden, D)``, stacked per-layer weights ``(L, in, out)``. A
:class:`WeightLayout` names which leaf axes are the inputs (contracted by the weight's matmuls),
which index separate matrices (*group axes*: stacked layers scanned over, per-head
``dot_general`` batch axes, statically indexed axes) and which are the outputs (the rest), and
converts between the leaf and the ``(groups, out, d)`` stack of matrices. Input features are
numbered row-major over the input axes in leaf order (a conv's ``(h, w, in)``), output units
row-major over the output axes.

:func:`layout_of_uses` reads the layout from a weight's traced uses
(:class:`jaxprune._src.jaxpr.ParamUse`); :func:`jaxprune.weight_layouts` does so for every
weight of a model function.

References:
  Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
  ICML 2023, https://arxiv.org/abs/2301.00774
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxprune._src import jaxpr as mg


@dataclasses.dataclass(frozen=True)
class WeightLayout:
    """Which axes of a weight are its input features, its output units and its groups.

    Attributes:
      shape: the weight's shape.
      input_axes: the axes its matmuls / convs contract (sorted); ``d`` is the product of
        their sizes, features numbered row-major over them.
      group_axes: axes whose every index is a separate matrix (sorted): stacked per-layer
        weights scanned over, ``dot_general`` batch axes (per-head weights), statically indexed
        axes (``stack[i]``).

    Examples:
      >>> from jaxprune import WeightLayout
      >>> conv = WeightLayout((3, 3, 16, 32), input_axes=(0, 1, 2))
      >>> conv.output_axes, conv.d, conv.out, conv.groups
      ((3,), 144, 32, 1)
    """

    shape: tuple[int, ...]
    input_axes: tuple[int, ...]
    group_axes: tuple[int, ...] = ()

    def __post_init__(self):
        shape = tuple(int(n) for n in self.shape)
        object.__setattr__(self, "shape", shape)
        for field in ("input_axes", "group_axes"):
            axes = tuple(sorted(int(a) for a in getattr(self, field)))
            object.__setattr__(self, field, axes)
        inputs, groups = set(self.input_axes), set(self.group_axes)
        ndim = len(shape)
        if (
            len(inputs) != len(self.input_axes)
            or len(groups) != len(self.group_axes)
            or inputs & groups
            or any(not 0 <= a < ndim for a in inputs | groups)
        ):
            raise ValueError(
                f"WeightLayout: input_axes {self.input_axes} and group_axes {self.group_axes} "
                f"must be distinct axes of a weight of rank {ndim}"
            )

    @property
    def output_axes(self) -> tuple[int, ...]:
        """The axes that are neither inputs nor groups (sorted)."""
        taken = set(self.input_axes) | set(self.group_axes)
        return tuple(a for a in range(len(self.shape)) if a not in taken)

    @property
    def d(self) -> int:
        """Input features per matrix (the product of the input axes' sizes)."""
        return math.prod(self.shape[a] for a in self.input_axes)

    @property
    def out(self) -> int:
        """Output units per matrix (the product of the output axes' sizes)."""
        return math.prod(self.shape[a] for a in self.output_axes)

    @property
    def groups(self) -> int:
        """Number of matrices (the product of the group axes' sizes)."""
        return math.prod(self.shape[a] for a in self.group_axes)

    @property
    def group_shape(self) -> tuple[int, ...]:
        """The sizes of the group axes."""
        return tuple(self.shape[a] for a in self.group_axes)

    def _perm(self) -> tuple[int, ...]:
        return self.group_axes + self.output_axes + self.input_axes

    def to_matrix(self, x: jax.Array) -> jax.Array:
        """The weight (or anything shaped like it) as ``(groups, out, d)`` matrices."""
        return jnp.transpose(x, self._perm()).reshape(self.groups, self.out, self.d)

    def from_matrix(self, m: jax.Array) -> jax.Array:
        """Inverse of :meth:`to_matrix`: ``(groups, out, d)`` back to the weight's shape."""
        perm = self._perm()
        x = jnp.reshape(m, [self.shape[a] for a in perm])
        return jnp.transpose(x, [perm.index(a) for a in range(len(self.shape))])


def layout_of_uses(uses: Sequence[mg.ParamUse], shape: Sequence[int]) -> WeightLayout | str:
    """The layout all of a weight's uses agree on, or why there is none.

    Every use must contract the same leaf axes, none may mix contracted and output elements in
    one leaf axis, slice an output axis (the inputs would then differ between output units), or
    be a grouped convolution (whose inputs depend on the output's group).

    Args:
      uses: the weight's resolved uses (at least one).
      shape: the weight's shape.

    Returns:
      The :class:`WeightLayout`, or a str saying why the uses do not share one.
    """
    layouts = set()
    for u in uses:
        if u.primitive == "conv_general_dilated" and u.params["feature_group_count"] != 1:
            return "a grouped convolution (feature_group_count > 1)"
        if u.mixed_axes:
            return f"leaf axes {u.mixed_axes} hold both contracted and output elements"
        outputs = set(u.output_axes)
        if any(a in outputs for a, *_ in u.view.slices):
            return "an output axis is sliced (its slices see different inputs)"
        roles = set(u.contracting_axes) | set(u.output_axes)
        groups = tuple(a for a in range(len(shape)) if a not in roles)
        layouts.add((u.contracting_axes, groups))
    if len(layouts) != 1:
        return f"its uses contract different axes ({sorted(c for c, _ in layouts)})"
    ((inputs, groups),) = layouts
    if not inputs:
        return "no axis is contracted"
    return WeightLayout(tuple(shape), inputs, groups)


def leading_layout(shape: Sequence[int], d: int, groups: int = 1) -> WeightLayout | None:
    """The layout whose group axes lead and whose input axes follow (flax's ``(in, out)``).

    The shortest run of leading axes whose sizes multiply to ``groups`` are the group axes; the
    shortest run after them whose sizes multiply to ``d`` are the inputs (size-1 axes join the
    outputs). None if no such runs exist or they leave no output axis.
    """
    shape = tuple(shape)
    pos, axes = 0, []
    for target in (groups, d):
        run, size = [], 1
        while size < target and pos < len(shape):
            run.append(pos)
            size *= shape[pos]
            pos += 1
        if size != target:
            return None
        axes.append(tuple(run))
    if pos == len(shape) or not axes[1]:
        return None
    return WeightLayout(shape, axes[1], axes[0])
