"""Stage 4: one compiler per parameter type.

Each module exposes ``condition(table, value, modifier) -> ColumnElement[bool]``: the predicate
one typed value puts on *one row* of that type's index table (or any table with the same column
names: the composite compiler reuses them on aliases).  Turning row predicates into a set of
resource ids (IN-subqueries, EXISTS, joins for chains) is plan.py's job, so that each type's
semantics can be read and tested on its own.
"""

from __future__ import annotations

from app.search.compile import date, number, quantity, reference, string, token, uri

CONDITIONS = {
    "token": token.condition,
    "string": string.condition,
    "date": date.condition,
    "number": number.condition,
    "quantity": quantity.condition,
    "reference": reference.condition,
    "uri": uri.condition,
}

__all__ = ["CONDITIONS"]
