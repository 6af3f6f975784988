"""weight_mask and its parts: TF's published test numbers, a NumPy reference, properties."""

import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune
from tests.reference import ref_histogram_bins, ref_weight_mask

HP = jaxprune.get_pruning_hparams()

AVG_WEIGHTS = [
    [0.1, 0.1, 0.2, 0.2],
    [0.1, 0.1, 0.2, 0.2],
    [0.3, 0.3, 0.4, 0.4],
    [0.3, 0.3, 0.4, 0.4],
]
MAX_WEIGHTS = [
    [0.1, 0.0, 0.2, 0.0],
    [0.0, -0.1, 0.0, -0.2],
    [0.3, 0.0, 0.4, 0.0],
    [0.0, -0.3, 0.0, -0.4],
]
EXPECTED_2X2 = [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


@functools.cache
def _jitted_mask(hparams, name):
    return jax.jit(lambda w, s, t: jaxprune.weight_mask(w, s, t, hparams=hparams, name=name))


def _mask(weights, sparsity, hparams, name=None, threshold=0.0):
    fn = _jitted_mask(hparams, name)  # one compile per (hparams, name, shape)
    return fn(jnp.asarray(weights, jnp.float32), jnp.float32(sparsity), jnp.float32(threshold))


# --- TF's published tests (pruning_test.py / pruning_utils_test.py) ----------------------------


@pytest.mark.parametrize("sparsity, nonzeros", [(0.95, 5), (0.5, 50)])
def test_tf_update_mask_linspace(sparsity, nonzeros):
    _, mask = _mask(jnp.linspace(1.0, 100.0, 100), sparsity, HP)
    assert int(mask.sum()) == nonzeros
    # The kept weights are the largest ones.
    assert bool(mask[-nonzeros:].all()) and not bool(mask[:-nonzeros].any())


@pytest.mark.parametrize(
    "pooling, weights", [("AVG", AVG_WEIGHTS), ("MAX", MAX_WEIGHTS)], ids=["avg", "max"]
)
@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4)], ids=["2d", "3d"])
def test_tf_block_masking_2x2(pooling, weights, shape):
    hp = HP.replace(block_height=2, block_width=2, block_pooling_function=pooling)
    _, mask = _mask(np.reshape(weights, shape), 0.5, hp)
    assert mask.shape == shape and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask, np.reshape(EXPECTED_2X2, shape).astype(bool))


def test_tf_block_masking_whole_rows():
    avg = [[0.1] * 4, [0.2] * 4, [0.3] * 4, [0.3, 0.3, 0.4, 0.4]]
    mx = [[0.1, 0, 0.1, 0], [0, 0.1, 0, 0.2], [0.3, 0, 0.3, 0], [0, -0.3, 0, 0.4]]
    expected = np.array([[0] * 4, [0] * 4, [1] * 4, [1] * 4], bool)
    for pooling, weights in (("AVG", avg), ("MAX", mx)):
        hp = HP.replace(block_height=1, block_width=-1, block_pooling_function=pooling)
        _, mask = _mask(weights, 0.5, hp)
        np.testing.assert_array_equal(mask, expected, err_msg=pooling)


def test_tf_per_layer_block_dims_map():
    hp = HP.parse("block_dims_map=[layer1/weights:1x1,layer2/weights:1x2]")
    threshold, mask = _mask([[-0.1, 0.1], [-0.2, 0.2]], 0.5, hp, name="layer1/weights")
    np.testing.assert_array_equal(mask, [[0, 0], [1, 1]])
    assert float(threshold) == pytest.approx(0.2)
    _, mask = _mask([[0.1, 0.1, 0.3, 0.3], [0.2, 0.2, 0.4, 0.4]], 0.5, hp, name="layer2/weights")
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 1, 1]])


def test_tf_histogram_cdf():
    values = jnp.abs(jnp.array([-1.0, 0, 1, 1.5, 2, 3, 4, 5, 10, 100]))
    cdf = jax.jit(lambda v: jaxprune.histogram_cdf(v, (0.0, 5.0), 5))(values)
    np.testing.assert_allclose(cdf, [0.1, 0.4, 0.5, 0.6, 1.0], rtol=1e-6)


