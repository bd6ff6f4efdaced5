"""An ``audit_event`` row -> AuditEvent JSON (R4), in the shape of IHE BALP, when it is read.

Two views: the auditor's (everything recorded) and a patient's own (``for_patients``): only the
entities that are that patient, no query (it may name other patients), no network address, token
id or scopes.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any

import orjson

from app.audit.events import ACT_REASON, DCM, OUTCOME_TEXT, SUBTYPES, TYPES
from app.fhir.jsonutil import instant

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
USER_AGENT = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CLIENT_ID_SYSTEM = "urn:ietf:params:oauth:client-id"
_REF = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(/_history/\d+)?$")

# (subtype, with patient) -> BALP profile, claimed only for successes (BALP fixes outcome 0)
_PROFILES = {
    "read": "Read", "vread": "Read", "create": "Create", "update": "Update", "patch": "Update",
    "delete": "Delete", "search-type": "Query", "search-system": "Query",
}


def _coding(system: str, code: str, display: str | None = None) -> dict:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _profile(row: Any, n_patients: int) -> str | None:
    base = _PROFILES.get(row.subtype)
    if row.type != "rest" or row.outcome != 0 or base is None:
        return None
    # BALP's Patient* profiles carry exactly one patient entity
    return BALP + ("Patient" + base if n_patients == 1 else base)


def render(row: Any, patients: list[str], base_url: str, for_patients: set[str] | None = None) -> dict:
    """``row``: an ``audit_event`` row; ``patients``: its linked patient ids."""
    recorded: datetime = row.recorded
    redacted = for_patients is not None
    if redacted:
        patients = [p for p in patients if p in for_patients]
    detail = orjson.loads(row.detail) if row.detail else {}
    tsys, tdisplay = TYPES.get(row.type, (DCM, row.type))
    ssys, sdisplay = SUBTYPES.get(row.subtype, SUBTYPES["custom"])
    ev: dict = {"resourceType": "AuditEvent", "id": str(row.id), "meta": {"lastUpdated": instant(recorded)}}
    profile = _profile(row, len(patients))
    if profile:
        ev["meta"]["profile"] = [profile]
    ev["type"] = _coding(tsys, row.type, tdisplay)
    ev["subtype"] = [_coding(ssys, row.subtype, sdisplay)]
    ev["action"] = row.action
    ev["recorded"] = instant(recorded)
    ev["outcome"] = str(row.outcome)
    desc = detail.get("description")
    ev["outcomeDesc"] = (f"HTTP {row.status}" if row.status else OUTCOME_TEXT.get(row.outcome, "")) + (
        f": {desc}" if desc else "")
    if row.purpose:
        ev["purposeOfEvent"] = [{"coding": [_coding(ACT_REASON, row.purpose)]}]
    ev["agent"] = _agents(row, base_url, redacted)
    ev["source"] = {
        "site": base_url,
        "observer": {"display": "results-repo"},
        "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
    }
    ev["entity"] = _entities(row, patients, detail, for_patients)
    return ev


def _agents(row: Any, base_url: str, redacted: bool) -> list[dict]:
    agents = []
    token_event = row.type == "110114"
    has_user = bool(row.fhir_user or row.username or row.token_id)
    if has_user:
        user: dict = {"type": {"coding": [_coding(USER_AGENT, "UserOauthAgent", "User OAuth Agent participant"),
                                          _coding(PARTICIPATION, "IRCP", "information recipient")]}}
        if row.fhir_user:
            user["who"] = {"reference": row.fhir_user}
        elif row.username:
            user["who"] = {"display": row.username}
        else:  # a backend service: the client is the highest agent responsible
            user["who"] = {"identifier": {"system": CLIENT_ID_SYSTEM, "value": row.client_id}}
        if row.username and not redacted:
            user["name"] = row.username
        user["requestor"] = True
        if row.scope and not redacted:
            user["role"] = [{"text": row.scope}]  # the scopes the access token granted
        if row.token_id and not redacted:
            user["policy"] = [row.token_id]  # the token's non-secret id, never the token
        if row.purpose:
            user["purposeOfUse"] = [{"coding": [_coding(ACT_REASON, row.purpose)]}]
        agents.append(user)
    client: dict = {"type": {"coding": [_coding(DCM, "110150", "Application") if token_event
                                        else _coding(DCM, "110153", "Source Role ID")]}}
    if row.client_id:
        client["who"] = {"identifier": {"system": CLIENT_ID_SYSTEM, "value": row.client_id}}
    else:
        client["who"] = {"display": "unidentified client"}
    client["requestor"] = not has_user
    if row.source_ip and not redacted:
        client["network"] = {"address": row.source_ip, "type": "2"}
    agents.append(client)
    server = {
        "type": {"coding": [_coding(USER_AGENT, "AuthzOauthService", "OAuth Authorization Server") if token_event
                            else _coding(DCM, "110152", "Destination Role ID")]},
        "who": {"display": base_url},
        "requestor": False,
        "network": {"address": base_url, "type": "5"},
    }
    agents.append(server)
    return agents


def _what(value: str) -> dict:
    return {"reference": value} if _REF.match(value) else {"identifier": {"value": value}}


def _entities(row: Any, patients: list[str], detail: dict, for_patients: set[str] | None) -> list[dict]:
    redacted = for_patients is not None
    out: list[dict] = []
    rid: dict = {"what": {"identifier": {"value": row.request_id}},
                 "type": _coding(BALP_ENTITY, "XrequestId", "X-Request-Id")}
    extras = [(k, v) for k, v in detail.items() if k != "description"]
    if extras and not redacted:
        rid["detail"] = [{"type": k, "valueString": str(v)} for k, v in extras]
    out.append(rid)
    other_patient = row.entity and row.entity.startswith("Patient/") and row.entity.split("/")[1] not in (
        for_patients or ())
    if row.entity and not (redacted and other_patient):
        out.append({"what": _what(row.entity), "type": _coding(ENTITY_TYPE, "2", "System Object"),
                    "role": _coding(OBJECT_ROLE, "4", "Domain Resource")})
    if row.query and not redacted:
        out.append({
            "type": _coding(ENTITY_TYPE, "2", "System Object"),
            "role": _coding(OBJECT_ROLE, "24", "Query"),
            "description": row.query,
            "query": base64.b64encode(row.query.encode()).decode(),
        })
    for p in sorted(patients):
        out.append({"what": {"reference": f"Patient/{p}"}, "type": _coding(ENTITY_TYPE, "1", "Person"),
                    "role": _coding(OBJECT_ROLE, "1", "Patient")})
    return out
