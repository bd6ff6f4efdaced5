"""Every search parameter of Observation, DiagnosticReport, ImagingStudy and Patient is searched
for, over HTTP, with a value taken from a real stored example, on both back ends.

Data (``tests/data/search_round_trip/README.md``): the FHIR R4 spec examples and UK Core
examples of the four types, each PUT on its own (retrying those that need another example first),
and the two small Synthea patient Bundles of ``tests/data/loader/`` sent as transactions. The
spec examples point at Practitioners, Organizations, Encounters, ... that are not among them;
those targets are PUT first as placeholders carrying only what FHIR requires. Placeholders are
never used as a parameter's example.

The parameters are the server's own (its registry, checked against the CapabilityStatement), not
a list typed in here. For each one the query values come from a stored resource's index rows
(``sp_*``: token ``system|code``, string prefix, date ``ge``/``le`` instants and ``eq`` on the
text as written, reference ``Type/id``, quantity ``value|system|code``, uri, composite
``a$b``), picked from up to four resources of different shapes (R4 spec, UK Core or Synthea; with
or without a system; target type; ...). Each positive value must find its resource both narrowed
with ``_id`` and not narrowed (following ``next``); each negative value (what another resource
carries, a composite's halves from two different components, a quantity or date moved far away)
must not. Quantities are also spot-checked on ten more resources each, since whether a
full-precision decimal finds itself depends on the value. Every request says
``Prefer: handling=strict``, so a parameter or modifier the server does not know fails with 400
instead of being ignored.

References are only taken where the stored resource says ``Type/id`` literally (no contained
``#x``, no absolute URL to another server, whichever way the server indexes those).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from apihelp import headers
from sqlalchemy import select

from app.indexing import load_registry
from app.indexing.dates import date_range
from app.storage.tables import INDEX_TABLES, resource, resource_version
from config import RESULTS_RESOURCE_TYPES

FOCUS = ("Observation", "DiagnosticReport", "ImagingStudy", "Patient")
DATA = Path(__file__).resolve().parents[1] / "data"
EXAMPLES = DATA / "search_round_trip"
SYNTHEA = sorted((DATA / "loader").glob("*.json.gz"))
STRICT = {"Prefer": "handling=strict"}
MAX_EXAMPLES = 4  # resources per parameter, each of a different shape
# Further resources whose quantity is searched for (narrowed by _id only): whether a value matches
# itself depends on the value (a double's full precision, as Synthea writes them), so one is
# not enough.
QUANTITY_SPOT_CHECKS = 10

# The server's registry for the default configuration (the ``app`` fixture's): parametrisation
# happens before any app exists, so test_parameters_are_the_servers checks that they agree.
REGISTRY = load_registry(RESULTS_RESOURCE_TYPES)
PARAMS = [(t, code) for t in FOCUS for code in sorted(REGISTRY.params(t))]

# Parameters no loaded example carries (test_every_parameter_is_hit_or_listed fails when one
# does after all, so this list cannot go stale).
NOT_CARRIED: dict[tuple[str, str], str] = {
    **{(t, "_security"): "no example has meta.security" for t in FOCUS},
    **{(t, "_source"): "no example has meta.source" for t in FOCUS},
    **{
        (t, "_profile"): "no example has meta.profile (only the spec's vital-signs Observations)"
        for t in ("DiagnosticReport", "ImagingStudy", "Patient")
    },
    ("DiagnosticReport", "media"): "no example has DiagnosticReport.media",
    ("Observation", "focus"): "no example has Observation.focus",
}

# Example files that do not load, with the reason (none: every example loads).
EXPECTED_LOAD_FAILURES: dict[str, str] = {}

# What FHIR requires of a placeholder target, per type (anything else is left out).
PLACEHOLDER = {
    "Encounter": {
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    },
    "Endpoint": {
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": "https://placeholder.invalid/wado",
    },
    "Group": {"type": "animal", "actual": True},
    "Observation": {"status": "final", "code": {"text": "placeholder"}},
    "Organization": {},
    "Patient": {},
    "Practitioner": {},
    "ServiceRequest": {"status": "active", "intent": "order", "subject": {"display": "placeholder"}},
    "Specimen": {},
}


# -- loading ------------------------------------------------------------------------------------


@dataclass
class Loaded:
    origin: dict[str, str] = field(default_factory=dict)  # "Type/id" -> file it came from
    failures: dict[str, str] = field(default_factory=dict)  # file -> why it did not load


def _references(node) -> set[str]:
    """Every ``Reference.reference`` string anywhere in a resource."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out.add(v)
            else:
                out |= _references(v)
    elif isinstance(node, list):
        for v in node:
            out |= _references(v)
    return out


