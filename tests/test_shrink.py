"""Tests of jaxprune.shrink / shrink_nnx: shrunk models equal the masked dense models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune


def _np_tree(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _channel_masks(rng, shape, axis, frac):
    """A bool mask (True = keep) that zeroes a random ``frac`` of the slices along ``axis``."""
    n = shape[axis]
    gone = rng.permutation(n)[: round(frac * n)]
    keep = np.ones(n, bool)
    keep[gone] = False
    view = [1] * len(shape)
    view[axis] = n
    return np.broadcast_to(keep.reshape(view), shape).copy()


# ----------------------------------------------------------------------------- MLP


def _mlp_reference(ws, bs, x):
    """NumPy MLP: relu between layers, float64."""
    h = np.asarray(x, np.float64)
    for i, w in enumerate(ws):
        h = h @ np.asarray(w, np.float64)
        if bs is not None:
            h = h + np.asarray(bs[i], np.float64)
        if i < len(ws) - 1:
            h = np.maximum(h, 0.0)
    return h


def _mlp_fn(params, x):
    n = len([k for k in params if k.startswith("w")])
    h = x
    for i in range(n):
        h = h @ params[f"w{i}"]
        if f"b{i}" in params:
            h = h + params[f"b{i}"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return h


def _make_mlp(rng, widths, bias, fracs):
    params, masks = {}, {}
    for i in range(len(widths) - 1):
        w = rng.normal(size=(widths[i], widths[i + 1])).astype(np.float32)
        params[f"w{i}"] = jnp.asarray(w)
        masks[f"w{i}"] = jnp.asarray(_channel_masks(rng, w.shape, 1, fracs[i]))
        if bias:
            params[f"b{i}"] = jnp.asarray(rng.normal(size=widths[i + 1]).astype(np.float32))
            masks[f"b{i}"] = None
    return params, masks


def _expected_hidden_kept(masks, widths):
    """Hidden unit j of layer i goes iff its kernel column or the next kernel's row is zero
    (a nonzero bias is folded into the next layer's bias); at least one unit stays."""
    out = []
    for i in range(len(widths) - 2):
        col_zero = ~np.asarray(masks[f"w{i}"]).any(axis=0)
        row_zero = ~np.asarray(masks[f"w{i + 1}"]).any(axis=1)
        gone = int((col_zero | row_zero).sum())
        out.append(max(widths[i + 1] - gone, 1))
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_mlp_chain_matches_masked_model(bias):
    rng = np.random.default_rng(0)
    widths = [5, 8, 6, 3]
    params, masks = _make_mlp(rng, widths, bias, [0.5, 0.5, 0.0])
    x = jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32))
    small, small_fn = jaxprune.shrink(_mlp_fn, params, x, masks=masks)
    kept = _expected_hidden_kept(masks, widths)
    assert small["w0"].shape == (5, kept[0])
    assert small["w1"].shape == (kept[0], kept[1])
    assert small["w2"].shape == (kept[1], 3)
    ws = [np.where(masks[f"w{i}"], params[f"w{i}"], 0) for i in range(3)]
    bs = [params[f"b{i}"] for i in range(3)] if bias else None
    want = _mlp_reference(ws, bs, x)
    np.testing.assert_allclose(small_fn(small, x), want, rtol=1e-5, atol=1e-5)
    x2 = jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32))
    np.testing.assert_allclose(
        jax.jit(small_fn)(small, x2), _mlp_reference(ws, bs, x2), rtol=1e-5, atol=1e-5
    )


