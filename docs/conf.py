"""Sphinx configuration of the jaxprune API reference (built from the docstrings).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (CI does, with
warnings as errors). The docstrings' ``Examples:`` are doctests run by the test suite
(``--doctest-modules``).
"""

import os
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
]
exclude_patterns = ["_build", "*.md"]

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
