"""Reading the trail as FHIR: ``AuditEvent`` search and read, from the audit tables (framework-free).

Parameters: ``patient``, ``date``, ``agent``, ``entity``, ``type``, ``subtype``, ``outcome``,
``action``, ``_id``, ``_count``.  Repeating a parameter ANDs, commas OR.  Results are newest
first (keyset paging on the event id, no OFFSET).

Links (``self``, ``next``, ``previous``) are opaque, as every search link of the server
(app.search.paging, docs/decisions/0015-opaque-search-links.md): ``AuditEvent?_cursor=<token>``,
the search's parameters, its caller (client and token) and the page position (an event id)
sealed inside, so no ``patient=``/``agent=``/``entity=`` value is in a generated URL.  A link
is followed as given (with ``_format``/``_pretty`` at most); a tampered one, another caller's or
another search's is a 400.  The statements run under the search deadline
(``SEARCH_TIMEOUT_MS``, app/db/deadline.py): past it, 400 ``too-costly``.

Who sees what (:func:`access_for`): a scope that names ``AuditEvent`` explicitly (wildcards such
as ``system/*.rs`` do not reach the trail): ``system/AuditEvent.rs``, or ``user/AuditEvent.rs``
for a non-patient user, sees every event; ``patient/AuditEvent.rs`` (or ``user/`` for a patient
user) sees the events that touched its own patient, except reads of the trail itself, rendered
without other patients, queries, addresses or token ids (app/audit/render.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Connection, and_, not_, or_, select

from app.audit.render import render
from app.audit.tables import audit_event, audit_patient
from app.db.deadline import QueryTimeout, statement_deadline
from app.fhir.bundle import bundle_bytes, entry_bytes
from app.fhir.errors import FhirError
from app.search.paging import (
    CURSOR_PARAM,
    Cursor,
    Resumed,
    link_url,
    open_search,
    position,
    seal_search,
)
from app.search.values import parse_date_range, split_prefix

PARAMS = ("patient", "date", "agent", "entity", "type", "subtype", "outcome", "action", "_id")
FORMAT = ("_format", "_pretty")  # accepted, meaningless here; the only parameters a followed link may come with
CONTROL = ("_count", *FORMAT)
# What a link's token is bound to: its path relative to the base (app.search.paging).
LINK_PATH = "AuditEvent"
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Access:
    """``patients`` None: every event; otherwise only events that touched these patients."""

    patients: frozenset[str] | None = None


def access_for(permission: Any, letter: str) -> Access:
    """What the request's token may see of the trail (``letter``: r or s); 403 when nothing."""
    if permission is None:  # an explicitly open demo (AUTH_REQUIRED=false) or in-process use
        return Access(None)
    comps: set[str] = set()
    for sc in permission.scopes:
        if sc.res_type != "AuditEvent" or letter not in sc.letters or sc.query:
            continue  # wildcards do not reach the trail; a filtered AuditEvent scope grants nothing
        if sc.context == "system" or (sc.context == "user" and not permission.user_patient):
            return Access(None)
        pid = permission.patient if sc.context == "patient" else permission.user_patient
        if pid:
            comps.add(pid)
    if not comps:
        verb = "read" if letter == "r" else "search"
        raise FhirError(403, "forbidden", f"The access token does not allow {verb} on AuditEvent: the audit trail needs "
                                          "a scope naming AuditEvent (system/AuditEvent.rs for auditors, "
                                          "patient/AuditEvent.rs for a patient's own access log).")
    return Access(frozenset(comps))


def _visible(access: Access):
    if access.patients is None:
        return None
    linked = select(audit_patient.c.event_id).where(audit_patient.c.patient_id.in_(sorted(access.patients)))
    # a patient's log leaves out reads of the trail itself (their own and auditors')
    return and_(audit_event.c.id.in_(linked),
                or_(audit_event.c.res_type.is_(None), audit_event.c.res_type != "AuditEvent"))


