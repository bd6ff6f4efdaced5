"""_summary / _elements shaping from the fhir.resources element metadata (no database)."""

from __future__ import annotations

import orjson
import pytest

from app.fhir.errors import FhirError
from app.search.shape import Shape, element_info, parse_shape, shape_resource

OBS = {
    "resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"},
    "text": {"status": "generated", "div": "<div/>"}, "status": "final", "_status": {"id": "s"},
    "code": {"text": "Hb"}, "subject": {"reference": "Patient/1"}, "note": [{"text": "n"}],
    "valueQuantity": {"value": 1}, "interpretation": [{"text": "H"}],
}


def _shape(shape: Shape) -> dict:
    return orjson.loads(shape_resource("Observation", orjson.dumps(OBS), shape))


def test_metadata_comes_from_the_model():
    info = element_info("Observation")
    assert {"code", "status", "subject", "valueQuantity"} <= info.summary
    assert "note" not in info.summary and "text" not in info.summary
    assert {"status", "code"} <= info.required
    assert info.choice["valueQuantity"] == "value"


def test_identity_returns_stored_bytes():
    raw = orjson.dumps(OBS)
    assert shape_resource("Observation", raw, Shape()) is raw


@pytest.mark.parametrize("mode,present,absent", [
    ("true", {"status", "_status", "code", "subject", "valueQuantity"}, {"text", "note", "interpretation"}),
    ("text", {"text", "status", "code"}, {"subject", "note", "valueQuantity"}),
    ("data", {"status", "code", "note", "interpretation", "valueQuantity"}, {"text"}),
])
def test_summary_modes(mode, present, absent):
    out = _shape(Shape(summary=mode))
    assert present <= set(out) and not (absent & set(out))
    assert out["meta"]["versionId"] == "1" and out["meta"]["tag"][-1]["code"] == "SUBSETTED"


def test_elements_keep_choice_and_mandatory():
    out = _shape(parse_shape([], ["value,note"]))
    assert set(out) == {"resourceType", "id", "meta", "valueQuantity", "note", "status", "_status", "code"}


def test_bad_values():
    with pytest.raises(FhirError):
        parse_shape(["nope"], [])
    with pytest.raises(FhirError):
        parse_shape(["true"], ["code"])
    with pytest.raises(FhirError):
        parse_shape([], ["code;drop"])
