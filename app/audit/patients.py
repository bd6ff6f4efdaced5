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
# an NDJSON line of a Patient resource: its own id (stored JSON starts with resourceType, id).
# Only a match at the start of a line counts (the start of the block or just after a newline):
# that is ``(?m)^`` checked by hand, because a pattern anchored with ``(?m)^`` has no literal
# prefix for the regex engine to search for and was tried at every byte (0.7 s for 83 MB of
# Observations, five times the rest of the scan); a match cannot start inside another one (its
# only "{" is its first byte), so the two find the same lines.
_PATIENT_LINE = re.compile(rb'\{"resourceType"\s*:\s*"Patient"\s*,\s*"id"\s*:\s*"' + _ID + rb'"')


def _in_place(body: bytes, start: int) -> bool:
    """Whether the candidate at ``start`` is a whole reference or fullUrl value."""
    quote = body.rfind(b'"', max(0, start - 1024), start)  # where this string value opens
    if quote < 0:
        return False
    prefix = body[quote + 1:start]
    if prefix and not prefix.endswith(b"/"):
        return False  # "SomethingPatient/x" or text
    key = body[max(0, quote - 24):quote].rstrip()
    return key.endswith(b":") and key[:-1].rstrip().endswith(_KEYS)


class PatientScan:
    """The scan, fed block by block: ``feed`` whole NDJSON lines (``ndjson``) or one JSON document
    at a time; ``ids`` is the union over the blocks.  The export worker feeds it the lines of each
    file as it writes them (app.bulk.export.PartWriter), the download audit reads a file with it
    when no set was recorded (:func:`patients_in_file`); both therefore compute the same set."""

    __slots__ = ("ndjson", "_found")

    def __init__(self, ndjson: bool = False) -> None:
        self.ndjson = ndjson
        self._found: set[bytes] = set()

    def feed(self, body: bytes) -> None:
        found = self._found
        first = _CANDIDATE.search(body)
        if first is not None:
            pid = first.group(1)
            # One patient's page (most searches): every "Patient/" in it is this patient's
            # reference.  Counting (a C scan) tells so at a fraction of the cost of matching all
            # of them; then this patient's candidates are checked only up to a valid one.
            mentions = body.count(b"Patient/")
            if mentions == body.count(b"Patient/" + pid + b'"') + body.count(b"Patient/" + pid + b"/_history/"):
                if pid not in found:
                    for m in _CANDIDATE.finditer(body, first.start()):
                        if _in_place(body, m.start()):
                            found.add(pid)
                            break
            else:
                for m in _CANDIDATE.finditer(body, first.start()):
                    pid = m.group(1)
                    if pid not in found and _in_place(body, m.start()):  # one valid place is enough
                        found.add(pid)
        if self.ndjson and b'"Patient"' in body:  # a substring search first: most blocks hold no Patient
            for m in _PATIENT_LINE.finditer(body):
                start = m.start()
                if start == 0 or body[start - 1] == 10:  # at the start of a line ("\n" is 10)
                    found.add(m.group(1))

    @property
    def ids(self) -> set[str]:
        return {p.decode() for p in self._found}


def patients_in(body: bytes | str | None, ndjson: bool = False) -> set[str]:
    """Patient ids referenced in ``body`` (a resource or a Bundle; with ``ndjson``, NDJSON lines,
    whose Patient resources count by their own id)."""
    if not body:
        return set()
    if isinstance(body, str):
        body = body.encode()
    scan = PatientScan(ndjson)
    scan.feed(body)
    return scan.ids


def patients_in_file(path: Path, chunk: int = 8 * 1024 * 1024) -> set[str]:
    """The same over an export file, in chunks cut at line ends (NDJSON: one resource a line).

    Used by the download audit only for a file whose patients the worker did not record (written
    before migration 0007, or while the audit was off); see docs/decisions/0014-bulk-export-snapshot.md."""
    scan = PatientScan(ndjson=True)
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
            scan.feed(block[: cut + 1])
            rest = block[cut + 1 :]
    if rest:
        scan.feed(rest)
    return scan.ids
