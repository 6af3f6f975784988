"""Error-free float32 arithmetic (Dekker / Knuth), for results that match float64 references."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def split(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Veltkamp split of float32 ``v`` into two halves of 12 significant bits: ``hi + lo == v``."""
    c = jnp.float32(4097.0) * v
    hi = c - (c - v)
    return hi, v - hi


def two_prod(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dekker's product: ``p = fl(a * b)`` and ``e`` with ``p + e == a * b`` exactly."""
    p = a * b
    ah, al = split(a)
    bh, bl = split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Knuth's sum: ``s = fl(a + b)`` and ``t`` with ``s + t == a + b`` exactly."""
    s = a + b
    bv = s - a
    av = s - bv
    return s, (a - av) + (b - bv)


def integer_power(x: jax.Array, n: int) -> jax.Array:
    """``x ** n`` for float32 ``x`` and a static integer ``n >= 0``, rounded once at the end.

    Carries the product as an unevaluated float32 pair, so the result is the
    correctly rounded power (like C's ``powf``) rather than XLA's ``pow``,
    which can be an ulp off.
    """
    if n == 0:
        return jnp.ones_like(x)
    hi, lo = x, jnp.zeros_like(x)
    for _ in range(n - 1):
        p, e = two_prod(hi, x)
        hi, lo = two_sum(p, e + lo * x)
    return hi + lo


def rounded(x: jax.Array, token: jax.Array | None = None) -> jax.Array:
    """Returns float32 ``x`` unchanged, but opaque to the compiler's algebraic rewrites.

    XLA:CPU may fuse ``a * b + c`` into one FMA (a single rounding), and turns
    ``x / constant`` into ``x * (1 / constant)``, while TF evaluates each op
    with its own IEEE rounding. Passing a value through an integer ``min`` that
    the compiler cannot prove to be the identity keeps TF's roundings. For a
    compile-time constant, pass a runtime int32 scalar ``token`` (any value) so
    that the bound is not a constant either. (A NaN payload becomes +Inf.)
    """
    bits = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.int32)
    bound = jnp.int32(0x7F800000)
    if token is not None:
        bound = jnp.maximum(jnp.asarray(token, jnp.int32), bound)
    return jax.lax.bitcast_convert_type(jnp.minimum(bits, bound), jnp.float32)
