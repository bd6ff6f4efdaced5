#!/usr/bin/env python3
"""Patient/$merge and $unmerge cost against the number of results that move.

A fresh database (a SQLite file in a temp dir, or a private schema of the PostgreSQL server
given by ``--postgres``), migrated; one source and one target Patient; ``--results`` Observations
referencing the source, loaded in transaction Bundles of 500; then per repeat: merge (source into
target), unmerge. Calls the framework-free core (app.identity.merge) directly, so the figures are
the database work without HTTP. Prints wall time per operation and per moved resource.

Example::

    python bench/merge_bench.py --results 2000 --repeat 3
    python bench/merge_bench.py --results 2000 --repeat 3 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _url(args, tmp: str) -> tuple[str, object]:
    if not args.postgres:
        return f"sqlite:///{tmp}/merge.db", None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in args.postgres else "?"

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{args.postgres}{sep}options=-csearch_path%3D{schema}", drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--postgres", default=None)
    args = ap.parse_args()

    from app import create_app
    from app.db.migrate import upgrade
    from app.identity.merge import merge, unmerge
    from app.interactions import bundle as bundle_ix
    from app.interactions.context import from_app

    with tempfile.TemporaryDirectory() as tmp:
        url, drop = _url(args, tmp)
        try:
            upgrade(url)
            app = create_app({"DATABASE_URL": url, "TESTING": True, "SECRET_KEY": "bench", "AUTH_REQUIRED": False,
                              "MAX_BUNDLE_ENTRIES": 1000})
            with app.app_context():
                ctx = from_app(app)
                ids = {}
                for key in ("s", "t"):
                    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
                        {"fullUrl": "urn:uuid:p", "request": {"method": "POST", "url": "Patient"},
                         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:bench", "value": key + uuid.uuid4().hex}],
                                      "name": [{"family": "Bench"}]}}]}
                    r = bundle_ix.process(ctx, tx)
                    loc = orjson.loads(r.body)["entry"][0]["response"]["location"]
                    ids[key] = loc.split("/")[1]
                left = args.results
                while left > 0:
                    n = min(500, left)
                    left -= n
                    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
                        {"request": {"method": "POST", "url": "Observation"}, "resource": {
                            "resourceType": "Observation", "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                            "subject": {"reference": f"Patient/{ids['s']}"},
                            "valueQuantity": {"value": i, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}}}
                        for i in range(n)]}
                    bundle_ix.process(ctx, tx)
                params = {"resourceType": "Parameters", "parameter": [
                    {"name": "source-patient", "valueReference": {"reference": f"Patient/{ids['s']}"}},
                    {"name": "target-patient", "valueReference": {"reference": f"Patient/{ids['t']}"}}]}
                un = {"resourceType": "Parameters", "parameter": [params["parameter"][0]]}
                m_times, u_times = [], []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    assert merge(ctx, params).status == 200
                    t1 = time.perf_counter()
                    assert unmerge(ctx, un).status == 200
                    t2 = time.perf_counter()
                    m_times.append(t1 - t0)
                    u_times.append(t2 - t1)
            app.extensions["results_repo"].engine.dispose()
        finally:
            if drop:
                drop()
    db = "PostgreSQL" if args.postgres else "SQLite"
    print(f"{db}, {args.results} Observations moved, {args.repeat} repeats, Python {platform.python_version()}, "
          f"{platform.machine()}")
    for name, ts in (("merge", m_times), ("unmerge", u_times)):
        med = statistics.median(ts)
        print(f"  {name:8s} median {med * 1000:8.1f} ms  min {min(ts) * 1000:8.1f} ms  "
              f"{med / (args.results + 2) * 1e6:6.1f} us per resource")


if __name__ == "__main__":
    main()
