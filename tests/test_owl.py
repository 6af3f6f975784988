"""OWL's layer sparsities against its closed form, written out here in NumPy."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
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


# ----------------------------------------------------------------------------- wiring


def test_hparams_fields_validation_and_parse():
    hp = jaxprune.get_pruning_hparams().parse(
        r"sparsity_distribution=owl,owl_m=3,owl_lambda=0.1,owl_groups=layers_(\d+)/"
    )
    assert (hp.owl_m, hp.owl_lambda, hp.owl_groups) == (3.0, 0.1, r"layers_(\d+)/")
    assert jaxprune.PruningHParams.from_dict(hp.to_dict()) == hp
    assert jaxprune.get_pruning_hparams().parse("owl_groups=none").owl_groups is None
    for kwargs, match in [
        ({"owl_m": -1.0}, "owl_m must be a finite number > 0"),
        ({"owl_m": float("nan")}, "owl_m must be a finite number > 0"),
        ({"owl_m": 0.0}, "owl_m must be a finite number > 0"),
        ({"owl_lambda": -0.1}, "owl_lambda must be a finite number >= 0"),
        ({"owl_lambda": float("nan")}, "owl_lambda must be a finite number >= 0"),
        ({"owl_groups": "layers_"}, "owl_groups.*exactly one capturing group"),
        ({"owl_groups": 3}, "owl_groups must be a string"),
        ({"sparsity_distribution": "owl", "pruning_scope": "global"}, "use 'uniform'"),
        (
            {"sparsity_distribution": "owl", "sparsity_type": "2:4"},
            "N:M fixes every weight's sparsity",
        ),
    ]:
        with pytest.raises(ValueError, match=match):
            jaxprune.get_pruning_hparams().replace(**kwargs)


def test_prune_with_owl_prunes_each_weight_to_its_closed_form_share():
    rng = np.random.default_rng(5)
    shapes = {"a": (16, 8), "b": (16, 8), "c": (8, 32)}
    outliers = {"a": 2, "b": 12, "c": 6}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    scores = {k: jnp.asarray(_scores(rng, shapes[k], outliers[k])) for k in shapes}
    hp = {"sparsity_distribution": "owl", "owl_lambda": 0.1, "target_sparsity": 0.6}
    _, masks = jaxprune.prune(params, hp, scores=scores)
    ref, _ = np_owl([[scores[k]] for k in ("a", "b", "c")], 0.6, 5.0, 0.1)
    for k, s in zip(("a", "b", "c"), ref, strict=True):
        size = np.prod(shapes[k])
        kept = max(1, int(np.round(np.float32(size) * np.float32(1 - s))))
        assert int(np.sum(masks[k])) == kept, k
    with pytest.raises(ValueError, match="sparsity_distribution='owl' needs scores"):
        jaxprune.prune(params, hp)
    with pytest.raises(ValueError, match="sparsity_distribution='owl' needs scores"):
        jaxprune.magnitude_pruning(hp).init(params)


def test_wanda_sparsegpt_and_sequential_take_owl_shares_of_wanda_scores():
    rng = np.random.default_rng(6)
    params = {
        "l0": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32),
        "l1": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
    }
    x = np.exp(2 * rng.normal(size=(64, 8)))
    x[:, 0] *= 30  # an outlier feature: l0's scores hold outliers
    fn = lambda p, x: jnp.tanh(x @ p["l0"]) @ p["l1"]
    xs = [jnp.asarray(x, jnp.float32)]
    hp = {"sparsity_distribution": "owl", "owl_lambda": 0.1, "target_sparsity": 0.5}
    norms = jaxprune.activation_norms(fn, params, xs)
    scores = jaxprune.wanda_scores(params, norms)
    ref, d = np_owl([[scores["l0"]], [scores["l1"]]], 0.5, 5.0, 0.1)
    assert d[0] > d[1]  # so l0 is pruned less
    _, wm = jaxprune.wanda(params, norms, hp)
    h = jaxprune.hessians(fn, params, xs)
    _, sm = jaxprune.sparsegpt(params, h, hp, block_size=8)
    _, qm = jaxprune.prune_sequential(fn, params, xs, hp, block_size=8)
    for k, s in zip(("l0", "l1"), ref, strict=True):
        # Wanda: per output unit (8 or 16 inputs), round(d * (1 - s)) kept; SparseGPT: per
        # block of 8 columns, floor(numel * s) pruned.
        d_in = params[k].shape[0]
        kept = int(np.round(np.float32(d_in) * np.float32(1 - s))) * params[k].shape[1]
        assert int(np.sum(wm[k])) == kept, k
        out, d_in = params[k].shape[1], params[k].shape[0]
        pruned = sum(int(out * min(8, d_in - i) * s) for i in range(0, d_in, 8))
        assert int(np.sum(~np.asarray(sm[k]))) == pruned == int(np.sum(~np.asarray(qm[k])))
