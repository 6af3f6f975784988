"""Shared helpers of the benchmark scripts: models, jitted train steps, interleaved timing."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax


def machine() -> str:
    """``lscpu`` model name, core count, jax version and backend."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores; jax {jax.__version__}, backend {jax.default_backend()}"
    )


# ---------------------------------------------------------------------------- models


def mlp_model(width: int = 1024, depth: int = 4, batch: int = 256):
    """A ``depth`` x (width x width) ReLU MLP with an MSE loss; (params, batch, loss_fn)."""
    keys = jax.random.split(jax.random.key(0), depth + 2)
    params = {
        f"dense{i}": {
            "kernel": jax.random.normal(keys[i], (width, width), jnp.float32) / np.sqrt(width),
            "bias": jnp.zeros((width,), jnp.float32),
        }
        for i in range(depth)
    }
    x = jax.random.normal(keys[-2], (batch, width), jnp.float32)
    y = jax.random.normal(keys[-1], (batch, width), jnp.float32)

    def loss_fn(p, x, y):
        h = x
        for i in range(depth):
            h = h @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"]["bias"]
            if i < depth - 1:
                h = jax.nn.relu(h)
        return jnp.mean((h - y) ** 2)

    return params, (x, y), loss_fn


def cnn_model(batch: int = 64):
    """A small CNN (conv 3x3x32, conv 3x3x64, 2x2 avg pools, dense 256, dense 10) on 32x32x3."""
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(32, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Conv(64, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)
            x = nn.relu(nn.Dense(256)(x))
            return nn.Dense(10)(x)

    model = CNN()
    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    params = model.init(jax.random.key(0), x)["params"]

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, (x, y), loss_fn


def deep_mlp_model(depth: int = 50, width: int = 64, batch: int = 8):
    """A ``depth``-layer narrow MLP, for compile-time measurements."""
    return mlp_model(width=width, depth=depth, batch=batch)


def tapered_mlp_model(depth: int = 50, width: int = 64, batch: int = 8):
    """A ``depth``-layer MLP whose layers all differ: layer i maps width+2i -> width+2i+2.

    Every kernel has its own shape (as in most real models), so XLA compiles every layer's
    kernels separately, with pruning as without.
    """
    widths = [width + 2 * i for i in range(depth + 1)]
    keys = jax.random.split(jax.random.key(0), depth + 2)
    params = {
        f"dense{i}": {
            "kernel": jax.random.normal(keys[i], (widths[i], widths[i + 1]), jnp.float32)
            / np.sqrt(widths[i]),
            "bias": jnp.zeros((widths[i + 1],), jnp.float32),
        }
        for i in range(depth)
    }
    x = jax.random.normal(keys[-2], (batch, widths[0]), jnp.float32)
    y = jax.random.normal(keys[-1], (batch, widths[-1]), jnp.float32)

    def loss_fn(p, x, y):
        h = x
        for i in range(depth):
            h = h @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"]["bias"]
            if i < depth - 1:
                h = jax.nn.relu(h)
        return jnp.mean((h - y) ** 2)

    return params, (x, y), loss_fn


# ---------------------------------------------------------------------------- steps


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, donate: bool = True):
    """``step(params, opt_state, x, y) -> (params, opt_state, loss)``, jitted, buffers donated."""

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def copy_tree(tree: Any) -> Any:
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


class Runner:
    """Holds one (step, params, opt_state) and times single steps (``block_until_ready``)."""

    def __init__(self, step: Callable, params: Any, opt_state: Any, batch: tuple):
        self.step, self.params, self.opt_state, self.batch = step, params, opt_state, batch
        self.count = 0  # number of steps taken = the pruning state's count

    def run(self) -> float:
        t0 = time.perf_counter()
        self.params, self.opt_state, loss = self.step(self.params, self.opt_state, *self.batch)
        jax.block_until_ready((self.params, self.opt_state, loss))
        self.count += 1
        return time.perf_counter() - t0


def interleaved(runners: dict[str, Runner], block: int, rounds: int) -> dict[str, list[list]]:
    """Alternates blocks of ``block`` steps of each runner, ``rounds`` times.

    Returns, per runner, a list of rounds, each a list of ``(global step, seconds)``. The order
    of the runners alternates every round so neither always runs first.
    """
    names = list(runners)
    out = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runner = runners[name]
            times = []
            for _ in range(block):
                dt = runner.run()
                times.append((runner.count, dt))
            out[name].append(times)
    return out


def median_ms(values) -> float:
    return float(np.median(np.asarray(values))) * 1e3


def timeit(fn: Callable, *args, repeats: int = 5) -> float:
    """Median wall time in ms of ``fn(*args)`` after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3
