"""shrink on third-party model code, each library used by its own idioms.

flax linen and nnx (``nnx.MultiHeadAttention``, a model holding RNG state), equinox
(``eqx.partition`` / ``eqx.combine``, ``eqx.filter_jit``, ``eqx.nn.MLP`` / ``Linear`` /
``Conv2d`` under ``jax.vmap``), dm-haiku (``hk.transform``), a hand-written torch-style
attention (``x @ W.T + b``) and a gemma-style grouped-query transformer with RoPE and a gated
MLP (tests/gemma_style.py). For every architecture: the shrunk model equals the masked model
on fresh inputs of several shapes, parameter counts are counted by hand, and where the library
can rebuild the model with smaller widths, the small params run in the user's own model code.
"""

import inspect

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
from jaxprune._src import jaxpr
from jaxprune._src.shrink import analysis
from tests import gemma_style


def _masked(params, masks):
    return jax.tree.map(  # on the host: no compilation per leaf shape
        lambda x, m: x if m is None else jnp.asarray(np.where(m, x, 0.0).astype(x.dtype)),
        params,
        masks,
        is_leaf=lambda t: t is None,
    )


def _normal(rng, shape):
    return jnp.asarray(rng.normal(size=shape).astype(np.float32))


def _close(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _count(tree):
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- flax linen


class _LinenMLP(nn.Module):
    features: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for f in self.features[:-1]:
            x = nn.relu(nn.Dense(f)(x))
        return nn.Dense(self.features[-1])(x)


def test_linen_mlp_any_shape_and_narrower_model():
    rng = np.random.default_rng(0)
    model = _LinenMLP((8, 6, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4)))
    variables = jax.tree.map(lambda v: _normal(rng, v.shape), variables)
    k0 = np.ones((4, 8), bool)
    k0[:, [1, 2, 5]] = False  # three hidden units of layer 0 pruned (their biases stay)
    k1 = np.ones((8, 6), bool)
    k1[:, [0, 4]] = False
    masks = jax.tree.map(lambda _: None, variables)
    masks["params"]["Dense_0"]["kernel"] = jnp.asarray(k0)
    masks["params"]["Dense_1"]["kernel"] = jnp.asarray(k1)
    small, small_fn = jaxprune.shrink(
        model.apply, variables, jnp.ones((2, 4)), masks=masks, check=False
    )
    # The pruned units emit relu(b_j), a constant folded into the next Dense's bias.
    assert small_fn.shapes["params"]["Dense_0"]["kernel"] == (4, 5)
    assert small_fn.shapes["params"]["Dense_1"]["kernel"] == (5, 4)
    assert small_fn.shapes["params"]["Dense_2"]["kernel"] == (4, 3)
    assert small_fn.report.params_after == (4 * 5 + 5) + (5 * 4 + 4) + (4 * 3 + 3)
    assert small_fn.report.params_before == (4 * 8 + 8) + (8 * 6 + 6) + (6 * 3 + 3)
    narrow = jax.jit(_LinenMLP((5, 4, 3)).apply)  # the user's model with smaller widths
    apply, masked = jax.jit(model.apply), _masked(variables, masks)
    x = _normal(rng, (3, 4))
    _close(narrow(small, x), apply(masked, x))
    for shape in [(3, 4), (2, 5, 4)]:
        x = _normal(rng, shape)
        _close(small_fn(small, x), apply(masked, x))


# ----------------------------------------------------------------------------- flax nnx


class _NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(
            num_heads=4, in_features=8, qkv_features=16, decode=False, rngs=rngs
        )
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.up = nnx.Linear(8, 12, rngs=rngs)
        self.down = nnx.Linear(12, 8, rngs=rngs)

    def __call__(self, x):
        h = x + self.attn(x)
        return h + self.down(self.drop(nnx.relu(self.up(h))))


