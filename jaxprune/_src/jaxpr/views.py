"""Weight views: a value that is a parameter leaf with only its layout changed.

The weight operand that a primitive sees is the leaf after a chain of layout operations.
:class:`WeightView` records it as *blocks* ``(lx, ox)``: the leaf axes ``lx`` (read row-major in
that order) hold exactly the elements of the operand axes ``ox`` (read row-major in that order).
``((0,), (1,))`` is a plain axis rename, ``((0, 1), (0,))`` a merge of two leaf axes into one
operand axis, ``((0,), (0, 1))`` a split, ``((), (2,))`` an inserted size-1 axis and
``((1,), ())`` a removed size-1 leaf axis. Static slices of leaf axes and leaf axes consumed by
enclosing scans are recorded separately.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxprune._src.jaxpr.walk import IDENTITY_PRIMITIVES, Path

Block = tuple[tuple[int, ...], tuple[int, ...]]

LAYOUT_PRIMITIVES = IDENTITY_PRIMITIVES | {
    "split",
    "transpose",
    "reshape",
    "squeeze",
    "broadcast_in_dim",
    "slice",
}
"""Primitives a :class:`WeightView` is followed through (when the axis mapping is exact)."""

# ----------------------------------------------------------------------------- weight views


def reshape_groups(
    in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[tuple[list[int], list[int]]]:
    """Pairs the non-size-1 axes of a reshape into the smallest runs of equal element count.

    Each ``(old_axes, new_axes)`` run holds the same elements before and after the reshape
    (row-major): a rename, a merge, a split, or a regrouping (several axes on both sides).

    Examples:
      >>> from jaxprune._src.jaxpr import reshape_groups
      >>> reshape_groups((2, 3, 4), (6, 1, 4))
      [([0, 1], [0]), ([2], [2])]
    """
    old = [i for i, s in enumerate(in_shape) if s != 1]
    new = [j for j, s in enumerate(out_shape) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(old):
        go, gn = [old[i]], [new[j]]
        po, pn = in_shape[old[i]], out_shape[new[j]]
        i, j = i + 1, j + 1
        while po != pn:
            if po < pn:
                go.append(old[i])
                po *= in_shape[old[i]]
                i += 1
            else:
                gn.append(new[j])
                pn *= out_shape[new[j]]
                j += 1
        groups.append((go, gn))
    return groups


@dataclasses.dataclass(frozen=True)
class WeightView:
    """A value that is parameter leaf ``leaf`` with only its layout changed (see module doc).

    Attributes:
      leaf: index of the parameter leaf (into :attr:`ModelGraph.param_names`).
      leaf_shape: the leaf's shape.
      blocks: ``(lx, ox)`` pairs: leaf axes ``lx`` hold exactly the elements of operand axes
        ``ox``, both read row-major. Every leaf axis not consumed by a scan is in exactly one
        ``lx``; every axis of the value is in exactly one ``ox``.
      slices: ``(leaf_axis, start, stop, stride)`` static slices applied to leaf axes.
      scans: ``(scan_path, leaf_axis, length)`` for each enclosing ``scan`` that slices the
        leaf along ``leaf_axis`` (stacked per-layer weights), outermost first.
    """

    leaf: int
    leaf_shape: tuple[int, ...]
    blocks: tuple[Block, ...]
    slices: tuple[tuple[int, int, int, int], ...] = ()
    scans: tuple[tuple[Path, int, int], ...] = ()

    @classmethod
    def of_leaf(cls, leaf: int, shape: Sequence[int]) -> WeightView:
        """The leaf itself: one rename block per axis."""
        return cls(leaf, tuple(shape), tuple(((a,), (a,)) for a in range(len(shape))))

    def leaf_axis_size(self, axis: int) -> int:
        """The size of leaf axis ``axis`` in this view (after slicing)."""
        for a, start, stop, stride in self.slices:
            if a == axis:
                return len(range(start, stop, stride))
        return self.leaf_shape[axis]

    def block_of(self, operand_axis: int) -> Block:
        for block in self.blocks:
            if operand_axis in block[1]:
                return block
        raise KeyError(operand_axis)

    @property
    def scan_axes(self) -> tuple[int, ...]:
        return tuple(a for _, a, _ in self.scans)

    def _with_blocks(self, blocks) -> WeightView:
        blocks = tuple((tuple(lx), tuple(ox)) for lx, ox in blocks if lx or ox)
        return dataclasses.replace(self, blocks=blocks)

    @property
    def is_whole(self) -> bool:
        """Whether the value holds every element of the leaf, once (no slices, no scans)."""
        return not self.slices and not self.scans

    def apply(self, leaf: np.ndarray, operand_shape: Sequence[int]) -> np.ndarray:
        """The value this view is, computed from the leaf's value (requires :attr:`is_whole`).

        Args:
          leaf: the leaf's value (of :attr:`leaf_shape`).
          operand_shape: the shape of the value.

        Returns:
          ``leaf`` with the view's layout changes applied (a NumPy array).
        """
        if not self.is_whole:
            raise ValueError("WeightView.apply: a sliced or scanned view")
        leaf_order = [a for lx, _ in self.blocks for a in lx]
        op_order = [o for _, ox in self.blocks for o in ox]
        x = np.transpose(np.asarray(leaf), leaf_order)
        x = np.reshape(x, [operand_shape[o] for o in op_order])
        return np.transpose(x, np.argsort(op_order))

    # Layout transfer functions: each returns the new view, or a str saying why not.

    def transpose(self, perm: Sequence[int]) -> WeightView:
        new_of = {old: new for new, old in enumerate(perm)}
        return self._with_blocks([(lx, [new_of[o] for o in ox]) for lx, ox in self.blocks])

    def broadcast_in_dim(self, in_shape, out_shape, bdims) -> WeightView | str:
        for j, d in enumerate(bdims):
            if in_shape[j] != out_shape[d]:
                return "broadcast_in_dim expands an axis of the weight"
        new_axes = sorted(set(range(len(out_shape))) - set(bdims))
        if any(out_shape[d] != 1 for d in new_axes):
            return "broadcast_in_dim broadcasts the weight to a larger shape"
        blocks = [(lx, [bdims[o] for o in ox]) for lx, ox in self.blocks]
        return self._with_blocks(blocks + [((), (d,)) for d in new_axes])

    def reshape(self, in_shape, out_shape) -> WeightView | str:
        if 0 in in_shape:
            return "reshape of an empty weight"
        # Size-1 axes carry no elements: drop the old ones, add the new ones as blocks.
        blocks = [(lx, [o for o in ox if in_shape[o] != 1]) for lx, ox in self.blocks]
        blocks = [(lx, ox) for lx, ox in blocks if lx or ox]
        groups = reshape_groups(in_shape, out_shape)
        owner = {o: b for b, (_, ox) in enumerate(blocks) for o in ox}
        replace: dict[int, list[int]] = {}
        merged: list[Block] = []
        gone: set[int] = set()
        for go, gn in groups:
            if len(go) == 1:
                replace[go[0]] = gn  # a rename or a row-major split of one operand axis
                continue
            # Several old axes: they must be whole blocks, each in its row-major order.
            k = 0
            lxs: list[int] = []
            while k < len(go):
                b = owner[go[k]]
                lx, ox = blocks[b]
                if list(go[k : k + len(ox)]) != list(ox):
                    return "reshape mixes axes of the weight"
                lxs.extend(lx)
                gone.add(b)
                k += len(ox)
            merged.append((tuple(lxs), tuple(gn)))
        out: list[tuple[tuple[int, ...], Sequence[int]]] = []
        for b, (lx, ox) in enumerate(blocks):
            if b in gone:
                continue
            out.append((lx, [n for o in ox for n in replace[o]]))
        out += merged
        out += [((), (d,)) for d, s in enumerate(out_shape) if s == 1]
        return self._with_blocks(out)

    def slice(self, in_shape, start, limit, strides) -> WeightView | str:
        strides = strides or (1,) * len(in_shape)
        slices = list(self.slices)
        for d, (s0, s1, st) in enumerate(zip(start, limit, strides, strict=True)):
            if (s0, s1, st) == (0, in_shape[d], 1):
                continue
            lx, ox = self.block_of(d)
            if len(lx) != 1 or len(ox) != 1 or any(a == lx[0] for a, *_ in slices):
                return "slice of a reshaped or already sliced weight axis"
            slices.append((lx[0], s0, s1, st))
        return dataclasses.replace(self, slices=tuple(slices))

    def scan_slice(self, scan_path: Path, length: int) -> WeightView | str:
        lx, ox = self.block_of(0)
        if len(lx) != 1 or ox != (0,) or any(a == lx[0] for a, *_ in self.slices):
            return "scanned over an axis that is not one whole axis of the weight"
        blocks = [(lx2, [o - 1 for o in ox2]) for lx2, ox2 in self.blocks if (lx2, ox2) != (lx, ox)]
        view = self._with_blocks(blocks)
        return dataclasses.replace(view, scans=(*self.scans, (scan_path, lx[0], length)))
