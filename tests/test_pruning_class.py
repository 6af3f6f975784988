"""``jaxprune.Pruning``'s repr and its ``sparsity`` (the schedule) / ``sparsity_at`` (a value)."""

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxprune


def _tf_schedule(t, initial=0.0, target=0.5, begin=0, end=100, exponent=3.0):
    """TF's polynomial decay, written out by hand (SPEC §2)."""
    p = min(max((t - begin) / (end - begin), 0.0), 1.0)
    return target + (initial - target) * (1.0 - p) ** exponent


def test_repr_shows_the_changed_hparams_and_round_trips():
    p = jaxprune.Pruning(
        "name=enc,target_sparsity=0.9,weight_sparsity_map=[conv1:0.8,dense:0.3],pruning_frequency=7"
    )
    text = repr(p)
    assert text == (
        "Pruning(spec='name=enc,weight_sparsity_map=[conv1:0.8,dense:0.3],pruning_frequency=7,"
        "target_sparsity=0.9')"
    )
    spec = text[len("Pruning(spec='") : -len("')")]
    assert jaxprune.Pruning(spec).hparams == p.hparams
    assert repr(jaxprune.Pruning()) == "Pruning(spec='')"


def test_repr_names_external_sparsity_and_filter():
    text = repr(jaxprune.Pruning(sparsity=0.25, params_filter={"w": True}))
    assert text == "Pruning(spec='', sparsity=0.25, params_filter={'w': True})"


def test_sparsity_is_the_schedule_and_sparsity_at_a_value():
    p = jaxprune.Pruning("target_sparsity=0.8,sparsity_function_end_step=40")
    for t in (0, 10, 20, 40, 55):
        expected = _tf_schedule(t, target=0.8, end=40)
        assert float(p.sparsity(t)) == pytest.approx(expected, abs=1e-6)  # TF-style call
        assert float(p.sparsity_at(t)) == pytest.approx(expected, abs=1e-6)
    assert p.sparsity_at(jnp.int32(20)).dtype == jnp.float32
    # The schedule is a value: it can be passed on as an optax schedule (here, a constant
    # sparsity for another transform) and traced under jit, compiling once.
    traces = []

    @jax.jit
    def at(step):
        traces.append(1)
        return p.sparsity(step)

    assert [round(float(at(jnp.int32(t))), 6) for t in (10, 30)] == [
        round(_tf_schedule(10, target=0.8, end=40), 6),
        round(_tf_schedule(30, target=0.8, end=40), 6),
    ]
    assert len(traces) == 1
    tx = jaxprune.magnitude_pruning(p.hparams, sparsity=p.sparsity)
    state = tx.init({"w": jnp.ones((4, 4))})
    assert isinstance(tx, optax.GradientTransformationExtraArgs) and int(state.count) == 0


def test_external_sparsity_is_what_sparsity_returns():
    p = jaxprune.Pruning(sparsity=lambda step: 0.01 * step)
    assert float(p.sparsity(30)) == pytest.approx(0.3) and float(p.sparsity_at(30)) == float(
        p.sparsity(30)
    )
