"""``Patient/$match`` (FHIR R4): find the stored Patients that may be the person described.

Read-only and advisory: it never links, merges or creates anything, whatever the grade
(docs/decisions/0009). Candidates are gathered set-based with the search engine (so the
caller's token bounds them exactly as it bounds a search), then scored in app.identity.scoring.
"""

from __future__ import annotations

from datetime import date

import orjson

from app.auth.permission import conditional_rewrite
from app.db import unit_of_work
from app.fhir.bundle import bundle_bytes, entry_bytes
from app.fhir.errors import FhirError
from app.fhir.nhs_number import NHS_NUMBER_SYSTEM
from app.fhir.validation import validate_resource
from app.identity.params import one, parameters
from app.identity.scoring import demographics, grade
from app.interactions.context import FhirContext, Result
from app.protect.labels import bundle_label
from app.search import find_matches

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
GRADE_ORDER = {"certain": 0, "probable": 1, "possible": 2}
PER_QUERY = 100  # candidates per blocking query
DEFAULT_COUNT = 10
MAX_COUNT = 100


def _swapped(birth_date: str) -> str | None:
    try:
        d = date.fromisoformat(birth_date[:10])
        s = date(d.year, d.day, d.month)
    except ValueError:
        return None
    return None if s == d else s.isoformat()


def _blocking_queries(patient: dict) -> list[list[tuple[str, str]]]:
    """Searches whose union holds every plausible candidate: same NHS number; same (or day/month
    swapped) birth date; same family and given name; same family name and postcode."""
    d = demographics(patient)
    out: list[list[tuple[str, str]]] = []
    if d.nhs_number:
        out.append([("identifier", f"{NHS_NUMBER_SYSTEM}|{d.nhs_number}")])
    bd = patient.get("birthDate") if isinstance(patient.get("birthDate"), str) else None
    if bd:
        out.append([("birthdate", bd)])
        if (sw := _swapped(bd)) is not None:
            out.append([("birthdate", sw)])
    name = next((n for n in patient.get("name") or () if isinstance(n, dict) and n.get("family")), None)
    if name:
        if name.get("given"):
            out.append([("family", name["family"]), ("given", name["given"][0])])
        for a in patient.get("address") or ():
            if isinstance(a, dict) and a.get("postalCode"):
                out.append([("family", name["family"]), ("address-postalcode", a["postalCode"])])
    return out


def match(ctx: FhirContext, body: object) -> Result:
    params = parameters(body, "Patient/$match", {"resource", "onlyCertainMatches", "count"})
    res = one(params, "resource", "resource", dict)
    if res is None:
        raise FhirError(400, "required", "Patient/$match needs a 'resource' parameter holding a Patient.")
    if res.get("resourceType") != "Patient":
        raise FhirError(400, "invalid", "The 'resource' parameter of Patient/$match must be a Patient.")
    validate_resource(res, "Patient")
    only_certain = bool(one(params, "onlyCertainMatches", "valueBoolean", bool))
    count = one(params, "count", "valueInteger", int)
    count = DEFAULT_COUNT if count is None else count
    if count < 1:
        raise FhirError(400, "invalid", "Parameter 'count' must be a positive integer.")
    count = min(count, MAX_COUNT)
    queries = _blocking_queries(res)
    if not queries:
        raise FhirError(400, "required", "Patient/$match needs an NHS number or demographics "
                        "(family and given name, birth date, postcode) to match on.")
    rewrite = conditional_rewrite(ctx, "Patient", "s")  # 403 without Patient search
    scored: list[tuple[int, float, str, object]] = []
    with unit_of_work(ctx.engine) as conn:
        rids: set[int] = set()
        for q in queries:
            for row in find_matches(conn, ctx.registry, "Patient", q, base_url=ctx.base_url, tz=ctx.tz,
                                    limit=PER_QUERY, rewrite=rewrite):
                rids.add(row[0])
        for stored in ctx.repo(conn).read_many(sorted(rids)):
            cand = orjson.loads(stored.content)
            if any(isinstance(lk, dict) and lk.get("type") == "replaced-by" for lk in cand.get("link") or ()):
                continue  # merged away: its survivor is the candidate
            s, g = grade(res, cand)
            if g is None or (only_certain and g != "certain"):
                continue
            scored.append((GRADE_ORDER[g], -s, stored.res_id, (stored, s, g)))
    scored.sort(key=lambda x: x[:3])
    entries = []
    shown = scored[:count]
    for _o, _s, _id, (stored, s, g) in shown:
        entry = {
            "fullUrl": f"{ctx.base_url}/Patient/{stored.res_id}",
            "search": {"extension": [{"url": MATCH_GRADE, "valueCode": g}], "mode": "match", "score": s},
        }
        entries.append(entry_bytes(entry, stored.content))
    envelope: dict = {"resourceType": "Bundle"}
    label = bundle_label(x[3][0].content for x in shown)
    if label is not None:  # like every search Bundle: its most confidential entry's level
        envelope["meta"] = {"security": [label]}
    envelope.update({"type": "searchset", "total": len(entries)})
    return Result(200, bundle_bytes(envelope, entries))
