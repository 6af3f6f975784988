"""What shrink removed, and what it left whole and why."""

from __future__ import annotations

import dataclasses

# ----------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class ShrinkReport:
    """What :func:`shrink` removed, and what it left whole and why.

    Attributes:
      arrays: ``{path: {"axis": a, "kept": n, "removed": m}}`` for every parameter that got
        smaller ("/"-joined paths as :func:`jaxprune.path_name`). When several axes of one
        array shrink (an attention kernel's heads and head dims), ``axis``, ``kept`` and
        ``removed`` are tuples, one entry per axis.
      whole: groups left whole although a member has an all-zero slice: dicts with
        ``members`` (``"path:axis"`` strings), ``zero`` (how many channels) and ``reason``.
      kept: channels with an all-zero slice in a member that were kept: dicts with
        ``members``, ``channels`` (indices) and ``reason``.
      folded: removed channels whose activation is a nonzero constant (``act(b_j)``): their
        contribution through the next matmul is added back exactly: dicts with ``weight``
        (that matmul's parameter), ``channels`` (how many) and ``bias`` (the bias leaf it was
        folded into, or None: added by ``small_fn`` as a constant, see
        :attr:`ShrunkFunction.corrections`).
      params_before, params_after: total parameter counts (elements).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxprune
      >>> params = {"w1": jnp.array([[1., 0., 2.]]), "b1": jnp.array([0., 3., 1.]),
      ...           "w2": jnp.array([[1.], [2.], [3.]]), "b2": jnp.array([0.5])}
      >>> fn = lambda p, x: jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
      >>> _, small_fn = jaxprune.shrink(fn, params, jnp.ones((1, 1)))
      >>> report = small_fn.report
      >>> report.arrays["w1"], report.params_before, report.params_after
      ({'axis': 1, 'kept': 2, 'removed': 1}, 10, 7)
      >>> report.folded  # unit 1 emits relu(3) = 3: 3 * w2[1] went into b2
      ({'bias': 'b2', 'weight': 'w2', 'channels': 1},)

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710
    """

    arrays: dict
    whole: tuple = ()
    kept: tuple = ()
    folded: tuple = ()
    params_before: int = 0
    params_after: int = 0


def format_report(report: ShrinkReport) -> str:
    """A readable table of a :class:`ShrinkReport`.

    Args:
      report: ``small_fn.report`` from :func:`shrink`.

    Returns:
      One row per shrunk array axis, then the groups left whole and the kept channels.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> params = {"w1": jnp.array([[1., 0., 2.]]), "w2": jnp.ones((3, 1))}
      >>> fn = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> small, small_fn = jaxprune.shrink(fn, params, jnp.ones((1, 1)))
      >>> print(jaxprune.format_report(small_fn.report))
      array  axis  kept  removed
      w1        1     2        1
      w2        0     2        1
      parameters: 6 -> 4 (0.667x)

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", 2017,
      https://arxiv.org/abs/1608.08710
    """
    rows = [("array", "axis", "kept", "removed")]
    for path, r in report.arrays.items():
        axes = r["axis"] if isinstance(r["axis"], tuple) else (r["axis"],)
        kept = r["kept"] if isinstance(r["kept"], tuple) else (r["kept"],)
        rem = r["removed"] if isinstance(r["removed"], tuple) else (r["removed"],)
        for a, k, m in zip(axes, kept, rem, strict=True):
            rows.append((path, str(a), str(k), str(m)))
    w0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[i]) for r in rows) for i in range(1, 4)]
    lines = [
        f"{r[0]:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:], widths, strict=True))
        for r in rows
    ]
    lines[0] = lines[0].rstrip()
    before, after = report.params_before, report.params_after
    ratio = after / before if before else 1.0
    lines.append(f"parameters: {before} -> {after} ({ratio:.3f}x)")
    for g in report.whole:
        lines.append(
            f"left whole ({g['zero']} zero channels): {', '.join(g['members'])}: {g['reason']}"
        )
    for g in report.kept:
        lines.append(
            f"kept {len(g['channels'])} zero channels of {', '.join(g['members'])}: {g['reason']}"
        )
    for f in report.folded:
        into = f["bias"] or "a constant of small_fn"
        lines.append(f"folded {f['channels']} constant channels through {f['weight']} into {into}")
    return "\n".join(lines)
