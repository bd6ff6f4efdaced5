"""The safety rails on Patient updates (write paths call ``patient_update`` before writing).

- A hospital's PUT carries the identifiers *it* knows; the regional Patient also holds other
  hospitals' numbers. An update must not silently drop them (hospital A's MRN would stop finding
  the patient the moment hospital B re-sends it), so a PUT keeps every stored identifier whose
  system the new body does not mention at all. A JSON Patch is an explicit edit and is applied
  as written.
- The NHS number is the region's key. An update may add one to a Patient that had none (a traced
  patient), but changing or removing one is refused (422): that is done by ``Patient/$merge``
  (two records are one person) or by ``Patient/{id}/$correct-nhs-number`` (a recorded correction).
- A Patient merged into another (``link.type=replaced-by``) is changed only by an unmerge:
  writes go to the survivor.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, select

from app.fhir.errors import FhirError
from app.fhir.nhs_number import NHS_NUMBER_SYSTEM
from app.identity.tables import patient_merge


def nhs_numbers(body: dict) -> set[str]:
    return {
        i["value"]
        for i in body.get("identifier") or ()
        if isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM and isinstance(i.get("value"), str)
    }


def official_nhs_number(body: dict) -> str | None:
    """The Patient's current NHS number: the first one not marked ``use=old``."""
    for i in body.get("identifier") or ():
        if isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM and i.get("use") != "old":
            v = i.get("value")
            if isinstance(v, str):
                return v
    return None


def merged_into(conn: Connection, patient_id: str) -> str | None:
    """The survivor a Patient was merged into (an active merge), or None."""
    return conn.execute(
        select(patient_merge.c.target_id).where(
            patient_merge.c.source_id == patient_id, patient_merge.c.unmerged_at.is_(None)
        )
    ).scalar()


def keep_other_systems(current: dict, body: dict) -> dict:
    """``body`` plus the stored identifiers of systems ``body`` does not mention, and the stored
    former identifiers (``use=old``, e.g. a merged record's NHS number) it does not carry."""
    given = [i for i in body.get("identifier") or () if isinstance(i, dict)]
    mentioned = {i.get("system") for i in given}
    carried = {(i.get("system"), i.get("value")) for i in given}
    kept = [
        i
        for i in current.get("identifier") or ()
        if isinstance(i, dict)
        and i.get("system")
        # another system's number, or a former number kept after a merge (use=old)
        and (i.get("system") not in mentioned or (i.get("use") == "old" and (i.get("system"), i.get("value")) not in carried))
    ]
    if not kept:
        return body
    return {**body, "identifier": [*(body.get("identifier") or []), *kept]}


def patient_update(conn: Connection, current_content: str | None, res_id: str, body: dict, method: str) -> dict:
    """The body to write over the current Patient ``res_id`` (or a FhirError)."""
    survivor = merged_into(conn, res_id)
    if survivor is not None:
        raise FhirError(
            409,
            "conflict",
            f"Patient/{res_id} was merged into Patient/{survivor}; send changes to Patient/{survivor} "
            "(or unmerge first).",
        )
    if current_content is None:
        return body
    current = orjson.loads(current_content)
    if method == "PUT":
        body = keep_other_systems(current, body)
    lost = nhs_numbers(current) - nhs_numbers(body)
    if lost:
        raise FhirError(
            422,
            "business-rule",
            f"Patient/{res_id}'s NHS number cannot be changed or removed by an update. If two records "
            "are one person, merge them (Patient/$merge); to correct a mistyped number use "
            f"Patient/{res_id}/$correct-nhs-number, which records the correction.",
            ["Patient.identifier"],
        )
    return body
