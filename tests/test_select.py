"""Tests for jaxprune._src.select: exact k-th largest and bin counts vs NumPy references."""

import os
import subprocess
import sys
import textwrap

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxprune._src import select

_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def np_kth_largest(x: np.ndarray, k: int) -> np.ndarray:
    """Independent reference: IEEE order via np.partition, value at descending rank k."""
    flat = np.asarray(x).ravel()
    n = flat.size
    return np.partition(flat, n - k)[n - k]


def assert_bits_equal(got, want):
    got = np.asarray(got)
    want = np.asarray(want, dtype=got.dtype)
    assert got.shape == ()
    assert got.tobytes() == want.tobytes(), (got, want)


# One jitted function shared by all tests: k is traced, so only new shapes retrace.
_TRACES = {"n": 0}


def _counted(values, k):
    _TRACES["n"] += 1
    return select.kth_largest(values, k)


_kth_jit = jax.jit(_counted)


def _special_values(dtype=np.float32):
    info = np.finfo(dtype)
    return np.array(
        [
            0.0,
            info.smallest_subnormal,
            2 * info.smallest_subnormal,
            info.smallest_normal / 2,
            info.smallest_normal,
            1e-30,
            0.5,
            1.0,
            1.0,
            np.nextafter(dtype(1.0), dtype(2.0)),
            3.0,
            1e30,
            info.max,
            np.inf,
        ],
        dtype=dtype,
    )


def _check_many_k(x, ks):
    for k in ks:
        assert_bits_equal(_kth_jit(x, jnp.int32(k)), np_kth_largest(x, k))


