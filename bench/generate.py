#!/usr/bin/env python3
"""Generate a large, realistic search-benchmark data set "from the Synthea shapes".

The Synthea bundles in ``../shared/data/synthea/*.json.gz`` (an optional benchmark input) are the
templates: every Encounter of every template patient becomes a *unit* (the Encounter, its
Observations, the DiagnosticReports whose ``result`` lists them, and its ImagingStudies). A synthetic
patient is a cloned template Patient (new id, a valid NHS number, a mixed-up name, a shifted birth
date) plus units drawn from the whole pool and placed on a new timeline until the patient holds the
requested number of Observations. Clones get new ids, their dates shifted (every dateTime in the
unit moves by the same amount, so panels stay panels), and quantity values jittered by about 5 %.
Codes (LOINC, SNOMED), categories and units are kept as Synthea wrote them. Practitioners and
Organizations are loaded once with their Synthea ids (they repeat across bundles).

Output goes straight into PostgreSQL through the server's own code path: ``Repository.create`` with
``extract(registry, resource, tz=...)`` as the index function, so the resource, version, index and
ref_link rows are exactly the rows the server writes for the same JSON (only meta.lastUpdated is the
load time, as for any write). Patients are built and written by a process pool, one transaction per
patient. Everything is deterministic given ``--seed`` (each patient's random stream is derived from
the seed and the patient's number, whichever process builds it); only the ``rid`` numbering and
``lastUpdated`` depend on timing.

After the load: CHECKPOINT and VACUUM ANALYZE (autovacuum right after a bulk load made a test 6x
slower here), then a summary (counts, rate, table sizes) on stdout and in ``bench/results/``.

Example::

    python bench/generate.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search \
        --patients 2000 --observations-per-patient 250 --drop
"""

from __future__ import annotations

import argparse
import copy
import glob
import gzip
import json
import multiprocessing as mp
import os
import random
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SYNTHEA = ROOT.parent / "shared" / "data" / "synthea"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_search"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
TYPES = (
    "Patient",
    "Encounter",
    "Observation",
    "DiagnosticReport",
    "ImagingStudy",
    "Practitioner",
    "Organization",
)
TIMELINE_START = datetime(2008, 1, 1, tzinfo=UTC)
TIMELINE_END = datetime(2024, 12, 31, tzinfo=UTC)
_DT = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


# ---- NHS numbers -------------------------------------------------------------------------------
def nhs_check_digit(first_nine: str) -> int | None:
    """Modulus 11: weights 10..2, check = 11 - sum % 11; 11 -> 0; 10 -> no valid number."""
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def nhs_number(index: int, seed: int) -> str:
    """A valid, unique NHS number (test range 9xx) for patient ``index``.

    Patient i owns the pair of 9-digit stems (base + 2i, base + 2i + 1): two stems differing by one
    in the last (weight 2) digit cannot both have the invalid remainder, so one of them is valid.
    """
    base = 900_000_000 + (seed % 1_000) * 50_000
    for stem in (base + 2 * index, base + 2 * index + 1):
        s = f"{stem:09d}"
        check = nhs_check_digit(s)
        if check is not None:
            return s + str(check)
    raise AssertionError("unreachable: one of two adjacent stems is valid")


