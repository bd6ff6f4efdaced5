"""Print the cost of index extraction (no assertions: timings vary by machine and load).

Run from the repository root::

    python tests/unit/indexing/bench_extract.py [bundle.json.gz | resource.json ...]

Without arguments it uses the first 20 shared Synthea bundles (``../shared/data/synthea``), or the
files under ``tests/data`` when those are absent. Each type is timed as the best of 7 passes
(CPU time), with the date-parse cache cleared before each pass so that repeated timestamps do not
flatter the figure.
"""

from __future__ import annotations

import glob
import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from app.indexing import extract, load_registry  # noqa: E402
from app.indexing.dates import date_range  # noqa: E402
from config import RESULTS_RESOURCE_TYPES  # noqa: E402

DEFAULT_SYNTHEA = ROOT.parent / "shared" / "data" / "synthea"


def _resources(paths: list[str]) -> list[dict]:
    out: list[dict] = []
    for p in paths:
        opener = gzip.open if p.endswith(".gz") else open
        with opener(p, "rt", encoding="utf-8") as fh:
            doc = json.load(fh)
        if doc.get("resourceType") == "Bundle":
            out.extend(e["resource"] for e in doc.get("entry", ()) if "resource" in e)
        else:
            out.append(doc)
    return out


def main(argv: list[str]) -> None:
    t0 = time.perf_counter()
    reg = load_registry(RESULTS_RESOURCE_TYPES)
    print(f"registry build (incl. JSON load): {(time.perf_counter() - t0) * 1e3:.1f} ms")
    paths = argv or sorted(glob.glob(str(DEFAULT_SYNTHEA / "*.json.gz")))[:20]
    paths = paths or sorted(glob.glob(str(ROOT / "tests" / "data" / "*.json")))
    resources = [r for r in _resources(paths) if r.get("resourceType") in RESULTS_RESOURCE_TYPES]
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for res_type, items in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
        for r in items:
            extract(reg, r)  # warm plans and caches
        best = float("inf")
        for _ in range(7):
            date_range.cache_clear()
            t = time.process_time()
            nrows = 0
            for r in items:
                nrows += sum(len(v) for v in extract(reg, r).values())
            best = min(best, (time.process_time() - t) / len(items) * 1e6)
        print(f"{res_type:18} n={len(items):5}  {best:7.1f} us/resource  "
              f"({nrows / len(items):.1f} rows/resource)")


if __name__ == "__main__":
    main(sys.argv[1:])
