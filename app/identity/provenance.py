"""The Provenance that records a merge, an unmerge or an NHS number correction.

Complete on its own: every version the operation wrote is a ``target`` (versioned reference),
every version it replaced an ``entity`` (role ``revision``), the operation is the ``activity``
(ISO 21089 lifecycle ``merge`` / ``unmerge`` / ``amend``), the caller is the ``agent`` (the
token's fhirUser, else its client id), and a free-text reason when the caller gave one.
"""

from __future__ import annotations

from typing import Any

from app.fhir.jsonutil import instant, utcnow

LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
CLIENT_SYSTEM = "urn:results-repo:oauth-client"
AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def agent(permission: Any) -> dict:
    who: dict
    if permission is None:
        who = {"display": "unauthenticated caller (AUTH_REQUIRED is off)"}
    elif permission.fhir_user:
        who = {"reference": permission.fhir_user}
    else:
        who = {"identifier": {"system": CLIENT_SYSTEM, "value": permission.client_id or "unknown"},
               "display": f"OAuth client {permission.client_id or 'unknown'}"}
    out = {"type": {"coding": [{"system": AGENT_TYPE, "code": "author"}]}, "who": who}
    if permission is not None and permission.fhir_user and permission.client_id:
        out["onBehalfOf"] = {"identifier": {"system": CLIENT_SYSTEM, "value": permission.client_id}}
    return out


def provenance(
    activity: str,
    display: str,
    written: list[tuple[str, str, int]],
    replaced: list[tuple[str, str, int]],
    permission: Any,
    reason: str | None = None,
    extra_entities: list[dict] | None = None,
) -> dict:
    """``written``/``replaced``: (type, id, version) of the versions made and superseded."""
    body: dict = {
        "resourceType": "Provenance",
        "target": [{"reference": f"{t}/{i}/_history/{v}"} for t, i, v in written],
        "recorded": instant(utcnow()),
        "activity": {"coding": [{"system": LIFECYCLE, "code": activity, "display": display}]},
        "agent": [agent(permission)],
        "entity": [{"role": "revision", "what": {"reference": f"{t}/{i}/_history/{v}"}} for t, i, v in replaced]
        + list(extra_entities or []),
    }
    if reason:
        body["reason"] = [{"text": reason[:1000]}]
    return body
