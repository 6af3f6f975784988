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
