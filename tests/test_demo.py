"""The ``jaxprune demo`` command: an end-to-end run, its outputs, its flags and its errors."""

import json
import os
import platform
import re
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

pytest.importorskip("flax.nnx")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

import jaxprune
from jaxprune.demos import cli
from jaxprune.demos import demo as demo_lib

# End-to-end runs of the examples: CI's oldest-versions leg deselects them (-m 'not examples').
pytestmark = pytest.mark.examples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 40


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One small end-to-end run through main(), shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("demo")
    rc = cli.main(
        ["demo", "--steps", str(STEPS), "--seed", "1", "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    with open(out / "summary.json") as f:
        return out, json.load(f)


def _schedule(t, hp, target):
    """SPEC §2 in float32 NumPy, written independently of jaxprune."""
    begin, end = hp["sparsity_function_begin_step"], hp["sparsity_function_end_step"]
    p = np.clip(np.float32(t - begin) / np.float32(end - begin), 0, 1).astype(np.float32)
    ramp = np.power(np.float32(1) - p, np.float32(hp["sparsity_function_exponent"]))
    return np.float32(hp["initial_sparsity"] - target) * ramp + np.float32(target)


def _target(name, hp):
    """SPEC §2: the weight_sparsity_map entry whose regex re.search-es the name, else the target."""
    for entry in hp["weight_sparsity_map"]:
        regex, value = entry.rsplit(":", 1)
        if re.search(regex, name):
            return float(value)
    return hp["target_sparsity"]


def _last_update_step(hp, steps):
    """SPEC §3: the step of the last mask update in a run of ``steps`` steps."""
    last = 0
    for t in range(1, steps + 1):
        in_range = t >= hp["begin_pruning_step"] and (
            hp["end_pruning_step"] == -1 or t <= hp["end_pruning_step"]
        )
        if in_range and last + hp["pruning_frequency"] <= t:
            last = t
    return last


def test_summary_fields(demo_run, capsys):
    _, summary = demo_run
    for key in ("dense_accuracy", "pruned_accuracy", "sparsity", "target_sparsity", "steps"):
        assert key in summary, key
    assert summary["steps"] == STEPS
    assert summary["target_sparsity"] == pytest.approx(0.9)
    assert 0.0 <= summary["dense_accuracy"] <= 1.0 and 0.0 <= summary["pruned_accuracy"] <= 1.0
    # Even 40 steps learn something (chance is 10 %).
    assert summary["dense_accuracy"] > 0.5
    # The train step of each run is traced and compiled once.
    assert summary["compiles"] == {"dense": 1, "pruned": 1}
    # The demo prunes the first conv layer to half the target.
    assert summary["hparams"]["weight_sparsity_map"] == ["conv1/:0.45"]
    assert [r["name"] for r in summary["layers"]] == [
        "conv1/kernel",
        "conv2/kernel",
        "dense1/kernel",
        "dense2/kernel",
    ]
    assert summary["wall_seconds"] > 0
    assert len(summary["history"]["pruned"]["test_accuracy"]) == len(
        summary["history"]["pruned"]["eval_step"]
    )


def test_sparsity_follows_the_schedule(demo_run):
    """Each layer keeps exactly k = round(n * (1 - s(t_last))) weights (no ties in trained ones)."""
    _, summary = demo_run
    hp = summary["hparams"]
    last = _last_update_step(hp, STEPS)
    assert last > 0
    assert summary["last_mask_update_step"] == last
    total = kept = 0
    for row in summary["layers"]:
        target = _target(row["name"], hp)
        assert row["target_sparsity"] == pytest.approx(target)
        s = _schedule(last, hp, target)
        assert row["scheduled_sparsity"] == pytest.approx(float(s), abs=1e-6)
        k = max(1, int(np.round(np.float32(row["size"]) * (np.float32(1) - s))))
        assert row["nonzeros"] == k, row
        assert row["achieved_sparsity"] == pytest.approx(1 - k / row["size"])
        total += row["size"]
        kept += k
    assert summary["sparsity"] == pytest.approx(1 - kept / total)
    assert summary["prunable_weights"] == total and summary["prunable_nonzeros"] == kept


def test_plots_are_valid_pngs(demo_run):
    import matplotlib.image

    out, summary = demo_run
    assert summary["plots"] == ["sparsity.png", "training.png", "layers.png"]
    for name in summary["plots"]:
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, name
        assert image.std() > 0.01, f"{name} is blank"


def test_overall_target_is_the_size_weighted_layer_targets(demo_run):
    """The "all prunable" target: sum(size * own target) / sum(size), not target_sparsity."""
    _, summary = demo_run
    hp = summary["hparams"]
    rows = summary["layers"]
    weighted = sum(r["size"] * _target(r["name"], hp) for r in rows) / sum(r["size"] for r in rows)
    assert summary["overall_target_sparsity"] == pytest.approx(weighted)
    assert summary["overall_target_sparsity"] < summary["target_sparsity"]  # conv1 at half


def _history(steps, sparsity):
    evals = [steps // 2, steps]
    return {
        "loss": [1.0 / t for t in range(1, steps + 1)],
        "scheduled_sparsity": [sparsity] * steps,
        "achieved_sparsity": [sparsity] * steps,
        "last_mask_update_step": list(range(1, steps + 1)),
        "eval_step": evals,
        "test_accuracy": [0.9, 0.95],
        "test_loss": [0.3, 0.2],
    }


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({}, "exact threshold (TF r1.15)"),
        ({"threshold_method": "histogram"}, "histogram threshold (TF r1.11)"),
        (
            {"block_height": 4, "block_width": 2},
            "exact threshold (TF r1.15), 4x2 blocks (AVG pooling)",
        ),
    ],
)
def test_plot_titles_name_the_method(tmp_path, monkeypatch, overrides, words):
    from matplotlib.figure import Figure

    titles = []
    save = Figure.savefig

    def record(fig, *args, **kwargs):
        titles.append(" ".join([fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    hp = jaxprune.get_pruning_hparams().replace(
        weight_sparsity_map=["a:0.5"], target_sparsity=0.9, **overrides
    )
    rows = [
        {"name": "a/kernel", "shape": [10, 10], "size": 100, "target_sparsity": 0.5,
         "achieved_sparsity": 0.5, "nonzeros": 50},
        {"name": "b/kernel", "shape": [30, 10], "size": 300, "target_sparsity": 0.9,
         "achieved_sparsity": 0.9, "nonzeros": 30},
    ]  # fmt: skip
    summary = {"layers": rows, "hparams": hp.to_dict(), "target_sparsity": 0.9,
               "overall_target_sparsity": 0.8}  # fmt: skip
    dense = demo_lib.RunResult("dense", {}, _history(20, 0.0), 0.95, 1, 1.0)
    pruned = demo_lib.RunResult("pruned", {}, _history(20, 0.8), 0.94, 1, 1.0)
    demo_lib.write_plots(str(tmp_path), dense, pruned, summary)
    assert len(titles) == 3
    for title in titles:
        assert f"magnitude pruning, {words}" in title, title
    assert "80.0% overall" in titles[0] and "pruned to 80.0%" in titles[1]


def test_table_is_printed(tmp_path, capsys):
    summary = {
        "layers": [
            {
                "name": "dense1/kernel",
                "shape": [512, 128],
                "size": 65536,
                "target_sparsity": 0.9,
                "achieved_sparsity": 0.9,
                "nonzeros": 6554,
            }
        ],
        "prunable_weights": 65536,
        "prunable_nonzeros": 6554,
        "target_sparsity": 0.9,
        "sparsity": 0.9,
        "dense_accuracy": 0.98,
        "pruned_accuracy": 0.97,
    }
    table = demo_lib.format_table(summary)
    assert "dense1/kernel" in table and "512x128" in table and "6,554 / 65,536" in table
    assert "dense 98.00%" in table and "pruned 97.00%" in table
    # With per-layer targets, the "all prunable" row shows their size-weighted target.
    summary["overall_target_sparsity"] = 0.875
    row = next(
        line for line in demo_lib.format_table(summary).splitlines() if "all prunable" in line
    )
    assert "87.5%" in row and "90.0%" not in row


def test_flags_reach_the_hparams(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(demo_lib, "run_demo", lambda config: seen.setdefault("config", config))
    argv = [
        "demo",
        "--target-sparsity",
        "0.8",
        "--steps",
        "300",
        "--block",
        "4x4",
        "--method",
        "histogram",
        "--seed",
        "3",
        "--out",
        str(tmp_path),
        "--hparams",
        "pruning_frequency=7,weight_sparsity_map=[conv1:0.5]",
    ]
    assert cli.main(argv) == 0
    config = seen["config"]
    assert (config.seed, config.steps, config.out) == (3, 300, str(tmp_path))
    hp = demo_lib.build_hparams(config)
    assert hp.target_sparsity == 0.8
    assert (hp.block_height, hp.block_width) == (4, 4)
    assert hp.threshold_method == "histogram"
    assert hp.pruning_frequency == 7  # --hparams wins over the demo's default
    assert hp.sparsity_for("conv1/kernel") == 0.5
    assert hp.sparsity_function_begin_step == hp.begin_pruning_step == 30
    assert hp.sparsity_function_end_step == 200


def test_default_schedule():
    assert demo_lib.default_schedule(1500) == {
        "begin_pruning_step": 150,
        "sparsity_function_begin_step": 150,
        "sparsity_function_end_step": 1000,
        "pruning_frequency": 10,
    }
    short = demo_lib.default_schedule(20)
    assert short["sparsity_function_end_step"] > short["sparsity_function_begin_step"]
    assert (short["sparsity_function_end_step"] - short["begin_pruning_step"]) // short[
        "pruning_frequency"
    ] >= 5


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--target-sparsity", "1.5"], "--target-sparsity: must be in [0, 1)"),
        (["--target-sparsity", "abc"], "--target-sparsity: expected a number"),
        (["--block", "4y4"], "--block: expected HEIGHTxWIDTH"),
        (["--block", "0x4"], "--block: expected HEIGHTxWIDTH"),
        (["--method", "median"], "invalid choice: 'median'"),
        (["--steps", "2"], "--steps: must be at least 3"),
        (["--hparams", "bogus=1"], "Unknown hparam 'bogus'"),
        (["--hparams", "target_sparsity=1.5"], "target_sparsity must be in [0, 1), got 1.5"),
        (["--hparams", "pruning_frequency=x"], "pruning_frequency must be an integer"),
    ],
)
def test_bad_flags_give_clear_errors(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--out", str(tmp_path / "never"), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "usage: jaxprune demo" in err
    assert not (tmp_path / "never").exists()


def test_missing_extra_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` fail
    assert cli.main(["demo", "--out", str(tmp_path / "never")]) == 1
    err = capsys.readouterr().err
    assert "missing: scikit-learn." in err
    assert "pip install scikit-learn\n" in err and 'pip install -e ".[examples]"' in err
    assert not (tmp_path / "never").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"jaxprune {jaxprune.__version__} (jax {jax.__version__}, ")
    assert f"optax {optax.__version__}" in out and f"Python {platform.python_version()}" in out


@pytest.mark.parametrize("kind", ["file", "under_file"])
def test_bad_out_is_a_usage_error(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_lib, "run_demo", lambda config: pytest.fail("the demo ran"))
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    out = blocker if kind == "file" else blocker / "sub"
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: jaxprune demo" in err and "Traceback" not in err
    if kind == "file":
        assert f"--out: {str(out)!r} exists and is not a directory" in err
    else:
        assert f"--out: cannot create directory {str(out)!r}: Not a directory" in err
    assert blocker.read_text() == "not a directory"


def test_out_is_created_before_training(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        demo_lib, "run_demo", lambda config: seen.setdefault("isdir", os.path.isdir(config.out))
    )
    assert cli.main(["demo", "--out", str(tmp_path / "new" / "dir")]) == 0
    assert seen == {"isdir": True}


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_python_dash_m_help_and_light_import():
    """``python -m jaxprune demo --help`` works; ``import jaxprune`` imports no optional extra."""
    run = subprocess.run(
        [sys.executable, "-m", "jaxprune", "demo", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
        timeout=120,
    )
    assert "sparsity_function_end_step" in run.stdout and "--target-sparsity" in run.stdout
    code = (
        "import sys, jaxprune, jaxprune.demos.cli; "
        "print([m for m in ('flax', 'matplotlib', 'sklearn', 'tqdm') if m in sys.modules])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
        timeout=120,
    )
    assert run.stdout.strip() == "[]"
