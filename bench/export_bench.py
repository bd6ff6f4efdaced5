#!/usr/bin/env python3
"""Bulk export benchmark: a system export of all Observations and DiagnosticReports of a
database made by generate.py (``bench_search``: 500,000 Observations, 24,107 DiagnosticReports).

Runs the export engine of the worker (app.bulk.export.run_export: the snapshot query in keyset
batches sized by bytes, NDJSON files split by size, temp name + fsync + rename) in a child process
per measurement, so the child's peak RSS (``ru_maxrss``) is the worker's peak memory for an
export of that size. ``--limit N`` stops after about N resources (at a batch boundary).

The database is only read: the session is ``default_transaction_read_only``, and the job tables
are not needed (files are recorded by a no-op callback instead of ``bulk_file`` rows; that is one
small INSERT per file of 128 MiB in the real worker).

Example::

    python bench/export_bench.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search --limit 100000 --limit 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource as rlimit
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TYPES = ["Observation", "DiagnosticReport"]


class Enough(Exception):
    pass


def _read_only(url: str) -> str:
    if not url.startswith("postgresql"):
        return url
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-c%20default_transaction_read_only%3Don"


def child(url: str, limit: int, outdir: Path, file_max: int, batch_bytes: int, level: str) -> dict:
    from app.bulk.export import Cursor, run_export
    from app.bulk.params import ExportParams
    from app.db import make_engine
    from app.fhir.jsonutil import utcnow
    from app.indexing.registry import load_registry
    from config import RESULTS_RESOURCE_TYPES

    engine = make_engine(_read_only(url))
    registry = load_registry(list(RESULTS_RESOURCE_TYPES))
    files: list = []
    state = {"n": 0, "partial": 0}

    def record(f, cur) -> None:
        if f is not None:
            files.append((f.name, f.count, f.size))

    def heartbeat(exported: int) -> None:
        state["n"] = exported
        if limit and exported >= limit:
            state["partial"] = sum(p.stat().st_size for p in outdir.glob("*.part"))  # removed on stop
            raise Enough()

    rss_start = rlimit.getrusage(rlimit.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        run_export(engine, job_id="bench", level=level, params=ExportParams(types=list(TYPES)), at=utcnow(),
                   registry=registry, tz=None, base_url="http://bench/fhir", outdir=outdir, cursor=Cursor(),
                   file_max_bytes=file_max, batch_bytes=batch_bytes, record=record, heartbeat=heartbeat)
    except Enough:
        pass
    secs = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in outdir.iterdir()) + state["partial"]
    engine.dispose()
    return {
        "level": level, "limit": limit, "resources": state["n"], "seconds": round(secs, 2),
        "resources_per_second": round(state["n"] / secs) if secs else None,
        "bytes_written": size, "mb_per_second": round(size / secs / 1e6, 1) if secs else None,
        "files_finished": len(files),
        "peak_rss_mb": round(rlimit.getrusage(rlimit.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_export_mb": round(rss_start / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_search")
    ap.add_argument("--limit", type=int, action="append", help="stop after about N resources; 0 = all")
    ap.add_argument("--file-max-bytes", type=int, default=128 * 1024 * 1024)
    ap.add_argument("--batch-bytes", type=int, default=8 * 1024 * 1024)
    ap.add_argument("--level", choices=("system", "patient"), default="system",
                    help="system: every row of the types; patient: Patient/$export (rows in some patient's compartment)")
    ap.add_argument("--out", default=None, help="directory for the NDJSON files (default: a temp dir, removed)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    limits = args.limit or [100_000, 0]

    if args.child:
        out = Path(args.out)
        print(json.dumps(child(args.database_url, limits[0], out, args.file_max_bytes, args.batch_bytes, args.level)))
        return

    results = []
    for limit in limits:
        out = Path(tempfile.mkdtemp(prefix="export-bench-", dir=args.out))
        try:
            cmd = [sys.executable, __file__, "--child", "--database-url", args.database_url, "--limit", str(limit),
                   "--file-max-bytes", str(args.file_max_bytes), "--batch-bytes", str(args.batch_bytes),
                   "--level", args.level, "--out", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        results.append(res)
        print(f"{res['resources']:>8} resources  {res['seconds']:>7.2f} s  {res['resources_per_second']:>7} res/s  "
              f"{res['mb_per_second']:>6} MB/s  peak RSS {res['peak_rss_mb']} MB  ({res['files_finished']} files)",
              flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "benchmark": "export", "when": stamp, "database_url": args.database_url.split("@")[-1],
        "types": TYPES, "level": args.level, "file_max_bytes": args.file_max_bytes, "batch_bytes": args.batch_bytes,
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results,
    }
    path = ROOT / "bench" / "results" / f"export-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
