"""Validation cost per Synthea Observation, to check the loader's budget (not a pytest test).

Run: python tests/unit/fhir/bench_validation.py [path/to/shared/data/synthea]
Prints the best of five passes over every Observation in the Synthea bundles.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from fhir.resources.R4B import get_fhir_model_class

from app.fhir import validation

DEFAULT = Path(__file__).resolve().parents[4] / "shared" / "data" / "synthea"


def best_of(fn: Callable[[object], object], items: Sequence[object], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best


def main(folder: Path) -> None:
    observations = []
    for path in sorted(folder.glob("*.json.gz")):
        bundle = orjson.loads(gzip.decompress(path.read_bytes()))
        observations += [
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
        ]
    raws = [orjson.dumps(o) for o in observations]
    model = get_fhir_model_class("Observation")
    spec = validation._spec(model)

    def walk(o: object) -> None:
        validation._Walker().element(o, spec, "Observation")  # type: ignore[arg-type]

    def json_then_loads(raw: object) -> None:
        model.model_validate_json(raw)  # type: ignore[arg-type]
        orjson.loads(raw)  # type: ignore[arg-type]

    runs: list[tuple[str, Callable[[object], object], Sequence[object]]] = [
        ("walk only (JSON rules, NHS numbers)", walk, observations),
        ("model_validate(dict) only", model.model_validate, observations),
        ("validate_resource(dict)", validation.validate_resource, observations),
        ("validate_json_bytes(bytes) = orjson + validate_resource", validation.validate_json_bytes, raws),
        ("model_validate_json(bytes) + orjson.loads", json_then_loads, raws),
    ]
    n = len(observations)
    print(f"{n} Synthea Observations, best of 5")
    for label, fn, items in runs:
        seconds = best_of(fn, items)
        print(f"{label:58s} {seconds / n * 1e6:7.1f} us  {n / seconds:8,.0f}/s per core")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
