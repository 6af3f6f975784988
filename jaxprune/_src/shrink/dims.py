"""Union-find over the channel dimensions of a traced model (shrink's pass-1 bookkeeping)."""

from __future__ import annotations

import math
from typing import Any

Dim = Any  # None (a size-1 axis), an int (an atom), or a tuple of atoms (a merged axis)


# ----------------------------------------------------------------------------- dimensions


class Dims:
    """Union-find over atoms (axes that keep one channel indexing), with merged axes."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.expansion: dict[int, tuple[int, ...]] = {}  # root -> factor atoms (row-major)
        self.blocked: dict[int, str] = {}  # root -> why the group is left whole
        self.memo: dict[Any, Dim] = {}
        self.outputs: set[int] = set()  # atoms of axes of fn's outputs

    def new(self, size: int, key: Any = None, blocked: str | None = None) -> Dim:
        if size == 1:
            return None
        if key is not None and key in self.memo:
            return self.memo[key]
        a = len(self.parent)
        self.parent.append(a)
        self.size.append(int(size))
        if blocked:
            self.blocked[a] = blocked
        if key is not None:
            self.memo[key] = a
        return a

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def atoms(self, d: Dim) -> list[int]:
        """The atomic factors of a dimension (roots), outermost first."""
        if d is None:
            return []
        if isinstance(d, tuple):
            return [a for x in d for a in self.atoms(x)]
        r = self.find(d)
        e = self.expansion.get(r)
        return [r] if e is None else self.atoms(e)

    def block(self, d: Dim, reason: str) -> None:
        if d is None:
            return
        roots = [self.find(x) for x in (d if isinstance(d, tuple) else (d,))]
        for r in roots + self.atoms(d):
            self.blocked.setdefault(r, reason)

    def unify(self, d1: Dim, d2: Dim) -> None:
        if d1 is None or d2 is None:
            return
        f1, f2 = self.atoms(d1), self.atoms(d2)
        if len(f1) == 1 and len(f2) == 1:
            self._union(f1[0], f2[0])
            return
        s1, s2 = [self.size[a] for a in f1], [self.size[a] for a in f2]
        if s1 == s2:
            for a, b in zip(f1, f2, strict=True):
                self._union(a, b)
            return
        for f, other in ((f1, f2), (f2, f1)):
            if len(f) == 1 and self.size[f[0]] == math.prod(self.size[a] for a in other):
                self.expansion[f[0]] = tuple(other)  # an axis seen merged elsewhere
                return
        for a in f1 + f2:
            self.blocked.setdefault(a, "a reshape regroups the axis differently")

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # pragma: no cover - a coupling rule is wrong
            self.blocked.setdefault(ra, "axes of different sizes met")
            self.blocked.setdefault(rb, "axes of different sizes met")
            return
        self.parent[rb] = ra
        if rb in self.blocked:
            self.blocked.setdefault(ra, self.blocked.pop(rb))
        ea, eb = self.expansion.pop(ra, None), self.expansion.pop(rb, None)
        if ea is not None:
            self.expansion[ra] = ea
            if eb is not None:
                self.unify(ea, eb)
        elif eb is not None:
            self.expansion[ra] = eb

    def mark_output(self, d: Dim) -> None:
        """Records that ``d`` is an axis of one of ``fn``'s outputs (and blocks it)."""
        if d is None:
            return
        self.block(d, "an output of fn")
        roots = [self.find(x) for x in (d if isinstance(d, tuple) else (d,))]
        self.outputs.update(roots + self.atoms(d))

    def reaches_output(self, atom: int) -> bool:
        """Whether the group of ``atom`` is (a factor of) an axis of one of ``fn``'s outputs."""
        r = self.find(atom)
        return any(self.find(o) == r for o in self.outputs)

    def finalize(self) -> None:
        """Propagates blocks (and output axes) from merged axes to their factors."""
        changed = True
        while changed:
            changed = False
            outs = {self.find(o) for o in self.outputs}
            for r, e in list(self.expansion.items()):
                if self.find(r) in outs:
                    for a in self.atoms(e):
                        if self.find(a) not in outs:
                            self.outputs.add(a)
                            outs.add(self.find(a))
                            changed = True
        changed = True
        while changed:
            changed = False
            for r, e in list(self.expansion.items()):
                r = self.find(r)
                if r in self.blocked:
                    for a in self.atoms(e):
                        if a not in self.blocked:
                            self.blocked[a] = self.blocked[r]
                            changed = True


def block_repeated(dims: Dims, dim_list, reason: str) -> None:
    """Blocks every group that occurs more than once among the dimensions of one array."""
    seen: dict[int, int] = {}
    for dd in dim_list:
        for a in dims.atoms(dd):
            seen[a] = seen.get(a, 0) + 1
    for a, c in seen.items():
        if c > 1:
            dims.block(a, reason)


def align(sizes: list[int], targets: list[int]) -> list[tuple[int, int]] | None:
    """Splits ``sizes`` into consecutive runs whose products are ``targets``, or None."""
    runs, i = [], 0
    for t in targets:
        start, prod = i, 1
        while prod < t and i < len(sizes):
            prod *= sizes[i]
            i += 1
        if prod != t or i == start:
            return None
        runs.append((start, i))
    return runs if i == len(sizes) else None