def test_nnx_multihead_attention_with_rng_state():
    rng = np.random.default_rng(1)
    model = _NnxBlock(nnx.Rngs(0))
    model.eval()
    _, state = nnx.split(model)
    masks = jax.tree.map(lambda _: None, state)
    out_mask = np.ones((4, 4, 8), bool)
    out_mask[1] = False  # head 1's output rows
    down_mask = np.ones((12, 8), bool)
    down_mask[::3] = False  # hidden units 0, 3, 6, 9
    masks["attn"]["out"]["kernel"] = nnx.Param(jnp.asarray(out_mask))
    masks["down"]["kernel"] = nnx.Param(jnp.asarray(down_mask))
    x = _normal(rng, (2, 5, 8))
    small, report = jaxprune.shrink_nnx(model, x, masks=masks)
    assert small.attn.query.kernel.shape == (8, 3, 4)
    assert small.attn.key.kernel.shape == (8, 3, 4)
    assert small.attn.value.kernel.shape == (8, 3, 4)
    assert small.attn.out.kernel.shape == (3, 4, 8)
    assert (small.attn.num_heads, small.attn.head_dim, small.attn.qkv_features) == (3, 4, 12)
    assert small.up.kernel.shape == (8, 8) and small.down.kernel.shape == (8, 8)
    # q, k, v: kernel 8*3*4 + bias 3*4; out: 3*4*8 + 8; up 8*8 + 8; down 8*8 + 8.
    assert report.params_after == 3 * (96 + 12) + (96 + 8) + (64 + 8) + (64 + 8) + 2
    masked_model = nnx.merge(*nnx.split(model))
    masked_model.attn.out.kernel[...] = jnp.where(out_mask, model.attn.out.kernel[...], 0.0)
    masked_model.down.kernel[...] = jnp.where(down_mask, model.down.kernel[...], 0.0)
    call = nnx.jit(lambda m, x: m(x))
    for shape in [(3, 4, 8), (1, 1, 8)]:
        x = _normal(rng, shape)
        _close(call(small, x), call(masked_model, x), 1e-5)


