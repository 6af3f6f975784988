"""Shrinking channel-pruned models: pruned channels taken out of the arrays.

``shrink(fn, params, *example_args, masks=None)`` traces ``fn(params, *example_args)`` to a
jaxpr (:func:`jaxprune._src.jaxpr.trace`) and runs three passes over it with the generic
walker of ``jaxprune._src.jaxpr`` (:func:`~jaxprune._src.jaxpr.walk`, which inlines calls and
enters ``scan`` / ``cond`` / ``while``):

1. **Coupling** (``coupling.py``: :class:`Coupler`; ``analysis.py``: :func:`couple`, which
   also lists the groups as :class:`ChannelGroup` records for structured pruning): every
   axis of every value gets a *dimension*; a union-find (``dims.py``) joins the dimensions
   that must keep the same channel indexing: the operands of elementwise ops, a
   ``dot_general``'s contracting / batch pairs and its free dims with the output's, a
   convolution's feature axes with the kernel's, reshapes (a merge ``(h, w, c) -> h*w*c``
   makes a *composite* dimension whose factors stay separate groups, so a Dense after a
   flatten is sliced by blocks, and grouped-query attention's ``(kv_heads, group)`` reshape
   makes the query-head axis the pair), splits and concatenations into equal pieces (the
   piece index is a factor that stays whole), transposes, broadcasts, slices, dynamic slices
   and gathers of other axes. A group is *blocked* -- left whole -- when it reaches an input
   or an output of ``fn``, a reduction over it, an ``iota`` along it, a slice / pad / unequal
   concatenation along it, a grouped convolution, a reshape that regroups it, a constant
   array of ``fn``, a scanned-over axis or any primitive shrink does not follow.
2. **Constants** (``constants.py``: :class:`Constants`): for every candidate group and
   channel ``j``, which values are a known constant on their slice ``j`` (for all inputs): a
   zero kernel slice makes the matmul's output slice 0, adding a bias makes it ``b[j]``,
   elementwise ops (activations, BatchNorm) are evaluated on those constants, ``0 *
   anything`` is 0. Constants are also kept per index of one other small axis (up to
   16) of parameters and matmul outputs, so a slice that picks part of that axis knows its
   channels: gemma's ``gate[..., 1, :]`` of a gating kernel ``(2, D, F)`` whose up half
   alone is zero on unit ``j`` is 0 on ``j``.
3. **Decision** (``decision.py``: :class:`Decision`): at every contraction of a group,
   channel ``j`` contributes nothing when one side's slice is known 0. When the activation
   side is a known nonzero constant ``c_j`` (a pruned channel with a bias: ``act(b_j)``) and
   the other side is a parameter up to layout, the contribution ``c_j * W[j, ...]`` does not
   depend on the input and is *folded* into the bias that is added to the matmul's output
   (through transposes, reshapes and additions of other values), or, with
   ``constants=True`` only, added by ``small_fn`` after the matmul. A channel is removed iff
   it vanishes (or is added back) at every contraction of its group; at least one channel of
   a group is always kept.

``small_fn`` (``function.py``: :class:`ShrunkFunction`) re-traces ``fn`` at every new input
signature, applies the same decisions (the kept indices of every parameter axis), proves on
that trace that every removed channel vanishes (raising otherwise), and evaluates the trace on
the small arrays with the one evaluator of ``jaxprune._src.jaxpr``, every shape-carrying
parameter recomputed from the new sizes. ``shrink`` checks ``small_fn`` against the masked
dense model on the example inputs before returning (``check=True``). The entry points are in
``api.py``, the report in ``report.py``.

References:
  Li et al., "Pruning Filters for Efficient ConvNets", 2017, https://arxiv.org/abs/1608.08710;
  Fang et al., "DepGraph: Towards Any Structural Pruning", 2023,
  https://arxiv.org/abs/2301.12900
"""

from jaxprune._src.shrink.api import shrink, shrink_nnx
from jaxprune._src.shrink.function import ShrunkFunction
from jaxprune._src.shrink.report import ShrinkReport, format_report

__all__ = ["ShrinkReport", "ShrunkFunction", "format_report", "shrink", "shrink_nnx"]
