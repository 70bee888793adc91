"""Kubernetes resource quantities ("500m", "48Gi", "1e3", 4) as exact fractions.

The grammar of apimachinery's resource.ParseQuantity (k8s.io/apimachinery/pkg/api/resource/quantity.go):
a signed decimal number, then a binary suffix (Ki..Ei), a decimal suffix (n, u, m, "", k, M..E) or a
decimal exponent (e3, E-2). Only comparisons are needed here (request <= limit, whole GPUs), so a
Fraction keeps them exact. Pure Python: ``vesuvius-inference render`` needs no kubernetes client.
"""

from __future__ import annotations

import re
from fractions import Fraction

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: dict[str, Fraction | int] = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "k": 10**3, "M": 10**6,
    "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def parse_quantity(value: object) -> Fraction:
    """The quantity's value; ValueError for anything ParseQuantity would refuse."""
    if isinstance(value, bool):
        raise ValueError(f"quantity {value!r} is not a number")
    if isinstance(value, int):
        return Fraction(value)
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(f"quantity {value!r} does not match the Kubernetes quantity format (e.g. 500m, 48Gi, 4)")
    number, suffix = Fraction(m.group(1)), m.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if suffix:
        return number * Fraction(10) ** int(suffix[1:])
    return number
