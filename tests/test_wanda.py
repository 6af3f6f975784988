"""wanda_scores and wanda: scores, None leaves, and Wanda's output units for any layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
from tests.helpers import np_unit_mask


def test_wanda_scores_broadcasting():
    w = np.arange(24.0).reshape(2, 3, 4) - 12
    params = {
        "dense": jnp.asarray(w[0]),
        "conv": jnp.asarray(w),
        "tied": jnp.asarray(w[0]),
        "b": jnp.ones(3),
    }
    norms = {
        "dense": jnp.array([1.0, 2.0, 3.0]),  # (in,) prefix of (3, 4)
        "conv": jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),  # (2, 3) prefix of (2, 3, 4)
        "tied": jnp.array([[1.0, 10.0, 100.0, 1000.0]]),  # (1, 4) at the weight's rank
        "b": None,
    }
    scores = jaxprune.wanda_scores(params, norms)
    np.testing.assert_array_equal(scores["dense"], np.abs(w[0]) * np.array([[1.0], [2.0], [3.0]]))
    np.testing.assert_array_equal(scores["conv"], np.abs(w) * np.arange(1.0, 7.0).reshape(2, 3, 1))
    np.testing.assert_array_equal(
        scores["tied"], np.abs(w[0]) * np.array([1.0, 10.0, 100.0, 1000.0])
    )
    assert scores["b"] is None
    jitted = jax.jit(jaxprune.wanda_scores)(params, norms)
    np.testing.assert_array_equal(jitted["conv"], scores["conv"])


def test_wanda_scores_end_to_end_with_nnx_state_and_bf16():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
    graphdef, state = nnx.split(model)
    x = jnp.array([[1.0, 2.0, 2.0], [0.0, 0.0, 1.0]], jnp.bfloat16)
    norms = jaxprune.activation_norms(lambda s, x: nnx.merge(graphdef, s)(x), state, [x])
    scores = jaxprune.wanda_scores(state, norms)
    kernel = np.asarray(state["kernel"][...], np.float64)
    ref = np.abs(kernel) * np.array([1.0, 2.0, 3.0])[:, None]  # norms: 1, 2, sqrt(4 + 1)
    ref[2] = np.abs(kernel[2]) * np.sqrt(5.0)
    assert scores["kernel"].dtype == jnp.float32 and scores["bias"] is None
    np.testing.assert_allclose(scores["kernel"], ref, rtol=1e-6)


def test_wanda_scores_errors_name_the_leaf():
    params = {"w": jnp.ones((3, 4))}
    with pytest.raises(ValueError, match=r"'w'.*\(4,\)"):
        jaxprune.wanda_scores(params, {"w": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"'w'.*\(3, 2\)"):
        jaxprune.wanda_scores(params, {"w": jnp.ones((3, 2))})
    with pytest.raises(ValueError, match=r"missing.*'w'.*unexpected.*'v'"):
        jaxprune.wanda_scores(params, {"v": jnp.ones(3)})


def test_wanda_groups_by_true_output_units():
    # An (out, in) weight (equinox's Linear under vmap: W @ x): Wanda's units are its rows.
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 8))
    params = {"w": jnp.asarray(w, jnp.float32), "skip": None}
    x = np.exp(rng.normal(size=(32, 8)))  # uneven input norms
    fn = lambda p, x: jax.vmap(lambda v: p["w"] @ v)(x)
    norms = jaxprune.activation_norms(fn, params, [jnp.asarray(x, jnp.float32)])
    assert norms["w"].shape == (1, 8) and norms["skip"] is None
    _, masks = jaxprune.wanda(params, norms, sparsity=0.5)
    scores = np.abs(w) * np.sqrt((x**2).sum(0))
    np.testing.assert_array_equal(masks["w"], np_unit_mask(scores, 0.5))
    # The last-axis grouping of prune(pruning_scope="output") is per input here: it differs.
    scope, _ = jaxprune.prune(
        params, {"pruning_scope": "output"}, scores=jaxprune.wanda_scores(params, norms)
    )
    assert not np.array_equal(np.asarray(scope["w"]) != 0, np.asarray(masks["w"]))
    # 2:4 along the input features of each output unit.
    _, m24 = jaxprune.wanda(params, norms, {"sparsity_type": "2:4"})
    assert (np.asarray(m24["w"]).reshape(6, 2, 4).sum(-1) == 2).all()


def test_none_leaves_of_eqx_filter_style_params():
    # eqx.filter(model, eqx.is_array) leaves None where the model holds no array.
    params = {"w": jnp.array([[1.0, -2.0], [3.0, 4.0], [0.5, 1.25]]), "act": None, "b": None}
    fn = lambda p, x: x @ p["w"]
    x = jnp.array([[3.0, 0.0, 4.0], [0.0, 1.0, 0.0]])
    norms = jaxprune.activation_norms(fn, params, [x])
    assert norms["act"] is None and norms["b"] is None
    scores = jaxprune.wanda_scores(params, norms)
    ref = np.abs(np.asarray(params["w"])) * np.array([[3.0], [1.0], [4.0]])
    np.testing.assert_allclose(scores["w"], ref, rtol=1e-6)
    assert scores["act"] is None and scores["b"] is None
    pruned, masks = jaxprune.wanda(params, norms, sparsity=0.5)
    assert pruned["act"] is None and masks["b"] is None
    np.testing.assert_array_equal(masks["w"], np_unit_mask(ref.T, 0.5).T)


def test_wanda_equals_output_scope_prune_on_in_out_kernels_and_stacked_layouts():
    rng = np.random.default_rng(7)
    params = {"w": jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)}  # flax (in, out)
    x = jnp.asarray(np.exp(rng.normal(size=(20, 12))), jnp.float32)
    fn = lambda p, x: x @ p["w"]
    norms = jaxprune.activation_norms(fn, params, [x])
    _, masks = jaxprune.wanda(params, norms, sparsity=0.6)
    scores = jaxprune.wanda_scores(params, norms)
    _, ref = jaxprune.prune(params, {"pruning_scope": "output"}, sparsity=0.6, scores=scores)
    np.testing.assert_array_equal(masks["w"], ref["w"])
    # Stacked (L, in, out) under scan: with the traced layout each layer's units are its own.
    stack = {"s": jnp.asarray(rng.normal(size=(2, 6, 6)), jnp.float32)}
    sfn = lambda p, x: jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, p["s"])[0]
    xs = jnp.asarray(np.exp(rng.normal(size=(9, 6))), jnp.float32)
    snorms = jaxprune.activation_norms(sfn, stack, [xs])
    assert snorms["s"].shape == (2, 6)
    layouts = jaxprune.weight_layouts(sfn, stack, xs)
    assert layouts["s"].group_axes == (0,) and layouts["s"].input_axes == (1,)
    _, smasks = jaxprune.wanda(stack, snorms, sparsity=0.5, layouts=layouts)
    w, n = np.asarray(stack["s"]), np.asarray(snorms["s"])
    for layer in range(2):
        ref = np_unit_mask((np.abs(w[layer]) * n[layer][:, None]).T, 0.5).T
        np.testing.assert_array_equal(smasks["s"][layer], ref)


def test_einsum_gating_kernel_groups_by_its_two_output_axes():
    # gemma's feed-forward gating kernel (2, hidden, D) contracts D: units are (k, h) pairs.
    rng = np.random.default_rng(8)
    params = {"gating": jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)}
    fn = lambda p, x: jnp.einsum("td,khd->tkh", x, p["gating"])
    x = np.exp(rng.normal(size=(10, 8)))
    norms = jaxprune.activation_norms(fn, params, [jnp.asarray(x, jnp.float32)])
    assert norms["gating"].shape == (1, 1, 8)
    _, masks = jaxprune.wanda(params, norms, sparsity=0.75)
    scores = np.abs(np.asarray(params["gating"])) * np.sqrt((x**2).sum(0))
    ref = np_unit_mask(scores.reshape(6, 8), 0.75).reshape(2, 3, 8)
    np.testing.assert_array_equal(masks["gating"], ref)
    assert (np.asarray(masks["gating"]).sum(-1) == 2).all()
