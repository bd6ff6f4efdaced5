"""What an interaction needs to run: engine, registry, limits, the caller-visible base URL."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine

from app.fhir.errors import FhirError
from app.storage.repository import Repository

TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
# R4's id pattern, less ids of dots only: "." and ".." are legal by the pattern but clients
# normalise them out of URLs, so such a resource could never be addressed.
ID_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9\-\.]{1,64}$")


@dataclass
class Result:
    """An interaction's answer, independent of HTTP framework."""

    status: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    resource: bytes | None = None  # the stored resource (for Prefer handling on writes)
    outcome: dict | None = None  # an informational OperationOutcome (Prefer: return=OperationOutcome)


@dataclass
class FhirContext:
    engine: Engine
    registry: object
    enabled_types: frozenset[str]
    base_url: str
    tz: ZoneInfo
    secret_key: str
    max_bundle_entries: int = 1000
    default_page_size: int = 50
    max_page_size: int = 1000
    # Who is asking (the token's client and user once SMART lands); paging cursors are bound to it.
    caller: str = "anonymous"
    # Operators' debug switch: searches report their SQL (config SEARCH_DEBUG_SQL).
    debug_sql: bool = False
    # Each search statement may run this long (ms, 0 = no limit; config SEARCH_TIMEOUT_MS).
    search_timeout_ms: int = 0
    # Searches and history run here when set (app.db.engine.make_read_engine); else on engine.
    read_engine: Any = None
    # What the caller's access token allows (app.auth.permission.Permission); None = open
    # (AUTH_REQUIRED=false without a token, CLI, loader, workers).
    permission: Any = None
    # The request's audit recorder (app.audit.recorder.Recorder); None = not audited (CLI, loader,
    # workers, AUDIT_ENABLED=false).  Changes are recorded on their own transaction through it.
    audit: Any = None
    # Adds the operator's security labels to an incoming resource (app.protect.policy); None = none.
    labeller: Any = None

    def index_fn(self):
        from app.indexing.extract import extract

        return partial(extract, self.registry, tz=self.tz, base_url=self.base_url)

    def repo(self, conn: Connection) -> Repository:
        return Repository(conn, self.index_fn(), self.enabled_types, self.base_url)

    def check_type(self, res_type: str) -> None:
        if not TYPE_RE.match(res_type) or res_type not in self.enabled_types:
            raise FhirError(
                404,
                "not-supported",
                f"Resource type '{res_type[:64]}' is not supported by this server. "
                f"Supported types: {', '.join(sorted(self.enabled_types))}.",
            )

    @staticmethod
    def check_id(res_id: str) -> None:
        if not ID_RE.match(res_id):
            raise FhirError(400, "invalid", f"'{res_id[:80]}' is not a valid resource id ([A-Za-z0-9-.]{{1,64}}, "
                                            "not only dots).")


def _read_engine(state: Any, timeout_ms: int) -> Any:
    """The read engine, if its sessions carry the timeout now configured (an operator or a
    test may change SEARCH_TIMEOUT_MS on a running app: then searches use the main engine)."""
    read = getattr(state, "read_engine", None)
    if read is None or read.get_execution_options().get("statement_timeout_ms") != timeout_ms:
        return None
    return read


def from_app(app, base_url: str | None = None) -> FhirContext:
    """A context for work outside a request (CLI, loader, workers). ``app`` is the Flask app."""
    from app.protect.policy import policy_of

    state = app.extensions["results_repo"]
    cfg = app.config
    policy = policy_of(app)
    base = base_url or cfg.get("PUBLIC_BASE_URL") or "http://localhost:8080/fhir"
    return FhirContext(
        engine=state.engine,
        registry=state.registry,
        enabled_types=state.enabled_types,
        base_url=base.rstrip("/"),
        tz=state.tz,
        secret_key=cfg["SECRET_KEY"],
        max_bundle_entries=cfg["MAX_BUNDLE_ENTRIES"],
        default_page_size=cfg["DEFAULT_PAGE_SIZE"],
        max_page_size=cfg["MAX_PAGE_SIZE"],
        debug_sql=bool(cfg.get("SEARCH_DEBUG_SQL", False)),
        search_timeout_ms=int(cfg.get("SEARCH_TIMEOUT_MS", 0) or 0),
        read_engine=_read_engine(state, int(cfg.get("SEARCH_TIMEOUT_MS", 0) or 0)),
        labeller=policy.label if policy.rules else None,
    )
