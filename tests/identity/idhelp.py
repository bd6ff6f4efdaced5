"""Helpers for the identity tests: valid NHS numbers, patients, observations, Parameters."""

from __future__ import annotations

import random
import uuid

from app.fhir.nhs_number import NHS_NUMBER_SYSTEM, check_digit

NHS = NHS_NUMBER_SYSTEM
FHIR_JSON = "application/fhir+json"
HOSP_A = "https://hospital-a.example.nhs.uk/Id/mrn"
HOSP_B = "https://hospital-b.example.nhs.uk/Id/mrn"
_rng = random.Random()


def nhs_number() -> str:
    """A fresh valid NHS number in the 9xx test range (Modulus 11 check digit computed)."""
    while True:
        first = "9" + "".join(_rng.choice("0123456789") for _ in range(8))
        d = check_digit(first)
        if d is not None and first + str(d) != (first + str(d))[0] * 10:
            return first + str(d)


def uid() -> str:
    return uuid.uuid4().hex[:12]


def patient(nhs: str | None = None, mrn: tuple[str, str] | None = None, family: str = "Jones", given: str = "Megan",
            birth: str = "1980-03-04", gender: str = "female", postcode: str | None = "CF10 1AA", **extra) -> dict:
    idents = []
    if nhs:
        idents.append({"system": NHS, "value": nhs})
    if mrn:
        idents.append({"system": mrn[0], "value": mrn[1]})
    body: dict = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "gender": gender,
                  "birthDate": birth}
    if idents:
        body["identifier"] = idents
    if postcode:
        body["address"] = [{"postalCode": postcode}]
    body.update(extra)
    return body


def observation(subject: str, code: str = "718-7", value: float = 13.2, run: str | None = None) -> dict:
    body = {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": value, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
    }
    if run:
        body["identifier"] = [{"system": "urn:test:run", "value": run}]
    return body


def hdr(**extra: str) -> dict:
    h = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    h.update({k.replace("_", "-"): v for k, v in extra.items()})
    return h


def ref_param(name: str, ref: str) -> dict:
    return {"name": name, "valueReference": {"reference": ref}}


def params(*items: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(items)}


def merge_body(source: str, target: str, preview: bool = False) -> dict:
    items = [ref_param("source-patient", f"Patient/{source}"), ref_param("target-patient", f"Patient/{target}")]
    if preview:
        items.append({"name": "preview", "valueBoolean": True})
    return params(*items)


def outcome_codes(resp) -> list[str]:
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i["code"] for i in body["issue"]]


def ids(bundle: dict) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match")
