"""TF's HParams string syntax: ``"name=value,name=[a,b]"`` to typed values and back.

The syntax is ``tf.contrib.training.HParams.parse``'s: comma-separated ``name=value`` pairs,
list values in brackets (``weight_sparsity_map=[conv1:0.8,dense{1,2}:0.7]``; commas inside
``()``, ``[]`` or ``{}`` of an entry belong to it). This module knows the syntax only: the value
object (:class:`jaxprune.PruningHParams`, in ``hparams.py``) passes its field names and types
and validates what comes back. Field types are the annotation strings of its fields:
``"str"``, ``"bool"``, ``"int"``, ``"int | None"``, ``"float"`` and ``LIST``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

#: The field type of a list value (``[a,b]``): the maps.
LIST = "tuple[str, ...]"

_NAME_RE = re.compile(r"\s*([A-Za-z_][\w.]*)\s*=\s*")


def parse(text: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """Parses a TF HParams string into ``{name: typed value}``.

    Args:
      text: the string, e.g. ``"target_sparsity=0.9,block_dims_map=[dense1:4x4]"``.
      fields: every known name and its field type (see the module docstring).

    Returns:
      The names given in ``text`` and their values: ``str``, ``bool`` (``true``/``false``/
      ``1``/``0``), ``int``, ``None`` (``none`` for an ``"int | None"`` field), ``float`` or a
      tuple of stripped, non-empty strings for a list.

    Raises:
      ValueError: on a syntax error, an unknown name (with the closest known names), a name
        given twice, a list for a single value or a single value for a list, or a value that
        is not of the field's type.

    Examples:
      >>> from jaxprune._src import hparams_syntax
      >>> hparams_syntax.parse("a=1,b=[x:1, y{1,2}:2]", {"a": "int", "b": hparams_syntax.LIST})
      {'a': 1, 'b': ('x:1', 'y{1,2}:2')}
    """
    if not isinstance(text, str):
        raise ValueError(f"hparams string must be a str, got {text!r}")
    out: dict[str, Any] = {}
    pos, n = 0, len(text)
    while pos < n:
        if not text[pos:].strip():
            break
        m = _NAME_RE.match(text, pos)
        if not m:
            raise ValueError(f"Could not parse hparams at {text[pos:]!r} (expected name=value)")
        key = m.group(1)
        pos = m.end()
        if key not in fields:
            raise ValueError(f"{unknown_name(key, fields)} in {text!r}")
        if key in out:
            raise ValueError(f"hparam {key} is assigned more than once in {text!r}")
        if pos < n and text[pos] == "[":
            end = _matching_bracket(text, pos)
            raw_list = _split_top_level(text[pos + 1 : end])
            pos = end + 1
            if fields[key] != LIST:
                raise ValueError(f"hparam {key} takes a single value, got a list {raw_list!r}")
            out[key] = tuple(item.strip() for item in raw_list if item.strip())
        else:
            end = text.find(",", pos)
            end = n if end == -1 else end
            raw = text[pos:end].strip()
            pos = end
            if fields[key] == LIST:
                raise ValueError(f"hparam {key} takes a list like [a:1,b:2], got {raw!r}")
            out[key] = _parse_scalar(key, fields[key], raw)
        rest = text[pos:].lstrip()
        if rest and not rest.startswith(","):
            raise ValueError(f"Could not parse hparams at {rest!r} (expected ',')")
        pos = n - len(rest) + (1 if rest else 0)
    return out


def format_value(value: Any) -> str:
    """One value in the syntax :func:`parse` reads back (lists in brackets).

    Args:
      value: a field value (lists and tuples of strings are the maps).

    Returns:
      Its text, e.g. ``"[conv1:0.8,dense:0.5]"`` for a list, ``str(value)`` otherwise.

    Examples:
      >>> from jaxprune._src.hparams_syntax import format_value
      >>> format_value(["conv1:0.8", "dense:0.5"]), format_value(0.9)
      ('[conv1:0.8,dense:0.5]', '0.9')
    """
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value) + "]"
    return str(value)


def unknown_name(key: str, known: Iterable[str]) -> str:
    """The message for an unknown hparam name: the closest known names, then all of them.

    Close names are the same words in another order or case (``sparsity_target``,
    ``Target-Sparsity``); failing those, names within a few typos (``difflib``) and names that
    hold ``key`` as one of their ``_``-separated words (``scope``); at most three.

    Args:
      key: the unknown name.
      known: the known names.

    Returns:
      E.g. ``"Unknown hparam 'sparsity_target'; did you mean 'target_sparsity'? Known
      hparams: [...]"``.

    Examples:
      >>> from jaxprune._src.hparams_syntax import unknown_name
      >>> print(unknown_name("sparsity_target", ["sparsity_type", "target_sparsity"]))
      Unknown hparam 'sparsity_target'; did you mean 'target_sparsity'? Known hparams: [...]
    """
    known = sorted(known)
    close = " or ".join(repr(c) for c in _close_names(str(key), known))
    hint = f"did you mean {close}? Known" if close else "known"
    return f"Unknown hparam {key!r}; {hint} hparams: {known}"


def _close_names(key: str, known: list[str]) -> list[str]:
    def words(name: str) -> list[str]:
        return [w for w in re.split(r"[_\-\s.]+", name.lower()) if w]

    mine = words(key)
    normal = "_".join(mine)
    same_words = [k for k in known if sorted(words(k)) == sorted(mine)]
    if same_words:
        return same_words[:3]
    typos = difflib.get_close_matches(normal, known, n=3, cutoff=0.75)
    holding = [k for k in known if len(mine) == 1 and mine[0] in words(k)]
    out: list[str] = []
    for name in (*typos, *holding):
        if name not in out:
            out.append(name)
    return out[:3]


def _matching_bracket(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"Unbalanced '[' in hparams string {text!r}")


def _split_top_level(text: str) -> list[str]:
    """Splits at commas not inside (), [] or {} (a regex may hold commas, e.g. ``a{1,2}``)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _parse_scalar(key: str, annotation: str, raw: str) -> Any:
    if annotation == "str":
        return raw
    if annotation == "bool":
        lowered = raw.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"hparam {key} must be a bool (true/false), got {raw!r}")
    if annotation == "int | None" and raw.lower() == "none":
        return None
    if annotation in ("int", "int | None"):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"hparam {key} must be an integer, got {raw!r}") from None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"hparam {key} must be a number, got {raw!r}") from None
