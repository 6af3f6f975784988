"""magnitude_pruning and Pruning: TF's step semantics, optax chains, jit, errors, state."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from tests.reference import ref_weight_mask

HP = jaxprune.get_pruning_hparams()
ALL_LEAVES = lambda name, leaf: True


def _zero_grads(params):
    return jax.tree.map(jnp.zeros_like, params)


# --- TF's published tests ------------------------------------------------------------------------


def test_tf_conditional_mask_update_with_pruning_class():
    hp = HP.parse("pruning_frequency=2,begin_pruning_step=1,end_pruning_step=6,nbins=100")
    sparsity_values = jnp.linspace(0.0, 0.9, 10)
    p = jaxprune.Pruning(hp, sparsity=lambda step: sparsity_values[step], params_filter=ALL_LEAVES)
    params = {"weights": jnp.linspace(1.0, 100.0, 100)}
    update = jax.jit(p.conditional_mask_update)
    state = p.init(params)
    nonzeros = []
    for step in range(10):  # TF: mask update at global step i, then increment
        state = update(params, state, jnp.int32(step))
        nonzeros.append(int(jnp.count_nonzero(p.apply_masks(params, state)["weights"])))
    assert nonzeros == [100, 100, 80, 80, 60, 60, 40, 40, 40, 40]
    assert int(state.last_update_step) == 6


def test_tf_conditional_mask_update_with_transform():
    # The n-th update acts at global step n; the count before any update is step 0.
    hp = HP.parse("pruning_frequency=2,begin_pruning_step=1,end_pruning_step=6")
    sparsity_values = jnp.linspace(0.0, 0.9, 10)
    tx = optax.chain(
        optax.sgd(0.0),
        jaxprune.magnitude_pruning(
            hp, sparsity=lambda step: sparsity_values[step], params_filter=ALL_LEAVES
        ),
    )
    params = {"weights": jnp.linspace(1.0, 100.0, 100)}
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(_zero_grads(p), s, p))
    nonzeros = [int(jnp.count_nonzero(params["weights"]))]
    for _ in range(9):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        nonzeros.append(int(jnp.count_nonzero(params["weights"])))
    assert nonzeros == [100, 100, 80, 80, 60, 60, 40, 40, 40, 40]


def test_tf_weight_specific_sparsity():
    hp = HP.parse(
        "begin_pruning_step=1,pruning_frequency=1,end_pruning_step=100,target_sparsity=0.5,"
        "weight_sparsity_map=[layer1:0.6,layer2/weights:0.75,.*kernel:0.6],threshold_decay=0.0"
    )
    params = {
        "layer1": {"weights": jnp.linspace(1.0, 100.0, 100)},
        "layer2": {"weights": jnp.linspace(1.0, 100.0, 100)},
        "layer3": {"kernel": jnp.linspace(1.0, 100.0, 100)},
    }
    tx = optax.chain(optax.sgd(0.0), jaxprune.magnitude_pruning(hp, params_filter=ALL_LEAVES))
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(_zero_grads(p), s, p))
    for _ in range(110):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    summaries = jaxprune.summaries(state)
    sparsities = [
        float(summaries[f"{n}/sparsity"])
        for n in ("layer1/weights", "layer2/weights", "layer3/kernel")
    ]
    np.testing.assert_allclose(sparsities, [0.6, 0.75, 0.6], atol=1e-6)


# --- step semantics (SPEC §3) -------------------------------------------------------------------


def _update_steps(hp, n_steps, sparsity=None):
    """The steps at which last_update_step changes."""
    tx = jaxprune.magnitude_pruning(hp, sparsity=sparsity)
    params = {"w": jnp.ones((4, 4))}
    state = tx.init(params)
    step = jax.jit(lambda s: tx.update(_zero_grads(params), s, params)[1])
    seen = []
    for _ in range(n_steps):
        state = step(state)
        if int(state.last_update_step) == int(state.count):
            seen.append(int(state.count))
    return seen


def test_default_update_steps():
    assert _update_steps(HP, 45) == [10, 20, 30, 40]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"begin_pruning_step": 5, "pruning_frequency": 3}, [5, 8, 11, 14, 17, 20]),
        ({"begin_pruning_step": 0, "end_pruning_step": 7, "pruning_frequency": 2}, [2, 4, 6]),
        (
            {"begin_pruning_step": 3, "end_pruning_step": 9, "pruning_frequency": 1},
            list(range(3, 10)),
        ),
        ({"begin_pruning_step": 15, "pruning_frequency": 10}, [15]),
    ],
)
def test_update_steps_follow_tf_condition(kwargs, expected):
    assert _update_steps(HP.replace(**kwargs), 21) == expected


def test_state_fields_and_dtypes():
    hp = HP.replace(pruning_frequency=1)
    tx = optax.chain(optax.adam(1e-2), jaxprune.magnitude_pruning(hp))
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
    state = jaxprune.get_pruning_state(tx.init(params))
    assert state.count.dtype == jnp.int32 and state.last_update_step.dtype == jnp.int32
    assert state.sparsity.dtype == jnp.float32
    assert state.masks["dense"]["kernel"].dtype == jnp.bool_
    assert state.masks["dense"]["kernel"].shape == (3, 4)
    assert isinstance(state.masks["dense"]["bias"], optax.MaskedNode)
    assert isinstance(state.thresholds["dense"]["bias"], optax.MaskedNode)
    assert state.thresholds["dense"]["kernel"].dtype == jnp.float32
    assert state.thresholds["dense"]["kernel"].shape == ()


def test_state_sparsity_is_schedule_at_count():
    tx = jaxprune.magnitude_pruning(HP)
    params = {"w": jnp.ones((4, 4))}
    state = tx.init(params)
    schedule = jaxprune.sparsity_schedule(HP)
    for _ in range(12):
        _, state = tx.update(_zero_grads(params), state, params)
    assert int(state.count) == 12
    assert float(state.sparsity) == float(schedule(12))


# --- the update itself ---------------------------------------------------------------------------


def _mlp_params(key, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    return {
        "l1": {"kernel": jax.random.normal(k1, (16, 32), dtype), "bias": jnp.ones(32, dtype)},
        "l2": {"kernel": jax.random.normal(k2, (32, 8), dtype), "bias": jnp.ones(8, dtype)},
    }


def _loss(params, x):
    h = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"])
    return jnp.mean((h @ params["l2"]["kernel"] + params["l2"]["bias"]) ** 2)


def test_pruned_weights_exactly_zero_and_kept_weights_get_plain_updates():
    hp = HP.replace(pruning_frequency=5, target_sparsity=0.8, sparsity_function_end_step=50)
    inner = optax.adam(1e-2)
    tx = optax.chain(inner, jaxprune.magnitude_pruning(hp))
    params = _mlp_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 16))
    state = tx.init(params)

    def grads_of(p):
        return jax.grad(_loss)(p, x)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grads_of(params), state, params)
        return updates, state

    inner_state = inner.init(params)
    for _ in range(60):
        updates, state = step(params, state)
        # The same inner optimizer alone, fed the same (masked-param) gradients.
        plain, inner_state = inner.update(grads_of(params), inner_state, params)
        new_params = optax.apply_updates(params, updates)
        masks = jaxprune.get_pruning_state(state).masks
        for layer in ("l1", "l2"):
            m = np.asarray(masks[layer]["kernel"])
            w = np.asarray(new_params[layer]["kernel"])
            assert np.all(w[~m] == 0.0)  # exactly zero, every step
            # (jit fuses adam's arithmetic differently from eager; the moments drift by ulps.)
            np.testing.assert_allclose(
                np.asarray(updates[layer]["kernel"])[m],
                np.asarray(plain[layer]["kernel"])[m],
                rtol=1e-4,
                atol=1e-7,
            )
            np.testing.assert_allclose(
                updates[layer]["bias"], plain[layer]["bias"], rtol=1e-4, atol=1e-6
            )
        params = new_params
    for layer in ("l1", "l2"):
        w = np.asarray(params[layer]["kernel"])
        assert np.mean(w == 0) == pytest.approx(0.8, abs=1 / w.size)


def test_masks_come_from_params_plus_updates_like_numpy_reference():
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
    state = tx.init(params)
    schedule = jaxprune.sparsity_schedule(hp)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    threshold = 0.0
    for i in range(1, 25):
        grads = {"k": jax.random.normal(jax.random.key(100 + i), (6, 10))}
        updates, state = step(params, state, grads)
        pstate = jaxprune.get_pruning_state(state)
        if i % 3 == 0 and i <= 24:  # an update step: compare with the NumPy reference
            dense_new = np.asarray(params["k"]) - 0.1 * np.asarray(grads["k"])
            threshold, ref_mask = ref_weight_mask(
                dense_new, float(schedule(i)), threshold, block=(2, 2), decay=0.5
            )
            np.testing.assert_array_equal(np.asarray(pstate.masks["k"]), ref_mask)
            np.testing.assert_allclose(float(pstate.thresholds["k"]), threshold, rtol=1e-6)
        params = optax.apply_updates(params, updates)


def test_train_step_traces_once_over_100_steps():
    hp = HP.replace(pruning_frequency=7, sparsity_function_end_step=60, target_sparsity=0.9)
    tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(hp))
    params = _mlp_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 16))
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(params, state):
        g = jax.grad(_loss)(params, x)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        return params, state

    for _ in range(100):  # mask-update steps and others alike
        params, state = train_step(params, state)
    assert int(jaxprune.get_pruning_state(state).last_update_step) == 98
    assert train_step._cache_size() == 1


def test_non_update_steps_do_no_threshold_work():
    """The mask update (with its selection loop) is only inside the lax.cond's true branch."""
    tx = jaxprune.magnitude_pruning(HP)
    params = {"w": jnp.ones((64, 64))}
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(lambda u, s, p: tx.update(u, s, p))(params, state, params).jaxpr
    while len(jaxpr.eqns) == 1 and "jaxpr" in jaxpr.eqns[0].params:  # step into the inner jit
        jaxpr = jaxpr.eqns[0].params["jaxpr"].jaxpr
    top_level = {eqn.primitive.name for eqn in jaxpr.eqns}
    assert "cond" in top_level
    assert "while" not in top_level and "sort" not in top_level  # selection lives in the branch


