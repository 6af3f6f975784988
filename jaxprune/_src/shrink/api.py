"""The entry points: :func:`shrink` and :func:`shrink_nnx`."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import jaxpr as mg
from jaxprune._src import tree as tree_lib
from jaxprune._src.shrink import analysis
from jaxprune._src.shrink.constants import (
    EMPTY,
    SUB_AXIS_MAX,
    ChannelConstants,
    Constants,
    slice_constants,
    slice_constants_by,
)
from jaxprune._src.shrink.decision import Decision, take_dims
from jaxprune._src.shrink.function import AxisCut, ShrunkFunction
from jaxprune._src.shrink.report import ShrinkReport

# ----------------------------------------------------------------------------- checks


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _is_array_like(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | bool | int | float | complex) or (
        hasattr(x, "shape") and hasattr(x, "dtype")
    )


def check_params(params: Any, caller: str = "shrink") -> None:
    """Raises ``ValueError`` (naming the leaf, never dumping the model) unless ``params`` is a
    pytree of arrays: an nnx Module, or a module holding non-array leaves (an equinox module
    not filtered with ``eqx.is_array``), is caught here, before tracing."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(params, nnx.Module):
        raise ValueError(
            f"{caller}: params is an nnx.Module ({type(params).__name__}); pass its state: "
            "graphdef, state = nnx.split(model); jaxprune.shrink(lambda s, *a: "
            "nnx.merge(graphdef, s)(*a), state, *example_args), or call "
            "jaxprune.shrink_nnx(model, *example_args)"
        )
    flat = jax.tree_util.tree_flatten_with_path(tree_lib.unbox(params))[0]
    for path, leaf in flat:
        if not _is_array_like(leaf):
            raise ValueError(
                f"{caller}: params leaf {tree_lib.path_name(path)!r} is a "
                f"{type(leaf).__name__}, not an array: params must be a pytree of arrays "
                "(with equinox: params, static = eqx.partition(model, eqx.is_array) and "
                "fn = lambda p, *a: eqx.combine(p, static)(*a))"
            )


