"""The TF-shaped separate mask update (issue 13, goal 2): ``Pruning.masks_transform()`` in the
optax chain and ``Pruning.update_masks(params, opt_state)`` after each step.

Masks, thresholds and params are checked against the NumPy references of tests/reference.py and
tests/test_engine_spec.py over real adam training runs; the two APIs are compared bit for bit
on runs where they must agree; TF's update steps, one trace, donation without copies, 8 devices,
orbax, nnx.Optimizer and the errors are covered too.
"""

from __future__ import annotations

import itertools
import re
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from tests.reference import ref_weight_mask
from tests.test_engine_spec import ref_channel, ref_global, ref_nm

HP = jaxprune.get_pruning_hparams()
FREQ = 3
RAMP = {"pruning_frequency": FREQ, "sparsity_function_end_step": 9}


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_identical(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for i, (x, y) in enumerate(zip(la, lb, strict=True)):
        assert _bits_equal(x, y), f"leaf {i} differs"


def _mlp(seed=0, sizes=(16, 32, 8)):
    rng = np.random.default_rng(seed)
    params = {
        f"d{i}": {
            "kernel": rng.standard_normal((a, b)).astype(np.float32) / np.sqrt(a),
            "bias": np.zeros(b, np.float32),
        }
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }
    x = rng.standard_normal((32, sizes[0])).astype(np.float32)
    y = rng.standard_normal((32, sizes[-1])).astype(np.float32)
    return jax.tree.map(jnp.asarray, params), x, y


def _loss(params, x, y):
    h = x
    n = len(params)
    for i in range(n):
        h = h @ params[f"d{i}"]["kernel"] + params[f"d{i}"]["bias"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return jnp.mean((h - y) ** 2)


KERNELS = ("d0", "d1")


def _np(tree):
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


# --- masks, thresholds and params against NumPy over a real adam run ------------------------------


def _expected(kind, hp, kernels, t, thresholds):
    """{layer: (threshold or None, mask)} of the NumPy references at step t."""
    s = float(jaxprune.sparsity_schedule(hp)(t))
    a = {k: np.abs(w) for k, w in kernels.items()}
    if kind in ("exact", "histogram"):
        out = {}
        for k, w in kernels.items():
            out[k] = ref_weight_mask(w, s, thresholds.get(k, 0.0), method=kind)
        return out
    if kind == "global":
        masks = ref_global([a[k] for k in KERNELS], s)
        return {k: (None, m) for k, m in zip(KERNELS, masks, strict=True)}
    if kind == "2:4":
        keep = 4 - int(min(max(np.round(np.float32(4) * np.float32(s)), 0), 2))
        return {k: (None, ref_nm(v, 2, 4, -2, keep=keep)) for k, v in a.items()}
    assert kind == "channel"
    return {k: (None, ref_channel(v, s, -1)) for k, v in a.items()}


KINDS = {
    "exact": {"target_sparsity": 0.8},
    "histogram": {"target_sparsity": 0.8, "threshold_method": "histogram"},
    "global": {"target_sparsity": 0.8, "pruning_scope": "global"},
    "2:4": {"target_sparsity": 0.5, "sparsity_type": "2:4"},
    "channel": {"target_sparsity": 0.5, "sparsity_type": "channel"},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_adam_run_matches_numpy_reference(kind):
    hp = HP.replace(**RAMP, **KINDS[kind])
    pruning = jaxprune.Pruning(hp)
    params, x, y = _mlp()
    tx = optax.chain(optax.adam(1e-2), pruning.masks_transform())
    ref_adam = optax.adam(1e-2)  # the same optimizer, run on its own (no jaxprune)
    opt_state, ref_state = tx.init(params), ref_adam.init(params)

    @jax.jit
    def train(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update_masks = jax.jit(pruning.update_masks)
    grad = jax.jit(jax.grad(_loss))
    masks = {k: np.ones(params[k]["kernel"].shape, bool) for k in KERNELS}
    thresholds = dict.fromkeys(KERNELS, 0.0)
    n_updates = 0
    for t in range(1, 13):
        before = _np(params)
        grads = grad(params, x, y)
        u, ref_state = ref_adam.update(grads, ref_state, params)
        params, opt_state = train(params, opt_state, grads)
        stepped = _np(params)
        # masks_transform: kept weights get adam's update, pruned ones are exactly 0.
        for k in KERNELS:
            w, m = stepped[k]["kernel"], masks[k]
            assert np.all(w[~m] == 0.0), (k, t)
            np.testing.assert_allclose(
                w[m], (before[k]["kernel"] + np.asarray(u[k]["kernel"]))[m], rtol=1e-6, atol=1e-7
            )
            np.testing.assert_allclose(
                stepped[k]["bias"],
                before[k]["bias"] + np.asarray(u[k]["bias"]),
                rtol=1e-6,
                atol=1e-7,
            )
        params, opt_state = update_masks(params, opt_state)
        state = jaxprune.get_pruning_state(opt_state)
        assert int(state.count) == t
        if t % FREQ == 0:  # begin 0, end -1: every FREQ steps
            n_updates += 1
            assert int(state.last_update_step) == t
            expected = _expected(
                kind, hp, {k: stepped[k]["kernel"] for k in KERNELS}, t, thresholds
            )
            for k, (threshold, mask) in expected.items():
                got = np.asarray(state.masks[k]["kernel"])
                np.testing.assert_array_equal(got, mask, err_msg=f"{k} at {t}")
                if threshold is not None:
                    assert _bits_equal(state.thresholds[k]["kernel"], np.float32(threshold))
                    thresholds[k] = threshold
                masks[k] = mask
            assert not all(m.all() for m in masks.values())  # something is pruned
        # update_masks: params are the stepped ones with the (new) pruned weights zeroed.
        for k in KERNELS:
            want = np.where(masks[k], stepped[k]["kernel"], np.float32(0))
            assert _bits_equal(params[k]["kernel"], want), (k, t)
            assert _bits_equal(params[k]["bias"], stepped[k]["bias"])
            np.testing.assert_array_equal(np.asarray(state.masks[k]["kernel"]), masks[k])
    assert n_updates == 4


# --- the same as the one-line chain when the pruned weights' updates are 0 ------------------------


@pytest.mark.parametrize("kind", ["exact", "global"])
def test_identical_to_chain_when_pruned_updates_are_zero(kind):
    """Plain SGD on gradients masked with the current masks: a pruned weight's update is 0, so
    the chain's params + updates and the separate update's stored weights are the same, and so
    must be every mask, threshold, state field and param. The run is one where that matters:
    the kept weights move enough between updates that masks computed from the weights before
    the step would differ."""
    hp = HP.replace(**RAMP, **KINDS[kind])
    pruning = jaxprune.Pruning(hp)
    params0, x, y = _mlp(seed=1)
    grad = jax.grad(_loss)

    def make(tx, separate):
        @jax.jit
        def step(params, opt_state):
            masks = jaxprune.get_pruning_state(opt_state).masks
            grads = grad(params, x, y)
            grads = jax.tree.map(
                lambda g, m: g if isinstance(m, optax.MaskedNode) else jnp.where(m, g, 0.0),
                grads,
                masks,
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if separate:
                params, opt_state = pruning.update_masks(params, opt_state)
            return params, opt_state

        return step

    chain = optax.chain(optax.sgd(0.5), jaxprune.magnitude_pruning(hp))
    split = optax.chain(optax.sgd(0.5), pruning.masks_transform())
    steps = {"chain": make(chain, False), "split": make(split, True)}
    runs = {"chain": (params0, chain.init(params0)), "split": (params0, split.init(params0))}
    differs_from_stale = 0
    for t in range(1, 13):
        before = _np(runs["chain"][0])
        for name in runs:
            runs[name] = steps[name](*runs[name])
        (pc, sc), (ps, ss) = runs["chain"], runs["split"]
        _assert_identical(pc, ps)
        _assert_identical(jaxprune.get_pruning_state(sc), jaxprune.get_pruning_state(ss))
        if t % FREQ == 0:
            masks = jaxprune.get_pruning_state(ss).masks
            stale = _expected(kind, hp, {k: before[k]["kernel"] for k in KERNELS}, t, {})
            differs_from_stale += any(
                not np.array_equal(np.asarray(masks[k]["kernel"]), stale[k][1]) for k in KERNELS
            )
    assert differs_from_stale >= 2


# --- TF's update steps ---------------------------------------------------------------------------


def test_updates_exactly_at_tf_steps():
    """begin 5, end 13, frequency 4: TF updates at steps 5, 9 and 13 (hand-worked), not 17."""
    hp = HP.replace(
        begin_pruning_step=5,
        end_pruning_step=13,
        pruning_frequency=4,
        target_sparsity=0.9,
        sparsity_function_end_step=20,
    )
    pruning = jaxprune.Pruning(hp)
    tx = optax.chain(optax.sgd(0.0), pruning.masks_transform())
    params = {"w": jnp.arange(1.0, 101.0).reshape(10, 10)}
    opt_state = tx.init(params)
    update_masks = jax.jit(pruning.update_masks)
    zeros = {"w": jnp.zeros((10, 10))}
    last_seen, kept_seen = [], []
    for _ in range(20):
        updates, opt_state = tx.update(zeros, opt_state, params)
        params = optax.apply_updates(params, updates)
        params, opt_state = update_masks(params, opt_state)
        again = update_masks(params, opt_state)  # a second call at the same step changes nothing
        _assert_identical(again, (params, opt_state))
        state = jaxprune.get_pruning_state(opt_state)
        last_seen.append(int(state.last_update_step))
        kept_seen.append(int(np.count_nonzero(np.asarray(params["w"]))))
    assert last_seen == [0] * 4 + [5] * 4 + [9] * 4 + [13] * 8
    # The kept weights are the largest ones, k = round(100 * (1 - s(t))) at the update steps.
    s = {t: float(jaxprune.sparsity_schedule(hp)(t)) for t in (5, 9, 13)}
    k = {t: int(np.round(np.float32(100) * (np.float32(1) - np.float32(s[t])))) for t in s}
    assert kept_seen == [100] * 4 + [k[5]] * 4 + [k[9]] * 4 + [k[13]] * 8
    assert 100 > k[5] > k[9] > k[13]
    np.testing.assert_array_equal(
        np.asarray(params["w"]).ravel(),
        np.where(np.arange(1, 101) > 100 - k[13], np.arange(1, 101), 0),
    )


# --- jit: one trace each, inside the user's step, donation without copies -------------------------


def test_one_trace_each_and_inside_the_users_step():
    traced = []

    def params_filter(name, leaf):  # called once per leaf each time the pieces are traced
        traced.append(name)
        return leaf.ndim == 2

    pruning = jaxprune.Pruning(HP.replace(**RAMP, target_sparsity=0.8), params_filter=params_filter)
    params0, x, y = _mlp(seed=2)
    tx = optax.chain(optax.adam(1e-2), pruning.masks_transform())

    @jax.jit
    def train(params, opt_state):
        updates, opt_state = tx.update(jax.grad(_loss)(params, x, y), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update_masks = jax.jit(pruning.update_masks)

    @jax.jit
    def fused(params, opt_state):  # both pieces in one jitted step
        return pruning.update_masks(*train(params, opt_state))

    a = b = (params0, tx.init(params0))
    counts = []
    for t in range(1, 11):
        a = update_masks(*train(*a))
        b = fused(*b)
        _assert_identical(a, b)
        if t == 1:
            counts.append(len(traced))
    counts.append(len(traced))
    assert counts[0] == counts[1] > 0  # nothing traced after the first step
    assert train._cache_size() == update_masks._cache_size() == fused._cache_size() == 1
    assert int(jaxprune.get_pruning_state(a[1]).last_update_step) == 9


def _entry_copies(hlo: str, shapes: list[str]) -> list[str]:
    entry = hlo[hlo.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}\n")]
    return [
        line.strip()
        for line in entry.splitlines()
        if re.search(r" copy\(", line) and any(s in line for s in shapes)
    ]


def test_donated_update_masks_copies_nothing():
    pruning = jaxprune.Pruning(HP.replace(**RAMP, target_sparsity=0.8))
    params, _, _ = _mlp(seed=3, sizes=(64, 128, 96))
    tx = optax.chain(optax.adam(1e-2), pruning.masks_transform())
    opt_state = tx.init(params)
    update_masks = jax.jit(pruning.update_masks, donate_argnums=(0, 1))
    compiled = update_masks.lower(params, opt_state).compile()
    memory = compiled.memory_analysis()
    # Every input buffer is reused for an output; no param or mask is copied outside the loop
    # body that only runs at update steps.
    assert memory.alias_size_in_bytes == memory.argument_size_in_bytes
    hlo = compiled.as_text()
    assert _entry_copies(hlo, ["[64,128]", "[128,96]"]) == []
    # The train step with masks_transform has no cond and no loop: the masks are applied in the
    # optimizer's elementwise update.
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    text = step.lower(params, opt_state, params).compile().as_text()
    assert "conditional(" not in text and " while(" not in text
    # It really runs in place: the donated inputs are consumed, the results are right.
    kernel = params["d0"]["kernel"]
    for _ in range(FREQ):
        updates, opt_state = tx.update(jax.tree.map(jnp.zeros_like, params), opt_state, params)
        params = optax.apply_updates(params, updates)
    expected = ref_weight_mask(
        np.asarray(params["d0"]["kernel"]), float(jaxprune.sparsity_schedule(pruning.hparams)(FREQ))
    )[1]
    new_params, opt_state = update_masks(params, opt_state)
    assert params["d0"]["kernel"].is_deleted()
    np.testing.assert_array_equal(np.asarray(new_params["d0"]["kernel"]) != 0, expected)
    assert not kernel.is_deleted()  # only what was passed to update_masks is donated


# --- 8 devices, orbax, nnx ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["exact", "2:4"])
def test_sharded_8_devices_bit_identical_to_1(kind):
    assert jax.device_count() == 8
    hp = HP.replace(**RAMP, **KINDS[kind])
    pruning = jaxprune.Pruning(hp)
    host, _, _ = _mlp(seed=4, sizes=(16, 32, 16))
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    spec = {2: P("data", "model"), 1: P("model")}
    shardings = jax.tree.map(lambda a: NamedSharding(mesh, spec[a.ndim]), host)
    tx = optax.chain(optax.adam(1e-2), pruning.masks_transform())

    @jax.jit
    def train(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update_masks = jax.jit(pruning.update_masks, donate_argnums=(0, 1))
    # Host-drawn gradients: a sharded matmul's gradient may round differently, the pruning
    # pieces may not.
    rng = np.random.default_rng(7)
    grads = [
        jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), host)
        for _ in range(8)
    ]
    runs = []
    for put in (
        lambda t: jax.device_put(t, shardings),
        lambda t: jax.device_put(t, jax.devices()[0]),
    ):
        params = put(host)
        opt_state = tx.init(params)
        for g in grads:
            params, opt_state = update_masks(*train(params, opt_state, put(g)))
        runs.append((params, opt_state))
    (p8, s8), (p1, s1) = runs
    assert p8["d0"]["kernel"].sharding.is_equivalent_to(shardings["d0"]["kernel"], 2)
    _assert_identical(p8, p1)
    _assert_identical(s8, s1)
    assert not np.asarray(jaxprune.get_pruning_state(s8).masks["d0"]["kernel"]).all()


def test_orbax_round_trip_resumes_bit_identically(tmp_path):
    pruning = jaxprune.Pruning(HP.replace(**RAMP, target_sparsity=0.8))
    params, x, y = _mlp(seed=5)
    tx = optax.chain(optax.adam(1e-2), pruning.masks_transform())

    @jax.jit
    def step(params, opt_state):
        updates, opt_state = tx.update(jax.grad(_loss)(params, x, y), opt_state, params)
        return pruning.update_masks(optax.apply_updates(params, updates), opt_state)

    opt_state = tx.init(params)
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    for t in range(1, 11):
        params, opt_state = step(params, opt_state)
        if t == 4:  # just after the mask update of step 3
            manager.save(t, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}))
    manager.wait_until_finished()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    target = {"params": abstract, "opt_state": jaxprune.abstract_state(tx, abstract)}
    restored = manager.restore(4, args=ocp.args.StandardRestore(target))
    manager.close()
    state = jaxprune.get_pruning_state(restored["opt_state"])
    assert int(state.count) == 4 and int(state.last_update_step) == 3
    assert not np.asarray(state.masks["d0"]["kernel"]).all()
    resumed = (restored["params"], restored["opt_state"])
    for _ in range(4, 10):
        resumed = step(*resumed)
    _assert_identical(resumed, (params, opt_state))


class _NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.dense1 = nnx.Linear(16, 32, rngs=rngs)
        self.dense2 = nnx.Linear(32, 8, rngs=rngs)

    def __call__(self, x):
        return self.dense2(jax.nn.relu(self.dense1(x)))


def test_nnx_optimizer_usage():
    """How an nnx user writes it: update_masks on nnx.state(model, nnx.Param) and
    optimizer.opt_state, then nnx.update(model, params) and optimizer.opt_state = opt_state."""
    pruning = jaxprune.Pruning(HP.replace(**RAMP, target_sparsity=0.75))
    model = _NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, optax.chain(optax.adam(1e-2), pruning.masks_transform()), wrt=nnx.Param
    )
    _, x, y = _mlp()
    traces = []

    @nnx.jit
    def train_step(model, optimizer, x, y):
        traces.append(1)
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        params, opt_state = pruning.update_masks(nnx.state(model, nnx.Param), optimizer.opt_state)
        nnx.update(model, params)
        optimizer.opt_state = opt_state

    stepped = []
    for _ in range(12):
        before_update = _np(nnx.state(model, nnx.Param))
        train_step(model, optimizer, x, y)
        stepped.append(before_update)
    assert len(traces) == 1
    state = jaxprune.get_pruning_state(optimizer.opt_state)
    assert int(state.count) == 12 and int(state.last_update_step) == 12
    for name, layer in (("dense1", model.dense1), ("dense2", model.dense2)):
        w = np.asarray(layer.kernel[...])
        mask = np.asarray(state.masks[name]["kernel"])
        assert np.all(w[~mask] == 0) and np.all(w[mask] != 0), name
        assert int(mask.sum()) == round(0.25 * mask.size), name
    # Outside jit too, with the same calls.
    params, opt_state = pruning.update_masks(nnx.state(model, nnx.Param), optimizer.opt_state)
    nnx.update(model, params)
    optimizer.opt_state = opt_state
    assert int(jaxprune.get_pruning_state(optimizer.opt_state).count) == 12


def test_linen_boxes_are_kept():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_partitioning(nn.initializers.lecun_normal(), ("in", "out"))
            return nn.Dense(8, kernel_init=init)(x)

    params = Net().init(jax.random.key(0), jnp.ones((2, 16)))["params"]
    assert isinstance(params["Dense_0"]["kernel"], nn.Partitioned)
    pruning = jaxprune.Pruning(HP.replace(pruning_frequency=1, sparsity_function_end_step=1))
    tx = optax.chain(optax.sgd(0.0), pruning.masks_transform())
    opt_state = tx.init(params)
    updates, opt_state = tx.update(jax.tree.map(jnp.zeros_like, params), opt_state, params)
    params = optax.apply_updates(params, updates)
    new_params, new_state = jax.jit(pruning.update_masks)(params, opt_state)
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    assert jax.tree.structure(new_state) == jax.tree.structure(opt_state)
    kernel = new_params["Dense_0"]["kernel"]
    assert isinstance(kernel, nn.Partitioned) and kernel.names == ("in", "out")
    assert float(np.mean(np.asarray(kernel.value) == 0)) == 0.5
    assert isinstance(
        jax.tree.leaves(new_state[1].masks, is_leaf=lambda b: isinstance(b, nn.Partitioned))[0],
        nn.Partitioned,
    )


# --- errors and the misuse warning ----------------------------------------------------------------


def test_errors_name_what_was_found():
    pruning = jaxprune.Pruning()
    params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
    adam_state = optax.adam(1e-3).init(params)
    with pytest.raises(ValueError, match=r"no PruningState.*ScaleByAdamState.*masks_transform"):
        pruning.update_masks(params, adam_state)
    with pytest.raises(ValueError, match=r"no PruningState.*found a dict"):
        pruning.update_masks(params, {"x": jnp.ones(2)})
    state = pruning.masks_transform().init(params)
    with pytest.raises(ValueError, match=r"2 PruningStates, at \['\[0\]', '\[1\]'\]"):
        pruning.update_masks(params, (state, state))
    with pytest.raises(ValueError, match=r"Parameters without an entry in the state: \['v'\]"):
        pruning.update_masks({"v": jnp.ones((4, 4)), "b": jnp.ones(4)}, (state,))
    with pytest.raises(ValueError, match=r"Parameter 'w' has shape \(4, 5\)"):
        pruning.update_masks({"w": jnp.ones((4, 5)), "b": jnp.ones(4)}, state)
    with pytest.raises(ValueError, match=r"masks_transform needs the current params"):
        pruning.masks_transform().update(params, state)


def test_transform_after_masks_transform_warns():
    pruning = jaxprune.Pruning(HP.replace(pruning_frequency=2, sparsity_function_end_step=2))
    tx = optax.chain(pruning.masks_transform(), optax.adam(1e-2))  # wrong order
    params, x, y = _mlp(seed=6)
    opt_state = tx.init(params)
    update_masks = jax.jit(pruning.update_masks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            updates, opt_state = tx.update(jax.grad(_loss)(params, x, y), opt_state, params)
            params, opt_state = update_masks(optax.apply_updates(params, updates), opt_state)
        jax.effects_barrier()
    messages = [str(w.message) for w in caught if "update_masks" in str(w.message)]
    assert len(messages) == 1 and "step 4" in messages[0] and "d0/kernel" in messages[0]