def test_int_and_non_prunable_leaves_pass_through():
    tx = jaxprune.magnitude_pruning(HP.replace(pruning_frequency=1, sparsity_function_end_step=1))
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4), "b": jnp.arange(4.0), "i": jnp.arange(3)}
    updates = {"w": jnp.zeros((4, 4)), "b": jnp.full(4, 0.5), "i": jnp.ones(3, jnp.int32)}
    state = tx.init(params)
    new_updates, state = tx.update(updates, state, params)
    assert new_updates["i"] is updates["i"] or np.array_equal(new_updates["i"], updates["i"])
    np.testing.assert_array_equal(new_updates["b"], updates["b"])
    new_w = np.asarray(params["w"] + new_updates["w"])
    assert np.count_nonzero(new_w) == 8 and np.all(new_w.ravel()[8:] == np.arange(9.0, 17.0))


def test_kept_weights_receive_exactly_the_incoming_updates():
    hp = HP.replace(pruning_frequency=1, sparsity_function_end_step=1, target_sparsity=0.6)
    tx = jaxprune.magnitude_pruning(hp)
    params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
    updates = {"w": jax.random.normal(jax.random.key(1), (8, 8)) * 1e-3}
    new_updates, state = jax.jit(tx.update)(updates, tx.init(params), params)
    mask = np.asarray(state.masks["w"])
    assert mask.sum() == round(64 * 0.4)
    np.testing.assert_array_equal(
        np.asarray(new_updates["w"])[mask], np.asarray(updates["w"])[mask]
    )
    new_w = np.asarray(optax.apply_updates(params, new_updates)["w"])
    assert np.all(new_w[~mask] == 0.0)
    np.testing.assert_array_equal(new_w[mask], np.asarray(params["w"] + updates["w"])[mask])


