"""Spec tests of the engine's new options through ``magnitude_pruning`` (issue 9, issue 11's
"output" scope): the masks at every update step against the NumPy references of
tests/test_engine_spec.py, the N:M ramp rule, whole training runs, one trace, 8 devices, orbax.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from tests.reference import ref_k, ref_weight_mask
from tests.test_engine_spec import (
    ref_channel,
    ref_channel_pruned_count,
    ref_erk_targets,
    ref_global,
    ref_layer,
    ref_nm,
    ref_output,
)

HP = jaxprune.get_pruning_hparams()


def _schedule(hp, target=None):
    """The sparsity s(t) of TF's polynomial schedule (tested against TF elsewhere)."""
    return jaxprune.sparsity_schedule(hp, target_sparsity=target)


def _nm_keep(n, m, s):
    """The contract's ramp rule: z(t) = clip(round_half_even(float32(M) * s(t)), 0, M - N)."""
    z = np.round(np.float32(m) * np.float32(s))
    return m - int(min(max(z, 0), m - n))


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_identical(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for i, (x, y) in enumerate(zip(la, lb, strict=True)):
        assert _bits_equal(x, y), f"leaf {i} differs"


# --- driven runs: random updates into magnitude_pruning alone; masks checked at every step -------


def _params(rng):
    return {
        "dense": {
            "kernel": rng.standard_normal((16, 6)).astype(np.float32),
            "bias": rng.standard_normal(6).astype(np.float32),
        },
        "conv": {"kernel": rng.standard_normal((3, 3, 8, 4)).astype(np.float32)},
        "head": {"kernel": rng.standard_normal((8, 8)).astype(np.float32)},
    }


KERNELS = ("dense/kernel", "conv/kernel", "head/kernel")


def _kernels(tree):
    return {
        "dense/kernel": tree["dense"]["kernel"],
        "conv/kernel": tree["conv"]["kernel"],
        "head/kernel": tree["head"]["kernel"],
    }


def _drive(hp, expected_masks, steps=24, sparsity=None, seed=0):
    """Runs magnitude_pruning(hp) on random updates; at every update step t (every
    hp.pruning_frequency steps) the masks must equal expected_masks(dense_new, t), where
    dense_new = params + updates (the weights the mask is computed on). Returns the masks seen
    at the update steps."""
    rng = np.random.default_rng(seed)
    tx = jaxprune.magnitude_pruning(hp, sparsity=sparsity)
    params = _params(rng)
    state = tx.init(params)
    step = jax.jit(tx.update)
    masks_prev, seen = None, {}
    for t in range(1, steps + 1):
        updates = jax.tree.map(
            lambda x: (0.3 * rng.standard_normal(x.shape)).astype(np.float32), params
        )
        new_updates, state = step(updates, state, params)
        pstate = jaxprune.get_pruning_state(state)
        masks = {k: np.asarray(v) for k, v in _kernels(pstate.masks).items()}
        dense_new = {
            k: np.asarray(p) + np.asarray(u)
            for k, p, u in zip(
                KERNELS, _kernels(params).values(), _kernels(updates).values(), strict=True
            )
        }
        if t % hp.pruning_frequency == 0:
            assert int(pstate.last_update_step) == t
            for k, m in expected_masks(dense_new, t).items():
                np.testing.assert_array_equal(masks[k], m, err_msg=f"{k} at step {t}")
            seen[t] = masks
        elif masks_prev is not None:
            for k in KERNELS:
                np.testing.assert_array_equal(masks[k], masks_prev[k])
        params = jax.tree.map(np.asarray, optax.apply_updates(params, new_updates))
        for k, w in _kernels(params).items():
            assert np.all(np.asarray(w)[~masks[k]] == 0.0), (k, t)
        masks_prev = masks
    return seen


_RAMP = {"pruning_frequency": 2, "sparsity_function_end_step": 16}


@pytest.mark.parametrize("nm", ["2:4", "1:8"])
def test_nm_ramp_rule_and_final_pattern(nm):
    n, m = (int(x) for x in nm.split(":"))
    hp = HP.replace(sparsity_type=nm, target_sparsity=(m - n) / m, **_RAMP)
    # "head" (8, 8) along -2: 8 rows, a multiple of 4 and 8.

    def expected(dense, t):
        keep = _nm_keep(n, m, _schedule(hp)(t))
        return {k: ref_nm(np.abs(v), n, m, -2, keep=keep) for k, v in dense.items()}

    seen = _drive(hp, expected)
    keeps = [_nm_keep(n, m, _schedule(hp)(t)) for t in sorted(seen)]
    assert keeps == sorted(keeps, reverse=True) and keeps[0] < m  # monotone, really ramps
    assert len(set(keeps)) >= 3 if m == 8 else len(set(keeps)) >= 2
    for t, masks in seen.items():  # exactly N:M from the end step on
        if t >= hp.sparsity_function_end_step:
            for mask in masks.values():
                assert np.all(np.moveaxis(mask, -2, -1).reshape(-1, m).sum(axis=1) == n)


def test_nm_with_external_schedule_and_axis():
    hp = HP.replace(sparsity_type="2:4", sparsity_axis=-1, pruning_frequency=3)
    sched = optax.linear_schedule(0.0, 0.5, 12)  # 4 * s(t) = t / 6: crosses .5 at t = 3, 9

    def expected(dense, t):
        keep = _nm_keep(2, 4, sched(t))
        out = {}
        for k, v in dense.items():
            if v.shape[-1] % 4 == 0:
                out[k] = ref_nm(np.abs(v), 2, 4, -1, keep=keep)
        return out

    # dense (16, 6) has 6 columns: not a multiple of 4 -> use a filter of the other two.
    flt = lambda name, leaf: name in ("conv/kernel", "head/kernel")
    rng = np.random.default_rng(0)
    tx = jaxprune.magnitude_pruning(hp, sparsity=sched, params_filter=flt)
    params = _params(rng)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(1, 16):
        updates = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
        new_updates, state = step(updates, state, params)
        if t % 3 == 0:
            dense = {
                "conv/kernel": params["conv"]["kernel"] + updates["conv"]["kernel"],
                "head/kernel": params["head"]["kernel"] + updates["head"]["kernel"],
                "dense/kernel": params["dense"]["kernel"] + updates["dense"]["kernel"],
            }
            for k, mask in expected(dense, t).items():
                got = np.asarray(_kernels(state.masks)[k])
                np.testing.assert_array_equal(got, mask, err_msg=f"{k} at {t}")
        params = jax.tree.map(np.asarray, optax.apply_updates(params, new_updates))


def test_channel_ramp():
    hp = HP.replace(sparsity_type="channel", target_sparsity=0.75, **_RAMP)

    def expected(dense, t):
        s = _schedule(hp)(t)
        return {k: ref_channel(np.abs(v), s, -1) for k, v in dense.items()}

    seen = _drive(hp, expected)
    final = seen[max(seen)]
    for mask in final.values():
        c = mask.shape[-1]
        pruned = ~mask.reshape(-1, c).any(axis=0)
        assert int(pruned.sum()) == ref_channel_pruned_count(c, 0.75)


def test_channel_ramp_other_axis():
    hp = HP.replace(sparsity_type="channel", sparsity_axis=0, target_sparsity=0.5, **_RAMP)

    def expected(dense, t):
        s = _schedule(hp)(t)
        return {k: ref_channel(np.abs(v), s, 0) for k, v in dense.items()}

    _drive(hp, expected, steps=18)


def test_global_ramp_with_map_override():
    hp = HP.replace(
        pruning_scope="global", target_sparsity=0.8, weight_sparsity_map=("head:0.3",), **_RAMP
    )

    def expected(dense, t):
        pooled = ["dense/kernel", "conv/kernel"]
        masks = ref_global([np.abs(dense[k]) for k in pooled], _schedule(hp)(t))
        out = dict(zip(pooled, masks, strict=True))
        out["head/kernel"] = ref_layer(np.abs(dense["head/kernel"]), _schedule(hp, 0.3)(t))
        return out

    seen = _drive(hp, expected)
    final = seen[max(seen)]
    kept = final["dense/kernel"].sum() + final["conv/kernel"].sum()
    assert abs(int(kept) - ref_k(16 * 6 + 3 * 3 * 8 * 4, 0.8)) <= 2  # within one per weight


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_erk_ramp(target):
    hp = HP.replace(sparsity_distribution="erk", target_sparsity=target, **_RAMP)
    shapes = {"dense/kernel": (16, 6), "conv/kernel": (3, 3, 8, 4), "head/kernel": (8, 8)}
    targets = dict(zip(shapes, ref_erk_targets(list(shapes.values()), target), strict=True))
    if target == 0.5:
        assert targets["head/kernel"] == 0.0  # the dense cap is exercised

    def expected(dense, t):
        return {k: ref_layer(np.abs(v), _schedule(hp, targets[k])(t)) for k, v in dense.items()}

    seen = _drive(hp, expected)
    final = seen[max(seen)]
    total = sum(m.size for m in final.values())
    kept = sum(int(m.sum()) for m in final.values())
    assert abs(kept - (1 - target) * total) <= len(final)


def test_erk_with_external_schedule_scales_per_weight():
    """TF's rule: an external s(t) is scaled per weight by target_l / target_sparsity."""
    hp = HP.replace(sparsity_distribution="erk", target_sparsity=0.8, pruning_frequency=2)
    sched = optax.linear_schedule(0.0, 0.8, 10)
    shapes = {"dense/kernel": (16, 6), "conv/kernel": (3, 3, 8, 4), "head/kernel": (8, 8)}
    targets = dict(zip(shapes, ref_erk_targets(list(shapes.values()), 0.8), strict=True))

    def expected(dense, t):
        out = {}
        for k, v in dense.items():
            s_l = float(sched(t)) * targets[k] / 0.8
            # float32 rounding of the scaled target may move k by one: accept the mask of
            # whichever count was used, if it is within one of the reference's.
            a = np.abs(v)
            k_ref = ref_k(a.size, s_l)
            out[k] = a >= np.sort(a.ravel())[::-1][k_ref - 1]
        return out

    rng = np.random.default_rng(0)
    tx = jaxprune.magnitude_pruning(hp, sparsity=sched)
    params = _params(rng)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(1, 13):
        updates = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
        new_updates, state = step(updates, state, params)
        if t % 2 == 0:
            dense = {
                k: np.asarray(p) + np.asarray(u)
                for k, p, u in zip(
                    KERNELS, _kernels(params).values(), _kernels(updates).values(), strict=True
                )
            }
            for k, ref_mask in expected(dense, t).items():
                got = np.asarray(_kernels(state.masks)[k])
                a = np.abs(dense[k])
                assert abs(int(got.sum()) - int(ref_mask.sum())) <= 1, (k, t)
                if (~got).any():  # whatever the count, the kept entries are the largest ones
                    assert a[got].min() > a[~got].max(), (k, t)
        params = jax.tree.map(np.asarray, optax.apply_updates(params, new_updates))


@pytest.mark.parametrize("nm", [None, "2:4"])
def test_output_scope_ramp(nm):
    extra = {"sparsity_type": nm} if nm else {}
    hp = HP.replace(pruning_scope="output", target_sparsity=0.5 if nm else 0.7, **_RAMP, **extra)

    def expected(dense, t):
        s = _schedule(hp)(t)
        if nm:
            return {
                k: ref_nm(np.abs(v), 2, 4, -2, keep=_nm_keep(2, 4, s)) for k, v in dense.items()
            }
        return {k: ref_output(np.abs(v), s) for k, v in dense.items()}

    _drive(hp, expected)


def test_default_hparams_unchanged_vs_tf_reference():
    """Explicit new-field defaults: masks and thresholds exactly those of tests/reference.py."""
    hp = HP.replace(
        pruning_scope="layer",
        sparsity_distribution="uniform",
        sparsity_type="unstructured",
        sparsity_axis=None,
        threshold_decay=0.5,
        block_dims_map=("head/kernel:2x4",),
        **_RAMP,
    )
    assert hp == HP.replace(threshold_decay=0.5, block_dims_map=("head/kernel:2x4",), **_RAMP)
    thresholds = dict.fromkeys(KERNELS, 0.0)
    blocks = {"dense/kernel": (1, 1), "conv/kernel": (1, 1), "head/kernel": (2, 4)}

    def expected(dense, t):
        out = {}
        for k, v in dense.items():
            thresholds[k], out[k] = ref_weight_mask(
                v, float(_schedule(hp)(t)), thresholds[k], block=blocks[k], decay=0.5
            )
        return out

    _drive(hp, expected)


# --- whole training runs: Flax Conv + Dense, adam, 100 steps, one trace ---------------------------


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))  # kernel (3, 3, 4, 8)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16)(x))  # (288, 16)
        return nn.Dense(8)(x)  # (16, 8)


