"""What sparsity buys: inference time, memory and checkpoint bytes of pruned models.

Models (float32, weights ~ N(0, 1/fan_in), biases ~ 0.1 N(0, 1), NumPy seeds):

* ``layer``: one Dense layer ``x @ W + b``, W 4096x4096;
* ``mlp``: a small ReLU MLP 1024 -> 2048 -> 2048 -> 1024 (8.4M params).

Variants, at each sparsity (50/75/90/95 %) and batch (1/32/256):

* ``dense with zeros``: ``jaxprune.prune`` (unstructured, per layer) -- the same arrays and
  FLOPs as the unpruned model, pruned weights exactly 0;
* ``BCOO``: the same pruned params through ``jaxprune.to_bcoo`` (``jax.experimental.sparse``),
  ``x @ W`` with ``W`` a BCOO;
* ``shrunk (channels)``: ``jaxprune.prune`` with ``sparsity_type="channel"`` (output channels
  of smallest L2 norm; for the MLP only the hidden layers, the model's output stays whole),
  then the smaller dense arrays are built *by hand in this script* (not with
  ``jaxprune.shrink``): the layer keeps its kept columns (and bias entries); in the MLP a
  hidden layer keeps its kept columns and the next layer the matching rows, and the constant
  ``relu(bias)`` of a removed hidden unit is folded into the next layer's bias. The script
  checks that the shrunk model computes what the channel-masked dense model computes (for the
  single layer: its kept outputs). Shrunk arrays hold fewer weights than ``1 - s`` of the
  dense ones in the MLP (removing a unit removes a column *and* a row); the ``params`` column
  says how many.

Timing: one jitted, AOT-compiled function per (model, variant, sparsity, batch). Within each
(model, sparsity, batch) cell the three variants alternate, one sample each per round, the
order reversed every other round; a sample is the mean of enough back-to-back calls
(``block_until_ready`` after each) to last ~20 ms. Reported: median over rounds, with
[min-max]. Outputs of BCOO and dense agree (and shrunk agrees with channel-masked dense) to
float32 tolerance; the script stops otherwise.

Memory: bytes of the params each variant passes (BCOO: values + int32 indices), and the
compiled function's temporaries (``compile().memory_analysis().temp_size_in_bytes``). A BCOO
matmul on CPU materialises about ``nse x batch`` products; a cell whose temporaries exceed
``--max-temp-gib`` is not run (its temp size is still reported).

Checkpoints: the MLP's stripped params (``prune`` output: dense arrays with zeros, what
``strip_pruning`` returns) saved with ``orbax.checkpoint.StandardCheckpointer`` at 50/90/95 %,
in float32 and bfloat16 (the float32 arrays cast), and the shrunk params; bytes on disk summed
over the checkpoint directory, against the dense model's checkpoint of the same dtype and
against the bitmask + values bound (1 bit per weight of a pruned kernel + the kept values +
the dense biases).

Usage: python benchmarks/what_sparsity_buys.py [--quick] [--rounds 7] [--max-temp-gib 1]
         [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import machine

import jaxprune

SPARSITIES = (0.5, 0.75, 0.9, 0.95)
BATCHES = (1, 32, 256)
CKPT_SPARSITIES = (0.5, 0.9, 0.95)
VARIANTS = ("dense with zeros", "BCOO", "shrunk (channels)")
MIB = 2**20


# ---------------------------------------------------------------------------- models


def make_params(dims: tuple[int, ...], seed: int = 0) -> dict:
    """``{"dense{i}": {"kernel": (d_i, d_i+1), "bias": (d_i+1,)}}``, float32, NumPy RNG."""
    rng = np.random.default_rng(seed)
    return {
        f"dense{i}": {
            "kernel": jnp.asarray(rng.standard_normal((a, b), np.float32) / np.sqrt(a)),
            "bias": jnp.asarray(0.1 * rng.standard_normal(b, np.float32)),
        }
        for i, (a, b) in enumerate(itertools.pairwise(dims))
    }


def forward(params: dict, x: jax.Array) -> jax.Array:
    """ReLU MLP over ``dense0, dense1, ...``; no ReLU after the last layer. BCOO kernels work."""
    n = len(params)
    for i in range(n):
        layer = params[f"dense{i}"]
        x = x @ layer["kernel"] + layer["bias"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


_PRUNED: dict = {}


def pruned_variants(dims: tuple[int, ...], sparsity: float) -> dict:
    """``make_params(dims)`` pruned at ``sparsity``, unstructured and by channel (memoised)."""
    key = (dims, sparsity)
    if key not in _PRUNED:
        params = make_params(dims)
        pruned, masks = jaxprune.prune(params, sparsity=sparsity)
        cmasked, cmasks = channel_prune(params, sparsity)
        small, kept_outputs = shrink_by_hand(params, cmasks)
        _PRUNED[key] = {
            "pruned": pruned,
            "masks": masks,
            "cmasked": cmasked,
            "small": small,
            "kept_outputs": kept_outputs,
        }
    return _PRUNED[key]


def channel_prune(params: dict, sparsity: float) -> tuple[dict, dict]:
    """Channel masks: output channels of smallest L2 norm; the MLP's last layer is left whole."""
    hp = jaxprune.get_pruning_hparams().replace(sparsity_type="channel")
    last = f"dense{len(params) - 1}/"
    single = len(params) == 1

    def is_pruned(name: str, leaf: Any) -> bool:
        return leaf.ndim >= 2 and (single or not name.startswith(last))

    return jaxprune.prune(params, hp, sparsity=sparsity, params_filter=is_pruned)


