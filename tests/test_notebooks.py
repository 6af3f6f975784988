"""The notebooks in notebooks/: committed without outputs, and run top to bottom without error.

Each notebook checks its own results with ``assert`` statements, so running it without error
is the test; the quickstart also prints a marker once its TensorBoard event file was read back.
"""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ["quickstart.ipynb", "tf_migration.ipynb", "oneshot_wanda.ipynb"]

# End-to-end runs of the examples: CI's oldest-versions leg deselects them (-m 'not examples').
pytestmark = pytest.mark.examples

nbformat = pytest.importorskip("nbformat")


def _read(name):
    return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def test_all_notebooks_are_listed():
    assert sorted(n for n in os.listdir(NOTEBOOK_DIR) if n.endswith(".ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped(name):
    nb = _read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_guarded_install_cell(name):
    first_code = next(c for c in _read(name).cells if c.cell_type == "code")
    assert "try:\n    import jaxprune\nexcept ImportError:" in first_code.source
    assert "%pip install" in first_code.source


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that runs this very interpreter, in a temporary JUPYTER_PATH entry.

    No dependence on (or change to) the kernelspecs of the machine or the user: only
    ``ipykernel`` must be importable here.
    """
    pytest.importorskip("ipykernel")
    name = "jaxprune-test-python"
    data_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = data_dir / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (jaxprune tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "JUPYTER_PATH",
            os.pathsep.join(p for p in (str(data_dir), os.environ.get("JUPYTER_PATH")) if p),
        )
        yield name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, kernel_name, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nb = _read(name)
    # The kernel imports this checkout's jaxprune (installed or not) and runs on CPU in CI.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    )
    monkeypatch.delenv("MPLBACKEND", raising=False)  # keep the kernel's inline backend
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "jaxprune" in text and "devices:" in text
    if name == "quickstart.ipynb":
        assert "TensorBoard events OK" in text
        assert any(
            "image/png" in o.get("data", {}) for o in outputs if o["output_type"] == "display_data"
        ), "the sparsity plot was not shown"
