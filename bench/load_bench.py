"""Load benchmark: the shared Synthea set through ``results-repo load``'s own code path.

Each run starts from an empty database (a fresh PostgreSQL schema, or a new SQLite file), calls
``app.loader.load_paths`` exactly as the CLI does, and reports resources/s, seconds and bytes
stored per resource. PostgreSQL runs with 1 and 2 workers by default; SQLite always with 1
(one writer at a time). Nothing is vacuumed or checkpointed: this measures loading, not queries.

The machine may be shared, so besides the wall-clock rate each run reports the CPU it used: the
loader's processes (this one and its workers) and, on PostgreSQL, the server backends serving them
(sampled from /proc every 0.2 s by their ``application_name``; the server must run on this
machine), plus how busy the whole machine was. ``ceiling`` = CPUs / (CPU seconds per resource):
the rate the same work would reach with every CPU to itself and perfect overlap -- an upper
bound, not a measurement.

    python bench/load_bench.py                      # PostgreSQL (workers 1, 2) and SQLite
    python bench/load_bench.py --backend sqlite
    python bench/load_bench.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test --workers 1 2 4
    python bench/load_bench.py --profile /tmp/load.prof --backend postgresql --workers 1
    python bench/load_bench.py --backend postgresql --then again edited   # reload: unchanged, updated

Each run is also recorded as JSON in bench/results/load-<UTC time>.json (``--results``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import uuid
from datetime import UTC, datetime
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


_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f) - idle) / _TICK, sum(f) / _TICK


def _own_cpu() -> float:
    """CPU seconds of this process and its reaped children (the loader's worker processes)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class _BackendCpu:
    """CPU seconds of the PostgreSQL backends whose application_name is ``tag``, sampled from
    /proc while the load runs (a backend's last < 0.2 s before it exits can be missed)."""

    def __init__(self, admin, tag: str) -> None:
        self.admin, self.tag = admin, tag
        self.seen: dict[int, float] = {}
        self.base: dict[int, float] = {}  # backends that exist before the load: their CPU so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self, conn) -> None:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = :t"), {"t": self.tag}
        ).scalars()
        for pid in pids:
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            self.seen[pid] = max(self.seen.get(pid, 0.0), (int(f[11]) + int(f[12])) / _TICK)

    def _loop(self) -> None:
        with self.admin.connect() as conn:
            while not self._stop.wait(0.2):
                self._sample(conn)
            self._sample(conn)

    def __enter__(self):
        with self.admin.connect() as conn:
            self._sample(conn)
        self.base, self.seen = dict(self.seen), {}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(cpu - self.base.get(pid, 0.0) for pid, cpu in self.seen.items())