# --- hand-worked cases ------------------------------------------------------------------------


def test_k_rounds_half_to_even_in_float32():
    # n * (1 - s) = 2.5 -> 2 and 3.5 -> 4 (banker's rounding, like tf.round).
    assert int(jaxprune.num_kept(10, 0.75)) == 2
    assert int(jaxprune.num_kept(2, 0.25)) == 2  # 1.5 -> 2
    assert int(jaxprune.num_kept(4, 0.375)) == 2  # 2.5 -> 2
    assert int(jaxprune.num_kept(4, 0.125)) == 4  # 3.5 -> 4


@pytest.mark.parametrize("sparsity", [0.999, 0.9999999])
def test_sparsity_near_one_keeps_one(sparsity):
    # TF r1.15 crashes on k = 0 (tfmot #215); jaxprune clamps k to 1.
    w = jnp.arange(1.0, 101.0)
    threshold, mask = _mask(w, sparsity, HP)
    assert int(mask.sum()) == 1 and bool(mask[-1])
    assert float(threshold) == 100.0


def test_ties_at_threshold_are_kept_exact_and_pruned_histogram():
    w = jnp.array([1.0, 2.0, 2.0, 2.0, 3.0])
    _, mask = _mask(w, 0.6, HP)  # k = 2 -> threshold 2 -> every 2 is kept (>=)
    np.testing.assert_array_equal(mask, [0, 1, 1, 1, 1])
    # Histogram over [0, 3] with 3 bins: cdf = [0, 0.2, 1.0] (1 -> bin 1, 2 and 3 -> bin 2).
    # s = 0.6: two bins have cdf < s -> threshold = 2 / 3 * 3 = 2, mask is strict.
    threshold, mask = _mask(w, 0.6, HP.replace(threshold_method="histogram", nbins=3))
    assert float(threshold) == pytest.approx(2.0)
    np.testing.assert_array_equal(mask, [0, 0, 0, 0, 1])


def test_threshold_decay_smooths():
    w = jnp.linspace(1.0, 100.0, 100)
    hp = HP.replace(threshold_decay=0.9)
    threshold, mask = _mask(w, 0.5, hp, threshold=10.0)
    # current = 51 (k = 50), smoothed = 0.1 * 51 + 0.9 * 10 = 14.1
    assert float(threshold) == pytest.approx(0.1 * 51 + 0.9 * 10, rel=1e-6)
    assert int(mask.sum()) == 86  # weights 15..100 are >= 14.1
    assert not bool(mask[13]) and bool(mask[14])


def test_partial_blocks_are_aligned_at_zero():
    # 5x5 with 3x3 blocks: blocks cover rows/cols [0:3] and [3:5] (SPEC §5 fix; TF's SAME
    # padding would put a padding cell before the data).
    w = np.zeros((5, 5), np.float32)
    w[3:, 3:] = 1.0  # the bottom-right partial block (2x2 cells) is the only large one
    w[0, 0] = 0.5
    hp = HP.replace(block_height=3, block_width=3, block_pooling_function="AVG")
    threshold, mask = _mask(w, 0.75, hp)  # 4 blocks, k = 1
    expected = np.zeros((5, 5), bool)
    expected[3:, 3:] = True
    np.testing.assert_array_equal(mask, expected)
    assert float(threshold) == pytest.approx(1.0)  # the mean over the 4 existing cells


def test_avg_pooling_averages_existing_cells_only():
    pooled = jaxprune.pool_blocks(jnp.arange(1.0, 7.0).reshape(2, 3), (2, 2), "AVG")
    np.testing.assert_allclose(pooled, [[(1 + 2 + 4 + 5) / 4, (3 + 6) / 2]])


