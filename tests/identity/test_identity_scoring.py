"""Match grades on a table of demographic cases (pure scoring, no database)."""

from __future__ import annotations

import pytest

from app.identity.scoring import birth_date_agreement, edit_distance, grade

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def p(family="Jones", given="Megan", birth="1980-03-04", gender="female", postcode="CF10 1AA", nhs=None) -> dict:
    body: dict = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "gender": gender,
                  "birthDate": birth, "address": [{"postalCode": postcode}]}
    if nhs:
        body["identifier"] = [{"system": NHS, "value": nhs}]
    return body


CASES = [
    # (case, query, candidate, expected grade)
    ("exact demographics", p(), p(), "probable"),
    ("exact with NHS number", p(nhs="9434765919"), p(nhs="9434765919", family="Other"), "certain"),
    ("different NHS numbers", p(nhs="9434765919"), p(nhs="9000000009"), None),
    ("typo in family name", p(family="Jonse"), p(), "probable"),
    ("family name spelt differently", p(family="Smyth"), p(family="Smith"), "probable"),
    ("swapped day and month", p(birth="1980-04-03"), p(), "probable"),
    ("swapped day/month and a family typo", p(birth="1980-04-03", family="Jnoes"), p(), "possible"),
    ("twin, same birth date, other given name", p(given="Olivia"), p(given="Megan"), "possible"),
    ("twin of the other sex", p(given="Owen", gender="male"), p(), None),
    ("same name, different person", p(birth="1952-11-30", postcode="LL57 2DG"), p(), None),
    ("same name and sex, moved house, other birth date", p(birth="1979-08-21", postcode="CF24 3AA"), p(), None),
    ("accents and case", p(family="JONÉS", given="megan"), p(), "probable"),
    ("initial only", p(given="M"), p(), "probable"),
    ("same outward postcode only", p(postcode="CF10 9ZZ"), p(), "probable"),
    ("name only, nothing else", {"resourceType": "Patient", "name": [{"family": "Jones", "given": ["Megan"]}]}, p(),
     "possible"),
]


@pytest.mark.parametrize("case,query,cand,expected", CASES, ids=[c[0] for c in CASES])
def test_grade_table(case, query, cand, expected):
    _score, got = grade(query, cand)
    assert got == expected, (case, _score)


def test_scores_order_the_cases():
    exact = grade(p(), p())[0]
    typo = grade(p(family="Jonse"), p())[0]
    swapped = grade(p(birth="1980-04-03"), p())[0]
    twin = grade(p(given="Olivia"), p())[0]
    assert exact == 1.0 and exact > typo > swapped > twin


def test_never_certain_without_nhs_number():
    assert grade(p(), p())[1] == "probable"
    assert grade(p(nhs="9434765919"), p())[1] != "certain"


def test_helpers():
    assert edit_distance("jones", "jnoes") == 1  # a transposition is one edit
    assert edit_distance("smith", "smyth") == 1
    assert edit_distance("a", "abcdef") == 3  # capped
    assert birth_date_agreement("1980-03-04", "1980-04-03") == "near"
    assert birth_date_agreement("1980-03-04", "1981-03-04") == "near"  # one digit
    assert birth_date_agreement("1980-03-04", "1975-06-12") == "different"
    assert birth_date_agreement("1980", "1980-03-04") == "exact"
