"""Magnitude vs Wanda vs SparseGPT, with and without OWL, one-shot and sequential, on the demo LM.

The byte-level transformer of ``jaxprune demo-wanda`` (``jaxprune.demos.lm``, trained or loaded
by ``jaxprune.demos.wanda_demo.load_or_train``; the checkpoint is cached in ``--out``) is pruned
once, every linear kernel of its blocks (the embeddings and the LM head stay dense), from the
demo's calibration batches (random windows of the training split), and evaluated on the
held-out split:

* magnitude: ``jaxprune.prune`` (layer scope; N:M along the input axis), OWL from ``|w|``;
* Wanda: ``jaxprune.wanda(params, activation_norms(...))``, OWL from Wanda's scores;
* SparseGPT: ``jaxprune.sparsegpt(params, hessians(...))``, OWL from ``|W| sqrt(diag H)``;
* "sequential": ``jaxprune.prune_sequential`` (each weight's statistics with the weights before
  it pruned), Wanda and SparseGPT;

at 50 %, 60 %, 70 % unstructured and 2:4 (OWL does not apply to N:M). OWL's groups are the
blocks (``owl_groups=r"blocks/(\\d+)/"``, the paper's per-layer groups; ``--owl-groups weight``:
each weight its own), ``M = 5``, ``lambda = 0.08``.

Time: each method's warm wall time (statistics + pruning; compiled by a first call) as a
multiple of one warm calibration forward pass (the model over every calibration batch),
measured interleaved, median and range over ``--repeats``; and its first-call time (trace +
compile). Memory: the Hessians' bytes (all at once for ``sparsegpt``; the largest group for
``prune_sequential``) and the sequential pipeline's cached live values.

Usage: python benchmarks/sparsegpt_lm.py [--out DIR] [--steps 400] [--repeats 3] [--quick]
       [--owl-groups block|weight]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from common import machine

import jaxprune
from jaxprune._src import jaxpr, sequential
from jaxprune.demos import lm
from jaxprune.demos import wanda_demo as wd

SPARSITIES = ("0.5", "0.6", "0.7", "2:4")
OWL_GROUPS = {"block": r"blocks/(\d+)/", "weight": None}
GROUPS = OWL_GROUPS["block"]


def hparams(level: str, owl: bool) -> jaxprune.PruningHParams:
    hp = jaxprune.get_pruning_hparams()
    if level == "2:4":
        return hp.replace(sparsity_type="2:4")
    hp = hp.replace(target_sparsity=float(level))
    if owl:
        hp = hp.replace(sparsity_distribution="owl", owl_groups=GROUPS)
    return hp


def methods(apply, params, batches):
    """name -> (sequential?, fn(hp) -> pruned params)."""
    filt = lm.is_block_linear

    def magnitude(hp):
        scores = None
        if hp.sparsity_distribution == "owl":
            scores = jax.tree.map(jnp.abs, params)
        return jaxprune.prune(params, hp, scores=scores, params_filter=filt)[0]

    def wanda(hp):
        norms = jaxprune.activation_norms(apply, params, batches, params_filter=filt)
        return jaxprune.wanda(params, norms, hp)[0]

    def sparsegpt(hp):
        h = jaxprune.hessians(apply, params, batches, params_filter=filt)
        return jaxprune.sparsegpt(params, h, hp)[0]

    def sequential(method):
        def run(hp):
            return jaxprune.prune_sequential(
                apply, params, batches, hp, method=method, params_filter=filt
            )[0]

        return run

    return {
        "magnitude": magnitude,
        "Wanda": wanda,
        "SparseGPT": sparsegpt,
        "Wanda seq.": sequential("wanda"),
        "SparseGPT seq.": sequential("sparsegpt"),
    }


def timed(fn, *args):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def hessian_memory(apply, params, batches) -> dict[str, float]:
    h = jaxprune.hessians(apply, params, batches[:1], params_filter=lm.is_block_linear)
    sizes = {
        jaxprune.path_name(p): x.size * 4
        for p, x in jax.tree_util.tree_flatten_with_path(h)[0]
        if x is not None
    }
    block = [v for k, v in sizes.items() if k.startswith("blocks/0/")]
    return {
        "all_hessians_mib": sum(sizes.values()) / 2**20,
        "largest_hessian_mib": max(sizes.values()) / 2**20,
        "one_block_mib": sum(block) / 2**20,
    }


def live_cache_mib(apply, params, batches) -> float:
    """The sequential pipeline's largest cache of live values (all batches), from its cuts."""
    first = batches[0]
    graph = sequential.flat_graph(jaxpr.trace(apply, params, first), params, first)
    prunable = [i for i, name in enumerate(graph.param_names) if lm.is_block_linear(name)]
    program = sequential.Program(graph)
    most = 0
    for group in sequential.groups_in_order(sequential.spans(graph, prunable)):
        live = program.live(group.first)
        most = max(most, sum(v.aval.size * v.aval.dtype.itemsize for v in live))
    return most * len(batches) / 2**20


