"""Time of a mask update on 1 vs 8 (host) devices for a large sharded weight.

Each device count runs in its own subprocess, because XLA_FLAGS
(--xla_force_host_platform_device_count) must be set before jax is imported. On 8 devices the
weight is sharded by rows (FSDP-style, P("x", None)) and by columns (P(None, "x")) over a
1-D mesh of all devices. Timed (median of --repeat runs, after a warm-up/compile call):

* ``weight_mask`` with the exact (radix select) and histogram threshold methods;
* the transform's ``update`` on a mask-update step (``magnitude_pruning`` with
  ``pruning_frequency=1``, so every step recomputes the mask).

Usage::

    python benchmarks/sharded_mask_update.py [--sizes 4096 8192] [--repeat 5]

Host "devices" share the machine's CPU cores, so 8 host devices measure partitioning overhead
and collective traffic, not a speed-up: on real accelerators each device has its own compute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _worker(devices: int, sizes: list[int], repeat: int) -> list[dict]:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"

    import jax
    import jax.numpy as jnp
    from common import timeit  # imports jax: only after XLA_FLAGS is set
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxprune

    assert jax.device_count() == devices
    mesh = jax.make_mesh((devices,), ("x",), axis_types=(AxisType.Auto,))
    layouts = {"rows": P("x", None), "cols": P(None, "x")} if devices > 1 else {"-": P()}

    def median_ms(fn, *args):
        return timeit(fn, *args, repeats=repeat)

    rows = []
    for n in sizes:
        w = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        for layout, spec in layouts.items():
            ws = jax.device_put(w, NamedSharding(mesh, spec))
            for method in ("exact", "histogram"):
                hp = jaxprune.get_pruning_hparams().replace(
                    threshold_method=method, pruning_frequency=1
                )
                mask_fn = jax.jit(lambda w, s, hp=hp: jaxprune.weight_mask(w, s, hparams=hp))
                tx = jaxprune.magnitude_pruning(hp, sparsity=0.9)
                params = {"w": ws}
                state = tx.init(params)
                grads = jax.tree.map(jnp.zeros_like, params)
                update = jax.jit(tx.update)
                rows.append(
                    {
                        "size": f"{n}x{n}",
                        "devices": devices,
                        "layout": layout,
                        "method": method,
                        "weight_mask_ms": median_ms(mask_fn, ws, jnp.float32(0.9)),
                        "update_ms": median_ms(update, grads, state, params),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.sizes, args.repeat)))
        return
    rows = []
    for devices in args.devices:
        cmd = [sys.executable, __file__, "--worker", str(devices), "--repeat", str(args.repeat)]
        cmd += ["--sizes", *map(str, args.sizes)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"CPU cores: {os.cpu_count()}; median of {args.repeat} runs\n")
    print("| weight | devices | sharding | method | weight_mask (ms) | transform update (ms) |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["size"], r["method"], r["devices"])):
        print(
            f"| {r['size']} | {r['devices']} | {r['layout']} | {r['method']} "
            f"| {r['weight_mask_ms']:.1f} | {r['update_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
