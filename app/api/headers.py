"""Security headers on every response (one ``after_request`` hook for the whole app).

- ``X-Content-Type-Options: nosniff`` everywhere: a FHIR JSON body or an NDJSON export file is
  never sniffed into HTML by a browser.
- ``Cache-Control: no-store`` on FHIR and authorization-server responses (patient data and
  tokens must not sit in shared or browser caches); discovery documents and the JWKS are public
  and may be cached, so a ``Cache-Control`` the view set itself is kept.
- ``Content-Security-Policy``: a policy the view set is kept (the login and consent pages of
  app/auth/views.py set their own, whose ``form-action`` names the app's redirect origin, since
  browsers apply it to the redirect after the consent post). Otherwise JSON and everything else
  get ``default-src 'none'; frame-ancestors 'none'`` (nothing to run, never framed:
  clickjacking) and other HTML a policy that allows its own inline styles and images only.
- ``X-Frame-Options: DENY`` (older browsers) and ``Referrer-Policy: no-referrer`` (the
  authorize URL carries ``state`` and ``code_challenge``).
- ``Strict-Transport-Security`` when the request came over TLS (``request.is_secure``, which
  honours ``X-Forwarded-Proto`` only behind a trusted proxy fix) or ``PUBLIC_BASE_URL`` is https.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request

API_CSP = "default-src 'none'; frame-ancestors 'none'"
HTML_CSP = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "base-uri 'none'; frame-ancestors 'none'")
NO_STORE_PREFIXES = ("/fhir", "/auth/")
CACHEABLE_PATHS = ("/fhir/.well-known/", "/.well-known/", "/auth/jwks", "/auth/smart-style.json")
_ALWAYS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"))


def hsts_value(app: Flask) -> str | None:
    seconds = int(app.config.get("HSTS_MAX_AGE", 31536000))
    return f"max-age={seconds}; includeSubDomains" if seconds > 0 else None


def _behind_tls() -> bool:
    req = request._get_current_object()
    app_ = current_app._get_current_object()
    return req.is_secure or str(app_.config.get("PUBLIC_BASE_URL") or "").lower().startswith("https://")


def add_security_headers(resp: Response) -> Response:
    req = request._get_current_object()
    # One pass over the few headers the view set: werkzeug's ``in``/``setdefault`` raise and
    # catch a KeyError for every header that is missing, which is most of them, every response.
    h = resp.headers
    have = {k.lower() for k, _v in h.items()}
    add = [kv for kv in _ALWAYS if kv[0].lower() not in have]
    if "content-security-policy" not in have:
        add.append(("Content-Security-Policy", HTML_CSP if resp.mimetype == "text/html" else API_CSP))
    path = req.path
    if path.startswith(NO_STORE_PREFIXES) and not (path.startswith(CACHEABLE_PATHS) and "cache-control" in have):
        if "cache-control" in have:
            del h["Cache-Control"]
        add.append(("Cache-Control", "no-store"))
        if "pragma" not in have:
            add.append(("Pragma", "no-cache"))
    if "strict-transport-security" not in have and _behind_tls():
        value = hsts_value(current_app)
        if value:
            add.append(("Strict-Transport-Security", value))
    h.extend(add)
    return resp


def init_app(app: Flask) -> None:
    app.after_request(add_security_headers)
