"""What the protective limits cost per request (issue 6, parts 6 and 7).

1. Rate-limit counters: the in-process token bucket (app/api/limits.py) against a counter row in
   the database (one upsert per request, the alternative that would make the limit exact across
   workers), on SQLite and PostgreSQL.
2. Search deadline: the same searches in-process (Flask test client) with ``SEARCH_TIMEOUT_MS``
   off and on, on both back ends, for the one-statement path (PostgreSQL autocommit: the limit adds
   ``SET`` + ``RESET``) and the several-statement path (a transaction: ``SET LOCAL``).
3. Security headers: one FHIR read with and without the after_request hook.

    python bench/limits_bench.py [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test] [--n 2000]

Prints a table; writes bench/results/limits-<time>.json. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def per_call_us(fn, n: int) -> float:  # noqa: ANN001
    for _ in range(min(200, n)):
        fn()
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t0) / n * 1e6)
    return min(best)


def bench_bucket(n: int) -> dict:
    from app.api.limits import RateLimiter

    lim = RateLimiter(per_minute=10**9, burst=10**9)
    keys = [f"client:{i}" for i in range(100)]
    i = iter(range(10**12))
    single = per_call_us(lambda: lim.take(keys[next(i) % 100]), n * 50)
    # 8 threads contending for the lock
    done = []

    def worker() -> None:
        t0 = time.perf_counter()
        for k in range(n * 10):
            lim.take(keys[k % 100])
        done.append((time.perf_counter() - t0) / (n * 10) * 1e6)

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"in_process_us": round(single, 2), "in_process_8_threads_us_per_call": round(statistics.mean(done), 2)}


def bench_db_counter(url: str, n: int) -> float:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    table = f"rl_{uuid.uuid4().hex[:8]}"
    with engine.connect() as c:
        c.execute(text(f"CREATE TABLE {table} (k VARCHAR(200) PRIMARY KEY, tokens FLOAT NOT NULL, stamp FLOAT NOT NULL)"))
    sql = text(f"INSERT INTO {table} (k, tokens, stamp) VALUES (:k, 99, :now) ON CONFLICT (k) DO UPDATE SET "
               f"tokens = MIN(100, {table}.tokens + (:now - {table}.stamp) * 1.0) - 1, stamp = :now RETURNING tokens"
               if url.startswith("sqlite") else
               f"INSERT INTO {table} (k, tokens, stamp) VALUES (:k, 99, :now) ON CONFLICT (k) DO UPDATE SET "
               f"tokens = LEAST(100, {table}.tokens + (:now - {table}.stamp) * 1.0) - 1, stamp = :now RETURNING tokens")
    try:
        with engine.connect() as c:
            i = iter(range(10**12))
            return round(per_call_us(lambda: c.execute(sql, {"k": f"client:{next(i) % 100}", "now": time.time()}).scalar_one(), n), 1)
    finally:
        with engine.connect() as c:
            c.execute(text(f"DROP TABLE {table}"))
        engine.dispose()


def bench_http(url: str, n: int) -> dict:
    from app import create_app
    from app.db.migrate import upgrade

    upgrade(url)
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench-secret-0123456789abcdef0123456789",
                      "AUTH_REQUIRED": False, "API_RATE_LIMIT_PER_MINUTE": 0, "AUDIT_ENABLED": False})
    c = app.test_client()
    h = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    entries = [{"resource": {"resourceType": "Patient", "name": [{"family": f"Bench{i}"}], "gender": "female"},
                "request": {"method": "POST", "url": "Patient"}} for i in range(500)]
    assert c.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, headers=h).status_code == 200
    pid = c.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=h).get_json()["id"]
    out = {}
    cases = {
        "search one statement (_total=none)": "/fhir/Patient?gender=female&_count=10&_total=none",
        "search page + total": "/fhir/Patient?gender=female&_count=10&_total=accurate",
    }
    for label, path in cases.items():
        row = {}
        for timeout in (0, 15000):
            app.config["SEARCH_TIMEOUT_MS"] = timeout
            row[f"timeout_{timeout}"] = round(per_call_us(lambda p=path: c.get(p, headers=h), n), 0)
        out[label] = row
    from app.api import headers as hdr

    read = lambda: c.get(f"/fhir/Patient/{pid}", headers=h)  # noqa: E731
    with_headers = per_call_us(read, n)
    funcs = app.after_request_funcs[None]
    funcs.remove(hdr.add_security_headers)
    without = per_call_us(read, n)
    funcs.append(hdr.add_security_headers)
    out["read: security headers hook"] = {"with_us": round(with_headers, 0), "without_us": round(without, 0)}
    app.extensions["results_repo"].engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    os.environ.setdefault("RESULTS_REPO_INSTANCE", tmp)
    sqlite_url = f"sqlite:///{tmp}/limits.db"
    result: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "n": args.n,
                    "python": sys.version.split()[0], "cpus": os.cpu_count()}
    result["token_bucket"] = bench_bucket(args.n)
    result["db_counter_us"] = {"sqlite": bench_db_counter(sqlite_url, args.n)}
    schema = f"lb_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in args.pg else "?"
    pg_url = f"{args.pg}{sep}options=-csearch_path%3D{schema}"
    try:
        result["db_counter_us"]["postgresql"] = bench_db_counter(pg_url, args.n)
        result["http_us"] = {"sqlite": bench_http(sqlite_url, args.n // 4), "postgresql": bench_http(pg_url, args.n // 4)}
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / f"limits-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
