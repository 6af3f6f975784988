"""The polynomial sparsity schedule: TF's published numbers and a float32 reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune


def _reference(t, begin, end, initial, target, exponent):
    """SPEC §2 in NumPy float32, written independently."""
    f32 = np.float32
    p = np.clip(f32(t - begin) / f32(end - begin), f32(0), f32(1))
    ramp = f32(np.float64(f32(1) - p) ** exponent)  # a correctly rounded powf
    return f32(initial - target) * ramp + f32(target)


def test_tf_published_schedule():
    s = jax.jit(jaxprune.sparsity_schedule(jaxprune.get_pruning_hparams()))
    assert float(s(0)) == 0.0
    assert float(s(10)) == pytest.approx(0.1355, abs=1e-6)
    assert float(s(50)) == pytest.approx(0.4375, abs=1e-7)
    assert float(s(100)) == pytest.approx(0.5)
    assert float(s(150)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "begin, end, initial, target, exponent",
    [(0, 100, 0.0, 0.5, 3.0), (20, 70, 0.1, 0.9, 1.0), (5, 6, 0.3, 0.95, 2.0), (0, 1000, 0, 0, 3)],
)
def test_schedule_matches_float32_reference(begin, end, initial, target, exponent):
    hp = jaxprune.get_pruning_hparams().replace(
        sparsity_function_begin_step=begin,
        sparsity_function_end_step=end,
        initial_sparsity=initial,
        target_sparsity=target,
        sparsity_function_exponent=exponent,
    )
    schedule = jax.jit(jaxprune.sparsity_schedule(hp))
    for t in [0, begin, begin + 1, (begin + end) // 2, end - 1, end, end + 10, 10_000]:
        got = np.asarray(schedule(jnp.int32(t)))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _reference(t, begin, end, initial, target, exponent))


def test_schedule_before_begin_is_initial_and_monotone():
    hp = jaxprune.get_pruning_hparams().replace(
        initial_sparsity=0.2, sparsity_function_begin_step=10, target_sparsity=0.9
    )
    values = np.asarray(jax.vmap(jaxprune.sparsity_schedule(hp))(jnp.arange(200)))
    # (initial - target) * 1 + target in float32, as TF computes it.
    assert np.all(values[:11] == np.float32(0.2 - 0.9) + np.float32(0.9))
    assert np.all(np.diff(values) >= 0)
    assert values[-1] == np.float32(0.9)


def test_schedule_traces_once():
    schedule = jaxprune.sparsity_schedule(jaxprune.get_pruning_hparams())

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(t):
        return schedule(t)

    for t in range(50):
        fn(jnp.int32(t))


def test_weight_target_override():
    hp = jaxprune.get_pruning_hparams().replace(initial_sparsity=0.2)
    s = jaxprune.sparsity_schedule(hp, target_sparsity=0.8)
    assert float(s(0)) == pytest.approx(0.2)
    assert float(s(100)) == pytest.approx(0.8)
    np.testing.assert_allclose(float(s(50)), _reference(50, 0, 100, 0.2, 0.8, 3.0))
