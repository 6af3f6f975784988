"""activation_norms, hessians and wanda_scores against NumPy references (here, tests/helpers.py)."""

import itertools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from jaxprune._src import calibration
from tests.helpers import np_hessian

RTOL = 2e-5

# ----------------------------------------------------------------------------- references


def np_norms(*inputs):
    """sqrt of the sum over all tokens (all but the last axis) of x**2, per input feature."""
    total = 0.0
    for x in inputs:
        x = np.asarray(x, np.float64)
        total = total + (x.reshape(-1, x.shape[-1]) ** 2).sum(0)
    return np.sqrt(total)


def np_mlp(ws, bs, x):
    """Inputs of every layer of a ReLU MLP (float64)."""
    h, inputs = np.asarray(x, np.float64), []
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        inputs.append(h)
        h = h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        if i < len(ws) - 1:
            h = np.maximum(h, 0)
    return inputs


def np_same_patches(x, k, stride):
    """(N, OH, OW, kh, kw, C) input patches of a stride-``stride`` SAME conv (XLA's padding)."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    pads = []
    for size in (h, w):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh, ow = -(-h // stride), -(-w // stride)
    out = np.zeros((n, oh, ow, k, k, c))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = xp[:, i * stride : i * stride + k, j * stride : j * stride + k]
    return out


def np_conv(x, kernel, bias, stride):
    patches = np_same_patches(x, kernel.shape[0], stride)
    return np.einsum("nhwijc,ijco->nhwo", patches, np.asarray(kernel, np.float64)) + np.asarray(
        bias, np.float64
    )


def patch_norms(x, k, stride):
    p = np_same_patches(x, k, stride)
    return np.sqrt((p**2).sum((0, 1, 2)))


def batches_of(rng, n, shape):
    return [jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(n)]


# ----------------------------------------------------------------------------- MLPs


def test_plain_jax_mlp():
    rng = np.random.default_rng(0)
    sizes = [5, 7, 6, 3]
    params = {
        f"l{i}": {
            "w": jnp.asarray(rng.normal(size=(a, b)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=b), jnp.float32),
        }
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }

    def fn(p, x):
        for i in range(3):
            x = x @ p[f"l{i}"]["w"] + p[f"l{i}"]["b"]
            if i < 2:
                x = jax.nn.relu(x)
        return x

    xs = batches_of(rng, 3, (4, 5))
    norms = jaxprune.activation_norms(fn, params, xs)
    ws = [params[f"l{i}"]["w"] for i in range(3)]
    bs = [params[f"l{i}"]["b"] for i in range(3)]
    per_batch = [np_mlp(ws, bs, x) for x in xs]
    for i in range(3):
        ref = np_norms(*(inputs[i] for inputs in per_batch))
        assert norms[f"l{i}"]["w"].shape == (sizes[i],)
        assert norms[f"l{i}"]["w"].dtype == jnp.float32
        np.testing.assert_allclose(norms[f"l{i}"]["w"], ref, rtol=RTOL)
        assert norms[f"l{i}"]["b"] is None


def test_linen_dense_mlp():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(6)(x))
            x = nn.relu(nn.Dense(5)(x))
            return nn.Dense(2)(x)

    rng = np.random.default_rng(1)
    xs = batches_of(rng, 2, (3, 4, 4))  # (batch, seq, features): all leading axes are tokens
    model = MLP()
    params = model.init(jax.random.key(0), xs[0])
    norms = jaxprune.activation_norms(model.apply, params, xs)
    p = params["params"]
    ws = [p[f"Dense_{i}"]["kernel"] for i in range(3)]
    bs = [p[f"Dense_{i}"]["bias"] for i in range(3)]
    per_batch = [np_mlp(ws, bs, x) for x in xs]
    for i in range(3):
        ref = np_norms(*(inputs[i] for inputs in per_batch))
        np.testing.assert_allclose(norms["params"][f"Dense_{i}"]["kernel"], ref, rtol=RTOL)
        assert norms["params"][f"Dense_{i}"]["bias"] is None


def test_nnx_linear_mlp():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(4, 8, rngs=rngs)
            self.b = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
    rng = np.random.default_rng(2)
    xs = batches_of(rng, 2, (5, 4))
    norms = jaxprune.activation_norms(lambda s, x: nnx.merge(graphdef, s)(x), state, xs)
    ws = [state["a"]["kernel"][...], state["b"]["kernel"][...]]
    bs = [state["a"]["bias"][...], state["b"]["bias"][...]]
    per_batch = [np_mlp(ws, bs, x) for x in xs]
    for name, i in (("a", 0), ("b", 1)):
        ref = np_norms(*(inputs[i] for inputs in per_batch))
        np.testing.assert_allclose(norms[name]["kernel"], ref, rtol=RTOL)
        assert norms[name]["bias"] is None


# ----------------------------------------------------------------------------- convolutions


def _conv_refs(kernels, biases, x):
    """Patch norms of both convs of conv(stride 2, SAME) -> relu -> conv(stride 1, SAME)."""
    h = np.maximum(np_conv(x, kernels[0], biases[0], 2), 0)
    return patch_norms(x, 3, 2), patch_norms(h, 3, 1)


def test_linen_conv_net():
    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
            x = nn.Conv(5, (3, 3), padding="SAME")(x)
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)  # odd size: uneven padding
    model = CNN()
    params = model.init(jax.random.key(0), x)
    norms = jaxprune.activation_norms(model.apply, params, [x])["params"]
    p = params["params"]
    ref0, ref1 = _conv_refs(
        [p["Conv_0"]["kernel"], p["Conv_1"]["kernel"]], [p["Conv_0"]["bias"], None], x
    )
    assert norms["Conv_0"]["kernel"].shape == (3, 3, 3)
    np.testing.assert_allclose(norms["Conv_0"]["kernel"], ref0, rtol=RTOL)
    np.testing.assert_allclose(norms["Conv_1"]["kernel"], ref1, rtol=RTOL)
    assert norms["Dense_0"]["kernel"].shape == (4 * 4 * 5,)


def test_nnx_conv_net():
    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c0 = nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", rngs=rngs)
            self.c1 = nnx.Conv(4, 5, (3, 3), padding="SAME", rngs=rngs)

        def __call__(self, x):
            return self.c1(nnx.relu(self.c0(x)))

    graphdef, state = nnx.split(CNN(nnx.Rngs(0)))
    rng = np.random.default_rng(4)
    xs = batches_of(rng, 2, (2, 6, 6, 3))
    norms = jaxprune.activation_norms(lambda s, x: nnx.merge(graphdef, s)(x), state, xs)
    kernels = [state["c0"]["kernel"][...], state["c1"]["kernel"][...]]
    bias0 = state["c0"]["bias"][...]
    refs = [_conv_refs(kernels, [bias0, None], x) for x in xs]
    for i, name in enumerate(("c0", "c1")):
        ref = np.sqrt(sum(r[i] ** 2 for r in refs))
        np.testing.assert_allclose(norms[name]["kernel"], ref, rtol=RTOL)


def test_depthwise_conv_gets_weight_shaped_norms():
    conv = nn.Conv(3, (3, 3), strides=2, padding="SAME", feature_group_count=3)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 3)), jnp.float32)
    params = conv.init(jax.random.key(0), x)
    norms = jaxprune.activation_norms(conv.apply, params, [x])["params"]["kernel"]
    assert norms.shape == (3, 3, 1, 3)  # == the kernel's shape
    ref = patch_norms(x, 3, 2)  # (3, 3, C): output channel o only sees input channel o
    np.testing.assert_allclose(norms[:, :, 0, :], ref, rtol=RTOL)


# ----------------------------------------------------------------------------- sharing, scans


def test_tied_embedding():
    rng = np.random.default_rng(6)
    params = {
        "emb": jnp.asarray(rng.normal(size=(11, 4)), jnp.float32),
        "w": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
    }

    def fn(p, tokens):
        h = jnp.tanh(p["emb"][tokens] @ p["w"])
        return h @ p["emb"].T

    tokens = jnp.asarray(rng.integers(0, 11, size=(2, 5)))
    norms = jaxprune.activation_norms(fn, params, [tokens])
    e = np.asarray(params["emb"], np.float64)[np.asarray(tokens)]
    h = np.tanh(e @ np.asarray(params["w"], np.float64))
    assert norms["emb"].shape == (1, 4)  # contracting axis 1 is not a leading prefix
    np.testing.assert_allclose(norms["emb"][0], np_norms(h), rtol=RTOL)
    np.testing.assert_allclose(norms["w"], np_norms(e), rtol=RTOL)


def test_weight_reused_in_a_loop_and_split_along_contracting_axis():
    rng = np.random.default_rng(7)
    params = {
        "w": jnp.asarray(rng.normal(size=(3, 3)) / 2, jnp.float32),
        "v": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
    }

    def fn(p, x):
        h = jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ p["w"]), x)
        return h[:, :2] @ p["v"][:2] + h[:, 2:] @ p["v"][2:]

    x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    norms = jaxprune.activation_norms(fn, params, [x])
    h, inputs = np.asarray(x, np.float64), []
    for _ in range(3):
        inputs.append(h)
        h = np.tanh(h @ np.asarray(params["w"], np.float64))
    np.testing.assert_allclose(norms["w"], np_norms(*inputs), rtol=RTOL)
    np.testing.assert_allclose(norms["v"], np_norms(h), rtol=RTOL)


def test_fused_and_indexed_weights():
    rng = np.random.default_rng(15)
    params = {
        "qkv": jnp.asarray(rng.normal(size=(4, 12)) / 2, jnp.float32),
        "stack": jnp.asarray(rng.normal(size=(3, 4, 4)) / 2, jnp.float32),
    }

    def fn(p, x):
        q, k, v = jnp.split(p["qkv"], 3, axis=1)
        h1 = jnp.tanh(x @ q) + jnp.tanh(x @ k)
        h2 = h1 @ v
        return h2 @ p["stack"][1] @ p["stack"][2].T

    x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    norms = jaxprune.activation_norms(fn, params, [x])
    f = {k: np.asarray(v, np.float64) for k, v in params.items()}
    xn = np.asarray(x, np.float64)
    h1 = np.tanh(xn @ f["qkv"][:, :4]) + np.tanh(xn @ f["qkv"][:, 4:8])
    h2 = h1 @ f["qkv"][:, 8:]
    h3 = h2 @ f["stack"][1]
    # Every entry's norm is over the inputs it multiplies: q and k columns see x (once), v
    # columns see h1; stack[0] is never used, stack[1] sees h2 (rows), stack[2].T sees h3.
    ref_qkv = np.concatenate(
        [np.tile(np_norms(xn)[:, None], (1, 8)), np.tile(np_norms(h1)[:, None], (1, 4))], 1
    )
    np.testing.assert_allclose(norms["qkv"], ref_qkv, rtol=RTOL)
    ref_stack = np.zeros((3, 4, 4))
    ref_stack[1] = np_norms(h2)[:, None]
    ref_stack[2] = np_norms(h3)[None, :]
    np.testing.assert_allclose(norms["stack"], ref_stack, rtol=RTOL, atol=1e-6)


def test_lax_scan_stacked_layers():
    rng = np.random.default_rng(8)
    params = {"stack": jnp.asarray(rng.normal(size=(3, 4, 4)) / 2, jnp.float32)}

    def fn(p, x):
        return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, p["stack"])[0]

    xs = batches_of(rng, 2, (5, 4))
    norms = jaxprune.activation_norms(fn, params, xs)
    sq = np.zeros((3, 4))
    for x in xs:
        h = np.asarray(x, np.float64)
        for layer in range(3):
            sq[layer] += (h**2).sum(0)
            h = np.tanh(h @ np.asarray(params["stack"][layer], np.float64))
    assert norms["stack"].shape == (3, 4)
    np.testing.assert_allclose(norms["stack"], np.sqrt(sq), rtol=RTOL)


def test_linen_nn_scan_stacked_layers():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            return jnp.tanh(nn.Dense(4)(h)), None

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(
                Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
            )
            return scan()(x, None)[0]

    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    model = Model()
    params = model.init(jax.random.key(0), x)
    norms = jaxprune.activation_norms(model.apply, params, [x])
    p = params["params"]["ScanBlock_0"]["Dense_0"]
    h, ref = np.asarray(x, np.float64), []
    for layer in range(3):
        ref.append(np_norms(h))
        h = np.tanh(h @ np.asarray(p["kernel"][layer], np.float64) + np.asarray(p["bias"][layer]))
    got = norms["params"]["ScanBlock_0"]["Dense_0"]
    assert got["bias"] is None
    np.testing.assert_allclose(got["kernel"], np.stack(ref), rtol=RTOL)


def test_linen_attention():
    heads, hd, d = 2, 3, 5
    mha = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=heads * hd, out_features=d)
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=(2, 4, d)), jnp.float32)
    params = mha.init(jax.random.key(0), x)
    norms = jaxprune.activation_norms(lambda p, x: mha.apply(p, x), params, [x])["params"]
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    xn = np.asarray(x, np.float64)
    q, k, v = (
        np.einsum("bsd,dhk->bshk", xn, p[n]["kernel"]) + p[n]["bias"]
        for n in ("query", "key", "value")
    )
    logits = np.einsum("bqhk,bshk->bhqs", q / np.sqrt(hd), k)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    heads_out = np.einsum("bhqs,bshk->bqhk", att, v)
    for n in ("query", "key", "value"):
        assert norms[n]["kernel"].shape == (d,)
        np.testing.assert_allclose(norms[n]["kernel"], np_norms(xn), rtol=RTOL)
    assert norms["out"]["kernel"].shape == (heads, hd)
    ref = np.sqrt((heads_out**2).sum((0, 1)))
    np.testing.assert_allclose(norms["out"]["kernel"], ref, rtol=RTOL)


# ----------------------------------------------------------------------------- dtypes, batches


def test_bfloat16_params_accumulate_in_float32():
    rng = np.random.default_rng(11)
    params = {
        "w1": jnp.asarray(rng.normal(size=(4, 6)), jnp.bfloat16),
        "w2": jnp.asarray(rng.normal(size=(6, 2)), jnp.bfloat16),
    }

    def fn(p, x):
        return jax.nn.relu(x @ p["w1"]) @ p["w2"]

    xs = [jnp.asarray(rng.normal(size=(64, 4)), jnp.bfloat16) for _ in range(2)]
    norms = jaxprune.activation_norms(fn, params, xs)
    assert norms["w1"].dtype == jnp.float32 and norms["w2"].dtype == jnp.float32
    # Layer 1 sees the bf16 inputs exactly: float32 accumulation is close to float64.
    np.testing.assert_allclose(norms["w1"], np_norms(*xs), rtol=1e-6)
    # Layer 2 sees bf16 hidden activations (rounded to 8 bits of mantissa).
    w1 = np.asarray(params["w1"], np.float64)
    hs = [np.maximum(np.asarray(x, np.float64) @ w1, 0) for x in xs]
    np.testing.assert_allclose(norms["w2"], np_norms(*hs), rtol=1e-2)


def test_batches_equal_one_concatenated_batch():
    rng = np.random.default_rng(12)
    params = {"w1": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)}
    params["w2"] = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)

    def fn(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    xs = batches_of(rng, 4, (3, 4))
    split = jaxprune.activation_norms(fn, params, iter(xs))  # a one-shot iterator
    whole = jaxprune.activation_norms(fn, params, [jnp.concatenate(xs)])
    for k in params:
        np.testing.assert_allclose(split[k], whole[k], rtol=1e-6)


def test_one_trace_and_one_compile_per_batch_shape():
    traces = []
    params = {"w": jnp.ones((4, 2))}

    def fn(p, x):
        traces.append(x.shape)
        return x @ p["w"]

    rng = np.random.default_rng(13)
    jaxprune.activation_norms(fn, params, batches_of(rng, 4, (3, 4)))
    assert traces == [(3, 4)]
    jaxprune.activation_norms(fn, params, batches_of(rng, 3, (3, 4)))  # cached across calls
    assert traces == [(3, 4)]
    jaxprune.activation_norms(fn, params, batches_of(rng, 2, (5, 4)))
    assert traces == [(3, 4), (5, 4)]
    assert calibration.compiled_steps(fn) == 2


def test_sharded_params_and_batches_match_one_device():
    devices = jax.devices()
    assert len(devices) == 8
    mesh = Mesh(np.array(devices), ("x",))
    rng = np.random.default_rng(14)
    params = {
        "w1": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
    }

    def fn(p, x):
        return jax.nn.relu(x @ p["w1"]) @ p["w2"]

    xs = batches_of(rng, 3, (16, 8))
    one = jax.device_put(params, devices[0])
    ref = jaxprune.activation_norms(fn, one, [jax.device_put(x, devices[0]) for x in xs])
    sharded = {
        "w1": jax.device_put(params["w1"], NamedSharding(mesh, P(None, "x"))),
        "w2": jax.device_put(params["w2"], NamedSharding(mesh, P("x", None))),
    }
    sharded_xs = [jax.device_put(x, NamedSharding(mesh, P("x", None))) for x in xs]
    got = jaxprune.activation_norms(fn, sharded, sharded_xs)
    for k in params:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6)
    np.testing.assert_allclose(ref["w1"], np_norms(*xs), rtol=RTOL)


# ----------------------------------------------------------------------------- filters, errors


def test_params_filter():
    params = {"w1": jnp.ones((3, 3)), "w2": jnp.ones((3, 2))}

    def fn(p, x):
        return x @ p["w1"] @ p["w2"]

    x = [jnp.ones((2, 3))]
    norms = jaxprune.activation_norms(fn, params, x, params_filter=lambda n, _: n == "w2")
    assert norms["w1"] is None and norms["w2"].shape == (3,)
    norms = jaxprune.activation_norms(fn, params, x, params_filter={"w1": True, "w2": False})
    assert norms["w1"].shape == (3,) and norms["w2"] is None


def test_unresolved_use_gives_none_and_a_warning():
    params = {"w": jnp.ones((3, 3)), "ok": jnp.ones((3, 2))}

    def fn(p, x):
        return (x @ (p["w"] * 0.5)) @ p["ok"]

    with pytest.warns(UserWarning, match=r"no norms for 'w'.*mul"):
        norms = jaxprune.activation_norms(fn, params, [jnp.ones((2, 3))])
    assert norms["w"] is None
    np.testing.assert_allclose(norms["ok"], np_norms(np.full((2, 3), 1.5)), rtol=RTOL)


def test_errors():
    params = {"w": jnp.ones((3, 2))}

    def model(p, x):
        return x @ p["w"]

    good, bad = jnp.ones((2, 3)), jnp.ones((2, 4))
    with pytest.raises(ValueError, match=r"could not trace fn=.*model.*batch 0"):
        jaxprune.activation_norms(model, params, [bad])
    with pytest.raises(ValueError, match=r"could not trace fn=.*model.*batch 2"):
        jaxprune.activation_norms(model, params, [good, good, bad])
    with pytest.raises(ValueError, match="empty"):
        jaxprune.activation_norms(model, params, [])
    with pytest.raises(ValueError, match="callable"):
        jaxprune.activation_norms("model", params, [good])
    with pytest.raises(ValueError, match="iterable"):
        jaxprune.activation_norms(model, params, 3)
    with pytest.raises(ValueError, match="'i'"):
        jaxprune.activation_norms(
            model,
            {"w": params["w"], "i": jnp.ones((2, 2), jnp.int32)},
            [good],
            params_filter=lambda n, _: True,
        )


def test_params_not_modified_and_no_warning_for_plain_model():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    before = jax.tree.map(np.array, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxprune.activation_norms(lambda p, x: x @ p["w"] + p["b"], params, [jnp.ones((2, 3))])
    jax.tree.map(np.testing.assert_array_equal, params, before)


# ----------------------------------------------------------------------------- hessians


def test_hessians_batch_shapes_3d_inputs_weight_used_twice_and_out_in_layout():
    rng = np.random.default_rng(20)
    params = {
        "w1": jnp.asarray(rng.normal(size=(5, 6)) / 2, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(6, 6)) / 2, jnp.float32),  # used twice
        "head": jnp.asarray(rng.normal(size=(3, 6)), jnp.float32),  # (out, in): h @ head.T
        "b": jnp.zeros(6),
    }

    def fn(p, x):
        h1 = jnp.tanh(x @ p["w1"] + p["b"])
        h2 = jnp.tanh(h1 @ p["w2"])
        return (h2 @ p["w2"]) @ p["head"].T

    shapes = [(4, 5), (7, 5), (2, 3, 5)]  # three batch shapes, one of them 3-D
    xs = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    h = jaxprune.hessians(fn, params, xs)
    f = {k: np.asarray(v, np.float64) for k, v in params.items()}
    per = []
    for x in xs:
        x = np.asarray(x, np.float64).reshape(-1, 5)
        h1 = np.tanh(x @ f["w1"])
        h2 = np.tanh(h1 @ f["w2"])
        per.append((x, h1, h2, h2 @ f["w2"]))
    np.testing.assert_allclose(h["w1"], np_hessian(*(p[0] for p in per)), rtol=1e-5, atol=1e-5)
    ref_w2 = np_hessian(*(p[1] for p in per), *(p[2] for p in per))
    np.testing.assert_allclose(h["w2"], ref_w2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h["head"], np_hessian(*(p[3] for p in per)), rtol=1e-5, atol=1e-4)
    assert h["head"].shape == (6, 6) and h["b"] is None and h["w1"].dtype == jnp.float32
    # Norms are the square roots of the Hessians' diagonals: one mechanism, two statistics.
    norms = jaxprune.activation_norms(fn, params, xs)
    np.testing.assert_allclose(norms["w2"], np.sqrt(np.diag(ref_w2)), rtol=1e-5)
    assert calibration.compiled_steps(fn, calibration.HESSIANS) == 3


def test_hessians_conv_scan_heads_and_rejected_layouts():
    rng = np.random.default_rng(21)
    params = {
        "conv": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
        "depthwise": jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32),
        "stack": jnp.asarray(rng.normal(size=(3, 4, 4)) / 2, jnp.float32),
        "heads": jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32),  # (h, d, e)
        "qkv": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
    }
    dn = ("NHWC", "HWIO", "NHWC")

    def fn(p, batch):
        img, x = batch
        y = jax.lax.conv_general_dilated(img, p["conv"], (2, 2), "SAME", dimension_numbers=dn)
        y = jax.lax.conv_general_dilated(
            y, p["depthwise"], (1, 1), "SAME", dimension_numbers=dn, feature_group_count=4
        )
        h = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, p["stack"])[0]
        per_head = jnp.einsum("bhd,hde->bhe", jnp.stack([h, -h], 1), p["heads"])
        q, k = jnp.split(p["qkv"], 2, axis=1)  # an output axis sliced
        return y, per_head, jnp.tanh(x @ q) @ k.T

    img = jnp.asarray(rng.normal(size=(2, 7, 7, 2)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    with pytest.warns(UserWarning) as record:
        h = jaxprune.hessians(fn, params, [(img, x)])
    messages = " | ".join(str(w.message) for w in record)
    assert "no Hessian for 'depthwise': a grouped convolution" in messages
    assert "no Hessian for 'qkv'" in messages
    assert h["depthwise"] is None and h["qkv"] is None
    patches = np_same_patches(img, 3, 2).reshape(-1, 18)  # rows of (kh, kw, c)
    np.testing.assert_allclose(h["conv"], np_hessian(patches), rtol=1e-5, atol=1e-4)
    hs, hx = [], np.asarray(x, np.float64)
    for layer in range(3):
        hs.append(np_hessian(hx))
        hx = np.tanh(hx @ np.asarray(params["stack"][layer], np.float64))
    np.testing.assert_allclose(h["stack"], np.stack(hs), rtol=1e-5, atol=1e-5)
    assert h["heads"].shape == (2, 4, 4)  # one per head; head 1 sees -h
    np.testing.assert_allclose(h["heads"][0], np_hessian(hx), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h["heads"][1], np_hessian(hx), rtol=1e-5, atol=1e-5)


def test_hessians_sharded_match_one_device_and_nnx_module_is_rejected():
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("x",))
    rng = np.random.default_rng(22)
    params = {"w": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)}
    fn = lambda p, x: x @ p["w"]
    xs = batches_of(rng, 2, (16, 8))
    ref = jaxprune.hessians(fn, jax.device_put(params, devices[0]), xs)
    sharded = {"w": jax.device_put(params["w"], NamedSharding(mesh, P(None, "x")))}
    got = jaxprune.hessians(
        fn, sharded, [jax.device_put(x, NamedSharding(mesh, P("x"))) for x in xs]
    )
    np.testing.assert_allclose(got["w"], ref["w"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ref["w"], np_hessian(*xs), rtol=1e-5, atol=1e-4)
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    for f in (jaxprune.hessians, jaxprune.activation_norms):
        with pytest.raises(ValueError, match=r"nnx.Module \(Linear\).*nnx.split"):
            f(lambda m, x: m(x), model, [jnp.ones((1, 3))])
