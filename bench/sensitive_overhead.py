#!/usr/bin/env python3
"""What withholding sensitive results costs a search: in-process A/B/C timing (Flask test client,
no network) of the search benchmark's scenarios with one ``system/*.rs`` token.

- ``off``: ``SENSITIVE_LABELS`` empty: no clearance lookup, no predicate (the pre-issue-6 path);
- ``withheld``: the default labels and a client without clearance: one clearance lookup per
  request and ``NOT EXISTS`` on the ``_security`` index rows in every query;
- ``cleared``: the default labels and a client cleared for ``*``: the lookup, no predicate.

Each round runs every scenario in the three variants (the order rotates every round), so all see
the same machine load; the figures are medians over rounds of wall ms per request.  The temporary
client and its tokens are removed at the end.

    python bench/sensitive_overhead.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search_small_h4 --rounds 5 --n 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from search_bench import sample, scenario_urls  # noqa: E402

DEFAULT_SCENARIOS = ["read", "timeline", "latest_code", "reports_include", "summary_count", "code_date_paging"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=100, help="requests per scenario, variant and round")
    ap.add_argument("--scenarios", nargs="*", default=DEFAULT_SCENARIOS)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    os.environ.update(RESULTS_REPO_ENV="development", BULK_INPROCESS_WORKER="false")
    from app import create_app  # noqa: PLC0415
    from app.auth.clients import add_client, remove_client  # noqa: PLC0415
    from app.auth.tokens import issue_access_token  # noqa: PLC0415
    from app.protect.clearance import remove_clearance, set_clearance  # noqa: PLC0415

    base = {"DATABASE_URL": args.database_url, "SECRET_KEY": "bench-secret-key", "AUTH_REQUIRED": True,
            "PUBLIC_BASE_URL": "http://127.0.0.1:8765/fhir", "API_RATE_LIMIT_PER_MINUTE": 0}
    apps = {"off": create_app({**base, "SENSITIVE_LABELS": []}), "withheld": create_app(base),
            "cleared": create_app(base)}
    engine = apps["withheld"].extensions["results_repo"].engine
    plain_id, cleared_id = f"bench-sens-{uuid.uuid4().hex[:8]}", f"bench-sens-all-{uuid.uuid4().hex[:8]}"
    from joserfc.jwk import ECKey  # noqa: PLC0415

    public = ECKey.generate_key("P-384", private=True).as_dict(private=False)
    jwks = {"keys": [{**public, "kid": "k", "alg": "ES384"}]}
    for cid in (plain_id, cleared_id):
        add_client(engine, client_id=cid, kind="backend", scope="system/*.rs", jwks=jwks)
    set_clearance(engine, "client", cleared_id, None, False)
    tok = {"off": issue_access_token(engine, client_id=plain_id, scope="system/*.rs")[0],
           "withheld": issue_access_token(engine, client_id=plain_id, scope="system/*.rs")[0],
           "cleared": issue_access_token(engine, client_id=cleared_id, scope="system/*.rs")[0]}
    clients = {k: a.test_client() for k, a in apps.items()}
    urls = scenario_urls(sample(args.database_url, args.seed), args.seed)
    variants = list(apps)
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for name in args.scenarios:  # warm-up
            for v in variants:
                for p in urls[name][:20]:
                    r = clients[v].get(p, headers={"Authorization": f"Bearer {tok[v]}"})
                    assert r.status_code == 200, (v, p, r.status_code, r.data[:300])
        for rnd in range(args.rounds):
            order = variants[rnd % 3:] + variants[:rnd % 3]
            for name in args.scenarios:
                lst = urls[name]
                for v in order:
                    h = {"Authorization": f"Bearer {tok[v]}"}
                    t0 = time.perf_counter()
                    for i in range(args.n):
                        clients[v].get(lst[(i + rnd * args.n) % len(lst)], headers=h)
                    times.setdefault((name, v), []).append((time.perf_counter() - t0) * 1000 / args.n)
    finally:
        remove_clearance(engine, "client", cleared_id)
        for cid in (plain_id, cleared_id):
            remove_client(engine, cid)
    print(f"{'scenario':<18}" + "".join(f"{v:>12}" for v in variants) + f"{'withheld/off':>14}")
    for name in args.scenarios:
        med = {v: statistics.median(times[(name, v)]) for v in variants}
        print(f"{name:<18}" + "".join(f"{med[v]:>10.2f}ms" for v in variants)
              + f"{med['withheld'] / med['off']:>13.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