def test_fold_hand_worked():
    # Unit 1 has a zero kernel column and bias 2: it emits relu(2) = 2 whatever the input;
    # its contribution 2 * w2[1] = 6 goes into b2.
    params = {
        "w0": jnp.array([[1.0, 0.0]]),
        "b0": jnp.array([0.5, 2.0]),
        "w1": jnp.array([[1.0], [3.0]]),
        "b1": jnp.array([0.25]),
    }
    small, small_fn = jaxprune.shrink(_mlp_fn, params, jnp.ones((1, 1)))
    assert small["w0"].tolist() == [[1.0]]
    assert small["b0"].tolist() == [0.5]
    assert small["w1"].tolist() == [[1.0]]
    assert small["b1"].tolist() == [6.25]
    assert small_fn(small, jnp.array([[2.0]])).tolist() == [[2.5 + 6.25]]
    assert small_fn.report.folded == ({"bias": "b1", "weight": "w1", "channels": 1},)
    assert small_fn.report.arrays["w0"] == {"axis": 1, "kept": 1, "removed": 1}


def test_constant_without_bias_is_kept_or_added_back():
    # No bias after the second matmul: by default the constant channel is kept (the small
    # params are standalone) and reported ...
    params = {"w0": jnp.array([[1.0, 0.0]]), "b0": jnp.array([0.5, 2.0])}
    params["w1"] = jnp.array([[1.0], [3.0]])
    x = jnp.array([[2.0]])
    small, small_fn = jaxprune.shrink(_mlp_fn, params, x)
    assert small["w1"].shape == (2, 1)
    (kept,) = small_fn.report.kept
    assert kept["channels"] == [1] and "no bias" in kept["reason"]
    assert small_fn.corrections == {}
    # ... with constants=True, small_fn adds 2 * 3 = 6 after the matmul, at any batch size.
    small, small_fn = jaxprune.shrink(_mlp_fn, params, x, constants=True)
    assert small["w1"].shape == (1, 1)
    assert small_fn(small, x).tolist() == [[2.5 + 6.0]]
    assert small_fn(small, jnp.array([[2.0], [0.0], [-4.0]])).tolist() == [[8.5], [6.5], [6.0]]
    assert small_fn.report.folded[0]["bias"] is None
    (c,) = small_fn.corrections.values()
    assert np.asarray(c).tolist() == [[6.0]]


@settings(max_examples=10)
@given(
    widths=st.lists(st.integers(2, 9), min_size=3, max_size=4),
    frac=st.sampled_from([0.25, 0.5, 0.75, 0.9]),
    bias=st.booleans(),
    seed=st.integers(0, 100),
)
def test_mlp_hypothesis(widths, frac, bias, seed):
    rng = np.random.default_rng(seed)
    fracs = [frac] * (len(widths) - 2) + [0.0]
    params, masks = _make_mlp(rng, widths, bias, fracs)
    x = jnp.asarray(rng.normal(size=(3, widths[0])).astype(np.float32))
    small, small_fn = jaxprune.shrink(_mlp_fn, params, x, masks=masks)
    n = len(widths) - 1
    ws = [np.where(masks[f"w{i}"], params[f"w{i}"], 0) for i in range(n)]
    bs = [params[f"b{i}"] for i in range(n)] if bias else None
    np.testing.assert_allclose(small_fn(small, x), _mlp_reference(ws, bs, x), rtol=1e-4, atol=1e-4)
    kept = _expected_hidden_kept(masks, widths)
    for i, k in enumerate(kept):
        assert small[f"w{i}"].shape[1] == k
        assert small[f"w{i + 1}"].shape[0] == k


def test_zero_slices_without_masks_and_prune_channel():
    rng = np.random.default_rng(1)
    params, _ = _make_mlp(rng, [4, 10, 2], True, [0, 0])
    hp = jaxprune.get_pruning_hparams().replace(sparsity_type="channel")
    pruned, masks = jaxprune.prune(params, hp, sparsity=0.6)
    x = jnp.asarray(rng.normal(size=(3, 4)).astype(np.float32))
    # The zeros of the pruned params are found without the masks.
    small_a, fn_a = jaxprune.shrink(_mlp_fn, pruned, x)
    small_b, _fn_b = jaxprune.shrink(_mlp_fn, params, x, masks=masks)
    assert small_a["w0"].shape == (4, 4)  # round(10 * 0.6) = 6 pruned
    for k in small_a:
        np.testing.assert_array_equal(small_a[k], small_b[k])
    want = _mlp_reference([pruned["w0"], pruned["w1"]], [pruned["b0"], pruned["b1"]], x)
    np.testing.assert_allclose(fn_a(small_a, x), want, rtol=1e-5, atol=1e-5)