def seven_b_memory() -> dict[str, float]:
    """LLaMA-7B's Hessians: 32 blocks of q, k, v, o, gate, up (4096 inputs) and down (11008)."""
    small, down = 4096**2 * 4, 11008**2 * 4
    return {
        "per_4096_projection_mib": small / 2**20,
        "down_projection_mib": down / 2**20,
        "all_gib": 32 * (6 * small + down) / 2**30,
        "one_block_gib": (6 * small + down) / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks_out/sparsegpt_lm")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tiny LM, 100 steps, 1 repeat")
    ap.add_argument(
        "--owl-groups", choices=sorted(OWL_GROUPS), default="block", help="OWL's groups"
    )
    args = ap.parse_args()
    global GROUPS
    GROUPS = OWL_GROUPS[args.owl_groups]
    model = lm.LMConfig()
    steps, repeats = args.steps, args.repeats
    if args.quick:
        model = lm.LMConfig(d_model=64, n_layers=2, n_heads=4, d_ff=192, seq_len=64)
        steps, repeats = 100, 1
    config = wd.WandaDemoConfig(model=model, steps=steps, out=args.out, progress=False, plots=False)
    corpus = lm.load_corpus()
    graphdef, params, info = wd.load_or_train(config, corpus)
    apply = lm.make_apply(graphdef)
    batches = [jnp.asarray(b) for b in wd.calibration_data(config, corpus)]
    heldout = lm.windows(corpus.heldout, model.seq_len, config.eval_windows)
    forward = jax.jit(apply)

    def calibration_pass():
        return [forward(params, b) for b in batches]

    timed(calibration_pass)  # compile
    dense = lm.perplexity(lm.mean_nll(apply, params, heldout))
    print(
        f"{machine()}\nLM {dataclasses.asdict(model)}, {steps} steps "
        f"({'loaded' if info['loaded'] else 'trained'}); dense perplexity {dense:.3f}"
    )
    table: dict[str, dict[str, float | None]] = {}
    cost: dict[str, dict[str, float]] = {}
    for name, run in methods(apply, params, batches).items():
        for owl in (False, True):
            row = f"{name}{' + OWL' if owl else ''}"
            table[row] = {}
            for level in SPARSITIES:
                if owl and level == "2:4":
                    table[row][level] = None
                    continue
                hp = hparams(level, owl)
                pruned, first = timed(run, hp)
                table[row][level] = lm.perplexity(lm.mean_nll(apply, pruned, heldout))
                if level == "0.5":
                    ratios = []
                    for _ in range(repeats):  # interleaved: forward pass, method
                        _, fwd = timed(calibration_pass)
                        _, t = timed(run, hp)
                        ratios.append(t / fwd)
                    cost[row] = {
                        "first_call_s": first,
                        "warm_ratio_median": statistics.median(ratios),
                        "warm_ratio_min": min(ratios),
                        "warm_ratio_max": max(ratios),
                        "forward_ms": fwd * 1e3,
                    }
                print(f"  {row:22s} {level:>4s}: perplexity {table[row][level]:.3f}", flush=True)
    memory = {
        "lm": hessian_memory(apply, params, batches),
        "sequential_live_cache_mib": live_cache_mib(apply, params, batches),
        "llama_7b": seven_b_memory(),
    }
    print()
    print("| method | dense | " + " | ".join(SPARSITIES) + " |")
    print("|---|---|" + "---|" * len(SPARSITIES))
    for row, values in table.items():
        cells = ["n/a" if v is None else f"{v:.3f}" for v in values.values()]
        print(f"| {row} | {dense:.3f} | " + " | ".join(cells) + " |")
    print(
        "\n| method (50 %) | warm time / calibration forward pass (median, range) | first call s |"
    )
    print("|---|---|---|")
    for row, c in cost.items():
        print(
            f"| {row} | {c['warm_ratio_median']:.1f}x ({c['warm_ratio_min']:.1f}-"
            f"{c['warm_ratio_max']:.1f}) | {c['first_call_s']:.1f} |"
        )
    print(
        f"\ncalibration forward pass: {cost['magnitude']['forward_ms']:.1f} ms "
        f"({len(batches)} batches x {config.calibration_batch_size} x {model.seq_len} tokens)"
    )
    print(f"memory: {json.dumps(memory, indent=1)}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sparsegpt_lm.json"), "w") as f:
        json.dump(
            {
                "machine": machine(),
                "model": dataclasses.asdict(model),
                "steps": steps,
                "dense": dense,
                "perplexity": table,
                "cost": cost,
                "memory": memory,
                "owl_groups": GROUPS,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
