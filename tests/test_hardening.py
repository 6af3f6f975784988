"""Hardening (issue 12): no silent wrong answer, every bad input named, real Flax code.

Expected values are hand-worked or come from the NumPy reference in tests/reference.py.
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from tests.reference import ref_weight_mask

HP = jaxprune.get_pruning_hparams()
INT32_MAX = 2**31 - 1
BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _sgd0_step(tx):
    @jax.jit
    def step(params, state):
        updates, state = tx.update(_zeros(params), state, params)
        return optax.apply_updates(params, updates), state

    return step


def _kernel(seed, shape=(8, 8)):
    return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


# --- A. Silent wrong answers ---------------------------------------------------------------------


def test_colliding_names_rejected_at_init_naming_both_paths():
    params = {"x/w": _kernel(0, (4, 4)), "x": {"w": _kernel(1, (4, 4))}}
    with pytest.raises(ValueError, match=r"'x/w'.*\['x'\]\['w'\].*\['x/w'\]"):
        jaxprune.magnitude_pruning().init(params)
    with pytest.raises(ValueError, match="same name"):
        jaxprune.Pruning().init(params)


def test_masks_are_matched_by_tree_path_not_by_joined_name():
    # Only the nested ("x", "w") is pruned; the 1-D "x/w" has the same joined name.
    flat, nested = jnp.arange(1.0, 5.0), _kernel(2, (4, 4))
    params = {"x/w": flat, "x": {"w": nested}}
    pruning = jaxprune.Pruning(HP)
    state = pruning.mask_update(params, pruning.init(params), step=100)  # s(100) = 0.5
    _, ref_mask = ref_weight_mask(np.asarray(nested), 0.5)
    for fn in (jaxprune.apply_masks, jaxprune.strip_pruning):
        out = fn(params, state)
        np.testing.assert_array_equal(out["x/w"], flat)
        np.testing.assert_array_equal(out["x"]["w"], np.where(ref_mask, nested, 0))


def test_summaries_reject_colliding_names():
    state = jaxprune.PruningState(
        count=jnp.int32(0),
        last_update_step=jnp.int32(0),
        sparsity=jnp.float32(0),
        masks={"x/w": jnp.ones((2, 2), bool), "x": {"w": jnp.ones((2, 2), bool)}},
        thresholds={"x/w": jnp.float32(0), "x": {"w": jnp.float32(0)}},
    )
    with pytest.raises(ValueError, match="x/w/sparsity"):
        jaxprune.summaries(state)


@pytest.mark.parametrize("shape", [(1, 4), (4,), (), (4, 1)])
@pytest.mark.parametrize("fn", [jaxprune.apply_masks, jaxprune.strip_pruning])
def test_mask_is_never_broadcast_onto_another_shape(fn, shape):
    state = jaxprune.magnitude_pruning().init({"d": {"kernel": jnp.ones((4, 4))}})
    with pytest.raises(ValueError, match=r"'d/kernel'.*" + re_shape(shape) + r".*\(4, 4\)"):
        fn({"d": {"kernel": jnp.ones(shape)}}, state)


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def _run_chain(tx, params, steps):
    step = _sgd0_grads_step(tx)
    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, jnp.float32(i))
    jax.effects_barrier()
    return params, state


def _sgd0_grads_step(tx):
    @jax.jit
    def step(params, state, i):
        grads = jax.tree.map(lambda p: jnp.cos(p * 3.0 + i), params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


NOT_LAST_HP = HP.replace(pruning_frequency=2, sparsity_function_end_step=6, target_sparsity=0.75)


def test_warns_when_not_last_in_chain():
    params = {"d": {"kernel": _kernel(3)}}
    tx = optax.chain(jaxprune.magnitude_pruning(NOT_LAST_HP), optax.adam(0.1))
    with pytest.warns(UserWarning, match=r"step 4.*\['d/kernel'\].*last") as record:
        params, state = _run_chain(tx, params, 4)
    # Steps 2 and 4 update masks; the first (all-True old masks) cannot see a problem.
    assert [str(w.message).split("step ")[1].split(",")[0] for w in record] == ["4"]
    # The silent wrong answer it warns about: pruned weights are not zero.
    mask = jaxprune.get_pruning_state(state).masks["d"]["kernel"]
    assert np.all(np.asarray(params["d"]["kernel"])[~np.asarray(mask)] != 0)


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optax.chain(optax.adam(0.1), jaxprune.magnitude_pruning(NOT_LAST_HP)),
        lambda: optax.chain(
            optax.MultiSteps(optax.adam(0.1), every_k_schedule=2),
            jaxprune.magnitude_pruning(NOT_LAST_HP),
        ),
        lambda: optax.MultiSteps(
            optax.chain(optax.adam(0.1), jaxprune.magnitude_pruning(NOT_LAST_HP)),
            every_k_schedule=2,
        ),
    ],
)
def test_no_not_last_warning_when_last(make_tx):
    params = {"d": {"kernel": _kernel(3)}, "b": jnp.ones(8)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params, state = _run_chain(make_tx(), params, 12)
    mask = np.asarray(jaxprune.get_pruning_state(state).masks["d"]["kernel"])
    assert mask.mean() == 0.25
    assert np.all(np.asarray(params["d"]["kernel"])[~mask] == 0)


def _sub_jaxprs(params):
    for value in params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if hasattr(v, "eqns"):
                yield v
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr


def _primitives(jaxpr, top_level_only):
    names = []
    for eqn in jaxpr.eqns:
        names.append(eqn.primitive.name)
        if not top_level_only:
            for sub in _sub_jaxprs(eqn.params):
                names += _primitives(sub, False)
    return names


def test_warns_when_not_last_on_a_sampled_large_leaf():
    params = {"d": {"kernel": _kernel(11, (256, 384))}, "small": {"kernel": _kernel(12, (4, 4))}}
    tx = optax.chain(jaxprune.magnitude_pruning(NOT_LAST_HP), optax.add_decayed_weights(0.1))
    with pytest.warns(UserWarning, match=r"step 4.*\['d/kernel'\]"):
        _run_chain(tx, params, 4)


def test_no_not_last_warning_for_tied_weights():
    # All-equal weights: the exact threshold keeps every tie, nothing is pruned, and the
    # weights (with no zero among them) then drift below the old threshold together.
    tx = optax.chain(optax.sgd(0.01), jaxprune.magnitude_pruning(NOT_LAST_HP))
    params = {"w": jnp.ones((32, 32))}
    step = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.ones_like, p), s, p))
    state = tx.init(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(8):
            updates, state = step(params, state)
            params = optax.apply_updates(params, updates)
        jax.effects_barrier()
    assert bool(jaxprune.get_pruning_state(state).masks["w"].all())


def test_no_not_last_warning_with_threshold_decay():
    # The smoothed threshold prunes nothing at first although the schedule asks for 27 %.
    hp = HP.replace(
        pruning_frequency=3,
        target_sparsity=0.7,
        sparsity_function_end_step=20,
        threshold_decay=0.5,
        block_height=2,
        block_width=2,
    )
    tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning(hp))
    params = {"k": jax.random.normal(jax.random.key(3), (6, 10))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run_chain(tx, params, 9)


def test_not_last_check_only_inside_the_mask_update_branch():
    # The host callback is in a cond (taken only when the mask-update branch flagged a leaf);
    # test_perf_invariants checks that ordinary steps copy nothing for it.
    tx = jaxprune.magnitude_pruning(NOT_LAST_HP)
    params = {"w": jnp.ones((4, 4))}
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(lambda u, s, p: tx.update(u, s, p))(params, state, params).jaxpr
    # Inline the compiled update (a pjit) to look at its top level.
    (inner,) = [e.params["jaxpr"].jaxpr for e in jaxpr.eqns if e.primitive.name in ("pjit", "jit")]
    assert "debug_callback" not in _primitives(inner, top_level_only=True)
    assert "debug_callback" in _primitives(inner, top_level_only=False)


def test_tf_style_pruning_class_does_not_warn():
    # TF's Pruning keeps dense variables: pruned weights are nonzero between updates.
    pruning = jaxprune.Pruning(HP.replace(pruning_frequency=1))
    params = {"w": _kernel(4)}
    state = pruning.init(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(1, 5):
            state = pruning.conditional_mask_update(params, state, step=step)
        jax.effects_barrier()


def test_step_counter_saturates_at_int32_max():
    hp = HP.replace(pruning_frequency=1)
    tx = jaxprune.magnitude_pruning(hp)
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    state = tx.init(params)._replace(count=jnp.int32(INT32_MAX - 1))
    update = jax.jit(tx.update)
    _, state = update(_zeros(params), state, params)
    assert int(state.count) == INT32_MAX and int(state.last_update_step) == INT32_MAX
    for _ in range(2):
        _, state = update(_zeros(params), state, params)
        assert int(state.count) == INT32_MAX  # no wrap to -2**31
        assert int(state.last_update_step) == INT32_MAX
    assert float(state.sparsity) == 0.5
    assert int(state.masks["w"].sum()) == 8


def test_should_update_has_no_overflow_near_int32_max():
    # last + frequency would overflow; step - last does not.
    p = jaxprune.Pruning(HP.replace(pruning_frequency=1000))
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    state = p.init(params)._replace(last_update_step=jnp.int32(INT32_MAX - 10))
    state = p.conditional_mask_update(params, state, step=INT32_MAX)
    assert int(state.last_update_step) == INT32_MAX - 10  # 10 < 1000 steps since: no update
    assert bool(state.masks["w"].all())


DENORMALS = np.array(
    [1e-40, 2e-40, 3e-40, 4e-40, 1.0, 2.0, 3e-41, 5e-40, -6e-40, 0.0, 7e-45, 1e-38],
    np.float32,
)


@pytest.mark.parametrize("method", ["exact", "histogram"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_denormal_masks_agree_with_threshold(method, sparsity):
    hp = HP.replace(threshold_method=method)
    w = DENORMALS.reshape(3, 4)
    t, mask = jax.jit(lambda w, s: jaxprune.weight_mask(w, s, hparams=hp))(w, sparsity)
    ref_t, ref_mask = ref_weight_mask(w, sparsity, method=method)
    assert np.float32(t).tobytes() == np.float32(ref_t).tobytes()
    np.testing.assert_array_equal(mask, ref_mask)
    if method == "exact":  # no ties here: exactly k kept
        assert int(mask.sum()) == round(w.size * (1 - sparsity))


def test_denormal_magnitudes_compare_as_ranked():
    # Magnitudes by rank: 2.0, 1.0, 1e-38, 6e-40, 5e-40, 4e-40, 3e-40, ...: for k = 6 the
    # threshold is the denormal 4e-40 and exactly those six are kept (not every denormal).
    t, mask = jaxprune.weight_mask(DENORMALS, 0.5, hparams=HP)
    assert np.float32(t) == np.float32(4e-40)
    np.testing.assert_array_equal(np.flatnonzero(mask), [3, 4, 5, 7, 8, 11])


SCHEDULE = np.array([0.0, 0.5, np.nan, 1.5, -0.2, np.inf, np.nan, 0.25], np.float32)
# NaN -> the previous scheduled sparsity; then clamped into [0, 1).
SANITIZED = [0.0, 0.5, 0.5, BELOW_ONE, 0.0, BELOW_ONE, BELOW_ONE, 0.25]


@pytest.mark.parametrize("method", ["exact", "histogram"])
def test_external_schedule_outside_unit_interval_is_defined(method):
    hp = HP.replace(pruning_frequency=1, threshold_method=method)
    table = jnp.asarray(SCHEDULE)
    tx = jaxprune.magnitude_pruning(hp, sparsity=lambda step: table[step])
    w = np.random.RandomState(5).randn(16, 16).astype(np.float32)
    params, state = {"w": jnp.asarray(w)}, None
    state = tx.init(params)
    step = _sgd0_step(tx)
    for n in range(1, len(SCHEDULE)):
        before = np.asarray(params["w"])
        params, state = step(params, state)
        assert np.float32(state.sparsity) == np.float32(SANITIZED[n]), n
        _, ref_mask = ref_weight_mask(before, SANITIZED[n], method=method)
        np.testing.assert_array_equal(state.masks["w"], ref_mask, err_msg=str(n))


@pytest.mark.parametrize("bad, same_as", [(np.nan, 0.0), (-3.0, 0.0), (7.0, BELOW_ONE)])
def test_weight_mask_defines_bad_sparsity_alike_for_both_methods(bad, same_as):
    w = _kernel(6, (16, 16))
    for method in ("exact", "histogram"):
        hp = HP.replace(threshold_method=method)
        t, m = jaxprune.weight_mask(w, bad, hparams=hp)
        ref_t, ref_m = ref_weight_mask(np.asarray(w), same_as, method=method)
        assert np.float32(t) == ref_t
        np.testing.assert_array_equal(m, ref_m)


def test_weight_sparsity_map_scaling_above_one_is_clamped():
    # TF scales an external schedule by target_w / target_sparsity = 0.9 / 0.3 = 3.
    hp = HP.replace(target_sparsity=0.3, weight_sparsity_map=("w:0.9",), pruning_frequency=1)
    tx = jaxprune.magnitude_pruning(hp, sparsity=0.5)
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    _, state = _sgd0_step(tx)(params, tx.init(params))
    np.testing.assert_array_equal(state.masks["w"], np.arange(16).reshape(4, 4) == 15)


# --- B. Errors that come late or name nothing ----------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "begin_pruning_step",
        "end_pruning_step",
        "pruning_frequency",
        "sparsity_function_begin_step",
        "sparsity_function_end_step",
        "block_height",
        "block_width",
    ],
)
def test_int_fields_bounded_to_int32(field):
    with pytest.raises(ValueError, match=f"hparam {field} must be <= 2147483647 .*got {2**31}"):
        HP.replace(**{field: 2**31})
    with pytest.raises(ValueError, match=f"hparam {field} must be <= 2147483647"):
        HP.parse(f"{field}={2**40}")
    if field != "sparsity_function_begin_step":  # needs end > begin
        assert getattr(HP.replace(**{field: INT32_MAX}), field) == INT32_MAX


def test_int32_max_fields_work_under_jit():
    hp = HP.replace(
        begin_pruning_step=INT32_MAX - 1,
        end_pruning_step=INT32_MAX,
        sparsity_function_begin_step=INT32_MAX - 1,
        sparsity_function_end_step=INT32_MAX,
        pruning_frequency=INT32_MAX,
    )
    tx = jaxprune.magnitude_pruning(hp)
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    state = tx.init(params)._replace(count=jnp.int32(INT32_MAX - 1))
    _, state = jax.jit(tx.update)(_zeros(params), state, params)
    # Step 2**31 - 1: in range, 2**31 - 1 steps after step 0, schedule at its end.
    assert int(state.last_update_step) == INT32_MAX
    assert int(state.masks["w"].sum()) == 8


def test_nbins_and_map_block_dims_bounded():
    with pytest.raises(ValueError, match="hparam nbins must be <= 16777216"):
        HP.replace(nbins=2**24 + 1)
    with pytest.raises(ValueError, match="block_dims_map entry 'a:2x4294967296' block width"):
        HP.replace(block_dims_map=["a:2x4294967296"])


def test_block_larger_than_weight_is_the_whole_dimension():
    # Integer weights: block sums are exact, so AVG is the correctly rounded mean in both.
    w = jnp.asarray(np.random.RandomState(7).randint(-50, 50, (16, 8)), jnp.float32)
    for pooling in ("AVG", "MAX"):
        hp = HP.replace(block_height=100_000, block_width=3, block_pooling_function=pooling)
        t, m = jax.jit(lambda w, hp=hp: jaxprune.weight_mask(w, 0.5, hparams=hp))(w)
        ref_t, ref_m = ref_weight_mask(np.asarray(w), 0.5, block=(16, 3), pooling=pooling)
        assert np.float32(t) == ref_t
        np.testing.assert_array_equal(m, ref_m)
    # 1e5 x 1e5 blocks padded would need 40 GB; here it is one block per weight.
    hp = HP.replace(block_dims_map=["w:100000x100000"], pruning_frequency=1)
    tx = jaxprune.magnitude_pruning(hp)
    _, state = _sgd0_step(tx)({"w": w}, tx.init({"w": w}))
    assert bool(state.masks["w"].all())  # a single block is always kept (k >= 1)


@pytest.mark.parametrize("field", ["threshold_decay", "target_sparsity", "initial_sparsity"])
def test_huge_int_for_float_field_is_a_value_error(field):
    with pytest.raises(ValueError, match=f"hparam {field} must be a number in float range"):
        HP.replace(**{field: 10**400})
    with pytest.raises(ValueError, match=f"hparam {field}"):
        jaxprune.PruningHParams.from_dict({field: 10**400})
    with pytest.raises(ValueError, match="sparsity_function_exponent"):
        HP.replace(sparsity_function_exponent=-(10**400))


@pytest.mark.parametrize("field", ["weight_sparsity_map", "block_dims_map"])
@pytest.mark.parametrize(
    "regex, error",
    [("(" * 2000 + ")" * 2000, "RecursionError"), ("a{1,99999999999}", "OverflowError"), ("(", "")],
)
def test_regex_rejected_by_re_is_a_value_error(field, regex, error):
    value = "0.5" if field == "weight_sparsity_map" else "2x2"
    with pytest.raises(ValueError, match=f"hparam {field} entry .* does not compile: {error}"):
        HP.replace(**{field: [f"{regex}:{value}"]})


def test_map_sparsity_overflowing_is_a_value_error():
    with pytest.raises(ValueError, match="weight_sparsity_map entry"):
        HP.replace(weight_sparsity_map=["a:1e999"])


def test_zero_size_leaves_are_left_alone():
    params = {"empty": jnp.ones((0, 4)), "w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    for params_filter in (None, lambda name, leaf: True):
        tx = jaxprune.magnitude_pruning(
            HP.replace(pruning_frequency=1), sparsity=0.5, params_filter=params_filter
        )
        state = tx.init(params)
        assert isinstance(state.masks["empty"], optax.MaskedNode)
        grads = {"empty": jnp.ones((0, 4)), "w": jnp.zeros((4, 4))}
        updates, state = jax.jit(tx.update)(grads, state, params)
        assert updates["empty"].shape == (0, 4)
        assert int(state.masks["w"].sum()) == 8
        assert set(jaxprune.summaries(state)) == {
            "model_pruning/sparsity",
            "model_pruning/last_mask_update_step",
            "w/sparsity",
            "w/threshold",
        }
    assert not jaxprune.default_prunable("e", jnp.ones((0, 4)))


def test_kernel_shape_change_between_init_and_update_is_named():
    tx = optax.chain(optax.adam(0.1), jaxprune.magnitude_pruning())
    params = {"d": {"kernel": jnp.ones((4, 4))}}
    state = tx.init(params)
    params = {"d": {"kernel": jnp.ones((4, 5))}}
    with pytest.raises(ValueError, match=r"'d/kernel' has shape \(4, 5\).*mask has shape \(4, 4\)"):
        jaxprune.magnitude_pruning().update(params, state[1], params)


def test_state_of_another_params_filter_is_named():
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4))}
    only_a = jaxprune.magnitude_pruning(params_filter=lambda name, leaf: name == "a")
    both = jaxprune.magnitude_pruning()
    with pytest.raises(ValueError, match="'b' is pruned by this transform, but the pruning state"):
        both.update(params, only_a.init(params), params)
    with pytest.raises(ValueError, match="state has a mask for 'b', which this transform does not"):
        only_a.update(params, both.init(params), params)
    # Restored without a target, orbax gives None for MaskedNode: same message.
    restored = only_a.init(params)._replace(
        masks={"a": jnp.ones((4, 4), bool), "b": None}, thresholds={"a": 0.0, "b": None}
    )
    with pytest.raises(ValueError, match="'b' is pruned by this transform"):
        both.update(params, restored, params)


def test_state_of_another_params_tree_is_named():
    tx = jaxprune.magnitude_pruning()
    state = tx.init({"a": jnp.ones((4, 4))})
    params = {"a": jnp.ones((4, 4)), "c": jnp.ones((4, 4))}
    with pytest.raises(ValueError, match=r"without an entry in the state: \['c'\]"):
        tx.update(params, state, params)


def test_explicit_mesh_sharded_params_replicated_grads():
    """Plain optax accepts replicated grads for sharded params on an Explicit mesh; so must we."""
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    hp = HP.replace(pruning_frequency=1, block_dims_map=["blocked:2x2"])
    tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning(hp))
    kernels = {"plain": _kernel(8, (8, 16)), "blocked": _kernel(9, (8, 16))}
    grads0 = jax.tree.map(lambda k: jnp.sin(k * 5.0), kernels)

    def run(params, grads):
        state = tx.init(params)
        step = jax.jit(lambda p, s, g: tx.update(g, s, p))
        out = []
        for _ in range(3):
            updates, state = step(params, state, grads)
            params = optax.apply_updates(params, updates)
            out.append((updates, params, state))
        return out

    ref = run(kernels, grads0)
    with jax.set_mesh(mesh):
        params = jax.device_put(kernels, NamedSharding(mesh, P("data", "model")))
        grads = jax.device_put(grads0, NamedSharding(mesh, P()))
        got = run(params, grads)
    for (u, p, s), (ru, rp, rs) in zip(got, ref, strict=True):
        for a, b in zip(jax.tree.leaves((u, p, s)), jax.tree.leaves((ru, rp, rs)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for leaf in jax.tree.leaves((u, p, jaxprune.get_pruning_state(s).masks)):
            assert leaf.sharding.spec == P("data", "model")


# --- C. Real Flax training code ------------------------------------------------------------------


class _Boxed(nn.Module):
    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed"))
        emb = self.param("embedding", init, (16, 8))
        kernel_init = nn.with_partitioning(nn.initializers.normal(1.0), (None, "model"))
        return nn.Dense(4, kernel_init=kernel_init)(x @ emb)


def test_linen_partitioned_params_like_lm1b():
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    rules = (("vocab", "data"), ("embed", "model"))
    hp = HP.replace(
        pruning_frequency=1,
        sparsity_function_end_step=4,
        weight_sparsity_map=("embedding$:0.75",),  # anchored at the name's end: no "/value"
    )
    tx = optax.chain(optax.adam(1e-2), jaxprune.magnitude_pruning(hp))
    model, x = _Boxed(), jnp.linspace(-1.0, 1.0, 48).reshape(3, 16)

    def create():
        params = model.init(jax.random.key(0), x)["params"]
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state):
        grads = jax.grad(lambda p: jnp.sum(state.apply_fn({"params": p}, x) ** 2))(state.params)
        return state.apply_gradients(grads=grads)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "matches no pruned parameter"
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            specs = nn.get_partition_spec(jax.eval_shape(create))
            pstate = jaxprune.get_pruning_state(specs.opt_state)
            assert pstate.thresholds["embedding"] == P()  # scalars: no rank-2 spec
            assert pstate.masks["embedding"] == P("vocab", "embed")
            state = jax.jit(create, out_shardings=nn.logical_to_mesh_sharding(specs, mesh, rules))()
            for _ in range(5):
                state = step(state)
    masks = jaxprune.get_pruning_state(state.opt_state).masks
    assert masks["embedding"].shape == (16, 8)
    assert masks["embedding"].sharding.is_equivalent_to(NamedSharding(mesh, P("data", "model")), 2)
    summaries = jaxprune.summaries(state.opt_state)
    assert float(summaries["embedding/sparsity"]) == 0.75
    assert float(summaries["Dense_0/kernel/sparsity"]) == 0.5
    stripped = jaxprune.strip_pruning(state.params, state.opt_state)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(stripped))
    emb = state.params["embedding"].value
    np.testing.assert_array_equal(stripped["embedding"], np.where(masks["embedding"], emb, 0))
    # In the optimizer state the mask keeps the param's box (the threshold has none).
    boxed = state.opt_state[1]
    assert isinstance(boxed.masks["embedding"], nn.LogicallyPartitioned)
    assert boxed.masks["embedding"].names == ("vocab", "embed")
    assert isinstance(boxed.thresholds["embedding"], jax.Array)
    assert np.mean(np.asarray(stripped["embedding"]) == 0) == 0.75


def test_sparsity_as_array_equals_number():
    params = {"w": _kernel(10)}
    hp = HP.replace(pruning_frequency=1)
    results = []
    for sparsity in (0.6, jnp.float32(0.6), np.float32(0.6), jnp.asarray(0.6, jnp.bfloat16)):
        tx = jaxprune.magnitude_pruning(hp, sparsity=sparsity)
        results.append(_sgd0_step(tx)(params, tx.init(params)))
    _, ref_mask = ref_weight_mask(np.asarray(params["w"]), np.float32(0.6))
    for _, s in results[:3]:
        np.testing.assert_array_equal(s.masks["w"], ref_mask)
    _, ref_bf16 = ref_weight_mask(np.asarray(params["w"]), float(jnp.asarray(0.6, jnp.bfloat16)))
    np.testing.assert_array_equal(results[3][1].masks["w"], ref_bf16)
    for bad in (jnp.float32(1.0), jnp.ones(2) * 0.5, jnp.asarray(True)):
        with pytest.raises(ValueError, match="sparsity"):
            jaxprune.magnitude_pruning(hp, sparsity=bad)


def test_sparsity_injected_as_hyperparameter():
    hp = HP.replace(pruning_frequency=1)
    inject = optax.inject_hyperparams(jaxprune.magnitude_pruning, static_args=("hparams",))
    tx = optax.chain(optax.sgd(0.0), inject(hparams=hp, sparsity=0.5))
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = tx.update(_zeros(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    zeros = []
    for value in (0.5, 0.75, float("nan"), 2.0, 0.25):
        state[1].hyperparams["sparsity"] = jnp.asarray(value, jnp.float32)
        params, state = step(params, state)
        zeros.append(int((params["w"] == 0).sum()))
    # NaN keeps 0.75; 2.0 clamps below 1 (one weight kept); 0.25 prunes the pruned zeros only.
    assert zeros == [8, 12, 12, 15, 15]
    assert len(traces) == 1
    assert float(jaxprune.get_pruning_state(state).sparsity) == 0.25
    # Eager: the transform rebuilt on every update reuses one compiled update.
    from jaxprune._src import transform

    before = transform._jitted_update._cache_size()
    for _ in range(3):
        _, state = tx.update(_zeros(params), state, params)
    assert transform._jitted_update._cache_size() <= before + 1


def test_block_dims_that_cannot_apply_warn_at_the_users_line():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 4, 8))},
        "attn": {"kernel": jnp.ones((8, 2, 4))},
        "dense": {"kernel": jnp.ones((8, 8))},
        "squeezed": {"kernel": jnp.ones((1, 8, 8))},
    }
    hp = HP.replace(block_dims_map=["conv:2x2", "dense|squeezed:2x2"])
    with pytest.warns(UserWarning) as record:
        optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning(hp)).init(params)
    assert len(record) == 1
    message = str(record[0].message)
    assert "block_dims_map entry 'conv:2x2'" in message and "conv/kernel (3, 3, 4, 8)" in message
    assert "not 2-D" in message and "dense" not in message
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match=r"default block dims.*attn/kernel \(8, 2, 4\)") as record:
        jaxprune.magnitude_pruning(HP.replace(block_height=2)).init(params)
    assert all("squeezed" not in str(w.message) for w in record)
    assert record[0].filename == __file__


def test_unmatched_map_entry_warns_at_the_users_line():
    hp = HP.replace(weight_sparsity_map=["nothing:0.5"], pruning_frequency=1)
    params = {"w": jnp.ones((4, 4))}
    for tx in (
        jaxprune.magnitude_pruning(hp),
        optax.chain(optax.adam(0.1), jaxprune.magnitude_pruning(hp)),
        optax.inject_hyperparams(jaxprune.magnitude_pruning, static_args=("hparams",))(
            hparams=hp, sparsity=0.5
        ),
    ):
        with pytest.warns(UserWarning, match="matches no pruned parameter") as record:
            tx.init(params)
        assert [w.filename for w in record] == [__file__]
        with pytest.warns(UserWarning, match="matches no pruned parameter") as record:
            jax.jit(tx.init)(params)
        assert [w.filename for w in record] == [__file__]