def test_deterministic_and_params_not_mutated():
    rng = np.random.default_rng(2)
    params, masks = _make_mlp(rng, [4, 8, 3], True, [0.5, 0])
    before = _np_tree(params)
    x = jnp.ones((2, 4))
    s1, f1 = jaxprune.shrink(_mlp_fn, params, x, masks=masks)
    s2, f2 = jaxprune.shrink(_mlp_fn, params, x, masks=masks)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])
    assert f1.report == f2.report
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])


def test_jit_does_not_retrace():
    rng = np.random.default_rng(3)
    params, masks = _make_mlp(rng, [4, 8, 3], True, [0.5, 0])
    small, small_fn = jaxprune.shrink(_mlp_fn, params, jnp.ones((2, 4)), masks=masks)
    traces = []

    @jax.jit
    def run(p, x):
        traces.append(1)
        return small_fn(p, x)

    for s in range(3):
        run(small, jnp.full((2, 4), float(s)))
    assert len(traces) == 1


# ----------------------------------------------------------------------------- CNN


class _LinenCNN(nn.Module):
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        x = nn.Conv(6, (3, 3), padding=self.padding)(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3)(x)


def _cnn_masks(variables, rng):
    def mask(path, x):
        name = jaxprune.path_name(path)
        if name.endswith("Conv_0/kernel") or name.endswith("Conv_1/kernel"):
            return jnp.asarray(_channel_masks(rng, x.shape, 3, 0.5))
        return None

    return jax.tree_util.tree_map_with_path(mask, variables)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_linen_cnn(padding):
    model = _LinenCNN(padding)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)).astype(np.float32))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    variables = jax.tree.map(
        lambda v: jnp.abs(v) + 0.5 if v.ndim == 1 else v,
        jax.tree_util.tree_map_with_path(
            lambda p, v: jnp.asarray(rng.normal(size=v.shape), v.dtype), variables
        ),
    )
    masks = _cnn_masks(variables, rng)
    masked = jax.tree.map(
        lambda v, m: v if m is None else jnp.where(m, v, 0.0),
        variables,
        masks,
        is_leaf=lambda t: t is None,
    )
    # check=False: the test compares the outputs itself (saves two compilations). With SAME
    # padding, the constant BN outputs of pruned Conv_0 filters can only be added back by
    # small_fn (constants=True): their contribution through the padded Conv_1 varies at the
    # borders, so no bias can hold it.
    same = padding == "SAME"
    small, small_fn = jaxprune.shrink(
        model.apply, variables, x, masks=masks, check=False, constants=same
    )
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(small_fn(small, x), apply(masked, x), rtol=1e-4, atol=1e-4)
    x3 = jnp.asarray(rng.normal(size=(3, 8, 8, 3)).astype(np.float32))  # another batch size
    np.testing.assert_allclose(small_fn(small, x3), apply(masked, x3), rtol=1e-4, atol=1e-4)
    assert bool(small_fn.corrections) == same
    # Conv_0's output channel j goes iff its filter is zero (its constant BN output is added
    # back) or Conv_1's input slice j is zero; likewise Conv_1's outputs (the Dense rows).
    k0 = np.asarray(masks["params"]["Conv_0"]["kernel"]).any(axis=(0, 1, 2))
    k1 = np.asarray(masks["params"]["Conv_1"]["kernel"])
    c0 = int((k0 & k1.any(axis=(0, 1, 3))).sum())
    c1 = int(k1.any(axis=(0, 1, 2)).sum())
    assert small["params"]["Conv_0"]["kernel"].shape == (3, 3, 3, c0)
    assert small["params"]["BatchNorm_0"]["scale"].shape == (c0,)
    assert small["batch_stats"]["BatchNorm_0"]["mean"].shape == (c0,)
    assert small["params"]["Conv_1"]["kernel"].shape == (3, 3, c0, c1)
    spatial = 16 if padding == "SAME" else 9
    assert small["params"]["Dense_0"]["kernel"].shape == (spatial * c1, 3)
    # The Dense rows kept are exactly the (h, w, c) blocks of the kept channels.
    dense = np.asarray(masked["params"]["Dense_0"]["kernel"]).reshape(spatial, 6, 3)
    np.testing.assert_array_equal(
        np.asarray(small["params"]["Dense_0"]["kernel"]).reshape(spatial, c1, 3),
        dense[:, np.flatnonzero(k1.any(axis=(0, 1, 2)))],
    )
    assert "params/Dense_0/bias" not in small_fn.report.arrays  # the output stays whole


