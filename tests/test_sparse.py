"""to_bcoo: pruned leaves as jax.experimental.sparse BCOO, checked against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import sparse
from jax.sharding import NamedSharding, PartitionSpec

import jaxprune


def _np_coo(w, keep):
    """NumPy reference: row-major indices of the kept entries and their values."""
    w, keep = np.asarray(w), np.asarray(keep)
    indices = np.argwhere(keep)
    return w[keep], indices


def _random(shape, density, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(dtype)
    keep = rng.random(shape) < density
    return w, keep


def _assert_bcoo_matches(bcoo, w, keep):
    data, indices = _np_coo(w, keep)
    assert isinstance(bcoo, sparse.BCOO)
    assert bcoo.shape == w.shape and bcoo.dtype == w.dtype
    assert bcoo.nse == int(keep.sum())
    assert bcoo.indices.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(bcoo.indices), indices)
    np.testing.assert_array_equal(np.asarray(bcoo.data), data)
    np.testing.assert_array_equal(np.asarray(bcoo.todense()), np.where(keep, w, 0))


def test_masks_from_prune_values_indices_and_round_trip():
    rng = np.random.default_rng(0)
    params = {
        "dense": {"kernel": jnp.asarray(rng.standard_normal((12, 10), np.float32))},
        "bias": jnp.asarray(rng.standard_normal(10, np.float32)),
    }
    pruned, masks = jaxprune.prune(params, sparsity=0.75)
    out = jaxprune.to_bcoo(pruned, masks)
    w = np.asarray(params["dense"]["kernel"])
    # Independent reference of the kept set: the 30 largest |w| of 120 (no ties in the data).
    keep = np.abs(w) >= np.sort(np.abs(w).ravel())[-30]
    _assert_bcoo_matches(out["dense"]["kernel"], w, keep)
    assert out["bias"] is pruned["bias"]


def test_hand_worked_example():
    w = jnp.array([[0.0, 2.0, 0.0], [-1.0, 0.0, 3.0]])
    out = jaxprune.to_bcoo({"w": w})["w"]
    assert out.nse == 3
    assert out.indices.tolist() == [[0, 1], [1, 0], [1, 2]]
    assert out.data.tolist() == [2.0, -1.0, 3.0]
    x = jnp.array([[1.0, 10.0]])
    assert (x @ out).tolist() == [[-10.0, 2.0, 30.0]]


def test_bcoo_matmul_equals_dense_masked_matmul():
    w, keep = _random((48, 40), 0.2, seed=1)
    x = np.random.default_rng(2).standard_normal((7, 48)).astype(np.float32)
    out = jaxprune.to_bcoo({"w": jnp.asarray(w)}, {"w": jnp.asarray(keep)})["w"]
    expected = x.astype(np.float64) @ np.where(keep, w, 0).astype(np.float64)
    np.testing.assert_allclose(np.asarray(jnp.asarray(x) @ out), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(out.T @ jnp.asarray(x.T)), expected.T, rtol=1e-5, atol=1e-5
    )


def test_masked_positions_become_zero_and_kept_zeros_are_stored():
    w = np.array([[5.0, 0.0], [7.0, 8.0]], np.float32)  # a kept weight that is exactly 0
    keep = np.array([[False, True], [True, True]])  # 5.0 is pruned but still in params
    out = jaxprune.to_bcoo({"w": jnp.asarray(w)}, {"w": jnp.asarray(keep)})["w"]
    assert out.nse == 3
    assert out.indices.tolist() == [[0, 1], [1, 0], [1, 1]]
    assert out.data.tolist() == [0.0, 7.0, 8.0]
    assert out.todense().tolist() == [[0.0, 0.0], [7.0, 8.0]]


def test_without_masks_only_prunable_leaves_with_zeros_convert():
    params = {
        "sparse": jnp.array([[1.0, 0.0], [-0.0, 2.0]]),  # -0.0 is an exact zero too
        "full": jnp.array([[1.0, 2.0], [3.0, 4.0]]),  # no zero: nothing was pruned
        "bias": jnp.array([0.0, 1.0]),  # 1-D: not prunable by default
        "ints": jnp.array([[0, 1], [2, 0]]),  # not floating point
        "nan": jnp.array([[jnp.nan, 0.0], [0.0, 0.0]]),
    }
    out = jaxprune.to_bcoo(params)
    assert isinstance(out["sparse"], sparse.BCOO) and out["sparse"].nse == 2
    assert out["sparse"].indices.tolist() == [[0, 0], [1, 1]]
    for name in ("full", "bias", "ints"):
        assert out[name] is params[name], name
    assert out["nan"].nse == 1 and np.isnan(np.asarray(out["nan"].data)).all()


def test_masks_from_pruning_state_and_optimizer_state():
    w, _ = _random((8, 6), 1.0, seed=3)
    params = {"w": jnp.asarray(w), "b": jnp.ones(6)}
    p = jaxprune.Pruning()
    state = p.mask_update(params, p.init(params), step=100)  # s(100) = 0.5
    keep = np.abs(w) >= np.sort(np.abs(w).ravel())[-24]
    np.testing.assert_array_equal(np.asarray(state.masks["w"]), keep)
    from_state = jaxprune.to_bcoo(params, state)  # masks hold MaskedNode() for "b"
    _assert_bcoo_matches(from_state["w"], w, keep)
    assert from_state["b"] is params["b"]

    tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning())
    opt_state = tx.init(params)
    pruning_state = jaxprune.get_pruning_state(opt_state)._replace(masks=state.masks)
    opt_state = (opt_state[0], pruning_state)
    from_opt = jaxprune.to_bcoo(params, opt_state)
    _assert_bcoo_matches(from_opt["w"], w, keep)


def test_all_pruned_weight_and_conv_kernel_and_bfloat16():
    conv, keep = _random((3, 3, 4, 5), 0.3, seed=4)
    params = {
        "empty": jnp.ones((4, 3)),
        "conv": jnp.asarray(conv, jnp.bfloat16),
    }
    masks = {"empty": jnp.zeros((4, 3), bool), "conv": jnp.asarray(keep)}
    out = jaxprune.to_bcoo(params, masks)
    assert out["empty"].nse == 0 and out["empty"].indices.shape == (0, 2)
    np.testing.assert_array_equal(np.asarray(out["empty"].todense()), np.zeros((4, 3)))
    np.testing.assert_array_equal(np.asarray(jnp.ones((2, 4)) @ out["empty"]), np.zeros((2, 3)))
    conv_bf16 = np.asarray(params["conv"]).astype(np.float32)  # the rounded values
    assert out["conv"].dtype == jnp.bfloat16 and out["conv"].indices.shape[1] == 4
    _assert_bcoo_matches(
        sparse.BCOO((out["conv"].data.astype(jnp.float32), out["conv"].indices), shape=conv.shape),
        conv_bf16,
        keep,
    )


def test_jitted_forward_with_bcoo_params_no_retracing():
    w1, k1 = _random((16, 12), 0.3, seed=5)
    w2, k2 = _random((12, 4), 0.5, seed=6)
    params = {"l1": jnp.asarray(w1), "l2": jnp.asarray(w2), "b": jnp.full(12, 0.1, jnp.float32)}
    masks = {"l1": jnp.asarray(k1), "l2": jnp.asarray(k2), "b": None}
    traces = []

    @jax.jit
    def forward(p, x):
        traces.append(1)
        return jax.nn.relu(x @ p["l1"] + p["b"]) @ p["l2"]

    def reference(x):
        h = np.maximum(x.astype(np.float64) @ np.where(k1, w1, 0) + 0.1, 0)
        return h @ np.where(k2, w2, 0)

    sp = jaxprune.to_bcoo(params, masks)
    rng = np.random.default_rng(7)
    for _ in range(2):
        x = rng.standard_normal((5, 16)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(forward(sp, x)), reference(x), rtol=1e-5, atol=1e-5)
    # Same shapes and nse, new values: the compiled function is reused.
    sp2 = jaxprune.to_bcoo(jax.tree.map(lambda a: 2 * a, params), masks)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(forward(sp2, x)),
        np.maximum(x.astype(np.float64) @ np.where(k1, 2 * w1, 0) + 0.2, 0)
        @ np.where(k2, 2 * w2, 0),
        rtol=1e-5,
        atol=1e-5,
    )
    assert len(traces) == 1 and forward._cache_size() == 1


def test_params_and_masks_are_not_mutated():
    w, keep = _random((6, 5), 0.4, seed=8)
    params = {"w": jnp.asarray(w), "b": jnp.ones(5)}
    masks = {"w": jnp.asarray(keep), "b": None}
    leaves_before = {"w": params["w"], "b": params["b"], "mask": masks["w"]}
    out = jaxprune.to_bcoo(params, masks)
    assert out is not params and isinstance(out["w"], sparse.BCOO)
    assert sorted(params) == ["b", "w"] and sorted(masks) == ["b", "w"]
    assert params["w"] is leaves_before["w"] and params["b"] is leaves_before["b"]
    assert masks["w"] is leaves_before["mask"] and masks["b"] is None
    np.testing.assert_array_equal(np.asarray(params["w"]), w)
    np.testing.assert_array_equal(np.asarray(masks["w"]), keep)


def test_nnx_params_and_mask_names_match_a_plain_dict():
    from flax import nnx

    model = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    w = np.asarray(model.kernel[...])
    keep = np.abs(w) >= np.median(np.abs(w))
    out = jaxprune.to_bcoo(state, {"kernel": jnp.asarray(keep)})
    _assert_bcoo_matches(out["kernel"], w, keep)
    np.testing.assert_array_equal(np.asarray(out["bias"]), np.zeros(4, np.float32))


def test_sharded_weight_gives_the_same_bcoo_as_one_device():
    assert len(jax.devices()) == 8
    w, keep = _random((16, 8), 0.25, seed=9)
    mesh = jax.make_mesh((8,), ("x",))
    sharded = jax.device_put(jnp.asarray(w), NamedSharding(mesh, PartitionSpec("x", None)))
    one = jaxprune.to_bcoo({"w": jnp.asarray(w)}, {"w": jnp.asarray(keep)})["w"]
    eight = jaxprune.to_bcoo({"w": sharded}, {"w": jnp.asarray(keep)})["w"]
    np.testing.assert_array_equal(np.asarray(eight.data), np.asarray(one.data))
    np.testing.assert_array_equal(np.asarray(eight.indices), np.asarray(one.indices))
    _assert_bcoo_matches(eight, w, keep)


@settings(max_examples=10)
@given(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=3).map(tuple),
    density=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_numpy_for_random_shapes_and_densities(shape, density, seed):
    w, keep = _random(shape, density, seed)
    out = jaxprune.to_bcoo({"w": jnp.asarray(w)}, {"w": jnp.asarray(keep)})["w"]
    _assert_bcoo_matches(out, w, keep)
    w0 = np.where(keep, w, 0).astype(np.float32)
    out0 = jaxprune.to_bcoo({"w": jnp.asarray(w0)})["w"]
    if keep.all():
        assert isinstance(out0, jax.Array)  # nothing pruned: left dense
    else:
        _assert_bcoo_matches(out0, w0, w0 != 0)


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        (
            {"w": jnp.ones((3, 2), bool)},
            r"mask of 'w' must be a bool array .*\(2, 3\), got bool \(3, 2\)",
        ),
        ({"w": jnp.ones((2, 3))}, r"mask of 'w' must be a bool array .*got float32 \(2, 3\)"),
        ({"w": True}, r"mask of 'w' must be a bool array .*got bool True"),
        ({"v": jnp.ones((2, 3), bool)}, r"masks name parameters that params do not have: \['v'\]"),
        ({"s": jnp.array(True)}, r"'s' is a scalar"),
        ({"n": jnp.ones((2,), bool)}, r"mask of 'n' belongs to a non-array param \(str\)"),
    ],
)
def test_bad_masks_are_named(masks, match):
    params = {"w": jnp.ones((2, 3)), "s": jnp.float32(1.0), "n": "name"}
    with pytest.raises(ValueError, match=match):
        jaxprune.to_bcoo(params, masks)


def test_traced_input_is_rejected_before_conversion():
    w = jnp.array([[1.0, 0.0], [0.0, 2.0]])

    with pytest.raises(ValueError, match=r"concrete arrays.*the param 'w' is traced"):
        jax.jit(lambda w: jaxprune.to_bcoo({"w": w})["w"].data)(w)
    with pytest.raises(ValueError, match=r"the mask 'w' is traced"):
        jax.jit(lambda m: jaxprune.to_bcoo({"w": w}, {"w": m})["w"].data)(w != 0)
