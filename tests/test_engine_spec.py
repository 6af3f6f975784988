"""Spec tests of the pruning engine (issue 9, and the "output" scope of issue 11).

Written from the contract (scopes, distributions, sparsity types, ``prune`` and ``fixed_masks``)
with NumPy references in this file -- loops, sorts and float64 arithmetic that share no code
with jaxprune. The TF per-layer semantics come from tests/reference.py. The magnitude_pruning
side of the same contract is in tests/test_engine_spec_transform.py.
"""

from __future__ import annotations

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from tests.reference import ref_k, ref_weight_mask

HP = jaxprune.get_pruning_hparams()
IS_NONE = lambda x: x is None


# --- NumPy references --------------------------------------------------------------------------


def ref_values(w, scores=None):
    """The comparison values: |w| (NaN -> 0) or the user's scores (NaN -> 0), and the NaN mask.

    A NaN weight is never kept when the score is |w|."""
    w = np.asarray(w).astype(np.float32)
    a = np.abs(w) if scores is None else np.asarray(scores).astype(np.float32)
    a = np.where(np.isnan(a), np.float32(0), a).astype(np.float32)
    never = np.isnan(w) if scores is None else np.zeros(w.shape, bool)
    return a, never


def ref_kth_largest(values, k):
    return np.sort(np.asarray(values).ravel())[::-1][k - 1]


def ref_layer(values, s):
    """Elementwise per weight: keep score >= the k-th largest score."""
    return values >= ref_kth_largest(values, ref_k(values.size, s))


def ref_global(values_list, s):
    """One threshold over the concatenation of every pooled weight's scores."""
    if not values_list:
        return []
    flat = np.concatenate([v.ravel() for v in values_list])
    thr = ref_kth_largest(flat, ref_k(flat.size, s))
    return [v >= thr for v in values_list]