class _NnxGQA(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(
            num_heads=4, num_kv_heads=2, in_features=8, qkv_features=16, decode=False, rngs=rngs
        )

    def __call__(self, x):
        return self.attn(x)


@pytest.mark.skipif(
    "num_kv_heads" not in inspect.signature(nnx.MultiHeadAttention.__init__).parameters,
    reason="nnx.MultiHeadAttention has no grouped-query attention in this flax version",
)
def test_nnx_grouped_query_attention_by_kv_group():
    rng = np.random.default_rng(8)
    model = _NnxGQA(nnx.Rngs(0))
    # KV group 1 = query heads 2 and 3: their output rows.
    model.attn.out.kernel[...] = model.attn.out.kernel[...].at[2:4].set(0.0)
    small, report = jaxprune.shrink_nnx(model, _normal(rng, (2, 5, 8)))
    assert small.attn.query.kernel.shape == (8, 2, 4) and small.attn.key.kernel.shape == (8, 1, 4)
    assert small.attn.value.kernel.shape == (8, 1, 4) and small.attn.out.kernel.shape == (2, 4, 8)
    assert (small.attn.num_heads, small.attn.num_kv_heads) == (2, 1)
    # q: 8*2*4 + 2*4; k, v: 8*1*4 + 4 each; out: 2*4*8 + 8.
    assert report.params_after == (64 + 8) + 2 * (32 + 4) + (64 + 8)
    x = _normal(rng, (1, 3, 8))
    call = nnx.jit(lambda m, x: m(x))
    _close(call(small, x), call(model, x), 1e-5)


def test_nnx_module_passed_as_params_is_caught():
    model = _NnxBlock(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"params is an nnx.Module \(_NnxBlock\).*nnx.split"):
        jaxprune.shrink(lambda m, x: m(x), model, jnp.ones((1, 2, 8)))


# ----------------------------------------------------------------------------- equinox


def test_equinox_mlp_vmap_filter_jit_and_combine():
    rng = np.random.default_rng(2)
    mlp = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(mlp, eqx.is_array)

    @eqx.filter_jit
    def run(model, x):
        return jax.vmap(model)(x)

    def fn(p, x):
        return run(eqx.combine(p, static), x)

    # Hidden units 1, 4, 6 of layer 0: weight rows (eqx's (out, in) layout) pruned, biases
    # stay: relu(b_j) is folded into layers[1].bias through the vmap's transpose.
    m0 = np.ones((8, 4), bool)
    m0[[1, 4, 6]] = False
    masks = jax.tree.map(lambda _: None, params)
    masks = eqx.tree_at(
        lambda t: t.layers[0].weight, masks, jnp.asarray(m0), is_leaf=lambda t: t is None
    )
    small, small_fn = jaxprune.shrink(fn, params, jnp.ones((5, 4)), masks=masks, check=False)
    assert small.layers[0].weight.shape == (5, 4) and small.layers[0].bias.shape == (5,)
    assert small.layers[1].weight.shape == (8, 5)
    assert small_fn.report.params_after == (5 * 4 + 5) + (8 * 5 + 8) + (3 * 8 + 3)
    b0 = np.asarray(params.layers[0].bias)
    w1 = np.asarray(params.layers[1].weight, np.float64)
    fold = sum(max(b0[j], 0.0) * w1[:, j] for j in [1, 4, 6])
    _close(small.layers[1].bias, np.asarray(params.layers[1].bias) + fold)
    masked = _masked(params, masks)
    x = _normal(rng, (7, 4))
    _close(run(eqx.combine(small, static), x), fn(masked, x))  # the user's own module
    for shape in [(7, 4), (1, 4)]:
        x = _normal(rng, shape)
        _close(small_fn(small, x), fn(masked, x))


class _EqxCNN(eqx.Module):
    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.c1 = eqx.nn.Conv2d(3, 6, 3, key=k1)
        self.c2 = eqx.nn.Conv2d(6, 4, 3, key=k2)
        self.head = eqx.nn.Linear(4, 2, key=k3)

    def __call__(self, x):  # one image (C, H, W)
        h = jax.nn.relu(self.c2(jax.nn.relu(self.c1(x))))
        return self.head(jnp.mean(h, axis=(1, 2)))


def test_equinox_conv2d():
    rng = np.random.default_rng(3)
    cnn = _EqxCNN(jax.random.PRNGKey(1))
    params, static = eqx.partition(cnn, eqx.is_array)

    def fn(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    m1 = np.ones((6, 3, 3, 3), bool)
    m1[[0, 3]] = False  # filters 0 and 3 of c1 (their biases, shaped (6, 1, 1), stay)
    masks = jax.tree.map(lambda _: None, params)
    masks = eqx.tree_at(lambda t: t.c1.weight, masks, jnp.asarray(m1), is_leaf=lambda t: t is None)
    small, small_fn = jaxprune.shrink(fn, params, jnp.ones((2, 3, 7, 7)), masks=masks, check=False)
    assert small.c1.weight.shape == (4, 3, 3, 3) and small.c1.bias.shape == (4, 1, 1)
    assert small.c2.weight.shape == (4, 4, 3, 3)
    assert small_fn.report.params_after == (4 * 27 + 4) + (4 * 4 * 9 + 4) + (4 * 2 + 2)
    masked, jfn = _masked(params, masks), jax.jit(fn)
    x = _normal(rng, (2, 3, 7, 7))
    _close(jfn(small, x), jfn(masked, x), 1e-4)  # eqx.combine(small, static): the user's model
    for shape in [(2, 3, 7, 7), (1, 3, 9, 6)]:  # the example's and other batch / image sizes
        x = _normal(rng, shape)
        _close(small_fn(small, x), jfn(masked, x), 1e-4)


# ----------------------------------------------------------------------------- haiku


def test_haiku_mlp_and_narrower_model():
    rng = np.random.default_rng(4)

    def make(widths):
        return hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP(widths)(x)))

    model = make([8, 6, 3])
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4)))
    params = jax.tree.map(lambda v: _normal(rng, v.shape), params)
    masks = jax.tree.map(lambda _: None, params)
    w1 = np.ones((8, 6), bool)
    w1[[0, 2, 7]] = False  # rows of linear_1: hidden units 0, 2, 7 of layer 0 contribute 0
    masks["mlp/~/linear_1"]["w"] = jnp.asarray(w1)
    small, small_fn = jaxprune.shrink(
        model.apply, params, jnp.ones((2, 4)), masks=masks, check=False
    )
    assert small["mlp/~/linear_0"]["w"].shape == (4, 5)
    assert small["mlp/~/linear_1"]["w"].shape == (5, 6)
    assert small_fn.report.params_after == (4 * 5 + 5) + (5 * 6 + 6) + (6 * 3 + 3)
    narrow = jax.jit(make([5, 6, 3]).apply)
    apply, masked = jax.jit(model.apply), _masked(params, masks)
    x = _normal(rng, (3, 4))
    _close(narrow(small, x), apply(masked, x))
    for shape in [(3, 4), (1, 4)]:
        x = _normal(rng, shape)
        _close(small_fn(small, x), apply(masked, x))


