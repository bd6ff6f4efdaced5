#!/usr/bin/env python3
"""Bring the indexes of an existing benchmark database in line with ``app/storage/tables.py``.

Regenerating ``bench_search`` takes minutes; when only index definitions changed (the migration
is edited in place until the first release), this drops every index whose columns differ from
the table definitions, creates the missing ones, then runs ``VACUUM (ANALYZE)`` so index-only
scans see an all-visible map.  It never touches tables or rows.  PostgreSQL only.

    python bench/reindex.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)

    from sqlalchemy import create_engine, text  # noqa: PLC0415
    from sqlalchemy.schema import CreateIndex  # noqa: PLC0415

    from app.storage.tables import metadata  # noqa: PLC0415

    eng = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        have = {}
        for name, table in c.execute(text(
                "SELECT i.relname, t.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE n.nspname = current_schema() AND NOT x.indisprimary")):
            cols = c.execute(text(
                "SELECT a.attname FROM pg_index x CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY k(att, n) "
                "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.att "
                "WHERE x.indexrelid = (:n)::regclass ORDER BY k.n"), {"n": name}).scalars().all()
            have[name] = (table, tuple(cols))
        tables = set(c.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
        changed = 0
        for table in metadata.sorted_tables:
            if table.name not in tables:  # a table added since the data set was made
                continue
            for idx in table.indexes:
                want = (table.name, tuple(col.name for col in idx.columns))
                if have.get(idx.name) == want:
                    continue
                ddl = str(CreateIndex(idx).compile(dialect=eng.dialect))
                print(f"{idx.name}: {have.get(idx.name)} -> {want}", flush=True)
                changed += 1
                if args.dry_run:
                    continue
                t0 = time.perf_counter()
                if idx.name in have:
                    c.execute(text(f'DROP INDEX "{idx.name}"'))
                c.execute(text(ddl))
                print(f"  {ddl}  ({time.perf_counter() - t0:.1f} s)", flush=True)
        if changed and not args.dry_run:
            t0 = time.perf_counter()
            c.execute(text("VACUUM (ANALYZE)"))
            c.execute(text("CHECKPOINT"))
            print(f"VACUUM (ANALYZE) + CHECKPOINT {time.perf_counter() - t0:.1f} s")
        print(f"{changed} index(es) {'to change' if args.dry_run else 'changed'}")
    eng.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