def _run(app, data: Path, workers: int, profile: str | None, backends: _BackendCpu | None = None):
    from app.loader import load_paths

    prof = cProfile.Profile() if profile else None
    busy0, total0 = _machine_busy()
    cpu0 = _own_cpu()
    if prof:
        prof.enable()
    if backends is not None:
        with backends:
            summary = load_paths(app, [data], workers=workers)
    else:
        summary = load_paths(app, [data], workers=workers)
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    busy1, total1 = _machine_busy()
    cpu = {
        "loader_cpu_s": _own_cpu() - cpu0,
        "db_cpu_s": backends.seconds if backends is not None else 0.0,
        "machine_busy": (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0,
        "load_avg_1min": os.getloadavg()[0],
    }
    return summary, cpu


def edited_copy(data: Path, folder: Path) -> Path:
    """The data set with a ``meta.tag`` added to every resource: loading it over the original
    makes every resource an update."""
    import gzip

    import orjson

    files = [data] if data.is_file() else sorted(data.rglob("*.json.gz")) + sorted(data.rglob("*.json"))
    for f in files:
        raw = gzip.open(f).read() if f.name.endswith(".gz") else f.read_bytes()
        bundle = orjson.loads(raw)
        for e in bundle.get("entry", []):
            res = e.get("resource")
            if isinstance(res, dict):
                res.setdefault("meta", {}).setdefault("tag", []).append({"system": "urn:bench", "code": "edited"})
        (folder / f.name.removesuffix(".gz")).write_bytes(orjson.dumps(bundle))
    return folder


def bench_pg(pg_url: str, data: Path, workers: int, profile: str | None, then: list[str]) -> list[dict]:
    schema = f"bench_load_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}options=-csearch_path%3D{schema}&application_name={schema}"
    try:
        app = _app(url)

        def size() -> int:
            with admin.connect() as c:
                return sum(
                    c.execute(text(f'SELECT pg_total_relation_size(\'"{schema}"."{t}"\')')).scalar_one()
                    for t in TABLES
                )

        runs = [("first load", _run(app, data, workers, profile, _BackendCpu(admin, schema)), size())]
        for phase in then:
            with tempfile.TemporaryDirectory() as tmp:
                source = edited_copy(data, Path(tmp)) if phase == "edited" else data
                runs.append((f"{phase}, over it", _run(app, source, workers, None, _BackendCpu(admin, schema)), size()))
        app.extensions["results_repo"].engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return [{**_row("postgresql", workers, summary, nbytes, cpu), "phase": phase} for phase, (summary, cpu), nbytes in runs]


def bench_sqlite(data: Path, profile: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        url = f"sqlite:///{path}"
        app = _app(url)
        summary, cpu = _run(app, data, 1, profile)
        engine = app.extensions["results_repo"].engine
        with engine.connect() as c:  # fold the WAL into the file so its size is the data's
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        size = path.stat().st_size
    return _row("sqlite", 1, summary, size, cpu)


def _row(backend: str, workers: int, s, size: int, cpu: dict) -> dict:
    per = (cpu["loader_cpu_s"] + cpu["db_cpu_s"]) / s.processed if s.processed else 0.0
    return {
        **cpu,
        "cpu_ms_per_resource": per * 1000,
        "ceiling": (os.cpu_count() or 1) / per if per else 0.0,
        "backend": backend,
        "workers": workers,
        "resources": s.processed,
        "created": s.created,
        "updated": s.updated,
        "unchanged": s.unchanged,
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
    ap.add_argument(
        "--then",
        nargs="*",
        choices=("again", "edited"),
        default=[],
        help="PostgreSQL: after the first load, load into the same database again: 'again' the same "
        "files (every resource unchanged), 'edited' a copy with a meta.tag added (every resource updated)",
    )
    ap.add_argument(
        "--results",
        default=str(ROOT / "bench" / "results"),
        help="folder for the JSON record of the run (default: %(default)s; '' for none)",
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
            for row in bench_pg(args.pg_url, args.data, w, args.profile if w == 1 else None, args.then):
                rows.append(row)
                _print(row)
    if args.backend in ("all", "sqlite"):
        rows.append(bench_sqlite(args.data, args.profile if args.backend == "sqlite" else None))
        _print(rows[-1])
    if args.results:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        Path(args.results).mkdir(parents=True, exist_ok=True)
        out = Path(args.results) / f"load-{stamp}.json"
        record = {"benchmark": "load", "when": stamp, "machine": machine(), "command": sys.argv, "runs": rows}
        out.write_text(json.dumps(record, indent=2))
        print(f"results: {out}")
    return 1 if any(r["failed"] for r in rows) else 0


def _print(r: dict) -> None:
    print(
        f"{r['backend']:<10} workers={r['workers']}{'  [' + r['phase'] + ']' if 'phase' in r else ''}"
        f"  {r['resources']} resources in {r['seconds']:.1f} s"
        f" = {r['rate']:,.0f} resources/s;  {r['bytes_per_resource']:,.0f} bytes stored per resource"
        f"  (failed units {r['failed']}, retries {r['retries']};"
        f" created {r['created']}, updated {r['updated']}, unchanged {r['unchanged']})",
        flush=True,
    )
    print(
        f"           CPU: loader {r['loader_cpu_s']:.1f} s + database {r['db_cpu_s']:.1f} s"
        f" = {r['cpu_ms_per_resource']:.2f} ms/resource (ceiling {r['ceiling']:,.0f}/s);"
        f"  machine busy {r['machine_busy']:.0%} during the run, load average {r['load_avg_1min']:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