def test_user_arrays_are_not_mutated():
    params = {"w": np.arange(1.0, 17.0, dtype=np.float32).reshape(4, 4)}
    updates = {"w": np.full((4, 4), 0.25, np.float32)}
    params_copy, updates_copy = params["w"].copy(), updates["w"].copy()
    tx = jaxprune.magnitude_pruning(HP.replace(pruning_frequency=1, sparsity_function_end_step=1))
    state = tx.init(params)
    jax.jit(tx.update)(updates, state, params)
    tx.update(updates, state, params)
    np.testing.assert_array_equal(params["w"], params_copy)
    np.testing.assert_array_equal(updates["w"], updates_copy)


def test_nan_updates_never_leak_into_pruned_weights_or_densify():
    hp = HP.replace(pruning_frequency=1, sparsity_function_end_step=1, target_sparsity=0.5)
    tx = jaxprune.magnitude_pruning(hp)
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    state = tx.init(params)
    updates = {"w": jnp.zeros((4, 4)).at[0, 0].set(jnp.nan).at[3, 3].set(jnp.inf)}
    new_updates, state = jax.jit(tx.update)(updates, state, params)
    mask = np.asarray(jaxprune.get_pruning_state(state).masks["w"])
    assert not mask[0, 0]  # NaN is never a large magnitude
    assert mask[3, 3]  # Inf is the largest
    assert mask.sum() == 8  # not dense: still 50 %
    new_w = np.asarray(optax.apply_updates(params, new_updates)["w"])
    assert new_w[0, 0] == 0.0  # the NaN weight was pruned to an exact zero
    assert np.all(new_w[~mask] == 0.0)