# --- non-finite and degenerate weights ---------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "histogram"])
def test_nan_weights_are_pruned_and_never_large(method):
    w = jnp.array([jnp.nan, 1.0, 2.0, 3.0, jnp.nan, 4.0])
    threshold, mask = _mask(w, 0.5, HP.replace(threshold_method=method))
    assert np.isfinite(float(threshold))
    assert not bool(mask[0]) and not bool(mask[4])
    assert bool(mask[5]) and bool(mask[3])  # the largest finite weights survive
    assert 1 <= int(mask.sum()) < 6


@pytest.mark.parametrize("method", ["exact", "histogram"])
def test_inf_weights_count_as_largest(method):
    w = jnp.array([jnp.inf, 1.0, 2.0, 3.0, -jnp.inf, 4.0, 5.0, 6.0])
    threshold, mask = _mask(w, 0.5, HP.replace(threshold_method=method, nbins=8))
    assert bool(mask[0]) and bool(mask[4])
    assert not bool(mask[1])
    if method == "exact":  # k = 4: inf, inf, 6, 5
        assert float(threshold) == 5.0
        np.testing.assert_array_equal(mask, [1, 0, 0, 0, 1, 0, 1, 1])


def test_all_nan_weight_prunes_everything_without_error():
    threshold, mask = _mask(jnp.full((3, 3), jnp.nan), 0.5, HP)
    assert not bool(mask.any()) and float(threshold) == 0.0


@pytest.mark.parametrize("method, kept", [("exact", True), ("histogram", False)])
def test_all_zero_weights(method, kept):
    threshold, mask = _mask(jnp.zeros((4, 4)), 0.5, HP.replace(threshold_method=method))
    assert float(threshold) == 0.0
    assert bool(mask.all()) is kept and bool(mask.any()) is kept


def test_non_finite_previous_threshold_is_not_carried():
    hp = HP.replace(threshold_decay=0.5)
    threshold, _ = _mask(jnp.linspace(1.0, 100.0, 100), 0.5, hp, threshold=np.inf)
    assert float(threshold) == pytest.approx(51.0)


# --- weight_sparsity_map in weight_mask (TF's _get_sparsity scaling) --------------------------


def test_weight_mask_scales_mapped_sparsity_like_tf():
    hp = HP.parse("target_sparsity=0.5,weight_sparsity_map=[layer1:0.75]")
    _, mask = _mask(jnp.linspace(1.0, 100.0, 100), 0.4, hp, name="layer1/weights")
    assert int(mask.sum()) == 40  # s = 0.4 * 0.75 / 0.5 = 0.6
    _, mask = _mask(jnp.linspace(1.0, 100.0, 100), 0.4, hp, name="layer2/weights")
    assert int(mask.sum()) == 60


def test_weight_mask_rejects_two_sparsity_map_matches():
    hp = HP.parse("weight_sparsity_map=[layer:0.6,weights:0.7]")
    with pytest.raises(ValueError, match="layer1/weights"):
        jaxprune.weight_mask(jnp.ones((2, 2)), 0.5, hparams=hp, name="layer1/weights")


def test_block_dims_map_first_match_wins():
    hp = HP.parse("block_dims_map=[dense:1x4,dense1:4x1]")
    assert hp.block_dims_for("dense1/kernel") == (1, 4)


# --- against the NumPy reference -------------------------------------------------------------

CASES = st.fixed_dictionaries(
    {
        "shape": st.sampled_from([(7,), (6, 10), (1, 9, 5), (13, 1, 4), (3, 4, 5), (16, 16)]),
        # (XLA:CPU flushes denormals, so no denormal sparsities.)
        "sparsity": st.one_of(st.just(0.0), st.floats(1e-4, 0.999)),
        "block": st.sampled_from([(1, 1), (2, 2), (3, 2), (1, -1), (-1, 3), (4, 4), (5, 1)]),
        "pooling": st.sampled_from(["AVG", "MAX"]),
        "method": st.sampled_from(["exact", "histogram"]),
        "decay": st.sampled_from([0.0, 0.3, 0.9]),
        "prev": st.one_of(st.just(0.0), st.floats(1e-3, 3.0)),
        "nbins": st.sampled_from([1, 3, 16, 100, 256]),
        "seed": st.integers(0, 2**31 - 1),
        "dist": st.sampled_from(["normal", "ties", "zeros"]),
    }
)