def shrink_by_hand(params: dict, masks: dict) -> tuple[dict, np.ndarray | None]:
    """Removes pruned channels (see the module docstring); returns the small params.

    Also returns, for a single layer, the kept output columns (the shrunk layer computes only
    those outputs; the removed ones are the constant bias, for the next layer to absorb).
    """
    n = len(params)
    out: dict = {}
    prev_keep = const = None
    kept_outputs = None
    for i in range(n):
        name = f"dense{i}"
        mask = masks[name]["kernel"]
        w = np.asarray(params[name]["kernel"])
        b = np.asarray(params[name]["bias"]).copy()
        if mask is not None:
            w = np.where(np.asarray(mask), w, 0)
        if prev_keep is not None:
            b = b + const @ w[~prev_keep]  # the removed units' constant outputs
            w = w[prev_keep]
            prev_keep = None
        if mask is not None:
            keep = np.asarray(mask).any(axis=0)
            if n == 1:
                kept_outputs = keep
            else:
                const = np.maximum(b[~keep], 0)  # relu(b): their pre-activation is the bias
                prev_keep = keep
            w, b = w[:, keep], b[keep]
        out[name] = {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}
    return out, kept_outputs


def nbytes(tree: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------- timing


class Fn:
    """One AOT-compiled forward with its arguments, its temp bytes and a calibrated timer."""

    def __init__(self, params: Any, x: jax.Array, compiled: Any = None):
        self.params, self.x = params, x
        self.compiled = compiled or jax.jit(forward).lower(params, x).compile()
        self.temp = int(self.compiled.memory_analysis().temp_size_in_bytes)
        self.inner = 1
        self.samples: list[float] = []

    def __call__(self) -> jax.Array:
        return self.compiled(self.params, self.x)

    def calibrate(self, target_s: float) -> None:
        jax.block_until_ready(self())  # warm-up
        t0 = time.perf_counter()
        jax.block_until_ready(self())
        one = time.perf_counter() - t0
        self.inner = int(min(50, max(1, round(target_s / max(one, 1e-6)))))

    def sample(self) -> None:
        t0 = time.perf_counter()
        for _ in range(self.inner):
            jax.block_until_ready(self())
        self.samples.append((time.perf_counter() - t0) / self.inner)


def stats_ms(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1e3
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}


def check_close(got: jax.Array, want: np.ndarray, what: str) -> None:
    got = np.asarray(got, np.float64)
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    if not err <= 2e-4 * scale:
        raise AssertionError(f"{what}: outputs differ from the masked dense model by {err:.3g}")


def measure_model(name, dims, sparsities, batches, rounds, max_temp, target_s) -> list[dict]:
    params = make_params(dims)
    dense_params = nbytes(params)
    rng = np.random.default_rng(1)
    xs = {b: jnp.asarray(rng.standard_normal((b, dims[0]), np.float32)) for b in batches}
    dense_compiled = {b: jax.jit(forward).lower(params, xs[b]).compile() for b in batches}
    rows = []
    for s in sparsities:
        v = pruned_variants(dims, s)
        pruned, cmasked, small = v["pruned"], v["cmasked"], v["small"]
        kept_outputs = v["kept_outputs"]
        bcoo = jaxprune.to_bcoo(pruned, v["masks"])
        sizes = {VARIANTS[0]: nbytes(pruned), VARIANTS[1]: nbytes(bcoo), VARIANTS[2]: nbytes(small)}
        for b in batches:
            fns = {
                VARIANTS[0]: Fn(pruned, xs[b], dense_compiled[b]),
                VARIANTS[1]: Fn(bcoo, xs[b]),
                VARIANTS[2]: Fn(small, xs[b]),
            }
            skipped = {v for v, f in fns.items() if f.temp > max_temp}
            # Correctness first: BCOO = dense with zeros; shrunk = channel-masked dense.
            want = np.asarray(fns[VARIANTS[0]](), np.float64)
            if VARIANTS[1] not in skipped:
                check_close(fns[VARIANTS[1]](), want, f"{name} BCOO s={s} b={b}")
            want_c = np.asarray(dense_compiled[b](cmasked, xs[b]), np.float64)
            if kept_outputs is not None:
                want_c = want_c[:, kept_outputs]
            check_close(fns[VARIANTS[2]](), want_c, f"{name} shrunk s={s} b={b}")
            active = [v for v in VARIANTS if v not in skipped]
            for v in active:
                fns[v].calibrate(target_s)
            for r in range(rounds):
                for v in active if r % 2 == 0 else active[::-1]:
                    fns[v].sample()
            for v in VARIANTS:
                row = {
                    "model": name,
                    "sparsity": s,
                    "batch": b,
                    "variant": v,
                    "params_bytes": sizes[v],
                    "params_x": sizes[v] / dense_params,
                    "temp_bytes": fns[v].temp,
                    "time_ms": None if v in skipped else stats_ms(fns[v].samples),
                }
                rows.append(row)
            print(f"  {name} s={s} b={b}: done", flush=True)
    return rows


# ---------------------------------------------------------------------------- checkpoints


def saved_bytes(params: Any) -> int:
    import orbax.checkpoint as ocp

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt")
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, params)
        checkpointer.wait_until_finished()
        checkpointer.close()
        return sum(
            os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(path)
            for f in files
        )


