"""A small table-driven UCUM canonicaliser, so ``5 mmol/L`` and ``0.005 mol/L`` index alike.

Labs report the same analyte in different but convertible units (mg/dL vs g/L, kPa vs mm[Hg]); a
search by value must compare them. Each unit expression is parsed into a factor and a vector of
base dimensions (g, mol, m, s, K, A, cd, and the arbitrary units [iU] and U-as-enzyme-activity
reduced to mol/s); the canonical code renders that vector with volume shown as ``L`` when the
length exponent is ±3, so ``mg/dL`` -> ``g/L`` (factor 0.01) and ``10*9/L`` -> ``/L`` (factor 1e9).
Units outside the table, and non-ratio scales such as Cel and [degF], are "unknown": the caller
then keeps value and code as given. Annotations (``{score}``) count as 1, as UCUM says.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["UCUM_SYSTEM", "canonical", "canonical_unit"]

UCUM_SYSTEM = "http://unitsofmeasure.org"

_BASES = ("g", "mol", "m", "s", "K", "A", "cd", "[iU]")

# atom -> (factor, {base: exponent}, takes prefixes)
_ATOMS: dict[str, tuple[float, dict[str, int], bool]] = {
    "g": (1.0, {"g": 1}, True),
    "mol": (1.0, {"mol": 1}, True),
    "eq": (1.0, {"mol": 1}, True),  # UCUM: equivalents = 1 mol
    "m": (1.0, {"m": 1}, True),
    "L": (1e-3, {"m": 3}, True),
    "l": (1e-3, {"m": 3}, True),
    "s": (1.0, {"s": 1}, True),
    "min": (60.0, {"s": 1}, False),
    "h": (3600.0, {"s": 1}, False),
    "d": (86400.0, {"s": 1}, False),
    "wk": (604800.0, {"s": 1}, False),
    "mo": (2629800.0, {"s": 1}, False),  # mean Julian month
    "a": (31557600.0, {"s": 1}, False),  # Julian year
    "K": (1.0, {"K": 1}, True),
    "A": (1.0, {"A": 1}, True),
    "cd": (1.0, {"cd": 1}, True),
    "Pa": (1000.0, {"g": 1, "m": -1, "s": -2}, True),
    "bar": (1e8, {"g": 1, "m": -1, "s": -2}, True),
    "m[Hg]": (133322387.415, {"g": 1, "m": -1, "s": -2}, True),
    "m[H2O]": (9806650.0, {"g": 1, "m": -1, "s": -2}, True),
    "N": (1000.0, {"g": 1, "m": 1, "s": -2}, True),
    "J": (1000.0, {"g": 1, "m": 2, "s": -2}, True),
    "cal": (4184.0, {"g": 1, "m": 2, "s": -2}, True),
    "W": (1000.0, {"g": 1, "m": 2, "s": -3}, True),
    "Hz": (1.0, {"s": -1}, True),
    "U": (1e-6 / 60.0, {"mol": 1, "s": -1}, True),  # enzyme unit: umol/min
    "kat": (1.0, {"mol": 1, "s": -1}, True),
    "[iU]": (1.0, {"[iU]": 1}, True),
    "[IU]": (1.0, {"[iU]": 1}, True),
    "%": (0.01, {}, False),
    "[ppm]": (1e-6, {}, False),
    "[ppb]": (1e-9, {}, False),
    "1": (1.0, {}, False),
    "[lb_av]": (453.59237, {"g": 1}, False),
    "[oz_av]": (28.349523125, {"g": 1}, False),
    "[in_i]": (0.0254, {"m": 1}, False),
    "[ft_i]": (0.3048, {"m": 1}, False),
}

_PREFIXES = {
    "Y": 1e24, "Z": 1e21, "E": 1e18, "P": 1e15, "T": 1e12, "G": 1e9, "M": 1e6, "k": 1e3,
    "h": 1e2, "da": 1e1, "d": 1e-1, "c": 1e-2, "m": 1e-3, "u": 1e-6, "n": 1e-9, "p": 1e-12,
    "f": 1e-15, "a": 1e-18, "z": 1e-21, "y": 1e-24,
}

_TERM = re.compile(r"([^.\/]+)|([.\/])")
_ANNOTATION = re.compile(r"\{[^}]*\}")
_POWER = re.compile(r"^10[*^]([+-]?\d+)$")
_EXPONENT = re.compile(r"^(.*?)([+-]?\d+)$")


def _atom(text: str) -> tuple[float, dict[str, int]] | None:
    if text in _ATOMS:
        f, dims, _ = _ATOMS[text]
        return f, dims
    for plen in (2, 1):
        prefix, rest = text[:plen], text[plen:]
        if prefix in _PREFIXES and rest in _ATOMS and _ATOMS[rest][2]:
            f, dims, _ = _ATOMS[rest]
            return f * _PREFIXES[prefix], dims
    return None


def _component(text: str) -> tuple[float, dict[str, int]] | None:
    stripped = _ANNOTATION.sub("", text)
    if stripped == "":
        return 1.0, {}  # a pure annotation such as {score} is the unity
    m = _POWER.match(stripped)
    if m:
        return 10.0 ** int(m.group(1)), {}
    if stripped.isdigit():
        return float(stripped), {}
    found = _atom(stripped)
    if found is not None:
        return found
    m = _EXPONENT.match(stripped)
    if m and m.group(1):
        base = _atom(m.group(1))
        if base is not None:
            exp = int(m.group(2))
            return base[0] ** exp, {k: v * exp for k, v in base[1].items()}
    return None


def _render(dims: dict[str, int]) -> str:
    dims = {k: v for k, v in dims.items() if v}
    num: list[str] = []
    den: list[str] = []
    for base in _BASES:
        exp = dims.get(base, 0)
        if not exp:
            continue
        name = base
        if base == "m" and abs(exp) == 3:
            name, exp = "L", exp // 3
        part = name if abs(exp) == 1 else f"{name}{abs(exp)}"
        (num if exp > 0 else den).append(part)
    if not num and not den:
        return "1"
    return ".".join(num) + "".join("/" + d for d in den)


@lru_cache(maxsize=2048)
def canonical_unit(code: str) -> tuple[float, str] | None:
    """``(factor, canonical code)`` with value_canon = value * factor, or ``None`` if unknown."""
    if not code or len(code) > 64 or " " in code:
        return None
    # Annotations may hold '.' or '/' ({1.73_m2}); they are unity, so blank them first.
    code = _ANNOTATION.sub("{}", code)
    factor = 1.0
    dims: dict[str, int] = {}
    sign = 1
    pos = 0
    expect_term = True
    for m in _TERM.finditer(code):
        if m.start() != pos:
            return None
        pos = m.end()
        if m.group(2):
            if not expect_term and m.group(2) in "./":
                sign = -1 if m.group(2) == "/" else 1
                expect_term = True
                continue
            if expect_term and m.group(2) == "/" and pos == 1:  # leading "/min"
                sign = -1
                continue
            return None
        comp = _component(m.group(1))
        if comp is None:
            return None
        f, d = comp
        factor *= f if sign > 0 else 1.0 / f
        for k, v in d.items():
            dims[k] = dims.get(k, 0) + sign * v
        expect_term = False
    if expect_term or pos != len(code):
        return None
    # Express volume in litres: m3 -> 1000 L, so the factor moves with the rendering.
    m_exp = dims.get("m", 0)
    if abs(m_exp) == 3:
        factor *= 1000.0 ** (m_exp // 3)
    return factor, _render(dims)


def canonical(value: float, code: str | None) -> tuple[float, str | None]:
    """Value and code in canonical units; unknown units come back unchanged."""
    if code is None:
        return value, None
    found = canonical_unit(code)
    if found is None:
        return value, code
    factor, canon = found
    return float(f"{value * factor:.15g}"), canon
