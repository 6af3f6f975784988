"""Seeing inside a user's model function: which parameters are matmul / conv weights, and where.

A model function ``fn(params, *args)`` (a linen ``model.apply``, an nnx module through
``nnx.split`` / ``nnx.merge``, or plain JAX) is traced once to a jaxpr. The modules of this
package then

1. walk the jaxpr with a generic equation visitor (``walk.py``: :func:`walk`,
   :class:`Visitor`): calls (``jit``, ``remat``/``checkpoint``, ``custom_jvp_call``,
   ``custom_vjp_call``, ...) are inlined, and ``scan`` / ``cond`` / ``while`` bodies are
   entered with their operands mapped onto the body's inputs (a fixpoint over loop carries);
2. find every use of a parameter leaf as an operand of ``dot_general`` or
   ``conv_general_dilated`` (``uses.py``: :func:`trace` -> :class:`ModelGraph` with
   :class:`ParamUse` and :class:`UnresolvedUse` records), following the leaf through
   layout-preserving operations (dtype conversion, copies, transposes, reshapes whose axis
   correspondence is exact, static slices, size-1 broadcasts; ``views.py``:
   :class:`WeightView`) and into nested jaxprs, including ``scan`` over stacked per-layer
   weights (the stacked axis becomes a *scan axis* of the use). A use that cannot be resolved
   exactly (a gather, arithmetic on the weight, a reshape that mixes axes, a body that is not
   followed) is recorded as unresolved with the reason -- never guessed;
3. evaluate the traced jaxpr with a hook that sees every recorded use's activation operand
   (``evaluate.py``: :func:`interpret`), usable inside ``jax.jit``: the hook's per-call
   results are summed over loop iterations and stacked over scanned weight slices.

Axis bookkeeping (:class:`WeightView`): the weight operand that a primitive sees is the leaf
after a chain of layout operations. The view records it as *blocks* ``(lx, ox)``: the leaf axes
``lx`` (read row-major in that order) hold exactly the elements of the operand axes ``ox`` (read
row-major in that order). ``((0,), (1,))`` is a plain axis rename, ``((0, 1), (0,))`` a merge
of two leaf axes into one operand axis, ``((0,), (0, 1))`` a split, ``((), (2,))`` an inserted
size-1 axis and ``((1,), ())`` a removed size-1 leaf axis. Static slices of leaf axes and leaf
axes consumed by enclosing scans are recorded separately. All axis numbers a
:class:`ParamUse` reports as ``*_axes`` are the leaf's own; ``*_dims`` are the operand's.

This package is generic on purpose: the Wanda statistics live in ``calibration.py``, and the
channel-coupling pass of ``shrink`` is another :class:`Visitor`.

References:
  Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models" (Wanda), 2023, https://arxiv.org/abs/2306.11695
"""

from jaxprune._src.jaxpr.evaluate import (
    Evaluator,
    Hook,
    bind_equation,
    interpret,
    leaf_layout_stats,
)
from jaxprune._src.jaxpr.uses import DATA, ModelGraph, ParamUse, UnresolvedUse, trace
from jaxprune._src.jaxpr.views import LAYOUT_PRIMITIVES, Block, WeightView, reshape_groups
from jaxprune._src.jaxpr.walk import (
    CALL_PRIMITIVES,
    IDENTITY_PRIMITIVES,
    MATMUL_PRIMITIVES,
    EqnContext,
    Path,
    Region,
    Visitor,
    call_body,
    contains_matmul,
    eqn_at,
    sub_jaxprs,
    walk,
)

__all__ = [
    "CALL_PRIMITIVES",
    "DATA",
    "IDENTITY_PRIMITIVES",
    "LAYOUT_PRIMITIVES",
    "MATMUL_PRIMITIVES",
    "Block",
    "EqnContext",
    "Evaluator",
    "Hook",
    "ModelGraph",
    "ParamUse",
    "Path",
    "Region",
    "UnresolvedUse",
    "Visitor",
    "WeightView",
    "bind_equation",
    "call_body",
    "contains_matmul",
    "eqn_at",
    "interpret",
    "leaf_layout_stats",
    "reshape_groups",
    "sub_jaxprs",
    "trace",
    "walk",
]
