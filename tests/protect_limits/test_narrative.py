"""Narratives with active content are refused on every way in (create, update, transaction
entries, contained resources, the loader) with 400 ``value`` naming the div; nothing is written."""

from __future__ import annotations

import json

import pytest
import requests
from limitshelp import H, Live, make_app, outcome_codes, patient, row_counts

from app.fhir.narrative import div_problems

XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'
HOSTILE = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<p onclick="steal()">hi</p>',
    '<a href="javascript:alert(1)">x</a>',
    '<a href=" java&#09;script:alert(1)">x</a>',
    '<a href="JaVaScRiPt&colon;alert(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>',
    "<iframe src=//evil.example></iframe>",
    '<object data="x.swf"></object>',
    '<embed src="x.swf">',
    '<span style="width: expression(alert(1))">x</span>',
    '<span style="width: exp\\72 ession(alert(1))">x</span>',
    '<span style="background:url(javascript:alert(1))">x</span>',
    "<svg><script>alert(1)</script></svg>",
    "<form action=//evil.example><input name=q></form>",
    "<style>body{background:red}</style>",
    '<link rel=stylesheet href="//evil.example/x.css">',
    '<meta http-equiv="refresh" content="0;url=//evil.example">',
    "<base href=//evil.example/>",
    "<![CDATA[<script>alert(1)</script>]]>",
]
SAFE = [
    "<p>Haemoglobin <b>132 g/L</b> (normal)</p>",
    '<table><tr><th>Test</th><td class="x">1</td></tr></table>',
    '<p><a href="https://www.nhs.uk/conditions/">NHS</a> <img src="data:image/png;base64,iVBORw0=" alt="x"/></p>',
    '<ul><li>one</li></ul><!-- a comment --><span style="color: red">red</span>',
    "<p>5 &lt; 6 &amp; javascript: is only text here</p>",
]


@pytest.mark.parametrize("inner", HOSTILE)
def test_active_content_is_found(inner: str) -> None:
    assert div_problems(f"<div {XHTML}>{inner}</div>"), inner


@pytest.mark.parametrize("inner", SAFE)
def test_formatting_passes(inner: str) -> None:
    assert div_problems(f"<div {XHTML}>{inner}</div>") == []


def _with_div(body: dict, inner: str) -> dict:
    return {**body, "text": {"status": "generated", "div": f"<div {XHTML}>{inner}</div>"}}


@pytest.fixture(scope="module")
def srv(database_url):
    app = make_app(database_url)
    live = Live(app)
    app.config["PUBLIC_BASE_URL"] = live.base
    yield app, live
    live.stop()
    app.extensions["results_repo"].engine.dispose()


def test_create_and_update_refuse_a_script(srv) -> None:
    app, live = srv
    before = row_counts(app)
    r = requests.post(f"{live.base}/Patient", json=_with_div(patient(), "<script>alert(1)</script>"), headers=H)
    assert r.status_code == 400
    assert outcome_codes(r) == ["value"]
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Patient.text.div"]
    assert "<script>" in issue["diagnostics"]
    assert row_counts(app) == before
    ok = requests.post(f"{live.base}/Patient", json=_with_div(patient(), SAFE[0]), headers=H)
    assert ok.status_code == 201, ok.text
    body = ok.json()
    r = requests.put(f"{live.base}/Patient/{body['id']}", json=_with_div(body, '<img src=x onerror="x()">'), headers=H)
    assert r.status_code == 400 and outcome_codes(r) == ["value"]
    assert requests.get(f"{live.base}/Patient/{body['id']}", headers=H).json()["meta"]["versionId"] == "1"


def test_contained_resource_narrative(srv) -> None:
    _, live = srv
    contained = _with_div({"resourceType": "Practitioner", "id": "p1"}, '<a href="javascript:x()">x</a>')
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "contained": [contained],
           "performer": [{"reference": "#p1"}]}
    r = requests.post(f"{live.base}/Observation", json=obs, headers=H)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["Observation.contained[0].text.div"]


def test_transaction_with_one_bad_entry_writes_nothing(srv) -> None:
    app, live = srv
    before = row_counts(app)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": _with_div(patient(), "<iframe src=//x></iframe>"), "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = requests.post(live.base, json=bundle, headers=H)
    assert r.status_code == 400, r.text
    assert "value" in outcome_codes(r)
    assert "iframe" in r.text
    assert row_counts(app) == before


def test_loader_refuses_the_bundle(srv, tmp_path) -> None:
    from app.loader.runner import load_paths

    app, _ = srv
    before = row_counts(app)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b7c1f4e-0000-4000-8000-000000000001",
         "resource": _with_div(patient(), '<p onmouseover="x()">x</p>'), "request": {"method": "POST", "url": "Patient"}},
    ]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bundle))
    summary = load_paths(app, [path])
    assert not summary.ok
    assert "onmouseover" in summary.failed[0].reason
    assert row_counts(app) == before
