"""The AuditEvent search runs under the search deadline (``SEARCH_TIMEOUT_MS``): a search of the
trail that reads too much is a 400 OperationOutcome ``too-costly``, first page or followed link,
and the same search answers once the limit is lifted.  A trail of 50,000 events of which the
filter matches two (the newest): every other page reads the whole table.  Both back ends."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from audithelp import AUDITOR, FHIR_JSON, events, query_of, rid, subtype

ROWS = 50_000


@pytest.fixture(scope="module")
def trail(audit_app, live, token) -> dict:
    from app.audit.events import AuditRecord, Who, utcnow
    from app.audit.tables import audit_event

    now = utcnow()
    who = Who(client_id="bulk-filler")
    filler = [AuditRecord("rest", "read", "R", 0, f"fill-{i}", who, status=200, res_type="Observation",
                          entity=f"Observation/o{i}", recorded=now - timedelta(seconds=ROWS - i)).row()
              for i in range(ROWS)]
    wanted = [AuditRecord("110113", "custom", "E", 12, f"wanted-{i}", who, recorded=now).row() for i in range(2)]
    engine = audit_app.extensions["results_repo"].engine
    with engine.begin() as conn:
        conn.execute(audit_event.insert(), filler)
        conn.execute(audit_event.insert(), wanted)
    return {"auditor": token(AUDITOR, client_id="privacy-timeout")}


def _get(url: str, tok: str, params=None, request_id: str | None = None) -> requests.Response:  # noqa: ANN001
    h = {"Authorization": f"Bearer {tok}", "Accept": FHIR_JSON}
    if request_id:
        h["X-Request-Id"] = request_id
    return requests.get(url, params=params, headers=h)


def _too_costly(r: requests.Response) -> None:
    assert r.status_code == 400, r.text[:300]
    assert r.headers["Content-Type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in body["issue"]] == ["too-costly"]
    assert "AuditEvent search" in body["issue"][0]["diagnostics"] and "1 ms" in body["issue"][0]["diagnostics"]


def test_a_long_audit_event_search_is_too_costly(audit_app, live, trail) -> None:
    tok = trail["auditor"]
    url = f"{live.base}/AuditEvent"
    params = {"subtype": "custom", "outcome": "12", "_count": "1"}
    audit_app.config["SEARCH_TIMEOUT_MS"] = 0
    first = _get(url, tok, params)
    assert first.status_code == 200, first.text[:300]
    assert len(first.json()["entry"]) == 1
    nxt = next(link["url"] for link in first.json()["link"] if link["relation"] == "next")
    audit_app.config["SEARCH_TIMEOUT_MS"] = 1
    try:
        # nothing matches: every event is read, far beyond 1 ms
        _too_costly(_get(url, tok, {"subtype": "custom", "outcome": "4", "_count": "10"}, request_id=(req := rid())))
        # the second page: one event found, then the rest of the table read for an (absent) third
        _too_costly(_get(nxt, tok))
    finally:
        audit_app.config["SEARCH_TIMEOUT_MS"] = 0
    # the server goes on: with the limit lifted, the same searches answer
    r = _get(url, tok, {"subtype": "custom", "outcome": "4", "_count": "10"})
    assert r.status_code == 200 and not r.json().get("entry")
    page2 = _get(nxt, tok)
    assert page2.status_code == 200, page2.text[:300]
    assert len(page2.json()["entry"]) == 1 and page2.json()["entry"][0]["resource"]["subtype"][0]["code"] == "custom"
    assert [link["relation"] for link in page2.json()["link"]] == ["self", "previous"]
    # the refusal is in the trail, with its query, as a failure
    ev = events(live.base, tok, req, agent="privacy-timeout", outcome="4")
    assert len(ev) == 1 and subtype(ev[0]) == "search-type" and "too-costly" in ev[0]["outcomeDesc"]
    assert query_of(ev[0]) == "subtype=custom&outcome=4&_count=10"