# ----------------------------------------------------------------------------- hand-written


def _torch_attention(p, x, heads=4):
    """Torch-style multi-head attention and MLP: weights (out, in), ``x @ W.T + b``, the
    last token pooled (``h[:, -1]``) and the first example dropped (``h[1:]``)."""
    b, t, _ = x.shape
    q = (x @ p["wq"].T + p["bq"]).reshape(b, t, heads, -1)
    k = (x @ p["wk"].T + p["bk"]).reshape(b, t, heads, -1)
    v = (x @ p["wv"].T + p["bv"]).reshape(b, t, heads, -1)
    att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, -1)
    h = x + o @ p["wo"].T + p["bo"]
    u = jax.nn.gelu(h @ p["w1"].T + p["b1"])
    h = h + u @ p["w2"].T + p["b2"]
    return h[:, -1] @ p["head"].T, h[1:]


def test_hand_written_torch_style_attention_slices_and_heads():
    rng = np.random.default_rng(5)
    d, heads, hd, f = 8, 4, 3, 10
    shapes = {
        "wq": (heads * hd, d), "bq": (heads * hd,), "wk": (heads * hd, d),
        "bk": (heads * hd,), "wv": (heads * hd, d), "bv": (heads * hd,),
        "wo": (d, heads * hd), "bo": (d,), "w1": (f, d), "b1": (f,), "w2": (d, f),
        "b2": (d,), "head": (2, d),
    }  # fmt: skip
    params = {k: _normal(rng, s) for k, s in shapes.items()}
    masks = {k: None for k in params}
    wo = np.ones((d, heads * hd), bool)
    wo[:, hd : 2 * hd] = False  # head 1
    w1 = np.ones((f, d), bool)
    w1[[2, 5, 9]] = False  # hidden units 2, 5, 9: gelu(b1_j) folded into b2 through .T
    masks["wo"], masks["w1"] = jnp.asarray(wo), jnp.asarray(w1)
    small, small_fn = jaxprune.shrink(
        _torch_attention, params, jnp.ones((2, 5, d)), masks=masks, check=False
    )
    assert small["wq"].shape == small["wk"].shape == small["wv"].shape == (3 * hd, d)
    assert small["wo"].shape == (d, 3 * hd) and small["bq"].shape == (3 * hd,)
    assert small["w1"].shape == (7, d) and small["w2"].shape == (d, 7)
    assert (
        small_fn.report.params_after
        == 3 * (9 * 8 + 9) + (8 * 9 + 8) + (7 * 8 + 7) + (8 * 7 + 8) + 2 * 8
    )
    b1 = np.asarray(params["b1"], np.float64)
    gelu = np.asarray(jax.nn.gelu(jnp.asarray(b1)), np.float64)
    fold = sum(gelu[j] * np.asarray(params["w2"], np.float64)[:, j] for j in [2, 5, 9])
    _close(small["b2"], np.asarray(params["b2"]) + fold)
    masked = _masked(params, masks)
    x = _normal(rng, (3, 1, d))  # another batch size and sequence length
    reference = jax.jit(_torch_attention)(masked, x)
    for got, want in zip(small_fn(small, x), reference, strict=True):
        _close(got, want, 1e-4)
    # Under jit and vmap (vmapped over examples, each given a batch of 2).
    xs = _normal(rng, (3, 2, 4, d))
    got = jax.jit(jax.vmap(small_fn, in_axes=(None, 0)))(small, xs)
    want = jax.jit(jax.vmap(_torch_attention, in_axes=(None, 0)))(masked, xs)
    for g, w in zip(got, want, strict=True):
        _close(g, w, 1e-4)


