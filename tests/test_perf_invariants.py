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
    """Length of the longest sorted row in the HLO.

    The selection sorts only a <= 4096-element sample per selection (one row each, sorted
    along the last axis when several selections share one loop).
    """
    sizes = [0]
    for dims in re.findall(r"= \w+\[([\d,]*)\]\S* sort\(", hlo):
        sizes.append([int(d) for d in dims.split(",") if d][-1])
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
        # The histogram threshold needs no scatter-add histogram of the weights. The only
        # scatters allowed are the per-row partial sums of small weights' shared selection
        # (one row of 128 keys each): never as many updates as a weight has entries.
        for dims in re.findall(r"= \w+\[([\d,]*)\]\S* scatter\(", hlo):
            assert math.prod(int(d) for d in dims.split(",") if d) <= (256 * 256 + 64 * 128) // 128


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
def test_mask_update_makes_no_full_size_float_copy(method):
    """The selection reads |w| from w itself: no magnitudes copy, no sorted copy.

    The histogram method's only full-size temp is in the branch that finds the largest finite
    magnitude when the weight holds Inf/NaN; XLA reserves it but touches it only then.
    """
    w = jax.ShapeDtypeStruct((4096, 4096), jnp.float32)
    s = jax.ShapeDtypeStruct((), jnp.float32)
    hp = HP.replace(threshold_method=method)
    fn = jax.jit(lambda w, s: jaxprune.weight_mask(w, s, hparams=hp))
    ma = fn.lower(w, s).compile().memory_analysis()
    weight_bytes = 4096 * 4096 * 4
    limit = 0.05 if method == "exact" else 1.05
    assert ma.temp_size_in_bytes <= limit * weight_bytes
    hlo = fn.lower(w, s).compile().as_text()
    assert 0 < _largest_sort(hlo) <= 4096  # only the strided sample is sorted, never the weight


def _adam_steps(params, x):
    """Compiled train steps, plain adam vs adam + pruning, that compute their gradients.

    Unlike ``_step`` (gradients passed in), the gradients are computed inside the step, as in
    real training: passed-in gradients are all live from the start, and XLA then schedules
    every kernel's update before the conds (20 MB of temps here instead of 4 MB).
    """

    def make(tx):
        def step(params, state, x):
            grads = jax.grad(lambda p: sum(jnp.sum(jnp.tanh(x * p[k])) for k in p))(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), x).compile()

    plain = make(optax.adam(1e-3))
    pruned = make(optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(HP)))
    return plain, pruned


def _mask_update_conds(entry: str) -> int:
    """Conditionals with outputs (the mask updates); the not-last warning's cond has none."""
    return sum(
        " conditional(" in line and "= () conditional(" not in line for line in entry.splitlines()
    )


def test_one_cond_per_large_leaf_and_one_update_buffer_at_a_time():
    """Each large kernel has its own cond: only one kernel's update is materialised at a time.

    With one cond over all kernels every kernel's update had to be live at once (a step's temp
    grew by the size of all of them, and XLA:CPU's fresh temp buffers cost page faults).
    """
    params = {f"w{i}": jnp.ones((1024, 1024)) for i in range(4)}
    plain, pruned = _adam_steps(params, jnp.float32(0.5))
    entry = _computations(pruned.as_text())["ENTRY"]
    assert _mask_update_conds(entry) == 4
    extra = pruned.memory_analysis().temp_size_in_bytes - plain.memory_analysis().temp_size_in_bytes
    assert extra <= 1.5 * 1024 * 1024 * 4


def test_small_leaves_of_any_shapes_share_one_cond_and_one_selection_loop():
    """Small kernels of 22 shapes compile one cond and one selection loop, and no sort."""
    params = {f"w{i}": jnp.ones((64, 64 + i)) for i in range(20)}
    params["other"] = jnp.ones((32, 64))
    params["conv"] = jnp.ones((3, 3, 8, 16))
    _, pruned = _adam_steps(params, jnp.float32(0.5))
    hlo = pruned.as_text()
    entry = _computations(hlo)["ENTRY"]
    assert _mask_update_conds(entry) == 1
    assert len(re.findall(r" while\(", hlo)) <= 2  # the selection, and nothing per leaf
    assert " sort(" not in hlo  # its first pass needs no sorted sample


def _fusions_reading(comps: dict[str, str], comp: str, shape: str) -> list[str]:
    """The fusions (or calls) made from ``comp`` whose computation takes a ``shape`` parameter."""
    out = []
    for line in comps[comp].splitlines():
        # A fusion, or (older XLA:CPU: jax 0.7) a call of the variadic reduce's computation.
        m = re.search(r" (?:fusion\(.*calls|call\(.*to_apply)=%([\w.\-]+)", line)
        if m and re.search(rf"{re.escape(shape)}\S* parameter\(", comps.get(m.group(1), "")):
            out.append(m.group(1))
    return out


@pytest.mark.parametrize("method", ["exact", "histogram"])
def test_one_read_of_the_weight_per_pass_and_one_for_the_mask(method):
    """Each counting pass reads the weight in exactly one fused loop (counts, min and max in
    one variadic reduce), and the mask is one more fused loop over the weight (the NaN test
    folded into its compare)."""
    w = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)
    s = jax.ShapeDtypeStruct((), jnp.float32)
    hp = HP.replace(threshold_method=method)
    hlo = _compiled_text(jax.jit(lambda w, s: jaxprune.weight_mask(w, s, hparams=hp)), w, s)
    comps = _computations(hlo)
    bodies = [
        m.group(1)
        for line in hlo.splitlines()
        for m in [re.search(r" while\(.*body=%([\w.\-]+)", line)]
        if m and "f32[1024,1024]" in line
    ]
    assert len(bodies) == 1, bodies  # the selection loop carries the weight
    assert len(_fusions_reading(comps, bodies[0], "f32[1024,1024]")) == 1
    # Outside the loop: the strided sample and the mask compare read the weight, nothing else
    # (the histogram method's Inf branch, in its own computation, is not in ENTRY).
    entry_readers = _fusions_reading(comps, "ENTRY", "f32[1024,1024]")
    masks = [c for c in entry_readers if "pred[1024,1024]" in comps[c].splitlines()[-1]]
    assert len(masks) == 1, entry_readers
