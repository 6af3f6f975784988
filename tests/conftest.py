"""Test-session setup: 8 XLA host devices, so sharding tests run on a real multi-device mesh.

XLA_FLAGS must be set before jax is first imported; pytest imports this file before any test
module (and before the doctests of jaxprune). Single-device tests simply use device 0.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

from hypothesis import settings  # noqa: E402

# Shapes vary per example, so every example compiles; keep the suite fast and deterministic.
settings.register_profile("jaxprune", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("jaxprune")


#: CI's oldest-versions leg (.ci/run sets JAXPRUNE_CI_LEG=oldest) runs each property test with a
#: quarter of its examples (at least 2): the newest leg runs them all, and what can differ
#: between versions (jax's primitives under jaxprune's code) shows on any example, while the
#: examples' variety tests jaxprune's own logic. Every example compiles, so this is most of the
#: property tests' cost. (Hypothesis keeps a test's settings in this attribute; if a release
#: renames it, the leg simply runs every example.)
OLDEST_LEG_EXAMPLES = 0.25


def _fewer_examples(items):
    done = set()
    for item in items:
        fn = getattr(item, "obj", None)
        current = getattr(fn, "_hypothesis_internal_use_settings", None)
        if current is None or id(fn) in done:
            continue
        done.add(id(fn))
        fewer = max(2, int(current.max_examples * OLDEST_LEG_EXAMPLES))
        fn._hypothesis_internal_use_settings = settings(current, max_examples=fewer)


def pytest_collection_modifyitems(config, items):
    """On CI's oldest-versions leg, fewer examples per property test (see above)."""
    if os.environ.get("JAXPRUNE_CI_LEG") == "oldest":
        _fewer_examples(items)
