"""An independent NumPy reference of TF's threshold/mask computation (tests only).

Written from SPEC §4-5 and TF's r1.15 / r1.11 code with plain loops, sorts and
float64 arithmetic; it shares no code with jaxprune.
"""

from __future__ import annotations

import math

import numpy as np


def ref_pool(a: np.ndarray, bh: int, bw: int, pooling: str) -> np.ndarray:
    rows, cols = a.shape
    out = np.zeros((math.ceil(rows / bh), math.ceil(cols / bw)), np.float32)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            cell = a[i * bh : (i + 1) * bh, j * bw : (j + 1) * bw]
            if pooling == "MAX":
                out[i, j] = cell.max()
            else:
                out[i, j] = np.float32(cell.astype(np.float64).sum() / cell.size)
    return out


def ref_expand(mask: np.ndarray, bh: int, bw: int, rows: int, cols: int) -> np.ndarray:
    return np.repeat(np.repeat(mask, bh, axis=0), bw, axis=1)[:rows, :cols]


def ref_k(n: int, sparsity: float) -> int:
    k = np.round(np.float32(n) * (np.float32(1.0) - np.float32(sparsity)))
    return int(min(max(k, 1), n))


def ref_histogram_bins(x: np.ndarray, span: float, nbins: int) -> np.ndarray:
    """floor(nbins * x / span) in float64 (exact for float32 inputs), clipped."""
    idx = np.floor(x.astype(np.float64) * nbins / np.float64(span))
    return np.clip(idx, 0, nbins - 1).astype(np.int64)


def ref_histogram_threshold(a: np.ndarray, sparsity: float, nbins: int) -> np.float32:
    finite = a[np.isfinite(a)]
    m = np.float32(finite.max()) if finite.size else np.float32(0)
    if m == 0:
        return np.float32(0)
    idx = np.where(
        np.isinf(a), nbins - 1, ref_histogram_bins(np.where(np.isinf(a), 0, a), m, nbins)
    )
    counts = np.bincount(idx.ravel(), minlength=nbins)
    cdf = (np.cumsum(counts) / a.size).astype(np.float32)
    below = np.float32(np.sum(cdf < np.float32(sparsity)))
    return np.float32(below / np.float32(nbins) * m)


def ref_weight_mask(
    w,
    sparsity: float,
    threshold: float = 0.0,
    *,
    method: str = "exact",
    block: tuple[int, int] = (1, 1),
    pooling: str = "AVG",
    decay: float = 0.0,
    nbins: int = 256,
) -> tuple[np.float32, np.ndarray]:
    w = np.asarray(w, np.float32)
    nan = np.isnan(w)
    a = np.where(nan, 0, np.abs(w)).astype(np.float32)
    squeezed = [d for d in w.shape if d != 1]
    blocked = len(squeezed) == 2 and tuple(block) != (1, 1)
    if blocked:
        rows, cols = squeezed
        bh = rows if block[0] == -1 else block[0]
        bw = cols if block[1] == -1 else block[1]
        values = ref_pool(a.reshape(rows, cols), bh, bw, pooling)
    else:
        values = a
    if method == "exact":
        k = ref_k(values.size, sparsity)
        current = np.sort(values.ravel())[::-1][k - 1]
    else:
        current = ref_histogram_threshold(values, sparsity, nbins)
    if decay:
        prev = np.float32(threshold) if np.isfinite(threshold) else np.float32(current)
        smoothed = np.float32(
            np.float32(current) * np.float32(1 - decay) + prev * np.float32(decay)
        )
    else:
        smoothed = np.float32(current)
    mask = values >= smoothed if method == "exact" else values > smoothed
    if blocked:
        mask = ref_expand(mask, bh, bw, rows, cols).reshape(w.shape)
    return smoothed, mask & ~nan
