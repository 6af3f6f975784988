"""The recipes the docs give: gradient accumulation with optax.MultiSteps, and restoring an
nnx.Optimizer from an orbax checkpoint made on ``jaxprune.abstract_state``.

README "Gradient accumulation" and docs/scaling.md "Flax NNX: restoring an nnx.Optimizer" state
what these tests check; the expected sparsities are TF's schedule worked by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune

# s(t) = 0.5 * (1 - (1 - t / 10) ** 3) for t <= 10: s(3) = 0.5 * (1 - 0.343) = 0.3285.
HP = jaxprune.get_pruning_hparams().replace(
    target_sparsity=0.5, pruning_frequency=1, sparsity_function_end_step=10
)
K = 4  # micro-steps per optimizer step
MICRO_STEPS = 12


def _params():
    return {"w": jnp.arange(1.0, 101.0).reshape(10, 10), "b": jnp.ones(10)}


def _run(tx):
    params = _params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(MICRO_STEPS):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, jaxprune.get_pruning_state(state)


def test_multisteps_pruning_inside_counts_optimizer_steps():
    """Inside MultiSteps the pruning transform runs once per optimizer step (every K grads)."""
    tx = optax.MultiSteps(optax.chain(optax.sgd(0.0), jaxprune.magnitude_pruning(HP)), K)
    params, state = _run(tx)
    assert int(state.count) == MICRO_STEPS // K == 3
    assert int(state.last_update_step) == 3
    assert float(state.sparsity) == pytest.approx(0.3285, abs=1e-6)
    # k = round(100 * (1 - 0.3285)) = 67 weights kept: the largest, 34..100.
    w = np.asarray(params["w"])
    assert np.count_nonzero(w) == 67 and np.all(w.ravel()[33:] != 0)


def test_multisteps_pruning_outside_counts_micro_steps():
    """After MultiSteps in a chain, the pruning transform sees (and counts) every micro-step."""
    tx = optax.chain(
        optax.MultiSteps(optax.sgd(0.0), K).gradient_transformation(),
        jaxprune.magnitude_pruning(HP),
    )
    params, state = _run(tx)
    assert int(state.count) == MICRO_STEPS == 12
    assert int(state.last_update_step) == 12
    assert float(state.sparsity) == 0.5  # s(12): past sparsity_function_end_step
    assert np.count_nonzero(np.asarray(params["w"])) == 50


def test_nnx_optimizer_restores_from_abstract_state_checkpoint(tmp_path):
    """Save plain arrays; restore onto abstract_state; copy into a fresh nnx.Optimizer."""
    nnx = pytest.importorskip("flax.nnx")
    ocp = pytest.importorskip("orbax.checkpoint")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.dense1 = nnx.Linear(8, 16, rngs=rngs)
            self.dense2 = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            return self.dense2(jax.nn.relu(self.dense1(x)))

    hp = HP.replace(pruning_frequency=2)
    tx = optax.chain(optax.adam(1e-2), jaxprune.magnitude_pruning(hp))
    x = jax.random.normal(jax.random.key(0), (16, 8))
    y = jax.random.randint(jax.random.key(1), (16,), 0, 4)

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        optimizer.update(model, nnx.grad(loss_fn)(model))

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(5):
        train_step(model, optimizer)

    # Save: plain arrays (the values inside nnx's boxes).
    is_var = lambda v: isinstance(v, nnx.Variable)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(
        tmp_path / "ckpt",
        {
            "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            "opt_state": jax.tree.map(lambda v: v[...], optimizer.opt_state, is_leaf=is_var),
        },
    )
    checkpointer.wait_until_finished()

    # Restore into a fresh model and optimizer (other initial weights).
    model2 = MLP(nnx.Rngs(1))
    optimizer2 = nnx.Optimizer(model2, tx, wrt=nnx.Param)
    abstract_params = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.state(model2, nnx.Param)))
    target = {"params": abstract_params, "opt_state": jaxprune.abstract_state(tx, abstract_params)}
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    params_state = nnx.state(model2, nnx.Param)
    nnx.replace_by_pure_dict(params_state, restored["params"])
    nnx.update(model2, params_state)
    boxes = jax.tree.leaves(optimizer2.opt_state, is_leaf=is_var)
    for box, value in zip(boxes, jax.tree.leaves(restored["opt_state"]), strict=True):
        box[...] = value

    state2 = jaxprune.get_pruning_state(optimizer2.opt_state)
    assert int(state2.count) == 5 and int(state2.last_update_step) == 4
    # The resumed run continues bit for bit like the uninterrupted one.
    for _ in range(3):
        train_step(model, optimizer)
        train_step(model2, optimizer2)
    for a, b in zip(
        jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(model2)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    masks = jaxprune.get_pruning_state(optimizer2.opt_state).masks
    assert np.all(
        np.asarray(model2.dense1.kernel[...])[~np.asarray(masks["dense1"]["kernel"])] == 0
    )
