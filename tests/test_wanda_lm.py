"""The Wanda language-model demo: corpus, perplexity, and magnitude vs Wanda on a trained tiny LM.

The tiny LM (2 blocks, d=64, SwiGLU 192, RMSNorm, context 64) is trained once per module for
400 steps on the standard-library corpus through ``wanda_demo.run_wanda_demo`` (deterministic),
then pruned one-shot at 50 % and 2:4 by magnitude and by Wanda, overall and one block at a time.
"""

import json
import math
import os
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

pytest.importorskip("flax.nnx")
pytest.importorskip("matplotlib")

import jaxprune
from jaxprune.demos import cli, lm
from jaxprune.demos import wanda_demo as wd

# End-to-end demo runs: CI's oldest-versions leg deselects them (-m "not examples").
pytestmark = pytest.mark.examples

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = lm.LMConfig(d_model=64, n_layers=2, n_heads=4, d_ff=192, seq_len=64)
#: Wanda's loss increase over dense must be below this fraction of magnitude's.
MAX_DAMAGE_RATIO = 0.98


# -- perplexity and corpus ------------------------------------------------------------------------


def _bigram_apply(params, tokens):
    return params["table"][tokens]


def _reference_mean_nll(table, tokens):
    """NumPy: mean over all windows and positions of -log softmax(table[x_t])[x_{t+1}]."""
    table = np.asarray(table, np.float64)
    logits = table[tokens[:, :-1]]
    logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    picked = np.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
    return float(np.mean(logz - picked))


def test_perplexity_of_uniform_model_is_vocab_size():
    params = {"table": np.zeros((256, 256), np.float32)}
    tokens = lm.windows(np.arange(50, dtype=np.uint8), 7)
    nll = lm.mean_nll(_bigram_apply, params, tokens, batch_size=4)
    assert nll == pytest.approx(math.log(256), rel=1e-6)
    assert lm.perplexity(nll) == pytest.approx(256.0, rel=1e-5)


def test_perplexity_is_exp_of_mean_token_nll_by_hand():
    # Byte 1 predicts byte 2 with probability 3/4 (logit log(3 * 255) vs 0 for the 255 others)
    # and every other byte is uniform. Data 1 2 1 2 1 2 1 0 1 2: targets after a 1: 2 2 2 0 2
    # (-log 3/4 four times, -log 1/(4*255) once), after a 2: 1 1 1 (log 256 each), after 0: 1.
    table = np.zeros((256, 256), np.float32)
    table[1, 2] = math.log(3 * 255)
    data = np.array([1, 2, 1, 2, 1, 2, 1, 0, 1, 2], np.uint8)
    tokens = lm.windows(data, 3)  # 3 windows of 4: every byte but the first is a target once
    assert tokens.tolist() == [[1, 2, 1, 2], [2, 1, 2, 1], [1, 0, 1, 2]]
    by_hand = (4 * -math.log(3 / 4) + -math.log(1 / (4 * 255)) + 4 * math.log(256)) / 9
    for batch_size in (1, 2, 3, 5):  # padded last batches must not count
        nll = lm.mean_nll(_bigram_apply, {"table": table}, tokens, batch_size=batch_size)
        assert nll == pytest.approx(by_hand, rel=1e-5)
        assert lm.perplexity(nll) == pytest.approx(math.exp(by_hand), rel=1e-5)
    # And a random table against the NumPy reference.
    rng = np.random.default_rng(0)
    table = rng.normal(size=(256, 256)).astype(np.float32)
    tokens = rng.integers(0, 256, size=(7, 9)).astype(np.int32)
    nll = lm.mean_nll(_bigram_apply, {"table": table}, tokens, batch_size=3)
    assert nll == pytest.approx(_reference_mean_nll(table, tokens), rel=1e-5)


def test_windows_even_subset():
    data = np.arange(101, dtype=np.uint8)
    assert lm.windows(data, 10).shape == (10, 11)
    sub = lm.windows(data, 10, max_windows=3)
    assert sub[:, 0].tolist() == [0, 40, 90]  # windows 0, 4 (round(4.5) = 4), 9


