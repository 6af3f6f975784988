"""jaxprune._src.jaxpr: where parameters are used as matmul / conv weights; the interpreter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune._src import jaxpr as mg


def _by_name(graph):
    out = {}
    for u in graph.uses:
        out.setdefault(u.name, []).append(u)
    return out


def _sumsq_hook(use, act, weight):
    del weight
    keep = use.activation_batch_dims + use.activation_contracting_dims
    x = jnp.sum(jnp.square(act), axis=tuple(d for d in range(act.ndim) if d not in keep))
    return jnp.transpose(x, np.argsort(np.argsort(keep)))


def test_plain_mlp_uses():
    params = {"w1": jnp.ones((3, 5)), "b1": jnp.ones(5), "w2": jnp.ones((5, 2))}

    def fn(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"]

    graph = mg.trace(fn, params, jnp.ones((4, 3)))
    assert graph.param_names == ("b1", "w1", "w2")
    uses = _by_name(graph)
    assert set(uses) == {"w1", "w2"} and not graph.unresolved
    (u1,) = uses["w1"]
    assert (u1.contracting_axes, u1.output_axes, u1.scan_axes) == ((0,), (1,), ())
    assert (u1.weight_operand, u1.activation_operand) == (1, 0)
    assert u1.activation_shape == (4, 3) and u1.activation_contracting_dims == (1,)
    assert u1.weight_contracting_dims == (0,)
    assert graph.eqn(u1.path).primitive.name == "dot_general"
    (u2,) = uses["w2"]
    assert u2.activation_shape == (4, 5)
    assert graph.uses_of("w2") == (u2,) and graph.uses_of("b1") == ()


def test_linen_dense_densegeneral_attention():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(8)(x)
            x = nn.DenseGeneral((2, 4), name="dg")(x).reshape(x.shape)
            return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="mha")(x)

    model, x = Model(), jnp.ones((2, 5, 6))
    params = model.init(jax.random.key(0), x)
    graph = mg.trace(model.apply, params, x)
    uses = _by_name(graph)
    assert not graph.unresolved
    axes = {
        n.removeprefix("params/"): (u[0].contracting_axes, u[0].output_axes)
        for n, u in uses.items()
    }
    assert axes == {
        "Dense_0/kernel": ((0,), (1,)),
        "dg/kernel": ((0,), (1, 2)),
        "mha/query/kernel": ((0,), (1, 2)),
        "mha/key/kernel": ((0,), (1, 2)),
        "mha/value/kernel": ((0,), (1, 2)),
        "mha/out/kernel": ((0, 1), (2,)),
    }
    (out,) = uses["params/mha/out/kernel"]
    assert out.activation_shape == (2, 5, 2, 4) and out.activation_contracting_dims == (2, 3)


def test_nnx_conv_and_linear():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 4, (3, 3), strides=2, padding="SAME", rngs=rngs)
            self.lin = nnx.Linear(4 * 3 * 3, 3, rngs=rngs)

        def __call__(self, x):
            h = jax.nn.relu(self.conv(x))
            return self.lin(h.reshape(h.shape[0], -1))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    graph = mg.trace(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.ones((2, 6, 6, 2)))
    uses = _by_name(graph)
    assert set(uses) == {"conv/kernel", "lin/kernel"}  # unboxed names, no "/value"
    (c,) = uses["conv/kernel"]
    assert c.primitive == "conv_general_dilated"
    assert (c.contracting_axes, c.output_axes) == ((0, 1, 2), (3,))
    assert c.params["window_strides"] == (2, 2)
    assert c.activation_shape == (2, 6, 6, 2)
    (lin,) = uses["lin/kernel"]
    assert (lin.contracting_axes, lin.output_axes) == ((0,), (1,))


@pytest.mark.parametrize(
    "spec, w_shape, contracting, batch, output",
    [
        ("bi,oi->bo", (4, 3), (1,), (), (0,)),
        ("bsd,dhk->bshk", (3, 2, 5), (0,), (), (1, 2)),
        ("bshk,hkd->bsd", (2, 5, 3), (0, 1), (), (2,)),
        ("bhd,hde->bhe", (2, 3, 4), (1,), (0,), (2,)),
    ],
)
def test_einsum_axes(spec, w_shape, contracting, batch, output):
    x_spec = spec.split(",")[0]
    sizes = {"b": 2, "s": 7, "i": 3, "o": 4, "d": 3, "h": 2, "k": 5, "e": 4}
    x = jnp.ones([sizes[c] for c in x_spec])
    graph = mg.trace(lambda p, x: jnp.einsum(spec, x, p["w"]), {"w": jnp.ones(w_shape)}, x)
    (u,) = graph.uses
    assert (u.contracting_axes, u.batch_axes, u.output_axes) == (contracting, batch, output)


def test_nested_calls_are_followed():
    @jax.custom_vjp
    def vjp_matmul(x, w):
        return x @ w

    vjp_matmul.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))

    @jax.custom_jvp
    def jvp_matmul(x, w):
        return x @ w

    jvp_matmul.defjvp(lambda primals, tangents: (jvp_matmul(*primals), tangents[0] @ primals[1]))

    @jax.jit
    def inner(x, w):
        return jnp.tanh(x @ w.astype(jnp.bfloat16).astype(jnp.float32))

    def fn(p, x):
        h = jax.checkpoint(inner)(x, p["a"])
        h = jax.jit(jvp_matmul)(h, p["b"])
        return vjp_matmul(h, p["c"].T)

    rng = np.random.default_rng(3)
    params = {k: jnp.asarray(rng.normal(size=(3, 3)), jnp.float32) for k in ("a", "b", "c")}
    x = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    graph = mg.trace(fn, params, x)
    uses = _by_name(graph)
    assert set(uses) == {"a", "b", "c"} and not graph.unresolved
    assert len(uses["a"][0].path) == 5  # inside remat, inside jit
    assert uses["c"][0].contracting_axes == (1,)
    assert all(graph.eqn(u.path).primitive.name == "dot_general" for u in graph.uses)
    # The interpreter inlines the calls: same output, and each use sees its own input.
    out, stats = jax.jit(lambda p, x: mg.interpret(graph, _sumsq_hook, p, x))(params, x)
    np.testing.assert_allclose(out, fn(params, x), rtol=1e-5)
    f = {k: np.asarray(v, np.float64) for k, v in params.items()}
    a_bf16 = np.asarray(params["a"].astype(jnp.bfloat16), np.float64)  # as inner() rounds it
    h1 = np.tanh(np.asarray(x, np.float64) @ a_bf16)
    np.testing.assert_allclose(stats[uses["a"][0].key], (np.asarray(x) ** 2).sum(0), rtol=1e-5)
    np.testing.assert_allclose(stats[uses["b"][0].key], (h1**2).sum(0), rtol=1e-5)
    np.testing.assert_allclose(stats[uses["c"][0].key], ((h1 @ f["b"]) ** 2).sum(0), rtol=1e-5)


def test_bodies_not_followed_are_reported():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    spec = jax.sharding.PartitionSpec()

    def fn(p, x):
        mapped = jax.shard_map(lambda w, x: x @ w, mesh=mesh, in_specs=(spec, spec), out_specs=spec)
        return mapped(p["w"], x)

    graph = mg.trace(fn, {"w": jnp.ones((3, 2))}, jnp.ones((4, 3)))
    assert graph.uses == ()
    (u,) = graph.unresolved
    assert u.name == "w" and "not followed" in u.reason


def test_scan_cond_while():
    def fn(p, x):
        c, _ = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, p["stack"])
        c = jax.lax.cond(c.sum() > 0, lambda c: c @ p["v"], lambda c: -c, c)
        n = 2 + (x.sum() > 0).astype(jnp.int32)  # data-dependent trip count: a while loop
        return jax.lax.fori_loop(0, n, lambda i, c: c @ p["u"], c)

    params = {"stack": jnp.ones((5, 4, 4)), "v": jnp.ones((4, 4)), "u": jnp.ones((4, 4))}
    graph = mg.trace(fn, params, jnp.ones((2, 4)))
    uses = _by_name(graph)
    (s,) = uses["stack"]
    assert (s.scan_axes, s.contracting_axes, s.output_axes) == ((0,), (1,), (2,))
    assert s.view.scans[0][2] == 5 and s.weight_shape == (4, 4)
    (v,) = uses["v"]
    assert [r.kind for r in v.regions] == ["cond"]
    (u,) = uses["u"]
    assert [r.kind for r in u.regions] == ["while_body"]


def test_unresolved_uses_are_reported_not_guessed():
    def fn(p, x, idx):
        h = x @ (p["scaled"] * 2.0)  # arithmetic on the weight
        h = jnp.einsum("bi,bio->bo", h, p["experts"][idx])  # weight picked per example
        h = h @ p["w"][p["pick"].argmax()]  # dynamic index computed from params
        return h @ p["ok"]

    params = {
        "scaled": jnp.ones((3, 3)),
        "experts": jnp.ones((4, 3, 3)),
        "w": jnp.ones((2, 3, 3)),
        "pick": jnp.ones(2),
        "ok": jnp.ones((3, 2)),
    }
    graph = mg.trace(fn, params, jnp.ones((2, 3)), jnp.array([0, 3]))
    assert [u.name for u in graph.uses] == ["ok"]
    reasons = {u.name: u.reason for u in graph.unresolved}
    assert set(reasons) == {"scaled", "experts", "w", "pick"}
    assert "mul" in reasons["scaled"]
    assert "gather" in reasons["experts"] and "data-dependent" in reasons["experts"]


def test_reshapes_merges_splits_slices():
    def fn(p, x):
        h = x @ p["merged"].reshape(6, 2)  # (2, 3, 2): axes 0, 1 merged and contracted
        h = h @ p["split"].reshape(2, 1, 3)[:, 0]  # (2, 3) through a size-1 axis
        h = h @ p["qkv"][:, 6:]  # a static slice of a fused weight
        return h @ p["mixed"].reshape(3, 4)  # (4, 3) -> (3, 4) mixes axes

    params = {
        "merged": jnp.ones((2, 3, 2)),
        "split": jnp.ones((2, 3)),
        "qkv": jnp.ones((3, 9)),
        "mixed": jnp.ones((4, 3)),
    }
    graph = mg.trace(fn, params, jnp.ones((5, 6)))
    uses = {u.name: u for u in graph.uses}
    assert (uses["merged"].contracting_axes, uses["merged"].output_axes) == ((0, 1), (2,))
    assert (uses["split"].contracting_axes, uses["split"].output_axes) == ((0,), (1,))
    assert uses["qkv"].view.slices == ((1, 6, 9, 1),)
    assert uses["qkv"].contracting_axes == (0,)
    assert uses["mixed"].mixed_axes == (0, 1) and uses["mixed"].contracting_axes == ()
    # to_leaf_layout, by hand: merged contracting operand dim 0 (size 6) -> leaf (2, 3, 1).
    x = jnp.arange(6.0)
    got = uses["merged"].to_leaf_layout(x, (0,))
    np.testing.assert_array_equal(got, np.arange(6.0).reshape(2, 3, 1))
    # qkv: operand (3, 3) is slice 6: of leaf axis 1; an output-dim array lands in columns 6..8.
    got = uses["qkv"].to_leaf_layout(jnp.array([1.0, 2.0, 3.0]), (1,))
    np.testing.assert_array_equal(got, [[0, 0, 0, 0, 0, 0, 1, 2, 3]])
    # A contracting-dim array covers only the sliced columns of the uncovered output axis.
    got = uses["qkv"].to_leaf_layout(jnp.array([1.0, 2.0, 3.0]), (0,))
    np.testing.assert_array_equal(got, np.outer([1.0, 2.0, 3.0], [0] * 6 + [1] * 3))
    # mixed: a per-row statistic of the (3, 4) operand is spread over the flat (4, 3) leaf.
    got = uses["mixed"].to_leaf_layout(jnp.array([1.0, 2.0, 3.0]), (0,))
    np.testing.assert_array_equal(got, np.repeat([1.0, 2.0, 3.0], 4).reshape(4, 3))


def test_tied_embedding():
    def fn(p, tokens):
        h = jnp.tanh(p["emb"][tokens] @ p["w"])
        return h @ p["emb"].T

    params = {"emb": jnp.ones((10, 4)), "w": jnp.ones((4, 4))}
    graph = mg.trace(fn, params, jnp.array([[1, 2, 3]]))
    uses = _by_name(graph)
    assert not graph.unresolved
    (e,) = uses["emb"]
    assert (e.contracting_axes, e.output_axes) == ((1,), (0,))


def test_interpret_matches_fn_and_numpy_under_jit():
    def fn(p, x):
        c, ys = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), c.sum()), x, p["stack"])
        for _ in range(2):
            c = jax.lax.cond(c.sum() > -1e9, lambda c: c @ p["v"], lambda c: c, c)
        return c, ys

    rng = np.random.default_rng(0)
    params = {
        "stack": jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32),
        "v": jnp.asarray(rng.normal(size=(4, 4)) / 2, jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    graph = mg.trace(fn, params, x)
    (out, ys), stats = jax.jit(lambda p, x: mg.interpret(graph, _sumsq_hook, p, x))(params, x)
    ref_out, ref_ys = fn(params, x)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-5)
    # NumPy: the scan's input per layer, then the two cond uses of v.
    w, v = np.asarray(params["stack"], np.float64), np.asarray(params["v"], np.float64)
    c, per_layer = np.asarray(x, np.float64), []
    for layer in range(3):
        per_layer.append((c**2).sum(0))
        c = np.tanh(c @ w[layer])
    v_stats = []
    for _ in range(2):
        v_stats.append((c**2).sum(0))
        c = c @ v
    (s_use,) = graph.uses_of("stack")
    np.testing.assert_allclose(stats[s_use.key], np.stack(per_layer), rtol=1e-5)
    v_uses = graph.uses_of("v")
    assert len(v_uses) == 2
    for u, ref in zip(v_uses, v_stats, strict=True):
        np.testing.assert_allclose(stats[u.key], ref, rtol=1e-5)


def test_interpret_sums_loop_iterations_and_zero_for_untaken_branch():
    def fn(p, x):
        c = jax.lax.fori_loop(0, 3, lambda i, c: jnp.tanh(c @ p["w"]), x)  # static: a scan
        n = 2 + (x.sum() > 1e9).astype(jnp.int32)  # 2 iterations, as a while loop
        c = jax.lax.fori_loop(0, n, lambda i, c: jnp.tanh(c @ p["u"]), c)
        return jax.lax.cond(c.sum() > 1e9, lambda c: c @ p["never"], lambda c: c, c)

    rng = np.random.default_rng(1)
    params = {k: jnp.asarray(rng.normal(size=(3, 3)), jnp.float32) for k in ("w", "u", "never")}
    x = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    graph = mg.trace(fn, params, x)
    _, stats = jax.jit(lambda p, x: mg.interpret(graph, _sumsq_hook, p, x))(params, x)
    c = np.asarray(x, np.float64)
    ref = {"w": 0.0, "u": 0.0}
    for name, n in (("w", 3), ("u", 2)):
        for _ in range(n):
            ref[name] = ref[name] + (c**2).sum(0)
            c = np.tanh(c @ np.asarray(params[name], np.float64))
    for name in ("w", "u"):
        (u,) = graph.uses_of(name)
        np.testing.assert_allclose(stats[u.key], ref[name], rtol=1e-5)
    (u,) = graph.uses_of("never")
    np.testing.assert_array_equal(stats[u.key], np.zeros(3))


def test_walk_is_a_generic_visitor():
    class DependsOnX(mg.Visitor):
        """Which values depend on the input x; records every equation's primitive."""

        def __init__(self):
            self.seen = {}

        def equation(self, ctx, facts):
            self.seen[ctx.path] = ctx.eqn.primitive.name
            return [any(facts)] * len(ctx.eqn.outvars)

        def literal(self, value):
            return False

        def constant(self, value):
            return False

        def join(self, facts):
            return any(facts)

    def fn(w, x):
        c, _ = jax.lax.scan(lambda c, _: (jax.jit(jnp.tanh)(c @ w), None), x, None, length=2)
        return c, w * 2.0

    closed = jax.make_jaxpr(fn)(jnp.ones((2, 2)), jnp.ones((1, 2)))
    visitor = DependsOnX()
    out = mg.walk(closed, [False, True], visitor)
    assert out == [True, False]
    names = sorted(visitor.seen.values())
    assert "dot_general" in names and "tanh" in names  # inside scan and jit
    assert "scan" not in names and "jit" not in names  # structure handled by walk


def test_interpret_rejects_other_shapes():
    params = {"w": jnp.ones((3, 2))}
    graph = mg.trace(lambda p, x: x @ p["w"], params, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        mg.interpret(graph, _sumsq_hook, params, jnp.ones((5, 3)))
