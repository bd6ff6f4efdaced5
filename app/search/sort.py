"""``_sort``: parse the keys and build one sort-key SQL expression per key and resource type.

Semantics (http://hl7.org/fhir/R4/search.html#sort): a parameter sorts by its index values; a
resource with several values sorts by its smallest value ascending and its largest descending
(dates: ``min(low)`` ascending, ``max(high)`` descending); resources without a value sort last
in both directions; ties are broken by ``rid`` (insertion order), which also makes the order
total, as keyset paging needs.  ``_id`` and ``_lastUpdated`` sort by columns of the resource row.

Plan shape: each key is a correlated scalar subquery ``(SELECT min(v) FROM sp_x WHERE
sp_x.rid = resource.rid AND res_type = :t AND param = :p)`` evaluated once per *matching* row and
probed through ``ix_sp_x_rid``; PostgreSQL then does a top-N heap sort of the matches.  See
docs/decisions and the report in the search issue for the EXPLAIN ANALYZE numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select

from app.fhir.errors import FhirError
from app.search.parse import _BUILTINS
from app.search.plan import const
from app.storage.tables import INDEX_TABLES

# Index column a parameter type sorts by: (ascending column, descending column).
_SORT_COLUMNS = {
    "string": ("value_norm", "value_norm"),
    "token": ("code", "code"),
    "date": ("low", "high"),
    "number": ("value", "value"),
    "quantity": ("value", "value"),
    "uri": ("value", "value"),
    "reference": ("target_id", "target_id"),
}
# Python-side type of each key, so cursor values decode to what the column compares with.
KEY_KINDS = {"date": "datetime", "number": "float", "quantity": "float", "_lastUpdated": "datetime"}


@dataclass(frozen=True)
class SortKey:
    code: str
    desc: bool
    kind: str  # "str" | "float" | "datetime"


def parse_sort(values: list[str], res_types: list[str], registry: Any, *, strict: bool) -> tuple[list[SortKey], list[str]]:
    """``_sort`` values -> keys valid for every type in ``res_types``; also the ignored keys.

    Unknown or unsortable parameters are a 400 when strict, otherwise dropped (and left out of
    the self link).  Repeated ``_sort`` parameters are concatenated.
    """
    keys: list[SortKey] = []
    ignored: list[str] = []
    for raw in values:
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            desc = part.startswith("-")
            code = part[1:] if desc else part
            problem = None
            ptype = None
            for t in res_types:
                p = _param(registry, t, code)
                if p is None:
                    problem = f"Unknown search parameter '{code}' in _sort for {t}"
                    break
                if p.type not in _SORT_COLUMNS and not getattr(p, "column", None):
                    problem = f"Cannot sort by '{code}' (a {p.type} parameter)"
                    break
                if ptype is not None and ptype != p.type:
                    problem = f"'{code}' has different types across the searched resource types"
                    break
                ptype = p.type
            if problem is not None or ptype is None:
                if strict:
                    raise FhirError(400, "not-supported", f"_sort: {problem or f'Cannot sort by {code!r}'}", ["_sort"])
                ignored.append(part)
                continue
            if any(k.code == code for k in keys):
                continue  # a repeated key adds nothing to the order
            kind = KEY_KINDS.get(code) or KEY_KINDS.get(ptype, "str")
            keys.append(SortKey(code, desc, kind))
    return keys, ignored


def _param(registry: Any, res_type: str, code: str) -> Any:
    p = registry.get(res_type, code)
    if p is None and code in _BUILTINS and registry.params(res_type):
        p = _BUILTINS[code]
    return p


def sort_expression(key: SortKey, res_type: str, res: Any, registry: Any, aliases: Any = None) -> ColumnElement:
    """The sort value of ``res`` (a ``resource`` table or alias) for one key.

    ``aliases``: the statement's alias allocator (app.search.plan.Aliases), if any.
    """
    p = _param(registry, res_type, key.code)
    col = getattr(p, "column", None)
    if col:
        return res.c[col]
    table = aliases(INDEX_TABLES[p.type]) if aliases is not None else INDEX_TABLES[p.type].alias()
    asc_col, desc_col = _SORT_COLUMNS[p.type]
    value = table.c[desc_col] if key.desc else table.c[asc_col]
    agg = func.max(value) if key.desc else func.min(value)
    return (
        select(agg)
        .where(table.c.rid == res.c.rid, table.c.res_type == const(res_type), table.c.param == const(p.code))
        .scalar_subquery()
    )
