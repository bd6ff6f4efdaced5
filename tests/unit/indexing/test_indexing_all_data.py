"""Extraction over every resource of the enabled types in the shared data sets (optional)."""

from __future__ import annotations

import collections
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.indexing import COLUMNS, extract, load_registry
from config import RESULTS_RESOURCE_TYPES

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
SETS = {
    "synthea": "synthea/*.json.gz",
    "fhir-examples": "fhir-examples/*.json",
    "uk-core": "uk-core/*.json",
}

pytestmark = pytest.mark.slow


def _resources(doc: dict) -> Iterator[dict]:
    if doc.get("resourceType") == "Bundle":
        for entry in doc.get("entry", ()):
            if isinstance(entry.get("resource"), dict):
                yield from _resources(entry["resource"])
        return
    yield doc
    yield from doc.get("contained", ())


@pytest.mark.parametrize("name", sorted(SETS))
def test_extracts_every_resource(name):
    files = sorted(p for p in SHARED.glob(SETS[name]) if p.name != "manifest.json")
    if not files:
        pytest.skip(f"shared data set {name} not present")
    reg = load_registry(RESULTS_RESOURCE_TYPES)
    seen: collections.Counter[str] = collections.Counter()
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            doc = json.load(fh)
        for res in _resources(doc):
            res_type = res.get("resourceType")
            if res_type not in RESULTS_RESOURCE_TYPES:
                continue
            out = extract(reg, res)
            seen[res_type] += 1
            for kind, rows in out.items():
                for row in rows:
                    assert tuple(row) == COLUMNS[kind]
                    assert row["param"].split("$")[0].split(":")[0] in reg.params(res_type)
    assert seen, f"no resources of enabled types in {name}"
    if name == "synthea":
        assert seen["Observation"] > 1000 and seen["ImagingStudy"] > 0