def test_sparsity_as_constant_and_optax_schedule():
    params = {"w": jnp.arange(1.0, 101.0).reshape(10, 10)}
    for sparsity, expected_kept in ((0.3, 70), (optax.constant_schedule(0.9), 10)):
        tx = jaxprune.magnitude_pruning(HP.replace(pruning_frequency=1), sparsity=sparsity)
        updates, _ = tx.update(_zero_grads(params), tx.init(params), params)
        assert int(jnp.count_nonzero(params["w"] + updates["w"])) == expected_kept


def test_params_filter_callable_and_pytree():
    params = {"a": jnp.arange(1.0, 17.0).reshape(4, 4), "b": jnp.arange(1.0, 17.0).reshape(4, 4)}
    hp = HP.replace(pruning_frequency=1, sparsity_function_end_step=1)
    for flt in (lambda name, leaf: name == "b", {"a": False, "b": True}):
        tx = jaxprune.magnitude_pruning(hp, params_filter=flt)
        state = tx.init(params)
        assert isinstance(state.masks["a"], optax.MaskedNode)
        updates, state = tx.update(_zero_grads(params), state, params)
        assert int(jnp.count_nonzero(params["a"] + updates["a"])) == 16
        assert int(jnp.count_nonzero(params["b"] + updates["b"])) == 8


def test_bad_params_filter():
    params = {"a": jnp.ones((2, 2)), "i": jnp.ones((2, 2), jnp.int32)}
    with pytest.raises(ValueError, match="'i'"):
        jaxprune.magnitude_pruning(params_filter=lambda n, leaf: True).init(params)
    with pytest.raises(ValueError, match="params_filter"):
        jaxprune.magnitude_pruning(params_filter={"a": True}).init(params)


def test_update_without_params_is_a_clear_error():
    tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning())
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hparams": 0.5}, "hparams"),
        ({"hparams": "target_sparsity=2"}, "target_sparsity"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": "high"}, "sparsity"),
    ],
)
def test_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxprune.magnitude_pruning(**kwargs)


def test_external_schedule_with_map_needs_nonzero_target():
    hp = HP.parse("target_sparsity=0.0,weight_sparsity_map=[w:0.5]")
    with pytest.raises(ValueError, match="target_sparsity"):
        jaxprune.magnitude_pruning(hp, sparsity=optax.constant_schedule(0.5))


def test_external_schedule_scales_map_targets_like_tf():
    hp = HP.parse("target_sparsity=0.5,pruning_frequency=1,weight_sparsity_map=[a:0.75]")
    params = {
        "a": jnp.arange(1.0, 101.0).reshape(10, 10),
        "b": jnp.arange(1.0, 101.0).reshape(10, 10),
    }
    tx = jaxprune.magnitude_pruning(hp, sparsity=0.4)
    updates, _ = tx.update(_zero_grads(params), tx.init(params), params)
    assert int(jnp.count_nonzero(params["a"] + updates["a"])) == 40  # 0.4 * 0.75 / 0.5 = 0.6
    assert int(jnp.count_nonzero(params["b"] + updates["b"])) == 60


# The updates are not applied (only the masks are checked): the transform rightly warns that
# pruned weights are nonzero at later mask updates.
@pytest.mark.filterwarnings("ignore:jaxprune.magnitude_pruning. at the mask update")
def test_builtin_schedule_uses_own_target_in_formula():
    # SPEC §2 fix: with initial_sparsity != 0, the mapped weight follows the formula with its own
    # target (TF would scale s(t) by target_w / target).
    hp = HP.parse(
        "initial_sparsity=0.2,target_sparsity=0.5,pruning_frequency=1,weight_sparsity_map=[a:0.8]"
    )
    params = {"a": jnp.arange(1.0, 101.0).reshape(10, 10)}
    tx = jaxprune.magnitude_pruning(hp)
    state = tx.init(params)
    for _ in range(50):
        updates, state = tx.update(_zero_grads(params), state, params)
    s_a = float(jaxprune.sparsity_schedule(hp, target_sparsity=0.8)(50))  # 0.725
    assert s_a == pytest.approx(0.8 + (0.2 - 0.8) * 0.5**3)
    assert int(jnp.count_nonzero(params["a"] + updates["a"])) == round(100 * (1 - s_a))


def test_unmatched_map_entry_warns():
    hp = HP.parse("weight_sparsity_map=[conv9:0.5]")
    with pytest.warns(UserWarning, match="conv9"):
        jaxprune.magnitude_pruning(hp).init({"dense": {"kernel": jnp.ones((2, 2))}})


# --- Pruning, get_pruning_state, apply_masks, strip_pruning, summaries ---------------------------


