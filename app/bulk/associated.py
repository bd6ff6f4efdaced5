"""``includeAssociatedData``: the Provenance of the exported resources (Bulk Data 2.0.0).

- ``RelevantProvenanceResources``: every Provenance (at transactionTime) with a ``target`` that is
  an exported non-Provenance resource;
- ``LatestProvenanceResources``: for each exported non-Provenance resource, only the Provenance
  with the latest ``recorded`` (ties: the one written last) that targets it.
Neither removes Provenance the export returns anyway (``_type`` including Provenance); those are
not written twice. With both values, Relevant (a superset) is what is done.

Which resources were exported is kept on disk, not in memory (an export of millions of resources
must stay flat): a SQLite file in the job's directory, filled batch by batch *before* the batch's
lines are written and committed, so a resumed job's set is complete (rows re-exported after a
restart are inserted again, harmlessly). The file is not a listed output and goes with the job.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from app.indexing.extract import parse_reference
from app.storage.references import under_base

RELEVANT, LATEST = "RelevantProvenanceResources", "LatestProvenanceResources"
PROVENANCE_VALUES = (LATEST, RELEVANT)
TRACKER_NAME = ".exported.sqlite"


def wanted(values: Iterable[str]) -> str | None:
    """Which Provenance inclusion the job asks for (Relevant wins), or None."""
    vals = set(values)
    if RELEVANT in vals:
        return RELEVANT
    if LATEST in vals:
        return LATEST
    return None


def recorded_key(doc: dict) -> str:
    """``Provenance.recorded`` as a sortable UTC string ('' when absent or unreadable)."""
    raw = doc.get("recorded")
    if not isinstance(raw, str):
        return ""
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def targets(doc: dict, base_url: str | None = None) -> list[tuple[str, str]]:
    """The ``(type, id)`` of a Provenance's targets on this server (relative, or absolute on
    ``base_url``: another server's Patient/1 is not ours), Provenance targets left out."""
    out: list[tuple[str, str]] = []
    for t in doc.get("target") or []:
        ref = t.get("reference") if isinstance(t, dict) else None
        parsed = parse_reference(ref) if isinstance(ref, str) else None
        if parsed and parsed[2] is not None and not under_base(parsed[2], base_url):
            continue
        if parsed and parsed[0] and parsed[1] and parsed[0] != "Provenance" and (parsed[0], parsed[1]) not in out:
            out.append((parsed[0], parsed[1]))
    return out


class Tracker:
    """The exported ``(type, id)`` set and, for Latest, the best Provenance per target."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / TRACKER_NAME
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS exported (t TEXT, id TEXT, PRIMARY KEY (t, id)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS latest (t TEXT, id TEXT, recorded TEXT, rid INTEGER, "
                        "PRIMARY KEY (t, id)) WITHOUT ROWID")
        self.db.commit()

    def add(self, res_type: str, ids: list[str]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO exported VALUES (?, ?)", [(res_type, i) for i in ids])
        self.db.commit()

    def exported(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        out = set()
        for p in pairs:
            if self.db.execute("SELECT 1 FROM exported WHERE t = ? AND id = ?", p).fetchone():
                out.add(p)
        return out

    def offer(self, pairs: Iterable[tuple[str, str]], recorded: str, rid: int) -> None:
        """Keep ``rid`` as the latest Provenance of each target if it is later than the one held."""
        self.db.executemany(
            "INSERT INTO latest VALUES (?, ?, ?, ?) ON CONFLICT (t, id) DO UPDATE SET "
            "recorded = excluded.recorded, rid = excluded.rid "
            "WHERE (excluded.recorded, excluded.rid) > (latest.recorded, latest.rid)",
            [(t, i, recorded, rid) for t, i in pairs])

    def reset_latest(self) -> None:
        self.db.execute("DELETE FROM latest")
        self.db.commit()

    def commit(self) -> None:
        self.db.commit()

    def latest_rids(self, after: int, n: int) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT rid FROM latest WHERE rid > ? ORDER BY rid LIMIT ?", (after, n))]

    def close(self) -> None:
        self.db.close()

    def remove(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
