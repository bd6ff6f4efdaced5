"""The privacy officer's view of break-glass alerts (JSON, outside the FHIR base).

``GET /admin/break-glass-alerts[?since=2026-01-01T00:00:00Z&unacknowledged=true&limit=100]``
lists alerts newest first; ``POST /admin/break-glass-alerts/<id>/acknowledge`` records the review.
Both need the auditor's token: a scope naming AuditEvent explicitly, ``system/AuditEvent.rs``
(a backend client of the privacy office) or ``user/AuditEvent.rs`` with a practitioner user —
the same right that reads the audit trail (app/audit/query.py), since the privacy officer is the
one who reviews both.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request

from app.fhir.errors import FhirError

bp = Blueprint("protect_admin", __name__, url_prefix="/admin")


def _officer():  # noqa: ANN202
    from app.auth.protect import Unauthorized, _realm, bearer_token
    from app.auth.tokens import lookup_access_token

    raw = bearer_token()
    if raw is None:
        raise Unauthorized(_realm(), None, "This endpoint needs an access token (system/AuditEvent.rs).")
    grant = lookup_access_token(current_app.extensions["results_repo"].engine, raw)
    if grant is None:
        raise Unauthorized(_realm(), "invalid_token", "The access token is unknown, expired or revoked.")
    if not is_privacy_officer(grant):
        raise FhirError(403, "forbidden", "Break-glass alerts are for the privacy officer: the token needs "
                                          "system/AuditEvent.rs (or user/AuditEvent.rs for a practitioner user).")
    return grant


def is_privacy_officer(grant) -> bool:  # noqa: ANN001
    from app.auth.scopes import parse_scopes

    practitioner = bool(grant.fhir_user and grant.fhir_user.startswith("Practitioner/"))
    return any(sc.res_type == "AuditEvent" and sc.letters & {"r", "s"} and not sc.query
               and (sc.context == "system" or (sc.context == "user" and practitioner))
               for sc in parse_scopes(grant.scope))


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/break-glass-alerts")
def list_view() -> Response:
    from app.protect.alerts import list_alerts

    _officer()
    since = None
    if request.args.get("since"):
        try:
            since = datetime.fromisoformat(request.args["since"].replace("Z", "+00:00"))
        except ValueError:
            raise FhirError(400, "invalid", "since must be an ISO instant, e.g. 2026-01-31T00:00:00Z") from None
        if since.tzinfo is not None:  # stored naive UTC
            since = since.astimezone(UTC).replace(tzinfo=None)
    raw_limit = request.args.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise FhirError(400, "invalid", "limit must be an integer from 1 to 1000")
    unack = request.args.get("unacknowledged", "").lower() in ("1", "true", "yes")
    rows = list_alerts(current_app.extensions["results_repo"].engine, since=since, unacknowledged=unack,
                       limit=int(raw_limit))
    return _no_store(jsonify({"alerts": [a.to_json() for a in rows]}))


@bp.post("/break-glass-alerts/<int:alert_id>/acknowledge")
def acknowledge_view(alert_id: int) -> Response:
    from app.protect.alerts import acknowledge

    grant = _officer()
    by = grant.username or grant.client_id
    if not acknowledge(current_app.extensions["results_repo"].engine, alert_id, by):
        raise FhirError(404, "not-found", f"No unacknowledged alert {alert_id}.")
    return _no_store(jsonify({"id": alert_id, "acknowledged_by": by}))
