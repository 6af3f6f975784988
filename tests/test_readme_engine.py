"""The README's "Beyond TF" examples run, and their assertions hold."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return section.split("\n## ", 1)[0]


def test_readme_engine_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", _section("## Beyond TF"), re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md:beyond-tf-{i}", "exec"), namespace)
    # The last block pruned gradually to exactly 2:4 along the input axis.
    assert namespace["p"]["dense1"]["kernel"].shape == (64, 256)