def bitmask_bound(tree: Any) -> int:
    """1 bit per weight of each kernel (ndim >= 2) + its nonzero values; other leaves dense."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        if a.ndim >= 2:
            total += -(-a.size // 8) + np.count_nonzero(a) * a.itemsize
        else:
            total += a.nbytes
    return total


def measure_checkpoints(dims, sparsities) -> list[dict]:
    params = make_params(dims)
    rows = []
    for dtype in (jnp.float32, jnp.bfloat16):

        def cast(tree, dtype=dtype):
            return jax.tree.map(lambda a: a.astype(dtype), tree)

        dense = cast(params)
        dense_disk, dense_raw = saved_bytes(dense), nbytes(dense)
        rows.append(
            {
                "dtype": jnp.dtype(dtype).name,
                "what": "dense",
                "sparsity": 0.0,
                "bytes": dense_disk,
                "x_dense_ckpt": 1.0,
                "x_raw": dense_disk / dense_raw,
                "bound_x_raw": 1.0,
            }
        )
        for s in sparsities:
            stripped = cast(pruned_variants(dims, s)["pruned"])
            small = cast(pruned_variants(dims, s)["small"])
            for what, tree, bound in (
                ("stripped (dense with zeros)", stripped, bitmask_bound(stripped)),
                ("shrunk (channels)", small, nbytes(small)),
            ):
                disk = saved_bytes(tree)
                rows.append(
                    {
                        "dtype": jnp.dtype(dtype).name,
                        "what": what,
                        "sparsity": s,
                        "bytes": disk,
                        "x_dense_ckpt": disk / dense_disk,
                        "x_raw": disk / dense_raw,
                        "bound_x_raw": bound / dense_raw,
                    }
                )
    return rows


# ---------------------------------------------------------------------------- report


def _fmt_time(t: dict | None, temp: int) -> str:
    if t is None:
        return f"not run (temp {temp / 2**30:.1f} GiB)"
    return f"{t['median']:.3f} [{t['min']:.3f}-{t['max']:.3f}]"


def print_time_table(rows: list[dict], title: str) -> None:
    print(f"\n### {title}\n")
    print(
        "| sparsity | batch | dense with zeros ms | BCOO ms | shrunk ms | BCOO speed-up | "
        "shrunk speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["sparsity"], r["batch"]), {})[r["variant"]] = r
    for (s, b), c in cells.items():
        d, sp, sh = (c[v] for v in VARIANTS)
        base = d["time_ms"]["median"]

        def speedup(row, base=base):
            return "-" if row["time_ms"] is None else f"{base / row['time_ms']['median']:.2f}x"

        print(
            f"| {s:.0%} | {b} | {_fmt_time(d['time_ms'], d['temp_bytes'])} | "
            f"{_fmt_time(sp['time_ms'], sp['temp_bytes'])} | "
            f"{_fmt_time(sh['time_ms'], sh['temp_bytes'])} | **{speedup(sp)}** | "
            f"**{speedup(sh)}** |"
        )


def print_memory_table(rows: list[dict], title: str, batches) -> None:
    print(f"\n### {title}\n")
    head = " | ".join(f"temp MiB, batch {b}" for b in batches)
    print(f"| sparsity | variant | params MiB (x dense) | {head} |")
    print("|---|---|---|" + "---|" * len(batches))
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["sparsity"], r["variant"]), {})[r["batch"]] = r
    for (s, v), by_batch in cells.items():
        r0 = next(iter(by_batch.values()))
        temps = " | ".join(f"{by_batch[b]['temp_bytes'] / MIB:.2f}" for b in batches)
        print(
            f"| {s:.0%} | {v} | {r0['params_bytes'] / MIB:.2f} ({r0['params_x']:.3f}) | {temps} |"
        )


def print_checkpoint_table(rows: list[dict], dims) -> None:
    print(f"\n### Checkpoint bytes, MLP {'-'.join(map(str, dims))} (orbax StandardCheckpointer)\n")
    print(
        "| dtype | params | sparsity | bytes on disk | x dense checkpoint | x raw dense bytes | "
        "bound x raw (bitmask + values; shrunk: its raw bytes) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dtype']} | {r['what']} | {r['sparsity']:.0%} | {r['bytes']:,} | "
            f"**{r['x_dense_ckpt']:.3f}** | {r['x_raw']:.3f} | {r['bound_x_raw']:.3f} |"
        )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="samples per variant (7)")
    parser.add_argument("--max-temp-gib", type=float, default=1.0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.quick:
        layer_dims, mlp_dims = (256, 256), (64, 128, 128, 64)
        sparsities, batches, ckpt_sparsities = (0.5, 0.9), (1, 32), (0.9,)
        rounds, target_s = args.rounds or 2, 0.002
    else:
        layer_dims, mlp_dims = (4096, 4096), (1024, 2048, 2048, 1024)
        sparsities, batches, ckpt_sparsities = SPARSITIES, BATCHES, CKPT_SPARSITIES
        rounds, target_s = args.rounds or 7, 0.02
    max_temp = int(args.max_temp_gib * 2**30)
    print(f"# What sparsity buys ({machine()})\n", flush=True)
    layer = measure_model("layer", layer_dims, sparsities, batches, rounds, max_temp, target_s)
    mlp = measure_model("mlp", mlp_dims, sparsities, batches, rounds, max_temp, target_s)
    ckpt = measure_checkpoints(mlp_dims, ckpt_sparsities)
    lname = f"one Dense layer {layer_dims[0]}x{layer_dims[1]}"
    mname = f"MLP {'-'.join(map(str, mlp_dims))} (ReLU)"
    note = f"median ms [min-max] of {rounds} rounds; speed-up = dense median / variant median"
    print_time_table(layer, f"Inference time, {lname}, float32 ({note})")
    print_time_table(mlp, f"Inference time, {mname}, float32 ({note})")
    print_memory_table(layer, f"Memory, {lname}", batches)
    print_memory_table(mlp, f"Memory, {mname}", batches)
    print_checkpoint_table(ckpt, mlp_dims)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    result = {"machine": machine(), "layer": layer, "mlp": mlp, "checkpoints": ckpt}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
