"""Warnings from compiled code: no hang, attributed to the user's line (diagnostics.py)."""

import os
import subprocess
import sys
import textwrap

import pytest

# Each program warns from a jax.debug.callback on most of its eager updates while the main
# thread dispatches the next one: the setting in which a callback that dispatched JAX work
# (iterating a jax.Array) deadlocked in 11 of 12 fresh processes before the fix.
_CHAIN = """
    tx = optax.chain(jaxprune.magnitude_pruning(hp), optax.adam(1e-2))  # the wrong order
    state = tx.init(params)
    for i in range(8):
        g = jax.random.normal(jax.random.key(i), (64, 64))
        updates, state = tx.update({"w": g}, state, params)  # USER LINE
        params = optax.apply_updates(params, updates)
"""
_SEPARATE = """
    pruning = jaxprune.Pruning(hp)
    tx = optax.chain(pruning.masks_transform(), optax.adam(1e-2))  # the wrong order
    state = tx.init(params)
    for i in range(8):
        g = jax.random.normal(jax.random.key(i), (64, 64))
        updates, state = tx.update({"w": g}, state, params)
        params = optax.apply_updates(params, updates)
        params, state = pruning.update_masks(params, state)  # USER LINE
"""
_PROGRAM = """
import warnings
import jax, optax, jaxprune
hp = jaxprune.get_pruning_hparams().replace(
    target_sparsity=0.5, pruning_frequency=1, sparsity_function_end_step=4)
params = {{"w": jax.random.normal(jax.random.key(0), (64, 64))}}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
{body}
    jax.block_until_ready(params)
    jax.effects_barrier()
lines = {{(w.filename, w.lineno) for w in caught if "nonzero in ['w']" in str(w.message)}}
print(len(caught), sorted(lines))
"""

_PROCESSES = 6


@pytest.mark.parametrize("body", [_CHAIN, _SEPARATE], ids=["chain", "update_masks"])
def test_warning_from_a_callback_never_hangs_and_points_at_the_user_line(tmp_path, body):
    program = tmp_path / "prog.py"
    program.write_text(_PROGRAM.format(body=textwrap.indent(textwrap.dedent(body), "    ")))
    user_line = 1 + program.read_text().splitlines().index(
        next(line for line in program.read_text().splitlines() if "# USER LINE" in line)
    )
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(program)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(_PROCESSES)
    ]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a fresh process hung on a warning reported from a jax.debug.callback")
        assert proc.returncode == 0, err.decode()[-2000:]
        outputs.append(out.decode().strip())
    for out in outputs:
        count, _, lines = out.partition(" ")
        assert int(count) >= 4, out  # warned on most mask updates
        assert lines == str([(str(program), user_line)]), out
