"""Pruning hyperparameters: TF's ``get_pruning_hparams()`` as a frozen value object.

Every field keeps the name, default (TF r1.15) and meaning it had in
``tf.contrib.model_pruning``. Instances are immutable and validated when they
are built, so a bad value fails loudly before any tracing or training. TF's
HParams string syntax (:meth:`PruningHParams.parse`) is read by ``hparams_syntax``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jaxprune._src import hparams_syntax

_POOLING_FUNCTIONS = ("AVG", "MAX")
_THRESHOLD_METHODS = ("exact", "histogram")
_MAP_FIELDS = ("weight_sparsity_map", "block_dims_map")
_PRUNING_SCOPES = ("layer", "global", "output")
_SPARSITY_DISTRIBUTIONS = ("uniform", "erk")
_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class PruningHParams:
    """Hyperparameters of gradual magnitude pruning (TF ``get_pruning_hparams``).

    Build one with :func:`get_pruning_hparams` and derive variants with
    :meth:`replace`, :meth:`parse` (TF's HParams string syntax) or
    :meth:`from_dict`. Instances are frozen and validated at construction:
    a bad value raises a ValueError naming the field. Step fields, the
    frequency and block dims must be at most ``2**31 - 1`` (steps are int32)
    and ``nbins`` at most ``2**24``; map regexes must compile with ``re``.

    Attributes:
      name: Prefix of the summary names (``"<name>/sparsity"``).
      begin_pruning_step: First global step at which masks may update.
      end_pruning_step: Last such step; ``-1`` means pruning never stops.
      weight_sparsity_map: ``"REGEX:SPARSITY"`` entries giving a weight-specific
        target sparsity; the regex is matched with ``re.search`` against the
        parameter's path name (e.g. ``"Dense_0/kernel"``).
      block_dims_map: ``"REGEX:HxW"`` entries giving a weight-specific block
        shape (first matching entry wins). As in TF, blocks apply only to
        weights that are 2-D after squeezing size-1 dimensions; others are
        pruned element by element (with a warning at ``init``).
      threshold_decay: Exponential smoothing of the threshold across updates.
      pruning_frequency: Minimum number of steps between mask updates.
      nbins: Histogram bins of the ``"histogram"`` threshold method.
      block_height: Default block height; ``-1``, or a height larger than the
        weight's, means the whole dimension.
      block_width: Default block width; ``-1``, or a width larger than the
        weight's, means the whole dimension.
      block_pooling_function: ``"AVG"`` or ``"MAX"`` pooling of ``|w|`` over a block.
      initial_sparsity: Sparsity at ``sparsity_function_begin_step``.
      target_sparsity: Sparsity from ``sparsity_function_end_step`` on.
      sparsity_function_begin_step: Start of the gradual sparsity ramp.
      sparsity_function_end_step: End of the gradual sparsity ramp.
      sparsity_function_exponent: Exponent of the polynomial ramp (3 = cubic).
      use_tpu: Accepted for compatibility only; XLA handles every backend.
      threshold_method: ``"exact"`` (k-th largest magnitude, TF r1.15, the
        default) or ``"histogram"`` (TF r1.11, uses ``nbins``).
      pruning_scope: Who competes for the kept weights: ``"layer"`` (TF, the
        default: each weight on its own), ``"global"`` (one threshold over all
        pruned weights not in ``weight_sparsity_map``) or ``"output"`` (each
        output unit, a slice along the weight's last axis, on its own: Wanda's
        comparison group).
      sparsity_distribution: Per-weight targets: ``"uniform"`` (every weight at
        ``target_sparsity``, the default) or ``"erk"`` (Erdos-Renyi-Kernel:
        density proportional to ``sum(shape) / prod(shape)``).
      sparsity_type: What is kept: ``"unstructured"`` (elementwise, or TF's
        blocks; the default), an N:M string such as ``"2:4"`` (the N largest of
        every M consecutive entries along ``sparsity_axis``) or ``"channel"``
        (whole slices along ``sparsity_axis``, scored by their L2 norm).
      sparsity_axis: The axis of N:M groups or of channels; None means the
        type's default: ``-2`` (the input axis of Dense and Conv kernels) for
        N:M, ``-1`` (the output axis) for channels.

    Examples:
      >>> import jaxprune
      >>> hp = jaxprune.PruningHParams(target_sparsity=0.9, pruning_frequency=5)
      >>> hp.target_sparsity, hp.begin_pruning_step
      (0.9, 0)

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
      for model compression", 2017, https://arxiv.org/abs/1710.01878
    """

    name: str = "model_pruning"
    begin_pruning_step: int = 0
    end_pruning_step: int = -1
    weight_sparsity_map: tuple[str, ...] = ()
    block_dims_map: tuple[str, ...] = ()
    threshold_decay: float = 0.0
    pruning_frequency: int = 10
    nbins: int = 256
    block_height: int = 1
    block_width: int = 1
    block_pooling_function: str = "AVG"
    initial_sparsity: float = 0.0
    target_sparsity: float = 0.5
    sparsity_function_begin_step: int = 0
    sparsity_function_end_step: int = 100
    sparsity_function_exponent: float = 3.0
    use_tpu: bool = False
    threshold_method: str = "exact"
    pruning_scope: str = "layer"
    sparsity_distribution: str = "uniform"
    sparsity_type: str = "unstructured"
    sparsity_axis: int | None = None

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce(field.name, field.type, value))
        _validate(self)

    # The maps, parsed once (on first use; _validate has checked every entry) into typed
    # entries. Cached properties, not fields: init, repr, eq, hash and to_dict ignore them.

    @functools.cached_property
    def _sparsity_entries(self) -> tuple[_MapEntry, ...]:
        return tuple(_MapEntry.parse(e, float) for e in self.weight_sparsity_map)

    @functools.cached_property
    def _block_entries(self) -> tuple[_MapEntry, ...]:
        return tuple(_MapEntry.parse(e, _block_dims) for e in self.block_dims_map)

    # -- construction -----------------------------------------------------

    def replace(self, **kwargs: Any) -> PruningHParams:
        """Returns a copy with the given fields replaced (and validated).

        Args:
          **kwargs: field names and their new values.

        Returns:
          A new, validated :class:`PruningHParams`.

        Raises:
          ValueError: for an unknown field name or an invalid value.

        Examples:
          >>> import jaxprune
          >>> jaxprune.get_pruning_hparams().replace(target_sparsity=0.9).target_sparsity
          0.9
        """
        _check_names(kwargs)
        return dataclasses.replace(self, **kwargs)

    def parse(self, values: str) -> PruningHParams:
        """Returns a copy updated from a TF HParams string.

        The syntax is TF's: comma separated ``name=value`` pairs, with list
        values in brackets, e.g.
        ``"target_sparsity=0.9,weight_sparsity_map=[conv1:0.8,conv2/kernel:0.8]"``.
        Unlike TF, which updates in place, this returns a new object.

        Args:
          values: the HParams string.

        Returns:
          A new, validated :class:`PruningHParams`.

        Raises:
          ValueError: on a syntax error, an unknown name, a name given twice or a
            value of the wrong type or out of range.

        Examples:
          >>> import jaxprune
          >>> hp = jaxprune.get_pruning_hparams().parse(
          ...     "name=test,target_sparsity=0.9,block_dims_map=[dense1:4x4]")
          >>> hp.name, hp.target_sparsity, hp.block_dims_map
          ('test', 0.9, ('dense1:4x4',))
        """
        return self.replace(**hparams_syntax.parse(values, _field_types()))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PruningHParams:
        """Builds hyperparameters from a dict; missing fields take TF's defaults.

        Args:
          values: a mapping of field names to values (as from :meth:`to_dict`).

        Returns:
          A new, validated :class:`PruningHParams`.

        Raises:
          ValueError: for an unknown field name or an invalid value.

        Examples:
          >>> import jaxprune
          >>> jaxprune.PruningHParams.from_dict({"pruning_frequency": 5}).pruning_frequency
          5
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"hparams must be built from a mapping, got {type(values).__name__}")
        values = dict(values)
        _check_names(values)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Returns every field as a plain dict (map fields as lists).

        Returns:
          ``{field name: value}`` for all fields, round-trippable through
          :meth:`from_dict`.

        Examples:
          >>> import jaxprune
          >>> jaxprune.get_pruning_hparams().to_dict()["target_sparsity"]
          0.5
        """
        out = dataclasses.asdict(self)
        for key in _MAP_FIELDS:
            out[key] = list(out[key])
        return out

    def __str__(self) -> str:
        return "\n".join(
            f"{key}={hparams_syntax.format_value(v)}" for key, v in self.to_dict().items()
        )

    # -- resolved maps --------------------------------------------------------

    def sparsity_for(self, name: str) -> float | None:
        """Returns the weight_sparsity_map target for ``name``, or None.

        Args:
          name: a parameter name such as ``"Dense_0/kernel"``.

        Returns:
          The map's sparsity for the single entry whose regex ``re.search``-es
          ``name``, or None when no entry matches.

        Raises:
          ValueError: if more than one entry matches ``name`` (as in TF).

        Examples:
          >>> import jaxprune
          >>> hp = jaxprune.get_pruning_hparams().parse("weight_sparsity_map=[conv1:0.8]")
          >>> hp.sparsity_for("params/conv1/kernel"), hp.sparsity_for("dense/kernel")
          (0.8, None)
        """
        hits = [e for e in self._sparsity_entries if e.pattern.search(name)]
        if len(hits) > 1:
            raise ValueError(
                f"weight_sparsity_map: multiple entries {[h.regex for h in hits]!r} "
                f"match weight {name!r}"
            )
        return hits[0].value if hits else None

    def block_dims_for(self, name: str | None) -> tuple[int, int]:
        """Returns the (height, width) block shape for ``name``.

        Args:
          name: a parameter name, or None for the default block shape.

        Returns:
          The block dims of the first block_dims_map entry whose regex
          ``re.search``-es ``name``, else ``(block_height, block_width)``.
          ``-1`` stands for the whole dimension.

        Examples:
          >>> import jaxprune
          >>> hp = jaxprune.get_pruning_hparams().parse("block_dims_map=[dense1:4x4]")
          >>> hp.block_dims_for("dense1/kernel"), hp.block_dims_for("dense2/kernel")
          ((4, 4), (1, 1))
        """
        entry = self._block_dims_match(name)
        return entry.value if entry is not None else (self.block_height, self.block_width)

    def _block_dims_entry(self, name: str | None) -> str | None:
        """The first block_dims_map entry whose regex ``re.search``-es ``name``, or None."""
        entry = self._block_dims_match(name)
        return None if entry is None else entry.entry

    def _block_dims_match(self, name: str | None) -> _MapEntry | None:
        if name is not None:
            for entry in self._block_entries:
                if entry.pattern.search(name):
                    return entry
        return None


@dataclasses.dataclass(frozen=True)
class _MapEntry:
    """One parsed ``REGEX:VALUE`` map entry: its text, compiled regex and typed value."""

    entry: str
    regex: str
    pattern: re.Pattern
    value: Any

    @classmethod
    def parse(cls, entry: str, convert: Callable[[str], Any]) -> _MapEntry:
        regex, value = entry.rsplit(":", 1)
        return cls(entry, regex, re.compile(regex), convert(value.strip()))


def _block_dims(value: str) -> tuple[int, int]:
    h, w = value.lower().split("x")
    return int(h), int(w)


def get_pruning_hparams() -> PruningHParams:
    """Returns the default pruning hyperparameters (TF r1.15 defaults).

    The defaults prune to 50 % sparsity along a cubic ramp over steps 0..100,
    updating masks every 10 steps with the exact (k-th largest) threshold.

    Returns:
      A :class:`PruningHParams` with TF's defaults plus
      ``threshold_method="exact"``.

    Examples:
      >>> import jaxprune
      >>> hp = jaxprune.get_pruning_hparams()
      >>> hp.target_sparsity, hp.pruning_frequency, hp.threshold_method
      (0.5, 10, 'exact')

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878
    """
    return PruningHParams()


def as_hparams(hparams: Any) -> PruningHParams:
    """Accepts PruningHParams, None (TF defaults), a dict or a TF HParams string."""
    if hparams is None:
        return get_pruning_hparams()
    if isinstance(hparams, PruningHParams):
        return hparams
    if isinstance(hparams, str):
        return get_pruning_hparams().parse(hparams)
    if isinstance(hparams, Mapping):
        return PruningHParams.from_dict(hparams)
    raise ValueError(
        "hparams must be a PruningHParams (jaxprune.get_pruning_hparams()), a dict, a TF "
        f"HParams string or None; got {type(hparams).__name__}: {hparams!r}"
    )


def print_hparams(hparams: PruningHParams) -> None:
    """Prints every field of ``hparams``, one ``name=value`` per line (TF's ``print_hparams``).

    Like ``print`` (and TF's method, which logs), it returns None, so that a notebook shows the
    text once; ``str(hparams)`` is the same text as a string.

    Args:
      hparams: the hyperparameters to show.

    Returns:
      None.

    Examples:
      >>> import jaxprune
      >>> jaxprune.print_hparams(jaxprune.get_pruning_hparams())  # doctest: +ELLIPSIS
      name=model_pruning
      begin_pruning_step=0
      ...
      threshold_method=exact
      ...
      sparsity_axis=None
    """
    print(str(hparams))


# -- helpers ------------------------------------------------------------------


def _field_types() -> dict[str, str]:
    """Every field's name and type (its annotation string, as ``hparams_syntax`` reads them)."""
    return {f.name: str(f.type) for f in dataclasses.fields(PruningHParams)}


def _check_names(values: Mapping[str, Any]) -> None:
    known = _field_types()
    for key in values:
        if key not in known:
            raise ValueError(hparams_syntax.unknown_name(key, known))


# The TF string form of one value; pruning.py's repr uses it under this name.
_format_value = hparams_syntax.format_value


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Type-checks one field value, converting lossless forms (list -> tuple, int -> float)."""
    if annotation == "str":
        if not isinstance(value, str):
            raise ValueError(f"hparam {name} must be a string, got {value!r}")
        return value
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"hparam {name} must be a bool, got {value!r}")
        return value
    if annotation == "int | None" and value is None:
        return None
    if annotation in ("int", "int | None"):
        if isinstance(value, bool) or not _is_integral(value):
            raise ValueError(f"hparam {name} must be an integer, got {value!r}")
        return int(value)
    if annotation == "float":
        if isinstance(value, bool) or not _is_real(value):
            raise ValueError(f"hparam {name} must be a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ValueError(
                f"hparam {name} must be a number in float range, got {value!r}"
            ) from None
    # tuple[str, ...]: the two maps.
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"hparam {name} must be a list of strings, got {value!r}")
    value = tuple(value)
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"hparam {name} must be a list of strings, got item {item!r}")
    return tuple(item.strip() for item in value if item.strip())


def _is_integral(value: Any) -> bool:
    try:
        import numpy as np

        if isinstance(value, np.integer):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, int)


def _is_real(value: Any) -> bool:
    try:
        import numpy as np

        if isinstance(value, (np.integer, np.floating)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, (int, float))


def _split_entries(entries: Iterable[str]) -> list[tuple[str, str]]:
    """Splits "REGEX:VALUE" entries at their last colon."""
    return [tuple(e.rsplit(":", 1)) for e in entries]  # type: ignore[misc]


def fraction_hint(value: Any) -> str:
    """What to say about a sparsity outside ``[0, 1)`` that was meant as a percentage.

    Args:
      value: the rejected sparsity.

    Returns:
      ``": a fraction, e.g. 0.9 for 90 %"`` (with ``value / 100`` for a value in
      ``[2, 100)``, the likely percentage), or ``""`` for a value that can't be one
      (below 1, negative, NaN, a string).

    Examples:
      >>> from jaxprune._src.hparams import fraction_hint
      >>> fraction_hint(80), fraction_hint(1.0), fraction_hint(-0.5)
      (': a fraction, e.g. 0.8 for 80 %', ': a fraction, e.g. 0.9 for 90 %', '')
    """
    if isinstance(value, bool) or not _is_real(value) or not math.isfinite(value) or value < 1:
        return ""
    if 2 <= value < 100:
        return f": a fraction, e.g. {float(value) / 100:g} for {float(value):g} %"
    return ": a fraction, e.g. 0.9 for 90 %"


def _check_unit_interval(name: str, value: float, *, percent: bool) -> None:
    if not (0.0 <= value < 1.0):
        hint = fraction_hint(value) if percent else ""
        raise ValueError(f"hparam {name} must be in [0, 1), got {value!r}{hint}")


# Steps are int32 in the pruning state (like optax's counts), so step fields must fit in it.
_INT32_MAX = 2**31 - 1
# nbins bins are counted in int32 and scaled in float32 (exact up to 2**24).
_NBINS_MAX = 2**24
_STEP_FIELDS = (
    "begin_pruning_step",
    "end_pruning_step",
    "pruning_frequency",
    "sparsity_function_begin_step",
    "sparsity_function_end_step",
)


def _check_int_bounds(hp: PruningHParams) -> None:
    """Every integer field within what the int32 step and count arithmetic holds."""
    for key in (*_STEP_FIELDS, "block_height", "block_width"):
        value = getattr(hp, key)
        if value > _INT32_MAX:
            raise ValueError(
                f"hparam {key} must be <= {_INT32_MAX} (2**31 - 1: steps are int32), got {value}"
            )
    if hp.nbins > _NBINS_MAX:
        raise ValueError(f"hparam nbins must be <= {_NBINS_MAX} (2**24), got {hp.nbins}")


def _validate(hp: PruningHParams) -> None:
    _check_int_bounds(hp)
    if hp.begin_pruning_step < 0:
        raise ValueError(f"hparam begin_pruning_step must be >= 0, got {hp.begin_pruning_step}")
    if hp.end_pruning_step != -1 and hp.end_pruning_step <= hp.begin_pruning_step:
        raise ValueError(
            f"hparam end_pruning_step must be -1 or > begin_pruning_step "
            f"({hp.begin_pruning_step}), got {hp.end_pruning_step}"
        )
    if hp.sparsity_function_begin_step < 0:
        raise ValueError(
            "hparam sparsity_function_begin_step must be >= 0, "
            f"got {hp.sparsity_function_begin_step}"
        )
    if hp.sparsity_function_end_step <= hp.sparsity_function_begin_step:
        raise ValueError(
            "hparam sparsity_function_end_step must be > sparsity_function_begin_step "
            f"({hp.sparsity_function_begin_step}), got {hp.sparsity_function_end_step}"
        )
    _check_unit_interval("threshold_decay", hp.threshold_decay, percent=False)
    for key in ("initial_sparsity", "target_sparsity"):
        _check_unit_interval(key, getattr(hp, key), percent=True)
    if not (math.isfinite(hp.sparsity_function_exponent) and hp.sparsity_function_exponent >= 0):
        raise ValueError(
            "hparam sparsity_function_exponent must be a finite number >= 0, "
            f"got {hp.sparsity_function_exponent!r}"
        )
    if hp.pruning_frequency < 1:
        raise ValueError(f"hparam pruning_frequency must be >= 1, got {hp.pruning_frequency}")
    if hp.nbins < 1:
        raise ValueError(f"hparam nbins must be >= 1, got {hp.nbins}")
    for key in ("block_height", "block_width"):
        _check_block_dim(key, getattr(hp, key))
    if hp.block_pooling_function not in _POOLING_FUNCTIONS:
        raise ValueError(
            f"hparam block_pooling_function must be one of {_POOLING_FUNCTIONS}, "
            f"got {hp.block_pooling_function!r}"
        )
    if hp.threshold_method not in _THRESHOLD_METHODS:
        raise ValueError(
            f"hparam threshold_method must be one of {_THRESHOLD_METHODS}, "
            f"got {hp.threshold_method!r}"
        )
    for entry in hp.weight_sparsity_map:
        _, value = _check_entry("weight_sparsity_map", entry)
        try:
            sparsity = float(value)
        except (ValueError, OverflowError):
            raise ValueError(
                f"hparam weight_sparsity_map entry {entry!r}: sparsity {value!r} is not a number"
            ) from None
        if not (0.0 <= sparsity < 1.0):
            raise ValueError(
                f"hparam weight_sparsity_map entry {entry!r}: sparsity must be in [0, 1), "
                f"got {sparsity!r}{fraction_hint(sparsity)}"
            )
    for entry in hp.block_dims_map:
        _, value = _check_entry("block_dims_map", entry)
        dims = value.lower().split("x")
        if len(dims) != 2:
            raise ValueError(
                f"hparam block_dims_map entry {entry!r}: expected block dims 'HxW', got {value!r}"
            )
        for dim_name, dim in zip(("height", "width"), dims, strict=True):
            try:
                d = int(dim)
            except ValueError:
                raise ValueError(
                    f"hparam block_dims_map entry {entry!r}: block {dim_name} {dim!r} "
                    "is not an integer"
                ) from None
            _check_block_dim(f"block_dims_map entry {entry!r} block {dim_name}", d)
    _validate_engine(hp)


def _validate_engine(hp: PruningHParams) -> None:
    """The scope, distribution and type fields, and the combinations that make no sense."""
    # Imported here: structure.py holds the typed values these strings parse into.
    from jaxprune._src.structure import Channel, NByM, parse_sparsity_type

    for key, allowed in (
        ("pruning_scope", _PRUNING_SCOPES),
        ("sparsity_distribution", _SPARSITY_DISTRIBUTIONS),
    ):
        if getattr(hp, key) not in allowed:
            raise ValueError(f"hparam {key} must be one of {allowed}, got {getattr(hp, key)!r}")
    kind = parse_sparsity_type(hp.sparsity_type, hp.sparsity_axis)
    blocks = [("block_height x block_width", f"{hp.block_height}x{hp.block_width}")] + [
        (f"block_dims_map entry {entry!r}", value)
        for entry, (_, value) in zip(
            hp.block_dims_map, _split_entries(hp.block_dims_map), strict=True
        )
    ]
    non_unit_blocks = [(where, v) for where, v in blocks if v.strip().lower() != "1x1"]

    def conflict(what: str) -> ValueError:
        return ValueError(
            f"hparams sparsity_type={hp.sparsity_type!r}, pruning_scope={hp.pruning_scope!r}, "
            f"sparsity_distribution={hp.sparsity_distribution!r}, "
            f"threshold_method={hp.threshold_method!r}: {what}"
        )

    structured = isinstance(kind, (NByM, Channel))
    if structured or hp.pruning_scope != "layer":
        if hp.threshold_method != "exact":
            raise conflict("only threshold_method='exact' supports these options")
        if non_unit_blocks:
            where, value = non_unit_blocks[0]
            raise conflict(f"TF's block pruning ({where} = {value}) needs unstructured layer scope")
    if hp.pruning_scope == "global":
        if structured:
            raise conflict("a global threshold needs sparsity_type='unstructured'")
        if hp.sparsity_distribution != "uniform":
            raise conflict("a global threshold allocates the sparsity itself; use 'uniform'")
    if hp.pruning_scope == "output" and isinstance(kind, Channel):
        raise conflict("channel pruning removes whole output units; use pruning_scope='layer'")
    if isinstance(kind, NByM):
        if hp.sparsity_distribution != "uniform":
            raise conflict("N:M fixes every weight's sparsity at (M-N)/M; use 'uniform'")
        if hp.weight_sparsity_map:
            raise conflict(
                f"N:M fixes every weight's sparsity at (M-N)/M; weight_sparsity_map "
                f"{list(hp.weight_sparsity_map)} can't apply"
            )
        if not math.isclose(hp.target_sparsity, kind.sparsity, rel_tol=0.0, abs_tol=1e-6):
            raise ValueError(
                f"hparam target_sparsity={hp.target_sparsity!r} does not match "
                f"sparsity_type={hp.sparsity_type!r}: N:M ends at (M-N)/M = {kind.sparsity!r}"
            )
    if hp.sparsity_axis is not None and not -64 <= hp.sparsity_axis < 64:
        raise ValueError(
            f"hparam sparsity_axis must be a small int or None, got {hp.sparsity_axis}"
        )


def _check_block_dim(name: str, value: int) -> None:
    if value < 1 and value != -1:
        raise ValueError(f"hparam {name} must be >= 1 or -1, got {value}")
    if value > _INT32_MAX:
        raise ValueError(f"hparam {name} must be <= {_INT32_MAX} (2**31 - 1), got {value}")


def _check_entry(field: str, entry: str) -> tuple[str, str]:
    if ":" not in entry:
        raise ValueError(f"hparam {field} entry {entry!r} is not of the form 'REGEX:VALUE'")
    regex, value = entry.rsplit(":", 1)
    if not regex:
        raise ValueError(f"hparam {field} entry {entry!r} has an empty regex")
    try:
        re.compile(regex)
    except (re.error, RecursionError, OverflowError, ValueError, MemoryError) as e:
        # Python's re rejects some patterns with other errors than re.error (deep nesting:
        # RecursionError; huge repeat counts: OverflowError).
        reason = str(e) or type(e).__name__
        raise ValueError(
            f"hparam {field} entry {entry!r}: regex {regex!r} does not compile: "
            f"{type(e).__name__}: {reason}"
        ) from None
    return regex, value.strip()
