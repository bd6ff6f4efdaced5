"""The audit trail: an AuditEvent (IHE BALP shapes) for every access and change.

Core (framework-free): events.py (what a record holds, the codes), patients.py (which patients a
body concerns), store.py (writing), recorder.py (what the interactions call), render.py (row ->
AuditEvent JSON), query.py (AuditEvent search/read).  HTTP: web.py (request ids, hooks, routes).
Decision record: docs/decisions/0010-audit-trail.md.
"""

from __future__ import annotations


def record(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
    """Add a custom audit event (break-glass, identity merge ...); see app.audit.web.record."""
    from app.audit.web import record as _record

    _record(*args, **kwargs)
