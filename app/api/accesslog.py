"""Access log lines without query strings, for the development server (``results-repo run``).

A FHIR search URL is patient data (``Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|...``,
``?name=...``) and werkzeug's request log writes the whole request line. This handler logs the
method, the path, the status and the size only. gunicorn's access log is off unless asked for;
docs/security.md gives a format that leaves the query out (``%(U)s``, not ``%(r)s``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from werkzeug.serving import WSGIRequestHandler


class PathOnlyRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            path = urlsplit(self.path).path
        except ValueError:
            path = "-"
        code = getattr(code, "value", code)
        self.log("info", '"%s %s %s" %s %s', self.command, path, self.request_version, code, size)
