"""prune_sequential: against a float64 NumPy sequential SparseGPT / Wanda, and against pruning
weight by weight with one full calibration pass each (the definition, at its full cost)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from jaxprune._src import sequential
from tests.helpers import correlated_inputs, np_hessian, np_sparsegpt, np_unit_mask


def _mlp(seed):
    rng = np.random.default_rng(seed)
    params = {
        "l0": jnp.asarray(rng.normal(size=(16, 24)) / 4, jnp.float32),
        "l1": jnp.asarray(rng.normal(size=(24, 12)) / 5, jnp.float32),
        "b0": jnp.zeros(24),
    }
    xs = [jnp.asarray(correlated_inputs(rng, 32, 16), jnp.float32) for _ in range(3)]
    return params, xs


def _mlp_fn(p, x):
    return jnp.tanh(x @ p["l0"] + p["b0"]) @ p["l1"]


def test_mlp_matches_numpy_sequential_sparsegpt_and_wanda():
    params, xs = _mlp(0)
    before = jax.tree.map(np.array, params)
    pruned, masks = jaxprune.prune_sequential(_mlp_fn, params, xs, sparsity=0.5, block_size=8)
    x = np.concatenate([np.asarray(b, np.float64) for b in xs])
    f = {k: np.asarray(v, np.float64) for k, v in params.items()}
    w0, k0 = np_sparsegpt(f["l0"].T, np_hessian(x), 0.5, block_size=8)
    h = np.tanh(x @ w0.T)  # the second layer's inputs, with the first pruned and updated
    w1, k1 = np_sparsegpt(f["l1"].T, np_hessian(h), 0.5, block_size=8)
    np.testing.assert_array_equal(masks["l0"], k0.T)
    np.testing.assert_array_equal(masks["l1"], k1.T)
    np.testing.assert_allclose(pruned["l0"], w0.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pruned["l1"], w1.T, rtol=1e-4, atol=1e-5)
    assert masks["b0"] is None
    # Not the one-shot result: the second layer's Hessian is of the pruned first layer's output.
    _, k1_dense = np_sparsegpt(f["l1"].T, np_hessian(np.tanh(x @ f["l0"])), 0.5, block_size=8)
    assert not np.array_equal(k1_dense, k1)
    jax.tree.map(np.testing.assert_array_equal, params, before)
    # Wanda: the second layer's norms are those of the (pruned, not updated) first layer's output.
    _, wmasks = jaxprune.prune_sequential(_mlp_fn, params, xs, sparsity=0.5, method="wanda")
    s0 = np.abs(f["l0"]) * np.sqrt((x**2).sum(0))[:, None]
    m0 = np_unit_mask(s0.T, 0.5).T
    h = np.tanh(x @ np.where(m0, f["l0"], 0.0))
    m1 = np_unit_mask((np.abs(f["l1"]) * np.sqrt((h**2).sum(0))[:, None]).T, 0.5).T
    np.testing.assert_array_equal(wmasks["l0"], m0)
    np.testing.assert_array_equal(wmasks["l1"], m1)


def _model(p, batch):
    # A jitted model (inlined), q/k/v from one input, an (out, in) weight, a weight used again
    # after others ("tied": calibrated with everything between its uses), a scan over a stack.
    def inner(p, x):
        q, k, v = x @ p["q"], x @ p["k"], x @ p["v"]
        att = jax.nn.softmax(q @ k.T / 2.0, axis=-1) @ v
        h = jnp.tanh(att @ p["o"].T) + x
        h = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), h, p["stack"])[0]
        t = jnp.tanh(h @ p["tied"])
        t = jnp.tanh(t @ p["mid"])
        return t @ p["tied"]

    return jax.jit(inner)(p, batch)


def _model_params(seed):
    rng = np.random.default_rng(seed)
    shapes = {
        "q": (8, 8),
        "k": (8, 8),
        "v": (8, 8),
        "o": (8, 8),
        "stack": (2, 8, 8),
        "tied": (8, 8),
        "mid": (8, 8),
    }
    return {k: jnp.asarray(rng.normal(size=s) / 3, jnp.float32) for k, s in shapes.items()}


def test_pieces_equal_one_full_pass_per_group():
    params = _model_params(1)
    rng = np.random.default_rng(2)
    xs = [jnp.asarray(rng.normal(size=(6, 8)), jnp.float32) for _ in range(2)]
    graph = sequential.flat_graph(jaxprune._src.jaxpr.trace(_model, params, xs[0]), params, xs[0])
    names = list(graph.param_names)
    groups = sequential.groups_in_order(sequential.spans(graph, range(len(names))))
    assert [[names[i] for i in g.leaves] for g in groups] == [
        ["q"],
        ["k"],
        ["v"],
        ["o"],
        ["stack"],
        ["tied", "mid"],
    ]
    # (Wanda's pieces are the same, with the norms' hook: tested against NumPy above.)
    got, masks = jaxprune.prune_sequential(_model, params, xs, sparsity=0.5, block_size=4)
    # The definition: every group from one full calibration pass of the model pruned so far.
    layouts = jaxprune.weight_layouts(_model, params, xs[0])
    current = params
    for g in groups:
        group = {names[i] for i in g.leaves}
        keep = lambda n, leaf, group=group: n in group
        h = jaxprune.hessians(_model, current, xs, params_filter=keep)
        current, _ = jaxprune.sparsegpt(current, h, sparsity=0.5, block_size=4, layouts=layouts)
    for name in names:
        np.testing.assert_allclose(got[name], current[name], rtol=1e-5, atol=1e-6)
        assert float(jnp.mean(masks[name])) == 0.5


def test_sharded_params_nnx_state_and_errors():
    params, xs = _mlp(3)
    mesh = Mesh(np.array(jax.devices()), ("x",))
    ref, ref_masks = jaxprune.prune_sequential(_mlp_fn, params, xs, sparsity=0.5, block_size=8)
    sharded = {
        "l0": jax.device_put(params["l0"], NamedSharding(mesh, P(None, "x"))),
        "l1": jax.device_put(params["l1"], NamedSharding(mesh, P("x", None))),
        "b0": params["b0"],
    }
    got, got_masks = jaxprune.prune_sequential(_mlp_fn, sharded, xs, sparsity=0.5, block_size=8)
    jax.tree.map(np.testing.assert_array_equal, got_masks, ref_masks)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, ref)
    # An nnx model through split / merge, 2:4.
    model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    fn = lambda s, x: nnx.merge(graphdef, s)(x)
    x = [jnp.asarray(np.random.default_rng(4).normal(size=(16, 8)), jnp.float32)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, m = jaxprune.prune_sequential(fn, state, x, {"sparsity_type": "2:4"}, block_size=4)
    assert (np.asarray(m["kernel"]).reshape(2, 4, 4).sum(1) == 2).all()
    with pytest.raises(ValueError, match=r"nnx.Module.*nnx.split"):
        jaxprune.prune_sequential(lambda m, x: m(x), model, x)
    with pytest.raises(ValueError, match="method must be one of"):
        jaxprune.prune_sequential(_mlp_fn, params, xs, method="obs")
    with pytest.raises(ValueError, match="batch 1 has another shape"):
        jaxprune.prune_sequential(_mlp_fn, params, [xs[0], xs[1][:5]])
    with pytest.raises(ValueError, match="pruning_scope='global'"):
        jaxprune.prune_sequential(_mlp_fn, params, xs, {"pruning_scope": "global"})
