"""The entry points: :func:`shrink` and :func:`shrink_nnx`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import jaxpr as mg
from jaxprune._src import tree as tree_lib
from jaxprune._src.shrink.constants import EMPTY, ChannelConstants, Constants, slice_constants
from jaxprune._src.shrink.coupling import Coupler, CouplingFact
from jaxprune._src.shrink.decision import Decision, contracted_groups, take_dims
from jaxprune._src.shrink.dims import Dims, block_repeated
from jaxprune._src.shrink.function import ShrunkFunction
from jaxprune._src.shrink.report import ShrinkReport

# ----------------------------------------------------------------------------- shrink


def _masked(params, masks):
    if masks is None:
        return params
    plain = tree_lib.unbox(params)
    try:
        masked = jax.tree.map(
            lambda w, m: w if m is None else jnp.asarray(np.where(m, w, np.zeros((), w.dtype))),
            plain,
            tree_lib.unbox(masks),
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"shrink: masks must have the structure of params (None for unmasked leaves): {e}"
        ) from None
    return jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(masked))


def shrink(
    fn: Callable,
    params: Any,
    *example_args: Any,
    masks: Any = None,
    constants: bool = True,
    check: bool = True,
) -> tuple[Any, ShrunkFunction]:
    """Removes pruned channels from a model's arrays: smaller params and a function to run them.

    ``fn(params, *example_args)`` is traced once; the channels (output units, convolution
    filters, attention heads, MLP hidden units) whose weights are pruned are taken out of every
    array they index, when this provably leaves the model's function unchanged (see the module
    documentation for the rules): ``small_fn(small_params, *args)`` equals
    ``fn(params_masked, *args)`` to float tolerance, where ``params_masked`` is ``params`` with
    ``masks`` applied. A pruned channel whose bias is not zero emits the constant ``act(b_j)``;
    its contribution to the next matmul is folded into that layer's bias when the next matmul
    is followed by a bias add (a Dense layer, or an unpadded convolution), else the channel is
    kept. Groups whose coupling cannot be resolved (a reshape that mixes the channel axis, a
    gather, a norm over the channels, an input or output of ``fn``, ...) are left whole. All of
    it is in ``small_fn.report`` (:class:`ShrinkReport`, :func:`format_report`).

    Runs eagerly (it reads parameter values); ``params`` are not modified.

    Args:
      fn: the model function, called as ``fn(params, *args)``: a linen ``model.apply``, an nnx
        module through ``nnx.split`` / ``nnx.merge`` (or :func:`shrink_nnx`), or plain JAX.
      params: the parameter pytree (nnx ``Variable`` boxes allowed).
      *example_args: example inputs; ``small_fn`` takes inputs of these shapes and dtypes.
      masks: optional masks from :func:`jaxprune.prune` (bool arrays, True = keep, None for
        unmasked leaves); without masks, channels whose slices are exactly zero are pruned.
      check: compare ``small_fn`` with the masked dense model on ``example_args`` before
        returning (raises ``RuntimeError`` on a mismatch, which would be a bug).

    Returns:
      ``(small_params, small_fn)``: ``small_params`` has the structure of ``params`` (pruned
      and folded values, smaller arrays); ``small_fn`` is a :class:`ShrunkFunction`.

    Raises:
      ValueError: ``fn`` cannot be traced with the example inputs, or ``masks`` does not match
        ``params``.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w1": jnp.array([[1., 0., 2.]]), "b1": jnp.array([0., 3., 1.]),
      ...           "w2": jnp.array([[1.], [2.], [3.]])}
      >>> fn = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
      >>> small, small_fn = jaxprune.shrink(fn, params, jnp.ones((1, 1)))
      >>> small["w1"].shape, small["w2"].shape
      ((1, 2), (2, 1))
      >>> x = jnp.array([[0.5]])
      >>> bool(jnp.allclose(small_fn(small, x), fn(params, x)))
      True

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710; Fang et al., "DepGraph: Towards Any Structural
      Pruning", 2023, https://arxiv.org/abs/2301.12900
    """
    if not callable(fn):
        raise ValueError(f"shrink: fn must be callable, got {type(fn).__name__}")
    params_masked = _masked(params, masks)
    try:
        graph = mg.trace(fn, params_masked, *example_args)
    except Exception as e:
        raise ValueError(
            f"shrink: fn(params, *example_args) could not be traced with the example inputs "
            f"({type(e).__name__}: {e})"
        ) from e
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree_lib.unbox(params_masked))]
    n = graph.num_params
    invars = graph.jaxpr.jaxpr.invars

    # Pass 1: coupling.
    dims = Dims()
    coupler = Coupler(dims)
    facts = []
    for i, v in enumerate(invars):
        shape = v.aval.shape
        if i < n:
            ds = tuple(dims.new(s, ("param", i, a)) for a, s in enumerate(shape))
            facts.append(CouplingFact(ds, ("param", i), i))
        else:
            why = "an input of fn"
            ds = tuple(dims.new(s, ("arg", i, a), why) for a, s in enumerate(shape))
            facts.append(CouplingFact(ds, ("arg", i)))
    param_dims = [f.dims for f in facts[:n]]
    outs = mg.walk(graph.jaxpr, facts, coupler)
    for f in outs:
        if isinstance(f, CouplingFact):
            for dd in f.dims:
                dims.block(dd, "an output of fn")
            if f.vid is not None:
                coupler.consumers.setdefault(f.vid, set()).add(("out",))
            if f.src is not None:
                coupler.leaf_uses.setdefault(f.src, set()).add(("out",))
    for ds in param_dims:
        block_repeated(dims, ds, "the same channel axis appears twice in one parameter")
    dims.finalize()

    # Members of every group: (leaf, axis, factor position, factor sizes).
    members: dict[int, list] = {}
    for i, ds in enumerate(param_dims):
        for axis, dd in enumerate(ds):
            atoms = dims.atoms(dd)
            sizes = tuple(dims.size[a] for a in atoms)
            for pos, a in enumerate(atoms):
                members.setdefault(a, []).append((i, axis, pos, sizes))
    sites_of: dict[int, list] = {}
    for path in coupler.sites:
        for g in contracted_groups(graph, coupler, dims, path):
            sites_of.setdefault(g, []).append(path)
    candidates = {
        g for g in members if g not in dims.blocked and g not in dims.expansion and dims.size[g] > 1
    }

    # Pass 2: constants.
    consts = Constants(dims, coupler, candidates)
    cfacts = []
    for i in range(n):
        entries = []
        for axis, dd in enumerate(param_dims[i]):
            atoms = dims.atoms(dd)
            sizes = tuple(dims.size[a] for a in atoms)
            for pos, a in enumerate(atoms):
                if a in candidates:
                    entries.append((a, slice_constants(leaves[i], axis, sizes, pos)))
        cfacts.append(ChannelConstants(tuple(entries)))
    cfacts += [EMPTY] * (len(invars) - n)
    mg.walk(graph.jaxpr, cfacts, consts)

    # Decision.
    uses = {u.key: u for u in graph.uses}
    plan = Decision(graph, coupler, dims, consts, uses, leaves, members, param_dims)
    plan.constants = constants
    removed: dict[int, np.ndarray] = {}
    for g in sorted(candidates):
        if g not in sites_of:
            continue
        r = plan.removable(g, sites_of[g])
        if r.size == dims.size[g]:
            r = r[1:]  # keep at least one channel
        if r.size:
            removed[g] = r
    kept = {g: np.setdiff1d(np.arange(dims.size[g]), r) for g, r in removed.items()}
    folds = plan.folds(removed, kept, sites_of)

    # The small arrays.
    new_leaves = [jax.tree.leaves(tree_lib.unbox(params_masked))[i] for i in range(n)]
    for leaf, delta in folds.items():
        x = new_leaves[leaf]
        new_leaves[leaf] = jnp.asarray((np.asarray(x, np.float64) + delta).astype(x.dtype))
    arrays: dict[str, dict] = {}
    for i in range(n):
        old = new_leaves[i].shape
        new_leaves[i] = take_dims(new_leaves[i], param_dims[i], kept, dims)
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

    def new_size(d) -> int:
        return math.prod(len(kept[a]) if a in kept else dims.size[a] for a in dims.atoms(d))

    report = ShrinkReport(
        arrays=arrays,
        whole=plan.whole_groups(candidates),
        kept=plan.kept_report(candidates, removed, sites_of),
        folded=tuple(plan.fold_report),
        params_before=int(sum(x.size for x in leaves)),
        params_after=int(sum(math.prod(x.shape) for x in new_leaves)),
    )
    boxed_tree = jax.tree.structure(params)
    small_params = jax.tree.unflatten(boxed_tree, new_leaves)
    arg_avals = [v.aval for v in invars[n:]]
    small_fn = ShrunkFunction(
        graph,
        coupler.out_dims,
        new_size,
        report,
        plan.corrections,
        [tuple(x.shape) for x in new_leaves],
        jax.tree.structure((params, *example_args)),
        arg_avals,
    )
    if check:
        _check(fn, params_masked, small_fn, small_params, example_args)
    return small_params, small_fn


def _check(fn, params_masked, small_fn, small_params, args):
    want = jax.tree.leaves(jax.jit(fn)(params_masked, *args))
    got = jax.tree.leaves(jax.jit(small_fn)(small_params, *args))
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

    The module is split (``nnx.split``), shrunk with :func:`shrink` (with
    ``constants=False``: constant channels that cannot be folded into a bias are kept, so
    that the module alone computes the function) and merged back; the common size attributes
    (``in_features`` / ``out_features`` of ``Linear`` and ``Conv``, ``num_features`` of
    norms) are set to the new sizes. The new module is then called on ``example_args`` and
    compared with the masked model: a module whose ``__call__`` hard-codes sizes (e.g. a
    reshape to a stored number of heads) raises ``ValueError``; use :func:`shrink` on
    ``nnx.split`` state with its ``small_fn`` then. ``model`` is not modified.

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

    graphdef, state = nnx.split(model)

    def fn(state, *args):
        return nnx.merge(graphdef, state)(*args)

    small_state, small_fn = shrink(
        fn, state, *example_args, masks=masks, constants=False, check=check
    )
    small_model = nnx.merge(graphdef, small_state)
    # nnx.iter_modules is new in flax 0.12.1; Module.iter_modules before.
    iter_modules = getattr(nnx, "iter_modules", None) or type(small_model).iter_modules
    for _, module in iter_modules(small_model):
        _resize_attributes(module)
    if check:
        want = jax.tree.leaves(fn(_masked(state, masks), *example_args))
        try:
            got = jax.tree.leaves(small_model(*example_args))
            ok = all(
                np.shape(g) == np.shape(w) and np.allclose(g, w, rtol=1e-3, atol=1e-4)
                for g, w in zip(got, want, strict=True)
            )
            why = "its outputs differ from the masked model's"
        except Exception as e:
            ok, why = False, f"calling it fails ({type(e).__name__}: {e})"
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
    elif name in ("Conv", "ConvTranspose") and shape is not None:
        module.in_features = shape[-2] * getattr(module, "feature_group_count", 1)
        module.out_features = shape[-1]
        if hasattr(module, "kernel_shape"):
            module.kernel_shape = tuple(shape)
    elif name in ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm") and hasattr(
        module, "num_features"
    ):
        for attr in ("scale", "mean", "bias"):
            arr_shape = getattr(getattr(module, attr, None), "shape", None)
            if arr_shape:
                module.num_features = arr_shape[-1]
                break