def _random_weights(shape, seed, dist):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    if dist == "ties":
        w = np.round(w * 2) / 2
    elif dist == "zeros":
        w[rng.random(shape) < 0.5] = 0.0
    return w


@settings(max_examples=30, deadline=None)
@given(case=CASES)
def test_weight_mask_matches_numpy_reference(case):
    w = _random_weights(case["shape"], case["seed"], case["dist"])
    hp = HP.replace(
        block_height=case["block"][0],
        block_width=case["block"][1],
        block_pooling_function=case["pooling"],
        threshold_method=case["method"],
        threshold_decay=case["decay"],
        nbins=case["nbins"],
    )
    threshold, mask = _mask(w, case["sparsity"], hp, threshold=case["prev"])
    ref_threshold, ref_mask = ref_weight_mask(
        w,
        case["sparsity"],
        case["prev"],
        method=case["method"],
        block=case["block"],
        pooling=case["pooling"],
        decay=case["decay"],
        nbins=case["nbins"],
    )
    np.testing.assert_allclose(float(threshold), ref_threshold, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)


@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(0, 1e6, width=32)),
    span=st.floats(0.0009765625, 1048576.0, width=32),
    nbins=st.sampled_from([1, 3, 7, 10, 100, 255, 256, 1000]),
)
def test_histogram_bins_are_exact(x, span, nbins):
    from jaxprune._src.masks import _bin_index

    idx = jax.jit(_bin_index, static_argnums=2)(jnp.asarray(x), jnp.float32(span), nbins)
    np.testing.assert_array_equal(np.asarray(idx), ref_histogram_bins(x, span, nbins))


def test_histogram_bins_on_exact_boundaries():
    from jaxprune._src.masks import _bin_index

    # x / span * nbins lands exactly on integers: float32 rounding would misplace some.
    span = np.float32(0.3)
    x = (np.arange(0, 11, dtype=np.float64) * 0.3 / 10).astype(np.float32)
    idx = _bin_index(jnp.asarray(x), jnp.float32(span), 10)
    np.testing.assert_array_equal(np.asarray(idx), ref_histogram_bins(x, span, 10))


# --- properties of the exact method -----------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(50,), (8, 12), (9, 7), (3, 5, 4)]),
    sparsity=st.floats(0.0, 0.99),
    block=st.sampled_from([(1, 1), (2, 2), (3, 1)]),
    seed=st.integers(0, 10_000),
)
def test_exact_sparsity_within_one_block_of_target(shape, sparsity, block, seed):
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)  # no ties
    hp = HP.replace(block_height=block[0], block_width=block[1])
    _, mask = _mask(w, sparsity, hp)
    squeezed = [d for d in shape if d != 1]
    if len(squeezed) == 2 and block != (1, 1):
        m2 = np.asarray(mask).reshape(squeezed)
        bh, bw = block
        kept_blocks = [
            bool(m2[i : i + bh, j : j + bw].any())
            for i in range(0, squeezed[0], bh)
            for j in range(0, squeezed[1], bw)
        ]
        target = max(1, round(len(kept_blocks) * (1 - sparsity)))
        assert abs(sum(kept_blocks) - target) <= 1
    else:
        assert abs(int(mask.sum()) - max(1, round(w.size * (1 - sparsity)))) <= 1


@settings(max_examples=15, deadline=None)
@given(s1=st.floats(0.0, 0.99), s2=st.floats(0.0, 0.99), seed=st.integers(0, 10_000))
def test_masks_are_monotone_in_sparsity(s1, s2, seed):
    lo, hi = sorted((s1, s2))
    w = np.random.default_rng(seed).standard_normal((10, 10)).astype(np.float32)
    for method in ("exact", "histogram"):
        hp = HP.replace(threshold_method=method)
        _, mask_lo = _mask(w, lo, hp)
        _, mask_hi = _mask(w, hi, hp)
        assert not bool((mask_hi & ~mask_lo).any()), method  # kept at hi => kept at lo


