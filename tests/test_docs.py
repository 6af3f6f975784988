"""Docs: every public name documented, the README's quickstart runs, README and CI agree."""

import inspect
import json
import pathlib
import re
import tomllib

import numpy as np
import pytest

import jaxprune

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_all_matches_exports_and_version():
    # Subpackages (jaxprune.demos, once any test imported it) are attributes, not exports.
    assert sorted(jaxprune.__all__) == sorted(
        n
        for n in dir(jaxprune)
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


def _readme_python_sections():
    """The README's ```python blocks, grouped by the heading (#, ## or ###) they are under.

    Fenced blocks of any language are consumed whole, so a ``#`` comment in one is no heading.
    """
    sections: dict[str, list[str]] = {}
    heading = None
    for m in re.finditer(r"^(#{1,3}) (.+?)$|^```(\w*)\n(.*?)^```$", README, re.M | re.S):
        if m.group(1):
            heading = m.group(2)
        elif m.group(3) == "python":
            sections.setdefault(heading, []).append(m.group(4))
    return sections


README_SECTIONS = _readme_python_sections()

# What a section's blocks print (beyond the asserts in them), by the start of its heading.
README_OUTPUT = {
    "jaxprune": [],
    "Quickstart": ["model_pruning/sparsity", "dense1: 0.900 sparse"],
    "Flax linen": ["dense1: 0.900 sparse"],
    "Two ways to run pruning": ["model_pruning/sparsity", "dense1: 0.900 sparse"],
    "Using it correctly": ["8 of 16 weights pruned\n12 of 16 weights pruned"],
    "Beyond TF": [],
    "One-shot pruning of an nnx model": ["dense1: 0.900 sparse"],
    "One-shot pruning of trained models": [],
}


def _expected_output(heading):
    (key,) = [k for k in README_OUTPUT if heading.startswith(k)]
    return README_OUTPUT[key]


def test_every_readme_python_block_is_run():
    """Each section with code has its expectations here; no block is left out."""
    assert all(len([k for k in README_OUTPUT if h.startswith(k)]) == 1 for h in README_SECTIONS)
    fences = re.findall(r"^```python$", README, re.M)
    assert sum(len(blocks) for blocks in README_SECTIONS.values()) == len(fences) >= 10


@pytest.mark.parametrize("heading", list(README_SECTIONS))
def test_readme_section_runs_as_pasted(heading, capsys):
    """A section's blocks run in order in one fresh namespace: complete as pasted, asserts hold."""
    namespace: dict = {}
    for i, code in enumerate(README_SECTIONS[heading]):
        exec(compile(code, f"README.md:{heading}:{i}", "exec"), namespace)
    out = capsys.readouterr().out
    for expected in _expected_output(heading):
        assert expected in out, (heading, expected, out)
    if heading.startswith("Beyond TF"):  # the last block pruned gradually to exactly 2:4
        assert namespace["p"]["dense1"]["kernel"].shape == (64, 256)
    if heading.startswith("Two ways"):  # the separate update: pruned weights are exactly 0
        masks = jaxprune.get_pruning_state(namespace["opt_state"]).masks
        for layer, n in (("dense1", 64 * 256), ("dense2", 256 * 10)):
            mask = np.asarray(masks[layer]["kernel"])
            kernel = np.asarray(namespace["params"][layer]["kernel"])
            assert mask.sum() == round(0.1 * n) and np.all(kernel[~mask] == 0)


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
