"""Resource JSON -> search index rows, one list per index table kind.

Rows are plain dicts keyed by the ``sp_*`` column names minus ``rid``/``res_type`` (which the
storage layer adds), so storage can bulk-insert them and diff them on update. Everything is read
from the parsed JSON, never from pydantic models: indexing runs on every write and must stay far
below the cost of validation.

Conventions the search compiler relies on (see ``tests/unit/indexing`` for examples):

- token ``(param, system, code, date_low, date_high, grp)``; the resource's ``date`` envelope
  (earliest ``low``, latest ``high`` of its ``date`` rows; None without) is on every token row,
  for code + date searches (decision 0016); a CodeableConcept gives one row per coding; an Identifier
  ``(system, value)``; a ContactPoint and code/string/id primitives ``(None, value)``; booleans
  ``"true"``/``"false"``. ``:text`` rows (CodeableConcept.text, Coding.display) go to the *string*
  table as ``f"{code}:text"``; ``:of-type`` rows are tokens ``f"{code}:of-type"`` with
  ``system = type.coding.system`` and ``code = f"{type.coding.code}|{value}"``.
- string ``(param, value_norm, value, grp)``; HumanName and Address give one row per part.
- date ``(param, low, high, grp)``: naive UTC, both inclusive (see :mod:`app.indexing.dates`).
- quantity ``(param, value, system, code, unit, canon_value, canon_code, grp)``.
- reference ``(param, target_type, target_id, url, date_low, date_high, grp)`` (the envelope as
  on token rows); Reference.identifier also gives token
  rows ``f"{code}:identifier"``.
- composite parameter ``C`` with components ``c0..cn``: each composite value gets a group number
  (1, 2, ... within the resource and parameter) and its component rows are written to each
  component's own table with param ``f"{C}${i}"`` and that ``grp``; a value lacking any
  component is skipped. All other rows have ``grp`` None.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from app.indexing.dates import DEFAULT_TZ, date_range, period_range
from app.indexing.fhirpath import (
    branch_root,
    choice_names,
    compile_expression,
    first_elements,
    split_union,
)
from app.indexing.normalize import normalize_string
from app.indexing.registry import Registry, SearchParam
from app.indexing.ucum import UCUM_SYSTEM, canonical
from app.storage.references import under_base

__all__ = ["extract", "COLUMNS", "KINDS", "parse_reference"]

COLUMNS: dict[str, tuple[str, ...]] = {
    "token": ("param", "system", "code", "date_low", "date_high", "grp"),
    "string": ("param", "value_norm", "value", "grp"),
    "date": ("param", "low", "high", "grp"),
    "quantity": ("param", "value", "system", "code", "unit", "canon_value", "canon_code", "grp"),
    "number": ("param", "value", "grp"),
    "reference": ("param", "target_type", "target_id", "url", "date_low", "date_high", "grp"),
    "uri": ("param", "value", "grp"),
}
KINDS = tuple(COLUMNS)


# Dict displays: several times faster than dict(zip(...)), and there are many rows.
_ROW_BUILDERS: dict[str, Callable[[tuple], dict]] = {
    "token": lambda r: {"param": r[0], "system": r[1], "code": r[2], "date_low": None, "date_high": None, "grp": r[3]},
    "string": lambda r: {"param": r[0], "value_norm": r[1], "value": r[2], "grp": r[3]},
    "date": lambda r: {"param": r[0], "low": r[1], "high": r[2], "grp": r[3]},
    "quantity": lambda r: {
        "param": r[0], "value": r[1], "system": r[2], "code": r[3], "unit": r[4],
        "canon_value": r[5], "canon_code": r[6], "grp": r[7],
    },
    "number": lambda r: {"param": r[0], "value": r[1], "grp": r[2]},
    "reference": lambda r: {
        "param": r[0], "target_type": r[1], "target_id": r[2], "url": r[3],
        "date_low": None, "date_high": None, "grp": r[4],
    },
    "uri": lambda r: {"param": r[0], "value": r[1], "grp": r[2]},
}

# ContactPoint.system codes; an Identifier.system is a URI, so these never collide in practice.
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_STRING_PARTS = (
    "family", "given", "prefix", "suffix", "text",  # HumanName
    "line", "city", "district", "state", "postalCode", "country",  # Address (and text)
)
_ISO4217 = "urn:iso:std:iso:4217"

Acc = dict[str, dict[tuple, None]]
# One value's index content, independent of parameter and group: (kind, name suffix, columns).
Payload = tuple[str, str, tuple]
PayloadFn = Callable[[Any, ZoneInfo, bool], list[Payload]]


def _cut(value: Any, size: int) -> str | None:
    if value is None:
        return None
    text = value if type(value) is str else str(value)
    return text if len(text) <= size else text[:size]


# --------------------------------------------------------------------------- token


def _text_payload(text: str, out: list[Payload]) -> None:
    norm = normalize_string(text)
    if norm:
        out.append(("string", ":text", (norm, text)))


def _coding(c: dict, extras: bool, out: list[Payload]) -> None:
    system, code = c.get("system"), c.get("code")
    if system is not None or code is not None:
        out.append(("token", "", (_cut(system, 255), _cut(code, 255))))
    if extras:
        display = c.get("display")
        if type(display) is str:
            _text_payload(display, out)


def _identifier_or_contact(v: dict, extras: bool, out: list[Payload]) -> None:
    value = _cut(v.get("value"), 255)
    if value is None:
        return
    system = v.get("system")
    is_contact = system in _CONTACT_SYSTEMS and "type" not in v and "assigner" not in v
    out.append(("token", "", (None if is_contact else _cut(system, 255), value)))
    if extras and not is_contact:
        id_type = v.get("type")
        if type(id_type) is dict:
            for c in id_type.get("coding") or ():
                if type(c) is dict and c.get("code") is not None:
                    out.append(("token", ":of-type", (
                        _cut(c.get("system"), 255), _cut(f"{c['code']}|{value or ''}", 255),
                    )))


def _token(v: Any, tz: ZoneInfo, extras: bool) -> list[Payload]:
    t = type(v)
    if t is str:
        return [("token", "", (None, _cut(v, 255)))]
    if t is bool:
        return [("token", "", (None, "true" if v else "false"))]
    if t is int or t is float:
        return [("token", "", (None, str(v)))]
    out: list[Payload] = []
    if t is dict:
        coding = v.get("coding")
        if coding is not None or ("text" in v and "value" not in v and "code" not in v):
            for c in coding or ():  # CodeableConcept
                if type(c) is dict:
                    _coding(c, extras, out)
            text = v.get("text")
            if extras and type(text) is str:
                _text_payload(text, out)
        elif "value" in v and "code" not in v:
            _identifier_or_contact(v, extras, out)
        elif v.get("system") not in _CONTACT_SYSTEMS or "code" in v:  # not a bare ContactPoint
            _coding(v, extras, out)
    return out


# --------------------------------------------------------------------------- string


def _string(v: Any, tz: ZoneInfo, extras: bool) -> list[Payload]:
    out: list[Payload] = []
    if type(v) is str:
        texts: list = [v]
    elif type(v) is dict:  # HumanName, Address
        texts = []
        for part in _STRING_PARTS:
            pv = v.get(part)
            if type(pv) is list:
                texts.extend(pv)
            elif pv is not None:
                texts.append(pv)
    else:
        return out
    for text in texts:
        if type(text) is str:
            norm = normalize_string(text)
            if norm:
                out.append(("string", "", (norm, text)))
    return out


# --------------------------------------------------------------------------- date


def _date(v: Any, tz: ZoneInfo, extras: bool) -> list[Payload]:
    ranges: list = []
    if type(v) is str:
        ranges.append(date_range(v, tz))
    elif type(v) is dict:
        if "start" in v or "end" in v:  # Period
            ranges.append(period_range(v.get("start"), v.get("end"), tz))
        elif "event" in v or "repeat" in v:  # Timing
            ranges.extend(date_range(ev, tz) for ev in v.get("event") or () if type(ev) is str)
            bounds = (v.get("repeat") or {}).get("boundsPeriod")
            if type(bounds) is dict:
                ranges.append(period_range(bounds.get("start"), bounds.get("end"), tz))
    return [("date", "", rng) for rng in ranges if rng is not None]


# --------------------------------------------------------------------------- quantity / number


def _number_of(v: Any) -> float | None:
    if type(v) is int or type(v) is float:
        return float(v)
    if type(v) is str:
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _quantity(v: Any, tz: ZoneInfo, extras: bool) -> list[Payload]:
    if type(v) is not dict:
        return []
    value = _number_of(v.get("value"))
    if value is None:
        return []  # SampledData, Range, or a Quantity without a value
    if "currency" in v:  # Money
        system, code, unit = _ISO4217, v.get("currency"), None
    else:
        system, code, unit = v.get("system"), v.get("code"), v.get("unit")
    if code is not None and system in (UCUM_SYSTEM, None):
        canon_value, canon_code = canonical(value, code)
    else:
        canon_value, canon_code = value, code
    return [("quantity", "", (
        value, _cut(system, 255), _cut(code, 64), _cut(unit, 64), canon_value,
        _cut(canon_code, 64),
    ))]


def _number(v: Any, tz: ZoneInfo, extras: bool) -> list[Payload]:
    n = _number_of(v.get("value") if type(v) is dict else v)
    return [] if n is None else [("number", "", (n,))]


# --------------------------------------------------------------------------- reference / uri

_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ABSOLUTE = re.compile(
    r"^https?://.+/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


def parse_reference(ref: str) -> tuple[str | None, str | None, str | None] | None:
    """``(target_type, target_id, url)`` of a Reference.reference; ``None`` for contained ``#x``.

    Relative ``Type/id[/_history/n]`` gives type and id; an absolute ``http(s)`` URL keeps the whole
    URL *and* the type/id of its tail (:func:`extract` keeps the type/id only when the URL is on
    our own base); ``urn:uuid:``/``urn:oid:`` and anything else unparseable give the URL only.
    """
    if not ref or ref.startswith("#"):
        return None
    m = _RELATIVE.match(ref)
    if m:
        return m.group(1), m.group(2), None
    if ref.startswith("urn:"):
        return None, None, ref[:1024]
    m = _ABSOLUTE.match(ref)
    if m:
        return m.group(1), m.group(2), ref[:1024]
    return None, None, ref[:1024]


def _reference(v: Any, tz: ZoneInfo, extras: bool) -> list[Payload]:
    out: list[Payload] = []
    if type(v) is str:  # canonical / uri used as a reference
        if v and not v.startswith("#"):
            out.append(("reference", "", (None, None, v[:1024])))
    elif type(v) is dict:
        ref = v.get("reference")
        if type(ref) is str:
            parsed = parse_reference(ref)
            if parsed is not None:
                out.append(("reference", "", parsed))
        ident = v.get("identifier")
        if extras and type(ident) is dict and ident.get("value") is not None:
            out.append(("token", ":identifier", (
                _cut(ident.get("system"), 255), _cut(ident.get("value"), 255),
            )))
    return out


def _uri(v: Any, tz: ZoneInfo, extras: bool) -> list[Payload]:
    return [("uri", "", (v[:1024],))] if type(v) is str and v else []


_PAYLOADS: dict[str, PayloadFn] = {
    "token": _token,
    "string": _string,
    "date": _date,
    "quantity": _quantity,
    "number": _number,
    "reference": _reference,
    "uri": _uri,
}


# --------------------------------------------------------------------------- plans

Step = Callable[[list, Acc, ZoneInfo, dict], None]
_SUFFIXES = ("", ":text", ":of-type", ":identifier")


def _payloads(ptype: str, values: list, tz: ZoneInfo, extras: bool, memo: dict) -> list[Payload]:
    """Payloads of all values, memoised per extraction: ``code`` feeds a dozen parameters."""
    fn = _PAYLOADS[ptype]
    out: list[Payload] = []
    for v in values:
        # Containers by identity (the resource keeps them alive); scalars by value and type.
        key = (id(v), ptype, extras) if type(v) is dict else (v, type(v), ptype, extras)
        found = memo.get(key)
        if found is None:
            found = memo[key] = fn(v, tz, extras)
        out.extend(found)
    return out


def _simple_step(sp: SearchParam) -> Step:
    fn = compile_expression(sp.expression, sp.base_type)
    ptype = sp.type
    names = {suffix: sp.code + suffix for suffix in _SUFFIXES}

    def step(focus: list, acc: Acc, tz: ZoneInfo, memo: dict) -> None:
        values = fn(focus)
        if values:
            for kind, suffix, cols in _payloads(ptype, values, tz, True, memo):
                acc[kind][(names[suffix], *cols, None)] = None

    return step


def _composite_step(sp: SearchParam) -> Step:
    base = compile_expression(sp.expression, sp.base_type)
    parts = [
        (f"{sp.code}${i}", compile_expression(expr), csp.type)
        for i, (csp, expr) in enumerate(sp.components)
    ]

    def step(focus: list, acc: Acc, tz: ZoneInfo, memo: dict) -> None:
        grp = 0
        for item in base(focus):
            # Evaluate every component before emitting anything: most values lack one
            # (an Observation with components has no value of its own), and are skipped cheaply.
            single = [item]
            found: list[tuple[str, list[Payload]]] = []
            for param, fn, ptype in parts:
                values = fn(single)
                if not values:
                    break
                payloads = _payloads(ptype, values, tz, False, memo)
                if not payloads:
                    break  # values of the wrong shape (e.g. SampledData): no group
                found.append((param, payloads))
            else:
                grp += 1
                for param, payloads in found:
                    for kind, _suffix, cols in payloads:
                        acc[kind][(param, *cols, grp)] = None

    return step


Plan = tuple[tuple[frozenset[str] | None, Step], ...]
_PLANS: weakref.WeakKeyDictionary[Registry, dict[str, Plan]] = weakref.WeakKeyDictionary()


def _plan(registry: Registry, res_type: str) -> Plan:
    plans = _PLANS.get(registry)
    if plans is None:
        plans = _PLANS[registry] = {}
    plan = plans.get(res_type)
    if plan is None:
        steps: list[tuple[frozenset[str] | None, Step]] = []
        for sp in registry.params(res_type).values():
            if sp.column is not None:
                continue  # answered from the resource table
            if sp.type == "composite":
                steps.append((_composite_needs(sp), _composite_step(sp)))
            else:
                steps.append((first_elements(sp.expression, res_type), _simple_step(sp)))
        plan = plans[res_type] = tuple(steps)
    return plan


def _composite_needs(sp: SearchParam) -> frozenset[str] | None:
    """Keys without which a composite yields no group.

    A branch that is the resource itself (``Observation`` in ``code-value-quantity``) needs the
    keys of its last component (the value), since a group needs every component.
    """
    needs: set[str] = set()
    for branch in split_union(sp.expression):
        if branch_root(branch) == sp.base_type and branch.strip("() ") == sp.base_type:
            found = first_elements(sp.components[-1][1]) if sp.components else None
        else:
            found = first_elements(branch, sp.base_type)
        if found is None:
            return None
        needs.update(found)
    return frozenset(needs)


_CHOICE_BASE: dict[str, str] = {}


def _choice_base(key: str) -> str:
    """``valueQuantity`` -> ``value`` (how untyped expressions name it); ``""`` if no choice."""
    base = _CHOICE_BASE.get(key)
    if base is None:
        base = ""
        for i in range(1, len(key)):
            if key[i].isupper():
                if key[:i] in choice_names():
                    base = key[:i]
                break
        if len(_CHOICE_BASE) < 10000:
            _CHOICE_BASE[key] = base
    return base


def extract(
    registry: Registry, resource: dict, tz: ZoneInfo | None = None, base_url: str | None = None
) -> dict[str, list[dict]]:
    """Index rows for one resource: ``{kind: [row, ...]}`` for every kind in :data:`KINDS`.

    ``tz`` is the zone for zone-less dates (default Europe/London). ``base_url`` is our own FHIR
    base: an absolute reference names one of our resources only under it (:func:`_only_ours`).
    Identical rows are emitted once. A resource type the registry does not know yields no rows.
    """
    zone = tz or DEFAULT_TZ
    acc: Acc = {k: {} for k in KINDS}
    memo: dict = {}
    focus = [resource]
    present = set(resource)
    for key in resource:
        base = _CHOICE_BASE.get(key)
        if base is None:
            base = _choice_base(key)
        if base:
            present.add(base)
    for needs, step in _plan(registry, resource.get("resourceType", "")):
        if needs is None or not needs.isdisjoint(present):
            step(focus, acc, zone, memo)
    out = {kind: list(map(_ROW_BUILDERS[kind], rows)) for kind, rows in acc.items()}
    if out["reference"]:
        _only_ours(out["reference"], base_url)
    _add_date_envelope(out)
    return out


def _only_ours(rows: list[dict], base_url: str | None) -> None:
    """Absolute references to another server keep their URL and lose the type/id of its tail.

    Why: ``https://other.example/fhir/Patient/1`` is that server's patient 1, not ours.  Matched
    on its tail it would join our Patient/1's compartment, chains, includes and ``_has``, and
    reach a token scoped to our patient 1: another person's results.  Such rows match only a
    search for the same URL.  Without ``base_url`` every absolute URL is someone else's."""
    for row in rows:
        url = row["url"]
        if url is not None and row["target_id"] is not None and not under_base(url, base_url):
            row["target_type"] = row["target_id"] = None


# The parameter whose envelope token and reference rows carry, and those kinds (decision 0016).
ENVELOPE_PARAM = "date"
ENVELOPE_KINDS = ("token", "reference")


def _add_date_envelope(out: dict[str, list[dict]]) -> None:
    """Give every token and reference row the resource's ``date`` envelope: the earliest ``low``
    and latest ``high`` of its ``date`` rows (None without any).  Whatever row a date clause
    matches lies inside it, so "the envelope reaches the range" is a necessary condition a code
    or patient + date search checks on the driving index before probing sp_date; and it *is* the
    ``date`` sort key (``min(low)`` ascending, ``max(high)`` descending) (app.search.plan)."""
    dates = [r for r in out["date"] if r["param"] == ENVELOPE_PARAM]
    if not dates:
        return
    low = min(r["low"] for r in dates)
    high = max(r["high"] for r in dates)
    for kind in ENVELOPE_KINDS:
        for r in out[kind]:
            r["date_low"] = low
            r["date_high"] = high
