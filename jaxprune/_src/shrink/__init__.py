"""Shrinking channel-pruned models: pruned channels taken out of the arrays.

``shrink(fn, params, *example_args, masks=None)`` traces ``fn(params, *example_args)`` to a
jaxpr (:func:`jaxprune._src.jaxpr.trace`) and runs three passes over it with the generic
walker of ``jaxprune._src.jaxpr`` (:func:`~jaxprune._src.jaxpr.walk`, which inlines calls and
enters ``scan`` / ``cond`` / ``while``):

1. **Coupling** (:class:`Coupler`): every axis of every value gets a *dimension*; a union-find
   joins the dimensions that must keep the same channel indexing: the operands of elementwise
   ops, a ``dot_general``'s contracting / batch pairs and its free dims with the output's, a
   convolution's input features with the kernel's input features and its output features with
   the kernel's, reshapes (a merge ``(h, w, c) -> h*w*c`` makes a *composite* dimension whose
   factors stay separate groups, so a Dense after a flatten is sliced by blocks), transposes and
   broadcasts. A group (a union-find class) is *blocked* -- left whole -- when it reaches an
   input or an output of ``fn``, a reduction over it (LayerNorm / RMSNorm statistics, softmax,
   ``argmax``, ...), an ``iota`` along it, a gather, a slice / pad / concatenate along it, a
   grouped convolution, a reshape that regroups it, a constant array of ``fn``, a scanned-over
   axis or any primitive this module does not know. BatchNorm with running statistics is
   elementwise per channel and is sliced.
2. **Constants** (:class:`Constants`): for every candidate group and channel ``j``, which
   values are a known constant on their slice ``j`` (for all inputs): a zero kernel slice makes
   the matmul's output slice 0, adding a bias makes it ``b[j]``, elementwise ops (activations,
   BatchNorm) are evaluated on those constants, ``0 * anything`` is 0.
3. **Decision**: at every contraction of a group (a ``dot_general`` contracting pair, a
   convolution's input features), channel ``j`` contributes nothing when one side's slice is
   known 0. When the activation side is a known nonzero constant ``c_j`` (a pruned channel with
   a bias: ``act(b_j)``) and the other side is a parameter used as it is, the contribution
   ``c_j * W[j, ...]`` does not depend on the input, and is added back exactly: *folded* into
   the next layer's bias when the matmul's only consumer is ``+ bias`` (a ``dot_general``, or
   a convolution without padding or input dilation); otherwise (no bias, a zero-padded
   convolution, whose constant contribution varies at the borders) ``small_fn`` adds it as a
   constant after that matmul (:attr:`ShrunkFunction.corrections`, computed once from the dense
   weights with the example input shapes), unless ``constants=False``, which keeps such
   channels. In a loop body, or when the other side is not a parameter used as it is, the
   channel is kept. A channel is removed iff it vanishes (or is added back) at every
   contraction of its group; at least one channel of a group is always kept.

``small_fn`` re-evaluates the traced jaxpr on the small arrays (:class:`ShrunkFunction`): each
equation is bound with its shape parameters (``reshape`` / ``broadcast_in_dim`` / ``iota``)
recomputed from the new sizes of its dimensions, and every result's shape is checked. It works
under ``jax.jit`` for inputs of the example shapes (the jaxpr is specialised to them; call
``shrink`` again for other shapes). Calls are inlined (forward semantics: custom derivative
rules are not kept), loops and conditionals are re-expressed with ``lax.scan`` / ``lax.switch``
/ ``lax.while_loop``. ``shrink`` checks ``small_fn`` against the masked dense model on the
example inputs before returning (``check=True``).

References:
  Li et al., "Pruning Filters for Efficient ConvNets", 2017, https://arxiv.org/abs/1608.08710;
  Fang et al., "DepGraph: Towards Any Structural Pruning", 2023,
  https://arxiv.org/abs/2301.12900
"""

from jaxprune._src.shrink.api import shrink, shrink_nnx
from jaxprune._src.shrink.function import ShrunkFunction
from jaxprune._src.shrink.report import ShrinkReport, format_report

__all__ = ["ShrinkReport", "ShrunkFunction", "format_report", "shrink", "shrink_nnx"]
