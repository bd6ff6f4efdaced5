"""Sealed search links (app.search.paging): short states sealed as they are, longer ones
deflated; both open to the same search, and neither opens for another caller or path."""

from __future__ import annotations

import pytest

from app.fhir.errors import FhirError
from app.fhir.sealed import unseal_bytes
from app.search import paging
from app.search.paging import Cursor, open_search, seal_search

SECRET = "unit-test-secret"


@pytest.mark.parametrize(("params", "packing"), [
    ([("subject", "Patient/1"), ("_count", "1")], paging._PLAIN),
    ([("code", f"http://loinc.org|{n}-0") for n in range(40)], paging._DEFLATED),
])
def test_a_sealed_search_opens_to_itself(params, packing) -> None:
    token = seal_search(SECRET, "client-a", "Observation", params, Cursor("next", ("2020-01-01",), 42))
    assert unseal_bytes(SECRET, paging._PURPOSE, token)[:1] == packing
    resumed = open_search(SECRET, "client-a", "Observation", token)
    assert resumed.params == params
    assert resumed.position == ("next", ["2020-01-01"], 42)
    for caller, path in (("client-b", "Observation"), ("client-a", "DiagnosticReport")):
        with pytest.raises(FhirError) as err:
            open_search(SECRET, caller, path, token)
        assert err.value.status == 400
