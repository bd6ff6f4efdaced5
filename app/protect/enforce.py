"""Per request: which labels the token may not see, and the ``X-Break-Glass`` header.

Called by app.auth.protect.check_bearer once the token is known.  The result is one field on the
request's :class:`~app.auth.permission.Permission` (``withheld``), which the permission compiles
into every query; nothing here filters results.

Break-glass: ``X-Break-Glass: <reason>`` (free text, 1-500 characters) on any FHIR request.
Allowed only when the token's app and its practitioner user both hold the break-glass right
(app.protect.clearance); then nothing is withheld for that request (the scopes still apply), an
alert row is committed before the request runs, and ``flask.g.break_glass`` /
``g.purpose_of_use = "BTG"`` make the audit record carry the HL7 purpose of use BTG.  Refused:
403, and no data.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import current_app, g, request

from app.fhir.errors import FhirError
from app.protect.alerts import MAX_REASON, record_alert
from app.protect.clearance import cached_effective
from app.protect.policy import policy_of

HEADER = "X-Break-Glass"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
log = logging.getLogger("results_repo.protect")


def break_glass_reason() -> str | None:
    """The asserted reason, or None without the header; 400 when it is empty or malformed."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    reason = raw.strip()
    if not reason or len(reason) > MAX_REASON or _CONTROL.search(reason):
        raise FhirError(400, "invalid", f"{HEADER} must carry the reason for the emergency access "
                                        f"(1 to {MAX_REASON} printable characters).")
    return reason


def apply_sensitivity(perm: Any, grant: Any) -> None:
    """Set ``perm.withheld`` for this request; handle a break-glass assertion."""
    app = current_app
    policy = policy_of(app)
    reason = break_glass_reason()
    if not policy.sensitive and reason is None:
        return  # withholding switched off: no clearance lookup either
    engine = app.extensions["results_repo"].engine
    ttl = float(app.config.get("CLEARANCE_CACHE_SECONDS", 60))
    if reason is not None:
        ttl = 0  # break-glass: the right is checked against the database, never a cached answer
    eff = cached_effective(engine, ttl, grant.client_id, getattr(grant, "username", None), grant.fhir_user)
    withheld = policy.withheld_for(eff.labels)
    if reason is not None:
        if not eff.break_glass:
            raise FhirError(403, "forbidden", "Break-glass access is not allowed for this token: it needs a "
                                              "practitioner user and an app that both hold the break-glass right.")
        path = request.full_path if request.query_string else request.path
        alert_id = record_alert(engine, client_id=grant.client_id, username=getattr(grant, "username", None),
                                fhir_user=grant.fhir_user, token_id=grant.token_id, reason=reason,
                                method=request.method, path=path, request_id=g.get("request_id"))
        g.break_glass = True
        g.purpose_of_use = "BTG"
        g.break_glass_alert = alert_id
        log.warning("break-glass access by client %s (alert %s)", grant.client_id, alert_id)
        withheld = frozenset()
    perm.set_withheld(withheld)
