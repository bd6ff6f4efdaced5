"""Quantity: number prefixes on the value, plus unit matching.

- ``5.4``                      value only, any unit
- ``5.4|system|code``          (system = s and code = c) -- or, when the query unit canonicalises
                               with UCUM, canon_code = C and canon_value compared in canonical
                               units (so ``5000|http://unitsofmeasure.org|mg`` finds ``5 g``)
- ``5.4||code``                code = c or unit = c (spec: no system means code *or* unit)
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from app.search.compile.number import value_condition
from app.search.expr import QuantityValue

UCUM = "http://unitsofmeasure.org"


def canonical_unit(code: str) -> tuple[float, str] | None:
    """``(factor, canonical code)`` from the indexer's UCUM table, or None for unknown units.

    Why the indirection: the indexer owns UCUM (app/indexing/ucum.py) so query and stored values
    are converted by the same table; if it rejects the unit we fall back to system/code matching.
    """
    try:
        from app.indexing.ucum import canonical_unit as _cu  # noqa: PLC0415
    except ImportError:
        return None
    try:
        return _cu(code)
    except Exception:  # noqa: BLE001 - an unparseable unit simply has no canonical form
        return None


def condition(t: Any, v: QuantityValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_quantity row."""
    plain = value_condition(t.c.value, v.number)
    if v.code is None and v.system is None:
        return plain
    if v.system is None:
        return and_(or_(t.c.code == v.code, t.c.unit == v.code), plain)
    if v.code is None:
        return and_(t.c.system == v.system, plain)
    exact = and_(t.c.system == v.system, t.c.code == v.code, plain)
    if v.system != UCUM:
        return exact
    canon = canonical_unit(v.code)
    if canon is None:
        return exact
    factor, ccode = canon

    def scale(d: Decimal) -> float:
        return float(d) * factor

    return or_(exact, and_(t.c.canon_code == ccode, value_condition(t.c.canon_value, v.number, scale)))
