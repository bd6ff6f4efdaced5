"""Load benchmark: the shared Synthea set through ``results-repo load``'s own code path.

Each run starts from an empty database (a fresh PostgreSQL schema, or a new SQLite file), calls
``app.loader.load_paths`` exactly as the CLI does, and reports resources/s, seconds and bytes
stored per resource. PostgreSQL runs with 1 and 2 workers by default; SQLite always with 1
(one writer at a time). Nothing is vacuumed or checkpointed: this measures loading, not queries.

    python bench/load_bench.py                      # PostgreSQL (workers 1, 2) and SQLite
    python bench/load_bench.py --backend sqlite
    python bench/load_bench.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test --workers 1 2 4
    python bench/load_bench.py --profile /tmp/load.prof --backend postgresql --workers 1
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/synthea")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TABLES = (
    "resource",
    "resource_version",
    "ref_link",
    "sp_token",
    "sp_string",
    "sp_date",
    "sp_quantity",
    "sp_number",
    "sp_reference",
    "sp_uri",
)


def machine() -> str:
    """nproc, CPU model and RAM, so figures can be compared across machines."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {ram} RAM, Python {platform.python_version()}"


def _app(url: str):
    from app import create_app
    from app.db.migrate import upgrade

    upgrade(url)
    return create_app({"DATABASE_URL": url, "SECRET_KEY": "bench", "TESTING": True})


def _run(app, data: Path, workers: int, profile: str | None):
    from app.loader import load_paths

    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    summary = load_paths(app, [data], workers=workers)
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    return summary


def bench_pg(pg_url: str, data: Path, workers: int, profile: str | None) -> dict:
    schema = f"bench_load_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    try:
        app = _app(url)
        summary = _run(app, data, workers, profile)
        app.extensions["results_repo"].engine.dispose()
        with admin.connect() as c:
            size = sum(
                c.execute(text(f'SELECT pg_total_relation_size(\'"{schema}"."{t}"\')')).scalar_one()
                for t in TABLES
            )
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return _row("postgresql", workers, summary, size)


def bench_sqlite(data: Path, profile: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        url = f"sqlite:///{path}"
        app = _app(url)
        summary = _run(app, data, 1, profile)
        engine = app.extensions["results_repo"].engine
        with engine.connect() as c:  # fold the WAL into the file so its size is the data's
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        size = path.stat().st_size
    return _row("sqlite", 1, summary, size)


def _row(backend: str, workers: int, s, size: int) -> dict:
    return {
        "backend": backend,
        "workers": workers,
        "resources": s.processed,
        "seconds": s.seconds,
        "rate": s.rate,
        "bytes_per_resource": size / s.processed if s.processed else 0.0,
        "failed": len(s.failed),
        "retries": s.retried,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark `results-repo load` on the shared Synthea set (fresh database per run): "
        "prints resources/s, seconds and bytes stored per resource for PostgreSQL and SQLite."
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder or file to load (default: %(default)s)",
    )
    ap.add_argument("--backend", choices=("all", "postgresql", "sqlite"), default="all")
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_PG),
        help="PostgreSQL server; each run uses a fresh schema there (default: %(default)s)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="PostgreSQL worker counts (default: 1 2)",
    )
    ap.add_argument(
        "--profile", default=None, help="write cProfile stats of the (last) in-process run here"
    )
    args = ap.parse_args(argv)
    if not args.data.exists():
        ap.error(f"{args.data} does not exist; pass --data with the Synthea folder")

    print(f"machine: {machine()}")
    print(f"data:    {args.data}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    rows = []
    if args.backend in ("all", "postgresql"):
        for w in args.workers:
            rows.append(bench_pg(args.pg_url, args.data, w, args.profile if w == 1 else None))
            _print(rows[-1])
    if args.backend in ("all", "sqlite"):
        rows.append(bench_sqlite(args.data, args.profile if args.backend == "sqlite" else None))
        _print(rows[-1])
    return 1 if any(r["failed"] for r in rows) else 0


def _print(r: dict) -> None:
    print(
        f"{r['backend']:<10} workers={r['workers']}  {r['resources']} resources in {r['seconds']:.1f} s"
        f" = {r['rate']:,.0f} resources/s;  {r['bytes_per_resource']:,.0f} bytes stored per resource"
        f"  (failed units {r['failed']}, retries {r['retries']})",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
