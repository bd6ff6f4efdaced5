#!/usr/bin/env python3
"""Time the slow search shapes straight in PostgreSQL, as the server writes them and with the fixes
suggested in bench/results/SEARCH-RESULTS.md. Candidate indexes are created inside a transaction
that is rolled back, so the database is left unchanged.

    python bench/sql_probe.py --dsn "host=127.0.0.1 user=postgres dbname=bench_search"
"""

from __future__ import annotations

import argparse
import time

import psycopg

CODE_SUB = (
    "SELECT t.rid FROM sp_token t WHERE t.res_type = 'Observation' AND t.param = 'code' "
    "AND t.system = 'http://loinc.org' AND t.code = %(code)s"
)
PAGE = (
    "SELECT p.rid, rv.content FROM (SELECT r.rid, r.version FROM resource r "
    "WHERE r.res_type = 'Observation' AND r.deleted IS false AND r.rid IN ({sub}) AND r.rid > {after} "
    "ORDER BY r.rid LIMIT 51) p JOIN resource_version rv ON rv.rid = p.rid AND rv.version = p.version "
    "ORDER BY p.rid"
)
COUNT = (
    "SELECT count(*) FROM resource WHERE res_type = 'Observation' AND deleted IS false AND rid IN "
    "(SELECT rid FROM sp_token WHERE res_type = 'Observation' AND param = 'code' "
    "AND system = 'http://loinc.org' AND code = '2339-0')"
)
POLL = (
    "SELECT r.rid, rv.content FROM (SELECT rid, version FROM resource WHERE res_type = 'Observation' "
    "AND deleted IS false AND last_updated > %(lu)s ORDER BY rid LIMIT 51) r "
    "JOIN resource_version rv ON rv.rid = r.rid AND rv.version = r.version"
)
POLL_M = (
    "WITH m AS MATERIALIZED (SELECT rid, version FROM resource WHERE res_type = 'Observation' "
    "AND deleted IS false AND last_updated > %(lu)s) SELECT m.rid, rv.content FROM m "
    "JOIN resource_version rv ON rv.rid = m.rid AND rv.version = m.version ORDER BY m.rid LIMIT 51"
)
NHS = (
    "SELECT rid FROM resource WHERE res_type = 'Patient' AND rid IN (SELECT rid FROM sp_token "
    "WHERE res_type = 'Patient' AND param = 'identifier' "
    "AND system = 'https://fhir.nhs.uk/Id/nhs-number' AND code = %(nhs)s)"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres dbname=bench_search")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    c = psycopg.connect(args.dsn)

    def run(label: str, sql: str, params: dict) -> None:
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            c.execute(sql, params).fetchall()
            ts.append((time.perf_counter() - t) * 1000)
        ts.sort()
        print(f"{label:75s} median {ts[len(ts) // 2]:8.2f} ms", flush=True)

    code = c.execute(
        "SELECT code FROM sp_token WHERE res_type = 'Observation' AND param = 'code' "
        "GROUP BY code ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()[0]
    # The rid a page-100 cursor carries: the 99*50th match in rid order.
    after = c.execute(
        f"SELECT r.rid FROM resource r WHERE r.res_type = 'Observation' AND r.rid IN ({CODE_SUB}) "
        "ORDER BY r.rid OFFSET 4949 LIMIT 1", {"code": code}
    ).fetchone()[0]
    lu = c.execute(
        "SELECT last_updated FROM resource WHERE res_type = 'Observation' "
        "ORDER BY last_updated DESC OFFSET 2000 LIMIT 1"
    ).fetchone()[0]
    nhs = c.execute(
        "SELECT code FROM sp_token WHERE res_type = 'Patient' AND param = 'identifier' "
        "AND system = 'https://fhir.nhs.uk/Id/nhs-number' LIMIT 1"
    ).fetchone()[0]
    p = {"code": code, "lu": lu, "nhs": nhs}

    def suite(tag: str) -> None:
        run(f"[{tag}] page 1 (code {code})", PAGE.format(sub=CODE_SUB, after=0), p)
        run(f"[{tag}] page 100, as the server does it", PAGE.format(sub=CODE_SUB, after=after), p)
        run(f"[{tag}] page 100, rid > after also in the IN-subquery",
            PAGE.format(sub=CODE_SUB + f" AND t.rid > {after}", after=after), p)
        run(f"[{tag}] _summary=count code 2339-0", COUNT, p)
        run(f"[{tag}] _lastUpdated poll (as the server does it)", POLL, p)
        run(f"[{tag}] _lastUpdated poll, matches materialised first", POLL_M, p)
        run(f"[{tag}] NHS number", NHS, p)

    suite("schema now")
    c.execute("CREATE INDEX probe_tok_a ON sp_token (res_type, param, code, system, rid)")
    c.execute("CREATE INDEX probe_tok_b ON sp_token (res_type, param, system, code, rid)")
    c.execute("ANALYZE sp_token")
    suite("+ token indexes ending in rid")
    c.rollback()


if __name__ == "__main__":
    main()
