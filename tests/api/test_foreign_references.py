"""An absolute reference to another server names that server's resource, never ours.

``https://other.example/fhir/Patient/<id>`` is another system's patient who happens to share an
id with one of ours.  Before app.indexing.extract kept such references by URL only, an
Observation about that person was found by ``subject=Patient/<id>``, sat in our patient's
compartment, followed chains, ``_has``, ``_include``/``_revinclude``, and reached a token scoped to
our patient: another person's results.  References on our own base, relative or absolute, are
ours.  Over real HTTP with real tokens, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid

import orjson
import pytest
import requests

FHIR_JSON = "application/fhir+json"
OTHER = "https://other.example/fhir"


def _ids(bundle: dict, mode: str | None = None) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if "resource" in e and e["resource"]["resourceType"] != "OperationOutcome"
            and (mode is None or e["search"]["mode"] == mode)}


class _Client:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.s = base, requests.Session()
        self.s.headers.update({"Accept": FHIR_JSON, "Authorization": f"Bearer {token}"})

    def get(self, path: str, **params) -> requests.Response:
        return self.s.get(f"{self.base}/{path}", params=params or None,
                          headers={"Prefer": "handling=strict"})

    def search(self, path: str, **params) -> dict:
        r = self.get(path, **params)
        assert r.status_code == 200, r.text[:1000]
        return r.json()

    def put(self, body: dict) -> None:
        r = self.s.put(f"{self.base}/{body['resourceType']}/{body['id']}", data=orjson.dumps(body),
                       headers={"Content-Type": FHIR_JSON})
        assert r.status_code in (200, 201), r.text[:1000]


@pytest.fixture(scope="module")
def w(auth_server, issue_token) -> dict:
    u = uuid.uuid4().hex[:10]
    base = auth_server.base
    admin = _Client(base, issue_token("system/*.cruds", client_id="loader"))
    pid = f"{u}-p"
    admin.put({"resourceType": "Patient", "id": pid, "name": [{"family": f"Ours{u}"}]})

    def obs(oid: str, subject: str, code: str) -> dict:
        return {"resourceType": "Observation", "id": oid, "status": "final",
                "code": {"coding": [{"system": "urn:test:foreign", "code": code}]},
                "subject": {"reference": subject}}

    admin.put(obs(f"{u}-rel", f"Patient/{pid}", f"{u}-ours"))
    admin.put(obs(f"{u}-abs", f"{base}/Patient/{pid}", f"{u}-ours"))
    admin.put(obs(f"{u}-foreign", f"{OTHER}/Patient/{pid}", f"{u}-theirs"))
    return {"u": u, "pid": pid, "base": base, "admin": admin, "issue": issue_token,
            "ours": {f"Observation/{u}-rel", f"Observation/{u}-abs"}, "foreign": f"Observation/{u}-foreign"}


@pytest.mark.parametrize("value", ["Patient/{pid}", "{pid}", "{base}/Patient/{pid}"])
def test_a_search_for_our_patient_finds_only_ours(w, value) -> None:
    q = value.format(pid=w["pid"], base=w["base"])
    got = _ids(w["admin"].search("Observation", subject=q, code=f"urn:test:foreign|{w['u']}-ours,urn:test:foreign|{w['u']}-theirs"))
    assert got == w["ours"]


def test_the_other_servers_url_finds_its_own(w) -> None:
    got = _ids(w["admin"].search("Observation", subject=f"{OTHER}/Patient/{w['pid']}"))
    assert got == {w["foreign"]}


def test_compartment_chain_has_and_includes_stay_ours(w) -> None:
    admin, pid, u = w["admin"], w["pid"], w["u"]
    assert _ids(admin.search(f"Patient/{pid}/Observation")) == w["ours"]
    assert w["foreign"] not in _ids(admin.search(f"Patient/{pid}/*"))
    assert _ids(admin.search("Observation", **{"subject:Patient.name": f"Ours{u}"})) == w["ours"]
    assert _ids(admin.search("Patient", **{"_has:Observation:subject:code": f"urn:test:foreign|{u}-theirs"})) == set()
    assert _ids(admin.search("Patient", **{"_has:Observation:subject:code": f"urn:test:foreign|{u}-ours"})) == {f"Patient/{pid}"}
    inc = admin.search("Observation", _id=f"{u}-foreign", _include="Observation:subject")
    assert _ids(inc, "match") == {w["foreign"]} and _ids(inc, "include") == set()
    rev = admin.search("Patient", _id=pid, _revinclude="Observation:subject")
    assert _ids(rev, "include") == w["ours"]


def test_a_token_for_our_patient_does_not_reach_the_other_servers_patient(w) -> None:
    app = _Client(w["base"], w["issue"]("patient/*.rs", patient=w["pid"]))
    assert _ids(app.search("Observation")) == w["ours"]
    assert app.get(w["foreign"]).status_code in (403, 404)
    for oid in w["ours"]:
        assert app.get(oid).status_code == 200
