"""The application factory: config, extensions, blueprints, error handlers, CLI."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import Engine

import config as config_module
from app.db import make_engine
from app.db.engine import make_read_engine

log = logging.getLogger("results_repo")


@dataclass
class State:
    """Per-app objects (nothing global): engine, registry, enabled types, zone."""

    engine: Engine
    registry: object
    enabled_types: frozenset[str]
    tz: ZoneInfo
    read_engine: Engine | None = None  # PostgreSQL searches/history: sessions with the timeout set


def default_database_url(instance_path: str) -> str:
    Path(instance_path).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(instance_path) / 'results.db'}"


class ResultsFlask(Flask):
    """Flask, with its per-call coroutine check (``inspect.iscoroutinefunction`` on every hook
    and view, every request: ~1 % of a search's CPU) done once per function."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - Flask's signature
        super().__init__(*args, **kwargs)
        self._sync_known: dict = {}

    def ensure_sync(self, func):  # noqa: ANN001, ANN201 - Flask's signature
        try:
            return self._sync_known[func]
        except KeyError:
            self._sync_known[func] = synced = super().ensure_sync(func)
            return synced
        except TypeError:  # an unhashable callable: checked every time, as Flask does
            return super().ensure_sync(func)


def create_app(config: dict | None = None) -> Flask:
    app = ResultsFlask(__name__, instance_path=os.environ.get("RESULTS_REPO_INSTANCE", None) or None)
    env = os.environ.get("RESULTS_REPO_ENV", "development").lower()
    base = {"production": config_module.ProductionConfig, "testing": config_module.TestingConfig}.get(
        env, config_module.DevelopmentConfig
    )
    app.config.from_object(base)
    app.config.update(config_module.from_environment())
    if config:
        app.config.update(config)
    if not app.config.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = default_database_url(app.instance_path)
    if not app.config.get("SECRET_KEY"):
        if env == "production":
            raise RuntimeError("SECRET_KEY must be set in the environment for production.")
        # A per-process key: paging cursors simply stop working after a restart.
        app.config["SECRET_KEY"] = os.urandom(32).hex()
        log.warning("SECRET_KEY not set; using a random per-process key (set SECRET_KEY to keep cursors valid).")

    from app.auth.session import OnDemandCookieSessionInterface
    from app.indexing.registry import load_registry

    app.session_interface = OnDemandCookieSessionInterface()

    enabled = list(app.config["ENABLED_RESOURCE_TYPES"])
    engine = make_engine(app.config["DATABASE_URL"], echo=app.config.get("SQL_ECHO", False))
    app.extensions["results_repo"] = State(
        engine=engine,
        registry=load_registry(enabled),
        enabled_types=frozenset(enabled),
        tz=ZoneInfo(app.config["SERVER_TIMEZONE"]),
        read_engine=make_read_engine(engine, int(app.config.get("SEARCH_TIMEOUT_MS", 0) or 0),
                                     app.config.get("SEARCH_PLAN_CACHE_MODE", "auto")),
    )

    from app.auth.protect import check_startup

    check_startup(app, env)

    from app.api import errors, fhir

    errors.register(app)
    fhir.register(app)

    # Audit trail: X-Request-Id on every response, an AuditEvent for every FHIR and token request
    from app.audit.web import init_app as init_audit

    init_audit(app)

    # SMART authorization server: /auth/*, discovery documents, JWKS
    from app.auth.views import init_app as init_auth

    init_auth(app)

    # Sensitive results: policy check at start-up, the privacy officer's alert view (app/protect).
    from app.protect import init_app as init_protect

    init_protect(app)

    # Hardening: start-up refusals, security headers, rate limits (docs/security.md)
    from app import startup_checks
    from app.api import headers, limits

    startup_checks.check_limits(app)
    if env == "production":
        startup_checks.check_production(app, app.config.get("SECRET_KEY"))
    headers.init_app(app)
    limits.init_app(app)

    @app.get("/")
    def _root():
        return {
            "service": "Regional results repository (FHIR R4)",
            "fhir_base": (app.config.get("PUBLIC_BASE_URL") or "/fhir"),
            "capabilities": "/fhir/metadata",
        }

    return app
