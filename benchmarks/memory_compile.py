"""Memory added by pruning, peak memory of a mask update, and compile time with vs without pruning.

* state bytes: ``tx.init(params)`` of adam+pruning minus adam alone, per pruned parameter
  (bool masks: 1 byte; TF kept float32 masks: 4 bytes, plus a float32 threshold per weight).
* mask update of one 4096x4096 float32 weight (``weight_mask``, exact and histogram):
  ``jax.jit(...).lower(...).compile().memory_analysis()`` temp and output bytes relative to the
  weight's bytes. A full sort would need a sorted copy (1x the weight) plus sort scratch.
* compile time of the jitted train step of a 50-layer MLP, with and without pruning
  (``compile`` of fresh functions, wall and CPU seconds): 50 identical 64x64 kernels (median
  of 3; XLA compiles identical kernels once, so the plain step is unusually cheap), and 50
  layers of distinct shapes (one repeat; every layer compiles its own kernels).

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
from common import deep_mlp_model, machine, make_step, mlp_model, tapered_mlp_model
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


def compile_time(layers: int, repeats: int = 3, model=deep_mlp_model) -> dict:
    """Compile time of the train step, plain adam vs adam + pruning: wall and CPU seconds.

    Both variants are lowered first; each repeat compiles a fresh function (no cache hit),
    plain and pruned alternating. CPU time (all threads of this process) is the steadier
    figure on a shared machine; wall time is what a user waits.
    """
    params, batch, loss_fn = model(depth=layers)
    pruning = jaxprune.Pruning(HP)
    txs = {
        "plain": optax.adam(1e-3),
        "pruned": optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(HP)),
        "separate": optax.chain(optax.adam(1e-3), pruning.masks_transform()),
    }
    states = {name: tx.init(params) for name, tx in txs.items()}
    names = [*txs, "update_masks"]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            if name == "update_masks":  # the separate update's own jitted call
                fn = jax.jit(lambda p, s: pruning.update_masks(p, s), donate_argnums=(0, 1))
                lowered = fn.lower(params, states["separate"])
            else:
                lowered = make_step(loss_fn, txs[name]).lower(params, states[name], *batch)
            t0, c0 = time.perf_counter(), time.process_time()
            lowered.compile()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out = {
        f"{k}_{name}": float(np.median(v[name]))
        for k, v in (("wall", wall), ("cpu", cpu))
        for name in names
    }
    out["ratio"] = out["wall_pruned"] / out["wall_plain"]
    out["cpu_ratio"] = out["cpu_pruned"] / out["cpu_plain"]
    for k in ("wall", "cpu"):
        out[f"{k}_separate_ratio"] = out[f"{k}_separate"] / out[f"{k}_plain"]
        out[f"{k}_separate_total_ratio"] = (out[f"{k}_separate"] + out[f"{k}_update_masks"]) / out[
            f"{k}_plain"
        ]
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
    print(
        f"\n| compile, {args.layers}-layer MLP | plain step s | chain step s | ratio | "
        "separate: step s / update_masks s | ratio step / step + update |"
    )
    print("|---|---|---|---|---|---|")
    ct = {}
    for label, model, repeats in (
        ("identical 64x64 layers", deep_mlp_model, 3),
        ("distinct layers (64+2i)x(66+2i)", tapered_mlp_model, 1),
    ):
        c = ct[label] = compile_time(args.layers, repeats=repeats, model=model)
        for k in ("wall", "cpu"):
            print(
                f"| {label}, {k} | {c[k + '_plain']:.2f} | {c[k + '_pruned']:.2f} | "
                f"**{c[k + '_pruned'] / c[k + '_plain']:.2f}** | {c[k + '_separate']:.2f} / "
                f"{c[k + '_update_masks']:.2f} | **{c[k + '_separate_ratio']:.2f}** / "
                f"{c[k + '_separate_total_ratio']:.2f} |",
                flush=True,
            )
    return {"state": sb, "memory": mem, "compile": ct}


if __name__ == "__main__":
    main()
