"""Bulk loading of FHIR Bundles and NDJSON through the same transaction code as the REST API.

Loading goes through ``app.interactions.bundle.transaction`` rather than bulk INSERTs so that a
loaded resource is indistinguishable from one sent by an EPR: validated, indexed, versioned and
checked for referential integrity the same way.
"""

from __future__ import annotations

from app.loader.demo import DEMO_DIR, demo_instructions, load_demo
from app.loader.files import LoaderInputError, discover
from app.loader.runner import DEFAULT_BATCH_SIZE, Failure, LoadSummary, format_summary, load_paths

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEMO_DIR",
    "Failure",
    "LoadSummary",
    "LoaderInputError",
    "demo_instructions",
    "discover",
    "format_summary",
    "load_demo",
    "load_paths",
]
