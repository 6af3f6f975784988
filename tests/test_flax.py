"""Real Flax models: nnx.Optimizer and linen's TrainState, float32 and bfloat16, unchanged."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import jaxprune

HP = jaxprune.get_pruning_hparams().replace(
    target_sparsity=0.8,
    begin_pruning_step=5,
    sparsity_function_begin_step=5,
    sparsity_function_end_step=30,
    pruning_frequency=5,
)
STEPS = 40


def _data():
    x = jax.random.normal(jax.random.key(0), (64, 12))
    y = jax.random.randint(jax.random.key(1), (64,), 0, 4)
    return x, y


class NnxNet(nnx.Module):
    def __init__(self, rngs, dtype):
        self.conv = nnx.Conv(1, 4, (3,), rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.norm = nnx.LayerNorm(48, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.dense = nnx.Linear(48, 4, rngs=rngs, param_dtype=dtype, dtype=dtype)

    def __call__(self, x):
        h = self.conv(x[..., None]).reshape(x.shape[0], -1)
        return self.dense(jax.nn.relu(self.norm(h))).astype(jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_nnx_optimizer(dtype):
    model = NnxNet(nnx.Rngs(0), dtype)
    tx = optax.chain(optax.adam(1e-2), jaxprune.magnitude_pruning(HP))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = _data()
    traces = []

    @nnx.jit
    def train_step(model, optimizer, x, y):
        traces.append(1)

        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(STEPS):
        train_step(model, optimizer, x, y)
    assert len(traces) == 1

    state = jaxprune.get_pruning_state(optimizer.opt_state)
    assert int(state.count) == STEPS and int(state.last_update_step) == 40
    for name, kernel in (("conv/kernel", model.conv.kernel), ("dense/kernel", model.dense.kernel)):
        w = np.asarray(kernel[...].astype(jnp.float32))
        assert kernel[...].dtype == dtype
        assert np.mean(w == 0) == pytest.approx(0.8, abs=1.5 / w.size), name
        mask = np.asarray(state.masks[name.split("/")[0]]["kernel"])
        assert np.all(w[~mask] == 0) and mask.shape == w.shape
    # Biases and the norm's scale are not pruned.
    assert np.count_nonzero(np.asarray(model.norm.scale[...].astype(jnp.float32))) == 48
    summaries = jaxprune.summaries(optimizer.opt_state)
    assert float(summaries["dense/kernel/sparsity"]) == pytest.approx(0.8, abs=0.01)
    # strip_pruning takes nnx state directly, and its result loads back into the model.
    stripped = jaxprune.strip_pruning(nnx.state(model, nnx.Param), state)
    nnx.update(model, stripped)
    np.testing.assert_array_equal(
        np.asarray(model.dense.kernel[...].astype(jnp.float32)) == 0,
        ~state.masks["dense"]["kernel"],
    )


class LinenNet(nn.Module):
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.Dense(32, param_dtype=self.dtype, dtype=self.dtype)(x)
        h = nn.BatchNorm(use_running_average=not train, param_dtype=self.dtype)(h)
        h = nn.relu(h)
        return nn.Dense(4, param_dtype=self.dtype, dtype=self.dtype)(h).astype(jnp.float32)


class TrainState(train_state.TrainState):
    batch_stats: dict


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_linen_train_state(dtype):
    chex.clear_trace_counter()  # the step below is redefined per parameter
    model = LinenNet(dtype)
    x, y = _data()
    variables = model.init(jax.random.key(0), x)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.chain(optax.sgd(0.05, momentum=0.9), jaxprune.magnitude_pruning(HP)),
    )

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(state, x, y):
        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
        return state, loss

    losses = []
    for _ in range(STEPS):
        state, loss = train_step(state, x, y)
        losses.append(float(loss))
    assert losses[-1] < losses[0]

    pstate = jaxprune.get_pruning_state(state.opt_state)
    for layer in ("Dense_0", "Dense_1"):
        w = np.asarray(state.params[layer]["kernel"].astype(jnp.float32))
        assert state.params[layer]["kernel"].dtype == dtype
        assert np.mean(w == 0) == pytest.approx(0.8, abs=1.5 / w.size)
        assert np.all(w[~np.asarray(pstate.masks[layer]["kernel"])] == 0)
        assert np.count_nonzero(np.asarray(state.params[layer]["bias"]) == 0) < 4
    assert set(jaxprune.summaries(state.opt_state)) == {
        "model_pruning/sparsity",
        "model_pruning/last_mask_update_step",
        "Dense_0/kernel/sparsity",
        "Dense_0/kernel/threshold",
        "Dense_1/kernel/sparsity",
        "Dense_1/kernel/threshold",
    }
    # TF-style masked forward pass on the raw params gives the same logits.
    masked = jaxprune.apply_masks(state.params, state.opt_state)
    vars_ = {"batch_stats": state.batch_stats}
    np.testing.assert_array_equal(
        model.apply({"params": masked, **vars_}, x, train=False),
        model.apply({"params": state.params, **vars_}, x, train=False),
    )


def test_whole_variables_dict_names_start_with_collection():
    model = LinenNet(jnp.float32)
    variables = model.init(jax.random.key(0), jnp.ones((2, 12)))
    hp = HP.replace(weight_sparsity_map=("params/Dense_1/kernel:0.5",))
    tx = jaxprune.magnitude_pruning(hp, params_filter=lambda name, leaf: name.startswith("params"))
    state = tx.init(variables)
    assert set(jaxprune.summaries(state)) >= {"params/Dense_1/kernel/threshold"}
