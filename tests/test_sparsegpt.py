"""sparsegpt against an independent float64 NumPy SparseGPT (tests/helpers.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from tests.helpers import correlated_inputs, np_hessian, np_sparsegpt


def _problem(seed, d=72, out=40, rows=256):
    rng = np.random.default_rng(seed)
    x = correlated_inputs(rng, rows, d)
    w = rng.normal(size=(d, out))  # a flax (in, out) kernel
    return x, w


def _err(x, w, w2):
    return float(np.linalg.norm(x @ np.asarray(w, np.float64) - x @ np.asarray(w2, np.float64)))


@pytest.mark.parametrize(
    ("sparsity", "sparsity_type", "block_size"),
    [(0.6, "unstructured", 32), (0.5, "2:4", 16)],
)
def test_matches_numpy_reference_and_beats_magnitude_and_wanda(sparsity, sparsity_type, block_size):
    x, w = _problem(0)
    params = {"w": jnp.asarray(w, jnp.float32)}
    fn = lambda p, x: x @ p["w"]
    xs = jnp.asarray(x, jnp.float32)
    h = jaxprune.hessians(fn, params, [xs[:100], xs[100:]])
    np.testing.assert_allclose(h["w"], np_hessian(x), rtol=1e-4, atol=1e-3)
    hp = {"sparsity_type": sparsity_type, "target_sparsity": sparsity}
    pruned, masks = jaxprune.sparsegpt(params, h, hp, block_size=block_size)
    ref_w, ref_keep = np_sparsegpt(
        w.T,
        np_hessian(x),
        sparsity,
        nm=(2, 4) if sparsity_type == "2:4" else None,
        block_size=block_size,
    )
    keep = np.asarray(masks["w"]).T
    got = np.asarray(pruned["w"], np.float64)
    # Exactly the target count, pruned weights exactly 0, masks equal but for near-ties.
    if sparsity_type == "2:4":
        assert (keep.reshape(40, -1, 4).sum(-1) == 2).all()
    else:
        assert (~keep).sum() == sum(
            int(40 * min(block_size, 72 - i) * sparsity) for i in range(0, 72, block_size)
        )
    assert (got[~keep.T] == 0).all()
    assert (keep == ref_keep).mean() > 0.99
    e_sparsegpt, e_ref = _err(x, w, got), _err(x, w, ref_w.T)
    assert e_sparsegpt == pytest.approx(e_ref, rel=2e-3)
    # Below magnitude's and Wanda's (same structure, no weight update).
    mag, _ = jaxprune.prune(params, {**hp, "pruning_scope": "output"})
    norms = jaxprune.activation_norms(fn, params, [xs])
    wan, _ = jaxprune.wanda(params, norms, hp)
    e_wanda, e_magnitude = _err(x, w, wan["w"]), _err(x, w, mag["w"])
    assert e_sparsegpt < 0.9 * e_wanda and e_wanda < 0.9 * e_magnitude


def test_layouts_out_in_conv_and_stacked_weights():
    rng = np.random.default_rng(1)
    x = correlated_inputs(rng, 64, 8)
    w = rng.normal(size=(8, 6))
    kernel = rng.normal(size=(3, 3, 2, 4))
    stack = rng.normal(size=(2, 8, 8)) / 3
    params = {
        "w_t": jnp.asarray(w.T, jnp.float32),  # (out, in), used as x @ W.T
        "conv": jnp.asarray(kernel, jnp.float32),
        "stack": jnp.asarray(stack, jnp.float32),
    }
    img = jnp.asarray(rng.normal(size=(2, 5, 5, 2)), jnp.float32)

    def fn(p, batch):
        x, img = batch
        h = jax.lax.scan(lambda h, s: (jnp.tanh(h @ s), None), x, p["stack"])[0]
        y = jax.lax.conv_general_dilated(
            img, p["conv"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return h @ p["w_t"].T, y

    batch = (jnp.asarray(x, jnp.float32), img)
    h = jaxprune.hessians(fn, params, [batch])
    layouts = jaxprune.weight_layouts(fn, params, batch)
    assert layouts["w_t"].input_axes == (1,) and layouts["stack"].group_axes == (0,)
    assert h["stack"].shape == (2, 8, 8) and h["conv"].shape == (18, 18)
    pruned, masks = jaxprune.sparsegpt(params, h, sparsity=0.5, block_size=4, layouts=layouts)
    # (out, in): the rows of the paper's matrix are the weight's rows.
    ref, keep = np_sparsegpt(w.T, np.asarray(h["w_t"]), 0.5, block_size=4)
    np.testing.assert_allclose(pruned["w_t"], ref, rtol=2e-3, atol=2e-4)
    np.testing.assert_array_equal(masks["w_t"], keep)
    # Conv (h, w, in, out): W is (out, h * w * in).
    ref, keep = np_sparsegpt(kernel.reshape(18, 4).T, np.asarray(h["conv"]), 0.5, block_size=4)
    np.testing.assert_allclose(pruned["conv"], ref.T.reshape(3, 3, 2, 4), rtol=2e-3, atol=2e-4)
    # Stacked (L, in, out): one matrix per layer, each with its own Hessian.
    for layer in range(2):
        ref, keep = np_sparsegpt(stack[layer].T, np.asarray(h["stack"][layer]), 0.5, block_size=4)
        np.testing.assert_allclose(pruned["stack"][layer], ref.T, rtol=2e-3, atol=2e-4)
    # Without layouts the (out, in) weight would be read as (in, out): its Hessian does not fit.
    with pytest.raises(ValueError, match=r"'w_t'.*weight_layouts"):
        jaxprune.sparsegpt({"w_t": params["w_t"]}, {"w_t": h["w_t"]}, sparsity=0.5)


def test_dead_inputs_jit_determinism_dtype_and_params_untouched():
    rng = np.random.default_rng(2)
    x = correlated_inputs(rng, 64, 16)
    x[:, 3] = 0.0  # a dead input: its weights are pruned (score 0) and stay exactly 0
    w = rng.normal(size=(16, 8))
    params = {"w": jnp.asarray(w, jnp.bfloat16), "b": jnp.ones(8)}
    before = jax.tree.map(np.array, params)
    h = {"w": jnp.asarray(np_hessian(x), jnp.float32), "b": None}
    run = lambda p, h: jaxprune.sparsegpt(p, h, sparsity=0.25, block_size=8)
    pruned, masks = run(params, h)
    again = jax.jit(run)(params, h)
    jax.tree.map(np.testing.assert_array_equal, (pruned, masks), again)
    jax.tree.map(np.testing.assert_array_equal, (pruned, masks), run(params, h))
    jax.tree.map(np.testing.assert_array_equal, params, before)
    assert pruned["w"].dtype == jnp.bfloat16 and masks["b"] is None
    assert not np.asarray(masks["w"])[3].any() and (np.asarray(pruned["w"])[3] == 0).all()
    np.testing.assert_array_equal(pruned["b"], params["b"])


def test_eight_devices_match_one():
    devices = jax.devices()
    assert len(devices) == 8
    mesh = Mesh(np.array(devices), ("x",))
    x, w = _problem(3, d=32, out=16, rows=64)
    params = {"w": jnp.asarray(w, jnp.float32)}
    fn = lambda p, x: x @ p["w"]
    xs = jnp.asarray(x, jnp.float32)
    one = jax.device_put(params, devices[0])
    h1 = jaxprune.hessians(fn, one, [jax.device_put(xs, devices[0])])
    ref = jaxprune.sparsegpt(one, h1, sparsity=0.5, block_size=16)
    sharded = {"w": jax.device_put(params["w"], NamedSharding(mesh, P(None, "x")))}
    h8 = jaxprune.hessians(fn, sharded, [jax.device_put(xs, NamedSharding(mesh, P("x", None)))])
    np.testing.assert_allclose(h8["w"], h1["w"], rtol=1e-5, atol=1e-3)  # sums in another order
    # The same Hessian, sharded, with sharded params: the same masks and weights.
    h1_sharded = {"w": jax.device_put(h1["w"], NamedSharding(mesh, P("x", None)))}
    got = jaxprune.sparsegpt(sharded, h1_sharded, sparsity=0.5, block_size=16)
    np.testing.assert_array_equal(got[1]["w"], ref[1]["w"])
    np.testing.assert_allclose(got[0]["w"], ref[0]["w"], rtol=1e-5, atol=1e-6)
    assert got[1]["w"].sharding.is_equivalent_to(sharded["w"].sharding, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.0}, r"sparsity=\.\.\.\) must be a number in \[0, 1\)"),
        ({"block_size": 0}, "block_size"),
        ({"damping": -1.0}, "damping"),
        ({"damping": float("nan")}, "damping"),
        ({"hparams": {"pruning_scope": "global"}}, "pruning_scope='global'"),
        ({"hparams": {"sparsity_type": "channel"}}, "channel"),
        ({"hparams": {"sparsity_type": "2:4"}, "block_size": 6}, "multiple of M=4"),
        ({"hparams": {"sparsity_type": "2:4", "sparsity_axis": 0}}, "sparsity_axis"),
        ({"hparams": {"block_height": 2}}, "block"),
        ({"hparams": {"threshold_method": "histogram"}}, "threshold_method"),
    ],
)
def test_bad_arguments_raise_naming_the_field(kwargs, match):
    params = {"w": jnp.ones((8, 4))}
    h = {"w": jnp.eye(8)}
    with pytest.raises(ValueError, match=match):
        jaxprune.sparsegpt(params, h, **kwargs)


def test_bad_statistics_raise_naming_the_weight():
    params = {"w": jnp.ones((6, 4)), "i": jnp.ones((4, 4), jnp.int32)}
    with pytest.raises(ValueError, match=r"'w'.*shape \(2, 3, 3\) does not fit.*\(6, 4\)"):
        jaxprune.sparsegpt(params, {"w": jnp.zeros((2, 3, 3)), "i": None}, sparsity=0.5)
    layouts = {"w": jaxprune.WeightLayout((6, 4), input_axes=(1,)), "i": None}
    with pytest.raises(ValueError, match=r"Hessian of 'w' must have shape \(4, 4\)"):
        jaxprune.sparsegpt(params, {"w": jnp.eye(6), "i": None}, sparsity=0.5, layouts=layouts)
    with pytest.raises(ValueError, match=r"layout of 'w' must be a WeightLayout of shape"):
        jaxprune.sparsegpt(
            params, {"w": jnp.eye(6), "i": None}, sparsity=0.5, layouts={"w": (0,), "i": None}
        )
    with pytest.raises(ValueError, match=r"'w' has 6 input features.*M=4"):
        jaxprune.sparsegpt(params, {"w": jnp.eye(6), "i": None}, {"sparsity_type": "2:4"})
    with pytest.raises(ValueError, match=r"'i' is not a floating-point"):
        jaxprune.sparsegpt(params, {"w": None, "i": jnp.eye(4)}, sparsity=0.5)
    with pytest.raises(ValueError, match="structure of params"):
        jaxprune.sparsegpt(params, {"w": jnp.eye(6)}, sparsity=0.5)
    bad = jnp.full((6, 6), jnp.nan)
    with pytest.raises(ValueError, match=r"'w' is not positive definite.*damping"):
        jaxprune.sparsegpt(params, {"w": bad, "i": None}, sparsity=0.5)
