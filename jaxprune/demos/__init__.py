"""Applications built on jaxprune's public API: the ``jaxprune`` command line and its demos.

Nothing here is library code: ``jaxprune/_src`` holds the library, re-exported by
``jaxprune/__init__.py``. These modules use only that public API and are examples of it.

- :mod:`jaxprune.demos.cli`: the ``jaxprune`` console script (``demo``, ``demo-wanda``, ...).
- :mod:`jaxprune.demos.demo`: gradual pruning of a small CNN on scikit-learn's digits.
- :mod:`jaxprune.demos.compare`: the demo's method comparison (``jaxprune demo --compare``).
- :mod:`jaxprune.demos.lm`: a small byte-level transformer language model and its data.
- :mod:`jaxprune.demos.wanda_demo`: one-shot pruning of that LM (``jaxprune demo-wanda``).
"""
