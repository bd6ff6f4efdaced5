"""Break-glass alerts: one durable row per break-glass request, for the privacy officer.

The row is committed before the request runs (so a crash or an error later cannot lose it) and
is never changed except to record who acknowledged it and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select, update

from app.auth.tokens import utcnow
from app.db.engine import unit_of_work
from app.protect.tables import protect_alert

MAX_REASON = 500
MAX_PATH = 2048


@dataclass(frozen=True)
class Alert:
    id: int
    created_at: datetime
    client_id: str
    username: str | None
    fhir_user: str | None
    token_id: str | None
    reason: str
    method: str
    path: str
    request_id: str | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        for k in ("created_at", "acknowledged_at"):
            if d[k] is not None:
                d[k] = d[k].isoformat(timespec="seconds") + "Z"
        return d


def record_alert(engine: Engine, *, client_id: str, username: str | None, fhir_user: str | None,
                 token_id: str | None, reason: str, method: str, path: str, request_id: str | None) -> int:
    with unit_of_work(engine, write=True) as conn:
        res = conn.execute(protect_alert.insert().values(
            created_at=utcnow(), client_id=client_id, username=username, fhir_user=fhir_user, token_id=token_id,
            reason=reason[:MAX_REASON], method=method[:8], path=path[:MAX_PATH], request_id=request_id,
        ))
        return int(res.inserted_primary_key[0])


def list_alerts(engine: Engine, *, since: datetime | None = None, unacknowledged: bool = False,
                limit: int = 100) -> list[Alert]:
    """Newest first."""
    a = protect_alert.c
    q = select(protect_alert)
    if since is not None:
        q = q.where(a.created_at >= since)
    if unacknowledged:
        q = q.where(a.acknowledged_at.is_(None))
    q = q.order_by(a.created_at.desc(), a.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [Alert(**r._mapping) for r in conn.execute(q)]


def acknowledge(engine: Engine, alert_id: int, by: str) -> bool:
    """Record that the privacy officer ``by`` reviewed the alert; False if unknown or done already."""
    with unit_of_work(engine, write=True) as conn:
        res = conn.execute(update(protect_alert)
                           .where(protect_alert.c.id == alert_id, protect_alert.c.acknowledged_at.is_(None))
                           .values(acknowledged_at=utcnow(), acknowledged_by=by[:128]))
        return res.rowcount > 0