def ref_erk_targets(shapes, s):
    """ERK: density_l = eps * sum(shape_l) / prod(shape_l) with the dense-capping loop (float64)."""
    n = [math.prod(sh) for sh in shapes]
    raw = [sum(sh) / math.prod(sh) for sh in shapes]
    dense: set[int] = set()
    eps = 0.0
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        budget = (1.0 - s) * sum(n) - sum(n[i] for i in dense)
        denom = sum(raw[i] * n[i] for i in free)
        eps = budget / denom if denom > 0 else 0.0
        over = {i for i in free if eps * raw[i] > 1.0}
        if not over:
            break
        dense |= over
    density = [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
    return [1.0 - d for d in density]


def ref_nm(values, n, m, axis, keep=None):
    """N:M along ``axis``: each group of m consecutive entries keeps its ``keep`` (default n)
    largest scores; ties go to the lower index."""
    keep = n if keep is None else keep
    v = np.moveaxis(values, axis, -1)
    groups = v.reshape(-1, m)
    order = np.argsort(-groups.astype(np.float64), axis=1, kind="stable")
    mask = np.zeros(groups.shape, bool)
    rows = np.arange(groups.shape[0])[:, None]
    mask[rows, order[:, :keep]] = True
    return np.moveaxis(mask.reshape(v.shape), -1, axis)


def ref_channel_pruned_count(c, s):
    pruned = np.round(np.float32(c) * np.float32(s))  # round half to even
    return int(min(max(pruned, 0), c - 1))


def ref_channel(values, s, axis):
    """Channels along ``axis`` scored by the L2 norm of their scores; prune the
    round(C*s) lowest (clamped to [0, C-1]); on ties the higher index is pruned."""
    v = np.moveaxis(values, axis, 0).astype(np.float64)
    c = v.shape[0]
    norms = np.sqrt((v.reshape(c, -1) ** 2).sum(axis=1))
    order = sorted(range(c), key=lambda i: (norms[i], -i))  # pruned first
    keep = np.ones(c, bool)
    keep[order[: ref_channel_pruned_count(c, s)]] = False
    shape = [1] * values.ndim
    shape[axis] = c
    return np.broadcast_to(keep.reshape(shape), values.shape).copy()


def ref_output(values, s):
    """Every slice along the last axis keeps its k = num_kept(n, s) largest (ties kept)."""
    v = values.reshape(-1, values.shape[-1])
    k = ref_k(v.shape[0], s)
    thr = np.sort(v, axis=0)[::-1][k - 1]
    return (v >= thr[None, :]).reshape(values.shape)


def ref_prune_masks(params, kwargs, s=None):
    """{name: mask} that prune(params, HP.replace(**kwargs), sparsity=s) must give, for the
    default params filter and no weight_sparsity_map (block_dims_map entries: exact names)."""
    named = {
        jaxprune.path_name(path): np.asarray(x).astype(np.float32)
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if jnp.issubdtype(np.asarray(x).dtype, jnp.floating) and np.ndim(x) >= 2
    }
    s = kwargs.get("target_sparsity", 0.5) if s is None else s
    stype = kwargs.get("sparsity_type", "unstructured")
    scope = kwargs.get("pruning_scope", "layer")
    axis = kwargs.get("sparsity_axis")
    values = {k: ref_values(w) for k, w in named.items()}
    if ":" in stype:
        n, m = (int(x) for x in stype.split(":"))
        return {k: ref_nm(v, n, m, -2 if axis is None else axis) for k, (v, _) in values.items()}
    if stype == "channel":
        return {k: ref_channel(v, s, -1 if axis is None else axis) for k, (v, _) in values.items()}
    if scope == "global":
        masks = ref_global([v for v, _ in values.values()], s)
        return {k: m & ~values[k][1] for k, m in zip(values, masks, strict=True)}
    if kwargs.get("sparsity_distribution") == "erk":
        targets = ref_erk_targets([w.shape for w in named.values()], s)
        targets = dict(zip(named, targets, strict=True))
    else:
        targets = dict.fromkeys(named, s)
    if scope == "output":
        return {k: ref_output(v, targets[k]) & ~never for k, (v, never) in values.items()}
    blocks = {}
    for entry in kwargs.get("block_dims_map", ()):
        name, dims = entry.rsplit(":", 1)
        blocks[name] = tuple(int(d) for d in dims.split("x"))
    return {
        k: ref_weight_mask(w, targets[k], block=blocks.get(k, (1, 1)))[1] for k, w in named.items()
    }


def test_references_on_hand_worked_examples():
    """The references themselves, on numbers worked out by hand."""
    # N:M (2:4 along the last axis): ties to the lower index.
    v = np.array([[3.0, 1.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(ref_nm(v, 2, 4, -1), [[1, 0, 1, 0, 1, 1, 0, 0]])
    # Channel: norms [5, 0, 5, 1]; prune round(4 * 0.5) = 2: channel 1, then 3.
    w = np.array([[3.0, 0.0, 4.0, 1.0], [4.0, 0.0, 3.0, 0.0]], np.float32)
    np.testing.assert_array_equal(ref_channel(w, 0.5, -1)[0], [1, 0, 1, 0])
    # Equal norms: the higher index is pruned first.
    ones = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(ref_channel(ones, 0.5, -1)[0], [1, 1, 0, 0])
    # round half to even: 4 * 0.375 = 1.5 -> 2; 4 * 0.125 = 0.5 -> 0; never all channels.
    assert ref_channel_pruned_count(4, 0.375) == 2
    assert ref_channel_pruned_count(4, 0.125) == 0
    assert ref_channel_pruned_count(4, 0.99) == 3
    # Global: 8 values at 50 % keep the 4 largest wherever they are.
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[5.0, 6.0], [7.0, 0.5]])
    ma, mb = ref_global([a, b], 0.5)
    assert ma.tolist() == [[False, False], [False, True]]
    assert mb.tolist() == [[True, True], [True, False]]
    # ERK: shapes (10, 10) and (100, 100) at 90 %: densities eps*0.2 and eps*0.02 with
    # eps*(0.2*100 + 0.02*10000) = 0.1*10100 -> eps = 1010/220.
    t = ref_erk_targets([(10, 10), (100, 100)], 0.9)
    np.testing.assert_allclose(t, [1 - 0.2 * 1010 / 220, 1 - 0.02 * 1010 / 220])
    # Dense capping: (2, 2) would get density > 1, so it is dense and the other is rescaled.
    t = ref_erk_targets([(2, 2), (50, 50)], 0.5)
    assert t[0] == 0.0 and t[1] == pytest.approx(1 - (0.5 * 2504 - 4) / 2500)
    # Output scope: each column on its own.
    o = np.array([[1.0, 9.0], [2.0, 8.0], [3.0, 7.0], [4.0, 6.0]], np.float32)
    np.testing.assert_array_equal(ref_output(o, 0.5), [[0, 1], [0, 1], [1, 0], [1, 0]])


# --- helpers -----------------------------------------------------------------------------------


def _values(rng, shape, ties):
    if ties:  # small integers: many exact ties, exact sums of squares
        return rng.integers(-4, 5, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _nm_hp(nm, **kw):
    n, m = (int(x) for x in nm.split(":"))
    return HP.replace(sparsity_type=nm, target_sparsity=(m - n) / m, **kw)


def _flat(tree):
    return jax.tree.leaves(tree, is_leaf=IS_NONE)


def _named(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=IS_NONE)[0]
    return {jaxprune.path_name(p): x for p, x in flat}


def _check_result(params, pruned, masks, expected):
    """masks/pruned_params against ``expected`` ({name: bool mask} for the pruned leaves)."""
    assert jax.tree.structure(masks, is_leaf=IS_NONE) == jax.tree.structure(params)
    assert jax.tree.structure(pruned) == jax.tree.structure(params)
    p, m, q = _named(params), _named(masks), _named(pruned)
    for name, w in p.items():
        w = np.asarray(w)
        if name not in expected:
            assert m[name] is None, name
            np.testing.assert_array_equal(np.asarray(q[name]), w)
            continue
        mask = np.asarray(m[name])
        assert mask.dtype == np.bool_ and mask.shape == w.shape, name
        np.testing.assert_array_equal(mask, expected[name], err_msg=name)
        out = np.asarray(q[name])
        assert out.dtype == w.dtype, name
        np.testing.assert_array_equal(out, np.where(mask, w, np.zeros((), w.dtype)), err_msg=name)


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_identical(a, b):
    la, ta = jax.tree.flatten(a, is_leaf=IS_NONE)
    lb, tb = jax.tree.flatten(b, is_leaf=IS_NONE)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert _bits_equal(x, y)


# --- hparams: the new fields ---------------------------------------------------------------------


def test_new_fields_defaults_are_tf():
    assert HP.pruning_scope == "layer"
    assert HP.sparsity_distribution == "uniform"
    assert HP.sparsity_type == "unstructured"
    assert HP.sparsity_axis is None
    assert jaxprune.PruningHParams() == HP


def test_new_fields_replace_dict_and_tf_string():
    hp = HP.parse("sparsity_type=2:4,pruning_scope=output,sparsity_axis=-1")
    assert (hp.sparsity_type, hp.pruning_scope, hp.sparsity_axis) == ("2:4", "output", -1)
    assert isinstance(hp.sparsity_axis, int)
    hp = HP.parse("sparsity_type=1:4,target_sparsity=0.75")
    assert hp.sparsity_type == "1:4" and hp.target_sparsity == 0.75
    hp = HP.parse("sparsity_distribution=erk,target_sparsity=0.8,pruning_scope=layer")
    assert hp.sparsity_distribution == "erk"
    hp = HP.parse("sparsity_type=channel,sparsity_axis=0")
    assert hp.sparsity_type == "channel" and hp.sparsity_axis == 0
    hp = HP.replace(pruning_scope="global", target_sparsity=0.9)
    assert hp.pruning_scope == "global"
    assert jaxprune.PruningHParams.from_dict(hp.to_dict()) == hp
    d = HP.replace(sparsity_type="channel", sparsity_axis=-2).to_dict()
    assert d["sparsity_type"] == "channel" and d["sparsity_axis"] == -2
    assert jaxprune.PruningHParams.from_dict(d).sparsity_axis == -2
    # N:M with a target that is not exactly representable: (3 - 1) / 3.
    assert _nm_hp("1:3").target_sparsity == 2 / 3


def test_parse_nm_with_global_is_a_combination_error_not_a_syntax_error():
    # The N:M value contains ':'; the string parses, and the combination is rejected (at
    # construction or, at the latest, when prune / init see the params).
    _assert_rejected(lambda: HP.parse("sparsity_type=2:4,pruning_scope=global"), ["global"])


@pytest.mark.parametrize("value", ["3:2", "0:4", "a:b", "2:4:8", "2:2", "4", "", "chanel", ":4"])
def test_bad_sparsity_type(value):
    with pytest.raises(ValueError, match="sparsity_type") as e:
        HP.replace(sparsity_type=value)
    assert repr(value) in str(e.value) or value in str(e.value)
    if value and "," not in value:
        with pytest.raises(ValueError, match="sparsity_type"):
            HP.parse(f"sparsity_type={value}")


@pytest.mark.parametrize(
    "field, value",
    [
        ("pruning_scope", "model"),
        ("pruning_scope", "glob"),
        ("pruning_scope", ""),
        ("sparsity_distribution", "erdos"),
        ("sparsity_distribution", "uniformly"),
        ("sparsity_distribution", ""),
        ("sparsity_axis", "x"),
        ("sparsity_axis", 1.5),
    ],
)
def test_bad_scope_distribution_axis(field, value):
    with pytest.raises(ValueError, match=field):
        HP.replace(**{field: value})


# --- incompatible combinations: ValueError before tracing, naming field/value/weight ------------

_KERNEL = {"dense": {"kernel": np.ones((8, 8), np.float32), "bias": np.ones(8, np.float32)}}


def _has_words(error, words):
    for word in words:
        assert word in str(error), (word, str(error))


def _assert_rejected(make_hp, words, params=None, path=None):
    """``make_hp()`` raises a ValueError naming ``words``; or, if the combination can only be
    seen with the params, prune and magnitude_pruning's init both do (also naming ``path``)."""
    params = _KERNEL if params is None else params
    try:
        hp = make_hp()
    except ValueError as e:
        _has_words(e, words)
        return
    calls = (
        lambda: jaxprune.prune(params, hp),
        lambda: jaxprune.magnitude_pruning(hp).init(params),
        lambda: jax.jit(lambda p: jaxprune.prune(p, hp))(params),
    )
    for call in calls:
        with pytest.raises(ValueError) as e:
            call()
        _has_words(e.value, words + ([path] if path else []))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"sparsity_type": "2:4", "block_height": 2, "block_width": 2}, ["block"]),
        ({"sparsity_type": "2:4", "pruning_scope": "global"}, ["global"]),
        ({"sparsity_type": "2:4", "sparsity_distribution": "erk"}, ["erk"]),
        ({"sparsity_type": "2:4", "weight_sparsity_map": ("dense:0.5",)}, ["weight_sparsity_map"]),
        ({"sparsity_type": "2:4", "threshold_method": "histogram"}, ["histogram"]),
        ({"sparsity_type": "channel", "pruning_scope": "global"}, ["global", "channel"]),
        ({"sparsity_type": "channel", "pruning_scope": "output"}, ["output", "channel"]),
        ({"sparsity_type": "channel", "block_height": 2}, ["block", "channel"]),
        ({"sparsity_type": "channel", "threshold_method": "histogram"}, ["histogram", "channel"]),
        ({"pruning_scope": "global", "sparsity_distribution": "erk"}, ["global", "erk"]),
        ({"pruning_scope": "global", "threshold_method": "histogram"}, ["global", "histogram"]),
        ({"pruning_scope": "global", "block_width": 4}, ["global", "block"]),
    ],
)
def test_incompatible_combinations(kwargs, words):
    _assert_rejected(lambda: HP.replace(**kwargs), words)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity_type": "2:4", "target_sparsity": 0.6},
        {"sparsity_type": "1:4", "target_sparsity": 0.5},
        {"sparsity_type": "2:4", "target_sparsity": 0.51},
    ],
)
def test_nm_target_mismatch_at_construction(kwargs):
    with pytest.raises(ValueError, match="target_sparsity") as e:
        HP.replace(**kwargs)
    _has_words(e.value, [kwargs["sparsity_type"]])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity_type": "2:4", "block_dims_map": ("dense/kernel:2x2",)},
        {"sparsity_type": "channel", "block_dims_map": ("dense/kernel:2x2",)},
        {"pruning_scope": "global", "block_dims_map": ("dense/kernel:1x4",)},
    ],
    ids=["nm", "channel", "global"],
)
def test_blocks_on_one_weight_are_rejected_naming_the_weight(kwargs):
    _assert_rejected(lambda: HP.replace(**kwargs), ["block"], path="dense/kernel")