def test_corpus_is_offline_deterministic_and_split_by_position():
    corpus = lm.load_corpus()
    root = lm.stdlib_dir()
    assert len(corpus.files) == len(lm.CORPUS_FILES)  # all ship with this CPython
    sizes = [os.path.getsize(os.path.join(root, f)) for f in corpus.files]
    assert len(corpus.train) + len(corpus.heldout) == sum(sizes)
    assert 0.08 < len(corpus.heldout) / sum(sizes) < 0.12
    first = corpus.files[0]
    with open(os.path.join(root, first), "rb") as f:
        text = f.read()
    cut = text.find(b"\n", int(len(text) * 0.9)) + 1
    assert bytes(corpus.train[:cut]) == text[:cut]
    assert bytes(corpus.heldout[: len(text) - cut]) == text[cut:]
    assert lm.load_corpus().digest == corpus.digest
    with pytest.raises(ValueError, match="heldout_fraction"):
        lm.load_corpus(heldout_fraction=1.0)
    with pytest.raises(ValueError, match="only 0 of 1 files"):
        lm.load_corpus(files=("no_such_module_xyz.py",))


def test_lm_config_validation():
    with pytest.raises(ValueError, match="n_heads"):
        lm.LMConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="activation"):
        lm.LMConfig(activation="tanh")
    with pytest.raises(ValueError, match="d_ff"):
        lm.LMConfig(d_ff=0)


def test_cli_parses_demo_wanda():
    args = cli.build_parser().parse_args(
        ["demo-wanda", "--steps", "50", "--out", "x", "--retrain", "--no-plots"]
    )
    assert (args.command, args.steps, args.out, args.retrain, args.no_plots) == (
        "demo-wanda",
        50,
        "x",
        True,
        True,
    )
    assert cli.build_parser().parse_args(["demo-wanda"]).steps == 400
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["demo-wanda", "--steps", "1"])
    assert e.value.code == 2


# -- the tiny LM, pruned --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("wanda")
    config = wd.WandaDemoConfig(
        model=TINY, steps=400, eval_windows=256, out=str(out), progress=False
    )
    summary = wd.run_wanda_demo(config)
    return config, summary


def _damage(summary, key, block=None):
    dense = summary["dense"]["nll"]
    if block is None:
        return summary["overall"][key]["nll"] - dense
    return summary["per_block"][block][key] - dense


@pytest.mark.parametrize(
    "wanda, magnitude",
    [
        ("wanda", "magnitude_layer"),
        ("wanda", "magnitude_output"),
        ("wanda_2:4", "magnitude_2:4"),
    ],
)
def test_wanda_beats_magnitude_overall_and_per_block(demo, wanda, magnitude):
    _, summary = demo
    assert summary["dense"]["perplexity"] < 8.0  # the model learned something (uniform: 256)
    for block in (None, *range(TINY.n_layers)):
        w, m = _damage(summary, wanda, block), _damage(summary, magnitude, block)
        assert m > 0 and 0 < w < MAX_DAMAGE_RATIO * m, (block, wanda, w, magnitude, m)


def test_every_method_prunes_exactly_half(demo):
    _, summary = demo
    for key, result in summary["overall"].items():
        assert result["sparsity"] == 0.5, key
        assert result["perplexity"] == pytest.approx(math.exp(result["nll"]))
    assert len(summary["pruned_weights"]) == 7 * TINY.n_layers  # q k v out gate up down


