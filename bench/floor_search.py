#!/usr/bin/env python3
"""The search mix's floor on this machine: the same database work and the same response bytes,
with no application code, under the same gunicorn and wrk.

Why: the throughput target of the search benchmark (issue 3) is a figure for a whole machine.
When the server falls short, the question is how much of the gap is ours (statement building,
Bundles, links, audit records, Flask hooks) and how much the machine cannot give at all for the
work the mix asks of PostgreSQL, HTTP and a WSGI server.  This script answers it:

1. *record*: the real app runs in this process (Flask test client) over every distinct URL of the
   benchmark mix (``search_bench.mix_urls``, page-two links included); every statement it sends
   through psycopg or app.db.wire (searches, includes, totals, ``SET``, the audit INSERT) is
   recorded with its parameters, and so is the response body;
2. *replay*: gunicorn (same workers, worker class and backlog as ``search_bench.py``) serves a
   ten-line WSGI app that, for a recorded URL, runs the recorded statements on one psycopg
   connection per worker (autocommit; the wire's statements through the wire, the others through
   a cursor) and returns the recorded body;
3. wrk drives the same URL sequence, 16 clients, and the real server runs right after on the
   same sequence: ``--rounds`` alternations, so the machine's drift hits both alike.

What the floor leaves out is exactly what the server adds: Flask routing and hooks, search
parsing, templates, link sealing, Bundle assembly, the audit record's construction, and the
BEGIN/COMMIT of reads that need one snapshot.  It cannot be beaten by any server built on the
fixed stack (Flask, gunicorn, psycopg) doing the same database work.

    python bench/floor_search.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from profile_search import in_process_app  # (it puts the repository root on sys.path)
from search_bench import (
    ROOT,
    Server,
    _path_of,
    drive_wrk,
    machine,
    mix_urls,
    next_link,
    postgres_pids,
    proc_cpu_seconds,
    sample,
    scenario_urls,
)

from app.db import wire

_RECORDING_ENV = "FLOOR_RECORDING"


# ---- record -------------------------------------------------------------------------------------
def record(database_url: str, seed: int) -> tuple[list[str], dict[str, tuple[list, bytes, str]]]:
    """The mix's URL sequence and, per distinct URL, (statements, body, content type) as the real
    app sends and answers them (the second time it serves the URL: caches warm, as in a run)."""
    import psycopg

    client = in_process_app(database_url).test_client()
    urls = scenario_urls(sample(database_url, seed), seed)
    for p in list(urls["code_date_paging"]):  # page two, as search_bench.add_page_two does
        r = client.get(p)
        nxt = next_link(r.data) if r.status_code == 200 else None
        if nxt:
            urls["code_date_paging"].append(_path_of(nxt))
    paths = [p for _, p in mix_urls(urls, seed)]
    calls: list = []
    orig = psycopg.Cursor.execute
    orig_wire = wire._run

    def spy(self, query, params=None, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(("cursor", query if isinstance(query, str) else query.as_string(self), params))
        return orig(self, query, params, *a, **k)

    def spy_wire(conn, state, sql, params, *rest):  # noqa: ANN001, ANN002, ANN202
        calls.append(("wire", sql, dict(params)))
        return orig_wire(conn, state, sql, params, *rest)

    recorded: dict[str, tuple[list, bytes, str]] = {}
    psycopg.Cursor.execute = spy
    wire._run = spy_wire
    try:
        for p in dict.fromkeys(paths):
            client.get(p)
            calls.clear()
            r = client.get(p)
            if r.status_code != 200:
                raise SystemExit(f"{p}: HTTP {r.status_code} {r.data[:300]!r}")
            recorded[p] = (list(calls), r.data, r.content_type)
    finally:
        psycopg.Cursor.execute = orig
        wire._run = orig_wire
    return paths, recorded


# ---- replay (the gunicorn app: ``bench.floor_search:floor_app`` with FLOOR_RECORDING set) --------
_conn = None
_recorded: dict | None = None


def floor_app(environ, start_response):  # noqa: ANN001, ANN201 - WSGI
    """Run the recorded statements of this URL, answer the recorded body; /fhir/metadata is the
    liveness probe search_bench.Server waits for."""
    global _conn, _recorded
    if _recorded is None:
        import psycopg
        from sqlalchemy.engine import make_url

        with open(os.environ[_RECORDING_ENV], "rb") as fh:
            _recorded = pickle.load(fh)
        u = make_url(os.environ["DATABASE_URL"])
        _conn = psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database,
                                autocommit=True)
    path = environ["PATH_INFO"] + (("?" + environ["QUERY_STRING"]) if environ.get("QUERY_STRING") else "")
    if path == "/fhir/metadata":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    statements, body, ctype = _recorded[path]
    with _conn.cursor() as cur:
        for how, sql, params in statements:
            if how == "wire":  # as the app runs them (app.db.wire): prepared, one libpq call
                wire.rows(_conn, sql, params)
                continue
            cur.execute(sql, params)
            if cur.description is not None:
                cur.fetchall()
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


# ---- drive --------------------------------------------------------------------------------------
def run_mix(srv: Server, paths: list[str], args) -> dict:
    base = srv.base
    drive_wrk(base, paths, args.clients, 5, 1)  # warm-up
    workers, pg = srv.worker_pids(), postgres_pids()
    c0 = (proc_cpu_seconds(workers), proc_cpu_seconds(pg), time.perf_counter())
    m = drive_wrk(base, paths, args.clients, args.duration, 1)
    c1 = (proc_cpu_seconds(workers), proc_cpu_seconds(pg), time.perf_counter())
    n = max(1, m["requests"])
    m["app_cpu_ms_per_request"] = round((c1[0] - c0[0]) / n * 1000, 2)
    m["postgres_cpu_ms_per_request"] = round((c1[1] - c0[1]) / n * 1000, 2)
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_search")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20, help="seconds per mix run (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="floor/server alternations (default 3)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    os.environ.setdefault("API_RATE_LIMIT_PER_MINUTE", "0")

    print("recording the mix's statements and responses in process ...", flush=True)
    paths, recorded = record(args.database_url, args.seed)
    n_stmts = statistics.mean(len(recorded[p][0]) for p in paths)
    print(f"  {len(paths)} requests in the sequence, {len(recorded)} distinct URLs, "
          f"{n_stmts:.2f} statements per request on average")
    with tempfile.NamedTemporaryFile("wb", suffix=".pickle", delete=False) as fh:
        pickle.dump(recorded, fh)
        rec_path = fh.name

    results: dict[str, list[dict]] = {"floor": [], "server": []}
    try:
        for rnd in range(args.rounds):
            for kind in (("floor", "server") if rnd % 2 == 0 else ("server", "floor")):
                if kind == "floor":
                    srv = Server(args.database_url, args.port, args.workers, "sync", 1, app="floor_search:floor_app",
                                 chdir=ROOT / "bench", extra_env={_RECORDING_ENV: rec_path})
                else:
                    srv = Server(args.database_url, args.port, args.workers, "sync", 1)
                try:
                    m = run_mix(srv, paths, args)
                finally:
                    srv.stop()
                results[kind].append(m)
                print(f"  round {rnd + 1} {kind:6s} {m['rps']:7.1f} req/s  p95 {m['p95_ms']:5.1f} ms  "
                      f"app {m['app_cpu_ms_per_request']:.2f} ms  PG {m['postgres_cpu_ms_per_request']:.2f} ms  "
                      f"errors {m['errors']}  (machine busy {m['machine_cpu_busy']:.0%})", flush=True)
                time.sleep(2)
    finally:
        os.unlink(rec_path)
    med = {k: {f: statistics.median(r[f] for r in v) for f in
               ("rps", "p95_ms", "app_cpu_ms_per_request", "postgres_cpu_ms_per_request")}
           for k, v in results.items()}
    ratios = [s["rps"] / f["rps"] for f, s in zip(results["floor"], results["server"], strict=True)]
    print(f"\nmedians: floor {med['floor']}\n         server {med['server']}\n"
          f"server / floor throughput per round: {[round(x, 2) for x in ratios]}")
    out = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args),
           "statements_per_request": round(n_stmts, 2), "runs": results, "medians": med,
           "server_over_floor": ratios}
    res = ROOT / "bench" / "results" / (
        f"floor-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}{('-' + args.label) if args.label else ''}.json")
    res.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {res}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