def _data():
    x = jax.random.normal(jax.random.key(1), (16, 6, 6, 4))
    y = jax.random.randint(jax.random.key(2), (16,), 0, 8)
    return x, y


TRAIN = {"pruning_frequency": 5, "sparsity_function_end_step": 50}
MID = 15  # an intermediate update step (2:4 keeps 3 of 4 there)


def _train(hp, steps=100, record=(MID,)):
    model = Net()
    x, y = _data()
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.chain(optax.adam(1e-2), jaxprune.magnitude_pruning(hp))
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        grads = jax.grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(
                model.apply({"params": p}, x), y
            ).mean()
        )(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    recorded = {}
    for t in range(1, steps + 1):
        params, state = step(params, state)
        if t in record:
            recorded[t] = jax.tree.map(np.asarray, jaxprune.get_pruning_state(state).masks)
    assert len(traces) == 1 and step._cache_size() == 1  # one trace over 100 steps
    pstate = jaxprune.get_pruning_state(state)
    assert int(pstate.last_update_step) == steps
    return params, pstate, recorded


def _kernel_masks(masks):
    return {k: np.asarray(v["kernel"]) for k, v in masks.items()}


def _check_zeros(params, masks):
    for k, m in _kernel_masks(masks).items():
        w = np.asarray(params[k]["kernel"])
        assert np.all(w[~m] == 0.0) and np.all(w[m] != 0.0), k


def test_train_nm_2_4():
    hp = HP.replace(sparsity_type="2:4", **TRAIN)
    params, pstate, rec = _train(hp)
    _check_zeros(params, pstate.masks)
    for k, m in _kernel_masks(pstate.masks).items():
        groups = np.moveaxis(m, -2, -1).reshape(-1, 4)  # along the input axis
        assert np.all(groups.sum(axis=1) == 2), k
    keep = _nm_keep(2, 4, _schedule(hp)(MID))
    assert 2 < keep < 4
    for k, m in _kernel_masks(rec[MID]).items():
        assert np.all(np.moveaxis(m, -2, -1).reshape(-1, 4).sum(axis=1) == keep), k


def test_train_channel():
    hp = HP.replace(sparsity_type="channel", target_sparsity=0.6, **TRAIN)
    params, pstate, rec = _train(hp)
    _check_zeros(params, pstate.masks)
    for masks, s in ((pstate.masks, 0.6), (rec[MID], float(_schedule(hp)(MID)))):
        for k, m in _kernel_masks(masks).items():
            c = m.shape[-1]
            per_channel = m.reshape(-1, c)
            assert np.all(per_channel.all(axis=0) | ~per_channel.any(axis=0)), k
            assert int((~per_channel.any(axis=0)).sum()) == ref_channel_pruned_count(c, s), k


def test_train_global():
    hp = HP.replace(pruning_scope="global", target_sparsity=0.85, **TRAIN)
    params, pstate, rec = _train(hp)
    _check_zeros(params, pstate.masks)
    for masks, s in ((pstate.masks, 0.85), (rec[MID], float(_schedule(hp)(MID)))):
        ms = _kernel_masks(masks)
        total = sum(m.size for m in ms.values())
        kept = sum(int(m.sum()) for m in ms.values())
        assert abs(kept - ref_k(total, s)) <= len(ms)
    # Not a per-layer allocation: the layers end at different sparsities.
    per_layer = [m.mean() for m in _kernel_masks(pstate.masks).values()]
    assert max(per_layer) - min(per_layer) > 0.01


def test_train_erk():
    hp = HP.replace(sparsity_distribution="erk", target_sparsity=0.5, **TRAIN)
    params, pstate, rec = _train(hp)
    _check_zeros(params, pstate.masks)
    ms = _kernel_masks(pstate.masks)
    targets = dict(zip(ms, ref_erk_targets([m.shape for m in ms.values()], 0.5), strict=True))
    assert targets["Dense_1"] == 0.0  # (16, 8) is capped dense
    for k, m in ms.items():
        assert abs(int(m.sum()) - ref_k(m.size, targets[k])) <= 1, k
    for k, m in _kernel_masks(rec[MID]).items():
        s = _schedule(hp, targets[k])(MID)
        assert abs(int(m.sum()) - ref_k(m.size, s)) <= 1, k
    total = sum(m.size for m in ms.values())
    assert abs(sum(int(m.sum()) for m in ms.values()) - 0.5 * total) <= len(ms)


def test_train_output_scope():
    hp = HP.replace(pruning_scope="output", target_sparsity=0.7, **TRAIN)
    params, pstate, rec = _train(hp)
    _check_zeros(params, pstate.masks)
    for masks, s in ((pstate.masks, 0.7), (rec[MID], float(_schedule(hp)(MID)))):
        for k, m in _kernel_masks(masks).items():
            per_unit = m.reshape(-1, m.shape[-1]).sum(axis=0)
            assert np.all(per_unit == ref_k(m.size // m.shape[-1], s)), k


# --- 8 host devices -------------------------------------------------------------------------------


def _mesh():
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _spec(leaf):
    return {4: P(None, None, "data", "model"), 2: P("data", "model"), 1: P("model")}[leaf.ndim]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity_type": "2:4", "target_sparsity": 0.5},
        {"pruning_scope": "global", "target_sparsity": 0.8},
        {"sparsity_type": "channel", "target_sparsity": 0.5},
    ],
    ids=["nm", "global", "channel"],
)
def test_sharded_transform_bit_identical(kwargs):
    assert jax.device_count() == 8
    hp = HP.replace(pruning_frequency=2, sparsity_function_end_step=6, **kwargs)
    tx = jaxprune.magnitude_pruning(hp)
    rng = np.random.default_rng(5)
    host = {
        "d0": {"kernel": rng.standard_normal((16, 32)).astype(np.float32)},
        "d1": {"kernel": rng.standard_normal((32, 8)).astype(np.float32)},
        "c0": {"kernel": rng.standard_normal((3, 3, 8, 16)).astype(np.float32)},
        "b": rng.standard_normal(8).astype(np.float32),
    }
    mesh = _mesh()
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, _spec(x)), host)
    step = jax.jit(tx.update)
    runs = []
    puts = (
        lambda t: jax.device_put(t, shardings),
        lambda t: jax.device_put(t, jax.devices()[0]),
    )
    for put in puts:
        params = put(host)
        state = tx.init(params)
        urng = np.random.default_rng(6)
        for _ in range(8):
            updates = put(
                jax.tree.map(lambda x, r=urng: r.standard_normal(x.shape).astype(np.float32), host)
            )
            new_updates, state = step(updates, state, params)
            params = optax.apply_updates(params, new_updates)
        runs.append((params, state))
    (p8, s8), (p1, s1) = runs
    _assert_identical(p8, p1)
    _assert_identical(s8.masks, s1.masks)
    masks = jax.tree.structure(p8).flatten_up_to(s8.masks)
    for p, m in zip(jax.tree.leaves(p8), masks, strict=True):
        if not isinstance(m, optax.MaskedNode):
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
    assert not all(bool(np.asarray(m).all()) for m in jax.tree.leaves(s8.masks))


