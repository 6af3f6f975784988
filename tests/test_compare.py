"""`jaxprune demo --compare`: every method ends at its exact structure and sparsity."""

import contextlib
import io
import json
import pathlib
import re

import pytest

from jaxprune.demos import cli, compare, demo

# End-to-end demo runs: CI's oldest-versions leg deselects them (-m "not examples").
pytestmark = pytest.mark.examples

# The demo CNN's kernels: conv1 (dense in the comparison), conv2, dense1, dense2.
SIZES = {"conv1": 3 * 3 * 1 * 16, "conv2": 3 * 3 * 16 * 32, "dense1": 512 * 128, "dense2": 128 * 10}
TOTAL = sum(SIZES.values())
POOL = TOTAL - SIZES["conv1"]


README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    config = demo.DemoConfig(target_sparsity=0.8, steps=30, out=str(out), progress=False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = compare.compare_methods(config)
    result["out"] = out
    result["printed"] = printed.getvalue()
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
    # "pruned": the channel-pruned model before shrinking, every array at its full size.
    assert story["parameters"]["pruned"] == TOTAL + 16 + 64 + 32 + 128 + 10
    assert story["accuracy"]["shrunk"] == story["accuracy"]["pruned"]
    assert round(story["accuracy"]["pruned"] * 360) == round(summary["rows"][-1]["accuracy"] * 360)
    assert story["max_abs_logit_difference"] < 1e-4
    assert "conv2/kernel" in story["report"]
    table = compare.format_shrink(story)
    assert "channel-pruned (zeros kept)" in table and "shrunk / channel-pruned" in table
    assert not re.search(r"^dense\s", table, re.M)  # the dense baseline is in the other table


def test_compare_writes_json_and_plot_and_says_so(summary):
    data = json.loads((summary["out"] / "compare.json").read_text())
    assert [r["method"] for r in data["rows"]] == [r["method"] for r in summary["rows"]]
    assert list(data["history"]) == [r["method"] for r in summary["rows"]]
    assert data["history"]["dense"]["eval_step"] == [30]  # evaluated at the last step
    assert data["plots"] == ["compare.png"]
    assert (summary["out"] / "compare.png").read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote compare.json, compare.png to {summary['out']}" in summary["printed"]
    table = compare.format_compare(summary)
    assert table.splitlines()[0].split() == ["method", "sparsity", "accuracy", "vs", "dense"]
    assert len(table.splitlines()) == 2 + len(summary["rows"])
    assert table in summary["printed"]


def _readme_compare_section():
    return README.split("### Methods compared on the demo's data", 1)[1].split("\n## ", 1)[0]


def test_readme_table_is_the_commands_output(summary):
    """The README's table is format_compare_markdown of a run of the command it names.

    The methods and the sparsity column are the same at any run length (every method ends at
    its exact target), so they must equal this cheap run's. The accuracies come from the
    600-step run: each must be a whole number of the 360 test digits, and 'vs dense' their
    difference to dense, as the formatter writes it.
    """
    section = _readme_compare_section()
    assert "`jaxprune demo --compare --target-sparsity 0.8`" in section
    assert cli.build_parser().parse_args(["demo", "--compare"]).steps is None  # -> 600 steps
    assert "(600 steps each" in section and summary["test_digits"] == 360
    table = "\n".join(line for line in section.splitlines() if line.startswith("| "))
    table = table.split("\n| method | seed 0", 1)[0]  # the first table
    lines = table.splitlines()
    accuracies = [float(re.findall(r"([\d.]+) %", line)[1]) / 100 for line in lines[1:]]
    digits = [round(a * 360) for a in accuracies]
    assert [round(d / 360, 4) for d in digits] == [round(a, 4) for a in accuracies]
    rows = [{**row, "accuracy": d / 360} for row, d in zip(summary["rows"], digits, strict=True)]
    assert table == compare.format_compare_markdown({"rows": rows}).replace(
        "|---|---|---|---|\n", ""
    )


def test_readme_seed_table_agrees_with_the_main_table():
    section = _readme_compare_section()
    main, seeds = section.split("| method | seed 0", 1)
    main_acc = re.findall(r"^\| ([^|]+) \| [\d.]+ % \| ([\d.]+) %", main, re.M)
    seed_rows = re.findall(r"^\| ([^|]+) \| ([\d.]+) % \| ([\d.]+) % \| ([\d.]+) % \|", seeds, re.M)
    assert [(m, a) for m, a, *_ in seed_rows] == main_acc  # seed 0 is the main table's run
    for _, *values in seed_rows:
        for v in values:
            assert abs(float(v) / 100 * 360 - round(float(v) / 100 * 360)) < 0.02  # k / 360


def test_cli_compare_flag_parses():
    args = cli.build_parser().parse_args(["demo", "--compare", "--no-plots"])
    assert args.compare and args.steps is None
