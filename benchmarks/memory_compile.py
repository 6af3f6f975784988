"""Memory added by pruning, peak memory of a mask update, and compile time with vs without pruning.

* state bytes: ``tx.init(params)`` of adam+pruning minus adam alone, per pruned parameter
  (bool masks: 1 byte; TF kept float32 masks: 4 bytes, plus a float32 threshold per weight).
* mask update of one 4096x4096 float32 weight (``weight_mask``, exact and histogram):
  ``jax.jit(...).lower(...).compile().memory_analysis()`` temp and output bytes relative to the
  weight's bytes. A full sort would need a sorted copy (1x the weight) plus sort scratch.
* compile time of the jitted train step of a 50-layer MLP (50 x 64x64 kernels, adam), with and
  without pruning (``lower`` + ``compile``, fresh functions, median of 3).

Usage: python benchmarks/memory_compile.py [--layers 50]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import deep_mlp_model, machine, make_step, mlp_model
from mask_cost import mask_fn as _mask

import jaxprune

HP = jaxprune.get_pruning_hparams().replace(pruning_frequency=10, sparsity_function_end_step=1000)


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def state_bytes() -> dict:
    params, _, _ = mlp_model()
    pruned = sum(x.size for x in jax.tree.leaves(params) if x.ndim >= 2)
    plain = nbytes(optax.adam(1e-3).init(params))
    ours = nbytes(optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(HP)).init(params))
    return {
        "pruned_params": pruned,
        "added_bytes": ours - plain,
        "per_param": (ours - plain) / pruned,
    }


@jax.jit
def _sort_mask(w, s):
    a = jnp.abs(w)
    t = jnp.sort(a.ravel())[::-1][jaxprune.num_kept(a.size, s) - 1]
    return t, a >= t


def mask_memory(shape=(4096, 4096)) -> list[dict]:
    w = jax.ShapeDtypeStruct(shape, jnp.float32)
    s = jax.ShapeDtypeStruct((), jnp.float32)
    wbytes = int(np.prod(shape)) * 4
    rows = []
    for name, fn in [
        ("exact", partial(_mask, method="exact")),
        ("histogram", partial(_mask, method="histogram")),
        ("full sort (TF-style)", _sort_mask),
    ]:
        ma = jax.jit(fn).lower(w, s).compile().memory_analysis()
        rows.append(
            {
                "what": name,
                "temp": ma.temp_size_in_bytes / wbytes,
                "output": ma.output_size_in_bytes / wbytes,
            }
        )
    return rows


def compile_time(layers: int, repeats: int = 3) -> dict:
    params, batch, loss_fn = deep_mlp_model(depth=layers)
    out = {}
    for name in ("plain", "pruned"):
        tx = optax.adam(1e-3)
        if name == "pruned":
            tx = optax.chain(tx, jaxprune.magnitude_pruning(HP))
        state = tx.init(params)
        times = []
        for _ in range(repeats):
            step = make_step(loss_fn, tx)  # a fresh function: no compilation cache hit
            t0 = time.perf_counter()
            step.lower(params, state, *batch).compile()
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    out["ratio"] = out["pruned"] / out["plain"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=50)
    args = parser.parse_args(argv)
    print(machine())
    sb = state_bytes()
    print(
        f"optimizer-state bytes added by pruning (MLP 4x1024x1024): {sb['added_bytes']:,} "
        f"for {sb['pruned_params']:,} pruned params = **{sb['per_param']:.4f} B/param** "
        "(TF: 4 B/param float32 mask + 4 B threshold per weight)"
    )
    print("\n| mask update, 4096x4096 f32 | temp / weight bytes | output / weight bytes |")
    print("|---|---|---|")
    mem = mask_memory()
    for r in mem:
        print(f"| {r['what']} | **{r['temp']:.3f}** | {r['output']:.3f} |")
    ct = compile_time(args.layers)
    print(
        f"\ncompile time, {args.layers}-layer MLP train step: plain {ct['plain']:.2f} s, "
        f"pruned {ct['pruned']:.2f} s, ratio **{ct['ratio']:.2f}**"
    )
    return {"state": sb, "memory": mem, "compile": ct}


if __name__ == "__main__":
    main()