# ---- templates ---------------------------------------------------------------------------------
class Templates:
    """The Synthea shapes: patients, encounter units, practitioners and organizations."""

    def __init__(self, folder: Path) -> None:
        files = sorted(glob.glob(str(folder / "*.json.gz")))
        if not files:
            raise SystemExit(
                f"No Synthea bundles (*.json.gz) found in {folder}.\n"
                "They are an optional benchmark input: put them there or pass --synthea DIR."
            )
        self.patients: list[dict] = []
        self.units: list[dict] = []  # {"encounter", "start", "observations", "reports", "imaging"}
        self.shared: dict[str, dict] = {}  # Practitioner/Organization by id
        self.names: list[dict] = []
        for f in files:
            with gzip.open(f) as fh:
                bundle = json.load(fh)
            self._add_bundle(bundle)
        self.units.sort(key=lambda u: u["encounter"]["id"])  # independent of file order
        if not self.patients or not self.units:
            raise SystemExit(f"The bundles in {folder} hold no Patient/Encounter resources.")

    def _add_bundle(self, bundle: dict) -> None:
        by_type: dict[str, list[dict]] = {}
        url_to_ref: dict[str, str] = {}
        for e in bundle.get("entry", []):
            r = e.get("resource") or {}
            t = r.get("resourceType")
            if t not in TYPES:
                continue
            by_type.setdefault(t, []).append(r)
            if e.get("fullUrl"):
                url_to_ref[e["fullUrl"]] = f"{t}/{r['id']}"
            url_to_ref[f"{t}/{r['id']}"] = f"{t}/{r['id']}"
        for t in ("Practitioner", "Organization"):
            for r in by_type.get(t, []):
                self.shared.setdefault(r["id"], r)
        patients = by_type.get("Patient", [])
        if not patients:
            return
        self.patients.append(patients[0])
        self.names.extend(
            n for n in patients[0].get("name", []) if n.get("use", "official") == "official"
        )

        def enc_of(r: dict) -> str | None:
            ref = (r.get("encounter") or r.get("context") or {}).get("reference")
            return url_to_ref.get(ref, ref) if ref else None

        # Resolve every urn:uuid reference to the template's Type/id form once.
        def rel(r: dict) -> dict:
            return _map_refs(r, lambda ref: url_to_ref.get(ref, ref))

        units: dict[str, dict] = {}
        for enc in by_type.get("Encounter", []):
            start = ((enc.get("period") or {}).get("start")) or ""
            if not _DT.match(start):
                continue
            units[f"Encounter/{enc['id']}"] = {
                "encounter": rel(enc),
                "start": _parse_dt(start),
                "observations": [],
                "reports": [],
                "imaging": [],
            }
        for t, key in (
            ("Observation", "observations"),
            ("DiagnosticReport", "reports"),
            ("ImagingStudy", "imaging"),
        ):
            for r in by_type.get(t, []):
                u = units.get(enc_of(r) or "")
                if u is not None:
                    u[key].append(rel(r))
        self.units.extend(units.values())


def _map_refs(node, fn):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out[k] = fn(v)
            else:
                out[k] = _map_refs(v, fn)
        return out
    if isinstance(node, list):
        return [_map_refs(v, fn) for v in node]
    return node


def _parse_dt(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _shift_dates(node, delta: timedelta):
    """Every dateTime/instant string moved by ``delta`` (written in UTC, ms kept if present)."""
    if isinstance(node, dict):
        return {k: _shift_dates(v, delta) for k, v in node.items()}
    if isinstance(node, list):
        return [_shift_dates(v, delta) for v in node]
    if isinstance(node, str) and len(node) >= 20 and node[4] == "-" and node[10] == "T":
        m = _DT.match(node)
        if m:
            dt = (_parse_dt(node) + delta).astimezone(UTC)
            if m.group(3):
                return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+00:00"
            return dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return node


def _jitter_quantity(q: dict, rng: random.Random) -> None:
    v = q.get("value")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, int) and q.get("code") in (None, "{score}", "1"):
            return
        nv = v * (1.0 + rng.gauss(0.0, 0.05))
        q["value"] = round(nv, 2) if abs(nv) >= 1 else round(nv, 4)


def _jitter(obs: dict, rng: random.Random) -> None:
    if isinstance(obs.get("valueQuantity"), dict):
        _jitter_quantity(obs["valueQuantity"], rng)
    for comp in obs.get("component") or []:
        if isinstance(comp.get("valueQuantity"), dict):
            _jitter_quantity(comp["valueQuantity"], rng)


