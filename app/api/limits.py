"""Rate limits per client: the FHIR API and the OAuth endpoints (token, introspect, revoke).

A token bucket per key, held in this worker process (see
docs/decisions/0012-limits-and-hardening.md for why not the database): ``PER_MINUTE`` tokens
flow in per minute up to ``BURST``; a request takes one; an empty bucket is a 429 with
``Retry-After`` (whole seconds until a token is back). With ``W`` gunicorn workers a client can
get up to ``W`` times the configured rate in the worst case (its connections spread over all
workers), so operators set the per-worker figure to their target divided by ``W``; a hard,
exact limit belongs at the load balancer in front.

Keys: the FHIR API counts per OAuth client (the access token's ``client_id``, known once the
bearer check has run), or per remote address for requests without a token (open demo mode).
The OAuth endpoints count per claimed ``client_id`` *and* remote address, so a caller claiming
someone else's client id only empties its own bucket.

FHIR answers with an OperationOutcome ``throttled``; the OAuth endpoints with an RFC 6749-style
JSON error (``{"error": "too_many_requests", ...}``, the code Auth0 and others use; RFC 6749
defines none for the token endpoint).
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from dataclasses import dataclass

from flask import Flask, Response, current_app, g, request

from app.fhir.errors import FhirError

OAUTH_ENDPOINTS = frozenset({"smart_auth.token", "smart_auth.introspect", "smart_auth.revoke"})
MAX_KEYS = 50_000  # buckets kept per process; idle (refilled) ones are dropped beyond this


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Thread-safe token buckets keyed by string. ``take`` answers 0 (allowed) or the seconds to
    wait. ``per_minute <= 0`` switches the limiter off."""

    def __init__(self, per_minute: int, burst: int, clock=time.monotonic) -> None:  # noqa: ANN001
        self.rate = max(per_minute, 0) / 60.0
        self.burst = float(max(burst, 1))
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> int:
        if not self.enabled:
            return 0
        now = self.clock()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= MAX_KEYS:
                    self._prune(now)
                b = self._buckets[key] = _Bucket(self.burst, now)
            else:
                b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
                b.stamp = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0
            return max(1, math.ceil((1.0 - b.tokens) / self.rate))

    def _prune(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= MAX_KEYS:  # all busy: forget the oldest half
            for k, _ in sorted(self._buckets.items(), key=lambda kv: kv[1].stamp)[: MAX_KEYS // 2]:
                del self._buckets[k]


def _limiter(name: str) -> RateLimiter:
    return current_app.extensions["rate_limits"][name]


def _remote() -> str:
    return request.remote_addr or "unknown"


def api_key() -> str:
    perm = g.get("fhir_permission")
    if perm is not None and getattr(perm, "client_id", None):
        return f"client:{perm.client_id}"
    return f"addr:{_remote()}"


class Throttled(FhirError):
    def __init__(self, wait: int) -> None:
        super().__init__(429, "throttled", f"Too many requests from this client; try again in {wait} s.")
        self.headers = {"Retry-After": str(wait)}


def check_api_limit() -> None:
    """``before_request`` of the FHIR blueprint, run after the bearer check (it needs the client)."""
    if request.method == "OPTIONS":
        return
    wait = _limiter("api").take(api_key())
    if wait:
        raise Throttled(wait)


def _claimed_client_id() -> str:
    """The client id a token request names (form, HTTP Basic, or a client assertion's ``iss``),
    unverified: it only picks the bucket."""
    cid = request.form.get("client_id")
    if cid:
        return cid[:128]
    auth = request.authorization
    if auth is not None and auth.username:
        return auth.username[:128]
    assertion = request.form.get("client_assertion", "")
    parts = assertion.split(".")
    if len(parts) == 3:
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            if isinstance(payload, dict) and isinstance(payload.get("iss"), str):
                return payload["iss"][:128]
        except (ValueError, UnicodeDecodeError):
            pass
    return "-"


def check_oauth_limit() -> Response | None:
    """``before_request`` of the authorization server blueprint: token, introspect, revoke."""
    if request.endpoint not in OAUTH_ENDPOINTS or request.method == "OPTIONS":
        return None
    wait = _limiter("oauth").take(f"{_claimed_client_id()}|{_remote()}")
    if not wait:
        return None
    body = {"error": "too_many_requests", "error_description": f"Too many requests; try again in {wait} s."}
    return Response(json.dumps(body), status=429, mimetype="application/json",
                    headers={"Retry-After": str(wait), "Cache-Control": "no-store"})


def init_app(app: Flask) -> None:
    """Build the per-process limiters and hook them in; call after the FHIR and auth blueprints
    are registered (the API check must run after ``protect.check_bearer``)."""
    cfg = app.config
    app.extensions["rate_limits"] = {
        "api": RateLimiter(int(cfg.get("API_RATE_LIMIT_PER_MINUTE", 0)), int(cfg.get("API_RATE_LIMIT_BURST", 1))),
        "oauth": RateLimiter(int(cfg.get("TOKEN_RATE_LIMIT_PER_MINUTE", 0)), int(cfg.get("TOKEN_RATE_LIMIT_BURST", 1))),
    }
    app.before_request_funcs.setdefault("fhir", []).append(check_api_limit)
    app.before_request_funcs.setdefault("smart_auth", []).append(check_oauth_limit)
