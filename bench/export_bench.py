#!/usr/bin/env python3
"""Bulk export benchmark: a system export of all Observations and DiagnosticReports of a
database made by generate.py (``bench_search``: 500,000 Observations, 24,107 DiagnosticReports).

Runs the export engine of the worker (app.bulk.export.run_export: the snapshot query in keyset
batches sized by bytes, NDJSON files split by size, temp name + fsync + rename) in a child process
per measurement, so the child's peak RSS (``ru_maxrss``) is the worker's peak memory for an
export of that size. ``--limit N`` stops after about N resources (at a batch boundary). Each
file's patient set is computed as the worker does with the audit on (the download audit's scan of
the lines as they are written); ``--no-patient-scan`` leaves it out, as the worker does with
``AUDIT_ENABLED=false``.

The database is only read: the session is ``default_transaction_read_only``, and the job tables
are not needed (files are recorded by a no-op callback instead of ``bulk_file`` rows; that is one
small INSERT per file of 128 MiB in the real worker).

Example::

    python bench/export_bench.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search --limit 100000 --limit 0

``--http`` measures the whole thing as an analyst's client sees it instead: ``gunicorn -w 2
wsgi:app`` (as bench/search_bench.py starts it, token check off) and a separate ``results-repo
worker`` process (the production shape) on the same database; per repeat a fresh worker, then
kick-off (``GET [base]/$export?_type=Observation,DiagnosticReport``, ``Prefer: respond-async``),
status polls every ``--poll`` seconds (the server is configured with ``BULK_RETRY_AFTER=1`` and
``BULK_MIN_POLL_INTERVAL`` = the poll interval, so the polls are never 429), every output file
downloaded over HTTP (streamed, lines counted against the manifest), then ``DELETE``. Reported:
resources/s from kick-off to the last byte of the last file, the export part (kick-off to
manifest) and the download part, and the worker's RSS sampled while it runs: at the first poll
whose ``X-Progress`` shows >= 100,000 resources exported, at the end, and its peak (``VmHWM``).
Because the machine is shared, it also reports CPU seconds (from /proc): the worker process, the
PostgreSQL backends serving it (found by ``application_name``), and the gunicorn workers during
the downloads; resources per CPU second of the export compares across busy and quiet periods.
This mode writes job rows (``bulk_job``/``bulk_file``) into the database; the files go to a temp
directory that is removed. ::

    python bench/export_bench.py --http --repeat 3 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search
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


def child(url: str, limit: int, outdir: Path, file_max: int, batch_bytes: int, level: str,
          scan_patients: bool = True) -> dict:
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
                   file_max_bytes=file_max, batch_bytes=batch_bytes, record=record, heartbeat=heartbeat,
                   scan_patients=scan_patients)
    except Enough:
        pass
    secs = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in outdir.iterdir()) + state["partial"]
    engine.dispose()
    return {
        "level": level, "limit": limit, "patient_scan": scan_patients, "resources": state["n"],
        "seconds": round(secs, 2),
        "resources_per_second": round(state["n"] / secs) if secs else None,
        "bytes_written": size, "mb_per_second": round(size / secs / 1e6, 1) if secs else None,
        "files_finished": len(files),
        "peak_rss_mb": round(rlimit.getrusage(rlimit.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_export_mb": round(rss_start / 1024, 1),
    }


def _proc_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _tree_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of the given processes (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _with_app_name(url: str, name: str) -> str:
    """The URL with a libpq ``application_name``, so the bench finds its PostgreSQL backends."""
    if not url.startswith("postgresql"):
        return url
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def _pg_cpu(url: str, name: str) -> float:
    """CPU seconds of the PostgreSQL backends serving connections named ``name`` (this machine)."""
    if not url.startswith("postgresql"):
        return 0.0
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.connect() as conn:
        pids = list(conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :n"),
                                 {"n": name}).scalars())
    eng.dispose()
    return _tree_cpu(pids)


def http_repeat(base: str, env: dict, poll: float, types: list[str], parallel: int, web_pids: list[int],
                db_url: str) -> dict:
    """One export over HTTP with a fresh ``results-repo worker`` process."""
    import requests

    env = dict(env, DATABASE_URL=_with_app_name(env["DATABASE_URL"], "export-bench-worker"))
    worker = subprocess.Popen(["results-repo", "worker"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        seen = ""
        while "waiting for jobs" not in seen:  # "Export worker ... waiting for jobs"
            line = worker.stdout.readline()
            if not line:
                raise SystemExit(f"worker did not start: {seen[-2000:]}")
            seen += line
        rss_idle = _proc_kb(worker.pid, "VmRSS")
        cpu0 = _tree_cpu([worker.pid])
        s = requests.Session()
        t0 = time.perf_counter()
        r = s.get(f"{base}/$export", params={"_type": ",".join(types)},
                  headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
        assert r.status_code == 202, r.text[:500]
        status_url = r.headers["Content-Location"]
        samples: list[tuple[float, int, int | None]] = []  # (seconds, exported, worker RSS kB)
        polls = 0
        while True:
            r = s.get(status_url, headers={"Accept": "application/json"})
            polls += 1
            if r.status_code == 200:
                break
            assert r.status_code == 202, (r.status_code, r.text[:500])
            progress = r.headers.get("X-Progress", "")
            exported = int(progress.split("(")[-1].split()[0]) if "(" in progress else 0
            samples.append((time.perf_counter() - t0, exported, _proc_kb(worker.pid, "VmRSS")))
            time.sleep(poll)
        t_manifest = time.perf_counter()
        rss_end = _proc_kb(worker.pid, "VmRSS")
        rss_peak = _proc_kb(worker.pid, "VmHWM")
        worker_cpu = _tree_cpu([worker.pid]) - cpu0
        pg_cpu = _pg_cpu(db_url, "export-bench-worker")  # the worker's backends are all new
        web_cpu0 = _tree_cpu(web_pids)
        m = r.json()
        expected = sum(o["count"] for o in m["output"])

        def fetch(url: str) -> tuple[int, int]:
            n = b = 0
            with requests.get(url, headers={"Accept": "application/fhir+ndjson"}, stream=True) as f:
                assert f.status_code == 200 and f.headers["Content-Type"] == "application/fhir+ndjson", (
                    f.status_code, f.content[:300], url)
                for chunk in f.raw.stream(4 * 1024 * 1024, decode_content=False):
                    n += chunk.count(b"\n")
                    b += len(chunk)
            return n, b

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(parallel) as pool:
            got = list(pool.map(fetch, [o["url"] for o in m["output"]]))
        lines, size = sum(g[0] for g in got), sum(g[1] for g in got)
        t_done = time.perf_counter()
        web_cpu = _tree_cpu(web_pids) - web_cpu0
        assert lines == expected, (lines, expected)
        assert s.delete(status_url).status_code == 202
        at_100k = next((x for x in samples if x[1] >= 100_000), None)
        total = t_done - t0
        return {
            "resources": expected, "files": len(m["output"]), "bytes": size,
            "end_to_end_seconds": round(total, 2), "resources_per_second": round(expected / total),
            "export_seconds": round(t_manifest - t0, 2), "download_seconds": round(t_done - t_manifest, 2),
            "download_mb_per_second": round(size / (t_done - t_manifest) / 1e6, 1),
            "status_polls": polls, "worker_cpu_seconds": round(worker_cpu, 2),
            "worker_postgres_cpu_seconds": round(pg_cpu, 2), "download_web_cpu_seconds": round(web_cpu, 2),
            "export_cpu_seconds": round(worker_cpu + pg_cpu, 2),
            "resources_per_export_cpu_second": round(expected / (worker_cpu + pg_cpu)) if worker_cpu + pg_cpu else None,
            "worker_rss_idle_mb": round((rss_idle or 0) / 1024, 1),
            "worker_rss_at_100k_mb": round(at_100k[2] / 1024, 1) if at_100k and at_100k[2] else None,
            "exported_at_that_poll": at_100k[1] if at_100k else None,
            "worker_rss_end_mb": round((rss_end or 0) / 1024, 1),
            "worker_peak_rss_mb": round((rss_peak or 0) / 1024, 1),
        }
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


def http_main(args) -> None:
    import statistics

    from search_bench import Server

    out = Path(tempfile.mkdtemp(prefix="export-bench-http-", dir=args.out))
    port = args.port
    base = f"http://127.0.0.1:{port}/fhir"
    extra = {**dict(kv.split("=", 1) for kv in args.server_env), "BULK_EXPORT_DIR": str(out), "BULK_RETRY_AFTER": "1", "BULK_MIN_POLL_INTERVAL": str(args.poll),
             "BULK_WORKER_POLL": str(args.poll), "BULK_FILE_MAX_BYTES": str(args.file_max_bytes),
             "BULK_MAX_JOBS_PER_CLIENT": "100"}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        server = Server(args.database_url, port, 2, "sync", 1)
        env = dict(os.environ, DATABASE_URL=args.database_url, SECRET_KEY="bench-secret-key", PUBLIC_BASE_URL=base,
                   RESULTS_REPO_ENV="development", AUTH_REQUIRED="false", BULK_INPROCESS_WORKER="false")
        results = []
        try:
            for i in range(args.repeat):
                load = os.getloadavg()[0]
                res = http_repeat(base, env, args.poll, TYPES, args.parallel_downloads, server.worker_pids(),
                                  args.database_url)
                res["load_average_before"] = round(load, 2)
                results.append(res)
                print(f"[{i + 1}/{args.repeat}] {res['resources']} resources end to end {res['end_to_end_seconds']} s "
                      f"= {res['resources_per_second']} res/s (export {res['export_seconds']} s, download "
                      f"{res['download_seconds']} s at {res['download_mb_per_second']} MB/s); worker RSS "
                      f"{res['worker_rss_at_100k_mb']} MB at {res['exported_at_that_poll']}, "
                      f"{res['worker_rss_end_mb']} MB at the end, peak {res['worker_peak_rss_mb']} MB; "
                      f"CPU s: worker {res['worker_cpu_seconds']} + its PostgreSQL {res['worker_postgres_cpu_seconds']}"
                      f" = {res['resources_per_export_cpu_second']} res per CPU s, downloads (web) "
                      f"{res['download_web_cpu_seconds']}; load before {res['load_average_before']}", flush=True)
        finally:
            server.stop()
    finally:
        shutil.rmtree(out, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    med = {k: statistics.median(r[k] for r in results)
           for k in ("resources_per_second", "end_to_end_seconds", "export_seconds", "download_seconds",
                     "worker_peak_rss_mb", "worker_rss_end_mb", "worker_cpu_seconds", "worker_postgres_cpu_seconds",
                     "download_web_cpu_seconds", "resources_per_export_cpu_second")}
    print("median:", json.dumps(med))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "benchmark": "export-http", "when": stamp, "database_url": args.database_url.split("@")[-1],
        "types": TYPES, "poll_seconds": args.poll, "file_max_bytes": args.file_max_bytes,
        "parallel_downloads": args.parallel_downloads, "server_env": args.server_env,
        "server": "gunicorn -w 2 (sync) + one results-repo worker process",
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results, "median": med,
    }
    path = ROOT / "bench" / "results" / f"export-http-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {path.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_search")
    ap.add_argument("--limit", type=int, action="append", help="stop after about N resources; 0 = all")
    ap.add_argument("--file-max-bytes", type=int, default=128 * 1024 * 1024)
    ap.add_argument("--batch-bytes", type=int, default=8 * 1024 * 1024)
    ap.add_argument("--level", choices=("system", "patient"), default="system",
                    help="system: every row of the types; patient: Patient/$export (rows in some patient's compartment)")
    ap.add_argument("--no-patient-scan", action="store_true",
                    help="engine only: do not compute each file's patient set (the worker with the audit off)")
    ap.add_argument("--out", default=None, help="directory for the NDJSON files (default: a temp dir, removed)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--http", action="store_true", help="end to end over HTTP (see above)")
    ap.add_argument("--repeat", type=int, default=3, help="--http: exports to run (median reported)")
    ap.add_argument("--poll", type=float, default=0.25, help="--http: seconds between status polls")
    ap.add_argument("--port", type=int, default=8765, help="--http: gunicorn port")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="--http: extra environment for the server and worker (e.g. AUDIT_ENABLED=false)")
    ap.add_argument("--parallel-downloads", type=int, default=2,
                    help="--http: files downloaded at once (bulk clients download in parallel)")
    args = ap.parse_args()
    if args.http:
        sys.path.insert(0, str(ROOT / "bench"))
        http_main(args)
        return
    limits = args.limit or [100_000, 0]

    if args.child:
        out = Path(args.out)
        print(json.dumps(child(args.database_url, limits[0], out, args.file_max_bytes, args.batch_bytes, args.level,
                               scan_patients=not args.no_patient_scan)))
        return

    results = []
    for limit in limits:
        out = Path(tempfile.mkdtemp(prefix="export-bench-", dir=args.out))
        try:
            cmd = [sys.executable, __file__, "--child", "--database-url", args.database_url, "--limit", str(limit),
                   "--file-max-bytes", str(args.file_max_bytes), "--batch-bytes", str(args.batch_bytes),
                   "--level", args.level, "--out", str(out)] + (["--no-patient-scan"] if args.no_patient_scan else [])
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
        "patient_scan": not args.no_patient_scan,
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results,
    }
    path = ROOT / "bench" / "results" / f"export-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
