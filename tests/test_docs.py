"""Docs: every public name documented, the README's quickstart runs, README and CI agree."""

import inspect
import pathlib
import re

import pytest

import jaxprune

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_all_matches_exports_and_version():
    assert sorted(jaxprune.__all__) == sorted(
        n for n in dir(jaxprune) if not n.startswith("_") and n != "annotations"
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+", jaxprune.__version__)


@pytest.mark.parametrize("name", jaxprune.__all__)
def test_public_name_has_google_style_docstring(name):
    obj = getattr(jaxprune, name)
    doc = inspect.getdoc(obj)
    assert doc and len(doc.splitlines()) >= 3, f"{name} has no real docstring"
    assert "Examples:" in doc or "Attributes:" in doc, f"{name}: no Examples section"
    if inspect.isfunction(obj) and inspect.signature(obj).parameters:
        assert "Args:" in doc and "Returns:" in doc, f"{name}: no Args/Returns"


@pytest.mark.parametrize(
    "name",
    [
        "magnitude_pruning",
        "get_pruning_hparams",
        "sparsity_schedule",
        "weight_mask",
        "Pruning",
        "PruningHParams",
    ],
)
def test_main_entry_points_cite_zhu_and_gupta(name):
    doc = inspect.getdoc(getattr(jaxprune, name))
    assert "References:" in doc and "Zhu & Gupta" in doc and "2017" in doc


def _readme_block(heading, lang):
    section = README.split(heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def test_readme_quickstart_runs(capsys):
    code = _readme_block("## Quickstart", "python")
    namespace = {}
    exec(compile(code, "README.md:quickstart", "exec"), namespace)
    out = capsys.readouterr().out
    assert "model_pruning/sparsity" in out and "dense1: 0.900 sparse" in out


def test_readme_commands_and_ci_agree():
    setup = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README)
    assert len(setup) >= 2
    demo, tests = setup[0], setup[1]
    assert demo.endswith("jaxprune demo") and '".[examples]"' in demo
    assert tests.endswith("python -m pytest") and '".[test]"' in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[test]"' in ci
    assert ci.strip().splitlines()[-1] == tests.split("&& ")[-1]
    assert "ruff check ." in ci and "ruff format --check ." in ci


def test_readme_migration_table_covers_every_hparam():
    table = README.split("## Coming from TensorFlow", 1)[1].split("### Deliberate", 1)[0]
    for field in jaxprune.get_pruning_hparams().to_dict():
        if field == "threshold_method":  # jaxprune's own field, described above the table
            continue
        assert f"`{field}" in table or f"{field}`" in table, field
    for method in ("mask_update_op", "conditional_mask_update_op", "add_pruning_summaries"):
        assert method in table
