#!/usr/bin/env python3
"""The app's own cost per search request in CPU instructions (valgrind's callgrind), which the
machine's drift does not move.

Wall-clock figures on the benchmark machine drift by up to 2x within minutes (docs/performance.md),
so a 10-20 % change in the app's CPU per request can hide in them.  Instructions do not drift:
the mix's URL sequence (``search_bench.mix_urls``) is served in process through the WSGI app
(no HTTP, no gunicorn), once with ``--requests`` requests after the warm-up and once with none,
each under callgrind; the difference divided by ``--requests`` is the app's instructions per
request (PostgreSQL's work is not counted: it runs in its own processes).  Give ``--tree`` to
measure another checkout of the repository (``git worktree add /tmp/start <commit>``) against
the same database.

    python bench/instructions_search.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search
    python bench/instructions_search.py --tree /tmp/start   # the same, for another checkout

Needs valgrind (``apt-get install valgrind``); about 2 minutes per tree for 300 requests.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _serve(database_url: str, warmup: int, n: int, seed: int, only: str | None) -> None:
    """Child: the app of the current directory's tree, ``warmup`` + ``n`` requests of the mix."""
    tree = Path.cwd()
    sys.path[:0] = [str(tree), str(tree / "bench")]
    os.environ.setdefault("API_RATE_LIMIT_PER_MINUTE", "0")
    from profile_search import in_process_app
    from search_bench import mix_urls, sample, scenario_urls
    from werkzeug.test import EnvironBuilder

    app = in_process_app(database_url)
    urls = scenario_urls(sample(database_url, seed), seed)
    if only:
        seq = [random.Random(seed).choice(urls[only]) for _ in range(warmup + n)]
    else:
        seq = [p for _, p in mix_urls(urls, seed, warmup + n)]
    envs = [EnvironBuilder(path=p).get_environ() for p in seq]

    def start_response(*_a) -> None:
        return None

    for env in envs:
        body = app.wsgi_app(dict(env), start_response)
        b"".join(body)
        getattr(body, "close", lambda: None)()


def _instructions(tree: Path, args: argparse.Namespace, n: int) -> int:
    out = Path(tempfile.mkdtemp(prefix="callgrind-")) / "out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve()),
           "--child", str(n), "--database-url", args.database_url, "--warmup", str(args.warmup),
           "--seed", str(args.seed)] + (["--only", args.only] if args.only else [])
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"callgrind run failed ({tree}, {n} requests):\n{done.stderr[-2000:]}")
    m = re.search(r"^summary:\s*(\d+)", out.read_text(), re.M)
    shutil.rmtree(out.parent, ignore_errors=True)
    if not m:
        raise SystemExit(f"no instruction total in callgrind's output for {tree}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_search")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the repository checkout to measure (default: this one)")
    ap.add_argument("--requests", type=int, default=300, help="requests measured after the warm-up")
    ap.add_argument("--warmup", type=int, default=200, help="requests served first in both runs (caches, templates)")
    ap.add_argument("--only", help="one scenario of search_bench.py instead of the mix")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        _serve(args.database_url, args.warmup, args.child, args.seed, args.only)
        return 0
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    tree = args.tree.resolve()
    print(f"tree {tree}: {args.warmup} warm-up requests, then 0 and {args.requests} under callgrind ...", flush=True)
    base = _instructions(tree, args, 0)
    total = _instructions(tree, args, args.requests)
    per = (total - base) / args.requests
    print(f"  {per:,.0f} instructions per request ({args.only or 'mix'}; app process only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
