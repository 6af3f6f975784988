"""Warnings attributed to the user's line, from Python and from inside compiled code.

A warning raised while jaxprune runs under optax's ``chain``, Flax's ``nnx.Optimizer`` or
``jax.jit`` would point into one of those with a fixed ``stacklevel``: :func:`warn` and
:func:`warn_if_any` attribute it to the first frame outside jaxprune, optax, flax, chex and
jax. :func:`warn_if_any` reports a condition computed on the device from a
``jax.debug.callback``; the callback touches host (NumPy) values only -- dispatching JAX work
on the callback thread while the main thread dispatches the next step can deadlock.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Location(NamedTuple):
    """Where a warning is attributed: a file, a line and that module's globals."""

    filename: str
    lineno: int
    module_globals: dict[str, Any]


def _package_dirs() -> tuple[str, ...]:
    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # jaxprune/
    for module in ("optax", "flax", "jax", "jaxlib", "chex", "orbax"):
        mod = sys.modules.get(module)
        file = getattr(mod, "__file__", None)
        if file:
            dirs.append(os.path.dirname(os.path.abspath(file)))
    return tuple(d + os.sep for d in dirs)


def _user_frame(frame: FrameType | None) -> tuple[FrameType | None, int]:
    """The first frame from ``frame`` outwards outside the libraries, and how far out it is."""
    internal = _package_dirs()
    level = 0
    while frame is not None and (
        os.path.abspath(frame.f_code.co_filename).startswith(internal)
        or frame.f_code.co_filename.startswith("<frozen")
    ):
        frame, level = frame.f_back, level + 1
    return frame, level


def user_location() -> Location | None:
    """The user's line that is running jaxprune now (None if every frame is a library's)."""
    frame, _ = _user_frame(sys._getframe(1))
    if frame is None:
        return None
    return Location(frame.f_code.co_filename, frame.f_lineno, frame.f_globals)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the user's line, past jaxprune, optax, flax and jax frames.

    The transform's ``init`` is called through optax's ``chain``, ``inject_hyperparams``,
    Flax's ``TrainState.create`` / ``nnx.Optimizer`` or ``jax.jit``; a fixed stacklevel
    would point into one of those.
    """
    _, level = _user_frame(sys._getframe(1))
    warnings.warn(message, category, stacklevel=level + 2)


def warn_at(message: str, location: Location | None, category: type[Warning] = UserWarning):
    """Issues ``message`` as if raised at ``location`` (or at the caller's line if None)."""
    if location is None:
        warnings.warn(message, category, stacklevel=2)
        return
    registry = location.module_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(
        message,
        category,
        location.filename,
        location.lineno,
        module=location.module_globals.get("__name__"),
        registry=registry,
        module_globals=location.module_globals,
    )


def warn_if_any(
    flags: jax.Array,
    step: jax.Array,
    names: Sequence[str],
    message: Callable[[int, list[str]], str],
) -> None:
    """Warns from compiled code when any of ``flags`` (one bool per name) is set.

    Call it while tracing. The warning is ``message(step, flagged_names)``, attributed to the
    user's line that traced the computation. The host callback runs in its own scalar
    ``lax.cond``, only when a flag is set, and converts its arguments to NumPy before looking
    at them: it dispatches no JAX work.
    """
    names = list(names)
    location = user_location()

    def report(flags: Any, step: Any) -> None:
        hits = np.asarray(flags).tolist()
        hit_names = [n for n, b in zip(names, hits, strict=True) if b]
        warn_at(message(int(np.asarray(step)), hit_names), location)

    jax.lax.cond(jnp.any(flags), lambda: jax.debug.callback(report, flags, step), lambda: None)
