"""Shared test helpers: independent float64 NumPy references of the calibrated methods.

Written from the papers' rules with plain loops and float64 arithmetic; they share no code with
jaxprune.
"""

from __future__ import annotations

import numpy as np


def np_hessian(*inputs) -> np.ndarray:
    """``sum x x^T`` over every row of every input (rows: all but the last axis)."""
    total = 0.0
    for x in inputs:
        x = np.asarray(x, np.float64)
        x = x.reshape(-1, x.shape[-1])
        total = total + x.T @ x
    return total


def np_sparsegpt(w, h, sparsity, *, nm=None, block_size=128, damping=0.01):
    """SparseGPT on one ``(out, d)`` matrix, float64, without the lazy batched update.

    Every column's OBS update is applied at once to every later column (the paper's row update;
    the lazy block update is the same sum in another order). Unstructured: at each block's start
    the ``int(numel * sparsity)`` smallest ``w^2 / U_jj^2`` of the block are pruned (ties: higher
    flat index first); N:M: at every M-th column each row keeps its N largest of the M columns
    (ties: lower index kept). Returns ``(new_w, keep)``.
    """
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    out, d = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h = h + damping * np.mean(np.diag(h)) * np.eye(d)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    pruned = np.zeros((out, d), bool)
    for i1 in range(0, d, block_size):
        i2 = min(i1 + block_size, d)
        if nm is None:
            s = (w[:, i1:i2] ** 2 / np.diag(u)[i1:i2] ** 2).ravel()
            k = int(s.size * sparsity)
            order = sorted(range(s.size), key=lambda t: (s[t], -t))
            block = np.zeros(s.size, bool)
            block[order[:k]] = True
            pruned[:, i1:i2] = block.reshape(out, i2 - i1)
        for j in range(i1, i2):
            if nm is not None and (j - i1) % nm[1] == 0:
                n, m = nm
                s = w[:, j : j + m] ** 2 / np.diag(u)[j : j + m] ** 2
                for r in range(out):
                    order = sorted(range(m), key=lambda c, r=r: (-s[r, c], c))
                    pruned[r, j : j + m] = False
                    for c in order[n:]:
                        pruned[r, j + c] = True
            q = np.where(pruned[:, j], 0.0, w[:, j])
            e = (w[:, j] - q) / u[j, j]
            w[:, j:] -= np.outer(e, u[j, j:])
            w[:, j] = q
    return w, ~pruned


def np_unit_mask(scores, sparsity):
    """Each row of ``(out, d)`` scores keeps its ``round(d * (1 - s))`` largest (distinct)."""
    scores = np.asarray(scores, np.float64)
    k = max(1, int(np.round(np.float32(scores.shape[1]) * np.float32(1 - sparsity))))
    keep = np.zeros(scores.shape, bool)
    for r, row in enumerate(scores):
        keep[r, np.argsort(-row, kind="stable")[:k]] = True
    return keep


def correlated_inputs(rng, rows, d, *, rank=None):
    """Rows of strongly correlated features (a random mixing of fewer sources, plus scales)."""
    rank = rank or max(2, d // 4)
    z = rng.normal(size=(rows, rank))
    mix = rng.normal(size=(rank, d))
    scales = np.exp(rng.normal(size=d))
    return (z @ mix + 0.1 * rng.normal(size=(rows, d))) * scales