@settings(max_examples=15, deadline=None)
@given(sparsity=st.floats(0.05, 0.95), seed=st.integers(0, 10_000))
def test_zero_weights_are_pruned_first(sparsity, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(100).astype(np.float32)
    w[rng.permutation(100)[:30]] = 0.0
    _, mask = _mask(w, sparsity, HP)
    if int(mask.sum()) < 70:  # fewer kept than nonzeros: no zero may be kept
        assert not bool(mask[w == 0].any())
    else:  # every nonzero is kept before any zero
        assert bool(mask[w != 0].all())


# --- jit ---------------------------------------------------------------------------------------


def test_weight_mask_traces_once_across_sparsities_and_thresholds():
    hp = HP.replace(block_height=2, block_width=2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(w, s, t):
        return jaxprune.weight_mask(w, s, t, hparams=hp)

    w = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8)), jnp.float32)
    for i in range(20):
        fn(w, jnp.float32(i / 21), jnp.float32(i))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_weight_mask_low_precision_dtypes(dtype):
    w = jnp.linspace(1.0, 100.0, 100).astype(dtype).reshape(10, 10)
    _, mask_f32 = _mask(w.astype(jnp.float32), 0.7, HP)
    _, mask_low = jax.jit(lambda w: jaxprune.weight_mask(w, 0.7, hparams=HP))(w)
    ref = ref_weight_mask(np.asarray(w.astype(jnp.float32)), 0.7)[1]
    np.testing.assert_array_equal(mask_low, ref)
    np.testing.assert_array_equal(mask_low, mask_f32)
    assert mask_low.shape == w.shape


def test_weight_mask_does_not_mutate_input():
    w = np.random.default_rng(1).standard_normal((6, 6)).astype(np.float32)
    w_copy = w.copy()
    jaxprune.weight_mask(w, 0.5, hparams=HP)
    np.testing.assert_array_equal(w, w_copy)


def test_weight_mask_rejects_integer_weights():
    with pytest.raises(ValueError, match="int32"):
        jaxprune.weight_mask(jnp.arange(4), 0.5, hparams=HP)


# --- the final mask compare -------------------------------------------------------------------

_compare_jit = jax.jit(
    lambda v, t, strict: jaxprune._src.masks._compare_magnitudes(v, t, strict),
    static_argnames="strict",
)


@pytest.mark.parametrize("strict", [False, True])
def test_mask_compare_matches_key_reference_at_the_edges(strict):
    """One unsigned range test per element == NumPy's comparison of the magnitudes' keys.

    NaN is never kept, denormals compare by their true value (no flush), a threshold of
    Inf keeps only Inf (``>=``) or nothing (``>``), a threshold of 0 keeps every non-NaN.
    """
    f = np.finfo(np.float32)
    vals = np.array(
        [
            0.0,
            f.smallest_subnormal,
            3 * f.smallest_subnormal,
            f.tiny - f.smallest_subnormal,
            f.tiny,
            1e-30,
            0.5,
            1.0,
            f.max,
            np.inf,
            np.nan,
        ],
        np.float32,
    )
    rng = np.random.default_rng(0)
    x = rng.choice(np.concatenate([vals, -vals]), size=(33, 65)).astype(np.float32)
    mags = np.abs(x)
    for t in [*vals[:-1], np.float32(2.0), np.float32(f.smallest_subnormal * 2)]:
        got = np.asarray(_compare_jit(jnp.asarray(x), jnp.float32(t), strict=strict))
        keys, tkey = mags.view(np.int32), np.float32(t).view(np.int32)
        want = (keys > tkey if strict else keys >= tkey) & ~np.isnan(x)
        np.testing.assert_array_equal(got, want, err_msg=f"threshold {t!r}")
