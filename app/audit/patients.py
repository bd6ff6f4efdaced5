"""Which patients a response (or a stored resource, or an export file) concerns.

Found by scanning the JSON bytes, not by parsing them: references to ``Patient/<id>`` (relative
or absolute, with or without ``_history``) and the ``fullUrl`` of Patient entries.  This is a
superset of the R4 Patient compartment of what was returned (it also catches a Patient mentioned in
any other reference), which is the right side to err on for an access log, and it costs a
regular-expression pass over bytes the server has in hand anyway (tens of microseconds for a page
of results) instead of a JSON parse or another query.
"""

from __future__ import annotations

import re
from pathlib import Path

_ID = rb"([A-Za-z0-9\-.]{1,64})"
# candidates: every "Patient/<id>" followed by the end of the string or "/_history/"; the
# context (which key the string belongs to) is checked only for these few
_CANDIDATE = re.compile(rb"Patient/" + _ID + rb'(?:"|/_history/[^"]{0,64}")')
_KEYS = (b'"reference"', b'"fullUrl"')
# an NDJSON line of a Patient resource: its own id (stored JSON starts with resourceType, id)
_PATIENT_LINE = re.compile(rb'(?m)^\{"resourceType"\s*:\s*"Patient"\s*,\s*"id"\s*:\s*"' + _ID + rb'"')


def patients_in(body: bytes | str | None, ndjson: bool = False) -> set[str]:
    """Patient ids referenced in ``body`` (a resource or a Bundle; with ``ndjson``, NDJSON lines,
    whose Patient resources count by their own id)."""
    if not body:
        return set()
    if isinstance(body, str):
        body = body.encode()
    out: set[str] = set()
    rfind = body.rfind
    for m in _CANDIDATE.finditer(body):
        pid = m.group(1).decode()
        if pid in out:
            continue
        start = m.start()
        quote = rfind(b'"', max(0, start - 1024), start)  # where this string value opens
        if quote < 0:
            continue
        prefix = body[quote + 1:start]
        if prefix and not prefix.endswith(b"/"):
            continue  # "SomethingPatient/x" or text
        key = body[max(0, quote - 24):quote].rstrip()
        if key.endswith(b":") and key[:-1].rstrip().endswith(_KEYS):
            out.add(pid)
    if ndjson:
        out.update(m.decode() for m in _PATIENT_LINE.findall(body))
    return out


def patients_in_file(path: Path, chunk: int = 8 * 1024 * 1024) -> set[str]:
    """The same over an export file, in chunks cut at line ends (NDJSON: one resource a line)."""
    out: set[str] = set()
    rest = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            block = rest + block
            cut = block.rfind(b"\n")
            if cut < 0:
                rest = block
                continue
            out |= patients_in(block[: cut + 1], ndjson=True)
            rest = block[cut + 1 :]
    if rest:
        out |= patients_in(rest, ndjson=True)
    return out
