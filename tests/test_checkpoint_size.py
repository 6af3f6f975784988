"""Checkpoint bytes of stripped pruned params: an orbax checkpoint shrinks with the zeros.

Answers tfmot #206 and TF #32805 ("the pruned model file is not smaller") with a number: orbax
compresses each array, so a 90 %-sparse float32 model saved as plain dense arrays with zeros
takes at most 0.15x the bytes of the dense model's checkpoint. The information-theoretic
reference is a bitmask (1 bit per weight) plus the kept values: 1/32 + 0.1 = 0.131x of the raw
float32 bytes.
"""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import jaxprune

DIMS = (512, 1024, 512, 16)  # a 3-layer MLP, about 1.06M params (4.2 MB in float32)


def _mlp_params():
    rng = np.random.default_rng(0)  # NumPy: no per-shape compilation of jax.random
    return {
        f"dense{i}": {
            "kernel": jnp.asarray(rng.standard_normal((a, b), np.float32) / np.sqrt(a)),
            "bias": jnp.asarray(0.1 * rng.standard_normal(b, np.float32)),
        }
        for i, (a, b) in enumerate(itertools.pairwise(DIMS))
    }


def _saved_bytes(path, params) -> int:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, params)
    checkpointer.wait_until_finished()
    checkpointer.close()
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def test_orbax_checkpoint_of_90_percent_sparse_float32_model_is_at_most_015x_dense(tmp_path):
    params = _mlp_params()
    # prune's output is what strip_pruning returns: plain dense arrays, pruned weights exactly 0.
    stripped, masks = jaxprune.prune(params, sparsity=0.9)

    # Independent checks of what is saved: 90 % zeros in every kernel, biases untouched.
    leaves = jax.tree_util.tree_flatten_with_path(stripped)[0]
    raw = kept = bitmask_bound = 0
    for path, leaf in leaves:
        a = np.asarray(leaf)
        raw += a.nbytes
        if a.ndim >= 2:
            nonzero = np.count_nonzero(a)
            assert nonzero == round(a.size * 0.1), (jaxprune.path_name(path), nonzero)
            kept += nonzero
            bitmask_bound += -(-a.size // 8) + nonzero * a.itemsize
        else:
            bitmask_bound += a.nbytes
    assert all(m is None for m in (masks["dense0"]["bias"], masks["dense2"]["bias"]))

    dense_bytes = _saved_bytes(tmp_path / "dense", params)
    sparse_bytes = _saved_bytes(tmp_path / "sparse", stripped)
    ratio = sparse_bytes / dense_bytes
    message = (
        f"orbax checkpoint of the 90 %-sparse float32 MLP: {sparse_bytes:,} B vs dense "
        f"{dense_bytes:,} B = {ratio:.4f}x (raw float32 {raw:,} B: {sparse_bytes / raw:.4f}x); "
        f"bitmask + values bound {bitmask_bound:,} B = {bitmask_bound / raw:.4f}x of raw, "
        f"{bitmask_bound / dense_bytes:.4f}x of the dense checkpoint"
    )
    assert ratio <= 0.15, message
    # Sanity of the measurement itself: the dense checkpoint holds (about) the raw bytes, and
    # nothing can beat storing one bit per weight and the kept values by much.
    assert 0.85 * raw <= dense_bytes <= 1.05 * raw, message
    assert sparse_bytes >= 0.9 * kept * 4, message


def test_saved_stripped_params_restore_bit_for_bit(tmp_path):
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.standard_normal((64, 32), np.float32)), "b": jnp.ones(32)}
    stripped, _ = jaxprune.prune(params, sparsity=0.9)
    _saved_bytes(tmp_path / "ckpt", stripped)
    restored = ocp.StandardCheckpointer().restore(tmp_path / "ckpt")
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(stripped["w"]))
    np.testing.assert_array_equal(np.asarray(restored["b"]), np.ones(32, np.float32))
    assert np.count_nonzero(np.asarray(restored["w"])) == round(64 * 32 * 0.1)