@pytest.mark.parametrize(
    "shape, kwargs, words",
    [
        ((6, 8), {"sparsity_type": "2:4"}, ["axis", "6"]),
        ((8, 6), {"sparsity_type": "2:4", "sparsity_axis": -1}, ["axis", "6"]),
        ((3, 3, 6, 8), {"sparsity_type": "1:4", "target_sparsity": 0.75}, ["axis", "6"]),
        ((8, 8), {"sparsity_type": "2:4", "sparsity_axis": 2}, ["axis"]),
        ((8, 8), {"sparsity_type": "channel", "sparsity_axis": -3}, ["axis"]),
    ],
    ids=["nm_rows", "nm_cols", "nm_conv", "nm_out_of_range", "channel_out_of_range"],
)
def test_axis_errors_name_weight_axis_and_length(shape, kwargs, words):
    hp = HP.replace(**kwargs)  # valid hparams: only this weight's shape is wrong
    params = {"dense": {"kernel": np.ones(shape, np.float32)}}
    _assert_rejected(lambda: hp, words, params=params, path="dense/kernel")


def _raises_naming(fn, words):
    with pytest.raises(ValueError) as e:
        fn()
    _has_words(e.value, words)


def test_prune_sparsity_argument_errors():
    hp = HP.replace(sparsity_type="2:4")
    _raises_naming(lambda: jaxprune.prune(_KERNEL, hp, sparsity=0.6), ["sparsity", "0.6"])
    jaxprune.prune(_KERNEL, hp, sparsity=0.5)  # equal to (M-N)/M: fine
    for bad in (-0.1, 1.5, "high"):
        _raises_naming(lambda bad=bad: jaxprune.prune(_KERNEL, sparsity=bad), ["sparsity"])