def _masked(params, masks, caller: str = "shrink"):
    """``params`` with ``masks`` applied (each mask checked: a bool array of its leaf's shape)."""
    if masks is None:
        return params
    plain = tree_lib.unbox(params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(plain)
    try:
        flat_masks = tree_lib.flatten_up_to(treedef, tree_lib.unbox(masks))
    except (ValueError, TypeError):
        n = len(jax.tree.leaves(masks))
        raise ValueError(
            f"{caller}: masks must have the structure of params (a bool array or None per "
            f"parameter); got {n} mask leaves in another structure for {len(flat)} parameters"
        ) from None
    out = []
    for (path, w), m in zip(flat, flat_masks, strict=True):
        if m is None:
            out.append(w)
            continue
        name = tree_lib.path_name(path)
        shape, dtype = tuple(np.shape(m)), getattr(m, "dtype", np.asarray(m).dtype)
        if shape != tuple(np.shape(w)) or dtype != np.bool_:
            raise ValueError(
                f"{caller}: the mask of {name!r} has shape {shape} and dtype {dtype}; the "
                f"parameter has shape {tuple(np.shape(w))}: a mask is a bool array of its "
                "parameter's shape (True = keep), never broadcast"
            )
        out.append(jnp.asarray(np.where(np.asarray(m), w, np.zeros((), w.dtype))))
    return jax.tree.unflatten(jax.tree.structure(params), out)


# ----------------------------------------------------------------------------- shrink


def shrink(
    fn: Callable,
    params: Any,
    *example_args: Any,
    masks: Any = None,
    constants: bool = False,
    check: bool = True,
) -> tuple[Any, ShrunkFunction]:
    """Removes pruned channels from a model's arrays: smaller params and a function to run them.

    ``fn(params, *example_args)`` is traced to a jaxpr. Every axis of every value gets a
    dimension, and the axes that must keep one channel indexing are joined into groups: the
    operands of elementwise ops, a matmul's contracting pairs and its free axes with the
    output's, a convolution's feature axes with the kernel's, transposes, broadcasts,
    reshapes (a merge ``(h, w, c) -> h*w*c`` keeps its factors as separate groups; a
    grouped-query reshape of query heads to ``(kv_heads, group)`` makes the head axis the
    pair (KV head, head in group)), equal-sized splits and concatenations (RoPE's halves of
    the head dimension), slices, gathers and dynamic slices of other axes. A group is left
    whole when it reaches an input or an output of ``fn``, a reduction over it (LayerNorm /
    RMSNorm statistics, softmax, ``argmax``), an ``iota`` along it (positions, RoPE's
    frequencies), a slice / pad / unequal concatenation along it, a grouped convolution, a
    reshape that regroups it, a constant array of ``fn``, a scanned-over axis or any
    primitive shrink does not follow. BatchNorm with running statistics is elementwise per
    channel and is sliced.

    Channel ``j`` of a group is removed when, at every matmul / convolution that sums over
    the group, one side's slice ``j`` is known to be zero for all inputs (a pruned kernel
    column or row, zero propagated through activations, ``0 * anything``), or the activation
    side is a known nonzero constant ``c_j`` (a pruned unit with a bias emits ``act(b_j)``)
    whose contribution ``c_j * W[j, ...]`` is *folded* exactly into the bias added right
    after that matmul (a Dense layer, ``x @ W.T + b``, an equinox ``Linear`` under ``vmap``,
    whose output is transposed before the add; an unpadded convolution). At least one
    channel of a group is kept. Everything is reported in ``small_fn.report``
    (:class:`ShrinkReport`, :func:`format_report`): the arrays that got smaller, the groups
    left whole and the pruned channels kept, each with the reason.

    With the default ``constants=False`` the small params are standalone: loaded into a copy
    of the model with the smaller widths (linen / haiku modules of smaller features, an
    equinox module through ``eqx.combine``, an nnx module from :func:`shrink_nnx`), they
    compute ``small_fn``. ``constants=True`` also removes constant channels that have no
    bias to fold into (no bias, a padded convolution whose constant contribution varies at
    the borders): ``small_fn`` then adds their contribution as a constant after that matmul
    (:attr:`ShrunkFunction.corrections`), which the user's own model code would not.

    ``small_fn(small_params, *args)`` takes inputs of any shapes ``fn`` accepts (see
    :class:`ShrunkFunction`), under ``jax.jit`` and ``jax.vmap`` too; it equals
    ``fn(params_masked, *args)`` to float tolerance (``params_masked``: ``params`` with
    ``masks`` applied). Runs eagerly (it reads parameter values); ``params`` are not
    modified.

    Args:
      fn: the model function, called as ``fn(params, *args)``: a linen ``model.apply``, an nnx
        module through ``nnx.split`` / ``nnx.merge`` (or :func:`shrink_nnx`), an equinox
        module through ``eqx.combine``, a haiku ``transformed.apply``, or plain JAX.
      params: the parameter pytree (nnx ``Variable`` boxes allowed), arrays only.
      *example_args: example inputs (any shapes ``fn`` accepts; ``small_fn`` is checked on
        these).
      masks: optional masks from :func:`jaxprune.prune` (bool arrays of each parameter's
        shape, True = keep, None for unmasked leaves); without masks, channels whose slices
        are exactly zero are pruned.
      constants: also remove constant channels with no bias to fold into, adding their
        contribution inside ``small_fn`` (then ``small_params`` alone is not the model).
      check: compare ``small_fn`` with the masked dense model on ``example_args`` before
        returning (raises ``RuntimeError`` on a mismatch, which would be a bug).

    Returns:
      ``(small_params, small_fn)``: ``small_params`` has the structure of ``params`` (pruned
      and folded values, smaller arrays); ``small_fn`` is a :class:`ShrunkFunction`.

    Raises:
      ValueError: ``fn`` is not callable or cannot be traced with the example inputs,
        ``params`` is an nnx Module or holds non-array leaves, or a mask does not match its
        parameter (shape, dtype bool).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxprune
      >>> params = {"w1": jnp.array([[1., 0., 2.]]), "b1": jnp.array([0., 3., 1.]),
      ...           "w2": jnp.array([[1.], [2.], [3.]]), "b2": jnp.array([0.5])}
      >>> fn = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
      >>> small, small_fn = jaxprune.shrink(fn, params, jnp.ones((1, 1)))
      >>> small["w1"].shape, small["w2"].shape  # unit 1 emits tanh(3): folded into b2
      ((1, 2), (2, 1))
      >>> x = jnp.array([[0.5], [-1.0]])  # another batch size than the example's
      >>> bool(jnp.allclose(small_fn(small, x), fn(params, x)))
      True
      >>> bool(jnp.allclose(small["b2"], 0.5 + 2 * jnp.tanh(3.0)))
      True

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710; Fang et al., "DepGraph: Towards Any Structural
      Pruning", 2023, https://arxiv.org/abs/2301.12900
    """
    if not callable(fn):
        raise ValueError(f"shrink: fn must be callable, got {type(fn).__name__}")
    check_params(params)
    params_masked = _masked(params, masks)
    try:
        graph = mg.trace(fn, params_masked, *example_args)
    except Exception as e:
        raise ValueError(
            f"shrink: fn(params, *example_args) could not be traced with the example inputs "
            f"({type(e).__name__}: {str(e)[:300]})"
        ) from e
    plain = jax.tree.leaves(tree_lib.unbox(params_masked))
    n = graph.num_params
    leaf_blocks = {i: "a PRNG key" for i, x in enumerate(plain) if _is_key(x)}
    leaves = [None if i in leaf_blocks else np.asarray(x) for i, x in enumerate(plain)]
    cp = analysis.couple(graph, leaf_blocks)
    dims, param_dims = cp.dims, cp.param_dims

    # Pass 2: constants.
    consts = Constants(dims, cp.coupler, cp.candidates)
    cfacts = []
    for i in range(n):
        entries, sub = [], []
        value = leaves[i]
        for axis, dd in enumerate(param_dims[i]):
            atoms = dims.atoms(dd)
            sizes = tuple(dims.size[a] for a in atoms)
            for pos, a in enumerate(atoms):
                if a not in cp.candidates or value is None:
                    continue
                entries.append((a, slice_constants(value, axis, sizes, pos)))
                for other, od in enumerate(param_dims[i]):
                    h = dims.atoms(od)
                    if other == axis or len(h) != 1 or dims.size[h[0]] > SUB_AXIS_MAX:
                        continue
                    table = slice_constants_by(value, axis, sizes, pos, other)
                    if table is not None:
                        sub.append((a, h[0], table))
        cfacts.append(ChannelConstants(tuple(entries), tuple(sub)))
    cfacts += [EMPTY] * (len(graph.jaxpr.jaxpr.invars) - n)
    mg.walk(graph.jaxpr, cfacts, consts)

    # Decision.
    uses = {u.key: u for u in graph.uses}
    plan = Decision(graph, cp.coupler, dims, consts, uses, leaves, cp.members, param_dims)
    plan.constants = constants
    removed: dict[int, np.ndarray] = {}
    for g in sorted(cp.candidates):
        if g not in cp.sites_of:
            continue
        r = plan.removable(g, cp.sites_of[g])
        if r.size == dims.size[g]:
            r = r[1:]  # keep at least one channel
        if r.size:
            removed[g] = r
    kept = {g: np.setdiff1d(np.arange(dims.size[g]), r) for g, r in removed.items()}
    folds = plan.folds(removed, kept, cp.sites_of)

    # The small arrays.
    new_leaves = list(plain)
    for leaf, delta in folds.items():
        x = new_leaves[leaf]
        new_leaves[leaf] = jnp.asarray((np.asarray(x, np.float64) + delta).astype(x.dtype))
    arrays: dict[str, dict] = {}
    cuts: list[tuple[AxisCut, ...]] = []
    for i in range(n):
        old = tuple(np.shape(new_leaves[i]))
        new_leaves[i] = take_dims(new_leaves[i], param_dims[i], kept, dims)
        cut = []
        for dd in param_dims[i]:
            atoms = dims.atoms(dd)
            cut.append((tuple(dims.size[a] for a in atoms), tuple(kept.get(a) for a in atoms)))
        cuts.append(tuple(cut))
        resized = [
            (a, new_leaves[i].shape[a], old[a] - new_leaves[i].shape[a])
            for a in range(len(old))
            if new_leaves[i].shape[a] != old[a]
        ]
        if resized:
            ax, k, m = zip(*resized, strict=True)
            arrays[graph.param_names[i]] = (
                {"axis": ax[0], "kept": k[0], "removed": m[0]}
                if len(resized) == 1
                else {"axis": ax, "kept": k, "removed": m}
            )

    report = ShrinkReport(
        arrays=arrays,
        whole=plan.whole_groups(cp.candidates),
        kept=plan.kept_report(cp.candidates, removed, cp.sites_of),
        folded=tuple(plan.fold_report),
        params_before=int(sum(math.prod(np.shape(x)) for x in plain)),
        params_after=int(sum(math.prod(np.shape(x)) for x in new_leaves)),
    )
    small_params = jax.tree.unflatten(jax.tree.structure(params), new_leaves)
    dense_structs = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            np.shape(x), getattr(x, "dtype", None) or jnp.asarray(x).dtype
        ),
        params,
    )
    small_fn = ShrunkFunction(
        fn,
        dense_structs,
        graph.param_names,
        cuts,
        plan.corrections,
        report,
        [tuple(np.shape(x)) for x in new_leaves],
        leaf_blocks,
    )
    try:
        small_fn.prepare(*example_args)
    except ValueError as e:  # pragma: no cover - the decisions are proven on this trace
        raise RuntimeError(f"shrink: {e}; please report this") from e
    if check:
        _check(fn, params_masked, small_fn, small_params, example_args)
    return small_params, small_fn


