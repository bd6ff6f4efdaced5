"""Identifier uniqueness: the check before the index rows are written, and the mapping of the
database's verdict (a unique violation) to a 409 that names the Patient holding the identifier.

The repository buffers index rows and writes them set-based in ``flush()`` (COPY on PostgreSQL),
so a violation surfaces at flush time, possibly for many Patients at once, and on PostgreSQL it
aborts the transaction: nothing can be asked on that connection afterwards. Hence two steps:

1. ``check_rows`` runs just before the token rows are written (after the rows of updated
   resources were deleted, so a Patient keeping its own identifier or two Patients swapping
   theirs pass): one query finds any other current Patient already holding one of the
   identifiers, and two Patients of the same unit of work claiming one identifier are caught in
   memory. This gives the precise 409 in every non-racing case, on both back ends.
2. Two writers racing (PostgreSQL: the index makes the second wait for the first to commit and
   then fail) are caught by the unique index itself; ``after_violation`` then names the holder
   from a fresh connection (the winner has committed by then).

Callers that sent a *conditional* request retry once on ``IdentityConflict``
(app.identity.retry): the retry's conditional match finds the winner instead.
"""

from __future__ import annotations

from sqlalchemy import Connection, or_, select, tuple_

from app.fhir.errors import FhirError, Issue
from app.fhir.nhs_number import NHS_NUMBER_SYSTEM
from app.storage.tables import resource, sp_token

_CHUNK = 200


class IdentityConflict(FhirError):
    """409: the identifier belongs to another current Patient."""


def _describe(system: str, value: str) -> str:
    return f"NHS number {value}" if system == NHS_NUMBER_SYSTEM else f"identifier {system}|{value}"


def identity_conflict(system: str, value: str, holder: str | None, also: str | None = None) -> IdentityConflict:
    """The 409 for an identifier held by ``holder`` (a Patient id, or None when unknown)."""
    what = _describe(system, value)
    if holder is None:
        text = f"Another Patient already holds {what}"
    else:
        text = f"Patient/{holder} already holds {what}"
    if also:
        text += f" (claimed again by Patient/{also} in the same request)"
    text += (". An identifier may belong to one Patient only: send the patient as a conditional create "
             "(If-None-Exist) or conditional update on that identifier, or merge the two records "
             "(Patient/$merge).")
    extra = [Issue("duplicate", f"Patient/{holder}", "information", ["Patient.identifier"])] if holder else []
    return IdentityConflict(409, "duplicate", text, ["Patient.identifier"], extra)


def _keys(rows: list[tuple]) -> tuple[dict[tuple[str, str], int], list[tuple[str, str, int, int]]]:
    """(system, value) -> rid for the Patient identifier rows among buffered token rows (tuples in
    sp_token column order: rid, res_type, param, system, code, ...), and the clashes between
    two Patients of these rows."""
    out: dict[tuple[str, str], int] = {}
    clashes: list[tuple[str, str, int, int]] = []
    for rid, res_type, param, system, code, *_rest in rows:
        if res_type != "Patient" or param != "identifier" or system is None or code is None:
            continue
        other = out.setdefault((system, code), rid)
        if other != rid:
            clashes.append((system, code, other, rid))
    return out, clashes


def _ids(conn: Connection, rids: set[int]) -> dict[int, str]:
    rows = conn.execute(select(resource.c.rid, resource.c.res_id).where(resource.c.rid.in_(sorted(rids)))).all()
    return {r[0]: r[1] for r in rows}


def _holders(conn: Connection, keys: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """(rid, system, value) of stored Patient identifier rows for any of ``keys``."""
    out: list[tuple[int, str, str]] = []
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        cond = (
            tuple_(sp_token.c.system, sp_token.c.code).in_(chunk)
            if conn.dialect.name == "postgresql"
            else or_(*((sp_token.c.system == s) & (sp_token.c.code == c) for s, c in chunk))
        )
        out += [
            (r[0], r[1], r[2])
            for r in conn.execute(
                select(sp_token.c.rid, sp_token.c.system, sp_token.c.code).where(
                    sp_token.c.res_type == "Patient", sp_token.c.param == "identifier", cond
                )
            )
        ]
    return out


def check_rows(conn: Connection, rows: list[tuple]) -> None:
    """Before buffered token rows are written: refuse (409) any Patient identifier another
    current Patient holds, or that two Patients of this unit of work both claim."""
    keys, clashes = _keys(rows)
    if clashes:
        system, value, first, second = clashes[0]
        ids = _ids(conn, {first, second})
        raise identity_conflict(system, value, ids.get(first), ids.get(second))
    if not keys:
        return
    for rid, system, value in _holders(conn, sorted(keys)):
        if rid != keys[(system, value)]:
            raise identity_conflict(system, value, _ids(conn, {rid}).get(rid))


def after_violation(conn: Connection, rows: list[tuple]) -> IdentityConflict:
    """The 409 for a unique violation of the identifier index (a concurrent writer won): the
    holder is read on a fresh connection, this one's transaction being aborted."""
    keys, _ = _keys(rows)
    holder = None
    system, value = next(iter(sorted(keys))) if keys else ("", "")
    try:
        with conn.engine.connect() as fresh:
            for rid, s, v in _holders(fresh, sorted(keys)):
                if rid != keys[(s, v)]:
                    holder, system, value = _ids(fresh, {rid}).get(rid), s, v
                    break
    except Exception:  # noqa: BLE001 - naming the holder is a courtesy; the 409 stands without it
        holder = None
    return identity_conflict(system, value, holder)
