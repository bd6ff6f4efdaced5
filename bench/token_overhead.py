#!/usr/bin/env python3
"""What checking a SMART access token costs: the search benchmark's scenarios with and without a
token, against one gunicorn server, alternating (issue 4: "reads with a token run at no less than
80 % of the throughput without one").

One server (search_bench.Server: gunicorn, ``AUTH_REQUIRED=false``) serves both kinds of request:
without a token a request runs open; with one it goes through the whole check (the token lookup,
the permission, the sensitivity clearance, the compiled conditions), exactly as with
``AUTH_REQUIRED=true``. Each round runs every chosen scenario open, then with the token (the order
flips every round), so both see the same machine load; the figures are medians over the rounds.
Other settings come from the environment as for the server (e.g. ``SENSITIVE_LABELS=-`` switches
withholding off; ``API_RATE_LIMIT_PER_MINUTE=0`` keeps the per-client rate limit from answering
429, and a round with any error is left out). Besides req/s, the gunicorn workers' CPU per
request is recorded: on a machine shared with other work it is the steadier figure. The token (``--scope``, default ``system/*.rs``: an EPR's or analyst's) is
written to the database and revoked at the end.

    python bench/token_overhead.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search_small \\
        --rounds 5 --seconds 10 --scenarios read timeline mix
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import search_bench as sb  # noqa: E402

_ACCEPT = '{["Accept"] = "application/fhir+json"}'


def wrk(base: str, paths: list[str], token: str | None, seconds: float, clients: int) -> dict:
    """search_bench's wrk run, with ``Authorization: Bearer`` on every request when a token is given."""
    original = sb.WRK_LUA
    if token:
        assert "%" not in token and '"' not in token
        sb.WRK_LUA = original.replace(_ACCEPT, '{["Accept"] = "application/fhir+json", '
                                                f'["Authorization"] = "Bearer {token}"}}')
    try:
        return sb.drive_wrk(base, paths, clients, seconds, 1)
    finally:
        sb.WRK_LUA = original


def issue(url: str, scope: str) -> str:
    from app.auth.tokens import issue_access_token
    from app.db.engine import make_engine

    eng = make_engine(url)
    try:
        raw, _ = issue_access_token(eng, client_id="bench-token-overhead", scope=scope, lifetime_s=6 * 3600)
    finally:
        eng.dispose()
    return raw


def revoke(url: str, raw: str) -> None:
    from app.auth.tokens import revoke_token
    from app.db.engine import make_engine

    eng = make_engine(url)
    try:
        revoke_token(eng, raw)
    finally:
        eng.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10, help="seconds per run (default 10)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scenarios", nargs="+", default=["read", "timeline", "mix"],
                    help="search_bench scenario names, and 'mix' (the weighted mix without page-2 URLs)")
    ap.add_argument("--scope", default="system/*.rs")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)

    s = sb.sample(args.database_url, args.seed)
    urls = sb.scenario_urls(s, args.seed)
    mix = [p for _, p in sb.mix_urls(urls, args.seed)]
    token = issue(args.database_url, args.scope)
    b0 = sb.cpu_busy()
    time.sleep(3)
    b1 = sb.cpu_busy()
    baseline = round((b1[0] - b0[0]) / max(1, b1[1] - b0[1]), 2)
    print(f"{s['n_patients']} patients, {s['observations']} Observations; scope {args.scope}; "
          f"machine busy before: {baseline:.0%}", flush=True)
    srv = sb.Server(args.database_url, args.port, args.workers, "sync", 1)
    runs: dict[str, dict[str, list[dict]]] = {n: {"open": [], "token": []} for n in args.scenarios}
    try:
        for name in args.scenarios:  # warm-up, and a check that both kinds of request succeed
            paths = mix if name == "mix" else urls[name]
            for tok in (None, token):
                r = wrk(srv.base, paths, tok, 3, args.clients)
                if r["errors"]:
                    raise SystemExit(f"{name} ({'token' if tok else 'open'}): {r['errors']} errors, "
                                     f"e.g. {r['errors_sample'][:1]}")
        for rnd in range(args.rounds):
            order = ("open", "token") if rnd % 2 == 0 else ("token", "open")
            for name in args.scenarios:
                paths = mix if name == "mix" else urls[name]
                line = []
                for mode in order:
                    workers = srv.worker_pids()
                    c0 = sb.proc_cpu_seconds(workers)
                    r = wrk(srv.base, paths, token if mode == "token" else None, args.seconds, args.clients)
                    r["app_cpu_ms_per_request"] = round((sb.proc_cpu_seconds(workers) - c0) / max(1, r["requests"]) * 1000, 3)
                    runs[name][mode].append(r)
                    line.append(f"{mode} {r['rps']:7.1f} req/s p95 {r['p95_ms']:5.1f} ms "
                                f"app CPU {r['app_cpu_ms_per_request']:.2f} ms/req err {r['errors']} "
                                f"busy {r['machine_cpu_busy']:.0%}")
                print(f"round {rnd + 1} {name:10s} " + " | ".join(line), flush=True)
    finally:
        srv.stop()
        revoke(args.database_url, token)
    summary = {}
    print("\nmedians over the rounds (token / open):")
    for name, modes in runs.items():
        # a round where either run had errors (e.g. 429 from the rate limiter) does not count
        ok = [(ro, rt) for ro, rt in zip(modes["open"], modes["token"], strict=True) if not ro["errors"] and not rt["errors"]]
        if not ok:
            print(f"  {name:10s} every round had errors")
            continue
        o = statistics.median(ro["rps"] for ro, _ in ok)
        t = statistics.median(rt["rps"] for _, rt in ok)
        co = statistics.median(ro["app_cpu_ms_per_request"] for ro, _ in ok)
        ct = statistics.median(rt["app_cpu_ms_per_request"] for _, rt in ok)
        pairs = [round(rt["rps"] / ro["rps"], 3) for ro, rt in ok]
        summary[name] = {"rounds_counted": len(ok), "open_rps": o, "token_rps": t, "ratio_of_medians": round(t / o, 3),
                         "median_pair_ratio": statistics.median(pairs), "pair_ratios": pairs,
                         "open_app_cpu_ms": co, "token_app_cpu_ms": ct, "app_cpu_ratio": round(co / ct, 3),
                         "open_p95_ms": statistics.median(ro["p95_ms"] for ro, _ in ok),
                         "token_p95_ms": statistics.median(rt["p95_ms"] for _, rt in ok)}
        print(f"  {name:10s} open {o:7.1f} req/s  token {t:7.1f} req/s  ratio {t / o:.0%}  "
              f"(per-round {', '.join(f'{x:.0%}' for x in pairs)}; {len(ok)} rounds); app CPU/request "
              f"open {co:.2f} ms, token {ct:.2f} ms: open/token {co / ct:.0%}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out / f"token-overhead-{stamp}{'-' + args.label if args.label else ''}.json"
    path.write_text(json.dumps({"args": vars(args), "machine": sb.machine(), "baseline_machine_cpu_busy": baseline,
                                "summary": summary, "runs": runs}, indent=1, default=str))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
