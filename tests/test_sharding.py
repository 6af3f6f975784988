"""jaxprune on params sharded over a device mesh (8 host devices, see conftest.py).

The pruning transform must be bit-identical to a single-device run and keep every mask sharded
like its param. A Flax model's gradients are float reductions whose order depends on how they
are partitioned (batch sums, split contractions), so sharded and single-device training drift
apart in the last bits whatever the optimizer does. The comparison is therefore teacher-forced:
the sharded run records its gradients and the single-device run applies the same gradients;
both must then produce the same params, masks and thresholds bit for bit at every step. A
free-running single-device run is also compared, with a tolerance.
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune

STEPS = 30


def test_eight_devices():
    assert jax.device_count() == 8, "tests/conftest.py must force 8 host devices"


def _mesh(axis_type=AxisType.Auto):
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(32)(x)


MODEL = MLP()


def _data():
    x = jax.random.normal(jax.random.key(1), (32, 16))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 32)
    return x, y


def _hparams(method):
    # Masks update at steps 3, 6, ..., 30; Dense_1's kernel is pruned in 4x4 blocks.
    return jaxprune.get_pruning_hparams().replace(
        threshold_method=method,
        pruning_frequency=3,
        sparsity_function_end_step=24,
        target_sparsity=0.8,
        nbins=64,
        block_dims_map=("Dense_1/kernel:4x4",),
    )


@functools.cache
def _setup(method):
    tx = optax.chain(optax.adam(1e-2), jaxprune.magnitude_pruning(_hparams(method)))

    def loss(params, x, y):
        logits = MODEL.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def apply(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def step(params, state, x, y):
        grads = jax.grad(loss)(params, x, y)
        params, state = apply(params, state, grads)
        return params, state, grads

    return tx, loss, jax.jit(apply), step


def _params0():
    return MODEL.init(jax.random.key(0), _data()[0])["params"]


# name -> (spec of a params leaf, spec of the batch's leading dim)
LAYOUTS = {
    # Data parallel: replicated params, batch split over all 8 devices.
    "replicated": (lambda leaf: P(), ("data", "model")),
    # Model parallel on one mesh axis: kernels (and divisible biases) split by output column.
    "model_1axis": (
        lambda leaf: P(None, "model") if leaf.ndim == 2 else P("model"),
        None,
    ),
    # Kernels split on both axes of the 2x4 mesh, batch over "data".
    "model_2axes": (lambda leaf: P("data", "model") if leaf.ndim == 2 else P(), "data"),
    # FSDP: every large leaf split on its first dimension over all 8 devices.
    "fsdp": (
        lambda leaf: P(("data", "model")) if leaf.ndim == 2 and leaf.shape[0] % 8 == 0 else P(),
        ("data", "model"),
    ),
}


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_trees_identical(a, b, what):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, what
    for i, (x, y) in enumerate(zip(la, lb, strict=True)):
        assert _bits_equal(x, y), f"{what}: leaf {i} differs"


def _assert_same_sharding(tree, params):
    """Every mask (or state leaf shaped like a param) is sharded like its param."""
    leaves = jax.tree.leaves(params)
    masks = jax.tree.structure(params).flatten_up_to(tree)
    for m, p in zip(masks, leaves, strict=True):
        if isinstance(m, optax.MaskedNode):
            continue
        assert m.shape == p.shape
        assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)


def _run_sharded(method, layout, mesh):
    tx, _, _, step = _setup(method)
    leaf_spec, batch_axes = LAYOUTS[layout]
    params0 = _params0()
    shardings = jax.tree.map(lambda leaf: NamedSharding(mesh, leaf_spec(leaf)), params0)
    x, y = _data()
    x = jax.device_put(x, NamedSharding(mesh, P(batch_axes)))
    y = jax.device_put(y, NamedSharding(mesh, P(batch_axes)))
    params = jax.device_put(params0, shardings)
    # Under jit, only jaxprune's masks follow the params' sharding by themselves (optax's
    # zeros_like moments do not): take the state's shardings from an eager init.
    # Eager init puts the scalar leaves on one device: replicate them over the mesh.
    state = tx.init(params)
    state_shardings = jax.tree.map(
        lambda a: a.sharding if a.ndim else NamedSharding(mesh, P()), state
    )
    _assert_same_sharding(jaxprune.get_pruning_state(state).masks, params)
    _assert_same_sharding(jaxprune.get_pruning_state(jax.jit(tx.init)(params)).masks, params)
    train = jax.jit(
        step,
        in_shardings=(shardings, state_shardings, x.sharding, y.sharding),
        out_shardings=(shardings, state_shardings, shardings),
    )
    history = []
    for _ in range(STEPS):
        params, state, grads = train(params, state, x, y)
        history.append((params, state, grads))
    return history


def _check_against_single_device(method, history, exact_params=True):
    """Teacher-forced: the single-device transform applied to the same grads, bit for bit.

    With ``exact_params=False`` params, thresholds and Adam moments may differ by float
    rounding (XLA fuses optax's elementwise update differently inside ``shard_map``, e.g. into
    FMAs); masks and counts must still be identical.
    """
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
    tx, _, apply, _ = _setup(method)
    params, states, grads = (stack([h[i] for h in history]) for i in range(3))
    ref = [(jax.device_put(_params0(), jax.devices()[0]), None)]
    ref[0] = (ref[0][0], tx.init(ref[0][0]))
    for t in range(STEPS):
        ref.append(apply(*ref[-1], jax.tree.map(lambda g, t=t: g[t], grads)))
    ref_params, ref_states = (stack([r[i] for r in ref[1:]]) for i in range(2))
    got, ref = jaxprune.get_pruning_state(states), jaxprune.get_pruning_state(ref_states)
    if exact_params:
        _assert_trees_identical(params, ref_params, "params")
        _assert_trees_identical(got, ref, "pruning state")  # masks, thresholds, counts
        _assert_trees_identical(states, ref_states, "optimizer state")
    else:
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(
            jax.tree.leaves(got.thresholds), jax.tree.leaves(ref.thresholds), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5)
        _assert_trees_identical(got.masks, ref.masks, "masks")
        for field in ("count", "last_update_step", "sparsity"):
            _assert_trees_identical(getattr(got, field), getattr(ref, field), field)
    # A mask update every 3 steps, all of them inside the run.
    np.testing.assert_array_equal(ref.last_update_step, np.arange(1, STEPS + 1) // 3 * 3)


# Each layout runs one threshold method (compiles are the cost); test_shard_map_data_parallel_step
# and test_explicit_axes_mesh run the other method on two more layouts, and
# test_weight_mask_sharded_is_global_without_gathering runs both on three kernel layouts.
@pytest.mark.parametrize(
    "layout, method",
    [
        ("replicated", "exact"),
        ("model_1axis", "histogram"),
        ("model_2axes", "exact"),
        ("fsdp", "histogram"),
    ],
)
def test_sharded_training_matches_single_device(layout, method):
    assert jax.device_count() == 8
    mesh = _mesh()
    history = _run_sharded(method, layout, mesh)
    params, state, _ = history[-1]
    _assert_same_sharding(jaxprune.get_pruning_state(state).masks, params)
    _assert_same_sharding(state[0][0].mu, params)  # no silent replication anywhere
    leaf_spec, _ = LAYOUTS[layout]
    for p in jax.tree.leaves(params):
        assert p.sharding.is_equivalent_to(NamedSharding(mesh, leaf_spec(p)), p.ndim)
    # Really pruned, at the scheduled sparsity, in 4x4 blocks in Dense_1.
    kernel = np.asarray(params["Dense_1"]["kernel"])
    blocks = np.abs(kernel).reshape(16, 4, 8, 4).max(axis=(1, 3))
    assert np.mean(blocks == 0) == pytest.approx(0.8, abs=0.02)
    assert np.all((kernel == 0) == np.repeat(np.repeat(blocks == 0, 4, 0), 4, 1))
    assert np.mean(np.asarray(params["Dense_0"]["kernel"]) == 0) == pytest.approx(0.8, abs=0.02)
    _check_against_single_device(method, history)


def test_explicit_axes_mesh():
    """jax.make_mesh's default (Explicit axes) under jax.set_mesh: init, update, weight_mask."""
    mesh = _mesh(AxisType.Explicit)
    tx = jaxprune.magnitude_pruning(_hparams("histogram"), sparsity=0.5)
    with jax.set_mesh(mesh):
        kernels = {k: {"kernel": v["kernel"]} for k, v in _params0().items()}
        params = jax.device_put(kernels, NamedSharding(mesh, P("data", "model")))
        state = jax.jit(tx.init)(params)
        _assert_same_sharding(state.masks, params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, state = jax.jit(tx.update)(zeros, state._replace(count=jnp.int32(2)), params)
        _assert_same_sharding(state.masks, params)
        _assert_same_sharding(updates, params)
    single = jax.device_put(jax.tree.map(np.asarray, params), jax.devices()[0])
    zeros = jax.tree.map(jnp.zeros_like, single)
    ref = jax.jit(tx.update)(zeros, tx.init(single)._replace(count=jnp.int32(2)), single)[1]
    assert int(ref.last_update_step) == 3
    _assert_trees_identical(state, ref, "state")


def test_shard_map_data_parallel_step():
    """pmap-style data parallelism: per-device grads pmean-ed, the chain on replicated params."""
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(AxisType.Explicit,))
    tx, loss, _, _ = _setup("exact")

    def local_step(params, state, x, y):
        grads = jax.lax.pmean(jax.grad(loss)(params, x, y), "batch")
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, grads

    step = jax.jit(
        jax.shard_map(
            local_step,
            mesh=mesh,
            in_specs=(P(), P(), P("batch"), P("batch")),
            out_specs=(P(), P(), P()),
        )
    )
    x, y = _data()
    params = jax.device_put(_params0(), NamedSharding(mesh, P()))
    state = tx.init(params)
    x = jax.device_put(x, NamedSharding(mesh, P("batch")))
    y = jax.device_put(y, NamedSharding(mesh, P("batch")))
    history = []
    for _ in range(STEPS):
        params, state, grads = step(params, state, x, y)
        history.append((params, state, grads))
    _assert_same_sharding(jaxprune.get_pruning_state(state).masks, params)
    _check_against_single_device("exact", history, exact_params=False)