def test_prune_scores_of_the_wrong_shape_name_the_weight():
    scores = {"dense": {"kernel": np.ones((8, 4), np.float32), "bias": None}}
    _raises_naming(lambda: jaxprune.prune(_KERNEL, scores=scores), ["scores", "dense/kernel"])


# --- prune against the references (hypothesis) ---------------------------------------------------

_SPARSITIES = st.one_of(
    st.sampled_from([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.9, 0.95]),
    st.floats(0.0625, 0.96875, width=32),
)


@st.composite
def _shape(draw):
    if draw(st.booleans()):
        return (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    return (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 5)),
        draw(st.integers(1, 5)),
    )


@st.composite
def _model(draw, min_weights=1, max_weights=3):
    """{"w<i>": {"kernel": float32, "bias": 1-D}} with seeded values; some user scores."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ties = draw(st.booleans())
    count = draw(st.integers(min_weights, max_weights))
    params, scores = {}, {}
    for i in range(count):
        sh = draw(_shape())
        params[f"w{i}"] = {"kernel": _values(rng, sh, ties), "bias": _values(rng, (2,), ties)}
        user = draw(st.booleans())
        scores[f"w{i}"] = {
            "kernel": np.abs(_values(rng, sh, ties)) if user else None,
            "bias": None,
        }
    with_scores = draw(st.booleans())
    return params, (scores if with_scores else None)


def _score_of(scores, i):
    return None if scores is None else scores[f"w{i}"]["kernel"]


@settings(max_examples=6)
@given(model=_model(max_weights=2), s=_SPARSITIES, blocks=st.booleans())
def test_prune_layer_scope_is_tf(model, s, blocks):
    params, scores = model
    hp = HP
    if blocks:  # TF blocks on w0 (scored by |w|; user scores with blocks are not in the contract)
        hp = HP.replace(block_dims_map=("w0/kernel:2x3",))
        if scores is not None:
            scores["w0"]["kernel"] = None
    pruned, masks = jaxprune.prune(params, hp, sparsity=s, scores=scores)
    expected = {}
    for i, name in enumerate(params):
        w = params[name]["kernel"]
        user = _score_of(scores, i)
        if user is None:
            block = (2, 3) if blocks and i == 0 else (1, 1)
            expected[f"{name}/kernel"] = ref_weight_mask(w, s, block=block)[1]
        else:
            expected[f"{name}/kernel"] = ref_layer(ref_values(w, user)[0], s)
    _check_result(params, pruned, masks, expected)


@settings(max_examples=6)
@given(model=_model(), s=_SPARSITIES, mapped=st.sampled_from([None, 0.0, 0.3, 0.8]))
def test_prune_global_scope(model, s, mapped):
    params, scores = model
    hp = HP.replace(pruning_scope="global")
    if mapped is not None:
        hp = hp.replace(weight_sparsity_map=(f"w0/kernel:{mapped}",))
    pruned, masks = jaxprune.prune(params, hp, sparsity=s, scores=scores)
    values = [ref_values(params[n]["kernel"], _score_of(scores, i)) for i, n in enumerate(params)]
    pooled = [i for i in range(len(values)) if not (mapped is not None and i == 0)]
    expected = {}
    for i, m in zip(pooled, ref_global([values[i][0] for i in pooled], s), strict=True):
        expected[f"w{i}/kernel"] = m & ~values[i][1]
    if mapped is not None:
        expected["w0/kernel"] = ref_layer(values[0][0], mapped) & ~values[0][1]
    _check_result(params, pruned, masks, expected)
    if mapped is None:  # the pool reaches the target (ties at the threshold are kept)
        total = sum(v[0].size for v in values)
        kept = sum(int(np.asarray(m).sum()) for m in _flat(masks) if m is not None)
        assert kept >= ref_k(total, s)


@settings(max_examples=6)
@given(
    model=_model(min_weights=2, max_weights=4),
    s=st.sampled_from([0.3, 0.5, 0.8, 0.9, 0.95, 0.99]),
    mapped=st.sampled_from([None, 0.0, 0.6]),
)
def test_prune_erk(model, s, mapped):
    params, scores = model
    hp = HP.replace(sparsity_distribution="erk", target_sparsity=0.5)
    if mapped is not None:
        hp = hp.replace(weight_sparsity_map=(f"w0/kernel:{mapped}",))
    pruned, masks = jaxprune.prune(params, hp, sparsity=s, scores=scores)
    names = list(params)
    scaled = [i for i in range(len(names)) if not (mapped is not None and i == 0)]
    erk = ref_erk_targets([params[names[i]]["kernel"].shape for i in scaled], s)
    targets = dict(zip(scaled, erk, strict=True))
    if mapped is not None:
        targets[0] = mapped
    expected = {}
    for i, name in enumerate(names):
        a, never = ref_values(params[name]["kernel"], _score_of(scores, i))
        expected[f"{name}/kernel"] = ref_layer(a, targets[i]) & ~never
    _check_result(params, pruned, masks, expected)
    # The ERK-scaled weights reach the overall target within one element per weight.
    ns = [params[names[i]]["kernel"].size for i in scaled]
    ks = [ref_k(n, targets[i]) for n, i in zip(ns, scaled, strict=True)]
    assert abs(sum(ks) - (1 - s) * sum(ns)) <= len(ns)


@settings(max_examples=12)
@given(
    data=st.data(),
    nm=st.sampled_from(["1:2", "2:4", "1:4", "3:4", "1:3", "4:8"]),
    ndim=st.sampled_from([2, 4]),
    ties=st.booleans(),
    user=st.booleans(),
    scope=st.sampled_from(["layer", "output"]),
)
def test_prune_n_m(data, nm, ndim, ties, user, scope):
    n, m = (int(x) for x in nm.split(":"))
    axis = data.draw(st.sampled_from([None, *range(-ndim, ndim)]), label="axis")
    a = -2 if axis is None else axis
    if a % ndim == ndim - 1:
        scope = "layer"  # groups along the output axis are not inside one output unit
    shape = [data.draw(st.integers(1, 3)) for _ in range(ndim)]
    shape[a] = m * data.draw(st.integers(1, 3), label="groups")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    params = {
        "k": _values(rng, tuple(shape), ties),
        "other": _values(rng, (m * 2, 3), ties),  # N:M along -2 is fine for axis None/-2
        "b": _values(rng, (5,), ties),
    }
    scores = {"k": np.abs(_values(rng, tuple(shape), ties)), "other": None, "b": None}
    hp = _nm_hp(nm, sparsity_axis=axis, pruning_scope=scope)
    flt = {"k": True, "other": axis in (None, -2, 0), "b": False}
    pruned, masks = jaxprune.prune(params, hp, scores=scores if user else None, params_filter=flt)
    expected = {"k": ref_nm(ref_values(params["k"], scores["k"] if user else None)[0], n, m, a)}
    if flt["other"]:
        expected["other"] = ref_nm(ref_values(params["other"])[0], n, m, a)
    _check_result(params, pruned, masks, expected)
    groups = np.moveaxis(np.asarray(masks["k"]), a, -1).reshape(-1, m)
    assert np.all(groups.sum(axis=1) == n)  # exactly N of every M


@settings(max_examples=12)
@given(
    data=st.data(),
    s=_SPARSITIES,
    ndim=st.sampled_from([2, 4]),
    ties=st.booleans(),
    user=st.booleans(),
)
def test_prune_channel(data, s, ndim, ties, user):
    axis = data.draw(st.sampled_from([None, *range(-ndim, ndim)]), label="axis")
    a = -1 if axis is None else axis
    shape = tuple(data.draw(st.integers(1, 5)) for _ in range(ndim))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    params = {"conv": {"kernel": _values(rng, shape, ties), "bias": _values(rng, (3,), ties)}}
    scores = {"conv": {"kernel": np.abs(_values(rng, shape, ties)), "bias": None}}
    hp = HP.replace(sparsity_type="channel", sparsity_axis=axis)
    pruned, masks = jaxprune.prune(params, hp, sparsity=s, scores=scores if user else None)
    values = ref_values(params["conv"]["kernel"], scores["conv"]["kernel"] if user else None)[0]
    _check_result(params, pruned, masks, {"conv/kernel": ref_channel(values, s, a)})
    mask = np.moveaxis(np.asarray(masks["conv"]["kernel"]), a, 0).reshape(shape[a], -1)
    assert np.all(mask.all(axis=1) | ~mask.any(axis=1))  # whole channels
    assert int((~mask.any(axis=1)).sum()) == ref_channel_pruned_count(shape[a], s)


@settings(max_examples=6)
@given(model=_model(max_weights=2), s=_SPARSITIES, mapped=st.sampled_from([None, 0.7]))
def test_prune_output_scope(model, s, mapped):
    params, scores = model
    hp = HP.replace(pruning_scope="output")
    if mapped is not None:
        hp = hp.replace(weight_sparsity_map=(f"w0/kernel:{mapped}",))
    pruned, masks = jaxprune.prune(params, hp, sparsity=s, scores=scores)
    expected = {}
    for i, name in enumerate(params):
        a, never = ref_values(params[name]["kernel"], _score_of(scores, i))
        target = mapped if (mapped is not None and i == 0) else s
        expected[f"{name}/kernel"] = ref_output(a, target) & ~never
    _check_result(params, pruned, masks, expected)


def test_channel_and_nm_ties_hand_worked():
    # Channel norms along -1: [1, 2, 1, 1]; prune round(4 * 0.5) = 2 of the three tied at 1:
    # the higher indices 3 and 2 go, channel 0 stays.
    w = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 2.0, 0.0, 1.0]], np.float32)
    _, masks = jaxprune.prune({"w": w}, HP.replace(sparsity_type="channel"))
    np.testing.assert_array_equal(masks["w"], np.broadcast_to([True, True, False, False], (2, 4)))
    # Along axis 0 of a conv kernel: 3 channels of equal norm, prune round(3 * 0.5) = 2.
    c = np.ones((3, 2, 2, 2), np.float32)
    hp = HP.replace(sparsity_type="channel", sparsity_axis=0)
    _, masks = jaxprune.prune({"c": c}, hp)
    np.testing.assert_array_equal(masks["c"].reshape(3, -1).all(axis=1), [True, False, False])
    # 2:4 along the input axis (-2): in each column, the two largest; ties to the lower index.
    k = np.array(
        [
            [5.0, 1.0],
            [5.0, 1.0],
            [5.0, -1.0],
            [0.0, 1.0],
            [0.0, 7.0],
            [-0.0, 0.0],
            [0.0, 0.0],
            [0.0, 0.0],
        ],
        np.float32,
    )
    _, masks = jaxprune.prune({"k": k}, HP.replace(sparsity_type="2:4"))
    np.testing.assert_array_equal(
        masks["k"],
        [[1, 1], [1, 1], [0, 0], [0, 0], [1, 1], [1, 1], [0, 0], [0, 0]],
    )


def test_output_scope_hand_worked():
    w = np.array([[1.0, -9.0, 2.0], [2.0, 8.0, 2.0], [-3.0, 7.0, 2.0], [4.0, -6.0, 1.0]])
    _, masks = jaxprune.prune({"w": w.astype(np.float32)}, HP.replace(pruning_scope="output"))
    # Columns keep 2 of 4 each; column 2 has a 3-way tie at the threshold: all kept.
    np.testing.assert_array_equal(masks["w"], [[0, 1, 1], [0, 1, 1], [1, 0, 1], [1, 0, 0]])


def test_nan_weights_are_never_kept():
    w = np.arange(1.0, 17.0, dtype=np.float32).reshape(4, 4)
    w[0, 0] = w[3, 3] = np.nan
    w[1, 1] = np.inf
    params = {"a": w, "b": np.arange(1.0, 17.0, dtype=np.float32).reshape(4, 4)}
    for hp in (
        HP.replace(pruning_scope="global"),
        HP.replace(pruning_scope="output"),
        HP.replace(sparsity_distribution="erk"),
        HP,
    ):
        pruned, masks = jaxprune.prune(params, hp, sparsity=0.1)
        m = np.asarray(masks["a"])
        assert not m[0, 0] and not m[3, 3] and m[1, 1]
        assert np.asarray(pruned["a"])[0, 0] == 0.0 and np.asarray(pruned["a"])[3, 3] == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"pruning_scope": "global"},
        {"pruning_scope": "output"},
        {"sparsity_type": "2:4"},
        {"sparsity_type": "1:4", "target_sparsity": 0.75, "sparsity_axis": -1},
    ],
    ids=["layer", "global", "output", "nm", "nm_last_axis"],
)
def test_prune_denormals_and_signed_zeros_are_exact(kwargs):
    """Tiny magnitudes (denormals, which a backend may flush) and -0.0 order exactly as in
    the NumPy reference."""
    rng = np.random.default_rng(3)
    pool = np.array(
        [0.0, -0.0, 1e-45, -1e-45, 3e-45, 1e-40, -2e-40, 1e-39, 1.1754944e-38, 1e-38, 2e-38, 1.0],
        np.float32,
    )
    params = {
        "a": rng.choice(pool, size=(8, 8)).astype(np.float32),
        "b": rng.choice(pool, size=(4, 12)).astype(np.float32),
    }
    pruned, masks = jaxprune.prune(params, HP.replace(**kwargs))
    _check_result(params, pruned, masks, ref_prune_masks(params, kwargs))


# --- prune: API properties -----------------------------------------------------------------------


def _mixed_params():
    rng = np.random.default_rng(0)
    return {
        "dense": {
            "kernel": rng.standard_normal((8, 12)).astype(np.float32),
            "bias": rng.standard_normal(12).astype(np.float32),
        },
        "conv": {"kernel": rng.standard_normal((3, 3, 4, 8)).astype(np.float32)},
        "emb": jnp.asarray(rng.standard_normal((16, 8)), jnp.bfloat16),
        "step": np.arange(6, dtype=np.int32).reshape(2, 3),
        "scale": np.float32(2.0),
    }


def test_prune_default_hparams_and_structure():
    params = _mixed_params()
    copies = jax.tree.map(lambda x: np.array(x, copy=True), params)
    pruned, masks = jaxprune.prune(params)  # hparams None: TF defaults, 50 %
    expected = {
        name: ref_weight_mask(np.asarray(params_leaf).astype(np.float32), 0.5)[1]
        for name, params_leaf in _named(params).items()
        if name in ("dense/kernel", "conv/kernel", "emb")
    }
    _check_result(params, pruned, masks, expected)
    assert masks["step"] is None and masks["scale"] is None and masks["dense"]["bias"] is None
    assert pruned["emb"].dtype == jnp.bfloat16
    # The user's arrays are not mutated.
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(copies), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_prune_params_filter_callable_and_pytree():
    params = _mixed_params()
    only_dense = lambda name, leaf: name.startswith("dense/")
    pruned, masks = jaxprune.prune(params, sparsity=0.75, params_filter=only_dense)
    w = params["dense"]["kernel"]
    _check_result(
        params,
        pruned,
        masks,
        {
            "dense/kernel": ref_weight_mask(w, 0.75)[1],
            "dense/bias": ref_weight_mask(params["dense"]["bias"], 0.75)[1],
        },
    )
    tree = jax.tree.map(lambda _: False, params)
    tree["conv"]["kernel"] = True
    pruned, masks = jaxprune.prune(params, sparsity=0.75, params_filter=tree)
    _check_result(
        params, pruned, masks, {"conv/kernel": ref_weight_mask(params["conv"]["kernel"], 0.75)[1]}
    )


def test_prune_scores_replace_magnitudes():
    # Scores that reverse the magnitude order keep the smallest weights.
    w = np.arange(1.0, 13.0, dtype=np.float32).reshape(3, 4)
    scores = {"w": (13.0 - w).astype(np.float32), "v": None}
    params = {"w": w, "v": w.copy()}
    pruned, masks = jaxprune.prune(params, sparsity=0.5, scores=scores)
    np.testing.assert_array_equal(masks["w"], w <= 6)
    np.testing.assert_array_equal(masks["v"], w >= 7)  # None scores: |w|
    np.testing.assert_array_equal(pruned["w"], np.where(w <= 6, w, 0))


def test_prune_map_overrides_sparsity_argument():
    w = np.arange(1.0, 101.0, dtype=np.float32).reshape(10, 10)
    hp = HP.parse("weight_sparsity_map=[a/kernel:0.9]")
    _, masks = jaxprune.prune({"a": {"kernel": w}, "b": {"kernel": w}}, hp, sparsity=0.3)
    assert int(np.asarray(masks["a"]["kernel"]).sum()) == 10
    assert int(np.asarray(masks["b"]["kernel"]).sum()) == 70


_JIT_HPS = {
    "layer": {},
    "global": {"pruning_scope": "global"},
    "erk": {"sparsity_distribution": "erk", "target_sparsity": 0.8},
    "nm": {"sparsity_type": "2:4"},
    "channel": {"sparsity_type": "channel"},
    "output": {"pruning_scope": "output", "target_sparsity": 0.7},
}


@pytest.mark.parametrize("label", list(_JIT_HPS))
def test_prune_under_jit_traces_once(label):
    kwargs = _JIT_HPS[label]
    hp = HP.replace(**kwargs)
    traces = []

    @jax.jit
    def f(params):
        traces.append(1)
        return jaxprune.prune(params, hp)

    for seed in range(3):
        rng = np.random.default_rng(seed)
        params = {
            "d": {"kernel": _values(rng, (8, 12), seed == 1), "bias": np.ones(12, np.float32)},
            "c": {"kernel": _values(rng, (3, 3, 4, 8), seed == 1)},
        }
        pruned, masks = f(params)
        _check_result(params, pruned, masks, ref_prune_masks(params, kwargs))
    assert len(traces) == 1 and f._cache_size() == 1
    if label == "nm":  # hparams and params_filter static through static_argnames
        g = jax.jit(jaxprune.prune, static_argnames=("hparams", "params_filter"))
        params = _mixed_params()
        pruned, masks = g(params, hparams=hp)
        _check_result(params, pruned, masks, ref_prune_masks(params, kwargs))


# --- 8 host devices ------------------------------------------------------------------------------


def _mesh():
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _spec(leaf):
    return {
        4: P(None, None, "data", "model"),
        2: P("data", "model"),
        1: P("model"),
    }[leaf.ndim]


def _gathered_sizes(compiled_text):
    """Element counts of the outputs of every all-gather in compiled HLO."""
    sizes = []
    for line in compiled_text.splitlines():
        m = re.search(r"= \(?[a-z0-9]+\[([0-9,]*)\][^=]*? all-gather(?:-start)?\(", line)
        if m:
            sizes.append(int(np.prod([int(d) for d in m.group(1).split(",") if d])))
    return sizes


_SHARD_HPS = {
    "layer": {"block_dims_map": ("d1/kernel:2x2",)},
    "global": {"pruning_scope": "global", "target_sparsity": 0.8},
    "nm": {"sparsity_type": "2:4"},
    "channel": {"sparsity_type": "channel", "target_sparsity": 0.6},
    "output": {"pruning_scope": "output", "target_sparsity": 0.7},
}


@pytest.mark.parametrize("label", list(_SHARD_HPS))
def test_prune_sharded(label):
    """On 8 devices: the masks of the NumPy reference (so bit-identical to one device, where the
    hypothesis tests check the same reference), sharded like the params, and no weight gathered
    onto one device (issue 9)."""
    assert jax.device_count() == 8
    kwargs = _SHARD_HPS[label]
    hp = HP.replace(**kwargs)
    rng = np.random.default_rng(7)
    host = {
        "a": {"kernel": _values(rng, (512, 1024), False), "bias": _values(rng, (32,), False)},
        "d1": {"kernel": _values(rng, (32, 8), True)},
        "c0": {"kernel": _values(rng, (3, 3, 8, 16), False)},
    }
    mesh = _mesh()
    sharded = jax.device_put(host, jax.tree.map(lambda x: NamedSharding(mesh, _spec(x)), host))
    compiled = jax.jit(lambda p: jaxprune.prune(p, hp)).lower(sharded).compile()
    sizes = _gathered_sizes(compiled.as_text())
    # Only small things may move (a sample, partial counts), never a weight.
    assert max(sizes, default=0) <= 512 * 1024 // 64, sizes
    results = [compiled(sharded)]
    if label in ("global", "nm"):
        results.append(jaxprune.prune(sharded, hp))  # eager
        single = jax.device_put(host, jax.devices()[0])
        _assert_identical(results[0], jax.jit(lambda p: jaxprune.prune(p, hp))(single))
    for pruned, masks in results:
        _check_result(host, pruned, masks, ref_prune_masks(host, kwargs))
        for p, m, q in zip(_flat(sharded), _flat(masks), _flat(pruned), strict=True):
            assert q.sharding.is_equivalent_to(p.sharding, p.ndim)
            if m is not None:
                assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)


# --- fixed_masks and apply_masks -----------------------------------------------------------------


def _mlp(key):
    k1, k2 = jax.random.split(key)
    return {
        "l1": {"kernel": jax.random.normal(k1, (8, 16)), "bias": jnp.ones(16)},
        "l2": {"kernel": jax.random.normal(k2, (16, 4)), "bias": jnp.ones(4)},
    }


def _mlp_loss(params, x):
    h = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"])
    return jnp.mean((h @ params["l2"]["kernel"] + params["l2"]["bias"]) ** 2)


def test_apply_masks_accepts_prune_masks():
    params = _mlp(jax.random.key(0))
    pruned, masks = jaxprune.prune(params, HP.replace(sparsity_type="2:4"))
    weird = jax.tree.map(lambda x: x.at[0].set(jnp.nan), params)
    out = jax.jit(jaxprune.apply_masks)(weird, masks)
    for name in ("l1", "l2"):
        m = np.asarray(masks[name]["kernel"])
        expected = np.where(m, np.asarray(weird[name]["kernel"]), 0.0)
        np.testing.assert_array_equal(out[name]["kernel"], expected)
        np.testing.assert_array_equal(out[name]["bias"], weird[name]["bias"])
    _assert_identical(jaxprune.apply_masks(params, masks), pruned)


def test_fixed_masks_separable_loss_matches_plain_adam_on_kept_entries():
    """With a loss whose gradient at each entry depends only on that entry, fine-tuning under
    fixed masks from the pruned params must follow plain adam exactly on the kept entries."""
    rng = np.random.default_rng(1)
    params = {
        "w": jnp.asarray(rng.standard_normal((8, 8)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(8), jnp.float32),
    }
    target = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
    loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2 * (1.0 + p[k] ** 2)) for k in p)
    pruned, masks = jaxprune.prune(params, HP.replace(target_sparsity=0.6))
    assert masks["b"] is None
    m = np.asarray(masks["w"])

    def run(tx, p, steps=6):
        # Eager: under jit, XLA may fuse adam's arithmetic differently in the two programs
        # (one-ulp differences); op by op, the same ops give the same bits.
        state = tx.init(p)

        def step(p, state):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            return optax.apply_updates(p, updates), state

        history = []
        for _ in range(steps):
            p, state = step(p, state)
            history.append(p)
        return history

    fixed = run(optax.chain(optax.adam(1e-1), jaxprune.fixed_masks(masks)), pruned)
    plain = run(optax.adam(1e-1), pruned)
    for pf, pp in zip(fixed, plain, strict=True):
        wf, wp = np.asarray(pf["w"]), np.asarray(pp["w"])
        assert np.all(wf[~m] == 0.0)
        assert np.array_equal(wf[m], wp[m])  # bit for bit
        np.testing.assert_array_equal(pf["b"], pp["b"])
    assert np.any(np.asarray(plain[-1]["w"])[~m] != 0.0)  # plain adam does move them


def test_fixed_masks_zeros_every_step_and_passes_updates_through():
    params = _mlp(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, 8))
    _, masks = jaxprune.prune(params, HP.replace(sparsity_type="channel", target_sparsity=0.5))
    inner = optax.adam(1e-2)
    tx = optax.chain(inner, jaxprune.fixed_masks(masks))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, state, inner_state):
        g = jax.grad(_mlp_loss)(p, x)
        updates, state = tx.update(g, state, p)
        plain, inner_state = inner.update(g, inner_state, p)
        return updates, state, plain, inner_state

    # Start from the dense params: the first step already zeroes the pruned weights.
    p, state, inner_state = params, tx.init(params), inner.init(params)
    for _ in range(20):
        updates, state, plain, inner_state = step(p, state, inner_state)
        new = optax.apply_updates(p, updates)
        for name in ("l1", "l2"):
            m = np.asarray(masks[name]["kernel"])
            w = np.asarray(new[name]["kernel"])
            assert np.all(w[~m] == 0.0)
            u = np.asarray(updates[name]["kernel"])
            assert np.array_equal(u[m], np.asarray(plain[name]["kernel"])[m])
            np.testing.assert_array_equal(updates[name]["bias"], plain[name]["bias"])
        p = new
    assert step._cache_size() == 1
    _assert_identical(state[0], inner_state)  # the inner optimizer's state is untouched


def test_fixed_masks_nan_updates_never_reach_pruned_weights():
    w = jnp.arange(1.0, 17.0).reshape(4, 4)
    params = {"w": w, "b": jnp.ones(4)}
    _, masks = jaxprune.prune(params, sparsity=0.5)
    tx = jaxprune.fixed_masks(masks)
    updates = {
        "w": jnp.full((4, 4), 0.5).at[0, 0].set(jnp.nan).at[0, 1].set(jnp.inf).at[3, 3].set(-1.0),
        "b": jnp.full(4, 0.25),
    }
    new_updates, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    new = np.asarray(optax.apply_updates(params, new_updates)["w"])
    m = np.asarray(masks["w"])
    assert not m[0, 0] and not m[0, 1] and m[3, 3]
    assert np.all(new[~m] == 0.0)  # exactly 0, NaN/Inf updates included
    np.testing.assert_array_equal(np.asarray(new_updates["w"])[m], np.asarray(updates["w"])[m])
    np.testing.assert_array_equal(new_updates["b"], updates["b"])


def test_fixed_masks_needs_params():
    params = {"w": jnp.ones((4, 4))}
    _, masks = jaxprune.prune(params)
    tx = optax.chain(optax.sgd(0.1), jaxprune.fixed_masks(masks))
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


def test_fixed_masks_is_gradient_transformation_extra_args():
    _, masks = jaxprune.prune({"w": jnp.ones((4, 4))})
    assert isinstance(jaxprune.fixed_masks(masks), optax.GradientTransformationExtraArgs)
