"""Which index rows an update must delete and insert.

Most updates change a status or a value and leave most of the ~50 rows of an Observation as they
were; rewriting only the difference keeps index-table churn (and PostgreSQL bloat) small.
"""

from __future__ import annotations

__all__ = ["diff_rows"]

Rows = dict[str, list[dict]]


def diff_rows(old: Rows, new: Rows) -> tuple[Rows, Rows]:
    """``(to_delete, to_insert)`` per kind; rows equal in every column are left alone.

    Rows are compared by value (as produced by :func:`app.indexing.extract.extract`, which
    emits each row once), so a row that moved between positions is not rewritten.
    """
    to_delete: Rows = {}
    to_insert: Rows = {}
    for kind in old.keys() | new.keys():
        before = {tuple(r.values()): r for r in old.get(kind, ())}
        after = {tuple(r.values()): r for r in new.get(kind, ())}
        to_delete[kind] = [r for key, r in before.items() if key not in after]
        to_insert[kind] = [r for key, r in after.items() if key not in before]
    return to_delete, to_insert