def _gathered_sizes(compiled_text):
    """Element counts of the outputs of every all-gather in compiled HLO."""
    sizes = []
    for line in compiled_text.splitlines():
        m = re.search(r"= \(?[a-z0-9]+\[([0-9,]*)\][^=]*? all-gather(?:-start)?\(", line)
        if m:
            sizes.append(int(np.prod([int(d) for d in m.group(1).split(",") if d])))
    return sizes


@functools.cache
def _single_device_weight_mask(method, block):
    hp = jaxprune.get_pruning_hparams().replace(
        threshold_method=method, block_height=block[0], block_width=block[1]
    )
    return hp, jax.jit(lambda w, s: jaxprune.weight_mask(w, s, hparams=hp))


@pytest.mark.parametrize("method", ["exact", "histogram"])
@pytest.mark.parametrize(
    "spec, block",
    [
        (P(None, "model"), (1, 1)),
        (P("data", "model"), (4, 4)),
        (P(("data", "model")), (1, 1)),
    ],
)
def test_weight_mask_sharded_is_global_without_gathering(spec, block, method):
    """The threshold of a sharded weight is the whole weight's; no device gathers the weight."""
    mesh = _mesh()
    hp, single = _single_device_weight_mask(method, block)
    w = jax.random.normal(jax.random.key(3), (512, 1024))
    ws = jax.device_put(w, NamedSharding(mesh, spec))
    fn = jax.jit(lambda w, s: jaxprune.weight_mask(w, s, hparams=hp))
    t, m = fn(ws, 0.7)
    t0, m0 = single(jax.device_put(w, jax.devices()[0]), 0.7)
    assert _bits_equal(t, t0) and _bits_equal(m, m0)
    assert m.sharding.is_equivalent_to(ws.sharding, 2)
    sizes = _gathered_sizes(fn.lower(ws, 0.7).compile().as_text())
    # Only small things move (a 4096-element sample, per-row partial counts), never the weight.
    assert max(sizes, default=0) <= w.size // 64, sizes
