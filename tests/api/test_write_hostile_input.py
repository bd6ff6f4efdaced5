"""Hostile input to the WRITE side, over real HTTP on both back ends: never a 500, every refusal a
FHIR JSON OperationOutcome with a status the standard (or docs/decisions) allows, and a refused
write leaves every storage table exactly as it was (no partial write; a failed transaction rolls
back whole).

The cases are a fixed, ordered list (no randomness): create/update bodies (not JSON, wrong JSON
shapes, resourceType games, hostile ids, NUL and lone surrogates, extreme numbers, deep nesting,
huge arrays and strings, duplicate keys, invalid UTF-8, wrong Content-Type, ``meta.versionId``
games, dangling references), conditional create/update/delete/patch with hostile criteria,
hostile ``If-Match`` values, JSON Patch, and transaction/batch Bundles.  Search is covered by
tests/api/test_search_hostile_input.py and is not repeated here.

It runs once per database (module fixture ``outcomes``): every case is sent, the storage row
counts are read before and after each, and server errors are captured from the error logger.
Each test then checks one property over all the answers and lists every violation with the
exact request (a 500 with the exception and its top ``app/`` frames).

What each case allows (``Case.allowed``) is this file's reading of R4 and the decisions:
0001 (ids ``[A-Za-z0-9\\-.]{1,64}``; If-Match mismatch 412), 0003 (missing reference target 422;
foreign types, ``urn:uuid`` outside a Bundle and ``#x`` kept as sent), 0004 (transaction: one
database transaction; several ifNoneExist matches 412; the same resource twice 400; more than
``MAX_BUNDLE_ENTRIES`` entries 413), 0012 (depth 400 ``structure``; body over
``MAX_CONTENT_LENGTH`` 413).  R4 http.html: PUT without ``id``, or an ``id`` that differs from
the URL, is a 400; POST ignores the body ``id``; conditional create/update/delete/patch with
several matches is 412.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
from dataclasses import dataclass, field

import pytest
import requests
from apihelp import SYS, create, observation, patient
from hostilehelp import Capture, crash_detail, outcome_issues, report, storage_counts

FHIR_JSON = "application/fhir+json"
PATCH_JSON = "application/json-patch+json"
TIMEOUT_S = 60
MAX_ENTRIES = 200  # the shared ``app`` fixture's MAX_BUNDLE_ENTRIES

# Allowed status sets
BAD = frozenset({400})
BAD_OR_RULE = frozenset({400, 422})
REF = frozenset({201, 400, 422})  # reference checks: kept as sent (0003) or refused
TOO_BIG = frozenset({201, 400, 413})
PATCH_BAD = frozenset({400, 422})
IF_MATCH_BAD = frozenset({400, 412})


# ---------------------------------------------------------------------------------------------
# What is sent


@dataclass(frozen=True)
class Case:
    label: str
    method: str
    path: str  # relative to the base, already percent-encoded ("" = the base itself)
    body: bytes | None
    allowed: frozenset[int]
    headers: tuple[tuple[str, str], ...] = (("Content-Type", FHIR_JSON),)
    batch: bool = False  # a batch: entry responses are checked too

    def show(self) -> str:
        b = "" if self.body is None else self.body[:120].decode("utf-8", "replace")
        more = f"...[{len(self.body)} bytes]" if self.body is not None and len(self.body) > 120 else ""
        hdrs = {k: (v if len(v) < 60 else v[:40] + f"...[{len(v)}]") for k, v in self.headers
                if k != "Content-Type" or v != FHIR_JSON}
        return f"{self.method} /{self.path} {hdrs or ''} {b}{more}".strip()


def j(doc: object) -> bytes:
    return json.dumps(doc).encode()


def body_case(label: str, method: str, path: str, doc: object, allowed: frozenset[int], **kw) -> Case:
    return Case(label, method, path, doc if isinstance(doc, bytes) else j(doc), allowed, **kw)


def hdr(**extra: str) -> tuple[tuple[str, str], ...]:
    h = {"Content-Type": FHIR_JSON}
    h.update({k.replace("_", "-"): v for k, v in extra.items()})
    return tuple(h.items())


_SEQ = itertools.count(1)


def pat(**extra) -> dict:
    """A valid Patient with an identifier of its own (the server allows one Patient per
    identifier) and a deterministic value."""
    return patient(f"hostile-write-{next(_SEQ)}", **extra)


def obs(subject: str, **extra) -> dict:
    return observation(subject, **extra)


def nested(levels: int) -> dict:
    node: dict = {"url": "urn:leaf", "valueString": "x"}
    for _ in range(levels):
        node = {"url": "urn:nest", "extension": [node]}
    return node


def tx(entries: list, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def post_e(res: dict, full_url: str | None = None, **req) -> dict:
    e = {"resource": res, "request": {"method": "POST", "url": res["resourceType"], **req}}
    if full_url:
        e["fullUrl"] = full_url
    return e


def put_e(res: dict, url: str | None = None, **req) -> dict:
    return {"resource": res, "request": {"method": "PUT", "url": url or f"{res['resourceType']}/{res['id']}", **req}}


def patch_e(url: str, ops: object, raw: str | None = None) -> dict:
    data = raw if raw is not None else base64.b64encode(json.dumps(ops).encode()).decode()
    return {"resource": {"resourceType": "Binary", "contentType": PATCH_JSON, "data": data},
            "request": {"method": "PATCH", "url": url}}


def urn(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


# ---------------------------------------------------------------------------------------------
# The cases (fixed, ordered; ``s`` holds the seeded ids)


def body_cases(s: dict) -> list[Case]:
    v = s["victim"]  # a Patient only ever targeted by writes that should be refused
    vp = f"Patient/{v}"
    c: list[Case] = []

    def add(label, method, path, doc, allowed, **kw):
        c.append(body_case(label, method, path, doc, allowed, **kw))

    for m, p in (("POST", "Patient"), ("PUT", vp)):
        victim = {**pat(), "id": v}  # its own identifier: a POST of it must not claim the victim's
        add("not JSON", m, p, b"resourceType=Patient", BAD)
        add("truncated JSON", m, p, b'{"resourceType": "Patient", "id": ', BAD)
        add("empty body", m, p, b"", BAD)
        add("JSON array", m, p, [victim], BAD)
        add("JSON number", m, p, b"42", BAD)
        add("JSON string", m, p, b'"Patient"', BAD)
        add("JSON null", m, p, b"null", BAD)
        add("{}", m, p, {}, BAD)
        add("missing resourceType", m, p, {k: x for k, x in victim.items() if k != "resourceType"}, BAD)
        add("unknown resourceType", m, p, {**victim, "resourceType": "Hacker"}, BAD)
        add("resourceType not a string", m, p, {**victim, "resourceType": ["Patient"]}, BAD)
        add("resourceType lower case", m, p, {**victim, "resourceType": "patient"}, BAD)
        add("type mismatch with URL", m, p, {**obs(f"Patient/{s['pid']}"), "id": v}, BAD)
        add("unknown element", m, p, {**victim, "hacker": True}, BAD)
        add("NUL in a string", m, p, {**victim, "name": [{"family": "a\x00b"}]}, BAD)
        add("lone surrogate in a string", m, p, {**victim, "name": [{"family": "a\ud800b"}]}, BAD)
        add("lone low surrogate", m, p, {**victim, "name": [{"family": "\udfff"}]}, BAD)
        add("invalid UTF-8 bytes", m, p, j({**victim, "name": [{"family": "FAMILY"}]}).replace(b"FAMILY", b"\xff\xfe\xc0\x80"), BAD)
        add("UTF-8 BOM", m, p, b"\xef\xbb\xbf" + j(victim), frozenset({200, 201, 400}))
        add("deep nesting 200", m, p, {**victim, "extension": [nested(200)]}, BAD)
        add("duplicate key resourceType", m, p,
            b'{"resourceType": "Patient", "resourceType": "Observation", "id": "%s"}' % v.encode(),
            frozenset({400}) if m == "PUT" else frozenset({201, 400}))
        add("duplicate key gender", m, p,
            j({**victim, "gender": "female"})[:-1] + b', "gender": "male"}', frozenset({200, 201, 400}))
    # PUT-specific (R4: no id or a different id in the body is a 400)
    victim = {**pat(), "id": v}
    add("PUT id mismatch", "PUT", vp, {**victim, "id": "other-id"}, BAD)
    add("PUT no id in body", "PUT", vp, {k: x for k, x in victim.items() if k != "id"}, BAD)
    add("PUT id not a string", "PUT", vp, {**victim, "id": 7}, BAD)
    # hostile ids: URL and body agree, so only the id itself is wrong
    for label, raw_url, body_id in (
        ("id with /", "a%2Fb", "a/b"),
        ("id ..", "%2E%2E", ".."),
        ("id %00", "a%00b", "a\x00b"),
        ("id 65 chars", "x" * 65, "x" * 65),
        ("id unicode", "%C3%A9t%C3%A9", "\u00e9t\u00e9"),
        ("id fullwidth digits", "%EF%BC%91%EF%BC%92", "\uff11\uff12"),
        ("id with space", "a%20b", "a b"),
        ("id SQL", "x'%3BDROP%20TABLE%20resource--", "x';DROP TABLE resource--"),
        ("id empty", "%20", " "),
    ):
        # ".." is legal by the R4 id pattern, but [base]/Patient/.. is not a URL a client can use
        # (dot segments are removed by clients): the server refuses ids of dots only.
        allowed = frozenset({400, 404, 405})
        add(label, "PUT", f"Patient/{raw_url}", {**pat(), "id": body_id}, allowed)
    add("id 64 chars (control: legal)", "PUT", "Patient/" + "y" * 64, {**pat(), "id": "y" * 64}, frozenset({201}))
    add("POST hostile body id is ignored", "POST", "Patient", {**pat(), "id": "../../x"}, frozenset({201, 400}))
    add("POST body id 65 chars", "POST", "Patient", {**pat(), "id": "z" * 65}, frozenset({201, 400}))
    # numbers
    q = "Observation"
    base_obs = obs(f"Patient/{s['pid']}")

    def with_value(raw: bytes) -> bytes:
        return j(base_obs).replace(b'"value": 13.2', b'"value": ' + raw)

    add("decimal 1e400", "POST", q, with_value(b"1e400"), frozenset({201, 400}))
    add("decimal -1e400", "POST", q, with_value(b"-1e400"), frozenset({201, 400}))
    add("decimal 1e-400", "POST", q, with_value(b"1e-400"), frozenset({201, 400}))
    add("decimal -0", "POST", q, with_value(b"-0"), frozenset({201, 400}))
    add("decimal -0.0", "POST", q, with_value(b"-0.0"), frozenset({201, 400}))
    add("decimal 1000 digits", "POST", q, with_value(b"1." + b"3" * 1000), frozenset({201, 400}))
    add("decimal 400 integer digits", "POST", q, with_value(b"9" * 400), frozenset({201, 400}))
    add("decimal 20 integer digits", "POST", q, with_value(b"9" * 20), frozenset({201, 400}))
    add("decimal NaN", "POST", q, with_value(b"NaN"), BAD)
    add("decimal Infinity", "POST", q, with_value(b"Infinity"), BAD)
    add("decimal as string", "POST", q, with_value(b'"13.2"'), BAD)
    vi = {**base_obs}
    del vi["valueQuantity"]
    add("integer 2**31 (FHIR integer is 32-bit)", "POST", q, {**vi, "valueInteger": 2**31}, BAD)
    add("integer 2**64", "POST", q, {**vi, "valueInteger": 2**64}, BAD)
    add("integer 10**400", "POST", q, j({**vi, "valueInteger": 0}).replace(b'"valueInteger": 0', b'"valueInteger": 1' + b"0" * 400), BAD)
    add("integer 1.5", "POST", q, {**vi, "valueInteger": 1.5}, BAD)
    add("integer true", "POST", q, {**vi, "valueInteger": True}, BAD)
    add("referenceRange huge low", "POST", q,
        {**base_obs, "referenceRange": [{"low": {"value": 1e308, "unit": "g/dL"}}]}, frozenset({201, 400}))
    # sizes
    add("100k given names", "POST", "Patient",
        {**pat(), "name": [{"family": "Big", "given": [f"g{i}" for i in range(100_000)]}]}, TOO_BIG)
    add("100k identifiers", "POST", "Patient",
        {**pat(), "identifier": [{"system": SYS, "value": f"big-{i}"} for i in range(100_000)]}, TOO_BIG)
    add("5 MB family name", "POST", "Patient", {**pat(), "name": [{"family": "F" * 5_000_000}]}, TOO_BIG)
    add("5 MB identifier value", "POST", "Patient",
        {**pat(), "identifier": [{"system": SYS, "value": "I" * 5_000_000}]}, TOO_BIG)
    add("5 MB valueString", "POST", q, {**vi, "valueString": "S" * 5_000_000}, TOO_BIG)
    add("5 MB code", "POST", q, {**base_obs, "code": {"coding": [{"system": "http://loinc.org", "code": "C" * 5_000_000}]}},
        TOO_BIG)
    add("5 MB reference", "POST", q, obs("Patient/" + "r" * 5_000_000), frozenset({400, 413, 422}))
    # wrong Content-Type
    for ctype in ("text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data", ""):
        c.append(Case(f"Content-Type {ctype!r}", "POST", "Patient", j(pat()), frozenset({400, 415}),
                      headers=(("Content-Type", ctype),)))
    c.append(Case("Content-Type fhir+json; charset=latin-1", "POST", "Patient", j(pat()), frozenset({201, 400, 415}),
                  headers=(("Content-Type", "application/fhir+json; charset=latin-1"),)))
    # meta games (0001: the server overwrites versionId/lastUpdated)
    add("meta.versionId 999 on POST", "POST", "Patient", {**pat(), "meta": {"versionId": "999"}}, frozenset({201, 400}))
    add("meta.versionId -1 on PUT", "PUT", vp, {**victim, "meta": {"versionId": "-1"}}, frozenset({200, 201, 400}))
    add("meta.versionId object", "PUT", vp, {**victim, "meta": {"versionId": {"x": 1}}}, BAD)
    add("meta.lastUpdated year 9999", "POST", "Patient", {**pat(), "meta": {"lastUpdated": "9999-12-31T23:59:59Z"}},
        frozenset({201, 400}))
    add("meta.lastUpdated garbage", "POST", "Patient", {**pat(), "meta": {"lastUpdated": "yesterday"}}, BAD)
    add("meta not an object", "POST", "Patient", {**pat(), "meta": "x"}, BAD)
    # references (0003)
    add("reference to missing Patient", "POST", q, obs("Patient/does-not-exist"), frozenset({422}))
    add("reference to deleted Patient", "POST", q, obs(f"Patient/{s['deleted']}"), frozenset({422}))
    add("reference to absent own-base URL", "POST", q, obs(f"{s['base']}/Patient/nope"), frozenset({422}))
    add("reference to a disabled type", "POST", q, obs("Condition/x"), REF)
    add("subject of a disallowed type (Organization)", "POST", q, obs(f"Organization/{s['org']}"), REF)
    add("reference to an unknown type", "POST", q, obs("Hacker/x"), REF)
    add("urn:uuid outside a Bundle", "POST", q, obs(urn(999)), REF)
    add("contained #x missing", "POST", q, obs("#x"), REF)
    add("contained #x present", "POST", q,
        {**obs("#p1"), "contained": [{"resourceType": "Patient", "id": "p1"}]}, frozenset({201}))
    add("contained nested contained", "POST", q,
        {**obs("#p1"), "contained": [{"resourceType": "Patient", "id": "p1",
                                      "contained": [{"resourceType": "Patient", "id": "p2"}]}]}, BAD_OR_RULE)
    add("reference Patient/", "POST", q, obs("Patient/"), frozenset({400, 422}))
    add("reference ../Patient/x", "POST", q, obs(f"Patient/../Patient/{s['pid']}"), frozenset({400, 422}))
    add("reference with _history/abc", "POST", q, obs(f"Patient/{s['pid']}/_history/abc"), frozenset({201, 400, 422}))
    add("reference with NUL", "POST", q, obs("Patient/a\x00"), BAD)
    add("reference not a string", "POST", q, {**obs(None), "subject": {"reference": 5}}, BAD)
    add("reference SQL", "POST", q, obs("Patient/x' OR '1'='1"), frozenset({400, 422}))
    return c


def conditional_cases(s: dict) -> list[Case]:
    many = "family=Manyfam"
    c: list[Case] = []
    sql = ["identifier=x' OR '1'='1", "identifier=x%27%3B%20DELETE%20FROM%20resource%3B--",
           "_id=x') OR 1=1--", "name=%25", "name=_"]
    # conditional create: If-None-Exist
    for label, crit, allowed in (
        ("matching many", many, frozenset({412})),
        ("unknown parameter", "hacker=1", frozenset({400, 412})),
        ("empty", "", frozenset({201, 400})),
        ("only &", "&&&", frozenset({201, 400})),
        ("just a name", "identifier", frozenset({400, 412})),
        ("URL form", f"Patient?{many}", frozenset({400, 412})),
        ("absolute URL form", f"{s['base']}/Patient?{many}", frozenset({400, 412})),
        ("result parameter only", "_count=1", frozenset({400, 412})),
        ("_sort only", "_sort=name", frozenset({400, 412})),
        ("NUL", "identifier=a%00b", frozenset({201, 400})),
        ("raw NUL", "identifier=a\x00b", frozenset({201, 400})),
        ("10k value", "identifier=" + "v" * 10_000, frozenset({201, 400})),
        ("chain matching one", "organization.name=Acme", frozenset({200, 400})),
        ("_lastUpdated everything", "_lastUpdated=gt1900", frozenset({412})),
        *((f"SQL {i}", x, frozenset({201, 400})) for i, x in enumerate(sql)),
    ):
        c.append(Case(f"If-None-Exist {label}", "POST", "Patient", j(pat()), allowed,
                      headers=hdr(If_None_Exist=crit)))
    # conditional update / delete / patch on query strings
    for label, crit, upd, dele in (
        ("matching many", many, {412}, {412}),
        ("everything", "_lastUpdated=gt1900", {412}, {412}),
        ("unknown parameter", "hacker=1", {400, 412}, {400, 412}),
        ("empty value", "identifier=", {400}, {400, 404, 204}),
        ("only &", "&", {400}, {400}),
        ("result parameter only", "_count=1", {400, 412}, {400, 412}),
        ("_summary only", "_summary=count", {400, 412}, {400, 412}),
        ("bad modifier", "identifier:hacker=x", {400}, {400}),
        ("NUL", "identifier=a%00b", {201, 400}, {200, 204, 400, 404}),
        ("invalid UTF-8", "identifier=%ff%fe", {201, 400}, {200, 204, 400, 404}),
        *((f"SQL {i}", x, {201, 400}, {200, 204, 400, 404}) for i, x in enumerate(sql)),
    ):
        c.append(Case(f"conditional PUT {label}", "PUT", f"Patient?{crit}", j(pat()), frozenset(upd)))
        c.append(Case(f"conditional DELETE {label}", "DELETE", f"Patient?{crit}", None, frozenset(dele),
                      headers=()))
        c.append(Case(f"conditional PATCH {label}", "PATCH", f"Patient?{crit}",
                      j([{"op": "replace", "path": "/gender", "value": "male"}]),
                      frozenset(dele - {200, 204} | {404} if dele != {412} else dele), headers=hdr(Content_Type=PATCH_JSON)))
    c.append(Case("conditional PUT body id differs from the one match", "PUT", f"Patient?_id={s['pid']}",
                  j({**pat(), "id": "another"}), frozenset({400, 409, 412})))
    c.append(Case("conditional PUT no criteria", "PUT", "Patient", j(pat()), frozenset({400, 405})))
    c.append(Case("conditional DELETE no criteria", "DELETE", "Patient", None, frozenset({400, 405}), headers=()))
    c.append(Case("conditional DELETE of a referenced resource", "DELETE", f"Patient?_id={s['pid']}", None,
                  frozenset({409}), headers=()))
    return c


def if_match_cases(s: dict) -> list[Case]:
    t = s["target"]  # a Patient at version 1; no hostile If-Match may change it
    body = j({**pat(), "id": t, "gender": "male"})
    patch_ops = j([{"op": "replace", "path": "/gender", "value": "male"}])
    c: list[Case] = []
    for label, value, allowed in (
        ('W/"abc"', 'W/"abc"', IF_MATCH_BAD),
        ('"-1"', '"-1"', IF_MATCH_BAD),
        ('W/"0"', 'W/"0"', frozenset({412})),
        ('W/"2" (future)', 'W/"2"', frozenset({412})),
        ("1000 digits", 'W/"' + "9" * 1000 + '"', IF_MATCH_BAD),
        ("2**63", f'W/"{2**63}"', IF_MATCH_BAD),
        ("2**31", f'W/"{2**31}"', IF_MATCH_BAD),
        ("1000 chars", "x" * 1000, IF_MATCH_BAD),
        ("list", 'W/"5", W/"6"', IF_MATCH_BAD),
        ("W/ only", "W/", IF_MATCH_BAD),
        ('""', '""', IF_MATCH_BAD),
        ("superscript two (isdigit, not int)", 'W/"\u00b2"', IF_MATCH_BAD),
        ("one-half (isnumeric)", 'W/"\u00bd"', IF_MATCH_BAD),
        ("version with space", 'W/" 5"', IF_MATCH_BAD),
        ("SQL", "W/\"1' OR '1'='1\"", IF_MATCH_BAD),
    ):
        c.append(Case(f"If-Match {label} on PUT", "PUT", f"Patient/{t}", body, allowed, headers=hdr(If_Match=value)))
        c.append(Case(f"If-Match {label} on PATCH", "PATCH", f"Patient/{t}", patch_ops, allowed,
                      headers=hdr(Content_Type=PATCH_JSON, If_Match=value)))
        c.append(Case(f"If-Match {label} on DELETE", "DELETE", f"Patient/{t}", None, allowed,
                      headers=(("If-Match", value),)))
    # on the victim, with content it may accept: an empty If-Match is no condition, "*" any version
    v = s["victim"]
    same = j({**pat(), "id": v})
    c.append(Case("If-Match empty on PUT", "PUT", f"Patient/{v}", same, frozenset({200, 201, 400}), headers=hdr(If_Match="")))
    c.append(Case("If-Match * on PUT", "PUT", f"Patient/{v}", same, frozenset({200, 201, 400, 412}),
                  headers=hdr(If_Match="*")))
    return c


def patch_cases(s: dict) -> list[Case]:
    t = s["patchme"]
    p = f"Patient/{t}"
    ph = hdr(Content_Type=PATCH_JSON)
    c: list[Case] = []

    def add(label, ops, allowed, path=p, headers=ph):
        c.append(Case(f"PATCH {label}", "PATCH", path, ops if isinstance(ops, bytes) else j(ops), frozenset(allowed),
                      headers=headers))

    add("not JSON", b"[{", PATCH_BAD)
    add("object, not array", {"op": "replace", "path": "/gender", "value": "male"}, PATCH_BAD)
    add("array of numbers", [1, 2], PATCH_BAD)
    add("unknown op", [{"op": "hack", "path": "/gender"}], PATCH_BAD)
    add("missing op", [{"path": "/gender", "value": "male"}], PATCH_BAD)
    add("missing path", [{"op": "replace", "value": "male"}], PATCH_BAD)
    add("path without /", [{"op": "replace", "path": "gender", "value": "male"}], PATCH_BAD)
    add("replace missing value", [{"op": "replace", "path": "/gender"}], PATCH_BAD)
    add("replace /id", [{"op": "replace", "path": "/id", "value": "other"}], PATCH_BAD)
    add("remove /id", [{"op": "remove", "path": "/id"}], PATCH_BAD)
    add("replace /resourceType", [{"op": "replace", "path": "/resourceType", "value": "Observation"}], PATCH_BAD)
    add("remove /resourceType", [{"op": "remove", "path": "/resourceType"}], PATCH_BAD)
    add("replace /meta/versionId", [{"op": "replace", "path": "/meta/versionId", "value": "99"}], {200, 400, 422})
    add("remove /meta", [{"op": "remove", "path": "/meta"}], {200, 400, 422})
    add("replace / (whole doc) with array", [{"op": "replace", "path": "", "value": []}], PATCH_BAD)
    add("replace / with another type", [{"op": "replace", "path": "", "value": {"resourceType": "Observation"}}],
        PATCH_BAD)
    add("move to its own child", [{"op": "move", "from": "/name", "path": "/name/0"}], PATCH_BAD)
    add("move to itself", [{"op": "move", "from": "/name/0", "path": "/name/0"}], {200, 400, 422})
    add("move from missing", [{"op": "move", "from": "/nothing", "path": "/gender"}], PATCH_BAD)
    add("copy into id", [{"op": "copy", "from": "/gender", "path": "/id"}], PATCH_BAD)
    add("huge index", [{"op": "replace", "path": "/name/99999999999999999999999", "value": {"family": "x"}}], PATCH_BAD)
    add("index 2**63", [{"op": "add", "path": f"/name/{2**63}", "value": {"family": "x"}}], PATCH_BAD)
    add("negative index", [{"op": "add", "path": "/name/-1", "value": {"family": "x"}}], PATCH_BAD)
    add("leading-zero index", [{"op": "add", "path": "/name/01", "value": {"family": "x"}}], PATCH_BAD)
    add("test fails", [{"op": "test", "path": "/gender", "value": "other"},
                       {"op": "replace", "path": "/gender", "value": "male"}], {400, 409, 412, 422})
    add("test fails after a good op", [{"op": "replace", "path": "/gender", "value": "male"},
                                       {"op": "test", "path": "/gender", "value": "female"}], {400, 409, 412, 422})
    add("result invalid: gender 123", [{"op": "replace", "path": "/gender", "value": 123}], PATCH_BAD)
    add("result invalid: unknown element", [{"op": "add", "path": "/hacker", "value": 1}], PATCH_BAD)
    add("result invalid: NUL", [{"op": "add", "path": "/name/0/family", "value": "a\x00b"}], PATCH_BAD)
    add("result invalid: lone surrogate", [{"op": "add", "path": "/name/0/family", "value": "\ud800"}], PATCH_BAD)
    add("result invalid: missing reference", [{"op": "add", "path": "/managingOrganization",
                                               "value": {"reference": "Organization/none"}}], {422})
    add("result too deep", [{"op": "add", "path": "/extension", "value": [nested(150)]}], PATCH_BAD)
    add("~ escapes", [{"op": "add", "path": "/name/0/~1~0x", "value": "x"}], PATCH_BAD)
    add("add 100k items", [{"op": "add", "path": "/name/0/given", "value": [f"g{i}" for i in range(100_000)]}],
        {200, 400, 413, 422})
    add("wrong Content-Type (fhir+json)", [{"op": "replace", "path": "/gender", "value": "male"}], {400, 415},
        headers=hdr())
    add("FHIRPath Parameters body", {"resourceType": "Parameters", "parameter": []}, {400, 415},
        headers=hdr())
    add("unknown resource", [{"op": "replace", "path": "/gender", "value": "male"}], {404}, path="Patient/nope")
    add("deleted resource", [{"op": "replace", "path": "/gender", "value": "male"}], {404, 410},
        path=f"Patient/{s['deleted']}")
    add("unknown type", [{"op": "replace", "path": "/gender", "value": "male"}], {400, 404}, path="Hacker/x")
    return c


def bundle_cases(s: dict) -> list[Case]:
    pid = s["pid"]
    c: list[Case] = []

    def add(label, bundle, allowed, batch=False):
        kind = "batch" if batch else "transaction"
        if isinstance(bundle, dict) and bundle.get("type") == "transaction" and batch:
            bundle = {**bundle, "type": "batch"}
        c.append(body_case(f"{kind}: {label}", "POST", "", bundle, frozenset(allowed), batch=batch))

    def p(n: int, **extra) -> dict:
        return patient(f"tx-{n}-{next(_SEQ)}", **extra)

    for batch in (False, True):
        t = s["batchme"] if batch else s["target"]  # batch entries really run: keep target-1 untouched
        ok = {200} if batch else None  # a batch answers 200 with per-entry statuses

        def allowed(tx_statuses, _ok=ok):
            return _ok or tx_statuses

        add("over the entry limit", tx([post_e(p(i)) for i in range(MAX_ENTRIES + 1)]), {413}, batch)
        add("failing in the middle (invalid resource)",
            tx([post_e(p(1)), put_e({**pat(), "id": t, "gender": "male"}), post_e(p(2, bogus=True)), post_e(p(3))]),
            allowed({400}), batch)
        add("failing in the middle (missing reference)",
            tx([post_e(p(4), urn(1)), post_e(obs(urn(1))), post_e(obs("Patient/none")), post_e(p(5))]),
            allowed({422}), batch)
        add("failing in the middle (If-Match)",
            tx([post_e(p(6)), put_e({**pat(), "id": t, "gender": "male"}, ifMatch='W/"7"'), post_e(p(7))]),
            allowed({412}), batch)
        add("failing in the middle (hostile If-Match)",
            tx([post_e(p(6)), put_e({**pat(), "id": t, "gender": "male"}, ifMatch='W/"' + "9" * 1000 + '"')]),
            allowed({400, 412}), batch)
        # NUL and lone surrogates make the whole body unreadable: 400 even for a batch
        add("failing in the middle (NUL)",
            tx([post_e(p(8)), post_e(p(9, name=[{"family": "a\x00b"}]))]), allowed({400}) | {400}, batch)
        add("failing in the middle (lone surrogate)",
            tx([post_e(p(8)), post_e(p(9, name=[{"family": "\ud800"}]))]), allowed({400}) | {400}, batch)
        for label, req in (("ifMatch superscript two", {"ifMatch": 'W/"\u00b2"'}), ("ifMatch a number", {"ifMatch": 5}),
                           ("ifMatch a list", {"ifMatch": ['W/"1"']}), ("ifNoneExist a number", {"ifNoneExist": 5}),
                           ("ifNoneExist an object", {"ifNoneExist": {"a": 1}}), ("ifNoneExist unknown param", {"ifNoneExist": "hacker=1"})):
            e2 = post_e(p(45)) if "NoneExist" in label else put_e({**pat(), "id": t, "gender": "male"})
            e2["request"].update(req)
            add(f"failing in the middle ({label})", tx([post_e(p(46)), e2]), allowed({400, 412}), batch)
        add("failing in the middle (5 MB identifier)",
            tx([post_e(p(10)), post_e({**p(11), "identifier": [{"system": SYS, "value": "I" * 5_000_000}]}),
                {"request": {"method": "DELETE", "url": "Patient/none"}}, post_e(p(12, bogus=1))]),
            allowed({400}), batch)
        add("failing in the middle (conditional many)",
            tx([post_e(p(13)), post_e(p(14), ifNoneExist="family=Manyfam")]), allowed({412}), batch)
        add("failing in the middle (unknown ifNoneExist param)",
            tx([post_e(p(13)), post_e(p(14), ifNoneExist="hacker=1")]), allowed({400, 412}), batch)
        add("failing in the middle (conditional PUT SQL)",
            tx([post_e(p(15)), put_e(p(16), url="Patient?identifier=x' OR '1'='1"), post_e(p(17, bogus=1))]),
            allowed({400}), batch)
        add("failing in the middle (bad patch)",
            tx([post_e(p(18)), patch_e(f"Patient/{t}", [{"op": "replace", "path": "/id", "value": "x"}])]),
            allowed({400, 422}), batch)
        add("failing in the middle (patch not base64)",
            tx([post_e(p(18)), patch_e(f"Patient/{t}", None, raw="%%%not base64%%%")]), allowed({400, 422}), batch)
        add("failing in the middle (patch test op)",
            tx([post_e(p(18)), patch_e(f"Patient/{t}", [{"op": "test", "path": "/gender", "value": "x"}])]),
            allowed({400, 409, 412, 422}), batch)
        add("failing at the end (delete referenced)",
            tx([post_e(p(19)), {"request": {"method": "DELETE", "url": f"Patient/{pid}"}}]), allowed({409}), batch)
        add("urn:uuid not in bundle", tx([post_e(p(20)), post_e(obs(urn(404)))]), allowed({400, 404, 409, 422}), batch)
        add("circular urn:uuid (Observation hasMember)",
            tx([post_e({**obs(f"Patient/{pid}"), "hasMember": [{"reference": urn(3)}]}, urn(2)),
                post_e({**obs(f"Patient/{pid}"), "hasMember": [{"reference": urn(2)}]}, urn(3))]), {200}, batch)
        add("self-referencing urn:uuid",
            tx([post_e({**obs(f"Patient/{pid}"), "hasMember": [{"reference": urn(5)}]}, urn(5))]), {200}, batch)
        add("duplicate fullUrl", tx([post_e(p(21), urn(6)), post_e(p(22), urn(6)), post_e(obs(urn(6)))]),
            allowed({400}), batch)
        add("DELETE + PUT of the same resource",
            tx([{"request": {"method": "DELETE", "url": f"Patient/{t}"}}, put_e({**pat(), "id": t, "gender": "male"})]),
            allowed({400}), batch)
        add("PUT twice the same resource",
            tx([put_e({**pat(), "id": t, "gender": "male"}), put_e({**pat(), "id": t, "gender": "other"})]),
            allowed({400}), batch)
        for url in ("", "/", "http://evil.example/Patient", "Patient/../Observation", "Patient/a/b/c", "metadata",
                    "$export", "Hacker", "Patient/%00", "Patient/" + "x" * 65, "Observation"):
            add(f"bad POST request.url {url[:30]!r}", tx([post_e(p(23)), {**post_e(p(24)), "request": {"method": "POST", "url": url}}]),
                allowed({400, 404}), batch)
        for method in ("FOO", "post", "", None, 5, "CONNECT", "OPTIONS"):
            req = {"url": "Patient"} if method is None else {"method": method, "url": "Patient"}
            add(f"bad request.method {method!r}", tx([post_e(p(25)), {"resource": p(26), "request": req}]),
                allowed({400, 405}), batch)
        add("entry without request", tx([post_e(p(27)), {"resource": p(28)}]), allowed({400}), batch)
        add("entry not an object", tx([post_e(p(27)), "Patient"]), {200, 400} if batch else {400}, batch)
        add("entry null", tx([post_e(p(27)), None]), {200, 400} if batch else {400}, batch)
        add("PUT url id differs from resource id", tx([post_e(p(29)), put_e({**pat(), "id": t}, url="Patient/zzz")]),
            allowed({400}), batch)
        add("resource type differs from url", tx([post_e(p(29)), {**post_e(p(30)), "request": {"method": "POST", "url": "Observation"}}]),
            allowed({400}), batch)
        add("nested transaction Bundle", tx([post_e(p(31)), post_e(tx([post_e(p(32))]))]), allowed({400, 404, 422}), batch)
        add("nested Bundle as PUT", tx([put_e({**tx([post_e(p(33))]), "id": "b1"})]), allowed({400, 404, 422}), batch)
        add("deep nesting in an entry", tx([post_e(p(34)), post_e(p(35, extension=[nested(150)]))]), {400}, batch)
    # two entries creating the same conditional resource: either refused, or exactly one created
    same = "family=Samecond"
    add("two entries, same ifNoneExist",
        tx([post_e(pat(name=[{"family": "Samecond"}]), ifNoneExist=same),
            post_e(pat(name=[{"family": "Samecond"}]), ifNoneExist=same)]),
        {200, 400, 409, 412, 422})
    add("two conditional PUTs, same criteria",
        tx([put_e(pat(name=[{"family": "Sameput"}]), url="Patient?family=Sameput"),
            put_e(pat(name=[{"family": "Sameput"}]), url="Patient?family=Sameput")]), {200, 400, 409, 412, 422})
    add("wrong Bundle.type document", {**tx([post_e(p(40))]), "type": "document"}, {400, 422})
    add("Bundle.type batch-response", {**tx([post_e(p(41))]), "type": "batch-response"}, {400, 422})
    add("no Bundle.type", {"resourceType": "Bundle", "entry": [post_e(p(42))]}, {400})
    add("entry is an object", {"resourceType": "Bundle", "type": "transaction", "entry": post_e(p(43))}, {400})
    add("not a Bundle at the base", pat(), {400, 404, 405, 422})
    c.append(body_case("Bundle POSTed to /Bundle", "POST", "Bundle", tx([post_e(p(44))]), frozenset({400, 404, 405, 422})))
    return c


def all_cases(s: dict) -> list[Case]:
    global _SEQ
    _SEQ = itertools.count(1)  # the same values on every database
    return body_cases(s) + conditional_cases(s) + if_match_cases(s) + patch_cases(s) + bundle_cases(s)


# ---------------------------------------------------------------------------------------------
# Running them


@dataclass
class Answer:
    case: Case
    status: int | None
    body: object = None
    ctype: str = ""
    error: str = ""
    seconds: float = 0.0
    changed: dict = field(default_factory=dict)


def _send(http, base: str, case: Case) -> Answer:
    url = f"{base}/{case.path}" if case.path else base
    req = http.prepare_request(requests.Request(case.method, url, headers=dict(case.headers), data=case.body))
    req.url = url  # as built: requests would re-quote raw escapes
    if case.body is None:
        req.headers.pop("Content-Type", None)
    t0 = time.perf_counter()
    try:
        r = http.send(req, timeout=TIMEOUT_S)
    except requests.RequestException as e:
        return Answer(case, None, error=f"{type(e).__name__}: {e}"[:300], seconds=time.perf_counter() - t0)
    try:
        body = r.json()
    except ValueError:
        body = None
    return Answer(case, r.status_code, body, r.headers.get("Content-Type", ""), seconds=time.perf_counter() - t0)


@pytest.fixture(scope="module")
def seeded(http, base) -> dict:
    org = create(http, base, {"resourceType": "Organization", "name": "Acme"})["id"]
    pid = create(http, base, patient("seed-1", managingOrganization={"reference": f"Organization/{org}"}))["id"]
    create(http, base, observation(f"Patient/{pid}"))
    for _ in range(3):
        create(http, base, patient(name=[{"family": "Manyfam"}]))
    deleted = create(http, base, patient("deleted"))["id"]
    assert http.delete(f"{base}/Patient/{deleted}").status_code in (200, 204)
    for rid in ("victim-1", "target-1", "patchme-1", "batchme-1"):
        r = http.put(f"{base}/Patient/{rid}", json={**patient(rid), "id": rid},
                     headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 201, r.text
    return {"org": org, "pid": pid, "deleted": deleted, "victim": "victim-1", "target": "target-1",
            "patchme": "patchme-1", "batchme": "batchme-1", "base": base}


@pytest.fixture(scope="module")
def outcomes(app, http, base, seeded, database_url):
    cases = all_cases(seeded)
    cap = Capture()
    errlog = logging.getLogger("results_repo.errors")
    propagate = errlog.propagate
    errlog.addHandler(cap)
    errlog.propagate = False
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    answers: list[Answer] = []
    t0 = time.perf_counter()
    try:
        for case in cases:
            before = storage_counts(app)
            a = _send(http, base, case)
            after = storage_counts(app)
            a.changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            answers.append(a)
    finally:
        werkzeug_log.setLevel(werkzeug_level)
        errlog.removeHandler(cap)
        errlog.propagate = propagate
    elapsed = time.perf_counter() - t0
    targets = {rid: http.get(f"{base}/Patient/{rid}").json() for rid in ("victim-1", "target-1")}
    same = {fam: len(http.get(f"{base}/Patient", params={"family": fam}).json().get("entry", []))
            for fam in ("Samecond", "Sameput")}
    backend = database_url.split(":", 1)[0]
    statuses: dict[int | None, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    slowest = max(answers, key=lambda a: a.seconds)
    print(f"\n[hostile write] {backend}: {len(answers)} requests in {elapsed:.1f} s; statuses {statuses}; "
          f"slowest {slowest.seconds:.2f} s: {slowest.case.label}")
    return {"answers": answers, "capture": cap, "targets": targets, "same": same}


# ---------------------------------------------------------------------------------------------
# The checks


def test_no_500_and_every_refusal_is_an_outcome(outcomes):
    cap = outcomes["capture"]
    bad = []
    for a in outcomes["answers"]:
        label = f"[{a.case.label}]"
        if a.status is None:
            bad.append((f"no answer: {a.error[:150]} {label}", a.case.show()))
        elif a.status >= 500:
            bad.append((f"{a.status} {label} {crash_detail(a.body, cap)}", a.case.show()))
        elif a.status >= 400 and (not a.ctype.startswith(FHIR_JSON) or not outcome_issues(a.body)):
            bad.append((f"{a.status} without a FHIR JSON OperationOutcome ({a.ctype}) {label}", a.case.show()))
        if a.case.batch and isinstance(a.body, dict) and a.body.get("resourceType") == "Bundle":
            for i, e in enumerate(a.body.get("entry", [])):
                st = str(e.get("response", {}).get("status", ""))
                if st.startswith("5"):
                    outcome = e.get("response", {}).get("outcome")
                    bad.append((f"batch entry {i} answered {st} {label} {crash_detail(outcome, cap)}", a.case.show()))
    assert not bad, report("500s, hangs or refusals that are not OperationOutcomes", bad)


def test_refused_writes_change_nothing(outcomes):
    bad = []
    for a in outcomes["answers"]:
        if a.status is not None and a.status >= 400 and a.changed:
            bad.append((f"{a.status} but rows changed {a.changed} [{a.case.label}]", a.case.show()))
        if a.case.batch and isinstance(a.body, dict) and a.body.get("resourceType") == "Bundle":
            ok = sum(1 for e in a.body.get("entry", []) if str(e.get("response", {}).get("status", "")).startswith("2"))
            if ok == 0 and a.changed:
                bad.append((f"batch with no successful entry changed rows {a.changed} [{a.case.label}]", a.case.show()))
    assert not bad, report("Partial writes", bad)


def test_status_is_one_the_standard_allows(outcomes):
    bad = []
    for a in outcomes["answers"]:
        if a.status is not None and a.status < 500 and a.status not in a.case.allowed:
            first = (outcome_issues(a.body) or [{}])[0]
            why = f"{first.get('code', '')}: {str(first.get('diagnostics', ''))[:140]}" if first else ""
            bad.append((f"{a.status}, allowed {sorted(a.case.allowed)} [{a.case.label}] {why}", a.case.show()))
    assert not bad, report("Statuses outside the allowed set", bad)


def test_refused_writes_left_the_targets_alone(outcomes):
    """``victim-1`` is only ever sent writes that are refused or, where R4 allows acceptance, the
    same content; ``target-1`` only hostile If-Match, failing transactions and refused patches."""
    victim, target = outcomes["targets"]["victim-1"], outcomes["targets"]["target-1"]
    assert victim.get("resourceType") == "Patient", victim
    assert target.get("resourceType") == "Patient", target
    assert target.get("gender") == "female", target
    assert target["meta"]["versionId"] == "1", target


def test_one_conditional_resource_per_criteria(outcomes):
    """Two entries of one transaction creating the same conditional resource must not leave two
    resources that both match the criteria (conditional create would then be 412 forever)."""
    assert all(n <= 1 for n in outcomes["same"].values()), outcomes["same"]
