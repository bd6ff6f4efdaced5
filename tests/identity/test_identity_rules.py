"""Pure pieces: identifiers kept on PUT, the merged Patient bodies, NHS number correction body,
reference re-pointing."""

from __future__ import annotations

from app.identity.correct import corrected
from app.identity.merge import merged_bodies, repoint
from app.identity.rules import keep_other_systems, nhs_numbers, official_nhs_number

NHS = "https://fhir.nhs.uk/Id/nhs-number"
A, B = "https://a.example/mrn", "https://b.example/mrn"


def test_put_keeps_other_systems_and_former_numbers():
    current = {"identifier": [{"system": NHS, "value": "1"}, {"system": A, "value": "a1"},
                              {"system": NHS, "value": "2", "use": "old"}, {"value": "no-system"}]}
    body = {"identifier": [{"system": NHS, "value": "1"}, {"system": B, "value": "b1"}]}
    out = keep_other_systems(current, body)
    assert out["identifier"] == [{"system": NHS, "value": "1"}, {"system": B, "value": "b1"},
                                 {"system": A, "value": "a1"}, {"system": NHS, "value": "2", "use": "old"}]
    # the sender's own system is replaced, not merged
    out = keep_other_systems(current, {"identifier": [{"system": A, "value": "a2"}]})
    assert {"system": A, "value": "a1"} not in out["identifier"] and {"system": A, "value": "a2"} in out["identifier"]
    assert keep_other_systems({}, body) is body


def test_official_nhs_number_skips_former():
    p = {"identifier": [{"system": NHS, "value": "2", "use": "old"}, {"system": NHS, "value": "1"}]}
    assert official_nhs_number(p) == "1" and nhs_numbers(p) == {"1", "2"}


def test_merged_bodies():
    src = {"resourceType": "Patient", "id": "s", "meta": {"versionId": "3"}, "active": True,
           "identifier": [{"system": NHS, "value": "2"}, {"system": B, "value": "b1"}, {"value": "local"}]}
    tgt = {"resourceType": "Patient", "id": "t", "identifier": [{"system": NHS, "value": "1"}, {"system": A, "value": "a1"}]}
    new_src, new_tgt = merged_bodies("s", src, "t", tgt)
    assert new_src["active"] is False and new_src["link"] == [{"other": {"reference": "Patient/t"}, "type": "replaced-by"}]
    assert new_src["identifier"] == [{"value": "local"}] and "meta" not in new_src
    assert new_tgt["identifier"] == [{"system": NHS, "value": "1"}, {"system": A, "value": "a1"},
                                     {"system": NHS, "value": "2", "use": "old"}, {"system": B, "value": "b1"}]
    assert new_tgt["link"] == [{"other": {"reference": "Patient/s"}, "type": "replaces"}]
    # a target without an NHS number takes the source's as its own
    _, t2 = merged_bodies("s", src, "t", {"resourceType": "Patient", "id": "t"})
    assert official_nhs_number(t2) == "2"
    assert src["active"] is True  # inputs untouched


def test_repoint_changes_only_references_to_the_source():
    doc = {"resourceType": "Observation", "meta": {"versionId": "1", "tag": [{"code": "x"}]},
           "subject": {"reference": "Patient/s"},
           "performer": [{"reference": "http://srv/fhir/Patient/s"}, {"reference": "Patient/other"}],
           "note": [{"text": "Patient/s"}], "focus": [{"reference": "Patient/s/_history/2"}]}
    out = repoint(doc, "s", "t", "http://srv/fhir")
    assert out["subject"] == {"reference": "Patient/t"}
    assert out["performer"] == [{"reference": "Patient/t"}, {"reference": "Patient/other"}]
    assert out["focus"] == [{"reference": "Patient/t"}]
    assert out["note"] == [{"text": "Patient/s"}] and out["meta"] == {"tag": [{"code": "x"}]}


def test_corrected_replaces_the_official_number_only():
    p = {"resourceType": "Patient", "identifier": [
        {"system": NHS, "value": "2", "use": "old"},
        {"system": NHS, "value": "1", "extension": [{"url": "x", "valueString": "verified"}]}]}
    out = corrected(p, "3")
    assert out["identifier"] == [{"system": NHS, "value": "2", "use": "old"},
                                 {"system": NHS, "value": "3", "extension": [{"url": "x", "valueString": "verified"}]}]
    assert corrected({"resourceType": "Patient"}, "3")["identifier"] == [{"system": NHS, "value": "3"}]