_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


def _tx(entries: list[dict]) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def _diagnostics(resp) -> str:
    try:
        return "; ".join(i.get("diagnostics", i.get("code", "")) for i in resp.json()["issue"])
    except Exception:  # noqa: BLE001 - any non-OperationOutcome body
        return resp.text[:300]


@pytest.fixture(scope="module")
def loaded(http, base) -> Loaded:
    enabled = set(REGISTRY.types())
    out = Loaded()
    examples = [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in sorted(EXAMPLES.glob("*.json"))]
    have = {f"{d['resourceType']}/{d['id']}" for _, d in examples}

    targets = set()
    for _, doc in examples:
        for ref in _references(doc):
            m = _RELATIVE.match(ref)
            if m and m.group(1) in enabled and ref not in have:
                targets.add(ref)
    entries = []
    for ref in sorted(targets):
        rtype, rid = ref.split("/")
        assert rtype in PLACEHOLDER, f"an example references {ref}: add a {rtype} to PLACEHOLDER"
        entries.append({"resource": {"resourceType": rtype, "id": rid, **PLACEHOLDER[rtype]},
                        "request": {"method": "PUT", "url": ref}})
    r = http.post(base, data=_tx(entries), headers=headers())
    assert r.status_code == 200, r.text[:2000]

    # Each example on its own; one that needs another example first (422) is retried after.
    pending = examples
    while pending:
        retry = []
        for name, doc in pending:
            ref = f"{doc['resourceType']}/{doc['id']}"
            r = http.put(f"{base}/{ref}", data=orjson.dumps(doc), headers=headers())
            if r.status_code in (200, 201):
                out.origin[ref] = name
                out.failures.pop(name, None)
                continue
            out.failures[name] = f"{r.status_code}: {_diagnostics(r)}"
            if r.status_code == 422:
                retry.append((name, doc))
        if len(retry) == len(pending):
            break
        pending = retry

    # Synthea: entries of types the server does not hold are left out (as ``results-repo load``
    # does), POSTs keep their ids as PUTs so the chosen examples are the same on every run, and
    # the urn:uuid references are resolved by the server.
    for path in SYNTHEA:
        bundle = json.loads(gzip.decompress(path.read_bytes()))
        entries = []
        for e in bundle["entry"]:
            res = e["resource"]
            if res["resourceType"] not in enabled:
                continue
            ref = f"{res['resourceType']}/{res['id']}"
            entries.append({**e, "request": {"method": "PUT", "url": ref}})
            out.origin.setdefault(ref, path.name)
        r = http.post(base, data=_tx(entries), headers=headers())
        assert r.status_code == 200, (path.name, r.text[:2000])
    return out


# -- deriving query values from the index rows ----------------------------------------------------


@dataclass(frozen=True)
class Case:
    ref: str  # the resource the value comes from ("Observation/abc")
    params: tuple[tuple[str, str], ...]
    match: bool
    wide: bool = True  # a positive case is also searched for without ``_id``

    def describe(self) -> str:
        q = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{self.ref.split('/')[0]}?{q} {'must find' if self.match else 'must not find'} {self.ref}"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$").replace("|", "\\|")