def _patients_of(conn: Connection, ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {i: [] for i in ids}
    if ids:
        for eid, pid in conn.execute(select(audit_patient.c.event_id, audit_patient.c.patient_id)
                                     .where(audit_patient.c.event_id.in_(ids))):
            out[eid].append(pid)
    return out


def read(conn: Connection, event_id: str, access: Access, base_url: str) -> bytes:
    if not event_id.isdigit() or len(event_id) > 18:
        raise FhirError(404, "not-found", f"AuditEvent/{event_id[:64]} is not known to this server.")
    cond = [audit_event.c.id == int(event_id)]
    vis = _visible(access)
    if vis is not None:
        cond.append(vis)
    row = conn.execute(select(audit_event).where(*cond)).first()
    if row is None:
        raise FhirError(404, "not-found", f"AuditEvent/{event_id} is not known to this server.")
    pats = _patients_of(conn, [row.id])[row.id]
    return orjson.dumps(render(row, pats, base_url, set(access.patients) if access.patients is not None else None))


# ---- search ----------------------------------------------------------------------------------
def _values(raw: str) -> list[str]:
    return [v for v in raw.split(",") if v != ""]


def _token(param: str, raw: str) -> list[str]:
    out = []
    for v in _values(raw):
        code = v.split("|", 1)[1] if "|" in v else v
        if not code:
            raise FhirError(400, "value", f"Invalid value for search parameter '{param}': '{v[:64]}'", [param])
        out.append(code)
    return out


def _ref(value: str, base_url: str) -> str:
    if value.startswith(base_url + "/"):
        value = value[len(base_url) + 1:]
    return value


def _date(raw: str, tz: ZoneInfo | None):
    alts = []
    col = audit_event.c.recorded
    for v in _values(raw):
        prefix, text = split_prefix("date", v)
        low, high = parse_date_range("date", text, tz)
        alts.append({
            "eq": and_(col >= low, col <= high), "ap": and_(col >= low, col <= high),
            "ne": not_(and_(col >= low, col <= high)),
            "ge": col >= low, "gt": col > high, "sa": col > high,
            "le": col <= high, "lt": col < low, "eb": col < low,
        }[prefix])
    return or_(*alts)


def _clause(param: str, raw: str, base_url: str, tz: ZoneInfo | None, own: frozenset[str] | None):
    e = audit_event.c
    if param == "patient":
        ids = []
        for v in _values(raw):
            v = _ref(v, base_url)
            pid = v[len("Patient/"):] if v.startswith("Patient/") else v
            if "/" in pid or not pid:
                raise FhirError(400, "value", f"Invalid value for search parameter 'patient': '{v[:64]}'", ["patient"])
            ids.append(pid)
        if own is not None:  # a patient's view: asking about another patient finds nothing
            ids = [i for i in ids if i in own]
        return e.id.in_(select(audit_patient.c.event_id).where(audit_patient.c.patient_id.in_(ids)))
    if param == "date":
        return _date(raw, tz)
    if param == "agent":
        alts = []
        for v in _values(raw):
            v = _ref(v, base_url)
            alts.append(e.fhir_user == v if "/" in v else or_(e.client_id == v, e.username == v))
        return or_(*alts)
    if param == "entity":
        alts = []
        for v in _values(raw):
            v = _ref(v, base_url)
            alts.append(or_(e.entity == v, e.entity.startswith(v + "/_history/", autoescape=True)))
        return or_(*alts)
    if param == "outcome":
        codes = _token(param, raw)
        if not all(c.isdigit() for c in codes):
            raise FhirError(400, "value", "outcome is one of 0, 4, 8, 12.", ["outcome"])
        return e.outcome.in_([int(c) for c in codes])
    if param == "_id":
        ids = _values(raw)
        return e.id.in_([int(i) for i in ids if i.isdigit() and len(i) <= 18])
    col = {"type": e.type, "subtype": e.subtype, "action": e.action}[param]
    return col.in_(_token(param, raw))


def _resume(params: list[tuple[str, str]], secret: str, caller: str) -> tuple[list[tuple[str, str]], Resumed | None]:
    """A followed link (``?_cursor=``): the search it carries replaces the parameters.  Only
    ``_format``/``_pretty`` may come with it (as for every search link, decision 0015)."""
    tokens = [v for k, v in params if k == CURSOR_PARAM]
    if not tokens:
        return params, None
    if any(k not in (CURSOR_PARAM, *FORMAT) for k, _ in params) or len(set(tokens)) > 1:
        raise FhirError(400, "invalid", "A paging link carries its whole search: follow it as given, without "
                        "other search parameters (start a new search to change it).", [CURSOR_PARAM])
    resumed = open_search(secret, caller, LINK_PATH, tokens[-1])
    return [*resumed.params, *((k, v) for k, v in params if k != CURSOR_PARAM)], resumed


def search(conn: Connection, params: list[tuple[str, str]], access: Access, *, base_url: str, secret: str,
           caller: str, default_count: int, max_count: int, strict: bool = False,
           tz: ZoneInfo | None = None, timeout_ms: int = 0) -> bytes:
    """One page of the trail, newest first.  ``conn`` should be in a transaction (one snapshot;
    on PostgreSQL the deadline is then ``SET LOCAL``); ``timeout_ms``: each statement's limit
    (0: none)."""
    params, resumed = _resume(params, secret, caller)
    clauses = []
    kept: list[tuple[str, str]] = []
    count = default_count
    for k, v in params:
        name = k.split(":", 1)[0]
        if name == "_count":
            if not v.isdigit():
                raise FhirError(400, "invalid", f"_count must be a non-negative integer, got {v[:40]!r}.", ["_count"])
            count = min(int(v), max_count)
        elif k in CONTROL:
            continue
        elif name in PARAMS and name == k:
            clauses.append(_clause(name, v, base_url, tz, access.patients))
            kept.append((k, v))
        elif strict:
            raise FhirError(400, "not-supported", f"AuditEvent search does not support the parameter '{k[:64]}'.", [k[:64]])
    vis = _visible(access)
    if vis is not None:
        clauses.append(vis)
    path = f"{base_url}/AuditEvent"
    # What the links carry (sealed): the parameters used, then the page size as applied.
    link_params = [*kept, ("_count", str(count))]
    # self: the followed link itself, or the first page's; made before the query runs.
    self_url = link_url(path, resumed.token if resumed is not None
                        else seal_search(secret, caller, LINK_PATH, link_params, None))
    cur = position(resumed, [])  # the order is the event id alone: no sort-key values
    reverse = cur is not None and cur.direction == "prev"
    if cur is not None:
        clauses.append(audit_event.c.id > cur.rid if reverse else audit_event.c.id < cur.rid)
    rows: list = []
    try:
        with statement_deadline(conn, timeout_ms):
            if count > 0:
                order = audit_event.c.id.asc() if reverse else audit_event.c.id.desc()
                rows = list(conn.execute(select(audit_event).where(*clauses).order_by(order).limit(count + 1)))
            more = len(rows) > count
            rows = rows[:count]
            if reverse:
                rows.reverse()
            pats = _patients_of(conn, [r.id for r in rows])
    except QueryTimeout:
        raise FhirError(400, "too-costly", f"The AuditEvent search ran longer than this server allows ({timeout_ms} ms) "
                        "and was stopped; narrow it (patient, agent or entity, a date range, a smaller "
                        "_count).") from None
    own = set(access.patients) if access.patients is not None else None
    links = [{"relation": "self", "url": self_url}]
    if rows:
        # forward: a next page when there was one more row, a previous one when this page was
        # reached by a link; backward: the page it came from is next, and more rows are previous
        has_next = more if not reverse else True
        has_prev = cur is not None if not reverse else more
        for relation, direction, row, wanted in (("next", "next", rows[-1], has_next),
                                                 ("previous", "prev", rows[0], has_prev)):
            if wanted:
                token = seal_search(secret, caller, LINK_PATH, link_params, Cursor(direction, (), row.id))
                links.append({"relation": relation, "url": link_url(path, token)})
    entries = [
        entry_bytes({"fullUrl": f"{path}/{r.id}", "search": {"mode": "match"}},
                    orjson.dumps(render(r, pats[r.id], base_url, own)))
        for r in rows
    ]
    return bundle_bytes({"resourceType": "Bundle", "type": "searchset", "link": links}, entries)


def capability() -> dict:
    """The CapabilityStatement entry of the read-only AuditEvent type."""
    sp = "http://hl7.org/fhir/SearchParameter/"
    params = [
        {"name": "patient", "type": "reference", "definition": sp + "AuditEvent-patient"},
        {"name": "date", "type": "date", "definition": sp + "AuditEvent-date"},
        {"name": "agent", "type": "reference", "definition": sp + "AuditEvent-agent",
         "documentation": "Practitioner/ID or Patient/ID (the user), or a client id or user name"},
        {"name": "entity", "type": "reference", "definition": sp + "AuditEvent-entity"},
        {"name": "type", "type": "token", "definition": sp + "AuditEvent-type"},
        {"name": "subtype", "type": "token", "definition": sp + "AuditEvent-subtype"},
        {"name": "outcome", "type": "token", "definition": sp + "AuditEvent-outcome"},
        {"name": "action", "type": "token", "definition": sp + "AuditEvent-action"},
        {"name": "_id", "type": "token", "definition": sp + "Resource-id"},
    ]
    return {
        "type": "AuditEvent",
        "documentation": ("The audit trail (IHE BALP shapes), read-only: written by the server for every "
                          "interaction, never through the API. Needs a scope naming AuditEvent: "
                          "system/AuditEvent.rs (auditors) or patient/AuditEvent.rs (a patient's own access log)."),
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    }
