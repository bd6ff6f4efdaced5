"""Helpers for the audit tests: FHIR calls with a token and a request id, and the trail's events
for one request id (read back through the AuditEvent API with an auditor token)."""

from __future__ import annotations

import base64
import uuid

import orjson
import requests

FHIR_JSON = "application/fhir+json"
AUDITOR = "system/AuditEvent.rs"


def rid() -> str:
    return "t-" + uuid.uuid4().hex


def call(method: str, url: str, tok: str | None, body=None, *, request_id: str | None = None,  # noqa: ANN001
         headers: dict | None = None, **kw) -> requests.Response:
    h = {"Accept": FHIR_JSON, **(headers or {})}
    if tok:
        h["Authorization"] = f"Bearer {tok}"
    if request_id:
        h["X-Request-Id"] = request_id
    data = kw.pop("data", None)
    if body is not None:
        data = orjson.dumps(body)
        h.setdefault("Content-Type", FHIR_JSON)
    return requests.request(method, url, data=data, headers=h, **kw)


def events(base: str, auditor: str, request_id: str, **params) -> list[dict]:
    """Every AuditEvent with this request id (newest first), via the auditor's search."""
    out: list[dict] = []
    url = f"{base}/AuditEvent"
    q = {"_count": "200", **params}
    while url:
        r = requests.get(url, params=q, headers={"Authorization": f"Bearer {auditor}", "Accept": FHIR_JSON})
        assert r.status_code == 200, r.text[:500]
        b = r.json()
        for e in b.get("entry", []):
            ev = e["resource"]
            if request_id_of(ev) == request_id:
                out.append(ev)
        url = next((link["url"] for link in b["link"] if link["relation"] == "next"), None)
        q = None
    return out


def request_id_of(ev: dict) -> str | None:
    for ent in ev.get("entity", []):
        if ent.get("type", {}).get("code") == "XrequestId":
            return ent["what"]["identifier"]["value"]
    return None


def subtype(ev: dict) -> str:
    return ev["subtype"][0]["code"]


def patients(ev: dict) -> set[str]:
    return {e["what"]["reference"].split("/", 1)[1] for e in ev.get("entity", [])
            if e.get("role", {}).get("code") == "1"}


def query_of(ev: dict) -> str | None:
    for e in ev.get("entity", []):
        if e.get("role", {}).get("code") == "24":
            return base64.b64decode(e["query"]).decode()
    return None


def target(ev: dict) -> str | None:
    for e in ev.get("entity", []):
        if e.get("role", {}).get("code") == "4":
            what = e["what"]
            return what.get("reference") or what.get("identifier", {}).get("value")
    return None


def detail(ev: dict) -> dict:
    for e in ev.get("entity", []):
        if e.get("type", {}).get("code") == "XrequestId":
            return {d["type"]: d["valueString"] for d in e.get("detail", [])}
    return {}


def agent(ev: dict, code: str) -> dict | None:
    for a in ev["agent"]:
        if any(c["code"] == code for c in a["type"]["coding"]):
            return a
    return None


def client_of(ev: dict) -> str | None:
    a = agent(ev, "110153") or agent(ev, "110150")
    return a["who"].get("identifier", {}).get("value") if a else None


def user_of(ev: dict) -> str | None:
    a = agent(ev, "UserOauthAgent")
    return a["who"].get("reference") if a else None
