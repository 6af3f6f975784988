"""Many weights, one selection loop: ``select.kth_largest_each`` and the transform's use of it.

References are independent: NumPy sorts (tests/reference.py's TF mask reference) per weight.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune._src import masks as masks_lib
from jaxprune._src import select
from tests.reference import ref_weight_mask

SHAPES = [(1,), (3,), (7, 5), (129,), (2, 3, 4), (64, 65), (128,), (3, 3, 8, 16)]


def _np_magnitudes(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.where(np.isnan(x), np.float32(0), np.abs(x)).astype(np.float32)


def _np_kth(x: np.ndarray, k: int) -> np.float32:
    return np.sort(x.ravel())[::-1][k - 1]


def _bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.int32)


def _awkward(rng: np.random.Generator, shape) -> np.ndarray:
    """Normal values with NaN, +-Inf, -0.0, denormals and ties mixed in."""
    x = rng.normal(size=shape).astype(np.float32)
    flat = x.reshape(-1)
    specials = np.array(
        [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-40, -3e-42, 1e-45, 0.5, 0.5, -0.5], np.float32
    )
    n = min(flat.size // 2, specials.size)
    if n:
        where = rng.choice(flat.size, n, replace=False)
        flat[where] = rng.choice(specials, n)
    return x


_each_jit = jax.jit(lambda xs, ks: select.kth_largest_each(xs, ks, magnitude=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kth_largest_each_matches_a_sort_per_array(seed):
    rng = np.random.default_rng(seed)
    xs = [_awkward(rng, s) for s in SHAPES]
    for _ in range(3):
        ks = [int(rng.integers(1, x.size + 1)) for x in xs]
        ks[0], ks[-1] = 1, xs[-1].size  # the largest, and the smallest
        got = _each_jit([jnp.asarray(x) for x in xs], jnp.asarray(ks, jnp.int32))
        want = [_np_kth(_np_magnitudes(x), k) for x, k in zip(xs, ks, strict=True)]
        np.testing.assert_array_equal(_bits(got), _bits(np.array(want, np.float32)))
    # Retraced only for new shapes, never for new ranks.
    assert _each_jit._cache_size() == 1


def test_kth_largest_each_ties_all_equal_and_clamped_ranks():
    xs = [jnp.full((5, 7), 2.0), jnp.array([1.0, 1.0, 1.0, 3.0]), jnp.zeros((130,))]
    # ks outside [1, n] are clamped, as in kth_largest.
    got = select.kth_largest_each(xs, jnp.array([35, 0, 1000]))
    np.testing.assert_array_equal(np.asarray(got), np.array([2.0, 3.0, 0.0], np.float32))
    got, top = select.kth_largest_each_and_max(xs, jnp.array([1, 2, 7]))
    np.testing.assert_array_equal(np.asarray(got), np.array([2.0, 1.0, 0.0], np.float32))
    np.testing.assert_array_equal(np.asarray(top), np.array([2.0, 3.0, 0.0], np.float32))


def test_kth_largest_each_rejects_bad_input():
    with pytest.raises(ValueError, match="ks of shape"):
        select.kth_largest_each([jnp.ones(3), jnp.ones(4)], jnp.array([1]))
    with pytest.raises(ValueError, match="at least one"):
        select.kth_largest_each([], jnp.array([], jnp.int32))
    with pytest.raises(TypeError, match="floating"):
        select.kth_largest_each([jnp.arange(3)], jnp.array([1]))


@pytest.mark.parametrize("method", ["exact", "histogram"])
@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_thresholds_and_masks_each_match_the_tf_reference(method, decay):
    rng = np.random.default_rng(7)
    ws = [_awkward(rng, s) for s in SHAPES]
    sparsities = [float(s) for s in rng.uniform(0.0, 0.99, len(ws))]
    previous = [float(t) for t in rng.uniform(0.0, 1.0, len(ws))]
    previous[1] = float("inf")  # a non-finite previous threshold is not carried
    hp = jaxprune.get_pruning_hparams().replace(threshold_method=method, threshold_decay=decay)
    fn = jax.jit(
        lambda w, s, t: masks_lib.thresholds_and_masks_each(w, s, t, hp),
    )
    thresholds, masks = fn(
        [jnp.asarray(w) for w in ws],
        [jnp.float32(s) for s in sparsities],
        [jnp.float32(t) for t in previous],
    )
    for w, s, t, got_t, got_m in zip(ws, sparsities, previous, thresholds, masks, strict=True):
        want_t, want_m = ref_weight_mask(w, s, t, method=method, decay=decay)
        np.testing.assert_array_equal(_bits(got_t), _bits(want_t))
        np.testing.assert_array_equal(np.asarray(got_m), want_m)


def _distinct_params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {f"layer{i}": (16 + 3 * i, 20 + i) for i in range(12)}
    shapes["conv"] = (3, 3, 4, 8)
    return {
        name: {"kernel": jnp.asarray(rng.normal(size=s), jnp.float32), "bias": jnp.zeros(s[-1])}
        for name, s in shapes.items()
    }


def test_mask_update_of_many_distinct_shapes_matches_the_reference():
    params = _distinct_params()
    hp = jaxprune.get_pruning_hparams().replace(
        target_sparsity=0.8, sparsity_function_end_step=100, pruning_frequency=1
    )
    pruning = jaxprune.Pruning(hp)
    state = pruning.mask_update(params, pruning.init(params), step=60)
    s = float(pruning.sparsity_at(60))
    for name, leaf in params.items():
        want_t, want_m = ref_weight_mask(np.asarray(leaf["kernel"]), s)
        np.testing.assert_array_equal(np.asarray(state.masks[name]["kernel"]), want_m)
        np.testing.assert_array_equal(_bits(state.thresholds[name]["kernel"]), _bits(want_t))


def test_transform_on_distinct_shapes_matches_the_reference_and_traces_once():
    params = _distinct_params(1)
    hp = jaxprune.get_pruning_hparams().replace(
        target_sparsity=0.7,
        begin_pruning_step=0,
        sparsity_function_end_step=4,
        pruning_frequency=1,
    )
    tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning(hp))
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(3)
    schedule = jaxprune.sparsity_schedule(hp)
    for t in range(1, 4):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        # The transform ranks params + updates (sgd: p - 0.1 g), in float32, as NumPy does here.
        candidate = jax.tree.map(
            lambda p, g: np.asarray(p) - np.float32(0.1) * np.asarray(g), params, grads
        )
        params, state = step(params, state, grads)
        masks = jaxprune.get_pruning_state(state).masks
        for name in params:
            _, want = ref_weight_mask(candidate[name]["kernel"], float(schedule(t)))
            np.testing.assert_array_equal(np.asarray(masks[name]["kernel"]), want)
            np.testing.assert_array_equal(
                np.asarray(params[name]["kernel"]), np.where(want, candidate[name]["kernel"], 0)
            )
    assert len(traces) == 1


def test_eight_devices_match_one():
    assert jax.device_count() >= 8
    params = _distinct_params(2)
    hp = jaxprune.get_pruning_hparams().replace(target_sparsity=0.6, sparsity_function_end_step=10)
    pruning = jaxprune.Pruning(hp)
    single = pruning.mask_update(params, pruning.init(params), step=7)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("d",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    sharded = jax.tree.map(lambda p: jax.device_put(p, spec) if p.shape[0] % 8 == 0 else p, params)
    multi = pruning.mask_update(sharded, pruning.init(sharded), step=7)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(multi), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