def _num(value: float) -> str:
    """A float as decimal text, as it would be written in the resource (no exponent)."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def _instant(dt: datetime) -> str:
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def _token(row) -> str | None:
    return _token_text(row.system, row.code)


def _token_text(system: str | None, code: str | None) -> str | None:
    if code is None:
        return f"{_esc(system)}|" if system is not None else None
    if system is None:
        return f"|{_esc(code)}"
    return f"{_esc(system)}|{_esc(code)}"


def _quantity(row, value: float | None = None) -> str | None:
    value = row.value if value is None else value
    if value is None:
        return None
    if row.system is None and row.code is None:
        return _num(value)
    return f"{_num(value)}|{_esc(row.system or '')}|{_esc(row.code or '')}"


def _prefix(value: str) -> str:
    return value[: max(3, len(value) // 2)]


def _shape(kind: str, row) -> tuple:
    if kind in ("token", "quantity"):
        return (row.system is None, row.code is None)
    if kind == "reference":
        return (row.target_type,)
    if kind == "date":
        return (row.high - row.low >= timedelta(days=1),)
    return ()


def _date_texts(node) -> list[str]:
    """Every string in a resource that looks like a FHIR date, dateTime or instant."""
    out: list[str] = []
    if isinstance(node, dict):
        for v in node.values():
            out += _date_texts(v)
    elif isinstance(node, list):
        for v in node:
            out += _date_texts(v)
    elif isinstance(node, str) and re.match(r"^\d{4}(-\d{2}(-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?$", node):
        out.append(node)
    return out


class Deriver:
    """Query values for one loaded database, from its index rows and current resource JSON."""

    def __init__(self, app, loaded: Loaded) -> None:
        state = app.extensions["results_repo"]
        self.tz = state.tz
        self.loaded = loaded
        self.rows: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.content: dict[str, dict] = {}
        with state.engine.connect() as conn:
            for kind, table in INDEX_TABLES.items():
                q = (select(table, resource.c.res_id)
                     .join(resource, resource.c.rid == table.c.rid)
                     .where(table.c.res_type.in_(FOCUS), resource.c.deleted.is_(False)))
                for row in conn.execute(q):
                    ref = f"{row.res_type}/{row.res_id}"
                    if ref in loaded.origin:  # never a placeholder
                        self.rows[(row.res_type, row.param)][ref].append((kind, row))
            q = (select(resource.c.res_type, resource.c.res_id, resource_version.c.content)
                 .join(resource_version, (resource_version.c.rid == resource.c.rid)
                       & (resource_version.c.version == resource.c.version))
                 .where(resource.c.res_type.in_(FOCUS), resource.c.deleted.is_(False)))
            for res_type, res_id, text in conn.execute(q):
                self.content[f"{res_type}/{res_id}"] = json.loads(text)

    def origin(self, ref: str) -> str:
        name = self.loaded.origin[ref]
        return "synthea" if name.endswith(".json.gz") else "uk-core" if name.startswith("UKCore-") else "r4"

    def _pick(self, by_ref: dict[str, list], shape) -> list[str]:
        """Up to MAX_EXAMPLES resources, each adding a new (origin, shape) pair."""
        seen, out = set(), []
        for ref in sorted(by_ref):
            key = (self.origin(ref), shape(ref))
            if key not in seen:
                seen.add(key)
                out.append(ref)
        return out[:MAX_EXAMPLES]

    # -- one parameter ---------------------------------------------------------------------------

    def cases(self, res_type: str, code: str) -> list[Case]:
        sp = REGISTRY.get(res_type, code)
        if sp.column == "res_id":
            return self._id_cases(res_type)
        if sp.column == "last_updated":
            return self._last_updated_cases(res_type)
        if sp.type == "composite":
            return self._composite_cases(res_type, code, sp)
        by_ref = self.rows.get((res_type, code), {})
        if sp.type == "reference":
            by_ref = {ref: [(k, r) for k, r in rows if self._local(ref, r)] for ref, rows in by_ref.items()}
            by_ref = {ref: rows for ref, rows in by_ref.items() if rows}
            if not by_ref:  # a reference given only by identifier (Reference.identifier)
                return self._simple_cases(res_type, f"{code}:identifier", "token",
                                          self.rows.get((res_type, f"{code}:identifier"), {}))
        return self._simple_cases(res_type, code, sp.type, by_ref)

    def _local(self, ref: str, row) -> bool:
        """A reference row this test relies on: ``Type/id`` written as such in the stored resource
        (not a contained ``#x``, not an absolute URL, whichever way the server indexes those)."""
        if row.target_type is None or row.target_id is None or row.url is not None:
            return False
        return f"{row.target_type}/{row.target_id}" in _references(self.content[ref])

    def _simple_cases(self, res_type: str, code: str, kind: str, by_ref: dict[str, list]) -> list[Case]:
        by_ref = {ref: sorted((r for _, r in rows), key=_row_key) for ref, rows in by_ref.items()}
        by_ref = {ref: rows for ref, rows in by_ref.items() if self._positive(kind, code, ref, rows[0])}
        out: list[Case] = []
        picked = self._pick(by_ref, lambda ref: _shape(kind, by_ref[ref][0]))
        for ref in picked:
            rows = by_ref[ref]
            for params in self._positive(kind, code, ref, rows[0]):
                out.append(Case(ref, params, True))
            negative = self._negative(kind, code, ref, rows, by_ref)
            if negative:
                out.append(Case(ref, negative, False))
        if kind in ("quantity", "number"):
            for ref in [r for r in sorted(by_ref) if r not in picked][:QUANTITY_SPOT_CHECKS]:
                for params in self._positive(kind, code, ref, by_ref[ref][0]):
                    out.append(Case(ref, params, True, wide=False))
        return out

    def _positive(self, kind: str, code: str, ref: str, row) -> list[tuple]:
        if kind == "token":
            v = _token(row)
            return [((code, v),)] if v else []
        if kind == "string":
            return [((code, _esc(_prefix(row.value))),)]
        if kind == "uri":
            return [((code, _esc(row.value)),)]
        if kind == "reference":
            return [((code, f"{row.target_type}/{row.target_id}"),)]
        if kind == "quantity":
            v = _quantity(row)
            return [((code, v),)] if v else []
        if kind == "number":
            return [((code, _num(row.value)),)]
        if kind == "date":
            out = [((code, f"ge{_instant(row.low)}"), (code, f"le{_instant(row.high)}"))]
            text = self._date_text(ref, row)
            if text:
                out.append(((code, text),))
            return out
        raise AssertionError(f"no query value for a {kind} parameter ({code}): extend this test")

    def _date_text(self, ref: str, row) -> str | None:
        """The date as written in the resource, if one value denotes exactly this row's range."""
        for text in _date_texts(self.content[ref]):
            if date_range(text, self.tz) == (row.low, row.high):
                return text
        return None

    def _negative(self, kind: str, code: str, ref: str, rows: list, by_ref: dict[str, list]):
        """A value that must not find ``ref``: preferably one another resource carries."""
        others = [r for other, rs in sorted(by_ref.items()) if other != ref for r in rs]
        if kind == "token":
            mine = {r.code for r in rows}
            for r in others:
                if r.code is not None and r.code not in mine and _token(r):
                    return ((code, _token(r)),)
            r = rows[0]
            return ((code, _token_text(r.system, f"{r.code}-no-such")),) if r.code else None
        if kind == "string":
            mine = [r.value_norm for r in rows]
            for r in others:
                if not any(v.startswith(r.value_norm) for v in mine):
                    return ((code, _esc(r.value_norm)),)
            return ((code, "qqxzy"),)
        if kind == "uri":
            mine = {r.value for r in rows}
            cand = next((r.value for r in others if r.value not in mine), rows[0].value + "-no-such")
            return ((code, _esc(cand)),)
        if kind == "reference":
            mine = {(r.target_type, r.target_id) for r in rows}
            for r in others:
                if r.url is None and r.target_id and (r.target_type, r.target_id) not in mine:
                    return ((code, f"{r.target_type}/{r.target_id}"),)
            r = rows[0]
            return ((code, f"{r.target_type}/{r.target_id}-no-such"),)
        if kind in ("quantity", "number"):
            far = max(abs(r.value) for r in rows if r.value is not None) * 10 + 1000
            return ((code, _quantity(rows[0], far) if kind == "quantity" else _num(far)),)
        if kind == "date":
            low = min(r.low for r in rows)
            high = max(r.high for r in rows)
            if low.year > 1:
                return ((code, (low - timedelta(days=2)).date().isoformat()),)
            if high.year < 9999:
                return ((code, (high + timedelta(days=2)).date().isoformat()),)
            return None
        raise AssertionError(kind)

    def _composite_cases(self, res_type: str, code: str, sp) -> list[Case]:
        kinds = [c.type for c, _ in sp.components]
        # groups[ref][grp] = one list of rows per component
        groups: dict[str, dict[int, list[list]]] = defaultdict(dict)
        for i in range(len(kinds)):
            for ref, rows in self.rows.get((res_type, f"{code}${i}"), {}).items():
                for _, row in rows:
                    groups[ref].setdefault(row.grp, [[] for _ in kinds])[i].append(row)
        complete = {
            ref: {g: [sorted(c, key=_row_key) for c in comps] for g, comps in by_grp.items()
                  if all(comps) and self._component_values(ref, kinds, comps)}
            for ref, by_grp in groups.items()
        }
        complete = {ref: g for ref, g in complete.items() if g}

        def shape(ref: str) -> tuple:
            comps = complete[ref][min(complete[ref])]
            return tuple(_shape(k, c[0]) for k, c in zip(kinds, comps, strict=True))

        out: list[Case] = []
        picked = self._pick(complete, shape)
        for ref in picked:
            by_grp = complete[ref]
            values = self._component_values(ref, kinds, by_grp[min(by_grp)])
            out.append(Case(ref, ((code, "$".join(values)),), True))
            others = [c[-1][0] for other, g in sorted(complete.items()) if other != ref for c in g.values()]
            negative = self._composite_negative(ref, kinds, by_grp, others)
            if negative:
                out.append(Case(ref, ((code, negative),), False))
        if kinds[-1] == "quantity":
            for ref in [r for r in sorted(complete) if r not in picked][:QUANTITY_SPOT_CHECKS]:
                values = self._component_values(ref, kinds, complete[ref][min(complete[ref])])
                out.append(Case(ref, ((code, "$".join(values)),), True, wide=False))
        return out

    def _component_values(self, ref: str, kinds: list[str], comps: list[list]) -> list[str] | None:
        values = []
        for kind, rows in zip(kinds, comps, strict=True):
            row = rows[0]
            if kind == "token":
                v = _token(row)
            elif kind == "quantity":
                v = _quantity(row)
            elif kind == "string":
                v = _esc(row.value)
            elif kind == "date":
                v = self._date_text(ref, row) or f"ge{_instant(row.low)}"
            else:
                raise AssertionError(f"no composite component value for {kind}: extend this test")
            if not v:
                return None
            values.append(v)
        return values

    def _composite_negative(self, ref: str, kinds: list[str], by_grp: dict[int, list[list]],
                            others: list) -> str | None:
        """The first component of one group with the last of another, when no group has both
        (a systolic code with the diastolic value); else the first with a far-away quantity, or
        with a last component another resource has (``others``)."""
        def same(kind: str, a, b) -> bool:
            if kind == "quantity":
                return a.value is not None and b.value is not None and (
                    abs(a.value - b.value) <= 0.1 * max(abs(a.value), abs(b.value), 1.0))
            if kind == "token":
                return a.code == b.code
            return _row_key(a) == _row_key(b)

        last = kinds[-1]
        for ga, comps_a in sorted(by_grp.items()):
            for gb, comps_b in sorted(by_grp.items()):
                if ga == gb:
                    continue
                head, tail = comps_a[0][0], comps_b[-1][0]
                clash = any(
                    any(same(kinds[0], head, r) for r in comps[0]) and any(same(last, tail, r) for r in comps[-1])
                    for comps in by_grp.values()
                )
                if not clash:
                    values = self._component_values(ref, kinds, [*comps_a[:-1], comps_b[-1]])
                    if values:
                        return "$".join(values)
        comps = by_grp[min(by_grp)]
        head = self._component_values(ref, kinds[:-1], comps[:-1])
        if head is None:
            return None
        if last == "quantity":
            far = max(abs(r.value) for c in by_grp.values() for r in c[-1] if r.value is not None) * 10 + 1000
            return "$".join([*head, _quantity(comps[-1][0], far)])
        mine = [r for c in by_grp.values() for r in c[-1]]
        for other in others:
            if not any(same(last, other, r) for r in mine):
                tail = self._component_values(ref, [last], [[other]])
                if tail:
                    return "$".join([*head, *tail])
        if last == "date":
            low = min(r.low for r in mine)
            return "$".join([*head, (low - timedelta(days=2)).date().isoformat()]) if low.year > 1 else None
        if last == "string":
            return "$".join([*head, "qqxzy"])
        return None

    def _id_cases(self, res_type: str) -> list[Case]:
        refs = sorted(r for r in self.content if r.startswith(f"{res_type}/") and r in self.loaded.origin)
        out = []
        for ref in self._pick(dict.fromkeys(refs), lambda ref: ()):
            other = next(r for r in refs if r != ref)
            out.append(Case(ref, (("_id", ref.split("/")[1]),), True))
            out.append(Case(ref, (("_id", other.split("/")[1]),), False))
        return out

    def _last_updated_cases(self, res_type: str) -> list[Case]:
        refs = sorted(r for r in self.content if r.startswith(f"{res_type}/") and r in self.loaded.origin)
        out = []
        for ref in self._pick(dict.fromkeys(refs), lambda ref: ()):
            stamp = self.content[ref]["meta"]["lastUpdated"]
            out.append(Case(ref, (("_lastUpdated", stamp),), True))
            out.append(Case(ref, (("_lastUpdated", f"lt{stamp}"),), False))
        return out


def _row_key(row) -> tuple:
    """A deterministic order for index rows (rid and grp excluded: they depend on load order)."""
    skip = {"rid", "grp", "res_id", "date_low", "date_high"}
    return tuple(str(v) for k, v in row._mapping.items() if k not in skip)


@pytest.fixture(scope="module")
def cases(app, loaded) -> dict[tuple[str, str], list[Case]]:
    deriver = Deriver(app, loaded)
    return {(t, code): deriver.cases(t, code) for t, code in PARAMS}


# -- searching --------------------------------------------------------------------------------------


def _ids(http, url: str, params: list[tuple[str, str]]) -> tuple[set[str] | None, str]:
    """The ids a search matches, over every page; (None, why) if it fails."""
    found: set[str] = set()
    r = http.get(url, params=params, headers=STRICT)
    pages = 0
    while True:
        if r.status_code != 200:
            return None, f"{r.status_code}: {_diagnostics(r)}"
        page = r.json()
        found |= {e["resource"]["id"] for e in page.get("entry", []) if e["search"]["mode"] == "match"}
        nxt = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        pages += 1
        if not nxt or pages > 50:
            return found, ""
        r = http.get(nxt[0], headers=STRICT)


def _run(http, base: str, case: Case) -> str | None:
    """None if the case holds, else what went wrong."""
    res_type, res_id = case.ref.split("/")
    url = f"{base}/{res_type}"
    narrowed = [*case.params, ("_elements", "id")]
    if all(k != "_id" for k, _ in case.params):
        narrowed.append(("_id", res_id))
    variants = [narrowed]
    if case.match and case.wide:  # also without _id: the parameter alone must find it
        variants.append([*case.params, ("_elements", "id"), ("_count", "1000")])
    for params in variants:
        found, why = _ids(http, url, params)
        if found is None:
            return f"{case.describe()}: {why} (request {params})"
        if (res_id in found) != case.match:
            return f"{case.describe()}: {'not found' if case.match else 'found'} (request {params})"
    return None


# -- tests ------------------------------------------------------------------------------------------


def test_parameters_are_the_servers(app, http, base):
    """The parametrisation covers exactly what the server searches with and advertises."""
    registry = app.extensions["results_repo"].registry
    r = http.get(f"{base}/metadata")
    assert r.status_code == 200, r.text[:2000]
    advertised = {
        res["type"]: {p["name"] for p in res.get("searchParam", [])}
        for rest in r.json()["rest"] for res in rest.get("resource", [])
    }
    for t in FOCUS:
        expected = {code for rt, code in PARAMS if rt == t}
        assert set(registry.params(t)) == expected, t
        assert advertised[t] == expected, t


def test_examples_load(loaded):
    assert loaded.failures == EXPECTED_LOAD_FAILURES
    assert any(ref.startswith("ImagingStudy/") for ref in loaded.origin)


@pytest.mark.parametrize(("res_type", "code"), PARAMS, ids=[f"{t}.{c}" for t, c in PARAMS])
def test_parameter_round_trip(http, base, cases, res_type, code):
    if (res_type, code) in NOT_CARRIED:
        pytest.skip(NOT_CARRIED[(res_type, code)])
    todo = cases[(res_type, code)]
    assert todo, f"no loaded example carries {res_type}.{code}: add one, or list it in NOT_CARRIED"
    assert any(c.match for c in todo) and any(not c.match for c in todo), todo
    failures = [f for f in (_run(http, base, c) for c in todo) if f]
    assert not failures, "\n".join(failures)


def test_every_parameter_is_hit_or_listed(cases):
    """Every parameter of the four types has an example, except the ones listed (and those
    really have none)."""
    missing = [f"{t}.{c}" for t, c in PARAMS if not any(x.match for x in cases[(t, c)]) and (t, c) not in NOT_CARRIED]
    stale = [f"{t}.{c}" for (t, c) in NOT_CARRIED if cases[(t, c)]]
    assert not missing, f"no example carries {missing}"
    assert not stale, f"listed as not carried, but an example carries {stale}"
    assert set(NOT_CARRIED) <= set(PARAMS)