def _new_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# ---- one synthetic patient ---------------------------------------------------------------------
def build_patient(tpl: Templates, index: int, seed: int, n_obs: int) -> list[dict]:
    """The resources of synthetic patient ``index`` in write order (referenced before referrer)."""
    rng = random.Random(f"{seed}:{index}")
    src = tpl.patients[rng.randrange(len(tpl.patients))]
    pid = _new_id(rng)
    patient = copy.deepcopy(src)
    patient.pop("text", None)
    patient.pop("deceasedDateTime", None)
    patient.pop("deceasedBoolean", None)
    patient["id"] = pid
    nhs = nhs_number(index, seed)
    patient["identifier"] = [
        {"system": NHS_SYSTEM, "value": nhs},
        {
            "use": "usual",
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR",
                        "display": "Medical Record Number",
                    }
                ]
            },
            "system": "https://bench.example.org/Id/mrn",
            "value": f"MRN{index:07d}",
        },
    ]
    given = tpl.names[rng.randrange(len(tpl.names))].get("given") or ["Alex"]
    family = tpl.names[rng.randrange(len(tpl.names))].get("family") or "Smith"
    patient["name"] = [
        {
            "use": "official",
            "family": re.sub(r"\d+", "", family),
            "given": [re.sub(r"\d+", "", g) for g in given],
        }
    ]
    birth = datetime(1935, 1, 1) + timedelta(days=rng.randrange(0, 365 * 80))
    patient["birthDate"] = birth.strftime("%Y-%m-%d")

    # Draw units until the patient has n_obs Observations; units without Observations (plain
    # encounters) come along as they are drawn, as in the source.
    chosen: list[dict] = []
    have = 0
    guard = 0
    while have < n_obs and guard < 100_000:
        guard += 1
        u = tpl.units[rng.randrange(len(tpl.units))]
        chosen.append(u)
        have += len(u["observations"])
    # New timeline: encounter dates spread uniformly over the patient's span, sorted.
    span_start = max(TIMELINE_START, birth.replace(tzinfo=UTC) + timedelta(days=365))
    span_start = min(span_start, TIMELINE_END - timedelta(days=365))
    span = (TIMELINE_END - span_start).total_seconds()
    when = sorted(span_start + timedelta(seconds=rng.random() * span) for _ in chosen)

    out: list[dict] = [patient]
    encounters: list[dict] = []
    observations: list[dict] = []
    reports: list[dict] = []
    imaging: list[dict] = []
    remaining = n_obs
    for u, at in zip(chosen, when, strict=True):
        delta = at - u["start"]
        ids: dict[str, str] = {}
        enc_ref = f"Encounter/{u['encounter']['id']}"
        ids[enc_ref] = f"Encounter/{_new_id(rng)}"
        obs_src = (
            u["observations"][:remaining]
            if remaining < len(u["observations"])
            else u["observations"]
        )
        remaining -= len(obs_src)
        for o in obs_src:
            ids[f"Observation/{o['id']}"] = f"Observation/{_new_id(rng)}"
        for r in u["reports"]:
            ids[f"DiagnosticReport/{r['id']}"] = f"DiagnosticReport/{_new_id(rng)}"
        for r in u["imaging"]:
            ids[f"ImagingStudy/{r['id']}"] = f"ImagingStudy/{_new_id(rng)}"
        src_subject = (u["encounter"].get("subject") or {}).get("reference")

        def remap(ref: str, _ids=ids, _subj=src_subject) -> str | None:
            if ref == _subj:
                return f"Patient/{pid}"
            if ref in _ids:
                return _ids[ref]
            t = ref.split("/", 1)[0]
            if t in ("Practitioner", "Organization") and ref.split("/", 1)[-1] in tpl.shared:
                return ref
            return None  # a reference to something not generated: dropped below

        def clone(r: dict, _ids=ids, _delta=delta, _remap=remap) -> dict:
            c = _shift_dates(_map_refs(r, lambda ref: _remap(ref) or "__drop__"), _delta)
            c["id"] = _ids[f"{r['resourceType']}/{r['id']}"].split("/", 1)[1]
            c.pop("meta", None)
            return _drop_refs(c)

        encounters.append(clone(u["encounter"]))
        for o in obs_src:
            c = clone(o)
            _jitter(c, rng)
            observations.append(c)
        for r in u["reports"]:
            c = clone(r)
            c["result"] = [x for x in c.get("result") or [] if x.get("reference")]
            if not c["result"]:
                continue  # its results were cut off by the Observation budget
            reports.append(c)
        for r in u["imaging"]:
            imaging.append(clone(r))
        if remaining <= 0:
            break
    out += encounters + observations + reports + imaging
    return out