def _check(fn, params_masked, small_fn, small_params, args):
    want = jax.tree.leaves(jax.jit(fn)(params_masked, *args))
    got = jax.tree.leaves(small_fn(small_params, *args))  # jitted per input signature
    for w, g in zip(want, got, strict=True):
        dtype = w.dtype if jnp.issubdtype(w.dtype, jnp.floating) else np.float32
        tol = max(1e-3, 8 * float(jnp.finfo(dtype).eps))  # summation order changes rounding
        w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
        scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
        if w.shape != g.shape or not np.allclose(g, w, rtol=tol, atol=tol * scale):
            raise RuntimeError(  # pragma: no cover - a bug in shrink
                "shrink: the shrunk model differs from the masked model on the example inputs "
                f"(max abs difference {np.max(np.abs(g - w))}); please report this"
            )


def shrink_nnx(model: Any, *example_args: Any, masks: Any = None, check: bool = True):
    """Shrinks a Flax nnx module: a new module whose Variables hold the smaller arrays.

    The module is split (``nnx.split``; its state may hold RNG keys and counts, as
    ``nnx.Dropout`` does: they are left as they are), shrunk with :func:`shrink` (constant
    channels that cannot be folded into a bias are kept, so that the module alone computes
    the function) and merged back; the common size attributes are set to the new sizes
    (``in_features`` / ``out_features`` of ``Linear``, ``LinearGeneral`` and ``Conv``,
    ``kernel_shape`` of ``Einsum`` and ``Conv``, ``num_heads`` / ``num_kv_heads`` /
    ``head_dim`` / ``qkv_features`` of ``MultiHeadAttention``, ``num_features`` of norms).
    The new module is then called on ``example_args`` and compared with the masked model: a
    module whose ``__call__`` hard-codes sizes (e.g. a reshape to a stored number of heads)
    raises ``ValueError``; use :func:`shrink` on ``nnx.split`` state with its ``small_fn``
    then (it runs at any input shape). ``model`` is not modified.

    Args:
      model: an ``nnx.Module`` whose ``__call__`` takes ``example_args``.
      *example_args: example inputs.
      masks: optional masks of ``nnx.split(model)[1]`` (e.g. from :func:`jaxprune.prune` on
        it); without masks, channels whose slices are exactly zero are pruned.
      check: verify the new module against the masked model on ``example_args``.

    Returns:
      ``(small_model, report)``: the new module and the :class:`ShrinkReport`.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> from flax import nnx
      >>> class MLP(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.a, self.b = nnx.Linear(2, 4, rngs=rngs), nnx.Linear(4, 1, rngs=rngs)
      ...   def __call__(self, x):
      ...     return self.b(nnx.relu(self.a(x)))
      >>> model = MLP(nnx.Rngs(0))
      >>> model.a.kernel[...] = model.a.kernel[...].at[:, :2].set(0.0)
      >>> small, report = jaxprune.shrink_nnx(model, jnp.ones((3, 2)))
      >>> small.a.kernel.shape, small.b.kernel.shape, small.a.out_features
      ((2, 2), (2, 1), 2)

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710
    """
    from flax import nnx

    if not isinstance(model, nnx.Module):
        raise ValueError(
            f"shrink_nnx: model must be an nnx.Module, got {type(model).__name__} (for "
            "params and a function, call jaxprune.shrink(fn, params, *example_args))"
        )
    graphdef, state = nnx.split(model)

    def fn(state, *args):
        return nnx.merge(graphdef, state)(*args)

    small_state, small_fn = shrink(fn, state, *example_args, masks=masks, check=False)
    small_model = nnx.merge(graphdef, small_state)
    # nnx.iter_modules is new in flax 0.12.1; Module.iter_modules before.
    iter_modules = getattr(nnx, "iter_modules", None) or type(small_model).iter_modules
    for _, module in iter_modules(small_model):
        _resize_attributes(module)
    if check:
        want = jax.tree.leaves(jax.jit(fn)(_masked(state, masks, "shrink_nnx"), *example_args))
        small_graphdef, small_state = nnx.split(small_model)
        try:
            got = jax.tree.leaves(
                jax.jit(lambda s, *a: nnx.merge(small_graphdef, s)(*a))(small_state, *example_args)
            )
            ok = all(
                np.shape(g) == np.shape(w) and np.allclose(g, w, rtol=1e-3, atol=1e-4)
                for g, w in zip(got, want, strict=True)
            )
            why = "its outputs differ from the masked model's"
        except Exception as e:
            ok, why = False, f"calling it fails ({type(e).__name__}: {str(e)[:300]})"
        if not ok:
            raise ValueError(
                f"shrink_nnx: the module with smaller arrays does not compute the model: {why}. "
                "Its __call__ probably depends on stored sizes; use jaxprune.shrink(fn, state, "
                "...) with fn = lambda s, *a: nnx.merge(graphdef, s)(*a) and its small_fn"
            )
    return small_model, small_fn.report