class _NnxCNN(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.c2 = nnx.Conv(8, 6, (3, 3), padding="VALID", rngs=rngs)
        self.d = nnx.Linear(4 * 4 * 6, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.c1(x)))
        x = nnx.relu(self.c2(x))
        return self.d(x.reshape(x.shape[0], -1))


def test_nnx_cnn_split_and_shrink_nnx():
    model = _NnxCNN(nnx.Rngs(0))
    rng = np.random.default_rng(5)
    model.bn.bias[...] = jnp.asarray(rng.normal(size=8).astype(np.float32))
    model.bn.mean[...] = jnp.asarray(rng.normal(size=8).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)).astype(np.float32))
    graphdef, state = nnx.split(model)
    hp = jaxprune.get_pruning_hparams().replace(sparsity_type="channel")
    pruned, masks = jaxprune.prune(state, hp, sparsity=0.5)
    want = nnx.merge(graphdef, nnx.split(model)[1])  # unchanged model
    before = _np_tree(jax.tree.leaves(state))

    # nnx through split / merge, with small_fn.
    def fn(s, x):
        return nnx.merge(graphdef, s)(x)

    small, small_fn = jaxprune.shrink(fn, state, x, masks=masks, check=False)
    masked_state = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(pruned))
    expected = jax.jit(fn)(masked_state, x)
    np.testing.assert_allclose(small_fn(small, x), expected, rtol=1e-4, atol=1e-4)
    # And as a module.
    small_model, report = jaxprune.shrink_nnx(model, x, masks=masks)
    k1 = np.asarray(masks["c1"]["kernel"]).any(axis=(0, 1, 2))
    k2 = np.asarray(masks["c2"]["kernel"])
    c1 = int((k1 & k2.any(axis=(0, 1, 3))).sum())
    c2 = int(k2.any(axis=(0, 1, 2)).sum())
    assert small_model.c1.kernel.shape == (3, 3, 3, c1)
    assert small_model.c1.out_features == c1 and small_model.c2.in_features == c1
    assert small_model.bn.num_features == c1
    assert small_model.d.kernel.shape == (16 * c2, 3)
    np.testing.assert_allclose(
        nnx.jit(lambda m, x: m(x))(small_model, x), expected, rtol=1e-4, atol=1e-4
    )
    assert report.arrays["c1/kernel"] == {"axis": 3, "kept": c1, "removed": 8 - c1}
    for a, b in zip(jax.tree.leaves(nnx.split(model)[1]), before, strict=True):
        np.testing.assert_array_equal(a, b)
    del want


# ----------------------------------------------------------------------------- transformer


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16, deterministic=True)(h)
        x = x + h
        h = nn.LayerNorm()(x)
        up = nn.Dense(12, use_bias=False, name="up")(h)
        gate = nn.Dense(12, use_bias=False, name="gate")(h)
        return x + nn.Dense(8, use_bias=False, name="down")(nn.silu(gate) * up)


