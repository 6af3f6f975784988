"""Docs: every public name documented, the README's quickstart runs, README and CI agree."""

import inspect
import json
import pathlib
import re
import tomllib

import pytest

import jaxprune

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_all_matches_exports_and_version():
    assert sorted(jaxprune.__all__) == sorted(
        n
        for n in dir(jaxprune)
        # Submodules (jaxprune.demos once a test imported it) are not exports.
        if not n.startswith("_")
        and n != "annotations"
        and not inspect.ismodule(getattr(jaxprune, n))
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


def test_readme_linen_example_runs(capsys):
    code = _readme_block("### Flax linen", "python")
    exec(compile(code, "README.md:linen", "exec"), {})
    assert "dense1: 0.900 sparse" in capsys.readouterr().out


def test_readme_commands_and_ci_agree():
    setup = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README)
    assert len(setup) >= 2
    demo, tests = setup[0], setup[1]
    assert demo.endswith("jaxprune demo") and '".[examples]"' in demo
    assert tests.endswith("python -m pytest") and '".[test]"' in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[test,docs]"' in ci
    assert f"\n{tests.split('&& ')[-1]}\n" in ci  # the README's test command, on its own line
    assert "ruff check ." in ci and "ruff format --check ." in ci
    assert "\nmypy\n" in ci and "sphinx-build -W" in ci and "twine check --strict" in ci
    # The second leg: the pinned oldest versions, every test but the end-to-end examples.
    assert '-c .ci/constraints-oldest.txt -e ".[test]"' in ci
    assert 'python -m pytest -m "not examples"' in ci


def _lower_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    bounds = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", req)
        if m:
            bounds[m.group(1).lower()] = m.group(2)
    return bounds


def test_oldest_pins_are_the_declared_lower_bounds():
    pins = {}
    for line in (ROOT / ".ci" / "constraints-oldest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    bounds = _lower_bounds()
    for name in ("jax", "flax", "optax", "orbax-checkpoint", "chex", "numpy"):
        assert pins[name] == bounds[name], (name, pins[name], bounds[name])
    assert pins["jaxlib"] == pins["jax"]
    # The README states the same oldest versions.
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    for name in ("jax", "optax", "flax", "orbax-checkpoint"):
        assert f"{name} >= {bounds[name]}" in install, name


def test_api_reference_documents_every_public_name():
    api = (ROOT / "docs" / "api.rst").read_text()
    documented = re.findall(r"^\.\. auto(?:function|class):: (\w+)$", api, re.M)
    assert sorted(documented) == sorted(jaxprune.__all__)


def _install_commands():
    """Every `pip install` in the README, docs, notebooks and the CLI's messages."""
    texts = {"README.md": README}
    for path in [*(ROOT / "docs").glob("*.md"), *(ROOT / "docs").glob("*.rst")]:
        texts[str(path.relative_to(ROOT))] = path.read_text()
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        texts[str(path.relative_to(ROOT))] = "\n".join("".join(c["source"]) for c in cells)
    texts["cli.py"] = (ROOT / "jaxprune" / "demos" / "cli.py").read_text()
    for name, text in texts.items():
        for m in re.finditer(r"pip install ([^\n`]*)", text):
            yield name, m.group(1)


def test_every_install_instruction_works_without_pypi():
    """jaxprune is not on PyPI: install from git, a checkout (".[extra]") or a built wheel."""
    commands = list(_install_commands())
    assert len(commands) >= 8
    for name, args in commands:
        if "jaxprune" not in args and not re.search(r"(^|\s)(-e\s+)?[\"']?\.(\[|/|\s|$)", args):
            continue  # other packages (e.g. jax[cuda12], build, the demo's missing extras)
        ok = (
            "@ git+https://github.com/jaxprune/jaxprune" in args
            or re.search(r"-e \S*\.\[", args)
            or re.search(r"-e \.(\s|$)", args)
            or "dist/jaxprune-" in args
        )
        assert ok, f"{name}: pip install {args}"


def test_readme_migration_table_covers_every_hparam():
    table = README.split("## Coming from TensorFlow", 1)[1].split("### Deliberate", 1)[0]
    for field in jaxprune.get_pruning_hparams().to_dict():
        if field == "threshold_method":  # jaxprune's own field, described above the table
            continue
        assert f"`{field}" in table or f"{field}`" in table, field
    for method in ("mask_update_op", "conditional_mask_update_op", "add_pruning_summaries"):
        assert method in table