def _rms_norm(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def test_wanda_masks_against_numpy_reference(demo):
    """Block 0's query: norms of RMSNorm(embed + pos) by hand, then per-output top-half masks."""
    config, _ = demo
    corpus = lm.load_corpus()
    graphdef, params, info = wd.load_or_train(config, corpus)
    assert info["loaded"]  # the fixture's run saved it
    p = jax.device_get(params)
    calibration = wd.calibration_data(config, corpus)
    x = np.concatenate(
        [
            np.asarray(p["embed"]["embedding"])[b] + np.asarray(p["pos"]["embedding"])[None]
            for b in calibration
        ]
    ).reshape(-1, TINY.d_model)
    h = _rms_norm(x.astype(np.float64), np.asarray(p["blocks"][0]["norm1"]["scale"]))
    ref_norms = np.sqrt(np.sum(h * h, axis=0))
    norms = jaxprune.activation_norms(
        lm.make_apply(graphdef), params, calibration, params_filter=lm.is_block_linear
    )
    got = np.asarray(norms["blocks"][0]["attn"]["query"]["kernel"])
    np.testing.assert_allclose(got, ref_norms, rtol=2e-4)

    w = np.asarray(p["blocks"][0]["attn"]["query"]["kernel"], np.float64)
    scores = np.abs(w) * ref_norms[:, None]
    method = next(m for m in wd.METHODS if m.key == "wanda")
    pruned = wd.prune_method(
        params, method, jaxprune.wanda_scores(params, norms), lm.is_block_linear
    )
    kept = np.asarray(pruned["blocks"][0]["attn"]["query"]["kernel"]) != 0
    order = np.argsort(-scores, axis=0)
    ref_kept = np.zeros_like(kept)
    np.put_along_axis(ref_kept, order[: TINY.d_model // 2], True, axis=0)
    assert (kept.sum(0) == TINY.d_model // 2).all()
    # The score gaps at the threshold are far above the float32 error of the norms.
    assert (kept == ref_kept).mean() > 0.999

    method24 = next(m for m in wd.METHODS if m.key == "wanda_2:4")
    down = wd.prune_method(
        params, method24, jaxprune.wanda_scores(params, norms), lm.is_block_linear
    )["blocks"][1]["mlp"]["down"]["kernel"]
    groups = (np.asarray(down) != 0).reshape(TINY.d_ff // 4, 4, TINY.d_model)
    assert (groups.sum(1) == 2).all()


def test_outputs_and_checkpoint_reuse(demo, tmp_path, monkeypatch, capsys):
    config, summary = demo
    with open(os.path.join(config.out, "wanda.json")) as f:
        written = json.load(f)
    assert written["overall"] == summary["overall"]
    assert not written["loaded_checkpoint"] and len(written["train_losses"]) == 400
    with open(os.path.join(config.out, "wanda.png"), "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    table = wd.format_table(summary)
    assert "| Wanda | output unit |" in table and f"{summary['dense']['perplexity']:.3f}" in table
    # A second run loads the model: the same numbers without training. Between loading and
    # the tables it says what it does and shows one bar: dense, calibration, then 6 methods
    # on all blocks and on each of the 2 blocks alone.
    capsys.readouterr()
    again = wd.run_wanda_demo(
        config.__class__(**{**config.__dict__, "plots": False, "progress": True})
    )
    assert again["loaded_checkpoint"] and again["overall"] == summary["overall"]
    out, err = capsys.readouterr()
    assert "pruning with 6 methods" in out and "19 evaluations of 256 held-out windows" in out
    assert "prune + evaluate" in err and "20/20" in err and "block 1, Wanda 2:4" in err
    # A different training setting does not reuse it: with the checkpoint copied to a fresh
    # directory, 3 steps instead of 400 must train (stopped before any work: no compile).
    shutil.copy(os.path.join(config.out, wd.CHECKPOINT), tmp_path / wd.CHECKPOINT)

    class Trains(Exception):
        pass

    def train_lm(*args, **kwargs):
        raise Trains

    monkeypatch.setattr(wd.lm, "train_lm", train_lm)
    same = config.__class__(**{**config.__dict__, "out": str(tmp_path)})
    assert wd.load_or_train(same, lm.load_corpus())[2]["loaded"]
    with pytest.raises(Trains):
        wd.load_or_train(config.__class__(**{**same.__dict__, "steps": 3}), lm.load_corpus())


def _markdown_rows(text):
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ")
    ]


def test_readme_perplexity_table_is_the_commands_table(demo):
    """The README's table has the printed table's rows, columns and blanks; its numbers agree.

    The numbers are the default run's (this test's model is smaller); the command prints the
    2:4 column once per method (the scope does not matter for 2:4), and the dense perplexity is
    exp of the dense loss the per-block table gives.
    """
    _, summary = demo
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("`jaxprune demo-wanda` trains", 1)[1].split("Held-out loss increase", 1)
    table, rest = _markdown_rows(section[0]), section[1]
    printed = _markdown_rows(wd.format_table(summary).split("(2:4:", 1)[0])
    assert [r[:2] for r in table] == [r[:2] for r in printed]  # header, methods, groups
    for mine, theirs in zip(table, printed, strict=True):
        assert [c == "" for c in mine] == [c == "" for c in theirs]
        assert all(re.fullmatch(r"\d+\.\d{3}", c) for c in mine[2:] if c and mine[0] != "method")
    by_method = {}
    for method, _, _, two_four in table[2:]:
        by_method.setdefault(method, set()).add(two_four)
    assert all(len(v) == 1 for v in by_method.values())
    dense_nll = float(re.search(r"\(dense (\d\.\d{4})\)", rest).group(1))
    assert abs(math.exp(dense_nll) - float(table[1][2])) < 1e-3  # the loss has 4 decimals
