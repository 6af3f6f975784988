"""Dense vs shrunk time per token of a gemma-style GQA transformer (CPU, interleaved).

The model is tests/gemma_style.py's decoder (grouped-query attention with RoPE, a gated
SwiGLU MLP, tied embeddings) at a small but not tiny size. Structure is pruned by masks, as
``jaxprune.prune_channels`` will (issue 20): MLP hidden units (gating columns and the down
projection's rows) and, optionally, one of two KV groups per layer; ``jaxprune.shrink``
takes them out. Both models are jitted; calls of the dense (masked) model and of ``small_fn``
alternate (order flipped every round), and the ratio dense / shrunk is reported as the median
over rounds with its min-max. The FLOP ratio (XLA cost analysis) is printed beside it.

    python benchmarks/shrink_transformer.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from benchmarks import common
from tests import gemma_style


def _masks(variables, layers, hidden, mlp_frac, drop_kv_group, num_heads, num_kv_heads):
    masks = jax.tree.map(lambda _: None, variables)
    group = num_heads // num_kv_heads
    for i in range(layers):
        block = masks["params"][f"blocks_{i}"]
        n_gone = round(hidden * mlp_frac)
        gating = np.ones(
            (2, *variables["params"][f"blocks_{i}"]["mlp"]["gating_einsum"].shape[1:]), bool
        )
        gating[:, :, :n_gone] = False
        linear = np.ones(variables["params"][f"blocks_{i}"]["mlp"]["linear"].shape, bool)
        linear[:n_gone] = False
        block["mlp"]["gating_einsum"] = jnp.asarray(gating)
        block["mlp"]["linear"] = jnp.asarray(linear)
        if drop_kv_group:
            o = np.ones(
                variables["params"][f"blocks_{i}"]["attn"]["attn_vec_einsum"]["w"].shape, bool
            )
            o[(num_kv_heads - 1) * group :] = False  # the last KV group's query heads
            block["attn"]["attn_vec_einsum"]["w"] = jnp.asarray(o)
    return masks


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    cfg = dict(vocab_size=512, embed_dim=256, num_layers=4, num_heads=8, num_kv_heads=2,
               head_dim=32, hidden_dim=1024)  # fmt: skip
    if args.quick:
        cfg.update(embed_dim=64, num_layers=2, head_dim=16, hidden_dim=256)
    seq = 64
    rounds, block = (3, 3) if args.quick else (9, 10)
    model = gemma_style.Transformer(**cfg)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, seq), jnp.int32))
    print(common.machine())
    print(f"model: {cfg}, sequence length {seq}")
    apply = jax.jit(model.apply)
    rng = np.random.default_rng(0)
    print("| pruned | params dense -> shrunk | batch | dense ms/token | shrunk ms/token | "
          "dense/shrunk (min-max) | FLOP ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label, frac, kv in [
        ("MLP width 50 %", 0.5, False),
        ("MLP 50 % + KV group 1 of 2", 0.5, True),
    ]:
        masks = _masks(variables, cfg["num_layers"], cfg["hidden_dim"], frac, kv,
                       cfg["num_heads"], cfg["num_kv_heads"])  # fmt: skip
        masked = jax.tree.map(
            lambda x, m: x if m is None else jnp.where(m, x, 0.0), variables, masks,
            is_leaf=lambda t: t is None,
        )  # fmt: skip
        small, small_fn = jaxprune.shrink(
            model.apply, variables, jnp.zeros((1, seq), jnp.int32), masks=masks
        )
        for batch in (1, 32):
            tokens = jnp.asarray(rng.integers(0, cfg["vocab_size"], (batch, seq)), jnp.int32)
            runs = {"dense": lambda t=tokens, p=masked: apply(p, t),
                    "shrunk": lambda t=tokens, p=small, f=small_fn: f(p, t)}  # fmt: skip
            for f in runs.values():
                jax.block_until_ready(f())
            times = {k: [] for k in runs}
            for r in range(rounds):
                for name in runs if r % 2 == 0 else list(runs)[::-1]:
                    t0 = time.perf_counter()
                    for _ in range(block):
                        jax.block_until_ready(runs[name]())
                    times[name].append((time.perf_counter() - t0) / block)
            ratios = np.asarray(times["dense"]) / np.asarray(times["shrunk"])
            per_tok = {k: float(np.median(v)) * 1e3 / (batch * seq) for k, v in times.items()}
            flops = _flops(model.apply, masked, tokens) / _flops(small_fn, small, tokens)
            print(
                f"| {label} | {small_fn.report.params_before:,} -> "
                f"{small_fn.report.params_after:,} | {batch} | {per_tok['dense']:.4f} | "
                f"{per_tok['shrunk']:.4f} | {np.median(ratios):.2f}x "
                f"({ratios.min():.2f}-{ratios.max():.2f}) | {flops:.2f}x |"
            )


if __name__ == "__main__":
    main()