def _resize_attributes(module) -> None:
    """Sets the usual size attributes of nnx layers from their (new) arrays."""
    kernel = getattr(module, "kernel", None)
    shape = getattr(kernel, "shape", None)
    name = type(module).__name__
    if name == "Linear" and shape is not None:
        module.in_features, module.out_features = shape[0], shape[-1]
    elif name == "LinearGeneral" and shape is not None:
        nb, ni = len(getattr(module, "batch_axis", ())), len(module.in_features)
        module.in_features = tuple(shape[nb : nb + ni])
        module.out_features = tuple(shape[nb + ni :])
    elif name == "Einsum" and shape is not None and hasattr(module, "kernel_shape"):
        module.kernel_shape = tuple(shape)
    elif name in ("Conv", "ConvTranspose") and shape is not None:
        module.in_features = shape[-2] * getattr(module, "feature_group_count", 1)
        module.out_features = shape[-1]
        if hasattr(module, "kernel_shape"):
            module.kernel_shape = tuple(shape)
    elif name == "Embed" and hasattr(module, "embedding"):
        module.num_embeddings, module.features = module.embedding.shape
    elif name == "MultiHeadAttention":
        q = getattr(getattr(module, "query", None), "kernel", None)
        k = getattr(getattr(module, "key", None), "kernel", None)
        o = getattr(getattr(module, "out", None), "kernel", None)
        if q is not None and k is not None and o is not None:
            module.num_heads, module.head_dim = q.shape[-2], q.shape[-1]
            module.qkv_features = module.num_heads * module.head_dim
            if hasattr(module, "num_kv_heads"):
                module.num_kv_heads = k.shape[-2]
            module.out_features = o.shape[-1]
    elif name in ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm") and hasattr(
        module, "num_features"
    ):
        for attr in ("scale", "mean", "bias"):
            arr_shape = getattr(getattr(module, attr, None), "shape", None)
            if arr_shape:
                module.num_features = arr_shape[-1]
                break