def _attention_reference(p, x):
    """NumPy transformer block (float64), written independently of flax."""
    x = np.asarray(x, np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)

    def ln(v, q):
        mu = v.mean(-1, keepdims=True)
        var = ((v - mu) ** 2).mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-6) * q["scale"] + q["bias"]

    a = p["MultiHeadDotProductAttention_0"]
    h = ln(x, p["LayerNorm_0"])
    q = np.einsum("bld,dhk->blhk", h, a["query"]["kernel"]) + a["query"]["bias"]
    k = np.einsum("bld,dhk->blhk", h, a["key"]["kernel"]) + a["key"]["bias"]
    v = np.einsum("bld,dhk->blhk", h, a["value"]["kernel"]) + a["value"]["bias"]
    s = np.einsum("bqhk,bthk->bhqt", q / np.sqrt(4.0), k)
    s = np.exp(s - s.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    o = np.einsum("bhqt,bthk->bqhk", s, v)
    x = x + np.einsum("bqhk,hkd->bqd", o, a["out"]["kernel"]) + a["out"]["bias"]
    h = ln(x, p["LayerNorm_1"])
    g = h @ p["gate"]["kernel"]
    u = h @ p["up"]["kernel"]
    return x + (g / (1 + np.exp(-g)) * u) @ p["down"]["kernel"]


def test_transformer_block_heads_and_mlp():
    model = _Block()
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(2, 5, 8)).astype(np.float32))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    variables = jax.tree.map(
        lambda v: jnp.asarray(rng.normal(size=v.shape), v.dtype) * 0.5, variables
    )
    p = variables["params"]
    a = p["MultiHeadDotProductAttention_0"]
    # Head 1 pruned through its value projection (kernel and bias): the head goes from q, k,
    # v and out. Head dim 2 of q and k pruned through the query projection.
    masks = jax.tree.map(lambda _: None, variables)
    ma = masks["params"]["MultiHeadDotProductAttention_0"]
    ma["value"]["kernel"] = jnp.ones((8, 4, 4), bool).at[:, 1].set(False)
    ma["value"]["bias"] = jnp.ones((4, 4), bool).at[1].set(False)
    ma["query"]["kernel"] = jnp.ones((8, 4, 4), bool).at[:, :, 2].set(False)
    ma["query"]["bias"] = jnp.ones((4, 4), bool).at[:, 2].set(False)
    up_mask = _channel_masks(rng, (8, 12), 1, 0.5)
    masks["params"]["up"]["kernel"] = jnp.asarray(up_mask)
    # check=False: the test compares the outputs itself (saves two compilations).
    small, small_fn = jaxprune.shrink(model.apply, variables, x, masks=masks, check=False)
    masked = jax.tree.map(
        lambda v, m: v if m is None else jnp.where(m, v, 0.0),
        variables,
        masks,
        is_leaf=lambda t: t is None,
    )
    want = _attention_reference(masked["params"], x)
    np.testing.assert_allclose(jax.jit(model.apply)(masked, x), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(small_fn(small, x), want, rtol=1e-4, atol=1e-4)
    sa = small["params"]["MultiHeadDotProductAttention_0"]
    assert sa["value"]["kernel"].shape == (8, 3, 4)
    assert sa["query"]["kernel"].shape == (8, 3, 3)
    assert sa["key"]["kernel"].shape == (8, 3, 3)
    assert sa["key"]["bias"].shape == (3, 3)
    assert sa["out"]["kernel"].shape == (3, 4, 8)
    np.testing.assert_array_equal(sa["out"]["kernel"], np.delete(a["out"]["kernel"], 1, axis=0))
    hidden = int(up_mask.any(axis=0).sum())
    assert small["params"]["gate"]["kernel"].shape == (8, hidden)
    assert small["params"]["down"]["kernel"].shape == (hidden, 8)
    # The residual stream (LayerNorm statistics, the input, the output) stays whole.
    assert sa["out"]["bias"].shape == (8,)
    assert small["params"]["LayerNorm_0"]["scale"].shape == (8,)


def test_layernorm_over_hidden_keeps_group_whole():
    def fn(p, x):
        h = x @ p["w0"]
        mu = jnp.mean(h, axis=-1, keepdims=True)
        return (h - mu) @ p["w1"]

    params = {"w0": jnp.ones((3, 4)).at[:, 1].set(0.0), "w1": jnp.ones((4, 2))}
    small, small_fn = jaxprune.shrink(fn, params, jnp.ones((2, 3)))
    assert small["w0"].shape == (3, 4)
    (whole,) = small_fn.report.whole
    assert whole["zero"] == 1 and "reduce_sum" in whole["reason"]
    assert "w0:1" in whole["members"]


def test_regrouping_reshape_keeps_group_whole():
    def fn(p, x):
        h = (x @ p["w0"]).reshape(2, 2, 3).reshape(2, 3, 2).reshape(2, 6)
        return h @ p["w1"]

    params = {"w0": jnp.ones((3, 6)).at[:, :3].set(0.0), "w1": jnp.ones((6, 2))}
    x = jnp.arange(6.0).reshape(2, 3)
    small, small_fn = jaxprune.shrink(fn, params, x)
    assert small["w0"].shape == (3, 6)
    assert "reshape" in small_fn.report.whole[0]["reason"]
    np.testing.assert_array_equal(small_fn(small, x), fn(params, x))


def test_scanned_layers():
    def fn(p, x):
        def body(h, w):
            return h + jax.nn.relu(h @ w["a"]) @ w["b"], None

        return jax.lax.scan(body, x, p)[0]

    rng = np.random.default_rng(7)
    p = {
        "a": jnp.asarray(rng.normal(size=(3, 4, 6)).astype(np.float32)),
        "b": jnp.asarray(rng.normal(size=(3, 6, 4)).astype(np.float32)),
    }
    p["a"] = p["a"].at[:, :, 2].set(0.0)  # unit 2 pruned in every layer: removed
    p["a"] = p["a"].at[0, :, 4].set(0.0)  # unit 4 pruned in one layer only: kept
    x = jnp.asarray(rng.normal(size=(2, 4)).astype(np.float32))
    small, small_fn = jaxprune.shrink(fn, p, x)
    assert small["a"].shape == (3, 4, 5) and small["b"].shape == (3, 5, 4)
    np.testing.assert_allclose(small_fn(small, x), fn(p, x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- sharding, errors


def test_sharded_params():
    rng = np.random.default_rng(8)
    params, masks = _make_mlp(rng, [8, 16, 8], True, [0.5, 0])
    x = jnp.asarray(rng.normal(size=(8, 8)).astype(np.float32))
    mesh = Mesh(np.array(jax.devices()[:8]), ("d",))
    sharded = jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, P(None))), params)
    sharded["w0"] = jax.device_put(params["w0"], NamedSharding(mesh, P(None, "d")))
    sharded["w1"] = jax.device_put(params["w1"], NamedSharding(mesh, P("d", None)))
    s8, f8 = jaxprune.shrink(_mlp_fn, sharded, x, masks=masks)
    s1, f1 = jaxprune.shrink(_mlp_fn, params, x, masks=masks)
    for k in s1:
        np.testing.assert_array_equal(s8[k], s1[k])
    np.testing.assert_array_equal(f8(s8, x), f1(s1, x))