def _drop_refs(node):
    """Remove References that point at resources the generator does not produce."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if isinstance(v, dict) and v.get("reference") == "__drop__":
                continue
            if isinstance(v, list):
                v = [x for x in v if not (isinstance(x, dict) and x.get("reference") == "__drop__")]
                v = [_drop_refs(x) for x in v]
                v = [x for x in v if x != {}]
                if not v:
                    continue
                out[k] = v
            else:
                out[k] = _drop_refs(v)
        return out
    return node


# ---- database ------------------------------------------------------------------------------------
def _server_url(url: str):
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return u, u.set(database="postgres")


def prepare_database(url: str, drop: bool) -> None:
    from sqlalchemy import create_engine, text

    u, admin = _server_url(url)
    if u.get_backend_name() != "postgresql":
        raise SystemExit("--database-url must be a PostgreSQL URL (postgresql+psycopg://...).")
    eng = create_engine(admin, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        exists = c.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": u.database}
        ).scalar()
        if exists and drop:
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": u.database},
            )
            c.execute(text(f'DROP DATABASE "{u.database}"'))
            exists = False
        if not exists:
            c.execute(text(f'CREATE DATABASE "{u.database}"'))
    eng.dispose()
    from app.db.migrate import upgrade

    upgrade(url)
    eng = create_engine(url)
    with eng.connect() as c:
        n = c.execute(text("SELECT count(*) FROM resource")).scalar()
    eng.dispose()
    if n:
        raise SystemExit(
            f"Database {u.database} already holds {n} resources; pass --drop to rebuild it."
        )


_W: dict = {}


def _worker_init(url: str, synthea: str, seed: int, n_obs: int, path: str = "copy") -> None:
    from functools import partial
    from zoneinfo import ZoneInfo

    import config
    from app.db import make_engine
    from app.indexing.extract import extract
    from app.indexing.registry import load_registry

    types = list(config.RESULTS_RESOURCE_TYPES)
    _W["engine"] = make_engine(url)
    _W["index_fn"] = partial(
        extract, load_registry(types), tz=ZoneInfo(config.Config.SERVER_TIMEZONE)
    )
    _W["types"] = types
    _W["tpl"] = Templates(Path(synthea))
    _W["seed"] = seed
    _W["n_obs"] = n_obs
    _W["path"] = path


def _write(resources: list[dict]) -> dict[str, int]:
    from app.db import unit_of_work
    from app.storage.repository import Repository

    counts: dict[str, int] = {}
    with unit_of_work(_W["engine"], write=True) as conn:
        repo = Repository(conn, _W["index_fn"], _W["types"], None)
        for body in resources:
            rid = body.pop("id")
            repo.create(body, res_id=rid)
            counts[body["resourceType"]] = counts.get(body["resourceType"], 0) + 1
        repo.flush()
    return counts


def rows_for(resources: list[dict], rids: list[int], when: datetime, repo) -> dict[str, list]:
    """The rows ``Repository.create`` + ``flush`` write for these new resources, as tuples in
    table column order: the same ``stamp``, ``content_hash``, ``extract`` and ``links_of`` calls,
    only gathered for COPY instead of one INSERT ... RETURNING per resource.
    """
    import orjson

    from app.storage.repository import content_hash, stamp
    from app.storage.tables import INDEX_TABLES

    cols = {
        kind: [c.name for c in t.columns if c.name not in ("rid", "res_type")]
        for kind, t in INDEX_TABLES.items()
    }
    out: dict[str, list] = {"resource": [], "resource_version": [], "ref_link": []}
    for kind in INDEX_TABLES:
        out[kind] = []
    for body, rid in zip(resources, rids, strict=True):
        res_type = body["resourceType"]
        res_id = body["id"]
        bare = {k: v for k, v in body.items() if k != "id"}
        stamped = stamp(bare, res_id, 1, when)
        content = orjson.dumps(stamped).decode()
        out["resource"].append((rid, res_type, res_id, 1, when, False, content_hash(bare)))
        out["resource_version"].append((rid, 1, res_type, res_id, when, "POST", False, content))
        for kind, lst in repo.index_fn(stamped).items():
            c = cols[kind]
            out[kind].extend((rid, res_type, *(r.get(k) for k in c)) for r in lst)
        out["ref_link"].extend((rid, t, i) for t, i in repo.links_of(stamped))
    return out


def _tables() -> dict:
    from app.storage.tables import INDEX_TABLES, ref_link, resource, resource_version

    return {
        "resource": resource,
        "resource_version": resource_version,
        **INDEX_TABLES,
        "ref_link": ref_link,
    }


def _write_copy(resources: list[dict]) -> dict[str, int]:
    """Same rows as :func:`_write`, written with COPY (rids taken from the table's sequence)."""
    from sqlalchemy import text

    from app.db import unit_of_work
    from app.fhir.jsonutil import utcnow
    from app.storage.repository import Repository

    counts: dict[str, int] = {}
    with unit_of_work(_W["engine"], write=True) as conn:
        repo = Repository(conn, _W["index_fn"], _W["types"], None)
        rids = list(
            conn.execute(
                text(
                    "SELECT nextval(pg_get_serial_sequence('resource', 'rid')) "
                    "FROM generate_series(1, :n)"
                ),
                {"n": len(resources)},
            ).scalars()
        )
        rows = rows_for(resources, rids, utcnow(), repo)
        cur = conn.connection.driver_connection.cursor()
        for kind, t in _tables().items():
            if not rows[kind]:
                continue
            cols = ", ".join(c.name for c in t.columns)
            with cur.copy(f"COPY {t.name} ({cols}) FROM STDIN") as cp:
                for r in rows[kind]:
                    cp.write_row(r)
    for body in resources:
        counts[body["resourceType"]] = counts.get(body["resourceType"], 0) + 1
    return counts


def verify_copy_path(url: str, resources: list[dict]) -> None:
    """Write ``resources`` with Repository.create inside a rolled-back transaction and compare
    every row with what the COPY path builds for the same rids: proves the fast path writes what
    the server writes (lastUpdated, which differs per create() call, is left out)."""
    from sqlalchemy import select

    from app.db import make_engine
    from app.storage.repository import Repository

    def norm(rows):
        return sorted(
            tuple("T" if isinstance(x, datetime) else x for x in r) for r in rows
        )

    eng = make_engine(url)
    with eng.connect() as conn:
        tx = conn.begin()
        try:
            repo = Repository(conn, _W["index_fn"], _W["types"], None)
            stored = [
                repo.create({k: v for k, v in b.items() if k != "id"}, res_id=b["id"])
                for b in copy.deepcopy(resources)
            ]
            repo.flush()
            rids = [s.rid for s in stored]
            expected = rows_for(resources, rids, stored[0].last_updated, repo)
            for kind, t in _tables().items():
                got = [tuple(r) for r in conn.execute(select(*t.columns).where(t.c.rid.in_(rids)))]
                exp = expected[kind]
                if kind == "resource_version":  # content carries each create()'s own lastUpdated
                    got, exp = [r[:7] for r in got], [r[:7] for r in exp]
                if norm(got) != norm(exp):
                    diff = next(
                        (a, b) for a, b in zip(norm(got) + [None], norm(exp) + [None], strict=False) if a != b
                    )
                    raise SystemExit(
                        f"The COPY path would write different {kind} rows than "
                        f"Repository.create ({len(got)} vs {len(exp)}); first difference: {diff}"
                    )
        finally:
            tx.rollback()
    eng.dispose()


def _worker_patients(indices: list[int]) -> tuple[dict[str, int], float, float]:
    t0 = time.perf_counter()
    built = [build_patient(_W["tpl"], i, _W["seed"], _W["n_obs"]) for i in indices]
    t1 = time.perf_counter()
    counts: dict[str, int] = {}
    write = _write_copy if _W.get("path") == "copy" else _write
    for resources in built:
        for k, v in write(resources).items():
            counts[k] = counts.get(k, 0) + v
    return counts, t1 - t0, time.perf_counter() - t1


def _finish(url: str) -> dict:
    from sqlalchemy import create_engine, text

    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    out: dict = {}
    with eng.connect() as c:
        t = time.perf_counter()
        c.execute(text("CHECKPOINT"))
        out["checkpoint_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        c.execute(text("VACUUM (ANALYZE)"))
        out["vacuum_analyze_s"] = round(time.perf_counter() - t, 1)
        c.execute(text("CHECKPOINT"))
        out["counts"] = dict(
            c.execute(
                text("SELECT res_type, count(*) FROM resource GROUP BY res_type ORDER BY 1")
            ).all()
        )
        out["index_rows"] = {
            tbl: c.execute(
                text(f"SELECT reltuples::bigint FROM pg_class WHERE relname = '{tbl}'")
            ).scalar()
            for tbl in (
                "sp_token",
                "sp_string",
                "sp_date",
                "sp_quantity",
                "sp_number",
                "sp_reference",
                "sp_uri",
                "ref_link",
            )
        }
        out["database_size"] = c.execute(
            text("SELECT pg_size_pretty(pg_database_size(current_database()))")
        ).scalar()
    eng.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes bench/results/dataset-<database>.json with counts, timings and sizes.",
    )
    ap.add_argument("--patients", type=int, default=2000, help="synthetic patients (default 2000)")
    ap.add_argument(
        "--observations-per-patient",
        type=int,
        default=250,
        help="Observations per patient (default 250)",
    )
    ap.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
        help=f"PostgreSQL URL; the database is created if missing (default {DEFAULT_URL})",
    )
    ap.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    ap.add_argument(
        "--workers",
        type=int,
        default=max(1, min(os.cpu_count() or 2, 4)),
        help="writer processes (default: cores, max 4)",
    )
    ap.add_argument("--batch", type=int, default=4, help="patients per worker task (default 4)")
    ap.add_argument(
        "--synthea",
        default=str(DEFAULT_SYNTHEA),
        help=f"folder of Synthea *.json.gz bundles (default {DEFAULT_SYNTHEA})",
    )
    ap.add_argument(
        "--path",
        choices=("copy", "repository"),
        default="copy",
        help="copy (default): the rows Repository.create would write, gathered with the same "
        "stamp/content_hash/extract/links_of calls and written with COPY (checked against "
        "Repository.create before loading); repository: Repository.create itself, one INSERT "
        "per resource (about 10x slower)",
    )
    ap.add_argument(
        "--drop", action="store_true", help="drop and recreate the database if it exists"
    )
    ap.add_argument(
        "--no-vacuum",
        action="store_true",
        help="skip CHECKPOINT / VACUUM ANALYZE (not for timing runs)",
    )
    ap.add_argument(
        "--results", default=str(ROOT / "bench" / "results"), help="folder for the summary JSON"
    )
    args = ap.parse_args(argv)

    tpl = Templates(Path(args.synthea))  # fails early, with a clear message, if the input is absent
    print(
        f"templates: {len(tpl.patients)} patients, {len(tpl.units)} encounter units, "
        f"{sum(len(u['observations']) for u in tpl.units)} observations, {len(tpl.shared)} practitioners/organizations"
    )
    from sqlalchemy.engine import make_url

    dbname = make_url(args.database_url).database
    prepare_database(args.database_url, args.drop)

    started = time.perf_counter()
    # Shared resources first (they are referenced by encounters).
    _worker_init(
        args.database_url, args.synthea, args.seed, args.observations_per_patient, args.path
    )
    if args.path == "copy":
        sample = build_patient(tpl, 10**7, args.seed, 40) + [
            dict(copy.deepcopy(r), id="verify-" + r["id"][:50])
            for r in list(tpl.shared.values())[:3]
        ]
        verify_copy_path(args.database_url, sample)
        print("verified: the COPY path writes the same rows as Repository.create")
    shared = []
    for r in sorted(tpl.shared.values(), key=lambda r: (r["resourceType"], r["id"])):
        c = copy.deepcopy(r)
        c.pop("meta", None)
        shared.append(c)
    totals = _write(shared)
    _W["engine"].dispose()

    tasks = [
        list(range(i, min(i + args.batch, args.patients)))
        for i in range(0, args.patients, args.batch)
    ]
    expected_obs = args.patients * args.observations_per_patient
    done_p = 0
    build_s = write_s = 0.0
    last = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(
        args.workers,
        initializer=_worker_init,
        initargs=(
            args.database_url,
            args.synthea,
            args.seed,
            args.observations_per_patient,
            args.path,
        ),
    ) as pool:
        for counts, b, w in pool.imap_unordered(_worker_patients, tasks):
            build_s += b
            write_s += w
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
            done_p += counts.get("Patient", 0)
            now = time.perf_counter()
            if now - last >= 10 or done_p == args.patients:
                last = now
                el = now - started
                n = sum(totals.values())
                obs = totals.get("Observation", 0)
                eta = (expected_obs - obs) / (obs / el) if obs else 0
                print(
                    f"  {done_p}/{args.patients} patients, {obs} observations, {n} resources, "
                    f"{n / el:,.0f} resources/s, {obs / el:,.0f} obs/s, elapsed {el:,.0f}s, eta {eta:,.0f}s",
                    flush=True,
                )
    load_s = time.perf_counter() - started
    n = sum(totals.values())
    print(
        f"loaded {n} resources in {load_s:.0f}s ({n / load_s:,.0f} resources/s); "
        f"worker time: building JSON {build_s:.0f}s, writing {write_s:.0f}s"
    )
    summary = {
        "database": dbname,
        "patients": args.patients,
        "observations_per_patient": args.observations_per_patient,
        "seed": args.seed,
        "workers": args.workers,
        "path": args.path,
        "written": totals,
        "load_seconds": round(load_s, 1),
        "resources_per_second": round(n / load_s, 1),
        "worker_build_seconds": round(build_s, 1),
        "worker_write_seconds": round(write_s, 1),
    }
    if not args.no_vacuum:
        print("CHECKPOINT + VACUUM (ANALYZE) ...", flush=True)
        summary.update(_finish(args.database_url))
        print(
            f"  checkpoint {summary['checkpoint_s']}s, vacuum analyze {summary['vacuum_analyze_s']}s, "
            f"database size {summary['database_size']}"
        )
        print(f"  resources: {summary['counts']}")
        print(f"  index rows (estimates): {summary['index_rows']}")
    summary["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"dataset-{dbname}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary written to {out / f'dataset-{dbname}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
