"""Rebuild ``data/search-parameters.json`` from the specification's own SearchParameter Bundle.

The registry must never drift from the spec by hand-editing, so the subset shipped with the app is
produced by this script: ``python -m app.indexing.build_data /path/to/fhir-r4-spec``. It keeps every
SearchParameter whose base names an enabled results type (``config.RESULTS_RESOURCE_TYPES``) or
``Resource``/``DomainResource``, plus any definition a kept composite points at, and strips the
narrative and publishing metadata the server never reads.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from config import RESULTS_RESOURCE_TYPES

DATA_DIR = Path(__file__).with_name("data")
KEEP_FIELDS = (
    "resourceType",
    "id",
    "url",
    "version",
    "name",
    "code",
    "base",
    "type",
    "expression",
    "target",
    "component",
    "modifier",
    "comparator",
    "multipleOr",
    "multipleAnd",
    "chain",
    "description",
)


def select(bundle: dict, types: list[str]) -> list[dict]:
    """The SearchParameters the server needs, in spec order, trimmed to the fields it reads."""
    wanted = set(types) | {"Resource", "DomainResource"}
    by_url = {e["resource"]["url"]: e["resource"] for e in bundle["entry"]}
    keep: dict[str, dict] = {}
    for sp in by_url.values():
        if wanted & set(sp["base"]):
            keep[sp["url"]] = sp
    # Composites may point at definitions whose base lies outside the selection.
    pending = [c["definition"] for sp in list(keep.values()) for c in sp.get("component", ())]
    while pending:
        url = pending.pop()
        if url not in keep:
            keep[url] = by_url[url]
            pending.extend(c["definition"] for c in keep[url].get("component", ()))
    order = {url: i for i, url in enumerate(by_url)}
    return [
        {k: sp[k] for k in KEEP_FIELDS if k in sp}
        for sp in sorted(keep.values(), key=lambda s: order[s["url"]])
    ]


def choice_elements() -> list[str]:
    """Names of every choice element (``value[x]`` -> ``value``) in the fhir.resources R4B models.

    The evaluator reads JSON, where ``value[x]`` appears as ``valueQuantity``; knowing which names
    are choices lets it look for such keys only for those, instead of scanning every dict on
    every missing element. Read from the model sources (no imports: that would take seconds).
    """
    import fhir.resources

    models = Path(fhir.resources.__file__).with_name("R4B")
    names: set[str] = set()
    for path in models.glob("*.py"):
        names.update(re.findall(r'"one_of_many":\s*"(\w+)"', path.read_text(encoding="utf-8")))
    if not names:
        raise SystemExit(f"no choice elements found under {models}")
    return sorted(names)


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else Path("../shared/data/fhir-r4-spec")
    bundle = json.loads((src / "search-parameters-all.json").read_text(encoding="utf-8"))
    params = select(bundle, RESULTS_RESOURCE_TYPES)
    out = {
        "resourceType": "Bundle",
        "id": "results-repo-search-parameters",
        "type": "collection",
        "entry": [{"fullUrl": sp["url"], "resource": sp} for sp in params],
    }
    (DATA_DIR / "search-parameters.json").write_text(
        json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    choices = choice_elements()
    (DATA_DIR / "choice-elements.json").write_text(json.dumps(choices, indent=0) + "\n")
    shutil.copyfile(
        src / "compartmentdefinition-patient.json", DATA_DIR / "compartmentdefinition-patient.json"
    )
    print(f"wrote {len(params)} SearchParameters, {len(choices)} choice names to {DATA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
