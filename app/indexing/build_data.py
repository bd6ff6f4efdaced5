"""Rebuild ``data/search-parameters.json`` from the specification's own SearchParameter Bundle.

The registry must never drift from the spec by hand-editing, so the data shipped with the app is
produced by this script: ``python -m app.indexing.build_data /path/to/fhir-r4-spec``. It keeps the
SearchParameters of *every* R4 resource type (and ``Resource``/``DomainResource``), since operators
may enable any type (``ENABLED_RESOURCE_TYPES``) and the registry builds entries for the enabled
ones only (:mod:`app.indexing.registry`); it strips the narrative and publishing metadata the server
never reads (everything but :data:`KEEP_FIELDS`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

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


def select(bundle: dict) -> list[dict]:
    """Every SearchParameter of the Bundle, in spec order, trimmed to the fields the server reads.

    Fails when a composite's ``component.definition`` names no SearchParameter of the Bundle:
    the registry resolves components by that URL.
    """
    params = [e["resource"] for e in bundle["entry"]]
    urls = {sp["url"] for sp in params}
    if len(urls) != len(params):
        raise SystemExit("two SearchParameters share a url")
    for sp in params:
        for comp in sp.get("component", ()):
            if comp["definition"] not in urls:
                raise SystemExit(f"{sp['url']}: component {comp['definition']} is not in the Bundle")
    return [{k: sp[k] for k in KEEP_FIELDS if k in sp} for sp in params]


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
    params = select(bundle)
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
