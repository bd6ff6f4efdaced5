"""What the hostile-input tests (search and writes) share: catching the server's crash logs,
counting storage rows, reading OperationOutcomes and grouping what went wrong into a report."""

from __future__ import annotations

import logging
import re
import traceback

from sqlalchemy import func, select

from app.storage.tables import INDEX_TABLES, ref_link, resource, resource_version


class Capture(logging.Handler):
    """Server-side errors logged while a matrix runs: crashes by incident (exception and the top
    ``app/`` frames), audit write failures by request id."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.crashes: dict[str, str] = {}
        self.audit: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "incident" in msg and record.exc_info:
            incident = msg.rsplit("incident ", 1)[1].rstrip(")")
            frames = [f for f in traceback.extract_tb(record.exc_info[2]) if "/app/" in f.filename][-4:]
            top = " <- ".join(f"{f.name} (app/{f.filename.rsplit('/app/', 1)[-1]}:{f.lineno})"
                              for f in reversed(frames))
            text = str(record.exc_info[1])
            first = text.splitlines()[0][:200] if text else ""
            self.crashes[incident] = f"{record.exc_info[0].__name__}: {first} | {top}"
        elif "audit record could not be written" in msg:
            self.audit[msg.rsplit("request ", 1)[1].rstrip(")")] = msg


def storage_counts(app) -> dict[str, int]:  # noqa: ANN001
    """Rows of every storage table, and the versions: equal before and after means nothing was written."""
    engine = app.extensions["results_repo"].engine
    tables = [resource, resource_version, ref_link, *INDEX_TABLES.values()]
    with engine.connect() as c:
        counts = {t.name: c.execute(select(func.count()).select_from(t)).scalar_one() for t in tables}
        counts["max_version"] = c.execute(select(func.max(resource.c.version))).scalar_one()
        counts["sum_version"] = c.execute(select(func.sum(resource.c.version))).scalar_one()
        counts["deleted"] = c.execute(select(func.count()).select_from(resource).where(resource.c.deleted)).scalar_one()
    return counts


def outcome_issues(body: object) -> list[dict]:
    """The issues of an OperationOutcome body; none for anything else."""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return [i for i in body.get("issue", []) if isinstance(i, dict)]
    return []


def crash_detail(body: object, cap: Capture) -> str:
    """For a 500's OperationOutcome: the logged crash its incident number names (or the diagnostics)."""
    for issue in outcome_issues(body):
        d = str(issue.get("diagnostics", ""))
        m = re.search(r"incident ([0-9a-f]{12})", d)
        if m:
            return cap.crashes.get(m.group(1), d[:200])
    return ""


def report(title: str, found: list[tuple[str, str]], limit: int = 40) -> str:
    """``found``: (what went wrong, the request) pairs, grouped by the first with a count and up to
    two example requests each, so a systematic defect is one line however many cases hit it."""
    groups: dict[str, list[str]] = {}
    for what, example in found:
        groups.setdefault(what, [])
        if example not in groups[what]:
            groups[what].append(example)
    lines = [f"{len(ex)}x {what}\n      e.g. " + "\n      e.g. ".join(ex[:2]) for what, ex in groups.items()]
    more = f"\n  ... and {len(lines) - limit} more groups" if len(lines) > limit else ""
    return f"{title} ({len(found)} answers, {len(groups)} groups):\n  " + "\n  ".join(lines[:limit]) + more
