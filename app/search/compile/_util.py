"""Helpers shared by the type compilers."""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_


def like_escape(s: str) -> str:
    """Escape LIKE wildcards so a user's ``%`` or ``_`` matches literally (escape char ``\\``)."""
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def prefix_condition(col: ColumnElement, prefix: str) -> ColumnElement[bool]:
    """``col`` starts with ``prefix``, written so a plain b-tree index can seek it.

    Rule (documented choice): a range ``col >= p AND col < succ(p)`` (succ = last code point + 1)
    is what the index seeks; it is exact under code-point ordering (SQLite BINARY, PostgreSQL
    "C"/"C.UTF-8" collation).  The ``LIKE 'p%'`` recheck keeps the result exact in any collation.
    """
    like = col.like(like_escape(prefix) + "%", escape="\\")
    last = ord(prefix[-1])
    if last >= 0x10FFFF or 0xD7FF <= last < 0xE000:
        return like
    upper = prefix[:-1] + chr(last + 1)
    return and_(col >= prefix, col < upper, like)


