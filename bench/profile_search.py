#!/usr/bin/env python3
"""In-process timing of the search scenarios (Flask test client, no gunicorn, no network).

Quick A/B of the app's own cost while changing the search code: for each scenario of
``search_bench.py`` it runs ``--n`` requests (after a warm-up) and prints wall ms per request, the
process CPU ms per request and the PostgreSQL backends' CPU ms per request (from /proc); with
``--profile SCENARIO`` it also prints a cProfile of that scenario.

    python bench/profile_search.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from search_bench import postgres_pids, proc_cpu_seconds, sample, scenario_urls  # noqa: E402


def in_process_app(database_url: str):  # noqa: ANN201 - a Flask app
    """The app as the benchmarks run it (open API, no in-process bulk worker), in this process."""
    os.environ.update(DATABASE_URL=database_url, SECRET_KEY="bench-secret-key",
                      PUBLIC_BASE_URL="http://127.0.0.1:8765/fhir", RESULTS_REPO_ENV="development",
                      AUTH_REQUIRED="false", BULK_INPROCESS_WORKER="false")
    from app import create_app  # noqa: PLC0415

    return create_app()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--n", type=int, default=300, help="requests per scenario")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--profile", help="scenario to profile with cProfile")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    client = in_process_app(args.database_url).test_client()
    urls = scenario_urls(sample(args.database_url, args.seed), args.seed)
    for name, lst in urls.items():
        if args.only and name not in args.only:
            continue
        for p in lst[:50]:  # warm-up: prepared statements, caches
            r = client.get(p)
            assert r.status_code == 200, (p, r.status_code, r.data[:300])
        pg = postgres_pids()  # the app's backends exist by now
        prof = cProfile.Profile() if args.profile == name else None
        c0, p0, t0 = time.process_time(), proc_cpu_seconds(pg), time.perf_counter()
        if prof:
            prof.enable()
        for i in range(args.n):
            client.get(lst[i % len(lst)])
        if prof:
            prof.disable()
        c1, p1, t1 = time.process_time(), proc_cpu_seconds(pg), time.perf_counter()
        n = args.n
        print(f"{name:18s} wall {(t1 - t0) / n * 1000:6.2f} ms  app CPU {(c1 - c0) / n * 1000:6.2f} ms  "
              f"PG CPU {(p1 - p0) / n * 1000:6.2f} ms", flush=True)
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(os.environ.get("PROF_SORT", "cumulative")).print_stats(int(os.environ.get("PROF_N", "45")))
            print(s.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
