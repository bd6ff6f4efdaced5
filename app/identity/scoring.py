"""Demographic match scoring for ``Patient/$match`` (pure functions, no database).

A simple field-agreement model in the Fellegi-Sunter spirit, with weights chosen so that the
grades mean something a clinician can act on:

======================  =========  ==========================  ==========
field                   agrees     nearly agrees               disagrees
======================  =========  ==========================  ==========
family name             +0.30      +0.20 (one or two typos)    0
given name (first)      +0.20      +0.10 (initial, one typo)   -0.20
birth date              +0.30      +0.15 (day/month swapped,   -0.30
                                   one digit off)
gender                  +0.05                                  -0.20
postcode                +0.15      +0.05 (same outward code)   0
======================  =========  ==========================  ==========

A field missing on either side counts 0. The score is clamped to [0, 1]. Grades: ``certain``
only when the NHS numbers are equal (never from demographics), ``probable`` from 0.8,
``possible`` from 0.5; lower scores are not returned. Disagreement on given name, birth date or
gender costs more than agreement gains, so twins (same family, birth date and address, different
given name) and namesakes (same name, different birth date) are never ``probable``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date

from app.identity.rules import nhs_numbers, official_nhs_number

PROBABLE = 0.8
POSSIBLE = 0.5


@dataclass(frozen=True)
class Demographics:
    nhs_number: str | None
    family: str | None
    given: str | None
    birth_date: str | None
    gender: str | None
    postcode: str | None

    def any_demographics(self) -> bool:
        return any((self.family, self.given, self.birth_date, self.postcode))


def fold(text: str | None) -> str | None:
    """Lower case, accents and everything but letters and digits removed (O'Neil = ONeil)."""
    if not text:
        return None
    norm = unicodedata.normalize("NFKD", text)
    out = "".join(ch for ch in norm if ch.isalnum() and not unicodedata.combining(ch)).lower()
    return out or None


def postcode_norm(text: str | None) -> str | None:
    if not text:
        return None
    out = "".join(ch for ch in text if ch.isalnum()).upper()
    return out or None


def outward(postcode: str) -> str:
    """The outward code of a normalised UK postcode (the inward code is the last three)."""
    return postcode[:-3] if len(postcode) > 3 else postcode


def _official_name(patient: dict) -> dict:
    names = [n for n in patient.get("name") or () if isinstance(n, dict)]
    for n in names:
        if n.get("use") == "official":
            return n
    for n in names:
        if n.get("use") not in ("old", "nickname", "anonymous", "maiden"):
            return n
    return names[0] if names else {}


def _home_postcode(patient: dict) -> str | None:
    addrs = [a for a in patient.get("address") or () if isinstance(a, dict) and a.get("postalCode")]
    for a in addrs:
        if a.get("use") in (None, "home") and not (a.get("period") or {}).get("end"):
            return a["postalCode"]
    return addrs[0]["postalCode"] if addrs else None


def demographics(patient: dict) -> Demographics:
    name = _official_name(patient)
    given = name.get("given") or []
    return Demographics(
        nhs_number=official_nhs_number(patient),
        family=fold(name.get("family")),
        given=fold(given[0]) if given and isinstance(given[0], str) else None,
        birth_date=patient.get("birthDate") if isinstance(patient.get("birthDate"), str) else None,
        gender=patient.get("gender") if isinstance(patient.get("gender"), str) else None,
        postcode=postcode_norm(_home_postcode(patient)),
    )


def edit_distance(a: str, b: str, cap: int = 3) -> int:
    """Damerau-Levenshtein (optimal string alignment): a swap of neighbours is one edit."""
    if abs(len(a) - len(b)) >= cap:
        return cap
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return min(prev[len(b)], cap)


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text[:10]) if len(text) >= 10 else None
    except ValueError:
        return None


def birth_date_agreement(a: str, b: str) -> str:
    """``exact``, ``near`` (day and month swapped, or one digit mistyped) or ``different``."""
    if a == b:
        return "exact"
    da, db = _date(a), _date(b)
    if da is None or db is None:
        return "exact" if a[: min(len(a), len(b))] == b[: min(len(a), len(b))] else "different"
    if da.year == db.year and da.month == db.day and da.day == db.month:
        return "near"
    if sum(x != y for x, y in zip(a[:10], b[:10], strict=True)) == 1:
        return "near"
    return "different"


def _name_agreement(a: str, b: str, near_cap: int) -> str:
    if a == b:
        return "exact"
    if len(a) == 1 or len(b) == 1:
        return "near" if a[0] == b[0] else "different"
    return "near" if edit_distance(a, b) <= near_cap else "different"


def score(query: Demographics, cand: Demographics) -> float:
    s = 0.0
    if query.family and cand.family:
        s += {"exact": 0.30, "near": 0.20, "different": 0.0}[_name_agreement(query.family, cand.family, 2)]
    if query.given and cand.given:
        s += {"exact": 0.20, "near": 0.10, "different": -0.20}[_name_agreement(query.given, cand.given, 1)]
    if query.birth_date and cand.birth_date:
        s += {"exact": 0.30, "near": 0.15, "different": -0.30}[birth_date_agreement(query.birth_date, cand.birth_date)]
    if query.gender and cand.gender and "unknown" not in (query.gender, cand.gender):
        s += 0.05 if query.gender == cand.gender else -0.20
    if query.postcode and cand.postcode:
        if query.postcode == cand.postcode:
            s += 0.15
        elif outward(query.postcode) == outward(cand.postcode):
            s += 0.05
    return round(min(max(s, 0.0), 1.0), 4)


def grade(query: dict, candidate: dict) -> tuple[float, str | None]:
    """(score, match-grade) of a stored Patient against the Patient given to $match; grade None
    means "not a candidate". Equal NHS numbers are ``certain``; a different NHS number on both
    sides means a different person whatever the demographics."""
    q_nhs = official_nhs_number(query)
    c_nhs = nhs_numbers(candidate)
    if q_nhs and q_nhs in c_nhs:
        return 1.0, "certain"
    if q_nhs and official_nhs_number(candidate):
        return 0.0, None
    s = score(demographics(query), demographics(candidate))
    if s >= PROBABLE:
        return s, "probable"
    if s >= POSSIBLE:
        return s, "possible"
    return s, None
