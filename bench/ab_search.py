#!/usr/bin/env python3
"""In-process A/B of one code change on the search scenarios, immune to the machine's drift.

The two variants run in ONE process, alternated in batches of ``--batch`` requests for
``--rounds`` rounds (order flipped every round), and the medians of app CPU (``process_time``)
and PostgreSQL backend CPU per request are compared.  Variant B replaces one attribute of a
module: ``--toggle module:attribute:expression`` (the expression sees ``orig``, the attribute's
value, and ``importlib``); the search statement templates and include caches are emptied at
every switch so each variant builds its own.

    python bench/ab_search.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search \\
        --toggle "app.interactions.search:for_driver:lambda *a, **k: None" --only timeline latest_code
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

from profile_search import in_process_app  # (it puts the repository root on sys.path)
from search_bench import postgres_pids, proc_cpu_seconds, sample, scenario_urls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--toggle", required=True, help="module:attribute:expression giving variant B")
    ap.add_argument("--only", nargs="*", help="scenarios (default: all)")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    client = in_process_app(args.database_url).test_client()
    from app.search import include  # noqa: PLC0415
    from app.search.template import _BY_REGISTRY  # noqa: PLC0415

    mod_name, attr, expr = args.toggle.split(":", 2)
    mod = importlib.import_module(mod_name)
    orig = getattr(mod, attr)
    alt = eval(expr, {"orig": orig, "importlib": importlib})  # noqa: S307 - the operator's own expression

    def variant(b: bool) -> None:
        setattr(mod, attr, alt if b else orig)
        for t in _BY_REGISTRY.values():
            t.clear()
        include._ON_DRIVER.clear()

    urls = scenario_urls(sample(args.database_url, args.seed), args.seed)
    print(f"A = as is, B = {attr} replaced; app / PostgreSQL CPU ms per request (medians)")
    for name, lst in urls.items():
        if args.only and name not in args.only or not lst:
            continue
        for b in (False, True):
            variant(b)
            for p in lst[:40]:  # warm-up: prepared statements, caches
                r = client.get(p)
                assert r.status_code == 200, (p, r.status_code, r.data[:300])
        pg = postgres_pids()
        app_ms: dict[bool, list[float]] = {False: [], True: []}
        pg_ms: dict[bool, list[float]] = {False: [], True: []}
        i = 0
        for rnd in range(args.rounds):
            for b in ((False, True) if rnd % 2 == 0 else (True, False)):
                variant(b)
                c0, p0 = time.process_time(), proc_cpu_seconds(pg)
                for _ in range(args.batch):
                    client.get(lst[i % len(lst)])
                    i += 1
                app_ms[b].append((time.process_time() - c0) / args.batch * 1000)
                pg_ms[b].append((proc_cpu_seconds(pg) - p0) / args.batch * 1000)
        variant(False)
        a, b_ = statistics.median(app_ms[False]), statistics.median(app_ms[True])
        pa, pb = statistics.median(pg_ms[False]), statistics.median(pg_ms[True])
        print(f"{name:18s} app A {a:5.2f} B {b_:5.2f} ({100 * (b_ - a) / a:+5.1f} %)   "
              f"PG A {pa:5.2f} B {pb:5.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