# ----------------------------------------------------------------------------- gemma-style


def test_gemma_style_gqa_heads_kv_groups_and_mlp():
    rng = np.random.default_rng(6)
    model = gemma_style.Transformer(num_layers=1)  # 4 heads in 2 KV groups, head_dim 8
    tokens = jnp.zeros((2, 5), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), tokens)
    variables = jax.tree.map(lambda v: 0.3 * _normal(rng, v.shape), variables)
    masks = jax.tree.map(lambda _: None, variables)
    block = masks["params"]["blocks_0"]
    # Output rows of heads 0, 2, 3 (head n = kv_group * 2 + g): KV group 1 (heads 2, 3)
    # goes, and so does the first query head of every group (heads 0, 2); head 1 stays.
    o = np.ones((4, 8, 16), bool)
    o[[0, 2, 3]] = False
    # MLP units 0..5 by the up half of their gating columns (gate[..., 1, :] is 0), units 6
    # and 7 by the gate half (silu(0) = 0), and every third unit by its row of the down
    # projection: 13 of 24 go (0..7, 9, 12, 15, 18, 21).
    gating = np.ones((2, 16, 24), bool)
    gating[1, :, :6] = False
    gating[0, :, 6:8] = False
    linear = np.ones((24, 16), bool)
    linear[::3] = False
    block["attn"]["attn_vec_einsum"]["w"] = jnp.asarray(o)
    block["mlp"]["gating_einsum"] = jnp.asarray(gating)
    block["mlp"]["linear"] = jnp.asarray(linear)
    small, small_fn = jaxprune.shrink(model.apply, variables, tokens, masks=masks, check=False)
    s = small["params"]["blocks_0"]
    assert s["attn"]["q_einsum"]["w"].shape == (1, 16, 8)
    assert s["attn"]["kv_einsum"]["w"].shape == (2, 1, 16, 8)
    assert s["attn"]["attn_vec_einsum"]["w"].shape == (1, 8, 16)
    assert s["mlp"]["gating_einsum"].shape == (2, 16, 11)
    assert s["mlp"]["linear"].shape == (11, 16)
    masked = _masked(variables, masks)
    np.testing.assert_array_equal(
        s["attn"]["q_einsum"]["w"][0], masked["params"]["blocks_0"]["attn"]["q_einsum"]["w"][1]
    )
    # Embedding 32*16, three norms of 16; q, k and v of one head, o; the MLP.
    assert small_fn.report.params_after == (
        32 * 16 + 3 * 16 + 16 * 8 + 2 * 16 * 8 + 8 * 16 + 2 * 16 * 11 + 11 * 16
    )
    # The residual stream, head_dim (RoPE's frequencies) and the vocabulary stay whole.
    assert small["params"]["input_embedding"].shape == (32, 16)
    apply = jax.jit(model.apply)
    for shape in [(1, 1), (3, 7)]:
        toks = jnp.asarray(rng.integers(0, 32, size=shape), jnp.int32)
        _close(small_fn(small, toks), apply(masked, toks), 1e-4)


