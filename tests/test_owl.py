"""OWL's layer sparsities against its closed form, written out here in NumPy."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune._src import owl


def np_owl(scores_by_group, s, m, lam):
    """OWL's closed form: outlier ratio D per group, rescaled to [0, 2 lam], centred at 1 - s."""
    d = []
    for arrays in scores_by_group:
        flat = np.concatenate([np.abs(np.asarray(a, np.float64)).ravel() for a in arrays])
        d.append(np.mean(flat > m * flat.mean()))
    d = np.array(d)
    r = (d - d.min()) / (d.max() - d.min()) * 2 * lam
    r = r - r.mean() + (1 - s)
    return 1 - r, d


def _scores(rng, shape, outliers):
    x = np.abs(rng.normal(size=shape))
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, outliers, replace=False)] *= 40.0
    return x.astype(np.float32)


def test_targets_match_closed_form_with_regex_groups():
    rng = np.random.default_rng(0)
    names = ["layers_0/q", "layers_0/mlp", "layers_1/q", "layers_1/mlp", "layers_2/q", "head"]
    shapes = [(16, 16), (16, 32), (16, 16), (16, 32), (16, 16), (16, 8)]
    outliers = [4, 10, 30, 2, 12, 7]
    scores = [_scores(rng, s, k) for s, k in zip(shapes, outliers, strict=True)]
    got = owl.owl_targets(
        [jnp.asarray(x) for x in scores], names, 0.7, m=5.0, lam=0.08, groups=r"layers_(\d+)/"
    )
    groups = [[scores[0], scores[1]], [scores[2], scores[3]], [scores[4]], [scores[5]]]
    ref, d = np_owl(groups, 0.7, 5.0, 0.08)
    np.testing.assert_allclose(got, [ref[0], ref[0], ref[1], ref[1], ref[2], ref[3]], atol=1e-6)
    assert np.mean(ref) == pytest.approx(0.7) and len(set(np.round(d, 6))) == 4
    # More outliers, lower sparsity: the ordering OWL is for.
    assert np.argsort(-d).tolist() == np.argsort(ref).tolist()
    # Each weight its own group.
    own = owl.owl_targets(
        [jnp.asarray(x) for x in scores], names, 0.5, m=5.0, lam=0.05, groups=None
    )
    ref_own, _ = np_owl([[x] for x in scores], 0.5, 5.0, 0.05)
    np.testing.assert_allclose(own, ref_own, atol=1e-6)


def test_by_hand_equal_ratios_nan_and_range():
    a = np.r_[np.ones(9), 100.0]  # mean 10.9: one entry above 54.5, D = 1/10
    b = np.ones(10)  # D = 0
    c = np.r_[np.ones(35), np.full(5, 100.0)]  # mean 13.375: five above 66.875, D = 5/40
    kw = {"m": 5.0, "lam": 0.1, "groups": None}
    got = owl.owl_targets([jnp.asarray(x) for x in (a, b, c)], ["a", "b", "c"], 0.6, **kw)
    # r = D / 0.125 * 0.2 = [0.16, 0, 0.2]; r - mean(r) + 0.4 = [0.44, 0.28, 0.48]; 1 - r:
    np.testing.assert_allclose(got, [0.56, 0.72, 0.52], atol=1e-6)
    # NaN ranks as 0 (never an outlier): b with a NaN still has D = 0.
    b_nan = np.r_[np.ones(9), np.nan]
    got = owl.owl_targets([jnp.asarray(x) for x in (a, b_nan, c)], ["a", "b", "c"], 0.6, **kw)
    np.testing.assert_allclose(got, [0.56, 0.72, 0.52], atol=1e-6)
    # Equal ratios: every group at the target.
    assert owl.owl_targets([jnp.ones(4)] * 3, ["x", "y", "z"], 0.5, **kw) == [0.5] * 3
    with pytest.raises(ValueError, match=r"group 'weight:b' would get sparsity 1\.0700"):
        owl.owl_targets([jnp.asarray(x) for x in (a, b, c)], ["a", "b", "c"], 0.95, **kw)


def test_group_regex_checks():
    owl.check_groups_regex(None)
    owl.check_groups_regex(r"blocks/(\d+)/")
    for bad, match in [
        (r"blocks/\d+/", "exactly one capturing group"),
        (r"(a)(b)", "exactly one capturing group"),
        ("(", "does not compile"),
        ("", "regex string"),
        (3, "regex string"),
    ]:
        with pytest.raises(ValueError, match=re.escape("owl_groups") + ".*" + match):
            owl.check_groups_regex(bad)
