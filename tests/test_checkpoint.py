"""Checkpoint and resume with orbax: the whole train state, on one device and sharded.

A run interrupted at step k and resumed from disk into freshly built objects (model,
optimizer, jitted step) must continue bit for bit like the uninterrupted run, masks included
(tfmot #206: restored checkpoints that silently lose their sparsity).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from jaxprune._src.checkpoint import abstract_state

N = 12  # training steps; masks update at steps 3, 6, 9, 12
FREQ = 3


def test_eight_devices():
    assert jax.device_count() == 8, "tests/conftest.py must force 8 host devices"


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(32)(x)


def _data():
    x = jax.random.normal(jax.random.key(1), (32, 16))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 32)
    return x, y


def _build():
    """Everything a training process builds from scratch: model, optimizer, jitted step."""
    model = MLP()
    hp = jaxprune.get_pruning_hparams().replace(
        pruning_frequency=FREQ,
        sparsity_function_end_step=9,
        target_sparsity=0.75,
        threshold_decay=0.1,  # the restored thresholds matter
        block_dims_map=("Dense_1/kernel:4x4",),
    )
    tx = optax.chain(optax.adam(1e-2), jaxprune.magnitude_pruning(hp))

    def loss(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    init_params = model.init(jax.random.key(0), _data()[0])["params"]
    return init_params, tx, step


def _mesh():
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _shard(tree, mesh):
    spec = lambda leaf: P("data", "model") if leaf.ndim == 2 else P("model")
    return jax.device_put(tree, jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), tree))


def _train(params, opt_state, step, start, stop, mesh=None, on_step=None):
    x, y = _data()
    if mesh is not None:
        x, y = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, y))
    for t in range(start + 1, stop + 1):
        params, opt_state = step(params, opt_state, x, y)
        if on_step is not None:
            on_step(t, params, opt_state)
    return params, opt_state


def _assert_identical(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _run(tmp_path, ks, mesh=None):
    """The uninterrupted run, saving a CheckpointManager checkpoint after each step in ks."""
    params, tx, step = _build()
    if mesh is not None:
        params = _shard(params, mesh)
    manager = ocp.CheckpointManager(tmp_path / "ckpt")

    def save(t, params, opt_state):
        if t in ks:
            manager.save(t, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}))

    final = _train(params, tx.init(params), step, 0, N, mesh, on_step=save)
    manager.wait_until_finished()
    manager.close()
    return final


def _resume(tmp_path, k, mesh=None):
    """A new process's view: fresh objects, the target from abstract_state, restore, go on."""
    params, tx, step = _build()
    if mesh is not None:
        params = _shard(params, mesh)
    abstract_params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    target = {"params": abstract_params, "opt_state": abstract_state(tx, abstract_params)}
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    restored = manager.restore(k, args=ocp.args.StandardRestore(target))
    manager.close()
    return restored, step


KS = (FREQ * 2 - 1, FREQ * 2)  # just before and just after the mask update at step 6


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    """One uninterrupted run (compiles are the cost), checkpointed after each step in KS."""
    path = tmp_path_factory.mktemp("run")
    return path, _run(path, set(KS))


@pytest.mark.parametrize("k", KS, ids=["before_update", "after_update"])
def test_resume_is_bit_identical(single_device_run, k):
    tmp_path, (final_params, final_state) = single_device_run
    restored, step = _resume(tmp_path, k)
    state = jaxprune.get_pruning_state(restored["opt_state"])
    assert isinstance(state, jaxprune.PruningState)
    assert int(state.count) == k and int(state.last_update_step) == k // FREQ * FREQ
    assert state.masks["Dense_0"]["bias"] == optax.MaskedNode()

    # tfmot #206: the restored params are sparse and the restored masks keep them so.
    for name in ("Dense_0", "Dense_1"):
        kernel, mask = restored["params"][name]["kernel"], state.masks[name]["kernel"]
        assert mask.dtype == jnp.bool_ and not bool(mask.all())
        assert bool(jnp.all(jnp.where(mask, True, kernel == 0)))
    params, opt_state = _train(restored["params"], restored["opt_state"], step, k, k + 1)
    if (k + 1) % FREQ:  # not a mask-update step: exactly the restored masks are applied
        for name in ("Dense_0", "Dense_1"):
            mask = state.masks[name]["kernel"]
            assert bool(jnp.all(jnp.where(mask, True, params[name]["kernel"] == 0)))

    params, opt_state = _train(params, opt_state, step, k + 1, N)
    _assert_identical(params, final_params)
    _assert_identical(opt_state, final_state)  # masks, thresholds, counts, Adam moments
    assert int(jaxprune.get_pruning_state(opt_state).last_update_step) == N


def test_resume_sharded(tmp_path):
    assert jax.device_count() == 8
    mesh = _mesh()
    k = FREQ * 2
    final_params, final_state = _run(tmp_path, {k}, mesh)
    restored, step = _resume(tmp_path, k, mesh)
    params, opt_state = restored["params"], restored["opt_state"]
    state = jaxprune.get_pruning_state(opt_state)
    for p, m, mu in zip(
        jax.tree.leaves(params),
        jax.tree.structure(params).flatten_up_to(state.masks),
        jax.tree.leaves(opt_state[0][0].mu),
        strict=True,
    ):
        assert p.sharding.spec == (P("data", "model") if p.ndim == 2 else P("model"))
        assert mu.sharding == p.sharding
        if not isinstance(m, optax.MaskedNode):
            assert m.sharding == p.sharding
    params, opt_state = _train(params, opt_state, step, k, N, mesh)
    _assert_identical(params, final_params)
    _assert_identical(opt_state, final_state)
    masks = jax.tree.structure(params).flatten_up_to(jaxprune.get_pruning_state(opt_state).masks)
    for p, m in zip(jax.tree.leaves(params), masks, strict=True):
        if not isinstance(m, optax.MaskedNode):
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim)


def test_stripped_params_load_without_jaxprune(single_device_run, tmp_path):
    _, (params, opt_state) = single_device_run
    stripped = jaxprune.strip_pruning(params, opt_state)
    path = tmp_path / "stripped"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, stripped)
    checkpointer.wait_until_finished()
    zeros = {
        f"{a}/{b}": int(np.sum(np.asarray(v) == 0))
        for a, layer in stripped.items()
        for b, v in layer.items()
    }
    assert zeros["Dense_0/kernel"] > 0.7 * 16 * 64 and zeros["Dense_1/kernel"] > 0.7 * 64 * 32
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import orbax.checkpoint as ocp
        params = ocp.StandardCheckpointer().restore(sys.argv[1])
        zeros = {f"{a}/{b}": int(np.sum(np.asarray(v) == 0))
                 for a, layer in params.items() for b, v in layer.items()}
        assert zeros == json.loads(sys.argv[2]), (zeros, sys.argv[2])
        assert not any(m.startswith("jaxprune") for m in sys.modules), "jaxprune imported"
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), json.dumps(zeros)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
