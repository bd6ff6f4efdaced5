"""The demo data set: a few Synthea patients and the UK Core examples, loaded in one call.

Shipped inside the package (``app/demo_data``) so ``results-repo demo`` works from a wheel with
no network and no shared data folder; see ``app/demo_data/README.md`` for origins and licences.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.loader.runner import LoadSummary, ProgressFn, load_paths

if TYPE_CHECKING:
    from flask import Flask

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_data"

# Ids known to be in the demo set, for the printed examples.
DEMO_PATIENT = "UKCore-Patient-RichardSmith-Example"
DEMO_SYNTHEA_PATIENT = "5d08f7da-5a78-4d35-afec-9d2c2c0245ee"  # Raymon Kris (has an ImagingStudy)


def load_demo(app: Flask, reset: bool = False, progress: ProgressFn | None = None) -> LoadSummary:
    """Migrate the database and load the demo set; ``reset`` empties the database first.

    Callable from ``results-repo run --demo`` as well as ``results-repo demo``; loading twice is
    harmless because the loader PUTs with the source ids (unchanged resources get no new version).
    """
    from app.db.migrate import downgrade, upgrade

    url = app.config["DATABASE_URL"]
    if reset:
        upgrade(url)  # a brand-new database has nothing to downgrade from
        downgrade(url, "base")
    upgrade(url)
    return load_paths(app, [DEMO_DIR], progress=progress)


def demo_instructions(base_url: str, serving: bool = False) -> str:
    """How to look at what was loaded: the commands a newcomer copies first.

    ``serving`` is true when the caller is about to start the server itself, so the hint to start
    one would only confuse.
    """
    b = base_url.rstrip("/")
    tx = (
        '{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:0b1f2c3d-0000-4000-8000-000000000001",'
        '"resource":{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org",'
        '"code":"718-7","display":"Hemoglobin [Mass/volume] in Blood"}]},'
        f'"subject":{{"reference":"Patient/{DEMO_PATIENT}"}},"effectiveDateTime":"2024-05-01T09:30:00+01:00",'
        '"valueQuantity":{"value":13.2,"unit":"g/dL","system":"http://unitsofmeasure.org","code":"g/dL"}},'
        '"request":{"method":"POST","url":"Observation"}}]}'
    )
    return "\n".join(
        [
            "",
            *([] if serving else ["Start the server (if it is not running):  results-repo run"]),
            f"FHIR base URL: {b}",
            "",
            "Try:",
            f"  curl -s {b}/metadata | head -c 300",
            f"  curl -s {b}/Patient/{DEMO_PATIENT}",
            f"  curl -s {b}/Patient/{DEMO_SYNTHEA_PATIENT}/_history",
            f"  curl -s '{b}/Observation?patient={DEMO_SYNTHEA_PATIENT}&_count=5'",
            f"  curl -s '{b}/ImagingStudy?patient={DEMO_SYNTHEA_PATIENT}'",
            f"  curl -s -X POST {b} -H 'Content-Type: application/fhir+json' \\",
            f"       -d '{tx}'",
        ]
    )
