"""Structural performance invariants of jaxprune (no timing): compiled HLO and memory analysis."""

import math
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxprune

HP = jaxprune.get_pruning_hparams().replace(pruning_frequency=10, sparsity_function_end_step=100)


def _step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def _params():
    return {"w": jnp.ones((256, 256)), "v": jnp.ones((64, 128)), "b": jnp.ones(256)}


def _compiled_text(fn, *args):
    return fn.lower(*args).compile().as_text()


def _largest_sort(hlo: str) -> int:
    """Elements of the largest sort in the HLO (the select sorts only a <= 4096 sample)."""
    sizes = [0]
    for dims in re.findall(r"= \w+\[([\d,]*)\]\S* sort\(", hlo):
        sizes.append(math.prod(int(d) for d in dims.split(",") if d))
    return max(sizes)


def _computations(hlo: str) -> dict[str, str]:
    comps, name, body = {}, None, []
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line and "(" in line:
            name, body = line.split(" ", 1)[0].lstrip("%"), []
            if line.startswith("ENTRY"):
                name = "ENTRY"
        elif line.startswith("}") and name is not None:
            comps[name] = "\n".join(body)
            name = None
        elif name is not None:
            body.append(line)
    return comps


@pytest.mark.parametrize("method", ["exact", "histogram"])
def test_train_step_has_no_sort_or_topk(method):
    tx = optax.chain(
        optax.adam(1e-3), jaxprune.magnitude_pruning(HP.replace(threshold_method=method))
    )
    params = _params()
    hlo = _compiled_text(_step(tx), params, tx.init(params), params)
    assert _largest_sort(hlo) <= 4096
    assert " topk(" not in hlo and 'TopK"' not in hlo
    if method == "histogram":
        assert " scatter(" not in hlo  # the histogram threshold needs no scatter-add


def test_non_update_path_is_elementwise_only():
    """Outside the lax.cond the step has no loop and no reduction over a weight."""
    tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning(HP))
    params = _params()
    hlo = _compiled_text(_step(tx), params, tx.init(params), params)
    entry = _computations(hlo)["ENTRY"]
    assert "conditional(" in entry
    assert " while(" not in entry
    # No full-size copy of a mask or weight on the way through.
    assert "pred[256,256]{1,0} copy(" not in entry
    assert "f32[256,256]{1,0} copy(" not in entry


def test_state_masks_are_bool():
    state = jaxprune.magnitude_pruning(HP).init(_params())
    assert state.masks["w"].dtype == jnp.bool_ and state.masks["v"].dtype == jnp.bool_
    assert isinstance(state.masks["b"], optax.MaskedNode)


@pytest.mark.parametrize("method", ["exact", "histogram"])
def test_mask_update_temp_memory_below_two_weights(method):
    w = jax.ShapeDtypeStruct((4096, 4096), jnp.float32)
    s = jax.ShapeDtypeStruct((), jnp.float32)
    hp = HP.replace(threshold_method=method)
    fn = jax.jit(lambda w, s: jaxprune.weight_mask(w, s, hparams=hp))
    ma = fn.lower(w, s).compile().memory_analysis()
    weight_bytes = 4096 * 4096 * 4
    assert ma.temp_size_in_bytes <= 2 * weight_bytes + 65536
    hlo = fn.lower(w, s).compile().as_text()
    assert 0 < _largest_sort(hlo) <= 4096  # only the strided sample is sorted, never the weight