# --- orbax resume (2:4) ---------------------------------------------------------------------------

N_STEPS, FREQ = 12, 3


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(32)(nn.relu(nn.Dense(64)(x)))


def _build():
    model = MLP()
    hp = HP.replace(sparsity_type="2:4", pruning_frequency=FREQ, sparsity_function_end_step=9)
    tx = optax.chain(optax.adam(1e-2), jaxprune.magnitude_pruning(hp))
    x = jax.random.normal(jax.random.key(1), (32, 16))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 32)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(
                model.apply({"params": p}, x), y
            ).mean()
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return model.init(jax.random.key(0), x)["params"], tx, step


@pytest.fixture(scope="module")
def nm_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("nm_run")
    params, tx, step = _build()
    opt_state = tx.init(params)
    manager = ocp.CheckpointManager(path / "ckpt")
    for t in range(1, N_STEPS + 1):
        params, opt_state = step(params, opt_state)
        if t in (5, 6):
            args = ocp.args.StandardSave({"params": params, "opt_state": opt_state})
            manager.save(t, args=args)
    manager.wait_until_finished()
    manager.close()
    return path, params, opt_state


@pytest.mark.parametrize("k", [5, 6], ids=["before_update", "after_update"])
def test_orbax_resume_nm_bit_identical(nm_run, k):
    path, final_params, final_state = nm_run
    params, tx, step = _build()  # fresh objects, as in a new process
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    target = {"params": abstract, "opt_state": jaxprune.abstract_state(tx, abstract)}
    manager = ocp.CheckpointManager(path / "ckpt")
    restored = manager.restore(k, args=ocp.args.StandardRestore(target))
    manager.close()
    pstate = jaxprune.get_pruning_state(restored["opt_state"])
    for layer in ("Dense_0", "Dense_1"):
        m = np.asarray(pstate.masks[layer]["kernel"])
        assert not m.all()
        assert np.all(np.asarray(restored["params"][layer]["kernel"])[~m] == 0.0)
    params, opt_state = restored["params"], restored["opt_state"]
    for _ in range(k, N_STEPS):
        params, opt_state = step(params, opt_state)
    _assert_identical(params, final_params)
    _assert_identical(opt_state, final_state)
    for layer in ("Dense_0", "Dense_1"):
        m = np.asarray(jaxprune.get_pruning_state(opt_state).masks[layer]["kernel"])
        assert np.all(np.moveaxis(m, -2, -1).reshape(-1, 4).sum(axis=1) == 2)