def test_pruning_class_mask_update_is_unconditional():
    p = jaxprune.Pruning(HP.replace(begin_pruning_step=1000))
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    state = p.init(params)
    assert int(p.conditional_mask_update(params, state, step=100).last_update_step) == 0
    state = jax.jit(p.mask_update)(params, state, 100)
    assert int(state.last_update_step) == 100 and int(state.count) == 100
    assert int(state.masks["w"].sum()) == 8
    np.testing.assert_array_equal(p.apply_masks(params, state)["w"].ravel()[:8], 0.0)


def test_pruning_summaries_and_print(capsys):
    p = jaxprune.Pruning("name=mynet,pruning_frequency=1")
    params = {"conv1": {"kernel": jnp.arange(1.0, 17.0).reshape(4, 4)}}
    state = p.mask_update(params, p.init(params), step=100)
    s = p.summaries(state)
    assert set(s) == {
        "mynet/sparsity",
        "mynet/last_mask_update_step",
        "conv1/kernel/sparsity",
        "conv1/kernel/threshold",
    }
    assert float(s["mynet/sparsity"]) == 0.5
    assert int(s["mynet/last_mask_update_step"]) == 100
    assert float(s["conv1/kernel/sparsity"]) == 0.5
    assert float(s["conv1/kernel/threshold"]) == 9.0
    p.print_hparams()
    assert "name=mynet" in capsys.readouterr().out


def test_get_pruning_state_in_nested_states():
    params = {"w": jnp.ones((2, 2))}
    nested = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
        optax.chain(optax.identity(), jaxprune.magnitude_pruning()),
    )
    state = nested.init(params)
    assert isinstance(jaxprune.get_pruning_state(state), jaxprune.PruningState)
    multi = optax.MultiSteps(optax.chain(optax.sgd(1.0), jaxprune.magnitude_pruning()), 2)
    assert int(jaxprune.get_pruning_state(multi.init(params)).count) == 0
    with pytest.raises(ValueError, match="No PruningState"):
        jaxprune.get_pruning_state(optax.adam(1e-3).init(params))
    two = optax.chain(jaxprune.magnitude_pruning(), jaxprune.magnitude_pruning())
    with pytest.raises(ValueError, match="2 PruningStates"):
        jaxprune.get_pruning_state(two.init(params))


def test_apply_masks_and_strip_pruning_zero_nan_and_keep_others():
    p = jaxprune.Pruning()
    params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]]), "b": jnp.array([7.0, 8.0])}
    state = p.mask_update(params, p.init(params), step=100)
    weird = {"w": jnp.array([[jnp.nan, -3.0], [jnp.inf, 2.0]]), "b": jnp.array([7.0, 8.0])}
    out = jax.jit(jaxprune.apply_masks)(weird, state)
    np.testing.assert_array_equal(out["w"], [[0.0, -3.0], [0.0, 2.0]])  # where, not multiply
    np.testing.assert_array_equal(out["b"], [7.0, 8.0])
    stripped = jaxprune.strip_pruning(params, {"opt": state})  # any state containing it
    assert set(stripped) == {"w", "b"}
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(stripped))
    np.testing.assert_array_equal(stripped["w"], [[0.0, -3.0], [0.0, 2.0]])
    np.testing.assert_array_equal(params["w"], [[1.0, -3.0], [0.5, 2.0]])  # input untouched


# The updates are not applied (only the masks are checked): the transform rightly warns that
# pruned weights are nonzero at later mask updates.
@pytest.mark.filterwarnings("ignore:jaxprune.magnitude_pruning. at the mask update")
def test_summaries_of_opt_state_under_jit():
    tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(HP.replace(pruning_frequency=1)))
    params = {"d": {"kernel": jnp.arange(1.0, 101.0).reshape(10, 10)}}
    state = tx.init(params)
    for _ in range(100):
        _, state = tx.update(_zero_grads(params), state, params)
    s = jax.jit(jaxprune.summaries)(state)
    assert float(s["model_pruning/sparsity"]) == 0.5
    assert float(s["d/kernel/sparsity"]) == 0.5
    assert float(s["d/kernel/threshold"]) == 51.0
    assert int(s["model_pruning/last_mask_update_step"]) == 100


def test_optimizer_state_can_be_donated():
    # Every state leaf must own its buffer: jit(..., donate_argnums) rejects a buffer donated twice.
    tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(HP.replace(pruning_frequency=2)))
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4)), "bias": jnp.ones(4)}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
    assert len(buffers) == len(set(buffers))
    for _ in range(4):
        params, state = step(params, state)
    assert int(jaxprune.get_pruning_state(state).last_update_step) == 4
