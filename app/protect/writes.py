"""Writes aimed at a resource the caller may not see: refused (docs/decisions/0011).

Withholding governs disclosure, but a write by id (update, JSON Patch, delete, as a plain
request or a batch/transaction entry) or an identity operation (``Patient/$merge``,
``$unmerge``, ``$correct-nhs-number``) on a current resource carrying a label the token is not
cleared for would use that resource unseen: return it patched, replace its labels with the
writer's own (un-hiding it), delete it, or fold a hidden Patient into another record.  Such a
write answers **403 forbidden** before anything is read from the resource or written, like a
conditional write whose criteria match a withheld resource
(app.interactions.common.refuse_withheld_match) and like any write aimed outside the token's
reach (decision 0006).

Cleared tokens, break-glass requests (``withheld`` is empty for them) and the open demo without
a token (no permission) are not affected; neither is a write to a new or deleted id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from app.fhir.errors import FhirError
from app.protect.labels import labelled_rids
from app.storage.tables import resource


def _withheld(ctx: Any) -> frozenset:
    perm = getattr(ctx, "permission", None)
    return perm.withheld if perm is not None else frozenset()


def refuse_withheld_target(ctx: Any, conn: Any, res_type: str, res_id: str, rid: int | None) -> None:
    """Before an update, patch or delete by id of the current row ``rid``: 403 when it carries a
    label the token is not cleared for (one indexed query, only for tokens with withheld labels)."""
    withheld = _withheld(ctx)
    if rid is None or not withheld:
        return
    if labelled_rids(conn, (rid,), withheld):
        raise FhirError(403, "forbidden", f"{res_type}/{res_id} carries a security label this access token is not "
                        "cleared for; nothing was written. Changing or deleting it needs a token cleared for that "
                        "label (or a break-glass request).")


def refuse_withheld_rids(ctx: Any, conn: Any, rids: Iterable[int]) -> None:
    """An identity operation resolved Patients (by reference or identifier) to the current rows
    ``rids``: 403 when any carries a label the token is not cleared for.  The answer names no
    Patient (one found by identifier was not named by the caller)."""
    withheld = _withheld(ctx)
    if not withheld:
        return
    if labelled_rids(conn, rids, withheld):
        raise FhirError(403, "forbidden", "The operation names a Patient that this access token may not see (it "
                        "carries a security label the token is not cleared for); nothing was changed. It needs a "
                        "token cleared for that label (or a break-glass request).")


def refuse_withheld_patients(ctx: Any, conn: Any, res_ids: Iterable[str]) -> None:
    """:func:`refuse_withheld_rids` for Patients given by id (unknown or deleted ids pass: the
    operation answers 404/410 for them as before)."""
    if not _withheld(ctx):
        return
    ids = sorted({i for i in res_ids if i})
    if not ids:
        return
    rids = conn.execute(select(resource.c.rid).where(resource.c.res_type == "Patient", resource.c.res_id.in_(ids),
                                                     resource.c.deleted.is_(False))).scalars().all()
    refuse_withheld_rids(ctx, conn, rids)