@pytest.mark.parametrize("shape", [(1,), (13,), (1025,), (33, 1025), (3, 3, 16, 32), (64, 128)])
def test_random_shapes_normal(shape):
    rng = np.random.default_rng(sum(shape))
    x = np.abs(rng.standard_normal(shape)).astype(np.float32)
    n = x.size
    ks = sorted({1, n, max(1, n // 2), max(1, n // 3), *rng.integers(1, n + 1, size=4).tolist()})
    _check_many_k(x, ks)


def test_every_k_small_with_specials():
    rng = np.random.default_rng(0)
    x = rng.choice(_special_values(), size=(6, 50)).astype(np.float32)
    _check_many_k(x, range(1, x.size + 1))


def test_all_equal_and_all_zero():
    for value in (0.0, 1.5, np.inf, 1e-45):
        x = np.full((6, 50), value, np.float32)
        _check_many_k(x, [1, 150, 300])


def test_mostly_zeros_like_pruned_weights():
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal((256, 300))).astype(np.float32)
    x[rng.random(x.shape) < 0.9] = 0.0
    n = x.size
    nnz = int(np.count_nonzero(x))
    _check_many_k(x, [1, nnz - 1, nnz, nnz + 1, n // 2, n])


def test_heavy_ties_and_wide_dynamic_range():
    rng = np.random.default_rng(2)
    levels = np.float32(2.0) ** rng.integers(-149, 128, size=20).astype(np.float32)
    x = rng.choice(levels, size=(4000,)).astype(np.float32)
    _check_many_k(x, [1, 2, 1000, 2000, 3999, 4000, *rng.integers(1, 4001, size=6).tolist()])


def test_large_tail_path():
    # n not a multiple of any preferred row length: head block + tail block.
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal(100_003)).astype(np.float32)
    _check_many_k(x, [1, 7, 50_000, 99_999, 100_003])


# A few fixed shapes keep compilation (not the search) from dominating the test time.
_SHAPES = st.sampled_from([(1,), (2,), (13,), (6, 50), (2, 3, 40)])


@_SETTINGS
@given(
    x=hnp.arrays(
        np.float32,
        _SHAPES,
        elements=st.floats(0.0, width=32, allow_nan=False, allow_infinity=True),
    ),
    data=st.data(),
)
def test_hypothesis_arbitrary_floats(x, data):
    k = data.draw(st.integers(1, x.size))
    assert_bits_equal(_kth_jit(x, jnp.int32(k)), np_kth_largest(x, k))


@_SETTINGS
@given(
    x=hnp.arrays(
        np.float32,
        _SHAPES,
        elements=st.sampled_from(_special_values().tolist()),
    ),
    data=st.data(),
)
def test_hypothesis_specials_and_ties(x, data):
    k = data.draw(st.integers(1, x.size))
    assert_bits_equal(_kth_jit(x, jnp.int32(k)), np_kth_largest(x, k))


def test_traces_once_for_all_k():
    rng = np.random.default_rng(4)
    x = jnp.asarray(np.abs(rng.standard_normal((50, 70))).astype(np.float32))
    count = {"n": 0}

    @jax.jit
    def f(values, k):
        count["n"] += 1
        return select.kth_largest(values, k)

    for k in rng.integers(1, x.size + 1, size=25):
        assert_bits_equal(f(x, jnp.int32(k)), np_kth_largest(np.asarray(x), int(k)))
    assert count["n"] == 1


def test_k_is_clamped_and_python_int_ok():
    x = np.array([3.0, 1.0, 2.0], np.float32)
    assert float(_kth_jit(x, 0)) == 3.0
    assert float(_kth_jit(x, 10)) == 1.0
    assert float(_kth_jit(x, 2)) == 2.0


def test_negative_zero_reported_as_zero():
    x = np.array([-0.0, 1.0, -0.0], np.float32)
    assert np.asarray(_kth_jit(x, 3)).tobytes() == np.float32(0.0).tobytes()
    assert np.asarray(_kth_jit(x, 2)).tobytes() == np.float32(0.0).tobytes()
    assert float(_kth_jit(x, 1)) == 1.0


def test_half_precision_inputs():
    rng = np.random.default_rng(5)
    for dtype in (jnp.bfloat16, jnp.float16):
        x = jnp.abs(jnp.asarray(rng.standard_normal(999), dtype))
        x32 = np.asarray(x.astype(jnp.float32))
        out = select.kth_largest(x, 17)
        assert out.dtype == jnp.float32
        assert_bits_equal(out, np_kth_largest(x32, 17))


def test_float64_with_x64():
    rng = np.random.default_rng(6)
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:  # jax < 0.8.0 (the oldest supported jax, in CI's second leg)
        from jax.experimental import enable_x64
    with enable_x64(True):
        x = np.abs(rng.standard_normal(2000))
        x[:50] = 5e-324  # float64 denormals
        x[50:60] = np.inf
        f = jax.jit(select.kth_largest)
        for k in (1, 10, 11, 500, 1950, 1951, 2000):
            out = f(jnp.asarray(x), jnp.int32(k))
            assert out.dtype == jnp.float64
            assert_bits_equal(out, np_kth_largest(x, k))


def test_passes_are_few_on_typical_data():
    rng = np.random.default_rng(7)
    x = jnp.asarray(np.abs(rng.standard_normal((512, 1024))).astype(np.float32))
    f = jax.jit(select._select)
    for k in (1, 1000, 200_000, 524_288):
        value, passes, _ = f(x, jnp.int32(k))
        assert_bits_equal(value, np_kth_largest(np.asarray(x), k))
        assert int(passes) <= 8


_kth_magnitude_jit = jax.jit(lambda values, k: select.kth_largest(values, k, magnitude=True))


def np_magnitudes(x: np.ndarray) -> np.ndarray:
    """Reference magnitudes: |x| in float32, NaN counted as 0."""
    a = np.abs(np.asarray(x, np.float32))
    return np.where(np.isnan(a), np.float32(0.0), a)


@_SETTINGS
@given(
    x=hnp.arrays(
        np.float32,
        st.sampled_from([(1,), (17,), (40, 33), (3, 1030)]),
        elements=st.sampled_from(
            [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-40, -1e-40, 3e38, np.inf, -np.inf, np.nan]
        )
        | st.floats(-1e6, 1e6, width=32),
    ),
    data=st.data(),
)
def test_magnitude_mode_matches_reference_on_signed_nan_inf(x, data):
    """magnitude=True ranks where(isnan, 0, |x|) without the caller forming it."""
    k = data.draw(st.integers(1, x.size))
    assert_bits_equal(_kth_magnitude_jit(x, jnp.int32(k)), np_kth_largest(np_magnitudes(x), k))


def test_magnitude_mode_bf16_and_typical_passes():
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.standard_normal(5000), jnp.bfloat16)
    want = np_magnitudes(np.asarray(x.astype(jnp.float32)))
    for k in (1, 7, 2500, 5000):
        assert_bits_equal(select.kth_largest(x, k, magnitude=True), np_kth_largest(want, k))
    w = jnp.asarray(rng.standard_normal((512, 1024)).astype(np.float32))
    value, passes, _ = jax.jit(select._select, static_argnames="magnitude")(
        w, jnp.int32(100_000), magnitude=True
    )
    assert_bits_equal(value, np_kth_largest(np_magnitudes(np.asarray(w)), 100_000))
    assert int(passes) <= 8


def _normal_data(seed: int, shape: tuple, magnitude: bool) -> np.ndarray:
    """Signed N(0, 1) float32 data for magnitude mode, its absolute value otherwise."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x if magnitude else np.abs(x)


@pytest.mark.parametrize("magnitude", [False, True])
def test_kth_largest_and_max(magnitude):
    x = _normal_data(11, (40, 300), magnitude)
    base = np_magnitudes(x) if magnitude else x
    f = jax.jit(select.kth_largest_and_max, static_argnames="magnitude")
    for k in (1, 100, 12000):
        value, top = f(x, jnp.int32(k), magnitude=magnitude)
        assert_bits_equal(value, np_kth_largest(base, k))
        assert_bits_equal(top, np.max(base))
    x[1, 2] = np.inf
    x[3, 4] = np.nan if magnitude else 0.0
    _, top = f(x, jnp.int32(5), magnitude=magnitude)
    assert_bits_equal(top, np.float32(np.inf))


@pytest.mark.parametrize("magnitude", [False, True])
def test_largest_finite(magnitude):
    x = _normal_data(10, (64, 300), magnitude)
    x[3, 4], x[5, 6], x[7, 8] = np.inf, np.nan, -np.inf if magnitude else np.inf
    base = np_magnitudes(x) if magnitude else x
    want = np.max(np.where(np.isfinite(base), base, 0))
    f = jax.jit(select.largest_finite, static_argnames="magnitude")
    assert_bits_equal(f(x, magnitude=magnitude), want)
    # No finite entry at all: 0.0.
    assert_bits_equal(f(np.full((4, 5), np.inf, np.float32), magnitude=magnitude), np.float32(0))


# ------------------------------------------------------------------ the counting pass itself


def _np_keys(x: np.ndarray, magnitude: bool) -> np.ndarray:
    """Independent reference keys: int32 bit patterns (magnitude: of where(isnan, 0, |x|))."""
    x = np.asarray(x, np.float32)
    if magnitude:
        x = np_magnitudes(x)
    return x.view(np.int32).astype(np.int64)


def _np_count_pass(x, pivots, lo, hi, magnitude):
    keys = _np_keys(x, magnitude).ravel()
    counts = [int(np.sum(keys >= p)) for p in pivots]
    ge, lt = keys[(keys >= lo)], keys[(keys >= 0) & (keys < hi)]
    mn = int(ge.min()) if ge.size else np.iinfo(np.int32).max
    mx = int(lt.max()) if lt.size else -1
    return counts, mn, mx


_count_pass_jit = jax.jit(
    lambda x, p, lo, hi, magnitude: select._count_pass(
        select._rows_view(x), p, lo, hi, jnp.dtype(jnp.float32), jnp.dtype(jnp.int32), magnitude
    ),
    static_argnames="magnitude",
)


@pytest.mark.parametrize("shape", [(7, 300), (1030,), (3, 4, 257)])
def test_count_pass_matches_numpy_magnitude_with_nan(shape):
    """Counts, min key >= lo and max key < hi vs NumPy, at edges where the tricks could slip.

    The unsigned wrap-around min/max must ignore keys outside the range (NaN ranks as 0,
    signs are cleared), and ``key >= p`` is counted as ``key > p - 1``.
    """
    magnitude = True
    rng = np.random.default_rng(sum(shape))
    specials = _special_values()
    x = rng.choice(np.concatenate([specials, -specials, [np.nan, -np.nan, -0.0]]), size=shape)
    x = x.astype(np.float32)
    keys = np.unique(_np_keys(x, magnitude))
    keys = keys[keys >= 0]
    inf_key = int(np.float32(np.inf).view(np.int32))
    edges = sorted({0, 1, inf_key, inf_key + 1, *keys.tolist(), *(keys + 1).tolist()})
    for _ in range(6):
        pivots = np.sort(rng.choice(edges, size=9)).astype(np.int32)
        lo, hi = sorted(rng.choice(edges, size=2).tolist())
        hi = max(hi, lo + 1)
        counts, mn, mx = _count_pass_jit(x, jnp.asarray(pivots), lo, hi, magnitude=magnitude)
        want_counts, want_mn, want_mx = _np_count_pass(x, pivots, lo, hi, magnitude)
        assert np.asarray(counts).tolist() == want_counts
        assert (int(mn), int(mx)) == (want_mn, want_mx), (lo, hi)


@pytest.mark.parametrize("magnitude", [False, True])
def test_count_pass_matches_numpy_without_nan(magnitude):
    rng = np.random.default_rng(5)
    specials = _special_values()
    pool = np.concatenate([specials, -specials, [-0.0]]) if magnitude else specials
    x = rng.choice(pool, size=(9, 130)).astype(np.float32)
    if not magnitude:
        x[0, :3] = [-0.0, -1.0, -np.inf]  # negative keys: never counted, never the min/max
    keys = np.unique(_np_keys(x, magnitude))
    edges = sorted({0, 1, *keys[keys >= 0].tolist(), *(keys[keys >= 0] + 1).tolist()})
    for _ in range(8):
        pivots = np.sort(rng.choice(edges, size=9)).astype(np.int32)
        lo, hi = sorted(rng.choice(edges, size=2).tolist())
        hi = max(hi, lo + 1)
        counts, mn, mx = _count_pass_jit(x, jnp.asarray(pivots), lo, hi, magnitude=magnitude)
        want_counts, want_mn, want_mx = _np_count_pass(x, pivots, lo, hi, magnitude)
        assert np.asarray(counts).tolist() == want_counts
        assert (int(mn), int(mx)) == (want_mn, want_mx), (lo, hi)


def test_count_pass_accumulates_in_integers():
    """Counts are summed in int32 (exact to 2**31), never in float32 (exact only to 2**24).

    Structural check: the pass's variadic reduce carries only s32 sums and u32 mins, so no
    partial count can round, however long the rows.
    """
    x = jax.ShapeDtypeStruct((64, 4096), jnp.float32)
    hlo = (
        jax.jit(
            lambda x, p: select._count_pass([x], p, 1, 2**30, *select._key_dtypes(x.dtype), True)
        )
        .lower(x, jax.ShapeDtypeStruct((9,), jnp.int32))
        .compile()
        .as_text()
    )
    # The row reduction: [64, 4096] -> one [64] output per pivot, plus the min and max.
    reduces = [line for line in hlo.splitlines() if " reduce(" in line and "[64]" in line]
    assert reduces, hlo
    for line in reduces:
        out_types = line.split("=", 1)[1].split("reduce(", 1)[0]
        assert "f32" not in out_types and "f64" not in out_types, line


def test_denormal_boundary_and_ties_at_the_answer():
    """Keys straddling the smallest normal, huge ties at the answer, all-equal arrays."""
    tiny = np.finfo(np.float32).tiny
    sub = np.finfo(np.float32).smallest_subnormal
    around = np.array(
        [0.0, sub, 2 * sub, tiny - sub, tiny, tiny + np.spacing(tiny), 2 * tiny, 1e-30],
        np.float32,
    )
    rng = np.random.default_rng(12)
    x = rng.choice(around, size=(40, 257)).astype(np.float32)
    n = x.size
    counts = np.cumsum([np.sum(x == v) for v in around[::-1]])
    ks = sorted(
        {
            1,
            n,
            *counts.tolist(),
            *(counts + 1).clip(1, n).tolist(),
            *(counts - 1).clip(1, n).tolist(),
        }
    )
    _check_many_k(x, ks)
    signed = x * rng.choice(np.array([-1, 1], np.float32), size=x.shape)
    signed[0, :5] = np.nan
    for k in ks[::3]:
        assert_bits_equal(
            _kth_magnitude_jit(signed, jnp.int32(k)), np_kth_largest(np_magnitudes(signed), k)
        )
    # Ties: 90% of the entries equal the answer, the rest spread on both sides.
    y = np.full((64, 300), 0.75, np.float32)
    y[rng.random(y.shape) < 0.05] = 0.5
    y[rng.random(y.shape) < 0.05] = 2.0
    _check_many_k(y, [1, int(np.sum(y == 2.0)), int(np.sum(y >= 0.75)), y.size // 2, y.size])


def test_uniform_data_crossing_a_power_of_two_needs_few_passes():
    """Value-space interpolation: the key density doubles below 0.5 (a smaller exponent)."""
    rng = np.random.default_rng(13)
    x = jnp.asarray(rng.random((1024, 1024)).astype(np.float32))
    f = jax.jit(select._select)
    for k in (524_288, 104_858):
        value, passes, _ = f(x, jnp.int32(k))
        assert_bits_equal(value, np_kth_largest(np.asarray(x), k))
        assert int(passes) <= 5


def test_doctest_examples():
    import doctest

    results = doctest.testmod(select, verbose=False)
    assert results.failed == 0 and results.attempted > 0


# ----------------------------------------------------------------------------------- bin_counts


_bin_counts_jit = jax.jit(select.bin_counts, static_argnums=1)


@pytest.mark.parametrize("nbins", [1, 3, 16, 256, 1000])
@pytest.mark.parametrize("n", [0, 1, 5, 4097])
def test_bin_counts_vs_numpy(nbins, n):
    rng = np.random.default_rng(nbins * 7919 + n)
    idx = rng.integers(0, nbins, size=n).astype(np.int32)
    got = _bin_counts_jit(idx, nbins)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.bincount(idx, minlength=nbins))


@_SETTINGS
@given(
    idx=hnp.arrays(np.int32, st.sampled_from([(1,), (7,), (5, 31)]), elements=st.integers(-3, 300)),
    nbins=st.sampled_from([1, 4, 256]),
)
def test_bin_counts_hypothesis_out_of_range_dropped(idx, nbins):
    got = _bin_counts_jit(idx, nbins)
    flat = idx.ravel()
    flat = flat[(flat >= 0) & (flat < nbins)]
    np.testing.assert_array_equal(np.asarray(got), np.bincount(flat, minlength=nbins))


def test_bin_counts_histogram_method_shape():
    rng = np.random.default_rng(8)
    a = np.abs(rng.standard_normal((123, 77))).astype(np.float32)
    a[0, 0] = a.max()  # the max lands in the last bin
    nbins = 256
    idx = jnp.clip(jnp.floor(nbins * (a / a.max())).astype(jnp.int32), 0, nbins - 1)
    got = select.bin_counts(idx, nbins)
    np.testing.assert_array_equal(
        np.asarray(got), np.bincount(np.asarray(idx).ravel(), minlength=256)
    )
    assert int(got.sum()) == a.size


# ------------------------------------------------------------------------------------- sharding

_SHARDED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxprune._src import select
    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((512, 256))).astype(np.float32)
    xs = jax.device_put(x, NamedSharding(mesh, P("d", None)))
    f = jax.jit(select.kth_largest)
    for k in (1, 777, 65536, 131072):
        want = np.sort(x.ravel())[::-1][k - 1]
        assert np.asarray(f(xs, jnp.int32(k))).tobytes() == want.tobytes(), k
    hlo = f.lower(xs, jnp.int32(3)).compile().as_text()
    big = [l for l in hlo.splitlines() if "all-gather" in l and "f32[512,256]" in l]
    assert not big, big
    idx = jax.device_put((x * 100).astype(np.int32) % 256, NamedSharding(mesh, P("d", None)))
    got = jax.jit(select.bin_counts, static_argnums=1)(idx, 256)
    want = np.bincount(np.asarray(idx).ravel(), minlength=256)
    np.testing.assert_array_equal(np.asarray(got), want)
    print("OK")
    """
)


def test_sharded_inputs_multi_device_cpu():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