def test_errors():
    params = {"w0": jnp.ones((3, 4)), "w1": jnp.ones((4, 2))}
    with pytest.raises(ValueError, match="could not be traced"):
        jaxprune.shrink(_mlp_fn, params, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="masks must have the structure"):
        jaxprune.shrink(_mlp_fn, params, jnp.ones((2, 3)), masks={"w0": None})
    small, small_fn = jaxprune.shrink(_mlp_fn, params, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="could not be traced with these inputs"):
        small_fn(small, jnp.ones((5, 4)))
    with pytest.raises(ValueError, match="w0"):
        small_fn(params | {"w0": jnp.ones((3, 5))}, jnp.ones((2, 3)))


def test_format_report_table():
    params = {"w0": jnp.ones((2, 4)).at[:, 1:3].set(0.0), "w1": jnp.ones((4, 1))}
    _, small_fn = jaxprune.shrink(_mlp_fn, params, jnp.ones((1, 2)))
    text = jaxprune.format_report(small_fn.report)
    assert text.splitlines()[:3] == [
        "array  axis  kept  removed",
        "w0        1     2        2",
        "w1        0     2        2",
    ]
    assert "parameters: 12 -> 6 (0.500x)" in text


def test_gather_dynamic_slice_and_split_are_remapped():
    # An embedding table's feature axis passes through the gather (jnp.take), a dynamic
    # slice of the sequence and an equal split of the batch: its columns pruned by the next
    # kernel's zero rows are removed from the table too.
    rng = np.random.default_rng(7)
    params = {"emb": jnp.asarray(rng.normal(size=(11, 6)).astype(np.float32))}
    w = rng.normal(size=(6, 2)).astype(np.float32)
    w[[1, 4]] = 0.0
    params["w"] = jnp.asarray(w)

    def fn(p, tokens, start):
        h = jnp.take(p["emb"], tokens, axis=0)  # (B, T, D)
        h = jax.lax.dynamic_slice_in_dim(h, start, 2, axis=1)  # (B, 2, D)
        a, b = jnp.split(h, 2, axis=0)
        return jnp.concatenate([a, b * 2.0], axis=0) @ p["w"]

    tokens = jnp.asarray(rng.integers(0, 11, size=(2, 5)), jnp.int32)
    small, small_fn = jaxprune.shrink(fn, params, tokens, jnp.int32(1))
    assert small["emb"].shape == (11, 4) and small["w"].shape == (4, 2)
    np.testing.assert_array_equal(small["emb"], np.asarray(params["emb"])[:, [0, 2, 3, 5]])
    t4 = jnp.asarray(rng.integers(0, 11, size=(4, 7)), jnp.int32)
    emb, want_w = np.asarray(params["emb"], np.float64), w.astype(np.float64)
    h = emb[np.asarray(t4)][:, 3:5]
    want = np.concatenate([h[:2], 2 * h[2:]]) @ want_w
    np.testing.assert_allclose(small_fn(small, t4, jnp.int32(3)), want, rtol=1e-5, atol=1e-5)


def test_model_coupled_differently_at_other_shapes_raises():
    # At batch 1 this model normalises over the hidden units, which couples them: the hidden
    # units removed at batch 2 cannot be removed there, so small_fn refuses (never another
    # model).
    w1 = np.ones((3, 4), np.float32)
    w1[:, 1] = 0.0
    params = {"w1": jnp.asarray(w1), "w2": jnp.ones((4, 2))}

    def fn(p, x):
        h = jax.nn.relu(x @ p["w1"])
        if x.shape[0] == 1:
            h = h / (1.0 + jnp.sum(h, axis=-1, keepdims=True))
        return h @ p["w2"]

    small, small_fn = jaxprune.shrink(fn, params, jnp.ones((2, 3)))
    assert small["w1"].shape == (3, 3)
    # 3 kept units of 2 * 3 = 6 each, summed by w2.
    np.testing.assert_allclose(small_fn(small, 2 * jnp.ones((5, 3))), 18 * jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"cannot run at input shapes \[\(1, 3\)\].*reduced by"):
        small_fn(small, jnp.ones((1, 3)))