def test_gemma_style_channel_groups_for_structured_pruning():
    model = gemma_style.Transformer(num_layers=1)
    tokens = jnp.zeros((1, 3), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), tokens)  # shapes suffice
    graph = jaxpr.trace(model.apply, variables, tokens)
    groups = analysis.channel_groups_of(analysis.couple(graph))

    def short(m):  # "params/blocks_0/attn/q_einsum/w" -> "q_einsum"
        parts = m.name.split("/")
        return parts[-2] if parts[-1] == "w" else parts[-1]

    free = {
        tuple((short(m), m.axis, m.factor) for m in g.members): g.size
        for g in groups
        if g.blocked is None
    }
    assert free == {
        # KV heads: k and v along axis 1 of kv_einsum; q and o along their head axis, whose
        # factor 0 (of (kv_heads, group)) is the KV head.
        (("attn_vec_einsum", 0, 0), ("kv_einsum", 1, 0), ("q_einsum", 0, 0)): 2,
        # The query head within a KV group: factor 1 of q's and o's head axis.
        (("attn_vec_einsum", 0, 1), ("q_einsum", 0, 1)): 2,
        # The MLP's hidden units: both gates (axis 2) and the down projection (axis 0).
        (("gating_einsum", 2, 0), ("linear", 0, 0)): 24,
    }
    kv = next(g for g in groups if g.blocked is None and len(g.members) == 3)
    q = next(m for m in kv.members if short(m) == "q_einsum")
    assert q.factor_sizes == (2, 2) and q.unit == 2  # one KV group = 2 query heads
    assert ("params/blocks_0/attn/attn_vec_einsum/w", 0) in kv.consumers
    assert ("params/blocks_0/attn/q_einsum/w", 0) in kv.producers

    def group_of(name, axis):
        return next(g for g in groups if any(m.name == name and m.axis == axis for m in g.members))

    axes = analysis.weight_axes(graph)
    gating = axes["params/blocks_0/mlp/gating_einsum"]  # (2, D, F): D in, (2, F) out
    assert (gating.contracting, gating.output, gating.consistent) == ((1,), (0, 2), True)
    kv = axes["params/blocks_0/attn/kv_einsum/w"]  # (2, K, D, H)
    assert (kv.contracting, kv.output) == ((2,), (0, 1, 3))
    emb = axes["params/input_embedding"]  # gathered (not a matmul use) and tied for logits
    assert (emb.contracting, emb.output, emb.uses) == ((1,), (0,), 1)

    vocab = group_of("params/input_embedding", 0)
    assert vocab.reaches_output and vocab.blocked is not None
    resid = group_of("params/input_embedding", 1)  # summed by RMSNorm, not an output axis
    assert not resid.reaches_output and "reduced by" in resid.blocked
    coupling = analysis.couple(graph)
    assert analysis.reaches_output(coupling, "params/input_embedding", 0)
    assert not analysis.reaches_output(coupling, "params/blocks_0/mlp/linear", 0)


def test_weight_axes_of_equinox_layouts():
    mlp = eqx.nn.MLP(4, 3, 8, 1, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    graph = jaxpr.trace(lambda p, x: jax.vmap(eqx.combine(p, static))(x), params, jnp.ones((2, 4)))
    axes = analysis.weight_axes(graph)
    assert axes["layers/0/weight"].contracting == (1,) and axes["layers/0/weight"].output == (0,)
    coupling = analysis.couple(graph)
    assert analysis.reaches_output(coupling, "layers/1/weight", 0)  # the 3 outputs
    assert not analysis.reaches_output(coupling, "layers/1/weight", 1)  # the hidden units


# ----------------------------------------------------------------------------- masks


def test_masks_checked_per_leaf():
    params = {"w1": jnp.ones((6, 4)), "w2": jnp.ones((4, 2))}

    def fn(p, x):
        return jax.nn.relu(x @ p["w1"]) @ p["w2"]

    x = jnp.ones((1, 6))
    bad = [
        (
            jnp.ones((4,), bool),
            r"'w1' has shape \(4,\) and dtype bool; the parameter has shape \(6, 4\)",
        ),
        (jnp.ones((4, 6), bool), r"'w1' has shape \(4, 6\)"),
        (jnp.ones((6, 4), jnp.float32), r"'w1' has shape \(6, 4\) and dtype float32"),
    ]
    for mask, match in bad:
        with pytest.raises(ValueError, match=match):
            jaxprune.shrink(fn, params, x, masks={"w1": mask, "w2": None})
    with pytest.raises(ValueError, match="masks must have the structure of params"):
        jaxprune.shrink(fn, params, x, masks={"w1": None})
    with pytest.raises(ValueError, match=r"params leaf 'act' is a custom_jvp, not an array"):
        jaxprune.shrink(lambda p, x: p["act"](x @ p["w1"]), params | {"act": jax.nn.relu}, x)
