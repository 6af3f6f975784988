"""`jaxprune demo --compare`: every method ends at its exact structure and sparsity."""

import json

import pytest

from jaxprune.demos import cli, compare, demo

# End-to-end demo runs: CI's oldest-versions leg deselects them (-m "not examples").
pytestmark = pytest.mark.examples

# The demo CNN's kernels: conv1 (dense in the comparison), conv2, dense1, dense2.
SIZES = {"conv1": 3 * 3 * 1 * 16, "conv2": 3 * 3 * 16 * 32, "dense1": 512 * 128, "dense2": 128 * 10}
TOTAL = sum(SIZES.values())
POOL = TOTAL - SIZES["conv1"]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    config = demo.DemoConfig(
        target_sparsity=0.8, steps=30, out=str(out), progress=False, plots=False
    )
    result = compare.compare_methods(config)
    result["out"] = out
    return result


def test_compare_rows_reach_each_methods_exact_sparsity(summary):
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["dense", *(m.name for m in compare.METHODS)]
    # Hand-worked zeros at 0.8 (k = round(0.2 n) kept per weight / over the global pool):
    # conv2 4608 - 922, dense1 65536 - 13107, dense2 1280 - 256 -> 57139 (per layer and global).
    assert rows["TF layer (unstructured)"]["sparsity"] == pytest.approx(57139 / TOTAL, abs=1e-12)
    assert rows["global"]["sparsity"] == pytest.approx(
        (POOL - round(0.2 * POOL)) / TOTAL, abs=1e-12
    )
    # ERK: within one element per weight of 80 % of the pool.
    assert abs(rows["ERK"]["sparsity"] * TOTAL - 0.8 * POOL) <= 3
    # 2:4: exactly half of every pruned kernel.
    assert rows["2:4 (N:M)"]["sparsity"] == pytest.approx(POOL / 2 / TOTAL, abs=1e-12)
    # channel: conv2 prunes round(32 * 0.8) = 26 filters of 144 weights, dense1 round(102.4) = 102
    # columns of 512; the classifier stays whole.
    assert rows["channel"]["sparsity"] == pytest.approx((26 * 144 + 102 * 512) / TOTAL, abs=1e-12)
    for row in summary["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0


def test_compare_shrinks_the_channel_pruned_model(summary):
    story = summary["shrink"]
    # Hand count: conv1 (144 + 16) and BatchNorm (4 x 16) whole; conv2 keeps 6 of 32 filters
    # (3*3*16*6 + 6); dense1 keeps 26 of 128 columns and the 4*4*6 = 96 rows of conv2's kept
    # channels (96*26 + 26); dense2 keeps those 26 rows (26*10 + 10).
    assert story["parameters"]["shrunk"] == 144 + 16 + 64 + 864 + 6 + 96 * 26 + 26 + 26 * 10 + 10
    assert story["parameters"]["dense"] == TOTAL + 16 + 64 + 32 + 128 + 10
    assert story["accuracy"]["shrunk"] == story["accuracy"]["dense"]
    assert story["max_abs_logit_difference"] < 1e-4
    assert "conv2/kernel" in story["report"]


def test_compare_writes_json_and_prints_table(summary, capsys):
    data = json.loads((summary["out"] / "compare.json").read_text())
    assert [r["method"] for r in data["rows"]] == [r["method"] for r in summary["rows"]]
    table = compare.format_compare(summary)
    assert table.splitlines()[0].split() == ["method", "sparsity", "accuracy", "vs", "dense"]
    assert len(table.splitlines()) == 2 + len(summary["rows"])


def test_cli_compare_flag_parses():
    args = cli.build_parser().parse_args(["demo", "--compare", "--no-plots"])
    assert args.compare and args.steps is None
