"""What one audit event holds (framework-free), and the BALP codes it is rendered with.

An :class:`AuditRecord` is the narrow row of ``audit_event`` plus the patients it touched; the
AuditEvent JSON is built from it only when someone reads the trail (app/audit/render.py).
Codes follow IHE Basic Audit Log Patterns (BALP) and FHIR R4 AuditEvent:

- ``type``: ``rest`` (audit-event-type, RESTful operation) for FHIR interactions; DICOM
  ``110114`` User Authentication for the token endpoint and logins; DICOM ``110106`` Export for
  Bulk Data; DICOM ``110113`` Security Alert for custom security events (break-glass, merges).
- ``subtype``: restful-interaction codes (read, vread, search-type, create ...), IHE ``ITI-71``
  (Get Access Token), DICOM ``110122`` Login, or this server's codes for export steps.
- ``outcome`` (audit-event-outcome): 0 success; 4 a refused or invalid request (4xx other than
  401/403); 8 an authentication or authorisation refusal (401, 403); 12 a server failure (5xx).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
IHE_EVENT = "urn:ihe:event-type-code"
LOCAL_SUBTYPE = "urn:results-repo:audit-subtype"
OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

# type code -> (system, display)
TYPES = {
    "rest": (EVENT_TYPE, "Restful Operation"),
    "110114": (DCM, "User Authentication"),
    "110106": (DCM, "Export"),
    "110113": (DCM, "Security Alert"),
}

# subtype code -> (system, display)
SUBTYPES = {
    **{c: (INTERACTION, c) for c in (
        "read", "vread", "update", "patch", "delete", "history-instance", "history-type", "history-system",
        "create", "search-type", "search-system", "batch", "transaction", "operation", "capabilities")},
    "ITI-71": (IHE_EVENT, "Get Access Token"),
    "110122": (DCM, "Login"),
    "export": (LOCAL_SUBTYPE, "Bulk Data export kick-off"),
    "export-status": (LOCAL_SUBTYPE, "Bulk Data export status"),
    "export-cancel": (LOCAL_SUBTYPE, "Bulk Data export cancel"),
    "export-download": (LOCAL_SUBTYPE, "Bulk Data export file download"),
    "break-glass": (LOCAL_SUBTYPE, "Emergency access (break-glass)"),
    "merge": (LOCAL_SUBTYPE, "Patient records merged (Patient/$merge)"),
    "unmerge": (LOCAL_SUBTYPE, "Patient merge undone (Patient/$unmerge)"),
    "correct-nhs-number": (LOCAL_SUBTYPE, "NHS number corrected (Patient/$correct-nhs-number)"),
    "custom": (LOCAL_SUBTYPE, "Other security event"),
}

# restful-interaction -> the AuditEvent.action it implies
ACTIONS = {
    "create": "C", "read": "R", "vread": "R", "update": "U", "patch": "U", "delete": "D",
    "history-instance": "R", "history-type": "R", "history-system": "R",
    "search-type": "E", "search-system": "E", "batch": "E", "transaction": "E", "operation": "E",
    "merge": "U", "unmerge": "U", "correct-nhs-number": "U",  # patient identity operations change records
}

OUTCOME_TEXT = {0: "Success", 4: "Minor failure", 8: "Serious failure", 12: "Major failure"}


def outcome_for(status: int) -> int:
    """HTTP status -> audit-event-outcome (see the module docstring)."""
    if status < 400:
        return 0
    if status in (401, 403):
        return 8
    if status >= 500:
        return 12
    return 4


def utcnow() -> datetime:
    """Naive UTC, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Who:
    """The caller, as far as the request shows it (never the token itself)."""

    client_id: str | None = None
    username: str | None = None
    fhir_user: str | None = None  # Practitioner/ID | Patient/ID
    token_id: str | None = None
    scope: str | None = None
    source_ip: str | None = None
    purpose: str | None = None  # BTG when emergency access was asserted


ANONYMOUS = Who()


@dataclass
class AuditRecord:
    type: str
    subtype: str
    action: str
    outcome: int
    request_id: str
    who: Who = ANONYMOUS
    status: int | None = None
    res_type: str | None = None
    entity: str | None = None
    query: str | None = None
    detail: dict | None = None
    patients: set[str] = field(default_factory=set)
    recorded: datetime = field(default_factory=utcnow)

    def row(self) -> dict:
        import orjson

        w = self.who
        return {
            "recorded": self.recorded,
            "type": self.type,
            "subtype": self.subtype[:32],
            "action": self.action,
            "outcome": self.outcome,
            "status": self.status,
            "request_id": self.request_id[:64],
            "client_id": _cut(w.client_id, 255),
            "username": _cut(w.username, 128),
            "fhir_user": _cut(w.fhir_user, 140),
            "token_id": _cut(w.token_id, 32),
            "scope": w.scope,
            "source_ip": _cut(w.source_ip, 64),
            "res_type": _text(self.res_type, 64),
            "entity": _text(self.entity, 200),
            "query": self.query,
            "purpose": _cut(w.purpose, 16),
            "detail": orjson.dumps(self.detail).decode() if self.detail else None,
        }


def _cut(v: str | None, n: int) -> str | None:
    return v[:n] if v is not None else None


def storable(v: str, n: int) -> str:
    """A value from the request path, storable as text: PostgreSQL refuses NUL in text, and a
    request for ``/fhir/Patient/a%00b`` must still leave its record (as U+FFFD there)."""
    v = v[:n]
    return v.replace("\x00", "\ufffd") if "\x00" in v else v


def _text(v: str | None, n: int) -> str | None:
    return None if v is None else storable(v, n)
