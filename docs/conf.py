"""Sphinx configuration of the jaxprune site: the guides (Markdown) and the API reference.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (CI does, with
warnings as errors). The guides are Markdown, read by myst-parser: ``guide.md`` includes the
repository's README, and every other ``docs/*.md`` is listed in the index's Guides toctree
without an edit (``GUIDES`` there stands for them). The docstrings' ``Examples:`` are doctests
run by the test suite (``--doctest-modules``).
"""

import os
import pathlib
import sys

sys.path.insert(0, os.path.abspath(".."))  # this checkout's jaxprune, installed or not

import jaxprune

project = "jaxprune"
author = "The jaxprune Authors"
copyright = "The jaxprune Authors"
release = version = jaxprune.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
#: The guides besides guide.md (the README), in name order: every docs/*.md.
GUIDES = sorted(p.stem for p in pathlib.Path(__file__).parent.glob("*.md") if p.stem != "guide")

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Offline builds (CI has no network): intersphinx only where an inventory is cached.
intersphinx_mapping: dict = {}

html_theme = "alabaster"
html_title = f"jaxprune {release}"


def _list_guides(app, docname, source):
    """Puts every guide in place of the ``GUIDES`` line of index.rst's toctree."""
    if docname == "index":
        source[0] = source[0].replace("   GUIDES\n", "".join(f"   {g}\n" for g in GUIDES))


def setup(app):
    app.connect("source-read", _list_guides)
